//! Latent-diffusion (U-Net) training, as Text2CT's `scripts/diff_model_train.py` runs it
//! (`../shared/reference/text2ct-upstream.md` §1.5.3, §1.5.4), and the export of a model folder
//! that `text2ct generate --model DIR` loads.
//!
//! 1. **Cache** (resumable, under `run.out_dir/cache/`): every manifest volume is encoded once by
//!    the given (frozen) VAE into a *sampled* latent `μ + ε·σ` (ε from a ChaCha8 stream seeded by
//!    `(run.seed, item index)`), stored as `latents/<id>.npy` (float32 `[C, x, y, z]`); every
//!    report is tokenized (CLIP BPE) and encoded by the given (frozen) CLIP text encoder into
//!    `text/<id>.npy` (`[1, D]`). Files already there are reused; `cache/cache.json` records what
//!    made them and a mismatch is an error (delete the folder to rebuild).
//! 2. **Scale factor** `= 1 / std(first training batch of latents)` (unbiased std, as
//!    `torch.std`), computed once at step 0, kept in every checkpoint and in the exported U-Net
//!    file. Latents are multiplied by it.
//! 3. **One optimizer step**: for each of `grad_accum_steps` micro-batches, per sample draw
//!    (ChaCha8 seeded by `(seed, micro-batch index)`, see [`draw_micro`]) a timestep, a CFG
//!    dropout coin and ε ~ N(0, I):
//!    - `rflow` (the release): `t = RFlowScheduler::text2ct().sample_timestep(u, numel)`,
//!      `x_t = (1 − t/T)·x0 + (t/T)·ε`, target `v = x0 − ε`, **L1** loss;
//!    - `ddpm` (the paper): integer `t ~ U{0..T−1}`, `x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·ε` with MAISI's
//!      scaled-linear betas (what the generation pipeline's DDPM/DDIM samplers use), target ε,
//!      **L2** (mean squared error) loss;
//!
//!    with probability `cfg_dropout` (default 0.1) the text context is replaced by zeros (the
//!    unconditional branch of classifier-free guidance). The U-Net also gets the spacing input
//!    (manifest spacing mm × 100) and class label 1 (CT) when its config has them. Losses are
//!    divided by the number of micro-batches and their gradients summed; then one Adam (or AdamW)
//!    step at the rate of the polynomial schedule (power 2, stepped every optimizer step, as
//!    `torch.optim.lr_scheduler.PolynomialLR`), implemented by [`Schedule`].
//! 4. **Checkpoints** (`checkpoints/step-XXXXXXXX/`, atomic): `unet.safetensors` (the export
//!    layout below), `optim.bpk`, `config.toml`, `metrics.jsonl`, `state.json`. All randomness is
//!    a pure function of the seed and the counters in `state.json`, so a resumed run equals an
//!    uninterrupted one exactly.
//! 5. **Export** (`run.out_dir/model/`): `model.json` ([`text2ct_generate::ModelCard`]),
//!    `unet.safetensors`, `unet_config.json`, the VAE and text-encoder weights copied as given
//!    with their configs, the training config, the loss curve and `metrics.json`.
//!
//! **U-Net file layout.** `Unet::load_checkpoint` reads a `scale_factor` tensor next to the
//! weights and then selects the U-Net by its anchor key; a `scale_factor` key beside bare U-Net
//! keys would fail the strict load. So the file mirrors the release's `.pt` dictionary
//! (`{"unet_state_dict": ..., "scale_factor": ...}`): MONAI key names under the prefix
//! `unet_state_dict.`, and a one-element float32 tensor `scale_factor` at the top level.
//!
//! **Devices.** Training runs on one device, `[run] device`: `cpu` (burn's `flex`, default) or,
//! in a `--features wgpu` build, `wgpu[:N]` (a GPU; the caches are still built on the CPU).
//! Data-parallel training over several devices is not wired: burn 0.22's multi-device gradient
//! synchronisation is not used here, so `num_devices`-style options do not exist. Gradient
//! accumulation gives the larger effective batches instead.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::decay::WeightDecayConfig;
use burn::optim::grad_clipping::GradientClippingConfig;
use burn::optim::lr_scheduler::LrScheduler;
use burn::optim::{AdamConfig, AdamWConfig, GradientsAccumulator, GradientsParams, ModuleOptimizer};
use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::Distribution;
use serde::{Deserialize, Serialize};
use text2ct_diffusion::{BetaSchedule, NoiseSchedule, RFlowScheduler};
use text2ct_generate::{TextEncoder, TextEncoderKind};
use text2ct_io::npy::NpyArray;
use text2ct_models::blocks::{ParamKind, ParamSource};
use text2ct_models::{ClipTextConfig, RawTensor, StateDict, Unet, UnetCond, UnetConfig, UnetNet, Vae, VaeConfig};

use crate::checkpoint::{self, TrainState};
use crate::config::{bad, toml_from_file, toml_from_str, toml_to_string, RunConfig, ScheduleConfig, ScheduleKind};
use crate::data::{step_seed, LoaderState, VolumeSet};
use crate::error::{Result, TrainError};
use crate::metrics::{moving_average, MetricsLog, StepRecord};
use crate::params;
use crate::plot::LinePlot;
use crate::progress::{Progress, ProgressEvent, StepLosses};
use crate::schedule::Schedule;

// ---------------------------------------------------------------------------------------------
// Config

/// An LDM training run: `[model]` (the U-Net, MONAI `DiffusionModelUNetMaisi` arguments),
/// `[vae]`, `[text_encoder]`, `[data]`, `[objective]`, `[optim]`, `[schedule]`, `[run]`,
/// `[export]`. See `configs/train_ldm_phantom.toml`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LdmTrainConfig {
    pub model: UnetConfig,
    pub vae: FrozenNet,
    pub text_encoder: TextEncoderConfig,
    pub data: LdmDataConfig,
    #[serde(default)]
    pub objective: ObjectiveConfig,
    #[serde(default)]
    pub optim: LdmOptimConfig,
    /// Default: polynomial, power 2 (Text2CT's `PolynomialLR(power=2.0)`).
    #[serde(default = "default_ldm_schedule")]
    pub schedule: ScheduleConfig,
    pub run: RunConfig,
    #[serde(default)]
    pub export: ExportConfig,
    /// `[init]`: start from trained U-Net weights (fine-tuning) instead of MONAI's initialisation.
    #[serde(default)]
    pub init: Option<InitConfig>,
}

/// `[init]`: fine-tune a trained U-Net.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InitConfig {
    /// U-Net weights with MONAI's keys whose shapes match `[model]`: a model folder's
    /// `unet.safetensors`, a training checkpoint's, or the release's `unet_rflow_200ep.pt`
    /// (strict load: a missing, unexpected or mis-shaped key is an error). Its `scale_factor`,
    /// when the file holds one, is kept: the network learnt on latents scaled by it. Otherwise the
    /// scale factor is computed from the first batch as for a fresh run. The optimizer starts
    /// fresh. Typical use: retrain the conditioning after the text encoder changed, or adapt the
    /// released model to new data.
    pub unet: PathBuf,
}

/// A frozen network: its JSON config and weights (`.safetensors` or `.pt`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FrozenNet {
    pub config: PathBuf,
    pub weights: PathBuf,
}

/// `[text_encoder]`: the frozen text encoder. `kind = "clip3d"` (default): Text2CT's CLIP text encoder
/// (Hugging Face `CLIPTextConfig` JSON; weights with `text_model.*` / `text_projection.weight`, or a whole
/// CLIP3D checkpoint). `kind = "minilm"`: the CLIP ablation's all-MiniLM-L6-v2 (`BertConfig` JSON,
/// `model.safetensors`, and `tokenizer = "…/tokenizer.json"`); its embedding size (384) must be the
/// U-Net's `cross_attention_dim`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextEncoderConfig {
    #[serde(default, skip_serializing_if = "TextEncoderKind::is_clip3d")]
    pub kind: TextEncoderKind,
    pub config: PathBuf,
    pub weights: PathBuf,
    /// The WordPiece `tokenizer.json` (minilm only; clip3d's tokenizer is built in).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokenizer: Option<PathBuf>,
    /// Tokens per report (padded / truncated). Default: clip3d the encoder's
    /// `max_position_embeddings` (512 for Text2CT's); minilm 256 (sentence-transformers' `max_seq_length`).
    #[serde(default)]
    pub max_length: Option<usize>,
    /// Standardise every context dimension with the mean and std of the cached training
    /// embeddings (stored in the model card, applied again at generation; the CFG-dropped
    /// context stays zeros = the mean embedding). Default false: the release feeds the raw CLIP
    /// embedding. Useful when the encoder's embeddings differ little between reports (a small
    /// CLIP early in training: cosine similarities ~0.99), which the U-Net otherwise has to
    /// amplify itself.
    #[serde(default)]
    pub standardize: bool,
}

