//! What every handler shares: the settings, the canonical roots, the queue, the model's defaults.

use std::path::PathBuf;
use std::sync::Arc;

use crate::config::ServeConfig;
use crate::queue::{ModelInfo, Queue};

/// The server's shared state.
pub struct AppState {
    pub config: ServeConfig,
    /// The output folder, canonical.
    pub out: PathBuf,
    /// `{out}/.serve-cache`, canonical: DICOM zips and the NIfTI copies of opened volumes.
    pub cache: PathBuf,
    /// `--data-root`, canonical.
    pub data_root: Option<PathBuf>,
    pub queue: Arc<Queue>,
    pub model: ModelInfo,
    /// One DICOM export or volume conversion at a time (each holds a whole volume in memory).
    pub heavy: tokio::sync::Mutex<()>,
}

pub type SharedState = Arc<AppState>;

/// Volume ids of opened volumes start with this (their files live in the cache, not in `out`).
pub const OPENED_PREFIX: &str = "open-";
