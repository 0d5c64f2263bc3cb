//! Measuring speed and memory: what `text2ct bench` (`text2ct-bench::speed`) and the speed examples
//! (`examples/unet_speed.rs`, `vae_speed.rs`, `vae_memory.rs`) share.
//!
//! - The process's resident memory (`VmRSS`), its peak (`VmHWM`) and a reset of the peak
//!   (`/proc/self/clear_refs`): Linux only; elsewhere the readers give `None`.
//! - A rayon pool of N threads: burn's CPU backend (`flex`, its `gemm` calls included) and this
//!   crate's CPU kernels all run on the *current* rayon pool, so running a benchmark inside
//!   [`thread_pool`]`(n)?.install(..)` sizes all of them per run (without it: rayon's global pool,
//!   `RAYON_NUM_THREADS` or one thread per core).
//! - The deterministic synthetic inputs of the U-Net and VAE benchmarks (the same values as
//!   `benchmarks/monai_bench.py` builds, so both programs see the same numbers).
//!
//! The memory estimates that refuse sizes before allocating are in [`crate::memory`].

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
}
