//! GroupNorm followed by SiLU in one pass over the activations, on the CPU (inference only).
//!
//! `silu(group_norm(x))` through burn's tensor operations is about ten passes over the
//! activations (mean, subtract, square, mean, divide, scale, shift, sigmoid, multiply), each
//! allocating a tensor of the input's size: at the top level of Text2CT's U-Net on its real latent
//! (64 channels × 128 × 128 × 32, 134 MB per tensor) that is over a gigabyte of memory traffic per
//! normalisation, plus the page faults of the fresh buffers. Here each group (a contiguous block of
//! `channels / groups` channels × voxels) is read twice for its mean and variance (sums in f64)
//! and once more to write the normalised, scaled, shifted and SiLU-activated output; the groups run
//! in parallel (rayon). The exponential of the SiLU is a vectorisable polynomial (Cephes' `expf`
//! range reduction and coefficients, ~1 ulp), so the compiler can use the CPU's vector units.
//!
//! Only for plain (not autodiff-tracked) contiguous f32 CPU tensors with affine parameters;
//! elsewhere [`group_norm_silu`] is exactly `silu(blocks::group_norm_forward(norm, x))`. 5D only
//! (every GroupNorm + SiLU of the VAE and the U-Net is).
//! Same statistics as burn's GroupNorm (mean, then the mean of the squared deviations); the sums
//! differ only in rounding (1e-6 relative in the tests below; the MONAI parity fixtures pass
//! through it).

use burn::nn::GroupNorm;
use burn::tensor::activation::silu;
use burn::tensor::{Tensor, TensorData};
use rayon::prelude::*;

use crate::blocks::group_norm_forward;
use crate::device::flex_tensor;

/// `silu(group_norm(x))` for a `[B, C, X, Y, Z]` tensor, fused on the CPU where it can be.
pub fn group_norm_silu(norm: &GroupNorm, x: Tensor<5>) -> Tensor<5> {
    match fused(norm, &x) {
        Some(y) => y,
        None => silu(group_norm_forward(norm, x)),
    }
}

fn fused(norm: &GroupNorm, x: &Tensor<5>) -> Option<Tensor<5>> {
    let dims = x.dims();
    if !norm.affine {
        return None;
    }
    let (b, c, g) = (dims[0], dims[1], norm.num_groups);
    if g == 0 || c % g != 0 || c != norm.num_channels {
        return None;
    }
    let gamma = flex_tensor(&norm.gamma.as_ref()?.val())?;
    let beta = flex_tensor(&norm.beta.as_ref()?.val())?;
    let xp = flex_tensor(x)?;
    let (xs, ws, bs) = (xp.as_slice::<f32>()?, gamma.as_slice::<f32>()?, beta.as_slice::<f32>()?);
    let n: usize = dims[2..].iter().product();
    if xs.len() != b * c * n || ws.len() != c || bs.len() != c || n == 0 {
        return None;
    }
    let cpg = c / g;
    let mut out = vec![0f32; xs.len()];
    let eps = norm.epsilon;
    // One job per (sample, group): a contiguous block of cpg · n values in and out.
    out.par_chunks_mut(cpg * n).zip(xs.par_chunks(cpg * n)).enumerate().for_each(|(k, (dst, src))| {
        let c0 = (k % g) * cpg;
        let count = src.len() as f64;
        let mean = lane_sum(src, |v| v) / count;
        let var = lane_sum(src, |v| (v - mean) * (v - mean)) / count;
        let inv = (1.0 / (var + eps).sqrt()) as f32;
        let mean = mean as f32;
        for j in 0..cpg {
            // y = (x - mean) · inv · gamma + beta = x · a + s
            let a = inv * ws[c0 + j];
            let s = bs[c0 + j] - mean * a;
            silu_affine(&src[j * n..(j + 1) * n], &mut dst[j * n..(j + 1) * n], a, s);
        }
    });
    Some(Tensor::from_data(TensorData::new(out, dims), &x.device()))
}

