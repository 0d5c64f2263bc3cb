//! The speed benchmarks of `text2ct bench`: the real workload timed phase by phase, with peak
//! memory, on the released architecture with random weights or on a model folder.
//!
//! * [`bench_unet`]: U-Net forwards on a latent `C, X, Y, Z` (batch 1 by default; generation runs
//!   batch 2, both guidance branches at once).
//! * [`bench_vae`]: VAE encode (posterior mean) and decode of an image `X, Y, Z`: one pass (in
//!   slabs, `Vae::decode_split`), a sliding window, or both from the same latent with the HU
//!   difference between them.
//! * [`bench_generate`]: one whole volume through the real `Pipeline` (text encoder, sampling with
//!   classifier-free guidance, decode), from a model folder: the given one, or one written with
//!   random weights of the released sizes ([`write_random_model`]).
//!
//! Every phase is timed and its peak resident memory read (`VmHWM`, reset before each phase where
//! Linux allows it: `text2ct_models::speed`). Sizes are checked against an estimate of the memory
//! they need before anything of their size is allocated. The work runs in a rayon pool of
//! `--threads` threads: burn's CPU backend and text2ct's CPU kernels all use the current pool.
//! `benchmarks/monai_bench.py` runs MONAI on the same shapes and inputs and prints the same JSON
//! fields, so each figure can be a ratio measured side by side (`benchmarks/compare.sh`).

use std::path::{Path, PathBuf};

use serde::Serialize;
use text2ct_generate::card::ConfigRef;
use text2ct_generate::pipeline::{DecodeMode, Pipeline};
use text2ct_generate::{ModelCard, TextEncoderKind};
use text2ct_models::burn::tensor::{Device, Tensor};
use text2ct_models::clip_text::{ClipTextConfig, ClipTextEncoder};
use text2ct_models::memory::{self, DecodeShape};
use text2ct_models::resnet2d::RecordingSource;
use text2ct_models::speed;
use text2ct_models::unet::UnetNet;
use text2ct_models::vae::VaeNet;
use text2ct_models::{Precision, SlidingWindow, Unet, UnetConfig, Vae, VaeConfig};

use crate::error::{input, BenchError, Result};

/// What every benchmark takes. (A `precision` field belongs here when the networks get one.)
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// Timed runs of the measured work (the best is reported, each is listed).
    pub repeats: usize,
    /// Threads of the pool the work runs in; `None`: the current pool (rayon's global one:
    /// `RAYON_NUM_THREADS`, else one per core).
    pub threads: Option<usize>,
    /// A model folder (`model.json` card); `None`: the released architecture, random weights.
    pub model: Option<PathBuf>,
    /// The compute device.
    pub device: Device,
    /// The arithmetic of the 3 × 3 × 3 convolutions (`Precision::on_this_cpu` is applied).
    pub precision: Precision,
}

impl BenchOptions {
    /// The precision the convolutions run in here: f32 off the CPU and on CPUs without
    /// AVX512-BF16 (said once), else the one asked for.
    pub fn precision_in_effect(&self) -> Precision {
        if self.device != Device::flex() {
            return Precision::F32;
        }
        self.precision.on_this_cpu()
    }

    fn check(&self) -> Result<()> {
        if self.repeats == 0 || self.repeats > 1000 {
            return input(format!("--repeats must be in 1..=1000, got {}", self.repeats));
        }
        Ok(())
    }

    /// Run `f` in a pool of `threads` threads (or the current pool); returns `f`'s result and the
    /// thread count it ran with.
    fn run<T: Send>(&self, f: impl FnOnce() -> Result<T> + Send) -> Result<(T, usize)> {
        self.check()?;
        match self.threads {
            None => Ok((f()?, speed::current_threads())),
            Some(n) => {
                let pool = speed::thread_pool(n).map_err(|e| BenchError::Input(format!("--threads: {e}")))?;
                Ok((pool.install(f)?, n))
            }
        }
    }

    fn model_name(&self) -> String {
        match &self.model {
            Some(m) => m.display().to_string(),
            None => "released architecture, random weights (seed 0)".into(),
        }
    }
}

/// One timed phase: seconds and the peak resident memory during it (`None` where the peak could
/// not be reset, so that only the whole run's peak is known).
#[derive(Clone, Debug, Serialize)]
pub struct Phase {
    pub name: String,
    pub seconds: f64,
    pub peak_rss_bytes: Option<u64>,
}

/// Times phases and tracks the peak resident memory of each and of the whole run.
struct Meter {
    phases: Vec<Phase>,
    whole_peak: Option<u64>,
}

impl Meter {
    fn new() -> Self {
        Meter { phases: Vec::new(), whole_peak: speed::peak_rss_bytes() }
    }

    fn note_peak(&mut self, p: Option<u64>) {
        self.whole_peak = match (self.whole_peak, p) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
    }

