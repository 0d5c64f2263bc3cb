//! Measuring speed and memory: what `text2ct bench` (`text2ct-bench::speed`) and the speed examples
//! (`examples/unet_speed.rs`, `vae_speed.rs`, `vae_memory.rs`) share.
//!
//! - The process's resident memory (`VmRSS`), its peak (`VmHWM`) and a reset of the peak
//!   (`/proc/self/clear_refs`), and the memory the machine has available (`MemAvailable`): Linux
//!   only; elsewhere the readers give `None`.
//! - A rayon pool of N threads: burn's CPU backend (`flex`, its `gemm` calls included) and this
//!   crate's CPU kernels all run on the *current* rayon pool, so running a benchmark inside
//!   [`thread_pool`]`(n)?.install(..)` sizes all of them per run (without it: rayon's global pool,
//!   `RAYON_NUM_THREADS` or one thread per core).
//! - The deterministic synthetic inputs of the U-Net and VAE benchmarks (the same values as
//!   `benchmarks/monai_bench.py` builds, so both programs see the same numbers).
//! - Memory estimates of a U-Net forward and of VAE encoding and decoding, from the sizes alone, so
//!   sizes that cannot fit are refused before anything is allocated. They are approximations
//!   (checked against measured peaks in docs/performance.md), meant to catch absurd sizes, not to
//!   predict the peak to the megabyte.

use std::time::Instant;

use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::error::{ModelError, Result};
use crate::unet::{UnetCond, UnetConfig};
use crate::vae::VaeConfig;

/// One `kB` field of `/proc/self/status` in bytes (`VmRSS:`, `VmHWM:`).
fn status_bytes(key: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    kb_field(&s, key)
}

/// The value of a `Key:  1234 kB` line, in bytes.
fn kb_field(text: &str, key: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(key))?;
    let kb: u64 = line[key.len()..].split_whitespace().next()?.parse().ok()?;
    kb.checked_mul(1024)
}

/// The process's resident set size now (`VmRSS`), in bytes.
pub fn rss_bytes() -> Option<u64> {
    status_bytes("VmRSS:")
}

/// The process's peak resident set size (`VmHWM`) in bytes: since the start, or since the last
/// successful [`reset_peak_rss`].
pub fn peak_rss_bytes() -> Option<u64> {
    status_bytes("VmHWM:")
}

/// Reset the peak resident set size to the current one (writes `5` to `/proc/self/clear_refs`,
/// Linux 4.0 and later). Returns whether it worked; where it did not, [`peak_rss_bytes`] keeps
/// counting from the start of the process.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// The memory the machine can give without swapping (`MemAvailable` of `/proc/meminfo`), in bytes.
pub fn available_memory_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    kb_field(&s, "MemAvailable:")
}

/// The threads of the current rayon pool (what burn's CPU backend uses).
pub fn current_threads() -> usize {
    rayon::current_num_threads()
}

/// The largest thread count [`thread_pool`] accepts.
pub const MAX_THREADS: usize = 4096;

/// A rayon pool of `threads` threads; run work inside `pool.install(|| ..)` so that burn's CPU
/// backend and the CPU kernels of this crate use exactly that many.
pub fn thread_pool(threads: usize) -> Result<rayon::ThreadPool> {
    if threads == 0 || threads > MAX_THREADS {
        return Err(ModelError::Invalid(format!("the thread count must be in 1..={MAX_THREADS}, got {threads}")));
    }
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(|e| ModelError::Invalid(format!("starting {threads} threads: {e}")))
}

/// Wait for `t` to be computed (reads it back, so lazy work is counted).
pub fn sync<const D: usize>(t: &Tensor<D>) {
    let _ = t.clone().into_data();
}

/// Seconds `f` takes.
pub fn timed<T>(f: impl FnOnce() -> T) -> (T, f64) {
    let t = Instant::now();
    let v = f();
    (v, t.elapsed().as_secs_f64())
}

/// The benchmark's input values: `((i · 2654435761) mod m) / (m / 2) − 1` for `i = 0..n`, a
/// deterministic spread over [−1, 1) (`m = 2000`); `benchmarks/monai_bench.py` builds the same.
pub fn pattern(n: usize, m: usize) -> Vec<f32> {
    let half = (m / 2).max(1) as f32;
    (0..n).map(|i| ((i.wrapping_mul(2654435761) % m) as f32 / half) - 1.0).collect()
}

