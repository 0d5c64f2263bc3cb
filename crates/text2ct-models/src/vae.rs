//! MAISI's 3D variational autoencoder (MONAI `AutoencoderKlMaisi`, MONAI 1.5/1.6), weight-compatible
//! with MONAI state dicts (e.g. MAISI's / Text2CT's `autoencoder_epoch273.pt`: 130 tensors,
//! 20,944,897 parameters).
//!
//! Layout (`num_channels` `[c0, c1, c2]`, `num_res_blocks` `[r0, r1, r2]`):
//! - encoder: conv 3x3x3 in->c0 · per level i: r_i ResBlocks (to c_i) · downsample (pad one voxel at
//!   the end of each axis, stride-2 3x3x3 conv) after every level but the last · GroupNorm ·
//!   conv 3x3x3 -> latent_channels. **No SiLU between the final GroupNorm and the conv** (MONAI
//!   quirk, kept).
//! - `quant_conv_mu`, `quant_conv_log_sigma` (1x1x1); log-variance clamped to [-30, 20];
//!   sigma = exp(logvar / 2).
//! - decoder: `post_quant_conv` (1x1x1) · conv 3x3x3 latent->c_last · per reversed level: ResBlocks,
//!   then upsample (trilinear x2, align_corners=False, then a 3x3x3 conv) but after the last ·
//!   GroupNorm · conv 3x3x3 -> out_channels (no SiLU before it, no final activation).
//!
//! Numerics: GroupNorm eps from the config (1e-6 for MAISI), statistics in f32.
//! `norm_float16 = true` is accepted but we normalise in f32 throughout: MONAI casts the
//! normalised tensor to float16 before the affine, a difference of ~1e-3 relative at most.
//! `num_splits` / `dim_split` (MONAI's split convolution, a GPU memory trick that is
//! mathematically an ordinary convolution) are accepted and change nothing.
//! `use_checkpointing` is accepted and ignored at inference.

use std::path::Path;

use burn::module::Module;
use burn::nn::conv::Conv3d;
use burn::nn::GroupNorm;
use burn::tensor::{Device, Tensor, TensorData};
use rand::SeedableRng;
use rand_distr::Distribution;
use serde::{Deserialize, Serialize};

use crate::blocks::{
    conv3d, conv3d_forward, group_norm, Downsample, InitSource, ParamSource, ResBlock, StateDictSource, Upsample,
};
use crate::error::{ModelError, Result};
use crate::precision::{ConvKernels, Precision};
use crate::weights::StateDict;

/// A key every MAISI VAE state dict has, used to find a nesting prefix such as `module.`.
pub const VAE_ANCHOR_KEY: &str = "encoder.blocks.0.conv.conv.weight";

fn default_latent_channels() -> usize {
    3
}
fn default_groups() -> usize {
    32
}
fn default_eps() -> f64 {
    1e-6
}
fn default_num_splits() -> usize {
    16
}

/// Constructor arguments of MONAI's `AutoencoderKlMaisi`, with MONAI's names and defaults
/// (`spatial_dims`, `in_channels`, `out_channels`, `num_channels`, `num_res_blocks` and
/// `attention_levels` are required, as in MONAI). A MAISI `autoencoder_def` JSON block
/// (including its `_target_`) deserialises as is.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaeConfig {
    pub spatial_dims: usize,
    pub in_channels: usize,
    pub out_channels: usize,
    #[serde(default = "default_latent_channels")]
    pub latent_channels: usize,
    pub num_channels: Vec<usize>,
    pub num_res_blocks: Vec<usize>,
    #[serde(default = "default_groups")]
    pub norm_num_groups: usize,
    #[serde(default = "default_eps")]
    pub norm_eps: f64,
    pub attention_levels: Vec<bool>,
    #[serde(default)]
    pub with_encoder_nonlocal_attn: bool,
    #[serde(default)]
    pub with_decoder_nonlocal_attn: bool,
    #[serde(default)]
    pub use_checkpointing: bool,
    #[serde(default)]
    pub use_convtranspose: bool,
    #[serde(default)]
    pub norm_float16: bool,
    #[serde(default = "default_num_splits")]
    pub num_splits: usize,
    #[serde(default)]
    pub dim_split: usize,
    /// MONAI options that only concern attention blocks (refused anyway) or logging.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include_fc: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_combined_linear: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_flash_attention: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub print_info: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub save_mem: Option<bool>,
    /// MONAI bundle configs name the class here; must be `...AutoencoderKlMaisi` if present.
    #[serde(rename = "_target_", default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

