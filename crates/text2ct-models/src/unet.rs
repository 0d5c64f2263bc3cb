//! Text2CT's / MAISI's latent diffusion U-Net: MONAI `DiffusionModelUNetMaisi` (MONAI 1.5/1.6),
//! weight-compatible with MONAI state dicts (Text2CT's `unet_rflow_200ep.pt`: 611 tensors,
//! 217,659,524 parameters).
//!
//! Forward (`C0 = num_channels[0]`, temb width `4·C0` per embedding):
//! - `emb = time_embed(get_timestep_embedding(t, C0))` (sinusoidal, **cos first**, then
//!   Linear–SiLU–Linear) `+ class_embedding(class_labels)`; then, when enabled, concatenated with
//!   `top_region_index_layer(top)`, `bottom_region_index_layer(bottom)` and
//!   `spacing_layer(spacing)` (each Linear–SiLU–Linear, in that order).
//! - `conv_in` 3x3x3 → down blocks → middle block → up blocks (skip tensors concatenated on the
//!   channel axis, last in first out) → GroupNorm → SiLU → conv 3x3x3.
//! - ResBlock (`DiffusionUNetResnetBlock`): GN → SiLU → (nearest x2 up / 2x2x2 average-pool down,
//!   applied to both the branch and the skip input) → conv1 → `+ time_emb_proj(SiLU(emb))` → GN →
//!   SiLU → conv2 → `+ skip_connection(x)` (1x1x1 conv when the width changes).
//! - Attention levels (with conditioning): a [`SpatialTransformer`] after each ResBlock; the
//!   middle block is ResBlock → SpatialTransformer → ResBlock.
//!
//! Implemented: the configuration Text2CT and MAISI use (`with_conditioning = true`,
//! `resblock_updown = true`, separate q/k/v projections), any widths, levels, head widths,
//! transformer depth, class / spacing / region-index inputs. Refused with an error: 2D,
//! `with_conditioning = false` (self-attention-only `SpatialAttentionBlock`s),
//! `resblock_updown = false` (convolutional down/upsamplers), `use_combined_linear = true`,
//! `dropout_cattn > 0`. `use_flash_attention` and `upcast_attention` are accepted: both are plain
//! f32 softmax attention here.

use std::path::Path;

use burn::module::Module;
use burn::nn::conv::Conv3d;
use burn::nn::{Embedding, GroupNorm, Linear};
use burn::tensor::activation::silu;
use burn::tensor::{Device, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::attention::{linear, SpatialTransformer};
use crate::blocks::{conv3d, conv3d_forward, group_norm, param, InitSource, ParamKind, ParamSource, StateDictSource};
use crate::error::{ModelError, Result};
use crate::fusednorm::group_norm_silu;
use crate::interp::repeat_nearest;
use crate::precision::{ConvKernels, Precision};
use crate::weights::StateDict;

/// A key every `DiffusionModelUNetMaisi` state dict has, used to find a nesting prefix such as
/// `unet_state_dict.` or `module.`.
pub const UNET_ANCHOR_KEY: &str = "conv_in.conv.weight";

/// One integer for every level, or one per level (MONAI's `int | Sequence[int]` arguments).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum IntOrList {
    Int(usize),
    List(Vec<usize>),
}

impl IntOrList {
    /// The per-level list for `n` levels (an error if a list has another length).
    pub fn per_level(&self, n: usize, name: &str) -> Result<Vec<usize>> {
        match self {
            IntOrList::Int(v) => Ok(vec![*v; n]),
            IntOrList::List(l) if l.len() == n => Ok(l.clone()),
            IntOrList::List(l) => Err(ModelError::Config(format!("{name} has {} entries, num_channels {n}", l.len()))),
        }
    }
}

fn d_res() -> IntOrList {
    IntOrList::List(vec![2, 2, 2, 2])
}
fn d_channels() -> Vec<usize> {
    vec![32, 64, 64, 64]
}
fn d_attention() -> Vec<bool> {
    vec![false, false, true, true]
}
fn d_groups() -> usize {
    32
}
fn d_eps() -> f64 {
    1e-6
}
fn d_heads() -> IntOrList {
    IntOrList::Int(8)
}
fn d_layers() -> usize {
    1
}

/// Constructor arguments of MONAI's `DiffusionModelUNetMaisi`, with MONAI's names and defaults
/// (`spatial_dims`, `in_channels`, `out_channels` required). A MAISI / Text2CT
/// `diffusion_unet_def` block deserialises as is once its `@` references are resolved (see
/// [`UnetConfig::from_json_str`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnetConfig {
    pub spatial_dims: usize,
    pub in_channels: usize,
    pub out_channels: usize,
    #[serde(default = "d_res")]
    pub num_res_blocks: IntOrList,
    #[serde(default = "d_channels")]
    pub num_channels: Vec<usize>,
    #[serde(default = "d_attention")]
    pub attention_levels: Vec<bool>,
    #[serde(default = "d_groups")]
    pub norm_num_groups: usize,
    #[serde(default = "d_eps")]
    pub norm_eps: f64,
    #[serde(default)]
    pub resblock_updown: bool,
    #[serde(default = "d_heads")]
    pub num_head_channels: IntOrList,
    #[serde(default)]
    pub with_conditioning: bool,
    #[serde(default = "d_layers")]
    pub transformer_num_layers: usize,
    #[serde(default)]
    pub cross_attention_dim: Option<usize>,
    #[serde(default)]
    pub num_class_embeds: Option<usize>,
    #[serde(default)]
    pub upcast_attention: bool,
    #[serde(default)]
    pub include_fc: bool,
    #[serde(default)]
    pub use_combined_linear: bool,
    #[serde(default)]
    pub use_flash_attention: bool,
    #[serde(default)]
    pub dropout_cattn: f64,
    #[serde(default)]
    pub include_top_region_index_input: bool,
    #[serde(default)]
    pub include_bottom_region_index_input: bool,
    #[serde(default)]
    pub include_spacing_input: bool,
    /// MONAI bundle configs name the class here; must end in `DiffusionModelUNetMaisi` if present.
    #[serde(rename = "_target_", default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

