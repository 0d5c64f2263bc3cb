//! The 18 CT-RATE abnormalities: sampling of their parameters (side, location, size,
//! severity) and their primitives, plus the assembly of the whole scene in painting order.
//! Each finding draws from its own random stream, so adding or removing one finding never
//! changes another.

use rand::seq::SliceRandom;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::anatomy::{airway_main, bronchi, normal_lumen, normal_wall, Body, TreeSeg, Trees};
use crate::noise;
use crate::params::*;
use crate::render::*;
use crate::Tissue;
use crate::Tissue as T;

#[inline]
fn u(rng: &mut ChaCha8Rng, lo: f64, hi: f64) -> f64 {
    rng.random_range(lo..hi)
}

fn severity(rng: &mut ChaCha8Rng) -> Severity {
    let x: f64 = rng.random();
    if x < 0.5 {
        Severity::Mild
    } else if x < 0.8 {
        Severity::Moderate
    } else {
        Severity::Severe
    }
}

fn pick3(rng: &mut ChaCha8Rng, sev: Severity, r: [(f64, f64); 3]) -> f64 {
    let (lo, hi) = r[sev.level()];
    u(rng, lo, hi)
}

/// Right, left or both, with the given probabilities of right and left alone.
fn draw_side(rng: &mut ChaCha8Rng, p_right: f64, p_left: f64) -> Side {
    let x: f64 = rng.random();
    if x < p_right {
        Side::Right
    } else if x < p_right + p_left {
        Side::Left
    } else {
        Side::Bilateral
    }
}

fn signs(side: Side) -> Vec<f64> {
    match side {
        Side::Right => vec![-1.0],
        Side::Left => vec![1.0],
        Side::Bilateral => vec![-1.0, 1.0],
    }
}

fn side_of(s: f64) -> Side {
    if s < 0.0 {
        Side::Right
    } else {
        Side::Left
    }
}

/// What the findings sampler needs to know about the subject.
pub(crate) struct Ctx<'a> {
    pub an: &'a Anatomy,
    pub body: &'a Body,
    pub trees: &'a Trees,
    pub grid: Grid,
    pub cov: &'a Coverage,
}

impl Ctx<'_> {
    fn z_ok(&self, z: f64, margin: f64) -> bool {
        z > self.cov.fov_z_min_mm + margin && z < self.cov.fov_z_max_mm - margin
    }

    /// A random point in the lung of side `s` with at least `clear` mm of aerated lung around
    /// it and satisfying `pred`; falls back to the best point seen.
    fn lung_point(&self, rng: &mut ChaCha8Rng, s: f64, clear: f64, pred: impl Fn(V3) -> bool) -> V3 {
        let b = self.body;
        let mut best = (f64::NEG_INFINITY, [b.bx() + s * 0.5 * b.ac(), b.cyc(), b.zb() + 0.5 * b.h()]);
        for _ in 0..600 {
            let p = [
                b.bx() + s * u(rng, 0.1, 0.95) * b.ac(),
                b.cyc() + u(rng, -0.95, 0.95) * b.bc(),
                b.zb() + u(rng, 0.03, 0.92) * b.h(),
            ];
            if !self.z_ok(p[2], clear.max(6.0)) {
                continue;
            }
            let c = b.lung_clearance(p);
            if c >= clear && pred(p) {
                return p;
            }
            if c > best.0 && pred(p) {
                best = (c, p);
            }
        }
        best.1
    }

    fn region(&self, side: f64, c: V3, semi: V3) -> Region {
        Region { side: side_of(side), lobe: self.body.lobe_of(c), center: self.grid.loc(c), semi_axes_mm: semi }
    }
}

/// Cardiomegaly is drawn before the anatomy because it sets the heart size.
pub(crate) fn sample_cardiomegaly(rng: &mut ChaCha8Rng) -> (Severity, f64) {
    let sev = severity(rng);
    let ctr = pick3(rng, sev, [(0.55, 0.58), (0.58, 0.63), (0.63, 0.68)]);
    (sev, ctr)
}

