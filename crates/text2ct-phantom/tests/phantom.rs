//! Reports, determinism, prevalence, anatomy, configuration errors, geometry and the CT-RATE
//! writer.
mod common;
use common::*;
use text2ct_data::labels::LABELS;
use text2ct_data::layout::{self, Split};
use text2ct_phantom::params::Side;
use text2ct_phantom::*;

/// Keywords (lower case) that mention each label, and cues that negate a sentence.
const KEYWORDS: [&[&str]; 18] = [
    &["pacemaker", "port catheter", "implantable port", "device", "foreign material"],
    &["__aortic_calcification__"],
    &["cardiomegaly", "heart is enlarged", "enlarged heart", "heart size", "heart contour", "cardiothoracic ratio"],
    &["pericardial effusion", "pericardial fluid"],
    &["coronary"],
    &["hiatal hernia", "hiatus hernia"],
    &["lymphadenopathy", "lymph node"],
    &["emphysema"],
    &["atelectasis", "atelectatic"],
    &["nodule"],
    &["ground-glass", "ground glass"],
    &["fibrotic", "fibrosis"],
    &["pleural effusion", "pleural fluid"],
    &["mosaic"],
    &["peribronchial", "bronchial wall thickening"],
    &["consolidation"],
    &["bronchiectasis", "bronchiectatic"],
    &["septal thickening", "interlobular septa"],
];
const NEGATIONS: [&str; 6] = ["no ", "not ", "without", "normal", "unremarkable", "none"];

fn mentions(sentence: &str, k: usize) -> bool {
    let s = sentence.to_lowercase();
    if k == 1 {
        return s.contains("aort") && s.contains("calcif") && !s.contains("coronary");
    }
    KEYWORDS[k].iter().any(|w| s.contains(w))
}

fn negated(sentence: &str) -> bool {
    let s = format!(" {}", sentence.to_lowercase());
    NEGATIONS.iter().any(|n| s.contains(&format!(" {n}")) || s.starts_with(n))
}

fn sentences(text: &str) -> Vec<String> {
    text.split(". ").map(|s| s.trim().trim_end_matches('.').to_string()).filter(|s| !s.is_empty()).collect()
}

fn numbers_before_mm(s: &str) -> Vec<f64> {
    let w: Vec<&str> = s.split_whitespace().collect();
    let mut out = Vec::new();
    for i in 1..w.len() {
        if w[i].trim_matches(|c: char| !c.is_alphanumeric()) == "mm" {
            if let Ok(v) = w[i - 1].trim_start_matches('(').parse::<f64>() {
                out.push(v);
            }
        }
    }
    out
}