/// Per-level sizes derived from a validated config.
#[derive(Clone, Debug)]
struct Levels {
    ch: Vec<usize>,
    res: Vec<usize>,
    heads: Vec<usize>,
    attn: Vec<bool>,
}

impl UnetConfig {
    /// The released Text2CT U-Net (`configs/config_rflow.json`, `diffusion_unet_def`, with
    /// `spatial_dims = 3`, `latent_channels = 4`, `include_body_region = false` resolved).
    pub fn text2ct() -> Self {
        UnetConfig {
            spatial_dims: 3,
            in_channels: 4,
            out_channels: 4,
            num_res_blocks: IntOrList::Int(2),
            num_channels: vec![64, 128, 256, 512],
            attention_levels: vec![false, false, true, true],
            norm_num_groups: 32,
            norm_eps: 1e-6,
            resblock_updown: true,
            num_head_channels: IntOrList::List(vec![0, 0, 32, 32]),
            with_conditioning: true,
            transformer_num_layers: 1,
            cross_attention_dim: Some(768),
            num_class_embeds: Some(128),
            upcast_attention: false,
            include_fc: true,
            use_combined_linear: false,
            use_flash_attention: true,
            dropout_cattn: 0.0,
            include_top_region_index_input: false,
            include_bottom_region_index_input: false,
            include_spacing_input: true,
            target: Some(
                "monai.apps.generation.maisi.networks.diffusion_model_unet_maisi.DiffusionModelUNetMaisi".into(),
            ),
        }
    }

