//! DICOM CT series reading: a directory of single-frame slices becomes one [`Volume`].
//!
//! - Slices are grouped by SeriesInstanceUID; a folder with several series is refused with a
//!   list of them unless one is chosen.
//! - Slices are sorted by their ImagePositionPatient projected on the slice normal
//!   (the cross product of the two ImageOrientationPatient vectors).
//! - The in-plane spacing comes from PixelSpacing, the slice spacing from the slice positions
//!   (never from SliceThickness, which is the reconstructed thickness, not the distance).
//! - RescaleSlope / RescaleIntercept are applied per slice, so the volume is in HU; a slope of
//!   0 (or one that is not a finite number) is refused, as it would flatten the series.
//! - Objects without pixel data that are not image slices (structured reports, presentation
//!   states, ...) are skipped and listed in [`DicomInfo::skipped`]; a file that starts like DICOM
//!   but cannot be read (e.g. a truncated slice) refuses the series and is named, rather than
//!   being dropped and leaving a gap blamed on its neighbour. A real gap names the two slices
//!   around it.
//! - Multi-frame objects (NumberOfFrames > 1) are refused, with the size check first.
//! - DICOM's world is LPS+; the affine is converted to NIfTI's RAS+ by negating x and y.
//!
//! Only uncompressed transfer syntaxes are read (explicit/implicit VR little endian and
//! explicit big endian); compressed series are refused with a message saying so.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use dicom_dictionary_std::tags;
use dicom_object::{open_file, DefaultDicomObject, Tag};

use crate::error::{IoError, Limits, Result};
use crate::geometry::Affine;
use crate::volume::Volume;

/// A series found in a folder.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SeriesSummary {
    pub series_uid: String,
    pub description: String,
    pub slices: usize,
}

/// Files passed over in a folder, each with the reason.
pub type SkippedFiles = Vec<(PathBuf, String)>;

/// What the reader found besides the volume.
#[derive(Clone, Debug, serde::Serialize)]
pub struct DicomInfo {
    pub series: SeriesSummary,
    /// Files in the folder that are not DICOM (or not readable), with the reason.
    pub skipped: SkippedFiles,
    /// Distance between consecutive slices, mm.
    pub slice_spacing: f64,
    /// SliceThickness as stated (informational only).
    pub slice_thickness: Option<f64>,
}

struct Slice {
    path: PathBuf,
    rows: usize,
    cols: usize,
    pixel_spacing: [f64; 2],
    iop: [f64; 6],
    ipp: [f64; 3],
    slope: f64,
    intercept: f64,
    pixels: Vec<f32>,
    thickness: Option<f64>,
}

fn floats(obj: &DefaultDicomObject, tag: Tag, name: &str, path: &Path) -> Result<Vec<f64>> {
    let e = obj.element(tag).map_err(|_| IoError::format(path, format!("missing {name}")))?;
    e.value().to_multi_float64().map_err(|e| IoError::format(path, format!("{name} is not numeric: {e}")))
}

/// A rescale value: `None` when absent; an error when present but not a finite number.
fn rescale_value(obj: &DefaultDicomObject, tag: Tag, name: &str, path: &Path) -> Result<Option<f64>> {
    let Ok(e) = obj.element(tag) else { return Ok(None) };
    let shown = e.value().to_str().map(|s| s.trim().to_string()).unwrap_or_default();
    match e.value().to_float64() {
        Ok(v) if v.is_finite() => Ok(Some(v)),
        _ => Err(IoError::format(path, format!("{name} {shown:?} is not a finite number"))),
    }
}

fn opt_float(obj: &DefaultDicomObject, tag: Tag) -> Option<f64> {
    obj.element(tag).ok().and_then(|e| e.value().to_float64().ok()).filter(|v| v.is_finite())
}

fn int(obj: &DefaultDicomObject, tag: Tag, name: &str, path: &Path) -> Result<i64> {
    let e = obj.element(tag).map_err(|_| IoError::format(path, format!("missing {name}")))?;
    e.value().to_int::<i64>().map_err(|e| IoError::format(path, format!("{name} is not an integer: {e}")))
}

fn string(obj: &DefaultDicomObject, tag: Tag) -> String {
    obj.element(tag).ok().and_then(|e| e.value().to_str().ok().map(|s| s.trim().to_string())).unwrap_or_default()
}

