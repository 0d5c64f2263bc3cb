//! The augmentation study (the paper's Table 6): CT-Net trained on real volumes only, on
//! synthetic volumes only, and on both, each with the same network, steps, seed and
//! hyper-parameters, always tested on the same real test set. Writes `augment.json`,
//! `augment.md` (Table 6's layout plus per-class values) and `augment.png` (grouped bars).
//!
//! The study is resumable: each regime trains in `out_dir/<regime>/` with `run.resume = true`
//! (an interrupted regime continues from its last checkpoint), and a regime whose classifier
//! folder (`final/classifier.json`) exists is not trained again.
//!
//! Config (`text2ct eval augment --config AUG.toml`): a `[study]` table and the classifier's
//! `[model]`, `[augment]`, `[loss]`, `[optim]`, `[schedule]`, `[train]` tables:
//!
//! ```toml
//! [study]
//! out_dir = "runs/augment_phantom"
//! real = [{ volumes = "ph_train/manifest.jsonl" }]
//! synthetic = [{ volumes = "gen_train/", labels = "ph_train/manifest.jsonl" }]
//! test = { volumes = "ph_valid/manifest.jsonl" }
//!
//! [train]
//! steps = 300
//! batch_size = 4
//! seed = 0
//! ```
//!
//! It lives here, above `text2ct-train`, because it is an experiment (it trains classifiers with
//! `text2ct_train::classifier` and scores them with `text2ct_eval::factual`); its errors are the
//! trainer's ([`TrainError`]).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use text2ct_eval::factual::{
    per_class_markdown, predict, set_metrics, table3_markdown, Classifier, LabeledSet, PredictOptions, SetMetrics,
    THRESHOLD,
};

use text2ct_train::classifier::{
    self, AugmentConfig, ClassifierDataConfig, ClassifierLossConfig, ClassifierModelConfig, ClassifierSummary,
    ClassifierTrainConfig, ClassifierTrainOptions, SourceConfig,
};
use text2ct_train::config::{bad, toml_from_file, toml_from_str, OptimConfig, RunConfig, ScheduleConfig};
use text2ct_train::plot::BarPlot;
use text2ct_train::progress::{Progress, ProgressEvent};
use text2ct_train::runloop;
use text2ct_train::{Result, TrainError};

/// A training regime of the study.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Regime {
    Real,
    Synthetic,
    RealSynthetic,
}

impl Regime {
    pub const ALL: [Regime; 3] = [Regime::Real, Regime::Synthetic, Regime::RealSynthetic];

    /// Table 6's row name.
    pub fn label(self) -> &'static str {
        match self {
            Regime::Real => "Real only",
            Regime::Synthetic => "Synthetic only",
            Regime::RealSynthetic => "Real + Synthetic",
        }
    }

    /// Folder name under the study's `out_dir`.
    pub fn dir(self) -> &'static str {
        match self {
            Regime::Real => "real",
            Regime::Synthetic => "synthetic",
            Regime::RealSynthetic => "real_synthetic",
        }
    }
}

/// `[study]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StudyConfig {
    pub out_dir: PathBuf,
    /// Real training sources.
    pub real: Vec<SourceConfig>,
    /// Synthetic training sources (e.g. `generate` output with the labels of its reports).
    pub synthetic: Vec<SourceConfig>,
    /// The real test set (never trained on).
    pub test: SourceConfig,
    /// Regimes to run. Default all three.
    #[serde(default = "all_regimes")]
    pub regimes: Vec<Regime>,
    /// Pad / crop volumes of other shapes (training and test). Default false.
    #[serde(default)]
    pub pad_crop: bool,
    /// Decision threshold of precision. Default 0.5.
    #[serde(default = "default_threshold")]
    pub threshold: f64,
}

/// `[train]`: what each regime's run shares.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StudyTrainConfig {
    /// Optimizer steps per regime (the same for all: equal compute, not equal epochs). Default 300.
    #[serde(default = "default_steps")]
    pub steps: usize,
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    #[serde(default)]
    pub seed: u64,
    /// Default 100.
    #[serde(default = "default_ckpt")]
    pub checkpoint_every: usize,
}

impl Default for StudyTrainConfig {
    fn default() -> Self {
        StudyTrainConfig {
            steps: default_steps(),
            batch_size: default_batch(),
            seed: 0,
            checkpoint_every: default_ckpt(),
        }
    }
}

fn all_regimes() -> Vec<Regime> {
    Regime::ALL.to_vec()
}
fn default_threshold() -> f64 {
    THRESHOLD
}
fn default_steps() -> usize {
    300
}
fn default_batch() -> usize {
    4
}
fn default_ckpt() -> usize {
    100
}