    /// Parse a JSON config: the constructor arguments themselves, or a whole model config holding
    /// them under `diffusion_unet_def` (MAISI / Text2CT layout). In the latter, string values
    /// `"@name"` are MONAI bundle references; those naming a top-level entry of the same file
    /// (`"@latent_channels"`, `"@spatial_dims"`, `"@include_body_region"`) are resolved, any other
    /// reference or `"$expression"` is an error asking for its value.
    pub fn from_json_str(s: &str) -> Result<Self> {
        let v: serde_json::Value = serde_json::from_str(s).map_err(|e| ModelError::Config(format!("bad JSON: {e}")))?;
        let (mut def, root) = match v.get("diffusion_unet_def") {
            Some(inner) => (inner.clone(), Some(&v)),
            None => (v.clone(), None),
        };
        let Some(obj) = def.as_object_mut() else {
            return Err(ModelError::Config("the U-Net config must be a JSON object".into()));
        };
        let mut unresolved = Vec::new();
        for (k, val) in obj.iter_mut() {
            let Some(text) = val.as_str() else { continue };
            if k == "_target_" {
                continue;
            }
            if let Some(name) = text.strip_prefix('@') {
                match root.and_then(|r| r.get(name)).filter(|r| !r.is_string()) {
                    Some(resolved) => *val = resolved.clone(),
                    None => unresolved.push(format!("`{k}` is the reference \"{text}\"")),
                }
            } else if text.starts_with('$') {
                unresolved.push(format!("`{k}` is the expression \"{text}\""));
            }
        }
        if !unresolved.is_empty() {
            return Err(ModelError::Config(format!(
                "{}; MONAI bundle references and expressions are only resolved against top-level \
                 entries of the same file: replace them with their values",
                unresolved.join(", ")
            )));
        }
        let cfg: UnetConfig = serde_json::from_value(def).map_err(|e| ModelError::Config(e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Read a JSON config file (see [`UnetConfig::from_json_str`]).
    pub fn from_json_file(path: &Path) -> Result<Self> {
        let s = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
        Self::from_json_str(&s).map_err(|e| match e {
            ModelError::Config(m) => ModelError::Config(format!("{}: {m}", path.display())),
            other => other,
        })
    }

    /// Refuse configurations MONAI refuses and options this port does not implement.
    pub fn validate(&self) -> Result<()> {
        self.levels().map(|_| ())
    }

    fn levels(&self) -> Result<Levels> {
        let bad = |m: String| Err(ModelError::Config(m));
        if self.spatial_dims != 3 {
            return bad(format!("spatial_dims = {}: only 3D is implemented", self.spatial_dims));
        }
        if self.in_channels == 0 || self.out_channels == 0 {
            return bad("in_channels and out_channels must be positive".into());
        }
        let n = self.num_channels.len();
        if n == 0 {
            return bad("num_channels is empty".into());
        }
        if self.attention_levels.len() != n {
            return bad(format!("attention_levels has {} entries, num_channels {n}", self.attention_levels.len()));
        }
        if self.norm_num_groups == 0 {
            return bad("norm_num_groups must be positive".into());
        }
        if let Some(c) = self.num_channels.iter().find(|&&c| c == 0 || c % self.norm_num_groups != 0) {
            return bad(format!(
                "num_channels entry {c} is not a positive multiple of norm_num_groups {}",
                self.norm_num_groups
            ));
        }
        if !(self.norm_eps > 0.0 && self.norm_eps.is_finite()) {
            return bad(format!("norm_eps must be positive, got {}", self.norm_eps));
        }
        let res = self.num_res_blocks.per_level(n, "num_res_blocks")?;
        if res.contains(&0) {
            return bad(format!("num_res_blocks {res:?}: every level needs at least one ResBlock"));
        }
        let hc = self.num_head_channels.per_level(n, "num_head_channels")?;
        match (self.with_conditioning, self.cross_attention_dim) {
            (true, None) => return bad("with_conditioning = true needs cross_attention_dim".into()),
            (false, Some(_)) => return bad("cross_attention_dim is set but with_conditioning = false".into()),
            (_, Some(0)) => return bad("cross_attention_dim must be positive".into()),
            _ => {}
        }
        if !(0.0..=1.0).contains(&self.dropout_cattn) {
            return bad(format!("dropout_cattn = {} is outside [0, 1]", self.dropout_cattn));
        }
        if !self.with_conditioning {
            return bad("with_conditioning = false (self-attention SpatialAttentionBlocks) is not implemented; \
                 Text2CT and MAISI use cross-attention (with_conditioning = true)"
                .into());
        }
        if !self.resblock_updown {
            return bad("resblock_updown = false (convolutional down/upsamplers) is not implemented; \
                 Text2CT and MAISI use resblock_updown = true"
                .into());
        }
        if self.use_combined_linear {
            return bad("use_combined_linear = true (one packed qkv projection) is not implemented".into());
        }
        if self.dropout_cattn != 0.0 {
            return bad(format!(
                "dropout_cattn = {} is not implemented (only 0, as Text2CT and MAISI use)",
                self.dropout_cattn
            ));
        }
        if self.transformer_num_layers == 0 {
            return bad("transformer_num_layers must be at least 1".into());
        }
        if self.num_class_embeds == Some(0) {
            return bad("num_class_embeds must be positive when set".into());
        }
        // Heads per attention level; the middle block always has a transformer with the last
        // level's head width.
        let mut heads = vec![0usize; n];
        for i in 0..n {
            let needs = self.attention_levels[i] || i == n - 1;
            if !needs {
                continue;
            }
            let c = self.num_channels[i];
            if hc[i] == 0 || hc[i] > c {
                let what = if self.attention_levels[i] { "attention level" } else { "last level (middle block)" };
                return bad(format!(
                    "num_head_channels[{i}] = {} for {what} with {c} channels: must be in 1..={c}",
                    hc[i]
                ));
            }
            heads[i] = c / hc[i];
        }
        if let Some(t) = &self.target {
            if !t.ends_with("DiffusionModelUNetMaisi") {
                return bad(format!("_target_ `{t}` is not DiffusionModelUNetMaisi"));
            }
        }
        Ok(Levels { ch: self.num_channels.clone(), res, heads, attn: self.attention_levels.clone() })
    }

    /// Width of the timestep embedding MLP (`4 * num_channels[0]`).
    pub fn time_embed_dim(&self) -> usize {
        4 * self.num_channels[0]
    }

    /// Width of the embedding the ResBlocks receive (time, plus each enabled extra input).
    pub fn temb_channels(&self) -> usize {
        let extra =
            [self.include_top_region_index_input, self.include_bottom_region_index_input, self.include_spacing_input]
                .iter()
                .filter(|&&b| b)
                .count();
        self.time_embed_dim() * (1 + extra)
    }

    /// Every spatial extent of the input must be a multiple of this (`2^(levels-1)`).
    pub fn size_multiple(&self) -> usize {
        1 << (self.num_channels.len().saturating_sub(1))
    }

    /// Every parameter the model has, by MONAI state-dict name, in MONAI's order.
    pub fn param_spec(&self) -> Result<Vec<(String, Vec<usize>)>> {
        self.validate()?;
        let mut rec = SpecSource::default();
        let _ = UnetNet::build(self, &mut rec, &Device::flex())?;
        Ok(rec.spec)
    }

    /// Total number of parameters.
    pub fn num_params(&self) -> Result<usize> {
        Ok(self.param_spec()?.iter().map(|(_, s)| s.iter().product::<usize>()).sum())
    }
}

/// Records the spec; serves zeros.
#[derive(Default)]
struct SpecSource {
    spec: Vec<(String, Vec<usize>)>,
}

impl ParamSource for SpecSource {
    fn take(&mut self, key: &str, shape: &[usize], _kind: ParamKind) -> Vec<f32> {
        self.spec.push((key.to_string(), shape.to_vec()));
        vec![0.0; shape.iter().product()]
    }
}

/// MONAI's `nn.Sequential(Linear(din, dout), SiLU(), Linear(dout, dout))` (keys `{key}.0.*`,
/// `{key}.2.*`), used for the time, spacing and region-index embeddings.
#[derive(Module, Debug)]
pub struct EmbedMlp {
    pub l0: Linear,
    pub l2: Linear,
}

impl EmbedMlp {
    pub fn build(src: &mut dyn ParamSource, key: &str, din: usize, dout: usize, device: &Device) -> Self {
        let l0 = linear(src, &format!("{key}.0"), din, dout, true, device);
        let l2 = linear(src, &format!("{key}.2"), dout, dout, true, device);
        EmbedMlp { l0, l2 }
    }

    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.l2.forward(silu(self.l0.forward(x)))
    }
}

/// 2x2x2 average pooling with stride 2 (`AvgPool3d(2)`), extents assumed even.
pub fn avg_pool_2x(x: Tensor<5>) -> Tensor<5> {
    let [b, c, d, h, w] = x.dims();
    let (d2, h2, w2) = (d / 2, h / 2, w / 2);
    let x = if d2 * 2 != d || h2 * 2 != h || w2 * 2 != w {
        // AvgPool3d floors odd extents (drops the last plane).
        x.narrow(2, 0, d2 * 2).narrow(3, 0, h2 * 2).narrow(4, 0, w2 * 2)
    } else {
        x
    };
    let x: Tensor<8> = x.reshape([b, c, d2, 2, h2, 2, w2, 2]);
    x.sum_dim(7).sum_dim(5).sum_dim(3).mul_scalar(0.125).reshape([b, c, d2, h2, w2])
}

/// What a ResBlock does to the resolution.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Resample {
    None,
    Up,
    Down,
}

/// MONAI `DiffusionUNetResnetBlock`.
#[derive(Module, Debug)]
pub struct UnetResBlock {
    pub norm1: GroupNorm,
    pub conv1: Conv3d,
    pub time_emb_proj: Linear,
    pub norm2: GroupNorm,
    pub conv2: Conv3d,
    pub skip_connection: Option<Conv3d>,
    /// Nearest x2 upsampling of the input (MONAI `up=True`).
    pub up: bool,
    /// 2x2x2 average pooling of the input (MONAI `down=True`).
    pub down: bool,
}

impl UnetResBlock {
    #[allow(clippy::too_many_arguments)]
    fn build(
        src: &mut dyn ParamSource,
        key: &str,
        cin: usize,
        cout: usize,
        temb: usize,
        groups: usize,
        eps: f64,
        resample: Resample,
        device: &Device,
    ) -> Self {
        let norm1 = group_norm(src, &format!("{key}.norm1"), groups, cin, eps, device);
        let conv1 = conv3d(src, &format!("{key}.conv1.conv"), cin, cout, 3, 1, 1, device);
        let time_emb_proj = linear(src, &format!("{key}.time_emb_proj"), temb, cout, true, device);
        let norm2 = group_norm(src, &format!("{key}.norm2"), groups, cout, eps, device);
        let conv2 = conv3d(src, &format!("{key}.conv2.conv"), cout, cout, 3, 1, 1, device);
        let skip_connection =
            (cin != cout).then(|| conv3d(src, &format!("{key}.skip_connection.conv"), cin, cout, 1, 1, 0, device));
        UnetResBlock {
            norm1,
            conv1,
            time_emb_proj,
            norm2,
            conv2,
            skip_connection,
            up: resample == Resample::Up,
            down: resample == Resample::Down,
        }
    }