fn read_slice(path: &Path, obj: &DefaultDicomObject, limits: &Limits) -> Result<Slice> {
    let ts = obj.meta().transfer_syntax().trim_end_matches('\0').to_string();
    let big_endian = match ts.as_str() {
        "1.2.840.10008.1.2" | "1.2.840.10008.1.2.1" => false,
        "1.2.840.10008.1.2.2" => true,
        other => {
            return Err(IoError::format(
                path,
                format!(
                    "transfer syntax {other} (compressed pixel data) is not supported; \
                     decompress the series first (e.g. `gdcmconv --raw` or `dcmdjpeg`)"
                ),
            ))
        }
    };
    let rows = int(obj, tags::ROWS, "Rows", path)?;
    let cols = int(obj, tags::COLUMNS, "Columns", path)?;
    if rows <= 0 || cols <= 0 {
        return Err(IoError::format(path, format!("image size {rows} x {cols} is not positive")));
    }
    let (rows, cols) = (rows as usize, cols as usize);
    limits.check(path, &[rows, cols])?;
    let samples = int(obj, tags::SAMPLES_PER_PIXEL, "SamplesPerPixel", path).unwrap_or(1);
    if samples != 1 {
        return Err(IoError::format(path, format!("{samples} samples per pixel: not a CT slice")));
    }
    let bits = int(obj, tags::BITS_ALLOCATED, "BitsAllocated", path)?;
    let signed = int(obj, tags::PIXEL_REPRESENTATION, "PixelRepresentation", path).unwrap_or(0) == 1;
    let ps = floats(obj, tags::PIXEL_SPACING, "PixelSpacing", path)?;
    if ps.len() != 2 || ps.iter().any(|v| !v.is_finite() || *v <= 0.0) {
        return Err(IoError::format(path, format!("PixelSpacing {ps:?} is not two positive numbers")));
    }
    let iop = floats(obj, tags::IMAGE_ORIENTATION_PATIENT, "ImageOrientationPatient", path)?;
    let ipp = floats(obj, tags::IMAGE_POSITION_PATIENT, "ImagePositionPatient", path)?;
    if iop.len() != 6 || iop.iter().any(|v| !v.is_finite()) {
        return Err(IoError::format(path, format!("ImageOrientationPatient {iop:?} is not 6 numbers")));
    }
    if ipp.len() != 3 || ipp.iter().any(|v| !v.is_finite()) {
        return Err(IoError::format(path, format!("ImagePositionPatient {ipp:?} is not 3 numbers")));
    }
    // Absent: the identity (older objects). Present: a finite number, and a slope that is not 0.
    let slope = rescale_value(obj, tags::RESCALE_SLOPE, "RescaleSlope", path)?.unwrap_or(1.0);
    let intercept = rescale_value(obj, tags::RESCALE_INTERCEPT, "RescaleIntercept", path)?.unwrap_or(0.0);
    if slope == 0.0 {
        return Err(IoError::format(path, "RescaleSlope is 0: every voxel would be the intercept"));
    }
    let px = obj.element(tags::PIXEL_DATA).map_err(|_| IoError::format(path, "missing PixelData"))?;
    let bytes = px.value().to_bytes().map_err(|e| IoError::format(path, format!("PixelData unreadable: {e}")))?;
    let n = rows * cols;
    let bpp = match bits {
        8 => 1,
        16 => 2,
        _ => return Err(IoError::format(path, format!("BitsAllocated {bits} is not supported (8 or 16)"))),
    };
    if obj.element(tags::NUMBER_OF_FRAMES).is_ok() {
        let frames = int(obj, tags::NUMBER_OF_FRAMES, "NumberOfFrames", path)?;
        if frames < 1 {
            return Err(IoError::format(path, format!("NumberOfFrames {frames} is not positive")));
        }
        let need = (frames as u128) * (n * bpp) as u128;
        if (bytes.len() as u128) < need {
            return Err(IoError::format(
                path,
                format!(
                    "NumberOfFrames {frames} of {rows} x {cols} x {bits} bits needs {need} bytes of PixelData, \
                     it has {} (truncated, or a wrong NumberOfFrames)",
                    bytes.len()
                ),
            ));
        }
        if frames > 1 {
            return Err(IoError::format(
                path,
                format!(
                    "a multi-frame image ({frames} frames) is not supported: only series of one slice per file \
                     (convert it, e.g. with dcm2niix to NIfTI)"
                ),
            ));
        }
    }
    if bytes.len() < n * bpp {
        return Err(IoError::format(
            path,
            format!("PixelData has {} bytes, {} x {} x {} bits needs {}", bytes.len(), rows, cols, bits, n * bpp),
        ));
    }
    let raw: Vec<f64> = match (bpp, signed) {
        (1, false) => bytes[..n].iter().map(|&b| b as f64).collect(),
        (1, true) => bytes[..n].iter().map(|&b| b as i8 as f64).collect(),
        (_, s) => bytes[..2 * n]
            .chunks_exact(2)
            .map(|c| {
                let a = [c[0], c[1]];
                match (s, big_endian) {
                    (true, false) => i16::from_le_bytes(a) as f64,
                    (true, true) => i16::from_be_bytes(a) as f64,
                    (false, false) => u16::from_le_bytes(a) as f64,
                    (false, true) => u16::from_be_bytes(a) as f64,
                }
            })
            .collect(),
    };
    let pixels = raw.into_iter().map(|v| (v * slope + intercept) as f32).collect();
    Ok(Slice {
        path: path.to_path_buf(),
        rows,
        cols,
        pixel_spacing: [ps[0], ps[1]],
        iop: [iop[0], iop[1], iop[2], iop[3], iop[4], iop[5]],
        ipp: [ipp[0], ipp[1], ipp[2]],
        slope,
        intercept,
        pixels,
        thickness: opt_float(obj, tags::SLICE_THICKNESS),
    })
}

