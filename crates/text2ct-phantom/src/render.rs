//! Rasterisation: analytic anatomy per voxel plus an ordered list of primitives, each painted
//! only inside its bounding box, with partial-volume (box-filtered) edges. Parallel over axial
//! slices; every value depends only on the parameters, never on the thread count.

use rayon::prelude::*;

use crate::anatomy::Body;
use crate::noise;
use crate::params::{Grid, PhantomParams};
use crate::Tissue;

pub(crate) type V3 = [f64; 3];

#[inline]
pub(crate) fn add(a: V3, b: V3) -> V3 {
    [a[0] + b[0], a[1] + b[1], a[2] + b[2]]
}
#[inline]
pub(crate) fn sub(a: V3, b: V3) -> V3 {
    [a[0] - b[0], a[1] - b[1], a[2] - b[2]]
}
#[inline]
pub(crate) fn scale(a: V3, s: f64) -> V3 {
    [a[0] * s, a[1] * s, a[2] * s]
}
#[inline]
pub(crate) fn dot(a: V3, b: V3) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}
#[inline]
pub(crate) fn norm(a: V3) -> f64 {
    dot(a, a).sqrt()
}
#[inline]
pub(crate) fn normalize(a: V3) -> V3 {
    let n = norm(a);
    if n < 1e-12 {
        [0.0, 0.0, 1.0]
    } else {
        scale(a, 1.0 / n)
    }
}
#[inline]
pub(crate) fn cross(a: V3, b: V3) -> V3 {
    [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]]
}
#[inline]
pub(crate) fn lerp(a: f32, b: f32, t: f32) -> f32 {
    a + (b - a) * t
}
#[inline]
pub(crate) fn smoothstep(e0: f32, e1: f32, x: f32) -> f32 {
    let t = ((x - e0) / (e1 - e0)).clamp(0.0, 1.0);
    t * t * (3.0 - 2.0 * t)
}

/// Extent of a voxel along a unit normal `g` (mm): the partial-volume footprint.
#[inline]
pub(crate) fn footprint(g: V3, sp: V3) -> f64 {
    (((g[0] * sp[0]).powi(2) + (g[1] * sp[1]).powi(2) + (g[2] * sp[2]).powi(2)).sqrt()).max(0.05)
}

/// Fraction of a voxel of footprint `h` inside a region whose signed distance is `sd`.
#[inline]
pub(crate) fn coverage(sd: f64, h: f64) -> f32 {
    (0.5 - sd / h).clamp(0.0, 1.0) as f32
}

/// Approximate signed distance to an axis-aligned ellipse and its unit gradient (2D).
#[inline]
pub(crate) fn ellipse_sd(u: f64, w: f64, a: f64, b: f64) -> (f64, [f64; 2]) {
    let (a, b) = (a.max(0.5), b.max(0.5));
    let k0 = ((u / a).powi(2) + (w / b).powi(2)).sqrt();
    let gx = u / (a * a);
    let gy = w / (b * b);
    let k1 = (gx * gx + gy * gy).sqrt();
    if k1 < 1e-12 {
        return (-a.min(b), [1.0, 0.0]);
    }
    (k0 * (k0 - 1.0) / k1, [gx / k1, gy / k1])
}

/// Approximate signed distance to an axis-aligned ellipsoid and its unit gradient.
#[inline]
pub(crate) fn ellipsoid_sd(p: V3, c: V3, r: V3) -> (f64, V3) {
    let d = sub(p, c);
    let q = [d[0] / r[0], d[1] / r[1], d[2] / r[2]];
    let k0 = norm(q);
    let g = [d[0] / (r[0] * r[0]), d[1] / (r[1] * r[1]), d[2] / (r[2] * r[2])];
    let k1 = norm(g);
    if k1 < 1e-12 {
        return (-r[0].min(r[1]).min(r[2]), [0.0, 0.0, 1.0]);
    }
    (k0 * (k0 - 1.0) / k1, scale(g, 1.0 / k1))
}

/// Closest point parameter of `p` on segment `a`-`b`.
#[inline]
pub(crate) fn segment_t(p: V3, a: V3, b: V3) -> f64 {
    let ab = sub(b, a);
    let l2 = dot(ab, ab);
    if l2 < 1e-12 {
        0.0
    } else {
        (dot(sub(p, a), ab) / l2).clamp(0.0, 1.0)
    }
}

