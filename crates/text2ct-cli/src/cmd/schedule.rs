//! `text2ct schedule`: print a sampler's timesteps and step sizes as JSON.

use anyhow::Result;
use text2ct_diffusion::{schedule_report, Sampler};

use crate::util::parse_triple;

#[derive(clap::Args)]
pub struct ScheduleArgs {
    /// rflow (Text2CT's released rectified flow), ddpm or ddim.
    #[arg(long, default_value = "rflow")]
    pub sampler: String,
    /// Number of inference steps.
    #[arg(long, default_value_t = 30)]
    pub steps: usize,
    /// Latent shape C,X,Y,Z (the rectified-flow shift depends on X*Y*Z).
    #[arg(long, default_value = "4,128,128,32")]
    pub latent: String,
    /// Clean variant of rectified flow: no float16 rounding of timesteps, no truncation of the
    /// next timestep (the released code does both).
    #[arg(long)]
    pub exact: bool,
}

pub fn run(a: ScheduleArgs) -> Result<()> {
    let sampler: Sampler = a.sampler.parse().map_err(|e| anyhow::anyhow!("--sampler: {e}"))?;
    let parts: Vec<&str> = a.latent.split(',').collect();
    if parts.len() != 4 {
        anyhow::bail!("--latent must be C,X,Y,Z (four numbers), got {:?}", a.latent);
    }
    let c: usize = parts[0].trim().parse().map_err(|_| anyhow::anyhow!("--latent: {:?} is not a number", parts[0]))?;
    let xyz: [usize; 3] = parse_triple(&parts[1..].join(","), "--latent")?;
    let report = schedule_report(sampler, a.steps, &[c, xyz[0], xyz[1], xyz[2]], a.exact)?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}
