//! Path safety: every file the server reads or lists lies under a root it was given (the output
//! folder or `--data-root`), checked on the canonical path (symlinks resolved), so `..`, absolute
//! paths, symlinks that lead out and URL-encoded variants of these (decoded by the router before
//! they get here) are all refused.

use std::path::{Component, Path, PathBuf};

use crate::error::ApiError;

/// Longest relative path accepted by [`resolve_under`].
pub const MAX_PATH_BYTES: usize = 4096;

/// `rel` resolved under `root` (which must be canonical), refusing anything that is not a plain
/// relative path of normal components or that resolves (through symlinks) outside `root`.
/// Missing files are 404; paths that leave the root are 403.
pub fn resolve_under(root: &Path, rel: &str, what: &str) -> Result<PathBuf, ApiError> {
    if rel.len() > MAX_PATH_BYTES {
        return Err(ApiError::bad_request(format!("{what}: the path is longer than {MAX_PATH_BYTES} bytes")));
    }
    if rel.contains('\0') || rel.contains('\\') {
        return Err(ApiError::bad_request(format!("{what}: the path holds a NUL or a backslash")));
    }
    let p = Path::new(rel);
    for c in p.components() {
        match c {
            Component::Normal(_) | Component::CurDir => {}
            Component::ParentDir => {
                return Err(ApiError::forbidden(format!(
                    "{what}: `..` is not allowed (paths are relative to the root)"
                )))
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(ApiError::forbidden(format!(
                    "{what}: absolute paths are not allowed (give a path relative to the root)"
                )))
            }
        }
    }
    let joined = root.join(p);
    let canon = joined.canonicalize().map_err(|_| ApiError::not_found(format!("{what}: {rel:?} does not exist")))?;
    if !canon.starts_with(root) {
        return Err(ApiError::forbidden(format!("{what}: {rel:?} leads outside the root (a symlink out)")));
    }
    Ok(canon)
}

/// Check a volume id (a file stem in the output folder): letters, digits, `_`, `-`, `.`; starting with a
/// letter or digit; no `..`; at most 200 bytes.
pub fn check_volume_id(vid: &str) -> Result<(), ApiError> {
    let ok = !vid.is_empty()
        && vid.len() <= 200
        && vid.as_bytes()[0].is_ascii_alphanumeric()
        && !vid.contains("..")
        && vid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "volume id {:?} is not a volume id (letters, digits, `_`, `-`, `.`)",
            vid.chars().take(80).collect::<String>()
        )))
    }
}

/// A file `name` directly in `dir` (canonical), refusing one that is a symlink leading out of `dir`.
pub fn file_in(dir: &Path, name: &str) -> Result<PathBuf, ApiError> {
    let p = dir.join(name);
    let canon = p.canonicalize().map_err(|_| ApiError::not_found(format!("{name} does not exist")))?;
    if !canon.starts_with(dir) {
        return Err(ApiError::forbidden(format!("{name} leads outside the output folder (a symlink out)")));
    }
    if !canon.is_file() {
        return Err(ApiError::not_found(format!("{name} is not a file")));
    }
    Ok(canon)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_escapes() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().canonicalize().unwrap();
        std::fs::create_dir(root.join("a")).unwrap();
        std::fs::write(root.join("a/x.nii"), b"x").unwrap();
        assert_eq!(resolve_under(&root, "a/x.nii", "path").unwrap(), root.join("a/x.nii"));
        assert_eq!(resolve_under(&root, "../x", "path").unwrap_err().status, 403);
        assert_eq!(resolve_under(&root, "a/../../x", "path").unwrap_err().status, 403);
        assert_eq!(resolve_under(&root, "/etc/passwd", "path").unwrap_err().status, 403);
        assert_eq!(resolve_under(&root, "a/missing", "path").unwrap_err().status, 404);
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink("/etc", root.join("out")).unwrap();
            assert_eq!(resolve_under(&root, "out/passwd", "path").unwrap_err().status, 403);
        }
        assert!(check_volume_id("prompt_seed0").is_ok());
        for bad in ["", "../x", "..", ".hidden", "a/b", "a%2e", "a b"] {
            assert!(check_volume_id(bad).is_err(), "{bad}");
        }
    }
}