/// Draw the parameters of every present finding; `rngs[k]` is label k's stream.
pub(crate) fn sample_findings(
    ctx: &Ctx,
    labels: &[bool; 18],
    rngs: &mut [ChaCha8Rng],
    cardiomegaly: Option<(Severity, f64)>,
) -> Findings {
    let mut f = Findings::default();
    let an = ctx.an;
    let body = ctx.body;
    let g = ctx.grid;
    let [tx, ty] = an.trachea_center_mm;
    let zc = an.carina.mm[2];
    let hc = an.heart_center.mm;
    let hr = an.heart_semi_axes_mm;

    if labels[0] {
        let rng = &mut rngs[0];
        let kind = if rng.random_bool(0.6) { DeviceKind::Pacemaker } else { DeviceKind::Port };
        let side = if rng.random_bool(0.8) { Side::Left } else { Side::Right };
        let s = side.sign();
        let [bx, by] = an.body_center_mm;
        let (a, b) = (an.body_half_width_mm, an.body_half_depth_mm);
        let x = bx + s * u(rng, 0.42, 0.55) * a;
        let ys = by - b * (1.0 - ((x - bx) / a).powi(2)).max(0.0).sqrt();
        let half = match kind {
            DeviceKind::Pacemaker => [22.0, 4.5, 20.0],
            DeviceKind::Port => [13.0, 7.0, 13.0],
        };
        let depth = (an.subcutaneous_fat_mm * 0.5 + 2.0).max(half[1] + 1.5);
        let z = (an.lung_apex_z_mm - u(rng, 25.0, 45.0)).min(ctx.cov.fov_z_max_mm - half[2] - 4.0);
        let c = [x, ys + depth, z];
        let mut lead = vec![
            [x - s * half[0] * 0.6, c[1], z + half[2] * 0.4],
            [bx + s * 45.0, an.cavity_center_y_mm - an.cavity_half_depth_mm + 12.0, z + 12.0],
            [tx - 18.0, ty - 24.0, zc + 5.0],
        ];
        let radius = match kind {
            DeviceKind::Pacemaker => {
                lead.push([hc[0] - 0.55 * hr[0], hc[1] - 0.1 * hr[1], hc[2] + 0.1 * hr[2]]);
                lead.push([hc[0] + 0.25 * hr[0], hc[1] - 0.55 * hr[1], hc[2] - 0.5 * hr[2]]);
                1.6
            }
            DeviceKind::Port => {
                lead.push([tx - 18.0, ty - 20.0, hc[2] + 0.9 * hr[2]]);
                1.4
            }
        };
        f.medical_material = Some(MedicalMaterial {
            kind,
            side,
            device: g.loc(c),
            device_half_size_mm: half,
            lead_mm: lead,
            lead_radius_mm: radius,
            hu: 3000.0,
        });
    }

    if labels[1] {
        let rng = &mut rngs[1];
        let sev = severity(rng);
        let n = match sev {
            Severity::Mild => rng.random_range(3..=6),
            Severity::Moderate => rng.random_range(7..=12),
            Severity::Severe => rng.random_range(13..=22),
        };
        let path = &an.aorta_path_mm;
        let mut plaques = Vec::new();
        let mut tries = 0;
        while plaques.len() < n && tries < 200 {
            tries += 1;
            let i = rng.random_range(1..path.len() - 2);
            let t = u(rng, 0.0, 1.0);
            let e = normalize([u(rng, -1.0, 1.0), u(rng, -1.0, 1.0), u(rng, -1.0, 1.0)]);
            let radius = u(rng, 2.5, 4.5);
            let hu = u(rng, 600.0, 1200.0) as f32;
            let d = normalize(sub(path[i + 1], path[i]));
            let e = normalize(sub(e, scale(d, dot(e, d))));
            let r = crate::anatomy::aorta_radius(an, i) * (1.0 - t) + crate::anatomy::aorta_radius(an, i + 1) * t;
            let c = add(add(path[i], scale(sub(path[i + 1], path[i]), t)), scale(e, r - 0.8));
            if !ctx.z_ok(c[2], 8.0) {
                continue;
            }
            let vessel = match i {
                1 => "ascending aorta",
                2 | 3 => "aortic arch",
                _ => "descending aorta",
            };
            plaques.push(Plaque { center: g.loc(c), radius_mm: radius, hu, vessel: vessel.into() });
        }
        let vessels = ordered_vessels(&plaques, &["ascending aorta", "aortic arch", "descending aorta"]);
        f.arterial_wall_calcification = Some(Calcification { severity: sev, plaques, vessels });
    }

    if labels[2] {
        let (sev, _) = cardiomegaly.unwrap_or((Severity::Mild, an.cardiothoracic_ratio));
        f.cardiomegaly = Some(Cardiomegaly {
            severity: sev,
            heart_width_mm: an.heart_width_mm,
            cardiothoracic_ratio: an.cardiothoracic_ratio,
        });
    }

    if labels[3] {
        let rng = &mut rngs[3];
        let sev = severity(rng);
        let t = pick3(rng, sev, [(6.0, 10.0), (10.0, 17.0), (17.0, 26.0)]).round();
        f.pericardial_effusion =
            Some(PericardialEffusion { severity: sev, thickness_mm: t, hu: u(rng, 5.0, 18.0) as f32 });
    }

    if labels[4] {
        let rng = &mut rngs[4];
        let sev = severity(rng);
        let paths: [(&str, V3, V3); 3] = [
            ("LAD", [0.15, -0.75, 0.64], [0.55, -0.8, -0.25]),
            ("RCA", [-0.55, -0.6, 0.58], [-0.85, 0.1, -0.2]),
            ("LCx", [0.55, -0.2, 0.8], [0.9, 0.35, 0.25]),
        ];
        let mut order = [1usize, 2];
        order.shuffle(rng);
        let nv = sev.level() + 1;
        let chosen: Vec<usize> = std::iter::once(0).chain(order.iter().copied()).take(nv).collect();
        let mut plaques = Vec::new();
        for &vi in &chosen {
            let (name, d0, d1) = paths[vi];
            let k = match sev {
                Severity::Mild => rng.random_range(1..=2),
                Severity::Moderate => rng.random_range(2..=4),
                Severity::Severe => rng.random_range(3..=6),
            };
            for _ in 0..k {
                let t = u(rng, 0.0, 1.0);
                let n = normalize(add(scale(d0, 1.0 - t), scale(d1, t)));
                let surf = add(hc, [n[0] * hr[0], n[1] * hr[1], n[2] * hr[2]]);
                let out = normalize([n[0] / hr[0], n[1] / hr[1], n[2] / hr[2]]);
                let radius = u(rng, 2.0, 3.5);
                let c = add(surf, scale(out, 1.5));
                let hu = u(rng, 500.0, 1100.0) as f32;
                if ctx.z_ok(c[2], 6.0) {
                    plaques.push(Plaque { center: g.loc(c), radius_mm: radius, hu, vessel: name.into() });
                }
            }
        }
        let vessels = ordered_vessels(&plaques, &["LAD", "LCx", "RCA"]);
        f.coronary_calcification = Some(Calcification { severity: sev, plaques, vessels });
    }

    if labels[5] {
        let rng = &mut rngs[5];
        let sev = severity(rng);
        let d = pick3(rng, sev, [(25.0, 35.0), (35.0, 50.0), (50.0, 70.0)]).round();
        let semi = [d / 2.0 * 0.9, d / 2.0 * 0.8, d / 2.0];
        let [ex, ey] = an.esophagus_center_mm;
        let c = [ex + 6.0, ey - 4.0 - 0.2 * semi[1], an.lung_base_z_mm + an.dome_height_left_mm - 4.0 + 0.8 * semi[2]];
        f.hiatal_hernia = Some(HiatalHernia { severity: sev, center: g.loc(c), semi_axes_mm: semi, size_mm: d });
    }

    if labels[6] {
        let rng = &mut rngs[6];
        let sev = severity(rng);
        let count = match sev {
            Severity::Mild => 1,
            Severity::Moderate => rng.random_range(2..=3),
            Severity::Severe => rng.random_range(3..=5),
        };
        let r_asc = an.aorta_radius_ascending_mm;
        let tr = an.trachea_radius_mm;
        let hl = an.hilum_left.mm;
        let hrt = an.hilum_right.mm;
        type Station<'a> = (&'a str, Box<dyn Fn(f64) -> V3>);
        let stations: Vec<Station> = vec![
            ("right lower paratracheal", Box::new(move |r| [tx - tr - 6.0 - r, ty - 2.0, zc + 12.0])),
            ("subcarinal", Box::new(move |r| [tx + 2.0, ty + 4.0, zc - 14.0 - r])),
            ("prevascular", Box::new(move |r| [tx - 5.0, ty - 38.0 - r_asc - r, zc + 22.0])),
            ("aortopulmonary window", Box::new(move |_| [tx + 20.0, ty - 12.0, zc - 2.0])),
            ("left paratracheal", Box::new(move |r| [tx + tr + 6.0 + r, ty - 4.0, zc + 8.0])),
            ("right hilar", Box::new(move |_| [hrt[0] - 5.0, hrt[1] + 14.0, hrt[2] - 12.0])),
            ("left hilar", Box::new(move |_| [hl[0], hl[1] + 14.0, hl[2] - 15.0])),
        ];
        let mut idx: Vec<usize> = (0..stations.len()).collect();
        idx.shuffle(rng);
        let mut nodes: Vec<LymphNode> = Vec::new();
        let mut best: Option<(f64, LymphNode)> = None;
        for &si in &idx {
            if nodes.len() >= count {
                break;
            }
            let short = u(rng, 11.0, 22.0).round();
            let long = (short * u(rng, 1.2, 1.6)).round();
            let r = short / 2.0;
            let base = (stations[si].1)(r);
            for _ in 0..30 {
                let c = add(base, [u(rng, -6.0, 6.0), u(rng, -6.0, 6.0), u(rng, -6.0, 6.0)]);
                let clear = body.structure_sd(c, an) - long / 2.0 + r;
                let clear = clear.min(body.structure_sd(c, an) - r);
                let in_cavity = ellipse_sd(
                    c[0] - an.body_center_mm[0],
                    c[1] - an.cavity_center_y_mm,
                    an.cavity_half_width_mm,
                    an.cavity_half_depth_mm,
                )
                .0 < -r;
                let overlaps =
                    nodes.iter().any(|n| norm(sub(n.center.mm, c)) < n.long_axis_mm / 2.0 + long / 2.0 + 2.0);
                if !in_cavity || overlaps || !ctx.z_ok(c[2], long / 2.0 + 4.0) {
                    continue;
                }
                let node = LymphNode {
                    station: stations[si].0.into(),
                    center: g.loc(c),
                    short_axis_mm: short,
                    long_axis_mm: long,
                };
                if clear >= 1.5 {
                    nodes.push(node);
                    break;
                }
                if best.as_ref().is_none_or(|b| clear > b.0) {
                    best = Some((clear, node));
                }
            }
        }
        if nodes.is_empty() {
            if let Some((_, n)) = best {
                nodes.push(n);
            }
        }
        f.lymphadenopathy = Some(Lymphadenopathy { nodes });
    }

    if labels[7] {
        let rng = &mut rngs[7];
        let sev = severity(rng);
        let side = draw_side(rng, 0.1, 0.1);
        let kind = if rng.random_bool(0.75) { "centrilobular" } else { "paraseptal" };
        let target = pick3(rng, sev, [(0.10, 0.16), (0.18, 0.28), (0.30, 0.45)]);
        let regions = signs(side)
            .into_iter()
            .map(|s| {
                let c = [body.bx() + s * 0.5 * body.ac(), body.cyc() - 0.1 * body.bc(), body.zb() + 0.68 * body.h()];
                let mut r = ctx.region(s, c, [0.55 * body.ac(), 1.05 * body.bc(), 0.42 * body.h()]);
                r.lobe = if s < 0.0 { Lobe::RUL } else { Lobe::LUL };
                r
            })
            .collect();
        f.emphysema = Some(Emphysema { severity: sev, side, kind: kind.into(), regions, target_fraction: target });
    }

    if labels[8] {
        let rng = &mut rngs[8];
        let sev = severity(rng);
        let side = draw_side(rng, 0.35, 0.3);
        let mut regions = Vec::new();
        for s in signs(side) {
            let thick = pick3(rng, sev, [(5.0, 7.0), (7.0, 10.0), (10.0, 14.0)]);
            let semi = [u(rng, 14.0, 28.0), thick, u(rng, 8.0, 14.0)];
            let mut best = (f64::NEG_INFINITY, [body.bx() + s * 0.5 * body.ac(), body.cyc(), body.zb() + 40.0]);
            for _ in 0..40 {
                let x = body.bx() + s * u(rng, 0.35, 0.65) * body.ac();
                let z = body.zb() + u(rng, 22.0, 55.0);
                let back = match body.posterior_lung_y(x, z, s) {
                    Some(y) => y,
                    None => continue,
                };
                let c = [x, back - thick - u(rng, 3.0, 6.0), z];
                let cl = body.lung_clearance(c);
                if ctx.z_ok(z, 8.0) && cl > best.0 {
                    best = (cl, c);
                    if cl > 2.0 {
                        break;
                    }
                }
            }
            let c = best.1;
            regions.push(ctx.region(s, c, semi));
        }
        f.atelectasis = Some(RegionFinding { severity: sev, side, regions });
    }

    if labels[9] {
        let rng = &mut rngs[9];
        let count = {
            let x: f64 = rng.random();
            if x < 0.6 {
                1
            } else if x < 0.85 {
                2
            } else {
                3
            }
        };
        let mut nodules: Vec<Nodule> = Vec::new();
        for _ in 0..count {
            let x: f64 = rng.random();
            let d = if x < 0.5 {
                rng.random_range(4..=8)
            } else if x < 0.8 {
                rng.random_range(9..=15)
            } else {
                rng.random_range(16..=28)
            } as f64;
            let s = if rng.random_bool(0.55) { -1.0 } else { 1.0 };
            let prev: Vec<(V3, f64)> = nodules.iter().map(|n| (n.center.mm, n.diameter_mm)).collect();
            let c = ctx.lung_point(rng, s, d / 2.0 + 4.0, |p| {
                prev.iter().all(|(q, dq)| norm(sub(p, *q)) > (d + dq) / 2.0 + 10.0)
            });
            nodules.push(Nodule {
                side: side_of(s),
                lobe: body.lobe_of(c),
                center: g.loc(c),
                diameter_mm: d,
                hu: u(rng, 15.0, 45.0) as f32,
            });
        }
        f.lung_nodule = Some(Nodules { nodules });
    }

    if labels[10] {
        let rng = &mut rngs[10];
        let sev = severity(rng);
        let n = sev.level() + 1;
        let mut regions = Vec::new();
        for _ in 0..n {
            let s = if rng.random_bool(0.5) { -1.0 } else { 1.0 };
            let r = u(rng, 14.0, 30.0);
            let semi = [r * u(rng, 0.8, 1.2), r * u(rng, 0.8, 1.2), r * u(rng, 0.8, 1.2)];
            let c = ctx.lung_point(rng, s, 10.0, |_| true);
            regions.push(ctx.region(s, c, semi));
        }
        let side = Side::of(regions.iter().map(|r| r.side));
        f.lung_opacity = Some(RegionFinding { severity: sev, side, regions });
    }

    if labels[11] {
        let rng = &mut rngs[11];
        let sev = severity(rng);
        let n = if rng.random_bool(0.6) { 1 } else { 2 };
        let mut regions = Vec::new();
        let mut bands = Vec::new();
        for _ in 0..n {
            let s = if rng.random_bool(0.5) { -1.0 } else { 1.0 };
            let upper = rng.random_bool(0.65);
            let zb = body.zb();
            let h = body.h();
            let c = ctx.lung_point(rng, s, 12.0, |p| (p[2] - zb > 0.55 * h) == upper);
            let r = u(rng, 15.0, 24.0);
            let semi = [r, r, r * 1.2];
            let nb = match sev {
                Severity::Mild => rng.random_range(5..=7),
                Severity::Moderate => rng.random_range(8..=11),
                Severity::Severe => rng.random_range(12..=16),
            };
            for _ in 0..nb {
                let a = add(c, [u(rng, -0.6, 0.6) * r, u(rng, -0.6, 0.6) * r, u(rng, -0.6, 0.6) * r * 1.2]);
                let d = normalize([u(rng, -1.0, 1.0), u(rng, -1.0, 1.0), u(rng, -1.0, 1.0)]);
                let len = u(rng, 15.0, 35.0);
                let b = add(a, scale(d, len));
                bands.push(FibroticBand { a_mm: a, b_mm: b, radius_mm: u(rng, 1.3, 2.2) });
            }
            regions.push(ctx.region(s, c, semi));
        }
        let side = Side::of(regions.iter().map(|r| r.side));
        f.fibrotic_sequela = Some(Fibrosis { severity: sev, side, regions, bands });
    }

    if labels[12] {
        let rng = &mut rngs[12];
        let side = draw_side(rng, 0.35, 0.25);
        let hu = u(rng, 3.0, 18.0) as f32;
        let mut sides = Vec::new();
        for s in signs(side) {
            let sev = severity(rng);
            let depth = pick3(rng, sev, [(14.0, 22.0), (22.0, 40.0), (40.0, 60.0)]).round();
            let x = body.bx() + s * 0.5 * body.ac();
            let z = body.zb() + 35.0;
            let back = body.posterior_lung_y(x, z, s).unwrap_or(body.cyc() + 0.8 * body.bc());
            let p = [x, back - depth / 2.0, z];
            sides.push(EffusionSide { side: side_of(s), severity: sev, depth_mm: depth, sample: g.loc(p) });
        }
        f.pleural_effusion = Some(PleuralEffusion { side, sides, hu });
    }

    if labels[13] {
        let rng = &mut rngs[13];
        let side = draw_side(rng, 0.08, 0.07);
        let regions = signs(side)
            .into_iter()
            .map(|s| {
                let c = [body.bx() + s * 0.5 * body.ac(), body.cyc(), body.zb() + 0.45 * body.h()];
                ctx.region(s, c, [0.6 * body.ac(), 1.1 * body.bc(), 0.5 * body.h()])
            })
            .collect();
        f.mosaic_attenuation = Some(Mosaic {
            side,
            regions,
            patch_mm: u(rng, 16.0, 26.0).round(),
            amplitude_hu: u(rng, 110.0, 150.0) as f32,
        });
    }

    let airway_zone = |rng: &mut ChaCha8Rng, p_lower: f64| -> String {
        if rng.random_bool(p_lower) {
            "lower lobes".into()
        } else {
            "both lungs".into()
        }
    };

    if labels[14] {
        let rng = &mut rngs[14];
        let sev = severity(rng);
        let side = draw_side(rng, 0.15, 0.15);
        let zone = airway_zone(rng, 0.5);
        let wall = (pick3(rng, sev, [(2.5, 3.0), (3.0, 3.5), (3.5, 4.2)]) * 2.0).round() / 2.0;
        let mut fd = AirwayFinding { severity: sev, side, zone, value: wall, segments: vec![] };
        fd.segments = affected_bronchi(ctx.trees, &f, Some(&fd), None);
        f.peribronchial_thickening = Some(fd);
    }

    if labels[15] {
        let rng = &mut rngs[15];
        let n = if rng.random_bool(0.75) { 1 } else { 2 };
        let mut regions = Vec::new();
        let mut grams = Vec::new();
        for _ in 0..n {
            let s = if rng.random_bool(0.55) { -1.0 } else { 1.0 };
            let lower = rng.random_bool(0.6);
            let c = ctx.lung_point(rng, s, 14.0, |p| matches!(body.lobe_of(p), Lobe::RLL | Lobe::LLL) == lower);
            let r = u(rng, 18.0, 34.0);
            let semi = [r * u(rng, 0.75, 1.0), r * u(rng, 0.75, 1.0), r * u(rng, 0.9, 1.25)];
            for _ in 0..rng.random_range(2..=4) {
                let a = add(c, [u(rng, -0.3, 0.3) * semi[0], u(rng, -0.3, 0.3) * semi[1], u(rng, -0.3, 0.3) * semi[2]]);
                let d = normalize([u(rng, -1.0, 1.0), u(rng, -1.0, 1.0), u(rng, -1.0, 1.0)]);
                let len = u(rng, 0.5, 0.8) * semi[0].min(semi[1]);
                grams.push((a, add(a, scale(d, len)), u(rng, 2.5, 3.5)));
            }
            regions.push(ctx.region(s, c, semi));
        }
        let side = Side::of(regions.iter().map(|r| r.side));
        f.consolidation = Some(Consolidation { side, regions, bronchograms: grams, hu: u(rng, 18.0, 35.0) as f32 });
    }

    if labels[16] {
        let rng = &mut rngs[16];
        let sev = severity(rng);
        let side = draw_side(rng, 0.25, 0.25);
        let zone = airway_zone(rng, 0.75);
        let ratio = (pick3(rng, sev, [(1.6, 1.9), (1.9, 2.4), (2.4, 3.0)]) * 10.0).round() / 10.0;
        let mut fd = AirwayFinding { severity: sev, side, zone, value: ratio, segments: vec![] };
        fd.segments = affected_bronchi(ctx.trees, &f, None, Some(&fd));
        f.bronchiectasis = Some(fd);
    }
    // Peribronchial segments depend on bronchiectasis dilation; recompute once both are known.
    if let Some(pb) = f.peribronchial_thickening.clone() {
        let segs = affected_bronchi(ctx.trees, &f, Some(&pb), None);
        f.peribronchial_thickening.as_mut().unwrap().segments = segs;
    }

    if labels[17] {
        let rng = &mut rngs[17];
        let sev = severity(rng);
        let side = draw_side(rng, 0.1, 0.1);
        let lower = rng.random_bool(0.7);
        let regions = signs(side)
            .into_iter()
            .map(|s| {
                let (zf, hf) = if lower { (0.3, 0.32) } else { (0.5, 0.5) };
                let c = [body.bx() + s * 0.5 * body.ac(), body.cyc(), body.zb() + zf * body.h()];
                let mut r = ctx.region(s, c, [0.6 * body.ac(), 1.1 * body.bc(), hf * body.h()]);
                if lower {
                    r.lobe = if s < 0.0 { Lobe::RLL } else { Lobe::LLL };
                }
                r
            })
            .collect();
        let thickness = (pick3(rng, sev, [(1.0, 1.4), (1.4, 1.8), (1.8, 2.4)]) * 10.0).round() / 10.0;
        f.septal_thickening = Some(SeptalThickening {
            severity: sev,
            side,
            regions,
            spacing_mm: u(rng, 10.0, 16.0).round(),
            thickness_mm: thickness,
        });
    }
    f
}

