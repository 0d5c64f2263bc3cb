//! Errors of the I/O layer. Every error that concerns a file names it.

use std::path::{Path, PathBuf};

pub type Result<T, E = IoError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum IoError {
    /// An operating-system error while touching a file.
    #[error("{path}: {source}")]
    Os { path: PathBuf, source: std::io::Error },
    /// A file whose content is not what its format requires.
    #[error("{path}: {msg}")]
    Format { path: PathBuf, msg: String },
    /// A file that would need more memory than allowed.
    #[error("{path}: {msg}")]
    TooLarge { path: PathBuf, msg: String },
    /// An argument or value that is not acceptable (no file involved).
    #[error("{0}")]
    Invalid(String),
}

impl IoError {
    pub fn invalid(msg: impl Into<String>) -> Self {
        IoError::Invalid(msg.into())
    }
    pub fn format(path: impl AsRef<Path>, msg: impl Into<String>) -> Self {
        IoError::Format { path: path.as_ref().to_path_buf(), msg: msg.into() }
    }
    pub fn os(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        IoError::Os { path: path.as_ref().to_path_buf(), source }
    }
    /// Attach a file name to an error that has none.
    pub fn at(self, path: impl AsRef<Path>) -> Self {
        match self {
            IoError::Invalid(msg) => IoError::Format { path: path.as_ref().to_path_buf(), msg },
            other => other,
        }
    }
}

/// Limits that protect against absurd headers: nothing larger is allocated.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest number of bytes a decoded volume (as f32) may take.
    pub max_bytes: u64,
}

impl Default for Limits {
    /// 4 GiB of f32 voxels (about 1024 x 1024 x 1024), far above any chest CT.
    /// Override with the environment variable `TEXT2CT_MAX_VOLUME_BYTES`.
    fn default() -> Self {
        let max_bytes = std::env::var("TEXT2CT_MAX_VOLUME_BYTES").ok().and_then(|s| s.parse().ok()).unwrap_or(4 << 30);
        Limits { max_bytes }
    }
}

impl Limits {
    /// Check that `voxels` f32 values fit in the bound.
    pub fn check(&self, path: &Path, dims: &[usize]) -> Result<usize> {
        let mut n: u64 = 1;
        for &d in dims {
            n = n.checked_mul(d as u64).ok_or_else(|| IoError::TooLarge {
                path: path.to_path_buf(),
                msg: format!("dimensions {dims:?} overflow"),
            })?;
        }
        let bytes = n.saturating_mul(4);
        if bytes > self.max_bytes {
            return Err(IoError::TooLarge {
                path: path.to_path_buf(),
                msg: format!(
                    "dimensions {dims:?} would need {:.1} GiB, above the limit of {:.1} GiB \
                     (set TEXT2CT_MAX_VOLUME_BYTES to raise it)",
                    bytes as f64 / (1u64 << 30) as f64,
                    self.max_bytes as f64 / (1u64 << 30) as f64
                ),
            });
        }
        Ok(n as usize)
    }
}

/// Write a file atomically: write into a temporary file beside it, then rename.
/// `write` gets the temporary path; the extension of `path` is kept on it (some writers
/// dispatch on the extension).
pub fn atomic_write<T>(path: &Path, write: impl FnOnce(&Path) -> Result<T>) -> Result<T> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| IoError::os(dir, e))?;
    let name = path
        .file_name()
        .ok_or_else(|| IoError::invalid(format!("{} has no file name", path.display())))?
        .to_string_lossy()
        .to_string();
    let tmp = dir.join(format!(".tmp-{}-{}", std::process::id(), name));
    match write(&tmp) {
        Ok(v) => {
            std::fs::rename(&tmp, path).map_err(|e| {
                let _ = std::fs::remove_file(&tmp);
                IoError::os(path, e)
            })?;
            Ok(v)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// Atomic write of bytes.
pub fn atomic_write_bytes(path: &Path, bytes: &[u8]) -> Result<()> {
    atomic_write(path, |tmp| std::fs::write(tmp, bytes).map_err(|e| IoError::os(tmp, e)))
}
