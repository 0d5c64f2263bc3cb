//! `text2ct render`: a 3D rendering of a volume as a PNG (`text2ct_io::render`).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use text2ct_io::preview::{save_png_rgb, Window};
use text2ct_io::render::{render, turntable, RenderMode, RenderOptions};

use crate::util::load_volume;

#[derive(clap::Args)]
pub struct RenderArgs {
    /// A NIfTI file or a folder of DICOM slices.
    pub volume: PathBuf,
    /// Output PNG.
    #[arg(long)]
    pub out: PathBuf,
    /// mip (maximum-intensity projection) or dvr (volume rendering with a CT transfer function:
    /// bone opaque, soft tissue and lung walls faint).
    #[arg(long, default_value = "mip")]
    pub mode: String,
    /// The MIP's display window: lung, mediastinum, bone or W,L in HU.
    #[arg(long, default_value = "bone")]
    pub window: String,
    /// A turntable of N views at equal steps around the patient, side by side (1: one view).
    #[arg(long, default_value_t = 1)]
    pub angles: usize,
    /// Degrees about the superior axis of the (first) view: 0 from the front, 90 from the
    /// patient's left.
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    pub azimuth: f64,
    /// Degrees above the horizontal (−90 to 90).
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    pub elevation: f64,
    /// The longer side of each view in pixels.
    #[arg(long, default_value_t = 384)]
    pub size: usize,
    /// SeriesInstanceUID when a DICOM folder holds several series.
    #[arg(long)]
    pub series: Option<String>,
}

pub fn run(a: RenderArgs) -> Result<()> {
    let mode: RenderMode = a.mode.parse().context("--mode")?;
    let window = Window::parse(&a.window).context("--window")?;
    if a.angles == 0 || a.angles > text2ct_io::render::MAX_ANGLES {
        bail!("--angles {} is not in 1..={}", a.angles, text2ct_io::render::MAX_ANGLES);
    }
    crate::util::output_file(&a.out, "--out")?;
    let vol = load_volume(&a.volume, a.series.as_deref())?;
    let opts = RenderOptions { mode, window, azimuth_deg: a.azimuth, elevation_deg: a.elevation, size_px: a.size };
    let img = if a.angles == 1 { render(&vol, &opts) } else { turntable(&vol, &opts, a.angles) }
        .with_context(|| format!("rendering {}", a.volume.display()))?;
    save_png_rgb(&img, &a.out)?;
    println!(
        "wrote {}: {} {} view(s), {}x{} px",
        a.out.display(),
        a.angles,
        match mode {
            RenderMode::Mip => "MIP",
            RenderMode::Dvr => "volume-rendered",
        },
        img.width(),
        img.height()
    );
    Ok(())
}
