//! `text2ct phantom`.

use std::path::PathBuf;

use anyhow::Result;
use text2ct_phantom::config::{DatasetConfig, PhantomConfig};
use text2ct_phantom::dataset::write_ctrate_dataset;

use crate::util::{parse_size, parse_spacing, progress};

#[derive(clap::Args)]
pub struct PhantomArgs {
    /// Output folder (CT-RATE layout: dataset/{train,valid}/…, CSVs under dataset/).
    #[arg(long)]
    pub out: PathBuf,
    /// Number of scans (one per synthetic patient).
    #[arg(long, default_value_t = 100)]
    pub count: usize,
    /// Volume size X,Y,Z in voxels.
    #[arg(long, default_value = "64,64,32")]
    pub size: String,
    /// Voxel size X,Y,Z in mm (default: a chest field of view of about 350 x 350 x 320 mm for
    /// 64,64,32; for other sizes the same FOV unless given).
    #[arg(long)]
    pub spacing: Option<String>,
    /// Random seed: the same seed gives the same data set.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Fraction of scans in the validation split.
    #[arg(long, default_value_t = 0.2)]
    pub split_fraction: f64,
    /// Worker threads (default: all cores).
    #[arg(long)]
    pub jobs: Option<usize>,
    /// Store raw values (HU + 1024) so that the metadata's RescaleIntercept really applies.
    /// By default volumes hold HU while the metadata says intercept -1024, like CT-RATE's
    /// corrected `_fixed` release (the trap `prepare` must not fall into).
    #[arg(long)]
    pub store_raw: bool,
    /// Optional JSON file with a full phantom configuration (prevalences, noise, …); the
    /// flags above override its size, spacing and seed.
    #[arg(long)]
    pub config: Option<PathBuf>,
}

/// The phantom configuration the flags describe.
pub fn phantom_config(a: &PhantomArgs) -> Result<PhantomConfig> {
    let mut cfg: PhantomConfig = match &a.config {
        Some(p) => {
            serde_json::from_str(&std::fs::read_to_string(p).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?)
                .map_err(|e| anyhow::anyhow!("{}: not a phantom configuration: {e}", p.display()))?
        }
        None => PhantomConfig::default(),
    };
    let default = PhantomConfig::default();
    let dims = parse_size(&a.size)?;
    let fov = [0, 1, 2].map(|i| default.dims[i] as f64 * default.spacing[i]);
    cfg.spacing = match &a.spacing {
        Some(s) => parse_spacing(s)?,
        None if a.config.is_some() && dims == cfg.dims => cfg.spacing,
        None => [0, 1, 2].map(|i| fov[i] / dims[i] as f64),
    };
    cfg.dims = dims;
    cfg.seed = a.seed;
    Ok(cfg)
}

pub fn run(a: PhantomArgs) -> Result<()> {
    let cfg = DatasetConfig {
        phantom: phantom_config(&a)?,
        count: a.count,
        valid_fraction: a.split_fraction,
        jobs: a.jobs.unwrap_or(0),
        store_raw: a.store_raw,
    };
    cfg.validate()?;
    crate::util::output_dir(&a.out, "--out")?;
    let t0 = std::time::Instant::now();
    let pb = progress(cfg.count as u64, "phantom");
    let s = write_ctrate_dataset(&a.out, &cfg, |n| pb.set_position(n as u64))?;
    pb.finish_and_clear();
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "wrote {} phantom scans ({} train, {} valid) of {:?} voxels at {:?} mm to {} in {:.1} s ({:.2} scans/s)",
        s.count,
        s.train,
        s.valid,
        cfg.phantom.dims,
        cfg.phantom.spacing,
        a.out.display(),
        secs,
        s.count as f64 / secs.max(1e-9)
    );
    println!("label counts:");
    for (name, n) in text2ct_data::labels::LABELS.iter().zip(&s.label_counts) {
        println!("  {n:>5}  {name}");
    }
    println!("These are synthetic phantoms for testing and demonstration, not patients.");
    Ok(())
}
