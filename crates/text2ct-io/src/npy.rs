//! NumPy `.npy` arrays (format versions 1.0 to 3.0): little-endian `f32`, `f64`, `i16`,
//! `u8`, C or Fortran order. Used for preprocessed volumes (int16 HU, memory-mappable), for
//! latents and embeddings, and for exchanging arrays with PyTorch/MONAI.
//!
//! Reading checks the header before allocating: the shape must fit [`Limits`] and the file
//! must hold exactly the bytes the header promises.

use std::io::Write;
use std::path::Path;

use crate::error::{atomic_write, IoError, Limits, Result};

/// Element type of an array.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NpyType {
    F32,
    F64,
    I16,
    U8,
}

impl NpyType {
    fn descr(self) -> &'static str {
        match self {
            NpyType::F32 => "<f4",
            NpyType::F64 => "<f8",
            NpyType::I16 => "<i2",
            NpyType::U8 => "|u1",
        }
    }
    fn parse(d: &str) -> Option<NpyType> {
        Some(match d {
            "<f4" => NpyType::F32,
            "<f8" => NpyType::F64,
            "<i2" => NpyType::I16,
            "|u1" | "<u1" => NpyType::U8,
            _ => return None,
        })
    }
    pub fn size(self) -> usize {
        match self {
            NpyType::F32 => 4,
            NpyType::F64 => 8,
            NpyType::I16 => 2,
            NpyType::U8 => 1,
        }
    }
}

/// A parsed `.npy` header.
#[derive(Clone, Debug, PartialEq)]
pub struct NpyHeader {
    pub dtype: NpyType,
    pub fortran_order: bool,
    pub shape: Vec<usize>,
    /// Byte offset of the data.
    pub data_offset: usize,
}

impl NpyHeader {
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Parse the header at the start of `bytes` (at least the first few KiB of a file).
    pub fn parse(bytes: &[u8], path: &Path) -> Result<NpyHeader> {
        let bad = |m: &str| IoError::format(path, format!("not a valid .npy file: {m}"));
        if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
            return Err(bad("wrong magic"));
        }
        let major = bytes[6];
        let (hlen, start) = match major {
            1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
            2 | 3 => {
                if bytes.len() < 12 {
                    return Err(bad("truncated header"));
                }
                (u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize, 12)
            }
            v => return Err(bad(&format!("unsupported format version {v}"))),
        };
        if hlen > 1 << 20 || bytes.len() < start + hlen {
            return Err(bad("truncated or oversized header"));
        }
        let text = std::str::from_utf8(&bytes[start..start + hlen]).map_err(|_| bad("header is not text"))?;
        let field = |key: &str| -> Option<&str> {
            let k = format!("'{key}':");
            let i = text.find(&k)? + k.len();
            Some(text[i..].trim_start())
        };
        let descr = field("descr").and_then(|s| s.strip_prefix('\'')).and_then(|s| s.split('\'').next());
        let descr = descr.ok_or_else(|| bad("no descr"))?;
        let dtype = NpyType::parse(descr).ok_or_else(|| {
            IoError::format(path, format!("unsupported dtype {descr:?} (supported: <f4, <f8, <i2, |u1)"))
        })?;
        let fortran_order = match field("fortran_order") {
            Some(s) if s.starts_with("True") => true,
            Some(s) if s.starts_with("False") => false,
            _ => return Err(bad("no fortran_order")),
        };
        let shape_txt = field("shape").and_then(|s| s.strip_prefix('(')).and_then(|s| s.split(')').next());
        let shape_txt = shape_txt.ok_or_else(|| bad("no shape"))?;
        let shape = shape_txt
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| s.parse::<usize>().map_err(|_| bad(&format!("bad shape entry {s:?}"))))
            .collect::<Result<Vec<_>>>()?;
        Ok(NpyHeader { dtype, fortran_order, shape, data_offset: start + hlen })
    }
}

/// An array read from a `.npy` file, converted to `f32`, in **C order** (last axis fastest).
#[derive(Clone, Debug, PartialEq)]
pub struct NpyArray {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl NpyArray {
    /// An array of `data` (C order) with `shape`; the lengths must agree.
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Result<Self> {
        let n = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        if n != Some(data.len()) {
            return Err(IoError::invalid(format!("array of {} values does not have shape {shape:?}", data.len())));
        }
        Ok(NpyArray { shape, data })
    }
    /// Read a `.npy` file (any supported dtype, converted to f32; C order) within the default
    /// [`Limits`].
    pub fn read(path: &Path) -> Result<Self> {
        read_npy(path, &Limits::default())
    }
    /// Write as little-endian float32, C order, atomically.
    pub fn write(&self, path: &Path) -> Result<()> {
        write_npy_f32(path, &self.shape, &self.data)
    }
}

/// Read a whole `.npy` file as `f32` in C order (Fortran-ordered files are transposed).
pub fn read_npy(path: &Path, limits: &Limits) -> Result<NpyArray> {
    let bytes = std::fs::read(path).map_err(|e| IoError::os(path, e))?;
    let h = NpyHeader::parse(&bytes, path)?;
    let n = limits.check(path, &h.shape)?;
    let need = n * h.dtype.size();
    let have = bytes.len() - h.data_offset;
    if have != need {
        return Err(IoError::format(
            path,
            format!(
                "data is {have} bytes but shape {:?} of {:?} needs {need} (truncated or corrupt)",
                h.shape, h.dtype
            ),
        ));
    }
    let raw = &bytes[h.data_offset..];
    let data: Vec<f32> = match h.dtype {
        NpyType::F32 => raw.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
        NpyType::F64 => raw.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap()) as f32).collect(),
        NpyType::I16 => raw.chunks_exact(2).map(|c| i16::from_le_bytes([c[0], c[1]]) as f32).collect(),
        NpyType::U8 => raw.iter().map(|&b| b as f32).collect(),
    };
    let data = if h.fortran_order && h.shape.len() > 1 { fortran_to_c(&data, &h.shape) } else { data };
    Ok(NpyArray { shape: h.shape, data })
}

