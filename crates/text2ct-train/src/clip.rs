//! 3D-CLIP training (Text2CT §5.1 / RAGText2CT `scripts/clip_training`): the text encoder and the
//! CT-ViT vision encoder trained jointly with the symmetric InfoNCE loss and a learnable
//! temperature, AdamW, a cosine schedule with linear warm-up (20 % of the steps by default),
//! gradient accumulation, atomic checkpoints with exact resume, a JSONL log and a loss curve.
//!
//! One optimizer step: for each of `grad_accum_steps` micro-batches of `(volume [B,1,X,Y,Z] in
//! [0, 1], report tokens [B, L])`, `loss = clip_loss(img, txt, logit_scale)` (negatives are the
//! other pairs of the *same* micro-batch, as the reference script does with accumulation) divided
//! by the number of micro-batches is back-propagated; one AdamW step; then `logit_scale` is
//! clamped to `[0, ln 100]` (the reference clamps it every step).
//!
//! **Vector quantisation in training.** CT-ViT quantises its tokens to the nearest (cosine)
//! codebook row, which has no gradient. Training uses the straight-through estimator of
//! `vector-quantize-pytorch` (`q = x + (quantize(x) - x).detach()`): the forward value is exactly
//! what [`Clip3d::encode_volume`] computes at evaluation, and the gradient reaches the encoder.
//! The codebook follows the reference's EMA update (`[codebook] update = "ema"`, decay 0.8, as
//! `vector-quantize-pytorch` 1.1.2 does in training mode, see
//! [`text2ct_models::ctvit::CosineCodebook::ema_update`]): after each micro-batch's forward the
//! codes move towards the mean direction of the tokens assigned to them. `update = "frozen"` keeps
//! the seeded random codebook (what this trainer did before; it generalises worse).
//!
//! Text: `entry.report` of the manifest ("Findings: … Impression: …"), tokenised with
//! [`ClipTokenizer::default_embedded`] to `text_config.max_position_embeddings` ids
//! (BOS, content, EOS, padding; longer reports are truncated and counted).
//!
//! Outputs: `checkpoints/step-N/` (`clip.safetensors` with Text2CT's `model.`-prefixed keys,
//! `clip_config.json`, `optim.bpk`, `config.toml`, `metrics.jsonl`, `state.json`),
//! `metrics.jsonl`, `loss_curve.png` and `final/` (`clip.safetensors` f32, `clip_f16.safetensors`,
//! `clip_config.json`, `train_config.toml`, `metrics.json`, `loss_curve.png`). Both safetensors
//! files load with [`Clip3d::load`] / [`text2ct_models::ClipTextEncoder::load`].

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::{Module, Param};
use burn::nn::{Linear, LinearConfig};
use burn::optim::grad_clipping::GradientClippingConfig;
use burn::optim::lr_scheduler::LrScheduler;
use burn::optim::{AdamWConfig, GradientsAccumulator, GradientsParams, ModuleOptimizer};
use burn::tensor::{Device, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};
use text2ct_data::labels::NUM_LABELS;
use text2ct_models::clip3d::LOGIT_SCALE_MAX;
use text2ct_models::clip_text::l2_normalize;
use text2ct_models::ctvit::pool_tokens;
use text2ct_models::{clip_loss_with_negatives, Clip3d, Clip3dConfig, ClipTextEncoder, StateDict};
use text2ct_text::ClipTokenizer;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::caption::label_caption;
use crate::checkpoint::{self, TrainState};
use crate::config::{bad, toml_from_file, toml_from_str, toml_to_string, RunConfig, ScheduleKind};
use crate::data::{step_seed, Loader, LoaderOptions, VolumeSet};
use crate::error::{Result, TrainError};
use crate::metrics::moving_average;
use crate::params;
use crate::plot::LinePlot;
use crate::progress::{Progress, ProgressEvent, StepLosses};
use crate::schedule::Schedule;

// ---------------------------------------------------------------------------------------------
// Config
// ---------------------------------------------------------------------------------------------

/// A CLIP training run: `[model]` (a [`Clip3dConfig`]: `projection_dim`, `[model.text_config]`,
/// `[model.vision_config]`), `[data]`, `[optim]`, `[schedule]`, `[run]` (see
/// [`RunConfig`]). Example: `configs/train_clip_phantom.toml`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClipTrainConfig {
    pub model: Clip3dConfig,
    pub data: ClipDataConfig,
    #[serde(default)]
    pub optim: ClipOptimConfig,
    #[serde(default)]
    pub schedule: ClipScheduleConfig,
    #[serde(default)]
    pub codebook: CodebookConfig,
    #[serde(default)]
    pub loss: ClipLossConfig,
    pub run: RunConfig,
    /// `[init]`: start from a trained CLIP (fine-tuning) instead of a random initialisation.
    #[serde(default)]
    pub init: Option<ClipInitConfig>,
}

/// `[init]`: fine-tune a trained 3D CLIP.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClipInitConfig {
    /// CLIP weights with Text2CT's keys (`model.*`) whose shapes match `[model]`: a run's
    /// `final/clip.safetensors`, a checkpoint's, or a released CLIP `.pt` (strict load: a missing,
    /// unexpected or mis-shaped key is an error). The codebook buffer comes with it. The optimizer
    /// and the schedule start fresh. Typical use: teach a trained CLIP what its data did not ask of
    /// it (e.g. the side of a finding, from data where that finding is common).
    pub clip: PathBuf,
    /// The auxiliary label head of the run that made `clip` (a checkpoint's
    /// `label_head.safetensors`), when `[loss] label_weight > 0`. Default: a fresh head.
    #[serde(default)]
    pub label_head: Option<PathBuf>,
}

/// `[loss]`: what is minimised besides the symmetric InfoNCE.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClipLossConfig {
    /// Weight of an auxiliary multi-label loss (a text2ct option, not in the reference): one
    /// linear head `projection_dim -> 18`, *shared* by both towers, reads the L2-normalised volume
    /// and text embeddings (each dimension standardised over the batch; bias initialised to the
    /// labels' training log-odds) and is trained with binary cross-entropy against the pair's 18 labels;
    /// `loss = InfoNCE + label_weight * (BCE(head(v), y) + BCE(head(t), y)) / 2`. Sharing the head
    /// makes both towers encode each finding along the same direction, which gives a small model
    /// trained from scratch a signal to break the initial symmetry (docs/evaluation/clip.md). The
    /// head lives in the checkpoints (`label_head.safetensors`) for resuming and is not part of
    /// the exported CLIP (its keys stay Text2CT's). Default 0 (off; pure InfoNCE as released).
    #[serde(default)]
    pub label_weight: f64,
    /// Mirror-report hard negatives (a text2ct option, not in the reference): each pair whose report
    /// names a side (`left` / `right`) adds that report with every side swapped
    /// ([`crate::caption::mirror_sides`]) as an extra negative text in the image → text direction
    /// ([`text2ct_models::clip_loss_with_negatives`]). Random negatives almost never differ from a
    /// report only in its sides, so plain InfoNCE gives the towers no reason to encode laterality
    /// (a left effusion then conditions generation like a right one, docs/evaluation/prompt-effects.md);
    /// the mirror report does. Label captions name no side and get no mirror. Default false.
    #[serde(default)]
    pub mirror_negatives: bool,
    /// Extra targets of the label head, read from the report text (a text2ct option): each is
    /// present when its regular expression matches the pair's report. What the 18 CT-RATE labels
    /// cannot say — the side of a finding, e.g. `name = "right pleural effusion"`,
    /// `pattern = "(?i)\\b(right|bilateral) pleural effusion"` — gets the same direct, shared
    /// supervision of both towers as the labels (the head grows to `18 + n` outputs). Needs
    /// `label_weight > 0`. Each entry's `weight` scales its term of the label BCE (the 18 labels
    /// weigh 1): one target among `18 + n` gets `1 / (18 + n)` of the label loss, too little for a
    /// small text tower to learn a fact that one word carries (docs/evaluation/prompt-effects.md,
    /// session 7). A pair whose text is a label caption has no report, so its *text* gets no
    /// report-label targets (weight 0 there); its volume keeps them. Default none.
    #[serde(default)]
    pub report_labels: Vec<ReportLabel>,
}