/// The spacing input of the benchmark (Text2CT's 0.75 × 0.75 × 3 mm, scaled by 100 as released).
pub const BENCH_SPACING: [f32; 3] = [75.0, 75.0, 300.0];
/// The timestep of the benchmark.
pub const BENCH_TIMESTEP: f32 = 500.0;

/// The U-Net benchmark's inputs for a latent `[batch, C, X, Y, Z]` (`latent` = `[C, X, Y, Z]`):
/// the input from [`pattern`], timestep 500, a `[batch, 1, cross_attention_dim]` context from
/// `pattern(dim, 1000)`, class label 1 (0 when the U-Net has a single class) and spacing
/// [`BENCH_SPACING`] where the config takes them; region indices `[0, 1, 0, 0]` where it does.
/// Shapes are checked against the config (an error, nothing allocated, when they do not fit).
pub fn unet_inputs(
    cfg: &UnetConfig,
    latent: [usize; 4],
    batch: usize,
    dev: &Device,
) -> Result<(Tensor<5>, Tensor<1>, UnetCond)> {
    check_unet_latent(cfg, latent, batch)?;
    let [c, x, y, z] = latent;
    let n = batch * c * x * y * z;
    let lat = Tensor::<5>::from_data(TensorData::new(pattern(n, 2000), [batch, c, x, y, z]), dev);
    let t = Tensor::<1>::from_data(TensorData::new(vec![BENCH_TIMESTEP; batch], [batch]), dev);
    let context = cfg.with_conditioning.then(|| {
        let d = cfg.cross_attention_dim.unwrap_or(0);
        let one = pattern(d, 1000);
        let all: Vec<f32> = (0..batch).flat_map(|_| one.iter().copied()).collect();
        Tensor::<3>::from_data(TensorData::new(all, [batch, 1, d]), dev)
    });
    let class_labels = cfg.num_class_embeds.map(|k| {
        let label = if k > 1 { 1i64 } else { 0 };
        Tensor::<1, Int>::from_data(TensorData::new(vec![label; batch], [batch]), dev)
    });
    let rows = |row: [f32; 4], w: usize| {
        let v: Vec<f32> = (0..batch).flat_map(|_| row[..w].to_vec()).collect();
        Tensor::<2>::from_data(TensorData::new(v, [batch, w]), dev)
    };
    let s = BENCH_SPACING;
    let cond = UnetCond {
        context,
        class_labels,
        spacing: cfg.include_spacing_input.then(|| rows([s[0], s[1], s[2], 0.0], 3)),
        top_region_index: cfg.include_top_region_index_input.then(|| rows([0.0, 1.0, 0.0, 0.0], 4)),
        bottom_region_index: cfg.include_bottom_region_index_input.then(|| rows([0.0, 1.0, 0.0, 0.0], 4)),
    };
    Ok((lat, t, cond))
}

/// Refuse a latent the U-Net cannot take: `C` must be its `in_channels`, each extent a positive
/// multiple of its size multiple, the batch at least 1.
pub fn check_unet_latent(cfg: &UnetConfig, latent: [usize; 4], batch: usize) -> Result<()> {
    let f = cfg.size_multiple();
    if batch == 0 {
        return Err(ModelError::Invalid("the batch must be at least 1".into()));
    }
    if latent[0] != cfg.in_channels || latent[1..].iter().any(|&d| d == 0 || d % f != 0) {
        return Err(ModelError::Invalid(format!(
            "the U-Net takes latents C,X,Y,Z with C = {} and X, Y, Z positive multiples of {f}; got {latent:?}",
            cfg.in_channels
        )));
    }
    Ok(())
}

/// The VAE benchmark's image `[1, in_channels, X, Y, Z]`: `pattern(n, 2000)` mapped to [0, 1).
pub fn vae_image(cfg: &VaeConfig, size: [usize; 3], dev: &Device) -> Tensor<5> {
    let n = cfg.in_channels * size.iter().product::<usize>();
    let v: Vec<f32> = pattern(n, 2000).into_iter().map(|p| (p + 1.0) / 2.0).collect();
    Tensor::from_data(TensorData::new(v, [1, cfg.in_channels, size[0], size[1], size[2]]), dev)
}

fn voxels(d: [usize; 3]) -> f64 {
    d.iter().map(|&v| v as f64).product()
}

