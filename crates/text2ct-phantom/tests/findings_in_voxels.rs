//! Every one of the 18 abnormalities is really in the voxels where its parameters put it, and
//! its signature is absent from the same scan without it.
mod common;
use common::*;
use text2ct_phantom::Tissue;

#[test]
fn medical_material_is_metal() {
    for idx in INDICES {
        let (p, a) = pair(0, idx);
        let m = p.p.findings.medical_material.as_ref().unwrap();
        let metal = |s: &Scan| s.r.volume.data().iter().filter(|&&v| v > 2000.0).count();
        assert!(metal(&p) >= 5, "scan {idx}: {} metal voxels", metal(&p));
        assert_eq!(metal(&a), 0, "scan {idx}: metal without a device");
        assert!(p.at(m.device.mm).unwrap() > 2000.0);
    }
}

fn plaques_visible(k: usize, thr: f32) {
    for idx in INDICES {
        let (p, a) = pair(k, idx);
        let c = if k == 1 { &p.p.findings.arterial_wall_calcification } else { &p.p.findings.coronary_calcification };
        let c = c.as_ref().unwrap();
        assert!(!c.plaques.is_empty());
        let mut seen = 0;
        for pl in &c.plaques {
            let r = pl.radius_mm + 2.0;
            let idxs = p.voxels_in(sub(pl.center.mm, r), add(pl.center.mm, r), |q| dist(q, pl.center.mm) <= r);
            if p.max(&idxs) > thr {
                seen += 1;
            }
            assert!(a.max(&idxs) < thr - 50.0, "scan {idx}: bright voxels at plaque site without the finding");
        }
        assert!(seen * 4 >= c.plaques.len() * 3, "scan {idx}: only {seen}/{} plaques visible", c.plaques.len());
    }
}

#[test]
fn arterial_wall_calcification_plaques_on_the_aorta() {
    plaques_visible(1, 250.0);
}

#[test]
fn coronary_calcification_plaques_on_the_heart() {
    plaques_visible(4, 200.0);
}

/// Heart width / inner thoracic width measured in the voxels at the heart's centre slice.
fn measured_ctr(s: &Scan) -> f64 {
    let g = s.grid();
    let hc = s.p.anatomy.heart_center.mm;
    let [_, _, k] = g.nearest(hc).unwrap();
    let [nx, ny, _] = g.dims;
    let v = &s.r.volume;
    // Thorax: extent of lung voxels in the slice.
    let (mut lo, mut hi) = (usize::MAX, 0);
    for j in 0..ny {
        for i in 0..nx {
            if s.r.tissue[v.index(i, j, k)] == Tissue::Lung as u8 {
                lo = lo.min(i);
                hi = hi.max(i);
            }
        }
    }
    let thorax = (hi - lo + 1) as f64;
    // Heart: widest run of soft tissue (> -300 HU) through the heart centre column.
    let [ci, cj, _] = g.nearest(hc).unwrap();
    let mut best = 0usize;
    let dj = (12.0 / g.spacing[1]) as usize;
    for j in cj.saturating_sub(dj)..=(cj + dj).min(ny - 1) {
        if v.get(ci, j, k) < -300.0 {
            continue;
        }
        let mut l = ci;
        while l > 0 && v.get(l - 1, j, k) > -300.0 {
            l -= 1;
        }
        let mut r = ci;
        while r + 1 < nx && v.get(r + 1, j, k) > -300.0 {
            r += 1;
        }
        best = best.max(r - l + 1);
    }
    best as f64 / thorax
}

#[test]
fn cardiomegaly_enlarges_the_heart() {
    for idx in INDICES {
        let (p, a) = pair(2, idx);
        let (rp, ra) = (measured_ctr(&p), measured_ctr(&a));
        assert!(rp > 0.5, "scan {idx}: CTR with cardiomegaly {rp:.3}");
        assert!(ra < 0.5, "scan {idx}: normal CTR {ra:.3}");
        let cm = p.p.findings.cardiomegaly.as_ref().unwrap();
        assert!((rp - cm.cardiothoracic_ratio).abs() < 0.08, "{rp} vs {}", cm.cardiothoracic_ratio);
    }
}