/// One `[[loss.report_labels]]` entry: a named target, present where `pattern` (Rust `regex`
/// syntax) matches the report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportLabel {
    pub name: String,
    pub pattern: String,
    /// Weight of this target in the label BCE (the 18 labels weigh 1). Default 1.
    #[serde(default = "one")]
    pub weight: f64,
}

fn one() -> f64 {
    1.0
}

impl ClipLossConfig {
    /// The compiled `report_labels` patterns (errors name the entry).
    pub fn report_label_regexes(&self) -> Result<Vec<regex::Regex>> {
        self.report_labels
            .iter()
            .map(|l| {
                regex::Regex::new(&l.pattern).map_err(|e| {
                    TrainError::Config(format!("loss.report_labels {:?}: bad pattern {:?}: {e}", l.name, l.pattern))
                })
            })
            .collect()
    }
}

/// `[codebook]`: how CT-ViT's vector-quantisation codebook (a buffer, not a parameter) is trained.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CodebookConfig {
    /// `ema` (default: the reference's exponential-moving-average update) or `frozen`.
    #[serde(default = "d_cb_update")]
    pub update: CodebookUpdate,
    /// EMA decay (the reference's default 0.8).
    #[serde(default = "d_cb_decay")]
    pub decay: f32,
}

impl Default for CodebookConfig {
    fn default() -> Self {
        CodebookConfig { update: d_cb_update(), decay: d_cb_decay() }
    }
}

/// See [`CodebookConfig::update`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CodebookUpdate {
    Ema,
    Frozen,
}

fn d_cb_update() -> CodebookUpdate {
    CodebookUpdate::Ema
}
fn d_cb_decay() -> f32 {
    0.8
}

/// `[data]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClipDataConfig {
    /// Prepared training manifest (volumes, reports). Required.
    pub train_manifest: PathBuf,
    /// Held-out manifest (only checked here; `text2ct eval clip` evaluates on it).
    #[serde(default)]
    pub val_manifest: Option<PathBuf>,
    /// Pairs per micro-batch (the contrastive batch). Default 8 (the paper: 16 per GPU).
    #[serde(default = "d_batch")]
    pub batch_size: usize,
    /// Use at most this many training volumes. Default: all.
    #[serde(default)]
    pub limit: Option<usize>,
    /// Probability that a pair's report is replaced, for that step, by a short caption written
    /// from its 18 labels ([`crate::caption::label_caption`]; CXR-CLIP's label-to-prompt
    /// augmentation). Default 0 (reports only, as the reference trains). Seeded by
    /// `(run.seed, step, micro-batch)`, so a resumed run draws the same captions.
    #[serde(default)]
    pub label_caption_prob: f64,
}

/// `[optim]`: AdamW. Defaults are the paper's (lr 5e-5, weight decay 1e-4, eps 1e-8).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClipOptimConfig {
    #[serde(default = "d_lr")]
    pub lr: f64,
    #[serde(default = "d_betas")]
    pub betas: [f32; 2],
    #[serde(default = "d_wd")]
    pub weight_decay: f32,
    #[serde(default = "d_eps")]
    pub eps: f32,
    /// Micro-batches per optimizer step. Default 1.
    #[serde(default = "d_one")]
    pub grad_accum_steps: usize,
    /// Per-parameter gradient norm clipping (burn's). Default none.
    #[serde(default)]
    pub grad_clip_norm: Option<f32>,
}

/// `[schedule]`: cosine with a linear warm-up over `warmup_fraction` of `run.steps` by default
/// (`get_cosine_schedule_with_warmup`, 20 %).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClipScheduleConfig {
    /// `cosine` (default), `constant` or `polynomial` (no warm-up).
    #[serde(default = "d_kind")]
    pub kind: ScheduleKind,
    /// Fraction of `run.steps` used for the linear warm-up. Default 0.2.
    #[serde(default = "d_warm")]
    pub warmup_fraction: f64,
    /// Floor of the cosine. Default 0.
    #[serde(default)]
    pub min_lr: f64,
}

fn d_batch() -> usize {
    8
}
fn d_lr() -> f64 {
    5e-5
}
fn d_betas() -> [f32; 2] {
    [0.9, 0.999]
}
fn d_wd() -> f32 {
    1e-4
}
fn d_eps() -> f32 {
    1e-8
}
fn d_one() -> usize {
    1
}
fn d_kind() -> ScheduleKind {
    ScheduleKind::Cosine
}
fn d_warm() -> f64 {
    0.2
}

impl Default for ClipOptimConfig {
    fn default() -> Self {
        ClipOptimConfig {
            lr: d_lr(),
            betas: d_betas(),
            weight_decay: d_wd(),
            eps: d_eps(),
            grad_accum_steps: 1,
            grad_clip_norm: None,
        }
    }
}

impl Default for ClipScheduleConfig {
    fn default() -> Self {
        ClipScheduleConfig { kind: d_kind(), warmup_fraction: d_warm(), min_lr: 0.0 }
    }
}

impl ClipTrainConfig {
    pub fn from_toml_str(s: &str) -> Result<Self> {
        toml_from_str(s)
    }

    /// Read and validate a TOML file; errors name the file.
    pub fn from_file(path: &Path) -> Result<Self> {
        toml_from_file(path, Self::validate)
    }

    pub fn to_toml_string(&self) -> Result<String> {
        toml_to_string(self)
    }

    /// Warm-up steps: `round(warmup_fraction * run.steps)` (0 for the polynomial schedule).
    pub fn warmup_steps(&self) -> usize {
        if self.schedule.kind == ScheduleKind::Polynomial {
            0
        } else {
            (self.schedule.warmup_fraction * self.run.steps as f64).round() as usize
        }
    }