fn ordered_vessels(plaques: &[Plaque], order: &[&str]) -> Vec<String> {
    order.iter().filter(|v| plaques.iter().any(|p| p.vessel == **v)).map(|v| v.to_string()).collect()
}

fn in_zone(seg: &TreeSeg, fd: &AirwayFinding) -> bool {
    let side_ok = match fd.side {
        Side::Bilateral => true,
        s => s.sign() == seg.side,
    };
    let zone_ok = fd.zone != "lower lobes" || matches!(seg.lobe, Lobe::RLL | Lobe::LLL);
    side_ok && zone_ok
}

/// Lumen radius, wall thickness and visibility of the bronchus accompanying artery `seg`.
pub(crate) fn bronchus_shape(seg: &TreeSeg, f: &Findings) -> (f64, f64, bool) {
    let mut lumen = normal_lumen(seg.ra);
    let mut wall = normal_wall(lumen);
    let mut visible_depth = 3;
    if let Some(b) = &f.bronchiectasis {
        if in_zone(seg, b) && seg.depth >= 1 {
            lumen = b.value * seg.ra;
            wall = normal_wall(lumen);
            visible_depth = 5;
        }
    }
    if let Some(p) = &f.peribronchial_thickening {
        if in_zone(seg, p) {
            wall = p.value;
            visible_depth = visible_depth.max(4);
        }
    }
    (lumen, wall, seg.depth <= visible_depth)
}

