//! TOML training configurations.
//!
//! Every table refuses unknown keys (a typo is an error, not a silently ignored option).
//! Relative paths are taken relative to the current working directory. Defaults are given on
//! each field; a minimal VAE config needs only `[model]` (MONAI `AutoencoderKlMaisi` arguments),
//! `data.train_manifest` and `run.out_dir`:
//!
//! ```toml
//! [model]                # MONAI AutoencoderKlMaisi constructor arguments (see VaeConfig)
//! spatial_dims = 3
//! in_channels = 1
//! out_channels = 1
//! latent_channels = 4
//! num_channels = [16, 32, 32]
//! num_res_blocks = [1, 1, 1]
//! norm_num_groups = 8
//! attention_levels = [false, false, false]
//!
//! [data]
//! train_manifest = "/tmp/ph_train/manifest.jsonl"
//! val_manifest = "/tmp/ph_valid/manifest.jsonl"   # optional: held-out evaluation
//! patch_size = [32, 32, 32]                        # optional random crops
//!
//! [run]
//! out_dir = "runs/vae_phantom"
//! steps = 2000
//! ```

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use text2ct_models::VaeConfig;

use crate::error::{Result, TrainError};

/// A VAE training run: `[model]`, `[data]`, `[optim]`, `[schedule]`, `[loss]`, `[run]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaeTrainConfig {
    /// The network (MONAI names; see `text2ct_models::VaeConfig`).
    pub model: VaeConfig,
    pub data: DataConfig,
    #[serde(default)]
    pub optim: OptimConfig,
    #[serde(default)]
    pub schedule: ScheduleConfig,
    #[serde(default)]
    pub loss: VaeLossConfig,
    pub run: RunConfig,
}

/// `[data]`: where the prepared volumes are and how batches are drawn.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// `manifest.jsonl` written by `text2ct prepare` (training split). Required.
    pub train_manifest: PathBuf,
    /// Held-out manifest for the final evaluation and the previews (optional).
    #[serde(default)]
    pub val_manifest: Option<PathBuf>,
    /// Volumes per micro-batch. Default 1.
    #[serde(default = "one")]
    pub batch_size: usize,
    /// Random crop size `[X, Y, Z]` in voxels (each a multiple of the VAE's downsampling factor
    /// and at most the volume size). Default: whole volumes (which must then all have one size).
    #[serde(default)]
    pub patch_size: Option<[usize; 3]>,
    /// Probability of flipping each axis (x, y, z) per sample. Default `[0, 0, 0]`.
    #[serde(default)]
    pub flip_prob: [f64; 3],
    /// Use at most this many training volumes (first in the manifest). Default: all.
    #[serde(default)]
    pub limit: Option<usize>,
}

/// `[optim]`: AdamW for the VAE (and the discriminator), accumulation, clipping.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimConfig {
    /// Peak learning rate of the VAE. Default 1e-4 (MAISI's VAE training).
    #[serde(default = "default_lr")]
    pub lr: f64,
    /// Learning rate of the discriminator. Default: the same as `lr`.
    #[serde(default)]
    pub disc_lr: Option<f64>,
    /// AdamW betas. Default `[0.9, 0.999]`.
    #[serde(default = "default_betas")]
    pub betas: [f32; 2],
    /// AdamW decoupled weight decay. Default 1e-5.
    #[serde(default = "default_wd")]
    pub weight_decay: f32,
    /// AdamW epsilon. Default 1e-8.
    #[serde(default = "default_eps")]
    pub eps: f32,
    /// Micro-batches whose gradients are summed (each loss divided by this) before one
    /// optimizer step. Default 1.
    #[serde(default = "one")]
    pub grad_accum_steps: usize,
    /// Clip each parameter tensor's gradient to this L2 norm (burn's per-parameter norm
    /// clipping, not PyTorch's global norm). Default: no clipping.
    #[serde(default)]
    pub grad_clip_norm: Option<f32>,
}

