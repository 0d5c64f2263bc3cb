//! `text2ct inspect`.

use std::path::PathBuf;

use anyhow::Result;
use text2ct_io::nifti_io::read_nifti;
use text2ct_io::{Limits, Volume};

#[derive(clap::Args)]
pub struct InspectArgs {
    /// A NIfTI file or a folder of DICOM slices.
    pub file: PathBuf,
    /// SeriesInstanceUID when a DICOM folder holds several series.
    #[arg(long)]
    pub series: Option<String>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(serde::Serialize)]
struct Stats {
    min: f32,
    max: f32,
    mean: f64,
    std: f64,
    p1: f32,
    p50: f32,
    p99: f32,
    non_finite: usize,
    fraction_below_minus_900: f64,
}

fn stats(v: &Volume) -> Stats {
    let mut finite: Vec<f32> = v.data().iter().copied().filter(|x| x.is_finite()).collect();
    let non_finite = v.len() - finite.len();
    let n = finite.len().max(1) as f64;
    let mean = finite.iter().map(|&x| x as f64).sum::<f64>() / n;
    let var = finite.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
    let below = finite.iter().filter(|&&x| x < -900.0).count() as f64 / n;
    finite.sort_by(f32::total_cmp);
    let q = |p: f64| {
        finite.get(((finite.len().saturating_sub(1)) as f64 * p).round() as usize).copied().unwrap_or(f32::NAN)
    };
    Stats {
        min: q(0.0),
        max: q(1.0),
        mean,
        std: var.sqrt(),
        p1: q(0.01),
        p50: q(0.5),
        p99: q(0.99),
        non_finite,
        fraction_below_minus_900: below,
    }
}

pub fn run(a: InspectArgs) -> Result<()> {
    let (vol, header): (Volume, serde_json::Value) = if a.file.is_dir() {
        let (v, info) = crate::util::read_dicom(&a.file, a.series.as_deref())?;
        (v, serde_json::to_value(&info)?)
    } else {
        let (v, info) = read_nifti(&a.file, &Limits::default())?;
        (v, serde_json::to_value(&info)?)
    };
    let s = stats(&vol);
    let d = vol.dims();
    let sp = vol.spacing();
    let report = serde_json::json!({
        "file": a.file.display().to_string(),
        "header": header,
        "dims": d,
        "spacing_mm": sp,
        "field_of_view_mm": [d[0] as f64 * sp[0], d[1] as f64 * sp[1], d[2] as f64 * sp[2]],
        "origin_mm": vol.origin(),
        "direction": vol.direction(),
        "orientation": vol.orientation(),
        "oblique": vol.affine().is_oblique(1e-4),
        "affine": vol.affine().0,
        "hu": s,
    });
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!("file         {}", a.file.display());
    println!("dims         {} x {} x {}", d[0], d[1], d[2]);
    println!("spacing      {:.4} x {:.4} x {:.4} mm", sp[0], sp[1], sp[2]);
    println!("FOV          {:.1} x {:.1} x {:.1} mm", d[0] as f64 * sp[0], d[1] as f64 * sp[1], d[2] as f64 * sp[2]);
    let o = vol.origin();
    println!("origin       ({:.2}, {:.2}, {:.2}) mm (RAS)", o[0], o[1], o[2]);
    println!("orientation  {}{}", vol.orientation(), if vol.affine().is_oblique(1e-4) { " (oblique)" } else { "" });
    println!("affine (voxel -> RAS mm):");
    for r in vol.affine().0.iter().take(3) {
        println!("  [{:>10.4} {:>10.4} {:>10.4} {:>10.3}]", r[0], r[1], r[2], r[3]);
    }
    println!("header       {}", serde_json::to_string(&header)?);
    println!(
        "values       min {:.1}  p1 {:.1}  median {:.1}  p99 {:.1}  max {:.1}  mean {:.1}  std {:.1}",
        s.min, s.p1, s.p50, s.p99, s.max, s.mean, s.std
    );
    println!(
        "             {:.1}% of voxels below -900 HU (air/lung); {} non-finite",
        100.0 * s.fraction_below_minus_900,
        s.non_finite
    );
    Ok(())
}
