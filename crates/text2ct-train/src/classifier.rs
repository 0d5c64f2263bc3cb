//! CT-Net classifier training (the factual-correctness classifier of the paper's §5 and the
//! augmentation study's Table 6): multi-label BCE over the 18 CT-RATE labels, class weighting,
//! label-preserving augmentation, AdamW, exact resume, loss curve, validation AUC per epoch, and
//! a classifier folder that `text2ct eval factual` and `text2ct eval fid --backbone ctnet` load.
//!
//! **Data.** `[[data.train]]` sources, each a labelled volume set
//! ([`text2ct_eval::factual::LabeledSet`]): a prepared manifest (labels from it), or a NIfTI
//! folder (e.g. `generate` output) with a labels CSV / manifest, matched per volume as the
//! factual evaluation matches them. Several sources are concatenated (real + synthetic). Volumes
//! are read once (RAS, HU clipped to [-1000, 1000]), centre padded (-1000 HU) / cropped to the
//! network input and kept in memory as int16 (2 bytes per voxel). All training volumes must
//! have one shape unless `data.pad_crop = true`.
//!
//! **Network.** CT-Net ([`CtNetConfig::fitted`]) for the input `[X, Y, Z]` (`Z` a multiple of 3;
//! default: the training shape with `Z` rounded up to one), trunk widths configurable (the
//! paper's ResNet-18: 64..512; the phantom default is narrower). No ImageNet pre-training (no
//! weights can be had offline): the trunk starts from PyTorch's default initialisation.
//!
//! **Loss.** `BCEWithLogits` with `pos_weight` (PyTorch's definition):
//! `l = -mean_{b,c} [w_c·y·log σ(x) + (1 - y)·log(1 - σ(x))]`; with `loss.pos_weight =
//! "prevalence"` (default) `w_c = clamp(N_neg,c / N_pos,c, 1, loss.max_pos_weight)` from the
//! training set (classes without positives get 1), `"none"` gives `w_c = 1`.
//!
//! **Augmentation** (per sample, never changes the labels): an integer shift of up to
//! `augment.shift` voxels per axis (filled with -1000 HU), an intensity jitter
//! `hu' = -1000 + (hu + 1000)·(1 + a) + b` with `a ~ U(±intensity_scale)`, `b ~
//! U(±intensity_shift_hu)`, and optional Gaussian noise (`noise_std_hu`). **No flips**: the
//! labels come from reports that name sides ("right pleural effusion"), and a left-right flip
//! would silently contradict them; no rotations for the same reason.
//!
//! **Initialisation**: PyTorch's defaults (trunk BatchNorm identity), except the output bias,
//! which starts at the base-rate optimum `ln(w_c·p_c / (1 - p_c))` ([`prior_bias`]).
//!
//! **Dropout** is CT-Net's (0.5 after each hidden FC), with masks drawn from a generator seeded
//! by `(seed, step, micro-batch)` so that a resumed run is bit-identical to an uninterrupted one
//! (the data order and augmentation are pure functions of `(seed, epoch, position)`, as in
//! [`crate::data`]).
//!
//! **Outputs** under `run.out_dir`: `checkpoints/step-N/` (ctnet.safetensors, ctnet_config.json,
//! optim.bpk, config.toml, metrics.jsonl, val.jsonl, state.json), `metrics.jsonl`, `val.jsonl`,
//! `loss_curve.png`, `val_auc.png`, and `final/`: the classifier folder (classifier.json,
//! ctnet_config.json, ctnet.safetensors) plus train_config.toml, summary.json and the plots.

use std::path::{Path, PathBuf};

use burn::module::{Module, Param};
use burn::optim::lr_scheduler::LrScheduler;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::activation::{log_sigmoid, relu};
use burn::tensor::{Device, Tensor, TensorData};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::Distribution;
use serde::{Deserialize, Serialize};
use text2ct_data::labels::{LABELS, NUM_LABELS};
use text2ct_eval::factual::{
    self, input_dims, predict, set_metrics, Classifier, ClassifierInfo, LabeledSet, PredictOptions, SetMetrics,
};
use text2ct_eval::fid::pad_crop_monai;
use text2ct_models::ctnet::{prepare_volume, CtNet, CtNetConfig, CtNetNet};

use crate::config::{bad, toml_from_file, toml_from_str, toml_to_string, OptimConfig, RunConfig, ScheduleConfig};
use crate::data::{step_seed, LoaderState};
use crate::error::{Result, TrainError};
use crate::params;
use crate::plot::LinePlot;
use crate::progress::{Progress, ProgressEvent, StepLosses};
use crate::runloop::{self, JsonlLog, Session};
use crate::schedule::Schedule;

// ---------------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------------

/// A classifier training run: `[model]`, `[data]`, `[augment]`, `[loss]`, `[optim]`,
/// `[schedule]`, `[run]` (see `configs/train_classifier_phantom.toml`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassifierTrainConfig {
    #[serde(default)]
    pub model: ClassifierModelConfig,
    pub data: ClassifierDataConfig,
    #[serde(default)]
    pub augment: AugmentConfig,
    #[serde(default)]
    pub loss: ClassifierLossConfig,
    #[serde(default = "default_optim")]
    pub optim: OptimConfig,
    #[serde(default)]
    pub schedule: ScheduleConfig,
    pub run: RunConfig,
}

