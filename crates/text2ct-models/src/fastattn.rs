//! Softmax attention on the CPU for the U-Net's long token sequences (8,192 tokens at the
//! release's latent): the tiled, online-softmax scheme of flash attention, with the two
//! products per tile done by the `gemm` crate and the exponentials vectorised (AVX-512, chosen at
//! run time; elsewhere the scalar `f32::exp`).
//!
//! burn's CPU attention (0.22.1) runs the same scheme but one head per task over all queries
//! with a scalar `exp` per score: at 8,192 tokens and 8 heads that is 5.4·10⁸ scalar
//! exponentials per block, most of the U-Net's attention time. Here a task is a block of query
//! rows of every head (so it owns its output rows and needs no reordering of `[B, N, h·d]`),
//! each key tile's scores are one product, and the exponentials run 16 to a vector.
//!
//! Only plain f32 CPU tensors take this path ([`attention`] returns `None` otherwise, and the
//! caller uses burn's). The result equals burn's to f32 rounding (the summation order differs, and
//! the exponential is a degree-7 polynomial within a few ulp): tested against it below.

use burn::tensor::{Tensor, TensorData};
use rayon::prelude::*;

use crate::device::flex_tensor;

/// Query rows per task.
const QB: usize = 128;
/// Keys per tile (the score tile is `QB × KT` floats: 128 KiB, in L2).
const KT: usize = 256;
/// Below this many scores per head (`N · M`) burn's attention is used (it is fast there).
pub const MIN_SCORES: usize = 64 * 64;

/// Softmax attention of `q` `[B, N, h·d]` over `k`, `v` `[B, M, h·d]` with `heads` heads of `d`
/// channels (the head outermost in the last axis, as MONAI's `(l d)` split), scores scaled by
/// `scale` (> 0). Returns `[B, N, h·d]`, or `None` when the tensors are not plain f32 CPU
/// tensors, the shapes disagree or the sequence is short ([`MIN_SCORES`]).
pub fn attention(q: &Tensor<3>, k: &Tensor<3>, v: &Tensor<3>, heads: usize, scale: f32) -> Option<Tensor<3>> {
    let [b, n, hd] = q.dims();
    let [bk, m, hdk] = k.dims();
    if k.dims() != v.dims() || bk != b || hdk != hd || heads == 0 || hd % heads != 0 || !(scale > 0.0) {
        return None;
    }
    if n * m < MIN_SCORES || m == 0 || n == 0 {
        return None;
    }
    let (qp, kp, vp) = (flex_tensor(q)?, flex_tensor(k)?, flex_tensor(v)?);
    let (qs, ks, vs) = (qp.as_slice::<f32>()?, kp.as_slice::<f32>()?, vp.as_slice::<f32>()?);
    let mut out = vec![0f32; b * n * hd];
    attend(qs, ks, vs, &mut out, [b, n, m, heads, hd / heads], scale);
    Some(Tensor::from_data(TensorData::new(out, [b, n, hd]), &q.device()))
}

/// The kernel: `out[b, i, h·d + c] = Σ_j softmax_j(scale · q_i · k_j) v_j[c]` per head, on slices
/// laid out as [`attention`] says; `dims` = `[B, N, M, heads, d]`.
pub fn attend(q: &[f32], k: &[f32], v: &[f32], out: &mut [f32], dims: [usize; 5], scale: f32) {
    let [b, n, m, heads, d] = dims;
    let hd = heads * d;
    assert!(q.len() == b * n * hd && out.len() == q.len() && k.len() == b * m * hd && v.len() == k.len());
    let exp = Exp::detect();
    out.par_chunks_mut(n * hd).enumerate().for_each(|(bi, ob)| {
        let (qb, kb, vb) = (&q[bi * n * hd..(bi + 1) * n * hd], &k[bi * m * hd..(bi + 1) * m * hd], &v[bi * m * hd..]);
        ob.par_chunks_mut(QB * hd).enumerate().for_each(|(blk, orows)| {
            let r0 = blk * QB;
            let nq = orows.len() / hd;
            let mut s = vec![0f32; nq * KT.min(m)];
            let mut acc = vec![0f32; nq * d];
            let (mut mx, mut sum) = (vec![0f32; nq], vec![0f32; nq]);
            for h in 0..heads {
                acc.fill(0.0);
                mx.fill(f32::NEG_INFINITY);
                sum.fill(0.0);
                for k0 in (0..m).step_by(KT) {
                    let kt = KT.min(m - k0);
                    let st = &mut s[..nq * kt];
                    // SAFETY: every operand lies inside its slice: Q rows r0..r0+nq (row stride
                    // hd, columns h·d..h·d+d), K and V rows k0..k0+kt of this batch item, the
                    // score tile nq × kt and the accumulator nq × d, all checked by the asserts
                    // above and the loop bounds; the destinations do not alias the sources.
                    unsafe {
                        gemm::gemm(
                            nq,
                            kt,
                            d,
                            st.as_mut_ptr(),
                            1,
                            kt as isize,
                            false,
                            qb.as_ptr().add(r0 * hd + h * d),
                            1,
                            hd as isize,
                            kb.as_ptr().add(k0 * hd + h * d),
                            hd as isize,
                            1,
                            0.0,
                            1.0,
                            false,
                            false,
                            false,
                            gemm::Parallelism::None,
                        );
                    }
                    for i in 0..nq {
                        let row = &mut st[i * kt..(i + 1) * kt];
                        let new = mx[i].max(exp.max(row) * scale);
                        let corr = if mx[i] == f32::NEG_INFINITY { 0.0 } else { (mx[i] - new).exp() };
                        let tile_sum = exp.exp_row(row, scale, new);
                        sum[i] = sum[i] * corr + tile_sum;
                        mx[i] = new;
                        if corr != 1.0 {
                            acc[i * d..(i + 1) * d].iter_mut().for_each(|a| *a *= corr);
                        }
                    }
                    // SAFETY: as above; `acc` is nq × d (row stride d), the scores nq × kt.
                    unsafe {
                        gemm::gemm(
                            nq,
                            d,
                            kt,
                            acc.as_mut_ptr(),
                            1,
                            d as isize,
                            true,
                            st.as_ptr(),
                            1,
                            kt as isize,
                            vb.as_ptr().add(k0 * hd + h * d),
                            1,
                            hd as isize,
                            1.0,
                            1.0,
                            false,
                            false,
                            false,
                            gemm::Parallelism::None,
                        );
                    }
                }
                for i in 0..nq {
                    let inv = 1.0 / sum[i];
                    let dst = &mut orows[i * hd + h * d..i * hd + h * d + d];
                    dst.iter_mut().zip(&acc[i * d..(i + 1) * d]).for_each(|(o, a)| *o = a * inv);
                }
            }
        });
    });
}

