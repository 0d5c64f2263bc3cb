//! One-pass VAE decoding of a whole latent with bounded temporaries ([`Vae::decode_split`]).
//!
//! The release decodes with a sliding window (overlap 0.4), which computes every output voxel about
//! (1 / 0.6)³ ≈ 4.6 times and normalises each window with its own GroupNorm statistics. Decoding
//! the whole latent at once does the work once and normalises over the whole tensor, as the network
//! was trained, but a plain one-pass decode ([`Vae::decode`]) holds several full-size temporaries
//! per layer (GroupNorm output, the convolution's padded copy, its output, the residual sum). Here,
//! in the spirit of MAISI's `num_splits` (split convolutions), each layer is computed slab by slab
//! along the first spatial axis:
//!
//! - GroupNorm statistics are taken over the whole tensor, in one pass (per-group sums in f64);
//! - each 3 × 3 × 3 convolution is computed on slabs of its input with one plane of halo on each
//!   side (real neighbouring data inside the volume, the convolution's zero padding at its ends),
//!   normalisation + SiLU (or the ×2 trilinear upsampling) applied to the slab on the fly, and only
//!   the slab's own output planes written into the layer's output;
//! - a ResBlock's residual sum is written over its input in place (its output has no more channels).
//!
//! So a layer holds its input and its output plus slab-sized temporaries: about
//! `c_up + c_0 + (2 c_up + c_0) / S` full-resolution channels at the top level instead of
//! `3 c_up + 2 c_0` (`memory::decoder_activations`), for S slabs. The slab count of the largest
//! convolution is `splits`; smaller layers use proportionally fewer slabs (no slab is larger than the
//! largest layer's), each of at least [`MIN_SLAB_PLANES`] planes. The halos cost two extra output
//! planes per slab boundary (MONAI's split convolution computes three on each side).
//!
//! Same operations as [`Vae::decode`] in another grouping: the result equals it to float rounding
//! (~1e-7 relative in the tests). Activations live in host memory; the convolutions and the
//! upsampling run on the latent's device, one slab at a time. Inference only.

use burn::nn::conv::Conv3d;
use burn::nn::GroupNorm;
use burn::tensor::{Device, Tensor, TensorData};
use rayon::prelude::*;

use crate::blocks::{conv3d_forward, ResBlock, Upsample};
use crate::error::{ModelError, Result};
use crate::fusednorm::silu_affine;
use crate::interp::upsample_linear_x2_axis;
use crate::vae::Vae;

/// One sample's activation in host memory: `[c, X, Y, Z]`, C order (Z fastest).
struct Act {
    data: Vec<f32>,
    c: usize,
    dims: [usize; 3],
}

impl Act {
    fn zeros(c: usize, dims: [usize; 3]) -> Self {
        Act { data: vec![0.0; c * dims.iter().product::<usize>()], c, dims }
    }

    /// Voxels per channel.
    fn n(&self) -> usize {
        self.dims.iter().product()
    }

    /// Values per plane of the first axis (one channel).
    fn plane(&self) -> usize {
        self.dims[1] * self.dims[2]
    }

    /// Planes `lo..hi` of every channel, each value mapped by `f(channel, value)`, as a tensor
    /// `[1, c, hi - lo, Y, Z]`.
    fn slab(&self, lo: usize, hi: usize, map: &Map, dev: &Device) -> Tensor<5> {
        let (n, plane, len) = (self.n(), self.plane(), (hi - lo) * self.plane());
        let mut out = vec![0f32; self.c * len];
        out.par_chunks_mut(len.max(1)).enumerate().for_each(|(c, dst)| {
            let src = &self.data[c * n + lo * plane..c * n + hi * plane];
            match map {
                Map::Copy => dst.copy_from_slice(src),
                Map::Affine { a, s, silu: true } => silu_affine(src, dst, a[c], s[c]),
                Map::Affine { a, s, silu: false } => {
                    for (d, &v) in dst.iter_mut().zip(src) {
                        *d = v * a[c] + s[c];
                    }
                }
            }
        });
        Tensor::from_data(TensorData::new(out, [1, self.c, hi - lo, self.dims[1], self.dims[2]]), dev)
    }

