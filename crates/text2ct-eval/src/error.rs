//! Error type of the crate.

/// Errors of the evaluation metrics. Nothing in this crate panics on bad input.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EvalError {
    /// Inputs whose sizes do not fit together.
    #[error("shape mismatch for {what}: expected {expected}, got {got}")]
    ShapeMismatch { what: &'static str, expected: usize, got: usize },
    /// Too few samples (e.g. a covariance needs at least 2).
    #[error("not enough samples for {what}: need at least {need}, got {got}")]
    TooFewSamples { what: &'static str, need: usize, got: usize },
    /// NaN or infinity in an input.
    #[error("non-finite value in {what}")]
    NonFinite { what: &'static str },
    /// Empty input.
    #[error("empty input: {what}")]
    Empty { what: &'static str },
    /// The eigenvalue iteration did not converge.
    #[error("symmetric eigensolver did not converge")]
    NoConvergence,
    /// Invalid argument.
    #[error("invalid argument: {0}")]
    Invalid(String),
}

/// Crate result alias.
pub type Result<T> = std::result::Result<T, EvalError>;