    fn phase<T>(&mut self, name: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        self.note_peak(speed::peak_rss_bytes());
        let reset = speed::reset_peak_rss();
        let (v, seconds) = speed::timed(f);
        let v = v?;
        let peak = speed::peak_rss_bytes();
        self.note_peak(peak);
        self.phases.push(Phase { name: name.into(), seconds, peak_rss_bytes: peak.filter(|_| reset) });
        Ok(v)
    }

    fn best(&self, prefix: &str) -> f64 {
        self.phases.iter().filter(|p| p.name.starts_with(prefix)).map(|p| p.seconds).fold(f64::INFINITY, f64::min)
    }

    fn each(&self, prefix: &str) -> Vec<f64> {
        self.phases.iter().filter(|p| p.name.starts_with(prefix)).map(|p| p.seconds).collect()
    }

    /// The peak of every phase whose name starts with `prefix`.
    fn peak_of(&self, prefix: &str) -> Option<u64> {
        self.phases.iter().filter(|p| p.name.starts_with(prefix)).filter_map(|p| p.peak_rss_bytes).max()
    }
}

fn model_err(e: impl std::fmt::Display) -> BenchError {
    BenchError::Input(e.to_string())
}

/// Refuse `bytes` of estimated working memory beyond what the machine has available.
fn fits(bytes: u64, what: &str, hint: &str) -> Result<()> {
    memory::check_fits(what, bytes, hint).map_err(model_err)
}

fn dims_str(d: &[usize]) -> String {
    d.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(" × ")
}

/// A benchmark's result: the figures as JSON fields (`to_json`), the phases as a table (`table`).
pub trait BenchReport: Serialize {
    /// The header line of the table.
    fn title(&self) -> String;
    /// `(label, value)` rows after the phases.
    fn summary(&self) -> Vec<(String, String)>;
    fn phases(&self) -> &[Phase];

    /// One line of JSON.
    fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\": \"serialising: {e}\"}}"))
    }

    /// The phases with their seconds and peak memory, then the summary, as a plain-text table.
    fn table(&self) -> String {
        let mut rows: Vec<[String; 3]> = vec![["phase".into(), "seconds".into(), "peak RSS".into()]];
        for p in self.phases() {
            let peak = p.peak_rss_bytes.map_or("-".into(), |b| text2ct_io::memory::format_bytes(b));
            rows.push([p.name.clone(), format!("{:.3}", p.seconds), peak]);
        }
        let w0 = rows.iter().map(|r| r[0].chars().count()).max().unwrap_or(0);
        let w1 = rows.iter().map(|r| r[1].len()).max().unwrap_or(0);
        let mut out = format!("{}\n", self.title());
        for r in rows {
            out.push_str(&format!("  {:<w0$}  {:>w1$}  {}\n", r[0], r[1], r[2]));
        }
        for (k, v) in self.summary() {
            out.push_str(&format!("  {k}: {v}\n"));
        }
        out
    }
}

fn peak_str(p: Option<u64>) -> String {
    p.map_or("unknown (no /proc/self/status)".into(), |b| text2ct_io::memory::format_bytes(b))
}

// ------------------------------------------------------------------------------------------------
// U-Net

/// `text2ct bench unet`.
#[derive(Clone, Debug, Serialize)]
pub struct UnetReport {
    pub bench: &'static str,
    pub model: String,
    pub latent: [usize; 4],
    pub batch: usize,
    pub threads: usize,
    /// The convolutions' arithmetic as run (`f32`, or `bf16` where the CPU has AVX512-BF16).
    pub precision: String,
    pub repeats: usize,
    /// Best (shortest) of the timed forwards.
    pub seconds_per_forward: f64,
    pub seconds_forwards: Vec<f64>,
    pub seconds_load: f64,
    /// Peak resident memory of the whole run (VmHWM), and of the forwards alone.
    pub peak_rss_bytes: Option<u64>,
    pub peak_rss_forward_bytes: Option<u64>,
    /// The estimate of the activations' memory the size was checked with.
    pub estimated_activation_bytes: u64,
    pub phases: Vec<Phase>,
}

impl BenchReport for UnetReport {
    fn title(&self) -> String {
        format!(
            "text2ct bench unet: latent {}, batch {}, {} threads, {}, {}",
            dims_str(&self.latent),
            self.batch,
            self.threads,
            self.precision,
            self.model
        )
    }
    fn summary(&self) -> Vec<(String, String)> {
        vec![
            ("seconds per forward (best)".into(), format!("{:.3}", self.seconds_per_forward)),
            ("peak RSS (whole run)".into(), peak_str(self.peak_rss_bytes)),
        ]
    }
    fn phases(&self) -> &[Phase] {
        &self.phases
    }
}

/// U-Net config and weights from a model folder's card.
fn card_configs(dir: &Path) -> Result<(ModelCard, serde_json::Value, serde_json::Value)> {
    let card = ModelCard::load(dir)?;
    let u = ModelCard::config_json(dir, &card.unet.config)?;
    let v = ModelCard::config_json(dir, &card.vae.config)?;
    Ok((card, u, v))
}

