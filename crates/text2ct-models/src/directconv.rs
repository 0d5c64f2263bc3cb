//! A direct 3 × 3 × 3 convolution for the CPU, register-tiled with AVX-512 or AVX2 (inference only).
//!
//! burn 0.22.1's CPU conv3d builds an im2col patch matrix in 512-voxel tiles and hands it to the
//! `gemm` crate: 80–130 GFLOP/s on the large convolutions of the VAE and of the U-Net's top level
//! on the 2-core development machine, where oneDNN's direct convolution reaches 220–275
//! (docs/notes/performance-log.md). This is the direct convolution oneDNN does, written plainly:
//!
//! - the input is copied once into a zero-padded, channel-last layout (`[D+2][H+2][W+2][cin]`), so
//!   every kernel tap is a fixed offset and a voxel's channels are contiguous;
//! - the weight is copied into blocks of 32 (or 16) output channels, tap-major
//!   (`[block][27][cin][32]`), so one tap and one input channel give one or two vectors of outputs;
//! - a micro-kernel keeps up to 12 voxels × 32 output channels in 24 vector registers, and for every
//!   tap and input channel broadcasts one input value per voxel and multiplies it with the weight
//!   vectors (`vfmadd231ps`): 24 multiply-adds per 2 weight loads and 12 broadcasts;
//! - the outputs are written straight into the `[cout, D, H, W]` result with the bias added, in
//!   parallel over (output-channel block, depth plane) with rayon (burn's CPU pool).
//!
//! It is used only where it applies and pays: stride 1, dilation 1, one group, a 3 × 3 × 3 kernel
//! with padding 1, output channels a multiple of 16, more output voxels than output channels (the
//! small deep-level convolutions take `blocks::conv3d_forward`'s matrix path), a plain (not
//! autodiff-tracked) f32 CPU tensor, and a CPU with AVX-512F or AVX2 + FMA (chosen at run time, see
//! [`Isa`]; elsewhere burn's convolution runs). The sums are the same products as burn's in
//! another order: results agree to ~1e-7 relative (tests below; the MONAI parity fixtures pass
//! through it).

use burn::nn::conv::Conv3d;
use burn::nn::PaddingConfig3d;
use burn::tensor::{Tensor, TensorData};

use crate::device::flex_tensor;

/// The vector instructions a micro-kernel uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Isa {
    /// AVX-512F: 12 voxels × 32 output channels per tile (24 of 32 vector registers).
    Avx512,
    /// AVX2 + FMA: 6 voxels × 16 output channels per tile (12 of 16 vector registers).
    Avx2,
}

impl Isa {
    /// Output channels per block (two vectors).
    fn block(self) -> usize {
        match self {
            Isa::Avx512 => 32,
            Isa::Avx2 => 16,
        }
    }

    /// Voxels per tile.
    fn max_nv(self) -> usize {
        match self {
            Isa::Avx512 => 12,
            Isa::Avx2 => 6,
        }
    }

    /// Whether this CPU has it (detected at run time).
    pub fn supported(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            match self {
                Isa::Avx512 => std::is_x86_feature_detected!("avx512f"),
                Isa::Avx2 => std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma"),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    }
}

/// The best micro-kernel this CPU runs (AVX-512F, else AVX2 + FMA), or `None`.
pub fn best_isa() -> Option<Isa> {
    [Isa::Avx512, Isa::Avx2].into_iter().find(|i| i.supported())
}

/// What a direct convolution computes with: f32 products with one of the f32 micro-kernels, or
/// bf16 products summed in f32 (AVX512-BF16, [`crate::bf16conv`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kernel {
    F32(Isa),
    Bf16,
}

impl Kernel {
    /// Output channels per block.
    fn block(self) -> usize {
        match self {
            Kernel::F32(isa) => isa.block(),
            Kernel::Bf16 => crate::bf16conv::BLOCK,
        }
    }

    /// Voxels per tile.
    fn max_nv(self) -> usize {
        match self {
            Kernel::F32(isa) => isa.max_nv(),
            Kernel::Bf16 => crate::bf16conv::NV,
        }
    }