fn affected_bronchi(
    trees: &Trees,
    f: &Findings,
    pb: Option<&AirwayFinding>,
    be: Option<&AirwayFinding>,
) -> Vec<(Vec3, Vec3, f64)> {
    let mut tmp = f.clone();
    if let Some(p) = pb {
        tmp.peribronchial_thickening = Some(p.clone());
    }
    if let Some(b) = be {
        tmp.bronchiectasis = Some(b.clone());
    }
    let br = bronchi(trees, |s| {
        let (l, w, _) = bronchus_shape(s, &tmp);
        (l, w)
    });
    let which = pb.or(be).expect("one finding");
    trees
        .arteries
        .iter()
        .zip(br)
        .filter(|(s, _)| {
            in_zone(s, which) && s.depth >= 1 && bronchus_shape(s, &tmp).2 && (be.is_none() || s.depth <= 4)
        })
        .map(|(_, (a, b, l, _))| (a, b, l))
        .collect()
}

/// Quantile of the value noise (for an emphysema threshold that yields a target fraction).
fn noise_quantile(seed: u64, q: f64) -> f32 {
    let mut v: Vec<f32> = (0..4096)
        .map(|i| {
            let h = noise::hash3(seed, i, 17, 3);
            let p =
                [(h & 0xFFFF) as f64 / 97.0, ((h >> 16) & 0xFFFF) as f64 / 89.0, ((h >> 32) & 0xFFFF) as f64 / 83.0];
            noise::value_noise(seed, p)
        })
        .collect();
    v.sort_by(|a, b| a.total_cmp(b));
    v[((q.clamp(0.0, 1.0)) * (v.len() - 1) as f64) as usize]
}

