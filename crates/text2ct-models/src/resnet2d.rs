//! 2D ResNets with torchvision's layout (ResNet-18/34 with basic blocks, ResNet-50/101/152 with
//! bottlenecks), used as 2D feature extractors for the 2.5D FID and as CT-Net's trunk.
//!
//! Key names are torchvision's: `conv1.weight`, `bn1.{weight,bias,running_mean,running_var,
//! num_batches_tracked}`, `layer{1..4}.{i}.conv{1,2[,3]}.weight`, `layer{1..4}.{i}.bn{1,2[,3]}.*`,
//! `layer{1..4}.0.downsample.{0,1}.*`, `fc.{weight,bias}`. `num_batches_tracked` is accepted and
//! ignored (older checkpoints lack it). Feature extraction ([`ResNet2d::features`]) is the global
//! average pool of the last stage (2048-d for ResNet-50, 512-d for ResNet-18).
//!
//! **RadImageNet layout** (`Warvito/radimagenet-models`, the ResNet-50 MAISI's 2.5D FID uses): the
//! same key names, but a Keras-converted network: every convolution has a bias (`*.conv*.bias`,
//! `downsample.0.bias`), the stride of a bottleneck sits in its first 1x1 convolution (ResNet v1,
//! torchvision puts it in the 3x3: v1.5), BatchNorm eps is 1.001e-5, and there is no `fc`. The
//! config flags [`ResNet2dConfig::conv_bias`], [`ResNet2dConfig::stride_in_1x1`] and
//! [`ResNet2dConfig::bn_eps`] describe it; [`ResNet2dConfig::radimagenet_resnet50`] is the preset
//! and [`ResNet2d::load_auto`] picks it when the file has `conv1.bias`.
//!
//! BatchNorm: burn's, built in training state like PyTorch's; on a plain (non-autodiff) device it
//! always uses the running statistics (PyTorch `eval()`), on an autodiff device batch statistics
//! unless the module is put in validation state (`Module::valid`). Widths are configurable
//! ([`ResNet2dConfig::widths`], [`ResNet2dConfig::stem_width`]) so parity tests can use small
//! networks built from torchvision's own block classes (see `fixtures/gen_backbone_fixtures.py`).

use std::path::Path;

use burn::module::{Module, Param, RunningState};
use burn::nn::conv::Conv2d;
use burn::nn::{BatchNorm, Linear, PaddingConfig2d};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::blocks::{param, InitSource, ParamKind, ParamSource, StateDictSource};
use crate::error::{ModelError, Result};
use crate::weights::{RawTensor, StateDict};

// ---------------------------------------------------------------------------------------------
// Shared helpers (also used by `resnet3d` and `ctnet`).
// ---------------------------------------------------------------------------------------------

/// A `torch.nn.BatchNorm{1,2,3}d(ch, eps)` from `{key}.weight`, `.bias`, `.running_mean`,
/// `.running_var` (momentum 0.1 as PyTorch's default).
pub fn batch_norm(src: &mut dyn ParamSource, key: &str, ch: usize, eps: f64, dev: &Device) -> BatchNorm {
    let gamma = param(src, &format!("{key}.weight"), [ch], ParamKind::Ones, dev);
    let beta = param(src, &format!("{key}.bias"), [ch], ParamKind::Zeros, dev);
    let mean = src.take(&format!("{key}.running_mean"), &[ch], ParamKind::Zeros);
    let var = src.take(&format!("{key}.running_var"), &[ch], ParamKind::Ones);
    BatchNorm {
        gamma,
        beta,
        training: Param::from_bool(true),
        running_mean: RunningState::new(Tensor::from_data(TensorData::new(mean, [ch]), dev)),
        running_var: RunningState::new(Tensor::from_data(TensorData::new(var, [ch]), dev)),
        momentum: 0.1,
        epsilon: eps,
    }
}

/// A `torch.nn.Conv2d` with square kernel `k`, stride, padding and dilation; `{key}.weight`
/// `[cout, cin, k, k]` and, with `bias`, `{key}.bias`.
#[allow(clippy::too_many_arguments)]
pub fn conv2d(
    src: &mut dyn ParamSource,
    key: &str,
    cin: usize,
    cout: usize,
    k: usize,
    stride: usize,
    pad: usize,
    bias: bool,
    dev: &Device,
) -> Conv2d {
    let fan = cin * k * k;
    let weight = param(src, &format!("{key}.weight"), [cout, cin, k, k], ParamKind::Fan(fan), dev);
    let bias = bias.then(|| param(src, &format!("{key}.bias"), [cout], ParamKind::Fan(fan), dev));
    Conv2d {
        weight,
        bias,
        stride: [stride; 2],
        kernel_size: [k; 2],
        dilation: [1; 2],
        groups: 1,
        padding: PaddingConfig2d::Explicit(pad, pad, pad, pad),
    }
}

