//! `text2ct prepare`.

use std::path::PathBuf;

use anyhow::{anyhow, bail, Result};
use text2ct_data::ctrate::{count_report_rows, plan, run as run_plan, Outcome, PrepareOptions, SpacingSource};
use text2ct_data::layout::Split;
use text2ct_data::preprocess::{Mode, PreprocessConfig, RescalePolicy};
use text2ct_io::Limits;

use crate::util::{default_jobs, parse_size, parse_spacing, progress};

#[derive(clap::Subcommand)]
pub enum PrepareCommand {
    /// Prepare a CT-RATE folder (or a phantom data set in CT-RATE's layout): read the reports,
    /// labels and metadata CSVs and the exclusion lists, preprocess every volume, write
    /// memory-mappable int16 volumes and one manifest. Resumable: finished items are skipped.
    Ctrate(CtrateArgs),
}

#[derive(clap::Args)]
pub struct CtrateArgs {
    /// The folder that holds `dataset/` (CT-RATE's layout).
    #[arg(long)]
    pub root: PathBuf,
    /// train or valid.
    #[arg(long, default_value = "train")]
    pub split: String,
    /// Output folder.
    #[arg(long)]
    pub out: PathBuf,
    /// paper (resample to 0.75x0.75x1.5 mm, crop/pad to 512x512x128) or release (as the
    /// released Text2CT code: resize to nominal 0.75x0.75x3.0 mm, 128 slices).
    #[arg(long, default_value = "paper")]
    pub mode: String,
    /// Target spacing X,Y,Z in mm (default from the mode).
    #[arg(long)]
    pub spacing: Option<String>,
    /// Target size X,Y,Z in voxels (default 512,512,128).
    #[arg(long)]
    pub size: Option<String>,
    /// Slope/intercept from the metadata: auto (apply only when the voxels are not already
    /// HU), apply (refuse if they already are), never.
    #[arg(long, default_value = "auto")]
    pub rescale: String,
    /// Where the source voxel size comes from: header (the NIfTI header, as the released code)
    /// or metadata (the metadata CSV's XYSpacing/ZSpacing). Either way a difference of more than
    /// 1 % is warned about per volume, and both values are recorded in the manifest.
    #[arg(long, default_value = "header")]
    pub spacing_source: String,
    /// Prepare at most N volumes.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Worker threads (default: all cores).
    #[arg(long)]
    pub jobs: Option<usize>,
}

pub fn run(cmd: PrepareCommand) -> Result<()> {
    match cmd {
        PrepareCommand::Ctrate(a) => ctrate(a),
    }
}

pub fn ctrate(a: CtrateArgs) -> Result<()> {
    let split = Split::parse(&a.split).ok_or_else(|| anyhow!("--split must be train or valid, got {:?}", a.split))?;
    let mode = Mode::parse(&a.mode).ok_or_else(|| anyhow!("--mode must be paper or release, got {:?}", a.mode))?;
    let mut pre = PreprocessConfig::for_mode(mode);
    if let Some(s) = &a.spacing {
        pre.spacing = parse_spacing(s)?;
    }
    if let Some(s) = &a.size {
        pre.size = parse_size(s)?;
    }
    pre.validate()?;
    let rescale = RescalePolicy::parse(&a.rescale)
        .ok_or_else(|| anyhow!("--rescale must be auto, apply or never, got {:?}", a.rescale))?;
    let spacing_source = SpacingSource::parse(&a.spacing_source)
        .ok_or_else(|| anyhow!("--spacing-source must be header or metadata, got {:?}", a.spacing_source))?;
    crate::util::output_dir(&a.out, "--out")?;
    let opts = PrepareOptions {
        root: a.root.clone(),
        split,
        out: a.out.clone(),
        preprocess: pre,
        rescale,
        spacing_source,
        limit: a.limit,
        jobs: a.jobs.unwrap_or_else(default_jobs),
        limits: Limits::default(),
    };
    let p = plan(&opts)?;
    for w in &p.warnings {
        eprintln!("warning: {w}");
    }
    let pb = progress(p.items.len() as u64, "prepare");
    let summary = run_plan(&p, &opts, count_report_rows(&a.root, split), &|o| {
        match o {
            Outcome::Failed(s) => pb.suspend(|| eprintln!("skipped {}: {}", s.volume, s.reason)),
            Outcome::Prepared(e) => {
                for w in &e.warnings {
                    pb.suspend(|| eprintln!("warning: {}: {w}", e.id));
                }
            }
            Outcome::AlreadyDone(_) => {}
        }
        pb.inc(1);
    })?;
    pb.finish_and_clear();
    println!(
        "prepared {} volume(s), {} already done, {} skipped, in {:.1} s ({:.2} volumes/s)",
        summary.prepared,
        summary.already_done,
        summary.skipped.len(),
        summary.seconds,
        summary.prepared as f64 / summary.seconds.max(1e-9)
    );
    let mut reasons: std::collections::BTreeMap<String, usize> = Default::default();
    for s in &summary.skipped {
        let key = s.reason.split(':').next().unwrap_or(&s.reason).to_string();
        *reasons
            .entry(if s.reason.contains(".nii") { "volume unreadable or invalid".into() } else { key })
            .or_default() += 1;
    }
    for (r, n) in reasons {
        println!("  skipped {n:>5} x {r}");
    }
    println!("manifest: {}", summary.manifest);
    println!("summary:  {}", a.out.join("summary.json").display());
    if summary.prepared + summary.already_done == 0 && !summary.skipped.is_empty() {
        let first = &summary.skipped[0];
        bail!(
            "no volume was prepared: all {} row(s) were skipped (first: {}: {}; every reason is in {})",
            summary.skipped.len(),
            first.volume,
            first.reason,
            a.out.join("summary.json").display()
        );
    }
    Ok(())
}
