//! `text2ct preview`.

use std::path::PathBuf;

use anyhow::Result;
use text2ct_io::preview::{render_planes, save_png, stack_horizontal, stack_vertical, Window};

use crate::util::load_volume;

#[derive(clap::Args)]
pub struct PreviewArgs {
    /// NIfTI files or folders of DICOM slices; several make a contact sheet, one row each.
    #[arg(required = true)]
    pub volumes: Vec<PathBuf>,
    /// Output PNG.
    #[arg(long)]
    pub out: PathBuf,
    /// Display window(s): lung, mediastinum, bone or W,L in HU. Repeat or comma-separate
    /// names to put several windows side by side (e.g. --window lung,mediastinum).
    #[arg(long, default_values_t = vec!["mediastinum".to_string()])]
    pub window: Vec<String>,
    /// Pixel size in mm (default: the smallest voxel size).
    #[arg(long)]
    pub pixel_mm: Option<f64>,
    /// SeriesInstanceUID when a DICOM folder holds several series.
    #[arg(long)]
    pub series: Option<String>,
}

pub fn run(a: PreviewArgs) -> Result<()> {
    let windows = parse_windows(&a.window)?;
    crate::util::output_file(&a.out, "--out")?;
    let mut rows = Vec::with_capacity(a.volumes.len());
    for path in &a.volumes {
        let vol = load_volume(path, a.series.as_deref())?;
        let panels = windows.iter().map(|w| render_planes(&vol, *w, a.pixel_mm)).collect::<Result<Vec<_>, _>>()?;
        rows.push(stack_horizontal(&panels, 8));
    }
    save_png(&stack_vertical(&rows), &a.out)?;
    println!(
        "wrote {}: {} volume(s), axial | coronal | sagittal per window ({})",
        a.out.display(),
        rows.len(),
        a.window.join(", ")
    );
    Ok(())
}

/// Accept `lung`, `lung,mediastinum` (names only) or `W,L`.
pub fn parse_windows(items: &[String]) -> Result<Vec<Window>> {
    let mut out = Vec::new();
    for it in items {
        let names: Vec<&str> = it.split(',').map(str::trim).collect();
        if names.iter().all(|n| n.chars().all(|c| c.is_ascii_alphabetic())) {
            for n in names {
                out.push(Window::parse(n)?);
            }
        } else {
            out.push(Window::parse(it)?);
        }
    }
    Ok(out)
}