#[test]
fn pericardial_effusion_is_a_fluid_rim() {
    for idx in INDICES {
        let (p, a) = pair(3, idx);
        let e = p.p.findings.pericardial_effusion.as_ref().unwrap();
        let c = p.p.anatomy.heart_center.mm;
        let r = p.p.anatomy.heart_semi_axes_mm;
        let t = e.thickness_mm;
        let inner = [r[0] + 0.3 * t, r[1] + 0.3 * t, r[2] + 0.3 * t];
        let outer = [r[0] + 0.7 * t, r[1] + 0.7 * t, r[2] + 0.7 * t];
        let rim = p.voxels_in(sub(c, r[0] + t), add(c, r[0] + t), |q| {
            in_ellipsoid(q, c, outer) && !in_ellipsoid(q, c, inner) && (q[2] - c[2]).abs() < 0.5 * r[2]
        });
        assert!(rim.len() > 10, "scan {idx}: rim has {} voxels", rim.len());
        let (mp, ma) = (p.mean(&rim), a.mean(&rim));
        assert!((-40.0..=60.0).contains(&mp), "scan {idx}: rim mean {mp} (thickness {t})");
        assert!(ma < -100.0, "scan {idx}: rim mean without effusion {ma}");
    }
}

#[test]
fn hiatal_hernia_has_gas_above_the_diaphragm() {
    for idx in INDICES {
        let (p, a) = pair(5, idx);
        let h = p.p.findings.hiatal_hernia.as_ref().unwrap();
        let (c, r) = (h.center.mm, h.semi_axes_mm);
        let vox = p.voxels_in(sub(c, r[2]), add(c, r[2]), |q| in_ellipsoid(q, c, r));
        let gas = |s: &Scan| vox.iter().filter(|&&i| s.r.volume.data()[i] < -950.0).count();
        assert!(gas(&p) >= 3, "scan {idx}: {} gas voxels in the hernia", gas(&p));
        assert!(gas(&a) <= 1, "scan {idx}: {} gas voxels without hernia", gas(&a));
        let dome = p.p.anatomy.lung_base_z_mm + p.p.anatomy.dome_height_left_mm;
        assert!(c[2] > dome, "hernia centre {} below the dome {dome}", c[2]);
        let soft = vox.iter().filter(|&&i| (-50.0..100.0).contains(&p.r.volume.data()[i])).count();
        assert!(soft >= 3, "scan {idx}: hernia wall missing");
    }
}

#[test]
fn lymph_nodes_are_enlarged_soft_tissue() {
    for idx in INDICES {
        let (p, a) = pair(6, idx);
        let l = p.p.findings.lymphadenopathy.as_ref().unwrap();
        assert!(!l.nodes.is_empty());
        for n in &l.nodes {
            assert!(n.short_axis_mm > 10.0);
            let c = n.center.mm;
            let r = [n.short_axis_mm * 0.3, n.short_axis_mm * 0.3, n.long_axis_mm * 0.3];
            let mut vox = p.voxels_in(sub(c, r[2]), add(c, r[2]), |q| in_ellipsoid(q, c, r));
            if vox.is_empty() {
                let [i, j, k] = p.grid().nearest(c).unwrap();
                vox.push(p.r.volume.index(i, j, k));
            }
            let (mp, ma) = (p.mean(&vox), a.mean(&vox));
            assert!(mp > -10.0, "scan {idx}: node {} mean {mp}", n.station);
            assert!(ma < mp - 60.0, "scan {idx}: node {} site without the finding {ma} vs {mp}", n.station);
        }
    }
}

fn lung_fraction_below(s: &Scan, thr: f32) -> f64 {
    let lung: Vec<f32> =
        s.r.volume.data().iter().zip(&s.r.tissue).filter(|(_, &t)| t == Tissue::Lung as u8).map(|(v, _)| *v).collect();
    lung.iter().filter(|&&v| v < thr).count() as f64 / lung.len() as f64
}

#[test]
fn emphysema_low_attenuation_areas() {
    for idx in INDICES {
        let (p, a) = pair(7, idx);
        let (fp, fa) = (lung_fraction_below(&p, -950.0), lung_fraction_below(&a, -950.0));
        assert!(fa < 0.01, "scan {idx}: normal lung has {fa:.3} below -950 HU");
        assert!(fp > 0.03 && fp > fa + 0.02, "scan {idx}: emphysema fraction {fp:.3} vs {fa:.3}");
    }
}

/// Mean of the region cores in both scans over voxels that are lung in the normal scan.
fn core_means(p: &Scan, a: &Scan, regions: &[text2ct_phantom::params::Region], f: f64) -> Vec<(f32, f32)> {
    regions
        .iter()
        .map(|r| {
            let c = r.center.mm;
            let s = r.semi_axes_mm.map(|x| x * f);
            let m = s[0].max(s[1]).max(s[2]);
            let vox: Vec<usize> = a
                .voxels_in(sub(c, m), add(c, m), |q| in_ellipsoid(q, c, s))
                .into_iter()
                .filter(|&i| a.r.tissue[i] == Tissue::Lung as u8)
                .collect();
            assert!(vox.len() >= 2, "region core at {c:?} has {} lung voxels", vox.len());
            (p.mean(&vox), a.mean(&vox))
        })
        .collect()
}