    /// Whether this CPU runs it.
    pub fn supported(self) -> bool {
        match self {
            Kernel::F32(isa) => isa.supported(),
            Kernel::Bf16 => crate::bf16conv::supported(),
        }
    }

    /// Values per voxel in the padded input layout: `cin`, or `cin` rounded up to even for bf16
    /// (channels go in pairs).
    fn channels(self, cin: usize) -> usize {
        match self {
            Kernel::F32(_) => cin,
            Kernel::Bf16 => cin.next_multiple_of(2),
        }
    }
}

/// A weight packed for one [`Kernel`] (see [`pack_weight`]).
#[derive(Debug)]
pub enum PackedWeight {
    F32(Vec<f32>),
    Bf16(Vec<u16>),
}

impl PackedWeight {
    /// Bytes held.
    pub fn bytes(&self) -> usize {
        match self {
            PackedWeight::F32(v) => 4 * v.len(),
            PackedWeight::Bf16(v) => 2 * v.len(),
        }
    }
}

/// `conv.forward(x)` by the direct kernel, or `None` where it does not apply (see the module
/// documentation) — the caller then takes another path. The kernel and the packed-weight cache
/// are those of the model whose forward pass is running ([`crate::precision::ConvKernels::enter`]);
/// outside one, f32 with the best ISA, packing the weight on every call.
pub fn conv3d_direct(conv: &Conv3d, x: &Tensor<5>) -> Option<Tensor<5>> {
    match crate::precision::active() {
        Some(k) => {
            let kernel = k.kernel()?;
            conv3d_direct_impl(conv, x, kernel, Some(&k))
        }
        None => conv3d_direct_impl(conv, x, Kernel::F32(best_isa()?), None),
    }
}

/// [`conv3d_direct`] with a given kernel and no cache (`None` also where the CPU lacks it): for the
/// `conv3d_speed` benchmark, which compares them.
pub fn conv3d_direct_with(conv: &Conv3d, x: &Tensor<5>, kernel: Kernel) -> Option<Tensor<5>> {
    conv3d_direct_impl(conv, x, kernel, None)
}

fn conv3d_direct_impl(
    conv: &Conv3d,
    x: &Tensor<5>,
    kernel: Kernel,
    cache: Option<&crate::precision::ConvKernels>,
) -> Option<Tensor<5>> {
    let [b, cin, d, h, w] = x.dims();
    let [cout, wcin, kd, kh, kw] = conv.weight.dims();
    let shape_ok = [kd, kh, kw] == [3; 3]
        && matches!(conv.padding, PaddingConfig3d::Explicit(1, 1, 1))
        && conv.stride == [1; 3]
        && conv.dilation == [1; 3]
        && conv.groups == 1
        && wcin == cin
        && cout % 16 == 0
        && cin > 0
        && d * h * w > cout;
    if !shape_ok || !kernel.supported() {
        return None;
    }
    let xp = flex_tensor(x)?;
    let wp = flex_tensor(&conv.weight.val())?;
    let bias = match &conv.bias {
        Some(bias) => Some(flex_tensor(&bias.val())?),
        None => None,
    };
    let xs = xp.as_slice::<f32>()?;
    let ws = wp.as_slice::<f32>()?;
    let bs = match &bias {
        Some(p) => Some(p.as_slice::<f32>()?),
        None => None,
    };
    let sample = cin * d * h * w;
    let mut out = Vec::with_capacity(b * cout * d * h * w);
    let pack = || pack_weight(ws, cout, cin, kernel);
    let wt = match cache {
        Some(c) => c.packed(conv.weight.id, kernel, &wp, pack),
        None => std::sync::Arc::new(pack()),
    };
    for i in 0..b {
        let y = conv3_same(&xs[i * sample..(i + 1) * sample], &wt, bs, cin, cout, [d, h, w], kernel);
        out.extend_from_slice(&y);
    }
    Some(Tensor::from_data(TensorData::new(out, [b, cout, d, h, w]), &x.device()))
}

/// Output-channel blocks `(first, width)`: the kernel's block (64 for bf16, 32 for AVX-512, 16 for
/// AVX2) while they last, then one block of the rest (a multiple of 16, as `cout` is).
fn blocks(cout: usize, kernel: Kernel) -> Vec<(usize, usize)> {
    let full = kernel.block();
    let mut v: Vec<(usize, usize)> = (0..cout / full).map(|k| (k * full, full)).collect();
    let tail = cout % full;
    if tail > 0 {
        v.push((cout - tail, tail));
    }
    v
}

/// The weight `[cout, cin, 3, 3, 3]` packed for `kernel`: per output-channel block, f32
/// `[27][cin][width]`, or bf16 `[27][cin / 2][width][2]` ([`crate::bf16conv::pack_weight`]).
pub fn pack_weight(w: &[f32], cout: usize, cin: usize, kernel: Kernel) -> PackedWeight {
    let bl = blocks(cout, kernel);
    match kernel {
        Kernel::F32(_) => PackedWeight::F32(pack_weight_f32(w, cout, cin, &bl)),
        Kernel::Bf16 => PackedWeight::Bf16(crate::bf16conv::pack_weight(w, cout, cin, &bl)),
    }
}

/// The weight `[cout, cin, 27]` re-ordered per output-channel block into `[27][cin][width]`,
/// blocks one after the other (block `(o0, width)` starts at `o0 · 27 · cin`).
fn pack_weight_f32(w: &[f32], cout: usize, cin: usize, bl: &[(usize, usize)]) -> Vec<f32> {
    use rayon::prelude::*;
    let mut wt = vec![0f32; cout * cin * 27];
    // Each block's slice of the packed weight is disjoint: fill them in parallel.
    let mut parts: Vec<&mut [f32]> = Vec::with_capacity(bl.len());
    let mut rest: &mut [f32] = &mut wt;
    for &(_, width) in bl {
        let (head, tail) = rest.split_at_mut(width * cin * 27);
        parts.push(head);
        rest = tail;
    }
    parts.into_par_iter().zip(bl.par_iter()).for_each(|(dst, &(o0, width))| {
        for j in 0..width {
            let src = &w[(o0 + j) * cin * 27..(o0 + j + 1) * cin * 27];
            for ci in 0..cin {
                for t in 0..27 {
                    dst[(t * cin + ci) * width + j] = src[ci * 27 + t];
                }
            }
        }
    });
    wt
}

/// A raw output pointer shared by the parallel jobs, each of which writes a disjoint set of
/// elements (its own output channels of its own depth plane).
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: the jobs of `run_tiles` write disjoint elements and the buffer outlives them.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// Element `i` (a method, so that closures capture the whole `Send` wrapper).
    ///
    /// # Safety
    /// `i` must lie inside the buffer.
    unsafe fn at(self, i: usize) -> *mut f32 {
        self.0.add(i)
    }
}

