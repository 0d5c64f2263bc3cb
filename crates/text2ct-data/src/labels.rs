//! The 18 CT-RATE abnormality classes, in CT-RATE's column order.

/// CT-RATE's 18 multi-abnormality label columns, in the order of the labels CSV.
pub const LABELS: [&str; 18] = [
    "Medical material",
    "Arterial wall calcification",
    "Cardiomegaly",
    "Pericardial effusion",
    "Coronary artery wall calcification",
    "Hiatal hernia",
    "Lymphadenopathy",
    "Emphysema",
    "Atelectasis",
    "Lung nodule",
    "Lung opacity",
    "Pulmonary fibrotic sequela",
    "Pleural effusion",
    "Mosaic attenuation pattern",
    "Peribronchial thickening",
    "Consolidation",
    "Bronchiectasis",
    "Interlobular septal thickening",
];

/// Number of classes.
pub const NUM_LABELS: usize = LABELS.len();

/// Index of a label by its exact CT-RATE column name.
pub fn label_index(name: &str) -> Option<usize> {
    LABELS.iter().position(|l| *l == name)
}