/// `[schedule]`: the learning-rate schedule over `run.steps` optimizer steps.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleConfig {
    /// `polynomial` (MAISI / Text2CT: `lr * (1 - step/total)^power`), `constant` or `cosine`.
    /// Default `polynomial`.
    #[serde(default)]
    pub kind: ScheduleKind,
    /// Exponent of the polynomial decay. Default 1.0 (linear decay to 0).
    #[serde(default = "default_power")]
    pub power: f64,
    /// Linear warm-up from 0 over this many steps (constant and cosine only; the polynomial
    /// schedule is exactly `text2ct_diffusion::polynomial_lr`). Default 0.
    #[serde(default)]
    pub warmup_steps: usize,
    /// Floor of the cosine schedule. Default 0.
    #[serde(default)]
    pub min_lr: f64,
}

/// The shape of the learning-rate schedule.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleKind {
    #[default]
    Polynomial,
    Constant,
    Cosine,
}

/// The adversarial objective.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdvLoss {
    /// LSGAN (MONAI `PatchAdversarialLoss(criterion="least_squares")`, what MAISI uses).
    #[default]
    LeastSquares,
    /// Hinge loss.
    Hinge,
}

/// `[loss]`: the VAE objective
/// `l1_weight·L1 + kl_weight·KL + perceptual_weight·P + adv_weight·G_adv`.
///
/// `P` is **not** MAISI's perceptual loss: MAISI used LPIPS-style features of a pretrained
/// medical network (MedicalNet / RadImageNet), which cannot be obtained offline nor shipped here.
/// It is an honest substitute: the L1 distance between 3D finite-difference gradients
/// (edges) of the reconstruction and of the input, at `perceptual_scales` scales (average
/// pooling by 2 between scales), averaged over scales. Set the weight to 0 to switch it off.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaeLossConfig {
    /// Weight of the L1 reconstruction loss (mean over voxels, [0, 1] scale). Default 1.0.
    #[serde(default = "one_f")]
    pub l1_weight: f64,
    /// Weight of the KL term (sum over latent voxels, mean over the batch, as MONAI). Default
    /// 1e-7 (MAISI).
    #[serde(default = "default_kl")]
    pub kl_weight: f64,
    /// Weight of the gradient "perceptual" substitute (see above). Default 0.3.
    #[serde(default = "default_perc")]
    pub perceptual_weight: f64,
    /// Number of scales of the gradient term. Default 3.
    #[serde(default = "default_scales")]
    pub perceptual_scales: usize,
    /// Weight of the generator's adversarial loss. Default 0.1 (MAISI). 0 disables the
    /// discriminator entirely.
    #[serde(default = "default_adv")]
    pub adv_weight: f64,
    /// Optimizer step from which the adversarial terms are on (warm-up on reconstruction
    /// only before). Default 500.
    #[serde(default = "default_adv_start")]
    pub adv_start_step: usize,
    /// `least_squares` (default) or `hinge`.
    #[serde(default)]
    pub adv_loss: AdvLoss,
    /// Channels of the discriminator's first layer (doubled per layer). Default 16.
    #[serde(default = "default_disc_ch")]
    pub disc_channels: usize,
    /// Stride-2 layers of the discriminator. Default 2.
    #[serde(default = "default_disc_layers")]
    pub disc_layers: usize,
}

