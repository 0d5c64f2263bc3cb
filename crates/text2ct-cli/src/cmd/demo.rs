//! `text2ct demo`: the end-to-end run on the embedded default.

use std::path::PathBuf;

use anyhow::Result;
use text2ct_data::ctrate::{count_report_rows, plan, run as run_plan, PrepareOptions, SpacingSource};
use text2ct_data::layout::Split;
use text2ct_data::manifest::{read_manifest, volume_path, MappedVolume};
use text2ct_data::preprocess::{Mode, PreprocessConfig, RescalePolicy};
use text2ct_io::preview::{render_planes, save_png, stack_horizontal, stack_vertical, Window};
use text2ct_io::Limits;
use text2ct_phantom::config::{DatasetConfig, PhantomConfig};
use text2ct_phantom::dataset::write_ctrate_dataset;

use crate::util::{default_jobs, progress};

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Output folder.
    #[arg(long, default_value = "out/demo")]
    pub out: PathBuf,
    /// Number of phantom scans.
    #[arg(long, default_value_t = 12)]
    pub count: usize,
    /// Random seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

pub fn run(a: DemoArgs) -> Result<()> {
    crate::util::output_dir(&a.out, "--out")?;
    let t0 = std::time::Instant::now();
    let data = a.out.join("phantoms");
    let cfg = DatasetConfig {
        phantom: PhantomConfig { seed: a.seed, ..PhantomConfig::default() },
        count: a.count,
        valid_fraction: 0.25,
        jobs: 0,
        store_raw: false,
    };
    println!("1/3 writing {} procedural chest-CT phantoms (synthetic, not patients) to {}", a.count, data.display());
    let pb = progress(cfg.count as u64, "phantom");
    let s = write_ctrate_dataset(&data, &cfg, |n| pb.set_position(n as u64))?;
    pb.finish_and_clear();
    println!("    {} train, {} valid", s.train, s.valid);

    let prepared = a.out.join("prepared");
    println!(
        "2/3 preparing the train split as CT-RATE is prepared (paper mode at demo scale) into {}",
        prepared.display()
    );
    let opts = PrepareOptions {
        root: data.clone(),
        split: Split::Train,
        out: prepared.clone(),
        preprocess: PreprocessConfig {
            mode: Mode::Paper,
            spacing: [6.0, 6.0, 10.0],
            size: [64, 64, 32],
            ..PreprocessConfig::paper()
        },
        rescale: RescalePolicy::Auto,
        spacing_source: SpacingSource::Header,
        limit: None,
        jobs: default_jobs(),
        limits: Limits::default(),
    };
    let p = plan(&opts)?;
    let pb = progress(p.items.len() as u64, "prepare");
    let summary = run_plan(&p, &opts, count_report_rows(&data, Split::Train), &|_| pb.inc(1))?;
    pb.finish_and_clear();
    println!("    prepared {}, skipped {}", summary.prepared + summary.already_done, summary.skipped.len());
    for sk in &summary.skipped {
        println!("    skipped {}: {}", sk.volume, sk.reason);
    }

    println!("3/3 writing previews");
    let manifest = prepared.join("manifest.jsonl");
    let entries = read_manifest(&manifest)?;
    let previews = a.out.join("previews");
    let mut rows = Vec::new();
    for e in entries.iter().take(6) {
        let v = MappedVolume::open(&volume_path(&manifest, e))?.to_volume(&e.affine)?;
        let lung = render_planes(&v, Window::LUNG, Some(3.0))?;
        let med = render_planes(&v, Window::MEDIASTINUM, Some(3.0))?;
        let row = stack_horizontal(&[lung, med], 8);
        save_png(&row, &previews.join(format!("{}.png", e.id)))?;
        rows.push(row);
    }
    let sheet = a.out.join("contact_sheet.png");
    save_png(&stack_vertical(&rows), &sheet)?;
    println!("    contact sheet (lung | mediastinal windows): {}", sheet.display());
    if let Some(e) = entries.first() {
        println!("    example report ({}): {}", e.id, e.report);
    }
    println!("done in {:.1} s. Reminder: these are synthetic phantoms, not patients.", t0.elapsed().as_secs_f64());
    Ok(())
}
