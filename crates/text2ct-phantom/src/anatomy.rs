//! Normal chest anatomy of the synthetic subjects: sampling of the subject's parameters, the
//! analytic per-voxel body (body wall, ribs, sternum, spine, lungs, mediastinal fat, upper
//! abdomen) and the primitives of the mediastinum and of the branching pulmonary trees.
//! These are procedural phantoms, not patients.

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::noise;
use crate::params::{Anatomy, Coverage, Grid, Lobe, Patient, Vec3};
use crate::render::*;
use crate::Tissue;

#[inline]
fn u(rng: &mut ChaCha8Rng, lo: f64, hi: f64) -> f64 {
    rng.random_range(lo..hi)
}

/// Draw a subject. `cardiomegaly_ctr` replaces the normal cardiothoracic ratio. Always draws the
/// same number of values from `rng`, so other parameters never depend on the findings.
pub(crate) fn sample_anatomy(
    rng: &mut ChaCha8Rng,
    grid: &Grid,
    cardiomegaly_ctr: Option<f64>,
) -> (Anatomy, Coverage, Patient) {
    let male = rng.random_bool(0.55);
    let age = rng.random_range(25..=88u32);
    let study_date = format!(
        "{:04}{:02}{:02}",
        rng.random_range(2018..=2023u32),
        rng.random_range(1..=12u32),
        rng.random_range(1..=28u32)
    );
    let a = if male { u(rng, 150.0, 170.0) } else { u(rng, 140.0, 160.0) };
    let b = a * u(rng, 0.74, 0.84);
    let bx = u(rng, -3.0, 3.0);
    let by = u(rng, -5.0, 5.0);
    let fat = u(rng, 5.0, 20.0) + if male { 0.0 } else { 3.0 };
    let muscle_lat = u(rng, 6.0, 10.0);
    let muscle_ant = u(rng, 6.0, 12.0);
    let post_muscle = u(rng, 24.0, 32.0);
    let rib = 10.0;
    let ac = a - (2.0 + 0.6 * fat + muscle_lat + rib);
    let ant = 2.0 + 0.8 * fat + muscle_ant + rib;
    let post = 2.0 + fat * 0.5 + post_muscle;
    let bc = b - (ant + post) / 2.0;
    let cyc = by + (ant - post) / 2.0;
    let h = u(rng, 240.0, 285.0);
    let shift = u(rng, -8.0, 8.0);
    let zb = -h / 2.0 + shift;
    let apex = zb + h;
    let dome_r = u(rng, 58.0, 75.0);
    let dome_l = dome_r - u(rng, 8.0, 18.0);
    let med = u(rng, 12.0, 18.0);
    let zc = apex - u(rng, 88.0, 100.0);
    let vhw = u(rng, 18.0, 22.0);
    let sxc = bx;
    let syc = cyc + bc - 12.0;
    let ex = bx + 4.0;
    let ey = syc - 0.8 * vhw - 11.0;
    let tr = u(rng, 8.0, 10.5);
    let tx = bx + u(rng, -2.0, 2.0);
    let ty = ey - 11.0 - tr;
    let r_asc = u(rng, 14.0, 17.0);
    let r_desc = u(rng, 11.0, 13.0);
    let normal_ctr = u(rng, 0.38, 0.45);
    let hy_f = u(rng, 0.7, 0.8);
    let hz0 = u(rng, 50.0, 58.0);
    let hy_off = u(rng, 0.0, 6.0);
    let tree_seed: u64 = rng.random();
    let texture_seed: u64 = rng.random();

    let ctr = cardiomegaly_ctr.unwrap_or(normal_ctr);
    let hx = ctr * ac;
    let desc = [sxc + 28.0, syc - 28.0];
    let aorta_front = desc[1] - r_desc;
    let hy_max = (aorta_front - 6.0 - (cyc - bc + 14.0)) / 2.0;
    let hy = (hx * hy_f).min(hy_max).max(30.0);
    let bottom = zb + dome_l - 6.0;
    let hz = (hz0 * (1.0 + (ctr - 0.42))).min((zc - 15.0 - bottom) / 2.0).max(35.0);
    let heart_c = [bx + 0.3 * hx - 2.0, cyc - bc + 14.0 + hy + hy_off.min((hy_max - hy).max(0.0)), bottom + hz];
    let heart_r = [hx, hy, hz];

    let aorta_path = vec![
        add(heart_c, [-0.25 * hx, -0.2 * hy, 0.55 * hz]),
        [tx - 24.0, ty - 34.0, zc + 10.0],
        [tx - 10.0, ty - 32.0, zc + 32.0],
        [tx + 22.0, ty - 18.0, zc + 36.0],
        [sxc + 27.0, ty + 4.0, zc + 24.0],
        [desc[0], desc[1], zc],
        [desc[0] - 3.0, desc[1], zb + dome_l - 5.0],
        [sxc + 8.0, desc[1] + 2.0, zb - 80.0],
    ];
    let pa = [add(heart_c, [0.1 * hx, -0.55 * hy, 0.6 * hz]), [tx + 10.0, ty - 20.0, zc - 12.0]];
    let hilum_r = [tx - 55.0, ty - 10.0, zc - 20.0];
    let hilum_l = [tx + 58.0, ty, zc - 8.0];

    let anatomy = Anatomy {
        body_center_mm: [bx, by],
        body_half_width_mm: a,
        body_half_depth_mm: b,
        subcutaneous_fat_mm: fat,
        cavity_half_width_mm: ac,
        cavity_half_depth_mm: bc,
        cavity_center_y_mm: cyc,
        thorax_width_mm: 2.0 * ac,
        lung_base_z_mm: zb,
        lung_apex_z_mm: apex,
        lung_height_mm: h,
        dome_height_right_mm: dome_r,
        dome_height_left_mm: dome_l,
        mediastinum_half_width_mm: med,
        lung_volume_ml: 0.0,
        heart_center: grid.loc(heart_c),
        heart_semi_axes_mm: heart_r,
        heart_width_mm: 2.0 * hx,
        cardiothoracic_ratio: hx / ac,
        trachea_center_mm: [tx, ty],
        trachea_radius_mm: tr,
        carina: grid.loc([tx, ty, zc]),
        aorta_path_mm: aorta_path,
        aorta_radius_ascending_mm: r_asc,
        aorta_radius_descending_mm: r_desc,
        pulmonary_trunk_mm: pa,
        hilum_right: grid.loc(hilum_r),
        hilum_left: grid.loc(hilum_l),
        esophagus_center_mm: [ex, ey],
        spine_center_mm: [sxc, syc],
        vertebral_half_width_mm: vhw,
        tree_seed,
        texture_seed,
    };
    let mut anatomy = anatomy;
    anatomy.lung_volume_ml = Body::new(&anatomy).lung_volume_ml();
    let fov_half = grid.dims[2] as f64 * grid.spacing[2] / 2.0;
    let coverage = Coverage {
        fov_z_min_mm: -fov_half,
        fov_z_max_mm: fov_half,
        above_apex_mm: fov_half - apex,
        below_base_mm: zb + fov_half,
    };
    let patient = Patient { age, sex: if male { "M".into() } else { "F".into() }, study_date };
    (anatomy, coverage, patient)
}