#[test]
fn reports_state_exactly_the_labels_with_side_and_size() {
    let cfg = PhantomConfig::default().with_seed(5);
    for idx in 0..80u64 {
        let p = sample_params(&cfg, idx).unwrap();
        let r = make_report(&p);
        let all: Vec<String> = sentences(&r.findings).into_iter().chain(sentences(&r.impressions)).collect();
        for (k, &present) in p.labels.iter().enumerate() {
            let pos = all.iter().filter(|s| mentions(s, k) && !negated(s)).count();
            let neg = all.iter().filter(|s| mentions(s, k) && negated(s)).count();
            if present {
                assert!(pos >= 1, "scan {idx}: {} present but not reported:\n{}", LABELS[k], r.findings);
                assert_eq!(neg, 0, "scan {idx}: {} present but negated:\n{}", LABELS[k], r.findings);
            } else {
                assert_eq!(pos, 0, "scan {idx}: {} absent but reported:\n{}", LABELS[k], r.findings);
            }
        }
        let f = &p.findings;
        let find: Vec<String> = sentences(&r.findings);
        if let Some(n) = &f.lung_nodule {
            let ns: Vec<&String> = find.iter().filter(|s| mentions(s, 9)).collect();
            assert_eq!(ns.len(), n.nodules.len(), "one sentence per nodule");
            for nd in &n.nodules {
                let hit = ns.iter().any(|s| {
                    numbers_before_mm(s).contains(&nd.diameter_mm) && s.to_lowercase().contains(nd.lobe.name())
                });
                assert!(hit, "scan {idx}: nodule {} mm in {} not in {:?}", nd.diameter_mm, nd.lobe.name(), ns);
            }
        }
        if let Some(e) = &f.pleural_effusion {
            let s: Vec<&String> = find.iter().filter(|s| mentions(s, 12)).collect();
            assert_eq!(s.len(), 1);
            let t = s[0].to_lowercase();
            let nums = numbers_before_mm(&t);
            for sd in &e.sides {
                assert!(nums.contains(&sd.depth_mm), "scan {idx}: depth {} not in {t}", sd.depth_mm);
            }
            match e.side {
                Side::Bilateral => assert!(t.contains("bilateral") || t.contains("both sides")),
                s => {
                    assert!(t.contains(s.word()), "{t}");
                    let other = if s == Side::Right { "left" } else { "right" };
                    assert!(!t.contains(other), "{t}");
                }
            }
        }
        if let Some(e) = &f.pericardial_effusion {
            let s = find.iter().find(|s| mentions(s, 3)).unwrap();
            assert!(numbers_before_mm(s).contains(&e.thickness_mm), "{s}");
        }
        if let Some(h) = &f.hiatal_hernia {
            let s = find.iter().find(|s| mentions(s, 5)).unwrap();
            assert!(numbers_before_mm(s).contains(&h.size_mm), "{s}");
        }
        if let Some(l) = &f.lymphadenopathy {
            let s = find.iter().find(|s| mentions(s, 6)).unwrap();
            for n in &l.nodes {
                assert!(numbers_before_mm(s).contains(&n.short_axis_mm) && s.contains(&n.station), "{s}");
            }
        }
        if let Some(m) = &f.medical_material {
            let s = find.iter().find(|s| mentions(s, 0)).unwrap().to_lowercase();
            let w = m.side.word();
            assert!(
                s.contains(&format!("{w}-sided"))
                    || s.contains(&format!("{w} infraclavicular"))
                    || s.contains(&format!("{w} pectoral")),
                "{s}"
            );
        }
        for (k, regions) in
            [(10, f.lung_opacity.as_ref().map(|o| &o.regions)), (8, f.atelectasis.as_ref().map(|o| &o.regions))]
        {
            if let Some(rs) = regions {
                let s = find.iter().find(|s| mentions(s, k)).unwrap().to_lowercase();
                for r in rs {
                    assert!(s.contains(r.lobe.name()), "{s} lacks {}", r.lobe.name());
                }
            }
        }
        assert!(!r.clinical_information.is_empty() && r.technique.contains("mm"));
    }
}

#[test]
fn report_wording_varies() {
    let cfg = PhantomConfig::default().with_only_labels(&[12]);
    let texts: std::collections::HashSet<String> = (0..30u64)
        .map(|i| {
            let p = sample_params(&cfg, i).unwrap();
            let r = make_report(&p);
            sentences(&r.findings).into_iter().find(|s| mentions(s, 12)).unwrap().chars().take(20).collect()
        })
        .collect();
    assert!(texts.len() >= 3, "{texts:?}");
}

#[test]
fn deterministic_for_seed_and_index_whatever_the_threads() {
    let c = PhantomConfig::with_dims([64, 64, 32]).with_seed(7);
    let a = generate_scan(&c, 3).unwrap();
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    let b = pool.install(|| generate_scan(&c, 3).unwrap());
    assert_eq!(a.volume.data(), b.volume.data());
    assert_eq!(a.findings, b.findings);
    assert_eq!(a.params, b.params);
    let other = generate_scan(&c.clone().with_seed(8), 3).unwrap();
    assert_ne!(a.volume.data(), other.volume.data());
    let next = generate_scan(&c, 4).unwrap();
    assert_ne!(a.volume.data(), next.volume.data());
}

