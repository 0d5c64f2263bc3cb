//! `text2ct vae`: encode volumes to MAISI latents and decode latents to CT, with the MAISI VAE.
//!
//! - `text2ct vae encode --config C.json --weights W --input IN --output OUT.npy [--sample --seed S]`
//!   IN is a `.npy` float32 `[B, 1, X, Y, Z]` already in [0, 1], or a NIfTI volume (HU clipped to
//!   [-1000, 1000] and mapped to [0, 1]). OUT gets the posterior mean `[B, 4, X/4, Y/4, Z/4]`
//!   (with `--sample`: `mu + eps * sigma`, eps from the seed).
//! - `text2ct vae decode --config C.json --weights W --input Z.npy --output OUT [--window X,Y,Z --overlap F]`
//!   OUT `.npy` gets the raw decoder output float32 `[B, 1, 4X, 4Y, 4Z]`; OUT `.nii`/`.nii.gz` gets
//!   int16 HU (`x * 2000 - 1000`, clipped to [-1000, 1000], truncated toward zero as Text2CT's
//!   `np.int16` does) with an axis-aligned affine from `--spacing` (default 0.75,0.75,1.5) and
//!   origin 0. With a batch of several latents, NIfTI outputs get `_b<i>` before the extension.
//!   `--window` decodes with MONAI's Gaussian sliding window (sigma 0.125 * window); as in MAISI's
//!   `dynamic_infer`, the window is clipped to the latent extent. `--splits N` decodes the whole
//!   latent in one pass, each layer in N slabs (`Vae::decode_split`: bounded memory, whole-volume
//!   GroupNorm statistics). Sizes are checked against the memory available first.
//! - `--precision bf16` (encode, decode) runs the 3x3x3 convolutions with bf16 products summed in
//!   f32 (CPU with AVX512-BF16; elsewhere f32, said once).
//! - `text2ct vae convert --input W.pt --output W.safetensors`: f32 safetensors with MONAI names.
//!
//! The config is the JSON of `AutoencoderKlMaisi`'s constructor arguments (or a MAISI model
//! config holding them under `autoencoder_def`).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use text2ct_io::nifti_io::{read_nifti, write_nifti, WriteOptions};
use text2ct_io::{Affine, Limits, Volume};
use text2ct_models::burn::tensor::{Device, Tensor, TensorData};
use text2ct_models::memory::{self, DecodeShape};
use text2ct_models::{NpyArray, Precision, SlidingWindow, Vae, VaeConfig};

#[derive(clap::Args, Debug)]
pub struct VaeArgs {
    #[command(subcommand)]
    pub command: VaeCommand,
}

#[derive(clap::Subcommand, Debug)]
pub enum VaeCommand {
    /// Encode a volume ([0,1] .npy or NIfTI in HU) to the latent posterior mean (or a sample).
    Encode(EncodeArgs),
    /// Decode a latent .npy to the decoder output (.npy) or an int16 HU NIfTI.
    Decode(DecodeArgs),
    /// Convert a MONAI VAE checkpoint (.pt, possibly nested/prefixed) to .safetensors.
    Convert(ConvertArgs),
}

#[derive(clap::Args, Debug)]
pub struct EncodeArgs {
    /// VAE config JSON (AutoencoderKlMaisi constructor arguments).
    #[arg(long)]
    pub config: PathBuf,
    /// Weights: MONAI state dict (.pt/.pth) or .safetensors.
    #[arg(long)]
    pub weights: PathBuf,
    /// Input: .npy float32 [B,1,X,Y,Z] in [0,1], or .nii/.nii.gz in HU.
    #[arg(long)]
    pub input: PathBuf,
    /// Output latent .npy [B,4,X/4,Y/4,Z/4].
    #[arg(long)]
    pub output: PathBuf,
    /// Write a posterior sample mu + eps*sigma instead of the mean.
    #[arg(long)]
    pub sample: bool,
    /// Seed of eps for --sample.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub device: crate::util::DeviceArg,
    #[command(flatten)]
    pub precision: crate::util::PrecisionArg,
}