/// List the series in a folder (files directly inside it): the image series, and the files
/// skipped with the reason (not DICOM, not an image, or DICOM that cannot be read).
pub fn list_series(dir: &Path) -> Result<(Vec<SeriesSummary>, SkippedFiles)> {
    let s = scan(dir)?;
    let mut skipped = s.skipped;
    skipped.extend(s.broken);
    skipped.sort();
    Ok((s.groups.into_iter().map(|(uid, (desc, files))| summary(uid, desc, files.len())).collect(), skipped))
}

fn summary(series_uid: String, description: String, slices: usize) -> SeriesSummary {
    SeriesSummary { series_uid, description, slices }
}

type Groups = BTreeMap<String, (String, Vec<(PathBuf, DefaultDicomObject)>)>;

/// What a folder holds.
struct Scan {
    /// Image objects by SeriesInstanceUID.
    groups: Groups,
    /// Files that are not DICOM, or DICOM objects that are not images, with the reason.
    skipped: Vec<(PathBuf, String)>,
    /// Files that start like DICOM (the `DICM` marker) but cannot be read: truncated or corrupt.
    broken: Vec<(PathBuf, String)>,
}

/// Whether the file carries the DICOM Part 10 marker (`DICM` after the 128-byte preamble).
fn has_dicm_marker(p: &Path) -> bool {
    use std::io::Read;
    let mut b = [0u8; 132];
    std::fs::File::open(p).and_then(|mut f| f.read_exact(&mut b)).is_ok() && &b[128..] == b"DICM"
}

/// A DICOM object that holds no image: no PixelData and no Rows (a structured report, a key
/// object selection, a presentation state, ...). A slice that lost its PixelData still has Rows
/// and is refused by [`read_slice`] instead.
fn non_image_reason(obj: &DefaultDicomObject) -> Option<String> {
    if obj.element(tags::PIXEL_DATA).is_ok() || obj.element(tags::ROWS).is_ok() {
        return None;
    }
    let mut class = string(obj, tags::SOP_CLASS_UID);
    if class.is_empty() {
        class = obj.meta().media_storage_sop_class_uid().trim_end_matches('\0').to_string();
    }
    let kind = if class.starts_with("1.2.840.10008.5.1.4.1.1.88.") {
        " (a structured report)"
    } else if class.starts_with("1.2.840.10008.5.1.4.1.1.11.") {
        " (a presentation state)"
    } else {
        ""
    };
    Some(format!("not an image: SOP class {class}{kind}, no PixelData"))
}

fn scan(dir: &Path) -> Result<Scan> {
    let rd = std::fs::read_dir(dir).map_err(|e| IoError::os(dir, e))?;
    let mut paths: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_file()).collect();
    paths.sort();
    let mut groups: Groups = BTreeMap::new();
    let (mut skipped, mut broken) = (Vec::new(), Vec::new());
    for p in paths {
        let size = std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
        if size > (1 << 30) {
            skipped.push((p, "larger than 1 GiB: not a CT slice".to_string()));
            continue;
        }
        match open_file(&p) {
            Ok(obj) => {
                if let Some(why) = non_image_reason(&obj) {
                    skipped.push((p, why));
                    continue;
                }
                let uid = string(&obj, tags::SERIES_INSTANCE_UID);
                let desc = string(&obj, tags::SERIES_DESCRIPTION);
                groups.entry(uid).or_insert_with(|| (desc, Vec::new())).1.push((p, obj));
            }
            Err(e) if has_dicm_marker(&p) => {
                broken.push((p, format!("a DICOM file that cannot be read (truncated or corrupt?): {e}")))
            }
            Err(e) => skipped.push((p, format!("not a readable DICOM file: {e}"))),
        }
    }
    Ok(Scan { groups, skipped, broken })
}