/// Aorta radius at path point `i`.
pub(crate) fn aorta_radius(an: &Anatomy, i: usize) -> f64 {
    let n = an.aorta_path_mm.len();
    if i <= 2 {
        an.aorta_radius_ascending_mm
    } else {
        let t = ((i - 2) as f64 / (n - 3) as f64).min(1.0);
        an.aorta_radius_ascending_mm + (an.aorta_radius_descending_mm - an.aorta_radius_ascending_mm) * t.sqrt()
    }
}

/// The analytic body of one subject.
pub struct Body {
    bx: f64,
    by: f64,
    a: f64,
    b: f64,
    fat: f64,
    ac: f64,
    bc: f64,
    cyc: f64,
    zb: f64,
    h: f64,
    dome: [f64; 2],
    med: f64,
    sxc: f64,
    syc: f64,
    vhw: f64,
    tex: u64,
    pub(crate) heart_c: V3,
    pub(crate) heart_r: V3,
    pub(crate) aorta: Vec<(V3, f64)>,
    pub(crate) pa: Vec<(V3, V3, f64)>,
    pub(crate) carina_z: f64,
    pub(crate) trachea: [f64; 2],
}

impl Body {
    pub fn new(an: &Anatomy) -> Body {
        let aorta = an.aorta_path_mm.iter().enumerate().map(|(i, p)| (*p, aorta_radius(an, i))).collect();
        let [t0, t1] = an.pulmonary_trunk_mm;
        let pa = vec![(t0, t1, 13.0), (t1, an.hilum_right.mm, 10.0), (t1, an.hilum_left.mm, 10.0)];
        Body {
            bx: an.body_center_mm[0],
            by: an.body_center_mm[1],
            a: an.body_half_width_mm,
            b: an.body_half_depth_mm,
            fat: an.subcutaneous_fat_mm,
            ac: an.cavity_half_width_mm,
            bc: an.cavity_half_depth_mm,
            cyc: an.cavity_center_y_mm,
            zb: an.lung_base_z_mm,
            h: an.lung_height_mm,
            dome: [an.dome_height_right_mm, an.dome_height_left_mm],
            med: an.mediastinum_half_width_mm,
            sxc: an.spine_center_mm[0],
            syc: an.spine_center_mm[1],
            vhw: an.vertebral_half_width_mm,
            tex: an.texture_seed,
            heart_c: an.heart_center.mm,
            heart_r: an.heart_semi_axes_mm,
            aorta,
            pa,
            carina_z: an.carina.mm[2],
            trachea: an.trachea_center_mm,
        }
    }

