//! The guidance sweep (the paper's Figure 3): generate the test reports at every guidance scale
//! w with the same seeds — so the same starting noise, only w changes — and score each set
//! against the real set (FID 3D and/or 2.5D) and, with a CT-Net classifier, against the labels of
//! the reports (AUC and precision, macro and weighted: `text2ct_eval::factual`'s protocol; each
//! volume takes the labels of the report its sidecar names).
//!
//! Layout of `out/`: `w{w}/` holds the volumes of one scale (`{id}_seed{S}.nii.gz` + PNG + JSON
//! sidecar, as `text2ct generate` writes them); `sweep.json` (rewritten after every scale, so a
//! stopped run keeps what it measured), `sweep.md` and `sweep.png`. Re-running skips every volume
//! whose sidecar exists, after checking that the sidecar was written with the same model, steps,
//! sampler, size and w (a different setting is an error, never a silent mix).

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use text2ct_eval::factual::{
    evaluate, normalize_key, Classifier, ClassifierRef, FactualOptions, LabelTable, LabeledSet, PredictOptions,
    SetMetrics,
};
use text2ct_eval::fid::{BackboneInfo, PlaneFid, SetInfo, VolumeSet};
use text2ct_generate::output::{self, Sidecar};
use text2ct_generate::pipeline::Pipeline;
use text2ct_generate::{jobs_from_csv, Job, Sampler, Shard};
use text2ct_models::burn::tensor::Device;

use crate::error::{input, json_bytes, write_atomic, BenchError, Result};
use crate::fidset::{FidEngine, FidSpec};
use crate::plot::{panels_png, Panel};

/// The paper's scales.
pub const PAPER_GUIDANCE: [f32; 7] = [0.0, 1.0, 3.0, 5.0, 7.0, 10.0, 15.0];

fn default_guidance() -> Vec<f32> {
    PAPER_GUIDANCE.to_vec()
}
fn one() -> usize {
    1
}

/// What to sweep. The same fields are the `[sweep]` section of an evaluation config.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SweepConfig {
    /// A model folder (`model.json`).
    pub model: PathBuf,
    /// The test reports (CT-RATE reports CSV or a prompt/id CSV).
    pub reports: PathBuf,
    /// The real set the FIDs compare against.
    pub real: PathBuf,
    #[serde(default = "default_guidance")]
    pub guidance: Vec<f32>,
    /// Volumes per report (seeds `seed + row * K + k`).
    #[serde(default = "one")]
    pub count_per_report: usize,
    /// Sampling steps (default: the model card's).
    #[serde(default)]
    pub steps: Option<usize>,
    #[serde(default)]
    pub seed: u64,
    /// Output size X, Y, Z (default: the card's).
    #[serde(default)]
    pub size: Option<[usize; 3]>,
    /// VAE sliding window in latent voxels (default: the card's).
    #[serde(default)]
    pub decode_window: Option<[usize; 3]>,
    /// At most this many report rows (the first ones).
    #[serde(default)]
    pub limit: Option<usize>,
    #[serde(default)]
    pub fid: FidSpec,
    /// A CT-Net classifier (its folder, the run folder of `text2ct train classifier`, or its
    /// `ctnet.safetensors`): AUC and precision per w against the reports' labels. In an evaluation
    /// config it defaults to the `[factual]` section's.
    #[serde(default)]
    pub classifier: Option<PathBuf>,
    /// The reports' labels (CT-RATE labels CSV or prepared manifest, keyed by `VolumeName`).
    /// Default: the real set's manifest when the real set is a prepared set.
    #[serde(default)]
    pub labels: Option<PathBuf>,
    /// Decision threshold of precision (default: the classifier's, 0.5).
    #[serde(default)]
    pub threshold: Option<f64>,
    /// Pad / crop generated volumes whose shape is not the classifier's training shape.
    #[serde(default)]
    pub pad_crop: bool,
}

/// The reports' labels of a sweep with a classifier: the `labels` given, else the real set's
/// manifest.
fn labels_path(cfg: &SweepConfig) -> Result<PathBuf> {
    if let Some(l) = &cfg.labels {
        return Ok(l.clone());
    }
    let m = if cfg.real.is_dir() { cfg.real.join("manifest.jsonl") } else { cfg.real.clone() };
    if m.is_file() && m.extension().is_some_and(|e| e == "jsonl") {
        return Ok(m);
    }
    input(format!(
        "a classifier needs the reports' labels: set labels = \"LABELS.csv or manifest.jsonl\" (the real set {} \
         is not a prepared set with labels)",
        cfg.real.display()
    ))
}