#[derive(clap::Args, Debug)]
pub struct DecodeArgs {
    /// VAE config JSON (AutoencoderKlMaisi constructor arguments).
    #[arg(long)]
    pub config: PathBuf,
    /// Weights: MONAI state dict (.pt/.pth) or .safetensors.
    #[arg(long)]
    pub weights: PathBuf,
    /// Latent .npy float32 [B,4,X,Y,Z].
    #[arg(long)]
    pub input: PathBuf,
    /// Output: .npy (raw decoder output) or .nii/.nii.gz (int16 HU).
    #[arg(long)]
    pub output: PathBuf,
    /// Sliding-window size in latent voxels, X,Y,Z (e.g. 80,80,32); without it, one pass.
    #[arg(long, value_delimiter = ',')]
    pub window: Option<Vec<usize>>,
    /// One pass over the whole latent in this many slabs of the largest layer (GroupNorm
    /// statistics over the whole volume, each convolution slab by slab: bounded memory, the same
    /// result as without splits to float rounding); 1 or absent: one pass without splits.
    #[arg(long)]
    pub splits: Option<usize>,
    /// Overlap between windows, in [0,1).
    #[arg(long, default_value_t = 0.4)]
    pub overlap: f64,
    /// Voxel spacing in mm of the NIfTI output, X,Y,Z.
    #[arg(long, value_delimiter = ',', default_values_t = [0.75, 0.75, 1.5])]
    pub spacing: Vec<f64>,
    #[command(flatten)]
    pub device: crate::util::DeviceArg,
    #[command(flatten)]
    pub precision: crate::util::PrecisionArg,
}

#[derive(clap::Args, Debug)]
pub struct ConvertArgs {
    /// MONAI VAE checkpoint (.pt/.pth or .safetensors).
    #[arg(long)]
    pub input: PathBuf,
    /// Output .safetensors (f32, MONAI key names).
    #[arg(long)]
    pub output: PathBuf,
}

pub fn run(args: VaeArgs) -> anyhow::Result<()> {
    match args.command {
        VaeCommand::Encode(a) => encode(a),
        VaeCommand::Decode(a) => decode(a),
        VaeCommand::Convert(a) => {
            let n = text2ct_models::convert_to_safetensors(&a.input, &a.output)?;
            eprintln!("wrote {} ({n} tensors)", a.output.display());
            Ok(())
        }
    }
}

fn load_vae(config: &Path, weights: &Path, device: &Device, precision: Option<Precision>) -> anyhow::Result<Vae> {
    let cfg = VaeConfig::from_json_file(config)?;
    let t = Instant::now();
    let mut vae = Vae::load(&cfg, weights, device)?;
    vae.set_precision(precision.unwrap_or_default().on_this_cpu());
    eprintln!(
        "loaded VAE weights {} in {:.1} s ({} convolutions)",
        weights.display(),
        t.elapsed().as_secs_f64(),
        vae.precision()
    );
    Ok(vae)
}

fn lower_name(p: &Path) -> String {
    p.file_name().map(|n| n.to_string_lossy().to_lowercase()).unwrap_or_default()
}

fn is_nifti(p: &Path) -> bool {
    let n = lower_name(p);
    n.ends_with(".nii") || n.ends_with(".nii.gz")
}

fn is_npy(p: &Path) -> bool {
    lower_name(p).ends_with(".npy")
}

fn to_tensor(a: NpyArray, what: &str, path: &Path, device: &Device) -> anyhow::Result<Tensor<5>> {
    let shape: [usize; 5] =
        a.shape.clone().try_into().map_err(|_| {
            anyhow::anyhow!("{}: {what} must be 5D [B,C,X,Y,Z], got shape {:?}", path.display(), a.shape)
        })?;
    crate::util::check_finite(&a.data, path, what)?;
    Ok(Tensor::from_data(TensorData::new(a.data, shape), device))
}