/// Estimated bytes of the activations of one U-Net forward on a latent `[batch, C, X, Y, Z]`
/// (weights not included): the skip connections the forward keeps (`num_res_blocks + 1` per level)
/// plus ten top-level tensors of working memory (GroupNorm output, the convolution's padded copy,
/// the up path's concatenation with its skip), in f32. Within ~25 % of the measured peaks of
/// docs/performance.md at Text2CT's latent.
pub fn unet_forward_bytes(cfg: &UnetConfig, latent: [usize; 4], batch: usize) -> f64 {
    let levels = cfg.num_channels.len();
    let res = cfg.num_res_blocks.per_level(levels, "num_res_blocks").unwrap_or_else(|_| vec![2; levels]);
    let v0 = voxels([latent[1], latent[2], latent[3]]);
    let c0 = cfg.num_channels.first().copied().unwrap_or(0) as f64;
    let mut floats = c0 * v0 * 11.0; // conv_in's skip + ten working tensors
    for (l, (&c, &r)) in cfg.num_channels.iter().zip(&res).enumerate() {
        let down = if l + 1 < levels { 1.0 } else { 0.0 };
        floats += (r as f64 + down) * c as f64 * v0 / 8f64.powi(l as i32);
    }
    4.0 * batch as f64 * floats
}

/// How a latent is decoded, for [`vae_decode_bytes`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum DecodeShape {
    /// The whole latent at once, in `splits` slabs (`Vae::decode_split`; 1: `Vae::decode`).
    OnePass { splits: usize },
    /// Window by window (`Vae::decode_sliding_window`), windows in latent voxels.
    Sliding { window: [usize; 3] },
}

/// Channels of the decoder's top (full-resolution) level and of the tensor entering it.
fn top_channels(cfg: &VaeConfig) -> (f64, f64) {
    let c0 = cfg.num_channels.first().copied().unwrap_or(0) as f64;
    let cup = cfg.num_channels.get(1).copied().map_or(c0, |c| c as f64);
    (c0, cup)
}

/// Estimated bytes of decoding one latent `[latent_channels, x, y, z]` (weights not included).
/// One pass without splits holds about `3 c_up + 2 c_0` full-resolution channels at its top level
/// (the upsampled input, its GroupNorm output and padded copy, and the block's outputs; `c_0`, `c_up`
/// are the channels of the top level and of the one below); with `S` splits, the input and output of
/// each layer plus slab-sized temporaries, `c_up + c_0 + (2 c_up + c_0) / S`; a sliding window, one
/// window's one-pass decode plus the f32 output and weight maps.
pub fn vae_decode_bytes(cfg: &VaeConfig, latent: [usize; 3], how: DecodeShape) -> f64 {
    let f = cfg.downsample_factor() as f64;
    let out_vox = voxels(latent) * f * f * f;
    let (c0, cup) = top_channels(cfg);
    match how {
        DecodeShape::OnePass { splits } if splits <= 1 => 4.0 * out_vox * (3.0 * cup + 2.0 * c0),
        DecodeShape::OnePass { splits } => 4.0 * out_vox * (cup + c0 + 1.0 + (2.0 * cup + c0) / splits as f64),
        DecodeShape::Sliding { window } => {
            let w = [0, 1, 2].map(|i| window[i].clamp(1, latent[i].max(1)));
            let win = vae_decode_bytes(cfg, w, DecodeShape::OnePass { splits: 1 });
            win + 4.0 * out_vox * (2.0 * cfg.out_channels as f64 + 1.0)
        }
    }
}

/// Estimated bytes of encoding one image `[in_channels, X, Y, Z]` (weights not included): six
/// tensors of the first level's width at full resolution.
pub fn vae_encode_bytes(cfg: &VaeConfig, size: [usize; 3]) -> f64 {
    let (c0, _) = top_channels(cfg);
    4.0 * voxels(size) * 6.0 * c0
}

/// Bytes as people read them: `1.23 GB` (powers of 1000, as docs/performance.md writes them).
pub fn human_bytes(b: f64) -> String {
    if b >= 1e9 {
        format!("{:.2} GB", b / 1e9)
    } else if b >= 1e6 {
        format!("{:.0} MB", b / 1e6)
    } else {
        format!("{:.0} kB", b / 1e3)
    }
}

