//! The run-loop skeleton a trainer shares with the others: the output folder and its resume
//! policy, reading back a checkpoint's state and config, the stop conditions (a simulated
//! interruption, a wall-time budget), session timing, AdamW from `[optim]`, optimizer records,
//! checkpoint writing with pruning, JSON / JSONL files.
//!
//! Resume policy ([`Session::open`]): a fresh run (`run.resume = false`) refuses an `out_dir`
//! that already holds checkpoints; a resumed run continues from the latest complete one (or
//! starts fresh when there is none). [`read_resume`] checks that the checkpoint was written by
//! a run with the same seed and returns its saved config for the caller to compare.
//!
//! Used by the classifier trainer (`classifier.rs`); the VAE and LDM loss logs (`metrics.rs`) are a
//! [`JsonlLog`].

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::optim::grad_clipping::GradientClippingConfig;
use burn::optim::{AdamWConfig, ModuleOptimizer};
use burn::tensor::Tensor;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::checkpoint::{self, TrainState};
use crate::config::{OptimConfig, RunConfig};
use crate::data::LoaderState;
use crate::error::{Result, TrainError};
use crate::progress::{Progress, ProgressEvent};

/// One training session (a run, or the part of it after a resume).
pub struct Session {
    pub out: PathBuf,
    pub ckpt_root: PathBuf,
    /// The checkpoint this session continues from.
    pub resumed_from: Option<PathBuf>,
    started: Instant,
    /// Wall seconds of earlier sessions.
    pub prior_elapsed: f64,
    /// The step this session started at.
    pub start_step: usize,
    max_wall_s: Option<f64>,
    stop_at: Option<usize>,
    seed: u64,
    keep: usize,
}

impl Session {
    /// Create `run.out_dir` and decide where to start (see the module docs). `stop_at`: stop
    /// (with a checkpoint) once this many steps are done, as if interrupted.
    pub fn open(run: &RunConfig, stop_at: Option<usize>) -> Result<Self> {
        let out = run.out_dir.clone();
        std::fs::create_dir_all(&out).map_err(|e| TrainError::io(&out, e))?;
        let ckpt_root = out.join("checkpoints");
        let existing = checkpoint::latest(&ckpt_root)?;
        if !run.resume {
            if let Some(p) = &existing {
                return Err(TrainError::Config(format!(
                    "{} already holds checkpoints (latest {}): resume with --resume / run.resume = true, or choose another run.out_dir",
                    out.display(),
                    p.display()
                )));
            }
        }
        Ok(Session {
            out,
            ckpt_root,
            resumed_from: if run.resume { existing } else { None },
            started: Instant::now(),
            prior_elapsed: 0.0,
            start_step: 0,
            max_wall_s: run.max_wall_minutes.map(|m| m * 60.0),
            stop_at,
            seed: run.seed,
            keep: run.keep_checkpoints,
        })
    }

    /// Record the state a resumed session starts from.
    pub fn resume_from(&mut self, st: &TrainState) {
        self.prior_elapsed = st.elapsed_s;
        self.start_step = st.step;
    }

    /// Whether to stop before doing step `step + 1`: the simulated interruption or the wall-time
    /// budget (announced through `progress`).
    pub fn should_stop(&self, step: usize, progress: Progress) -> bool {
        if self.stop_at.is_some_and(|s| step >= s) {
            return true;
        }
        if self.max_wall_s.is_some_and(|m| self.session_s() >= m) {
            progress(ProgressEvent::Message(format!("run.max_wall_minutes reached after step {step}")));
            return true;
        }
        false
    }

    /// True when the run was stopped by `stop_at` (the caller then skips the final outputs).
    pub fn interrupted(&self, step: usize) -> bool {
        self.stop_at.is_some_and(|s| step >= s)
    }

