//! `text2ct bench`: the real workload timed phase by phase, with peak memory (`text2ct_bench::speed`).
//!
//! - `text2ct bench unet --latent C,X,Y,Z [--batch N]`: U-Net forwards;
//! - `text2ct bench vae --size X,Y,Z [--decode one-pass|sliding|both]`: VAE encode and decode;
//! - `text2ct bench generate [--size X,Y,Z] [--steps N]`: one whole volume through the pipeline.
//!
//! Each takes `--repeats N`, `--threads N`, `--model DIR` (default: the released architecture with
//! random weights) and `--json` (one JSON object on stdout's last line instead of the table).
//! `benchmarks/monai_bench.py` measures MONAI on the same shapes; `benchmarks/compare.sh` runs both.

use std::path::PathBuf;

use anyhow::{bail, Result};
use text2ct_bench::speed::{self, BenchOptions, BenchReport, GenerateBench, VaeDecode};

use crate::util::{parse_size, DeviceArg};

#[derive(clap::Subcommand)]
pub enum BenchCommand {
    /// Time U-Net forwards on a latent (the diffusion model's work per sampling step).
    Unet(UnetArgs),
    /// Time VAE encoding (posterior mean) and decoding of an image.
    Vae(VaeArgs),
    /// Time one whole volume: text encoding, sampling with classifier-free guidance, decoding.
    Generate(GenerateArgs),
}

/// The options every benchmark takes.
#[derive(clap::Args, Clone, Debug)]
pub struct CommonArgs {
    /// Timed runs of the measured work; the best is reported and every run listed.
    #[arg(long, default_value_t = 1)]
    pub repeats: usize,
    /// Threads for burn's CPU backend and text2ct's CPU kernels (a rayon pool of this size for this
    /// run; default: rayon's global pool, i.e. RAYON_NUM_THREADS or one per core).
    #[arg(long)]
    pub threads: Option<usize>,
    /// A model folder (model.json card) whose networks to time; default: the released architecture
    /// (Text2CT's U-Net, MAISI's VAE, the 3D-CLIP text encoder) with random weights.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Print one JSON object on stdout's last line instead of the table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub device: DeviceArg,
    #[command(flatten)]
    pub precision: crate::util::PrecisionArg,
}

impl CommonArgs {
    fn options(&self) -> Result<BenchOptions> {
        if let Some(m) = &self.model {
            if !m.is_dir() {
                bail!("--model {}: not a folder (a model folder holds a model.json card)", m.display());
            }
        }
        let device = self.device.get()?;
        let precision = self.precision.get(&device)?.unwrap_or_default();
        Ok(BenchOptions { repeats: self.repeats, threads: self.threads, model: self.model.clone(), device, precision })
    }

    fn print(&self, r: &impl BenchReport) {
        if self.json {
            println!("{}", r.to_json());
        } else {
            print!("{}", r.table());
        }
    }
}

#[derive(clap::Args)]
pub struct UnetArgs {
    /// The latent C,X,Y,Z (Text2CT's: 4,128,128,32; X, Y, Z multiples of 8 for its U-Net).
    #[arg(long)]
    pub latent: String,
    /// Batch size (generation with guidance runs 2: both branches at once).
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    #[command(flatten)]
    pub common: CommonArgs,
}

#[derive(clap::Args)]
pub struct VaeArgs {
    /// The image X,Y,Z (multiples of 4 for MAISI's VAE; the latent is a quarter of it per axis).
    #[arg(long)]
    pub size: String,
    /// one-pass (the whole latent, in --splits slabs), sliding (window by window), or both (from
    /// the same latent, with the HU difference between them).
    #[arg(long, default_value = "one-pass")]
    pub decode: String,
    /// Slabs of the one-pass decode's largest layer (default: the VAE config's num_splits, 4 for
    /// MAISI); 1 decodes without splits.
    #[arg(long)]
    pub splits: Option<usize>,
    /// The sliding window in latent voxels X,Y,Z (clipped to the latent).
    #[arg(long, default_value = "16,16,8")]
    pub window: String,
    /// Overlap of the sliding windows, in [0, 1) (the release's 0.4).
    #[arg(long, default_value_t = 0.4)]
    pub overlap: f64,
    #[command(flatten)]
    pub common: CommonArgs,
}

