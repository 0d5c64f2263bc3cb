//! End-to-end ingestion on a tiny CT-RATE-shaped folder written by the test.

use std::path::{Path, PathBuf};

use text2ct_data::ctrate::{count_report_rows, plan, run, Outcome, PrepareOptions, SpacingSource};
use text2ct_data::labels::LABELS;
use text2ct_data::layout::{self, Split};
use text2ct_data::manifest::{read_manifest, volume_path, MappedVolume};
use text2ct_data::preprocess::{Mode, PreprocessConfig, RescalePolicy};
use text2ct_io::nifti_io::{write_nifti, WriteOptions};
use text2ct_io::{Affine, Limits, Volume};

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("text2ct-ctrate-{}-{}", name, std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn write(p: &Path, s: &str) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, s).unwrap();
}

/// A body phantom in HU (air -1000, tissue 40) stored either as HU or raw (+1024).
fn volume(raw: bool) -> Volume {
    let a =
        Affine::from_parts([[-1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, 1.0]], [2.0, 2.0, 4.0], [30.0, 30.0, -40.0])
            .unwrap();
    Volume::from_fn([24, 20, 10], a, |x, y, _| {
        let r = ((x as f32 - 12.0).powi(2) + (y as f32 - 10.0).powi(2)).sqrt();
        let hu = if r < 7.0 { 40.0 } else { -1000.0 };
        if raw {
            hu + 1024.0
        } else {
            hu
        }
    })
    .unwrap()
}

fn make_root(root: &Path, label_columns: &[&str]) {
    let split = Split::Train;
    let names = ["train_1_a_1", "train_2_a_1", "train_3_a_1", "train_4_a_1", "train_5_a_1", "train_6_a_2"];
    for (i, n) in names.iter().enumerate() {
        let p = layout::volume_path(root, split, &format!("{n}.nii.gz"), false).unwrap();
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        match i {
            3 => write(&p, "this is not a NIfTI file"),
            4 => {} // missing file
            1 => write_nifti(&p, &volume(true), &WriteOptions::ct_hu()).unwrap(),
            _ => write_nifti(&p, &volume(false), &WriteOptions::ct_hu()).unwrap(),
        }
    }
    let mut reports = String::from("VolumeName,ClinicalInformation_EN,Technique_EN,Findings_EN,Impressions_EN\n");
    for n in names.iter().chain(["bogus_name", "train_7_a_1"].iter()) {
        reports.push_str(&format!("{n}.nii.gz,Cough.,Non-contrast.,\"Findings of {n}, normal.\",No acute finding.\n"));
    }
    write(&layout::reports_csv(root, split), &reports);
    let mut labels = format!("VolumeName,{}\n", label_columns.join(","));
    for (i, n) in names.iter().enumerate() {
        let vals: Vec<String> =
            (0..label_columns.len()).map(|k| ((i + k) % 3 == 0) as u8).map(|v| v.to_string()).collect();
        if i != 5 {
            labels.push_str(&format!("{n}.nii.gz,{}\n", vals.join(",")));
        }
    }
    write(&layout::labels_csv(root, split), &labels);
    let mut meta = String::from("VolumeName,RescaleSlope,RescaleIntercept,XYSpacing,ZSpacing\n");
    for n in names {
        meta.push_str(&format!("{n}.nii.gz,1,-1024,\"[2.0, 2.0]\",4.0\n"));
    }
    write(&layout::metadata_csv(root, split), &meta);
    write(&layout::no_chest_list(root, split), "train_3_a_1.nii.gz\n");
}

fn options(root: &Path, out: &Path) -> PrepareOptions {
    PrepareOptions {
        root: root.to_path_buf(),
        split: Split::Train,
        out: out.to_path_buf(),
        preprocess: PreprocessConfig {
            mode: Mode::Paper,
            spacing: [3.0, 3.0, 3.0],
            size: [16, 16, 16],
            hu_min: -1000.0,
            hu_max: 1000.0,
        },
        rescale: RescalePolicy::Auto,
        spacing_source: SpacingSource::Header,
        limit: None,
        jobs: 2,
        limits: Limits::default(),
    }
}