    /// Write planes `y.off..y.off + (e - s)` of `y` into planes `s..e` of the first `y.c` channels
    /// (`y.c <= self.c`), adding what is there when `add`.
    fn put(&mut self, s: usize, e: usize, y: &Slab, add: bool) {
        let Slab { data: y, c: cy, planes, off } = *y;
        let (n, plane) = (self.n(), self.plane());
        let len = (e - s) * plane;
        self.data[..cy * n].par_chunks_mut(n).enumerate().for_each(|(c, ch)| {
            let dst = &mut ch[s * plane..s * plane + len];
            let src = &y[(c * planes + off) * plane..(c * planes + off) * plane + len];
            if add {
                for (d, &v) in dst.iter_mut().zip(src) {
                    *d += v;
                }
            } else {
                dst.copy_from_slice(src);
            }
        });
    }
}

/// A convolution's output for one slab: `data` is `[c, planes, Y, Z]`, and the slab's own output
/// planes start at plane `off` (the planes before it were computed for the halo).
#[derive(Clone, Copy)]
struct Slab<'a> {
    data: &'a [f32],
    c: usize,
    planes: usize,
    off: usize,
}

/// What receives each slab's output: `(s, e, slab)` for output planes `s..e`.
type Sink<'a> = dyn FnMut(usize, usize, &Slab) -> Result<()> + 'a;

/// What is applied to an activation's values before a convolution reads them.
enum Map {
    Copy,
    /// `v · a[c] + s[c]`, then SiLU when `silu` (a GroupNorm with the statistics folded in).
    Affine {
        a: Vec<f32>,
        s: Vec<f32>,
        silu: bool,
    },
}

/// What a convolution reads: its input activation, mapped ([`Map`]) or upsampled ×2 on the fly.
enum Input<'a> {
    Mapped(&'a Act, Map),
    Upsampled(&'a Act),
}

impl Input<'_> {
    /// The grid the convolution runs on.
    fn dims(&self) -> [usize; 3] {
        match self {
            Input::Mapped(x, _) => x.dims,
            Input::Upsampled(x) => x.dims.map(|d| 2 * d),
        }
    }

    fn channels(&self) -> usize {
        match self {
            Input::Mapped(x, _) | Input::Upsampled(x) => x.c,
        }
    }

    /// Planes `lo..hi` of the convolution's input grid, `[1, c, hi - lo, Y, Z]`.
    fn slab(&self, lo: usize, hi: usize, dev: &Device) -> Result<Tensor<5>> {
        match self {
            Input::Mapped(x, map) => Ok(x.slab(lo, hi, map, dev)),
            Input::Upsampled(x) => {
                // Trilinear ×2 (align_corners=False) as `interp::upsample_trilinear_x2` computes it:
                // the Z and Y passes on the source planes the slab needs (each plane on its own),
                // then the X pass here for output planes lo..hi only: plane 2i + {0, 1} is
                // 0.75 x[i] + 0.25 x[i ∓ 1], the neighbour clamped at the volume's ends.
                let [n, _, _] = x.dims;
                let a = (lo / 2).saturating_sub(1);
                let b = ((hi - 1) / 2 + 2).min(n);
                let t = upsample_linear_x2_axis(upsample_linear_x2_axis(x.slab(a, b, &Map::Copy, dev), 4), 3);
                let [_, c, _, y2, z2] = t.dims();
                let src = host(t)?;
                let plane = y2 * z2;
                let mut out = vec![0f32; c * (hi - lo) * plane];
                {
                    out.par_chunks_mut(((hi - lo) * plane).max(1)).enumerate().for_each(|(ch, dst)| {
                        let sp = |i: usize| &src[(ch * (b - a) + i - a) * plane..][..plane];
                        for p in lo..hi {
                            let i = p / 2;
                            let d = &mut dst[(p - lo) * plane..][..plane];
                            if n == 1 {
                                d.copy_from_slice(sp(i));
                                continue;
                            }
                            let j = if p % 2 == 0 { i.saturating_sub(1) } else { (i + 1).min(n - 1) };
                            for ((o, &u), &v) in d.iter_mut().zip(sp(i)).zip(sp(j)) {
                                *o = u * 0.75 + v * 0.25;
                            }
                        }
                    });
                }
                Ok(Tensor::from_data(TensorData::new(out, [1, c, hi - lo, y2, z2]), dev))
            }
        }
    }
}