/// A shape with a signed distance (mm, negative inside).
#[derive(Clone, Debug)]
pub(crate) enum Shape {
    Sphere {
        c: V3,
        r: f64,
    },
    Ellipsoid {
        c: V3,
        r: V3,
    },
    /// Segment with linearly varying radius.
    Capsule {
        a: V3,
        b: V3,
        ra: f64,
        rb: f64,
    },
    Cuboid {
        c: V3,
        h: V3,
    },
}

impl Shape {
    #[inline]
    pub(crate) fn sd(&self, p: V3) -> (f64, V3) {
        match *self {
            Shape::Sphere { c, r } => {
                let d = sub(p, c);
                let n = norm(d);
                (n - r, if n > 1e-9 { scale(d, 1.0 / n) } else { [0.0, 0.0, 1.0] })
            }
            Shape::Ellipsoid { c, r } => ellipsoid_sd(p, c, r),
            Shape::Capsule { a, b, ra, rb } => {
                let t = segment_t(p, a, b);
                let q = add(a, scale(sub(b, a), t));
                let d = sub(p, q);
                let n = norm(d);
                (n - (ra + (rb - ra) * t), if n > 1e-9 { scale(d, 1.0 / n) } else { [0.0, 0.0, 1.0] })
            }
            Shape::Cuboid { c, h } => {
                let q = [(p[0] - c[0]).abs() - h[0], (p[1] - c[1]).abs() - h[1], (p[2] - c[2]).abs() - h[2]];
                let out = [q[0].max(0.0), q[1].max(0.0), q[2].max(0.0)];
                let no = norm(out);
                let sgn = |i: usize| if p[i] >= c[i] { 1.0 } else { -1.0 };
                if no > 0.0 {
                    (no, [out[0] / no * sgn(0), out[1] / no * sgn(1), out[2] / no * sgn(2)])
                } else {
                    let i = if q[0] >= q[1] && q[0] >= q[2] {
                        0
                    } else if q[1] >= q[2] {
                        1
                    } else {
                        2
                    };
                    let mut g = [0.0; 3];
                    g[i] = sgn(i);
                    (q[i], g)
                }
            }
        }
    }

    /// Axis-aligned bounding box.
    pub(crate) fn bbox(&self) -> (V3, V3) {
        match *self {
            Shape::Sphere { c, r } => (sub(c, [r; 3]), add(c, [r; 3])),
            Shape::Ellipsoid { c, r } => (sub(c, r), add(c, r)),
            Shape::Capsule { a, b, ra, rb } => {
                let r = ra.max(rb);
                let lo = [0, 1, 2].map(|i| a[i].min(b[i]) - r);
                let hi = [0, 1, 2].map(|i| a[i].max(b[i]) + r);
                (lo, hi)
            }
            Shape::Cuboid { c, h } => (sub(c, h), add(c, h)),
        }
    }
}

/// Procedural effects painted inside a region (the region's shape gives a soft weight).
#[derive(Clone, Debug)]
pub(crate) enum Field {
    /// Low-attenuation holes where the noise exceeds `threshold`.
    Emphysema { seed: u64, cell_mm: f64, threshold: f32, hu: f32, subpleural_mm: f64 },
    /// Alternating lobular densities of +/- `amp` HU.
    Mosaic { seed: u64, patch_mm: f64, amp: f32 },
    /// Patchy ground glass (max-blend toward `hu`, vessels stay visible).
    GroundGlass { seed: u64, hu: f32 },
    /// Dense airspace disease.
    Consolidation { seed: u64, hu: f32 },
    /// Polygonal septal lines within `subpleural_mm` of the pleura.
    Septal { seed: u64, spacing_mm: f64, thickness_mm: f64, hu: f32, subpleural_mm: f64 },
    /// Dependent pleural fluid of the lung on side `sign` (-1 right, +1 left).
    PleuralFluid { sign: f64, depth_mm: f64, hu: f32, base_z_mm: f64, taper_mm: f64 },
}

/// How a primitive changes the voxels it covers.
#[derive(Clone, Debug)]
pub(crate) enum Paint {
    /// Replace by a value (blended by the covered fraction).
    Set(f32),
    /// Raise toward a value, never lower.
    Max(f32),
    Field {
        field: Field,
        soft_mm: f64,
    },
}

