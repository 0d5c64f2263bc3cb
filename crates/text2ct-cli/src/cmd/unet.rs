//! `text2ct unet`: the latent diffusion U-Net (MONAI `DiffusionModelUNetMaisi`).
//!
//! - `text2ct unet forward --config C.json --weights W --x X.npy --t T.npy --context CTX.npy
//!   [--spacing S.npy] [--class-labels L.npy] --output OUT.npy`
//!   X float32 `[B, C, X, Y, Z]` (a latent; extents multiples of `2^(levels-1)`), T `[B]` float
//!   timesteps (in [0, 1000]: Text2CT's rectified flow uses that range), CTX
//!   `[B, S, cross_attention_dim]` (Text2CT: `[B, 1, 768]`; a 2D `[B, D]` is read as `[B, 1, D]`),
//!   S `[B, 3]` voxel spacing in mm already times 100, positive (Text2CT: 75, 75, 300), L `[B]`
//!   class labels, whole numbers of any integer dtype or as floats (Text2CT: 1 = CT); NaN or
//!   infinite values are refused.
//!   OUT gets the network output float32 `[B, out_channels, X, Y, Z]` (Text2CT: the rectified-flow
//!   velocity).
//!
//! `--precision bf16` runs the 3x3x3 convolutions with bf16 products summed in f32 (CPU with
//! AVX512-BF16; elsewhere f32, said once).
//!
//! The config is the JSON of `DiffusionModelUNetMaisi`'s constructor arguments, or a MAISI /
//! Text2CT model config holding them under `diffusion_unet_def`. Weights: a MONAI state dict
//! (`.pt`/`.pth`, bare or as `unet_state_dict` in a checkpoint dict) or `.safetensors`, loaded
//! strictly.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use text2ct_io::npy::read_npy_i64;
use text2ct_io::Limits;
use text2ct_models::burn::tensor::{Int, Tensor, TensorData};
use text2ct_models::{NpyArray, Unet, UnetCond, UnetConfig};

use crate::util::check_finite;

/// The largest timestep `--t` accepts: the schedulers' `num_train_timesteps` (1000; rectified
/// flow runs on [0, 1000], DDPM/DDIM on 0..999).
const MAX_TIMESTEP: f32 = 1000.0;

#[derive(clap::Args, Debug)]
pub struct UnetArgs {
    #[command(subcommand)]
    pub command: UnetCommand,
}

#[derive(clap::Subcommand, Debug)]
pub enum UnetCommand {
    /// Run one forward pass of the U-Net on .npy inputs and write its output as .npy.
    Forward(ForwardArgs),
}

#[derive(clap::Args, Debug)]
pub struct ForwardArgs {
    /// U-Net config JSON (DiffusionModelUNetMaisi constructor arguments, or a model config with
    /// `diffusion_unet_def`).
    #[arg(long)]
    pub config: PathBuf,
    /// Weights: MONAI state dict / checkpoint (.pt/.pth) or .safetensors.
    #[arg(long)]
    pub weights: PathBuf,
    /// Noisy latent .npy float32 [B,C,X,Y,Z].
    #[arg(long)]
    pub x: PathBuf,
    /// Timesteps .npy float32 [B].
    #[arg(long)]
    pub t: PathBuf,
    /// Text embedding .npy float32 [B,S,D] (or [B,D]).
    #[arg(long)]
    pub context: PathBuf,
    /// Voxel spacing .npy float32 [B,3], mm x 100 (needed when the config has include_spacing_input).
    #[arg(long)]
    pub spacing: Option<PathBuf>,
    /// Class labels .npy [B]: integers (any integer dtype, e.g. NumPy's default int64) or whole
    /// floats (needed when the config has num_class_embeds).
    #[arg(long)]
    pub class_labels: Option<PathBuf>,
    /// Output .npy float32 [B,out_channels,X,Y,Z].
    #[arg(long)]
    pub output: PathBuf,
    #[command(flatten)]
    pub device: crate::util::DeviceArg,
    #[command(flatten)]
    pub precision: crate::util::PrecisionArg,
}

pub fn run(args: UnetArgs) -> anyhow::Result<()> {
    match args.command {
        UnetCommand::Forward(a) => forward(a),
    }
}

fn read(path: &Path, what: &str) -> anyhow::Result<NpyArray> {
    NpyArray::read(path).with_context(|| format!("reading {what}"))
}

fn shape_err(path: &Path, what: &str, want: &str, got: &[usize]) -> anyhow::Error {
    anyhow::anyhow!("{}: {what} must be {want}, got shape {got:?}", path.display())
}

