//! NumPy `.npy` arrays (format versions 1.0 to 3.0). Used for preprocessed volumes (int16 HU,
//! memory-mappable), for latents and embeddings, and for exchanging arrays with PyTorch/MONAI.
//!
//! Reading takes every numeric dtype NumPy writes for such arrays, in either byte order:
//! `f4`, `f8`, `i1`, `i2`, `i4`, `i8`, `u1`, `u2`, `u4`, `u8` and `b1` (bool), C or Fortran
//! order; NumPy's default integer (`<i8`) included. [`read_npy`] converts to `f32` and refuses a
//! value that `f32` cannot hold exactly (an integer beyond ±2^24, a finite float64 beyond the
//! float32 range); [`read_npy_i64`] reads whole numbers (labels, indices) and refuses fractions
//! and values beyond `i64`. Writing is little-endian `f32` or `i16`.
//!
//! Reading checks the header before allocating: the shape must fit [`Limits`] and the file
//! must hold exactly the bytes the header promises.

use std::io::Write;
use std::path::Path;

use crate::error::{atomic_write, IoError, Limits, Result};

/// Element type of an array (the byte order is [`NpyHeader::big_endian`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NpyType {
    F32,
    F64,
    I8,
    I16,
    I32,
    I64,
    U8,
    U16,
    U32,
    U64,
    Bool,
}

/// The dtypes [`NpyType::parse`] takes, for messages.
const SUPPORTED: &str = "f4, f8, i1, i2, i4, i8, u1, u2, u4, u8, b1 (either byte order)";

impl NpyType {
    /// The little-endian descr (what text2ct writes).
    fn descr(self) -> &'static str {
        match self {
            NpyType::F32 => "<f4",
            NpyType::F64 => "<f8",
            NpyType::I8 => "|i1",
            NpyType::I16 => "<i2",
            NpyType::I32 => "<i4",
            NpyType::I64 => "<i8",
            NpyType::U8 => "|u1",
            NpyType::U16 => "<u2",
            NpyType::U32 => "<u4",
            NpyType::U64 => "<u8",
            NpyType::Bool => "|b1",
        }
    }
    /// Parse a descr such as `<f4`, `>i8` or `|b1` into (type, big endian).
    fn parse(d: &str) -> Option<(NpyType, bool)> {
        let mut c = d.chars();
        let order = c.next()?;
        let t = match c.as_str() {
            "f4" => NpyType::F32,
            "f8" => NpyType::F64,
            "i1" => NpyType::I8,
            "i2" => NpyType::I16,
            "i4" => NpyType::I32,
            "i8" => NpyType::I64,
            "u1" => NpyType::U8,
            "u2" => NpyType::U16,
            "u4" => NpyType::U32,
            "u8" => NpyType::U64,
            "b1" => NpyType::Bool,
            _ => return None,
        };
        let big = match order {
            '<' => false,
            '>' => true,
            '=' => cfg!(target_endian = "big"),
            '|' if t.size() == 1 => false,
            _ => return None,
        };
        Some((t, big))
    }
    pub fn size(self) -> usize {
        match self {
            NpyType::I8 | NpyType::U8 | NpyType::Bool => 1,
            NpyType::I16 | NpyType::U16 => 2,
            NpyType::F32 | NpyType::I32 | NpyType::U32 => 4,
            NpyType::F64 | NpyType::I64 | NpyType::U64 => 8,
        }
    }
}

/// One element as read: integers exactly (i128 holds every i64 and u64), floats as f64.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Elem {
    Int(i128),
    Float(f64),
}

impl std::fmt::Display for Elem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Elem::Int(v) => write!(f, "{v}"),
            Elem::Float(v) => write!(f, "{v}"),
        }
    }
}

/// Decode element `c` (exactly `t.size()` bytes).
fn elem(c: &[u8], t: NpyType, big: bool) -> std::result::Result<Elem, String> {
    macro_rules! num {
        ($ty:ty, $n:expr) => {{
            let a: [u8; $n] = c.try_into().map_err(|_| "short element".to_string())?;
            if big {
                <$ty>::from_be_bytes(a)
            } else {
                <$ty>::from_le_bytes(a)
            }
        }};
    }
    Ok(match t {
        NpyType::F32 => Elem::Float(num!(f32, 4) as f64),
        NpyType::F64 => Elem::Float(num!(f64, 8)),
        NpyType::I8 => Elem::Int(c[0] as i8 as i128),
        NpyType::U8 => Elem::Int(c[0] as i128),
        NpyType::I16 => Elem::Int(num!(i16, 2) as i128),
        NpyType::U16 => Elem::Int(num!(u16, 2) as i128),
        NpyType::I32 => Elem::Int(num!(i32, 4) as i128),
        NpyType::U32 => Elem::Int(num!(u32, 4) as i128),
        NpyType::I64 => Elem::Int(num!(i64, 8) as i128),
        NpyType::U64 => Elem::Int(num!(u64, 8) as i128),
        NpyType::Bool => match c[0] {
            0 | 1 => Elem::Int(c[0] as i128),
            b => return Err(format!("bool byte {b} is neither 0 nor 1")),
        },
    })
}

