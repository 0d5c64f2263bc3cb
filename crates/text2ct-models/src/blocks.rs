//! Building blocks shared by the networks, and the parameter sources they are built from.
//!
//! Modules are built from a [`ParamSource`], asked for each parameter by its PyTorch (MONAI)
//! state-dict name: [`InitSource`] makes fresh PyTorch-style initial values, [`StateDictSource`]
//! takes them from a loaded state dict and records every missing or mis-shaped key, so a strict
//! load reports all problems at once.

use burn::module::{Module, Param};
use burn::nn::conv::Conv3d;
use burn::nn::{GroupNorm, PaddingConfig3d};
use burn::tensor::{Device, Tensor, TensorData};
use rand::{Rng, SeedableRng};

use crate::fusednorm::group_norm_silu;
use crate::interp::upsample_trilinear_x2;
use crate::weights::{RawTensor, StateDict};

/// What a parameter is, for initialisation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ParamKind {
    /// Convolution / linear weight or bias with the given fan-in (PyTorch default init:
    /// uniform(-1/sqrt(fan_in), 1/sqrt(fan_in))).
    Fan(usize),
    /// Normalisation scale: ones.
    Ones,
    /// Normalisation shift: zeros.
    Zeros,
}

/// Something that hands out parameter values by state-dict name.
pub trait ParamSource {
    fn take(&mut self, key: &str, shape: &[usize], kind: ParamKind) -> Vec<f32>;
}

/// Fresh parameters: PyTorch's default initialisation from a seeded ChaCha generator. Also
/// records the `(key, shape)` list it was asked for.
pub struct InitSource {
    rng: rand_chacha::ChaCha8Rng,
    pub spec: Vec<(String, Vec<usize>)>,
}

impl InitSource {
    pub fn new(seed: u64) -> Self {
        InitSource { rng: rand_chacha::ChaCha8Rng::seed_from_u64(seed), spec: Vec::new() }
    }
}

impl ParamSource for InitSource {
    fn take(&mut self, key: &str, shape: &[usize], kind: ParamKind) -> Vec<f32> {
        self.spec.push((key.to_string(), shape.to_vec()));
        let n: usize = shape.iter().product();
        match kind {
            ParamKind::Ones => vec![1.0; n],
            ParamKind::Zeros => vec![0.0; n],
            ParamKind::Fan(fan_in) => {
                let bound = 1.0 / (fan_in.max(1) as f32).sqrt();
                (0..n).map(|_| self.rng.random_range(-bound..bound)).collect()
            }
        }
    }
}

/// Parameters taken out of a state dict. Keys it was asked for but could not serve (missing or
/// wrong shape) are recorded and served as zeros; [`StateDictSource::finish`] reports them with
/// the keys nobody asked for.
pub struct StateDictSource {
    sd: StateDict,
    pub missing: Vec<String>,
    pub wrong_shape: Vec<String>,
}

impl StateDictSource {
    pub fn new(sd: StateDict) -> Self {
        StateDictSource { sd, missing: Vec::new(), wrong_shape: Vec::new() }
    }

    /// `Err(message)` naming every missing, unexpected and mis-shaped key, or `Ok(())` when the
    /// state dict matched the model exactly.
    pub fn finish(self) -> std::result::Result<(), String> {
        let unexpected: Vec<String> = self.sd.tensors.iter().map(|(k, t)| format!("{k} {:?}", t.shape)).collect();
        if self.missing.is_empty() && self.wrong_shape.is_empty() && unexpected.is_empty() {
            return Ok(());
        }
        let mut msg = format!(
            "state dict does not match the model ({} missing, {} unexpected, {} with the wrong shape)",
            self.missing.len(),
            unexpected.len(),
            self.wrong_shape.len()
        );
        for (title, list) in
            [("missing", &self.missing), ("unexpected", &unexpected), ("wrong shape", &self.wrong_shape)]
        {
            if !list.is_empty() {
                msg.push_str(&format!("\n  {title}:"));
                for item in list.iter() {
                    msg.push_str(&format!("\n    {item}"));
                }
            }
        }
        Err(msg)
    }
}

