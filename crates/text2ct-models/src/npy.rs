//! Minimal `.npy` reading and writing for float arrays (NumPy format versions 1, 2 and 3).
//!
//! Reads little-endian `<f4` (and `<f8`, converted to f32) in C order; writes `<f4`, C order,
//! version 1 (version 2 only if the header would not fit). Sizes are bounded by
//! [`NpyArray::MAX_BYTES`] (override with `TEXT2CT_MAX_NPY_BYTES`).

use std::io::Read;
use std::path::Path;

use crate::error::{ModelError, Result};

/// A float32 array with its shape (C order).
#[derive(Clone, Debug, PartialEq)]
pub struct NpyArray {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

const MAGIC: &[u8] = b"\x93NUMPY";

impl NpyArray {
    /// Default bound on the data size: 8 GiB.
    pub const MAX_BYTES: u64 = 8 << 30;

    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Result<Self> {
        let n = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        if n != Some(data.len()) {
            return Err(ModelError::Invalid(format!("array of {} values does not have shape {shape:?}", data.len())));
        }
        Ok(NpyArray { shape, data })
    }

    fn limit() -> u64 {
        std::env::var("TEXT2CT_MAX_NPY_BYTES").ok().and_then(|s| s.parse().ok()).unwrap_or(Self::MAX_BYTES)
    }

    /// Read a `.npy` file.
    pub fn read(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(|e| ModelError::io(path, e))?;
        let file_len = file.metadata().map_err(|e| ModelError::io(path, e))?.len();
        let mut r = std::io::BufReader::new(file);
        let err = |m: String| ModelError::npy(path, m);
        let mut pre = [0u8; 8];
        r.read_exact(&mut pre).map_err(|_| err("file too short for a .npy header".into()))?;
        if &pre[..6] != MAGIC {
            return Err(err("not a .npy file (bad magic)".into()));
        }
        let major = pre[6];
        let header_len = match major {
            1 => {
                let mut b = [0u8; 2];
                r.read_exact(&mut b).map_err(|_| err("truncated header".into()))?;
                u16::from_le_bytes(b) as usize
            }
            2 | 3 => {
                let mut b = [0u8; 4];
                r.read_exact(&mut b).map_err(|_| err("truncated header".into()))?;
                u32::from_le_bytes(b) as usize
            }
            v => return Err(err(format!("unsupported .npy version {v}"))),
        };
        if header_len > 1 << 20 {
            return Err(err(format!("header of {header_len} bytes is implausible")));
        }
        let mut hb = vec![0u8; header_len];
        r.read_exact(&mut hb).map_err(|_| err("truncated header".into()))?;
        let header = String::from_utf8_lossy(&hb).into_owned();
        let (descr, fortran, shape) = parse_header(&header).map_err(err)?;
        if fortran {
            return Err(err("Fortran-order arrays are not supported; save with np.ascontiguousarray".into()));
        }
        let elem = match descr.as_str() {
            "<f4" => 4,
            "<f8" => 8,
            d => return Err(err(format!("dtype {d} not supported (need little-endian float32 '<f4' or '<f8')"))),
        };
        let n = shape
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d as u64))
            .ok_or_else(|| err(format!("shape {shape:?} overflows")))?;
        let bytes = n.checked_mul(elem).ok_or_else(|| err(format!("shape {shape:?} overflows")))?;
        let limit = Self::limit();
        if bytes > limit {
            return Err(err(format!("array of {bytes} bytes exceeds the limit of {limit} (TEXT2CT_MAX_NPY_BYTES)")));
        }
        let offset = (if major == 1 { 10 } else { 12 }) + header_len as u64;
        if file_len < offset + bytes {
            return Err(err(format!(
                "file truncated: shape {shape:?} needs {bytes} data bytes, file has {}",
                file_len.saturating_sub(offset)
            )));
        }
        let mut raw = vec![0u8; bytes as usize];
        r.read_exact(&mut raw).map_err(|e| ModelError::io(path, e))?;
        let data = if elem == 4 {
            raw.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
        } else {
            raw.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap()) as f32).collect()
        };
        Ok(NpyArray { shape, data })
    }

    /// Write as little-endian float32, C order (atomically).
    pub fn write(&self, path: &Path) -> Result<()> {
        let shape_str = match self.shape.len() {
            0 => "()".to_string(),
            1 => format!("({},)", self.shape[0]),
            _ => format!("({})", self.shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")),
        };
        let dict = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape_str}, }}");
        // Total header (magic + version + len + dict + padding + '\n') is a multiple of 64.
        let mut out = Vec::with_capacity(self.data.len() * 4 + 128);
        let v1_total = 10 + dict.len() + 1;
        if v1_total.div_ceil(64) * 64 - 10 <= u16::MAX as usize {
            let hlen = v1_total.div_ceil(64) * 64 - 10;
            out.extend_from_slice(MAGIC);
            out.extend_from_slice(&[1, 0]);
            out.extend_from_slice(&(hlen as u16).to_le_bytes());
            out.extend_from_slice(dict.as_bytes());
            out.resize(10 + hlen - 1, b' ');
        } else {
            let total = (12 + dict.len() + 1).div_ceil(64) * 64;
            let hlen = total - 12;
            out.extend_from_slice(MAGIC);
            out.extend_from_slice(&[2, 0]);
            out.extend_from_slice(&(hlen as u32).to_le_bytes());
            out.extend_from_slice(dict.as_bytes());
            out.resize(12 + hlen - 1, b' ');
        }
        out.push(b'\n');
        for v in &self.data {
            out.extend_from_slice(&v.to_le_bytes());
        }
        crate::weights::atomic_write(path, &out)
    }
}