#[derive(Clone, Debug)]
pub(crate) struct Prim {
    pub shape: Shape,
    pub paint: Paint,
    /// Bit set of tissues the primitive may change (`1 << Tissue as u32`).
    pub mask: u32,
    /// Tissue assigned where the primitive covers more than half the voxel.
    pub tissue: Option<Tissue>,
    lo: V3,
    hi: V3,
}

impl Prim {
    pub(crate) fn new(shape: Shape, paint: Paint, mask: u32, tissue: Option<Tissue>) -> Prim {
        let (lo, hi) = shape.bbox();
        Prim { shape, paint, mask, tissue, lo, hi }
    }
}

/// Mask of all tissues.
pub(crate) const ALL: u32 = u32::MAX;

pub(crate) const fn bits(ts: &[Tissue]) -> u32 {
    let mut m = 0u32;
    let mut i = 0;
    while i < ts.len() {
        m |= 1 << (ts[i] as u32);
        i += 1;
    }
    m
}

/// Render the voxels (HU) and tissue map of a parameter set on its grid.
pub(crate) fn rasterize(params: &PhantomParams, body: &Body, prims: &[Prim]) -> (Vec<f32>, Vec<u8>) {
    let grid = params.grid();
    let [nx, ny, nz] = grid.dims;
    let sp = grid.spacing;
    let n = nx * ny * nz;
    let mut data = vec![0.0f32; n];
    let mut tissue = vec![0u8; n];
    let margin = sp[0].max(sp[1]).max(sp[2]);
    data.par_chunks_mut(nx * ny).zip(tissue.par_chunks_mut(nx * ny)).enumerate().for_each_init(
        Vec::new,
        |scratch, (k, (slice, tslice))| {
            render_slice(params, body, prims, &grid, margin, k, slice, tslice);
            noise::add_slice_noise(slice, nx, ny, k, params.noise_seed, params.noise_sigma, scratch);
            for v in slice.iter_mut() {
                *v = v.clamp(-1024.0, 3071.0);
            }
        },
    );
    let _ = nz;
    (data, tissue)
}