impl ParamSource for StateDictSource {
    fn take(&mut self, key: &str, shape: &[usize], _kind: ParamKind) -> Vec<f32> {
        let n: usize = shape.iter().product();
        match self.sd.tensors.remove(key) {
            None => {
                self.missing.push(format!("{key} {shape:?}"));
                vec![0.0; n]
            }
            Some(RawTensor { shape: s, data }) => {
                if s != shape {
                    self.wrong_shape.push(format!("{key}: file has {s:?}, model needs {shape:?}"));
                    vec![0.0; n]
                } else {
                    data
                }
            }
        }
    }
}

/// A parameter tensor from a source.
pub fn param<const D: usize>(
    src: &mut dyn ParamSource,
    key: &str,
    shape: [usize; D],
    kind: ParamKind,
    device: &Device,
) -> Param<Tensor<D>> {
    let data = src.take(key, &shape, kind);
    Param::from_tensor(Tensor::from_data(TensorData::new(data, shape), device))
}

/// A 3D convolution with cubic kernel `k`, stride `stride`, symmetric zero padding `pad` and a
/// bias; parameters `{key}.weight` `[cout, cin, k, k, k]` and `{key}.bias` `[cout]`.
#[allow(clippy::too_many_arguments)]
pub fn conv3d(
    src: &mut dyn ParamSource,
    key: &str,
    cin: usize,
    cout: usize,
    k: usize,
    stride: usize,
    pad: usize,
    device: &Device,
) -> Conv3d {
    let fan_in = cin * k * k * k;
    let weight = param(src, &format!("{key}.weight"), [cout, cin, k, k, k], ParamKind::Fan(fan_in), device);
    let bias = param(src, &format!("{key}.bias"), [cout], ParamKind::Fan(fan_in), device);
    Conv3d {
        weight,
        bias: Some(bias),
        stride: [stride; 3],
        kernel_size: [k; 3],
        dilation: [1; 3],
        groups: 1,
        padding: PaddingConfig3d::Explicit(pad, pad, pad),
    }
}

/// Largest im2col buffer (elements) [`conv3d_forward`] builds for its matrix-product path (64 MB).
const IM2COL_MAX: usize = 16 << 20;

/// Whether [`conv3d_forward`] multiplies matrices for batch `b`, `cin` → `cout` channels, `k`
/// kernel taps and `p` output voxels per sample: no more output voxels than output channels, and
/// a patch matrix of at most [`IM2COL_MAX`] elements.
fn matrix_path_fits(b: usize, cin: usize, cout: usize, k: usize, p: usize) -> bool {
    p > 0 && b * p <= cout && b * cin * k * p <= IM2COL_MAX
}

/// `conv.forward(x)`, computed as an im2col matrix product where that is much faster on the CPU.
///
/// burn 0.22.1's CPU (`flex`) conv3d re-orders the whole kernel on every call, single-threaded,
/// before its tiled im2col + GEMM: at the deep levels of a diffusion U-Net (512 channels on a
/// 2 × 2 × 1 latent: 7 M weights, 4 output voxels) that copy is ~50 ms for a convolution worth
/// 0.06 GFLOP, and it dominates the forward pass. When the output has no more voxels (batch
/// included) than the kernel has output channels — so that the patch matrix is no larger than
/// the kernel — this builds the patch matrix `[B, cin·k³, voxels]` from k³
/// shifted views of the zero-padded input (channel-major, kernel-offset-minor: the kernel's own
/// memory order, so the weight is used as the `[cout, cin·k³]` matrix it already is, with no copy)
/// and multiplies. Same arithmetic (sums of the same products; only their order differs), any
/// backend, differentiable; stride, dilation or groups other than 1 take burn's path, and so do
/// patch matrices over 64 MB. Only on the CPU: GPU backends have their own conv kernels.
pub fn conv3d_forward(conv: &Conv3d, x: Tensor<5>) -> Tensor<5> {
    match im2col_plan(conv, &x) {
        Some(plan) if matrix_path_fits(plan.b, plan.cin, plan.cout, plan.k, plan.p) => {
            conv3d_im2col_with(conv, x, plan)
        }
        _ => crate::directconv::conv3d_direct(conv, &x).unwrap_or_else(|| conv.forward(x)),
    }
}