/// Largest integer magnitude float32 holds exactly.
const F32_EXACT: i128 = 1 << 24;

fn to_f32(e: Elem) -> std::result::Result<f32, String> {
    match e {
        Elem::Int(v) if v.abs() <= F32_EXACT => Ok(v as f32),
        Elem::Int(v) => Err(format!("{v} cannot be stored as float32 without changing it (beyond ±2^24)")),
        Elem::Float(v) if v.is_finite() && v.abs() > f32::MAX as f64 => Err(format!("{v} is beyond the float32 range")),
        Elem::Float(v) => Ok(v as f32),
    }
}

fn to_i64(e: Elem) -> std::result::Result<i64, String> {
    match e {
        Elem::Int(v) => i64::try_from(v).map_err(|_| format!("{v} is beyond the int64 range")),
        Elem::Float(v) if v.is_finite() && v.fract() == 0.0 && v.abs() < 9.2e18 => Ok(v as i64),
        Elem::Float(v) => Err(format!("{v} is not a whole number")),
    }
}

/// A parsed `.npy` header.
#[derive(Clone, Debug, PartialEq)]
pub struct NpyHeader {
    pub dtype: NpyType,
    /// Elements are stored big-endian (`>` in the descr).
    pub big_endian: bool,
    pub fortran_order: bool,
    pub shape: Vec<usize>,
    /// Byte offset of the data.
    pub data_offset: usize,
}

