//! CT-RATE's on-disk layout (the Hugging Face data set `ibrahimhamamci/CT-RATE`), shared by the
//! reader (`prepare ctrate`) and by the phantom writer, so both agree on every name.
//!
//! ```text
//! ROOT/dataset/{train,valid}[_fixed]/train_1/train_1_a/train_1_a_1.nii.gz
//! ROOT/dataset/radiology_text_reports/{train,validation}_reports.csv
//! ROOT/dataset/multi_abnormality_labels/{train,valid}_predicted_labels.csv
//! ROOT/dataset/metadata/{train,validation}_metadata.csv
//! ROOT/dataset/metadata/no_chest_{train,valid}.txt
//! ```

use std::path::{Path, PathBuf};

/// A CT-RATE split.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Valid,
}

impl Split {
    /// The volume folder name (`train` / `valid`).
    pub fn dir(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Valid => "valid",
        }
    }
    /// The word used in the reports and metadata CSV names (`train` / `validation`).
    pub fn long(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Valid => "validation",
        }
    }
    pub fn parse(s: &str) -> Option<Split> {
        match s {
            "train" => Some(Split::Train),
            "valid" | "validation" => Some(Split::Valid),
            _ => None,
        }
    }
}

/// Columns of the reports CSV.
pub const REPORT_COLUMNS: [&str; 5] =
    ["VolumeName", "ClinicalInformation_EN", "Technique_EN", "Findings_EN", "Impressions_EN"];

/// Columns of the metadata CSV that text2ct reads (CT-RATE has more; extra columns are ignored).
pub const METADATA_COLUMNS: [&str; 4] = ["VolumeName", "RescaleSlope", "RescaleIntercept", "XYSpacing"];
/// Also read from the metadata CSV.
pub const METADATA_ZSPACING: &str = "ZSpacing";
/// The full metadata header the phantom writer emits (CT-RATE's known columns).
pub const METADATA_FULL_COLUMNS: [&str; 17] = [
    "VolumeName",
    "RescaleSlope",
    "RescaleIntercept",
    "XYSpacing",
    "ZSpacing",
    "StudyDate",
    "PatientAge",
    "PatientSex",
    "Manufacturer",
    "ManufacturerModelName",
    "ConvolutionKernel",
    "SeriesDescription",
    "Rows",
    "Columns",
    "NumberofSlices",
    "ImageOrientationPatient",
    "ImagePositionPatient",
];

pub fn dataset_dir(root: &Path) -> PathBuf {
    root.join("dataset")
}
pub fn reports_csv(root: &Path, split: Split) -> PathBuf {
    dataset_dir(root).join("radiology_text_reports").join(format!("{}_reports.csv", split.long()))
}
pub fn labels_csv(root: &Path, split: Split) -> PathBuf {
    dataset_dir(root).join("multi_abnormality_labels").join(format!("{}_predicted_labels.csv", split.dir()))
}
pub fn metadata_csv(root: &Path, split: Split) -> PathBuf {
    dataset_dir(root).join("metadata").join(format!("{}_metadata.csv", split.long()))
}
pub fn no_chest_list(root: &Path, split: Split) -> PathBuf {
    dataset_dir(root).join("metadata").join(format!("no_chest_{}.txt", split.dir()))
}

/// Parse a CT-RATE volume name `train_123_a_1.nii.gz` into (patient dir, scan dir).
/// Returns `None` for names that do not follow the pattern.
pub fn volume_dirs(volume_name: &str) -> Option<(String, String)> {
    let stem = volume_name.strip_suffix(".nii.gz").or_else(|| volume_name.strip_suffix(".nii"))?;
    let parts: Vec<&str> = stem.split('_').collect();
    if parts.len() != 4 || !matches!(parts[0], "train" | "valid") || parts[1].is_empty() || parts[2].is_empty() {
        return None;
    }
    Some((format!("{}_{}", parts[0], parts[1]), format!("{}_{}_{}", parts[0], parts[1], parts[2])))
}

/// Where a volume lives: `dataset/{split}[_fixed]/patient/scan/name`. `fixed` selects the
/// corrected release.
pub fn volume_path(root: &Path, split: Split, volume_name: &str, fixed: bool) -> Option<PathBuf> {
    let (p, s) = volume_dirs(volume_name)?;
    let dir = if fixed { format!("{}_fixed", split.dir()) } else { split.dir().to_string() };
    Some(dataset_dir(root).join(dir).join(p).join(s).join(volume_name))
}

/// The text every model of text2ct reads for a report, as the released Text2CT code builds it.
pub fn report_text(findings: &str, impressions: &str) -> String {
    format!("Findings: {findings} Impression: {impressions}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_names() {
        assert_eq!(
            volume_dirs("train_14145_a_1.nii.gz"),
            Some(("train_14145".to_string(), "train_14145_a".to_string()))
        );
        assert_eq!(volume_dirs("valid_1_b_2.nii.gz"), Some(("valid_1".into(), "valid_1_b".into())));
        assert_eq!(volume_dirs("foo.nii.gz"), None);
        assert_eq!(volume_dirs("test_1_a_1.nii.gz"), None);
        let p = volume_path(Path::new("/r"), Split::Train, "train_2_a_1.nii.gz", true).unwrap();
        assert_eq!(p, Path::new("/r/dataset/train_fixed/train_2/train_2_a/train_2_a_1.nii.gz"));
        assert_eq!(
            reports_csv(Path::new("/r"), Split::Valid),
            Path::new("/r/dataset/radiology_text_reports/validation_reports.csv")
        );
        assert_eq!(
            labels_csv(Path::new("/r"), Split::Valid),
            Path::new("/r/dataset/multi_abnormality_labels/valid_predicted_labels.csv")
        );
    }
}
