//! Geometric and intensity transforms on [`Volume`]s: reorientation to a canonical
//! orientation, trilinear resampling (to a spacing or to a size), centre crop/pad, HU
//! clipping and scaling. Every geometric transform updates the affine so that each voxel
//! keeps its world position (up to the interpolation).

use rayon::prelude::*;

use crate::error::{IoError, Result};
use crate::geometry::{parse_orientation, Affine};
use crate::volume::Volume;

/// Air in Hounsfield units: the pad value for CT.
pub const AIR_HU: f32 = -1000.0;

/// Reorient by permuting and flipping axes (no interpolation) so that the orientation code
/// becomes `target` (e.g. "RAS" or "LPS"). Oblique volumes are reoriented to the closest
/// canonical axes, as nibabel's `as_closest_canonical` does; the affine stays exact.
pub fn reorient(vol: &Volume, target: &str) -> Result<Volume> {
    let want = parse_orientation(target)?;
    let have = vol.affine().axis_mapping();
    // For each new axis n: the old axis o with the same world axis, and whether to flip.
    let mut perm = [0usize; 3];
    let mut flip = [false; 3];
    for n in 0..3 {
        let (w, s) = want[n];
        let o = (0..3).find(|&o| have[o].0 == w).expect("axis mapping is a permutation");
        perm[n] = o;
        flip[n] = have[o].1 != s;
    }
    if perm == [0, 1, 2] && flip == [false; 3] {
        return Ok(vol.clone());
    }
    let od = vol.dims();
    let nd = [od[perm[0]], od[perm[1]], od[perm[2]]];
    // new index n_i -> old index o_{perm[i]} = flip ? (od-1-n_i) : n_i
    let mut t = [[0.0f64; 4]; 4];
    t[3][3] = 1.0;
    for n in 0..3 {
        let o = perm[n];
        if flip[n] {
            t[o][n] = -1.0;
            t[o][3] = (od[o] - 1) as f64;
        } else {
            t[o][n] = 1.0;
        }
    }
    let affine = vol.affine().mul(&Affine(t));
    let src = vol.data();
    let mut data = vec![0.0f32; src.len()];
    let strides = [1usize, od[0], od[0] * od[1]];
    data.par_chunks_mut(nd[0] * nd[1]).enumerate().for_each(|(z, plane)| {
        for y in 0..nd[1] {
            for x in 0..nd[0] {
                let n = [x, y, z];
                let mut idx = 0;
                for i in 0..3 {
                    let o = perm[i];
                    let oi = if flip[i] { od[o] - 1 - n[i] } else { n[i] };
                    idx += oi * strides[o];
                }
                plane[x + nd[0] * y] = src[idx];
            }
        }
    });
    Volume::new(nd, data, affine)
}

/// Per-axis linear interpolation table: output voxel `d` samples input continuous index
/// `src = d * scale + offset`, clamped to the input range (PyTorch's `align_corners=False`
/// has `offset = 0.5 * scale - 0.5`).
fn axis_table(n_in: usize, n_out: usize, scale: f64, offset: f64) -> Vec<(usize, usize, f32)> {
    (0..n_out)
        .map(|d| {
            let s = (d as f64 * scale + offset).clamp(0.0, (n_in - 1) as f64);
            let i0 = (s.floor() as usize).min(n_in - 1);
            let i1 = (i0 + 1).min(n_in - 1);
            let w = (s - i0 as f64).clamp(0.0, 1.0) as f32;
            (i0, i1, w)
        })
        .collect()
}

/// Trilinear resize to `new_dims`, exactly as PyTorch's
/// `F.interpolate(mode="trilinear", align_corners=False, size=new_dims)` (scale = in/out).
/// The affine is updated so the field of view is preserved.
pub fn resize(vol: &Volume, new_dims: [usize; 3]) -> Result<Volume> {
    let od = vol.dims();
    let scale = [0, 1, 2].map(|i| od[i] as f64 / new_dims[i].max(1) as f64);
    let offset = scale.map(|s| 0.5 * s - 0.5);
    resample_scaled(vol, new_dims, scale, offset)
}