/// A `torch.nn.Linear(din, dout)` from `{key}.weight` `[dout, din]` and `{key}.bias` (burn stores
/// the weight transposed, `[din, dout]`).
pub fn linear(src: &mut dyn ParamSource, key: &str, din: usize, dout: usize, dev: &Device) -> Linear {
    let w = src.take(&format!("{key}.weight"), &[dout, din], ParamKind::Fan(din));
    let mut t = vec![0.0f32; din * dout];
    for o in 0..dout {
        for i in 0..din {
            t[i * dout + o] = w[o * din + i];
        }
    }
    let weight = Param::from_tensor(Tensor::from_data(TensorData::new(t, [din, dout]), dev));
    let bias = Some(param(src, &format!("{key}.bias"), [dout], ParamKind::Fan(din), dev));
    Linear { weight, bias }
}

/// Remove every `X.num_batches_tracked` whose `X.running_mean` is present (a BatchNorm counter,
/// not a parameter). Returns how many were removed.
pub fn strip_bn_counters(sd: &mut StateDict) -> usize {
    let counters: Vec<String> = sd
        .tensors
        .keys()
        .filter(|k| {
            k.strip_suffix(".num_batches_tracked")
                .is_some_and(|base| sd.tensors.contains_key(&format!("{base}.running_mean")))
        })
        .cloned()
        .collect();
    for k in &counters {
        sd.tensors.remove(k);
    }
    counters.len()
}

/// Remove every tensor under `prefix.` (e.g. a classification head a feature extractor does not
/// use); returns the removed names.
pub fn strip_prefix_group(sd: &mut StateDict, prefix: &str) -> Vec<String> {
    let dotted = format!("{prefix}.");
    let keys: Vec<String> = sd.tensors.keys().filter(|k| k.starts_with(&dotted)).cloned().collect();
    for k in &keys {
        sd.tensors.remove(k);
    }
    keys
}

/// A parameter source that draws fresh values (PyTorch default init from a seed, BatchNorm
/// identity) and records them as a state dict, e.g. to save a random-weight network.
pub struct RecordingSource {
    init: InitSource,
    pub sd: StateDict,
}

impl RecordingSource {
    pub fn new(seed: u64) -> Self {
        RecordingSource { init: InitSource::new(seed), sd: StateDict::default() }
    }
}

impl ParamSource for RecordingSource {
    fn take(&mut self, key: &str, shape: &[usize], kind: ParamKind) -> Vec<f32> {
        let v = self.init.take(key, shape, kind);
        self.sd.tensors.insert(key.to_string(), RawTensor::new(shape.to_vec(), v.clone()));
        v
    }
}

/// A parameter source that renames keys before asking another source (e.g. CT-Net's
/// `features.4.0.conv1.weight` for torchvision's `layer1.0.conv1.weight`).
pub struct RenamingSource<'a> {
    pub inner: &'a mut dyn ParamSource,
    pub rename: &'a dyn Fn(&str) -> String,
}

impl ParamSource for RenamingSource<'_> {
    fn take(&mut self, key: &str, shape: &[usize], kind: ParamKind) -> Vec<f32> {
        let k = (self.rename)(key);
        self.inner.take(&k, shape, kind)
    }
}

/// PyTorch `MaxPool2d(kernel_size=k, stride=s, padding=p)` (padding never wins the max).
pub fn max_pool2d(x: Tensor<4>, k: usize, s: usize, p: usize) -> Tensor<4> {
    let opts = burn::tensor::ops::MaxPoolOptions::new([k, k]).with_stride([s, s]).with_padding([p, p]);
    burn::tensor::module::max_pool2d(x, opts)
}

/// SHA-256 is computed by callers; this returns a short description of a state dict for errors.
fn describe(sd: &StateDict) -> String {
    format!("{} tensors, {} parameters", sd.len(), sd.num_params())
}

// ---------------------------------------------------------------------------------------------
// Config
// ---------------------------------------------------------------------------------------------

/// Residual block type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BlockKind {
    /// Two 3x3 convolutions (ResNet-18/34), expansion 1.
    Basic,
    /// 1x1 → 3x3 → 1x1 (ResNet-50 and deeper), expansion 4.
    Bottleneck,
}

