//! Hostile inputs, family `data` (see main.rs).

use crate::{check_all, s, scratch, Case};

pub fn cases() -> Vec<Case> {
    let d = scratch("data");
    let junk = d.join("junk.nii.gz");
    std::fs::write(&junk, b"not a nifti file").unwrap();
    vec![
        // A file with a NIfTI name that is not NIfTI.
        Case::new("nifti-junk", &["inspect", &s(&junk)]).mentions("junk.nii.gz"),
    ]
}

#[test]
fn hostile_data() {
    check_all("data", cases());
}