/// A tensor's values in host memory (f32).
fn host(t: Tensor<5>) -> Result<Vec<f32>> {
    t.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .map_err(|e| ModelError::Invalid(format!("reading a decoder activation: {e:?}")))
}

/// The thinnest slab [`Vae::decode_split`] makes, in planes of the layer's first axis: an inner slab
/// of 8 planes computes 10; thin layers are split less, or not at all.
pub const MIN_SLAB_PLANES: usize = 8;

/// Slab boundaries: `k` nearly equal parts of `0..len`.
fn bounds(len: usize, k: usize) -> Vec<(usize, usize)> {
    let k = k.clamp(1, len.max(1));
    (0..k).map(|i| (i * len / k, (i + 1) * len / k)).collect()
}

/// Runs `conv` over `input` slab by slab and hands each slab's output to `sink(s, e, slab)`: output
/// planes `s..e` are planes `slab.off..slab.off + (e - s)` of `slab.data`.
fn conv_slabs(conv: &Conv3d, input: &Input, slabs: usize, dev: &Device, sink: &mut Sink) -> Result<()> {
    let [k, _, _] = conv.kernel_size;
    if conv.stride != [1; 3] || k % 2 == 0 {
        return Err(ModelError::Invalid(format!(
            "split decoding needs stride-1 convolutions with odd kernels; got kernel {:?}, stride {:?}",
            conv.kernel_size, conv.stride
        )));
    }
    let halo = k / 2;
    let x_len = input.dims()[0];
    for (s, e) in bounds(x_len, slabs) {
        let lo = s.saturating_sub(halo);
        let hi = (e + halo).min(x_len);
        let y = conv3d_forward(conv, input.slab(lo, hi, dev)?);
        let [_, c, planes, _, _] = y.dims();
        let v = host(y)?;
        sink(s, e, &Slab { data: &v, c, planes, off: s - lo })?;
    }
    Ok(())
}

/// Slabs for a convolution reading `values` input values, when the largest reads `largest` in
/// `splits` slabs: proportionally fewer.
fn slabs_for(values: usize, largest: usize, splits: usize) -> usize {
    (values as f64 * splits as f64 / largest.max(1) as f64).ceil().max(1.0) as usize
}

/// Per-channel scale and shift `(a, s)` of a GroupNorm over all of `x` (statistics in one pass:
/// sums of `v − k` and `(v − k)²` in f64 per group, `k` the group's first value), folded with the
/// affine parameters as `fusednorm` folds them: `y = v · a[c] + s[c]`.
fn group_affine(norm: &GroupNorm, x: &Act) -> Result<(Vec<f32>, Vec<f32>)> {
    let (c, g) = (x.c, norm.num_groups);
    if g == 0 || c % g != 0 || c != norm.num_channels {
        return Err(ModelError::Invalid(format!("GroupNorm of {} channels in {g} groups on {c}", norm.num_channels)));
    }
    let read = |p: Option<&burn::module::Param<Tensor<1>>>, fill: f32| -> Result<Vec<f32>> {
        match p {
            Some(p) if norm.affine => p
                .val()
                .into_data()
                .convert::<f32>()
                .try_into_vec::<f32>()
                .map_err(|e| ModelError::Invalid(format!("{e:?}"))),
            _ => Ok(vec![fill; c]),
        }
    };
    let (gamma, beta) = (read(norm.gamma.as_ref(), 1.0)?, read(norm.beta.as_ref(), 0.0)?);
    let per = c / g * x.n();
    let stats: Vec<(f64, f64)> = x
        .data
        .par_chunks(per.max(1))
        .map(|grp| {
            let k = f64::from(grp.first().copied().unwrap_or(0.0));
            let (mut s1, mut s2) = ([0f64; 8], [0f64; 8]);
            let mut chunks = grp.chunks_exact(8);
            for ch in &mut chunks {
                for j in 0..8 {
                    let d = f64::from(ch[j]) - k;
                    s1[j] += d;
                    s2[j] += d * d;
                }
            }
            let (mut t1, mut t2): (f64, f64) = (s1.iter().sum(), s2.iter().sum());
            for &v in chunks.remainder() {
                let d = f64::from(v) - k;
                t1 += d;
                t2 += d * d;
            }
            let m = t1 / per as f64;
            (k + m, (t2 / per as f64 - m * m).max(0.0))
        })
        .collect();
    let (mut a, mut s) = (vec![0f32; c], vec![0f32; c]);
    for ch in 0..c {
        let (mean, var) = stats[ch / (c / g)];
        let inv = (1.0 / (var + norm.epsilon).sqrt()) as f32;
        a[ch] = inv * gamma[ch];
        s[ch] = beta[ch] - mean as f32 * a[ch];
    }
    Ok((a, s))
}

