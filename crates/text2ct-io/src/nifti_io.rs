//! NIfTI-1 reading and writing (`.nii`, `.nii.gz`).
//!
//! Header parsing (both byte orders, magic check) uses the `nifti` crate; the voxel data is
//! read here so that the allocation is bounded by [`Limits`] *before* it happens, a truncated
//! file is reported with how many bytes were missing, and `scl_slope`/`scl_inter` are applied
//! exactly once. Writing goes through the `nifti` crate's writer into a temporary file that is
//! renamed into place (atomic).
//!
//! Geometry on read follows the NIfTI standard and nibabel: the sform when `sform_code > 0`,
//! else the qform when `qform_code > 0`, else `diag(pixdim)`. On write both qform and sform are
//! set to the volume's affine (same code, 1 = scanner or 2 = aligned), `pixdim` to the voxel
//! sizes (with `pixdim[0]` = qfac) and `xyzt_units` to millimetres.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use flate2::read::MultiGzDecoder;
use nifti::{Endianness, NiftiHeader, NiftiType};

use crate::error::{atomic_write, IoError, Limits, Result};
use crate::geometry::{Affine, Quaternion};
use crate::volume::Volume;

/// Storage type of a NIfTI file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    U8,
    I8,
    I16,
    U16,
    I32,
    F32,
    F64,
}

impl DType {
    fn from_code(code: i16) -> Option<DType> {
        Some(match code {
            2 => DType::U8,
            256 => DType::I8,
            4 => DType::I16,
            512 => DType::U16,
            8 => DType::I32,
            16 => DType::F32,
            64 => DType::F64,
            _ => return None,
        })
    }
    fn nifti_type(self) -> NiftiType {
        match self {
            DType::U8 => NiftiType::Uint8,
            DType::I8 => NiftiType::Int8,
            DType::I16 => NiftiType::Int16,
            DType::U16 => NiftiType::Uint16,
            DType::I32 => NiftiType::Int32,
            DType::F32 => NiftiType::Float32,
            DType::F64 => NiftiType::Float64,
        }
    }
    pub fn size(self) -> usize {
        match self {
            DType::U8 | DType::I8 => 1,
            DType::I16 | DType::U16 => 2,
            DType::I32 | DType::F32 => 4,
            DType::F64 => 8,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            DType::U8 => "uint8",
            DType::I8 => "int8",
            DType::I16 => "int16",
            DType::U16 => "uint16",
            DType::I32 => "int32",
            DType::F32 => "float32",
            DType::F64 => "float64",
        }
    }
}

/// What a NIfTI header said, besides the voxels and the affine.
#[derive(Clone, Debug, serde::Serialize)]
pub struct NiftiInfo {
    pub dtype: DType,
    /// `scl_slope`, `scl_inter` as stored (slope 0 or NaN means "no scaling").
    pub scl_slope: f32,
    pub scl_inter: f32,
    /// Whether a scaling other than identity was applied on read.
    pub scaled: bool,
    pub qform_code: i16,
    pub sform_code: i16,
    /// Which transform gave the affine: "sform", "qform" or "pixdim".
    pub affine_source: &'static str,
    pub pixdim: [f32; 4],
    pub xyzt_units: u8,
    pub descrip: String,
    pub gzipped: bool,
    pub big_endian: bool,
}