    /// `x` `[B, cin, ...]`, `emb_silu` = `SiLU(emb)` `[B, temb]`.
    pub fn forward(&self, x: Tensor<5>, emb_silu: &Tensor<2>) -> Tensor<5> {
        let h = group_norm_silu(&self.norm1, x.clone());
        let (x, h) = if self.up {
            (repeat_nearest(x, [2, 2, 2]), repeat_nearest(h, [2, 2, 2]))
        } else if self.down {
            (avg_pool_2x(x), avg_pool_2x(h))
        } else {
            (x, h)
        };
        let h = conv3d_forward(&self.conv1, h);
        let t = self.time_emb_proj.forward(emb_silu.clone());
        let [b, c] = t.dims();
        let h = h + t.reshape([b, c, 1, 1, 1]);
        let h = conv3d_forward(&self.conv2, group_norm_silu(&self.norm2, h));
        let skip = match &self.skip_connection {
            Some(s) => conv3d_forward(s, x),
            None => x,
        };
        skip + h
    }
}

/// `DownBlock` / `CrossAttnDownBlock` (resblock_updown): ResBlocks, each followed by a
/// transformer at attention levels, then (except at the last level) a downsampling ResBlock.
#[derive(Module, Debug)]
pub struct DownBlock {
    pub attentions: Vec<SpatialTransformer>,
    pub resnets: Vec<UnetResBlock>,
    pub downsampler: Option<UnetResBlock>,
}

/// `CrossAttnMidBlock`: ResBlock, transformer, ResBlock.
#[derive(Module, Debug)]
pub struct MidBlock {
    pub resnet_1: UnetResBlock,
    pub attention: SpatialTransformer,
    pub resnet_2: UnetResBlock,
}

/// `UpBlock` / `CrossAttnUpBlock` (resblock_updown): `num_res_blocks + 1` ResBlocks, each on the
/// concatenation of the running tensor and one skip tensor, each followed by a transformer at
/// attention levels, then (except at the last level) an upsampling ResBlock.
#[derive(Module, Debug)]
pub struct UpBlock {
    pub attentions: Vec<SpatialTransformer>,
    pub resnets: Vec<UnetResBlock>,
    pub upsampler: Option<UnetResBlock>,
}

/// The network's parameters (a burn [`Module`]: train it, move it, record it). Field names are
/// MONAI's module names.
#[derive(Module, Debug)]
pub struct UnetNet {
    pub conv_in: Conv3d,
    pub time_embed: EmbedMlp,
    pub class_embedding: Option<Embedding>,
    pub top_region_index_layer: Option<EmbedMlp>,
    pub bottom_region_index_layer: Option<EmbedMlp>,
    pub spacing_layer: Option<EmbedMlp>,
    pub down_blocks: Vec<DownBlock>,
    pub middle_block: MidBlock,
    pub up_blocks: Vec<UpBlock>,
    /// `out.0`: GroupNorm.
    pub out_norm: GroupNorm,
    /// `out.2.conv`: the final 3x3x3 convolution.
    pub out_conv: Conv3d,
    /// The precision of the 3x3x3 convolution kernels and their packed weights (not a
    /// parameter; entered for each forward pass, see `crate::precision`).
    #[module(skip)]
    pub kernels: ConvKernels,
}

/// Optional conditioning inputs of [`UnetNet::forward_cond`].
#[derive(Clone, Debug, Default)]
pub struct UnetCond {
    /// `[B, S, cross_attention_dim]` (Text2CT: `[B, 1, 768]`).
    pub context: Option<Tensor<3>>,
    /// `[B]`, each in `0..num_class_embeds` (Text2CT: 1 = CT).
    pub class_labels: Option<Tensor<1, Int>>,
    /// `[B, 3]`: voxel spacing in mm times 100 (Text2CT: `[75, 75, 300]`).
    pub spacing: Option<Tensor<2>>,
    /// `[B, 4]` one-hot body region (MAISI), when `include_top_region_index_input`.
    pub top_region_index: Option<Tensor<2>>,
    /// `[B, 4]`, when `include_bottom_region_index_input`.
    pub bottom_region_index: Option<Tensor<2>>,
}

/// MONAI `get_timestep_embedding(t, dim)`: `cat[cos(t·f), sin(t·f)]`, `f_k = exp(-ln(10000)·k/half)`
/// (computed in f32 the way PyTorch does), a zero column appended when `dim` is odd.
pub fn timestep_embedding(t: Tensor<1>, dim: usize) -> Tensor<2> {
    let half = dim / 2;
    let b = t.dims()[0];
    let device = t.device();
    let ln = -(10000f64.ln() as f32);
    let freqs: Vec<f32> = (0..half).map(|k| ((ln * k as f32) / half as f32).exp()).collect();
    let freqs = Tensor::<2>::from_data(TensorData::new(freqs, [1, half]), &device);
    let args = t.reshape([b, 1]) * freqs;
    let mut parts = vec![args.clone().cos(), args.sin()];
    if dim % 2 == 1 {
        parts.push(Tensor::zeros([b, 1], &device));
    }
    Tensor::cat(parts, 1)
}

impl UnetNet {
    /// Build from a parameter source, asking for the parameters in MONAI's registration order.
    pub fn build(cfg: &UnetConfig, src: &mut dyn ParamSource, dev: &Device) -> Result<Self> {
        let lv = cfg.levels()?;
        let n = lv.ch.len();
        let (g, eps) = (cfg.norm_num_groups, cfg.norm_eps);
        let hc = cfg.num_head_channels.per_level(n, "num_head_channels")?;
        let cross = cfg.cross_attention_dim.expect("validated: with_conditioning");
        let temb_in = cfg.time_embed_dim();
        let temb = cfg.temb_channels();
        let layers = cfg.transformer_num_layers;
        let fc = cfg.include_fc;
        let st = |src: &mut dyn ParamSource, key: String, c: usize, level: usize| {
            SpatialTransformer::build(src, &key, c, lv.heads[level], hc[level], layers, g, eps, cross, fc, dev)
        };

        let conv_in = conv3d(src, "conv_in.conv", cfg.in_channels, lv.ch[0], 3, 1, 1, dev);
        let time_embed = EmbedMlp::build(src, "time_embed", lv.ch[0], temb_in, dev);
        let class_embedding = cfg.num_class_embeds.map(|k| Embedding {
            // PyTorch initialises nn.Embedding with N(0, 1); fresh models here use U(-1, 1).
            weight: param(src, "class_embedding.weight", [k, temb_in], ParamKind::Fan(1), dev),
        });
        let top_region_index_layer =
            cfg.include_top_region_index_input.then(|| EmbedMlp::build(src, "top_region_index_layer", 4, temb_in, dev));
        let bottom_region_index_layer = cfg
            .include_bottom_region_index_input
            .then(|| EmbedMlp::build(src, "bottom_region_index_layer", 4, temb_in, dev));
        let spacing_layer = cfg.include_spacing_input.then(|| EmbedMlp::build(src, "spacing_layer", 3, temb_in, dev));

        let mut down_blocks = Vec::with_capacity(n);
        let mut out_ch = lv.ch[0];
        for i in 0..n {
            let in_ch = out_ch;
            out_ch = lv.ch[i];
            let key = format!("down_blocks.{i}");
            let attentions = if lv.attn[i] {
                (0..lv.res[i]).map(|j| st(src, format!("{key}.attentions.{j}"), out_ch, i)).collect()
            } else {
                Vec::new()
            };
            let resnets = (0..lv.res[i])
                .map(|j| {
                    let cin = if j == 0 { in_ch } else { out_ch };
                    UnetResBlock::build(
                        src,
                        &format!("{key}.resnets.{j}"),
                        cin,
                        out_ch,
                        temb,
                        g,
                        eps,
                        Resample::None,
                        dev,
                    )
                })
                .collect();
            let downsampler = (i + 1 < n).then(|| {
                UnetResBlock::build(
                    src,
                    &format!("{key}.downsampler"),
                    out_ch,
                    out_ch,
                    temb,
                    g,
                    eps,
                    Resample::Down,
                    dev,
                )
            });
            down_blocks.push(DownBlock { attentions, resnets, downsampler });
        }

        let c_last = lv.ch[n - 1];
        let middle_block = MidBlock {
            resnet_1: UnetResBlock::build(
                src,
                "middle_block.resnet_1",
                c_last,
                c_last,
                temb,
                g,
                eps,
                Resample::None,
                dev,
            ),
            attention: st(src, "middle_block.attention".into(), c_last, n - 1),
            resnet_2: UnetResBlock::build(
                src,
                "middle_block.resnet_2",
                c_last,
                c_last,
                temb,
                g,
                eps,
                Resample::None,
                dev,
            ),
        };

        let rev_ch: Vec<usize> = lv.ch.iter().rev().copied().collect();
        let mut up_blocks = Vec::with_capacity(n);
        let mut out_ch = rev_ch[0];
        for i in 0..n {
            let level = n - 1 - i;
            let prev_out = out_ch;
            out_ch = rev_ch[i];
            let in_ch = rev_ch[(i + 1).min(n - 1)];
            let nres = lv.res[level] + 1;
            let key = format!("up_blocks.{i}");
            let attentions = if lv.attn[level] {
                (0..nres).map(|j| st(src, format!("{key}.attentions.{j}"), out_ch, level)).collect()
            } else {
                Vec::new()
            };
            let resnets = (0..nres)
                .map(|j| {
                    let skip = if j == nres - 1 { in_ch } else { out_ch };
                    let rin = if j == 0 { prev_out } else { out_ch };
                    UnetResBlock::build(
                        src,
                        &format!("{key}.resnets.{j}"),
                        rin + skip,
                        out_ch,
                        temb,
                        g,
                        eps,
                        Resample::None,
                        dev,
                    )
                })
                .collect();
            let upsampler = (i + 1 < n).then(|| {
                UnetResBlock::build(src, &format!("{key}.upsampler"), out_ch, out_ch, temb, g, eps, Resample::Up, dev)
            });
            up_blocks.push(UpBlock { attentions, resnets, upsampler });
        }

        let out_norm = group_norm(src, "out.0", g, lv.ch[0], eps, dev);
        let out_conv = conv3d(src, "out.2.conv", lv.ch[0], cfg.out_channels, 3, 1, 1, dev);
        Ok(UnetNet {
            conv_in,
            time_embed,
            class_embedding,
            top_region_index_layer,
            bottom_region_index_layer,
            spacing_layer,
            down_blocks,
            middle_block,
            up_blocks,
            out_norm,
            out_conv,
            kernels: ConvKernels::default(),
        })
    }