#[test]
fn atelectasis_dense_basal_collapse() {
    for idx in INDICES {
        let (p, a) = pair(8, idx);
        let at = p.p.findings.atelectasis.as_ref().unwrap();
        for r in &at.regions {
            let base = p.p.anatomy.lung_base_z_mm;
            assert!(r.center.mm[2] - base < 70.0, "atelectasis not basal");
        }
        for (mp, ma) in core_means(&p, &a, &at.regions, 0.5) {
            assert!(mp > -250.0, "scan {idx}: atelectasis core {mp}");
            assert!(ma < -500.0, "scan {idx}: normal core {ma}");
        }
    }
}

#[test]
fn lung_nodules_of_reported_diameter() {
    for idx in INDICES {
        let (p, a) = pair(9, idx);
        let n = p.p.findings.lung_nodule.as_ref().unwrap();
        for nd in &n.nodules {
            let c = nd.center.mm;
            let r = nd.diameter_mm / 2.0;
            let inner = p.voxels_in(sub(c, r), add(c, r), |q| dist(q, c) <= 0.6 * r);
            let [i, j, k] = p.grid().nearest(c).unwrap();
            let centre = p.r.volume.index(i, j, k);
            let core = if inner.is_empty() { vec![centre] } else { inner };
            if nd.diameter_mm >= 8.0 {
                assert!(p.mean(&core) > -200.0, "scan {idx}: {} mm nodule core {}", nd.diameter_mm, p.mean(&core));
            } else {
                let near = p.voxels_in(sub(c, r + 2.0), add(c, r + 2.0), |q| dist(q, c) <= r + 2.0);
                assert!(p.max(&near) > -450.0, "scan {idx}: small nodule invisible");
            }
            assert!(a.mean(&core) < -400.0, "scan {idx}: nodule site without the finding {}", a.mean(&core));
            let shell = p.voxels_in(sub(c, r + 12.0), add(c, r + 12.0), |q| {
                let d = dist(q, c);
                d >= r + 6.0 && d <= r + 12.0
            });
            assert!(p.mean(&shell) < -500.0, "scan {idx}: nodule not surrounded by lung: {}", p.mean(&shell));
        }
    }
}

#[test]
fn lung_opacity_is_ground_glass() {
    for idx in INDICES {
        let (p, a) = pair(10, idx);
        let o = p.p.findings.lung_opacity.as_ref().unwrap();
        for (mp, ma) in core_means(&p, &a, &o.regions, 0.5) {
            assert!((-760.0..=-400.0).contains(&mp), "scan {idx}: ground glass core {mp}");
            assert!(ma < -760.0, "scan {idx}: normal core {ma}");
        }
    }
}

#[test]
fn fibrotic_bands_where_the_params_put_them() {
    for idx in INDICES {
        let (p, a) = pair(11, idx);
        let f = p.p.findings.fibrotic_sequela.as_ref().unwrap();
        let mut vals = (Vec::new(), Vec::new());
        for b in &f.bands {
            let len = dist(b.a_mm, b.b_mm);
            let n = (len / 2.0).ceil() as usize;
            for s in 0..=n {
                let t = s as f64 / n as f64;
                let q = [0, 1, 2].map(|i| b.a_mm[i] + (b.b_mm[i] - b.a_mm[i]) * t);
                if a.tissue_at(q) == Some(Tissue::Lung) {
                    vals.0.push(p.at(q).unwrap());
                    vals.1.push(a.at(q).unwrap());
                }
            }
        }
        assert!(vals.0.len() >= 10, "scan {idx}: too few band points in lung");
        let m = |v: &Vec<f32>| v.iter().sum::<f32>() / v.len() as f32;
        assert!(m(&vals.0) > -550.0, "scan {idx}: band mean {}", m(&vals.0));
        assert!(m(&vals.1) < -650.0, "scan {idx}: normal mean along bands {}", m(&vals.1));
    }
}

