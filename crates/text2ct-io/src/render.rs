//! 3D renderings of a volume on the CPU: a maximum-intensity projection (MIP) and a simple
//! direct volume rendering (DVR: front-to-back compositing with a CT transfer function — skin and
//! soft tissue faint, lung walls bluish, bone opaque — and gradient shading), by orthographic ray
//! casting in world millimetres (the affine, so any orientation and spacing draws to scale).
//!
//! The camera turns about the patient's superior axis: azimuth 0° looks at the patient from the
//! front (anterior), patient's right on the image's left, superior up, as a coronal view; 90° looks
//! from the patient's left. A turntable is N views at equal azimuth steps, side by side.

use image::{Rgb, RgbImage};
use rayon::prelude::*;

use crate::error::{IoError, Result};
use crate::preview::Window;
use crate::volume::Volume;

/// What to draw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RenderMode {
    /// The largest HU along each ray, through the display window.
    Mip,
    /// Front-to-back compositing with the CT transfer function.
    Dvr,
}

impl std::str::FromStr for RenderMode {
    type Err = IoError;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "mip" => Ok(RenderMode::Mip),
            "dvr" | "vr" => Ok(RenderMode::Dvr),
            o => Err(IoError::invalid(format!("render mode {o:?} is not mip or dvr"))),
        }
    }
}

/// How to draw.
#[derive(Clone, Copy, Debug)]
pub struct RenderOptions {
    pub mode: RenderMode,
    /// The MIP's display window (the DVR's transfer function is fixed, in HU).
    pub window: Window,
    /// Degrees about the superior axis (0: from the front, 90: from the patient's left).
    pub azimuth_deg: f64,
    /// Degrees above the horizontal plane (positive: looking down from above).
    pub elevation_deg: f64,
    /// The longer side of the image in pixels.
    pub size_px: usize,
}

impl Default for RenderOptions {
    fn default() -> Self {
        RenderOptions {
            mode: RenderMode::Mip,
            window: Window::BONE,
            azimuth_deg: 0.0,
            elevation_deg: 0.0,
            size_px: 384,
        }
    }
}

/// Most pixels along the longer side of one view.
pub const MAX_SIZE_PX: usize = 2048;
/// Most views in a turntable.
pub const MAX_ANGLES: usize = 72;

fn sub(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [a[0] - b[0], a[1] - b[1], a[2] - b[2]]
}
fn dot(a: [f64; 3], b: [f64; 3]) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}
fn axpy(a: f64, x: [f64; 3], y: [f64; 3]) -> [f64; 3] {
    [a * x[0] + y[0], a * x[1] + y[1], a * x[2] + y[2]]
}

/// Trilinear sample at voxel coordinates (outside the volume: `None`).
fn sample(vol: &Volume, p: [f64; 3]) -> Option<f32> {
    let [nx, ny, nz] = vol.dims();
    let max = [nx as f64 - 1.0, ny as f64 - 1.0, nz as f64 - 1.0];
    if (0..3).any(|i| !(p[i] >= 0.0 && p[i] <= max[i])) {
        return None;
    }
    let i0 = [p[0].floor() as usize, p[1].floor() as usize, p[2].floor() as usize];
    let i1 = [(i0[0] + 1).min(nx - 1), (i0[1] + 1).min(ny - 1), (i0[2] + 1).min(nz - 1)];
    let f = [(p[0] - i0[0] as f64) as f32, (p[1] - i0[1] as f64) as f32, (p[2] - i0[2] as f64) as f32];
    let g = |x: usize, y: usize, z: usize| vol.get(x, y, z);
    let lerp = |a: f32, b: f32, t: f32| a + (b - a) * t;
    let c00 = lerp(g(i0[0], i0[1], i0[2]), g(i1[0], i0[1], i0[2]), f[0]);
    let c10 = lerp(g(i0[0], i1[1], i0[2]), g(i1[0], i1[1], i0[2]), f[0]);
    let c01 = lerp(g(i0[0], i0[1], i1[2]), g(i1[0], i0[1], i1[2]), f[0]);
    let c11 = lerp(g(i0[0], i1[1], i1[2]), g(i1[0], i1[1], i1[2]), f[0]);
    Some(lerp(lerp(c00, c10, f[1]), lerp(c01, c11, f[1]), f[2]))
}