/// The decoder, layer by layer, for one sample.
struct Run<'a> {
    dev: &'a Device,
    /// Input values of the largest convolution, and its slab count.
    largest: usize,
    splits: usize,
    /// The thinnest slab, in planes (the halos' extra work is two planes per slab boundary).
    min_planes: usize,
}

impl Run<'_> {
    fn slabs(&self, input: &Input) -> usize {
        let d = input.dims();
        let by_size = slabs_for(input.channels() * d.iter().product::<usize>(), self.largest, self.splits);
        by_size.min((d[0] / self.min_planes.max(1)).max(1))
    }

    /// `conv(input)` into a new activation.
    fn conv(&self, conv: &Conv3d, input: &Input) -> Result<Act> {
        let cout = conv.weight.dims()[0];
        let mut out = Act::zeros(cout, input.dims());
        conv_slabs(conv, input, self.slabs(input), self.dev, &mut |s, e, y| {
            out.put(s, e, y, false);
            Ok(())
        })?;
        Ok(out)
    }

    /// `MaisiResBlock`: `skip(x) + conv2(silu(norm2(conv1(silu(norm1(x))))))`, written over `x`
    /// when the block does not widen it.
    fn res_block(&self, r: &ResBlock, x: Act) -> Result<Act> {
        let (a, s) = group_affine(&r.norm1, &x)?;
        let h = self.conv(&r.conv1, &Input::Mapped(&x, Map::Affine { a, s, silu: true }))?;
        let (a, s) = group_affine(&r.norm2, &h)?;
        let cout = h.c;
        let input = Input::Mapped(&h, Map::Affine { a, s, silu: true });
        let slabs = self.slabs(&input);
        let in_place = cout <= x.c;
        let mut x = x;
        let mut wide = (!in_place).then(|| Act::zeros(cout, x.dims));
        conv_slabs(&r.conv2, &input, slabs, self.dev, &mut |s, e, y| {
            match &r.nin_shortcut {
                None => x.put(s, e, y, true),
                Some(nin) => {
                    // The 1 × 1 × 1 shortcut of this slab's planes, read before they are overwritten.
                    let skip = host(nin.forward(x.slab(s, e, &Map::Copy, self.dev)))?;
                    let dst = wide.as_mut().unwrap_or(&mut x);
                    dst.put(s, e, &Slab { data: &skip, c: cout, planes: e - s, off: 0 }, false);
                    dst.put(s, e, y, true);
                }
            }
            Ok(())
        })?;
        drop(input);
        drop(h);
        match wide {
            Some(w) => Ok(w),
            None => {
                x.data.truncate(cout * x.n());
                x.data.shrink_to_fit();
                x.c = cout;
                Ok(x)
            }
        }
    }

    fn upsample(&self, u: &Upsample, x: Act) -> Result<Act> {
        self.conv(&u.conv, &Input::Upsampled(&x))
    }
}