/// Read one CT series from a folder. With several series in the folder, `series_uid` picks
/// one; without it the call fails and lists them.
pub fn read_dicom_series(dir: &Path, series_uid: Option<&str>, limits: &Limits) -> Result<(Volume, DicomInfo)> {
    let Scan { mut groups, skipped, broken } = scan(dir)?;
    // A slice that cannot be read must not vanish: the series would be read without it.
    if let Some((p, why)) = broken.first() {
        let more = if broken.len() > 1 {
            format!(" ({} such files in {})", broken.len(), dir.display())
        } else {
            String::new()
        };
        return Err(IoError::format(
            p,
            format!("{why}{more}; repair or remove it (a missing slice would leave a gap in the volume)"),
        ));
    }
    if groups.is_empty() {
        let why = if skipped.is_empty() {
            String::new()
        } else {
            format!(
                ": {}",
                skipped.iter().map(|(p, w)| format!("{} ({w})", p.display())).take(3).collect::<Vec<_>>().join("; ")
            )
        };
        return Err(IoError::format(dir, format!("no DICOM image files found ({} other file(s){why})", skipped.len())));
    }
    let uid = match series_uid {
        Some(u) => {
            if !groups.contains_key(u) {
                return Err(IoError::format(dir, format!("series {u} not found; present: {}", list(&groups))));
            }
            u.to_string()
        }
        None if groups.len() == 1 => groups.keys().next().cloned().unwrap_or_default(),
        None => {
            return Err(IoError::format(
                dir,
                format!("the folder holds {} series; choose one by SeriesInstanceUID: {}", groups.len(), list(&groups)),
            ))
        }
    };
    let (desc, files) = groups.remove(&uid).unwrap_or_default();
    let mut slices = Vec::with_capacity(files.len());
    for (p, obj) in &files {
        slices.push(read_slice(p, obj, limits)?);
    }
    drop(files);
    let info_series = summary(uid, desc, slices.len());
    let (vol, spacing, thickness) = assemble(dir, slices, limits)?;
    Ok((vol, DicomInfo { series: info_series, skipped, slice_spacing: spacing, slice_thickness: thickness }))
}

fn list(groups: &Groups) -> String {
    groups
        .iter()
        .map(|(u, (d, f))| {
            format!("{u} ({} slices{})", f.len(), if d.is_empty() { String::new() } else { format!(", {d:?}") })
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn file_name(p: &Path) -> String {
    p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| p.display().to_string())
}

fn cross(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]]
}
fn dot(a: [f64; 3], b: [f64; 3]) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