/// `x` `[cin, D, H, W]` copied into the zero-padded, channel-last layout `[D+2][H+2][W+2][cp]`
/// (`cp >= cin`; the channels past `cin` stay zero), each value converted by `conv`; filled plane
/// by plane in parallel.
fn padded_channel_last<T: Copy + Default + Send + Sync>(
    x: &[f32],
    cin: usize,
    cp: usize,
    dims: [usize; 3],
    conv: impl Fn(f32) -> T + Sync,
) -> Vec<T> {
    use rayon::prelude::*;
    let [d, h, w] = dims;
    let wp = w + 2;
    let plane = (h + 2) * wp * cp;
    let mut xs = vec![T::default(); (d + 2) * plane];
    xs[plane..(d + 1) * plane].par_chunks_mut(plane).enumerate().for_each(|(a, dst)| {
        for bb in 0..h {
            let row = &mut dst[((bb + 1) * wp + 1) * cp..][..w * cp];
            for c in 0..cin {
                let src = &x[((c * d + a) * h + bb) * w..][..w];
                for (e, &v) in src.iter().enumerate() {
                    row[e * cp + c] = conv(v);
                }
            }
        }
    });
    xs
}

/// One sample: `x` `[cin, D, H, W]` → `[cout, D, H, W]`, padding 1, with the weight packed for
/// `kernel`.
fn conv3_same(
    x: &[f32],
    wt: &PackedWeight,
    bias: Option<&[f32]>,
    cin: usize,
    cout: usize,
    dims: [usize; 3],
    kernel: Kernel,
) -> Vec<f32> {
    let cp = kernel.channels(cin);
    match (kernel, wt) {
        (Kernel::F32(isa), PackedWeight::F32(w)) => {
            let xs = padded_channel_last(x, cin, cp, dims, |v| v);
            run_tiles(cp, cout, dims, bias, kernel, &|t, o0, acc| {
                f32_kernel(t, &xs, &w[o0 * 27 * cp..(o0 + t.width) * 27 * cp], acc, isa)
            })
        }
        (Kernel::Bf16, PackedWeight::Bf16(w)) => {
            let xs = padded_channel_last(x, cin, cp, dims, crate::bf16conv::to_bf16);
            run_tiles(cp, cout, dims, bias, kernel, &|t, o0, acc| {
                crate::bf16conv::kernel(t, &xs, &w[o0 * 27 * cp..(o0 + t.width) * 27 * cp], acc)
            })
        }
        _ => unreachable!("a weight packed for another kernel"),
    }
}