/// The CT transfer function: colour and opacity per millimetre at `hu`.
fn transfer(hu: f32) -> ([f32; 3], f32) {
    let ramp = |x: f32, a: f32, b: f32| ((x - a) / (b - a)).clamp(0.0, 1.0);
    if hu >= 150.0 {
        // Bone: opaque, ivory.
        ([0.95, 0.92, 0.84], 0.05 + 0.45 * ramp(hu, 150.0, 600.0))
    } else if hu >= -300.0 {
        // Soft tissue and skin: faint, flesh-coloured.
        ([0.85, 0.55, 0.45], 0.004 + 0.01 * ramp(hu, -300.0, 100.0))
    } else if hu >= -900.0 {
        // Lung parenchyma and airway walls: very faint, bluish.
        ([0.55, 0.7, 0.95], 0.0025 * ramp(hu, -900.0, -600.0))
    } else {
        ([0.0; 3], 0.0)
    }
}

/// One view of `vol`.
pub fn render(vol: &Volume, opts: &RenderOptions) -> Result<RgbImage> {
    if opts.size_px < 8 || opts.size_px > MAX_SIZE_PX {
        return Err(IoError::invalid(format!("render size {} px is not in 8..={MAX_SIZE_PX}", opts.size_px)));
    }
    if !opts.azimuth_deg.is_finite() || !opts.elevation_deg.is_finite() || opts.elevation_deg.abs() > 90.0 {
        return Err(IoError::invalid("render angles must be finite, elevation within ±90°"));
    }
    vol.check_finite()?;
    let [nx, ny, nz] = vol.dims();
    let aff = vol.affine();
    let inv = aff.inverse()?;
    // The world box of the voxel centres.
    let corners: Vec<[f64; 3]> = (0..8)
        .map(|c| {
            aff.apply([
                if c & 1 == 1 { nx as f64 - 1.0 } else { 0.0 },
                if c & 2 == 2 { ny as f64 - 1.0 } else { 0.0 },
                if c & 4 == 4 { nz as f64 - 1.0 } else { 0.0 },
            ])
        })
        .collect();
    let centre = corners.iter().fold([0.0; 3], |a, c| axpy(1.0 / 8.0, *c, a));
    // Camera frame (RAS): from the front the view direction is -A (into the patient, -y), screen
    // right is +x (patient's left), up is +z (superior).
    let (az, el) = (opts.azimuth_deg.to_radians(), opts.elevation_deg.to_radians());
    // Direction from the camera into the scene.
    let view = [-az.sin() * el.cos(), -az.cos() * el.cos(), -el.sin()];
    let right = [az.cos(), -az.sin(), 0.0];
    // up = view x right: superior at elevation 0, tilted back when looking down.
    let up = [-az.sin() * el.sin(), -az.cos() * el.sin(), el.cos()];
    let extent = |axis: [f64; 3]| {
        corners
            .iter()
            .map(|c| dot(sub(*c, centre), axis))
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)))
    };
    let (r0, r1) = extent(right);
    let (u0, u1) = extent(up);
    let (d0, d1) = extent(view);
    let (w_mm, h_mm) = ((r1 - r0).max(1e-6), (u1 - u0).max(1e-6));
    let px = w_mm.max(h_mm) / opts.size_px as f64;
    let (w, h) = (((w_mm / px).ceil() as usize).max(1), ((h_mm / px).ceil() as usize).max(1));
    let sp = vol.spacing();
    let min_sp = sp.iter().cloned().fold(f64::INFINITY, f64::min);
    let step = (min_sp / 2.0).max((d1 - d0) / 1024.0).max(1e-3);
    let nsteps = ((d1 - d0) / step).ceil() as usize + 1;
    let to_vox = |p: [f64; 3]| inv.apply(p);
    let mut img = RgbImage::new(w as u32, h as u32);
    let rows: Vec<Vec<[u8; 3]>> = (0..h)
        .into_par_iter()
        .map(|j| {
            let mut row = vec![[0u8; 3]; w];
            let vpos = u1 - (j as f64 + 0.5) * px;
            for (i, out) in row.iter_mut().enumerate() {
                let rpos = r0 + (i as f64 + 0.5) * px;
                let start = axpy(d0, view, axpy(vpos, up, axpy(rpos, right, centre)));
                match opts.mode {
                    RenderMode::Mip => {
                        let mut best = f32::NEG_INFINITY;
                        for k in 0..nsteps {
                            if let Some(v) = sample(vol, to_vox(axpy(k as f64 * step, view, start))) {
                                best = best.max(v);
                            }
                        }
                        if best.is_finite() {
                            let g = opts.window.map(best);
                            *out = [g, g, g];
                        }
                    }
                    RenderMode::Dvr => {
                        let mut acc = [0.0f32; 3];
                        let mut alpha = 0.0f32;
                        for k in 0..nsteps {
                            let p = to_vox(axpy(k as f64 * step, view, start));
                            let Some(v) = sample(vol, p) else { continue };
                            let (col, per_mm) = transfer(v);
                            if per_mm <= 0.0 {
                                continue;
                            }
                            let a = 1.0 - (1.0 - per_mm.min(0.99)).powf(step as f32);
                            // Shading from the HU gradient (central differences in voxels).
                            let gd = |d: usize| {
                                let mut lo = p;
                                let mut hi = p;
                                lo[d] -= 1.0;
                                hi[d] += 1.0;
                                match (sample(vol, lo), sample(vol, hi)) {
                                    (Some(a), Some(b)) => ((b - a) as f64) / (2.0 * sp[d]),
                                    _ => 0.0,
                                }
                            };
                            let gv = [gd(0), gd(1), gd(2)];
                            // To world directions: the gradient's direction through the affine's rotation.
                            let dir = aff.direction();
                            let gw = [
                                dir[0][0] * gv[0] + dir[0][1] * gv[1] + dir[0][2] * gv[2],
                                dir[1][0] * gv[0] + dir[1][1] * gv[1] + dir[1][2] * gv[2],
                                dir[2][0] * gv[0] + dir[2][1] * gv[1] + dir[2][2] * gv[2],
                            ];
                            let n = dot(gw, gw).sqrt();
                            let shade = if n > 1e-3 { (0.35 + 0.65 * (dot(gw, view) / n).abs()) as f32 } else { 0.6 };
                            for c in 0..3 {
                                acc[c] += (1.0 - alpha) * a * col[c] * shade;
                            }
                            alpha += (1.0 - alpha) * a;
                            if alpha > 0.98 {
                                break;
                            }
                        }
                        *out = acc.map(|c| (c.clamp(0.0, 1.0) * 255.0).round() as u8);
                    }
                }
            }
            row
        })
        .collect();
    for (j, row) in rows.iter().enumerate() {
        for (i, p) in row.iter().enumerate() {
            img.put_pixel(i as u32, j as u32, Rgb(*p));
        }
    }
    Ok(img)
}