/// The im2col matrix product of [`conv3d_forward`] whatever the sizes (`None` where it does not
/// apply: strides, dilation, groups, padding modes other than explicit, or not on the CPU).
/// Exposed for the `conv3d_speed` benchmark, which compares it with burn's conv3d.
pub fn conv3d_im2col(conv: &Conv3d, x: Tensor<5>) -> Option<Tensor<5>> {
    let plan = im2col_plan(conv, &x)?;
    Some(conv3d_im2col_with(conv, x, plan))
}

/// Sizes of an im2col convolution: batch, channels, taps, output grid and voxels, padding.
#[derive(Clone, Copy)]
struct Im2colPlan {
    b: usize,
    cin: usize,
    cout: usize,
    k: usize,
    p: usize,
    out: [usize; 3],
    pad: [usize; 3],
}

fn im2col_plan(conv: &Conv3d, x: &Tensor<5>) -> Option<Im2colPlan> {
    let [b, cin, d, h, w] = x.dims();
    let [cout, wcin, kd, kh, kw] = conv.weight.dims();
    let pads = match &conv.padding {
        PaddingConfig3d::Explicit(pd, ph, pw) => Some([*pd, *ph, *pw]),
        PaddingConfig3d::Valid => Some([0, 0, 0]),
        _ => None,
    };
    let simple = conv.stride == [1; 3] && conv.dilation == [1; 3] && conv.groups == 1 && wcin == cin;
    let on_cpu = x.device().inner() == Device::flex();
    let [pd, ph, pw] = pads.filter(|_| simple && on_cpu)?;
    let od = (d + 2 * pd).checked_sub(kd - 1)?;
    let oh = (h + 2 * ph).checked_sub(kh - 1)?;
    let ow = (w + 2 * pw).checked_sub(kw - 1)?;
    Some(Im2colPlan { b, cin, cout, k: kd * kh * kw, p: od * oh * ow, out: [od, oh, ow], pad: [pd, ph, pw] })
}

fn conv3d_im2col_with(conv: &Conv3d, x: Tensor<5>, plan: Im2colPlan) -> Tensor<5> {
    let Im2colPlan { b, cin, cout, k, p, out: [od, oh, ow], pad: [pd, ph, pw] } = plan;
    let [_, _, kd, kh, kw] = conv.weight.dims();
    let xp = if pd + ph + pw > 0 { x.pad([(0, 0), (0, 0), (pd, pd), (ph, ph), (pw, pw)], 0.0) } else { x };
    let mut cols = Vec::with_capacity(k);
    for a in 0..kd {
        for bb in 0..kh {
            for c in 0..kw {
                let v = xp.clone().slice([0..b, 0..cin, a..a + od, bb..bb + oh, c..c + ow]);
                cols.push(v.reshape([b, cin, 1, p]));
            }
        }
    }
    let col = Tensor::cat(cols, 2).reshape([b, cin * k, p]);
    let wm = conv.weight.val().reshape([1, cout, cin * k]).expand([b, cout, cin * k]);
    let mut y = wm.matmul(col);
    if let Some(bias) = &conv.bias {
        y = y + bias.val().reshape([1, cout, 1]);
    }
    y.reshape([b, cout, od, oh, ow])
}

/// A GroupNorm with affine parameters `{key}.weight` / `{key}.bias` (`[channels]`).
pub fn group_norm(
    src: &mut dyn ParamSource,
    key: &str,
    groups: usize,
    channels: usize,
    eps: f64,
    device: &Device,
) -> GroupNorm {
    let gamma = param(src, &format!("{key}.weight"), [channels], ParamKind::Ones, device);
    let beta = param(src, &format!("{key}.bias"), [channels], ParamKind::Zeros, device);
    GroupNorm {
        gamma: Some(gamma),
        beta: Some(beta),
        num_groups: groups,
        num_channels: channels,
        epsilon: eps,
        affine: true,
    }
}

