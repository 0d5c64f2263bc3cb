//! PNG previews: axial, coronal and sagittal mid-slices side by side, in radiological
//! convention (patient's right on the viewer's left, anterior up in axial, superior up in
//! coronal/sagittal) with the correct aspect ratio from the voxel spacing.

use std::path::Path;

use image::{GrayImage, Luma};

use crate::error::{atomic_write, IoError, Result};
use crate::transform::reorient;
use crate::volume::Volume;

/// A display window: width and level in HU.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Window {
    pub width: f32,
    pub level: f32,
}

impl Window {
    pub const LUNG: Window = Window { width: 1500.0, level: -600.0 };
    pub const MEDIASTINUM: Window = Window { width: 350.0, level: 50.0 };
    pub const BONE: Window = Window { width: 2000.0, level: 500.0 };

    /// `lung`, `mediastinum` (or `soft`), `bone`, or `W,L` in HU.
    pub fn parse(s: &str) -> Result<Window> {
        match s.trim().to_ascii_lowercase().as_str() {
            "lung" => Ok(Self::LUNG),
            "mediastinum" | "mediastinal" | "soft" => Ok(Self::MEDIASTINUM),
            "bone" => Ok(Self::BONE),
            other => {
                let parts: Vec<&str> = other.split(',').collect();
                let parse = |p: &str| p.trim().parse::<f32>().ok().filter(|v| v.is_finite());
                match (parts.len(), parts.first().and_then(|p| parse(p)), parts.get(1).and_then(|p| parse(p))) {
                    (2, Some(w), Some(l)) if w > 0.0 => Ok(Window { width: w, level: l }),
                    _ => Err(IoError::invalid(format!(
                        "window {s:?} is not lung, mediastinum, bone or W,L (width > 0, level) in HU"
                    ))),
                }
            }
        }
    }

    pub(crate) fn map(&self, hu: f32) -> u8 {
        let lo = self.level - self.width / 2.0;
        (((hu - lo) / self.width).clamp(0.0, 1.0) * 255.0).round() as u8
    }
}

/// Render the three mid-planes side by side (axial | coronal | sagittal), separated by a
/// 4-pixel gap. Pixels are square, `pixel_mm` wide (default: the smallest voxel size).
pub fn render_planes(vol: &Volume, window: Window, pixel_mm: Option<f64>) -> Result<GrayImage> {
    let v = reorient(vol, "LPS")?;
    let [nx, ny, nz] = v.dims();
    let sp = v.spacing();
    let px = pixel_mm.unwrap_or_else(|| sp.iter().cloned().fold(f64::INFINITY, f64::min));
    if !px.is_finite() || px <= 0.0 {
        return Err(IoError::invalid("preview pixel size must be positive"));
    }
    let fov = [nx as f64 * sp[0], ny as f64 * sp[1], nz as f64 * sp[2]];
    let npx = |mm: f64| ((mm / px).round() as u32).clamp(1, 4096);
    let (wx, wy, wz) = (npx(fov[0]), npx(fov[1]), npx(fov[2]));
    let (cx, cy, cz) = (nx as f64 / 2.0 - 0.5, ny as f64 / 2.0 - 0.5, nz as f64 / 2.0 - 0.5);
    // Continuous voxel index of a pixel centre along an axis of n voxels drawn with w pixels.
    let idx = |p: u32, w: u32, n: usize| (p as f64 + 0.5) * n as f64 / w as f64 - 0.5;
    let sample = |x: f64, y: f64, z: f64| -> f32 { trilinear(&v, x, y, z) };
    let gap = 4;
    let width = wx + gap + wx + gap + wy;
    let height = wy.max(wz);
    let mut img = GrayImage::from_pixel(width, height, Luma([0]));
    // Axial: columns x (toward L = viewer's right), rows y (anterior at top).
    for r in 0..wy {
        for c in 0..wx {
            let hu = sample(idx(c, wx, nx), idx(r, wy, ny), cz);
            img.put_pixel(c, r, Luma([window.map(hu)]));
        }
    }
    // Coronal: columns x, rows superior at top.
    let off = wx + gap;
    for r in 0..wz {
        for c in 0..wx {
            let hu = sample(idx(c, wx, nx), cy, idx(wz - 1 - r, wz, nz));
            img.put_pixel(off + c, r, Luma([window.map(hu)]));
        }
    }
    // Sagittal: columns y (anterior on the left), rows superior at top.
    let off = 2 * (wx + gap);
    for r in 0..wz {
        for c in 0..wy {
            let hu = sample(cx, idx(c, wy, ny), idx(wz - 1 - r, wz, nz));
            img.put_pixel(off + c, r, Luma([window.map(hu)]));
        }
    }
    Ok(img)
}

