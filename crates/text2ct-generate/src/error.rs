//! Errors of generation.

#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error("{0}")]
    Card(String),
    #[error("{0}")]
    Prompts(String),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Io(#[from] text2ct_io::IoError),
    /// The job's [`crate::pipeline::CancelFlag`] was set (between sampling steps or before decoding).
    #[error("cancelled")]
    Cancelled,
    #[error("sampling: {0}")]
    Sampling(#[from] text2ct_diffusion::DiffusionError),
}

pub type Result<T, E = GenerateError> = std::result::Result<T, E>;
