//! CT-RATE ingestion, preprocessing modes, manifests and the 18 abnormality labels.

pub mod csvfile;
pub mod ctrate;
pub mod labels;
pub mod layout;
pub mod manifest;
pub mod preprocess;