/// `angles` views at azimuths `azimuth + 360° k / angles`, side by side with a 4-pixel gap.
pub fn turntable(vol: &Volume, opts: &RenderOptions, angles: usize) -> Result<RgbImage> {
    if angles == 0 || angles > MAX_ANGLES {
        return Err(IoError::invalid(format!("--angles {angles} is not in 1..={MAX_ANGLES}")));
    }
    let views = (0..angles)
        .map(|k| {
            let o = RenderOptions { azimuth_deg: opts.azimuth_deg + 360.0 * k as f64 / angles as f64, ..*opts };
            render(vol, &o)
        })
        .collect::<Result<Vec<_>>>()?;
    let gap = 4u32;
    let w = views.iter().map(|v| v.width()).sum::<u32>() + gap * (angles as u32 - 1);
    let h = views.iter().map(|v| v.height()).max().unwrap_or(1);
    let mut out = RgbImage::new(w, h);
    let mut x0 = 0;
    for v in &views {
        image::imageops::replace(&mut out, v, x0 as i64, ((h - v.height()) / 2) as i64);
        x0 += v.width() + gap;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Affine;

    /// A box of air with a bright "bone" ball on the patient's left (+x) and a soft-tissue slab.
    fn scene() -> Volume {
        let a = Affine::from_spacing_origin([2.0, 2.0, 4.0], [-40.0, -40.0, -40.0]).unwrap();
        Volume::from_fn([40, 40, 20], a, |x, y, z| {
            let (dx, dy, dz) = (x as f32 - 30.0, y as f32 - 20.0, (z as f32 - 10.0) * 2.0);
            if dx * dx + dy * dy + dz * dz < 25.0 {
                1000.0
            } else if (5..15).contains(&x) {
                40.0
            } else {
                -1000.0
            }
        })
        .unwrap()
    }

    fn lum(img: &RgbImage, x: u32, y: u32) -> u32 {
        let p = img.get_pixel(x, y).0;
        p[0] as u32 + p[1] as u32 + p[2] as u32
    }

    #[test]
    fn mip_shows_the_ball_on_the_patients_left_from_the_front() {
        let v = scene();
        let img = render(&v, &RenderOptions { size_px: 80, ..Default::default() }).unwrap();
        // 78 mm wide (40 voxel centres at 2 mm), 76 mm high (20 at 4 mm): square pixels.
        assert_eq!((img.width(), img.height()), (80, 78));
        // From the front, patient's left (+x) is on the image's right: the ball at x=30 of 40.
        let (w, h) = (img.width(), img.height());
        let right = lum(&img, w * 3 / 4, h / 2);
        let left = lum(&img, w / 4, h / 2);
        assert!(right > 450 && left < right / 2, "ball right {right}, soft tissue left {left}");
        // From behind (180°) the ball is on the image's left.
        let back = render(&v, &RenderOptions { size_px: 80, azimuth_deg: 180.0, ..Default::default() }).unwrap();
        assert!(lum(&back, w / 4, h / 2) > 450);
        // From the patient's left (90°) the ball faces the camera, centred.
        let side = render(&v, &RenderOptions { size_px: 80, azimuth_deg: 90.0, ..Default::default() }).unwrap();
        assert!(lum(&side, side.width() / 2, side.height() / 2) > 450);
    }

    #[test]
    fn dvr_draws_bone_opaque_and_air_empty() {
        let v = scene();
        let img = render(&v, &RenderOptions { mode: RenderMode::Dvr, size_px: 80, ..Default::default() }).unwrap();
        let (w, h) = (img.width(), img.height());
        let bone = lum(&img, w * 3 / 4, h / 2);
        let air = lum(&img, w / 2, 2);
        assert!(bone > 200, "bone {bone}");
        assert_eq!(air, 0);
        let t = turntable(&v, &RenderOptions { mode: RenderMode::Dvr, size_px: 40, ..Default::default() }, 4).unwrap();
        assert_eq!(t.width(), 4 * 40 + 3 * 4);
        assert!(turntable(&v, &RenderOptions::default(), 0).is_err());
        assert!(render(&v, &RenderOptions { size_px: 1 << 20, ..Default::default() }).is_err());
        assert!("mip".parse::<RenderMode>().is_ok() && "x".parse::<RenderMode>().is_err());
    }
}