    /// Input channels (`in_channels`).
    pub fn in_channels(&self) -> usize {
        self.conv_in.weight.dims()[1]
    }

    /// Every spatial extent of the input must be a multiple of this.
    pub fn size_multiple(&self) -> usize {
        1 << self.down_blocks.iter().filter(|d| d.downsampler.is_some()).count()
    }

    fn transformers(&self) -> impl Iterator<Item = &SpatialTransformer> {
        self.down_blocks
            .iter()
            .flat_map(|d| d.attentions.iter())
            .chain(std::iter::once(&self.middle_block.attention))
            .chain(self.up_blocks.iter().flat_map(|u| u.attentions.iter()))
    }

    /// The context width the cross-attentions expect (`cross_attention_dim`).
    pub fn cross_attention_dim(&self) -> usize {
        self.middle_block.attention.transformer_blocks[0].attn2.context_dim()
    }

    /// Check the shapes (and class-label values) of a forward call; `Err` says what is wrong.
    pub fn check_inputs(&self, x: &Tensor<5>, t: &Tensor<1>, cond: &UnetCond) -> Result<()> {
        let bad = |m: String| Err(ModelError::Invalid(m));
        let dims = x.dims();
        let b = dims[0];
        let f = self.size_multiple();
        if b == 0 || dims[1] != self.in_channels() || dims[2..].iter().any(|&d| d == 0 || d % f != 0) {
            return bad(format!(
                "U-Net input must be [B>=1, {}, X, Y, Z] with X, Y, Z positive multiples of {f}; got {dims:?}",
                self.in_channels()
            ));
        }
        if t.dims() != [b] {
            return bad(format!("timesteps must be [B] = [{b}]; got {:?}", t.dims()));
        }
        let cross = self.cross_attention_dim();
        match &cond.context {
            Some(c) => {
                let cd = c.dims();
                if cd[0] != b || cd[1] == 0 || cd[2] != cross {
                    return bad(format!("context must be [B, S>=1, {cross}] with B = {b}; got {cd:?}"));
                }
            }
            None => {
                // MONAI then attends to the normalised tokens themselves: only possible when their
                // width equals the context width everywhere.
                if let Some(tr) = self.transformers().find(|tr| {
                    let blk = &tr.transformer_blocks[0];
                    blk.attn2.context_dim() != blk.attn1.to_q.weight.dims()[0]
                }) {
                    let w = tr.transformer_blocks[0].attn1.to_q.weight.dims()[0];
                    return bad(format!(
                        "a context [B, S, {cross}] is required (without one the cross-attention would attend to \
                         {w}-wide tokens)"
                    ));
                }
            }
        }
        match (&self.class_embedding, &cond.class_labels) {
            (Some(e), Some(l)) => {
                let k = e.weight.dims()[0];
                if l.dims() != [b] {
                    return bad(format!("class_labels must be [B] = [{b}]; got {:?}", l.dims()));
                }
                let vals = l
                    .clone()
                    .into_data()
                    .convert::<i64>()
                    .try_into_vec::<i64>()
                    .map_err(|e| ModelError::Invalid(format!("class_labels: {e:?}")))?;
                if let Some(v) = vals.iter().find(|&&v| v < 0 || v as usize >= k) {
                    return bad(format!("class label {v} is outside 0..{k} (num_class_embeds = {k})"));
                }
            }
            (Some(e), None) => {
                return bad(format!(
                    "class_labels [B] are required (num_class_embeds = {}; Text2CT uses 1 = CT)",
                    e.weight.dims()[0]
                ))
            }
            (None, _) => {}
        }
        for (name, layer, value, width) in [
            ("spacing", &self.spacing_layer, &cond.spacing, 3usize),
            ("top_region_index", &self.top_region_index_layer, &cond.top_region_index, 4),
            ("bottom_region_index", &self.bottom_region_index_layer, &cond.bottom_region_index, 4),
        ] {
            match (layer, value) {
                (Some(_), Some(v)) if v.dims() != [b, width] => {
                    return bad(format!("{name} must be [B, {width}] = [{b}, {width}]; got {:?}", v.dims()))
                }
                (Some(_), None) => return bad(format!("{name} [B, {width}] is required by this U-Net")),
                _ => {}
            }
        }
        Ok(())
    }