/// `[run]`: length, output, checkpoints, resume.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// Output folder (checkpoints/, metrics.jsonl, loss_curve.png, previews/, final/). Required.
    pub out_dir: PathBuf,
    /// Total optimizer steps (also the schedule's length). Default 1000.
    #[serde(default = "default_steps")]
    pub steps: usize,
    /// Write a checkpoint (and a preview) every this many steps; 0: only at the end.
    /// Default 250.
    #[serde(default = "default_ckpt_every")]
    pub checkpoint_every: usize,
    /// Keep this many most recent checkpoints (older ones are deleted). Default 2; 0 keeps all.
    #[serde(default = "default_keep")]
    pub keep_checkpoints: usize,
    /// Seed of the initialisation, the data order, crops, flips and the latent noise. Default 0.
    #[serde(default)]
    pub seed: u64,
    /// Continue from the latest checkpoint in `out_dir/checkpoints` (also `--resume`).
    /// Default false (a fresh run refuses an `out_dir` that already holds checkpoints).
    #[serde(default)]
    pub resume: bool,
    /// Stop early (with a checkpoint and the evaluation) after this many minutes of wall
    /// time. Default: no limit.
    #[serde(default)]
    pub max_wall_minutes: Option<f64>,
    /// Evaluate on at most this many held-out volumes; 0 means all. Default 0.
    #[serde(default)]
    pub eval_max_items: usize,
    /// Compute device: "cpu" (default) or, in a `--features wgpu` build, "wgpu" / "wgpu:N"
    /// (`text2ct_models::device`). `train ldm` also takes a comma-separated list
    /// ("wgpu:0,wgpu:1"): data-parallel training, each micro-batch split across the devices.
    #[serde(default = "default_device")]
    pub device: String,
}

fn default_device() -> String {
    "cpu".to_string()
}

impl RunConfig {
    /// The `[run] device` (an error names the devices this build has).
    pub fn device(&self) -> Result<burn::tensor::Device> {
        if self.device.contains(',') {
            return Err(TrainError::Config(format!(
                "run.device {:?} lists several devices: data-parallel training is implemented for `train ldm`; this trainer takes one device",
                self.device
            )));
        }
        text2ct_models::device::parse(&self.device).map_err(|e| TrainError::Config(format!("run.device: {e}")))
    }

    /// The `[run] device` list (one or more names, comma-separated), for data-parallel training.
    pub fn devices(&self) -> Result<Vec<burn::tensor::Device>> {
        text2ct_models::device::parse_list(&self.device).map_err(|e| TrainError::Config(format!("run.device: {e}")))
    }
}

fn one() -> usize {
    1
}
fn one_f() -> f64 {
    1.0
}
fn default_lr() -> f64 {
    1e-4
}
fn default_betas() -> [f32; 2] {
    [0.9, 0.999]
}
fn default_wd() -> f32 {
    1e-5
}
fn default_eps() -> f32 {
    1e-8
}
fn default_power() -> f64 {
    1.0
}
fn default_kl() -> f64 {
    1e-7
}
fn default_perc() -> f64 {
    0.3
}
fn default_scales() -> usize {
    3
}
fn default_adv() -> f64 {
    0.1
}
fn default_adv_start() -> usize {
    500
}
fn default_disc_ch() -> usize {
    16
}
fn default_disc_layers() -> usize {
    2
}
fn default_steps() -> usize {
    1000
}
fn default_ckpt_every() -> usize {
    250
}
fn default_keep() -> usize {
    2
}

impl Default for OptimConfig {
    fn default() -> Self {
        OptimConfig {
            lr: default_lr(),
            disc_lr: None,
            betas: default_betas(),
            weight_decay: default_wd(),
            eps: default_eps(),
            grad_accum_steps: 1,
            grad_clip_norm: None,
        }
    }
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        ScheduleConfig { kind: ScheduleKind::Polynomial, power: default_power(), warmup_steps: 0, min_lr: 0.0 }
    }
}

impl Default for VaeLossConfig {
    fn default() -> Self {
        VaeLossConfig {
            l1_weight: 1.0,
            kl_weight: default_kl(),
            perceptual_weight: default_perc(),
            perceptual_scales: default_scales(),
            adv_weight: default_adv(),
            adv_start_step: default_adv_start(),
            adv_loss: AdvLoss::LeastSquares,
            disc_channels: default_disc_ch(),
            disc_layers: default_disc_layers(),
        }
    }
}

/// A configuration error.
pub fn bad<T>(msg: impl Into<String>) -> Result<T> {
    Err(TrainError::Config(msg.into()))
}

/// Parse a training config from TOML text (no validation).
pub fn toml_from_str<T: serde::de::DeserializeOwned>(s: &str) -> Result<T> {
    toml::from_str(s).map_err(|e| TrainError::Config(e.to_string()))
}