/// Time `repeats` U-Net forwards on the benchmark's inputs (`speed::unet_inputs`).
pub fn bench_unet(o: &BenchOptions, latent: [usize; 4], batch: usize) -> Result<UnetReport> {
    let ((m, estimate), threads) = o.run(|| {
        let cfg = match &o.model {
            None => UnetConfig::text2ct(),
            Some(dir) => UnetConfig::from_json_str(&card_configs(dir)?.1.to_string()).map_err(model_err)?,
        };
        speed::check_unet_latent(&cfg, latent, batch).map_err(|e| BenchError::Input(format!("--latent: {e}")))?;
        let [_, lx, ly, lz] = latent;
        let estimate = memory::unet_activations(&cfg, [lx, ly, lz], batch).map_err(model_err)?;
        let what = format!("a U-Net forward on a latent {} at batch {batch}", dims_str(&latent));
        fits(estimate, &what, "use a smaller --latent")?;
        let mut m = Meter::new();
        let mut unet = m.phase("load", || match &o.model {
            None => Unet::new(&cfg, 0, &o.device).map_err(model_err),
            Some(dir) => {
                let card = ModelCard::load(dir)?;
                Unet::load_checkpoint(&cfg, &dir.join(&card.unet.weights), &o.device).map(|c| c.unet).map_err(model_err)
            }
        })?;
        unet.set_precision(o.precision_in_effect());
        fits(estimate, &what, "use a smaller --latent")?;
        let (x, t, cond) = speed::unet_inputs(&cfg, latent, batch, &o.device).map_err(model_err)?;
        for i in 0..o.repeats {
            m.phase(&format!("forward {}", i + 1), || {
                let y = unet.forward_cond(x.clone(), t.clone(), &cond).map_err(model_err)?;
                speed::sync(&y);
                Ok(())
            })?;
        }
        Ok((m, estimate))
    })?;
    Ok(UnetReport {
        bench: "unet",
        model: o.model_name(),
        latent,
        batch,
        threads,
        precision: o.precision_in_effect().to_string(),
        repeats: o.repeats,
        seconds_per_forward: m.best("forward"),
        seconds_forwards: m.each("forward"),
        seconds_load: m.best("load"),
        peak_rss_bytes: m.whole_peak,
        peak_rss_forward_bytes: m.peak_of("forward"),
        estimated_activation_bytes: estimate,
        phases: m.phases,
    })
}

// ------------------------------------------------------------------------------------------------
// VAE

/// How `text2ct bench vae` decodes.
#[derive(Clone, Debug, PartialEq)]
pub enum VaeDecode {
    /// The whole latent, in `splits` slabs (1: `Vae::decode`).
    OnePass { splits: usize },
    /// MONAI's Gaussian sliding window: window in latent voxels, overlap.
    Sliding { window: [usize; 3], overlap: f64 },
    /// Both, from the same latent, and the HU difference between them.
    Both { splits: usize, window: [usize; 3], overlap: f64 },
}

/// `text2ct bench vae`.
#[derive(Clone, Debug, Serialize)]
pub struct VaeReport {
    pub bench: &'static str,
    pub model: String,
    pub size: [usize; 3],
    pub latent: [usize; 4],
    pub threads: usize,
    /// The convolutions' arithmetic as run (`f32`, or `bf16` where the CPU has AVX512-BF16).
    pub precision: String,
    pub repeats: usize,
    /// How `seconds_decode` decoded.
    pub decode: String,
    pub seconds_encode: f64,
    pub seconds_decode: f64,
    pub seconds_encodes: Vec<f64>,
    pub seconds_decodes: Vec<f64>,
    pub seconds_load: f64,
    pub peak_rss_bytes: Option<u64>,
    pub peak_rss_encode_bytes: Option<u64>,
    pub peak_rss_decode_bytes: Option<u64>,
    /// With `--decode both`: the sliding window's time and peak, and how far its output is from the
    /// one-pass decode's, in HU (`x · 2000 − 1000` clipped to [−1000, 1000]; mean, 99th percentile
    /// and largest |ΔHU| over all voxels) and as ‖Δx‖ / ‖x‖ of the raw outputs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sliding: Option<SlidingComparison>,
    pub phases: Vec<Phase>,
}

/// The sliding window against the one-pass decode (`--decode both`).
#[derive(Clone, Debug, Serialize)]
pub struct SlidingComparison {
    pub decode: String,
    pub seconds_decode: f64,
    pub peak_rss_decode_bytes: Option<u64>,
    pub hu_mean_abs_diff: f64,
    pub hu_p99_abs_diff: f64,
    pub hu_max_abs_diff: f64,
    pub output_rel_l2: f64,
    /// Voxels at the clip limits (−1000 or 1000 HU) in the one-pass output, a fraction.
    pub clipped_fraction: f64,
}