/// The largest number of elements one reduction of [`group_norm_forward`] spans.
pub const MAX_REDUCTION: usize = 1 << 16;

/// Mean over the last axis of `[B, G, N]`, reducing at most [`MAX_REDUCTION`] elements at a time
/// (`N` split into equal chunks when it has a divisor that allows it, else zero-padded and summed).
fn staged_mean(x: Tensor<3>) -> Tensor<3> {
    let [b, g, n] = x.dims();
    if n <= MAX_REDUCTION {
        return x.mean_dim(2);
    }
    // c equal chunks of n / c (both at most MAX_REDUCTION since c >= n / MAX_REDUCTION): the mean
    // of the chunk means is the mean.
    if let Some(c) = (n.div_ceil(MAX_REDUCTION)..=MAX_REDUCTION).find(|&k| n % k == 0) {
        let m = x.reshape([b, g, c, n / c]).mean_dim(3).reshape([b, g, c]);
        return m.mean_dim(2);
    }
    let chunks = n.div_ceil(MAX_REDUCTION);
    let pad = chunks * MAX_REDUCTION - n;
    let dev = x.device();
    let x = Tensor::cat(vec![x, Tensor::zeros([b, g, pad], &dev)], 2);
    let s = x.reshape([b, g, chunks, MAX_REDUCTION]).sum_dim(3).reshape([b, g, chunks]);
    s.sum_dim(2).div_scalar(n as f64)
}

/// `GroupNorm::forward` for 5D tensors with the same arithmetic as burn's (mean, then the mean of
/// the squared deviations, `(x - mean) / sqrt(var + eps)`, affine), but with every reduction
/// over at most 65 536 elements. burn 0.22.1's `mean_dim` over one long axis (more than 2^18
/// elements: a group of a 32-channel 48x48x32 map) gave wrong statistics on the wgpu backend
/// (`text2ct device-check`; relative error 6e-2 there, 4e-1 at 64x64x32), which spoiled VAE decodes
/// and would spoil the released U-Net at full size. On the CPU the result equals burn's to rounding.
pub fn group_norm_forward(norm: &GroupNorm, x: Tensor<5>) -> Tensor<5> {
    let shape = x.dims();
    let (b, c, g) = (shape[0], shape[1], norm.num_groups);
    let n = shape[2..].iter().product::<usize>() * c / g;
    let xg = x.reshape([b, g, n]);
    let mean = staged_mean(xg.clone());
    let d = xg.sub(mean);
    let var = staged_mean(d.clone().square());
    let y = d.div(var.add_scalar(norm.epsilon).sqrt()).reshape(shape);
    match (&norm.gamma, &norm.beta) {
        (Some(w), Some(bias)) if norm.affine => {
            y.mul(w.val().reshape([1, c, 1, 1, 1])).add(bias.val().reshape([1, c, 1, 1, 1]))
        }
        _ => y,
    }
}

/// MONAI `MaisiResBlock`: `h = conv1(silu(norm1(x)))`, `h = conv2(silu(norm2(h)))`,
/// `out = nin_shortcut(x) + h` (the 1x1x1 shortcut only when the channel count changes).
#[derive(Module, Debug)]
pub struct ResBlock {
    pub norm1: GroupNorm,
    pub conv1: Conv3d,
    pub norm2: GroupNorm,
    pub conv2: Conv3d,
    pub nin_shortcut: Option<Conv3d>,
}

