//! Error type of the crate.

/// Errors returned by schedules and samplers. Nothing in this crate panics on bad input.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DiffusionError {
    /// `steps = 0` was requested.
    #[error("number of inference steps must be at least 1 (got 0)")]
    ZeroSteps,
    /// More inference steps than training timesteps.
    #[error("number of inference steps {steps} exceeds the number of training timesteps {train}")]
    TooManySteps { steps: usize, train: usize },
    /// A NaN or infinite value was found in an input.
    #[error("non-finite value in {what}")]
    NonFinite { what: &'static str },
    /// Two slices that must have the same length do not.
    #[error("length mismatch for {what}: expected {expected}, got {got}")]
    LengthMismatch { what: &'static str, expected: usize, got: usize },
    /// Two tensors that must have the same shape do not (e.g. a network whose output is not shaped like its input).
    #[error("shape mismatch for {what}: expected {expected:?}, got {got:?}")]
    ShapeMismatch { what: &'static str, expected: Vec<usize>, got: Vec<usize> },
    /// A timestep outside the valid range.
    #[error("timestep {t} out of range [0, {max}]")]
    TimestepOutOfRange { t: f64, max: f64 },
    /// A uniform sample outside [0, 1).
    #[error("uniform sample {u} outside [0, 1)")]
    UniformOutOfRange { u: f64 },
    /// A sampler name other than rflow, ddpm or ddim.
    #[error("unknown sampler {0:?}: expected rflow, ddpm or ddim")]
    UnknownSampler(String),
    /// An invalid configuration value.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
}

/// Crate result alias.
pub type Result<T> = std::result::Result<T, DiffusionError>;

pub(crate) fn check_finite(what: &'static str, xs: &[f32]) -> Result<()> {
    if xs.iter().all(|v| v.is_finite()) {
        Ok(())
    } else {
        Err(DiffusionError::NonFinite { what })
    }
}

pub(crate) fn check_dims(what: &'static str, expected: &[usize], got: &[usize]) -> Result<()> {
    if expected == got {
        Ok(())
    } else {
        Err(DiffusionError::ShapeMismatch { what, expected: expected.to_vec(), got: got.to_vec() })
    }
}

pub(crate) fn check_len(what: &'static str, expected: usize, got: usize) -> Result<()> {
    if expected == got {
        Ok(())
    } else {
        Err(DiffusionError::LengthMismatch { what, expected, got })
    }
}