#[test]
fn findings_are_independent_of_each_other() {
    // Forcing one more finding changes neither the anatomy nor the other findings.
    let c = PhantomConfig::default();
    let a = sample_params(&c.clone().with_only_labels(&[9]), 2).unwrap();
    let b = sample_params(&c.with_only_labels(&[9, 12, 7]), 2).unwrap();
    assert_eq!(a.anatomy, b.anatomy);
    assert_eq!(a.findings.lung_nodule, b.findings.lung_nodule);
}

#[test]
fn prevalence_is_matched() {
    let c = PhantomConfig::default().with_seed(11);
    let n = 2000;
    let mut counts = [0usize; 18];
    for i in 0..n {
        for (k, l) in draw_labels(&c, i).iter().enumerate() {
            counts[k] += *l as usize;
        }
    }
    for k in 0..18 {
        let f = counts[k] as f64 / n as f64;
        assert!((f - c.prevalence[k]).abs() < 0.035, "{}: {f} vs {}", LABELS[k], c.prevalence[k]);
    }
    // sample_params uses the same draws.
    for i in 0..20 {
        assert_eq!(sample_params(&c, i).unwrap().labels, draw_labels(&c, i));
    }
}

#[test]
fn anatomy_hounsfield_units_are_realistic() {
    let s = scan(&cfg().with_only_labels(&[]), 4);
    let mut vals: std::collections::HashMap<u8, Vec<f32>> = std::collections::HashMap::new();
    for (v, t) in s.r.volume.data().iter().zip(&s.r.tissue) {
        vals.entry(*t).or_default().push(*v);
    }
    // Median HU of each tissue class (robust to partial-volume voxels at its edges).
    let mean = |t: Tissue| {
        let mut v = vals.get(&(t as u8)).cloned().unwrap_or_default();
        assert!(v.len() > 20, "{t:?}: only {} voxels", v.len());
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2] as f64
    };
    let air = mean(Tissue::Air);
    assert!((-1010.0..-985.0).contains(&air), "air {air}");
    let lung = mean(Tissue::Lung);
    assert!((-900.0..-780.0).contains(&lung), "lung {lung}");
    let fat = mean(Tissue::Fat);
    assert!((-130.0..-70.0).contains(&fat), "fat {fat}");
    let muscle = mean(Tissue::Muscle);
    assert!((20.0..70.0).contains(&muscle), "muscle {muscle}");
    let bone = mean(Tissue::Bone);
    assert!(bone > 250.0, "bone {bone}");
    let heart = mean(Tissue::Heart);
    assert!((20.0..60.0).contains(&heart), "heart {heart}");
    assert!(mean(Tissue::Airway) < -850.0);
    let max = s.r.volume.data().iter().cloned().fold(f32::MIN, f32::max);
    assert!((600.0..1300.0).contains(&max), "cortical bone max {max}");
    // Noise: the standard deviation of air is about the configured sigma.
    let [nx, _, nz] = s.r.volume.dims();
    let airv: Vec<f32> =
        (0..nz).flat_map(|k| (0..nx).map(move |i| (i, k))).map(|(i, k)| s.r.volume.get(i, 1, k)).collect();
    let m = airv.iter().sum::<f32>() / airv.len() as f32;
    let sd = (airv.iter().map(|v| (v - m).powi(2)).sum::<f32>() / airv.len() as f32).sqrt();
    assert!((8.0..20.0).contains(&sd), "noise sd {sd}");
    // Natural variation between subjects.
    let p: Vec<_> = (0..6).map(|i| sample_params(&cfg(), i).unwrap()).collect();
    let widths: Vec<f64> = p.iter().map(|p| p.anatomy.body_half_width_mm).collect();
    let vols: Vec<f64> = p.iter().map(|p| p.anatomy.lung_volume_ml).collect();
    assert!(widths.iter().cloned().fold(0.0, f64::max) - widths.iter().cloned().fold(1e9, f64::min) > 5.0);
    assert!(vols.iter().all(|v| (2500.0..9000.0).contains(v)), "{vols:?}");
}

