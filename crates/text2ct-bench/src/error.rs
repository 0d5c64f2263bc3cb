//! Errors of the experiments. Every error of a report section names the section.

use text2ct_eval::fid::FidError;
use text2ct_generate::GenerateError;
use text2ct_train::TrainError;

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A bad argument, config value, or input set.
    #[error("{0}")]
    Input(String),
    /// A report section failed; the message names the section.
    #[error("section [{section}]: {message}")]
    Section { section: String, message: String },
    #[error(transparent)]
    Fid(#[from] FidError),
    #[error(transparent)]
    Generate(#[from] GenerateError),
    #[error(transparent)]
    Train(#[from] TrainError),
    #[error(transparent)]
    Eval(#[from] text2ct_eval::EvalError),
    #[error(transparent)]
    Factual(#[from] text2ct_eval::factual::FactualError),
    #[error(transparent)]
    Io(#[from] text2ct_io::IoError),
}

pub type Result<T, E = BenchError> = std::result::Result<T, E>;

pub(crate) fn input<T>(msg: impl Into<String>) -> Result<T> {
    Err(BenchError::Input(msg.into()))
}

/// Write bytes atomically (temporary file beside the target, then rename).
pub(crate) fn write_atomic(path: &std::path::Path, bytes: &[u8]) -> Result<()> {
    text2ct_io::error::atomic_write_bytes(path, bytes)?;
    Ok(())
}

/// `serde_json::to_vec_pretty`, as an input error on failure (it cannot fail for our types).
pub(crate) fn json_bytes<T: serde::Serialize>(v: &T) -> Result<Vec<u8>> {
    serde_json::to_vec_pretty(v).map_err(|e| BenchError::Input(format!("serialising JSON: {e}")))
}
