//! CT-Net (Draelos et al., 2021; `rachellea/ct-net-models`, `custom_models_ctnet.py`): a
//! multi-label chest-CT classifier whose penultimate activations serve as FID features.
//!
//! Architecture (defaults = the paper's, [`CtNetConfig::paper`]):
//! - the volume, `n_slices` axial slices of `H x W`, is regrouped into `n_slices / 3` "RGB"
//!   triplets of adjacent slices: input `[B, T, 3, H, W]`;
//! - a 2D ResNet-18 trunk (torchvision's `children()[:-2]`: conv1, bn1, relu, maxpool,
//!   layer1..4) runs on every triplet → `[B, T, 512, h, w]` (14 x 14 for 420 x 420);
//! - `reducingconvs`: the triplet axis is the channel axis of three `Conv3d` (over the trunk's
//!   channel axis and the map): 134→64 k(3,3,3) s(3,1,1), ReLU, 64→32 k(3,3,3) s(3,1,1), ReLU,
//!   32→16 k(3,2,2) s(3,2,2), ReLU → `[B, 16, 18, 5, 5]` for the paper's 402 x 420 x 420;
//! - flatten (7200), `classifier`: FC 128, ReLU, Dropout 0.5, FC 96, ReLU, Dropout 0.5, FC 18.
//!
//! Key names are ct-net-models': `features.0.weight` (conv1), `features.1.*` (bn1),
//! `features.{4,5,6,7}.*` (torchvision `layer1..4`, with their usual inner names),
//! `reducingconvs.{0,2,4}.{weight,bias}`, `classifier.{0,3,6}.{weight,bias}`.
//!
//! Small inputs (phantoms of 24–64 slices of 64 x 64) leave a trunk map too small for the paper's
//! kernels; [`CtNetConfig::fitted`] keeps the channel stack and clamps each reducing kernel to the
//! extent it sees (`kernel = min(kernel, extent)`, `stride = min(stride, kernel)`). The flatten
//! size is always computed from the config ([`CtNetConfig::flatten_size`]).
//!
//! [`CtNet::features`] returns the 96-d activations after the second FC's ReLU (dropout inactive
//! outside training). Training: build on an autodiff device; dropout and BatchNorm then act as in
//! PyTorch's `train()`; `Module::valid()` gives the `eval()` behaviour.
//!
//! Input normalisation ([`prepare_volume`]): HU clipped to `hu_window` (ct-net-models uses
//! [-1000, 200]), scaled to [0, 1], minus `mean` (0.449, ImageNet's grey mean).

use std::path::Path;

use burn::module::Module;
use burn::nn::conv::Conv3d;
use burn::nn::{Dropout, DropoutConfig, Linear};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::blocks::{InitSource, ParamSource, StateDictSource};
use crate::error::{ModelError, Result};
use crate::resnet2d::{linear, strip_bn_counters, RecordingSource, RenamingSource, ResNet2dConfig, ResNet2dNet};
use crate::resnet3d::conv3d_full;
use crate::weights::StateDict;

/// One reducing `Conv3d` (no padding, bias, followed by ReLU).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReducingConv {
    pub out: usize,
    /// Kernel over (trunk channels, h, w).
    pub kernel: [usize; 3],
    pub stride: [usize; 3],
}

/// CT-Net's configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CtNetConfig {
    /// Axial slices per volume (a multiple of 3; the paper: 402).
    pub n_slices: usize,
    /// In-plane size `[H (rows = y), W (columns = x)]` (the paper: 420 x 420).
    pub size: [usize; 2],
    /// Outputs (the 18 CT-RATE labels).
    pub n_outputs: usize,
    /// The trunk's stage widths (ResNet-18: 64, 128, 256, 512).
    pub trunk_widths: [usize; 4],
    /// The trunk's stem width (64).
    pub trunk_stem_width: usize,
    /// The reducing convolutions, in order.
    pub reducing: Vec<ReducingConv>,
    /// Hidden FC sizes (128, 96); the second is the feature dimension.
    pub fc: [usize; 2],
    /// Dropout probability after each hidden FC (0.5).
    pub dropout: f64,
    /// HU window mapped to [0, 1] by [`prepare_volume`] ([-1000, 200]).
    pub hu_window: [f32; 2],
    /// Subtracted after scaling (0.449).
    pub mean: f32,
}