const LUNGISH: u32 = bits(&[T::Lung, T::Vessel, T::AirwayWall, T::Airway, T::Lesion]);
const MEDIASTINAL: u32 = bits(&[T::Lung, T::Mediastinum]);

/// Every primitive of a scan, in painting order.
pub(crate) fn build_scene(params: &PhantomParams, body: &Body, trees: &Trees) -> Vec<Prim> {
    let an = &params.anatomy;
    let f = &params.findings;
    let mut prims = Vec::new();
    let set = |shape, v: f32, mask: u32, t: Option<Tissue>| Prim::new(shape, Paint::Set(v), mask, t);
    let ac = an.cavity_half_width_mm;
    let bc = an.cavity_half_depth_mm;
    let bx = an.body_center_mm[0];
    let cyc = an.cavity_center_y_mm;
    let zb = an.lung_base_z_mm;
    let dl = an.dome_height_left_mm;
    let abd = bits(&[T::Abdomen]);

    // Upper abdomen: stomach with gas, spleen.
    let st_c = [bx + 0.45 * ac, cyc - 0.2 * bc, zb + dl - 45.0];
    let st_r = [0.28 * ac, 0.32 * bc, 42.0];
    prims.push(set(Shape::Ellipsoid { c: st_c, r: st_r }, 30.0, abd, Some(T::Abdomen)));
    prims.push(set(
        Shape::Ellipsoid { c: add(st_c, [0.0, -0.45 * st_r[1], 0.25 * st_r[2]]), r: scale(st_r, 0.55) },
        -1000.0,
        abd,
        Some(T::Gas),
    ));
    prims.push(set(
        Shape::Ellipsoid { c: [bx + 0.65 * ac, cyc + 0.45 * bc, zb + dl - 50.0], r: [30.0, 45.0, 50.0] },
        48.0,
        abd,
        Some(T::Abdomen),
    ));
    // Esophagus.
    let [ex, ey] = an.esophagus_center_mm;
    let top = an.lung_apex_z_mm + 150.0;
    let hiatus = [ex + 4.0, ey, zb + dl - 8.0];
    let eso_mask = bits(&[T::Lung, T::Mediastinum, T::Abdomen]);
    prims.push(set(Shape::Capsule { a: [ex, ey, top], b: hiatus, ra: 8.0, rb: 8.0 }, 35.0, eso_mask, Some(T::Soft)));
    prims.push(set(Shape::Capsule { a: hiatus, b: st_c, ra: 8.0, rb: 10.0 }, 35.0, abd, Some(T::Abdomen)));

    // Heart with pericardial fat, and pericardial effusion.
    let hc = an.heart_center.mm;
    let hr = an.heart_semi_axes_mm;
    prims.push(set(Shape::Ellipsoid { c: hc, r: add(hr, [3.0; 3]) }, -95.0, MEDIASTINAL, Some(T::Mediastinum)));
    if let Some(pe) = &f.pericardial_effusion {
        let m = bits(&[T::Lung, T::Mediastinum, T::Vessel]);
        prims.push(set(Shape::Ellipsoid { c: hc, r: add(hr, [pe.thickness_mm; 3]) }, pe.hu, m, Some(T::Fluid)));
    }
    prims.push(set(
        Shape::Ellipsoid { c: hc, r: hr },
        40.0,
        bits(&[T::Lung, T::Mediastinum, T::Fluid]),
        Some(T::Heart),
    ));
    // Great vessels.
    let vmask = bits(&[T::Lung, T::Mediastinum, T::Heart, T::Abdomen, T::Fluid, T::Soft]);
    for w in body.aorta.windows(2) {
        let shape = Shape::Capsule { a: w[0].0, b: w[1].0, ra: w[0].1, rb: w[1].1 };
        prims.push(set(shape, 42.0, vmask, Some(T::Vessel)));
    }
    for &(a, b, r) in &body.pa {
        prims.push(set(Shape::Capsule { a, b, ra: r, rb: r }, 40.0, vmask, Some(T::Vessel)));
    }
    // Trachea and main bronchi: walls first, then lumens.
    let main = airway_main(an);
    let amask = bits(&[T::Lung, T::Mediastinum, T::Vessel, T::Soft, T::Heart]);
    for &(a, b, r) in &main {
        prims.push(set(Shape::Capsule { a, b, ra: r + 2.5, rb: r + 2.5 }, 60.0, amask, Some(T::AirwayWall)));
    }
    for &(a, b, r) in &main {
        let m = amask | bits(&[T::AirwayWall]);
        prims.push(set(Shape::Capsule { a, b, ra: r, rb: r }, -1000.0, m, Some(T::Airway)));
    }

    // Hiatal hernia behind the heart.
    if let Some(hh) = &f.hiatal_hernia {
        let m = bits(&[T::Lung, T::Mediastinum, T::Heart, T::Vessel, T::Soft, T::Fat]);
        let c = hh.center.mm;
        let r = hh.semi_axes_mm;
        prims.push(set(Shape::Ellipsoid { c, r }, 35.0, m, Some(T::Lesion)));
        let gc = add(c, [0.0, -0.35 * r[1], 0.15 * r[2]]);
        prims.push(set(Shape::Ellipsoid { c: gc, r: scale(r, 0.6) }, -1000.0, bits(&[T::Lesion]), Some(T::Gas)));
    }
    // Enlarged lymph nodes.
    if let Some(l) = &f.lymphadenopathy {
        let m = bits(&[T::Lung, T::Mediastinum, T::Fat]);
        for n in &l.nodes {
            let r = [n.short_axis_mm / 2.0, n.short_axis_mm / 2.0, n.long_axis_mm / 2.0];
            prims.push(set(Shape::Ellipsoid { c: n.center.mm, r }, 38.0, m, Some(T::Node)));
        }
    }

    // Pulmonary arteries and veins.
    let lung_m = bits(&[T::Lung, T::Vessel]);
    for s in trees.arteries.iter().chain(&trees.veins) {
        let shape = Shape::Capsule { a: s.a, b: s.b, ra: s.ra, rb: s.rb };
        prims.push(Prim::new(shape, Paint::Max(40.0), lung_m, Some(T::Vessel)));
    }
    // Bronchi (walls, then lumens), with bronchiectasis and peribronchial thickening.
    let br = bronchi(trees, |s| {
        let (l, w, _) = bronchus_shape(s, f);
        (l, w)
    });
    let vis: Vec<bool> = trees.arteries.iter().map(|s| bronchus_shape(s, f).2).collect();
    let mut lumens = Vec::new();
    let mut connect = Vec::new();
    for (i, (a, b, l, w)) in br.iter().enumerate() {
        if !vis[i] {
            continue;
        }
        let seg = &trees.arteries[i];
        if seg.parent.is_none() {
            let mb = if seg.side < 0.0 { main[1] } else { main[2] };
            connect.push((mb.1, *a, mb.2.min(*l + 1.0), *w));
        }
        lumens.push((*a, *b, *l, *w));
    }
    let wall_m = bits(&[T::Lung, T::Vessel, T::Mediastinum]);
    for &(a, b, l, w) in connect.iter().chain(&lumens) {
        prims.push(set(Shape::Capsule { a, b, ra: l + w, rb: l + w }, 10.0, wall_m, Some(T::AirwayWall)));
    }
    for &(a, b, l, _) in connect.iter().chain(&lumens) {
        let m = wall_m | bits(&[T::AirwayWall]);
        prims.push(set(Shape::Capsule { a, b, ra: l, rb: l }, -1000.0, m, Some(T::Airway)));
    }

    // Parenchymal findings.
    let seed = params.noise_seed;
    let lung_only = bits(&[T::Lung]);
    if let Some(e) = &f.emphysema {
        let (cell, sub) = if e.kind == "paraseptal" { (7.0, 18.0) } else { (8.5, 0.0) };
        let target = if e.kind == "paraseptal" { (e.target_fraction * 1.8).min(0.6) } else { e.target_fraction };
        let es = noise::derive(seed, 701);
        let th = noise_quantile(es, 1.0 - target);
        for r in &e.regions {
            let field = Field::Emphysema { seed: es, cell_mm: cell, threshold: th, hu: -985.0, subpleural_mm: sub };
            let shape = Shape::Ellipsoid { c: r.center.mm, r: r.semi_axes_mm };
            prims.push(Prim::new(shape, Paint::Field { field, soft_mm: 25.0 }, lung_only, None));
        }
    }
    if let Some(m) = &f.mosaic_attenuation {
        let ms = noise::derive(seed, 702);
        for r in &m.regions {
            let field = Field::Mosaic { seed: ms, patch_mm: m.patch_mm, amp: m.amplitude_hu };
            let shape = Shape::Ellipsoid { c: r.center.mm, r: r.semi_axes_mm };
            prims.push(Prim::new(shape, Paint::Field { field, soft_mm: 15.0 }, lung_only, None));
        }
    }
    if let Some(st) = &f.septal_thickening {
        let ss = noise::derive(seed, 703);
        for r in &st.regions {
            let field = Field::Septal {
                seed: ss,
                spacing_mm: st.spacing_mm,
                thickness_mm: st.thickness_mm,
                hu: -150.0,
                subpleural_mm: 28.0,
            };
            let shape = Shape::Ellipsoid { c: r.center.mm, r: r.semi_axes_mm };
            prims.push(Prim::new(shape, Paint::Field { field, soft_mm: 15.0 }, lung_only, None));
        }
    }
    if let Some(o) = &f.lung_opacity {
        let gs = noise::derive(seed, 704);
        for r in &o.regions {
            let field = Field::GroundGlass { seed: gs, hu: -600.0 };
            let shape = Shape::Ellipsoid { c: r.center.mm, r: r.semi_axes_mm };
            prims.push(Prim::new(shape, Paint::Field { field, soft_mm: 6.0 }, bits(&[T::Lung, T::Vessel]), None));
        }
    }
    if let Some(fb) = &f.fibrotic_sequela {
        for b in &fb.bands {
            let shape = Shape::Capsule { a: b.a_mm, b: b.b_mm, ra: b.radius_mm, rb: b.radius_mm };
            prims.push(Prim::new(shape, Paint::Max(-60.0), bits(&[T::Lung, T::Vessel]), Some(T::Lesion)));
        }
    }
    if let Some(at) = &f.atelectasis {
        for r in &at.regions {
            let shape = Shape::Ellipsoid { c: r.center.mm, r: r.semi_axes_mm };
            prims.push(set(shape, 25.0, LUNGISH, Some(T::Lesion)));
        }
    }
    if let Some(c) = &f.consolidation {
        let cs = noise::derive(seed, 705);
        for r in &c.regions {
            let field = Field::Consolidation { seed: cs, hu: c.hu };
            let shape = Shape::Ellipsoid { c: r.center.mm, r: r.semi_axes_mm };
            prims.push(Prim::new(shape, Paint::Field { field, soft_mm: 4.0 }, LUNGISH, Some(T::Lesion)));
        }
        for &(a, b, r) in &c.bronchograms {
            prims.push(set(Shape::Capsule { a, b, ra: r, rb: r * 0.8 }, -1000.0, bits(&[T::Lesion]), Some(T::Airway)));
        }
    }
    if let Some(n) = &f.lung_nodule {
        for nd in &n.nodules {
            let shape = Shape::Sphere { c: nd.center.mm, r: nd.diameter_mm / 2.0 };
            prims.push(set(shape, nd.hu, LUNGISH, Some(T::Lesion)));
        }
    }
    if let Some(pe) = &f.pleural_effusion {
        for s in &pe.sides {
            let sg = s.side.sign();
            let field = Field::PleuralFluid {
                sign: sg,
                depth_mm: s.depth_mm,
                hu: pe.hu,
                base_z_mm: zb,
                taper_mm: 0.75 * an.lung_height_mm,
            };
            let c = [bx + sg * 0.5 * ac, cyc, zb + 0.5 * an.lung_height_mm];
            let shape = Shape::Cuboid { c, h: [0.5 * ac + 4.0, bc + 4.0, 0.5 * an.lung_height_mm + 4.0] };
            prims.push(Prim::new(shape, Paint::Field { field, soft_mm: 0.0 }, LUNGISH, Some(T::Fluid)));
        }
    }

    // Calcifications and devices last: they are the densest.
    let calc_m = ALL & !bits(&[T::Air, T::Bone]);
    for c in [&f.arterial_wall_calcification, &f.coronary_calcification].into_iter().flatten() {
        for p in &c.plaques {
            prims.push(set(Shape::Sphere { c: p.center.mm, r: p.radius_mm }, p.hu, calc_m, Some(T::Calcium)));
        }
    }
    if let Some(m) = &f.medical_material {
        prims.push(set(Shape::Cuboid { c: m.device.mm, h: m.device_half_size_mm }, m.hu, ALL, Some(T::Metal)));
        for w in m.lead_mm.windows(2) {
            let shape = Shape::Capsule { a: w[0], b: w[1], ra: m.lead_radius_mm, rb: m.lead_radius_mm };
            prims.push(set(shape, m.hu, ALL, Some(T::Metal)));
        }
    }
    prims
}