impl ResBlock {
    /// Keys under `key`: `norm1.*`, `conv1.conv.conv.*`, `norm2.*`, `conv2.conv.conv.*`,
    /// `nin_shortcut.conv.conv.*`.
    pub fn build(
        src: &mut dyn ParamSource,
        key: &str,
        cin: usize,
        cout: usize,
        groups: usize,
        eps: f64,
        device: &Device,
    ) -> Self {
        let norm1 = group_norm(src, &format!("{key}.norm1"), groups, cin, eps, device);
        let conv1 = conv3d(src, &format!("{key}.conv1.conv.conv"), cin, cout, 3, 1, 1, device);
        let norm2 = group_norm(src, &format!("{key}.norm2"), groups, cout, eps, device);
        let conv2 = conv3d(src, &format!("{key}.conv2.conv.conv"), cout, cout, 3, 1, 1, device);
        let nin_shortcut =
            (cin != cout).then(|| conv3d(src, &format!("{key}.nin_shortcut.conv.conv"), cin, cout, 1, 1, 0, device));
        ResBlock { norm1, conv1, norm2, conv2, nin_shortcut }
    }

    pub fn forward(&self, x: Tensor<5>) -> Tensor<5> {
        let h = conv3d_forward(&self.conv1, group_norm_silu(&self.norm1, x.clone()));
        let h = conv3d_forward(&self.conv2, group_norm_silu(&self.norm2, h));
        let skip = match &self.nin_shortcut {
            Some(c) => c.forward(x),
            None => x,
        };
        skip + h
    }
}

/// MONAI `MaisiDownsample`: zero-pad one voxel at the END of each spatial axis, then a 3x3x3
/// convolution with stride 2 and no padding. Keys `{key}.conv.conv.conv.*`.
#[derive(Module, Debug)]
pub struct Downsample {
    pub conv: Conv3d,
}

impl Downsample {
    pub fn build(src: &mut dyn ParamSource, key: &str, channels: usize, device: &Device) -> Self {
        Downsample { conv: conv3d(src, &format!("{key}.conv.conv.conv"), channels, channels, 3, 2, 0, device) }
    }

    pub fn forward(&self, x: Tensor<5>) -> Tensor<5> {
        let x = x.pad([(0, 1), (0, 1), (0, 1)], 0.0f32);
        self.conv.forward(x)
    }
}

/// MONAI `MaisiUpsample` (use_convtranspose=False): trilinear x2 (align_corners=False), then a
/// 3x3x3 convolution. Keys `{key}.conv.conv.conv.*`.
#[derive(Module, Debug)]
pub struct Upsample {
    pub conv: Conv3d,
}

impl Upsample {
    pub fn build(src: &mut dyn ParamSource, key: &str, channels: usize, device: &Device) -> Self {
        Upsample { conv: conv3d(src, &format!("{key}.conv.conv.conv"), channels, channels, 3, 1, 1, device) }
    }

    pub fn forward(&self, x: Tensor<5>) -> Tensor<5> {
        conv3d_forward(&self.conv, upsample_trilinear_x2(x))
    }
}