fn tensor_values(t: Tensor<5>) -> anyhow::Result<Vec<f32>> {
    t.into_data().try_into_vec::<f32>().map_err(|e| anyhow::anyhow!("reading tensor: {e:?}"))
}

fn encode(a: EncodeArgs) -> anyhow::Result<()> {
    if !is_npy(&a.output) {
        bail!("--output must be a .npy file, got {}", a.output.display());
    }
    crate::util::output_file(&a.output, "--output")?;
    let device = a.device.get()?;
    let precision = a.precision.get(&device)?;
    let x = if is_npy(&a.input) {
        let arr = NpyArray::read(&a.input)?;
        to_tensor(arr, "input volume", &a.input, &device)?
    } else if is_nifti(&a.input) {
        let (vol, _info) = read_nifti(&a.input, &Limits::default())?;
        let [nx, ny, nz] = vol.dims();
        // NIfTI voxels are x-fastest; the tensor [1,1,X,Y,Z] is z-fastest.
        let mut data = vec![0f32; nx * ny * nz];
        for x in 0..nx {
            for y in 0..ny {
                for z in 0..nz {
                    let hu = vol.get(x, y, z);
                    if !hu.is_finite() {
                        bail!("{}: non-finite voxel at ({x},{y},{z})", a.input.display());
                    }
                    data[(x * ny + y) * nz + z] = text2ct_io::transform::hu_to_unit(hu);
                }
            }
        }
        Tensor::from_data(TensorData::new(data, [1, 1, nx, ny, nz]), &device)
    } else {
        bail!("--input must be .npy or .nii/.nii.gz, got {}", a.input.display());
    };
    let vae = load_vae(&a.config, &a.weights, &device, precision)?;
    let dims = x.dims();
    vae.check_image_shape(dims).with_context(|| format!("input {}", a.input.display()))?;
    let f = vae.config().downsample_factor();
    if dims[2..].iter().any(|d| d % f != 0) {
        eprintln!(
            "warning: input extents {:?} are not multiples of {f}; the decoder will not restore them",
            &dims[2..]
        );
    }
    let t = Instant::now();
    let z = if a.sample { vae.encode_sample(x, a.seed) } else { vae.encode_mean(x) };
    let zd = z.dims();
    let values = tensor_values(z)?;
    eprintln!("encoded {dims:?} -> {zd:?} in {:.1} s", t.elapsed().as_secs_f64());
    NpyArray::new(zd.to_vec(), values)?.write(&a.output)?;
    eprintln!("wrote {}", a.output.display());
    Ok(())
}