/// `[data]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LdmDataConfig {
    /// `manifest.jsonl` of `text2ct prepare` (all volumes must have one size). Required.
    pub train_manifest: PathBuf,
    /// Latents per micro-batch. Default 1 (the release: 4).
    #[serde(default = "one")]
    pub batch_size: usize,
    /// Use at most this many volumes (first in the manifest). Default: all.
    #[serde(default)]
    pub limit: Option<usize>,
}

/// The training objective.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Objective {
    /// Rectified flow, L1 on the velocity `x0 − ε` (the released Text2CT).
    #[default]
    Rflow,
    /// DDPM ε-prediction with L2 (the paper's description).
    Ddpm,
}

/// `[objective]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectiveConfig {
    /// `rflow` (default) or `ddpm`.
    #[serde(default)]
    pub kind: Objective,
    /// Probability of replacing the text context by zeros. Default 0.1.
    #[serde(default = "default_dropout")]
    pub cfg_dropout: f64,
}

/// The optimizer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OptimKind {
    /// Adam (the release), L2 weight decay if `weight_decay > 0`.
    #[default]
    Adam,
    /// AdamW (decoupled weight decay).
    Adamw,
}

/// `[optim]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LdmOptimConfig {
    /// `adam` (default) or `adamw`.
    #[serde(default)]
    pub kind: OptimKind,
    /// Peak learning rate. Default 1e-4.
    #[serde(default = "default_lr")]
    pub lr: f64,
    /// Default `[0.9, 0.999]`.
    #[serde(default = "default_betas")]
    pub betas: [f32; 2],
    /// Default 1e-8 (PyTorch's).
    #[serde(default = "default_eps")]
    pub eps: f32,
    /// Default 0.
    #[serde(default)]
    pub weight_decay: f32,
    /// Micro-batches per optimizer step. Default 1.
    #[serde(default = "one")]
    pub grad_accum_steps: usize,
    /// Per-parameter gradient norm clipping. Default: none.
    #[serde(default)]
    pub grad_clip_norm: Option<f32>,
}

/// `[export]`: what the model card says, and the sampler defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportConfig {
    /// Default `text2ct-ldm`.
    #[serde(default = "default_name")]
    pub name: String,
    /// Default: generated from the run.
    #[serde(default)]
    pub description: Option<String>,
    /// Default: generated from the manifest (count, size, spacing, path).
    #[serde(default)]
    pub trained_on: Option<String>,
    #[serde(default = "default_use")]
    pub intended_use: String,
    #[serde(default = "default_code_licence")]
    pub licence_code: String,
    #[serde(default = "default_weights_licence")]
    pub licence_weights: String,
    /// Sampler steps. Default 30.
    #[serde(default = "default_sampler_steps")]
    pub sampler_steps: usize,
    /// Guidance scale. Default 5.0 (the release's).
    #[serde(default = "default_guidance")]
    pub guidance: f32,
    /// VAE decoding window in latent voxels (none: one pass). Default none.
    #[serde(default)]
    pub decode_window: Option<[usize; 3]>,
}

fn one() -> usize {
    1
}
fn default_lr() -> f64 {
    1e-4
}
fn default_betas() -> [f32; 2] {
    [0.9, 0.999]
}
fn default_eps() -> f32 {
    1e-8
}
fn default_dropout() -> f64 {
    0.1
}
fn default_name() -> String {
    "text2ct-ldm".into()
}
fn default_use() -> String {
    "Research and testing of the text2ct pipeline. Not for diagnosis.".into()
}
fn default_code_licence() -> String {
    "Apache-2.0 (text2ct)".into()
}
fn default_weights_licence() -> String {
    "trained by the user with text2ct; the licence of the training data applies".into()
}
fn default_sampler_steps() -> usize {
    30
}
fn default_guidance() -> f32 {
    5.0
}
fn default_ldm_schedule() -> ScheduleConfig {
    ScheduleConfig { kind: ScheduleKind::Polynomial, power: 2.0, warmup_steps: 0, min_lr: 0.0 }
}

impl Default for ObjectiveConfig {
    fn default() -> Self {
        ObjectiveConfig { kind: Objective::Rflow, cfg_dropout: default_dropout() }
    }
}

impl Default for LdmOptimConfig {
    fn default() -> Self {
        LdmOptimConfig {
            kind: OptimKind::Adam,
            lr: default_lr(),
            betas: default_betas(),
            eps: default_eps(),
            weight_decay: 0.0,
            grad_accum_steps: 1,
            grad_clip_norm: None,
        }
    }
}

impl Default for ExportConfig {
    fn default() -> Self {
        ExportConfig {
            name: default_name(),
            description: None,
            trained_on: None,
            intended_use: default_use(),
            licence_code: default_code_licence(),
            licence_weights: default_weights_licence(),
            sampler_steps: default_sampler_steps(),
            guidance: default_guidance(),
            decode_window: None,
        }
    }
}

impl LdmTrainConfig {
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

