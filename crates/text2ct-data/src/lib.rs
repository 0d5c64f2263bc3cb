//! CT-RATE ingestion, preprocessing modes, manifests and the 18 abnormality labels.

pub mod labels;
pub mod layout;