/// Read a 3D NIfTI-1 volume (4D with one time point is accepted). Values are converted to
/// `f32` after `scl_slope`/`scl_inter`.
pub fn read_nifti(path: &Path, limits: &Limits) -> Result<(Volume, NiftiInfo)> {
    let file = File::open(path).map_err(|e| IoError::os(path, e))?;
    let mut raw = BufReader::new(file);
    let mut magic = [0u8; 2];
    let gzipped = {
        let buf = std::io::BufRead::fill_buf(&mut raw).map_err(|e| IoError::os(path, e))?;
        if buf.len() >= 2 {
            magic.copy_from_slice(&buf[..2]);
        }
        magic == [0x1f, 0x8b]
    };
    let mut reader: Box<dyn Read> = if gzipped { Box::new(MultiGzDecoder::new(raw)) } else { Box::new(raw) };
    let stream_err = |e: std::io::Error, what: &str| -> IoError {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            IoError::format(path, format!("file is truncated: it ends inside the {what}"))
        } else if gzipped {
            IoError::format(path, format!("corrupt gzip stream while reading the {what}: {e}"))
        } else {
            IoError::os(path, e)
        }
    };

    let mut hbytes = [0u8; 348];
    reader.read_exact(&mut hbytes).map_err(|e| stream_err(e, "348-byte header"))?;
    let sizeof_le = i32::from_le_bytes([hbytes[0], hbytes[1], hbytes[2], hbytes[3]]);
    let sizeof_be = i32::from_be_bytes([hbytes[0], hbytes[1], hbytes[2], hbytes[3]]);
    if sizeof_le == 540 || sizeof_be == 540 {
        return Err(IoError::format(path, "NIfTI-2 files are not supported (only NIfTI-1)"));
    }
    if sizeof_le != 348 && sizeof_be != 348 {
        return Err(IoError::format(path, format!("not a NIfTI-1 file: sizeof_hdr is {sizeof_le}, expected 348")));
    }
    let hdr = NiftiHeader::from_reader(&hbytes[..]).map_err(|e| IoError::format(path, format!("bad header: {e}")))?;
    if &hdr.magic != b"n+1\0" && &hdr.magic != b"ni1\0" {
        return Err(IoError::format(path, format!("wrong magic {:?}, expected \"n+1\"", hdr.magic)));
    }
    if &hdr.magic == b"ni1\0" {
        return Err(IoError::format(path, "header/image pairs (.hdr/.img) are not supported; use a single .nii"));
    }
    // dim[] as the file stores it (signed, in the byte order sizeof_hdr shows), checked before
    // the nifti crate's values are used: that crate takes a dim[0] outside 1..7 as a sign of the
    // other byte order and swaps it (9 would be reported as 2304), and reads dim[] unsigned (-1
    // would become 65535 and be reported as a truncated file).
    let little = sizeof_le == 348;
    let raw_dim: [i16; 8] = std::array::from_fn(|i| {
        let b = [hbytes[40 + 2 * i], hbytes[41 + 2 * i]];
        if little {
            i16::from_le_bytes(b)
        } else {
            i16::from_be_bytes(b)
        }
    });
    if !(1..=7).contains(&raw_dim[0]) {
        return Err(IoError::format(path, format!("dim[0] = {} is not in 1..7", raw_dim[0])));
    }
    if let Some(i) = (1..=raw_dim[0] as usize).find(|&i| raw_dim[i] < 0) {
        return Err(IoError::format(
            path,
            format!("negative dimension: dim[{i}] = {} (dim = {:?})", raw_dim[i], &raw_dim[..=raw_dim[0] as usize]),
        ));
    }
    let ndim = raw_dim[0] as usize;
    let mut dims = [1usize; 3];
    for (i, d) in dims.iter_mut().enumerate().take(ndim.min(3)) {
        *d = hdr.dim[i + 1] as usize;
    }
    if dims.contains(&0) {
        return Err(IoError::format(path, format!("header has a zero dimension: dim = {:?}", &hdr.dim[..=ndim])));
    }
    if ndim > 3 && hdr.dim[4..=ndim].iter().any(|&d| d > 1) {
        return Err(IoError::format(
            path,
            format!("a 3D volume was expected, the header says dim = {:?}", &hdr.dim[..=ndim]),
        ));
    }
    let dtype = DType::from_code(hdr.datatype).ok_or_else(|| {
        IoError::format(
            path,
            format!(
                "unsupported datatype code {} (supported: uint8, int8, int16, uint16, int32, float32, float64)",
                hdr.datatype
            ),
        )
    })?;
    if hdr.bitpix as usize != dtype.size() * 8 {
        return Err(IoError::format(path, format!("bitpix {} does not match datatype {}", hdr.bitpix, dtype.name())));
    }
    for (i, p) in hdr.pixdim[1..=3].iter().enumerate() {
        if !p.is_finite() || *p <= 0.0 {
            return Err(IoError::format(path, format!("voxel size pixdim[{}] = {p} is not a positive number", i + 1)));
        }
    }
    let n = limits.check(path, &dims)?;
    let nbytes = n.checked_mul(dtype.size()).ok_or_else(|| IoError::format(path, "data size overflows"))?;

    // Skip extensions up to vox_offset.
    let vox_offset = hdr.vox_offset;
    if !vox_offset.is_finite() || vox_offset < 348.0 || vox_offset > (1u64 << 30) as f32 {
        return Err(IoError::format(path, format!("vox_offset {vox_offset} is not valid")));
    }
    let skip = vox_offset as u64 - 348;
    let skipped = std::io::copy(&mut (&mut reader).take(skip), &mut std::io::sink())
        .map_err(|e| stream_err(e, "header extensions"))?;
    if skipped != skip {
        return Err(IoError::format(path, "file is truncated: it ends before the voxel data starts"));
    }
    let mut bytes = vec![0u8; nbytes];
    let mut filled = 0;
    while filled < nbytes {
        match reader.read(&mut bytes[filled..]) {
            Ok(0) => {
                return Err(IoError::format(
                    path,
                    format!(
                        "file is truncated: voxel data has {filled} of {nbytes} bytes ({:.1}% missing)",
                        100.0 * (nbytes - filled) as f64 / nbytes as f64
                    ),
                ))
            }
            Ok(k) => filled += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(stream_err(e, "voxel data")),
        }
    }
    let big = hdr.endianness == Endianness::Big;
    let mut data = decode(&bytes, dtype, big);
    drop(bytes);

    let slope_valid = hdr.scl_slope.is_finite() && hdr.scl_slope != 0.0;
    let scaled = slope_valid && (hdr.scl_slope != 1.0 || (hdr.scl_inter.is_finite() && hdr.scl_inter != 0.0));
    if scaled {
        let (s, b) = (hdr.scl_slope, if hdr.scl_inter.is_finite() { hdr.scl_inter } else { 0.0 });
        for v in data.iter_mut() {
            *v = *v * s + b;
        }
    }

    let (affine, affine_source) = header_affine(&hdr).map_err(|e| e.at(path))?;
    let descrip = String::from_utf8_lossy(&hdr.descrip).trim_end_matches('\0').trim().to_string();
    let info = NiftiInfo {
        dtype,
        scl_slope: hdr.scl_slope,
        scl_inter: hdr.scl_inter,
        scaled,
        qform_code: hdr.qform_code,
        sform_code: hdr.sform_code,
        affine_source,
        pixdim: [hdr.pixdim[0], hdr.pixdim[1], hdr.pixdim[2], hdr.pixdim[3]],
        xyzt_units: hdr.xyzt_units,
        descrip,
        gzipped,
        big_endian: big,
    };
    let vol = Volume::new(dims, data, affine).map_err(|e| e.at(path))?;
    Ok((vol, info))
}