#[test]
fn pleural_effusion_dependent_on_the_reported_side() {
    let mut sides_seen = std::collections::HashSet::new();
    for idx in 0..6u64 {
        let (p, a) = pair(12, idx);
        let e = p.p.findings.pleural_effusion.as_ref().unwrap();
        sides_seen.insert(format!("{:?}", e.side));
        let bx = p.p.anatomy.body_center_mm[0];
        let around = |s: &Scan, c: [f64; 3]| {
            let g = s.grid();
            let r = g.spacing[0].max(g.spacing[1]) * 1.1;
            let v = s.voxels_in(sub(c, r), add(c, r), |q| {
                (q[0] - c[0]).abs() <= r && (q[1] - c[1]).abs() <= r && (q[2] - c[2]).abs() < g.spacing[2] / 2.0
            });
            s.mean(&v)
        };
        for sd in &e.sides {
            let c = sd.sample.mm;
            assert!((c[0] - bx).signum() == sd.side.sign(), "sample on the wrong side");
            let mp = around(&p, c);
            assert!((-40.0..=60.0).contains(&mp), "scan {idx}: fluid {mp} HU at {:?} ({:?})", c, sd.side);
            assert!(around(&a, c) < -500.0, "scan {idx}: lung expected without effusion");
            // Dependent: along the antero-posterior line through the sample, fluid lies behind lung.
            let g = p.grid();
            let [i, _, k] = g.nearest(c).unwrap();
            let (mut fy, mut ly) = (Vec::new(), Vec::new());
            for j in 0..g.dims[1] {
                let t = p.r.tissue[p.r.volume.index(i, j, k)];
                if t == Tissue::Fluid as u8 {
                    fy.push(j as f64);
                } else if t == Tissue::Lung as u8 {
                    ly.push(j as f64);
                }
            }
            assert!(!fy.is_empty(), "scan {idx}: no fluid on the line");
            if !ly.is_empty() {
                let m = |v: &Vec<f64>| v.iter().sum::<f64>() / v.len() as f64;
                assert!(m(&fy) > m(&ly), "scan {idx}: fluid is not posterior to the lung");
            }
        }
        if e.sides.len() == 1 {
            let c = e.sides[0].sample.mm;
            let mirror = [2.0 * bx - c[0], c[1], c[2]];
            assert!(around(&p, mirror) < -500.0, "scan {idx}: fluid on the other side too");
        }
    }
    assert!(sides_seen.len() >= 2, "sides drawn: {sides_seen:?}");
}

fn lung_std_in(s: &Scan, a: &Scan, regions: &[text2ct_phantom::params::Region]) -> f32 {
    let mut v = Vec::new();
    for r in regions {
        let c = r.center.mm;
        let m = r.semi_axes_mm[0].max(r.semi_axes_mm[1]).max(r.semi_axes_mm[2]);
        let half = r.semi_axes_mm.map(|x| x * 0.7);
        for i in a.voxels_in(sub(c, m), add(c, m), |q| in_ellipsoid(q, c, half)) {
            if a.r.tissue[i] == Tissue::Lung as u8 {
                v.push(s.r.volume.data()[i]);
            }
        }
    }
    let m = v.iter().sum::<f32>() / v.len() as f32;
    (v.iter().map(|x| (x - m) * (x - m)).sum::<f32>() / v.len() as f32).sqrt()
}

#[test]
fn mosaic_attenuation_alternating_densities() {
    for idx in INDICES {
        let (p, a) = pair(13, idx);
        let m = p.p.findings.mosaic_attenuation.as_ref().unwrap();
        let (sp, sa) = (lung_std_in(&p, &a, &m.regions), lung_std_in(&a, &a, &m.regions));
        assert!(sp > sa + 30.0, "scan {idx}: lung std {sp} vs normal {sa}");
    }
}

fn ring_points(seg: &([f64; 3], [f64; 3], f64), offset: f64) -> Vec<[f64; 3]> {
    let (a, b, _) = *seg;
    let d = [b[0] - a[0], b[1] - a[1], b[2] - a[2]];
    let n = dist(a, b).max(1e-9);
    let d = d.map(|x| x / n);
    let up = if d[2].abs() > 0.9 { [1.0, 0.0, 0.0] } else { [0.0, 0.0, 1.0] };
    let e1 = [d[1] * up[2] - d[2] * up[1], d[2] * up[0] - d[0] * up[2], d[0] * up[1] - d[1] * up[0]];
    let l = dist(e1, [0.0; 3]);
    let e1 = e1.map(|x| x / l);
    let e2 = [d[1] * e1[2] - d[2] * e1[1], d[2] * e1[0] - d[0] * e1[2], d[0] * e1[1] - d[1] * e1[0]];
    let mut out = Vec::new();
    for t in [0.3, 0.5, 0.7] {
        let c = [0, 1, 2].map(|i| a[i] + (b[i] - a[i]) * t);
        for k in 0..8 {
            let ang = k as f64 * std::f64::consts::PI / 4.0;
            out.push([0, 1, 2].map(|i| c[i] + offset * (ang.cos() * e1[i] + ang.sin() * e2[i])));
        }
    }
    out
}

