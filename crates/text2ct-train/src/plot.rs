//! Line plots as PNG: title, axis labels, tick values, a legend when there are several series.
//!
//! Drawn with `plotters` on its bitmap backend; text uses DejaVu Sans Mono, vendored in
//! `assets/` with its licence (`assets/DejaVu-LICENSE.txt`, Bitstream Vera licence + public
//! domain changes), registered with plotters' `ab_glyph` text renderer.

use std::path::Path;
use std::sync::Once;

use image::RgbImage;
use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::prelude::*;

use crate::error::{Result, TrainError};

static FONT: &[u8] = include_bytes!("../assets/DejaVuSansMono.ttf");
static REGISTER: Once = Once::new();

fn register_fonts() {
    REGISTER.call_once(|| {
        for family in ["sans-serif", "serif", "monospace", "dejavu"] {
            // A failure here only means text is not drawn; the plot itself still renders.
            let _ = plotters::style::register_font(family, FontStyle::Normal, FONT);
            let _ = plotters::style::register_font(family, FontStyle::Bold, FONT);
        }
    });
}

/// One named series of `(x, y)` points.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// A line plot.
#[derive(Clone, Debug, PartialEq)]
pub struct LinePlot {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
    /// Logarithmic y axis (non-positive values are dropped).
    pub log_y: bool,
    pub width: u32,
    pub height: u32,
}

const COLORS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(23, 190, 207),
];

fn err(e: impl std::fmt::Display) -> TrainError {
    TrainError::Train(format!("plot: {e}"))
}

impl LinePlot {
    pub fn new(title: &str, x_label: &str, y_label: &str) -> Self {
        LinePlot {
            title: title.into(),
            x_label: x_label.into(),
            y_label: y_label.into(),
            series: Vec::new(),
            log_y: false,
            width: 900,
            height: 560,
        }
    }

    pub fn with_series(mut self, name: &str, points: Vec<(f64, f64)>) -> Self {
        self.series.push(Series { name: name.into(), points });
        self
    }

    fn points(&self) -> Vec<Vec<(f64, f64)>> {
        self.series
            .iter()
            .map(|s| {
                s.points
                    .iter()
                    .copied()
                    .filter(|(x, y)| x.is_finite() && y.is_finite() && (!self.log_y || *y > 0.0))
                    .collect()
            })
            .collect()
    }

    /// Render to an RGB image of `width x height`.
    pub fn render(&self) -> Result<RgbImage> {
        if self.width < 200 || self.height < 150 {
            return Err(err("image must be at least 200x150"));
        }
        register_fonts();
        let pts = self.points();
        let all: Vec<(f64, f64)> = pts.iter().flatten().copied().collect();
        let (mut x0, mut x1, mut y0, mut y1) = (0.0, 1.0, 0.0, 1.0);
        if !all.is_empty() {
            x0 = all.iter().map(|p| p.0).fold(f64::INFINITY, f64::min);
            x1 = all.iter().map(|p| p.0).fold(f64::NEG_INFINITY, f64::max);
            y0 = all.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
            y1 = all.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max);
        }
        if x1 <= x0 {
            x1 = x0 + 1.0;
        }
        let mut buf = vec![255u8; (self.width * self.height * 3) as usize];
        if self.log_y {
            if all.is_empty() {
                (y0, y1) = (0.1, 1.0);
            }
            if y1 <= y0 {
                y1 = y0 * 10.0;
            }
            self.draw(&mut buf, x0..x1, (y0 * 0.9..y1 * 1.1).log_scale(), &pts)?;
        } else {
            let pad = if y1 > y0 { 0.05 * (y1 - y0) } else { 0.5f64.max(y0.abs() * 0.1) };
            self.draw(&mut buf, x0..x1, (y0 - pad)..(y1 + pad), &pts)?;
        }
        RgbImage::from_raw(self.width, self.height, buf).ok_or_else(|| err("buffer size"))
    }

    fn draw<Y>(&self, buf: &mut [u8], xr: std::ops::Range<f64>, yr: Y, pts: &[Vec<(f64, f64)>]) -> Result<()>
    where
        Y: AsRangedCoord<Value = f64>,
        Y::CoordDescType: ValueFormatter<f64>,
    {
        let root = BitMapBackend::with_buffer(buf, (self.width, self.height)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(&self.title, ("sans-serif", 22))
            .margin(14)
            .x_label_area_size(48)
            .y_label_area_size(84)
            .build_cartesian_2d(xr, yr)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc(&self.x_label)
            .y_desc(&self.y_label)
            .axis_desc_style(("sans-serif", 16))
            .label_style(("sans-serif", 13))
            .x_label_formatter(&|v| fmt_tick(*v))
            .y_label_formatter(&|v| fmt_tick(*v))
            .light_line_style(RGBColor(235, 235, 235))
            .draw()
            .map_err(err)?;
        for (i, (s, p)) in self.series.iter().zip(pts).enumerate() {
            let c = COLORS[i % COLORS.len()];
            let drawn = chart.draw_series(LineSeries::new(p.iter().copied(), c.stroke_width(2))).map_err(err)?;
            drawn.label(&s.name).legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(3)));
        }
        if self.series.len() > 1 {
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .label_font(("sans-serif", 14))
                .position(SeriesLabelPosition::UpperRight)
                .draw()
                .map_err(err)?;
        }
        root.present().map_err(err)?;
        Ok(())
    }

    /// Render and write a PNG atomically.
    pub fn save_png(&self, path: &Path) -> Result<()> {
        let img = self.render()?;
        text2ct_io::error::atomic_write(path, |tmp| {
            img.save_with_format(tmp, image::ImageFormat::Png)
                .map_err(|e| text2ct_io::error::IoError::invalid(format!("{}: {e}", tmp.display())))
        })?;
        Ok(())
    }
}