    pub(crate) fn ac(&self) -> f64 {
        self.ac
    }
    pub(crate) fn bc(&self) -> f64 {
        self.bc
    }
    pub(crate) fn cyc(&self) -> f64 {
        self.cyc
    }
    pub(crate) fn bx(&self) -> f64 {
        self.bx
    }
    pub(crate) fn zb(&self) -> f64 {
        self.zb
    }
    pub(crate) fn h(&self) -> f64 {
        self.h
    }
    pub(crate) fn dome(&self, sign: f64) -> f64 {
        if sign < 0.0 {
            self.dome[0]
        } else {
            self.dome[1]
        }
    }

    /// Scale of the thoracic cavity's cross-section at height `zr` above the lung base: the
    /// upper thoracic aperture is narrower.
    #[inline]
    fn cavity_scale(&self, zr: f64) -> f64 {
        let t = ((zr - (self.h - 90.0)) / 130.0).max(0.0);
        (1.0 - t * t).max(0.36).sqrt()
    }

    /// Height of the diaphragm above the lung base at (u, wc) for one side, and its gradient.
    #[inline]
    fn diaphragm(&self, u: f64, wc: f64, s: f64) -> (f64, [f64; 2]) {
        let dome = self.dome(s);
        let kx = 0.6 * self.ac;
        let ky = 0.95 * self.bc;
        let du = s * u - 0.47 * self.ac;
        let dw = wc + 0.1 * self.bc;
        let d = dome * (1.0 - (du / kx).powi(2) - (dw / ky).powi(2));
        (d, [-2.0 * dome * du * s / (kx * kx), -2.0 * dome * dw / (ky * ky)])
    }

    /// Signed distance (mm, approximate) to the lung envelope of one side (`sign` -1 right,
    /// +1 left), ignoring the heart and vessels that are painted over it.
    pub fn lung_env_sd_side(&self, p: V3, s: f64) -> (f64, V3) {
        self.lung_env_impl(p, s, true)
    }

    /// Like [`Body::lung_env_sd_side`] but without the diaphragm and apex: the lung's outline
    /// in the axial plane (used to layer pleural fluid from the posterior wall).
    pub fn lung_outline_sd_side(&self, p: V3, s: f64) -> (f64, V3) {
        self.lung_env_impl(p, s, false)
    }

    fn lung_env_impl(&self, p: V3, s: f64, full: bool) -> (f64, V3) {
        let u = p[0] - self.bx;
        let wc = p[1] - self.cyc;
        let zr = p[2] - self.zb;
        let t = (zr - (self.h - 70.0)) / 70.0;
        let f = if t > 0.0 { (1.0 - t * t).max(0.0025).sqrt() } else { 1.0 };
        let (sde, ge) = ellipse_sd(s * u - 0.47 * self.ac, wc, 0.53 * self.ac * f, self.bc * f);
        let mut best = (sde, [ge[0] * s, ge[1], 0.0]);
        let g = self.cavity_scale(zr);
        let (sdc, gc) = ellipse_sd(u, wc, self.ac * g - 1.0, self.bc * g - 1.0);
        if sdc > best.0 {
            best = (sdc, [gc[0], gc[1], 0.0]);
        }
        let sdm = self.med - s * u;
        if sdm > best.0 {
            best = (sdm, [-s, 0.0, 0.0]);
        }
        if !full {
            return best;
        }
        let (d, gd) = self.diaphragm(u, wc, s);
        let sdd = d.max(0.0) - zr;
        if sdd > best.0 {
            let g = if d > 0.0 { normalize([gd[0], gd[1], -1.0]) } else { [0.0, 0.0, -1.0] };
            best = (sdd, g);
        }
        let sda = zr - self.h;
        if sda > best.0 {
            best = (sda, [0.0, 0.0, 1.0]);
        }
        best
    }