/// The study's config.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AugmentStudyConfig {
    pub study: StudyConfig,
    #[serde(default)]
    pub train: Option<StudyTrainConfig>,
    #[serde(default)]
    pub model: ClassifierModelConfig,
    #[serde(default)]
    pub augment: AugmentConfig,
    #[serde(default)]
    pub loss: ClassifierLossConfig,
    #[serde(default)]
    pub optim: Option<OptimConfig>,
    #[serde(default)]
    pub schedule: ScheduleConfig,
}

impl AugmentStudyConfig {
    pub fn from_toml_str(s: &str) -> Result<Self> {
        toml_from_str(s)
    }

    pub fn from_file(path: &Path) -> Result<Self> {
        toml_from_file(path, Self::validate)
    }

    /// [`AugmentStudyConfig::from_file`] with `study.out_dir` and `train.steps` overridden
    /// (`eval augment --out-dir --steps`, the report's `[augmentation]`), validated again.
    pub fn from_file_with(path: &Path, out_dir: Option<&Path>, steps: Option<usize>) -> Result<Self> {
        let mut cfg = Self::from_file(path)?;
        if let Some(o) = out_dir {
            cfg.study.out_dir = o.to_path_buf();
        }
        if let Some(s) = steps {
            let mut t = cfg.train.clone().unwrap_or_default();
            t.steps = s;
            cfg.train = Some(t);
        }
        cfg.validate().map_err(|e| TrainError::Config(format!("{}: {e}", path.display())))?;
        Ok(cfg)
    }

    fn train_cfg(&self) -> StudyTrainConfig {
        self.train.clone().unwrap_or_default()
    }

    /// The classifier config of one regime.
    pub fn regime_config(&self, r: Regime) -> ClassifierTrainConfig {
        let s = &self.study;
        let t = self.train_cfg();
        let train = match r {
            Regime::Real => s.real.clone(),
            Regime::Synthetic => s.synthetic.clone(),
            Regime::RealSynthetic => s.real.iter().chain(&s.synthetic).cloned().collect(),
        };
        ClassifierTrainConfig {
            model: self.model.clone(),
            data: ClassifierDataConfig { train, val: None, batch_size: t.batch_size, pad_crop: s.pad_crop },
            augment: self.augment.clone(),
            loss: self.loss.clone(),
            optim: self.optim.clone().unwrap_or_else(classifier::default_optim),
            schedule: self.schedule.clone(),
            run: RunConfig {
                out_dir: s.out_dir.join(r.dir()),
                steps: t.steps,
                checkpoint_every: t.checkpoint_every,
                keep_checkpoints: 1,
                seed: t.seed,
                resume: true,
                max_wall_minutes: None,
                eval_max_items: 0,
                device: "cpu".to_string(),
            },
        }
    }

    pub fn validate(&self) -> Result<()> {
        let s = &self.study;
        if s.regimes.is_empty() {
            return bad("study.regimes must name at least one of real, synthetic, real_synthetic");
        }
        let needs_real = s.regimes.iter().any(|r| *r != Regime::Synthetic);
        let needs_syn = s.regimes.iter().any(|r| *r != Regime::Real);
        if needs_real && s.real.is_empty() {
            return bad("study.real needs at least one source for the real regimes");
        }
        if needs_syn && s.synthetic.is_empty() {
            return bad("study.synthetic needs at least one source for the synthetic regimes");
        }
        if !s.test.volumes.exists() {
            return bad(format!("study.test.volumes {} does not exist", s.test.volumes.display()));
        }
        if !(0.0..=1.0).contains(&s.threshold) {
            return bad(format!("study.threshold must be in [0, 1], got {}", s.threshold));
        }
        for r in &s.regimes {
            self.regime_config(*r).validate().map_err(|e| TrainError::Config(format!("regime {}: {e}", r.dir())))?;
        }
        Ok(())
    }
}

/// One regime's result.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RegimeResult {
    pub regime: Regime,
    pub classifier: PathBuf,
    pub weights_sha256: String,
    pub n_train: usize,
    pub steps: usize,
    /// Training summary of this session (None when the classifier already existed).
    pub training: Option<ClassifierSummary>,
    pub test: SetMetrics,
}

/// The study's report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AugmentReport {
    pub protocol: String,
    pub test_set: String,
    pub n_test: usize,
    pub threshold: f64,
    pub steps: usize,
    pub seed: u64,
    pub class_names: Vec<String>,
    pub results: Vec<RegimeResult>,
}

