//! Evaluation: Frechet distance, FID 2.5D/3D, factual correctness, retrieval metrics.
//!
//! * [`frechet`]: Fréchet distance and feature statistics (float64, robust for singular covariances).
//! * [`linalg`]: the small dense linear-algebra kernels behind it.

pub mod error;
pub mod frechet;
pub mod linalg;

pub use error::{EvalError, Result};
pub use frechet::{fid_from_features, frechet_distance, trace_sqrt_product, FeatureStats};