    /// The embedding the ResBlocks receive (before their SiLU): time (+ class), then the enabled
    /// extra inputs concatenated. Inputs must have passed [`UnetNet::check_inputs`].
    pub fn embedding(&self, t: Tensor<1>, cond: &UnetCond) -> Tensor<2> {
        let c0 = self.conv_in.weight.dims()[0];
        let mut emb = self.time_embed.forward(timestep_embedding(t, c0));
        if let (Some(e), Some(l)) = (&self.class_embedding, &cond.class_labels) {
            emb = emb + e.weight.val().select(0, l.clone());
        }
        let mut parts = vec![emb];
        for (layer, value) in [
            (&self.top_region_index_layer, &cond.top_region_index),
            (&self.bottom_region_index_layer, &cond.bottom_region_index),
            (&self.spacing_layer, &cond.spacing),
        ] {
            if let (Some(l), Some(v)) = (layer, value) {
                parts.push(l.forward(v.clone()));
            }
        }
        if parts.len() == 1 {
            parts.pop().expect("one part")
        } else {
            Tensor::cat(parts, 1)
        }
    }

    /// The forward pass with all conditioning inputs, after checking them.
    pub fn forward_cond(&self, x: Tensor<5>, t: Tensor<1>, cond: &UnetCond) -> Result<Tensor<5>> {
        self.check_inputs(&x, &t, cond)?;
        Ok(self.forward_unchecked(x, t, cond))
    }

