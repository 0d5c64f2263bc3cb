#![allow(dead_code)]
use text2ct_phantom::params::Grid;
use text2ct_phantom::{render, sample_params, PhantomConfig, PhantomParams, Rendered, Tissue};

pub fn cfg() -> PhantomConfig {
    PhantomConfig::with_dims([96, 96, 48])
}

pub struct Scan {
    pub p: PhantomParams,
    pub r: Rendered,
}

impl Scan {
    pub fn grid(&self) -> Grid {
        self.p.grid()
    }
    pub fn at(&self, mm: [f64; 3]) -> Option<f32> {
        let [i, j, k] = self.grid().nearest(mm)?;
        Some(self.r.volume.get(i, j, k))
    }
    pub fn tissue_at(&self, mm: [f64; 3]) -> Option<Tissue> {
        let [i, j, k] = self.grid().nearest(mm)?;
        Tissue::from_u8(self.r.tissue[self.r.volume.index(i, j, k)])
    }
    /// Voxel indices (flat) whose centre satisfies `pred(mm)` inside the box `lo..hi` (mm).
    pub fn voxels_in(&self, lo: [f64; 3], hi: [f64; 3], pred: impl Fn([f64; 3]) -> bool) -> Vec<usize> {
        let g = self.grid();
        let a = g.to_voxel(lo);
        let b = g.to_voxel(hi);
        let mut out = Vec::new();
        let r = |ax: usize| {
            let l = a[ax].min(b[ax]).floor().max(0.0) as usize;
            let h = (a[ax].max(b[ax]).ceil() as usize).min(g.dims[ax] - 1);
            l..=h
        };
        for k in r(2) {
            for j in r(1) {
                for i in r(0) {
                    let mm = g.to_mm([i as f64, j as f64, k as f64]);
                    if pred(mm) {
                        out.push(self.r.volume.index(i, j, k));
                    }
                }
            }
        }
        out
    }
    pub fn mean(&self, idx: &[usize]) -> f32 {
        idx.iter().map(|&i| self.r.volume.data()[i]).sum::<f32>() / idx.len().max(1) as f32
    }
    pub fn max(&self, idx: &[usize]) -> f32 {
        idx.iter().map(|&i| self.r.volume.data()[i]).fold(f32::NEG_INFINITY, f32::max)
    }
    pub fn min(&self, idx: &[usize]) -> f32 {
        idx.iter().map(|&i| self.r.volume.data()[i]).fold(f32::INFINITY, f32::min)
    }
}

pub fn scan(cfg: &PhantomConfig, index: u64) -> Scan {
    let p = sample_params(cfg, index).unwrap();
    let r = render(&p).unwrap();
    Scan { p, r }
}

/// The scan with only label `k` forced present, and the same scan with no finding.
pub fn pair(k: usize, index: u64) -> (Scan, Scan) {
    let c = cfg();
    (scan(&c.clone().with_only_labels(&[k]), index), scan(&c.with_only_labels(&[]), index))
}

pub fn in_ellipsoid(p: [f64; 3], c: [f64; 3], r: [f64; 3]) -> bool {
    (0..3).map(|i| ((p[i] - c[i]) / r[i]).powi(2)).sum::<f64>() <= 1.0
}

pub fn dist(a: [f64; 3], b: [f64; 3]) -> f64 {
    (0..3).map(|i| (a[i] - b[i]).powi(2)).sum::<f64>().sqrt()
}

pub fn sub(a: [f64; 3], r: f64) -> [f64; 3] {
    [a[0] - r, a[1] - r, a[2] - r]
}
pub fn add(a: [f64; 3], r: f64) -> [f64; 3] {
    [a[0] + r, a[1] + r, a[2] + r]
}

pub const INDICES: [u64; 3] = [0, 1, 2];