impl BenchReport for VaeReport {
    fn title(&self) -> String {
        format!(
            "text2ct bench vae: image {} (latent {}), decode {}, {} threads, {}, {}",
            dims_str(&self.size),
            dims_str(&self.latent),
            self.decode,
            self.threads,
            self.precision,
            self.model
        )
    }
    fn summary(&self) -> Vec<(String, String)> {
        let mut v = vec![
            ("seconds encode (best)".into(), format!("{:.3}", self.seconds_encode)),
            ("seconds decode (best)".into(), format!("{:.3}", self.seconds_decode)),
        ];
        if let Some(s) = &self.sliding {
            v.push((format!("seconds decode, {}", s.decode), format!("{:.3}", s.seconds_decode)));
            v.push((
                "|ΔHU| sliding vs one pass".into(),
                format!(
                    "mean {:.2}, 99th percentile {:.1}, max {:.1} (raw output relative L2 {:.2e}; {:.0} % of voxels at the clip limits)",
                    s.hu_mean_abs_diff,
                    s.hu_p99_abs_diff,
                    s.hu_max_abs_diff,
                    s.output_rel_l2,
                    100.0 * s.clipped_fraction
                ),
            ));
        }
        v.push(("peak RSS (whole run)".into(), peak_str(self.peak_rss_bytes)));
        v
    }
    fn phases(&self) -> &[Phase] {
        &self.phases
    }
}

fn describe_vae_decode(splits: usize) -> String {
    if splits > 1 {
        format!("one pass in {splits} slabs")
    } else {
        "one pass".into()
    }
}

fn describe_window(window: [usize; 3], overlap: f64) -> String {
    format!("sliding window {} latent voxels, overlap {overlap}", dims_str(&window))
}

/// HU difference statistics of two decoder outputs (`[.., X, Y, Z]`, raw values in [0, 1]).
fn hu_difference(a: &[f32], b: &[f32]) -> (f64, f64, f64, f64, f64) {
    let hu = |v: f32| f64::from(text2ct_io::transform::unit_to_hu(v));
    let mut d: Vec<f64> = a.iter().zip(b).map(|(&x, &y)| (hu(x) - hu(y)).abs()).collect();
    let n = d.len().max(1) as f64;
    let mean = d.iter().sum::<f64>() / n;
    let max = d.iter().copied().fold(0.0, f64::max);
    let k = ((0.99 * (d.len() as f64 - 1.0)).round().max(0.0) as usize).min(d.len().saturating_sub(1));
    let p99 = if d.is_empty() { 0.0 } else { *d.select_nth_unstable_by(k, |x, y| x.total_cmp(y)).1 };
    let (num, den) =
        a.iter().zip(b).fold((0f64, 0f64), |(n, s), (&x, &y)| (n + f64::from(x - y).powi(2), s + f64::from(x).powi(2)));
    let rel = if den > 0.0 { (num / den).sqrt() } else { num.sqrt() };
    let clipped = a.iter().filter(|&&v| hu(v).abs() >= 1000.0).count() as f64 / n;
    (mean, p99, max, rel, clipped)
}

fn values(t: Tensor<5>) -> Result<Vec<f32>> {
    t.into_data().convert::<f32>().try_into_vec::<f32>().map_err(|e| BenchError::Input(format!("{e:?}")))
}