fn paper_reducing() -> Vec<ReducingConv> {
    vec![
        ReducingConv { out: 64, kernel: [3, 3, 3], stride: [3, 1, 1] },
        ReducingConv { out: 32, kernel: [3, 3, 3], stride: [3, 1, 1] },
        ReducingConv { out: 16, kernel: [3, 2, 2], stride: [3, 2, 2] },
    ]
}

fn conv_out(n: usize, k: usize, s: usize, p: usize) -> Option<usize> {
    (n + 2 * p).checked_sub(k).map(|v| v / s + 1)
}

impl CtNetConfig {
    /// The published CT-Net: 402 slices of 420 x 420, ResNet-18 trunk, 18 outputs (flatten 7200).
    pub fn paper() -> Self {
        CtNetConfig {
            n_slices: 402,
            size: [420, 420],
            n_outputs: 18,
            trunk_widths: [64, 128, 256, 512],
            trunk_stem_width: 64,
            reducing: paper_reducing(),
            fc: [128, 96],
            dropout: 0.5,
            hu_window: [-1000.0, 200.0],
            mean: 0.449,
        }
    }

    /// The paper's network for another input size: same channels, each reducing kernel clamped
    /// to the extent it sees (`kernel = min(kernel, extent)`, `stride = min(stride, kernel)`).
    pub fn fitted(
        n_slices: usize,
        size: [usize; 2],
        trunk_widths: [usize; 4],
        trunk_stem_width: usize,
    ) -> Result<Self> {
        let mut cfg =
            CtNetConfig { n_slices, size, trunk_widths, trunk_stem_width, reducing: Vec::new(), ..Self::paper() };
        let mut ext = cfg.trunk_map()?;
        for r in paper_reducing() {
            let kernel = [0, 1, 2].map(|i| r.kernel[i].min(ext[i]));
            let stride = [0, 1, 2].map(|i| r.stride[i].min(kernel[i]));
            ext = [0, 1, 2].map(|i| (ext[i] - kernel[i]) / stride[i] + 1);
            cfg.reducing.push(ReducingConv { out: r.out, kernel, stride });
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// The trunk's output `[channels, h, w]` per triplet.
    pub fn trunk_map(&self) -> Result<[usize; 3]> {
        let bad = || {
            ModelError::Config(format!("CT-Net: in-plane size {:?} is too small for the ResNet-18 trunk", self.size))
        };
        let mut hw = [0usize; 2];
        for (i, &n) in self.size.iter().enumerate() {
            let mut v = conv_out(n, 7, 2, 3).ok_or_else(bad)?;
            for _ in 0..4 {
                v = conv_out(v, 3, 2, 1).ok_or_else(bad)?;
            }
            hw[i] = v;
        }
        Ok([self.trunk_widths[3], hw[0], hw[1]])
    }

    /// Output extent of the reducing stack `[c, d, h, w]`, and the flatten size.
    pub fn flatten_size(&self) -> Result<usize> {
        let mut ext = self.trunk_map()?;
        for (i, r) in self.reducing.iter().enumerate() {
            for a in 0..3 {
                ext[a] = conv_out(ext[a], r.kernel[a], r.stride[a], 0).ok_or_else(|| {
                    ModelError::Config(format!(
                        "CT-Net: reducing conv {i} (kernel {:?}) is larger than its input extent {ext:?}; \
                         use CtNetConfig::fitted for small inputs",
                        r.kernel
                    ))
                })?;
            }
        }
        let c = self.reducing.last().map(|r| r.out).unwrap_or(self.n_slices / 3);
        Ok(c * ext[0] * ext[1] * ext[2])
    }

    pub fn n_triplets(&self) -> usize {
        self.n_slices / 3
    }

    pub fn trunk_config(&self) -> ResNet2dConfig {
        ResNet2dConfig { widths: self.trunk_widths, stem_width: self.trunk_stem_width, ..ResNet2dConfig::resnet18() }
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(ModelError::Config(format!("CT-Net: {m}")));
        if self.n_slices == 0 || self.n_slices % 3 != 0 {
            return bad(format!("n_slices must be a positive multiple of 3, got {}", self.n_slices));
        }
        if self.n_outputs == 0 || self.fc.contains(&0) || self.reducing.is_empty() {
            return bad("n_outputs, fc sizes and the reducing stack must be non-empty".into());
        }
        if self.reducing.iter().any(|r| r.out == 0 || r.kernel.contains(&0) || r.stride.contains(&0)) {
            return bad("reducing convs need positive channels, kernels and strides".into());
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad(format!("dropout must be in [0, 1), got {}", self.dropout));
        }
        if !(self.hu_window[1] > self.hu_window[0]) {
            return bad(format!("hu_window must be increasing, got {:?}", self.hu_window));
        }
        self.trunk_config().validate()?;
        self.flatten_size().map(|_| ())
    }
}

/// ct-net-models' trunk key for a torchvision key: `conv1.*` → `features.0.*`, `bn1.*` →
/// `features.1.*`, `layerN.*` → `features.{3+N}.*`.
pub fn trunk_key(tv: &str) -> String {
    if let Some(r) = tv.strip_prefix("conv1.") {
        return format!("features.0.{r}");
    }
    if let Some(r) = tv.strip_prefix("bn1.") {
        return format!("features.1.{r}");
    }
    for n in 1..=4 {
        if let Some(r) = tv.strip_prefix(&format!("layer{n}.")) {
            return format!("features.{}.{r}", 3 + n);
        }
    }
    format!("features.{tv}")
}

/// The network (a burn [`Module`]).
#[derive(Module, Debug)]
pub struct CtNetNet {
    pub trunk: ResNet2dNet,
    pub reducing: Vec<Conv3d>,
    pub fc1: Linear,
    pub fc2: Linear,
    pub out: Linear,
    pub dropout: Dropout,
}

impl CtNetNet {
    pub fn build(cfg: &CtNetConfig, src: &mut dyn ParamSource, dev: &Device) -> Result<Self> {
        let flat = cfg.flatten_size()?;
        let trunk = {
            let rename = |k: &str| trunk_key(k);
            let mut rs = RenamingSource { inner: &mut *src, rename: &rename };
            ResNet2dNet::build(&cfg.trunk_config(), &mut rs, dev)
        };
        let mut cin = cfg.n_triplets();
        let mut reducing = Vec::with_capacity(cfg.reducing.len());
        for (i, r) in cfg.reducing.iter().enumerate() {
            let key = format!("reducingconvs.{}", 2 * i);
            reducing.push(conv3d_full(src, &key, cin, r.out, r.kernel, r.stride, [0; 3], 1, true, dev));
            cin = r.out;
        }
        let fc1 = linear(src, "classifier.0", flat, cfg.fc[0], dev);
        let fc2 = linear(src, "classifier.3", cfg.fc[0], cfg.fc[1], dev);
        let out = linear(src, "classifier.6", cfg.fc[1], cfg.n_outputs, dev);
        let dropout = DropoutConfig::new(cfg.dropout).init();
        Ok(CtNetNet { trunk, reducing, fc1, fc2, out, dropout })
    }

    /// Penultimate activations `[B, fc[1]]` of `[B, T, 3, H, W]` (shape already checked).
    pub fn penultimate(&self, x: Tensor<5>) -> Tensor<2> {
        let [b, t, c, h, w] = x.dims();
        let m = self.trunk.forward_map(x.reshape([b * t, c, h, w]));
        let [_, c2, h2, w2] = m.dims();
        let mut y = m.reshape([b, t, c2, h2, w2]);
        for conv in &self.reducing {
            y = relu(conv.forward(y));
        }
        let flat: usize = y.dims()[1..].iter().product();
        let z = y.reshape([b, flat]);
        let z = self.dropout.forward(relu(self.fc1.forward(z)));
        self.dropout.forward(relu(self.fc2.forward(z)))
    }
}

/// CT-Net: configuration and network.
#[derive(Debug, Clone)]
pub struct CtNet {
    pub config: CtNetConfig,
    pub net: CtNetNet,
}

/// A key every CT-Net state dict has.
pub const CTNET_ANCHOR_KEY: &str = "reducingconvs.0.weight";

impl CtNet {
    /// Fresh weights (PyTorch default init from `seed`; trunk BatchNorm identity).
    pub fn new(config: &CtNetConfig, seed: u64, dev: &Device) -> Result<Self> {
        config.validate()?;
        let net = CtNetNet::build(config, &mut InitSource::new(seed), dev)?;
        Ok(CtNet { config: config.clone(), net })
    }

    /// A freshly initialised network's weights with ct-net-models' key names.
    pub fn random_state_dict(config: &CtNetConfig, seed: u64) -> Result<StateDict> {
        config.validate()?;
        let mut rec = RecordingSource::new(seed);
        let _ = CtNetNet::build(config, &mut rec, &Device::flex())?;
        Ok(rec.sd)
    }

    /// Strict load from a state dict (prefix removed; BatchNorm counters dropped).
    pub fn from_state_dict(config: &CtNetConfig, mut sd: StateDict, dev: &Device, origin: &Path) -> Result<Self> {
        config.validate()?;
        strip_bn_counters(&mut sd);
        let mut src = StateDictSource::new(sd);
        let net = CtNetNet::build(config, &mut src, dev)?;
        src.finish().map_err(|m| ModelError::weights(origin, m))?;
        Ok(CtNet { config: config.clone(), net })
    }

    /// Load a `.pt`/`.pth` (any nesting / prefix) or `.safetensors` checkpoint strictly.
    pub fn load(config: &CtNetConfig, path: &Path, dev: &Device) -> Result<Self> {
        let sd = StateDict::read(path)?.select_by_anchor(CTNET_ANCHOR_KEY, path)?;
        Self::from_state_dict(config, sd, dev, path)
    }

    pub fn feature_dim(&self) -> usize {
        self.config.fc[1]
    }

    fn check(&self, dims: [usize; 5]) -> Result<()> {
        let c = &self.config;
        if dims[0] == 0 || dims[1..] != [c.n_triplets(), 3, c.size[0], c.size[1]] {
            return Err(ModelError::Invalid(format!(
                "CT-Net input must be [B>=1, {}, 3, {}, {}]; got {dims:?}",
                c.n_triplets(),
                c.size[0],
                c.size[1]
            )));
        }
        Ok(())
    }

    /// The 96-d penultimate features `[B, fc[1]]`.
    pub fn features(&self, x: Tensor<5>) -> Result<Tensor<2>> {
        self.check(x.dims())?;
        Ok(self.net.penultimate(x))
    }

    /// Logits `[B, n_outputs]` (apply a sigmoid for probabilities).
    pub fn forward(&self, x: Tensor<5>) -> Result<Tensor<2>> {
        self.check(x.dims())?;
        Ok(self.net.out.forward(self.net.penultimate(x)))
    }
}

/// Collects a CT-Net's tensors under ct-net-models' key names (the inverse of
/// [`CtNetNet::build`] from a [`ParamSource`]): PyTorch layouts (a `Linear` weight is written
/// `[out, in]`), BatchNorm running statistics included (synced: burn commits a training update
/// lazily, so `value()` alone would lag one step), no `num_batches_tracked`.
struct CtExport {
    sd: StateDict,
    err: Option<String>,
}

impl CtExport {
    fn put<const D: usize>(&mut self, key: String, t: Tensor<D>) {
        let shape = t.dims().to_vec();
        match t.into_data().convert::<f32>().try_into_vec::<f32>() {
            Ok(v) => {
                self.sd.tensors.insert(key, crate::weights::RawTensor::new(shape, v));
            }
            Err(e) => self.err = Some(format!("{key}: {e:?}")),
        }
    }
    fn conv2d(&mut self, key: &str, c: &burn::nn::conv::Conv2d) {
        self.put(format!("{key}.weight"), c.weight.val());
        if let Some(b) = &c.bias {
            self.put(format!("{key}.bias"), b.val());
        }
    }
    fn bn(&mut self, key: &str, n: &burn::nn::BatchNorm) {
        self.put(format!("{key}.weight"), n.gamma.val());
        self.put(format!("{key}.bias"), n.beta.val());
        self.put(format!("{key}.running_mean"), n.running_mean.value_sync());
        self.put(format!("{key}.running_var"), n.running_var.value_sync());
    }
    fn linear(&mut self, key: &str, l: &Linear) {
        // burn stores [in, out]; PyTorch [out, in].
        self.put(format!("{key}.weight"), l.weight.val().transpose());
        if let Some(b) = &l.bias {
            self.put(format!("{key}.bias"), b.val());
        }
    }
}

impl CtNet {
    /// All tensors as a state dict with ct-net-models' key names (what [`CtNet::load`] and
    /// [`CtNet::from_state_dict`] read back exactly).
    pub fn to_state_dict(&self) -> Result<StateDict> {
        let mut ex = CtExport { sd: StateDict::default(), err: None };
        let t = &self.net.trunk;
        ex.conv2d("features.0", &t.conv1);
        ex.bn("features.1", &t.bn1);
        for (li, stage) in t.stages.iter().enumerate() {
            for (bi, b) in stage.blocks.iter().enumerate() {
                let k = format!("features.{}.{bi}", 4 + li);
                ex.conv2d(&format!("{k}.conv1"), &b.conv1);
                ex.bn(&format!("{k}.bn1"), &b.bn1);
                ex.conv2d(&format!("{k}.conv2"), &b.conv2);
                ex.bn(&format!("{k}.bn2"), &b.bn2);
                if let (Some(c3), Some(b3)) = (&b.conv3, &b.bn3) {
                    ex.conv2d(&format!("{k}.conv3"), c3);
                    ex.bn(&format!("{k}.bn3"), b3);
                }
                if let Some(d) = &b.downsample {
                    ex.conv2d(&format!("{k}.downsample.0"), &d.conv);
                    ex.bn(&format!("{k}.downsample.1"), &d.bn);
                }
            }
        }
        for (i, c) in self.net.reducing.iter().enumerate() {
            let key = format!("reducingconvs.{}", 2 * i);
            ex.put(format!("{key}.weight"), c.weight.val());
            if let Some(b) = &c.bias {
                ex.put(format!("{key}.bias"), b.val());
            }
        }
        ex.linear("classifier.0", &self.net.fc1);
        ex.linear("classifier.3", &self.net.fc2);
        ex.linear("classifier.6", &self.net.out);
        match ex.err {
            Some(e) => Err(ModelError::Invalid(format!("CT-Net export: {e}"))),
            None => Ok(ex.sd),
        }
    }

    /// Save the weights as f32 `.safetensors` with ct-net-models' key names (the config JSON is
    /// kept in the file's metadata as `text2ct_ctnet_config`).
    pub fn save_safetensors(&self, path: &Path) -> Result<()> {
        let mut meta = std::collections::BTreeMap::new();
        meta.insert("format".to_string(), "pt".to_string());
        if let Ok(cfg) = serde_json::to_string(&self.config) {
            meta.insert("text2ct_ctnet_config".to_string(), cfg);
        }
        self.to_state_dict()?.write_safetensors(path, Some(meta))
    }
}

/// CT-Net input values for one volume: `hu` in x-fastest order with dims `(X, Y, Z)` =
/// `(size[1], size[0], n_slices)` (crop / pad first). Returns `[T, 3, H, W]` row-major: slice
/// `z` is triplet `z / 3`, channel `z % 3`, rows `y`, columns `x`; values
/// `(clip(hu, lo, hi) - lo) / (hi - lo) - mean`.
pub fn prepare_volume(cfg: &CtNetConfig, hu: &[f32], dims: [usize; 3]) -> Result<Vec<f32>> {
    let want = [cfg.size[1], cfg.size[0], cfg.n_slices];
    if dims != want || hu.len() != want.iter().product::<usize>() {
        return Err(ModelError::Invalid(format!(
            "CT-Net needs volumes of (X, Y, Z) = {want:?} voxels; got {dims:?} ({} values)",
            hu.len()
        )));
    }
    let [lo, hi] = cfg.hu_window;
    let w = hi - lo;
    // x-fastest (x + X*(y + Y*z)) is exactly row-major [z][y][x] = [T][3][H][W].
    Ok(hu.iter().map(|&v| (v.clamp(lo, hi) - lo) / w - cfg.mean).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paper_flatten_is_7200() {
        let cfg = CtNetConfig::paper();
        assert_eq!(cfg.trunk_map().unwrap(), [512, 14, 14]);
        assert_eq!(cfg.flatten_size().unwrap(), 7200);
        cfg.validate().unwrap();
    }

    #[test]
    fn fitted_small_matches_fixture_rule() {
        let cfg = CtNetConfig::fitted(24, [64, 64], [8, 8, 12, 16], 8).unwrap();
        let k: Vec<_> = cfg.reducing.iter().map(|r| (r.out, r.kernel, r.stride)).collect();
        assert_eq!(k, vec![(64, [3, 2, 2], [3, 1, 1]), (32, [3, 1, 1], [3, 1, 1]), (16, [1, 1, 1], [1, 1, 1])]);
        assert_eq!(cfg.flatten_size().unwrap(), 16);
        // Full ResNet-18 trunk on 48 slices of 64 x 64.
        let cfg = CtNetConfig::fitted(48, [64, 64], [64, 128, 256, 512], 64).unwrap();
        assert!(cfg.flatten_size().unwrap() > 0);
    }

    #[test]
    fn state_dict_round_trip_is_exact() {
        let cfg = CtNetConfig::fitted(24, [64, 64], [8, 8, 12, 16], 8).unwrap();
        let fresh = CtNet::random_state_dict(&cfg, 3).unwrap();
        let dev = Device::flex();
        let m = CtNet::from_state_dict(&cfg, fresh.clone(), &dev, Path::new("mem")).unwrap();
        let back = m.to_state_dict().unwrap();
        assert_eq!(back.tensors.keys().collect::<Vec<_>>(), fresh.tensors.keys().collect::<Vec<_>>());
        for (k, t) in &fresh.tensors {
            assert_eq!(back.tensors[k].shape, t.shape, "{k}");
            assert_eq!(back.tensors[k].data, t.data, "{k}");
        }
    }

    #[test]
    fn bad_configs_are_errors() {
        assert!(CtNetConfig::fitted(25, [64, 64], [8, 8, 8, 8], 8).is_err());
        let mut cfg = CtNetConfig::paper();
        cfg.size = [64, 64];
        assert!(cfg.validate().is_err(), "paper kernels do not fit a 2x2 trunk map");
        assert!(prepare_volume(&CtNetConfig::paper(), &[0.0; 8], [2, 2, 2]).is_err());
    }
}