    pub fn validate(&self) -> Result<()> {
        self.model.validate().map_err(|e| TrainError::Config(format!("[model]: {e}")))?;
        if self.model.vision_config.channels != 1 {
            return bad("[model.vision_config] channels must be 1 (CT volumes)");
        }
        if !(self.codebook.decay > 0.0 && self.codebook.decay < 1.0) {
            return bad(format!("[codebook] decay must be in (0, 1); got {}", self.codebook.decay));
        }
        let d = &self.data;
        if !d.train_manifest.is_file() {
            return bad(format!("data.train_manifest {} does not exist", d.train_manifest.display()));
        }
        if let Some(v) = &d.val_manifest {
            if !v.is_file() {
                return bad(format!("data.val_manifest {} does not exist", v.display()));
            }
        }
        if d.batch_size < 2 {
            return bad("data.batch_size must be >= 2 (the contrastive loss needs negatives)");
        }
        if d.limit == Some(0) {
            return bad("data.limit must be >= 1");
        }
        if !(self.loss.label_weight.is_finite() && self.loss.label_weight >= 0.0) {
            return bad(format!("loss.label_weight must be finite and >= 0; got {}", self.loss.label_weight));
        }
        if !(0.0..=1.0).contains(&d.label_caption_prob) {
            return bad(format!("data.label_caption_prob must be in [0, 1]; got {}", d.label_caption_prob));
        }
        if !self.loss.report_labels.is_empty() && self.loss.label_weight == 0.0 {
            return bad("loss.report_labels needs loss.label_weight > 0 (they are targets of the label head)");
        }
        if self.loss.report_labels.iter().any(|l| l.name.trim().is_empty()) {
            return bad("loss.report_labels: every entry needs a name");
        }
        if let Some(l) = self.loss.report_labels.iter().find(|l| !(l.weight.is_finite() && l.weight >= 0.0)) {
            return bad(format!("loss.report_labels {:?}: weight must be finite and >= 0; got {}", l.name, l.weight));
        }
        self.loss.report_label_regexes()?;
        if let Some(init) = &self.init {
            if !init.clip.is_file() {
                return bad(format!("init.clip {} does not exist", init.clip.display()));
            }
            if let Some(h) = &init.label_head {
                if !h.is_file() {
                    return bad(format!("init.label_head {} does not exist", h.display()));
                }
                if self.loss.label_weight == 0.0 {
                    return bad("init.label_head is given but [loss] label_weight is 0 (no head is trained)");
                }
            }
        }
        let o = &self.optim;
        if !(o.lr.is_finite() && o.lr > 0.0) {
            return bad("optim.lr must be finite and > 0");
        }
        if o.betas.iter().any(|b| !(0.0..1.0).contains(b)) {
            return bad(format!("optim.betas {:?} must be in [0, 1)", o.betas));
        }
        if !(o.eps > 0.0) || !(o.weight_decay >= 0.0) {
            return bad("optim.eps must be > 0 and optim.weight_decay >= 0");
        }
        if o.grad_accum_steps == 0 {
            return bad("optim.grad_accum_steps must be >= 1");
        }
        if o.grad_clip_norm.is_some_and(|c| !(c > 0.0)) {
            return bad("optim.grad_clip_norm must be > 0");
        }
        let s = &self.schedule;
        if !(0.0..1.0).contains(&s.warmup_fraction) {
            return bad("schedule.warmup_fraction must be in [0, 1)");
        }
        if s.kind == ScheduleKind::Polynomial && s.warmup_fraction > 0.0 {
            return bad("schedule.warmup_fraction must be 0 for the polynomial schedule");
        }
        if !(s.min_lr.is_finite() && s.min_lr >= 0.0) {
            return bad("schedule.min_lr must be finite and >= 0");
        }
        if self.run.steps == 0 {
            return bad("run.steps must be >= 1");
        }
        if self.run.max_wall_minutes.is_some_and(|m| !(m > 0.0)) {
            return bad("run.max_wall_minutes must be > 0");
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Metrics
// ---------------------------------------------------------------------------------------------

/// One line of the CLIP `metrics.jsonl`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClipStepRecord {
    pub step: usize,
    pub epoch: usize,
    pub lr: f64,
    /// Symmetric InfoNCE, mean over the step's micro-batches.
    pub loss: f64,
    /// `logit_scale` after the step (after the clamp); the temperature is `exp(-logit_scale)`.
    pub logit_scale: f64,
    /// In-batch top-1 accuracy (mean of volume→report and report→volume), over micro-batches.
    pub batch_acc: f64,
    pub step_s: f64,
    /// The auxiliary label BCE (mean of both towers) when `loss.label_weight > 0`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_loss: Option<f64>,
}

fn write_records(path: &Path, recs: &[ClipStepRecord]) -> Result<()> {
    let mut s = String::new();
    for r in recs {
        s.push_str(&serde_json::to_string(r).map_err(|e| TrainError::Train(e.to_string()))?);
        s.push('\n');
    }
    text2ct_io::error::atomic_write_bytes(path, s.as_bytes())?;
    Ok(())
}

fn append_record(path: &Path, r: &ClipStepRecord) -> Result<()> {
    let line = serde_json::to_string(r).map_err(|e| TrainError::Train(e.to_string()))?;
    let mut f =
        std::fs::OpenOptions::new().create(true).append(true).open(path).map_err(|e| TrainError::io(path, e))?;
    writeln!(f, "{line}").map_err(|e| TrainError::io(path, e))
}

/// Read a CLIP `metrics.jsonl`.
pub fn read_records(path: &Path) -> Result<Vec<ClipStepRecord>> {
    let s = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
    s.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| TrainError::Data(format!("{}: line {}: {e}", path.display(), i + 1)))
        })
        .collect()
}

/// The loss curve: InfoNCE (moving average) and the chance level `ln B`.
pub fn clip_loss_curve(recs: &[ClipStepRecord], batch: usize) -> LinePlot {
    let window = (recs.len() / 50).clamp(1, 50);
    let pts: Vec<(f64, f64)> = recs.iter().map(|r| (r.step as f64, r.loss)).collect();
    let acc: Vec<(f64, f64)> = recs.iter().map(|r| (r.step as f64, r.batch_acc)).collect();
    let first = recs.first().map_or(0.0, |r| r.step as f64);
    let last = recs.last().map_or(1.0, |r| r.step as f64);
    let chance = (batch as f64).ln();
    let plot = LinePlot::new("3D CLIP training", "optimizer step", "value (moving average)")
        .with_series("symmetric InfoNCE", moving_average(&pts, window))
        .with_series(&format!("chance loss ln {batch}"), vec![(first, chance), (last, chance)])
        .with_series("in-batch top-1 accuracy", moving_average(&acc, window));
    let aux: Vec<(f64, f64)> = recs.iter().filter_map(|r| r.label_loss.map(|l| (r.step as f64, l))).collect();
    if aux.is_empty() {
        plot
    } else {
        plot.with_series("auxiliary label BCE", moving_average(&aux, window))
    }
}

/// The shared label head of `[loss] label_weight`: `Linear(projection_dim -> priors.len())` (the 18
/// labels, then any `report_labels`), weights
/// uniform in ±1/sqrt(projection_dim) from `seed`, bias = the log-odds of each label's training
/// prevalence `priors[k]` (clamped to [1e-3, 1 - 1e-3]; so the head starts at the best constant
/// prediction and the gradient goes into the embeddings, not into learning the priors),
/// parameter ids from 1 << 40 (disjoint from the CLIP's). Apply it with [`label_logits`].
pub fn new_label_head(projection_dim: usize, seed: u64, priors: &[f64], dev: &Device) -> Result<Linear> {
    if priors.len() < NUM_LABELS {
        return Err(TrainError::Train(format!("{} label priors for at least {NUM_LABELS} labels", priors.len())));
    }
    let head = LinearConfig::new(projection_dim, priors.len()).init(dev);
    let mut rng = ChaCha8Rng::seed_from_u64(step_seed(seed, 30, 0));
    let bound = 1.0 / (projection_dim as f32).sqrt();
    let vals = params::export(&head)?
        .into_iter()
        .map(|(shape, v)| {
            let data = if shape.len() == 2 {
                v.iter().map(|_| rng.random_range(-bound..bound)).collect()
            } else {
                priors.iter().map(|p| p.clamp(1e-3, 1.0 - 1e-3)).map(|p| (p / (1.0 - p)).ln() as f32).collect()
            };
            (shape, data)
        })
        .collect();
    Ok(params::assign_ids(params::import(head, vals)?, 1 << 40))
}

/// The head's logits `[B, 18]` for the L2-normalised embeddings `[B, P]` of a batch: each
/// dimension is standardised over the batch first (mean 0, variance 1; no affine). A freshly
/// initialised tower maps every input near one common direction (pairwise cosine ≈ 0.99), so the
/// part that differs between volumes is ~0.1 of a unit vector; standardising hands that part to the
/// head at unit scale, and the label gradient into the towers is not drowned by the common
/// direction. Only used in training (the head is not exported), so nothing at inference depends on
/// batch statistics. A batch of one gives the bias (the prior log-odds).
pub fn label_logits(head: &Linear, emb: Tensor<2>) -> Tensor<2> {
    let mean = emb.clone().mean_dim(0);
    let centered = emb - mean;
    let var = centered.clone().powi_scalar(2).mean_dim(0);
    head.forward(centered / var.add_scalar(1e-6).sqrt())
}

