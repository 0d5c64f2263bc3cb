//! DICOM series folders through the binary (`inspect`), as they come from scanners and PACS
//! exports: with objects that are not images beside the slices.

use std::path::{Path, PathBuf};
use std::process::Command;

use dicom_core::{DataElement, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::{meta::FileMetaTableBuilder, InMemDicomObject};
use text2ct_io::dicom_write::{write_dicom_series, DicomSeriesInfo};
use text2ct_io::{Affine, Volume};

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("text2ct-cli-dicom-{}-{}", name, std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A 6 x 5 x 4 series (values x + 10 y + 100 z - 1000 HU) in `dir`.
fn series(dir: &Path) {
    let a = Affine::from_spacing_origin([0.8, 0.8, 2.5], [0.0; 3]).unwrap();
    let v = Volume::from_fn([6, 5, 4], a, |x, y, z| (x + 10 * y + 100 * z) as f32 - 1000.0).unwrap();
    let info = DicomSeriesInfo {
        series_description: "test".into(),
        image_comments: "test".into(),
        patient_id: "test".into(),
        uid_key: "test".into(),
        created_unix_s: 0,
    };
    write_dicom_series(&v, dir, &info).unwrap();
}

/// Issue 21 item 4: one structured report in a series folder failed the whole folder. It is
/// skipped, with a note that says so, and the series is read.
#[test]
fn a_structured_report_beside_the_slices_is_skipped_with_a_note() {
    let d = tmp("sr");
    let s = d.join("series");
    series(&s);
    let sr = InMemDicomObject::from_element_iter([
        DataElement::new(tags::SOP_CLASS_UID, VR::UI, uids::COMPREHENSIVE_SR_STORAGE),
        DataElement::new(tags::SOP_INSTANCE_UID, VR::UI, "2.25.1234"),
        DataElement::new(tags::SERIES_INSTANCE_UID, VR::UI, "2.25.5678"),
        DataElement::new(tags::MODALITY, VR::CS, "SR"),
    ]);
    sr.with_meta(FileMetaTableBuilder::new().transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN))
        .unwrap()
        .write_to_file(s.join("report.dcm"))
        .unwrap();
    let o =
        Command::new(env!("CARGO_BIN_EXE_text2ct")).args(["inspect", "--json", s.to_str().unwrap()]).output().unwrap();
    let (out, err) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "{out}\n{err}");
    assert!(err.contains("note: skipped") && err.contains("report.dcm") && err.contains("structured report"), "{err}");
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["dims"], serde_json::json!([6, 5, 4]));
    std::fs::remove_dir_all(&d).ok();
}