#[test]
fn geometry_is_lps_centred_and_size_independent() {
    let s = generate_scan(&PhantomConfig::default(), 0).unwrap();
    let v = &s.volume;
    assert_eq!(v.orientation(), "LPS");
    assert_eq!(v.dims(), [64, 64, 32]);
    let sp = v.spacing();
    assert!((sp[0] - 5.5).abs() < 1e-9 && (sp[2] - 10.0).abs() < 1e-9);
    let centre = v.affine().apply([31.5, 31.5, 15.5]);
    assert!(centre.iter().all(|c| c.abs() < 1e-9), "{centre:?}");
    // Voxel x+1 is 5.5 mm toward the patient's left (RAS x decreases).
    let a0 = v.affine().apply([0.0, 0.0, 0.0]);
    let a1 = v.affine().apply([1.0, 0.0, 0.0]);
    assert!((a1[0] - a0[0] + 5.5).abs() < 1e-9);
    // Same subject in mm on any grid with the same field of view.
    let big = sample_params(&PhantomConfig::with_dims([128, 128, 64]), 0).unwrap();
    assert_eq!(big.anatomy.heart_center.mm, s.params.anatomy.heart_center.mm);
    assert_eq!(big.anatomy.aorta_path_mm, s.params.anatomy.aorta_path_mm);
    assert_eq!(big.labels, s.params.labels);
    let vb = big.anatomy.heart_center.voxel;
    let vs = s.params.anatomy.heart_center.voxel;
    assert!((vb[0] - (2.0 * vs[0] + 0.5)).abs() < 1e-6);
}