    /// Signed distance to the union of both lung envelopes.
    pub fn lung_env_sd(&self, p: V3) -> (f64, V3) {
        let r = self.lung_env_sd_side(p, -1.0);
        let l = self.lung_env_sd_side(p, 1.0);
        if r.0 < l.0 {
            r
        } else {
            l
        }
    }

    /// How deep (mm) a point lies inside aerated lung, away from the pleura, the heart and the
    /// great vessels; negative outside.
    pub fn lung_clearance(&self, p: V3) -> f64 {
        let mut c = -self.lung_env_sd(p).0;
        c = c.min(ellipsoid_sd(p, self.heart_c, add(self.heart_r, [4.0; 3])).0);
        for w in self.aorta.windows(2) {
            let s = Shape::Capsule { a: w[0].0, b: w[1].0, ra: w[0].1, rb: w[1].1 };
            c = c.min(s.sd(p).0);
        }
        for &(a, b, r) in &self.pa {
            c = c.min(Shape::Capsule { a, b, ra: r, rb: r }.sd(p).0);
        }
        c
    }

    /// Signed distance to the nearest solid mediastinal structure (heart, aorta, pulmonary
    /// arteries, trachea and main bronchi, esophagus, spine).
    pub(crate) fn structure_sd(&self, p: V3, an: &Anatomy) -> f64 {
        let mut c = ellipsoid_sd(p, self.heart_c, add(self.heart_r, [3.0; 3])).0;
        for w in self.aorta.windows(2) {
            c = c.min(Shape::Capsule { a: w[0].0, b: w[1].0, ra: w[0].1, rb: w[1].1 }.sd(p).0);
        }
        for &(a, b, r) in &self.pa {
            c = c.min(Shape::Capsule { a, b, ra: r, rb: r }.sd(p).0);
        }
        for (a, b, r) in airway_main(an) {
            c = c.min(Shape::Capsule { a, b, ra: r, rb: r }.sd(p).0);
        }
        let [ex, ey] = an.esophagus_center_mm;
        c = c.min(((p[0] - ex).powi(2) + (p[1] - ey).powi(2)).sqrt() - 9.0);
        c = c.min(ellipse_sd(p[0] - self.sxc, p[1] - self.syc, self.vhw, 0.8 * self.vhw).0);
        c
    }

    /// Lobe of a point in the lungs.
    pub fn lobe_of(&self, p: V3) -> Lobe {
        let zh = self.carina_z - 20.0;
        let yh = self.trachea[1];
        let lower = (p[2] - zh) < 0.9 * (p[1] - yh) + 5.0;
        if p[0] > self.bx {
            if lower {
                Lobe::LLL
            } else {
                Lobe::LUL
            }
        } else if lower {
            Lobe::RLL
        } else if p[2] < zh + 5.0 {
            Lobe::RML
        } else {
            Lobe::RUL
        }
    }

    /// y of the posterior lung boundary at (x, z) for one side, if the lung exists there.
    pub fn posterior_lung_y(&self, x: f64, z: f64, s: f64) -> Option<f64> {
        let mut y = self.cyc + 1.2 * self.bc;
        while y > self.cyc - 1.2 * self.bc {
            if self.lung_env_sd_side([x, y, z], s).0 < 0.0 {
                return Some(y);
            }
            y -= 1.0;
        }
        None
    }

    /// Volume (ml) of aerated lung (envelope minus the heart), numerically.
    fn lung_volume_ml(&self) -> f64 {
        let st = 6.0;
        let mut n = 0usize;
        let mut z = self.zb;
        while z < self.zb + self.h {
            let mut y = self.cyc - self.bc;
            while y < self.cyc + self.bc {
                let mut x = self.bx - self.ac;
                while x < self.bx + self.ac {
                    let p = [x, y, z];
                    if self.lung_env_sd(p).0 < 0.0 && ellipsoid_sd(p, self.heart_c, self.heart_r).0 > 0.0 {
                        n += 1;
                    }
                    x += st;
                }
                y += st;
            }
            z += st;
        }
        n as f64 * st * st * st / 1000.0
    }