/// The tests' measure of agreement: ‖a − b‖ / ‖a‖ over all elements (same shapes).
#[cfg(test)]
pub(crate) fn rel_l2(a: Tensor<5>, b: Tensor<5>) -> f32 {
    let a = a.into_data().try_into_vec::<f32>().unwrap();
    let b = b.into_data().try_into_vec::<f32>().unwrap();
    assert_eq!(a.len(), b.len());
    let (mut n, mut d) = (0f64, 0f64);
    for (x, y) in a.iter().zip(&b) {
        n += f64::from(x - y).powi(2);
        d += f64::from(*x).powi(2);
    }
    (n / d).sqrt() as f32
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::GroupNormConfig;
    use burn::tensor::Distribution;

    /// The staged GroupNorm equals burn's on the CPU on all three paths: one reduction
    /// (group of 4096), equal chunks (2 x 36864 = 73728 = 2^13 * 9), and zero padding (a prime-ish
    /// group of 3 x 65537 elements has no divisor that gives chunks of at most 65536).
    #[test]
    fn staged_group_norm_matches_burn() {
        let dev = Device::flex();
        for (c, g, dims) in [(8, 4, [8, 8, 8]), (8, 4, [48, 48, 16]), (3, 1, [65537, 1, 1])] {
            let x = Tensor::<5>::random([2, c, dims[0], dims[1], dims[2]], Distribution::Normal(0.5, 2.0), &dev);
            let mut gn = GroupNormConfig::new(g, c).with_epsilon(1e-6).init(&dev);
            let w: Vec<f32> = (0..c).map(|i| 0.5 + i as f32 * 0.1).collect();
            let b: Vec<f32> = (0..c).map(|i| i as f32 * 0.05 - 0.1).collect();
            gn.gamma = Some(Param::from_tensor(Tensor::from_data(TensorData::new(w, [c]), &dev)));
            gn.beta = Some(Param::from_tensor(Tensor::from_data(TensorData::new(b, [c]), &dev)));
            let e = rel_l2(gn.forward(x.clone()), group_norm_forward(&gn, x));
            assert!(e < 1e-5, "{c} channels, {g} groups, {dims:?}: relative error {e}");
        }
    }

    /// The matrix-product path equals burn's conv3d (3³ and 1³ kernels, padding 1 and 0,
    /// batch 1 and 2, non-cubic inputs), gradients included; it is chosen only for small outputs.
    #[test]
    fn conv3d_matrix_path_matches_burn() {
        let dev = Device::flex();
        let ad = dev.clone().autodiff();
        // (cin, cout, k, pad, batch, dims): all but the fifth take the matrix path (b·voxels <= cout).
        let cases = [
            (12, 40, 3, 1, 1, [4, 3, 2]),
            (16, 24, 3, 1, 2, [2, 3, 2]),
            (8, 16, 1, 0, 2, [2, 2, 2]),
            (6, 20, 3, 0, 1, [4, 4, 3]),
            (4, 8, 3, 1, 1, [6, 5, 4]),
            // Thin inputs, where some kernel planes read only padding; a padding wider than the
            // kernel, where some outputs see no data at all.
            (10, 32, 3, 1, 1, [2, 2, 1]),
            (10, 32, 3, 1, 2, [1, 3, 1]),
            (3, 128, 3, 3, 1, [1, 1, 1]),
        ];
        for (i, &(cin, cout, k, pad, b, dims)) in cases.iter().enumerate() {
            let out: usize = dims.iter().map(|n| n + 2 * pad + 1 - k).product();
            assert_eq!(matrix_path_fits(b, cin, cout, k * k * k, out), i != 4, "case {i}");
            let conv = conv3d(&mut InitSource::new(3), "c", cin, cout, k, 1, pad, &dev);
            let x = Tensor::<5>::random([b, cin, dims[0], dims[1], dims[2]], Distribution::Normal(0.0, 1.0), &dev);
            let e = rel_l2(conv.forward(x.clone()), conv3d_forward(&conv, x.clone()));
            assert!(e < 1e-6, "{cin}->{cout} k{k} p{pad} b{b} {dims:?}: relative error {e}");
            // Gradients with respect to input, weight and bias agree too.
            let conv_ad = conv3d(&mut InitSource::new(3), "c", cin, cout, k, 1, pad, &ad);
            let xa = Tensor::<5>::from_data(x.clone().into_data(), &ad).require_grad();
            let g1 = (conv_ad.forward(xa.clone()).powf_scalar(2.0)).sum().backward();
            let xb = Tensor::<5>::from_data(x.into_data(), &ad).require_grad();
            let g2 = (conv3d_forward(&conv_ad, xb.clone()).powf_scalar(2.0)).sum().backward();
            let (dx1, dx2) = (xa.grad(&g1).unwrap(), xb.grad(&g2).unwrap());
            assert!(rel_l2(dx1, dx2) < 1e-5);
            let (dw1, dw2) = (conv_ad.weight.grad(&g1).unwrap(), conv_ad.weight.grad(&g2).unwrap());
            assert!(rel_l2(dw1, dw2) < 1e-5);
        }
        assert!(!matrix_path_fits(1, 64, 64, 27, 16 * 16 * 8)); // a large output: burn's tiled path
        assert!(!matrix_path_fits(1, 4096, 4096, 27, 4096)); // a patch matrix over 64 MB
    }
}