    /// Check values and that the files exist.
    pub fn validate(&self) -> Result<()> {
        self.model.validate().map_err(|e| TrainError::Config(format!("[model]: {e}")))?;
        let m = &self.model;
        if m.include_top_region_index_input || m.include_bottom_region_index_input {
            return bad("[model]: body-region inputs (MAISI) are not supported by the LDM trainer");
        }
        if !m.with_conditioning || m.cross_attention_dim.is_none() {
            return bad("[model]: the U-Net must have with_conditioning = true and a cross_attention_dim");
        }
        for (what, p) in [
            ("vae.config", &self.vae.config),
            ("vae.weights", &self.vae.weights),
            ("text_encoder.config", &self.text_encoder.config),
            ("text_encoder.weights", &self.text_encoder.weights),
            ("data.train_manifest", &self.data.train_manifest),
            ("init.unet", self.init.as_ref().map_or(&self.data.train_manifest, |i| &i.unet)),
        ] {
            if !p.is_file() {
                return bad(format!("{what} {} does not exist", p.display()));
            }
        }
        match (self.text_encoder.kind, &self.text_encoder.tokenizer) {
            (TextEncoderKind::Minilm, None) => {
                return bad("[text_encoder]: kind = \"minilm\" needs tokenizer = \"…/tokenizer.json\"")
            }
            (TextEncoderKind::Minilm, Some(t)) if !t.is_file() => {
                return bad(format!("text_encoder.tokenizer {} does not exist", t.display()))
            }
            (TextEncoderKind::Clip3d, Some(_)) => {
                return bad("[text_encoder]: tokenizer is for kind = \"minilm\" (clip3d's tokenizer is built in)")
            }
            _ => {}
        }
        if self.data.batch_size == 0 || self.data.limit == Some(0) {
            return bad("data.batch_size and data.limit must be >= 1");
        }
        if !(0.0..=1.0).contains(&self.objective.cfg_dropout) {
            return bad(format!("objective.cfg_dropout {} must be in [0, 1]", self.objective.cfg_dropout));
        }
        let o = &self.optim;
        if !(o.lr.is_finite() && o.lr > 0.0) {
            return bad("optim.lr must be finite and > 0");
        }
        if o.betas.iter().any(|b| !(0.0..1.0).contains(b))
            || o.eps.is_nan()
            || o.eps <= 0.0
            || o.weight_decay.is_nan()
            || o.weight_decay < 0.0
        {
            return bad("optim.betas must be in [0, 1), optim.eps > 0, optim.weight_decay >= 0");
        }
        if o.grad_accum_steps == 0 || o.grad_clip_norm.is_some_and(|c| c.is_nan() || c <= 0.0) {
            return bad("optim.grad_accum_steps must be >= 1 and optim.grad_clip_norm > 0");
        }
        if self.run.steps == 0 {
            return bad("run.steps must be >= 1");
        }
        let n_dev = self.run.device.split(',').count();
        if self.data.batch_size < n_dev {
            return bad(format!(
                "data.batch_size {} is smaller than the {n_dev} devices of run.device: each device needs at least one sample per micro-batch",
                self.data.batch_size
            ));
        }
        if self.export.sampler_steps == 0 || !self.export.guidance.is_finite() {
            return bad("export.sampler_steps must be >= 1 and export.guidance finite");
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Per-step randomness

/// What one micro-batch draws: per sample a timestep, a CFG-dropout decision, and the noise.
#[derive(Clone, Debug, PartialEq)]
pub struct MicroDraw {
    /// Timesteps: rflow floats in `[0, T)`, ddpm integers `0..T` (as floats).
    pub t: Vec<f32>,
    /// `true`: this sample's text context is zeroed.
    pub drop: Vec<bool>,
    /// ε ~ N(0, I), `batch · numel_per_sample` values.
    pub eps: Vec<f32>,
}

/// The draws of micro-batch `index` (`step · grad_accum_steps + micro`): a ChaCha8 stream seeded
/// by `(seed, index)`; per sample first the timestep uniform, then the dropout uniform, then the
/// sample's noise. `latent_numel` is the spatial size `x·y·z` (what the rflow shift uses);
/// `sample_numel` the values per sample (`C·x·y·z`).
pub fn draw_micro(
    seed: u64,
    index: u64,
    batch: usize,
    latent_numel: u64,
    sample_numel: usize,
    objective: Objective,
    cfg_dropout: f64,
) -> Result<MicroDraw> {
    let mut rng = ChaCha8Rng::seed_from_u64(step_seed(seed, 2, index));
    let rf = RFlowScheduler::text2ct();
    let mut d = MicroDraw { t: Vec::with_capacity(batch), drop: Vec::with_capacity(batch), eps: Vec::new() };
    d.eps.reserve(batch * sample_numel);
    for _ in 0..batch {
        let u: f32 = rng.random::<f32>();
        let t = match objective {
            Objective::Rflow => rf.sample_timestep(u, latent_numel).map_err(|e| TrainError::Train(e.to_string()))?,
            Objective::Ddpm => ((u as f64 * DDPM_T as f64) as usize).min(DDPM_T - 1) as f32,
        };
        d.t.push(t);
        let c: f64 = rng.random::<f64>();
        d.drop.push(c < cfg_dropout);
        for _ in 0..sample_numel {
            d.eps.push(rand_distr::StandardNormal.sample(&mut rng));
        }
    }
    Ok(d)
}

/// Training timesteps of the DDPM objective (MAISI: 1000, scaled-linear betas).
pub const DDPM_T: usize = 1000;

/// `1 / std(values)` with the unbiased (n − 1) std, as `1 / torch.std(latents)`.
pub fn scale_factor_of(values: &[f32]) -> Result<f64> {
    let n = values.len();
    if n < 2 {
        return Err(TrainError::Data("scale factor: need at least two latent values".into()));
    }
    let mean = values.iter().map(|&v| v as f64).sum::<f64>() / n as f64;
    let var = values.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    let std = var.sqrt();
    if !(std.is_finite() && std > 0.0) {
        return Err(TrainError::Data(format!("scale factor: latent std is {std}")));
    }
    Ok(1.0 / std)
}

// ---------------------------------------------------------------------------------------------
// U-Net export with MONAI key names

/// Serves, for the k-th requested key, every value `k` (mode 0) or the element index (mode 1).
struct ProbeSource {
    mode: u8,
    spec: Vec<(String, Vec<usize>)>,
}

impl ParamSource for ProbeSource {
    fn take(&mut self, key: &str, shape: &[usize], _kind: ParamKind) -> Vec<f32> {
        let k = self.spec.len();
        self.spec.push((key.to_string(), shape.to_vec()));
        let n: usize = shape.iter().product();
        if self.mode == 0 {
            vec![k as f32; n]
        } else {
            (0..n).map(|j| j as f32).collect()
        }
    }
}

struct Values(Vec<Vec<f32>>);
impl ModuleVisitor for Values {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let v = param.val().into_data().convert::<f32>().try_into_vec::<f32>().unwrap_or_default();
        self.0.push(v);
    }
}

/// Where each parameter of a [`UnetNet`] (visit order) goes in the MONAI state dict: its key,
/// the PyTorch shape, and for each element its flat index in the PyTorch tensor (`None`: the
/// identity). Found by building the network twice from probing sources, so it follows whatever
/// layout (e.g. transposed linear weights) `UnetNet::build` uses.
pub struct UnetKeyMap {
    pub entries: Vec<(String, Vec<usize>, Option<Vec<u32>>)>,
}

impl UnetKeyMap {
    pub fn new(cfg: &UnetConfig) -> Result<Self> {
        let dev = Device::flex();
        let mut a = ProbeSource { mode: 0, spec: Vec::new() };
        let na = UnetNet::build(cfg, &mut a, &dev)?;
        let mut va = Values(Vec::new());
        na.visit(&mut va);
        drop(na);
        let mut b = ProbeSource { mode: 1, spec: Vec::new() };
        let nb = UnetNet::build(cfg, &mut b, &dev)?;
        let mut vb = Values(Vec::new());
        nb.visit(&mut vb);
        drop(nb);
        let bad = |m: String| TrainError::Train(format!("U-Net key map: {m}"));
        if va.0.len() != a.spec.len() || vb.0.len() != va.0.len() {
            return Err(bad(format!("{} parameters, {} keys", va.0.len(), a.spec.len())));
        }
        let mut seen = vec![false; a.spec.len()];
        let mut entries = Vec::with_capacity(va.0.len());
        for (i, (ka, ib)) in va.0.iter().zip(&vb.0).enumerate() {
            let k = ka.first().copied().unwrap_or(-1.0);
            if k < 0.0 || k.fract() != 0.0 || (k as usize) >= a.spec.len() || ka.iter().any(|&v| v != k) {
                return Err(bad(format!("parameter {i} is not a single source tensor")));
            }
            let k = k as usize;
            if std::mem::replace(&mut seen[k], true) {
                return Err(bad(format!("key {} used twice", a.spec[k].0)));
            }
            let (key, shape) = a.spec[k].clone();
            let n: usize = shape.iter().product();
            if ib.len() != n || n >= (1 << 24) {
                return Err(bad(format!("{key}: {} values, shape {shape:?}", ib.len())));
            }
            let identity = ib.iter().enumerate().all(|(j, &v)| v == j as f32);
            let perm = if identity {
                None
            } else {
                let mut hit = vec![false; n];
                let mut p = Vec::with_capacity(n);
                for &v in ib {
                    let j = v as usize;
                    if v < 0.0 || v.fract() != 0.0 || j >= n || std::mem::replace(&mut hit[j], true) {
                        return Err(bad(format!("{key}: not a permutation")));
                    }
                    p.push(j as u32);
                }
                Some(p)
            };
            entries.push((key, shape, perm));
        }
        if let Some(k) = seen.iter().position(|s| !s) {
            return Err(bad(format!("key {} has no parameter", a.spec[k].0)));
        }
        Ok(UnetKeyMap { entries })
    }

    /// The network's weights as a MONAI state dict.
    pub fn state_dict(&self, net: &UnetNet) -> Result<StateDict> {
        let vals = params::export(net)?;
        if vals.len() != self.entries.len() {
            return Err(TrainError::Train(format!(
                "U-Net export: {} parameters, map has {}",
                vals.len(),
                self.entries.len()
            )));
        }
        let mut sd = StateDict::default();
        for ((_, v), (key, shape, perm)) in vals.into_iter().zip(&self.entries) {
            let data = match perm {
                None => v,
                Some(p) => {
                    let mut out = vec![0f32; v.len()];
                    for (i, &j) in p.iter().enumerate() {
                        out[j as usize] = v[i];
                    }
                    out
                }
            };
            sd.tensors.insert(key.clone(), RawTensor::new(shape.clone(), data));
        }
        Ok(sd)
    }
}

/// Write the U-Net file: MONAI keys under `unet_state_dict.` and a top-level `scale_factor`
/// (see the module docs); `Unet::load_checkpoint` reads both.
pub fn save_unet(map: &UnetKeyMap, unet: &Unet, scale_factor: f64, path: &Path) -> Result<()> {
    let inner = map.state_dict(&unet.net)?;
    let mut sd = StateDict::default();
    for (k, t) in inner.tensors {
        sd.tensors.insert(format!("unet_state_dict.{k}"), t);
    }
    sd.tensors.insert("scale_factor".into(), RawTensor::new(vec![1], vec![scale_factor as f32]));
    let mut meta = BTreeMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    meta.insert("scale_factor".to_string(), format!("{scale_factor}"));
    if let Ok(c) = serde_json::to_string(&unet.config) {
        meta.insert("text2ct_unet_config".to_string(), c);
    }
    sd.write_safetensors(path, Some(meta))?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Cache

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct CacheInfo {
    vae_config: serde_json::Value,
    vae_weights_bytes: u64,
    text_config: serde_json::Value,
    text_weights_bytes: u64,
    max_length: usize,
    seed: u64,
    /// The WordPiece tokenizer file's size (minilm; absent for clip3d, as in caches made before).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tokenizer_bytes: Option<u64>,
    /// SHA-256 of the VAE and text-encoder weights: two encoders of one architecture have files of
    /// the same size, so the sizes alone cannot tell a retrained text encoder from the old one.
    /// Caches made before these fields existed do not match and are rebuilt.
    #[serde(default)]
    vae_weights_sha256: Option<String>,
    #[serde(default)]
    text_weights_sha256: Option<String>,
}

/// A U-Net checkpoint with the trainer's parameter ids (so optimizer state maps across runs) and
/// the scale factor it holds, if any.
fn load_unet_for_training(cfg: &UnetConfig, path: &Path, dev: &Device) -> Result<(Unet, Option<f64>)> {
    let ck = Unet::load_checkpoint(cfg, path, dev)?;
    let mut u = ck.unet;
    u.net = params::assign_ids(u.net, 0);
    Ok((u, ck.scale_factor.map(f64::from)))
}

fn weights_sha256(path: &Path) -> Result<String> {
    text2ct_eval::fid::sha256_file(path).map_err(|e| TrainError::Data(format!("hashing {}: {e}", path.display())))
}

/// The cached latents and text embeddings of a manifest.
#[derive(Clone, Debug)]
pub struct LatentCache {
    pub dir: PathBuf,
    /// Per item: id, latent path, text path, spacing (mm).
    pub items: Vec<(String, PathBuf, PathBuf, [f64; 3])>,
    /// `[C, x, y, z]` of every latent.
    pub latent_shape: [usize; 4],
    /// Context width D.
    pub text_dim: usize,
    /// Volume size `[X, Y, Z]` (voxels) and spacing of the first entry.
    pub volume_size: [usize; 3],
    pub spacing: [f64; 3],
    pub max_length: usize,
}

fn file_len(p: &Path) -> Result<u64> {
    Ok(std::fs::metadata(p).map_err(|e| TrainError::io(p, e))?.len())
}

fn to_vec<const D: usize>(t: Tensor<D>) -> Result<Vec<f32>> {
    t.into_data().convert::<f32>().try_into_vec::<f32>().map_err(|e| TrainError::Train(format!("{e:?}")))
}

/// The text encoder's config from `path`: a Hugging Face `CLIPTextConfig` JSON, or a whole CLIP
/// config with a `text_config` object (what `text2ct train clip` writes as `clip_config.json`; the
/// top-level `projection_dim` is used when the text block has none). Returns the parsed config and
/// the text block as JSON (what the model card's folder gets).
pub fn read_text_config(path: &Path) -> Result<(ClipTextConfig, serde_json::Value)> {
    let s = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
    let v: serde_json::Value =
        serde_json::from_str(&s).map_err(|e| TrainError::Config(format!("{}: {e}", path.display())))?;
    let mut text = match v.get("text_config") {
        Some(t) if t.is_object() => t.clone(),
        _ => v.clone(),
    };
    if text.get("projection_dim").is_none() {
        if let (Some(p), Some(o)) = (v.get("projection_dim"), text.as_object_mut()) {
            o.insert("projection_dim".into(), p.clone());
        }
    }
    let cfg = ClipTextConfig::from_json_str(&text.to_string())
        .map_err(|e| TrainError::Config(format!("{}: {e}", path.display())))?;
    Ok((cfg, text))
}

/// The `[text_encoder]` resolved from its config file.
#[derive(Clone, Debug)]
pub struct TextEncoderSpec {
    pub kind: TextEncoderKind,
    /// The config as the model folder gets it (`text_encoder_config.json`).
    pub json: serde_json::Value,
    /// Position table size (the longest token sequence).
    pub positions: usize,
    /// Embedding size: the U-Net's `cross_attention_dim`.
    pub dim: usize,
    /// Tokens per report: `max_length`, or the kind's default.
    pub max_length: usize,
}

/// Read the text encoder's config by kind (see [`TextEncoderConfig`]) and check `max_length`.
pub fn read_text_encoder_spec(t: &TextEncoderConfig) -> Result<TextEncoderSpec> {
    let (json, positions, dim, default_len) = match t.kind {
        TextEncoderKind::Clip3d => {
            let (c, json) = read_text_config(&t.config)?;
            (json, c.max_position_embeddings, c.projection_dim, c.max_position_embeddings)
        }
        TextEncoderKind::Minilm => {
            let c = text2ct_models::MiniLmConfig::from_json_file(&t.config)
                .map_err(|e| TrainError::Config(format!("[text_encoder] (minilm): {e}")))?;
            let json = serde_json::to_value(&c).map_err(|e| TrainError::Train(e.to_string()))?;
            let n = c.max_position_embeddings;
            (json, n, c.output_dim(), n.min(text2ct_text::MINILM_MAX_LEN))
        }
    };
    let max_length = t.max_length.unwrap_or(default_len);
    if max_length < 2 || max_length > positions {
        return bad(format!("text_encoder.max_length {max_length} must be in 2..={positions}"));
    }
    Ok(TextEncoderSpec { kind: t.kind, json, positions, dim, max_length })
}

/// Build (or reuse) the cache of `cfg` under `run.out_dir/cache`.
pub fn build_cache(cfg: &LdmTrainConfig, progress: Progress) -> Result<LatentCache> {
    let dir = cfg.run.out_dir.join("cache");
    for sub in ["latents", "text"] {
        std::fs::create_dir_all(dir.join(sub)).map_err(|e| TrainError::io(dir.join(sub), e))?;
    }
    let set = VolumeSet::open(&cfg.data.train_manifest, cfg.data.limit)?;
    let dev = Device::flex();
    let vae_cfg = VaeConfig::from_json_file(&cfg.vae.config)?;
    let spec = read_text_encoder_spec(&cfg.text_encoder)?;
    let max_length = spec.max_length;
    if Some(spec.dim) != cfg.model.cross_attention_dim {
        return bad(format!(
            "[model] cross_attention_dim {:?} must equal the {} text encoder's embedding size {}",
            cfg.model.cross_attention_dim,
            spec.kind.name(),
            spec.dim
        ));
    }
    let text_config = match spec.kind {
        // As caches were made before `kind` existed (the parsed CLIP config).
        TextEncoderKind::Clip3d => {
            let (c, _) = read_text_config(&cfg.text_encoder.config)?;
            serde_json::to_value(&c).map_err(|e| TrainError::Train(e.to_string()))?
        }
        TextEncoderKind::Minilm => serde_json::json!({ "minilm": spec.json.clone() }),
    };
    let info = CacheInfo {
        vae_config: serde_json::to_value(&vae_cfg).map_err(|e| TrainError::Train(e.to_string()))?,
        vae_weights_bytes: file_len(&cfg.vae.weights)?,
        text_config,
        text_weights_bytes: file_len(&cfg.text_encoder.weights)?,
        max_length,
        seed: cfg.run.seed,
        tokenizer_bytes: cfg.text_encoder.tokenizer.as_deref().map(file_len).transpose()?,
        vae_weights_sha256: Some(weights_sha256(&cfg.vae.weights)?),
        text_weights_sha256: Some(weights_sha256(&cfg.text_encoder.weights)?),
    };
    let info_path = dir.join("cache.json");
    if info_path.is_file() {
        let old: CacheInfo =
            serde_json::from_str(&std::fs::read_to_string(&info_path).map_err(|e| TrainError::io(&info_path, e))?)
                .map_err(|e| TrainError::Data(format!("{}: {e}", info_path.display())))?;
        if old != info {
            return bad(format!(
                "{} was made with another VAE / text encoder / seed / max_length: delete {} to rebuild the cache",
                info_path.display(),
                dir.display()
            ));
        }
    } else {
        let s = serde_json::to_string_pretty(&info).map_err(|e| TrainError::Train(e.to_string()))?;
        text2ct_io::error::atomic_write_bytes(&info_path, s.as_bytes())?;
    }
    let size0 = set.items[0].dims;
    if let Some(it) = set.items.iter().find(|it| it.dims != size0) {
        return Err(TrainError::Data(format!(
            "{}: volume {} is {:?}, the first is {size0:?}: the LDM trains on one size (prepare with --size)",
            set.manifest.display(),
            it.entry.id,
            it.dims
        )));
    }
    let f = vae_cfg.downsample_factor();
    if size0.iter().any(|&n| n % f != 0) {
        return bad(format!("volumes are {size0:?}: each extent must be a multiple of the VAE's factor {f}"));
    }
    let mut vae: Option<Vae> = None;
    let mut text: Option<TextEncoder> = None;
    let mut n_truncated = 0usize;
    let mut items = Vec::with_capacity(set.len());
    let n = set.len();
    let mut latent_shape = None;
    let mut text_dim = None;
    for (i, it) in set.items.iter().enumerate() {
        let id = &it.entry.id;
        if id.is_empty() || id.contains(['/', '\\']) || id.starts_with('.') {
            return Err(TrainError::Data(format!("manifest id {id:?} cannot name a cache file")));
        }
        let lp = dir.join("latents").join(format!("{id}.npy"));
        let tp = dir.join("text").join(format!("{id}.npy"));
        if !lp.is_file() {
            if vae.is_none() {
                vae = Some(Vae::load(&vae_cfg, &cfg.vae.weights, &dev)?);
            }
            let v = vae.as_ref().expect("loaded");
            let (x, d) = set.read_unit(i)?;
            let x = Tensor::<5>::from_data(TensorData::new(x, [1, 1, d[0], d[1], d[2]]), &dev);
            let z = v.encode_sample(x, step_seed(cfg.run.seed, 1, i as u64));
            let zd = z.dims();
            NpyArray::new(zd[1..].to_vec(), to_vec(z)?)?.write(&lp)?;
        }
        if !tp.is_file() {
            if text.is_none() {
                let enc = TextEncoder::load(
                    spec.kind,
                    &spec.json.to_string(),
                    &cfg.text_encoder.weights,
                    cfg.text_encoder.tokenizer.as_deref(),
                    &dev,
                )
                .map_err(|e| TrainError::Train(format!("{} text encoder: {e}", spec.kind.name())))?;
                text = Some(enc);
            }
            let enc = text.as_ref().expect("loaded");
            let (e, cut) = enc
                .encode_raw(&[it.entry.report.as_str()], max_length)
                .map_err(|e| TrainError::Data(format!("report of {id}: {e}")))?;
            n_truncated += usize::from(cut[0]);
            let ed = e.dims();
            NpyArray::new(vec![ed[0], ed[1]], to_vec(e)?)?.write(&tp)?;
        }
        if i == 0 {
            let l = NpyArray::read(&lp)?;
            let t = NpyArray::read(&tp)?;
            if l.shape.len() != 4 || t.shape.len() != 2 || t.shape[0] != 1 {
                return Err(TrainError::Data(format!(
                    "cache {}: latent {:?} / text {:?} have unexpected shapes",
                    dir.display(),
                    l.shape,
                    t.shape
                )));
            }
            latent_shape = Some([l.shape[0], l.shape[1], l.shape[2], l.shape[3]]);
            text_dim = Some(t.shape[1]);
        }
        items.push((id.clone(), lp, tp, it.entry.spacing));
        progress(ProgressEvent::Eval { done: i + 1, total: n });
    }
    if n_truncated > 0 {
        progress(ProgressEvent::Message(format!(
            "warning: {n_truncated} report(s) longer than {max_length} tokens were truncated for the {} text encoder",
            spec.kind.name()
        )));
    }
    Ok(LatentCache {
        dir,
        items,
        latent_shape: latent_shape.expect("at least one item"),
        text_dim: text_dim.expect("at least one item"),
        volume_size: size0,
        spacing: set.items[0].entry.spacing,
        max_length,
    })
}

/// A shuffled, exactly resumable order over the cache (epoch `e`: Fisher–Yates with a ChaCha8
/// generator seeded by `(seed, e)`; batches may straddle epochs).
struct Order {
    n: usize,
    seed: u64,
    state: LoaderState,
    order: Vec<usize>,
    order_epoch: Option<usize>,
}

impl Order {
    fn next(&mut self) -> usize {
        if self.state.pos >= self.n {
            self.state = LoaderState { epoch: self.state.epoch + 1, pos: 0 };
        }
        if self.order_epoch != Some(self.state.epoch) {
            let mut rng = ChaCha8Rng::seed_from_u64(step_seed(self.seed, 3, self.state.epoch as u64));
            let mut o: Vec<usize> = (0..self.n).collect();
            for i in (1..o.len()).rev() {
                let j = rng.random_range(0..=i);
                o.swap(i, j);
            }
            self.order = o;
            self.order_epoch = Some(self.state.epoch);
        }
        let i = self.order[self.state.pos];
        self.state.pos += 1;
        i
    }
}

/// Per-dimension mean and (population) std of every cached text embedding, for
/// `[text_encoder] standardize` (std floored at 1e-6).
pub fn context_stats(cache: &LatentCache) -> Result<text2ct_generate::card::ContextNorm> {
    let d = cache.text_dim;
    let (mut sum, mut sq) = (vec![0f64; d], vec![0f64; d]);
    for (id, _, tp, _) in &cache.items {
        let t = NpyArray::read(tp)?;
        if t.data.len() != d {
            return Err(TrainError::Data(format!("cache item {id}: text {:?} differs from the first", t.shape)));
        }
        for (k, v) in t.data.iter().enumerate() {
            sum[k] += *v as f64;
            sq[k] += (*v as f64) * (*v as f64);
        }
    }
    let n = cache.items.len().max(1) as f64;
    let mean: Vec<f64> = sum.iter().map(|s| s / n).collect();
    let std = sq.iter().zip(&mean).map(|(q, m)| ((q / n - m * m).max(0.0).sqrt().max(1e-6)) as f32).collect();
    Ok(text2ct_generate::card::ContextNorm { mean: mean.into_iter().map(|m| m as f32).collect(), std })
}

/// One micro-batch: latents `[B, C, x, y, z]` (unscaled), contexts `[B, 1, D]`, spacings.
#[allow(clippy::type_complexity)]
fn load_batch(cache: &LatentCache, idx: &[usize]) -> Result<(Vec<f32>, Vec<f32>, Vec<[f64; 3]>)> {
    let mut lat = Vec::new();
    let mut ctx = Vec::new();
    let mut sp = Vec::new();
    let ln: usize = cache.latent_shape.iter().product();
    for &i in idx {
        let (id, lp, tp, s) = &cache.items[i];
        let l = NpyArray::read(lp)?;
        let t = NpyArray::read(tp)?;
        if l.data.len() != ln || t.data.len() != cache.text_dim {
            return Err(TrainError::Data(format!(
                "cache item {id}: latent {:?} / text {:?} differ from the first",
                l.shape, t.shape
            )));
        }
        lat.extend_from_slice(&l.data);
        ctx.extend_from_slice(&t.data);
        sp.push(*s);
    }
    Ok((lat, ctx, sp))
}

// ---------------------------------------------------------------------------------------------
// Training

/// Knobs for tests and front ends that the config does not hold.
#[derive(Clone, Debug, Default)]
pub struct LdmTrainOptions {
    /// Stop (with a checkpoint, without the export) once this many steps are done.
    pub stop_at: Option<usize>,
}

/// What an LDM run did.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LdmSummary {
    pub out_dir: PathBuf,
    pub steps_done: usize,
    pub total_steps: usize,
    pub session_steps: usize,
    pub session_wall_s: f64,
    pub steps_per_s: f64,
    pub total_wall_s: f64,
    pub resumed_from: Option<PathBuf>,
    pub stopped_early: bool,
    pub objective: Objective,
    pub scale_factor: f64,
    /// Mean loss of the first and the last (up to) 50 steps of the whole run.
    pub first_loss: f64,
    pub final_loss: f64,
    pub num_params: usize,
    pub num_latents: usize,
    pub latent_shape: [usize; 4],
    pub last_checkpoint: Option<PathBuf>,
    /// The exported model folder (`out_dir/model`).
    pub model_dir: Option<PathBuf>,
}

/// Train per the config (see the module docs).
pub fn train_ldm(cfg: &LdmTrainConfig, progress: Progress) -> Result<LdmSummary> {
    train_ldm_with(cfg, &LdmTrainOptions::default(), progress)
}

fn optimizer(cfg: &LdmTrainConfig) -> ModuleOptimizer {
    let o = &cfg.optim;
    let clip = o.grad_clip_norm.map(GradientClippingConfig::Norm);
    match o.kind {
        OptimKind::Adam => AdamConfig::new()
            .with_beta_1(o.betas[0])
            .with_beta_2(o.betas[1])
            .with_epsilon(o.eps)
            .with_weight_decay((o.weight_decay > 0.0).then(|| WeightDecayConfig::new(o.weight_decay)))
            .with_grad_clipping(clip)
            .init(),
        OptimKind::Adamw => AdamWConfig::new()
            .with_beta_1(o.betas[0])
            .with_beta_2(o.betas[1])
            .with_epsilon(o.eps)
            .with_weight_decay(o.weight_decay)
            .with_grad_clipping(clip)
            .init(),
    }
}

fn rec_err(path: &Path, e: impl std::fmt::Debug) -> TrainError {
    TrainError::ckpt(path, format!("{e:?}"))
}

fn write_json<T: Serialize>(path: &Path, v: &T) -> Result<()> {
    let s = serde_json::to_string_pretty(v).map_err(|e| TrainError::Train(e.to_string()))?;
    text2ct_io::error::atomic_write_bytes(path, s.as_bytes())?;
    Ok(())
}

fn loss_curve(records: &[StepRecord], objective: Objective) -> LinePlot {
    let window = (records.len() / 50).clamp(1, 50);
    let pts: Vec<(f64, f64)> = records.iter().map(|r| (r.step as f64, r.losses.total)).collect();
    let name = match objective {
        Objective::Rflow => "L1 velocity loss (rectified flow)",
        Objective::Ddpm => "L2 noise loss (DDPM)",
    };
    let mut p = LinePlot::new("LDM training", "optimizer step", "loss (moving average, log scale)");
    p.log_y = true;
    p.with_series(name, moving_average(&pts, window))
}

fn mean_loss(records: &[StepRecord]) -> f64 {
    let k = records.len().max(1) as f64;
    records.iter().map(|r| r.losses.total).sum::<f64>() / k
}

/// [`train_ldm`] with [`LdmTrainOptions`].
pub fn train_ldm_with(cfg: &LdmTrainConfig, opts: &LdmTrainOptions, progress: Progress) -> Result<LdmSummary> {
    cfg.validate()?;
    let devices = cfg.run.devices()?; // a wrong device name fails before any data is read
    let device = devices[0].clone(); // the main device: the optimizer and the model live here
    let session_start = Instant::now();
    let out = cfg.run.out_dir.clone();
    std::fs::create_dir_all(&out).map_err(|e| TrainError::io(&out, e))?;
    let ckpt_root = out.join("checkpoints");
    let seed = cfg.run.seed;
    let total = cfg.run.steps;
    let accum = cfg.optim.grad_accum_steps;
    let bs = cfg.data.batch_size;
    let objective = cfg.objective.kind;

    let existing = checkpoint::latest(&ckpt_root)?;
    let resumed_from = if cfg.run.resume { existing.clone() } else { None };
    if !cfg.run.resume {
        if let Some(p) = &existing {
            return bad(format!(
                "{} already holds checkpoints (latest {}): resume with --resume / run.resume = true, or choose another run.out_dir",
                out.display(),
                p.display()
            ));
        }
    }

    progress(ProgressEvent::Message("caching latents and text embeddings".into()));
    let cache = build_cache(cfg, progress)?;
    let [lc, lx, ly, lz] = cache.latent_shape;
    if lc != cfg.model.in_channels || lc != cfg.model.out_channels {
        return bad(format!(
            "[model] in/out_channels ({}, {}) must equal the VAE's latent channels {lc}",
            cfg.model.in_channels, cfg.model.out_channels
        ));
    }
    if Some(cache.text_dim) != cfg.model.cross_attention_dim {
        return bad(format!(
            "[model] cross_attention_dim {:?} must equal the text encoder's embedding size {}",
            cfg.model.cross_attention_dim, cache.text_dim
        ));
    }
    let mult = cfg.model.size_multiple();
    if [lx, ly, lz].iter().any(|&n| n % mult != 0) {
        return bad(format!("latents are {:?}: each extent must be a multiple of the U-Net's {mult}", [lx, ly, lz]));
    }
    let sample_numel = lc * lx * ly * lz;
    let latent_numel = (lx * ly * lz) as u64;
    let d_ctx = cache.text_dim;
    let context_norm = if cfg.text_encoder.standardize { Some(context_stats(&cache)?) } else { None };

    let dev = device.autodiff();
    let key_map = UnetKeyMap::new(&cfg.model)?;
    let mut unet = Unet::new_for_training(&cfg.model, seed, &dev)?;
    unet.net = params::assign_ids(unet.net, 0);
    let mut optim = optimizer(cfg);
    let mut sched = Schedule::from_config(&cfg.schedule, cfg.optim.lr, total)?;
    let mut order =
        Order { n: cache.items.len(), seed, state: LoaderState::default(), order: Vec::new(), order_epoch: None };
    let mut step = 0usize;
    let mut prior_elapsed = 0.0;
    let mut records = Vec::new();
    let mut scale_factor: Option<f64> = None;
    if let (Some(init), None) = (&cfg.init, &resumed_from) {
        let (u, s) = load_unet_for_training(&cfg.model, &init.unet, &dev)?;
        unet = u;
        scale_factor = s;
        progress(ProgressEvent::Message(format!(
            "initialised from {} (scale factor {})",
            init.unet.display(),
            scale_factor.map_or("from the data".to_string(), |s| format!("{s:.6}, kept"))
        )));
    }

    if let Some(dir) = &resumed_from {
        let st = checkpoint::read_state(dir)?;
        let saved = LdmTrainConfig::from_toml_str(
            &std::fs::read_to_string(dir.join("config.toml"))
                .map_err(|e| TrainError::io(dir.join("config.toml"), e))?,
        )
        .map_err(|e| TrainError::ckpt(dir, format!("config.toml: {e}")))?;
        if saved.model != cfg.model || saved.objective != cfg.objective {
            return Err(TrainError::ckpt(dir, "the checkpoint's [model] or [objective] differs from the config's"));
        }
        if st.seed != seed {
            return Err(TrainError::ckpt(dir, format!("the checkpoint's seed is {}, the config's {seed}", st.seed)));
        }
        let (u, s) = load_unet_for_training(&cfg.model, &dir.join("unet.safetensors"), &dev)?;
        unet = u;
        scale_factor = Some(s.ok_or_else(|| TrainError::ckpt(dir, "unet.safetensors has no scale_factor"))?);
        let p = dir.join("optim.bpk");
        optim = optim.load(&p).map_err(|e| rec_err(&p, e))?;
        order.state = st.loader;
        sched.step = *st.schedulers.get("unet").unwrap_or(&st.step);
        step = st.step;
        prior_elapsed = st.elapsed_s;
        records = MetricsLog::read(&dir.join("metrics.jsonl"))?;
        records.retain(|r| r.step <= step);
    }
    let scale_factor = match scale_factor {
        Some(s) => s,
        None => {
            // The first training batch (what the loader yields first), unscaled.
            let mut peek =
                Order { n: order.n, seed, state: LoaderState::default(), order: Vec::new(), order_epoch: None };
            let idx: Vec<usize> = (0..bs).map(|_| peek.next()).collect();
            let (lat, _, _) = load_batch(&cache, &idx)?;
            scale_factor_of(&lat)?
        }
    };
    let mut log = MetricsLog::create(&out.join("metrics.jsonl"), records)?;
    let num_params = unet.net.num_params();
    progress(ProgressEvent::Message(format!(
        "U-Net {:?} ({num_params} parameters), {} latents {:?}, context {d_ctx}, objective {objective:?}, scale_factor {scale_factor:.6}, batch {bs} x {accum} accumulation, {}",
        cfg.model.num_channels,
        cache.items.len(),
        cache.latent_shape,
        if devices.len() == 1 {
            "single device".to_string()
        } else {
            format!("data-parallel over {} devices ({})", devices.len(), cfg.run.device)
        }
    )));
    progress(ProgressEvent::Start { start_step: step, total_steps: total, resumed_from: resumed_from.clone() });

    let ddpm = NoiseSchedule::new(BetaSchedule::maisi_scaled_linear(), DDPM_T)
        .map_err(|e| TrainError::Train(e.to_string()))?;
    let rf = RFlowScheduler::text2ct();
    let start_step = step;
    let mut last_ckpt: Option<PathBuf> = None;
    let mut stopped_early = false;
    let max_wall = cfg.run.max_wall_minutes.map(|m| m * 60.0);

    let save = |step: usize,
                unet: &Unet,
                optim: &ModuleOptimizer,
                sched: &Schedule,
                order: &Order,
                log: &MetricsLog,
                elapsed: f64|
     -> Result<PathBuf> {
        let mut schedulers = BTreeMap::new();
        schedulers.insert("unet".to_string(), sched.to_record().scalar::<u64>("step").unwrap_or(0) as usize);
        let st = TrainState { step, loader: order.state, schedulers, seed, elapsed_s: elapsed, version: 1 };
        let p = checkpoint::write_checkpoint(&ckpt_root, &st, |dir| {
            save_unet(&key_map, unet, scale_factor, &dir.join("unet.safetensors"))?;
            write_json(&dir.join("unet_config.json"), &unet.config)?;
            let p = dir.join("optim.bpk");
            optim.save(&p).map_err(|e| rec_err(&p, e))?;
            let toml = cfg.to_toml_string()?;
            std::fs::write(dir.join("config.toml"), toml).map_err(|e| TrainError::io(dir.join("config.toml"), e))?;
            log.rewrite(&dir.join("metrics.jsonl"))
        })?;
        checkpoint::prune(&ckpt_root, cfg.run.keep_checkpoints)?;
        Ok(p)
    };

    let has_class = cfg.model.num_class_embeds.is_some();
    let has_spacing = cfg.model.include_spacing_input;
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
        let epoch = order.state.epoch;
        let lr = sched.step();
        let mut acc = GradientsAccumulator::new();
        let mut loss_sum = 0.0;
        for micro in 0..accum {
            let idx: Vec<usize> = (0..bs).map(|_| order.next()).collect();
            let (lat, ctx, spacing) = load_batch(&cache, &idx)?;
            let x0: Vec<f32> = lat.iter().map(|&v| v * scale_factor as f32).collect();
            let draw = draw_micro(
                seed,
                (step * accum + micro) as u64,
                bs,
                latent_numel,
                sample_numel,
                objective,
                cfg.objective.cfg_dropout,
            )?;
            let mut xt = Vec::with_capacity(x0.len());
            let mut target = Vec::with_capacity(x0.len());
            for b in 0..bs {
                let r = b * sample_numel..(b + 1) * sample_numel;
                let (x, e) = (&x0[r.clone()], &draw.eps[r]);
                let de = |e: text2ct_diffusion::DiffusionError| TrainError::Train(e.to_string());
                match objective {
                    Objective::Rflow => {
                        xt.extend(rf.add_noise(x, e, draw.t[b]).map_err(de)?);
                        target.extend(text2ct_diffusion::velocity_target(x, e).map_err(de)?);
                    }
                    Objective::Ddpm => {
                        xt.extend(ddpm.add_noise(x, e, draw.t[b] as usize).map_err(de)?);
                        target.extend_from_slice(e);
                    }
                }
            }
            let mut c = ctx;
            if let Some(n) = &context_norm {
                n.apply(&mut c);
            }
            for (b, &d) in draw.drop.iter().enumerate() {
                if d {
                    c[b * d_ctx..(b + 1) * d_ctx].iter_mut().for_each(|v| *v = 0.0);
                }
            }
            let spacing: Vec<f32> = spacing.iter().flat_map(|s| s.map(|m| (m * 100.0) as f32)).collect();
            let batch = MicroBatch {
                dims: [bs, lc, lx, ly, lz],
                xt: &xt,
                target: &target,
                t: &draw.t,
                context: &c,
                d_ctx,
                spacing: has_spacing.then_some(&spacing[..]),
                class_labels: has_class,
                objective,
            };
            let lv = accumulate_data_parallel(&unet, &devices, &dev, &batch, accum, &mut acc)?;
            if !lv.is_finite() {
                return Err(TrainError::Train(format!("non-finite loss {lv} at step {step}")));
            }
            loss_sum += lv;
        }
        unet.net = optim.step(lr, unet.net, acc.grads());
        step += 1;
        let l = loss_sum / accum as f64;
        let losses =
            StepLosses { total: l, l1: if objective == Objective::Rflow { l } else { 0.0 }, ..Default::default() };
        log.push(StepRecord { step, epoch, lr, losses: losses.clone(), step_s: t0.elapsed().as_secs_f64() })?;
        let sps = (step - start_step) as f64 / session_start.elapsed().as_secs_f64().max(1e-9);
        progress(ProgressEvent::Step { step, total_steps: total, epoch, lr, losses, steps_per_s: sps });
        if cfg.run.checkpoint_every > 0 && step % cfg.run.checkpoint_every == 0 && step < total {
            let elapsed = prior_elapsed + session_start.elapsed().as_secs_f64();
            let p = save(step, &unet, &optim, &sched, &order, &log, elapsed)?;
            progress(ProgressEvent::Checkpoint { step, path: p.clone() });
            last_ckpt = Some(p);
            loss_curve(&log.records, objective).save_png(&out.join("loss_curve.png"))?;
        }
    }
    let session_wall = session_start.elapsed().as_secs_f64();
    let elapsed = prior_elapsed + session_wall;
    if step > start_step || last_ckpt.is_none() {
        let p = save(step, &unet, &optim, &sched, &order, &log, elapsed)?;
        progress(ProgressEvent::Checkpoint { step, path: p.clone() });
        last_ckpt = Some(p);
    }
    let recs = &log.records;
    let mut summary = LdmSummary {
        out_dir: out.clone(),
        steps_done: step,
        total_steps: total,
        session_steps: step - start_step,
        session_wall_s: session_wall,
        steps_per_s: (step - start_step) as f64 / session_wall.max(1e-9),
        total_wall_s: elapsed,
        resumed_from,
        stopped_early,
        objective,
        scale_factor,
        first_loss: mean_loss(&recs[..recs.len().min(50)]),
        final_loss: mean_loss(&recs[recs.len().saturating_sub(50)..]),
        num_params,
        num_latents: cache.items.len(),
        latent_shape: cache.latent_shape,
        last_checkpoint: last_ckpt,
        model_dir: None,
    };
    if !recs.is_empty() {
        loss_curve(recs, objective).save_png(&out.join("loss_curve.png"))?;
    }
    if opts.stop_at.is_some() && stopped_early {
        return Ok(summary);
    }
    let md = out.join("model");
    export_model(cfg, &cache, &key_map, &unet, scale_factor, context_norm, &log, &md)?;
    summary.model_dir = Some(md.clone());
    write_json(&md.join("metrics.json"), &summary)?;
    progress(ProgressEvent::Message(format!("model folder: {}", md.display())));
    Ok(summary)
}

/// One micro-batch, prepared on the host: noised latents, targets, timesteps, (dropped) contexts
/// and spacing, `dims[0]` samples.
struct MicroBatch<'a> {
    dims: [usize; 5],
    xt: &'a [f32],
    target: &'a [f32],
    t: &'a [f32],
    context: &'a [f32],
    d_ctx: usize,
    spacing: Option<&'a [f32]>,
    class_labels: bool,
    objective: Objective,
}