/// Time `repeats` encodes (posterior mean) of the benchmark image and decodes of its latent.
pub fn bench_vae(o: &BenchOptions, size: [usize; 3], decode: &VaeDecode) -> Result<VaeReport> {
    let ((m, latent, desc, sliding), threads) = o.run(|| {
        let cfg = match &o.model {
            None => VaeConfig::maisi(),
            Some(dir) => VaeConfig::from_json_str(&card_configs(dir)?.2.to_string()).map_err(model_err)?,
        };
        let f = cfg.downsample_factor();
        if size.iter().any(|&s| s == 0 || s % f != 0) {
            return input(format!("--size {size:?}: each extent must be a positive multiple of {f}"));
        }
        let lat = size.map(|s| s / f);
        let (one_splits, window) = match decode {
            VaeDecode::OnePass { splits } => (Some(*splits), None),
            VaeDecode::Sliding { window, overlap } => (None, Some((*window, *overlap))),
            VaeDecode::Both { splits, window, overlap } => (Some(*splits), Some((*window, *overlap))),
        };
        if one_splits == Some(0) {
            return input("--splits must be at least 1");
        }
        if let Some((w, ov)) = window {
            if w.contains(&0) {
                return input(format!("--window {w:?} must be positive on every axis"));
            }
            if !(0.0..1.0).contains(&ov) {
                return input(format!("--overlap {ov} must be in [0, 1)"));
            }
        }
        let mut need = memory::encoder_activations(&cfg, size);
        if let Some(s) = one_splits {
            need = need.max(memory::decoder_activations(&cfg, lat, DecodeShape::OnePass { splits: s }));
        }
        if let Some((w, _)) = window {
            need = need.max(memory::decoder_activations(&cfg, lat, DecodeShape::Sliding { window: w }));
        }
        let what = format!("encoding and decoding an image {}", dims_str(&size));
        fits(need, &what, "use a smaller --size, a smaller --window or more --splits")?;
        let mut m = Meter::new();
        let mut vae = m.phase("load", || match &o.model {
            None => Vae::new(&cfg, 0, &o.device).map_err(model_err),
            Some(dir) => {
                let card = ModelCard::load(dir)?;
                Vae::load(&cfg, &dir.join(&card.vae.weights), &o.device).map_err(model_err)
            }
        })?;
        vae.set_precision(o.precision_in_effect());
        fits(need, &what, "use a smaller --size, a smaller --window or more --splits")?;
        let img = speed::vae_image(&cfg, size, &o.device);
        let mut z = None;
        for i in 0..o.repeats {
            let mu = m.phase(&format!("encode {}", i + 1), || {
                let mu = vae.encode_mean(img.clone());
                speed::sync(&mu);
                Ok(mu)
            })?;
            z = Some(mu);
        }
        drop(img);
        let z = z.ok_or_else(|| BenchError::Input("no repeats".into()))?;
        let latent = z.dims();
        let mut one_out = None;
        if let Some(s) = one_splits {
            for i in 0..o.repeats {
                let out = m.phase(&format!("decode {}", i + 1), || {
                    let out = vae.decode_split(z.clone(), s).map_err(model_err)?;
                    speed::sync(&out);
                    Ok(out)
                })?;
                one_out = Some(out);
            }
        }
        let mut sliding = None;
        if let Some((w, ov)) = window {
            let w = [w[0].min(latent[2]), w[1].min(latent[3]), w[2].min(latent[4])];
            let name = if one_splits.is_some() { "decode sliding" } else { "decode" };
            let opts = SlidingWindow::gaussian(w, ov);
            let mut out = None;
            for i in 0..o.repeats {
                out = Some(m.phase(&format!("{name} {}", i + 1), || {
                    let y = vae.decode_sliding_window_with(z.clone(), &opts, &mut |_, _| {}).map_err(model_err)?;
                    speed::sync(&y);
                    Ok(y)
                })?);
            }
            if let (Some(a), Some(b)) = (one_out.take(), out) {
                let (hu_mean, hu_p99, hu_max, rel, clipped) = hu_difference(&values(a)?, &values(b)?);
                sliding = Some(SlidingComparison {
                    decode: describe_window(w, ov),
                    seconds_decode: m.best("decode sliding"),
                    peak_rss_decode_bytes: m.peak_of("decode sliding"),
                    hu_mean_abs_diff: hu_mean,
                    hu_p99_abs_diff: hu_p99,
                    hu_max_abs_diff: hu_max,
                    output_rel_l2: rel,
                    clipped_fraction: clipped,
                });
            }
        }
        let desc = match (one_splits, window) {
            (Some(s), _) => describe_vae_decode(s),
            (None, Some((w, ov))) => describe_window([w[0].min(lat[0]), w[1].min(lat[1]), w[2].min(lat[2])], ov),
            (None, None) => String::new(),
        };
        Ok((m, [latent[1], latent[2], latent[3], latent[4]], desc, sliding))
    })?;
    // With both, "decode N" are the one-pass decodes; "decode sliding N" are listed apart.
    let one_pass: Vec<f64> = m
        .phases
        .iter()
        .filter(|p| p.name.starts_with("decode") && !p.name.starts_with("decode sliding"))
        .map(|p| p.seconds)
        .collect();
    let peak_decode = m
        .phases
        .iter()
        .filter(|p| p.name.starts_with("decode") && !p.name.starts_with("decode sliding"))
        .filter_map(|p| p.peak_rss_bytes)
        .max();
    Ok(VaeReport {
        bench: "vae",
        model: o.model_name(),
        size,
        latent,
        threads,
        precision: o.precision_in_effect().to_string(),
        repeats: o.repeats,
        decode: desc,
        seconds_encode: m.best("encode"),
        seconds_decode: one_pass.iter().copied().fold(f64::INFINITY, f64::min),
        seconds_encodes: m.each("encode"),
        seconds_decodes: one_pass,
        seconds_load: m.best("load"),
        peak_rss_bytes: m.whole_peak,
        peak_rss_encode_bytes: m.peak_of("encode"),
        peak_rss_decode_bytes: peak_decode,
        sliding,
        phases: m.phases,
    })
}

// ------------------------------------------------------------------------------------------------
// Generate

/// `text2ct bench generate`'s options beyond [`BenchOptions`]; `None`: the card's.
#[derive(Clone, Debug, Default)]
pub struct GenerateBench {
    pub size: Option<[usize; 3]>,
    pub steps: Option<usize>,
    pub guidance: Option<f32>,
    pub decode: Option<DecodeMode>,
    pub decode_window: Option<[usize; 3]>,
    pub decode_splits: Option<usize>,
}