impl BlockKind {
    pub fn expansion(self) -> usize {
        match self {
            BlockKind::Basic => 1,
            BlockKind::Bottleneck => 4,
        }
    }
}

fn default_widths() -> [usize; 4] {
    [64, 128, 256, 512]
}
fn default_stem() -> usize {
    64
}
fn default_in_channels() -> usize {
    3
}
fn default_eps() -> f64 {
    1e-5
}

/// Architecture of a 2D ResNet (torchvision's constructor arguments, plus the widths and the
/// RadImageNet layout flags).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResNet2dConfig {
    /// Block type: `basic` (18/34) or `bottleneck` (50/101/152).
    pub block: BlockKind,
    /// Blocks per stage, e.g. `[2,2,2,2]` (18), `[3,4,6,3]` (34 basic / 50 bottleneck).
    pub layers: [usize; 4],
    /// "planes" of the four stages (torchvision: 64, 128, 256, 512); a stage outputs
    /// `planes * expansion` channels.
    #[serde(default = "default_widths")]
    pub widths: [usize; 4],
    /// Output channels of the 7x7 stem convolution (torchvision: 64).
    #[serde(default = "default_stem")]
    pub stem_width: usize,
    /// Input channels (3).
    #[serde(default = "default_in_channels")]
    pub in_channels: usize,
    /// `Some(n)`: a final `fc` layer with `n` outputs (torchvision's ImageNet head has 1000);
    /// `None`: no head, `fc.*` in a weights file is ignored.
    #[serde(default)]
    pub num_classes: Option<usize>,
    /// Every convolution has a bias (RadImageNet's Keras-converted ResNet-50).
    #[serde(default)]
    pub conv_bias: bool,
    /// Bottleneck stride on the first 1x1 convolution (ResNet v1, RadImageNet) instead of the
    /// 3x3 (v1.5, torchvision).
    #[serde(default)]
    pub stride_in_1x1: bool,
    /// BatchNorm epsilon (torchvision 1e-5, RadImageNet 1.001e-5).
    #[serde(default = "default_eps")]
    pub bn_eps: f64,
}

impl ResNet2dConfig {
    /// torchvision `resnet18()` without its head (features 512-d).
    pub fn resnet18() -> Self {
        ResNet2dConfig {
            block: BlockKind::Basic,
            layers: [2, 2, 2, 2],
            widths: default_widths(),
            stem_width: 64,
            in_channels: 3,
            num_classes: None,
            conv_bias: false,
            stride_in_1x1: false,
            bn_eps: 1e-5,
        }
    }

    /// torchvision `resnet50()` without its head (features 2048-d).
    pub fn resnet50() -> Self {
        ResNet2dConfig { block: BlockKind::Bottleneck, layers: [3, 4, 6, 3], ..Self::resnet18() }
    }

    /// RadImageNet's ResNet-50 (`Warvito/radimagenet-models`): conv biases, stride in the 1x1,
    /// eps 1.001e-5, no head.
    pub fn radimagenet_resnet50() -> Self {
        ResNet2dConfig { conv_bias: true, stride_in_1x1: true, bn_eps: 1.001e-5, ..Self::resnet50() }
    }

    /// Channels of the last stage (the feature dimension).
    pub fn feature_dim(&self) -> usize {
        self.widths[3] * self.block.expansion()
    }