    /// Value and tissue of the analytic anatomy at `p` (mm), blended over a voxel of size `sp`.
    #[inline]
    pub fn base(&self, p: V3, sp: V3) -> (f32, Tissue) {
        let u = p[0] - self.bx;
        let w = p[1] - self.by;
        let zr = p[2] - self.zb;
        let (sdb, gb) = ellipse_sd(u, w, self.a, self.b);
        let hb = footprint([gb[0], gb[1], 0.0], sp);
        if sdb >= 0.5 * hb {
            return (-1000.0, Tissue::Air);
        }
        let a_b = coverage(sdb, hb);
        let mut v = lerp(-1000.0, 30.0, a_b);
        let a_f = coverage(sdb + 2.0, hb);
        v = lerp(v, -100.0, a_f);
        let a_m = coverage(sdb + 2.0 + self.fat, hb);
        v = lerp(v, 45.0, a_m);
        let mut t = if a_m >= 0.5 {
            Tissue::Muscle
        } else if a_f >= 0.5 {
            Tissue::Fat
        } else if a_b >= 0.5 {
            Tissue::Soft
        } else {
            Tissue::Air
        };
        let wc = p[1] - self.cyc;
        let g = self.cavity_scale(zr);
        let (sdc, gc) = ellipse_sd(u, wc, self.ac * g, self.bc * g);
        let hc = footprint([gc[0], gc[1], 0.0], sp);
        if sdc < 0.5 * hc {
            let (cv, ct) = self.cavity_content(p, u, wc, zr, sp);
            let a_c = coverage(sdc, hc);
            v = lerp(v, cv, a_c);
            if a_c >= 0.5 {
                t = ct;
            }
        }
        // Ribs: a ring just outside the cavity, sloping down anteriorly.
        if sdc > -2.0 && sdc < 16.0 && zr > -45.0 && zr < self.h + 15.0 && !(wc < 0.0 && u.abs() < 28.0) {
            let un = u / self.ac;
            let wn = wc / self.bc;
            let sinth = wn / (un * un + wn * wn).sqrt().max(1e-9);
            let pitch = 26.0;
            let phase = (zr + 500.0 - 45.0 * sinth) / pitch;
            let dz = (phase - phase.floor() - 0.5) * pitch;
            let q = ((dz / 5.5).powi(2) + ((sdc - 6.5) / 5.5).powi(2)).sqrt();
            let hr = 0.5 * (sp[0] + sp[2]);
            let a = coverage((q - 1.0) * 5.5, hr);
            if a > 0.0 {
                v = lerp(v, if q < 0.62 { 260.0 } else { 780.0 }, a);
                if a >= 0.5 {
                    t = Tissue::Bone;
                }
            }
        }
        // Sternum.
        let dmax = self.dome[0].max(self.dome[1]);
        if zr > dmax + 10.0 && zr < self.h + 15.0 {
            let half_w = if zr > self.h - 50.0 { 20.0 } else { 14.0 };
            let cy = self.cyc - self.bc - 5.0;
            let qx = u.abs() - half_w;
            let qy = (p[1] - cy).abs() - 6.5;
            let sd = if qx > 0.0 || qy > 0.0 { (qx.max(0.0).powi(2) + qy.max(0.0).powi(2)).sqrt() } else { qx.max(qy) };
            let a = coverage(sd, 0.5 * (sp[0] + sp[1]));
            if a > 0.0 {
                v = lerp(v, if sd > -2.0 { 700.0 } else { 240.0 }, a);
                if a >= 0.5 {
                    t = Tissue::Bone;
                }
            }
        }
        // Spine: vertebral body with discs, neural arch with the cord, spinous process.
        let xs = p[0] - self.sxc;
        let ys = p[1] - self.syc;
        let vhd = 0.8 * self.vhw;
        let (sdv, gv) = ellipse_sd(xs, ys, self.vhw, vhd);
        let hv = footprint([gv[0], gv[1], 0.0], sp);
        if sdv < 0.5 * hv {
            let ph = (zr + 500.0) / 27.0;
            let disc = ph - ph.floor() < 0.17;
            let a = coverage(sdv, hv);
            v = lerp(
                v,
                if disc {
                    85.0
                } else if sdv > -2.0 {
                    700.0
                } else {
                    230.0
                },
                a,
            );
            if a >= 0.5 {
                t = if disc { Tissue::Soft } else { Tissue::Bone };
            }
        }
        let cy = self.syc + vhd + 10.0;
        let d = (xs * xs + (p[1] - cy).powi(2)).sqrt();
        let hs = 0.5 * (sp[0] + sp[1]);
        if d < 14.0 + hs {
            let a = coverage(d - 14.0, hs);
            v = lerp(v, 550.0, a);
            let ac = coverage(d - 8.0, hs);
            v = lerp(v, 30.0, ac);
            if a >= 0.5 {
                t = if ac >= 0.5 { Tissue::Soft } else { Tissue::Bone };
            }
        }
        if xs.abs() < 3.5 + hs && p[1] > cy + 12.0 && p[1] < cy + 38.0 && sdb < -6.0 {
            let a = coverage(xs.abs() - 3.5, hs);
            v = lerp(v, 600.0, a);
            if a >= 0.5 {
                t = Tissue::Bone;
            }
        }
        (v, t)
    }

