//! Helpers shared by the commands.

use std::path::Path;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use text2ct_io::dicom_io::{read_dicom_series, DicomInfo};
use text2ct_io::nifti_io::read_nifti;
use text2ct_io::{Limits, Volume};

/// The compute device named by `--device` (`text2ct_models::device`: cpu, or wgpu[:N] in a
/// `--features wgpu` build).
pub fn device(name: &str) -> Result<text2ct_models::burn::tensor::Device> {
    text2ct_models::device::parse(name).map_err(anyhow::Error::msg)
}

/// `--device`, shared by every command that runs networks (`#[command(flatten)]`).
#[derive(clap::Args, Clone, Debug)]
pub struct DeviceArg {
    /// Device: cpu (burn's pure-Rust flex backend), or wgpu / wgpu:N in a `--features wgpu` build.
    #[arg(long = "device", value_name = "DEVICE", default_value = "cpu")]
    pub name: String,
}

impl DeviceArg {
    pub fn get(&self) -> Result<text2ct_models::burn::tensor::Device> {
        device(&self.name)
    }
}

/// `--precision`, shared by the commands that run the U-Net or the VAE (`#[command(flatten)]`).
#[derive(clap::Args, Clone, Debug, Default)]
pub struct PrecisionArg {
    /// Arithmetic of the 3x3x3 convolutions: f32 (the default; for `generate`, the model card's
    /// `precision` when it has one) or bf16 (activations and weights rounded to bf16, products
    /// summed in f32; faster on CPUs with AVX512-BF16 — elsewhere f32 runs, and says so).
    /// GroupNorm, attention and softmax stay f32. `generate` records it in each sidecar.
    #[arg(long = "precision", value_name = "f32|bf16")]
    pub precision: Option<String>,
}

impl PrecisionArg {
    /// The precision asked for (`None`: not given), checked against the device: the bf16 kernels
    /// are CPU kernels.
    pub fn get(&self, device: &text2ct_models::burn::tensor::Device) -> Result<Option<text2ct_models::Precision>> {
        let Some(name) = &self.precision else { return Ok(None) };
        let p: text2ct_models::Precision = name.parse().map_err(|e| anyhow::anyhow!("--precision: {e}"))?;
        if p != text2ct_models::Precision::F32 && *device != text2ct_models::burn::tensor::Device::flex() {
            bail!("--precision {p} runs on the CPU's kernels only; with --device {device:?} use f32 (or leave it out)");
        }
        Ok(Some(p))
    }
}

/// `--max-memory`: a byte count (`8G`, `8GiB`, `512M`, bytes), at least 64 MiB.
pub fn max_memory(s: Option<&str>) -> Result<Option<u64>> {
    let Some(s) = s else { return Ok(None) };
    let b = text2ct_io::memory::parse_bytes(s).map_err(|e| anyhow::anyhow!("--max-memory: {e}"))?;
    if b < 64 << 20 {
        bail!("--max-memory {s} is below 64 MiB: no generation fits in that");
    }
    Ok(Some(b))
}

/// How generation decodes its latent (`generate`, `bench generate`; `#[command(flatten)]`).
#[derive(clap::Args, Clone, Debug)]
pub struct DecodeArgs {
    /// one-pass: the whole latent at once (GroupNorm statistics over the whole volume, every voxel
    /// computed once; in --decode-splits slabs to bound memory), or sliding: window by window with
    /// Gaussian blending, as the release decodes (each voxel ~4.6 times at its overlap of 0.4).
    /// Default: the model card's (a sliding window for the release).
    #[arg(long)]
    pub decode: Option<String>,
    /// VAE sliding-window size X,Y,Z in latent voxels (default from the card; the release uses
    /// 80,80,80, clipped to the latent). Peak memory grows with the window, not the volume: on a
    /// CPU with 8 GiB use e.g. 32,32,16 for 512x512x128 outputs. Implies --decode sliding.
    #[arg(long)]
    pub decode_window: Option<String>,
    /// Slabs of the one-pass decode's largest layer (MAISI's num_splits; default: the VAE config's,
    /// 4 for the release): memory falls with more slabs, each slab boundary adds two planes of
    /// work. 1 decodes without splits. Implies --decode one-pass.
    #[arg(long)]
    pub decode_splits: Option<usize>,
}

/// The decode mode, window and splits a command line gave (each `None` where not given).
pub type DecodeChoice = (Option<text2ct_generate::pipeline::DecodeMode>, Option<[usize; 3]>, Option<usize>);