fn decode(bytes: &[u8], dtype: DType, big: bool) -> Vec<f32> {
    macro_rules! conv {
        ($t:ty, $n:expr) => {
            bytes
                .chunks_exact($n)
                .map(|c| {
                    let arr: [u8; $n] = c.try_into().unwrap();
                    (if big { <$t>::from_be_bytes(arr) } else { <$t>::from_le_bytes(arr) }) as f32
                })
                .collect()
        };
    }
    match dtype {
        DType::U8 => bytes.iter().map(|&b| b as f32).collect(),
        DType::I8 => bytes.iter().map(|&b| b as i8 as f32).collect(),
        DType::I16 => conv!(i16, 2),
        DType::U16 => conv!(u16, 2),
        DType::I32 => conv!(i32, 4),
        DType::F32 => conv!(f32, 4),
        DType::F64 => conv!(f64, 8),
    }
}

fn header_affine(hdr: &NiftiHeader) -> Result<(Affine, &'static str)> {
    if hdr.sform_code > 0 {
        let mut m = Affine::identity();
        for (r, row) in [hdr.srow_x, hdr.srow_y, hdr.srow_z].iter().enumerate() {
            for c in 0..4 {
                m.0[r][c] = row[c] as f64;
            }
        }
        m.validate().map_err(|e| IoError::invalid(format!("sform is not usable: {e}")))?;
        return Ok((m, "sform"));
    }
    let pixdim = [hdr.pixdim[1] as f64, hdr.pixdim[2] as f64, hdr.pixdim[3] as f64];
    if hdr.qform_code > 0 {
        let q = Quaternion {
            b: hdr.quatern_b as f64,
            c: hdr.quatern_c as f64,
            d: hdr.quatern_d as f64,
            qfac: if hdr.pixdim[0] < 0.0 { -1.0 } else { 1.0 },
            offset: [hdr.quatern_x as f64, hdr.quatern_y as f64, hdr.quatern_z as f64],
            pixdim,
        };
        return Ok((Affine::from_quaternion(&q)?, "qform"));
    }
    Ok((Affine::from_spacing_origin(pixdim, [0.0; 3])?, "pixdim"))
}

