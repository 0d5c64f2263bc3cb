//! Experiments over the whole system — generation, training outputs and metrics together:
//!
//! * [`sweep`]: the guidance sweep (the paper's Figure 3): the test reports generated at every
//!   guidance scale from the same noise, each set scored against the real set.
//! * [`report`]: the one-command evaluation report (`text2ct eval report`): the sections an
//!   `EVAL.toml` configures, every table in the paper's shape, with provenance.
//! * [`fidset`]: FIDs of several generated sets against one real set (real features once).
//! * [`clip`]: the 3D-CLIP protocol end to end (load, embed, score).
//! * [`augment`]: the augmentation study (Table 6): CT-Net trained on real / synthetic / both,
//!   tested on real.
//! * [`plot`]: metric-against-parameter panels as PNG.
//! * [`speed`]: the speed benchmarks of `text2ct bench` (U-Net, VAE, one whole volume; seconds
//!   per phase and peak memory).
//!
//! This crate sits above `text2ct-generate`, `text2ct-train` and `text2ct-eval` so that the
//! metrics crate stays free of generation and training (see ARCHITECTURE.md).

pub mod augment;
pub mod clip;
pub mod error;
pub mod fidset;
pub mod plot;
pub mod report;
pub mod speed;
pub mod sweep;

pub use error::{BenchError, Result};