#[derive(clap::Args)]
pub struct GenerateArgs {
    /// Output size X,Y,Z (default: the card's; the release's is 512,512,128).
    #[arg(long)]
    pub size: Option<String>,
    /// Sampling steps (default: the card's, 30 for the release); the report also scales the time
    /// to the card's steps.
    #[arg(long)]
    pub steps: Option<usize>,
    /// Guidance scale (default: the card's, 5 for the release).
    #[arg(long)]
    pub guidance: Option<f32>,
    #[command(flatten)]
    pub decode: crate::util::DecodeArgs,
    #[command(flatten)]
    pub common: CommonArgs,
}

pub fn run(c: BenchCommand) -> Result<()> {
    match c {
        BenchCommand::Unet(a) => {
            let latent = parse_latent(&a.latent)?;
            if a.batch == 0 {
                bail!("--batch must be at least 1");
            }
            let r = speed::bench_unet(&a.common.options()?, latent, a.batch)?;
            a.common.print(&r);
        }
        BenchCommand::Vae(a) => {
            let size = parse_size(&a.size).map_err(|e| anyhow::anyhow!("--size: {e}"))?;
            let window = parse_size(&a.window).map_err(|e| anyhow::anyhow!("--window: {e}"))?;
            if !(0.0..1.0).contains(&a.overlap) {
                bail!("--overlap must be in [0, 1), got {}", a.overlap);
            }
            if a.splits == Some(0) {
                bail!("--splits must be at least 1");
            }
            let o = a.common.options()?;
            let splits = match a.splits {
                Some(s) => s,
                None => default_splits(&o)?,
            };
            let decode = match a.decode.as_str() {
                "sliding" if a.splits.is_some() => bail!("--splits applies to --decode one-pass or both"),
                "sliding" => VaeDecode::Sliding { window, overlap: a.overlap },
                "both" => VaeDecode::Both { splits, window, overlap: a.overlap },
                "one-pass" => VaeDecode::OnePass { splits },
                other => bail!("--decode {other:?} is not one-pass, sliding or both"),
            };
            let r = speed::bench_vae(&o, size, &decode)?;
            a.common.print(&r);
        }
        BenchCommand::Generate(a) => {
            let (decode, decode_window, decode_splits) = a.decode.parse()?;
            if a.steps == Some(0) {
                bail!("--steps must be at least 1");
            }
            if a.guidance.is_some_and(|g| !g.is_finite()) {
                bail!("--guidance must be a finite number");
            }
            let g = GenerateBench {
                size: a
                    .size
                    .as_deref()
                    .map(|s| parse_size(s).map_err(|e| anyhow::anyhow!("--size: {e}")))
                    .transpose()?,
                steps: a.steps,
                guidance: a.guidance,
                decode,
                decode_window,
                decode_splits,
            };
            let r = speed::bench_generate(&a.common.options()?, &g)?;
            a.common.print(&r);
        }
    }
    Ok(())
}

/// The VAE config's `num_splits` (MAISI's 4 for the released architecture).
fn default_splits(o: &BenchOptions) -> Result<usize> {
    Ok(match &o.model {
        None => text2ct_models::VaeConfig::maisi().num_splits.max(1),
        Some(dir) => {
            let card = text2ct_generate::ModelCard::load(dir)?;
            let v = text2ct_generate::ModelCard::config_json(dir, &card.vae.config)?;
            text2ct_models::VaeConfig::from_json_str(&v.to_string())?.num_splits.max(1)
        }
    })
}

/// `C,X,Y,Z`, all positive.
fn parse_latent(s: &str) -> Result<[usize; 4]> {
    let parts: Vec<&str> = s.split(',').map(str::trim).collect();
    let v: Vec<usize> = parts.iter().filter_map(|p| p.parse().ok()).collect();
    match <[usize; 4]>::try_from(v) {
        Ok(l) if parts.len() == 4 && !l.contains(&0) => Ok(l),
        _ => bail!("--latent must be four positive numbers C,X,Y,Z like 4,128,128,32, got {s:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latents_parse() {
        assert_eq!(parse_latent("4, 16,16,8").unwrap(), [4, 16, 16, 8]);
        for bad in ["4,16,16", "4,16,16,0", "4,a,16,8", "4,16,16,8,1"] {
            assert!(parse_latent(bad).unwrap_err().to_string().contains("--latent"), "{bad}");
        }
    }
}