/// `[model]`: CT-Net's shape.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassifierModelConfig {
    /// Network input `[X, Y, Z]` in voxels (`Z` a multiple of 3). Default: the training volumes'
    /// shape with `Z` rounded up to a multiple of 3 (centre padding with -1000 HU).
    #[serde(default)]
    pub size: Option<[usize; 3]>,
    /// ResNet-18 trunk stage widths. Default `[64, 128, 256, 512]` (the paper's).
    #[serde(default = "default_widths")]
    pub trunk_widths: [usize; 4],
    /// Trunk stem width. Default 64.
    #[serde(default = "default_stem")]
    pub trunk_stem_width: usize,
    /// Hidden FC sizes (the second is the FID feature size). Default `[128, 96]`.
    #[serde(default = "default_fc")]
    pub fc: [usize; 2],
    /// Dropout after each hidden FC. Default 0.5.
    #[serde(default = "default_dropout")]
    pub dropout: f64,
    /// HU window mapped to [0, 1]. Default `[-1000, 200]` (ct-net-models).
    #[serde(default = "default_window")]
    pub hu_window: [f32; 2],
    /// Subtracted after scaling. Default 0.449.
    #[serde(default = "default_mean")]
    pub mean: f32,
}

/// One labelled volume source.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// A prepared folder / `manifest.jsonl`, or a folder of NIfTI files.
    pub volumes: PathBuf,
    /// Labels CSV or manifest (required for NIfTI volumes; overrides a manifest's own labels).
    #[serde(default)]
    pub labels: Option<PathBuf>,
    /// Use the first N volumes only.
    #[serde(default)]
    pub limit: Option<usize>,
}

/// `[data]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassifierDataConfig {
    /// Training sources (`[[data.train]]`), concatenated. At least one.
    pub train: Vec<SourceConfig>,
    /// Held-out set for the AUC after every epoch and at the end (optional).
    #[serde(default)]
    pub val: Option<SourceConfig>,
    /// Volumes per micro-batch. Default 4.
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// Allow volumes of different shapes (each centre padded / cropped to the input). Default
    /// false: every training and validation volume must have the first one's shape.
    #[serde(default)]
    pub pad_crop: bool,
}

/// `[augment]` (see the module docs; no flips).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AugmentConfig {
    /// Maximum integer shift per axis `[X, Y, Z]` in voxels. Default `[3, 3, 1]`.
    #[serde(default = "default_shift")]
    pub shift: [usize; 3],
    /// Contrast jitter `a ~ U(-s, s)`. Default 0.05.
    #[serde(default = "default_iscale")]
    pub intensity_scale: f32,
    /// Offset `b ~ U(-s, s)` HU. Default 20.
    #[serde(default = "default_ishift")]
    pub intensity_shift_hu: f32,
    /// Gaussian noise (HU). Default 0.
    #[serde(default)]
    pub noise_std_hu: f32,
}

/// How positives are weighted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PosWeight {
    /// `N_neg / N_pos` per class from the training set, clamped to `[1, max_pos_weight]`.
    #[default]
    Prevalence,
    /// All 1.
    None,
}

/// `[loss]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassifierLossConfig {
    #[serde(default)]
    pub pos_weight: PosWeight,
    /// Upper clamp of the prevalence weights. Default 10.
    #[serde(default = "default_max_pw")]
    pub max_pos_weight: f64,
}

fn default_widths() -> [usize; 4] {
    [64, 128, 256, 512]
}
fn default_stem() -> usize {
    64
}
fn default_fc() -> [usize; 2] {
    [128, 96]
}
fn default_dropout() -> f64 {
    0.5
}
fn default_window() -> [f32; 2] {
    [-1000.0, 200.0]
}
fn default_mean() -> f32 {
    0.449
}
fn default_batch() -> usize {
    4
}
fn default_shift() -> [usize; 3] {
    [3, 3, 1]
}
fn default_iscale() -> f32 {
    0.05
}
fn default_ishift() -> f32 {
    20.0
}
fn default_max_pw() -> f64 {
    10.0
}
/// The classifier's `[optim]` defaults: AdamW, lr 3e-4, weight decay 1e-4.
pub fn default_optim() -> OptimConfig {
    OptimConfig { lr: 3e-4, weight_decay: 1e-4, ..OptimConfig::default() }
}

impl Default for ClassifierModelConfig {
    fn default() -> Self {
        ClassifierModelConfig {
            size: None,
            trunk_widths: default_widths(),
            trunk_stem_width: default_stem(),
            fc: default_fc(),
            dropout: default_dropout(),
            hu_window: default_window(),
            mean: default_mean(),
        }
    }
}

impl Default for AugmentConfig {
    fn default() -> Self {
        AugmentConfig {
            shift: default_shift(),
            intensity_scale: default_iscale(),
            intensity_shift_hu: default_ishift(),
            noise_std_hu: 0.0,
        }
    }
}

impl Default for ClassifierLossConfig {
    fn default() -> Self {
        ClassifierLossConfig { pos_weight: PosWeight::Prevalence, max_pos_weight: default_max_pw() }
    }
}

impl ClassifierModelConfig {
    /// The CT-Net for input `[X, Y, Z]`.
    pub fn ctnet(&self, size: [usize; 3]) -> Result<CtNetConfig> {
        let mut c = CtNetConfig::fitted(size[2], [size[1], size[0]], self.trunk_widths, self.trunk_stem_width)
            .map_err(|e| TrainError::Config(format!("[model]: {e}")))?;
        c.fc = self.fc;
        c.dropout = self.dropout;
        c.hu_window = self.hu_window;
        c.mean = self.mean;
        c.n_outputs = NUM_LABELS;
        c.validate().map_err(|e| TrainError::Config(format!("[model]: {e}")))?;
        Ok(c)
    }

    /// The input for training volumes of shape `data`: `size`, or `data` with `Z` rounded up
    /// to a multiple of 3.
    pub fn input_size(&self, data: [usize; 3]) -> [usize; 3] {
        self.size.unwrap_or([data[0], data[1], data[2].div_ceil(3) * 3])
    }
}

impl ClassifierTrainConfig {
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