/// The row kernels: AVX-512 where the CPU has it, else scalar.
#[derive(Clone, Copy)]
enum Exp {
    Scalar,
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

impl Exp {
    fn detect() -> Exp {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f") {
            return Exp::Avx512;
        }
        Exp::Scalar
    }

    /// The largest value of `row` (non-empty).
    fn max(self, row: &[f32]) -> f32 {
        match self {
            // SAFETY: the CPU has AVX-512F (detected at run time).
            #[cfg(target_arch = "x86_64")]
            Exp::Avx512 => unsafe { avx512::max(row) },
            Exp::Scalar => row.iter().copied().fold(f32::NEG_INFINITY, f32::max),
        }
    }

    /// `row[j] = exp(row[j] · scale − shift)`; returns their sum.
    fn exp_row(self, row: &mut [f32], scale: f32, shift: f32) -> f32 {
        match self {
            // SAFETY: the CPU has AVX-512F (detected at run time).
            #[cfg(target_arch = "x86_64")]
            Exp::Avx512 => unsafe { avx512::exp_row(row, scale, shift) },
            Exp::Scalar => row.iter_mut().fold(0.0, |acc, x| {
                *x = (*x * scale - shift).exp();
                acc + *x
            }),
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    /// `2^f` for `f` in [−0.5, 0.5]: the Taylor series of `e^(f ln 2)` to degree 7 (relative
    /// error below 1e-8 there, under f32 rounding).
    const C: [f32; 8] = [
        1.0,
        std::f32::consts::LN_2,
        0.240_226_5,
        0.055_504_11,
        0.009_618_129,
        0.001_333_355_8,
        0.000_154_035_3,
        0.000_015_252_734,
    ];

    /// # Safety
    /// The CPU must have AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn max(row: &[f32]) -> f32 {
        let mut m = _mm512_set1_ps(f32::NEG_INFINITY);
        let chunks = row.chunks_exact(16);
        let tail = chunks.remainder();
        for c in chunks {
            // SAFETY: `c` has 16 floats.
            m = _mm512_max_ps(m, unsafe { _mm512_loadu_ps(c.as_ptr()) });
        }
        tail.iter().copied().fold(_mm512_reduce_max_ps(m), f32::max)
    }

    /// `row[j] = exp(row[j] · scale − shift)` as `2^x`, `x = (row[j] · scale − shift) log2 e`,
    /// split into `n + f` (`n` the nearest integer): `2^f` by [`C`], times `2^n` by `scalef`
    /// (exact, and 0 for very negative `n`). Returns the sum.
    ///
    /// # Safety
    /// The CPU must have AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn exp_row(row: &mut [f32], scale: f32, shift: f32) -> f32 {
        let l2e = std::f32::consts::LOG2_E;
        let a = _mm512_set1_ps(scale * l2e);
        let b = _mm512_set1_ps(-shift * l2e);
        let c: [__m512; 8] = C.map(|v| _mm512_set1_ps(v));
        let mut acc = _mm512_setzero_ps();
        let mut chunks = row.chunks_exact_mut(16);
        for ch in &mut chunks {
            // SAFETY: `ch` has 16 floats.
            let x = _mm512_fmadd_ps(unsafe { _mm512_loadu_ps(ch.as_ptr()) }, a, b);
            // Round to nearest, exceptions suppressed.
            let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(x);
            let f = _mm512_sub_ps(x, n);
            let mut y = c[7];
            for &ck in c[..7].iter().rev() {
                y = _mm512_fmadd_ps(y, f, ck);
            }
            let e = _mm512_scalef_ps(y, n);
            // SAFETY: as the load.
            unsafe { _mm512_storeu_ps(ch.as_mut_ptr(), e) };
            acc = _mm512_add_ps(acc, e);
        }
        let mut sum = _mm512_reduce_add_ps(acc);
        for x in chunks.into_remainder() {
            *x = (*x * scale - shift).exp();
            sum += *x;
        }
        sum
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::module::attention as burn_attention;
    use burn::tensor::ops::AttentionModuleOptions;
    use burn::tensor::Device;

    fn pattern(n: usize, seed: usize) -> Vec<f32> {
        (0..n).map(|i| (((i * 2654435761 + seed * 97) % 2000) as f32 / 1000.0 - 1.0) * 1.5).collect()
    }

    fn reference(q: &Tensor<3>, k: &Tensor<3>, v: &Tensor<3>, heads: usize, scale: f32) -> Vec<f32> {
        let [b, n, hd] = q.dims();
        let m = k.dims()[1];
        let d = hd / heads;
        let split = |t: Tensor<3>, len: usize| t.reshape([b, len, heads, d]).swap_dims(1, 2);
        let opts = AttentionModuleOptions { scale: Some(scale as f64), softcap: None, is_causal: false };
        let o = burn_attention(split(q.clone(), n), split(k.clone(), m), split(v.clone(), m), None, None, opts);
        o.swap_dims(1, 2).reshape([b, n, hd]).into_data().try_to_vec::<f32>().unwrap()
    }

    #[test]
    fn equals_burns_attention() {
        let dev = Device::flex();
        // Sizes off the tiles (N, M not multiples of QB, KT), several heads and batch items,
        // and a key tile of one.
        for (i, &(b, n, m, heads, d)) in
            [(2, 300, 517, 3, 8), (1, 129, 257, 2, 32), (1, 4100, 1, 1, 16), (1, 64, 64, 4, 4)].iter().enumerate()
        {
            let t = |len, ch, s| Tensor::<3>::from_data(TensorData::new(pattern(b * len * ch, s), [b, len, ch]), &dev);
            let (q, k, v) = (t(n, heads * d, i), t(m, heads * d, i + 10), t(m, heads * d, i + 20));
            let scale = (d as f32).powf(-0.5);
            let ours = attention(&q, &k, &v, heads, scale).expect("plain CPU tensors take the fast path");
            let ours = ours.into_data().try_to_vec::<f32>().unwrap();
            let want = reference(&q, &k, &v, heads, scale);
            let (mut num, mut den) = (0f64, 0f64);
            for (a, w) in ours.iter().zip(&want) {
                num += ((a - w) as f64).powi(2);
                den += (*w as f64).powi(2);
            }
            let rel = (num / den).sqrt();
            assert!(rel < 2e-6, "case {i}: relative L2 {rel:e}");
        }
    }

    #[test]
    fn vector_exponential_matches_std() {
        let exp = Exp::detect();
        let xs: Vec<f32> = (0..1000).map(|i| -90.0 + i as f32 * 0.09).collect();
        let mut row = xs.clone();
        let sum = exp.exp_row(&mut row, 1.0, 0.0);
        let mut want = 0f64;
        for (x, e) in xs.iter().zip(&row) {
            let w = (*x as f64).exp();
            want += w;
            // The argument itself is an f32 (its rounding grows with |x|, as for any f32 exp of
            // a computed argument); softmax arguments near 0 carry the weight.
            let tol = (3e-7 + 8e-8 * x.abs() as f64) * w + 1e-38;
            assert!(((*e as f64) - w).abs() <= tol, "exp({x}) = {e}, want {w}");
        }
        assert!(((sum as f64) - want).abs() < 1e-5 * want);
        assert_eq!(exp.max(&xs), *xs.last().unwrap());
        // Far below the range: 0, not a NaN.
        let mut tiny = vec![-1e30f32; 17];
        assert_eq!(exp.exp_row(&mut tiny, 1.0, 0.0), 0.0);
    }

    #[test]
    fn short_sequences_and_odd_shapes_are_left_to_burn() {
        let dev = Device::flex();
        let t =
            |len: usize, ch: usize| Tensor::<3>::from_data(TensorData::new(pattern(len * ch, 1), [1, len, ch]), &dev);
        assert!(attention(&t(8, 4), &t(8, 4), &t(8, 4), 1, 0.5).is_none(), "short");
        assert!(attention(&t(100, 6), &t(100, 6), &t(100, 6), 4, 0.5).is_none(), "6 channels, 4 heads");
        assert!(attention(&t(100, 4), &t(100, 4), &t(100, 4), 1, 0.0).is_none(), "scale 0");
    }
}