impl SweepConfig {
    pub fn validate(&self) -> Result<()> {
        if self.guidance.is_empty() {
            return input("no guidance scales given");
        }
        for (i, w) in self.guidance.iter().enumerate() {
            if !w.is_finite() || *w < 0.0 {
                return input(format!("guidance scale {w} is not a finite number >= 0"));
            }
            // Every scale up front (generation checks each again only when it reaches it).
            if let Err(e) = text2ct_generate::limits::check_guidance(*w) {
                return input(e.to_string());
            }
            if self.guidance[..i].contains(w) {
                return input(format!("guidance scale {w} is given twice"));
            }
        }
        if self.count_per_report == 0 {
            return input("count_per_report must be at least 1");
        }
        if self.steps == Some(0) {
            return input("steps must be at least 1");
        }
        if self.limit == Some(0) {
            return input("limit must be at least 1");
        }
        if !self.model.join("model.json").is_file() {
            return input(format!("model {}: no model.json there", self.model.display()));
        }
        if !self.reports.is_file() {
            return input(format!("reports {}: no such file", self.reports.display()));
        }
        self.fid.validate()?;
        crate::report::check_set(&self.real, "real set")?;
        if let Some(c) = &self.classifier {
            let dir = Classifier::resolve(c)?;
            Classifier::check(&dir)?;
            if let Some(t) = self.threshold {
                if !(0.0..=1.0).contains(&t) {
                    return input(format!("threshold must be in [0, 1], got {t}"));
                }
            }
            let table = LabelTable::open(&labels_path(self)?)?;
            let mut jobs = jobs_from_csv(&self.reports, 1, 0, Shard::ALL)?;
            if let Some(l) = self.limit {
                jobs.retain(|j| j.row < l);
            }
            if let Some(j) = jobs.iter().find(|j| !table.rows.contains_key(&normalize_key(&j.id))) {
                return input(format!(
                    "report {:?} (row {} of {}) has no labels in {}; the classifier's precision needs every \
                     report's labels",
                    j.id,
                    j.row + 1,
                    self.reports.display(),
                    table.path.display()
                ));
            }
        } else if self.labels.is_some() || self.threshold.is_some() || self.pad_crop {
            return input("labels, threshold and pad_crop are for the classifier: set classifier too");
        }
        Ok(())
    }
}

/// The folder name of one scale: `w5`, `w1.5`.
pub fn scale_dir(w: f32) -> String {
    format!("w{w}")
}

/// One scale's results.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SweepRow {
    pub guidance: f32,
    pub folder: String,
    pub n_volumes: usize,
    /// Volumes generated by this run (the rest were already there).
    pub generated: usize,
    pub skipped: usize,
    pub fid_3d: Option<f64>,
    pub fid_25d: Option<f64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub planes: Vec<PlaneFid>,
    /// CT-Net's AUC and precision on this scale's volumes (with a classifier).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub factual: Option<SetMetrics>,
    pub seconds_generating: f64,
    pub seconds_scoring: f64,
}

/// `sweep.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SweepReport {
    pub format: String,
    pub model: String,
    pub model_name: String,
    pub model_hash: String,
    pub reports: String,
    pub n_reports: usize,
    pub count_per_report: usize,
    pub seed: u64,
    pub sampler: Sampler,
    pub steps: usize,
    pub size: [usize; 3],
    pub real: SetInfo,
    pub backbones: Vec<BackboneInfo>,
    pub protocol: serde_json::Value,
    /// The classifier of the precision / AUC columns, its threshold and the reports' labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classifier: Option<ClassifierRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<String>,
    pub rows: Vec<SweepRow>,
    pub note: String,
}

impl SweepReport {
    pub const FORMAT: &'static str = "text2ct-sweep-v1";

    /// The Figure 3 data as a Markdown table (plus the settings).
    pub fn to_markdown(&self) -> String {
        let mut s = String::from("# Guidance sweep (Figure 3)\n\n");
        s.push_str(&format!(
            "- model: `{}` ({}, hash `{}`)\n- reports: `{}` ({} reports × {} volume(s), seeds from {})\n\
             - sampler: {} {} steps, output {:?}\n- real set: `{}` ({} volumes)\n",
            self.model,
            self.model_name,
            short(&self.model_hash),
            self.reports,
            self.n_reports,
            self.count_per_report,
            self.seed,
            self.sampler,
            self.steps,
            self.size,
            self.real.path,
            self.real.n_volumes
        ));
        for b in &self.backbones {
            s.push_str(&format!(
                "- {} backbone: `{}` (weights SHA-256 `{}`)\n",
                b.kind,
                b.name,
                short(&b.weights_sha256)
            ));
        }
        if let Some(c) = &self.classifier {
            s.push_str(&format!(
                "- classifier: `{}` (weights SHA-256 `{}`), precision at p >= {}, labels `{}`\n",
                c.dir,
                short(&c.weights_sha256),
                self.threshold.unwrap_or(text2ct_eval::factual::THRESHOLD),
                self.labels.as_deref().unwrap_or("?")
            ));
        }
        s.push('\n');
        s.push_str(&self.table());
        s.push_str(&format!("\n{}\n", self.note));
        s
    }