    /// Check values and that the data paths exist.
    pub fn validate(&self) -> Result<()> {
        let m = &self.model;
        if let Some(s) = m.size {
            if s.contains(&0) || s[2] % 3 != 0 {
                return bad(format!("model.size {s:?}: positive extents, Z a multiple of 3"));
            }
        }
        if m.trunk_widths.contains(&0) || m.trunk_stem_width == 0 || m.fc.contains(&0) {
            return bad("model.trunk_widths, model.trunk_stem_width and model.fc must be positive");
        }
        if !(0.0..1.0).contains(&m.dropout) {
            return bad(format!("model.dropout must be in [0, 1), got {}", m.dropout));
        }
        if !(m.hu_window[1] > m.hu_window[0]) {
            return bad(format!("model.hu_window must be increasing, got {:?}", m.hu_window));
        }
        let d = &self.data;
        if d.train.is_empty() {
            return bad("data.train needs at least one source ([[data.train]] volumes = ...)");
        }
        for (i, s) in d.train.iter().chain(d.val.iter()).enumerate() {
            let what = if i < d.train.len() { format!("data.train[{i}]") } else { "data.val".into() };
            if !s.volumes.exists() {
                return bad(format!("{what}.volumes {} does not exist", s.volumes.display()));
            }
            if let Some(l) = &s.labels {
                if !l.exists() {
                    return bad(format!("{what}.labels {} does not exist", l.display()));
                }
            }
            if s.limit == Some(0) {
                return bad(format!("{what}.limit must be >= 1"));
            }
        }
        if d.batch_size == 0 {
            return bad("data.batch_size must be >= 1");
        }
        let a = &self.augment;
        if !(0.0..1.0).contains(&a.intensity_scale) || !(a.intensity_shift_hu >= 0.0) || !(a.noise_std_hu >= 0.0) {
            return bad("augment: intensity_scale in [0, 1), intensity_shift_hu and noise_std_hu >= 0");
        }
        if !(self.loss.max_pos_weight.is_finite() && self.loss.max_pos_weight >= 1.0) {
            return bad("loss.max_pos_weight must be finite and >= 1");
        }
        self.optim.validate()?;
        if self.optim.disc_lr.is_some() {
            return bad("optim.disc_lr is for the VAE's discriminator; the classifier has none");
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
// Data
// ---------------------------------------------------------------------------------------------

/// Training (or validation) volumes in memory: int16 HU at the network input, and labels.
pub struct ClassifierData {
    /// Network input `[X, Y, Z]`.
    pub input: [usize; 3],
    /// Shape the source volumes had (the first one's when `pad_crop`).
    pub data_size: [usize; 3],
    pub data_spacing: Option<[f64; 3]>,
    pub ids: Vec<String>,
    pub hu: Vec<Vec<i16>>,
    pub labels: Vec<Vec<u8>>,
}

fn open_source(s: &SourceConfig) -> Result<LabeledSet> {
    let mut set = LabeledSet::open(&s.volumes, s.labels.as_deref()).map_err(|e| TrainError::Data(e.to_string()))?;
    if let Some(n) = s.limit {
        set.items.truncate(n);
    }
    if set.is_empty() {
        return Err(TrainError::Data(format!("{}: no volumes", s.volumes.display())));
    }
    Ok(set)
}

/// The shape of the first volume of the first source.
fn first_shape(sources: &[SourceConfig]) -> Result<[usize; 3]> {
    let set = open_source(&sources[0])?;
    let (_, dims, _) = set.load_hu(0).map_err(|e| TrainError::Data(e.to_string()))?;
    Ok(dims)
}

impl ClassifierData {
    /// Read sources into memory at `input` (see the module docs). `want`: the shape every
    /// volume must have (None: any, padded / cropped).
    pub fn load(
        sources: &[SourceConfig],
        input: [usize; 3],
        want: Option<[usize; 3]>,
        progress: &mut dyn FnMut(usize),
    ) -> Result<Self> {
        let mut d = ClassifierData {
            input,
            data_size: want.unwrap_or(input),
            data_spacing: None,
            ids: Vec::new(),
            hu: Vec::new(),
            labels: Vec::new(),
        };
        let mut spacing: Option<Option<[f64; 3]>> = None;
        for s in sources {
            let set = open_source(s)?;
            for (i, it) in set.items.iter().enumerate() {
                let (hu, dims, sp) = set.load_hu(i).map_err(|e| TrainError::Data(e.to_string()))?;
                if let Some(w) = want {
                    if dims != w {
                        return Err(TrainError::Data(format!(
                            "{}: shape {dims:?} differs from the training shape {w:?} (set data.pad_crop = true to pad / crop)",
                            it.path.display()
                        )));
                    }
                }
                spacing = Some(match spacing {
                    None => Some(sp),
                    Some(Some(a)) if (0..3).all(|k| (a[k] - sp[k]).abs() <= 1e-3 * a[k].abs().max(1e-6)) => Some(a),
                    Some(_) => None,
                });
                let v = if dims == input { hu } else { pad_crop_monai(&hu, dims, input, -1000.0) };
                d.hu.push(v.iter().map(|&x| x.round().clamp(-1000.0, 1000.0) as i16).collect());
                d.labels.push(it.labels.clone());
                d.ids.push(format!("{}:{}", s.volumes.display(), it.id));
                progress(d.hu.len());
            }
        }
        d.data_spacing = spacing.flatten();
        Ok(d)
    }

    pub fn len(&self) -> usize {
        self.hu.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hu.is_empty()
    }

    /// Positives / volumes per class.
    pub fn prevalence(&self) -> Vec<f64> {
        let n = self.len().max(1) as f64;
        (0..NUM_LABELS).map(|c| self.labels.iter().filter(|l| l[c] != 0).count() as f64 / n).collect()
    }

    /// `pos_weight` per class (see the module docs).
    pub fn pos_weight(&self, cfg: &ClassifierLossConfig) -> Vec<f64> {
        (0..NUM_LABELS)
            .map(|c| {
                let pos = self.labels.iter().filter(|l| l[c] != 0).count();
                let neg = self.len() - pos;
                match cfg.pos_weight {
                    PosWeight::None => 1.0,
                    PosWeight::Prevalence if pos == 0 => 1.0,
                    PosWeight::Prevalence => (neg as f64 / pos as f64).clamp(1.0, cfg.max_pos_weight),
                }
            })
            .collect()
    }
}

/// Shuffled epochs over `n` items: the order of epoch `e` and the augmentation of position `p`
/// are pure functions of `(seed, e, p)`, so `(epoch, pos)` is the whole state.
pub struct EpochLoader {
    pub n: usize,
    pub seed: u64,
    pub state: LoaderState,
    order: Vec<usize>,
    order_epoch: Option<usize>,
}

impl EpochLoader {
    pub fn new(n: usize, seed: u64) -> Self {
        EpochLoader { n, seed, state: LoaderState::default(), order: Vec::new(), order_epoch: None }
    }

    /// The next `(item, sample seed)`.
    pub fn next_sample(&mut self) -> (usize, u64) {
        if self.state.pos >= self.n {
            self.state = LoaderState { epoch: self.state.epoch + 1, pos: 0 };
        }
        if self.order_epoch != Some(self.state.epoch) {
            let mut rng = ChaCha8Rng::seed_from_u64(step_seed(self.seed, 10, self.state.epoch as u64));
            let mut order: Vec<usize> = (0..self.n).collect();
            for i in (1..order.len()).rev() {
                let j = rng.random_range(0..=i);
                order.swap(i, j);
            }
            self.order = order;
            self.order_epoch = Some(self.state.epoch);
        }
        let idx = self.order[self.state.pos];
        let s = step_seed(self.seed, 11, ((self.state.epoch as u64) << 32) ^ self.state.pos as u64);
        self.state.pos += 1;
        (idx, s)
    }

    /// Epochs completed.
    pub fn epochs_done(&self) -> usize {
        self.state.epoch + (self.state.pos >= self.n) as usize
    }
}

/// Augment HU at `dims` (x fastest) with a generator seeded by `seed` (see the module docs).
pub fn augment(hu: &[i16], dims: [usize; 3], a: &AugmentConfig, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    // Always draw the same numbers, whatever the settings.
    let shift: [i64; 3] = [0, 1, 2].map(|k| {
        let m = a.shift[k] as i64;
        let u: i64 = rng.random_range(-m..=m);
        u
    });
    let ua: f32 = rng.random_range(-1.0f32..=1.0);
    let ub: f32 = rng.random_range(-1.0f32..=1.0);
    let scale = 1.0 + ua * a.intensity_scale;
    let offset = ub * a.intensity_shift_hu;
    let [nx, ny, nz] = dims;
    let mut out = vec![-1000f32; nx * ny * nz];
    for z in 0..nz {
        let sz = z as i64 - shift[2];
        if sz < 0 || sz >= nz as i64 {
            continue;
        }
        for y in 0..ny {
            let sy = y as i64 - shift[1];
            if sy < 0 || sy >= ny as i64 {
                continue;
            }
            let row = nx * (y + ny * z);
            let srow = nx * (sy as usize + ny * sz as usize);
            for x in 0..nx {
                let sx = x as i64 - shift[0];
                if sx >= 0 && sx < nx as i64 {
                    out[row + x] = hu[srow + sx as usize] as f32;
                }
            }
        }
    }
    let noise = a.noise_std_hu > 0.0;
    for v in &mut out {
        *v = -1000.0 + (*v + 1000.0) * scale + offset;
        if noise {
            let g: f32 = rand_distr::StandardNormal.sample(&mut rng);
            *v += g * a.noise_std_hu;
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Training
// ---------------------------------------------------------------------------------------------

/// One line of `metrics.jsonl`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClassifierStepRecord {
    pub step: usize,
    pub epoch: usize,
    pub lr: f64,
    /// Weighted BCE (mean over the step's micro-batches).
    pub loss: f64,
    pub step_s: f64,
}

/// One line of `val.jsonl`: the held-out metrics after an epoch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ValRecord {
    pub step: usize,
    pub epochs: usize,
    pub auc_macro: Option<f64>,
    pub auc_weighted: Option<f64>,
    pub precision_macro: Option<f64>,
    pub precision_weighted: Option<f64>,
}

/// What a training run did.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClassifierSummary {
    pub out_dir: PathBuf,
    pub steps_done: usize,
    pub total_steps: usize,
    pub session_steps: usize,
    pub session_wall_s: f64,
    pub steps_per_s: f64,
    pub total_wall_s: f64,
    pub resumed_from: Option<PathBuf>,
    pub stopped_early: bool,
    pub n_train: usize,
    pub input_size: [usize; 3],
    /// Mean loss of the first and of the last (up to) 20 steps.
    pub first_loss: f64,
    pub final_loss: f64,
    pub train_prevalence: Vec<f64>,
    pub pos_weight: Vec<f64>,
    /// Held-out metrics of the final model (with `data.val`).
    pub val: Option<SetMetrics>,
    pub val_history: Vec<ValRecord>,
    pub last_checkpoint: Option<PathBuf>,
    /// The classifier folder (`final/`).
    pub final_dir: Option<PathBuf>,
    pub num_params: usize,
}

/// Knobs that the config does not hold.
#[derive(Clone, Debug, Default)]
pub struct ClassifierTrainOptions {
    /// Stop (with a checkpoint, without the final outputs) once this many steps are done.
    pub stop_at: Option<usize>,
}

/// Train per the config (see the module docs).
pub fn train(cfg: &ClassifierTrainConfig, progress: Progress) -> Result<ClassifierSummary> {
    train_with(cfg, &ClassifierTrainOptions::default(), progress)
}

fn dropout_mask(dims: [usize; 2], p: f64, seed: u64, dev: &Device) -> Tensor<2> {
    let n = dims[0] * dims[1];
    let keep = 1.0 - p;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let v: Vec<f32> = (0..n).map(|_| if rng.random::<f64>() < keep { (1.0 / keep) as f32 } else { 0.0 }).collect();
    Tensor::from_data(TensorData::new(v, dims), dev)
}

/// Training-mode logits with dropout masks from `seed` (CT-Net's forward otherwise).
fn forward_train(net: &CtNetNet, cfg: &CtNetConfig, x: Tensor<5>, seed: u64, dev: &Device) -> Tensor<2> {
    let [b, t, c, h, w] = x.dims();
    let m = net.trunk.forward_map(x.reshape([b * t, c, h, w]));
    let [_, c2, h2, w2] = m.dims();
    let mut y = m.reshape([b, t, c2, h2, w2]);
    for conv in &net.reducing {
        y = relu(conv.forward(y));
    }
    let flat: usize = y.dims()[1..].iter().product();
    let mut z = relu(net.fc1.forward(y.reshape([b, flat])));
    if cfg.dropout > 0.0 {
        z = z * dropout_mask([b, cfg.fc[0]], cfg.dropout, step_seed(seed, 20, 0), dev);
    }
    let mut z = relu(net.fc2.forward(z));
    if cfg.dropout > 0.0 {
        z = z * dropout_mask([b, cfg.fc[1]], cfg.dropout, step_seed(seed, 20, 1), dev);
    }
    net.out.forward(z)
}

/// The output bias that minimises the weighted BCE of a constant prediction:
/// `b_c = ln(w_c·p_c / (1 - p_c))` (prevalence `p_c` clamped to [1e-3, 1 - 1e-3], `b_c` to
/// [-6, 6]). A fresh classifier starts from it, so the first hundreds of Adam steps (which move a
/// bias by about `lr` each) are not spent learning the base rates.
pub fn prior_bias(prevalence: &[f64], pos_weight: &[f64]) -> Vec<f32> {
    prevalence
        .iter()
        .zip(pos_weight)
        .map(|(&p, &w)| {
            let p = p.clamp(1e-3, 1.0 - 1e-3);
            ((w * p) / (1.0 - p)).ln().clamp(-6.0, 6.0) as f32
        })
        .collect()
}

/// Binary cross-entropy with logits, PyTorch's `BCEWithLogitsLoss(weight, pos_weight)` with mean
/// reduction: `-mean(weight · (pos_weight · t · log σ(x) + (1 - t) · log σ(-x)))` over all `B·T`
/// elements of `logits` `[B, T]` against 0/1 `targets`. `pos_weight` scales the positive term
/// only (the classifier's class balance), `weight` each element's whole term (CLIP's per-target
/// weights); `None` is all ones.
pub fn weighted_bce(
    logits: Tensor<2>,
    targets: Tensor<2>,
    pos_weight: Option<Tensor<2>>,
    weight: Option<Tensor<2>>,
) -> Tensor<1> {
    let lp = log_sigmoid(logits.clone());
    let ln = log_sigmoid(logits.neg());
    let pos = match pos_weight {
        Some(pw) => targets.clone() * pw * lp,
        None => targets.clone() * lp,
    };
    let t = pos + (targets.neg() + 1.0) * ln;
    match weight {
        Some(w) => (w * t).mean().neg(),
        None => t.mean().neg(),
    }
}

fn val_record(step: usize, epochs: usize, m: &SetMetrics) -> ValRecord {
    ValRecord {
        step,
        epochs,
        auc_macro: m.auc.macro_avg,
        auc_weighted: m.auc.weighted_avg,
        precision_macro: m.precision.macro_avg,
        precision_weighted: m.precision.weighted_avg,
    }
}

fn loss_plot(records: &[ClassifierStepRecord]) -> LinePlot {
    let pts: Vec<(f64, f64)> = records.iter().map(|r| (r.step as f64, r.loss)).collect();
    let window = (records.len() / 50).clamp(1, 50);
    let mut p = LinePlot::new("CT-Net classifier training", "optimizer step", "weighted BCE (log scale)")
        .with_series("per step", pts.clone())
        .with_series(&format!("moving average ({window} steps)"), crate::metrics::moving_average(&pts, window));
    p.log_y = true;
    p
}

fn val_plot(records: &[ValRecord]) -> LinePlot {
    let s = |f: &dyn Fn(&ValRecord) -> Option<f64>| -> Vec<(f64, f64)> {
        records.iter().filter_map(|r| f(r).map(|v| (r.epochs as f64, v))).collect()
    };
    LinePlot::new("CT-Net held-out metrics per epoch", "epochs", "value")
        .with_series("AUC (macro)", s(&|r| r.auc_macro))
        .with_series("AUC (weighted)", s(&|r| r.auc_weighted))
        .with_series("precision (macro)", s(&|r| r.precision_macro))
        .with_series("precision (weighted)", s(&|r| r.precision_weighted))
}

fn mean_loss(r: &[ClassifierStepRecord]) -> f64 {
    if r.is_empty() {
        return f64::NAN;
    }
    r.iter().map(|x| x.loss).sum::<f64>() / r.len() as f64
}

/// Validation metrics of `net` (inference mode) on `set`.
fn validate_on(
    net: &CtNetNet,
    cfg: &CtNetConfig,
    set: &LabeledSet,
    data_size: Option<[usize; 3]>,
    batch: usize,
    threshold: f64,
) -> Result<SetMetrics> {
    let model = CtNet { config: cfg.clone(), net: net.clone().valid() };
    let opts = PredictOptions { batch, pad_crop: data_size.is_none() };
    let probs = predict(&model, set, data_size, &opts, &mut |_, _| {}).map_err(|e| TrainError::Data(e.to_string()))?;
    set_metrics("validation", &set.label_rows(), &probs, threshold).map_err(|e| TrainError::Data(e.to_string()))
}

/// [`train`] with [`ClassifierTrainOptions`].
pub fn train_with(
    cfg: &ClassifierTrainConfig,
    opts: &ClassifierTrainOptions,
    progress: Progress,
) -> Result<ClassifierSummary> {
    cfg.validate()?;
    let device = cfg.run.device()?; // a wrong device name fails before any data is read
    let mut session = Session::open(&cfg.run, opts.stop_at)?;
    let seed = cfg.run.seed;
    let total = cfg.run.steps;
    let accum = cfg.optim.grad_accum_steps;
    let bsz = cfg.data.batch_size;

    // Data.
    let shape0 = first_shape(&cfg.data.train)?;
    let input = cfg.model.input_size(shape0);
    let want = (!cfg.data.pad_crop).then_some(shape0);
    let ctcfg = cfg.model.ctnet(input)?;
    progress(ProgressEvent::Message(format!("reading training volumes (network input {input:?})")));
    let mut data = ClassifierData::load(&cfg.data.train, input, want, &mut |_| {})?;
    data.data_size = shape0;
    let val_set = match &cfg.data.val {
        Some(s) => Some(open_source(s)?),
        None => None,
    };
    let prevalence = data.prevalence();
    let pos_weight = data.pos_weight(&cfg.loss);

    let dev = device.autodiff();
    let mut net = CtNet::new(&ctcfg, seed, &dev)?.net;
    net.out.bias = Some(Param::from_tensor(Tensor::<1>::from_data(
        TensorData::new(prior_bias(&prevalence, &pos_weight), [NUM_LABELS]),
        &dev,
    )));
    let mut net = params::assign_ids(net, 0);
    let mut optim = runloop::adamw(&cfg.optim);
    let mut sched = Schedule::from_config(&cfg.schedule, cfg.optim.lr, total)?;
    let mut loader = EpochLoader::new(data.len(), seed);
    let mut step = 0usize;
    let mut records: Vec<ClassifierStepRecord> = Vec::new();
    let mut vals: Vec<ValRecord> = Vec::new();
    if let Some(dir) = session.resumed_from.clone() {
        let (st, saved) = runloop::read_resume(&dir, seed, ClassifierTrainConfig::from_toml_str)?;
        if saved.model != cfg.model || saved.data.train != cfg.data.train || saved.data.pad_crop != cfg.data.pad_crop {
            return Err(TrainError::ckpt(&dir, "the checkpoint's [model] or training data differ from the config's"));
        }
        net = params::assign_ids(CtNet::load(&ctcfg, &dir.join(factual::WEIGHTS_FILE), &dev)?.net, 0);
        optim = runloop::load_optim(optim, &dir.join("optim.bpk"))?;
        loader.state = st.loader;
        sched.step = *st.schedulers.get("classifier").unwrap_or(&st.step);
        step = st.step;
        session.resume_from(&st);
        records = JsonlLog::read(&dir.join("metrics.jsonl"))?;
        records.retain(|r: &ClassifierStepRecord| r.step <= step);
        vals = JsonlLog::read(&dir.join("val.jsonl"))?;
        vals.retain(|r: &ValRecord| r.step <= step);
    }
    let out = session.out.clone();
    let mut log = JsonlLog::create(&out.join("metrics.jsonl"), records)?;
    let mut vlog = JsonlLog::create(&out.join("val.jsonl"), vals)?;
    let num_params = net.num_params();
    let pw_txt: Vec<String> = pos_weight.iter().map(|w| format!("{w:.2}")).collect();
    progress(ProgressEvent::Message(format!(
        "CT-Net ({num_params} parameters), {} training volumes of {:?} (input {input:?}), batch {bsz} x {accum}; pos_weight [{}]",
        data.len(),
        data.data_size,
        pw_txt.join(", ")
    )));
    progress(ProgressEvent::Start { start_step: step, total_steps: total, resumed_from: session.resumed_from.clone() });

    let pw_tensor = {
        let v: Vec<f32> = (0..bsz).flat_map(|_| pos_weight.iter().map(|&w| w as f32)).collect();
        Tensor::<2>::from_data(TensorData::new(v, [bsz, NUM_LABELS]), &dev)
    };
    let per = input.iter().product::<usize>();
    let threshold = factual::THRESHOLD;
    let val_size = want;
    let mut last_ckpt: Option<PathBuf> = None;
    let mut stopped_early = false;
    let save = |session: &Session,
                step: usize,
                net: &CtNetNet,
                optim: &burn::optim::ModuleOptimizer,
                sched: &Schedule,
                loader: &EpochLoader,
                log: &JsonlLog<ClassifierStepRecord>,
                vlog: &JsonlLog<ValRecord>|
     -> Result<PathBuf> {
        let model = CtNet { config: ctcfg.clone(), net: net.clone() };
        session.save(step, loader.state, &[("classifier", sched.step)], |dir| {
            model.save_safetensors(&dir.join(factual::WEIGHTS_FILE))?;
            runloop::write_json(&dir.join(factual::CONFIG_FILE), &ctcfg)?;
            runloop::save_optim(optim, &dir.join("optim.bpk"))?;
            runloop::write_text(&dir.join("config.toml"), &cfg.to_toml_string()?)?;
            log.rewrite(&dir.join("metrics.jsonl"))?;
            vlog.rewrite(&dir.join("val.jsonl"))
        })
    };

    while step < total {
        if session.should_stop(step, progress) {
            stopped_early = true;
            break;
        }
        let t0 = std::time::Instant::now();
        let epoch = loader.state.epoch;
        let lr = sched.step();
        let mut acc = GradientsAccumulator::new();
        let mut loss_sum = 0.0;
        for micro in 0..accum {
            let mut xs = Vec::with_capacity(bsz * per);
            let mut ys = Vec::with_capacity(bsz * NUM_LABELS);
            for _ in 0..bsz {
                let (idx, s) = loader.next_sample();
                let hu = augment(&data.hu[idx], input, &cfg.augment, s);
                xs.extend(prepare_volume(&ctcfg, &hu, input)?);
                ys.extend(data.labels[idx].iter().map(|&l| l as f32));
            }
            let x = Tensor::<5>::from_data(
                TensorData::new(xs, [bsz, ctcfg.n_triplets(), 3, ctcfg.size[0], ctcfg.size[1]]),
                &dev,
            );
            let y = Tensor::<2>::from_data(TensorData::new(ys, [bsz, NUM_LABELS]), &dev);
            let logits = forward_train(&net, &ctcfg, x, step_seed(seed, 2, (step * accum + micro) as u64), &dev);
            let loss = weighted_bce(logits, y, Some(pw_tensor.clone()), None);
            let lv = runloop::scalar(&loss);
            if !lv.is_finite() {
                return Err(TrainError::Train(format!("non-finite loss {lv} at step {step}")));
            }
            loss_sum += lv;
            let grads = loss.div_scalar(accum as f64).backward();
            acc.accumulate(&net, GradientsParams::from_grads(grads, &net));
        }
        net = optim.step(lr, net, acc.grads());
        step += 1;
        let loss = loss_sum / accum as f64;
        log.push(ClassifierStepRecord { step, epoch, lr, loss, step_s: t0.elapsed().as_secs_f64() })?;
        let losses = StepLosses { total: loss, ..Default::default() };
        progress(ProgressEvent::Step {
            step,
            total_steps: total,
            epoch,
            lr,
            losses,
            steps_per_s: session.steps_per_s(step),
        });
        // Held-out metrics after each completed epoch.
        if let Some(vs) = &val_set {
            let done = loader.epochs_done();
            let last = vlog.records.last().map(|r| r.epochs).unwrap_or(0);
            if done > last && step < total {
                let m = validate_on(&net, &ctcfg, vs, val_size, bsz, threshold)?;
                let r = val_record(step, done, &m);
                progress(ProgressEvent::Message(format!(
                    "epoch {done}: held-out AUC macro {} weighted {}",
                    r.auc_macro.map(|v| format!("{v:.3}")).unwrap_or("-".into()),
                    r.auc_weighted.map(|v| format!("{v:.3}")).unwrap_or("-".into())
                )));
                vlog.push(r)?;
            }
        }
        if cfg.run.checkpoint_every > 0 && step % cfg.run.checkpoint_every == 0 && step < total {
            let p = save(&session, step, &net, &optim, &sched, &loader, &log, &vlog)?;
            progress(ProgressEvent::Checkpoint { step, path: p.clone() });
            last_ckpt = Some(p);
            loss_plot(&log.records).save_png(&out.join("loss_curve.png"))?;
        }
    }
    if step > session.start_step || last_ckpt.is_none() {
        let p = save(&session, step, &net, &optim, &sched, &loader, &log, &vlog)?;
        progress(ProgressEvent::Checkpoint { step, path: p.clone() });
        last_ckpt = Some(p);
    }
    let recs = &log.records;
    let mut summary = ClassifierSummary {
        out_dir: out.clone(),
        steps_done: step,
        total_steps: total,
        session_steps: step - session.start_step,
        session_wall_s: session.session_s(),
        steps_per_s: session.steps_per_s(step),
        total_wall_s: session.elapsed(),
        resumed_from: session.resumed_from.clone(),
        stopped_early,
        n_train: data.len(),
        input_size: input,
        first_loss: mean_loss(&recs[..recs.len().min(20)]),
        final_loss: mean_loss(&recs[recs.len().saturating_sub(20)..]),
        train_prevalence: prevalence.clone(),
        pos_weight: pos_weight.clone(),
        val: None,
        val_history: Vec::new(),
        last_checkpoint: last_ckpt,
        final_dir: None,
        num_params,
    };
    if session.interrupted(step) && stopped_early {
        return Ok(summary);
    }
    // Final outputs.
    if let Some(vs) = &val_set {
        let m = validate_on(&net, &ctcfg, vs, val_size, bsz, threshold)?;
        if vlog.records.last().is_none_or(|r| r.step != step) {
            vlog.push(val_record(step, loader.epochs_done(), &m))?;
        }
        summary.val = Some(m);
    }
    summary.val_history = vlog.records.clone();
    let fin = out.join("final");
    let info = ClassifierInfo {
        format: factual::CLASSIFIER_FORMAT.into(),
        label_names: LABELS.iter().map(|s| s.to_string()).collect(),
        data_size: data.data_size,
        data_spacing: data.data_spacing,
        threshold,
        train_prevalence: prevalence,
        pos_weight,
        n_train: data.len(),
        steps: step,
        note: format!(
            "trained by text2ct {} on {}; augmentation {:?}; input {:?}{}",
            env!("CARGO_PKG_VERSION"),
            cfg.data.train.iter().map(|s| s.volumes.display().to_string()).collect::<Vec<_>>().join(" + "),
            cfg.augment,
            input_dims(&ctcfg),
            if cfg.data.pad_crop { " (padded / cropped)" } else { "" }
        ),
    };
    let model = CtNet { config: ctcfg.clone(), net: net.clone().valid() };
    Classifier::save(&fin, &model, &info).map_err(|e| TrainError::Data(e.to_string()))?;
    runloop::write_text(&fin.join("train_config.toml"), &cfg.to_toml_string()?)?;
    loss_plot(&log.records).save_png(&out.join("loss_curve.png"))?;
    loss_plot(&log.records).save_png(&fin.join("loss_curve.png"))?;
    if !vlog.records.is_empty() {
        val_plot(&vlog.records).save_png(&out.join("val_auc.png"))?;
        val_plot(&vlog.records).save_png(&fin.join("val_auc.png"))?;
    }
    summary.final_dir = Some(fin.clone());
    runloop::write_json(&fin.join("summary.json"), &summary)?;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bce_matches_closed_form() {
        let dev = Device::flex();
        let x = Tensor::<2>::from_data(TensorData::new(vec![0.5f32, -1.0, 2.0, 0.0], [2, 2]), &dev);
        let y = Tensor::<2>::from_data(TensorData::new(vec![1.0f32, 0.0, 0.0, 1.0], [2, 2]), &dev);
        let w = Tensor::<2>::from_data(TensorData::new(vec![3.0f32, 1.0, 3.0, 1.0], [2, 2]), &dev);
        let s = |v: f64| 1.0 / (1.0 + (-v).exp());
        let got = weighted_bce(x.clone(), y.clone(), Some(w), None).into_scalar::<f32>() as f64;
        let want = -(3.0 * s(0.5).ln() + (1.0 - s(-1.0)).ln() + (1.0 - s(2.0)).ln() + s(0.0).ln()) / 4.0;
        assert!((got - want).abs() < 1e-5, "{got} vs {want}");
        // No weights: the plain mean BCE.
        let got = weighted_bce(x.clone(), y.clone(), None, None).into_scalar::<f32>() as f64;
        let plain = -(s(0.5).ln() + (1.0 - s(-1.0)).ln() + (1.0 - s(2.0)).ln() + s(0.0).ln()) / 4.0;
        assert!((got - plain).abs() < 1e-5, "{got} vs {plain}");
        // Both: pos_weight scales the positive term, weight the element's whole term.
        let pw = Tensor::<2>::from_data(TensorData::new(vec![2.0f32, 2.0, 2.0, 2.0], [2, 2]), &dev);
        let ew = Tensor::<2>::from_data(TensorData::new(vec![1.0f32, 10.0, 0.0, 0.5], [2, 2]), &dev);
        let got = weighted_bce(x, y, Some(pw), Some(ew)).into_scalar::<f32>() as f64;
        let want = -(2.0 * s(0.5).ln() + 10.0 * (1.0 - s(-1.0)).ln() + 0.5 * 2.0 * s(0.0).ln()) / 4.0;
        assert!((got - want).abs() < 1e-5, "{got} vs {want}");
    }

    #[test]
    fn prior_bias_is_the_constant_optimum() {
        let b = prior_bias(&[0.25, 0.0, 0.5], &[3.0, 1.0, 1.0]);
        assert!(b[0].abs() < 1e-6, "w p = 1 - p gives 0");
        assert_eq!(b[1], -6.0, "ln(1e-3 / (1 - 1e-3)) = -6.9 is clamped");
        assert!(b[2].abs() < 1e-6);
        // The weighted BCE of a constant logit is smallest at the prior bias.
        let f = |x: f64, p: f64, w: f64| {
            -(w * p * (1.0 / (1.0 + (-x).exp())).ln() + (1.0 - p) * (1.0 / (1.0 + x.exp())).ln())
        };
        let (p, w) = (0.1, 4.0);
        let x0 = prior_bias(&[p], &[w])[0] as f64;
        assert!(f(x0, p, w) < f(x0 + 0.05, p, w) && f(x0, p, w) < f(x0 - 0.05, p, w));
    }

    #[test]
    fn augmentation_is_seeded_and_label_free() {
        let dims = [6, 5, 4];
        let hu: Vec<i16> = (0..120).map(|i| (i * 10 - 600) as i16).collect();
        let a = AugmentConfig::default();
        assert_eq!(augment(&hu, dims, &a, 7), augment(&hu, dims, &a, 7));
        assert_ne!(augment(&hu, dims, &a, 7), augment(&hu, dims, &a, 8));
        let none = AugmentConfig { shift: [0; 3], intensity_scale: 0.0, intensity_shift_hu: 0.0, noise_std_hu: 0.0 };
        let same: Vec<f32> = hu.iter().map(|&v| v as f32).collect();
        assert_eq!(augment(&hu, dims, &none, 3), same);
        // A pure x shift moves voxels and never mirrors them.
        let sx = AugmentConfig { shift: [1, 0, 0], ..none };
        for s in 0..20 {
            let out = augment(&hu, dims, &sx, s);
            assert!(out == same || out[1..6] == same[0..5] || out[0..5] == same[1..6], "seed {s}");
        }
    }

    #[test]
    fn loader_is_a_pure_function_of_its_state() {
        let mut a = EpochLoader::new(5, 9);
        let seq: Vec<_> = (0..12).map(|_| a.next_sample()).collect();
        let mut b = EpochLoader::new(5, 9);
        for _ in 0..7 {
            b.next_sample();
        }
        let mut c = EpochLoader::new(5, 9);
        c.state = b.state;
        let rest: Vec<_> = (0..5).map(|_| c.next_sample()).collect();
        assert_eq!(rest, seq[7..]);
        let mut first: Vec<usize> = seq[..5].iter().map(|x| x.0).collect();
        first.sort();
        assert_eq!(first, vec![0, 1, 2, 3, 4]);
    }
}