/// Channel counts and grids of every convolution of the decoder: `(input channels, voxels)`.
fn conv_inputs(vae: &Vae, latent: [usize; 3]) -> Vec<(usize, usize)> {
    let dec = &vae.net.decoder;
    let mut grid: usize = latent.iter().product();
    let mut v = vec![(dec.conv_in.weight.dims()[1], grid)];
    for level in &dec.levels {
        for r in &level.res {
            v.push((r.conv1.weight.dims()[1], grid));
            v.push((r.conv2.weight.dims()[1], grid));
        }
        if let Some(u) = &level.up {
            grid *= 8;
            v.push((u.conv.weight.dims()[1], grid));
        }
    }
    v.push((dec.conv_out.weight.dims()[1], grid));
    v
}

impl Vae {
    /// Decode a latent `[B, latent, x, y, z]` in one pass over the whole latent, each layer
    /// computed in slabs along the first spatial axis with whole-tensor GroupNorm statistics (the
    /// module docs of `splitdecode`). `splits` is the number of slabs of the largest convolution
    /// (MAISI's `num_splits`); `splits = 1` is [`Vae::decode`] itself. Equals [`Vae::decode`] to
    /// float rounding; peak memory is each layer's input and output plus slab-sized temporaries.
    /// Shapes are checked (an error, no panic). Tensors tracked by autodiff take [`Vae::decode`].
    pub fn decode_split(&self, z: Tensor<5>, splits: usize) -> Result<Tensor<5>> {
        self.decode_split_with(z, splits, MIN_SLAB_PLANES)
    }