/// Per-element label-BCE weights `[B, T]` of a batch, row-major, for the volumes and for the
/// texts: each target's weight (`target_weights`: 1 for the 18 labels, then the report labels'),
/// except that a text which is a label caption (`captioned[i]`) weighs 0 on the report labels,
/// which its words cannot carry.
pub fn label_target_weights(target_weights: &[f32], captioned: &[bool]) -> (Vec<f32>, Vec<f32>) {
    let vision: Vec<f32> = captioned.iter().flat_map(|_| target_weights.iter().copied()).collect();
    let text: Vec<f32> = captioned
        .iter()
        .flat_map(|&c| target_weights.iter().enumerate().map(move |(k, &w)| if c && k >= NUM_LABELS { 0.0 } else { w }))
        .collect();
    (vision, text)
}

/// Binary cross-entropy of `logits` `[B, T]` against 0/1 `targets`, each element's term times
/// `weights` `[B, T]`, averaged over all `B·T` elements (all weights 1: the plain mean BCE);
/// [`crate::classifier::weighted_bce`] with element weights only.
pub fn label_bce(logits: Tensor<2>, targets: Tensor<2>, weights: Tensor<2>) -> Tensor<1> {
    crate::classifier::weighted_bce(logits, targets, None, Some(weights))
}

// ---------------------------------------------------------------------------------------------
// Model helpers
// ---------------------------------------------------------------------------------------------

/// Training-mode image embedding: CT-ViT with the straight-through quantiser, pooled, projected,
/// L2-normalised `[B, P]`. The forward value equals [`Clip3d::encode_volume`].
pub fn encode_volume_train(model: &Clip3d, video: Tensor<5>) -> Result<Tensor<2>> {
    Ok(encode_volume_train_codes(model, video)?.0)
}

/// [`encode_volume_train`] plus the detached tokens `[n, dim]` and their codes `[n]`, for
/// [`text2ct_models::ctvit::CosineCodebook::ema_update`].
pub fn encode_volume_train_codes(model: &Clip3d, video: Tensor<5>) -> Result<(Tensor<2>, Tensor<2>, Tensor<1, Int>)> {
    let v = model.vision.as_ref().ok_or_else(|| TrainError::Train("the CLIP has no vision half".into()))?;
    let vm = &v.vision_model;
    vm.check_input(video.dims())?;
    let tokens = vm.encode_tokens(vm.patch_embed(video));
    let [b, t, h, w, d] = tokens.dims();
    let flat = tokens.clone().detach().reshape([b * t * h * w, d]);
    if !vm.use_vq {
        let dev = flat.device();
        let emb = l2_normalize(v.visual_projection.forward(pool_tokens(tokens)));
        return Ok((emb, flat, Tensor::<1, Int>::zeros([0], &dev)));
    }
    let (q, idx) = vm.quantize(tokens.clone().detach());
    let st = tokens.clone() + (q - tokens).detach();
    Ok((l2_normalize(v.visual_projection.forward(pool_tokens(st))), flat, idx.reshape([b * t * h * w])))
}

/// The state dict with Text2CT's `model.` prefix (what [`Clip3d::load`] reads).
pub fn prefixed_state_dict(model: &Clip3d) -> Result<StateDict> {
    let sd = model.to_state_dict()?;
    let mut out = StateDict::default();
    for (k, t) in sd.tensors {
        out.tensors.insert(format!("model.{k}"), t);
    }
    Ok(out)
}

/// Write the model as f32 safetensors with `model.`-prefixed keys.
pub fn save_clip(model: &Clip3d, path: &Path) -> Result<()> {
    prefixed_state_dict(model)?.write_safetensors(path, None)?;
    Ok(())
}

fn f32_to_f16_bits(v: f32) -> u16 {
    let x = v.to_bits();
    let sign = ((x >> 16) & 0x8000) as u16;
    let exp = ((x >> 23) & 0xff) as i32;
    let man = x & 0x7f_ffff;
    if exp == 0xff {
        // inf / nan
        return sign | 0x7c00 | if man != 0 { 0x200 } else { 0 };
    }
    let e = exp - 127 + 15;
    if e >= 0x1f {
        return sign | 0x7c00; // overflow -> inf
    }
    if e <= 0 {
        if e < -10 {
            return sign; // underflow -> 0
        }
        let m = man | 0x80_0000;
        let shift = (14 - e) as u32;
        let half = 1u32 << (shift - 1);
        let rest = m & ((1u32 << shift) - 1);
        let mut r = m >> shift;
        if rest > half || (rest == half && (r & 1) == 1) {
            r += 1;
        }
        return sign | r as u16;
    }
    let mut r = ((e as u32) << 10) | (man >> 13);
    let rest = man & 0x1fff;
    if rest > 0x1000 || (rest == 0x1000 && (r & 1) == 1) {
        r += 1; // may carry into the exponent (correct rounding up to inf)
    }
    sign | r as u16
}