    /// Seconds of this session.
    pub fn session_s(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// Seconds of all sessions.
    pub fn elapsed(&self) -> f64 {
        self.prior_elapsed + self.session_s()
    }

    /// Steps per second of this session at `step`.
    pub fn steps_per_s(&self, step: usize) -> f64 {
        step.saturating_sub(self.start_step) as f64 / self.session_s().max(1e-9)
    }

    /// Write a checkpoint at `step` (atomically; `write` fills the folder) and prune old ones.
    pub fn save(
        &self,
        step: usize,
        loader: LoaderState,
        schedulers: &[(&str, usize)],
        write: impl FnOnce(&Path) -> Result<()>,
    ) -> Result<PathBuf> {
        let st = TrainState {
            step,
            loader,
            schedulers: schedulers.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            seed: self.seed,
            elapsed_s: self.elapsed(),
            version: 1,
        };
        let p = checkpoint::write_checkpoint(&self.ckpt_root, &st, write)?;
        checkpoint::prune(&self.ckpt_root, self.keep)?;
        Ok(p)
    }
}

/// A checkpoint's state and its `config.toml` parsed by `parse`; errors if the seed differs.
pub fn read_resume<C>(dir: &Path, seed: u64, parse: impl Fn(&str) -> Result<C>) -> Result<(TrainState, C)> {
    let st = checkpoint::read_state(dir)?;
    let p = dir.join("config.toml");
    let s = std::fs::read_to_string(&p).map_err(|e| TrainError::io(&p, e))?;
    let cfg = parse(&s).map_err(|e| TrainError::ckpt(dir, format!("config.toml: {e}")))?;
    if st.seed != seed {
        return Err(TrainError::ckpt(dir, format!("the checkpoint's seed is {}, the config's {seed}", st.seed)));
    }
    Ok((st, cfg))
}

/// AdamW from an `[optim]` table.
pub fn adamw(o: &OptimConfig) -> ModuleOptimizer {
    AdamWConfig::new()
        .with_beta_1(o.betas[0])
        .with_beta_2(o.betas[1])
        .with_epsilon(o.eps)
        .with_weight_decay(o.weight_decay)
        .with_grad_clipping(o.grad_clip_norm.map(GradientClippingConfig::Norm))
        .init()
}

/// Save an optimizer's record (moments, step counts).
pub fn save_optim(o: &ModuleOptimizer, path: &Path) -> Result<()> {
    o.save(path).map_err(|e| TrainError::ckpt(path, format!("{e:?}")))
}

/// Load what [`save_optim`] wrote.
pub fn load_optim(o: ModuleOptimizer, path: &Path) -> Result<ModuleOptimizer> {
    o.load(path).map_err(|e| TrainError::ckpt(path, format!("{e:?}")))
}

/// Pretty JSON, written atomically.
pub fn write_json<T: Serialize>(path: &Path, v: &T) -> Result<()> {
    let s = serde_json::to_string_pretty(v).map_err(|e| TrainError::Train(e.to_string()))?;
    text2ct_io::error::atomic_write_bytes(path, s.as_bytes())?;
    Ok(())
}

/// Text, written atomically.
pub fn write_text(path: &Path, s: &str) -> Result<()> {
    text2ct_io::error::atomic_write_bytes(path, s.as_bytes())?;
    Ok(())
}

/// The value of a one-element tensor.
pub fn scalar(t: &Tensor<1>) -> f64 {
    t.clone().into_scalar::<f32>() as f64
}

/// A tensor's values as f32.
pub fn tensor_vec<const D: usize>(t: Tensor<D>) -> Result<Vec<f32>> {
    t.into_data().convert::<f32>().try_into_vec::<f32>().map_err(|e| TrainError::Train(format!("{e:?}")))
}

/// A JSONL log of records of any serde type, kept in memory and appended line by line.
pub struct JsonlLog<T> {
    pub path: PathBuf,
    pub records: Vec<T>,
}

impl<T: Serialize + DeserializeOwned> JsonlLog<T> {
    /// A fresh log file holding `records` (those of a checkpoint when resuming).
    pub fn create(path: &Path, records: Vec<T>) -> Result<Self> {
        let log = JsonlLog { path: path.to_path_buf(), records };
        log.rewrite(path)?;
        Ok(log)
    }

    /// Append one record.
    pub fn push(&mut self, r: T) -> Result<()> {
        let line = serde_json::to_string(&r).map_err(|e| TrainError::Train(e.to_string()))?;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(|e| TrainError::io(&self.path, e))?;
        writeln!(f, "{line}").map_err(|e| TrainError::io(&self.path, e))?;
        self.records.push(r);
        Ok(())
    }

    /// All records as JSONL at `path` (atomically).
    pub fn rewrite(&self, path: &Path) -> Result<()> {
        let mut s = String::new();
        for r in &self.records {
            s.push_str(&serde_json::to_string(r).map_err(|e| TrainError::Train(e.to_string()))?);
            s.push('\n');
        }
        write_text(path, &s)
    }

    /// Read a JSONL file (a missing file is an empty log).
    pub fn read(path: &Path) -> Result<Vec<T>> {
        let s = match std::fs::read_to_string(path) {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(TrainError::io(path, e)),
        };
        s.lines()
            .filter(|l| !l.trim().is_empty())
            .enumerate()
            .map(|(i, l)| {
                serde_json::from_str(l)
                    .map_err(|e| TrainError::Data(format!("{}: line {}: {e}", path.display(), i + 1)))
            })
            .collect()
    }
}