/// Read a TOML training config and validate it; errors name the file.
pub fn toml_from_file<T: serde::de::DeserializeOwned>(path: &Path, validate: impl Fn(&T) -> Result<()>) -> Result<T> {
    let s = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
    let cfg = toml_from_str(&s).map_err(|e| TrainError::Config(format!("{}: {e}", path.display())))?;
    validate(&cfg).map_err(|e| TrainError::Config(format!("{}: {e}", path.display())))?;
    Ok(cfg)
}

/// A training config as TOML (what checkpoints keep).
pub(crate) fn toml_to_string<T: Serialize>(cfg: &T) -> Result<String> {
    toml::to_string_pretty(cfg).map_err(|e| TrainError::Config(format!("cannot serialise config: {e}")))
}

fn finite_nonneg(name: &str, v: f64) -> Result<()> {
    if !(v.is_finite() && v >= 0.0) {
        return bad(format!("{name} must be finite and >= 0, got {v}"));
    }
    Ok(())
}

impl OptimConfig {
    /// Check the `[optim]` values.
    pub fn validate(&self) -> Result<()> {
        let o = self;
        if !(o.lr.is_finite() && o.lr > 0.0) || o.disc_lr.is_some_and(|l| !(l.is_finite() && l > 0.0)) {
            return bad("optim.lr and optim.disc_lr must be finite and > 0");
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
        Ok(())
    }
}

impl VaeTrainConfig {
    /// Parse TOML text (no file checks; see [`VaeTrainConfig::validate`]).
    pub fn from_toml_str(s: &str) -> Result<Self> {
        toml_from_str(s)
    }

    /// Read and validate a TOML file; errors name the file.
    pub fn from_file(path: &Path) -> Result<Self> {
        toml_from_file(path, Self::validate)
    }

    /// The config as TOML (what checkpoints keep).
    pub fn to_toml_string(&self) -> Result<String> {
        toml_to_string(self)
    }

    /// Check values and that the manifests exist.
    pub fn validate(&self) -> Result<()> {
        self.model.validate().map_err(|e| TrainError::Config(format!("[model]: {e}")))?;
        if self.model.in_channels != 1 || self.model.out_channels != 1 {
            return bad("[model] in_channels and out_channels must be 1 (CT volumes)");
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
        if d.batch_size == 0 {
            return bad("data.batch_size must be >= 1");
        }
        let f = self.model.downsample_factor();
        if let Some(p) = d.patch_size {
            if p.iter().any(|&n| n == 0 || n % f != 0) {
                return bad(format!("data.patch_size {p:?}: each extent must be a positive multiple of {f}"));
            }
        }
        if d.flip_prob.iter().any(|&p| !(0.0..=1.0).contains(&p)) {
            return bad(format!("data.flip_prob {:?}: probabilities must be in [0, 1]", d.flip_prob));
        }
        if d.limit == Some(0) {
            return bad("data.limit must be >= 1");
        }
        self.optim.validate()?;
        let s = &self.schedule;
        if !(s.power.is_finite() && s.power >= 0.0) || !(s.min_lr.is_finite() && s.min_lr >= 0.0) {
            return bad("schedule.power and schedule.min_lr must be finite and >= 0");
        }
        let l = &self.loss;
        for (n, v) in [
            ("loss.l1_weight", l.l1_weight),
            ("loss.kl_weight", l.kl_weight),
            ("loss.perceptual_weight", l.perceptual_weight),
            ("loss.adv_weight", l.adv_weight),
        ] {
            finite_nonneg(n, v)?;
        }
        if l.perceptual_weight > 0.0 && l.perceptual_scales == 0 {
            return bad("loss.perceptual_scales must be >= 1 when perceptual_weight > 0");
        }
        if l.adv_weight > 0.0 && (l.disc_channels == 0 || l.disc_layers == 0) {
            return bad("loss.disc_channels and loss.disc_layers must be >= 1 when adv_weight > 0");
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