#[test]
fn bad_configurations_are_errors() {
    let bad = |f: &dyn Fn(&mut PhantomConfig)| {
        let mut c = PhantomConfig::default();
        f(&mut c);
        let e = generate_scan(&c, 0).unwrap_err();
        assert!(matches!(e, PhantomError::Config(_)), "{e}");
        e.to_string()
    };
    assert!(bad(&|c| c.dims = [0, 64, 32]).contains("dims"));
    assert!(bad(&|c| c.spacing = [1.0, -1.0, 1.0]).contains("spacing"));
    assert!(bad(&|c| c.spacing = [1.0, f64::NAN, 1.0]).contains("spacing"));
    assert!(bad(&|c| c.prevalence[3] = 1.5).contains("Pericardial effusion"));
    assert!(bad(&|c| c.dims = [2048, 2048, 512]).contains("limit"));
    assert!(bad(&|c| c.noise_sigma = -1.0).contains("noise"));
    let d = DatasetConfig { count: 0, ..Default::default() };
    assert!(write_ctrate_dataset(std::path::Path::new("/nonexistent/x"), &d, |_| {}).is_err());
    let d = DatasetConfig { valid_fraction: 2.0, ..Default::default() };
    assert!(d.validate().is_err());
    // Serde: defaults fill missing fields, unknown fields are refused.
    let c: PhantomConfig = serde_json::from_str(r#"{"seed": 3}"#).unwrap();
    assert_eq!(c.dims, [64, 64, 32]);
    assert!(serde_json::from_str::<PhantomConfig>(r#"{"sead": 3}"#).is_err());
}

fn read_csv(path: &std::path::Path) -> (Vec<String>, Vec<Vec<String>>) {
    let mut r = csv::Reader::from_path(path).unwrap();
    let h = r.headers().unwrap().iter().map(String::from).collect();
    let rows = r.records().map(|x| x.unwrap().iter().map(String::from).collect()).collect();
    (h, rows)
}

#[test]
fn ctrate_dataset_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let phantom = PhantomConfig::with_dims([32, 32, 16]).with_seed(9);
    let cfg = DatasetConfig { phantom: phantom.clone(), count: 5, valid_fraction: 0.4, jobs: 2, store_raw: false };
    let calls = std::sync::atomic::AtomicUsize::new(0);
    let sum = write_ctrate_dataset(root, &cfg, |_| {
        calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    })
    .unwrap();
    assert_eq!(calls.into_inner(), 5);
    assert_eq!((sum.train, sum.valid), (3, 2));
    let jsonl = std::fs::read_to_string(root.join("phantom_params.jsonl")).unwrap();
    let params: Vec<serde_json::Value> = jsonl.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(params.len(), 5);
    for split in [Split::Train, Split::Valid] {
        let (h, rep) = read_csv(&layout::reports_csv(root, split));
        assert_eq!(h, layout::REPORT_COLUMNS);
        let (h, lab) = read_csv(&layout::labels_csv(root, split));
        assert_eq!(h[0], "VolumeName");
        assert_eq!(&h[1..], &LABELS);
        let (h, meta) = read_csv(&layout::metadata_csv(root, split));
        assert_eq!(h, layout::METADATA_FULL_COLUMNS);
        assert_eq!(std::fs::read(layout::no_chest_list(root, split)).unwrap(), b"");
        let n = if split == Split::Train { 3 } else { 2 };
        assert_eq!((rep.len(), lab.len(), meta.len()), (n, n, n));
        for (i, row) in lab.iter().enumerate() {
            let name = &row[0];
            assert_eq!(name, &format!("{}_{}_a_1.nii.gz", split.dir(), i + 1));
            assert_eq!(&rep[i][0], name);
            let p = params.iter().find(|p| p["VolumeName"] == name.as_str()).unwrap();
            let labels: Vec<bool> = serde_json::from_value(p["labels"].clone()).unwrap();
            let csv_labels: Vec<bool> = row[1..].iter().map(|v| v == "1").collect();
            assert_eq!(labels, csv_labels);
            assert!(row[1..].iter().all(|v| v == "0" || v == "1"));
            // Metadata.
            let m = &meta[i];
            assert_eq!(m[0], *name);
            assert_eq!((m[1].as_str(), m[2].as_str()), ("1", "-1024"));
            assert_eq!(m[3], "[11.0, 11.0]");
            assert_eq!(m[4], "20.0");
            assert_eq!(m[8], "text2ct-phantom");
            assert_eq!((m[12].as_str(), m[13].as_str(), m[14].as_str()), ("32", "32", "16"));
            // Volume: int16 HU, LPS, spacing, equal to a fresh scan.
            let path = layout::volume_path(root, split, name, false).unwrap();
            let (vol, info) = text2ct_io::nifti_io::read_nifti(&path, &Default::default()).unwrap();
            assert_eq!(info.dtype.name(), "int16");
            assert_eq!(vol.orientation(), "LPS");
            assert!((vol.spacing()[2] - 20.0).abs() < 1e-4);
            let idx = p["index"].as_u64().unwrap();
            let fresh = generate_scan(&phantom, idx).unwrap();
            let diff = vol.data().iter().zip(fresh.volume.data()).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
            assert!(diff <= 0.5, "stored voxels differ from HU by {diff}");
            assert_eq!(rep[i][3], fresh.findings);
        }
    }
    // store_raw keeps HU + 1024; the output is identical for any number of jobs.
    let dir2 = tempfile::tempdir().unwrap();
    let cfg2 = DatasetConfig { jobs: 1, store_raw: true, ..cfg };
    write_ctrate_dataset(dir2.path(), &cfg2, |_| {}).unwrap();
    let a = layout::volume_path(root, Split::Train, "train_2_a_1.nii.gz", false).unwrap();
    let b = layout::volume_path(dir2.path(), Split::Train, "train_2_a_1.nii.gz", false).unwrap();
    let (va, _) = text2ct_io::nifti_io::read_nifti(&a, &Default::default()).unwrap();
    let (vb, _) = text2ct_io::nifti_io::read_nifti(&b, &Default::default()).unwrap();
    assert!(va.data().iter().zip(vb.data()).all(|(x, y)| (y - x - 1024.0).abs() <= 1.0));
    for split in [Split::Train, Split::Valid] {
        assert_eq!(
            std::fs::read(layout::reports_csv(root, split)).unwrap(),
            std::fs::read(layout::reports_csv(dir2.path(), split)).unwrap()
        );
    }
}