/// The tiles of one sample, in parallel over (output-channel block, depth plane): `tile(t, o0, acc)`
/// computes tile `t` of the block starting at output channel `o0` into `acc` (`[nv][width]`);
/// the results are written into the `[cout, D, H, W]` output with the bias added. `cp`: values per
/// voxel of the padded input.
#[allow(clippy::type_complexity)]
fn run_tiles(
    cp: usize,
    cout: usize,
    dims: [usize; 3],
    bias: Option<&[f32]>,
    kernel: Kernel,
    tile: &(dyn Fn(&Tile, usize, &mut [f32; MAX_NV * 32]) + Sync),
) -> Vec<f32> {
    use rayon::prelude::*;
    let [d, h, w] = dims;
    let (hp, wp) = (h + 2, w + 2);
    let vox = d * h * w;
    let mut out = vec![0f32; cout * vox];
    let ptr = OutPtr(out.as_mut_ptr());
    let bl = blocks(cout, kernel);
    let jobs: Vec<(usize, usize, usize)> =
        bl.iter().flat_map(|&(o0, width)| (0..d).map(move |a| (o0, width, a))).collect();
    jobs.into_par_iter().for_each(|(o0, width, a)| {
        for bb in 0..h {
            let mut e0 = 0;
            while e0 < w {
                let nv = (w - e0).min(kernel.max_nv());
                let t = Tile { a, b: bb, e0, nv, cin: cp, hp, wp, width };
                let mut acc = [0f32; MAX_NV * 32];
                tile(&t, o0, &mut acc);
                let base = (a * h + bb) * w + e0;
                for j in 0..width {
                    let add = bias.map_or(0.0, |b| b[o0 + j]);
                    for v in 0..nv {
                        // SAFETY: (o0 + j, a, bb, e0 + v) lies inside `out` and belongs to this
                        // job's channel block and plane only.
                        unsafe { *ptr.at((o0 + j) * vox + base + v) = acc[v * width + j] + add };
                    }
                }
                e0 += nv;
            }
        }
    });
    out
}

/// The most voxels of any micro-kernel's tile (AVX-512: 12 × 2 accumulator vectors + 2 weight
/// vectors ≤ 32 registers).
pub(crate) const MAX_NV: usize = 12;

/// Where one micro-kernel tile is: plane `a`, row `b`, voxels `e0 .. e0 + nv` of the output, and
/// the sizes the offsets need (`cin`: values per voxel of the padded input; `width`: output
/// channels of the block).
pub(crate) struct Tile {
    pub(crate) a: usize,
    pub(crate) b: usize,
    pub(crate) e0: usize,
    pub(crate) nv: usize,
    pub(crate) cin: usize,
    pub(crate) hp: usize,
    pub(crate) wp: usize,
    pub(crate) width: usize,
}