/// Samples `[start, end)` of each of the micro-batch's arrays as tensors on `dev`, the U-Net's
/// loss on them (the shard mean, as a tensor for backward).
fn shard_loss(unet: &Unet, dev: &Device, b: &MicroBatch, start: usize, end: usize) -> Result<Tensor<1>> {
    let n = end - start;
    let [_, c, x, y, z] = b.dims;
    let per = c * x * y * z;
    let dims = [n, c, x, y, z];
    let xt = Tensor::<5>::from_data(TensorData::new(b.xt[start * per..end * per].to_vec(), dims), dev);
    let target = Tensor::<5>::from_data(TensorData::new(b.target[start * per..end * per].to_vec(), dims), dev);
    let tt = Tensor::<1>::from_data(TensorData::new(b.t[start..end].to_vec(), [n]), dev);
    let ctx = b.context[start * b.d_ctx..end * b.d_ctx].to_vec();
    let cond = UnetCond {
        context: Some(Tensor::<3>::from_data(TensorData::new(ctx, [n, 1, b.d_ctx]), dev)),
        class_labels: b.class_labels.then(|| Tensor::<1, Int>::from_data(TensorData::new(vec![1i64; n], [n]), dev)),
        spacing: b
            .spacing
            .map(|s| Tensor::<2>::from_data(TensorData::new(s[start * 3..end * 3].to_vec(), [n, 3]), dev)),
        ..Default::default()
    };
    let diff = unet.forward_cond(xt, tt, &cond)? - target;
    Ok(match b.objective {
        Objective::Rflow => diff.abs().mean(),
        Objective::Ddpm => diff.square().mean(),
    })
}