    #[inline]
    fn cavity_content(&self, p: V3, u: f64, wc: f64, zr: f64, sp: V3) -> (f32, Tissue) {
        if zr > self.h + 8.0 {
            return (20.0, Tissue::Mediastinum);
        }
        let s = if u < 0.0 { -1.0 } else { 1.0 };
        let (d, _) = self.diaphragm(u, wc, s);
        let (nonlung, nt) = if zr < d.max(0.0) {
            if u < 12.0 {
                (58.0 + 4.0 * noise::noise_mm(self.tex ^ 7, p, 12.0), Tissue::Abdomen)
            } else {
                (-90.0, Tissue::Abdomen)
            }
        } else {
            (-90.0, Tissue::Mediastinum)
        };
        let (sdl, gl) = self.lung_env_sd(p);
        let hl = footprint(gl, sp);
        if sdl >= 0.5 * hl {
            return (nonlung, nt);
        }
        let lung = -862.0 + 24.0 * noise::noise_mm(self.tex, p, 5.0) + 28.0 * (wc / self.bc) as f32;
        let a = coverage(sdl, hl);
        (lerp(nonlung, lung, a), if a >= 0.5 { Tissue::Lung } else { nt })
    }
}

/// Trachea and main bronchi as (start, end, lumen radius).
pub(crate) fn airway_main(an: &Anatomy) -> Vec<(V3, V3, f64)> {
    let [tx, ty] = an.trachea_center_mm;
    let zc = an.carina.mm[2];
    let r = an.trachea_radius_mm;
    vec![
        ([tx, ty, an.lung_apex_z_mm + 120.0], [tx, ty, zc], r),
        ([tx, ty, zc], [tx - 40.0, ty + 6.0, zc - 24.0], 0.72 * r),
        ([tx, ty, zc], [tx + 46.0, ty - 4.0, zc - 30.0], 0.65 * r),
    ]
}

/// One segment of a pulmonary tree: the artery (or vein) and its companion bronchus.
#[derive(Clone, Debug)]
pub struct TreeSeg {
    pub a: Vec3,
    pub b: Vec3,
    pub ra: f64,
    pub rb: f64,
    pub depth: u8,
    /// -1 right lung, +1 left lung.
    pub side: f64,
    pub lobe: Lobe,
    /// Index of the parent segment in the same list.
    pub parent: Option<usize>,
    /// Unit direction from the artery to its companion bronchus.
    pub off: Vec3,
}

/// The branching pulmonary trees of a subject.
pub struct Trees {
    pub arteries: Vec<TreeSeg>,
    pub veins: Vec<TreeSeg>,
}

/// Normal bronchial lumen radius for an artery radius.
pub(crate) fn normal_lumen(ra: f64) -> f64 {
    0.75 * ra
}
/// Normal bronchial wall thickness for a lumen radius.
pub(crate) fn normal_wall(rl: f64) -> f64 {
    (0.18 * rl + 0.5).max(0.8)
}