    /// [`Vae::decode_split`] with slabs of at least `min_planes` planes.
    fn decode_split_with(&self, z: Tensor<5>, splits: usize, min_planes: usize) -> Result<Tensor<5>> {
        let dims = z.dims();
        self.check_latent_shape(dims)?;
        if splits == 0 {
            return Err(ModelError::Invalid("the number of splits must be at least 1".into()));
        }
        if splits == 1 || z.is_require_grad() {
            return Ok(self.decode(z));
        }
        // The model's precision and packed weights for every convolution below (as `decode`).
        let _kernels = self.net.kernels.enter();
        let dev = z.device();
        let [b, _, x, y, zz] = dims;
        let z = self.net.post_quant_conv.forward(z);
        let zc = z.dims()[1];
        let zv = host(z)?;
        let largest = conv_inputs(self, [x, y, zz]).iter().map(|(c, v)| c * v).max().unwrap_or(1);
        let run = Run { dev: &dev, largest, splits, min_planes };
        let dec = &self.net.decoder;
        let per = zc * x * y * zz;
        let mut out = Vec::new();
        let mut out_dims = [0usize; 4];
        for bi in 0..b {
            let lat = Act { data: zv[bi * per..(bi + 1) * per].to_vec(), c: zc, dims: [x, y, zz] };
            let mut h = run.conv(&dec.conv_in, &Input::Mapped(&lat, Map::Copy))?;
            drop(lat);
            for level in &dec.levels {
                for r in &level.res {
                    h = run.res_block(r, h)?;
                }
                if let Some(u) = &level.up {
                    h = run.upsample(u, h)?;
                }
            }
            // The final GroupNorm has no SiLU after it (MONAI's MaisiDecoder).
            let (a, s) = group_affine(&dec.norm_out, &h)?;
            let o = run.conv(&dec.conv_out, &Input::Mapped(&h, Map::Affine { a, s, silu: false }))?;
            drop(h);
            out_dims = [o.c, o.dims[0], o.dims[1], o.dims[2]];
            if b == 1 {
                out = o.data;
            } else {
                out.extend_from_slice(&o.data);
            }
        }
        let [c, ox, oy, oz] = out_dims;
        Ok(Tensor::from_data(TensorData::new(out, [b, c, ox, oy, oz]), &dev))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blocks::rel_l2;
    use crate::vae::VaeConfig;
    use burn::module::Param;
    use burn::tensor::Distribution;

    /// A small random VAE whose GroupNorms have random affine parameters (so the folding of the
    /// affine into the statistics is tested too), its decoder widening nothing and narrowing once.
    fn small_vae(channels: Vec<usize>, dev: &Device) -> Vae {
        let cfg = VaeConfig {
            num_channels: channels,
            num_res_blocks: vec![1, 2, 1],
            norm_num_groups: 8,
            ..VaeConfig::maisi()
        };
        let mut vae = Vae::new(&cfg, 11, dev).unwrap();
        let perturb = |n: &mut GroupNorm| {
            let c = n.num_channels;
            let g = Tensor::<1>::random([c], Distribution::Uniform(0.5, 1.5), dev);
            let b = Tensor::<1>::random([c], Distribution::Normal(0.0, 0.3), dev);
            n.gamma = Some(Param::from_tensor(g));
            n.beta = Some(Param::from_tensor(b));
        };
        let dec = &mut vae.net.decoder;
        for level in &mut dec.levels {
            for r in &mut level.res {
                perturb(&mut r.norm1);
                perturb(&mut r.norm2);
            }
        }
        perturb(&mut dec.norm_out);
        vae
    }

    fn max_abs(a: &Tensor<5>, b: &Tensor<5>) -> f32 {
        let a = a.clone().into_data().try_into_vec::<f32>().unwrap();
        let b = b.clone().into_data().try_into_vec::<f32>().unwrap();
        a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
    }

    /// The split decode equals the plain one-pass decode: several split counts (more slabs than
    /// some layers have planes, slab sizes that do not divide the extent; slabs down to one plane), an odd first extent,
    /// batch 2, convolutions on both CPU paths (32 channels: the direct kernel; the small latent
    /// level: the matrix product), a narrowing ResBlock (its 1 × 1 × 1 shortcut) and in-place sums.
    #[test]
    fn split_decode_equals_plain_decode() {
        let dev = Device::flex();
        let vae = small_vae(vec![16, 32, 32], &dev);
        for (dims, splits) in [([1, 4, 7, 5, 3], 3), ([2, 4, 4, 3, 2], 2), ([1, 4, 5, 4, 4], 64), ([1, 4, 6, 2, 3], 4)]
        {
            let z = Tensor::<5>::random(dims, Distribution::Normal(0.0, 1.0), &dev);
            let want = vae.decode(z.clone());
            let got = vae.decode_split_with(z, splits, 1).unwrap();
            assert_eq!(got.dims(), want.dims());
            let e = rel_l2(want.clone(), got.clone());
            assert!(e < 1e-5, "{dims:?}, {splits} splits: relative error {e}");
            assert!(max_abs(&want, &got) < 1e-4, "{dims:?}, {splits} splits");
        }
    }

    /// Slab boundaries cover the extent exactly once; layers get proportionally fewer slabs.
    #[test]
    fn slabs_cover_the_extent() {
        for (len, k) in [(7, 3), (4, 4), (3, 8), (1, 1), (128, 5)] {
            let b = bounds(len, k);
            assert_eq!(b.first().unwrap().0, 0);
            assert_eq!(b.last().unwrap().1, len);
            assert!(b.windows(2).all(|w| w[0].1 == w[1].0) && b.iter().all(|(s, e)| e > s));
            assert_eq!(b.len(), k.min(len));
        }
        assert_eq!(slabs_for(100, 100, 4), 4);
        assert_eq!(slabs_for(25, 100, 4), 1);
        assert_eq!(slabs_for(26, 100, 4), 2);
    }

    /// Bad arguments are errors, not panics.
    #[test]
    fn split_decode_checks_its_arguments() {
        let dev = Device::flex();
        let vae = small_vae(vec![16, 32, 32], &dev);
        let z = Tensor::<5>::zeros([1, 4, 2, 2, 2], &dev);
        assert!(vae.decode_split(z, 0).unwrap_err().to_string().contains("splits"));
        let bad = Tensor::<5>::zeros([1, 3, 2, 2, 2], &dev);
        assert!(vae.decode_split(bad, 2).is_err());
    }
}