impl DecodeArgs {
    /// The mode, window and splits given (each `None` where not given), checked.
    pub fn parse(&self) -> Result<DecodeChoice> {
        let mode = match self.decode.as_deref() {
            Some(m) => Some(m.parse().map_err(|e| anyhow::anyhow!("--decode: {e}"))?),
            None => None,
        };
        let window = match &self.decode_window {
            Some(w) => Some(parse_size(w).map_err(|e| anyhow::anyhow!("--decode-window: {e}"))?),
            None => None,
        };
        if let Some(s) = self.decode_splits {
            let max = text2ct_generate::pipeline::MAX_DECODE_SPLITS;
            if s == 0 || s > max {
                bail!("--decode-splits must be in 1..={max}, got {s}");
            }
        }
        Ok((mode, window, self.decode_splits))
    }
}

/// Parse "X,Y,Z" into three numbers.
pub fn parse_triple<T: std::str::FromStr>(s: &str, what: &str) -> Result<[T; 3]> {
    let parts: Vec<&str> = s.split(',').map(str::trim).collect();
    if parts.len() != 3 {
        bail!("{what} must be three comma-separated numbers like 64,64,32, got {s:?}");
    }
    let mut out = Vec::with_capacity(3);
    for p in parts {
        out.push(p.parse::<T>().map_err(|_| anyhow::anyhow!("{what}: {p:?} is not a number"))?);
    }
    let arr: [T; 3] = out.try_into().map_err(|_| anyhow::anyhow!("{what}: need three values"))?;
    Ok(arr)
}

/// A positive spacing triple.
pub fn parse_spacing(s: &str) -> Result<[f64; 3]> {
    let v: [f64; 3] = parse_triple(s, "spacing")?;
    if v.iter().any(|x| !x.is_finite() || *x <= 0.0) {
        bail!("spacing must be positive millimetres, got {s:?}");
    }
    Ok(v)
}

/// A positive size triple.
pub fn parse_size(s: &str) -> Result<[usize; 3]> {
    let v: [usize; 3] = parse_triple(s, "size")?;
    if v.contains(&0) {
        bail!("size must be positive, got {s:?}");
    }
    Ok(v)
}

/// Read a DICOM series folder, saying on stderr which files were skipped and why (not DICOM,
/// or not an image, e.g. a structured report).
pub fn read_dicom(path: &Path, series: Option<&str>) -> Result<(Volume, DicomInfo)> {
    let (v, info) = read_dicom_series(path, series, &Limits::default())?;
    for (p, why) in &info.skipped {
        eprintln!("note: skipped {}: {why}", p.display());
    }
    Ok((v, info))
}

/// Check an output folder before any work (it need not exist yet; nothing is created):
/// `text2ct_io::error::check_output_dir`, the error naming `option`.
pub fn output_dir(path: &Path, option: &str) -> Result<()> {
    text2ct_io::error::check_output_dir(path).map_err(|e| anyhow::anyhow!("{option}: {e}"))
}

/// [`output_dir`] for an output file (its folder; the file must not be a folder).
pub fn output_file(path: &Path, option: &str) -> Result<()> {
    text2ct_io::error::check_output_file(path).map_err(|e| anyhow::anyhow!("{option}: {e}"))
}

/// Refuse values read from `path` (for `what`, e.g. "--t") that hold NaN or an infinity: a
/// network fed one writes all-NaN output with no error.
pub fn check_finite(values: &[f32], path: &Path, what: &str) -> Result<()> {
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        let n = values.iter().filter(|v| !v.is_finite()).count();
        bail!("{}: {what} holds a non-finite value ({} at flat index {i}; {n} in all)", path.display(), values[i]);
    }
    Ok(())
}

/// Load a volume: a NIfTI file (`.nii`, `.nii.gz`) or a folder of DICOM slices.
pub fn load_volume(path: &Path, series: Option<&str>) -> Result<Volume> {
    if path.is_dir() {
        return Ok(read_dicom(path, series)?.0);
    }
    let name = path.to_string_lossy();
    if name.ends_with(".nii") || name.ends_with(".nii.gz") {
        return Ok(read_nifti(path, &Limits::default())?.0);
    }
    if !path.exists() {
        bail!("{}: no such file or folder", path.display());
    }
    read_nifti(path, &Limits::default())
        .map(|(v, _)| v)
        .with_context(|| format!("{}: not a NIfTI file (.nii/.nii.gz) or DICOM folder", path.display()))
}

/// A progress bar with the house style.
pub fn progress(len: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template("{msg:>10} [{bar:40.cyan/blue}] {pos}/{len} ({per_sec}, eta {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb
}

/// Default number of worker threads.
pub fn default_jobs() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2)
}