    /// The table alone (w, FID 3D, FID 2.5D, CT-Net precision and AUC, volumes).
    pub fn table(&self) -> String {
        let has3 = self.rows.iter().any(|r| r.fid_3d.is_some());
        let has2 = self.rows.iter().any(|r| r.fid_25d.is_some());
        let hasf = self.rows.iter().any(|r| r.factual.is_some());
        let mut s = String::from("| guidance w |");
        let mut sep = String::from("|---|");
        if has3 {
            s.push_str(" FID 3D ↓ |");
            sep.push_str("---|");
        }
        if has2 {
            s.push_str(" FID 2.5D (avg) ↓ |");
            sep.push_str("---|");
        }
        if hasf {
            s.push_str(" Precision (macro) ↑ | Precision (weighted) ↑ | AUC (macro) ↑ | AUC (weighted) ↑ |");
            sep.push_str("---|---|---|---|");
        }
        s.push_str(" volumes |\n");
        sep.push_str("---|\n");
        s.push_str(&sep);
        for r in &self.rows {
            s.push_str(&format!("| {} |", r.guidance));
            if has3 {
                s.push_str(&format!(" {} |", fmt_opt(r.fid_3d)));
            }
            if has2 {
                s.push_str(&format!(" {} |", fmt_opt(r.fid_25d)));
            }
            if hasf {
                let f = r.factual.as_ref();
                for v in [
                    f.and_then(|m| m.precision.macro_avg),
                    f.and_then(|m| m.precision.weighted_avg),
                    f.and_then(|m| m.auc.macro_avg),
                    f.and_then(|m| m.auc.weighted_avg),
                ] {
                    s.push_str(&format!(" {} |", fmt_opt(v)));
                }
            }
            s.push_str(&format!(" {} |\n", r.n_volumes));
        }
        s
    }

    /// One panel per metric against w.
    pub fn panels(&self) -> Vec<Panel> {
        let mut p = Vec::new();
        let pts = |f: &dyn Fn(&SweepRow) -> Option<f64>| -> Vec<(f64, f64)> {
            self.rows.iter().filter_map(|r| f(r).map(|v| (r.guidance as f64, v))).collect()
        };
        let f3 = pts(&|r| r.fid_3d);
        if !f3.is_empty() {
            let name = self.backbones.iter().find(|b| b.kind == "3d").map_or("3D", |b| b.name.as_str());
            p.push(Panel::single(format!("FID 3D ({name})"), "FID 3D", f3));
        }
        let f2 = pts(&|r| r.fid_25d);
        if !f2.is_empty() {
            let name = self.backbones.iter().find(|b| b.kind == "2d").map_or("2D", |b| b.name.as_str());
            p.push(Panel::single(format!("FID 2.5D, mean of planes ({name})"), "FID 2.5D", f2));
        }
        let pm = pts(&|r| r.factual.as_ref().and_then(|m| m.precision.macro_avg));
        let pw = pts(&|r| r.factual.as_ref().and_then(|m| m.precision.weighted_avg));
        if !pm.is_empty() || !pw.is_empty() {
            p.push(Panel {
                title: "CT-Net precision".into(),
                y_label: "precision".into(),
                series: vec![("macro".into(), pm), ("weighted".into(), pw)],
            });
        }
        p
    }

    /// `sweep.json`, `sweep.md`, `sweep.png` into `dir`.
    pub fn write(&self, dir: &Path) -> Result<()> {
        write_atomic(&dir.join("sweep.json"), &json_bytes(self)?)?;
        write_atomic(&dir.join("sweep.md"), self.to_markdown().as_bytes())?;
        panels_png(&self.panels(), "guidance scale w", &dir.join("sweep.png"))?;
        Ok(())
    }
}

pub(crate) fn fmt_opt(v: Option<f64>) -> String {
    crate::report::f3(v)
}

pub(crate) fn short(h: &str) -> &str {
    &h[..h.len().min(12)]
}

