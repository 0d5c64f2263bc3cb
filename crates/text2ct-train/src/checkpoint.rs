//! Atomic checkpoint folders.
//!
//! A checkpoint is a folder `checkpoints/step-XXXXXXXX/` written in full under a hidden
//! temporary name (`.tmp-step-XXXXXXXX-<pid>`) and renamed into place only once every file is
//! there; `state.json` is written last. A failure removes the temporary folder, so no partial
//! checkpoint is ever visible, and [`latest`] only considers folders with a `state.json`.
//!
//! What a VAE checkpoint holds (see `vae.rs`): `vae.safetensors` (MONAI key names),
//! `vae_config.json`, `disc.safetensors`, `optim_vae.bpk` / `optim_disc.bpk` (burn optimizer
//! records: AdamW moments and step counts), `config.toml` (a copy of the run's config),
//! `metrics.jsonl` (the log so far) and `state.json` ([`TrainState`]: step, epoch and loader
//! position, scheduler steps, seed).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::data::LoaderState;
use crate::error::{Result, TrainError};

/// Counters and random-stream positions: everything besides the tensors that a resumed run
/// needs. All randomness is derived from `seed` and these counters (see `data.rs`), so they
/// are the complete RNG state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Optimizer steps done.
    pub step: usize,
    /// Data loader position (epoch, position in the epoch's order).
    pub loader: LoaderState,
    /// Steps taken by each learning-rate scheduler, by name.
    pub schedulers: std::collections::BTreeMap<String, usize>,
    /// The run's seed.
    pub seed: u64,
    /// Wall seconds spent training before this checkpoint (all sessions).
    pub elapsed_s: f64,
    /// Format version.
    pub version: u32,
}

pub const STATE_FILE: &str = "state.json";

/// The folder name of the checkpoint at `step`.
pub fn folder_name(step: usize) -> String {
    format!("step-{step:08}")
}

/// Write a checkpoint atomically: `write` fills a temporary folder; then `state` is written into
/// it and the folder is renamed to `root/step-XXXXXXXX`. An existing checkpoint of the same
/// step is replaced. On any error nothing is left behind.
pub fn write_checkpoint(root: &Path, state: &TrainState, write: impl FnOnce(&Path) -> Result<()>) -> Result<PathBuf> {
    std::fs::create_dir_all(root).map_err(|e| TrainError::io(root, e))?;
    let name = folder_name(state.step);
    let tmp = root.join(format!(".tmp-{name}-{}", std::process::id()));
    let fin = root.join(&name);
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
    }
    let res = (|| -> Result<()> {
        std::fs::create_dir(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
        write(&tmp)?;
        let json = serde_json::to_string_pretty(state).map_err(|e| TrainError::ckpt(&tmp, e.to_string()))?;
        let sp = tmp.join(STATE_FILE);
        std::fs::write(&sp, json).map_err(|e| TrainError::io(&sp, e))?;
        if fin.exists() {
            std::fs::remove_dir_all(&fin).map_err(|e| TrainError::io(&fin, e))?;
        }
        std::fs::rename(&tmp, &fin).map_err(|e| TrainError::io(&fin, e))?;
        Ok(())
    })();
    if let Err(e) = res {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    Ok(fin)
}

/// Complete checkpoints under `root`, oldest first: `(step, folder)`.
pub fn list(root: &Path) -> Result<Vec<(usize, PathBuf)>> {
    let mut out = Vec::new();
    let rd = match std::fs::read_dir(root) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(TrainError::io(root, e)),
    };
    for ent in rd {
        let ent = ent.map_err(|e| TrainError::io(root, e))?;
        let name = ent.file_name().to_string_lossy().to_string();
        if let Some(num) = name.strip_prefix("step-") {
            if let Ok(step) = num.parse::<usize>() {
                if ent.path().join(STATE_FILE).is_file() {
                    out.push((step, ent.path()));
                }
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The most recent complete checkpoint, if any.
pub fn latest(root: &Path) -> Result<Option<PathBuf>> {
    Ok(list(root)?.pop().map(|(_, p)| p))
}

/// Read a checkpoint's `state.json`.
pub fn read_state(dir: &Path) -> Result<TrainState> {
    let p = dir.join(STATE_FILE);
    let s = std::fs::read_to_string(&p).map_err(|e| TrainError::io(&p, e))?;
    serde_json::from_str(&s).map_err(|e| TrainError::ckpt(dir, format!("bad {STATE_FILE}: {e}")))
}

/// Delete all but the `keep` most recent checkpoints (`keep = 0` keeps all).
pub fn prune(root: &Path, keep: usize) -> Result<()> {
    if keep == 0 {
        return Ok(());
    }
    let all = list(root)?;
    if all.len() > keep {
        for (_, p) in &all[..all.len() - keep] {
            std::fs::remove_dir_all(p).map_err(|e| TrainError::io(p, e))?;
        }
    }
    Ok(())
}