/// Refuse work whose estimated memory (`need` bytes) exceeds what the machine has available
/// (`MemAvailable`; no check where that is unknown). `what` names the work, `hint` says what to do.
pub fn check_fits(need: f64, what: &str, hint: &str) -> Result<()> {
    let Some(avail) = available_memory_bytes() else { return Ok(()) };
    if !need.is_finite() || need > avail as f64 {
        return Err(ModelError::Invalid(format!(
            "{what} needs about {} of memory, more than the {} this machine has available{}",
            human_bytes(need),
            human_bytes(avail as f64),
            if hint.is_empty() { String::new() } else { format!("; {hint}") }
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_fields_parse() {
        let s = "Name:\tx\nVmHWM:\t  2048 kB\nVmRSS:\t    12 kB\n";
        assert_eq!(kb_field(s, "VmHWM:"), Some(2048 * 1024));
        assert_eq!(kb_field(s, "VmRSS:"), Some(12 * 1024));
        assert_eq!(kb_field(s, "VmPeak:"), None);
        if cfg!(target_os = "linux") {
            let (rss, peak) = (rss_bytes().unwrap(), peak_rss_bytes().unwrap());
            assert!(rss > 0 && peak >= rss, "rss {rss}, peak {peak}");
            assert!(available_memory_bytes().unwrap() > 0);
        }
    }

    #[test]
    fn pools_are_sized_and_checked() {
        let pool = thread_pool(3).unwrap();
        assert_eq!(pool.install(current_threads), 3);
        assert!(thread_pool(0).unwrap_err().to_string().contains("thread count"));
        assert!(thread_pool(MAX_THREADS + 1).is_err());
    }

    /// The pattern is the documented formula (the MONAI script relies on it) and spans [-1, 1).
    #[test]
    fn pattern_values() {
        let p = pattern(5, 2000);
        assert_eq!(p[0], -1.0);
        assert_eq!(p[1], (2654435761usize % 2000) as f32 / 1000.0 - 1.0);
        assert!(pattern(10_000, 2000).iter().all(|v| (-1.0..1.0).contains(v)));
    }

    #[test]
    fn unet_inputs_follow_the_config() {
        let cfg = UnetConfig::text2ct();
        let dev = Device::flex();
        let (x, t, c) = unet_inputs(&cfg, [4, 8, 8, 8], 2, &dev).unwrap();
        assert_eq!(x.dims(), [2, 4, 8, 8, 8]);
        assert_eq!(t.dims(), [2]);
        assert_eq!(c.context.unwrap().dims(), [2, 1, 768]);
        assert_eq!(c.spacing.unwrap().dims(), [2, 3]);
        assert!(c.top_region_index.is_none());
        let e = unet_inputs(&cfg, [3, 8, 8, 8], 1, &dev).unwrap_err().to_string();
        assert!(e.contains("C = 4"), "{e}");
        assert!(unet_inputs(&cfg, [4, 12, 8, 8], 1, &dev).is_err());
        assert!(unet_inputs(&cfg, [4, 8, 8, 8], 0, &dev).is_err());
    }

    /// The estimates grow with the work and rank the decode modes as measured: splits below one
    /// pass, a small window below both at a large size; the U-Net's at Text2CT's latent is near
    /// the measured 1.9 GB of activations (2.72 GB peak less 0.87 GB of weights).
    #[test]
    fn estimates_are_plausible() {
        let u = UnetConfig::text2ct();
        let at = unet_forward_bytes(&u, [4, 128, 128, 32], 1);
        assert!((1.4e9..2.6e9).contains(&at), "{at}");
        assert!(unet_forward_bytes(&u, [4, 128, 128, 32], 2) > 1.9 * at);
        let v = VaeConfig::maisi();
        let plain = vae_decode_bytes(&v, [32, 32, 16], DecodeShape::OnePass { splits: 1 });
        let split = vae_decode_bytes(&v, [32, 32, 16], DecodeShape::OnePass { splits: 4 });
        let slide = vae_decode_bytes(&v, [128, 128, 32], DecodeShape::Sliding { window: [32, 32, 16] });
        // One window of 32 x 32 x 16 measured 1.96 GB peak (with 84 MB of weights).
        assert!((1.4e9..2.6e9).contains(&plain), "{plain}");
        assert!(split < 0.6 * plain, "{split} vs {plain}");
        assert!(slide < vae_decode_bytes(&v, [128, 128, 32], DecodeShape::OnePass { splits: 4 }));
        assert!(vae_encode_bytes(&v, [64, 64, 32]) > 0.0);
        let e = check_fits(f64::INFINITY, "decoding", "use a window").unwrap_err().to_string();
        if available_memory_bytes().is_some() {
            assert!(e.contains("decoding needs about") && e.contains("use a window"), "{e}");
        }
        assert!(check_fits(1.0, "x", "").is_ok());
    }
}