/// Reorder Fortran-ordered (first axis fastest) data to C order.
pub fn fortran_to_c(data: &[f32], shape: &[usize]) -> Vec<f32> {
    let nd = shape.len();
    let n: usize = shape.iter().product();
    let mut fstride = vec![1usize; nd];
    for i in 1..nd {
        fstride[i] = fstride[i - 1] * shape[i - 1];
    }
    let mut out = Vec::with_capacity(n);
    let mut idx = vec![0usize; nd];
    for _ in 0..n {
        out.push(data[idx.iter().zip(&fstride).map(|(a, b)| a * b).sum::<usize>()]);
        for ax in (0..nd).rev() {
            idx[ax] += 1;
            if idx[ax] < shape[ax] {
                break;
            }
            idx[ax] = 0;
        }
    }
    out
}

fn header_bytes(dtype: NpyType, shape: &[usize], fortran: bool) -> Vec<u8> {
    let shape_txt = match shape.len() {
        1 => format!("({},)", shape[0]),
        _ => format!("({})", shape.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(", ")),
    };
    let mut dict = format!(
        "{{'descr': '{}', 'fortran_order': {}, 'shape': {}, }}",
        dtype.descr(),
        if fortran { "True" } else { "False" },
        shape_txt
    );
    // Pad so that the data starts at a multiple of 64 bytes (version 1.0 header: 10 bytes).
    let total = 10 + dict.len() + 1;
    let pad = (64 - total % 64) % 64;
    dict.push_str(&" ".repeat(pad));
    dict.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(dict.len() as u16).to_le_bytes());
    out.extend_from_slice(dict.as_bytes());
    out
}

/// Write `f32` data (C order for `shape`) atomically.
pub fn write_npy_f32(path: &Path, shape: &[usize], data: &[f32]) -> Result<()> {
    write_raw(path, NpyType::F32, shape, false, data.len(), |w| {
        for v in data {
            w.write_all(&v.to_le_bytes())?;
        }
        Ok(())
    })
}

/// Write `i16` data atomically. `fortran_order` says how `data` is laid out for `shape`.
pub fn write_npy_i16(path: &Path, shape: &[usize], data: &[i16], fortran_order: bool) -> Result<()> {
    write_raw(path, NpyType::I16, shape, fortran_order, data.len(), |w| {
        for v in data {
            w.write_all(&v.to_le_bytes())?;
        }
        Ok(())
    })
}

fn write_raw(
    path: &Path,
    dtype: NpyType,
    shape: &[usize],
    fortran: bool,
    len: usize,
    body: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> Result<()> {
    if shape.iter().product::<usize>() != len {
        return Err(IoError::invalid(format!("{}: shape {shape:?} does not match {len} values", path.display())));
    }
    atomic_write(path, |tmp| {
        let f = std::fs::File::create(tmp).map_err(|e| IoError::os(tmp, e))?;
        let mut w = std::io::BufWriter::new(f);
        let run = |w: &mut std::io::BufWriter<std::fs::File>| -> std::io::Result<()> {
            w.write_all(&header_bytes(dtype, shape, fortran))?;
            body(w)?;
            w.flush()
        };
        run(&mut w).map_err(|e| IoError::os(tmp, e))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_header_alignment() {
        let d = std::env::temp_dir().join(format!("text2ct-npy-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let p = d.join("a.npy");
        let data: Vec<f32> = (0..24).map(|i| i as f32 * 0.5 - 3.0).collect();
        write_npy_f32(&p, &[2, 3, 4], &data).unwrap();
        let bytes = std::fs::read(&p).unwrap();
        let h = NpyHeader::parse(&bytes, &p).unwrap();
        assert_eq!(h.data_offset % 64, 0);
        assert_eq!(h.shape, vec![2, 3, 4]);
        let a = read_npy(&p, &Limits::default()).unwrap();
        assert_eq!(a.data, data);
        // Fortran-ordered int16: element (i, j) at i + 2 * j.
        let p = d.join("f.npy");
        write_npy_i16(&p, &[2, 3], &[0, 1, 10, 11, 20, 21], true).unwrap();
        let a = read_npy(&p, &Limits::default()).unwrap();
        assert_eq!(a.data, vec![0.0, 10.0, 20.0, 1.0, 11.0, 21.0]);
        // Truncated.
        std::fs::write(&p, &std::fs::read(&p).unwrap()[..70]).unwrap();
        let e = read_npy(&p, &Limits::default()).unwrap_err().to_string();
        assert!(e.contains("truncated"), "{e}");
        // Wrong magic, unsupported dtype, huge shape.
        std::fs::write(&p, b"hello world, this is not numpy").unwrap();
        assert!(read_npy(&p, &Limits::default()).unwrap_err().to_string().contains("magic"));
        let mut h = header_bytes(NpyType::F32, &[100000, 100000, 1000], false);
        std::fs::write(&p, &h).unwrap();
        assert!(read_npy(&p, &Limits::default()).unwrap_err().to_string().contains("limit"));
        h = header_bytes(NpyType::F32, &[1], false);
        let at = h.windows(3).position(|w| w == b"<f4").unwrap();
        h[at..at + 3].copy_from_slice(b"<c8");
        std::fs::write(&p, &h).unwrap();
        assert!(read_npy(&p, &Limits::default()).unwrap_err().to_string().contains("unsupported dtype"));
    }
}