/// How to write a NIfTI file.
#[derive(Clone, Debug)]
pub struct WriteOptions {
    pub dtype: DType,
    /// qform/sform code: 1 = scanner anatomical, 2 = aligned anatomical.
    pub xform_code: i16,
    /// Up to 79 ASCII characters stored in `descrip` (e.g. the seed of a generated volume).
    pub descrip: String,
}

impl WriteOptions {
    /// int16 Hounsfield units, scanner coordinates: the format of every CT text2ct writes.
    pub fn ct_hu() -> Self {
        WriteOptions { dtype: DType::I16, xform_code: 1, descrip: String::new() }
    }
    pub fn with_descrip(mut self, d: impl Into<String>) -> Self {
        self.descrip = d.into();
        self
    }
}

/// Write a volume as NIfTI-1 (`.nii` or `.nii.gz` by the file name), atomically. Integer types
/// round to nearest and saturate at the type's range; NaN voxels are refused.
pub fn write_nifti(path: &Path, vol: &Volume, opts: &WriteOptions) -> Result<()> {
    let name = path.to_string_lossy();
    let gz = name.ends_with(".nii.gz");
    if !gz && !name.ends_with(".nii") {
        return Err(IoError::invalid(format!("{}: NIfTI output must end in .nii or .nii.gz", path.display())));
    }
    if !(1..=4).contains(&opts.xform_code) {
        return Err(IoError::invalid(format!("xform code {} is not in 1..4", opts.xform_code)));
    }
    vol.check_finite().map_err(|e| e.at(path))?;
    let hdr = make_header(vol, opts)?;
    let [nx, ny, nz] = vol.dims();
    atomic_write(path, |tmp| {
        // The nifti writer picks compression from the extension; keep it on the temp name.
        let w = nifti::writer::WriterOptions::new(tmp).reference_header(&hdr).compress(gz);
        let res = match opts.dtype {
            DType::F32 => w.write_nifti(&c_view(vol.data().to_vec(), nx, ny, nz)),
            DType::F64 => w.write_nifti(&c_view(vol.data().iter().map(|&v| v as f64).collect(), nx, ny, nz)),
            DType::I16 => w.write_nifti(&c_view(sat::<i16>(vol.data()), nx, ny, nz)),
            DType::U16 => w.write_nifti(&c_view(sat::<u16>(vol.data()), nx, ny, nz)),
            DType::I32 => w.write_nifti(&c_view(sat::<i32>(vol.data()), nx, ny, nz)),
            DType::U8 => w.write_nifti(&c_view(sat::<u8>(vol.data()), nx, ny, nz)),
            DType::I8 => w.write_nifti(&c_view(sat::<i8>(vol.data()), nx, ny, nz)),
        };
        res.map_err(|e| match e {
            // The OS error itself ("Permission denied (os error 13)"), at the file asked for.
            nifti::NiftiError::Io(e) => IoError::os(path, e),
            e => IoError::format(path, format!("writing NIfTI failed: {e}")),
        })
    })
}