    pub fn validate(&self) -> Result<()> {
        if self.widths.contains(&0) || self.stem_width == 0 || self.in_channels == 0 {
            return Err(ModelError::Config("ResNet widths and channel counts must be positive".into()));
        }
        if self.layers.contains(&0) {
            return Err(ModelError::Config(format!("every ResNet stage needs a block, got layers {:?}", self.layers)));
        }
        if self.num_classes == Some(0) {
            return Err(ModelError::Config("num_classes must be positive (or absent)".into()));
        }
        if !(self.bn_eps > 0.0 && self.bn_eps.is_finite()) {
            return Err(ModelError::Config(format!("bn_eps must be positive, got {}", self.bn_eps)));
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Network
// ---------------------------------------------------------------------------------------------

/// `downsample = Sequential(conv1x1(stride), BatchNorm)`.
#[derive(Module, Debug)]
pub struct Downsample2d {
    pub conv: Conv2d,
    pub bn: BatchNorm,
}

/// A basic block (conv3 / bn3 absent) or a bottleneck.
#[derive(Module, Debug)]
pub struct Block2d {
    pub conv1: Conv2d,
    pub bn1: BatchNorm,
    pub conv2: Conv2d,
    pub bn2: BatchNorm,
    pub conv3: Option<Conv2d>,
    pub bn3: Option<BatchNorm>,
    pub downsample: Option<Downsample2d>,
}

impl Block2d {
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let mut h = relu(self.bn1.forward(self.conv1.forward(x.clone())));
        h = self.bn2.forward(self.conv2.forward(h));
        if let (Some(c3), Some(b3)) = (&self.conv3, &self.bn3) {
            h = b3.forward(c3.forward(relu(h)));
        }
        let skip = match &self.downsample {
            Some(d) => d.bn.forward(d.conv.forward(x)),
            None => x,
        };
        relu(h + skip)
    }
}

/// One stage (`layerN`).
#[derive(Module, Debug)]
pub struct Stage2d {
    pub blocks: Vec<Block2d>,
}

/// The network (a burn [`Module`]).
#[derive(Module, Debug)]
pub struct ResNet2dNet {
    pub conv1: Conv2d,
    pub bn1: BatchNorm,
    pub stages: Vec<Stage2d>,
    pub fc: Option<Linear>,
}

impl ResNet2dNet {
    /// Build from a parameter source, asking for torchvision's key names.
    pub fn build(cfg: &ResNet2dConfig, src: &mut dyn ParamSource, dev: &Device) -> Self {
        let b = cfg.conv_bias;
        let conv1 = conv2d(src, "conv1", cfg.in_channels, cfg.stem_width, 7, 2, 3, b, dev);
        let bn1 = batch_norm(src, "bn1", cfg.stem_width, cfg.bn_eps, dev);
        let exp = cfg.block.expansion();
        let mut inplanes = cfg.stem_width;
        let mut stages = Vec::with_capacity(4);
        for (li, (&planes, &n)) in cfg.widths.iter().zip(&cfg.layers).enumerate() {
            let stride = if li == 0 { 1 } else { 2 };
            let mut blocks = Vec::with_capacity(n);
            for bi in 0..n {
                let s = if bi == 0 { stride } else { 1 };
                let key = format!("layer{}.{bi}", li + 1);
                let k = |n: &str| format!("{key}.{n}");
                let block = match cfg.block {
                    BlockKind::Basic => Block2d {
                        conv1: conv2d(src, &k("conv1"), inplanes, planes, 3, s, 1, b, dev),
                        bn1: batch_norm(src, &k("bn1"), planes, cfg.bn_eps, dev),
                        conv2: conv2d(src, &k("conv2"), planes, planes, 3, 1, 1, b, dev),
                        bn2: batch_norm(src, &k("bn2"), planes, cfg.bn_eps, dev),
                        conv3: None,
                        bn3: None,
                        downsample: None,
                    },
                    BlockKind::Bottleneck => {
                        let (s1, s3) = if cfg.stride_in_1x1 { (s, 1) } else { (1, s) };
                        Block2d {
                            conv1: conv2d(src, &k("conv1"), inplanes, planes, 1, s1, 0, b, dev),
                            bn1: batch_norm(src, &k("bn1"), planes, cfg.bn_eps, dev),
                            conv2: conv2d(src, &k("conv2"), planes, planes, 3, s3, 1, b, dev),
                            bn2: batch_norm(src, &k("bn2"), planes, cfg.bn_eps, dev),
                            conv3: Some(conv2d(src, &k("conv3"), planes, planes * exp, 1, 1, 0, b, dev)),
                            bn3: Some(batch_norm(src, &k("bn3"), planes * exp, cfg.bn_eps, dev)),
                            downsample: None,
                        }
                    }
                };
                let downsample = (bi == 0 && (s != 1 || inplanes != planes * exp)).then(|| Downsample2d {
                    conv: conv2d(src, &k("downsample.0"), inplanes, planes * exp, 1, s, 0, b, dev),
                    bn: batch_norm(src, &k("downsample.1"), planes * exp, cfg.bn_eps, dev),
                });
                blocks.push(Block2d { downsample, ..block });
                inplanes = planes * exp;
            }
            stages.push(Stage2d { blocks });
        }
        let fc = cfg.num_classes.map(|n| linear(src, "fc", inplanes, n, dev));
        ResNet2dNet { conv1, bn1, stages, fc }
    }

    /// The last stage's feature map `[B, feature_dim, h, w]` (torchvision `children()[:-2]`).
    pub fn forward_map(&self, x: Tensor<4>) -> Tensor<4> {
        let mut h = relu(self.bn1.forward(self.conv1.forward(x)));
        h = max_pool2d(h, 3, 2, 1);
        for s in &self.stages {
            for b in &s.blocks {
                h = b.forward(h);
            }
        }
        h
    }
}

/// Spatial mean of a `[B, C, h, w]` map → `[B, C]`.
pub fn spatial_mean(x: Tensor<4>) -> Tensor<2> {
    let [b, c, h, w] = x.dims();
    x.reshape([b, c, h * w]).mean_dim(2).reshape([b, c])
}

/// A 2D ResNet: its configuration and network.
#[derive(Debug, Clone)]
pub struct ResNet2d {
    pub config: ResNet2dConfig,
    pub net: ResNet2dNet,
}

/// A key every 2D ResNet state dict has.
pub const RESNET_ANCHOR_KEY: &str = "layer1.0.conv1.weight";

impl ResNet2d {
    /// Fresh weights (PyTorch default init from `seed`, BatchNorm identity).
    pub fn new(config: &ResNet2dConfig, seed: u64, dev: &Device) -> Result<Self> {
        config.validate()?;
        let net = ResNet2dNet::build(config, &mut InitSource::new(seed), dev);
        Ok(ResNet2d { config: config.clone(), net })
    }

    /// A freshly initialised network's weights as a torchvision-named state dict.
    pub fn random_state_dict(config: &ResNet2dConfig, seed: u64) -> Result<StateDict> {
        config.validate()?;
        let mut rec = RecordingSource::new(seed);
        let _ = ResNet2dNet::build(config, &mut rec, &Device::flex());
        Ok(rec.sd)
    }

    /// Strict load from a state dict (prefix removed). `num_batches_tracked` counters are
    /// dropped; with `num_classes: None` an `fc.*` head is ignored. Any other missing,
    /// unexpected or mis-shaped key is an error naming all of them.
    pub fn from_state_dict(config: &ResNet2dConfig, mut sd: StateDict, dev: &Device, origin: &Path) -> Result<Self> {
        config.validate()?;
        strip_bn_counters(&mut sd);
        if config.num_classes.is_none() {
            strip_prefix_group(&mut sd, "fc");
        }
        let what = describe(&sd);
        let mut src = StateDictSource::new(sd);
        let net = ResNet2dNet::build(config, &mut src, dev);
        src.finish().map_err(|m| ModelError::weights(origin, format!("{m}\n  (file: {what}; config {config:?})")))?;
        Ok(ResNet2d { config: config.clone(), net })
    }

    /// Load a `.pt`/`.pth` (plain or nested state dict, any prefix such as `module.`) or
    /// `.safetensors` file strictly.
    pub fn load(config: &ResNet2dConfig, path: &Path, dev: &Device) -> Result<Self> {
        let sd = StateDict::read(path)?.select_by_anchor(RESNET_ANCHOR_KEY, path)?;
        Self::from_state_dict(config, sd, dev, path)
    }

    /// Load with the layout detected from the file: RadImageNet's (conv biases, stride in the
    /// 1x1, eps 1.001e-5) when `conv1.bias` is present, torchvision's otherwise. `base` gives
    /// the depth and widths (e.g. [`ResNet2dConfig::resnet50`]).
    pub fn load_auto(base: &ResNet2dConfig, path: &Path, dev: &Device) -> Result<Self> {
        let sd = StateDict::read(path)?.select_by_anchor(RESNET_ANCHOR_KEY, path)?;
        let mut cfg = base.clone();
        if sd.tensors.contains_key("conv1.bias") {
            cfg.conv_bias = true;
            cfg.stride_in_1x1 = true;
            cfg.bn_eps = 1.001e-5;
        }
        Self::from_state_dict(&cfg, sd, dev, path)
    }

    pub fn feature_dim(&self) -> usize {
        self.config.feature_dim()
    }

    fn check(&self, dims: [usize; 4]) -> Result<()> {
        if dims[0] == 0 || dims[1] != self.config.in_channels || dims[2] == 0 || dims[3] == 0 {
            return Err(ModelError::Invalid(format!(
                "ResNet input must be [B>=1, {}, H, W]; got {dims:?}",
                self.config.in_channels
            )));
        }
        Ok(())
    }

    /// Global-average-pooled last-stage features `[B, feature_dim]`.
    pub fn features(&self, x: Tensor<4>) -> Result<Tensor<2>> {
        self.check(x.dims())?;
        Ok(spatial_mean(self.net.forward_map(x)))
    }

    /// Logits `[B, num_classes]` (needs a head).
    pub fn forward(&self, x: Tensor<4>) -> Result<Tensor<2>> {
        let f = self.features(x)?;
        match &self.net.fc {
            Some(fc) => Ok(fc.forward(f)),
            None => Err(ModelError::Invalid("this ResNet has no fc head (num_classes is None)".into())),
        }
    }
}