/// Trilinear resampling to a target voxel size (mm). The new size is
/// `round(dims * spacing / target)` per axis and the field of view stays centred.
pub fn resample_to_spacing(vol: &Volume, target: [f64; 3]) -> Result<Volume> {
    if target.iter().any(|&t| !t.is_finite() || t <= 0.0) {
        return Err(IoError::invalid(format!("target spacing must be positive, got {target:?}")));
    }
    let od = vol.dims();
    let sp = vol.spacing();
    let nd = [0, 1, 2].map(|i| ((od[i] as f64 * sp[i] / target[i]).round() as usize).max(1));
    let scale = [0, 1, 2].map(|i| target[i] / sp[i]);
    // Centre the new grid on the old field of view: old centre (n - 1) / 2 = new centre.
    let offset = [0, 1, 2].map(|i| (od[i] as f64 - 1.0) / 2.0 - (nd[i] as f64 - 1.0) / 2.0 * scale[i]);
    resample_scaled(vol, nd, scale, offset)
}

/// Core trilinear resampler: new voxel `d` samples old continuous index
/// `d * scale + offset` on each axis.
fn resample_scaled(vol: &Volume, nd: [usize; 3], scale: [f64; 3], offset: [f64; 3]) -> Result<Volume> {
    if nd.contains(&0) {
        return Err(IoError::invalid(format!("cannot resample to a zero size {nd:?}")));
    }
    let n = nd.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    if n.is_none_or(|n| n > (1usize << 32)) {
        return Err(IoError::invalid(format!("resampled size {nd:?} is too large")));
    }
    let od = vol.dims();
    let tx = axis_table(od[0], nd[0], scale[0], offset[0]);
    let ty = axis_table(od[1], nd[1], scale[1], offset[1]);
    let tz = axis_table(od[2], nd[2], scale[2], offset[2]);
    let src = vol.data();
    let (sx, sy) = (1usize, od[0]);
    let sz = od[0] * od[1];
    let mut data = vec![0.0f32; nd[0] * nd[1] * nd[2]];
    data.par_chunks_mut(nd[0] * nd[1]).enumerate().for_each(|(z, plane)| {
        let (z0, z1, wz) = tz[z];
        for (y, &(y0, y1, wy)) in ty.iter().enumerate() {
            let row = &mut plane[y * nd[0]..(y + 1) * nd[0]];
            for (x, &(x0, x1, wx)) in tx.iter().enumerate() {
                let at = |xi: usize, yi: usize, zi: usize| src[xi * sx + yi * sy + zi * sz];
                let c00 = at(x0, y0, z0) * (1.0 - wx) + at(x1, y0, z0) * wx;
                let c10 = at(x0, y1, z0) * (1.0 - wx) + at(x1, y1, z0) * wx;
                let c01 = at(x0, y0, z1) * (1.0 - wx) + at(x1, y0, z1) * wx;
                let c11 = at(x0, y1, z1) * (1.0 - wx) + at(x1, y1, z1) * wx;
                let c0 = c00 * (1.0 - wy) + c10 * wy;
                let c1 = c01 * (1.0 - wy) + c11 * wy;
                row[x] = c0 * (1.0 - wz) + c1 * wz;
            }
        }
    });
    // new index d -> old continuous index d * scale + offset
    let mut t = Affine::identity();
    for i in 0..3 {
        t.0[i][i] = scale[i];
        t.0[i][3] = offset[i];
    }
    Volume::new(nd, data, vol.affine().mul(&t))
}

/// Centre crop and/or pad to `size`, padding with `pad_value`. On an axis that shrinks,
/// `floor((old - new) / 2)` voxels are removed at the start; on an axis that grows,
/// `floor((new - old) / 2)` voxels are added at the start (MONAI's convention).
pub fn crop_or_pad(vol: &Volume, size: [usize; 3], pad_value: f32) -> Result<Volume> {
    if size.contains(&0) {
        return Err(IoError::invalid(format!("crop/pad target has a zero size {size:?}")));
    }
    let od = vol.dims();
    // offset: new index + offset = old index (negative when padding)
    let off = [0, 1, 2].map(|i| {
        if od[i] >= size[i] {
            ((od[i] - size[i]) / 2) as i64
        } else {
            -(((size[i] - od[i]) / 2) as i64)
        }
    });
    let src = vol.data();
    let mut data = vec![pad_value; size[0] * size[1] * size[2]];
    data.par_chunks_mut(size[0] * size[1]).enumerate().for_each(|(z, plane)| {
        let oz = z as i64 + off[2];
        if oz < 0 || oz >= od[2] as i64 {
            return;
        }
        for y in 0..size[1] {
            let oy = y as i64 + off[1];
            if oy < 0 || oy >= od[1] as i64 {
                continue;
            }
            for x in 0..size[0] {
                let ox = x as i64 + off[0];
                if ox < 0 || ox >= od[0] as i64 {
                    continue;
                }
                plane[x + size[0] * y] = src[ox as usize + od[0] * (oy as usize + od[1] * oz as usize)];
            }
        }
    });
    let mut t = Affine::identity();
    for i in 0..3 {
        t.0[i][3] = off[i] as f64;
    }
    Volume::new(size, data, vol.affine().mul(&t))
}