/// Our data is x-fastest; as a C-order array of shape (nz, ny, nx) it is the same memory.
/// Reversing the axes gives the (nx, ny, nz) view the nifti writer expects.
fn c_view<T: Clone>(data: Vec<T>, nx: usize, ny: usize, nz: usize) -> ndarray::Array3<T> {
    ndarray::Array3::from_shape_vec((nz, ny, nx), data).expect("length checked by Volume").reversed_axes()
}

trait Saturate: Copy {
    fn sat(v: f32) -> Self;
}
macro_rules! saturate {
    ($($t:ty),*) => {$(
        impl Saturate for $t {
            fn sat(v: f32) -> Self {
                v.round().clamp(<$t>::MIN as f32, <$t>::MAX as f32) as $t
            }
        }
    )*};
}
saturate!(u8, i8, i16, u16, i32);

fn sat<T: Saturate>(data: &[f32]) -> Vec<T> {
    data.iter().map(|&v| T::sat(v)).collect()
}

fn make_header(vol: &Volume, opts: &WriteOptions) -> Result<NiftiHeader> {
    let a = vol.affine();
    let q = a.to_quaternion();
    let sp = vol.spacing();
    let mut h = NiftiHeader {
        pixdim: [q.qfac as f32, sp[0] as f32, sp[1] as f32, sp[2] as f32, 1.0, 1.0, 1.0, 1.0],
        xyzt_units: 2, // NIFTI_UNITS_MM
        qform_code: opts.xform_code,
        sform_code: opts.xform_code,
        quatern_b: q.b as f32,
        quatern_c: q.c as f32,
        quatern_d: q.d as f32,
        quatern_x: q.offset[0] as f32,
        quatern_y: q.offset[1] as f32,
        quatern_z: q.offset[2] as f32,
        srow_x: [a.0[0][0] as f32, a.0[0][1] as f32, a.0[0][2] as f32, a.0[0][3] as f32],
        srow_y: [a.0[1][0] as f32, a.0[1][1] as f32, a.0[1][2] as f32, a.0[1][3] as f32],
        srow_z: [a.0[2][0] as f32, a.0[2][1] as f32, a.0[2][2] as f32, a.0[2][3] as f32],
        endianness: Endianness::Little,
        ..NiftiHeader::default()
    };
    if opts.dtype == DType::I16 {
        h.cal_min = -1024.0;
        h.cal_max = 3071.0;
    }
    let mut d: Vec<u8> = opts.descrip.bytes().filter(|b| b.is_ascii() && *b != 0).take(79).collect();
    d.resize(80, 0);
    h.descrip = d;
    let _ = opts.dtype.nifti_type();
    Ok(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("text2ct-nifti-{}-{}", name, std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn oblique_volume() -> Volume {
        let (s, c) = 0.3f64.sin_cos();
        let dir = [[-c, s, 0.0], [-s, -c, 0.0], [0.0, 0.0, 1.0]];
        let a = Affine::from_parts(dir, [0.7, 0.8, 2.5], [120.0, -80.5, 33.0]).unwrap();
        Volume::from_fn([5, 4, 3], a, |x, y, z| (x as f32) * 100.0 - (y as f32) * 7.0 + z as f32 * 1000.0 - 1000.0)
            .unwrap()
    }

    #[test]
    fn round_trip_every_dtype_and_compression() {
        let d = tmpdir("rt");
        let vol = oblique_volume();
        for dtype in [DType::I16, DType::F32, DType::F64, DType::I32] {
            for ext in ["nii", "nii.gz"] {
                let p = d.join(format!("v_{}.{ext}", dtype.name()));
                write_nifti(&p, &vol, &WriteOptions { dtype, xform_code: 2, descrip: "seed=7".into() }).unwrap();
                let (back, info) = read_nifti(&p, &Limits::default()).unwrap();
                assert_eq!(back.dims(), vol.dims());
                assert_eq!(back.data(), vol.data(), "{dtype:?} {ext}");
                assert!(back.affine().max_abs_diff(vol.affine()) < 1e-4, "{:?}", back.affine());
                assert_eq!(info.dtype, dtype);
                assert_eq!((info.qform_code, info.sform_code), (2, 2));
                assert_eq!(info.xyzt_units & 7, 2);
                assert_eq!(info.descrip, "seed=7");
                assert_eq!(info.gzipped, ext == "nii.gz");
                assert_eq!(back.orientation(), vol.orientation());
            }
        }
        // uint8 saturates.
        let p = d.join("u8.nii");
        write_nifti(&p, &vol, &WriteOptions { dtype: DType::U8, xform_code: 1, descrip: String::new() }).unwrap();
        let (back, _) = read_nifti(&p, &Limits::default()).unwrap();
        for (a, b) in back.data().iter().zip(vol.data()) {
            assert_eq!(*a, b.clamp(0.0, 255.0));
        }
    }

    /// Patch raw header bytes of an uncompressed file.
    fn patch(p: &Path, at: usize, bytes: &[u8]) {
        let mut v = std::fs::read(p).unwrap();
        v[at..at + bytes.len()].copy_from_slice(bytes);
        std::fs::write(p, v).unwrap();
    }

    #[test]
    fn scaling_and_qform_only() {
        let d = tmpdir("scl");
        let vol = oblique_volume();
        let p = d.join("s.nii");
        write_nifti(&p, &vol, &WriteOptions::ct_hu()).unwrap();
        // scl_slope at byte 112, scl_inter at 116.
        patch(&p, 112, &2.0f32.to_le_bytes());
        patch(&p, 116, &(-1024.0f32).to_le_bytes());
        // sform_code (byte 254) = 0: the qform must give the same geometry.
        patch(&p, 254, &0i16.to_le_bytes());
        let (back, info) = read_nifti(&p, &Limits::default()).unwrap();
        assert!(info.scaled);
        assert_eq!(info.affine_source, "qform");
        assert!(back.affine().max_abs_diff(vol.affine()) < 1e-4);
        for (a, b) in back.data().iter().zip(vol.data()) {
            assert_eq!(*a, b * 2.0 - 1024.0);
        }
        // Neither form: pixdim diagonal.
        patch(&p, 252, &0i16.to_le_bytes());
        let (back, info) = read_nifti(&p, &Limits::default()).unwrap();
        assert_eq!(info.affine_source, "pixdim");
        let sp = back.spacing();
        assert!((sp[0] - 0.7).abs() < 1e-6 && (sp[2] - 2.5).abs() < 1e-6);
    }

    #[test]
    fn bad_inputs_give_clear_errors() {
        let d = tmpdir("bad");
        let vol = oblique_volume();
        let good = d.join("g.nii");
        write_nifti(&good, &vol, &WriteOptions::ct_hu()).unwrap();
        let bytes = std::fs::read(&good).unwrap();

        let check = |name: &str, content: &[u8], want: &str| {
            let p = d.join(name);
            std::fs::write(&p, content).unwrap();
            let e = read_nifti(&p, &Limits::default()).unwrap_err().to_string();
            assert!(e.contains(want), "{name}: {e}");
            assert!(e.contains(name), "error must name the file: {e}");
        };
        check("trunc.nii", &bytes[..bytes.len() - 10], "truncated");
        check("short.nii", &bytes[..100], "truncated");
        let mut m = bytes.clone();
        m[344..348].copy_from_slice(b"xyz\0");
        check("magic.nii", &m, "magic");
        let mut m = bytes.clone();
        m[0..4].copy_from_slice(&123i32.to_le_bytes());
        check("sizeof.nii", &m, "not a NIfTI-1");
        // Absurd dimensions: 30000^3.
        let mut m = bytes.clone();
        for i in 0..3 {
            m[42 + 2 * i..44 + 2 * i].copy_from_slice(&30000u16.to_le_bytes());
        }
        check("huge.nii", &m, "limit");
        // dim[0] out of range is printed as the file has it (not byte-swapped: 9, not 2304).
        let mut m = bytes.clone();
        m[40..42].copy_from_slice(&9i16.to_le_bytes());
        check("dim0.nii", &m, "dim[0] = 9 is not in 1..7");
        m[40..42].copy_from_slice(&(-3i16).to_le_bytes());
        check("dim0neg.nii", &m, "dim[0] = -3 is not in 1..7");
        // A negative dimension is said to be one, not reported as a truncated file.
        let mut m = bytes.clone();
        m[44..46].copy_from_slice(&(-1i16).to_le_bytes());
        check("negdim.nii", &m, "negative dimension: dim[2] = -1");
        // The same in a big-endian header.
        let mut be = bytes.clone();
        be[0..4].copy_from_slice(&348i32.to_be_bytes());
        be[40..42].copy_from_slice(&9i16.to_be_bytes());
        check("dim0be.nii", &be, "dim[0] = 9 is not in 1..7");
        // Zero spacing.
        let mut m = bytes.clone();
        m[80..84].copy_from_slice(&0.0f32.to_le_bytes());
        check("zerosp.nii", &m, "pixdim[1]");
        let mut m = bytes.clone();
        m[84..88].copy_from_slice(&(-1.0f32).to_le_bytes());
        check("negsp.nii", &m, "pixdim[2]");
        // A corrupt gzip stream.
        let gz = d.join("g.nii.gz");
        write_nifti(&gz, &vol, &WriteOptions::ct_hu()).unwrap();
        let mut g = std::fs::read(&gz).unwrap();
        let mid = g.len() / 2;
        for b in &mut g[mid..mid + 8] {
            *b ^= 0x5a;
        }
        let p = d.join("corrupt.nii.gz");
        std::fs::write(&p, &g).unwrap();
        assert!(read_nifti(&p, &Limits::default()).is_err());
        let g = std::fs::read(&gz).unwrap();
        check("trunc.nii.gz", &g[..g.len() / 2], "truncated");
        // NaN voxels cannot be written.
        let mut bad = vol.clone();
        bad.data_mut()[3] = f32::NAN;
        let e = write_nifti(&d.join("nan.nii"), &bad, &WriteOptions::ct_hu()).unwrap_err().to_string();
        assert!(e.contains("non-finite"), "{e}");
        assert!(!d.join("nan.nii").exists());
    }

    /// Files written by nibabel (fixtures/gen_nifti_fixtures.py): we must read the same affine
    /// and the same scaled values nibabel reads.
    #[test]
    fn nibabel_written_files_read_identically() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/nifti");
        let exp: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
        let cases = exp["cases"].as_object().unwrap();
        assert_eq!(cases.len(), 7);
        for (name, case) in cases {
            let (vol, info) = read_nifti(&dir.join(name), &Limits::default()).unwrap();
            let shape: Vec<usize> =
                case["shape"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
            assert_eq!(vol.dims().to_vec(), shape, "{name}");
            let a: Vec<f64> = case["affine"]
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|r| r.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()))
                .collect();
            for r in 0..4 {
                for c in 0..4 {
                    assert!(
                        (vol.affine().0[r][c] - a[4 * r + c]).abs() < 1e-4,
                        "{name} affine[{r}][{c}]: {:?}",
                        vol.affine()
                    );
                }
            }
            let vals: Vec<f64> = case["values"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
            for (i, (g, w)) in vol.data().iter().zip(&vals).enumerate() {
                assert!((*g as f64 - w).abs() <= 1e-5 * w.abs().max(1.0), "{name} voxel {i}: {g} vs {w}");
            }
            assert_eq!(vol.orientation(), case["axcodes"].as_str().unwrap(), "{name}");
            assert_eq!(info.big_endian, name.contains("big_endian"));
        }
    }
}