/// Progress of a sweep.
pub enum SweepEvent<'a> {
    /// Starting scale `w` (index, total).
    Scale { w: f32, index: usize, total: usize },
    /// A volume of the current scale is done (or skipped).
    Volume { stem: &'a str, done: usize, total: usize, skipped: bool },
    /// A sampling step of the current volume.
    Step { step: usize, total: usize },
    /// Feature extraction.
    Features { set: &'a str, done: usize, total: usize },
    /// A scale's scores.
    Row(&'a SweepRow),
}

/// Check that an existing sidecar was written with this sweep's settings.
fn check_sidecar(path: &Path, p: &Pipeline, steps: usize, sampler: Sampler, size: [usize; 3], w: f32) -> Result<()> {
    let bytes = std::fs::read(path).map_err(|e| text2ct_io::IoError::os(path, e))?;
    let sc: Sidecar = serde_json::from_slice(&bytes)
        .map_err(|e| BenchError::Input(format!("{}: not a generation sidecar: {e}", path.display())))?;
    let mut diff = Vec::new();
    if sc.model_hash != p.model_hash {
        diff.push(format!("model hash {} (now {})", short(&sc.model_hash), short(&p.model_hash)));
    }
    if sc.steps != steps {
        diff.push(format!("steps {} (now {steps})", sc.steps));
    }
    if sc.sampler != sampler {
        diff.push(format!("sampler {} (now {sampler})", sc.sampler));
    }
    if sc.size != size {
        diff.push(format!("size {:?} (now {size:?})", sc.size));
    }
    if sc.guidance != w {
        diff.push(format!("guidance {} (now {w})", sc.guidance));
    }
    if !diff.is_empty() {
        return input(format!(
            "{} was generated with other settings: {}; use another output folder or delete it",
            path.display(),
            diff.join(", ")
        ));
    }
    Ok(())
}

/// Run the sweep into `out` (see the module documentation).
pub fn run_sweep(
    cfg: &SweepConfig,
    out: &Path,
    dev: &Device,
    progress: &mut dyn FnMut(SweepEvent),
) -> Result<SweepReport> {
    cfg.validate()?;
    let mut jobs: Vec<Job> = jobs_from_csv(&cfg.reports, cfg.count_per_report, cfg.seed, Shard::ALL)?;
    if let Some(l) = cfg.limit {
        jobs.retain(|j| j.row < l);
    }
    let n_reports = jobs.iter().map(|j| j.row).collect::<std::collections::BTreeSet<_>>().len();
    if jobs.len() < 2 {
        return input(format!(
            "{}: {} volume(s) per scale; an FID needs at least 2 (more reports or count_per_report)",
            cfg.reports.display(),
            jobs.len()
        ));
    }
    let p = Pipeline::load(&cfg.model, dev)
        .map_err(|e| BenchError::Input(format!("loading the model in {}: {e}", cfg.model.display())))?;
    let mut opts = p.default_options();
    if let Some(s) = cfg.steps {
        opts.steps = s;
    }
    if let Some(s) = cfg.size {
        opts.size = s;
    }
    if cfg.decode_window.is_some() {
        opts.decode_window = cfg.decode_window;
    }
    p.check_size(opts.size)?;
    let mut engine = FidEngine::new(&cfg.fid, &cfg.real, Some(opts.size), dev)?;
    engine.check_dims(opts.size, &format!("the generated volumes will have {:?}", opts.size))?;
    // The classifier and the reports' labels, checked before anything is generated.
    let scorer = match &cfg.classifier {
        Some(c) => {
            let clf = Classifier::load(&Classifier::resolve(c)?, dev)?;
            if clf.info.data_size != opts.size && !cfg.pad_crop {
                return input(format!(
                    "the classifier {} was trained on {:?} volumes but the sweep generates {:?}; generate at its \
                     size or set pad_crop = true",
                    clf.dir.display(),
                    clf.info.data_size,
                    opts.size
                ));
            }
            let table = LabelTable::open(&labels_path(cfg)?)?;
            Some((clf, table))
        }
        None => None,
    };
    let fopts = FactualOptions {
        predict: PredictOptions { batch: 4, pad_crop: cfg.pad_crop },
        threshold: cfg.threshold,
        keep_predictions: false,
    };
    std::fs::create_dir_all(out).map_err(|e| text2ct_io::IoError::os(out, e))?;
    let mut report = SweepReport {
        format: SweepReport::FORMAT.into(),
        model: cfg.model.display().to_string(),
        model_name: p.card.name.clone(),
        model_hash: p.model_hash.clone(),
        reports: cfg.reports.display().to_string(),
        n_reports,
        count_per_report: cfg.count_per_report,
        seed: cfg.seed,
        sampler: opts.sampler,
        steps: opts.steps,
        size: opts.size,
        real: SetInfo::of(&engine.real),
        backbones: engine.backbones(),
        protocol: engine.protocol(),
        classifier: None,
        threshold: None,
        labels: None,
        rows: Vec::new(),
        note: "Every scale starts from the same noise (seed of each volume independent of w); only the guidance \
               scale differs. FID values are comparable only within one backbone and weights hash."
            .into(),
    };
    for (wi, &w) in cfg.guidance.iter().enumerate() {
        progress(SweepEvent::Scale { w, index: wi, total: cfg.guidance.len() });
        let folder = scale_dir(w);
        let dir = out.join(&folder);
        std::fs::create_dir_all(&dir).map_err(|e| text2ct_io::IoError::os(&dir, e))?;
        let mut o = opts.clone();
        o.guidance = w;
        let t0 = Instant::now();
        let (mut generated, mut skipped) = (0, 0);
        let mut files: Vec<PathBuf> = Vec::with_capacity(jobs.len());
        for (i, job) in jobs.iter().enumerate() {
            let (nii, _, json) = output::output_paths(&dir, job);
            let done = output::is_done(&dir, job) && nii.is_file();
            if done {
                check_sidecar(&json, &p, o.steps, o.sampler, o.size, w)?;
                skipped += 1;
            } else {
                p.run_job(job, &o, &dir, None, &mut |s, n| progress(SweepEvent::Step { step: s, total: n }))
                    .map_err(|e| BenchError::Input(format!("w = {w}, {}: {e}", job.stem())))?;
                generated += 1;
            }
            files.push(nii);
            progress(SweepEvent::Volume { stem: &job.stem(), done: i + 1, total: jobs.len(), skipped: done });
        }
        let seconds_generating = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        let set = VolumeSet::from_nifti_files(&dir, &files)?;
        let scores = engine
            .score(&set, &mut |label, _, d, n| progress(SweepEvent::Features { set: label, done: d, total: n }))?;
        let factual = match &scorer {
            Some((clf, table)) => {
                let labeled = LabeledSet::with_labels(set, table)?;
                let mut rep = evaluate(clf, vec![(folder.clone(), labeled)], &fopts, &mut |_, d, n| {
                    progress(SweepEvent::Features { set: "ctnet", done: d, total: n })
                })?;
                report.classifier = Some(rep.classifier.clone());
                report.threshold = Some(rep.threshold);
                report.labels = Some(table.path.display().to_string());
                rep.rows.pop()
            }
            None => None,
        };
        let row = SweepRow {
            guidance: w,
            folder,
            n_volumes: files.len(),
            generated,
            skipped,
            fid_3d: scores.fid_3d,
            fid_25d: scores.fid_25d,
            planes: scores.planes,
            factual,
            seconds_generating,
            seconds_scoring: t1.elapsed().as_secs_f64(),
        };
        progress(SweepEvent::Row(&row));
        report.rows.push(row);
        write_atomic(&out.join("sweep.json"), &json_bytes(&report)?)?;
    }
    report.write(out)?;
    Ok(report)
}

/// Parse `0,1,3,5` into scales.
pub fn parse_guidance(s: &str) -> Result<Vec<f32>> {
    s.split(',')
        .filter(|t| !t.trim().is_empty())
        .map(|t| {
            t.trim()
                .parse::<f32>()
                .map_err(|_| BenchError::Input(format!("guidance scale {:?} is not a number", t.trim())))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(guidance: &str) -> SweepConfig {
        toml::from_str(&format!("model = \"m\"\nreports = \"r.csv\"\nreal = \"real\"\nguidance = {guidance}\n"))
            .unwrap()
    }

    /// Every scale is checked before any is generated: one beyond the generation limit fails the
    /// whole sweep up front, naming it (it used to fail only on reaching that scale).
    #[test]
    fn every_guidance_scale_is_checked_up_front() {
        // Valid scales pass on to the next check (the model folder, absent here).
        let e = config("[0.0, 5.0, 15.0]").validate().unwrap_err().to_string();
        assert!(e.contains("no model.json"), "{e}");
        let e = config("[0.0, 5.0, 1000.0]").validate().unwrap_err().to_string();
        assert!(e.contains("1000") && e.contains("outside"), "{e}");
        let e = config("[5.0, 5.0]").validate().unwrap_err().to_string();
        assert!(e.contains("given twice"), "{e}");
        assert!(config("[-1.0]").validate().is_err());
    }
}