impl AugmentReport {
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    }

    pub fn to_markdown(&self) -> String {
        let rows: Vec<SetMetrics> = self.results.iter().map(|r| r.test.clone()).collect();
        let mut s =
            String::from("# Augmentation study (CT-Net trained on real / synthetic / both, tested on real)\n\n");
        s.push_str(&format!(
            "Test set `{}` ({} real volumes). Each regime: the same network, {} optimizer steps, seed {}; \
             precision at p >= {}; weighted = by positives per class (docs/evaluation/factual.md).\n\n",
            self.test_set, self.n_test, self.steps, self.seed, self.threshold
        ));
        s.push_str(&table3_markdown("Training set", &rows));
        s.push_str("\n| regime | training volumes | classifier | weights sha256 |\n|---|---|---|---|\n");
        for r in &self.results {
            s.push_str(&format!(
                "| {} | {} | `{}` | `{}` |\n",
                r.regime.label(),
                r.n_train,
                r.classifier.display(),
                &r.weights_sha256[..r.weights_sha256.len().min(16)]
            ));
        }
        s.push_str("\n## Per class (test set)\n\n");
        s.push_str(&per_class_markdown(&self.class_names, &rows));
        s
    }

    /// Grouped bars: the four Table-6 metrics, one bar per regime.
    pub fn plot(&self) -> BarPlot {
        let mut p = BarPlot::new(
            "CT-Net on the real test set, by training data",
            "value",
            &["AUC (macro)", "AUC (weighted)", "Precision (macro)", "Precision (weighted)"],
        );
        p.y_range = Some((0.0, 1.1));
        for r in &self.results {
            let t = &r.test;
            let v = [t.auc.macro_avg, t.auc.weighted_avg, t.precision.macro_avg, t.precision.weighted_avg]
                .map(|x| x.unwrap_or(f64::NAN));
            p = p.with_series(r.regime.label(), v.to_vec());
        }
        p
    }

    /// Write `augment.json`, `augment.md` and `augment.png` into `dir`.
    pub fn write(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
        runloop::write_text(&dir.join("augment.json"), &self.to_json())?;
        runloop::write_text(&dir.join("augment.md"), &self.to_markdown())?;
        self.plot().save_png(&dir.join("augment.png"))
    }
}

fn data_err(e: impl std::fmt::Display) -> TrainError {
    TrainError::Data(e.to_string())
}

/// Run the study (see the module docs) and write its report into `study.out_dir`.
pub fn run_study(cfg: &AugmentStudyConfig, progress: Progress) -> Result<AugmentReport> {
    cfg.validate()?;
    let s = &cfg.study;
    let test = LabeledSet::open(&s.test.volumes, s.test.labels.as_deref()).map_err(data_err)?;
    let mut test = test;
    if let Some(n) = s.test.limit {
        test.items.truncate(n);
    }
    if test.is_empty() {
        return Err(TrainError::Data(format!("study.test {}: no volumes", s.test.volumes.display())));
    }
    let dev = text2ct_models::burn::tensor::Device::flex();
    let mut results = Vec::new();
    for &r in &s.regimes {
        let rc = cfg.regime_config(r);
        let fin = rc.run.out_dir.join("final");
        let training = if fin.join(text2ct_eval::factual::INFO_FILE).is_file() {
            progress(ProgressEvent::Message(format!(
                "{}: classifier exists in {}, not retrained",
                r.label(),
                fin.display()
            )));
            None
        } else {
            progress(ProgressEvent::Message(format!("{}: training in {}", r.label(), rc.run.out_dir.display())));
            Some(classifier::train_with(&rc, &ClassifierTrainOptions::default(), progress)?)
        };
        let clf = Classifier::load(&fin, &dev).map_err(data_err)?;
        let want = (!s.pad_crop).then_some(clf.info.data_size);
        let probs =
            predict(&clf.model, &test, want, &PredictOptions { batch: 4, pad_crop: s.pad_crop }, &mut |d, t| {
                progress(ProgressEvent::Eval { done: d, total: t })
            })
            .map_err(data_err)?;
        let mut m = set_metrics(r.label(), &test.label_rows(), &probs, s.threshold).map_err(data_err)?;
        m.volumes = test.set.path.display().to_string();
        m.labels = test.labels_path.display().to_string();
        results.push(RegimeResult {
            regime: r,
            classifier: fin,
            weights_sha256: clf.weights_sha256.clone(),
            n_train: clf.info.n_train,
            steps: clf.info.steps,
            training,
            test: m,
        });
    }
    let t = cfg.train_cfg();
    let report = AugmentReport {
        protocol: text2ct_eval::factual::PROTOCOL.into(),
        test_set: test.set.path.display().to_string(),
        n_test: test.len(),
        threshold: s.threshold,
        steps: t.steps,
        seed: t.seed,
        class_names: text2ct_data::labels::LABELS.iter().map(|s| s.to_string()).collect(),
        results,
    };
    report.write(&s.out_dir)?;
    Ok(report)
}
