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

/// Check, before any work, that `dir` is a folder this process can write in, or can be created
/// as one — without creating it (a job refused later for another reason leaves nothing behind).
/// The error says what is wrong in words: the path is a file, a part of it is a file, or the
/// nearest existing folder refuses writes (permissions, a read-only file system). Every command
/// that writes into a folder calls it first (see also [`check_output_file`]).
pub fn check_output_dir(dir: &Path) -> Result<()> {
    let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
    // The nearest part of the path that exists.
    let mut existing = dir;
    loop {
        match std::fs::metadata(existing) {
            Ok(m) if m.is_dir() => break,
            Ok(_) if existing == dir => {
                return Err(IoError::invalid(format!("{}: exists and is a file, not a folder", dir.display())))
            }
            Ok(_) => {
                return Err(IoError::invalid(format!(
                    "{}: cannot be created because {} is a file, not a folder",
                    dir.display(),
                    existing.display()
                )))
            }
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                return Err(IoError::os(existing, e));
            }
            // Not found (or a file on the way, ENOTDIR): look one level up.
            Err(_) => match existing.parent() {
                Some(p) if !p.as_os_str().is_empty() => existing = p,
                _ => {
                    existing = Path::new(".");
                    if !existing.is_dir() {
                        return Err(IoError::invalid("the current folder is not accessible"));
                    }
                    break;
                }
            },
        }
    }
    let probe = existing.join(format!(".text2ct-write-check-{}", std::process::id()));
    match std::fs::OpenOptions::new().write(true).create_new(true).open(&probe) {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            Ok(())
        }
        Err(e) => {
            let what = if existing == dir {
                format!("{}: cannot write in this folder ({e})", dir.display())
            } else {
                format!("{}: cannot be created: cannot write in {} ({e})", dir.display(), existing.display())
            };
            Err(IoError::invalid(what))
        }
    }
}

/// [`check_output_dir`] for the folder of an output file, and that `file` is not a folder.
pub fn check_output_file(file: &Path) -> Result<()> {
    if file.is_dir() {
        return Err(IoError::invalid(format!("{}: is a folder, not a file", file.display())));
    }
    check_output_dir(file.parent().unwrap_or(Path::new(".")))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_folders_are_checked_without_being_created() {
        let d = std::env::temp_dir().join(format!("text2ct-outdir-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        // A folder that exists, one that can be made (left uncreated), a relative one.
        check_output_dir(&d).unwrap();
        check_output_dir(&d.join("a/b/c")).unwrap();
        assert!(!d.join("a").exists());
        check_output_dir(Path::new("")).unwrap();
        // A file where the folder should be, or on the way to it.
        let f = d.join("file");
        std::fs::write(&f, b"x").unwrap();
        let e = check_output_dir(&f).unwrap_err().to_string();
        assert!(e.contains("exists and is a file, not a folder") && e.contains("file"), "{e}");
        let e = check_output_dir(&f.join("sub/deeper")).unwrap_err().to_string();
        assert!(e.contains("cannot be created because") && e.contains("is a file"), "{e}");
        // A folder nobody may write in (a read-only file system, even for root).
        if Path::new("/proc/self").is_dir() {
            let e = check_output_dir(Path::new("/proc/self")).unwrap_err().to_string();
            assert!(e.contains("/proc/self: cannot write in this folder (") && !e.contains("Os {"), "{e}");
            let e = check_output_dir(Path::new("/proc/self/new/out")).unwrap_err().to_string();
            assert!(e.contains("cannot write in /proc/self"), "{e}");
        }
        // Output files: the folder is checked, and the file must not be a folder.
        check_output_file(&d.join("x.npy")).unwrap();
        check_output_file(Path::new("x.npy")).unwrap();
        assert!(check_output_file(&d).unwrap_err().to_string().contains("is a folder"));
        assert!(check_output_file(&f.join("x.npy")).is_err());
        assert!(std::fs::read_dir(&d).unwrap().count() == 1, "the probe file is removed");
        let _ = std::fs::remove_dir_all(&d);
    }
}