impl VaeConfig {
    /// The MAISI / Text2CT VAE (`config_maisi3d-rflow.json`, `config_rflow.json`).
    pub fn maisi() -> Self {
        VaeConfig {
            spatial_dims: 3,
            in_channels: 1,
            out_channels: 1,
            latent_channels: 4,
            num_channels: vec![64, 128, 256],
            num_res_blocks: vec![2, 2, 2],
            norm_num_groups: 32,
            norm_eps: 1e-6,
            attention_levels: vec![false, false, false],
            with_encoder_nonlocal_attn: false,
            with_decoder_nonlocal_attn: false,
            use_checkpointing: false,
            use_convtranspose: false,
            norm_float16: true,
            num_splits: 4,
            dim_split: 1,
            include_fc: None,
            use_combined_linear: None,
            use_flash_attention: None,
            print_info: None,
            save_mem: None,
            target: None,
        }
    }

    /// Parse a JSON config: either the constructor arguments themselves, or an object holding
    /// them under `autoencoder_def` (MAISI's model config layout).
    pub fn from_json_str(s: &str) -> Result<Self> {
        let v: serde_json::Value = serde_json::from_str(s).map_err(|e| ModelError::Config(format!("bad JSON: {e}")))?;
        let v = match v.get("autoencoder_def") {
            Some(inner) => inner.clone(),
            None => v,
        };
        let cfg: VaeConfig = serde_json::from_value(v).map_err(|e| ModelError::Config(e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Read a JSON config file (see [`VaeConfig::from_json_str`]).
    pub fn from_json_file(path: &Path) -> Result<Self> {
        let s = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
        Self::from_json_str(&s).map_err(|e| ModelError::Config(format!("{}: {e}", path.display())))
    }

    /// Refuse configurations that are inconsistent or use options this port does not implement.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(ModelError::Config(m));
        if self.spatial_dims != 3 {
            return bad(format!("spatial_dims = {}: only 3D is implemented", self.spatial_dims));
        }
        if self.in_channels == 0 || self.out_channels == 0 || self.latent_channels == 0 {
            return bad("in_channels, out_channels and latent_channels must be positive".into());
        }
        let n = self.num_channels.len();
        if n == 0 {
            return bad("num_channels is empty".into());
        }
        if self.num_res_blocks.len() != n {
            return bad(format!("num_res_blocks has {} entries, num_channels {n}", self.num_res_blocks.len()));
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
        if self.attention_levels.iter().any(|&a| a) {
            return bad(
                "attention_levels with `true` (SpatialAttentionBlock) are not implemented; MAISI uses none".into()
            );
        }
        if self.with_encoder_nonlocal_attn || self.with_decoder_nonlocal_attn {
            return bad(
                "with_encoder/decoder_nonlocal_attn (non-local attention) is not implemented; MAISI uses none".into()
            );
        }
        if self.use_convtranspose {
            return bad(
                "use_convtranspose = true is not implemented (MAISI upsamples by trilinear interpolation)".into()
            );
        }
        if let Some(t) = &self.target {
            if !t.ends_with("AutoencoderKlMaisi") {
                return bad(format!("_target_ `{t}` is not AutoencoderKlMaisi"));
            }
        }
        Ok(())
    }

    /// Spatial down-sampling factor between image and latent: `2^(levels-1)` (4 for MAISI).
    pub fn downsample_factor(&self) -> usize {
        1 << (self.num_channels.len() - 1)
    }

    /// Every parameter the model has, by MONAI state-dict name, in MONAI's order.
    pub fn param_spec(&self) -> Result<Vec<(String, Vec<usize>)>> {
        self.validate()?;
        let mut rec = SpecSource::default();
        // Builds a throwaway model of zeros on the CPU (84 MB for MAISI) and records the keys.
        let dev = Device::flex();
        let _ = VaeNet::build(self, &mut rec, &dev);
        Ok(rec.spec)
    }
}

/// Records the spec; serves zeros.
#[derive(Default)]
struct SpecSource {
    spec: Vec<(String, Vec<usize>)>,
}

impl ParamSource for SpecSource {
    fn take(&mut self, key: &str, shape: &[usize], _kind: crate::blocks::ParamKind) -> Vec<f32> {
        self.spec.push((key.to_string(), shape.to_vec()));
        vec![0.0; shape.iter().product()]
    }
}

/// One encoder level: ResBlocks, then (except at the last level) a downsample.
#[derive(Module, Debug)]
pub struct EncoderLevel {
    pub res: Vec<ResBlock>,
    pub down: Option<Downsample>,
}

/// `MaisiEncoder` (`encoder.blocks.*`).
#[derive(Module, Debug)]
pub struct Encoder {
    pub conv_in: Conv3d,
    pub levels: Vec<EncoderLevel>,
    pub norm_out: GroupNorm,
    pub conv_out: Conv3d,
}

impl Encoder {
    fn build(cfg: &VaeConfig, src: &mut dyn ParamSource, dev: &Device) -> Self {
        let (g, eps) = (cfg.norm_num_groups, cfg.norm_eps);
        let mut idx = 0usize;
        let key = |i: &mut usize| {
            let k = format!("encoder.blocks.{i}");
            *i += 1;
            k
        };
        let conv_in =
            conv3d(src, &format!("{}.conv.conv", key(&mut idx)), cfg.in_channels, cfg.num_channels[0], 3, 1, 1, dev);
        let mut ch = cfg.num_channels[0];
        let n = cfg.num_channels.len();
        let mut levels = Vec::with_capacity(n);
        for (i, (&out, &nres)) in cfg.num_channels.iter().zip(&cfg.num_res_blocks).enumerate() {
            let mut res = Vec::with_capacity(nres);
            for _ in 0..nres {
                res.push(ResBlock::build(src, &key(&mut idx), ch, out, g, eps, dev));
                ch = out;
            }
            let down = (i + 1 < n).then(|| Downsample::build(src, &key(&mut idx), ch, dev));
            levels.push(EncoderLevel { res, down });
        }
        let last = *cfg.num_channels.last().expect("validated non-empty");
        let norm_out = group_norm(src, &key(&mut idx), g, last, eps, dev);
        let conv_out = conv3d(src, &format!("{}.conv.conv", key(&mut idx)), last, cfg.latent_channels, 3, 1, 1, dev);
        Encoder { conv_in, levels, norm_out, conv_out }
    }

    pub fn forward(&self, x: Tensor<5>) -> Tensor<5> {
        let mut h = conv3d_forward(&self.conv_in, x);
        for level in &self.levels {
            for r in &level.res {
                h = r.forward(h);
            }
            if let Some(d) = &level.down {
                h = d.forward(h);
            }
        }
        // No SiLU here: MONAI's MaisiEncoder goes straight from the GroupNorm to the conv.
        conv3d_forward(&self.conv_out, crate::blocks::group_norm_forward(&self.norm_out, h))
    }
}

/// One decoder level: ResBlocks, then (except at the last level) an upsample.
#[derive(Module, Debug)]
pub struct DecoderLevel {
    pub res: Vec<ResBlock>,
    pub up: Option<Upsample>,
}

/// `MaisiDecoder` (`decoder.blocks.*`).
#[derive(Module, Debug)]
pub struct Decoder {
    pub conv_in: Conv3d,
    pub levels: Vec<DecoderLevel>,
    pub norm_out: GroupNorm,
    pub conv_out: Conv3d,
}

impl Decoder {
    fn build(cfg: &VaeConfig, src: &mut dyn ParamSource, dev: &Device) -> Self {
        let (g, eps) = (cfg.norm_num_groups, cfg.norm_eps);
        let rev_ch: Vec<usize> = cfg.num_channels.iter().rev().copied().collect();
        let rev_res: Vec<usize> = cfg.num_res_blocks.iter().rev().copied().collect();
        let mut idx = 0usize;
        let key = |i: &mut usize| {
            let k = format!("decoder.blocks.{i}");
            *i += 1;
            k
        };
        let conv_in =
            conv3d(src, &format!("{}.conv.conv", key(&mut idx)), cfg.latent_channels, rev_ch[0], 3, 1, 1, dev);
        let mut ch = rev_ch[0];
        let n = rev_ch.len();
        let mut levels = Vec::with_capacity(n);
        for i in 0..n {
            let out = rev_ch[i];
            let mut res = Vec::with_capacity(rev_res[i]);
            for _ in 0..rev_res[i] {
                res.push(ResBlock::build(src, &key(&mut idx), ch, out, g, eps, dev));
                ch = out;
            }
            let up = (i + 1 < n).then(|| Upsample::build(src, &key(&mut idx), ch, dev));
            levels.push(DecoderLevel { res, up });
        }
        let norm_out = group_norm(src, &key(&mut idx), g, ch, eps, dev);
        let conv_out = conv3d(src, &format!("{}.conv.conv", key(&mut idx)), ch, cfg.out_channels, 3, 1, 1, dev);
        Decoder { conv_in, levels, norm_out, conv_out }
    }

    pub fn forward(&self, z: Tensor<5>) -> Tensor<5> {
        let mut h = conv3d_forward(&self.conv_in, z);
        for level in &self.levels {
            for r in &level.res {
                h = r.forward(h);
            }
            if let Some(u) = &level.up {
                h = u.forward(h);
            }
        }
        conv3d_forward(&self.conv_out, crate::blocks::group_norm_forward(&self.norm_out, h))
    }
}

/// The network's parameters (a burn [`Module`]: train it, move it, record it).
#[derive(Module, Debug)]
pub struct VaeNet {
    pub encoder: Encoder,
    pub decoder: Decoder,
    pub quant_conv_mu: Conv3d,
    pub quant_conv_log_sigma: Conv3d,
    pub post_quant_conv: Conv3d,
    /// The precision of the 3x3x3 convolution kernels and their packed weights (not a
    /// parameter; entered by `Vae`'s encode and decode, see `crate::precision`).
    #[module(skip)]
    pub kernels: ConvKernels,
}

impl VaeNet {
    /// Build from a parameter source (MONAI key order: encoder, decoder, quant convs).
    pub fn build(cfg: &VaeConfig, src: &mut dyn ParamSource, dev: &Device) -> Self {
        let encoder = Encoder::build(cfg, src, dev);
        let decoder = Decoder::build(cfg, src, dev);
        let l = cfg.latent_channels;
        let quant_conv_mu = conv3d(src, "quant_conv_mu.conv", l, l, 1, 1, 0, dev);
        let quant_conv_log_sigma = conv3d(src, "quant_conv_log_sigma.conv", l, l, 1, 1, 0, dev);
        let post_quant_conv = conv3d(src, "post_quant_conv.conv", l, l, 1, 1, 0, dev);
        VaeNet {
            encoder,
            decoder,
            quant_conv_mu,
            quant_conv_log_sigma,
            post_quant_conv,
            kernels: ConvKernels::default(),
        }
    }
}

/// Collects module parameters under MONAI names (the inverse of building from a [`ParamSource`]).
struct Export {
    sd: StateDict,
    err: Option<String>,
}

impl Export {
    fn put<const D: usize>(&mut self, key: String, t: Tensor<D>) {
        let shape = t.dims().to_vec();
        match t.into_data().convert::<f32>().try_into_vec::<f32>() {
            Ok(v) => {
                self.sd.tensors.insert(key, crate::weights::RawTensor::new(shape, v));
            }
            Err(e) => self.err = Some(format!("{key}: {e:?}")),
        }
    }
    fn conv(&mut self, key: &str, c: &Conv3d) {
        self.put(format!("{key}.weight"), c.weight.val());
        if let Some(b) = &c.bias {
            self.put(format!("{key}.bias"), b.val());
        }
    }
    fn norm(&mut self, key: &str, n: &GroupNorm) {
        if let (Some(g), Some(b)) = (&n.gamma, &n.beta) {
            self.put(format!("{key}.weight"), g.val());
            self.put(format!("{key}.bias"), b.val());
        }
    }
    fn res(&mut self, key: &str, r: &ResBlock) {
        self.norm(&format!("{key}.norm1"), &r.norm1);
        self.conv(&format!("{key}.conv1.conv.conv"), &r.conv1);
        self.norm(&format!("{key}.norm2"), &r.norm2);
        self.conv(&format!("{key}.conv2.conv.conv"), &r.conv2);
        if let Some(n) = &r.nin_shortcut {
            self.conv(&format!("{key}.nin_shortcut.conv.conv"), n);
        }
    }
}

impl VaeNet {
    /// All parameters as a state dict with MONAI's key names (loadable by MONAI's
    /// `AutoencoderKlMaisi.load_state_dict` after conversion to torch tensors, and by [`Vae::load`]).
    pub fn to_state_dict(&self) -> Result<StateDict> {
        let mut ex = Export { sd: StateDict::default(), err: None };
        for (name, conv_in, norm_out, conv_out) in [
            ("encoder", &self.encoder.conv_in, &self.encoder.norm_out, &self.encoder.conv_out),
            ("decoder", &self.decoder.conv_in, &self.decoder.norm_out, &self.decoder.conv_out),
        ] {
            let mut idx = 0usize;
            let mut key = || {
                idx += 1;
                format!("{name}.blocks.{}", idx - 1)
            };
            ex.conv(&format!("{}.conv.conv", key()), conv_in);
            if name == "encoder" {
                for level in &self.encoder.levels {
                    for r in &level.res {
                        ex.res(&key(), r);
                    }
                    if let Some(d) = &level.down {
                        ex.conv(&format!("{}.conv.conv.conv", key()), &d.conv);
                    }
                }
            } else {
                for level in &self.decoder.levels {
                    for r in &level.res {
                        ex.res(&key(), r);
                    }
                    if let Some(u) = &level.up {
                        ex.conv(&format!("{}.conv.conv.conv", key()), &u.conv);
                    }
                }
            }
            ex.norm(&key(), norm_out);
            ex.conv(&format!("{}.conv.conv", key()), conv_out);
        }
        ex.conv("quant_conv_mu.conv", &self.quant_conv_mu);
        ex.conv("quant_conv_log_sigma.conv", &self.quant_conv_log_sigma);
        ex.conv("post_quant_conv.conv", &self.post_quant_conv);
        match ex.err {
            Some(e) => Err(ModelError::Invalid(format!("reading parameter {e}"))),
            None => Ok(ex.sd),
        }
    }
}

/// The MAISI VAE: its configuration and its network.
#[derive(Debug, Clone)]
pub struct Vae {
    pub config: VaeConfig,
    pub net: VaeNet,
}

/// Sliding-window decoding options, MONAI `SlidingWindowInferer` semantics.
#[derive(Clone, Debug, PartialEq)]
pub struct SlidingWindow {
    /// Window size in latent voxels per spatial axis; 0 means the whole extent. A window larger
    /// than the latent is handled as MONAI does: the latent is zero-padded (half before, half
    /// after) and the output cropped back.
    pub window: [usize; 3],
    /// Fraction of overlap between neighbouring windows, per axis, in [0, 1).
    pub overlap: [f64; 3],
    /// Gaussian blending (`mode="gaussian"`); `false` gives constant weights.
    pub gaussian: bool,
    /// Gaussian sigma as a fraction of the window size (MONAI default 0.125).
    pub sigma_scale: f64,
}

impl SlidingWindow {
    /// Gaussian blending with sigma = 0.125 * window, as MAISI and Text2CT use it.
    pub fn gaussian(window: [usize; 3], overlap: f64) -> Self {
        SlidingWindow { window, overlap: [overlap; 3], gaussian: true, sigma_scale: 0.125 }
    }
}

impl Vae {
    /// A freshly initialised VAE (PyTorch default init from a seed; GroupNorm affine identity).
    pub fn new(config: &VaeConfig, seed: u64, device: &Device) -> Result<Self> {
        config.validate()?;
        let mut src = InitSource::new(seed);
        let net = VaeNet::build(config, &mut src, device);
        Ok(Vae { config: config.clone(), net })
    }

    /// Build from a state dict with MONAI's key names (prefix already removed). Strict: one
    /// error names every missing, unexpected and mis-shaped key. `origin` is only used in
    /// error messages.
    pub fn from_state_dict(config: &VaeConfig, sd: StateDict, device: &Device, origin: &Path) -> Result<Self> {
        config.validate()?;
        let mut src = StateDictSource::new(sd);
        let net = VaeNet::build(config, &mut src, device);
        src.finish().map_err(|m| ModelError::weights(origin, m))?;
        Ok(Vae { config: config.clone(), net })
    }

    /// Load MONAI weights from a `.pt`/`.pth` checkpoint (plain state dict, or nested in a dict,
    /// with or without a prefix such as `module.`) or a `.safetensors` file. Strict.
    pub fn load(config: &VaeConfig, path: &Path, device: &Device) -> Result<Self> {
        config.validate()?;
        let sd = StateDict::read(path)?.select_by_anchor(VAE_ANCHOR_KEY, path)?;
        Self::from_state_dict(config, sd, device, path)
    }

    /// Save the weights as f32 `.safetensors` with MONAI's key names.
    pub fn save_safetensors(&self, path: &Path) -> Result<()> {
        let mut meta = std::collections::BTreeMap::new();
        meta.insert("format".to_string(), "pt".to_string());
        if let Ok(cfg) = serde_json::to_string(&self.config) {
            meta.insert("text2ct_vae_config".to_string(), cfg);
        }
        self.net.to_state_dict()?.write_safetensors(path, Some(meta))
    }

    pub fn config(&self) -> &VaeConfig {
        &self.config
    }

    pub fn device(&self) -> Device {
        self.net.post_quant_conv.weight.val().device()
    }

    /// The arithmetic of the 3x3x3 convolutions of encode and decode (default f32; bf16 needs
    /// AVX512-BF16, see [`Precision::on_this_cpu`]). GroupNorm and the other layers stay f32.
    pub fn set_precision(&mut self, precision: Precision) {
        self.net.kernels.set_precision(precision);
    }

    pub fn precision(&self) -> Precision {
        self.net.kernels.precision()
    }

    /// Check an image batch `[B, in_channels, X, Y, Z]`: every extent at least the downsampling
    /// factor. (Extents not divisible by it are accepted as MONAI does: each downsample gives
    /// `floor(n / 2)`.)
    pub fn check_image_shape(&self, dims: [usize; 5]) -> Result<()> {
        let f = self.config.downsample_factor();
        if dims[0] == 0 || dims[1] != self.config.in_channels || dims[2..].iter().any(|&d| d < f) {
            return Err(ModelError::Invalid(format!(
                "VAE input must be [B>=1, {}, X, Y, Z] with X, Y, Z >= {f}; got {dims:?}",
                self.config.in_channels
            )));
        }
        Ok(())
    }

    /// Check a latent batch `[B, latent_channels, x, y, z]`.
    pub fn check_latent_shape(&self, dims: [usize; 5]) -> Result<()> {
        if dims[0] == 0 || dims[1] != self.config.latent_channels || dims[2..].contains(&0) {
            return Err(ModelError::Invalid(format!(
                "VAE latent must be [B>=1, {}, x, y, z] with positive extents; got {dims:?}",
                self.config.latent_channels
            )));
        }
        Ok(())
    }

    /// Posterior mean and standard deviation `(mu, sigma)`, each `[B, latent, X/f, Y/f, Z/f]`.
    ///
    /// # Panics
    /// On an input that fails [`Vae::check_image_shape`].
    pub fn encode(&self, x: Tensor<5>) -> (Tensor<5>, Tensor<5>) {
        if let Err(e) = self.check_image_shape(x.dims()) {
            panic!("{e}");
        }
        let _kernels = self.net.kernels.enter();
        let h = self.net.encoder.forward(x);
        let mu = self.net.quant_conv_mu.forward(h.clone());
        let log_var = self.net.quant_conv_log_sigma.forward(h).clamp(-30.0, 20.0);
        let sigma = log_var.div_scalar(2.0).exp();
        (mu, sigma)
    }

    /// Posterior mean (what MAISI's latent caching and Text2CT's training use as `z`).
    pub fn encode_mean(&self, x: Tensor<5>) -> Tensor<5> {
        if let Err(e) = self.check_image_shape(x.dims()) {
            panic!("{e}");
        }
        let _kernels = self.net.kernels.enter();
        let h = self.net.encoder.forward(x);
        self.net.quant_conv_mu.forward(h)
    }

    /// A posterior sample `mu + eps * sigma` with `eps ~ N(0, 1)` drawn from a ChaCha8 generator
    /// seeded with `seed` (deterministic across backends).
    pub fn encode_sample(&self, x: Tensor<5>, seed: u64) -> Tensor<5> {
        let (mu, sigma) = self.encode(x);
        let dims = sigma.dims();
        let n: usize = dims.iter().product();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let eps: Vec<f32> = (0..n).map(|_| rand_distr::StandardNormal.sample(&mut rng)).collect();
        let eps = Tensor::<5>::from_data(TensorData::new(eps, dims), &mu.device());
        mu + eps * sigma
    }

    /// Training forward pass (MONAI `AutoencoderKlMaisi.forward` with the sampling noise given):
    /// returns `(reconstruction, mu, sigma)` where the latent is `mu + eps * sigma`
    /// (reparameterisation, differentiable in `mu` and `sigma`). `eps` must have the latent's
    /// shape `[B, latent, X/f, Y/f, Z/f]`; an all-zero `eps` decodes the posterior mean.
    /// Shapes are checked and reported as errors (no panic).
    pub fn forward_train(&self, x: Tensor<5>, eps: Tensor<5>) -> Result<(Tensor<5>, Tensor<5>, Tensor<5>)> {
        self.check_image_shape(x.dims())?;
        let _kernels = self.net.kernels.enter();
        let h = self.net.encoder.forward(x);
        let mu = self.net.quant_conv_mu.forward(h.clone());
        let log_var = self.net.quant_conv_log_sigma.forward(h).clamp(-30.0, 20.0);
        let sigma = log_var.div_scalar(2.0).exp();
        if eps.dims() != mu.dims() {
            return Err(ModelError::Invalid(format!(
                "forward_train: noise has shape {:?}, the latent {:?}",
                eps.dims(),
                mu.dims()
            )));
        }
        let z = mu.clone() + eps * sigma.clone();
        let recon = self.net.decoder.forward(self.net.post_quant_conv.forward(z));
        Ok((recon, mu, sigma))
    }

    /// The latent shape `[B, latent, X/f, Y/f, Z/f]` for an image batch of shape `dims`
    /// (each downsample halves, rounding down, as MONAI does).
    pub fn latent_dims(&self, dims: [usize; 5]) -> [usize; 5] {
        let mut out = [dims[0], self.config.latent_channels, dims[2], dims[3], dims[4]];
        for _ in 1..self.config.num_channels.len() {
            for d in out.iter_mut().skip(2) {
                *d /= 2;
            }
        }
        out
    }

    /// Decode a latent `[B, latent, x, y, z]` to `[B, out_channels, f x, f y, f z]` (MONAI
    /// `decode_stage_2_outputs`: `post_quant_conv` then the decoder).
    ///
    /// # Panics
    /// On an input that fails [`Vae::check_latent_shape`].
    pub fn decode(&self, z: Tensor<5>) -> Tensor<5> {
        if let Err(e) = self.check_latent_shape(z.dims()) {
            panic!("{e}");
        }
        let _kernels = self.net.kernels.enter();
        self.net.decoder.forward(self.net.post_quant_conv.forward(z))
    }

    /// Decode window by window with Gaussian blending (MONAI `SlidingWindowInferer(roi_size=window,
    /// sw_batch_size=1, mode="gaussian", overlap=overlap)` around `decode_stage_2_outputs`).
    /// Peak memory is that of decoding one window, plus the f32 output and weight maps.
    pub fn decode_sliding_window(&self, z: Tensor<5>, window: [usize; 3], overlap: f64) -> Result<Tensor<5>> {
        self.decode_sliding_window_with(z, &SlidingWindow::gaussian(window, overlap), &mut |_, _| {})
    }

    /// [`Vae::decode_sliding_window`] with all options and a progress callback
    /// `(windows done, windows total)`.
    pub fn decode_sliding_window_with(
        &self,
        z: Tensor<5>,
        opts: &SlidingWindow,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Tensor<5>> {
        let dims = z.dims();
        self.check_latent_shape(dims)?;
        let device = z.device();
        crate::sliding::sliding_window_5d(z, opts, &device, progress, &mut |w| Ok(self.decode(w)))
    }
}

/// Convert a MAISI VAE checkpoint (`.pt`, possibly nested/prefixed, or `.safetensors`) to an f32
/// `.safetensors` file with MONAI's key names (prefix removed). Returns the number of tensors.
/// Every tensor under the detected prefix is written; nothing is checked against a config.
pub fn convert_to_safetensors(input: &Path, output: &Path) -> Result<usize> {
    let sd = StateDict::read(input)?.select_by_anchor(VAE_ANCHOR_KEY, input)?;
    let mut meta = std::collections::BTreeMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    meta.insert("source".to_string(), "text2ct: MONAI AutoencoderKlMaisi state dict".to_string());
    sd.write_safetensors(output, Some(meta))?;
    Ok(sd.len())
}
