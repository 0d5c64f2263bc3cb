//! Evaluation: Frechet distance, FID 2.5D/3D, factual correctness, retrieval metrics.
//!
//! * [`frechet`]: Fréchet distance and feature statistics (float64, robust for singular covariances).
//! * [`linalg`]: the small dense linear-algebra kernels behind it.
//! * [`classification`]: ROC AUC (ties), average precision, precision at a threshold, macro/weighted averages.
//! * [`fid`]: the FID pipeline: MAISI's 2.5D protocol and a 3D protocol over volume sets, with the
//!   backbones of text2ct-models; JSON / Markdown reports. [`memory`]: its peak memory per volume,
//!   estimated (and refused when it cannot fit) before a volume is prepared.
//! * [`factual`]: factual correctness (Table 3): the CT-Net classifier folder, labelled volume sets
//!   (NIfTI + sidecars or manifests matched to a labels CSV), predictions, AUC / precision reports.
//! * [`retrieval`]: Recall@K, MAP@K, and CT-CLIP's volume-to-volume computation.
//! * [`clip_eval`]: the 3D-CLIP protocol (zero-shot with two prompt styles, volume-to-volume MAP@K,
//!   report-to-volume Recall@K) from embeddings; JSON / Markdown reports.

pub mod classification;
pub mod clip_eval;
pub mod error;
pub mod factual;
pub mod fid;
pub mod frechet;
pub mod linalg;
pub mod memory;
pub mod prompt_effects;
pub mod retrieval;

pub use error::{EvalError, Result};
pub use frechet::{fid_from_features, frechet_distance, trace_sqrt_product, FeatureStats};