#[test]
fn prepare_skips_bad_rows_detects_hu_and_resumes() {
    let root = tmp("root");
    make_root(&root, &LABELS);
    let out = root.join("prepared");
    let opts = options(&root, &out);
    let p = plan(&opts).unwrap();
    let reasons: Vec<(String, String)> = p.skipped.iter().map(|s| (s.volume.clone(), s.reason.clone())).collect();
    let has = |v: &str, r: &str| reasons.iter().any(|(a, b)| a.starts_with(v) && b.contains(r));
    assert!(has("train_3", "non-chest"), "{reasons:?}");
    assert!(has("train_5", "not found"), "{reasons:?}");
    assert!(has("train_6", "no row in the labels"), "{reasons:?}");
    assert!(has("bogus_name", "unknown volume name"), "{reasons:?}");
    assert!(has("train_7", "no row in the labels"), "{reasons:?}");
    assert_eq!(p.items.len(), 3);
    let seen = std::sync::atomic::AtomicUsize::new(0);
    let s = run(&p, &opts, count_report_rows(&root, Split::Train), &|_| {
        seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    })
    .unwrap();
    assert_eq!(seen.into_inner(), 3);
    assert_eq!(s.rows_in_reports, 8);
    assert_eq!(s.prepared, 2, "{:?}", s.skipped);
    assert!(
        s.skipped.iter().any(|k| k.volume.starts_with("train_4") && k.reason.contains("truncated")),
        "{:?}",
        s.skipped
    );

    let m = read_manifest(&out.join("manifest.jsonl")).unwrap();
    assert_eq!(m.len(), 2);
    let e1 = m.iter().find(|e| e.id == "train_1_a_1").unwrap();
    let e2 = m.iter().find(|e| e.id == "train_2_a_1").unwrap();
    // Stored already in HU although metadata says intercept -1024: not applied twice.
    assert_eq!(e1.hu["hu"], "already_hu");
    // Stored raw (+1024): intercept applied.
    assert_eq!(e2.hu["hu"], "applied");
    assert!(e1.report.starts_with("Findings: Findings of train_1_a_1, normal. Impression: No acute finding."));
    assert_eq!(e1.labels.len(), 18);
    assert_eq!(e1.dims, [16, 16, 16]);
    for e in [e1, e2] {
        let v = MappedVolume::open(&volume_path(&out.join("manifest.jsonl"), e)).unwrap();
        assert_eq!(v.dims(), [16, 16, 16]);
        let vol = v.to_volume(&e.affine).unwrap();
        assert_eq!(vol.orientation(), "RAS");
        // Centre of the body is tissue (40 HU), corners are air: the same for both storage kinds.
        assert!((vol.get(8, 8, 8) - 40.0).abs() < 1.0, "{}", vol.get(8, 8, 8));
        assert_eq!(vol.get(0, 0, 8), -1000.0);
        let u = v.to_unit();
        assert!(u.iter().all(|x| (0.0..=1.0).contains(x)));
    }

    // Second run: nothing is recomputed.
    let p2 = plan(&opts).unwrap();
    let again = run(&p2, &opts, 8, &|o| assert!(!matches!(o, Outcome::Prepared(_)))).unwrap();
    assert_eq!(again.already_done, 2);
    assert_eq!(again.prepared, 0);
    assert!(out.join("summary.json").exists() && out.join("dataset.json").exists());
}

#[test]
fn missing_columns_are_named() {
    let root = tmp("cols");
    make_root(&root, &LABELS[..17]);
    let e = plan(&options(&root, &root.join("o"))).unwrap_err().to_string();
    assert!(e.contains("missing column") && e.contains("Interlobular septal thickening"), "{e}");
    assert!(e.contains("predicted_labels.csv"), "{e}");
    let root = tmp("cols2");
    make_root(&root, &LABELS);
    write(&layout::reports_csv(&root, Split::Train), "VolumeName,Findings_EN\nx,y\n");
    let e = plan(&options(&root, &root.join("o"))).unwrap_err().to_string();
    assert!(e.contains("Impressions_EN") && e.contains("reports.csv"), "{e}");
}