fn forward(a: ForwardArgs) -> anyhow::Result<()> {
    if !a.output.to_string_lossy().to_ascii_lowercase().ends_with(".npy") {
        bail!("--output must be a .npy file, got {}", a.output.display());
    }
    crate::util::output_file(&a.output, "--output")?;
    let cfg = UnetConfig::from_json_file(&a.config).context("reading the U-Net config")?;
    let device = a.device.get()?;
    let precision = a.precision.get(&device)?;

    let xa = read(&a.x, "--x")?;
    check_finite(&xa.data, &a.x, "--x")?;
    let xs: [usize; 5] =
        xa.shape.clone().try_into().map_err(|_| shape_err(&a.x, "--x", "5D [B,C,X,Y,Z]", &xa.shape))?;
    let b = xs[0];
    let ta = read(&a.t, "--t")?;
    check_finite(&ta.data, &a.t, "--t")?;
    if let Some(t) = ta.data.iter().find(|t| !(0.0..=MAX_TIMESTEP).contains(*t)) {
        bail!(
            "{}: --t holds the timestep {t}, outside [0, {MAX_TIMESTEP}] (every text2ct scheduler trains on 1000 \
             timesteps)",
            a.t.display()
        );
    }
    if ta.shape != [b] {
        return Err(shape_err(&a.t, "--t", &format!("[B] = [{b}] (one timestep per batch item)"), &ta.shape));
    }
    let ca = read(&a.context, "--context")?;
    check_finite(&ca.data, &a.context, "--context")?;
    let cs: [usize; 3] = match ca.shape[..] {
        [cb, s, d] => [cb, s, d],
        [cb, d] => [cb, 1, d],
        _ => return Err(shape_err(&a.context, "--context", "[B,S,D] or [B,D]", &ca.shape)),
    };
    let spacing = match (&a.spacing, cfg.include_spacing_input) {
        (Some(p), true) => {
            let s = read(p, "--spacing")?;
            if s.shape != [b, 3] {
                return Err(shape_err(p, "--spacing", &format!("[B,3] = [{b},3]"), &s.shape));
            }
            check_finite(&s.data, p, "--spacing")?;
            if let Some(v) = s.data.iter().find(|v| **v <= 0.0) {
                bail!("{}: --spacing holds {v}: voxel spacings (mm x 100) must be positive", p.display());
            }
            Some(Tensor::<2>::from_data(TensorData::new(s.data, [b, 3]), &device))
        }
        (None, true) => bail!("this U-Net takes a spacing input (include_spacing_input): pass --spacing S.npy [B,3]"),
        (Some(_), false) => bail!("--spacing given, but the config has include_spacing_input = false"),
        (None, false) => None,
    };
    let class_labels = match (&a.class_labels, cfg.num_class_embeds) {
        (Some(p), Some(k)) => {
            // Any integer dtype (NumPy's default int64 included), bool, or whole floats.
            let (shape, v) = read_npy_i64(p, &Limits::default()).context("reading --class-labels (whole numbers)")?;
            if shape != [b] {
                return Err(shape_err(p, "--class-labels", &format!("[B] = [{b}]"), &shape));
            }
            if let Some(v) = v.iter().find(|&&v| v < 0 || v >= k as i64) {
                bail!("{}: class label {v} is outside 0..{k} (num_class_embeds = {k})", p.display());
            }
            Some(Tensor::<1, Int>::from_data(TensorData::new(v, [b]), &device))
        }
        (None, Some(k)) => {
            bail!("this U-Net is class-conditional (num_class_embeds = {k}): pass --class-labels L.npy [B]")
        }
        (Some(_), None) => bail!("--class-labels given, but the config has no num_class_embeds"),
        (None, None) => None,
    };
    if cfg.include_top_region_index_input || cfg.include_bottom_region_index_input {
        bail!("this config takes body-region index inputs, which `unet forward` does not pass");
    }

    let t0 = Instant::now();
    let mut unet = Unet::load(&cfg, &a.weights, &device).context("loading the U-Net weights")?;
    unet.set_precision(precision.unwrap_or_default().on_this_cpu());
    let load_s = t0.elapsed().as_secs_f64();
    let x = Tensor::<5>::from_data(TensorData::new(xa.data, xs), &device);
    let t = Tensor::<1>::from_data(TensorData::new(ta.data, [b]), &device);
    let ctx = Tensor::<3>::from_data(TensorData::new(ca.data, cs), &device);
    let cond = UnetCond { context: Some(ctx), class_labels, spacing, ..Default::default() };
    let t1 = Instant::now();
    let y = unet.forward_cond(x, t, &cond)?;
    let dims = y.dims();
    let data = y.into_data().try_into_vec::<f32>().map_err(|e| anyhow::anyhow!("reading the output: {e:?}"))?;
    let fwd_s = t1.elapsed().as_secs_f64();
    NpyArray::new(dims.to_vec(), data)?.write(&a.output).context("writing --output")?;
    eprintln!(
        "unet forward ({}): {:?} -> {:?} in {fwd_s:.2} s (weights loaded in {load_s:.2} s); wrote {}",
        unet.precision(),
        xs,
        dims,
        a.output.display()
    );
    Ok(())
}