#[allow(clippy::too_many_arguments)]
fn render_slice(
    params: &PhantomParams,
    body: &Body,
    prims: &[Prim],
    grid: &Grid,
    margin: f64,
    k: usize,
    slice: &mut [f32],
    tslice: &mut [u8],
) {
    let [nx, ny, _] = grid.dims;
    let sp = grid.spacing;
    let c = [0, 1, 2].map(|i| (grid.dims[i] as f64 - 1.0) / 2.0);
    let z = (k as f64 - c[2]) * sp[2];
    let xmm = |i: usize| (i as f64 - c[0]) * sp[0];
    let ymm = |j: usize| (j as f64 - c[1]) * sp[1];
    for j in 0..ny {
        let y = ymm(j);
        for i in 0..nx {
            let (v, t) = body.base([xmm(i), y, z], sp);
            slice[i + nx * j] = v;
            tslice[i + nx * j] = t as u8;
        }
    }
    let _ = params;
    for prim in prims {
        if z < prim.lo[2] - margin || z > prim.hi[2] + margin {
            continue;
        }
        let range = |axis: usize, n: usize| -> Option<(usize, usize)> {
            let lo = ((prim.lo[axis] - margin) / sp[axis] + c[axis]).floor().max(0.0);
            let hi = ((prim.hi[axis] + margin) / sp[axis] + c[axis]).ceil().min(n as f64 - 1.0);
            if hi < lo {
                None
            } else {
                Some((lo as usize, hi as usize))
            }
        };
        let (Some((i0, i1)), Some((j0, j1))) = (range(0, nx), range(1, ny)) else {
            continue;
        };
        for j in j0..=j1 {
            let y = ymm(j);
            for i in i0..=i1 {
                let idx = i + nx * j;
                let t = tslice[idx];
                if prim.mask & (1u32 << t) == 0 {
                    continue;
                }
                let p = [xmm(i), y, z];
                let (sd, g) = prim.shape.sd(p);
                let h = footprint(g, sp);
                match &prim.paint {
                    Paint::Set(val) | Paint::Max(val) => {
                        let a = coverage(sd, h);
                        if a <= 0.0 {
                            continue;
                        }
                        let cur = slice[idx];
                        let nv = lerp(cur, *val, a);
                        slice[idx] = if matches!(prim.paint, Paint::Max(_)) { cur.max(nv) } else { nv };
                        if a >= 0.5 {
                            if let Some(tt) = prim.tissue {
                                tslice[idx] = tt as u8;
                            }
                        }
                    }
                    Paint::Field { field, soft_mm } => {
                        let w = coverage(sd, h.max(*soft_mm));
                        if w <= 0.0 {
                            continue;
                        }
                        let (nv, a) = apply_field(field, body, p, sp, slice[idx], w);
                        slice[idx] = nv;
                        if a >= 0.5 {
                            if let Some(tt) = prim.tissue {
                                tslice[idx] = tt as u8;
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Apply a field at `p` to the value `cur` with region weight `w`; returns the new value and
/// how strongly the field took over (for the tissue map).
fn apply_field(field: &Field, body: &Body, p: V3, sp: V3, cur: f32, w: f32) -> (f32, f32) {
    match *field {
        Field::Emphysema { seed, cell_mm, threshold, hu, subpleural_mm } => {
            let mut wt = w;
            if subpleural_mm > 0.0 {
                let (sd, _) = body.lung_env_sd(p);
                wt *= smoothstep(-(subpleural_mm as f32), -(subpleural_mm as f32) * 0.6, sd as f32);
            }
            let n = noise::noise_mm(seed, p, cell_mm);
            let a = smoothstep(threshold, threshold + 0.06, n) * wt;
            (lerp(cur, hu, a), 0.0)
        }
        Field::Mosaic { seed, patch_mm, amp } => {
            let n = noise::noise_mm(seed, p, patch_mm);
            let s = smoothstep(-0.12, 0.12, n) * 2.0 - 1.0;
            (cur + amp * s * w, 0.0)
        }
        Field::GroundGlass { seed, hu } => {
            let n = noise::noise_mm(seed, p, 9.0);
            let patch = smoothstep(-0.7, -0.3, noise::noise_mm(seed ^ 0x55, p, 14.0));
            let a = w * patch;
            let target = hu + 35.0 * n;
            (cur.max(lerp(cur, target, a)), 0.0)
        }
        Field::Consolidation { seed, hu } => {
            let n = noise::noise_mm(seed, p, 6.0);
            (lerp(cur, hu + 12.0 * n, w), w)
        }
        Field::Septal { seed, spacing_mm, thickness_mm, hu, subpleural_mm } => {
            let (sd, _) = body.lung_env_sd(p);
            if sd < -subpleural_mm {
                return (cur, 0.0);
            }
            let band = smoothstep(-(subpleural_mm as f32), -(subpleural_mm as f32) * 0.7, sd as f32);
            let warp = 0.25;
            let q = [0, 1, 2]
                .map(|i| p[i] / spacing_mm + warp * noise::noise_mm(seed.wrapping_add(i as u64), p, 20.0) as f64);
            let mut cov = 0.0f64;
            for (i, qi) in q.iter().enumerate() {
                let d = ((qi + 0.5).rem_euclid(1.0) - 0.5).abs() * spacing_mm;
                let h = sp[i].max(0.05);
                let overlap = ((d + h / 2.0).min(thickness_mm / 2.0) - (d - h / 2.0).max(-thickness_mm / 2.0))
                    .clamp(0.0, thickness_mm.min(h));
                cov = cov.max(overlap / h);
            }
            let a = (cov as f32) * w * band;
            (cur.max(lerp(cur, hu, a)), 0.0)
        }
        Field::PleuralFluid { sign, depth_mm, hu, base_z_mm, taper_mm } => {
            let zr = p[2] - base_z_mm;
            let depth = depth_mm * (1.0 - (zr - 40.0).max(0.0) / taper_mm).clamp(0.12, 1.0);
            let (inside, _) = body.lung_env_sd_side(p, sign);
            let (shifted, _) = body.lung_outline_sd_side([p[0], p[1] + depth, p[2]], sign);
            let sd = inside.max(-shifted);
            let a = coverage(sd, sp[1]) * w;
            (lerp(cur, hu, a), a)
        }
    }
}