/// The report text every generate benchmark encodes.
pub const BENCH_PROMPT: &str =
    "Findings: Trachea and both main bronchi are open. Mild emphysematous changes in both lungs. \
     Right pleural effusion. Impression: Right pleural effusion. Emphysema.";

/// `text2ct bench generate`.
#[derive(Clone, Debug, Serialize)]
pub struct GenerateReport {
    pub bench: &'static str,
    pub model: String,
    pub size: [usize; 3],
    pub latent: [usize; 3],
    pub threads: usize,
    /// The convolutions' arithmetic as run (`f32`, or `bf16` where the CPU has AVX512-BF16).
    pub precision: String,
    pub repeats: usize,
    pub steps: usize,
    pub guidance: f32,
    pub sampler: String,
    pub decode: String,
    /// Text encoding + sampling + decoding of one volume (best run; loading not included).
    pub seconds_total: f64,
    pub seconds_text: f64,
    pub seconds_sampling: f64,
    pub seconds_per_step: f64,
    pub seconds_decode: f64,
    pub seconds_load: f64,
    /// The card's step count, and `seconds_total` with the sampling scaled to it (what a run at
    /// the card's steps would take, from a shortened `--steps` run).
    pub steps_scaled_to: usize,
    pub seconds_total_scaled: f64,
    /// Peak resident memory of the whole run (loading included; for random weights also writing
    /// them), and of the generation alone (after loading; `None` where the peak cannot be reset).
    pub peak_rss_bytes: Option<u64>,
    pub peak_rss_generate_bytes: Option<u64>,
    pub phases: Vec<Phase>,
}

impl BenchReport for GenerateReport {
    fn title(&self) -> String {
        format!(
            "text2ct bench generate: volume {} (latent {}), {} {} steps, guidance {}, decode {}, {} threads, {}, {}",
            dims_str(&self.size),
            dims_str(&self.latent),
            self.sampler,
            self.steps,
            self.guidance,
            self.decode,
            self.threads,
            self.precision,
            self.model
        )
    }
    fn summary(&self) -> Vec<(String, String)> {
        vec![
            ("seconds per volume (text + sampling + decode, best)".into(), format!("{:.2}", self.seconds_total)),
            ("seconds per sampling step".into(), format!("{:.3}", self.seconds_per_step)),
            (
                format!("seconds per volume scaled to {} steps", self.steps_scaled_to),
                format!("{:.1}", self.seconds_total_scaled),
            ),
            ("peak RSS (generation)".into(), peak_str(self.peak_rss_generate_bytes)),
            ("peak RSS (whole run)".into(), peak_str(self.peak_rss_bytes)),
        ]
    }
    fn phases(&self) -> &[Phase] {
        &self.phases
    }
}

/// Write a model folder with random weights of the sizes `card` describes (its configs must be
/// inline): the card with its weight files renamed to `vae.safetensors`, `unet.safetensors` and
/// `text_encoder.safetensors`, and those files (PyTorch default initialisation from `seed`). For
/// benchmarks and tests: the networks have the card's shapes and nothing learnt. Only the 3D-CLIP
/// text encoder (its tokenizer is built in).
pub fn write_random_model(dir: &Path, card: &ModelCard, seed: u64) -> Result<ModelCard> {
    if card.text_encoder.kind != TextEncoderKind::Clip3d {
        return input("random model folders have the 3D-CLIP text encoder only");
    }
    let inline = |c: &ConfigRef, what: &str| match c {
        ConfigRef::Inline(v) => Ok(v.to_string()),
        ConfigRef::File(f) => input(format!("random model: the {what} config must be inline in the card, not {f:?}")),
    };
    let vae_cfg = VaeConfig::from_json_str(&inline(&card.vae.config, "VAE")?).map_err(model_err)?;
    let unet_cfg = UnetConfig::from_json_str(&inline(&card.unet.config, "U-Net")?).map_err(model_err)?;
    let text_cfg =
        ClipTextConfig::from_json_str(&inline(&card.text_encoder.config, "text encoder")?).map_err(model_err)?;
    std::fs::create_dir_all(dir).map_err(|e| BenchError::Input(format!("creating {}: {e}", dir.display())))?;
    let cpu = Device::flex();
    let mut card = card.clone();
    card.vae.weights = "vae.safetensors".into();
    card.unet.weights = "unet.safetensors".into();
    card.text_encoder.weights = "text_encoder.safetensors".into();
    card.trained_on = "nothing: random weights of the card's sizes (text2ct bench)".into();
    card.provenance = format!("text2ct_bench::speed::write_random_model, seed {seed}");
    {
        let mut rec = RecordingSource::new(seed);
        let _ = VaeNet::build(&vae_cfg, &mut rec, &cpu);
        rec.sd.write_safetensors(&dir.join(&card.vae.weights), None).map_err(model_err)?;
    }
    {
        let mut rec = RecordingSource::new(seed.wrapping_add(1));
        let _ = UnetNet::build(&unet_cfg, &mut rec, &cpu).map_err(model_err)?;
        rec.sd.write_safetensors(&dir.join(&card.unet.weights), None).map_err(model_err)?;
    }
    {
        let text = ClipTextEncoder::new(&text_cfg, seed.wrapping_add(2), &cpu).map_err(model_err)?;
        let sd = text.to_state_dict().map_err(model_err)?;
        drop(text);
        sd.write_safetensors(&dir.join(&card.text_encoder.weights), None).map_err(model_err)?;
    }
    card.save(dir)?;
    card.validate(dir)?;
    Ok(card)
}