/// Write a state dict as f16 safetensors (half the size; `StateDict::read` converts back to f32).
pub fn write_safetensors_f16(sd: &StateDict, path: &Path) -> Result<()> {
    let mut header = serde_json::Map::new();
    let mut data: Vec<u8> = Vec::new();
    for (k, t) in &sd.tensors {
        let start = data.len();
        for &v in &t.data {
            data.extend_from_slice(&f32_to_f16_bits(v).to_le_bytes());
        }
        header.insert(
            k.clone(),
            serde_json::json!({"dtype": "F16", "shape": t.shape, "data_offsets": [start, data.len()]}),
        );
    }
    let mut h = serde_json::to_string(&header).map_err(|e| TrainError::Train(e.to_string()))?.into_bytes();
    while h.len() % 8 != 0 {
        h.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + h.len() + data.len());
    out.extend_from_slice(&(h.len() as u64).to_le_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(&data);
    text2ct_io::error::atomic_write_bytes(path, &out)?;
    Ok(())
}

/// Where a trained CLIP is: a folder holding `clip_config.json` and `clip.safetensors` (a run's
/// `final/` or a checkpoint), a run folder (its `final/`, else its latest checkpoint), or a
/// `.safetensors` file with `clip_config.json` beside it.
pub fn resolve_model(path: &Path) -> Result<(Clip3dConfig, PathBuf)> {
    let has = |d: &Path| d.join("clip_config.json").is_file() && d.join("clip.safetensors").is_file();
    let (cfg_path, weights) = if path.is_file() {
        let dir = path.parent().unwrap_or(Path::new("."));
        (dir.join("clip_config.json"), path.to_path_buf())
    } else if has(path) {
        (path.join("clip_config.json"), path.join("clip.safetensors"))
    } else if has(&path.join("final")) {
        (path.join("final/clip_config.json"), path.join("final/clip.safetensors"))
    } else if let Some(c) = checkpoint::latest(&path.join("checkpoints"))? {
        (c.join("clip_config.json"), c.join("clip.safetensors"))
    } else {
        return Err(TrainError::Data(format!(
            "{}: no trained CLIP here (expected clip_config.json + clip.safetensors, final/, or checkpoints/)",
            path.display()
        )));
    };
    let cfg = Clip3dConfig::from_json_file(&cfg_path)?;
    Ok((cfg, weights))
}

/// Load a trained CLIP for inference (see [`resolve_model`]).
pub fn load_trained(path: &Path, dev: &Device) -> Result<Clip3d> {
    let (cfg, w) = resolve_model(path)?;
    Ok(Clip3d::load(&cfg, &w, dev)?)
}

/// `exp(clamp(logit_scale, 0, ln 100))`, the multiplier of the cosine similarities.
pub fn logit_multiplier(model: &Clip3d) -> f64 {
    let v = model.logit_scale.val().into_scalar::<f32>() as f64;
    v.clamp(0.0, LOGIT_SCALE_MAX).exp()
}

fn rows(t: Tensor<2>) -> Result<Vec<Vec<f32>>> {
    let [_, p] = t.dims();
    let v = t.into_data().convert::<f32>().try_into_vec::<f32>().map_err(|e| TrainError::Train(format!("{e:?}")))?;
    Ok(v.chunks(p.max(1)).map(|c| c.to_vec()).collect())
}

/// Token ids of `text` for `model` (its `max_position_embeddings`) and whether it was truncated.
pub fn tokenize(tok: &ClipTokenizer, text: &str, max_len: usize) -> (Vec<u32>, bool) {
    tok.encode_padded(text, max_len)
}

/// L2-normalised text embeddings of `texts`, `batch` at a time (inference; no gradients).
pub fn embed_texts(model: &Clip3d, tok: &ClipTokenizer, texts: &[String], batch: usize) -> Result<Vec<Vec<f32>>> {
    let dev = model.logit_scale.val().device();
    let l = model.text.max_len();
    let mut out = Vec::with_capacity(texts.len());
    for chunk in texts.chunks(batch.max(1)) {
        let ids: Vec<Vec<u32>> = chunk.iter().map(|t| tok.encode_padded(t, l).0).collect();
        model.text.check_ids(&ids)?;
        out.extend(rows(model.encode_text(ClipTextEncoder::ids_tensor(&ids, &dev)))?);
    }
    Ok(out)
}

/// L2-normalised volume embeddings of every item of `set` (evaluation-mode quantiser).
pub fn embed_volumes(model: &Clip3d, set: &VolumeSet, batch: usize, progress: Progress) -> Result<Vec<Vec<f32>>> {
    let dev = model.logit_scale.val().device();
    let mut out = Vec::with_capacity(set.len());
    let idx: Vec<usize> = (0..set.len()).collect();
    for chunk in idx.chunks(batch.max(1)) {
        let mut data = Vec::new();
        let mut dims = [0usize; 3];
        for &i in chunk {
            let (v, d) = set.read_unit(i)?;
            if dims != [0; 3] && d != dims {
                return Err(TrainError::Data(format!("volumes differ in size ({d:?} vs {dims:?})")));
            }
            dims = d;
            data.extend(v);
        }
        let shape = [chunk.len(), 1, dims[0], dims[1], dims[2]];
        let x = Tensor::<5>::from_data(TensorData::new(data, shape), &dev);
        out.extend(rows(model.encode_volume(x)?)?);
        progress(ProgressEvent::Eval { done: out.len(), total: set.len() });
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Training
// ---------------------------------------------------------------------------------------------

/// What a CLIP training run did.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClipSummary {
    pub out_dir: PathBuf,
    pub steps_done: usize,
    pub total_steps: usize,
    pub session_steps: usize,
    pub session_wall_s: f64,
    pub steps_per_s: f64,
    pub total_wall_s: f64,
    pub resumed_from: Option<PathBuf>,
    pub stopped_early: bool,
    /// Mean loss / in-batch accuracy over the last (up to) 50 steps, and the chance loss `ln B`.
    pub final_loss: f64,
    pub final_batch_acc: f64,
    pub chance_loss: f64,
    pub logit_scale: f64,
    pub warmup_steps: usize,
    /// Training reports longer than the text length (truncated).
    pub truncated_reports: usize,
    pub train_items: usize,
    pub num_params: usize,
    pub last_checkpoint: Option<PathBuf>,
    pub final_dir: Option<PathBuf>,
}

/// Knobs for tests: stop after a number of steps (simulated interruption).
#[derive(Clone, Debug, Default)]
pub struct ClipTrainOptions {
    pub stop_at: Option<usize>,
}

/// Train per the config (see the module docs).
pub fn train_clip(cfg: &ClipTrainConfig, progress: Progress) -> Result<ClipSummary> {
    train_clip_with(cfg, &ClipTrainOptions::default(), progress)
}

fn adamw(o: &ClipOptimConfig) -> ModuleOptimizer {
    AdamWConfig::new()
        .with_beta_1(o.betas[0])
        .with_beta_2(o.betas[1])
        .with_epsilon(o.eps)
        .with_weight_decay(o.weight_decay)
        .with_grad_clipping(o.grad_clip_norm.map(GradientClippingConfig::Norm))
        .init()
}

/// Deterministic parameter ids, and every parameter rebuilt from its values as a contiguous
/// tensor: a freshly initialised and a reloaded model then have the same memory layouts (a
/// transposed view summed in another order made resumed runs drift by float rounding).
fn canonical(m: Clip3d) -> Result<Clip3d> {
    let vals = params::export(&m)?;
    Ok(params::assign_ids(params::import(m, vals)?, 0))
}

fn clamp_logit_scale(mut m: Clip3d) -> Clip3d {
    let (id, t, mapper) = m.logit_scale.consume();
    let t = t.clamp(0.0, LOGIT_SCALE_MAX).detach().require_grad();
    m.logit_scale = Param::from_mapped_value(id, t, mapper);
    m
}

fn write_json<T: Serialize>(path: &Path, v: &T) -> Result<()> {
    let s = serde_json::to_string_pretty(v).map_err(|e| TrainError::Train(e.to_string()))?;
    text2ct_io::error::atomic_write_bytes(path, s.as_bytes())?;
    Ok(())
}

/// Cut a batch of padded token rows after the last row's first EOS. Exact: the text encoder is
/// causal and pools at the first EOS, so nothing after it reaches the embedding; attention then
/// costs what the longest text in the batch needs, not `max_position_embeddings`.
pub fn trim_after_eos(mut ids: Vec<Vec<u32>>) -> Vec<Vec<u32>> {
    let keep = text2ct_models::clip_text::eos_positions(&ids).into_iter().max().map_or(1, |p| p + 1);
    for r in &mut ids {
        r.truncate(keep);
    }
    ids
}

/// In-batch top-1 accuracy (both directions averaged) of normalised embeddings.
fn batch_accuracy(img: &[Vec<f32>], txt: &[Vec<f32>]) -> f64 {
    let b = img.len();
    if b == 0 {
        return 0.0;
    }
    let dot = |a: &[f32], c: &[f32]| a.iter().zip(c).map(|(x, y)| x * y).sum::<f32>();
    let argmax = |f: &dyn Fn(usize) -> f32| (0..b).fold(0, |best, j| if f(j) > f(best) { j } else { best });
    let mut hits = 0usize;
    for i in 0..b {
        hits += (argmax(&|j| dot(&img[i], &txt[j])) == i) as usize;
        hits += (argmax(&|j| dot(&txt[i], &img[j])) == i) as usize;
    }
    hits as f64 / (2 * b) as f64
}

/// [`train_clip`] with [`ClipTrainOptions`].
pub fn train_clip_with(cfg: &ClipTrainConfig, opts: &ClipTrainOptions, progress: Progress) -> Result<ClipSummary> {
    cfg.validate()?;
    let device = cfg.run.device()?; // a wrong device name fails before any data is read
    let session_start = Instant::now();
    let out = cfg.run.out_dir.clone();
    std::fs::create_dir_all(&out).map_err(|e| TrainError::io(&out, e))?;
    let ckpt_root = out.join("checkpoints");
    let seed = cfg.run.seed;
    let total = cfg.run.steps;
    let accum = cfg.optim.grad_accum_steps;
    let bsz = cfg.data.batch_size;
    let text_len = cfg.model.text_config.max_position_embeddings;

    let train_set = VolumeSet::open(&cfg.data.train_manifest, cfg.data.limit)?;
    if train_set.len() < bsz {
        return Err(TrainError::Config(format!(
            "data.batch_size {bsz} exceeds the {} training volumes",
            train_set.len()
        )));
    }
    let mut loader =
        Loader::new(train_set.clone(), LoaderOptions { batch_size: bsz, patch: None, flip_prob: [0.0; 3], seed })?;
    let sd = loader.sample_dims();
    let want = {
        let s = cfg.model.vision_config.input_shape();
        [s[1], s[2], s[3]]
    };
    if sd != want {
        return Err(TrainError::Config(format!(
            "training volumes are {sd:?} but [model.vision_config] expects {want:?} (image_size, image_size, input_depth)"
        )));
    }
    let tok = ClipTokenizer::default_embedded().map_err(|e| TrainError::Train(format!("tokenizer: {e}")))?;
    let mut tokens: HashMap<String, Vec<u32>> = HashMap::new();
    let mut labels: HashMap<String, Vec<u8>> = HashMap::new();
    let mut mirrors: HashMap<String, Vec<u32>> = HashMap::new();
    let mut truncated = 0usize;
    let report_res = cfg.loss.report_label_regexes()?;
    let n_targets = NUM_LABELS + report_res.len();
    let mut report_counts = vec![0usize; report_res.len()];
    for it in &train_set.items {
        let (ids, cut) = tok.encode_padded(&it.entry.report, text_len);
        truncated += cut as usize;
        tokens.insert(it.entry.id.clone(), ids);
        let mut l = it.entry.labels.clone();
        l.resize(NUM_LABELS, 0);
        for (k, re) in report_res.iter().enumerate() {
            let hit = re.is_match(&it.entry.report);
            report_counts[k] += hit as usize;
            l.push(hit as u8);
        }
        labels.insert(it.entry.id.clone(), l);
        if cfg.loss.mirror_negatives {
            if let Some(m) = crate::caption::mirror_sides(&it.entry.report) {
                mirrors.insert(it.entry.id.clone(), tok.encode_padded(&m, text_len).0);
            }
        }
    }
    let caption_prob = cfg.data.label_caption_prob;
    let label_weight = cfg.loss.label_weight;
    let target_weights: Vec<f32> =
        vec![1.0; NUM_LABELS].into_iter().chain(cfg.loss.report_labels.iter().map(|l| l.weight as f32)).collect();

    let dev = device.autodiff();
    let mut model = canonical(Clip3d::new(&cfg.model, seed, &dev)?)?;
    let mut optim = adamw(&cfg.optim);
    let mut head = if label_weight > 0.0 {
        let mut priors = train_set.prevalence();
        priors.extend(report_counts.iter().map(|&c| c as f64 / train_set.len().max(1) as f64));
        Some(new_label_head(cfg.model.projection_dim, seed, &priors, &dev)?)
    } else {
        None
    };
    let mut head_optim = adamw(&cfg.optim);
    let warmup = cfg.warmup_steps();
    let mut sched = Schedule::new(cfg.schedule.kind, cfg.optim.lr, total, 1.0, warmup, cfg.schedule.min_lr)?;
    let mut step = 0usize;
    let mut prior_elapsed = 0.0f64;
    let mut records: Vec<ClipStepRecord> = Vec::new();

    let existing = checkpoint::latest(&ckpt_root)?;
    let resumed_from = if cfg.run.resume { existing.clone() } else { None };
    if !cfg.run.resume {
        if let Some(p) = &existing {
            return Err(TrainError::Config(format!(
                "{} already holds checkpoints (latest {}): resume with --resume / run.resume = true, or choose another run.out_dir",
                out.display(),
                p.display()
            )));
        }
    }
    if let (Some(init), None) = (&cfg.init, &resumed_from) {
        model = canonical(Clip3d::load(&cfg.model, &init.clip, &dev)?)?;
        if let Some(hp) = &init.label_head {
            if let Some(h) = head.take() {
                head = Some(params::assign_ids(params::load_safetensors(h, hp)?, 1 << 40));
            }
        }
        progress(ProgressEvent::Message(format!(
            "initialised from {}{}",
            init.clip.display(),
            init.label_head.as_ref().map_or(String::new(), |h| format!(" (label head {})", h.display()))
        )));
    }
    if let Some(dir) = &resumed_from {
        let st = checkpoint::read_state(dir)?;
        let saved = ClipTrainConfig::from_toml_str(
            &std::fs::read_to_string(dir.join("config.toml"))
                .map_err(|e| TrainError::io(dir.join("config.toml"), e))?,
        )
        .map_err(|e| TrainError::ckpt(dir, format!("config.toml: {e}")))?;
        if saved.model != cfg.model {
            return Err(TrainError::ckpt(dir, "the checkpoint's [model] differs from the config's"));
        }
        if st.seed != seed {
            return Err(TrainError::ckpt(dir, format!("the checkpoint's seed is {}, the config's {seed}", st.seed)));
        }
        model = canonical(Clip3d::load(&cfg.model, &dir.join("clip.safetensors"), &dev)?)?;
        let p = dir.join("optim.bpk");
        optim = optim.load(&p).map_err(|e| TrainError::ckpt(&p, format!("{e:?}")))?;
        if let Some(h) = head.take() {
            // A checkpoint written without the head (label_weight was 0) starts a fresh one.
            let hp = dir.join("label_head.safetensors");
            head = Some(if hp.is_file() {
                let op = dir.join("label_head_optim.bpk");
                head_optim = head_optim.load(&op).map_err(|e| TrainError::ckpt(&op, format!("{e:?}")))?;
                params::assign_ids(params::load_safetensors(h, &hp)?, 1 << 40)
            } else {
                h
            });
        }
        loader.set_state(st.loader);
        sched.step = *st.schedulers.get("clip").unwrap_or(&st.step);
        step = st.step;
        prior_elapsed = st.elapsed_s;
        records = read_records(&dir.join("metrics.jsonl"))?;
        records.retain(|r| r.step <= step);
    }
    let metrics_path = out.join("metrics.jsonl");
    write_records(&metrics_path, &records)?;
    let num_params = model.num_params();
    progress(ProgressEvent::Message(format!(
        "CLIP ({num_params} parameters), {} training pairs of {sd:?} volumes, text length {text_len} ({truncated} reports truncated), batch {bsz} x {accum} accumulation, warm-up {warmup} steps",
        train_set.len()
    )));
    if !report_res.is_empty() {
        let list: Vec<String> =
            cfg.loss.report_labels.iter().zip(&report_counts).map(|(l, c)| format!("{:?} in {c}", l.name)).collect();
        progress(ProgressEvent::Message(format!(
            "report labels (extra label-head targets) of {} training reports: {}",
            train_set.len(),
            list.join(", ")
        )));
    }
    progress(ProgressEvent::Start { start_step: step, total_steps: total, resumed_from: resumed_from.clone() });

    let start_step = step;
    let mut last_ckpt: Option<PathBuf> = None;
    let mut stopped_early = false;
    let max_wall = cfg.run.max_wall_minutes.map(|m| m * 60.0);

    let save = |step: usize,
                model: &Clip3d,
                head: Option<(&Linear, &ModuleOptimizer)>,
                optim: &ModuleOptimizer,
                sched: &Schedule,
                loader: &Loader,
                records: &[ClipStepRecord],
                elapsed: f64|
     -> Result<PathBuf> {
        let mut schedulers = std::collections::BTreeMap::new();
        schedulers.insert("clip".to_string(), sched.to_record().scalar::<u64>("step").unwrap_or(0) as usize);
        let st = TrainState { step, loader: loader.state(), schedulers, seed, elapsed_s: elapsed, version: 1 };
        let p = checkpoint::write_checkpoint(&ckpt_root, &st, |dir| {
            save_clip(model, &dir.join("clip.safetensors"))?;
            text2ct_io::error::atomic_write_bytes(&dir.join("clip_config.json"), cfg.model.to_json().as_bytes())?;
            let p = dir.join("optim.bpk");
            optim.save(&p).map_err(|e| TrainError::ckpt(&p, format!("{e:?}")))?;
            if let Some((h, ho)) = head {
                params::save_safetensors(h, &dir.join("label_head.safetensors"))?;
                let p = dir.join("label_head_optim.bpk");
                ho.save(&p).map_err(|e| TrainError::ckpt(&p, format!("{e:?}")))?;
            }
            let toml = cfg.to_toml_string()?;
            std::fs::write(dir.join("config.toml"), toml).map_err(|e| TrainError::io(dir.join("config.toml"), e))?;
            write_records(&dir.join("metrics.jsonl"), records)
        })?;
        checkpoint::prune(&ckpt_root, cfg.run.keep_checkpoints)?;
        Ok(p)
    };

    while step < total {
        if opts.stop_at.is_some_and(|s| step >= s) {
            stopped_early = true;
            break;
        }
        if max_wall.is_some_and(|m| session_start.elapsed().as_secs_f64() >= m) {
            stopped_early = true;
            progress(ProgressEvent::Message(format!("run.max_wall_minutes reached after step {step}")));
            break;
        }
        let t0 = Instant::now();
        let epoch = loader.state().epoch;
        let lr = sched.step();
        let mut acc = GradientsAccumulator::new();
        let mut head_acc = GradientsAccumulator::new();
        let (mut loss_sum, mut acc_sum, mut label_sum) = (0.0f64, 0.0f64, 0.0f64);
        for micro in 0..accum {
            let batch = loader.next_batch()?;
            let x = Tensor::<5>::from_data(TensorData::new(batch.data, batch.dims), &dev);
            let mut rng = ChaCha8Rng::seed_from_u64(step_seed(seed, 20 + micro as u64, step as u64));
            let mut negatives: Vec<Vec<u32>> = Vec::new();
            let mut captioned: Vec<bool> = Vec::with_capacity(batch.ids.len());
            let mut ids: Vec<Vec<u32>> = batch
                .ids
                .iter()
                .map(|id| {
                    let caption = caption_prob > 0.0 && rng.random_bool(caption_prob);
                    captioned.push(caption);
                    if caption {
                        tok.encode_padded(&label_caption(&labels[id], &mut rng), text_len).0
                    } else {
                        negatives.extend(mirrors.get(id).cloned());
                        tokens[id].clone()
                    }
                })
                .collect();
            // One text forward for the batch's reports and their mirrors.
            let b = ids.len();
            let m = negatives.len();
            ids.extend(negatives);
            let ids = trim_after_eos(ids);
            model.text.check_ids(&ids)?;
            let all = model.encode_text(ClipTextEncoder::ids_tensor(&ids, &dev));
            let (txt, extra) = if m > 0 {
                let p = all.dims()[1];
                (all.clone().slice([0..b, 0..p]), Some(all.slice([b..b + m, 0..p])))
            } else {
                (all, None)
            };
            let (img, flat, codes) = encode_volume_train_codes(&model, x)?;
            if cfg.codebook.update == CodebookUpdate::Ema && cfg.model.vision_config.quantize {
                if let Some(v) = model.vision.as_mut() {
                    v.vision_model.vq.ema_update(flat, codes, cfg.codebook.decay);
                }
            }
            acc_sum += batch_accuracy(&rows(img.clone().detach())?, &rows(txt.clone().detach())?);
            let mut loss = clip_loss_with_negatives(img.clone(), txt.clone(), extra, model.logit_scale.val());
            let lv = loss.clone().into_scalar::<f32>() as f64;
            if !lv.is_finite() {
                return Err(TrainError::Train(format!("non-finite loss {lv} at step {step}")));
            }
            loss_sum += lv;
            if let Some(h) = &head {
                let b = batch.ids.len();
                let y: Vec<f32> = batch
                    .ids
                    .iter()
                    .flat_map(|id| (0..n_targets).map(|k| f32::from(labels[id].get(k).copied().unwrap_or(0) != 0)))
                    .collect();
                let y = Tensor::<2>::from_data(TensorData::new(y, [b, n_targets]), &dev);
                let (wv, wt) = label_target_weights(&target_weights, &captioned);
                let wv = Tensor::<2>::from_data(TensorData::new(wv, [b, n_targets]), &dev);
                let wt = Tensor::<2>::from_data(TensorData::new(wt, [b, n_targets]), &dev);
                let aux = (label_bce(label_logits(h, img), y.clone(), wv) + label_bce(label_logits(h, txt), y, wt))
                    .mul_scalar(0.5);
                label_sum += aux.clone().into_scalar::<f32>() as f64;
                loss = loss + aux.mul_scalar(label_weight);
            }
            let mut grads = loss.div_scalar(accum as f64).backward();
            acc.accumulate(&model, GradientsParams::from_module(&mut grads, &model));
            if let Some(h) = &head {
                head_acc.accumulate(h, GradientsParams::from_module(&mut grads, h));
            }
        }
        model = clamp_logit_scale(optim.step(lr, model, acc.grads()));
        if let Some(h) = head.take() {
            head = Some(head_optim.step(lr, h, head_acc.grads()));
        }
        step += 1;
        let rec = ClipStepRecord {
            step,
            epoch,
            lr,
            loss: loss_sum / accum as f64,
            logit_scale: model.logit_scale.val().into_scalar::<f32>() as f64,
            batch_acc: acc_sum / accum as f64,
            step_s: t0.elapsed().as_secs_f64(),
            label_loss: head.as_ref().map(|_| label_sum / accum as f64),
        };
        append_record(&metrics_path, &rec)?;
        records.push(rec.clone());
        let sps = (step - start_step) as f64 / session_start.elapsed().as_secs_f64().max(1e-9);
        let losses = StepLosses { total: rec.loss, ..Default::default() };
        progress(ProgressEvent::Step { step, total_steps: total, epoch, lr, losses, steps_per_s: sps });
        if cfg.run.checkpoint_every > 0 && step % cfg.run.checkpoint_every == 0 && step < total {
            let elapsed = prior_elapsed + session_start.elapsed().as_secs_f64();
            let p = save(
                step,
                &model,
                head.as_ref().map(|h| (h, &head_optim)),
                &optim,
                &sched,
                &loader,
                &records,
                elapsed,
            )?;
            progress(ProgressEvent::Checkpoint { step, path: p.clone() });
            last_ckpt = Some(p);
            clip_loss_curve(&records, bsz).save_png(&out.join("loss_curve.png"))?;
        }
    }
    let session_wall = session_start.elapsed().as_secs_f64();
    let elapsed = prior_elapsed + session_wall;
    if step > start_step || last_ckpt.is_none() {
        let p =
            save(step, &model, head.as_ref().map(|h| (h, &head_optim)), &optim, &sched, &loader, &records, elapsed)?;
        progress(ProgressEvent::Checkpoint { step, path: p.clone() });
        last_ckpt = Some(p);
    }
    let tail = &records[records.len().saturating_sub(50)..];
    let k = tail.len().max(1) as f64;
    let mut summary = ClipSummary {
        out_dir: out.clone(),
        steps_done: step,
        total_steps: total,
        session_steps: step - start_step,
        session_wall_s: session_wall,
        steps_per_s: (step - start_step) as f64 / session_wall.max(1e-9),
        total_wall_s: elapsed,
        resumed_from,
        stopped_early,
        final_loss: tail.iter().map(|r| r.loss).sum::<f64>() / k,
        final_batch_acc: tail.iter().map(|r| r.batch_acc).sum::<f64>() / k,
        chance_loss: (bsz as f64).ln(),
        logit_scale: model.logit_scale.val().into_scalar::<f32>() as f64,
        warmup_steps: warmup,
        truncated_reports: truncated,
        train_items: train_set.len(),
        num_params,
        last_checkpoint: last_ckpt,
        final_dir: None,
    };
    if opts.stop_at.is_some() && stopped_early {
        return Ok(summary);
    }
    let fin = out.join("final");
    std::fs::create_dir_all(&fin).map_err(|e| TrainError::io(&fin, e))?;
    let sdict = prefixed_state_dict(&model)?;
    sdict.write_safetensors(&fin.join("clip.safetensors"), None)?;
    write_safetensors_f16(&sdict, &fin.join("clip_f16.safetensors"))?;
    text2ct_io::error::atomic_write_bytes(&fin.join("clip_config.json"), cfg.model.to_json().as_bytes())?;
    text2ct_io::error::atomic_write_bytes(&fin.join("train_config.toml"), cfg.to_toml_string()?.as_bytes())?;
    let curve = clip_loss_curve(&records, bsz);
    curve.save_png(&out.join("loss_curve.png"))?;
    curve.save_png(&fin.join("loss_curve.png"))?;
    summary.final_dir = Some(fin.clone());
    write_json(&fin.join("metrics.json"), &summary)?;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_bits() {
        for (v, b) in
            [(0.0f32, 0u16), (1.0, 0x3c00), (-2.0, 0xc000), (65504.0, 0x7bff), (1e-8, 0), (6.1035156e-5, 0x0400)]
        {
            assert_eq!(f32_to_f16_bits(v), b, "{v}");
        }
        // subnormal
        assert_eq!(f32_to_f16_bits(5.9604645e-8), 1);
        // rounding to nearest
        assert_eq!(f32_to_f16_bits(1.0 + 1.0 / 2048.0 + 1e-7), 0x3c01);
    }

    #[test]
    fn accuracy_of_identity() {
        let e = vec![vec![1.0, 0.0], vec![0.0, 1.0]];
        assert_eq!(batch_accuracy(&e, &e), 1.0);
    }

    #[test]
    fn trimming_after_eos_leaves_text_embeddings_unchanged() {
        let cfg = text2ct_models::ClipTextConfig {
            vocab_size: 49408,
            hidden_size: 16,
            num_hidden_layers: 2,
            num_attention_heads: 2,
            intermediate_size: 32,
            max_position_embeddings: 64,
            hidden_act: "quick_gelu".into(),
            layer_norm_eps: 1e-5,
            projection_dim: 8,
        };
        let dev = Device::flex();
        let enc = ClipTextEncoder::new(&cfg, 3, &dev).unwrap();
        let tok = ClipTokenizer::default_embedded().unwrap();
        let texts = ["No pleural effusion.", "Cardiomegaly. Right pleural effusion with a maximal thickness of 30 mm."];
        let ids: Vec<Vec<u32>> = texts.iter().map(|t| tok.encode_padded(t, 64).0).collect();
        let trimmed = trim_after_eos(ids.clone());
        assert!(trimmed[0].len() < 64 && trimmed.iter().all(|r| r.len() == trimmed[0].len()));
        let longest = ids[1].iter().position(|&t| t == text2ct_text::EOS_ID).unwrap() + 1;
        assert_eq!(trimmed[0].len(), longest, "cut right after the longest text's EOS");
        let full = rows(enc.encode(ClipTextEncoder::ids_tensor(&ids, &dev))).unwrap();
        let cut = rows(enc.encode(ClipTextEncoder::ids_tensor(&trimmed, &dev))).unwrap();
        for (a, b) in full.iter().zip(&cut) {
            for (x, y) in a.iter().zip(b) {
                assert!((x - y).abs() < 1e-5, "{x} vs {y}");
            }
        }
    }

    #[test]
    fn label_head_starts_at_the_prior_log_odds() {
        let dev = Device::flex();
        let mut priors = vec![0.25; NUM_LABELS];
        priors[0] = 0.0;
        priors[1] = 0.5;
        let h = new_label_head(8, 1, &priors, &dev).unwrap();
        let b = rows(h.bias.as_ref().unwrap().val().unsqueeze_dim(0)).unwrap().remove(0);
        assert!((b[0] - (1e-3f32 / (1.0 - 1e-3)).ln()).abs() < 1e-4, "{}", b[0]);
        assert!(b[1].abs() < 1e-6);
        assert!((b[2] - (1.0f32 / 3.0).ln()).abs() < 1e-5);
        // A zero embedding gives exactly the prior log-odds.
        let z = Tensor::<2>::zeros([1, 8], &dev);
        let l = rows(label_logits(&h, z)).unwrap().remove(0);
        assert_eq!(l, b);
        assert!(new_label_head(8, 1, &priors[..3], &dev).is_err());
        // Report labels add outputs after the 18.
        priors.push(0.5);
        let h = new_label_head(8, 1, &priors, &dev).unwrap();
        assert_eq!(h.weight.val().dims(), [8, NUM_LABELS + 1]);
    }

    #[test]
    fn label_bce_weighs_each_element() {
        let dev = Device::flex();
        let logits = Tensor::<2>::from_data(TensorData::new(vec![0.5f32, -1.0, 2.0, 0.0], [2, 2]), &dev);
        let y = Tensor::<2>::from_data(TensorData::new(vec![1.0f32, 0.0, 0.0, 1.0], [2, 2]), &dev);
        let bce = |z: f64, t: f64| -(t * (1.0 / (1.0 + (-z).exp())).ln() + (1.0 - t) * (1.0 / (1.0 + z.exp())).ln());
        let terms = [bce(0.5, 1.0), bce(-1.0, 0.0), bce(2.0, 0.0), bce(0.0, 1.0)];
        let w = |v: Vec<f32>| Tensor::<2>::from_data(TensorData::new(v, [2, 2]), &dev);
        let got = |wv: Vec<f32>| label_bce(logits.clone(), y.clone(), w(wv)).into_scalar::<f32>() as f64;
        // All ones: the plain mean.
        assert!((got(vec![1.0; 4]) - terms.iter().sum::<f64>() / 4.0).abs() < 1e-6);
        // A weight scales its own term only, still divided by B*T.
        let want = (terms[0] + 10.0 * terms[1] + terms[3]) / 4.0;
        assert!((got(vec![1.0, 10.0, 0.0, 1.0]) - want).abs() < 1e-5);
    }

    #[test]
    fn label_captions_carry_no_report_targets_for_the_text() {
        let mut tw = vec![1.0f32; NUM_LABELS];
        tw.extend([10.0, 4.0]);
        let (v, t) = label_target_weights(&tw, &[false, true]);
        let n = NUM_LABELS + 2;
        assert_eq!(v.len(), 2 * n);
        assert_eq!(&v[..n], &tw[..]);
        assert_eq!(&v[n..], &tw[..]);
        // The report's text keeps every target; the caption's keeps the 18 labels only.
        assert_eq!(&t[..n], &tw[..]);
        assert_eq!(&t[n..n + NUM_LABELS], &vec![1.0; NUM_LABELS][..]);
        assert_eq!(&t[n + NUM_LABELS..], &[0.0, 0.0]);
    }
}
