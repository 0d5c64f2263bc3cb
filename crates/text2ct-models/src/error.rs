//! Errors of text2ct-models.

use std::path::PathBuf;

/// Everything that can go wrong building, loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A configuration that is invalid or asks for something this port does not implement.
    #[error("model config: {0}")]
    Config(String),
    /// A weights file that cannot be read or does not fit the model.
    #[error("weights {path}: {msg}")]
    Weights { path: PathBuf, msg: String },
    /// A `.npy` file that cannot be read or written.
    #[error("npy {path}: {msg}")]
    Npy { path: PathBuf, msg: String },
    /// An operating-system error on a file.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// An input tensor of the wrong shape, or another bad argument.
    #[error("{0}")]
    Invalid(String),
}

impl ModelError {
    pub fn weights(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        ModelError::Weights { path: path.into(), msg: msg.into() }
    }
    pub fn npy(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        ModelError::Npy { path: path.into(), msg: msg.into() }
    }
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ModelError::Io { path: path.into(), source }
    }
}

pub type Result<T> = std::result::Result<T, ModelError>;