    /// The forward pass without input checks (panics on inconsistent shapes).
    pub fn forward_unchecked(&self, x: Tensor<5>, t: Tensor<1>, cond: &UnetCond) -> Tensor<5> {
        let _kernels = self.kernels.enter();
        let emb = silu(self.embedding(t, cond));
        let ctx = cond.context.as_ref();
        let mut h = conv3d_forward(&self.conv_in, x);
        let mut skips = vec![h.clone()];
        for db in &self.down_blocks {
            for (j, r) in db.resnets.iter().enumerate() {
                h = r.forward(h, &emb);
                if let Some(a) = db.attentions.get(j) {
                    h = a.forward(h, ctx);
                }
                skips.push(h.clone());
            }
            if let Some(d) = &db.downsampler {
                h = d.forward(h, &emb);
                skips.push(h.clone());
            }
        }
        h = self.middle_block.resnet_1.forward(h, &emb);
        h = self.middle_block.attention.forward(h, ctx);
        h = self.middle_block.resnet_2.forward(h, &emb);
        for ub in &self.up_blocks {
            for (j, r) in ub.resnets.iter().enumerate() {
                let s = skips.pop().expect("one skip tensor per up ResBlock");
                h = r.forward(Tensor::cat(vec![h, s], 1), &emb);
                if let Some(a) = ub.attentions.get(j) {
                    h = a.forward(h, ctx);
                }
            }
            if let Some(u) = &ub.upsampler {
                h = u.forward(h, &emb);
            }
        }
        conv3d_forward(&self.out_conv, group_norm_silu(&self.out_norm, h))
    }

    /// `forward(x, t, context, class_labels, spacing)` → `[B, out_channels, X, Y, Z]`, the
    /// signature MONAI callers use (no region-index inputs). Errors on bad input shapes.
    pub fn try_forward(
        &self,
        x: Tensor<5>,
        t: Tensor<1>,
        context: Option<Tensor<3>>,
        class_labels: Option<Tensor<1, Int>>,
        spacing: Option<Tensor<2>>,
    ) -> Result<Tensor<5>> {
        let cond = UnetCond { context, class_labels, spacing, top_region_index: None, bottom_region_index: None };
        self.forward_cond(x, t, &cond)
    }

    /// [`UnetNet::try_forward`] that panics on bad input (for callers that checked already).
    pub fn forward(
        &self,
        x: Tensor<5>,
        t: Tensor<1>,
        context: Option<Tensor<3>>,
        class_labels: Option<Tensor<1, Int>>,
        spacing: Option<Tensor<2>>,
    ) -> Tensor<5> {
        match self.try_forward(x, t, context, class_labels, spacing) {
            Ok(y) => y,
            Err(e) => panic!("{e}"),
        }
    }
}

/// The U-Net: its configuration and its network.
#[derive(Debug, Clone)]
pub struct Unet {
    pub config: UnetConfig,
    pub net: UnetNet,
}

/// [`InitSource`] with MONAI's `zero_module` layers zeroed (see [`Unet::new_for_training`]). The
/// random stream is drawn for them anyway, so the other layers equal [`Unet::new`]'s.
struct ZeroInit {
    inner: InitSource,
}

impl ZeroInit {
    fn zeroed(key: &str) -> bool {
        key.contains(".conv2.conv.") || key.contains(".proj_out.conv.") || key.starts_with("out.2.conv.")
    }
}

impl ParamSource for ZeroInit {
    fn take(&mut self, key: &str, shape: &[usize], kind: ParamKind) -> Vec<f32> {
        let v = self.inner.take(key, shape, kind);
        if Self::zeroed(key) {
            vec![0.0; v.len()]
        } else {
            v
        }
    }
}

/// A loaded U-Net checkpoint: the network and the latent scale factor saved beside it (Text2CT /
/// MAISI checkpoints `{"unet_state_dict": ..., "scale_factor": ...}`; `None` for a bare state dict).
#[derive(Debug, Clone)]
pub struct UnetCheckpoint {
    pub unet: Unet,
    pub scale_factor: Option<f32>,
}

impl Unet {
    /// A freshly initialised U-Net (PyTorch-style default init from a seed; norms identity),
    /// every layer random, which is what a forward-pass test wants. For training use
    /// [`Unet::new_for_training`].
    pub fn new(config: &UnetConfig, seed: u64, device: &Device) -> Result<Self> {
        let mut src = InitSource::new(seed);
        let net = UnetNet::build(config, &mut src, device)?;
        Ok(Unet { config: config.clone(), net })
    }

