//! Counter-based noise: every value depends only on a seed and integer coordinates, so the
//! phantoms are identical whatever the number of threads.

/// SplitMix64 finaliser: a good 64-bit mix.
#[inline]
pub fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Hash of a seed and three integer coordinates.
#[inline]
pub fn hash3(seed: u64, x: i64, y: i64, z: i64) -> u64 {
    let h = mix64(seed ^ (x as u64).wrapping_mul(0x8CB9_2BA7_2F3D_8DD7));
    let h = mix64(h ^ (y as u64).wrapping_mul(0xD6E8_FEB8_6659_FD93));
    mix64(h ^ (z as u64).wrapping_mul(0xA076_1D64_78BD_642F))
}

/// Derive a sub-seed from a seed and a tag.
pub fn derive(seed: u64, tag: u64) -> u64 {
    mix64(seed ^ mix64(tag.wrapping_add(0x5851_F42D_4C95_7F2D)))
}

/// Approximately standard-normal value from a hash (Irwin-Hall of four 16-bit uniforms).
#[inline]
pub fn gauss_from_hash(h: u64) -> f32 {
    let s = (h & 0xFFFF) + ((h >> 16) & 0xFFFF) + ((h >> 32) & 0xFFFF) + (h >> 48);
    // Sum of 4 U(0,1): mean 2, variance 1/3.
    ((s as f32 / 65535.0) - 2.0) * 1.732_050_8
}

/// Uniform value in [-1, 1) from a hash.
#[inline]
fn signed_unit(h: u64) -> f32 {
    (h >> 40) as f32 / (1u64 << 23) as f32 - 1.0
}

#[inline]
fn smooth(t: f32) -> f32 {
    t * t * (3.0 - 2.0 * t)
}

/// Smooth 3D value noise in [-1, 1] with a lattice of unit spacing (divide mm by the feature
/// size before calling).
pub fn value_noise(seed: u64, p: [f64; 3]) -> f32 {
    let fx = p[0].floor();
    let fy = p[1].floor();
    let fz = p[2].floor();
    let (ix, iy, iz) = (fx as i64, fy as i64, fz as i64);
    let tx = smooth((p[0] - fx) as f32);
    let ty = smooth((p[1] - fy) as f32);
    let tz = smooth((p[2] - fz) as f32);
    let c = |dx: i64, dy: i64, dz: i64| signed_unit(hash3(seed, ix + dx, iy + dy, iz + dz));
    let lerp = |a: f32, b: f32, t: f32| a + (b - a) * t;
    let x00 = lerp(c(0, 0, 0), c(1, 0, 0), tx);
    let x10 = lerp(c(0, 1, 0), c(1, 1, 0), tx);
    let x01 = lerp(c(0, 0, 1), c(1, 0, 1), tx);
    let x11 = lerp(c(0, 1, 1), c(1, 1, 1), tx);
    lerp(lerp(x00, x10, ty), lerp(x01, x11, ty), tz)
}

/// Value noise at a feature size in mm.
#[inline]
pub fn noise_mm(seed: u64, p: [f64; 3], size_mm: f64) -> f32 {
    value_noise(seed, [p[0] / size_mm, p[1] / size_mm, p[2] / size_mm])
}

/// Add slightly correlated Gaussian CT noise of standard deviation `sigma` to one axial slice:
/// white noise from `(seed, x, y, z)`, smoothed by a 3x3 binomial kernel and rescaled.
pub fn add_slice_noise(
    slice: &mut [f32],
    nx: usize,
    ny: usize,
    z: usize,
    seed: u64,
    sigma: f32,
    scratch: &mut Vec<f32>,
) {
    if sigma <= 0.0 {
        return;
    }
    // Pad by one voxel so the kernel needs no edge cases.
    let (px, py) = (nx + 2, ny + 2);
    scratch.clear();
    scratch.resize(px * py * 2, 0.0);
    let (white, rows) = scratch.split_at_mut(px * py);
    for y in 0..py {
        for x in 0..px {
            white[x + px * y] = gauss_from_hash(hash3(seed, x as i64 - 1, y as i64 - 1, z as i64));
        }
    }
    // Horizontal [1 2 1] / 4.
    for y in 0..py {
        let r = &white[px * y..px * (y + 1)];
        let o = &mut rows[px * y..px * (y + 1)];
        for x in 1..px - 1 {
            o[x] = 0.25 * (r[x - 1] + 2.0 * r[x] + r[x + 1]);
        }
    }
    // Vertical [1 2 1] / 4; the 2D kernel scales the standard deviation by 0.375.
    let k = sigma / 0.375;
    for y in 0..ny {
        for x in 0..nx {
            let a = rows[(x + 1) + px * y];
            let b = rows[(x + 1) + px * (y + 1)];
            let c = rows[(x + 1) + px * (y + 2)];
            slice[x + nx * y] += k * 0.25 * (a + 2.0 * b + c);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaussian_moments() {
        let n = 200_000;
        let v: Vec<f32> = (0..n).map(|i| gauss_from_hash(hash3(7, i, 0, 0))).collect();
        let m = v.iter().sum::<f32>() / n as f32;
        let s = (v.iter().map(|x| (x - m) * (x - m)).sum::<f32>() / n as f32).sqrt();
        assert!(m.abs() < 0.02, "{m}");
        assert!((s - 1.0).abs() < 0.02, "{s}");
    }

    #[test]
    fn slice_noise_sigma() {
        let (nx, ny) = (200, 200);
        let mut s = vec![0.0f32; nx * ny];
        let mut scratch = Vec::new();
        add_slice_noise(&mut s, nx, ny, 3, 11, 15.0, &mut scratch);
        let m = s.iter().sum::<f32>() / s.len() as f32;
        let sd = (s.iter().map(|x| (x - m) * (x - m)).sum::<f32>() / s.len() as f32).sqrt();
        assert!((sd - 15.0).abs() < 1.0, "{sd}");
        // Neighbours are correlated.
        let c: f32 = (0..nx * ny - 1).map(|i| s[i] * s[i + 1]).sum::<f32>() / (nx * ny) as f32 / (sd * sd);
        assert!(c > 0.3, "{c}");
    }

    #[test]
    fn value_noise_range() {
        for i in 0..1000 {
            let v = value_noise(3, [i as f64 * 0.37, i as f64 * 0.11, -(i as f64) * 0.05]);
            assert!((-1.0..=1.0).contains(&v));
        }
    }
}