/// Compact tick labels: 3 significant digits, scientific for very small or large values.
pub fn fmt_tick(v: f64) -> String {
    let a = v.abs();
    if v == 0.0 {
        "0".into()
    } else if !(1e-3..1e5).contains(&a) {
        format!("{v:.1e}")
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 1.0 {
        let s = format!("{v:.2}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        let s = format!("{v:.4}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

/// A grouped bar chart: one group per category (e.g. a metric), one bar per series in each
/// group (e.g. a training regime), with a legend and the values printed above the bars.
#[derive(Clone, Debug, PartialEq)]
pub struct BarPlot {
    pub title: String,
    pub y_label: String,
    /// Category names (the groups along x).
    pub groups: Vec<String>,
    /// `(series name, one value per group)`; non-finite values draw no bar.
    pub series: Vec<(String, Vec<f64>)>,
    /// Fixed y range (default: from 0 to 1.1 x the largest value).
    pub y_range: Option<(f64, f64)>,
    pub width: u32,
    pub height: u32,
}

impl BarPlot {
    pub fn new(title: &str, y_label: &str, groups: &[&str]) -> Self {
        BarPlot {
            title: title.into(),
            y_label: y_label.into(),
            groups: groups.iter().map(|s| s.to_string()).collect(),
            series: Vec::new(),
            y_range: None,
            width: 1000,
            height: 560,
        }
    }

    pub fn with_series(mut self, name: &str, values: Vec<f64>) -> Self {
        self.series.push((name.into(), values));
        self
    }

    /// Render to an RGB image.
    pub fn render(&self) -> Result<RgbImage> {
        if self.groups.is_empty() || self.series.iter().any(|(_, v)| v.len() != self.groups.len()) {
            return Err(err("bar plot: every series needs one value per group"));
        }
        register_fonts();
        let max = self.series.iter().flat_map(|(_, v)| v.iter().copied()).filter(|v| v.is_finite()).fold(0.0, f64::max);
        let (y0, y1) = self.y_range.unwrap_or((0.0, if max > 0.0 { max * 1.15 } else { 1.0 }));
        let mut buf = vec![255u8; (self.width * self.height * 3) as usize];
        {
            let root = BitMapBackend::with_buffer(&mut buf, (self.width, self.height)).into_drawing_area();
            root.fill(&WHITE).map_err(err)?;
            let ng = self.groups.len();
            let mut chart = ChartBuilder::on(&root)
                .caption(&self.title, ("sans-serif", 22))
                .margin(14)
                .x_label_area_size(40)
                .y_label_area_size(70)
                .build_cartesian_2d(0.0..ng as f64, y0..y1)
                .map_err(err)?;
            let groups = self.groups.clone();
            chart
                .configure_mesh()
                .disable_x_mesh()
                .x_labels(ng * 2 + 1)
                .x_label_formatter(&|v| {
                    let k = v.floor() as usize;
                    if (v - k as f64 - 0.5).abs() < 0.01 && k < groups.len() {
                        groups[k].clone()
                    } else {
                        String::new()
                    }
                })
                .y_desc(&self.y_label)
                .axis_desc_style(("sans-serif", 16))
                .label_style(("sans-serif", 13))
                .y_label_formatter(&|v| fmt_tick(*v))
                .light_line_style(RGBColor(235, 235, 235))
                .draw()
                .map_err(err)?;
            let ns = self.series.len().max(1);
            let bw = 0.8 / ns as f64;
            for (si, (name, vals)) in self.series.iter().enumerate() {
                let c = COLORS[si % COLORS.len()];
                let bars: Vec<Rectangle<(f64, f64)>> = vals
                    .iter()
                    .enumerate()
                    .filter(|(_, v)| v.is_finite())
                    .map(|(g, &v)| {
                        let x0 = g as f64 + 0.1 + si as f64 * bw;
                        Rectangle::new([(x0, y0), (x0 + bw * 0.95, v)], c.filled())
                    })
                    .collect();
                chart
                    .draw_series(bars)
                    .map_err(err)?
                    .label(name)
                    .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 16, y + 6)], c.filled()));
                let labels: Vec<Text<(f64, f64), String>> = vals
                    .iter()
                    .enumerate()
                    .filter(|(_, v)| v.is_finite())
                    .map(|(g, &v)| {
                        let x0 = g as f64 + 0.1 + si as f64 * bw;
                        Text::new(format!("{v:.3}"), (x0, v + (y1 - y0) * 0.035), ("sans-serif", 12).into_font())
                    })
                    .collect();
                chart.draw_series(labels).map_err(err)?;
            }
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .label_font(("sans-serif", 14))
                .position(SeriesLabelPosition::UpperRight)
                .draw()
                .map_err(err)?;
            root.present().map_err(err)?;
        }
        RgbImage::from_raw(self.width, self.height, buf).ok_or_else(|| err("buffer size"))
    }

    /// Render and write a PNG atomically.
    pub fn save_png(&self, path: &Path) -> Result<()> {
        let img = self.render()?;
        text2ct_io::error::atomic_write(path, |tmp| {
            img.save_with_format(tmp, image::ImageFormat::Png)
                .map_err(|e| text2ct_io::error::IoError::invalid(format!("{}: {e}", tmp.display())))
        })?;
        Ok(())
    }
}