    /// MONAI's initialisation (`zero_module`): as [`Unet::new`] but `conv2` of every ResBlock,
    /// every `proj_out` of the spatial transformers and the output conv (`out.2.conv`) start at
    /// zero, so each residual branch starts as the identity and the first prediction is 0.
    pub fn new_for_training(config: &UnetConfig, seed: u64, device: &Device) -> Result<Self> {
        let mut src = ZeroInit { inner: InitSource::new(seed) };
        let net = UnetNet::build(config, &mut src, device)?;
        Ok(Unet { config: config.clone(), net })
    }

    /// Build from a state dict with MONAI's key names (prefix already removed). Strict: one
    /// error names every missing, unexpected and mis-shaped key. `origin` names the source in
    /// error messages.
    pub fn from_state_dict(config: &UnetConfig, sd: StateDict, device: &Device, origin: &Path) -> Result<Self> {
        config.validate()?;
        let mut src = StateDictSource::new(sd);
        let net = UnetNet::build(config, &mut src, device)?;
        src.finish().map_err(|m| ModelError::weights(origin, m))?;
        Ok(Unet { config: config.clone(), net })
    }

    /// Load MONAI weights strictly from a `.pt`/`.pth` checkpoint (bare state dict, or nested as
    /// `unet_state_dict`, possibly prefixed such as `module.`) or a `.safetensors` file, with the
    /// checkpoint's `scale_factor` when it has one.
    pub fn load_checkpoint(config: &UnetConfig, path: &Path, device: &Device) -> Result<UnetCheckpoint> {
        config.validate()?;
        let sd = StateDict::read(path)?;
        let mut scale_factor = match sd.tensors.get("scale_factor") {
            Some(t) if t.data.len() == 1 => Some(t.data[0]),
            Some(t) => {
                return Err(ModelError::weights(
                    path,
                    format!("scale_factor has shape {:?}, expected a scalar", t.shape),
                ))
            }
            None => None,
        };
        if scale_factor.is_none() && !sd.tensors.contains_key(UNET_ANCHOR_KEY) {
            // Saved as a Python float rather than a tensor.
            scale_factor = crate::weights::pytorch_scalar(path, "scale_factor").map(|v| v as f32);
        }
        let sd = sd.select_by_anchor(UNET_ANCHOR_KEY, path)?;
        let unet = Self::from_state_dict(config, sd, device, path)?;
        Ok(UnetCheckpoint { unet, scale_factor })
    }

    /// [`Unet::load_checkpoint`] without the scale factor.
    pub fn load(config: &UnetConfig, path: &Path, device: &Device) -> Result<Self> {
        Ok(Self::load_checkpoint(config, path, device)?.unet)
    }

    pub fn config(&self) -> &UnetConfig {
        &self.config
    }

    pub fn device(&self) -> Device {
        self.net.conv_in.weight.val().device()
    }

    /// The arithmetic of the 3x3x3 convolutions (default f32; bf16 needs AVX512-BF16, see
    /// [`Precision::on_this_cpu`]). GroupNorm, attention and the other layers stay f32.
    pub fn set_precision(&mut self, precision: Precision) {
        self.net.kernels.set_precision(precision);
    }

    pub fn precision(&self) -> Precision {
        self.net.kernels.precision()
    }

    /// See [`UnetNet::try_forward`].
    pub fn try_forward(
        &self,
        x: Tensor<5>,
        t: Tensor<1>,
        context: Option<Tensor<3>>,
        class_labels: Option<Tensor<1, Int>>,
        spacing: Option<Tensor<2>>,
    ) -> Result<Tensor<5>> {
        self.net.try_forward(x, t, context, class_labels, spacing)
    }

    /// See [`UnetNet::forward`] (panics on bad input).
    pub fn forward(
        &self,
        x: Tensor<5>,
        t: Tensor<1>,
        context: Option<Tensor<3>>,
        class_labels: Option<Tensor<1, Int>>,
        spacing: Option<Tensor<2>>,
    ) -> Tensor<5> {
        self.net.forward(x, t, context, class_labels, spacing)
    }

    /// See [`UnetNet::forward_cond`].
    pub fn forward_cond(&self, x: Tensor<5>, t: Tensor<1>, cond: &UnetCond) -> Result<Tensor<5>> {
        self.net.forward_cond(x, t, cond)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestep_embedding_is_cos_then_sin() {
        let dev = Device::flex();
        let t = Tensor::<1>::from_data(TensorData::new(vec![0.0f32, 10.0], [2]), &dev);
        let e = timestep_embedding(t, 8).into_data().try_into_vec::<f32>().unwrap();
        // t = 0: cos = 1, sin = 0
        assert_eq!(&e[..8], &[1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]);
        // t = 10, k = 0: f = 1
        assert!((e[8] - 10f32.cos()).abs() < 1e-6 && (e[12] - 10f32.sin()).abs() < 1e-6);
        let f1 = (-(10000f32.ln()) / 4.0).exp();
        assert!((e[9] - (10.0 * f1).cos()).abs() < 1e-6);
    }

    #[test]
    fn avg_pool_means_2x2x2() {
        let dev = Device::flex();
        let v: Vec<f32> = (0..8).map(|i| i as f32).collect();
        let x = Tensor::<5>::from_data(TensorData::new(v, [1, 1, 2, 2, 2]), &dev);
        let y = avg_pool_2x(x).into_data().try_into_vec::<f32>().unwrap();
        assert_eq!(y, vec![3.5]);
    }

    #[test]
    fn text2ct_param_count() {
        let cfg = UnetConfig::text2ct();
        assert_eq!(cfg.temb_channels(), 512);
        assert_eq!(cfg.num_params().unwrap(), 217_659_524);
    }
}