/// Where sample ranges of a `bs`-sample micro-batch go on `n` devices: as equal as possible, the
/// first `bs % n` devices one sample more.
pub fn shard_ranges(bs: usize, n: usize) -> Vec<(usize, usize)> {
    let (q, r) = (bs / n, bs % n);
    let mut start = 0;
    (0..n)
        .map(|k| {
            let len = q + usize::from(k < r);
            let range = (start, start + len);
            start += len;
            range
        })
        .collect()
}

/// Adds the micro-batch's gradients (already divided by `accum`) to `acc` on the main device
/// `main_dev` (autodiff) and returns its mean loss, computed data-parallel: the batch is split by [`shard_ranges`] across
/// `devices`, each device runs a replica of the U-Net (forked from the main model: same weights,
/// same parameter ids) in its own thread, each shard's loss is weighted by its share of the batch
/// (`n_k / bs`), so the summed gradients equal the whole batch's (the U-Net has no batch
/// statistics: GroupNorm and attention are per sample). With one device this is the plain step.
fn accumulate_data_parallel(
    unet: &Unet,
    devices: &[Device],
    main_dev: &Device,
    b: &MicroBatch,
    accum: usize,
    acc: &mut GradientsAccumulator<UnetNet>,
) -> Result<f64> {
    let bs = b.dims[0];
    // Dividing by `accum * bs / n_k` (not multiplying by its inverse) keeps the single-device
    // step bit-identical to the plain `loss / accum`.
    let scale = |n: usize| accum as f64 * bs as f64 / n as f64;
    if devices.len() == 1 {
        let loss = shard_loss(unet, main_dev, b, 0, bs)?;
        let lv = loss.clone().into_scalar::<f32>() as f64;
        let grads = loss.div_scalar(scale(bs)).backward();
        acc.accumulate(&unet.net, GradientsParams::from_grads(grads, &unet.net));
        return Ok(lv);
    }
    let ranges = shard_ranges(bs, devices.len());
    let results: Vec<Result<(f64, GradientsParams)>> = std::thread::scope(|scope| {
        let handles: Vec<_> = devices
            .iter()
            .zip(&ranges)
            .map(|(d, &(start, end))| {
                let dev = d.clone().autodiff();
                let replica = Unet { config: unet.config.clone(), net: unet.net.clone().fork(&dev) };
                scope.spawn(move || -> Result<(f64, GradientsParams)> {
                    let n = end - start;
                    let loss = shard_loss(&replica, &dev, b, start, end)?;
                    let lv = loss.clone().into_scalar::<f32>() as f64;
                    let grads = loss.div_scalar(scale(n)).backward();
                    let grads = GradientsParams::from_grads(grads, &replica.net).to_device(main_dev, &replica.net);
                    Ok((lv * n as f64 / bs as f64, grads))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(TrainError::Train("a data-parallel worker panicked".into()))))
            .collect()
    });
    let mut loss = 0.0;
    for r in results {
        let (lv, g) = r?;
        loss += lv;
        acc.accumulate(&unet.net, g);
    }
    Ok(loss)
}

fn weights_name(stem: &str, src: &Path) -> String {
    let ext = src.extension().and_then(|e| e.to_str()).unwrap_or("safetensors");
    format!("{stem}.{ext}")
}

fn copy_file(src: &Path, dst: &Path) -> Result<()> {
    let bytes = std::fs::read(src).map_err(|e| TrainError::io(src, e))?;
    text2ct_io::error::atomic_write_bytes(dst, &bytes)?;
    Ok(())
}

fn card_err(e: text2ct_generate::GenerateError) -> TrainError {
    TrainError::Train(format!("model card: {e}"))
}

/// Write the model folder `dir` (see the module docs).
#[allow(clippy::too_many_arguments)]
fn export_model(
    cfg: &LdmTrainConfig,
    cache: &LatentCache,
    key_map: &UnetKeyMap,
    unet: &Unet,
    scale_factor: f64,
    context_norm: Option<text2ct_generate::card::ContextNorm>,
    log: &MetricsLog,
    dir: &Path,
) -> Result<()> {
    use text2ct_generate::card::{
        ConditioningRef, ConfigRef, DecodeRef, Licence, NetworkRef, OutputRef, SamplerRef, TextEncoderRef, TokenizerRef,
    };
    std::fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
    save_unet(key_map, unet, scale_factor, &dir.join("unet.safetensors"))?;
    write_json(&dir.join("unet_config.json"), &unet.config)?;
    let vae_w = weights_name("vae", &cfg.vae.weights);
    copy_file(&cfg.vae.weights, &dir.join(&vae_w))?;
    let vae_cfg = VaeConfig::from_json_file(&cfg.vae.config)?;
    write_json(&dir.join("vae_config.json"), &vae_cfg)?;
    let text_w = weights_name("text_encoder", &cfg.text_encoder.weights);
    copy_file(&cfg.text_encoder.weights, &dir.join(&text_w))?;
    let spec = read_text_encoder_spec(&cfg.text_encoder)?;
    write_json(&dir.join("text_encoder_config.json"), &spec.json)?;
    let tokenizer_file = match &cfg.text_encoder.tokenizer {
        Some(src) => {
            let gz = src.extension().is_some_and(|e| e.eq_ignore_ascii_case("gz"));
            let name = if gz { "tokenizer.json.gz" } else { "tokenizer.json" };
            copy_file(src, &dir.join(name))?;
            Some(name.to_string())
        }
        None => None,
    };
    let text_what = match spec.kind {
        TextEncoderKind::Clip3d => "CLIP text encoder",
        TextEncoderKind::Minilm => "MiniLM text encoder (not aligned with CT: the CLIP ablation)",
    };
    text2ct_io::error::atomic_write_bytes(&dir.join("train_config.toml"), cfg.to_toml_string()?.as_bytes())?;
    loss_curve(&log.records, cfg.objective.kind).save_png(&dir.join("loss_curve.png"))?;

    let steps = log.records.last().map_or(0, |r| r.step);
    let sz = cache.volume_size;
    let sp = cache.spacing;
    let e = &cfg.export;
    let (kind, obj) = match cfg.objective.kind {
        Objective::Rflow => (text2ct_diffusion::Sampler::Rflow, "rectified flow, L1 velocity loss"),
        Objective::Ddpm => (text2ct_diffusion::Sampler::Ddpm, "DDPM epsilon-prediction, L2 loss"),
    };
    let trained_on = e.trained_on.clone().unwrap_or_else(|| {
        format!(
            "{} prepared volumes of {}x{}x{} voxels at {}x{}x{} mm with their reports, from {} (text2ct prepare); \
             latents from the VAE in this folder, text embeddings from the text encoder in this folder (both frozen)",
            cache.items.len(),
            sz[0],
            sz[1],
            sz[2],
            sp[0],
            sp[1],
            sp[2],
            cfg.data.train_manifest.display()
        )
    });
    let card = text2ct_generate::ModelCard {
        format: text2ct_generate::ModelCard::FORMAT.into(),
        name: e.name.clone(),
        description: e.description.clone().unwrap_or_else(|| {
            format!(
                "Latent diffusion U-Net {:?} trained with text2ct train ldm ({obj}, {steps} steps, CFG dropout {}), \
                 with the frozen VAE and {text_what} it was trained with.",
                cfg.model.num_channels, cfg.objective.cfg_dropout
            )
        }),
        trained_on,
        intended_use: e.intended_use.clone(),
        licence: Licence { code: e.licence_code.clone(), weights: e.licence_weights.clone() },
        provenance: format!(
            "U-Net {} by text2ct train ldm (seed {}, {steps} optimizer steps, lr {} polynomial power {}); \
             VAE copied from {}; text encoder copied from {}; scale_factor {scale_factor} {}, stored in unet.safetensors.",
            cfg.init.as_ref().map_or("trained".to_string(), |i| format!("fine-tuned from {}", i.unet.display())),
            cfg.run.seed,
            cfg.optim.lr,
            cfg.schedule.power,
            cfg.vae.weights.display(),
            cfg.text_encoder.weights.display(),
            match &cfg.init {
                Some(_) => "(kept from the [init] weights when they hold one, else 1/std of the first training batch)",
                None => "= 1/std of the first training batch of latents",
            }
        ),
        vae: NetworkRef { config: ConfigRef::File("vae_config.json".into()), weights: vae_w },
        unet: NetworkRef { config: ConfigRef::File("unet_config.json".into()), weights: "unet.safetensors".into() },
        text_encoder: TextEncoderRef {
            kind: spec.kind,
            config: ConfigRef::File("text_encoder_config.json".into()),
            weights: text_w,
            text_only: true,
        },
        tokenizer: TokenizerRef {
            kind: spec.kind.tokenizer_kind().into(),
            max_length: cache.max_length,
            file: tokenizer_file,
        },
        scale_factor: None,
        fallback_scale_factor: scale_factor,
        sampler: SamplerRef { kind, steps: e.sampler_steps, guidance: e.guidance, exact: false },
        output: OutputRef {
            size: sz,
            spacing: sp,
            orientation: "RAS".into(),
            spacing_note: "the spacing of the prepared training volumes".into(),
        },
        conditioning: ConditioningRef {
            spacing_input: cfg.model.include_spacing_input.then(|| sp.map(|m| (m * 100.0) as f32)),
            class_label: cfg.model.num_class_embeds.map(|_| 1),
            context_norm,
        },
        decode: DecodeRef { window: e.decode_window, overlap: 0.25 },
        precision: None,
    };
    card.save(dir).map_err(card_err)?;
    card.validate(dir).map_err(card_err)?;
    Ok(())
}