/// Parse `{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }`.
fn parse_header(h: &str) -> std::result::Result<(String, bool, Vec<usize>), String> {
    let value_after = |key: &str| -> std::result::Result<&str, String> {
        let pat1 = format!("'{key}'");
        let pat2 = format!("\"{key}\"");
        let i = h.find(&pat1).or_else(|| h.find(&pat2)).ok_or_else(|| format!("header lacks '{key}': {h}"))?;
        let rest = &h[i + pat1.len()..];
        let rest = rest.trim_start().strip_prefix(':').ok_or_else(|| format!("bad header: {h}"))?;
        Ok(rest.trim_start())
    };
    let d = value_after("descr")?;
    let q = d.chars().next().ok_or("bad descr")?;
    if q != '\'' && q != '"' {
        return Err(format!("bad descr in header: {h}"));
    }
    let end = d[1..].find(q).ok_or("bad descr")?;
    let descr = d[1..1 + end].to_string();
    let f = value_after("fortran_order")?;
    let fortran = if f.starts_with("True") {
        true
    } else if f.starts_with("False") {
        false
    } else {
        return Err(format!("bad fortran_order in header: {h}"));
    };
    let s = value_after("shape")?;
    let s = s.strip_prefix('(').ok_or_else(|| format!("bad shape in header: {h}"))?;
    let end = s.find(')').ok_or_else(|| format!("bad shape in header: {h}"))?;
    let shape = s[..end]
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| t.trim_end_matches('L').parse::<usize>().map_err(|_| format!("bad dimension `{t}` in shape")))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    Ok((descr, fortran, shape))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_errors() {
        let dir = std::env::temp_dir().join(format!("t2ct_npy_{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("a.npy");
        let a = NpyArray::new(vec![2, 3, 1], (0..6).map(|v| v as f32 * 0.5).collect()).unwrap();
        a.write(&p).unwrap();
        let bytes = std::fs::read(&p).unwrap();
        assert_eq!((bytes.len() - 24) % 64, 0, "header padded to 64");
        assert_eq!(NpyArray::read(&p).unwrap(), a);
        // truncated
        std::fs::write(&p, &bytes[..bytes.len() - 3]).unwrap();
        let e = NpyArray::read(&p).unwrap_err().to_string();
        assert!(e.contains("truncated"), "{e}");
        std::fs::write(&p, b"hello").unwrap();
        assert!(NpyArray::read(&p).is_err());
        assert!(NpyArray::new(vec![2, 2], vec![0.0; 3]).is_err());
        assert_eq!(parse_header("{'descr': '<f4', 'fortran_order': False, 'shape': (7,), }").unwrap().2, vec![7]);
        assert_eq!(
            parse_header("{'descr': '<f4', 'fortran_order': False, 'shape': (), }").unwrap().2,
            Vec::<usize>::new()
        );
        std::fs::remove_dir_all(&dir).ok();
    }
}
