//! Metric-against-parameter plots as one PNG of side-by-side panels (one y axis each), drawn
//! with text2ct-train's `LinePlot` (plotters, vendored font).

use std::path::Path;

use image::RgbImage;
use text2ct_train::plot::LinePlot;

use crate::error::{BenchError, Result};

/// One panel: one or more metrics (series, each with its legend name) against the x parameter.
#[derive(Clone, Debug, PartialEq)]
pub struct Panel {
    pub title: String,
    pub y_label: String,
    pub series: Vec<(String, Vec<(f64, f64)>)>,
}

impl Panel {
    /// A panel of one series, named by its y label.
    pub fn single(title: impl Into<String>, y_label: impl Into<String>, points: Vec<(f64, f64)>) -> Panel {
        let y_label = y_label.into();
        Panel { title: title.into(), series: vec![(y_label.clone(), points)], y_label }
    }
}

/// Render the panels side by side (nothing is written when there is no panel).
pub fn panels_image(panels: &[Panel], x_label: &str) -> Result<Option<RgbImage>> {
    if panels.is_empty() {
        return Ok(None);
    }
    let mut imgs = Vec::new();
    for p in panels {
        let mut lp = LinePlot::new(&p.title, x_label, &p.y_label);
        for (name, points) in &p.series {
            lp = lp.with_series(name, points.clone());
        }
        lp.width = 640;
        lp.height = 440;
        imgs.push(lp.render()?);
    }
    let w: u32 = imgs.iter().map(|i| i.width()).sum();
    let h = imgs.iter().map(|i| i.height()).max().unwrap_or(1);
    let mut out = RgbImage::from_pixel(w, h, image::Rgb([255, 255, 255]));
    let mut x0 = 0;
    for i in &imgs {
        image::imageops::replace(&mut out, i, x0 as i64, 0);
        x0 += i.width();
    }
    Ok(Some(out))
}

/// [`panels_image`] written atomically as PNG; returns whether a file was written.
pub fn panels_png(panels: &[Panel], x_label: &str, path: &Path) -> Result<bool> {
    let Some(img) = panels_image(panels, x_label)? else { return Ok(false) };
    text2ct_io::error::atomic_write(path, |tmp| {
        img.save_with_format(tmp, image::ImageFormat::Png)
            .map_err(|e| text2ct_io::error::IoError::invalid(format!("{}: {e}", tmp.display())))
    })
    .map_err(BenchError::from)?;
    Ok(true)
}