#[test]
fn limit_stops_early() {
    let root = tmp("limit");
    make_root(&root, &LABELS);
    let mut o = options(&root, &root.join("o"));
    o.limit = Some(1);
    assert_eq!(plan(&o).unwrap().items.len(), 1);
}

/// A slope or intercept that does not parse, or a volume without a metadata row, cannot be
/// brought to HU: the item is skipped with the reason and nothing is written for it (it used to
/// be stored raw, as if it were HU already).
#[test]
fn unusable_metadata_rows_are_skipped_not_stored_raw() {
    let root = tmp("badmeta");
    make_root(&root, &LABELS);
    let mut meta = String::from("VolumeName,RescaleSlope,RescaleIntercept,XYSpacing,ZSpacing\n");
    meta.push_str("train_1_a_1.nii.gz,abc,-1024,\"[2.0, 2.0]\",4.0\n");
    meta.push_str("train_4_a_1.nii.gz,1,,\"[2.0, 2.0]\",4.0\n");
    // train_2 (stored raw, HU + 1024) has no row at all.
    write(&layout::metadata_csv(&root, Split::Train), &meta);
    let out = root.join("prepared");
    let opts = options(&root, &out);
    let p = plan(&opts).unwrap();
    let reason = |v: &str| p.skipped.iter().find(|s| s.volume.starts_with(v)).map(|s| s.reason.clone());
    let r1 = reason("train_1").unwrap();
    assert!(r1.contains("RescaleSlope \"abc\" is not a number") && r1.contains("metadata.csv"), "{r1}");
    let r4 = reason("train_4").unwrap();
    assert!(r4.contains("RescaleIntercept \"\" is not a number"), "{r4}");
    let r2 = reason("train_2").unwrap();
    assert!(r2.contains("no row in the metadata CSV") && r2.contains("--rescale never"), "{r2}");
    assert!(p.items.is_empty(), "{:?}", p.items.iter().map(|i| &i.name).collect::<Vec<_>>());
    let s = run(&p, &opts, 8, &|_| {}).unwrap();
    assert_eq!(s.prepared, 0);
    for id in ["train_1_a_1", "train_2_a_1"] {
        assert!(!out.join(format!("volumes/{id}.npy")).exists(), "{id} was written");
    }
    assert!(read_manifest(&out.join("manifest.jsonl")).unwrap().is_empty());

    // With `--rescale never` the user says the volumes are HU: a missing row is no reason to
    // skip (a warning says it), while a slope that is not a number still is.
    let mut never = options(&root, &root.join("never"));
    never.rescale = RescalePolicy::Never;
    let p = plan(&never).unwrap();
    assert_eq!(p.items.iter().map(|i| i.name.as_str()).collect::<Vec<_>>(), ["train_2_a_1.nii.gz"]);
    assert!(p.warnings.iter().any(|w| w.contains("train_2_a_1") && w.contains("no row")), "{:?}", p.warnings);
    assert!(p.skipped.iter().any(|s| s.volume.starts_with("train_1") && s.reason.contains("abc")));
}

/// Issue 21 item 2: a reports CSV with an unterminated quote merged the following rows into
/// one report; the file is refused with the line of the quote.
#[test]
fn reports_csv_with_an_unterminated_quote_is_refused() {
    let root = tmp("quote");
    make_root(&root, &LABELS);
    let p = layout::reports_csv(&root, Split::Train);
    let text = std::fs::read_to_string(&p).unwrap();
    // Row 2 (line 3): the Findings field opens a quote that the next line's quote "closes".
    let bad = text.replacen("\"Findings of train_2_a_1, normal.\"", "\"Findings of train_2_a_1, normal.", 1);
    write(&p, &bad);
    let e = plan(&options(&root, &root.join("o"))).unwrap_err().to_string();
    assert!(e.contains("train_reports.csv") && e.contains("line 4") && e.contains("opened on line 3"), "{e}");
    assert_eq!(count_report_rows(&root, Split::Train), 0);
}