/// Clip intensities to `[lo, hi]`.
pub fn clip(vol: &mut Volume, lo: f32, hi: f32) {
    vol.map_inplace(move |v| v.clamp(lo, hi));
}

/// Clip to `[lo, hi]` and scale linearly to `[0, 1]` (MONAI's `ScaleIntensityRange` with clip).
pub fn scale_to_unit(vol: &mut Volume, lo: f32, hi: f32) {
    let w = hi - lo;
    vol.map_inplace(move |v| (v.clamp(lo, hi) - lo) / w);
}

/// The one conversion between HU and what the networks see (the CT window [−1000, 1000] HU
/// scaled to [0, 1], as Text2CT's `ScaleIntensityRange` with clip): `(clip(hu) + 1000) / 2000`.
/// NaN stays NaN (±∞ clip to the window's ends): callers refuse non-finite voxels by name rather
/// than let them pass as a valid value.
pub fn hu_to_unit(hu: f32) -> f32 {
    (hu.clamp(-1000.0, 1000.0) + 1000.0) / 2000.0
}

/// Inverse of [`hu_to_unit`]: `x * 2000 − 1000`, clipped to [−1000, 1000]; NaN stays NaN.
pub fn unit_to_hu(x: f32) -> f32 {
    (x * 2000.0 - 1000.0).clamp(-1000.0, 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hu_and_unit_convert_both_ways_and_keep_nan() {
        assert_eq!(hu_to_unit(-1000.0), 0.0);
        assert_eq!(hu_to_unit(0.0), 0.5);
        assert_eq!(hu_to_unit(3000.0), 1.0);
        assert_eq!(hu_to_unit(f32::NEG_INFINITY), 0.0);
        assert!(hu_to_unit(f32::NAN).is_nan());
        for hu in [-1000.0, -512.5, 0.0, 40.0, 1000.0] {
            assert!((unit_to_hu(hu_to_unit(hu)) - hu).abs() < 1e-3, "{hu}");
        }
        assert_eq!(unit_to_hu(-0.5), -1000.0);
        assert_eq!(unit_to_hu(f32::INFINITY), 1000.0);
        assert!(unit_to_hu(f32::NAN).is_nan());
    }

    fn ramp(dims: [usize; 3], spacing: [f64; 3]) -> Volume {
        // f = 2x + 3y - z (in voxel units), linear: trilinear interpolation reproduces it.
        Volume::from_fn(dims, Affine::from_spacing_origin(spacing, [10.0, -20.0, 5.0]).unwrap(), |x, y, z| {
            2.0 * x as f32 + 3.0 * y as f32 - z as f32
        })
        .unwrap()
    }

    /// Every voxel of `out`, mapped to world and back into `orig`'s index space, must carry
    /// the analytic value there.
    fn check_world_consistent(orig: &Volume, out: &Volume, f: impl Fn([f64; 3]) -> f64, tol: f64, margin: f64) {
        let inv = orig.affine().inverse().unwrap();
        let d = out.dims();
        let od = orig.dims();
        let mut checked = 0;
        for z in 0..d[2] {
            for y in 0..d[1] {
                for x in 0..d[0] {
                    let w = out.affine().apply([x as f64, y as f64, z as f64]);
                    let o = inv.apply(w);
                    if (0..3).any(|i| o[i] < margin || o[i] > od[i] as f64 - 1.0 - margin) {
                        continue;
                    }
                    let got = out.get(x, y, z) as f64;
                    let want = f(o);
                    assert!((got - want).abs() < tol, "at {x},{y},{z}: got {got}, want {want}");
                    checked += 1;
                }
            }
        }
        assert!(checked > 10, "too few voxels checked: {checked}");
    }

    #[test]
    fn reorient_ras_lps_round_trip_keeps_world_positions() {
        let v = ramp([5, 6, 7], [0.5, 0.7, 2.0]);
        assert_eq!(v.orientation(), "RAS");
        let lps = reorient(&v, "LPS").unwrap();
        assert_eq!(lps.orientation(), "LPS");
        assert_eq!(lps.dims(), [5, 6, 7]);
        check_world_consistent(&v, &lps, |o| 2.0 * o[0] + 3.0 * o[1] - o[2], 1e-4, 0.0);
        let back = reorient(&lps, "RAS").unwrap();
        assert_eq!(back, v);
        // A permutation: SRA puts world z first.
        let p = reorient(&v, "SRA").unwrap();
        assert_eq!(p.dims(), [7, 5, 6]);
        assert_eq!(p.orientation(), "SRA");
        check_world_consistent(&v, &p, |o| 2.0 * o[0] + 3.0 * o[1] - o[2], 1e-4, 0.0);
    }

    #[test]
    fn resample_linear_field_is_exact_inside() {
        let v = ramp([20, 16, 10], [0.8, 0.8, 3.0]);
        let r = resample_to_spacing(&v, [1.6, 0.5, 1.5]).unwrap();
        assert_eq!(r.dims(), [10, 26, 20]);
        let sp = r.spacing();
        assert!((sp[0] - 1.6).abs() < 1e-9 && (sp[1] - 0.5).abs() < 1e-9 && (sp[2] - 1.5).abs() < 1e-9);
        // FOV centre preserved.
        let c_old = v.affine().apply([9.5, 7.5, 4.5]);
        let c_new = r.affine().apply([4.5, 12.5, 9.5]);
        for i in 0..3 {
            assert!((c_old[i] - c_new[i]).abs() < 1e-9);
        }
        check_world_consistent(&v, &r, |o| 2.0 * o[0] + 3.0 * o[1] - o[2], 1e-3, 0.0);
    }

    #[test]
    fn resize_matches_torch_align_corners_false() {
        // 1D check against PyTorch's formula, computed by hand: in = [0, 10, 20, 30], out 6.
        // scale = 4/6; src(d) = (d + .5) * 2/3 - .5 = -1/6, 1/2, 7/6, 11/6, 5/2, 19/6 -> clamp
        // below 0 and above 3: values 0, 5, 11.667, 18.333, 25, 30.
        let a = Affine::identity();
        let v = Volume::from_fn([4, 1, 1], a, |x, _, _| 10.0 * x as f32).unwrap();
        let r = resize(&v, [6, 1, 1]).unwrap();
        let want = [0.0, 5.0, 35.0 / 3.0, 55.0 / 3.0, 25.0, 30.0];
        for (g, w) in r.data().iter().zip(want) {
            assert!((g - w).abs() < 1e-4, "{:?}", r.data());
        }
        // Down-sampling by 2 averages pairs.
        let v = Volume::from_fn([8, 2, 2], a, |x, _, _| x as f32).unwrap();
        let r = resize(&v, [4, 1, 1]).unwrap();
        assert_eq!(r.data(), &[0.5, 2.5, 4.5, 6.5]);
    }

    #[test]
    fn crop_pad_geometry_and_pad_value() {
        let v = ramp([6, 5, 4], [1.0, 2.0, 3.0]);
        let c = crop_or_pad(&v, [4, 9, 4], AIR_HU).unwrap();
        assert_eq!(c.dims(), [4, 9, 4]);
        // x cropped by 1 at start, y padded by 2 at start.
        assert_eq!(c.get(0, 2, 0), v.get(1, 0, 0));
        assert_eq!(c.get(0, 0, 0), AIR_HU);
        assert_eq!(c.get(3, 8, 3), AIR_HU);
        let w_old = v.affine().apply([1.0, 0.0, 0.0]);
        let w_new = c.affine().apply([0.0, 2.0, 0.0]);
        assert_eq!(w_old, w_new);
        assert!(crop_or_pad(&v, [0, 1, 1], 0.0).is_err());
    }

    #[test]
    fn intensity_scaling() {
        let mut v =
            Volume::from_fn([4, 1, 1], Affine::identity(), |x, _, _| [-3000.0, -1000.0, 0.0, 2500.0][x]).unwrap();
        scale_to_unit(&mut v, -1000.0, 1000.0);
        assert_eq!(v.data(), &[0.0, 0.0, 0.5, 1.0]);
        assert_eq!(unit_to_hu(0.25), -500.0);
        assert_eq!(unit_to_hu(1.5), 1000.0);
    }
}