fn assemble(dir: &Path, mut slices: Vec<Slice>, limits: &Limits) -> Result<(Volume, f64, Option<f64>)> {
    let first = &slices[0];
    let (rows, cols, ps, iop) = (first.rows, first.cols, first.pixel_spacing, first.iop);
    for s in &slices[1..] {
        if s.rows != rows || s.cols != cols {
            return Err(IoError::format(
                &s.path,
                format!("inconsistent geometry: {} x {} pixels, the series has {} x {}", s.rows, s.cols, rows, cols),
            ));
        }
        if (s.pixel_spacing[0] - ps[0]).abs() > 1e-4 || (s.pixel_spacing[1] - ps[1]).abs() > 1e-4 {
            return Err(IoError::format(
                &s.path,
                format!("inconsistent geometry: PixelSpacing {:?}, the series has {:?}", s.pixel_spacing, ps),
            ));
        }
        if s.iop.iter().zip(iop).any(|(a, b)| (a - b).abs() > 1e-4) {
            return Err(IoError::format(
                &s.path,
                format!("inconsistent geometry: ImageOrientationPatient {:?}, the series has {:?}", s.iop, iop),
            ));
        }
    }
    let row_dir = [iop[0], iop[1], iop[2]];
    let col_dir = [iop[3], iop[4], iop[5]];
    let normal = cross(row_dir, col_dir);
    let nn = dot(normal, normal).sqrt();
    if (dot(row_dir, row_dir).sqrt() - 1.0).abs() > 1e-3
        || (dot(col_dir, col_dir).sqrt() - 1.0).abs() > 1e-3
        || nn < 0.99
    {
        return Err(IoError::format(dir, format!("ImageOrientationPatient {iop:?} is not two orthonormal vectors")));
    }
    slices.sort_by(|a, b| dot(a.ipp, normal).total_cmp(&dot(b.ipp, normal)));
    let pos: Vec<f64> = slices.iter().map(|s| dot(s.ipp, normal)).collect();
    let dz = if slices.len() > 1 {
        let diffs: Vec<f64> = pos.windows(2).map(|w| w[1] - w[0]).collect();
        if let Some(i) = diffs.iter().position(|d| *d < 1e-3) {
            return Err(IoError::format(
                &slices[i + 1].path,
                format!("inconsistent geometry: same slice position as {}", slices[i].path.display()),
            ));
        }
        let mean = (pos[pos.len() - 1] - pos[0]) / (pos.len() - 1) as f64;
        // The usual step is the (lower) median, so that one gap is blamed on the two slices
        // around it rather than on whichever step first differs from the mean.
        let mut sorted = diffs.clone();
        sorted.sort_by(f64::total_cmp);
        let usual = sorted[(sorted.len() - 1) / 2];
        let worst = (0..diffs.len()).max_by(|&a, &b| (diffs[a] - usual).abs().total_cmp(&(diffs[b] - usual).abs()));
        if let Some(i) = worst.filter(|&i| (diffs[i] - usual).abs() > 0.01 * usual.max(0.1) + 0.01) {
            return Err(IoError::format(
                dir,
                format!(
                    "inconsistent geometry: slice gap {:.3} mm between {} and {} where the other slices are \
                     {:.3} mm apart ({})",
                    diffs[i],
                    file_name(&slices[i].path),
                    file_name(&slices[i + 1].path),
                    usual,
                    if diffs[i] > usual { "a missing slice?" } else { "an extra slice?" }
                ),
            ));
        }
        // In-plane position must move along the normal only.
        for s in &slices[1..] {
            let d = [s.ipp[0] - slices[0].ipp[0], s.ipp[1] - slices[0].ipp[1], s.ipp[2] - slices[0].ipp[2]];
            let along = dot(d, normal);
            let off = ((dot(d, d) - along * along).max(0.0)).sqrt();
            if off > 0.01 * ps[0].max(ps[1]) + 1e-3 {
                return Err(IoError::format(
                    &s.path,
                    format!("inconsistent geometry: slice shifted {off:.3} mm in-plane (gantry tilt?)"),
                ));
            }
        }
        mean
    } else {
        slices[0].thickness.unwrap_or(1.0).max(1e-3)
    };
    let nz = slices.len();
    limits.check(dir, &[cols, rows, nz])?;
    let mut data = Vec::with_capacity(cols * rows * nz);
    for s in &slices {
        data.extend_from_slice(&s.pixels);
    }
    // Voxel (i = column, j = row, k = slice) in LPS:
    //   ipp0 + i * ps[1] * row_dir + j * ps[0] * col_dir + k * dz * normal
    let o = slices[0].ipp;
    let mut a = Affine::identity();
    for r in 0..3 {
        a.0[r][0] = row_dir[r] * ps[1];
        a.0[r][1] = col_dir[r] * ps[0];
        a.0[r][2] = normal[r] / nn * dz;
        a.0[r][3] = o[r];
    }
    // LPS -> RAS
    for c in 0..4 {
        a.0[0][c] = -a.0[0][c];
        a.0[1][c] = -a.0[1][c];
    }
    let thickness = slices[0].thickness;
    let _ = (slices[0].slope, slices[0].intercept);
    let vol = Volume::new([cols, rows, nz], data, a).map_err(|e| e.at(dir))?;
    Ok((vol, dz, thickness))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use dicom_core::{DataElement, PrimitiveValue, VR};
    use dicom_dictionary_std::uids;
    use dicom_object::{meta::FileMetaTableBuilder, InMemDicomObject};

    /// One CT slice. `pixels` are stored values (u16), row-major (rows x cols).
    #[allow(clippy::too_many_arguments)]
    pub fn slice_object(
        series: &str,
        rows: u16,
        cols: u16,
        ps: [f64; 2],
        iop: [f64; 6],
        ipp: [f64; 3],
        pixels: &[u16],
        intercept: f64,
    ) -> InMemDicomObject {
        let ds = |v: &[f64]| v.iter().map(|x| format!("{x}")).collect::<Vec<_>>().join("\\");
        let sop = format!("2.25.{}", (ipp[2].abs() * 1000.0) as u64 + 7 + rows as u64);
        let bytes: Vec<u8> = pixels.iter().flat_map(|v| v.to_le_bytes()).collect();
        InMemDicomObject::from_element_iter([
            DataElement::new(tags::SOP_CLASS_UID, VR::UI, uids::CT_IMAGE_STORAGE),
            DataElement::new(tags::SOP_INSTANCE_UID, VR::UI, sop.as_str()),
            DataElement::new(tags::SERIES_INSTANCE_UID, VR::UI, series),
            DataElement::new(tags::SERIES_DESCRIPTION, VR::LO, "test series"),
            DataElement::new(tags::ROWS, VR::US, PrimitiveValue::from(rows)),
            DataElement::new(tags::COLUMNS, VR::US, PrimitiveValue::from(cols)),
            DataElement::new(tags::SAMPLES_PER_PIXEL, VR::US, PrimitiveValue::from(1u16)),
            DataElement::new(tags::BITS_ALLOCATED, VR::US, PrimitiveValue::from(16u16)),
            DataElement::new(tags::BITS_STORED, VR::US, PrimitiveValue::from(12u16)),
            DataElement::new(tags::PIXEL_REPRESENTATION, VR::US, PrimitiveValue::from(0u16)),
            DataElement::new(tags::PIXEL_SPACING, VR::DS, ds(&ps).as_str()),
            DataElement::new(tags::IMAGE_ORIENTATION_PATIENT, VR::DS, ds(&iop).as_str()),
            DataElement::new(tags::IMAGE_POSITION_PATIENT, VR::DS, ds(&ipp).as_str()),
            DataElement::new(tags::SLICE_THICKNESS, VR::DS, "5"),
            DataElement::new(tags::RESCALE_SLOPE, VR::DS, "1"),
            DataElement::new(tags::RESCALE_INTERCEPT, VR::DS, format!("{intercept}").as_str()),
            DataElement::new(tags::PIXEL_DATA, VR::OW, PrimitiveValue::U8(bytes.into())),
        ])
    }

    /// Save an object as a Part 10 file (explicit VR little endian).
    pub fn save(obj: InMemDicomObject, path: &Path) {
        let file = obj.with_meta(FileMetaTableBuilder::new().transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN)).unwrap();
        file.write_to_file(path).unwrap();
    }

    /// Write one CT slice (see [`slice_object`]).
    #[allow(clippy::too_many_arguments)]
    pub fn write_slice(
        path: &Path,
        series: &str,
        rows: u16,
        cols: u16,
        ps: [f64; 2],
        iop: [f64; 6],
        ipp: [f64; 3],
        pixels: &[u16],
        intercept: f64,
    ) {
        save(slice_object(series, rows, cols, ps, iop, ipp, pixels, intercept), path);
    }

    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("text2ct-dicom-{}-{}", name, std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    const IOP: [f64; 6] = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0];

    /// pixel value = 1000 + 10*k + col (stored); HU = stored - 1024.
    fn write_series(dir: &Path, n: usize, z_positions: &[f64], series: &str) {
        for (k, &z) in z_positions.iter().enumerate().take(n) {
            let px: Vec<u16> = (0..4 * 3).map(|i| 1000 + 10 * k as u16 + (i % 3) as u16).collect();
            // shuffled file names: order must come from positions, not names
            let name = format!("slice_{:02}.dcm", (k * 7) % n);
            write_slice(&dir.join(name), series, 4, 3, [0.6, 0.8], IOP, [-50.0, -60.0, z], &px, -1024.0);
        }
    }

    #[test]
    fn series_sorted_by_position_with_spacing_from_positions() {
        let d = tmpdir("ok");
        // Slices 2.5 mm apart while SliceThickness says 5.
        write_series(&d, 5, &[10.0, 12.5, 15.0, 17.5, 20.0], "1.2.3");
        std::fs::write(d.join("notes.txt"), "not dicom").unwrap();
        let (v, info) = read_dicom_series(&d, None, &Limits::default()).unwrap();
        assert_eq!(v.dims(), [3, 4, 5]);
        let sp = v.spacing();
        assert!((sp[0] - 0.8).abs() < 1e-9 && (sp[1] - 0.6).abs() < 1e-9 && (sp[2] - 2.5).abs() < 1e-9, "{sp:?}");
        assert_eq!(info.skipped.len(), 1);
        assert_eq!(info.slice_thickness, Some(5.0));
        // HU with rescale applied; z order from positions.
        for k in 0..5 {
            assert_eq!(v.get(2, 1, k), 1000.0 + 10.0 * k as f32 + 2.0 - 1024.0);
        }
        // LPS (DICOM) axes: x toward L, y toward P, z toward S.
        assert_eq!(v.orientation(), "LPS");
        let o = v.origin();
        assert!((o[0] - 50.0).abs() < 1e-9 && (o[1] - 60.0).abs() < 1e-9 && (o[2] - 10.0).abs() < 1e-9);
    }

    #[test]
    fn mixed_series_and_bad_geometry() {
        let d = tmpdir("mixed");
        write_series(&d.join("a").tap(), 3, &[0.0, 1.0, 2.0], "1.1");
        let e = read_dicom_series(&d.join("a"), Some("9.9"), &Limits::default()).unwrap_err().to_string();
        assert!(e.contains("not found") && e.contains("1.1"), "{e}");
        let m = d.join("m").tap();
        write_series(&m, 3, &[0.0, 1.0, 2.0], "1.1");
        for k in 0..2 {
            let px = vec![0u16; 12];
            write_slice(&m.join(format!("b{k}.dcm")), "2.2", 4, 3, [0.6, 0.8], IOP, [0.0, 0.0, k as f64], &px, 0.0);
        }
        let e = read_dicom_series(&m, None, &Limits::default()).unwrap_err().to_string();
        assert!(e.contains("2 series") && e.contains("1.1") && e.contains("2.2"), "{e}");
        let (v, _) = read_dicom_series(&m, Some("2.2"), &Limits::default()).unwrap();
        assert_eq!(v.dims(), [3, 4, 2]);
        // A missing slice (gap) is reported with the two slices around it (z 2 and 4: the
        // files written 3rd and 4th, slice_00 and slice_01 by write_series' shuffled names).
        let g = d.join("gap").tap();
        write_series(&g, 4, &[0.0, 1.0, 2.0, 4.0], "1.1");
        let e = read_dicom_series(&g, None, &Limits::default()).unwrap_err().to_string();
        assert!(e.contains("inconsistent geometry") && e.contains("gap 2.000 mm"), "{e}");
        assert!(e.contains("between slice_02.dcm and slice_01.dcm"), "{e}");
        // Duplicate positions.
        let g = d.join("dup").tap();
        write_series(&g, 3, &[0.0, 1.0, 1.0], "1.1");
        let e = read_dicom_series(&g, None, &Limits::default()).unwrap_err().to_string();
        assert!(e.contains("same slice position"), "{e}");
        // Different pixel spacing in one slice.
        let g = d.join("ps").tap();
        write_series(&g, 2, &[0.0, 1.0], "1.1");
        write_slice(&g.join("odd.dcm"), "1.1", 4, 3, [0.7, 0.8], IOP, [-50.0, -60.0, 2.0], &[0; 12], 0.0);
        let e = read_dicom_series(&g, None, &Limits::default()).unwrap_err().to_string();
        assert!(e.contains("PixelSpacing"), "{e}");
        // Empty folder.
        let e = read_dicom_series(&d.join("empty").tap(), None, &Limits::default()).unwrap_err().to_string();
        assert!(e.contains("no DICOM"), "{e}");
    }

    /// Issue 21 item 4: a slope of 0 turned the series into a flat -1024 HU, exit 0.
    #[test]
    fn rescale_slope_zero_or_not_a_number_is_refused() {
        let d = tmpdir("slope");
        for (name, slope) in [("zero", "0"), ("text", "abc")] {
            let g = d.join(name).tap();
            write_series(&g, 2, &[0.0, 1.0], "1.1");
            let mut o = slice_object("1.1", 4, 3, [0.6, 0.8], IOP, [-50.0, -60.0, 2.0], &[1000; 12], -1024.0);
            o.put(DataElement::new(tags::RESCALE_SLOPE, VR::DS, slope));
            save(o, &g.join("odd.dcm"));
            let e = read_dicom_series(&g, None, &Limits::default()).unwrap_err().to_string();
            assert!(e.contains("odd.dcm") && e.contains("RescaleSlope"), "{e}");
        }
    }

    /// Issue 21 item 4: a truncated slice was skipped as "not DICOM" and the resulting gap was
    /// blamed on a normal slice. The truncated file is named.
    #[test]
    fn truncated_slice_is_named() {
        let d = tmpdir("trunc");
        write_series(&d, 4, &[0.0, 1.0, 2.0, 3.0], "1.1");
        // slice_03.dcm holds z = 1 (write_series: name (k * 7) % 4 for slice k).
        let p = d.join("slice_03.dcm");
        let b = std::fs::read(&p).unwrap();
        std::fs::write(&p, &b[..b.len() / 2]).unwrap();
        let e = read_dicom_series(&d, None, &Limits::default()).unwrap_err().to_string();
        assert!(e.contains("slice_03.dcm") && e.contains("truncated"), "{e}");
        assert!(!e.contains("slice gap"), "{e}");
        // A file that is not DICOM at all is still only skipped.
        std::fs::write(&p, b"not dicom").unwrap();
        let e = read_dicom_series(&d, None, &Limits::default()).unwrap_err().to_string();
        assert!(e.contains("gap") && e.contains("between"), "{e}");
    }

    /// Issue 21 item 4: NumberOfFrames larger than the pixel data was read as one slice.
    #[test]
    fn number_of_frames_is_checked() {
        let d = tmpdir("frames");
        let g = d.join("short").tap();
        let mut o = slice_object("1.1", 4, 3, [0.6, 0.8], IOP, [-50.0, -60.0, 0.0], &[1000; 12], -1024.0);
        o.put(DataElement::new(tags::NUMBER_OF_FRAMES, VR::IS, "3"));
        save(o, &g.join("mf.dcm"));
        let e = read_dicom_series(&g, None, &Limits::default()).unwrap_err().to_string();
        assert!(e.contains("mf.dcm") && e.contains("NumberOfFrames 3") && e.contains("72 bytes"), "{e}");
        // Frames that are all there: a multi-frame image, refused as such.
        let g = d.join("multi").tap();
        let mut o = slice_object("1.1", 4, 3, [0.6, 0.8], IOP, [-50.0, -60.0, 0.0], &[1000; 36], -1024.0);
        o.put(DataElement::new(tags::NUMBER_OF_FRAMES, VR::IS, "3"));
        save(o, &g.join("mf.dcm"));
        let e = read_dicom_series(&g, None, &Limits::default()).unwrap_err().to_string();
        assert!(e.contains("multi-frame") && e.contains("3 frames"), "{e}");
        // NumberOfFrames 1 is an ordinary slice.
        let g = d.join("one").tap();
        write_series(&g, 2, &[0.0, 1.0], "1.1");
        let mut o = slice_object("1.1", 4, 3, [0.6, 0.8], IOP, [-50.0, -60.0, 2.0], &[1000; 12], -1024.0);
        o.put(DataElement::new(tags::NUMBER_OF_FRAMES, VR::IS, "1"));
        save(o, &g.join("f1.dcm"));
        assert_eq!(read_dicom_series(&g, None, &Limits::default()).unwrap().0.dims(), [3, 4, 3]);
    }

    /// Issue 21 item 4: one structured report in a series folder failed the whole folder.
    #[test]
    fn non_image_objects_are_skipped() {
        let d = tmpdir("sr");
        write_series(&d, 3, &[0.0, 1.0, 2.0], "1.1");
        let sr = InMemDicomObject::from_element_iter([
            DataElement::new(tags::SOP_CLASS_UID, VR::UI, "1.2.840.10008.5.1.4.1.1.88.33"),
            DataElement::new(tags::SOP_INSTANCE_UID, VR::UI, "2.25.99"),
            DataElement::new(tags::SERIES_INSTANCE_UID, VR::UI, "1.1"),
            DataElement::new(tags::MODALITY, VR::CS, "SR"),
        ]);
        save(sr, &d.join("report.dcm"));
        let (v, info) = read_dicom_series(&d, None, &Limits::default()).unwrap();
        assert_eq!(v.dims(), [3, 4, 3]);
        let (p, why) = info.skipped.iter().find(|(p, _)| p.ends_with("report.dcm")).unwrap();
        assert!(why.contains("not an image") && why.contains("structured report"), "{p:?}: {why}");
        // ... and in its own series it does not make the folder ambiguous.
        let sr2 = InMemDicomObject::from_element_iter([
            DataElement::new(tags::SOP_CLASS_UID, VR::UI, "1.2.840.10008.5.1.4.1.1.88.22"),
            DataElement::new(tags::SOP_INSTANCE_UID, VR::UI, "2.25.98"),
            DataElement::new(tags::SERIES_INSTANCE_UID, VR::UI, "7.7"),
        ]);
        save(sr2, &d.join("report2.dcm"));
        assert!(read_dicom_series(&d, None, &Limits::default()).is_ok());
        let (series, _) = list_series(&d).unwrap();
        assert_eq!(series.len(), 1);
        // A folder of reports only: no image, said so.
        let only = d.join("only").tap();
        std::fs::copy(d.join("report.dcm"), only.join("report.dcm")).unwrap();
        let e = read_dicom_series(&only, None, &Limits::default()).unwrap_err().to_string();
        assert!(e.contains("no DICOM image") && e.contains("structured report"), "{e}");
    }

    trait Tap {
        fn tap(self) -> Self;
    }
    impl Tap for PathBuf {
        fn tap(self) -> Self {
            std::fs::create_dir_all(&self).unwrap();
            self
        }
    }
}
