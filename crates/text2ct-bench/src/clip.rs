//! The 3D-CLIP protocol (Table 4) end to end: load a trained CLIP, embed a prepared manifest's
//! volumes and reports and the zero-shot prompts, and score them with
//! `text2ct_eval::clip_eval` (docs/evaluation/clip.md). `text2ct eval clip` and the report's
//! `[clip]` section both call [`run_clip_eval`].

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use text2ct_eval::clip_eval::{evaluate, ClipEvalInput, ClipEvalReport, PromptStyle};
use text2ct_models::burn::tensor::Device;
use text2ct_train::clip::{embed_texts, embed_volumes, load_trained, logit_multiplier, resolve_model};

use crate::error::{input, BenchError, Result};

fn default_batch() -> usize {
    8
}

/// What to evaluate (the `[clip]` section).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClipEvalConfig {
    /// A trained CLIP (run folder, its `final/`, a checkpoint, or a `.safetensors` file).
    pub model: PathBuf,
    /// A prepared manifest with reports and labels.
    pub manifest: PathBuf,
    #[serde(default = "default_batch")]
    pub batch: usize,
    #[serde(default)]
    pub limit: Option<usize>,
}

impl ClipEvalConfig {
    pub fn validate(&self) -> Result<()> {
        if !self.model.exists() {
            return input(format!("CLIP model {}: no such file or folder", self.model.display()));
        }
        if !self.manifest.exists() {
            return input(format!("manifest {}: no such file or folder", self.manifest.display()));
        }
        if self.batch == 0 {
            return input("batch must be positive");
        }
        if self.limit == Some(0) {
            return input("limit must be at least 1");
        }
        Ok(())
    }
}

/// Run the protocol; `meta` of the report names the model, its weights file and the manifest.
pub fn run_clip_eval(cfg: &ClipEvalConfig, dev: &Device, log: &mut dyn FnMut(&str)) -> Result<ClipEvalReport> {
    cfg.validate()?;
    let (_, weights) = resolve_model(&cfg.model)?;
    let model = load_trained(&cfg.model, dev)?;
    let set = text2ct_train::data::VolumeSet::open(&cfg.manifest, cfg.limit)?;
    if set.len() < 2 {
        return input(format!(
            "{}: {} volume(s); the CLIP protocol needs at least 2",
            cfg.manifest.display(),
            set.len()
        ));
    }
    let tok =
        text2ct_text::ClipTokenizer::default_embedded().map_err(|e| BenchError::Input(format!("tokenizer: {e}")))?;
    let names = text2ct_data::labels::LABELS;
    let mut labels = Vec::with_capacity(set.len());
    for it in &set.items {
        if it.entry.labels.len() != names.len() {
            return input(format!(
                "{}: item {} has {} labels, expected {}",
                cfg.manifest.display(),
                it.entry.id,
                it.entry.labels.len(),
                names.len()
            ));
        }
        labels.push(it.entry.labels.iter().map(|&l| l != 0).collect::<Vec<bool>>());
    }
    log(&format!("embedding {} volumes and reports with {}", set.len(), weights.display()));
    let mut quiet = |_: text2ct_train::ProgressEvent| {};
    let vols = embed_volumes(&model, &set, cfg.batch, &mut quiet)?;
    let reports: Vec<String> = set.items.iter().map(|it| it.entry.report.clone()).collect();
    let reps = embed_texts(&model, &tok, &reports, cfg.batch)?;
    let truncated = reports.iter().filter(|r| tok.encode_padded(r, model.text.max_len()).1).count();
    let mut prompts = Vec::new();
    for st in PromptStyle::ALL {
        let (p, n): (Vec<String>, Vec<String>) = names.iter().map(|x| st.prompts(x)).unzip();
        prompts.push((st, embed_texts(&model, &tok, &p, cfg.batch)?, embed_texts(&model, &tok, &n, cfg.batch)?));
    }
    let class_names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let mut rep = evaluate(&ClipEvalInput {
        volumes: &vols,
        reports: &reps,
        labels: &labels,
        class_names: &class_names,
        prompts: &prompts,
        logit_multiplier: logit_multiplier(&model),
    })?;
    rep.meta.insert("model".into(), weights.display().to_string().into());
    if let Ok(h) = text2ct_eval::fid::sha256_file(&weights) {
        rep.meta.insert("weights_sha256".into(), h.into());
    }
    rep.meta.insert("manifest".into(), cfg.manifest.display().to_string().into());
    rep.meta.insert("text_length".into(), model.text.max_len().into());
    rep.meta.insert("truncated_reports".into(), truncated.into());
    Ok(rep)
}

/// Write `clip_eval.json` and `clip_eval.md` into `dir`.
pub fn write_clip_eval(rep: &ClipEvalReport, dir: &Path) -> Result<()> {
    crate::error::write_atomic(&dir.join("clip_eval.json"), rep.to_json().as_bytes())?;
    crate::error::write_atomic(&dir.join("clip_eval.md"), rep.to_markdown().as_bytes())?;
    Ok(())
}