/// Issue 21 item 14: the metadata CSV's spacing disagreeing with the NIfTI header was passed
/// over in silence. Now each such item is warned about, `--spacing-source` chooses, and the
/// manifest records the choice and both values.
#[test]
fn spacing_source_header_or_metadata() {
    let root = tmp("spacing");
    make_root(&root, &LABELS);
    // The volumes' headers say 2 x 2 x 4 mm. train_1: the metadata says 5 mm slices (25 % off);
    // train_2: 2.01 mm pixels (0.5 %, within the 1 % tolerance).
    let mut meta = String::from("VolumeName,RescaleSlope,RescaleIntercept,XYSpacing,ZSpacing\n");
    meta.push_str("train_1_a_1.nii.gz,1,-1024,\"[2.0, 2.0]\",5.0\n");
    meta.push_str("train_2_a_1.nii.gz,1,-1024,\"[2.01, 2.0]\",4.0\n");
    meta.push_str("train_4_a_1.nii.gz,1,-1024,\"[2.0, 2.0]\",4.0\n");
    write(&layout::metadata_csv(&root, Split::Train), &meta);

    let out = root.join("header");
    let opts = options(&root, &out);
    let s = run(&plan(&opts).unwrap(), &opts, 8, &|_| {}).unwrap();
    assert_eq!(s.prepared, 2);
    let m = read_manifest(&out.join("manifest.jsonl")).unwrap();
    let e1 = m.iter().find(|e| e.id == "train_1_a_1").unwrap();
    let e2 = m.iter().find(|e| e.id == "train_2_a_1").unwrap();
    assert_eq!(e1.warnings.len(), 1, "{:?}", e1.warnings);
    let w = &e1.warnings[0];
    assert!(w.contains("2 x 2 x 4 mm") && w.contains("2 x 2 x 5 mm") && w.contains("header's is used"), "{w}");
    assert!(e2.warnings.is_empty(), "{:?}", e2.warnings);
    let sp = e1.source_spacing.clone().unwrap();
    assert_eq!(sp.used, SpacingSource::Header);
    assert_eq!(sp.header, [2.0, 2.0, 4.0]);
    assert_eq!(sp.metadata, Some([2.0, 2.0, 5.0]));
    // The header's 10 slices x 4 mm = 40 mm at 3 mm: 13 slices padded to 16 with air.
    let body = |out: &Path, e: &text2ct_data::manifest::ManifestEntry| {
        let v = MappedVolume::open(&volume_path(&out.join("manifest.jsonl"), e)).unwrap();
        let vol = v.to_volume(&e.affine).unwrap();
        (vol.get(8, 8, 0), vol.get(8, 8, 8))
    };
    assert_eq!(body(&out, e1), (-1000.0, 40.0));

    let out = root.join("metadata");
    let mut opts = options(&root, &out);
    opts.spacing_source = SpacingSource::Metadata;
    let s = run(&plan(&opts).unwrap(), &opts, 8, &|_| {}).unwrap();
    assert_eq!(s.prepared, 2);
    let m = read_manifest(&out.join("manifest.jsonl")).unwrap();
    let e1 = m.iter().find(|e| e.id == "train_1_a_1").unwrap();
    assert_eq!(e1.source_spacing.as_ref().unwrap().used, SpacingSource::Metadata);
    assert!(e1.warnings[0].contains("metadata's is used"), "{:?}", e1.warnings);
    // 10 slices x 5 mm = 50 mm: 17 slices cropped to 16, no air at the ends.
    assert_eq!(body(&out, e1), (40.0, 40.0));

    // --spacing-source metadata without a usable ZSpacing: the item is skipped with the reason.
    write(
        &layout::metadata_csv(&root, Split::Train),
        &meta.replace("train_2_a_1.nii.gz,1,-1024,\"[2.01, 2.0]\",4.0", "train_2_a_1.nii.gz,1,-1024,\"[2.01, 2.0]\","),
    );
    let out = root.join("metadata2");
    let mut opts = options(&root, &out);
    opts.spacing_source = SpacingSource::Metadata;
    let s = run(&plan(&opts).unwrap(), &opts, 8, &|_| {}).unwrap();
    let k = s.skipped.iter().find(|k| k.volume.starts_with("train_2")).unwrap();
    assert!(k.reason.contains("--spacing-source metadata") && k.reason.contains("ZSpacing"), "{}", k.reason);
}