#[test]
fn peribronchial_thickening_thick_walls() {
    for idx in INDICES {
        let (p, a) = pair(14, idx);
        let f = p.p.findings.peribronchial_thickening.as_ref().unwrap();
        let (mut vp, mut va) = (Vec::new(), Vec::new());
        for s in f.segments.iter().filter(|s| s.2 >= 1.5) {
            for q in ring_points(s, s.2 + 0.5 * f.value + 0.5) {
                if let (Some(x), Some(y)) = (p.at(q), a.at(q)) {
                    vp.push(x);
                    va.push(y);
                }
            }
        }
        assert!(vp.len() >= 24, "scan {idx}: too few affected bronchi ({})", vp.len());
        let m = |v: &Vec<f32>| v.iter().sum::<f32>() / v.len() as f32;
        assert!(m(&vp) > m(&va) + 80.0, "scan {idx}: wall {} vs normal {}", m(&vp), m(&va));
    }
}

#[test]
fn consolidation_dense_with_air_bronchograms() {
    for idx in INDICES {
        let (p, a) = pair(15, idx);
        let c = p.p.findings.consolidation.as_ref().unwrap();
        for (mp, ma) in core_means(&p, &a, &c.regions, 0.5) {
            assert!(mp > -300.0, "scan {idx}: consolidation core {mp}");
            assert!(ma < -600.0, "scan {idx}: normal core {ma}");
        }
        let mut air = 0;
        for (s, e, _) in &c.bronchograms {
            let mid = [0, 1, 2].map(|i| 0.5 * (s[i] + e[i]));
            let near = p.voxels_in(sub(mid, 4.0), add(mid, 4.0), |q| dist(q, mid) <= 4.0);
            if p.min(&near) < -400.0 {
                air += 1;
            }
        }
        assert!(air >= 1, "scan {idx}: no air bronchogram visible");
    }
}

#[test]
fn bronchiectasis_dilated_bronchi() {
    for idx in INDICES {
        let (p, a) = pair(16, idx);
        let f = p.p.findings.bronchiectasis.as_ref().unwrap();
        let (mut vp, mut va) = (Vec::new(), Vec::new());
        for s in f.segments.iter().filter(|s| s.2 >= 3.0) {
            for q in ring_points(s, 0.4 * s.2) {
                if let (Some(x), Some(y)) = (p.at(q), a.at(q)) {
                    vp.push(x);
                    va.push(y);
                }
            }
        }
        assert!(vp.len() >= 24, "scan {idx}: too few dilated bronchi");
        let m = |v: &Vec<f32>| v.iter().sum::<f32>() / v.len() as f32;
        assert!(m(&vp) < -750.0, "scan {idx}: dilated lumen mean {}", m(&vp));
        assert!(m(&va) > m(&vp) + 50.0, "scan {idx}: {} vs normal {}", m(&vp), m(&va));
    }
}

#[test]
fn septal_thickening_fine_lines() {
    for idx in INDICES {
        let (p, a) = pair(17, idx);
        let st = p.p.findings.septal_thickening.as_ref().unwrap();
        let (sp, sa) = (lung_std_in(&p, &a, &st.regions), lung_std_in(&a, &a, &st.regions));
        let mut vp = Vec::new();
        let mut va = Vec::new();
        for r in &st.regions {
            let c = r.center.mm;
            let m = r.semi_axes_mm[0].max(r.semi_axes_mm[1]).max(r.semi_axes_mm[2]);
            let half = r.semi_axes_mm.map(|x| x * 0.7);
            for i in a.voxels_in(sub(c, m), add(c, m), |q| in_ellipsoid(q, c, half)) {
                if a.r.tissue[i] == Tissue::Lung as u8 {
                    vp.push(p.r.volume.data()[i]);
                    va.push(a.r.volume.data()[i]);
                }
            }
        }
        let m = |v: &Vec<f32>| v.iter().sum::<f32>() / v.len() as f32;
        assert!(m(&vp) > m(&va) + 25.0, "scan {idx}: septal mean {} vs {}", m(&vp), m(&va));
        assert!(sp > sa + 20.0, "scan {idx}: septal std {sp} vs {sa}");
    }
}