/// Grow the arterial and venous trees of both lungs (deterministic from `tree_seed`).
pub fn build_trees(an: &Anatomy, body: &Body) -> Trees {
    use rand::SeedableRng;
    let mut rng = ChaCha8Rng::seed_from_u64(an.tree_seed);
    let mut arteries = Vec::new();
    let mut veins = Vec::new();
    for s in [-1.0f64, 1.0] {
        let hil = if s < 0.0 { an.hilum_right.mm } else { an.hilum_left.mm };
        let roots: [V3; 4] =
            [[0.3 * s, -0.15, 1.0], [0.75 * s, -0.6, -0.25], [0.45 * s, 0.55, -1.0], [1.0 * s, 0.2, 0.1]];
        for d in roots {
            let len = u(&mut rng, 32.0, 42.0);
            grow(body, &mut rng, hil, normalize(d), len, 6.5, 0, 6, s, None, &mut arteries);
        }
        let vroot = add(hil, [-8.0 * s, 18.0, -28.0]);
        for d in [[0.8 * s, 0.3, -0.5], [0.7 * s, -0.4, 0.6], [0.5 * s, 0.6, -0.9]] {
            let len = u(&mut rng, 28.0, 38.0);
            grow(body, &mut rng, vroot, normalize(d), len, 5.5, 0, 5, s, None, &mut veins);
        }
    }
    Trees { arteries, veins }
}

/// Companion bronchi of the arterial tree: for each artery segment, the bronchus start, end,
/// lumen radius and wall thickness given by `shape` (lumen, wall). Children start where their
/// parent ends; the main bronchi connect to the lobar roots.
pub fn bronchi(trees: &Trees, shape: impl Fn(&TreeSeg) -> (f64, f64)) -> Vec<(Vec3, Vec3, f64, f64)> {
    let mut out: Vec<(Vec3, Vec3, f64, f64)> = Vec::with_capacity(trees.arteries.len());
    for s in &trees.arteries {
        let (lumen, wall) = shape(s);
        let dist = |r: f64| r + lumen + wall + 0.5;
        let start = match s.parent {
            Some(p) => out[p].1,
            None => add(s.a, scale(s.off, dist(s.ra))),
        };
        let end = add(s.b, scale(s.off, dist(s.rb)));
        out.push((start, end, lumen, wall));
    }
    out
}

fn off_dir(d: V3) -> V3 {
    let up = if d[2].abs() > 0.9 { [1.0, 0.0, 0.0] } else { [0.0, 0.0, 1.0] };
    normalize(cross(normalize(d), up))
}

#[allow(clippy::too_many_arguments)]
fn grow(
    body: &Body,
    rng: &mut ChaCha8Rng,
    a: V3,
    dir: V3,
    len: f64,
    r: f64,
    depth: u8,
    max_depth: u8,
    side: f64,
    parent: Option<usize>,
    out: &mut Vec<TreeSeg>,
) {
    // Draw every random value first so that pruning does not shift the stream.
    let e1 = normalize(cross(dir, [u(rng, -1.0, 1.0), u(rng, -1.0, 1.0), u(rng, -1.0, 1.0)]));
    let ang1 = u(rng, 0.35, 0.7);
    let ang2 = u(rng, 0.3, 0.65);
    let twist = u(rng, -0.4, 0.4);
    let lf = [u(rng, 0.7, 0.85), u(rng, 0.7, 0.85)];
    let rf = [u(rng, 0.68, 0.8), u(rng, 0.68, 0.8)];
    let mut l = len;
    let mut b = add(a, scale(dir, l));
    let need = r + 1.5;
    let mut ok = body.lung_clearance(b) > need;
    for _ in 0..2 {
        if ok {
            break;
        }
        l *= 0.55;
        b = add(a, scale(dir, l));
        ok = body.lung_clearance(b) > need;
    }
    if !ok || l < 2.0 {
        return;
    }
    let rb = r * 0.92;
    let mid = scale(add(a, b), 0.5);
    let me = out.len();
    out.push(TreeSeg { a, b, ra: r, rb, depth, side, lobe: body.lobe_of(mid), parent, off: off_dir(dir) });
    if depth >= max_depth || rb * rf[0] < 0.45 {
        return;
    }
    let e2 = normalize(add(scale(e1, -1.0), scale(cross(dir, e1), twist)));
    for (k, (e, ang)) in [(e1, ang1), (e2, ang2)].into_iter().enumerate() {
        let nd = normalize(add(scale(dir, ang.cos()), scale(e, ang.sin())));
        grow(body, rng, b, nd, len * lf[k], rb * rf[k], depth + 1, max_depth, side, Some(me), out);
    }
}