/// Computes one tile into `acc` (`[nv][width]`) with `isa`'s f32 micro-kernel.
fn f32_kernel(t: &Tile, xs: &[f32], wblk: &[f32], acc: &mut [f32; MAX_NV * 32], isa: Isa) {
    // The last voxel read: plane a + 2, row b + 2, column e0 + nv + 1 (its channels up to cin - 1).
    let last = ((t.a + 2) * t.hp + t.b + 2) * t.wp + t.e0 + t.nv + 1;
    assert!((last + 1) * t.cin <= xs.len() && wblk.len() == 27 * t.cin * t.width && t.nv <= isa.max_nv());
    assert!(isa.supported(), "the {isa:?} micro-kernel on a CPU without it");
    #[cfg(target_arch = "x86_64")]
    {
        macro_rules! dispatch {
            ($($n:literal)*) => {
                // SAFETY: the CPU has the ISA and every offset read lies inside `xs` and `wblk`
                // (both asserted above).
                match (isa, t.nv, t.width) {
                    $((Isa::Avx512, $n, 32) => unsafe { avx512::tile::<$n, 2>(t, xs, wblk, acc) },
                      (Isa::Avx512, $n, 16) => unsafe { avx512::tile::<$n, 1>(t, xs, wblk, acc) },)*
                    (Isa::Avx2, 1, 16) => unsafe { avx2::tile::<1>(t, xs, wblk, acc) },
                    (Isa::Avx2, 2, 16) => unsafe { avx2::tile::<2>(t, xs, wblk, acc) },
                    (Isa::Avx2, 3, 16) => unsafe { avx2::tile::<3>(t, xs, wblk, acc) },
                    (Isa::Avx2, 4, 16) => unsafe { avx2::tile::<4>(t, xs, wblk, acc) },
                    (Isa::Avx2, 5, 16) => unsafe { avx2::tile::<5>(t, xs, wblk, acc) },
                    (Isa::Avx2, 6, 16) => unsafe { avx2::tile::<6>(t, xs, wblk, acc) },
                    _ => unreachable!("tiles are 1..=12 (AVX-512) or 1..=6 (AVX2) voxels of 32 or 16 channels"),
                }
            };
        }
        dispatch!(1 2 3 4 5 6 7 8 9 10 11 12)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (xs, wblk, acc, isa);
        unreachable!("conv3d_direct returns None off x86-64")
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{Tile, MAX_NV};
    use std::arch::x86_64::*;

    /// `NV` voxels × `CB` vectors of 16 output channels. Safety: the caller checked that the CPU
    /// has AVX-512F and that every offset read lies inside `xs` and `wblk` (`kernel`'s assert).
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn tile<const NV: usize, const CB: usize>(
        t: &Tile,
        xs: &[f32],
        wblk: &[f32],
        acc_out: &mut [f32; MAX_NV * 32],
    ) {
        let mut acc = [[_mm512_setzero_ps(); CB]; NV];
        let (cin, width) = (t.cin, t.width);
        let xp = xs.as_ptr();
        let wp = wblk.as_ptr();
        for tap in 0..27 {
            let (ka, kb, kc) = (tap / 9, (tap / 3) % 3, tap % 3);
            let base = (((t.a + ka) * t.hp + t.b + kb) * t.wp + t.e0 + kc) * cin;
            let wt = wp.add(tap * cin * width);
            for ci in 0..cin {
                let mut wv = [_mm512_setzero_ps(); CB];
                for (k, v) in wv.iter_mut().enumerate() {
                    *v = _mm512_loadu_ps(wt.add(ci * width + 16 * k));
                }
                for (v, a) in acc.iter_mut().enumerate() {
                    let xb = _mm512_set1_ps(*xp.add(base + v * cin + ci));
                    for k in 0..CB {
                        a[k] = _mm512_fmadd_ps(xb, wv[k], a[k]);
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

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{Tile, MAX_NV};
    use std::arch::x86_64::*;

    /// `NV` voxels × 16 output channels (two vectors of 8). Safety: as `avx512::tile`, with AVX2
    /// and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn tile<const NV: usize>(t: &Tile, xs: &[f32], wblk: &[f32], acc_out: &mut [f32; MAX_NV * 32]) {
        let mut acc = [[_mm256_setzero_ps(); 2]; NV];
        let cin = t.cin;
        let xp = xs.as_ptr();
        let wp = wblk.as_ptr();
        for tap in 0..27 {
            let (ka, kb, kc) = (tap / 9, (tap / 3) % 3, tap % 3);
            let base = (((t.a + ka) * t.hp + t.b + kb) * t.wp + t.e0 + kc) * cin;
            let wt = wp.add(tap * cin * 16);
            for ci in 0..cin {
                let w0 = _mm256_loadu_ps(wt.add(ci * 16));
                let w1 = _mm256_loadu_ps(wt.add(ci * 16 + 8));
                for (v, a) in acc.iter_mut().enumerate() {
                    let xb = _mm256_set1_ps(*xp.add(base + v * cin + ci));
                    a[0] = _mm256_fmadd_ps(xb, w0, a[0]);
                    a[1] = _mm256_fmadd_ps(xb, w1, a[1]);
                }
            }
        }
        for (v, a) in acc.iter().enumerate() {
            _mm256_storeu_ps(acc_out.as_mut_ptr().add(v * 16), a[0]);
            _mm256_storeu_ps(acc_out.as_mut_ptr().add(v * 16 + 8), a[1]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blocks::{conv3d, rel_l2, InitSource};
    use burn::tensor::{Device, Distribution};

    /// Both micro-kernels (each where the CPU has it) equal burn's conv3d: 16- and 32-wide
    /// channel blocks (48 = 32 + 16), rows shorter and longer than a tile and not a multiple of
    /// it, one input channel, non-cubic volumes, with and without bias; and `conv3d_direct`
    /// (the best ISA, batch 2) too.
    #[test]
    fn direct_conv_matches_burn() {
        let dev = Device::flex();
        let cases = [(5, 32, [6, 5, 4]), (8, 48, [4, 7, 13]), (1, 16, [3, 9, 25]), (24, 64, [8, 8, 8])];
        for isa in [Isa::Avx512, Isa::Avx2] {
            if !isa.supported() {
                eprintln!("this CPU lacks {isa:?}: its micro-kernel is not tested here");
                continue;
            }
            for (i, &(cin, cout, dims)) in cases.iter().enumerate() {
                let mut conv = conv3d(&mut InitSource::new(7), "c", cin, cout, 3, 1, 1, &dev);
                if i == 1 {
                    conv.bias = None;
                }
                let x = Tensor::<5>::random([1, cin, dims[0], dims[1], dims[2]], Distribution::Normal(0.0, 1.0), &dev);
                let xs = x.clone().into_data().try_into_vec::<f32>().unwrap();
                let ws = conv.weight.val().into_data().try_into_vec::<f32>().unwrap();
                let bs = conv.bias.as_ref().map(|b| b.val().into_data().try_into_vec::<f32>().unwrap());
                let wt = pack_weight(&ws, cout, cin, Kernel::F32(isa));
                let y = conv3_same(&xs, &wt, bs.as_deref(), cin, cout, dims, Kernel::F32(isa));
                let y = Tensor::<5>::from_data(TensorData::new(y, [1, cout, dims[0], dims[1], dims[2]]), &dev);
                let e = rel_l2(conv.forward(x), y);
                assert!(e < 1e-6, "{isa:?} {cin}->{cout} {dims:?}: relative error {e}");
            }
        }
        if best_isa().is_none() {
            return;
        }
        let conv = conv3d(&mut InitSource::new(8), "c", 6, 32, 3, 1, 1, &dev);
        let x = Tensor::<5>::random([2, 6, 5, 6, 7], Distribution::Normal(0.0, 1.0), &dev);
        let y = conv3d_direct(&conv, &x).expect("the direct path applies");
        let e = rel_l2(conv.forward(x), y);
        assert!(e < 1e-6, "conv3d_direct, batch 2: relative error {e}");
    }

    /// `x` with every value rounded to bf16 (and back to f32).
    fn rounded(x: Tensor<5>) -> Tensor<5> {
        let dims = x.dims();
        let v: Vec<f32> = x
            .into_data()
            .try_into_vec::<f32>()
            .unwrap()
            .into_iter()
            .map(|v| half::bf16::from_bits(crate::bf16conv::to_bf16(v)).to_f32())
            .collect();
        Tensor::from_data(TensorData::new(v, dims), &Device::flex())
    }

    /// The largest absolute difference over the largest absolute value of `a`.
    fn rel_max(a: Tensor<5>, b: Tensor<5>) -> f32 {
        let a = a.into_data().try_into_vec::<f32>().unwrap();
        let b = b.into_data().try_into_vec::<f32>().unwrap();
        let m = a.iter().fold(0f32, |m, v| m.max(v.abs()));
        a.iter().zip(&b).fold(0f32, |e, (x, y)| e.max((x - y).abs())) / m
    }

    /// The bf16 kernel computes exactly burn's f32 convolution of the bf16-rounded input and
    /// weight (each product of two bf16 values is exact in f32; only the order of the f32 sums
    /// differs), on every voxel — edges and corners, rows shorter and longer than a tile and not a
    /// multiple of it — with odd input channel counts (the pair's missing channel), 16-, 32- and
    /// 48-wide channel blocks, with and without bias, batch 2; and it is within bf16 rounding of
    /// the unrounded f32 convolution (relative L2 ~3e-3).
    #[test]
    fn bf16_conv_matches_f32_of_rounded_values() {
        if !Kernel::Bf16.supported() {
            eprintln!("this CPU lacks AVX512-BF16: the bf16 kernel is not tested here");
            return;
        }
        let dev = Device::flex();
        let cases = [
            (5, 32, [6, 5, 4]),
            (7, 48, [4, 7, 13]),
            (1, 16, [3, 9, 25]),
            (24, 64, [8, 8, 8]),
            (3, 16, [5, 3, 2]),
            (4, 80, [3, 4, 9]),
        ];
        for (i, &(cin, cout, dims)) in cases.iter().enumerate() {
            let mut conv = conv3d(&mut InitSource::new(11 + i as u64), "c", cin, cout, 3, 1, 1, &dev);
            if i == 1 {
                conv.bias = None;
            }
            let x = Tensor::<5>::random([2, cin, dims[0], dims[1], dims[2]], Distribution::Normal(0.0, 1.0), &dev);
            let y = conv3d_direct_with(&conv, &x, Kernel::Bf16).expect("the direct path applies");
            let mut conv_r = conv.clone();
            conv_r.weight = conv.weight.clone().map(rounded);
            let exact = conv_r.forward(rounded(x.clone()));
            let e = rel_max(exact, y.clone());
            assert!(e < 1e-5, "{cin}->{cout} {dims:?}: largest difference {e} of the largest value");
            let e = rel_l2(conv.forward(x), y);
            println!("bf16 {cin}->{cout} {dims:?}: relative L2 to f32 {e:.2e}");
            assert!(e > 1e-4 && e < 1e-2, "{cin}->{cout} {dims:?}: relative L2 to f32 {e}");
        }
    }

    /// Where it does not apply it says so (the caller falls back): output channels not a multiple
    /// of 16, a stride, too few voxels, and an autodiff-tracked input.
    #[test]
    fn direct_conv_declines_what_it_does_not_do() {
        let dev = Device::flex();
        let x = Tensor::<5>::random([1, 4, 6, 6, 6], Distribution::Normal(0.0, 1.0), &dev);
        assert!(conv3d_direct(&conv3d(&mut InitSource::new(1), "c", 4, 24, 3, 1, 1, &dev), &x).is_none());
        assert!(conv3d_direct(&conv3d(&mut InitSource::new(1), "c", 4, 32, 3, 2, 1, &dev), &x).is_none());
        assert!(conv3d_direct(&conv3d(&mut InitSource::new(1), "c", 4, 32, 3, 1, 0, &dev), &x).is_none());
        let small = Tensor::<5>::random([1, 4, 2, 2, 2], Distribution::Normal(0.0, 1.0), &dev);
        assert!(conv3d_direct(&conv3d(&mut InitSource::new(1), "c", 4, 32, 3, 1, 1, &dev), &small).is_none());
        let ad = dev.clone().autodiff();
        let xa = Tensor::<5>::from_data(x.into_data(), &ad).require_grad();
        assert!(conv3d_direct(&conv3d(&mut InitSource::new(1), "c", 4, 32, 3, 1, 1, &ad), &xa).is_none());
    }
}