/// Removes a folder when dropped (the random model of one benchmark run).
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Generate `repeats` volumes from [`BENCH_PROMPT`] through the real pipeline and time each stage.
pub fn bench_generate(o: &BenchOptions, g: &GenerateBench) -> Result<GenerateReport> {
    let (r, threads) = o.run(|| {
        // What can be checked before loading anything: the sizes against the card's networks.
        let (card, ucfg, vcfg) = match &o.model {
            None => {
                let c = ModelCard::text2ct_release();
                let u = ModelCard::config_json(Path::new("."), &c.unet.config)?;
                let v = ModelCard::config_json(Path::new("."), &c.vae.config)?;
                (c, u, v)
            }
            Some(dir) => card_configs(dir)?,
        };
        let ucfg = UnetConfig::from_json_str(&ucfg.to_string()).map_err(model_err)?;
        let vcfg = VaeConfig::from_json_str(&vcfg.to_string()).map_err(model_err)?;
        let size = g.size.unwrap_or(card.output.size);
        let f = 4 * ucfg.size_multiple();
        if size.iter().any(|&s| s == 0 || s % f != 0) {
            return input(format!("--size {size:?}: each extent must be a positive multiple of {f}"));
        }
        let lat = size.map(|s| s / 4);
        let guidance = g.guidance.unwrap_or(card.sampler.guidance);
        let batch = if guidance == 0.0 || guidance == 1.0 { 1 } else { 2 };
        let unet_need = memory::unet_activations(&ucfg, lat, batch).map_err(model_err)?;
        fits(unet_need, &format!("sampling a latent {} at batch {batch}", dims_str(&lat)), "use a smaller --size")?;
        if g.decode_splits.is_some_and(|s| s == 0) {
            return input("--decode-splits must be at least 1");
        }
        // The decoding asked for (`SampleOptions::set_decode`), for its estimate; without a decode
        // option one that fits is chosen after loading (`memory::fit_decode`, as `generate` does).
        let asked = match (g.decode, g.decode_window, g.decode_splits) {
            (None, None, None) => None,
            (Some(DecodeMode::OnePass), _, s) | (None, None, s @ Some(_)) => {
                Some(DecodeShape::OnePass { splits: s.unwrap_or(vcfg.num_splits.max(1)) })
            }
            (_, w, _) => w.or(card.decode.window).map(|window| DecodeShape::Sliding { window }),
        };
        if let Some(how) = asked {
            let decode_need = memory::decoder_activations(&vcfg, lat, how);
            fits(decode_need, "decoding the volume", "decode with a smaller --decode-window or more --decode-splits")?;
        }

        let mut m = Meter::new();
        let _tmp;
        let dir = match &o.model {
            Some(d) => d.clone(),
            None => {
                let d = std::env::temp_dir().join(format!("text2ct-bench-model-{}", std::process::id()));
                _tmp = TempDir(d.clone());
                m.phase("write random weights", || write_random_model(&d, &card, 0))?;
                d
            }
        };
        let mut p = m.phase("load", || Ok(Pipeline::load(&dir, &o.device)?))?;
        p.set_precision(o.precision_in_effect());
        let mut opts = p.default_options();
        if let Some(s) = g.size {
            opts.size = s;
        }
        if let Some(s) = g.steps {
            opts.steps = s;
        }
        opts.guidance = guidance;
        opts.set_decode(g.decode, g.decode_window, g.decode_splits, p.card.decode.window, p.default_decode_splits())?;
        opts.validate()?;
        let latent = p.check_size(opts.size)?;
        // As `generate`: without a decode option, a decoding that fits in the memory available.
        let budget = text2ct_io::memory::budget(None).map_err(model_err)?;
        if let (None, None, None, Some(b)) = (g.decode, g.decode_window, g.decode_splits, &budget) {
            text2ct_generate::memory::fit_decode(&p, &mut opts, b.bytes)?;
        }
        text2ct_generate::memory::check_fits_in(&p, &opts, budget)?;
        let mut runs = Vec::new();
        for i in 0..o.repeats {
            let gen = m.phase(&format!("generate {}", i + 1), || {
                Ok(p.generate_volume(BENCH_PROMPT, 0, None, &opts, &mut |_, _| {})?)
            })?;
            runs.push(gen.timings);
        }
        let best = runs
            .iter()
            .min_by(|a, b| (a.text + a.sampling + a.decoding).total_cmp(&(b.text + b.sampling + b.decoding)))
            .cloned()
            .unwrap_or_default();
        let decode = p.describe_decode(&opts, latent);
        Ok((m, opts, best, decode, latent, p.card.sampler.steps))
    })?;
    let (m, opts, best, decode, latent, card_steps) = r;
    let per_step = best.sampling / opts.steps.max(1) as f64;
    let total = best.text + best.sampling + best.decoding;
    Ok(GenerateReport {
        bench: "generate",
        model: o.model_name(),
        size: opts.size,
        latent,
        threads,
        precision: o.precision_in_effect().to_string(),
        repeats: o.repeats,
        steps: opts.steps,
        guidance: opts.guidance,
        sampler: opts.sampler.to_string(),
        decode,
        seconds_total: total,
        seconds_text: best.text,
        seconds_sampling: best.sampling,
        seconds_per_step: per_step,
        seconds_decode: best.decoding,
        seconds_load: m.each("write random weights").iter().sum::<f64>() + m.best("load"),
        steps_scaled_to: card_steps,
        seconds_total_scaled: best.text + per_step * card_steps as f64 + best.decoding,
        peak_rss_bytes: m.whole_peak,
        peak_rss_generate_bytes: m.peak_of("generate"),
        phases: m.phases,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hu_differences() {
        // 0.5 -> 0 HU, 0.5005 -> 1 HU; 0.0 and -1.0 both clip to -1000.
        let a = [0.5f32, 0.5, 0.0, 1.0];
        let b = [0.5005f32, 0.5, -1.0, 1.0];
        let (mean, p99, max, rel, clipped) = hu_difference(&a, &b);
        assert!((mean - 0.25).abs() < 1e-3, "{mean}");
        assert!((max - 1.0).abs() < 1e-3 && (p99 - 1.0).abs() < 1e-3, "{p99} {max}");
        assert!(rel > 0.5, "{rel}");
        assert_eq!(clipped, 0.5);
    }

    #[test]
    fn options_are_checked() {
        let o =
            BenchOptions { repeats: 0, threads: None, model: None, device: Device::flex(), precision: Precision::F32 };
        assert!(bench_unet(&o, [4, 8, 8, 8], 1).unwrap_err().to_string().contains("--repeats"));
        let o = BenchOptions { repeats: 1, threads: Some(0), ..o };
        assert!(bench_unet(&o, [4, 8, 8, 8], 1).unwrap_err().to_string().contains("--threads"));
        let o = BenchOptions { threads: None, ..o };
        let e = bench_unet(&o, [4, 12, 8, 8], 1).unwrap_err().to_string();
        assert!(e.contains("--latent") && e.contains("multiples of 8"), "{e}");
        let e = bench_unet(&o, [4, 1 << 20, 1 << 20, 1 << 20], 1).unwrap_err().to_string();
        assert!(e.contains("needs about") || !cfg!(target_os = "linux"), "{e}");
        let e = bench_vae(&o, [6, 8, 8], &VaeDecode::OnePass { splits: 1 }).unwrap_err().to_string();
        assert!(e.contains("multiple of 4"), "{e}");
    }

    /// A random model folder of a tiny card loads as a pipeline and generates; the benchmark of it
    /// reports every phase.
    #[test]
    fn random_model_folder_generates() {
        let tiny = Path::new(env!("CARGO_MANIFEST_DIR")).join("../text2ct-generate/fixtures/release_tiny");
        let mut card = ModelCard::load(&tiny).unwrap();
        for c in [&mut card.vae.config, &mut card.unet.config, &mut card.text_encoder.config] {
            *c = ConfigRef::Inline(ModelCard::config_json(&tiny, c).unwrap());
        }
        let d = std::env::temp_dir().join(format!("text2ct-bench-random-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        write_random_model(&d, &card, 3).unwrap();
        let o = BenchOptions {
            repeats: 2,
            threads: Some(1),
            model: Some(d.clone()),
            device: Device::flex(),
            precision: Precision::F32,
        };
        let g = GenerateBench { size: Some([16, 16, 16]), steps: Some(2), ..Default::default() };
        let r = bench_generate(&o, &g).unwrap();
        assert_eq!((r.steps, r.latent, r.threads), (2, [4, 4, 4], 1));
        assert_eq!(r.phases.iter().filter(|p| p.name.starts_with("generate")).count(), 2);
        assert!(r.seconds_total > 0.0 && r.seconds_per_step > 0.0 && r.seconds_total_scaled > r.seconds_decode);
        let _ = std::fs::remove_dir_all(&d);
    }
}
