//! Errors of the training crate.

use std::path::PathBuf;

/// What went wrong while configuring or running a training job.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The training configuration is invalid (message names the key).
    #[error("config: {0}")]
    Config(String),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A data problem (manifest, volume, shapes).
    #[error("data: {0}")]
    Data(String),
    /// A checkpoint is missing, incomplete or does not match the run.
    #[error("checkpoint {path}: {msg}")]
    Checkpoint { path: PathBuf, msg: String },
    /// Numerical trouble (non-finite loss) or an internal invariant.
    #[error("training: {0}")]
    Train(String),
    #[error(transparent)]
    Model(#[from] text2ct_models::ModelError),
    #[error(transparent)]
    Io2(#[from] text2ct_io::error::IoError),
}

impl TrainError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        TrainError::Io { path: path.into(), source }
    }
    pub fn ckpt(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        TrainError::Checkpoint { path: path.into(), msg: msg.into() }
    }
}

pub type Result<T> = std::result::Result<T, TrainError>;