fn decode(a: DecodeArgs) -> anyhow::Result<()> {
    let nifti_out = is_nifti(&a.output);
    if !nifti_out && !is_npy(&a.output) {
        bail!("--output must be .npy or .nii/.nii.gz, got {}", a.output.display());
    }
    crate::util::output_file(&a.output, "--output")?;
    let spacing: [f64; 3] =
        a.spacing.clone().try_into().map_err(|_| anyhow::anyhow!("--spacing needs three values X,Y,Z"))?;
    if spacing.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
        bail!("--spacing values must be positive, got {spacing:?}");
    }
    if !(0.0..1.0).contains(&a.overlap) {
        bail!("--overlap must be in [0, 1), got {}", a.overlap);
    }
    if a.splits.is_some() && a.window.is_some() {
        bail!("--splits (one pass in slabs) and --window (a sliding window) exclude each other");
    }
    if a.splits.is_some_and(|s| s == 0 || s > 4096) {
        bail!("--splits must be in 1..=4096, got {}", a.splits.unwrap_or(0));
    }
    if let Some(w) = &a.window {
        if w.len() != 3 || w.contains(&0) {
            bail!("--window needs three positive values X,Y,Z, got {w:?}");
        }
    }
    let device = a.device.get()?;
    let precision = a.precision.get(&device)?;
    let arr = NpyArray::read(&a.input)?;
    let z = to_tensor(arr, "latent", &a.input, &device)?;
    let vae = load_vae(&a.config, &a.weights, &device, precision)?;
    let zd = z.dims();
    vae.check_latent_shape(zd).with_context(|| format!("latent {}", a.input.display()))?;
    let how = match &a.window {
        Some(w) => DecodeShape::Sliding { window: [w[0], w[1], w[2]] },
        None => DecodeShape::OnePass { splits: a.splits.unwrap_or(1) },
    };
    if device == Device::flex() {
        let need = (zd[0] as u64).saturating_mul(memory::decoder_activations(vae.config(), [zd[2], zd[3], zd[4]], how));
        memory::check_fits(
            &format!("decoding {}", a.input.display()),
            need,
            "decode with --window 32,32,16 or more --splits",
        )?;
    }
    let t = Instant::now();
    let out = match &a.window {
        None => vae.decode_split(z, a.splits.unwrap_or(1))?,
        Some(w) => {
            // MAISI dynamic_infer: roi = min(roi, latent extent)
            let window = [w[0].min(zd[2]), w[1].min(zd[3]), w[2].min(zd[4])];
            let opts = SlidingWindow::gaussian(window, a.overlap);
            eprintln!("sliding-window decode: window {window:?}, overlap {}", a.overlap);
            vae.decode_sliding_window_with(z, &opts, &mut |done, total| {
                eprintln!("  window {done}/{total} ({:.1} s)", t.elapsed().as_secs_f64())
            })?
        }
    };
    let od = out.dims();
    let values = tensor_values(out)?;
    eprintln!("decoded {zd:?} -> {od:?} in {:.1} s", t.elapsed().as_secs_f64());
    if !nifti_out {
        NpyArray::new(od.to_vec(), values)?.write(&a.output)?;
        eprintln!("wrote {}", a.output.display());
        return Ok(());
    }
    let [b, c, nx, ny, nz] = od;
    if c != 1 {
        bail!("NIfTI output needs one output channel, the decoder gives {c}; write .npy instead");
    }
    let affine = Affine::from_spacing_origin(spacing, [0.0; 3])?;
    let per = nx * ny * nz;
    for bi in 0..b {
        let src = &values[bi * per..(bi + 1) * per];
        // tensor z-fastest -> NIfTI x-fastest; HU = x*2000-1000, clip, truncate (np.int16)
        let mut data = vec![0f32; per];
        for x in 0..nx {
            for y in 0..ny {
                for zz in 0..nz {
                    let v = src[(x * ny + y) * nz + zz];
                    if v.is_nan() {
                        bail!(
                            "{}: the decoder gave NaN at voxel ({x},{y},{zz}) of latent {bi}; nothing was written for it",
                            a.input.display()
                        );
                    }
                    data[x + nx * (y + ny * zz)] = text2ct_io::transform::unit_to_hu(v).trunc();
                }
            }
        }
        let vol = Volume::new([nx, ny, nz], data, affine)?;
        let path = if b == 1 { a.output.clone() } else { batch_path(&a.output, bi) };
        write_nifti(&path, &vol, &WriteOptions::ct_hu().with_descrip("text2ct MAISI VAE decode"))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// `out.nii.gz` -> `out_b3.nii.gz`.
fn batch_path(p: &Path, i: usize) -> PathBuf {
    let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let lower = name.to_lowercase();
    let (stem, ext) =
        if lower.ends_with(".nii.gz") { name.split_at(name.len() - 7) } else { name.split_at(name.len() - 4) };
    p.with_file_name(format!("{stem}_b{i}{ext}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_names() {
        assert_eq!(batch_path(Path::new("/a/ct.nii.gz"), 2), PathBuf::from("/a/ct_b2.nii.gz"));
        assert_eq!(batch_path(Path::new("ct.nii"), 0), PathBuf::from("ct_b0.nii"));
    }
}