/// `Σ f(x_i)` in f64, in 8 lanes (vectorisable).
#[inline(always)]
fn lane_sum(x: &[f32], f: impl Fn(f64) -> f64) -> f64 {
    let mut acc = [0f64; 8];
    let mut chunks = x.chunks_exact(8);
    for ch in &mut chunks {
        for (a, &v) in acc.iter_mut().zip(ch) {
            *a += f(f64::from(v));
        }
    }
    acc.iter().sum::<f64>() + chunks.remainder().iter().map(|&v| f(f64::from(v))).sum::<f64>()
}

/// `dst = silu(src · a + s)`.
pub(crate) fn silu_affine(src: &[f32], dst: &mut [f32], a: f32, s: f32) {
    for (d, &v) in dst.iter_mut().zip(src) {
        let y = v * a + s;
        *d = y / (1.0 + exp_approx(-y));
    }
}

/// `exp(x)` in f32 without a library call, so loops over it vectorise: x = n·ln 2 + r with
/// |r| ≤ ln 2 / 2, a degree-6 polynomial for exp(r) (Cephes `expf`'s coefficients), and 2ⁿ put
/// into the exponent bits. Inputs are clamped to [-87.3, 88.7] (the f32 range); a NaN stays NaN.
#[inline(always)]
fn exp_approx(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = x.clamp(-87.3, 88.7);
    // floor(t) without `f32::floor`, which is a library call (no vectorising) on baseline x86-64.
    let t = x * LOG2E + 0.5;
    let ti = t as i32;
    let ni = ti - i32::from(t < ti as f32);
    let n = ni as f32;
    let r = x - n * LN2_HI - n * LN2_LO;
    let r2 = r * r;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r + 1.666_666_5e-1)
        * r
        + 0.5; // Cephes: 5.0000001201e-1, which is 0.5 in f32
    let e = p * r2 + r + 1.0;
    // n is in [-126, 128]; 2^n by the exponent bits (n + 127 in 1..=255; 255 only at the clamp's
    // top, where exp overflows anyway).
    let bits = ((ni + 127).clamp(1, 254) as u32) << 23;
    e * f32::from_bits(bits)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::module::Param;
    use burn::nn::GroupNormConfig;
    use burn::tensor::{Device, Distribution};

    #[test]
    fn exp_approx_is_accurate() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let e = (f64::from(exp_approx(x)) - f64::from(x).exp()).abs() / f64::from(x).exp();
            worst = worst.max(e);
            x += 0.0137;
        }
        assert!(worst < 5e-7, "worst relative error {worst}");
        assert!(exp_approx(f32::NAN).is_nan());
        assert_eq!(exp_approx(-1000.0), exp_approx(-87.3));
    }

    /// The fused path equals burn's ops (GroupNorm + SiLU) for 5D inputs, several group sizes,
    /// a batch of 2 and large-valued inputs; an autodiff tensor takes burn's path.
    #[test]
    fn fused_group_norm_silu_matches_burn() {
        let dev = Device::flex();
        for (c, g, dims, b) in [(8, 4, [5, 6, 7], 2), (64, 32, [16, 16, 8], 1), (6, 1, [3, 3, 3], 1)] {
            let x = Tensor::<5>::random([b, c, dims[0], dims[1], dims[2]], Distribution::Normal(3.0, 20.0), &dev);
            let mut gn = GroupNormConfig::new(g, c).with_epsilon(1e-6).init(&dev);
            let w: Vec<f32> = (0..c).map(|i| 0.5 + i as f32 * 0.1).collect();
            let bb: Vec<f32> = (0..c).map(|i| i as f32 * 0.05 - 0.1).collect();
            gn.gamma = Some(Param::from_tensor(Tensor::from_data(TensorData::new(w, [c]), &dev)));
            gn.beta = Some(Param::from_tensor(Tensor::from_data(TensorData::new(bb, [c]), &dev)));
            let fast = fused(&gn, &x).expect("the fused path applies");
            let reference = silu(group_norm_forward(&gn, x.clone()));
            let e = crate::blocks::rel_l2(reference, fast);
            assert!(e < 1e-6, "{c} channels, {g} groups: relative error {e}");
            let ad = dev.clone().autodiff();
            let xa = Tensor::<5>::from_data(x.into_data(), &ad).require_grad();
            let gna = GroupNormConfig::new(g, c).init(&ad);
            assert!(fused(&gna, &xa).is_none());
        }
    }
}