impl NpyHeader {
    /// The number of elements (saturating: a shape whose product overflows is never a real
    /// file, and saturation keeps every size comparison with it false).
    pub fn len(&self) -> usize {
        self.shape.iter().fold(1usize, |a, &d| a.saturating_mul(d))
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The dtype as NumPy spells it (`<i8`, `>f4`, `|b1`).
    pub fn descr(&self) -> String {
        let d = self.dtype.descr();
        if self.big_endian {
            d.replacen('<', ">", 1)
        } else {
            d.to_string()
        }
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
        let (dtype, big_endian) = NpyType::parse(descr)
            .ok_or_else(|| IoError::format(path, format!("unsupported dtype {descr:?} (supported: {SUPPORTED})")))?;
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
        Ok(NpyHeader { dtype, big_endian, fortran_order, shape, data_offset: start + hlen })
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

/// Read a whole `.npy` file as `f32` in C order (Fortran-ordered files are transposed). Any
/// supported dtype; a value that float32 cannot hold exactly (see the module doc) is refused
/// with its index.
pub fn read_npy(path: &Path, limits: &Limits) -> Result<NpyArray> {
    let (h, bytes) = read_checked(path, limits)?;
    let raw = &bytes[h.data_offset..];
    let data: Vec<f32> = match (h.dtype, h.big_endian) {
        // The common cases, which cannot fail, without the per-element checks.
        (NpyType::F32, false) => raw.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
        (NpyType::I16, false) => raw.chunks_exact(2).map(|c| i16::from_le_bytes([c[0], c[1]]) as f32).collect(),
        (NpyType::U8, _) => raw.iter().map(|&b| b as f32).collect(),
        _ => convert(path, &h, raw, to_f32, "float32")?,
    };
    let data = if h.fortran_order && h.shape.len() > 1 { fortran_to_c(&data, &h.shape) } else { data };
    Ok(NpyArray { shape: h.shape, data })
}

/// Read a whole `.npy` file of whole numbers (labels, indices) as `i64` in C order: any integer
/// or bool dtype, or floats that are all whole numbers. Returns (shape, values).
pub fn read_npy_i64(path: &Path, limits: &Limits) -> Result<(Vec<usize>, Vec<i64>)> {
    let (h, bytes) = read_checked(path, limits)?;
    let data = convert(path, &h, &bytes[h.data_offset..], to_i64, "int64")?;
    let data = if h.fortran_order && h.shape.len() > 1 { fortran_to_c(&data, &h.shape) } else { data };
    Ok((h.shape, data))
}

/// Read the file, parse the header, check the shape against `limits` and the data size.
fn read_checked(path: &Path, limits: &Limits) -> Result<(NpyHeader, Vec<u8>)> {
    let bytes = std::fs::read(path).map_err(|e| IoError::os(path, e))?;
    let h = NpyHeader::parse(&bytes, path)?;
    let n = limits.check(path, &h.shape)?;
    let need = n.checked_mul(h.dtype.size());
    let have = bytes.len() - h.data_offset;
    if need != Some(have) {
        return Err(IoError::format(
            path,
            format!(
                "data is {have} bytes but shape {:?} of {} needs {} (truncated or corrupt)",
                h.shape,
                h.descr(),
                need.map_or("more than fits in memory".to_string(), |n| n.to_string())
            ),
        ));
    }
    Ok((h, bytes))
}

/// Convert every element with `f`; the first failure is an error naming the file, the element
/// and the target type.
fn convert<T>(
    path: &Path,
    h: &NpyHeader,
    raw: &[u8],
    f: impl Fn(Elem) -> std::result::Result<T, String>,
    target: &str,
) -> Result<Vec<T>> {
    let size = h.dtype.size();
    let mut out = Vec::with_capacity(raw.len() / size);
    for (i, c) in raw.chunks_exact(size).enumerate() {
        let v = elem(c, h.dtype, h.big_endian).and_then(&f).map_err(|m| {
            IoError::format(path, format!("element {i} of this {} array cannot be read as {target}: {m}", h.descr()))
        })?;
        out.push(v);
    }
    Ok(out)
}

/// Reorder Fortran-ordered (first axis fastest) data to C order.
pub fn fortran_to_c<T: Copy>(data: &[T], shape: &[usize]) -> Vec<T> {
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
    encode_raw(dtype.descr(), fortran, &shape_txt, &[])
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

/// A `.npy` file of any dtype, built byte by byte as NumPy writes it: magic, version 1.0, the
/// header dict (`descr` such as `<i8` or `>f4`, the shape as a Python tuple literal such as
/// `(2, 3)`) padded with spaces to a multiple of 64 bytes and ended by a newline, then `data` as
/// given. For tests and tools that need files in the dtypes NumPy writes ([`NpyArray::write`]
/// writes f32 only).
pub fn encode_raw(descr: &str, fortran: bool, shape: &str, data: &[u8]) -> Vec<u8> {
    let f = if fortran { "True" } else { "False" };
    let mut dict = format!("{{'descr': '{descr}', 'fortran_order': {f}, 'shape': {shape}, }}");
    // Pad so that the data starts at a multiple of 64 bytes (version 1.0 header: 10 bytes).
    while !(10 + dict.len() + 1).is_multiple_of(64) {
        dict.push(' ');
    }
    dict.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(dict.len() as u16).to_le_bytes());
    out.extend_from_slice(dict.as_bytes());
    out.extend_from_slice(data);
    out
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

    fn bytes_of<const N: usize>(v: impl IntoIterator<Item = [u8; N]>) -> Vec<u8> {
        v.into_iter().flatten().collect()
    }

    /// Issue 21 item 10: every dtype NumPy writes for these arrays is read, NumPy's default
    /// int64 included (it was refused as "unsupported dtype").
    #[test]
    fn every_numpy_dtype_reads() {
        let d = std::env::temp_dir().join(format!("text2ct-npy-dtypes-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let lim = Limits::default();
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("<i8", bytes_of([1i64, -2, 3].map(i64::to_le_bytes))),
            (">i8", bytes_of([1i64, -2, 3].map(i64::to_be_bytes))),
            ("<i4", bytes_of([1i32, -2, 3].map(i32::to_le_bytes))),
            (">i4", bytes_of([1i32, -2, 3].map(i32::to_be_bytes))),
            (">i2", bytes_of([1i16, -2, 3].map(i16::to_be_bytes))),
            ("|i1", vec![1, (-2i8) as u8, 3]),
            ("<f4", bytes_of([1f32, -2.0, 3.0].map(f32::to_le_bytes))),
            (">f4", bytes_of([1f32, -2.0, 3.0].map(f32::to_be_bytes))),
            ("<f8", bytes_of([1f64, -2.0, 3.0].map(f64::to_le_bytes))),
            (">f8", bytes_of([1f64, -2.0, 3.0].map(f64::to_be_bytes))),
        ];
        for (descr, body) in &cases {
            let p = d.join("a.npy");
            std::fs::write(&p, encode_raw(descr, false, "(3,)", body)).unwrap();
            let a = read_npy(&p, &lim).unwrap_or_else(|e| panic!("{descr}: {e}"));
            assert_eq!(
                (a.shape.as_slice(), a.data.as_slice()),
                ([3usize].as_slice(), [1.0, -2.0, 3.0].as_slice()),
                "{descr}"
            );
            let (shape, v) = read_npy_i64(&p, &lim).unwrap_or_else(|e| panic!("{descr}: {e}"));
            assert_eq!((shape, v), (vec![3], vec![1, -2, 3]), "{descr}");
        }
        let unsigned: Vec<(&str, Vec<u8>)> = vec![
            ("<u2", bytes_of([7u16, 0, 65535].map(u16::to_le_bytes))),
            (">u2", bytes_of([7u16, 0, 65535].map(u16::to_be_bytes))),
            ("<u4", bytes_of([7u32, 0, 65535].map(u32::to_le_bytes))),
            ("<u8", bytes_of([7u64, 0, 65535].map(u64::to_le_bytes))),
        ];
        for (descr, body) in &unsigned {
            let p = d.join("u.npy");
            std::fs::write(&p, encode_raw(descr, false, "(3,)", body)).unwrap();
            assert_eq!(read_npy(&p, &lim).unwrap().data, [7.0, 0.0, 65535.0], "{descr}");
            assert_eq!(read_npy_i64(&p, &lim).unwrap().1, [7, 0, 65535], "{descr}");
        }
        // Bool; `np.save("labels.npy", np.array([1]))` (int64, shape (1,)).
        let p = d.join("b.npy");
        std::fs::write(&p, encode_raw("|b1", false, "(2, 2)", &[1, 0, 0, 1])).unwrap();
        assert_eq!(read_npy(&p, &lim).unwrap().data, [1.0, 0.0, 0.0, 1.0]);
        let p = d.join("labels.npy");
        std::fs::write(&p, encode_raw("<i8", false, "(1,)", &1i64.to_le_bytes())).unwrap();
        assert_eq!(read_npy_i64(&p, &lim).unwrap(), (vec![1], vec![1]));
        // Fortran-ordered int64 (2 x 3): element (i, j) at i + 2 * j.
        let p = d.join("f.npy");
        std::fs::write(
            &p,
            encode_raw("<i8", true, "(2, 3)", &bytes_of([0i64, 1, 10, 11, 20, 21].map(i64::to_le_bytes))),
        )
        .unwrap();
        assert_eq!(read_npy_i64(&p, &lim).unwrap().1, [0, 10, 20, 1, 11, 21]);
        assert_eq!(read_npy(&p, &lim).unwrap().data, [0.0, 10.0, 20.0, 1.0, 11.0, 21.0]);
        std::fs::remove_dir_all(&d).ok();
    }

    /// Conversions that would change a value are refused, naming the file and the element.
    #[test]
    fn lossy_conversions_are_refused() {
        let d = std::env::temp_dir().join(format!("text2ct-npy-lossy-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let lim = Limits::default();
        let p = d.join("big.npy");
        let err = |descr: &str, body: &[u8], int: bool| {
            // 8-byte elements
            std::fs::write(&p, encode_raw(descr, false, &format!("({},)", body.len() / 8), body)).unwrap();
            let e = if int { read_npy_i64(&p, &lim).map(|_| ()) } else { read_npy(&p, &lim).map(|_| ()) };
            e.unwrap_err().to_string()
        };
        // int64 2^40 + 1 is not a float32; as int64 it is read exactly.
        let big = bytes_of([0i64, (1 << 40) + 1].map(i64::to_le_bytes));
        let e = err("<i8", &big, false);
        assert!(e.contains("big.npy") && e.contains("element 1") && e.contains("1099511627777"), "{e}");
        std::fs::write(&p, encode_raw("<i8", false, "(2,)", &big)).unwrap();
        assert_eq!(read_npy_i64(&p, &lim).unwrap().1, [0, (1 << 40) + 1]);
        // uint64 beyond int64, float64 beyond float32, a fraction as an integer, NaN as an integer.
        let e = err("<u8", &u64::MAX.to_le_bytes(), true);
        assert!(e.contains("big.npy") && e.contains("beyond the int64 range"), "{e}");
        let e = err("<f8", &1e300f64.to_le_bytes(), false);
        assert!(e.contains("beyond the float32 range"), "{e}");
        let e = err("<f8", &1.5f64.to_le_bytes(), true);
        assert!(e.contains("not a whole number"), "{e}");
        let e = err("<f8", &f64::NAN.to_le_bytes(), true);
        assert!(e.contains("not a whole number"), "{e}");
        // A bool byte that is neither 0 nor 1.
        std::fs::write(&p, encode_raw("|b1", false, "(2,)", &[1, 7])).unwrap();
        let e = read_npy(&p, &lim).unwrap_err().to_string();
        assert!(e.contains("element 1") && e.contains("bool byte 7"), "{e}");
        // Byte orders that do not exist for the type, and big-endian sizes in the message.
        std::fs::write(&p, encode_raw("|f4", false, "(1,)", &[0; 4])).unwrap();
        assert!(read_npy(&p, &lim).unwrap_err().to_string().contains("unsupported dtype \"|f4\""));
        std::fs::write(&p, encode_raw(">f8", false, "(2,)", &[0; 12])).unwrap();
        let e = read_npy(&p, &lim).unwrap_err().to_string();
        assert!(e.contains(">f8") && e.contains("needs 16"), "{e}");
        std::fs::remove_dir_all(&d).ok();
    }
}