fn trilinear(v: &Volume, x: f64, y: f64, z: f64) -> f32 {
    let d = v.dims();
    let prep = |t: f64, n: usize| {
        let t = t.clamp(0.0, (n - 1) as f64);
        let i0 = t.floor() as usize;
        let i1 = (i0 + 1).min(n - 1);
        (i0, i1, (t - i0 as f64) as f32)
    };
    let (x0, x1, wx) = prep(x, d[0]);
    let (y0, y1, wy) = prep(y, d[1]);
    let (z0, z1, wz) = prep(z, d[2]);
    let l = |a: f32, b: f32, w: f32| a * (1.0 - w) + b * w;
    let c0 = l(l(v.get(x0, y0, z0), v.get(x1, y0, z0), wx), l(v.get(x0, y1, z0), v.get(x1, y1, z0), wx), wy);
    let c1 = l(l(v.get(x0, y0, z1), v.get(x1, y0, z1), wx), l(v.get(x0, y1, z1), v.get(x1, y1, z1), wx), wy);
    l(c0, c1, wz)
}

/// Stack images vertically (rows) with a 4-pixel gap; narrower ones are left-aligned.
pub fn stack_vertical(images: &[GrayImage]) -> GrayImage {
    let gap = 4;
    let w = images.iter().map(|i| i.width()).max().unwrap_or(1);
    let h = images.iter().map(|i| i.height()).sum::<u32>() + gap * images.len().saturating_sub(1) as u32;
    let mut out = GrayImage::from_pixel(w, h.max(1), Luma([0]));
    let mut y0 = 0;
    for im in images {
        image::imageops::replace(&mut out, im, 0, y0 as i64);
        y0 += im.height() + gap;
    }
    out
}

/// Place images left to right with a gap.
pub fn stack_horizontal(images: &[GrayImage], gap: u32) -> GrayImage {
    let h = images.iter().map(|i| i.height()).max().unwrap_or(1);
    let w = images.iter().map(|i| i.width()).sum::<u32>() + gap * images.len().saturating_sub(1) as u32;
    let mut out = GrayImage::from_pixel(w.max(1), h, Luma([0]));
    let mut x0 = 0;
    for im in images {
        image::imageops::replace(&mut out, im, x0 as i64, 0);
        x0 += im.width() + gap;
    }
    out
}

/// Save a PNG atomically.
pub fn save_png(img: &GrayImage, path: &Path) -> Result<()> {
    save_with(path, |tmp| img.save_with_format(tmp, image::ImageFormat::Png))
}

/// [`save_png`] for a colour image (the 3D renderings of [`crate::render`]).
pub fn save_png_rgb(img: &image::RgbImage, path: &Path) -> Result<()> {
    save_with(path, |tmp| img.save_with_format(tmp, image::ImageFormat::Png))
}

fn save_with(path: &Path, save: impl FnOnce(&Path) -> image::ImageResult<()>) -> Result<()> {
    atomic_write(path, |tmp| {
        save(tmp).map_err(|e| match e {
            image::ImageError::IoError(e) => IoError::os(path, e),
            e => IoError::format(path, format!("writing PNG failed: {e}")),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::geometry::Affine;

    #[test]
    fn windows_parse() {
        assert_eq!(Window::parse("lung").unwrap(), Window::LUNG);
        assert_eq!(Window::parse("400,40").unwrap(), Window { width: 400.0, level: 40.0 });
        assert!(Window::parse("0,40").is_err());
        assert!(Window::parse("bright").is_err());
    }

    #[test]
    fn aspect_ratio_and_orientation() {
        // 40 x 20 x 10 voxels of 1 x 2 x 4 mm: FOV 40 x 40 x 40 mm -> every panel 40 x 40 px.
        // A bright block on the patient's left-anterior-superior corner (RAS volume:
        // x high = right... so left is x low in RAS).
        let a = Affine::from_spacing_origin([1.0, 2.0, 4.0], [0.0; 3]).unwrap();
        let v = Volume::from_fn([40, 20, 10], a, |x, y, _| if x < 20 && y >= 10 { 1000.0 } else { -1000.0 }).unwrap();
        let img = render_planes(&v, Window::BONE, None).unwrap();
        assert_eq!(img.height(), 40);
        assert_eq!(img.width(), 40 + 4 + 40 + 4 + 40);
        // Axial panel: patient left (RAS x low) must be on the viewer's right; anterior
        // (RAS y high) at the top.
        // Bone window (W 2000, L 500): 1000 HU -> 191, -1000 HU -> 0.
        assert_eq!(img.get_pixel(35, 5).0[0], 191, "left-anterior should be bright at top right");
        assert!(img.get_pixel(5, 5).0[0] < 50);
        assert!(img.get_pixel(35, 35).0[0] < 50);
    }
}
