//! Writing a volume as a DICOM CT series (one file per axial slice), for clinical viewers and PACS
//! test systems that do not read NIfTI.
//!
//! Each slice is a CT Image Storage object (explicit VR little endian) with the Patient, Study,
//! Series, Frame of Reference, Equipment, Image Plane, Image Pixel, CT Image and SOP Common
//! attributes: int16 HU stored directly (RescaleSlope 1, RescaleIntercept 0), PixelSpacing,
//! ImageOrientationPatient and ImagePositionPatient from the volume's affine (NIfTI RAS → DICOM
//! LPS), in-plane axes flipped where needed so that rows run towards the patient's left and
//! columns towards posterior as viewers expect for axis-aligned volumes. Every object says that
//! it is synthetic: PatientName `SYNTHETIC^TEXT2CT`, ImageType `DERIVED\SECONDARY`,
//! ImageComments and SeriesDescription from the caller (the prompt and seed for generated
//! volumes). UIDs are `2.25.` + a 128-bit hash of the caller's key, so re-writing the same volume
//! gives the same UIDs. The folder is written beside its final name and renamed into place.

use std::path::{Path, PathBuf};

use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::{meta::FileMetaTableBuilder, InMemDicomObject};

use crate::error::{IoError, Result};
use crate::volume::Volume;

/// What a written series says about itself.
#[derive(Clone, Debug)]
pub struct DicomSeriesInfo {
    /// SeriesDescription (cut to DICOM's 64 characters).
    pub series_description: String,
    /// ImageComments on every slice (cut to 10 240 characters), e.g. the prompt and the seed.
    pub image_comments: String,
    /// PatientID (cut to 64 characters); PatientName is always `SYNTHETIC^TEXT2CT`.
    pub patient_id: String,
    /// Seeds the UIDs (study, series, frame of reference, one per slice): the same key gives the
    /// same UIDs.
    pub uid_key: String,
}

/// `2.25.` + a 128-bit FNV-1a hash of `parts` (a UUID-derived UID, at most 64 characters).
fn uid(parts: &[&str]) -> String {
    let mut h: u128 = 0x6c62272e07bb014262b821756295c58d;
    for p in parts {
        for b in p.as_bytes().iter().chain(b"\x1f") {
            h ^= *b as u128;
            h = h.wrapping_mul(0x0000000001000000000000000000013b);
        }
    }
    format!("2.25.{}", h >> 1)
}

fn cut(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

fn ds(v: &[f64]) -> String {
    v.iter()
        .map(|x| format!("{:.6}", x + 0.0).trim_end_matches('0').trim_end_matches('.').to_string())
        .collect::<Vec<_>>()
        .join("\\")
}

/// Write `vol` (HU) as a DICOM CT series into the folder `dir` (`IM0001.dcm`, … in slice order),
/// which must not exist yet. Values are rounded and clamped to int16. Returns the file paths.
pub fn write_dicom_series(vol: &Volume, dir: &Path, info: &DicomSeriesInfo) -> Result<Vec<PathBuf>> {
    if dir.exists() {
        return Err(IoError::invalid(format!(
            "{} already exists; choose a new folder for the DICOM series",
            dir.display()
        )));
    }
    vol.check_finite()?;
    let [nx, ny, nz] = vol.dims();
    if nx > u16::MAX as usize || ny > u16::MAX as usize {
        return Err(IoError::invalid(format!("{nx} x {ny} pixels per slice do not fit DICOM's 16-bit Rows/Columns")));
    }
    let a = vol.affine();
    // RAS -> LPS: negate the first two rows.
    let lps = |r: usize, c: usize| if r < 2 { -a.0[r][c] } else { a.0[r][c] };
    let col = |c: usize| [lps(0, c), lps(1, c), lps(2, c)];
    let norm = |v: [f64; 3]| (v[0] * v[0] + v[1] * v[1] + v[2] * v[2]).sqrt();
    let (mut ax, mut ay, az, mut o) = (col(0), col(1), col(2), col(3));
    // Flip an in-plane axis whose dominant component points the "wrong" way (rows towards L = +x,
    // columns towards P = +y for an axial volume).
    let dominant = |v: [f64; 3]| {
        let i = (0..3).max_by(|&i, &j| v[i].abs().total_cmp(&v[j].abs())).unwrap_or(0);
        v[i]
    };
    let flip_x = dominant(ax) < 0.0;
    if flip_x {
        o = [o[0] + (nx - 1) as f64 * ax[0], o[1] + (nx - 1) as f64 * ax[1], o[2] + (nx - 1) as f64 * ax[2]];
        ax = [-ax[0], -ax[1], -ax[2]];
    }
    let flip_y = dominant(ay) < 0.0;
    if flip_y {
        o = [o[0] + (ny - 1) as f64 * ay[0], o[1] + (ny - 1) as f64 * ay[1], o[2] + (ny - 1) as f64 * ay[2]];
        ay = [-ay[0], -ay[1], -ay[2]];
    }
    let (sx, sy, sz) = (norm(ax), norm(ay), norm(az));
    let row_dir = ax.map(|v| v / sx);
    let col_dir = ay.map(|v| v / sy);
    let iop = [row_dir[0], row_dir[1], row_dir[2], col_dir[0], col_dir[1], col_dir[2]];

    let study = uid(&[&info.uid_key, "study"]);
    let series = uid(&[&info.uid_key, "series"]);
    let frame = uid(&[&info.uid_key, "frame"]);
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| IoError::os(parent, e))?;
    let name = dir.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_else(|| "dicom".into());
    let tmp = parent.join(format!(".tmp-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| IoError::os(&tmp, e))?;
    let result = (|| -> Result<Vec<String>> {
        let mut names = Vec::with_capacity(nz);
        for k in 0..nz {
            let mut px = Vec::with_capacity(nx * ny * 2);
            for r in 0..ny {
                let y = if flip_y { ny - 1 - r } else { r };
                for c in 0..nx {
                    let x = if flip_x { nx - 1 - c } else { c };
                    let v = vol.get(x, y, k).round().clamp(i16::MIN as f32, i16::MAX as f32) as i16;
                    px.extend_from_slice(&v.to_le_bytes());
                }
            }
            let ipp = [o[0] + k as f64 * az[0], o[1] + k as f64 * az[1], o[2] + k as f64 * az[2]];
            let sop = uid(&[&info.uid_key, "slice", &k.to_string()]);
            let obj = slice_object(info, &study, &series, &frame, &sop, k, [ny, nx], [sy, sx], sz, iop, ipp, px);
            let file = obj
                .with_meta(FileMetaTableBuilder::new().transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN))
                .map_err(|e| IoError::invalid(format!("DICOM file meta: {e}")))?;
            let fname = format!("IM{:04}.dcm", k + 1);
            let p = tmp.join(&fname);
            file.write_to_file(&p).map_err(|e| IoError::format(&p, format!("writing DICOM: {e}")))?;
            names.push(fname);
        }
        Ok(names)
    })();
    match result {
        Ok(names) => {
            std::fs::rename(&tmp, dir).map_err(|e| {
                let _ = std::fs::remove_dir_all(&tmp);
                IoError::os(dir, e)
            })?;
            Ok(names.into_iter().map(|n| dir.join(n)).collect())
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            Err(e)
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn slice_object(
    info: &DicomSeriesInfo,
    study: &str,
    series: &str,
    frame: &str,
    sop: &str,
    k: usize,
    [rows, cols]: [usize; 2],
    [row_spacing, col_spacing]: [f64; 2],
    thickness: f64,
    iop: [f64; 6],
    ipp: [f64; 3],
    pixels: Vec<u8>,
) -> InMemDicomObject {
    let us = |v: u16| PrimitiveValue::from(v);
    let is = |v: usize| PrimitiveValue::from(v.to_string().as_str());
    InMemDicomObject::from_element_iter([
        DataElement::new(tags::SPECIFIC_CHARACTER_SET, VR::CS, "ISO_IR 192"),
        DataElement::new(tags::IMAGE_TYPE, VR::CS, "DERIVED\\SECONDARY\\AXIAL"),
        DataElement::new(tags::SOP_CLASS_UID, VR::UI, uids::CT_IMAGE_STORAGE),
        DataElement::new(tags::SOP_INSTANCE_UID, VR::UI, sop),
        DataElement::new(tags::STUDY_DATE, VR::DA, ""),
        DataElement::new(tags::STUDY_TIME, VR::TM, ""),
        DataElement::new(tags::ACCESSION_NUMBER, VR::SH, ""),
        DataElement::new(tags::MODALITY, VR::CS, "CT"),
        DataElement::new(tags::MANUFACTURER, VR::LO, "text2ct (synthetic)"),
        DataElement::new(tags::REFERRING_PHYSICIAN_NAME, VR::PN, ""),
        DataElement::new(tags::SERIES_DESCRIPTION, VR::LO, cut(&info.series_description, 64).as_str()),
        DataElement::new(tags::PATIENT_NAME, VR::PN, "SYNTHETIC^TEXT2CT"),
        DataElement::new(tags::PATIENT_ID, VR::LO, cut(&info.patient_id, 64).as_str()),
        DataElement::new(tags::PATIENT_BIRTH_DATE, VR::DA, ""),
        DataElement::new(tags::PATIENT_SEX, VR::CS, ""),
        DataElement::new(tags::PATIENT_IDENTITY_REMOVED, VR::CS, "YES"),
        DataElement::new(tags::SLICE_THICKNESS, VR::DS, ds(&[thickness]).as_str()),
        DataElement::new(tags::KVP, VR::DS, ""),
        DataElement::new(tags::STUDY_INSTANCE_UID, VR::UI, study),
        DataElement::new(tags::SERIES_INSTANCE_UID, VR::UI, series),
        DataElement::new(tags::STUDY_ID, VR::SH, ""),
        DataElement::new(tags::SERIES_NUMBER, VR::IS, is(1)),
        DataElement::new(tags::ACQUISITION_NUMBER, VR::IS, is(1)),
        DataElement::new(tags::INSTANCE_NUMBER, VR::IS, is(k + 1)),
        DataElement::new(tags::IMAGE_POSITION_PATIENT, VR::DS, ds(&ipp).as_str()),
        DataElement::new(tags::IMAGE_ORIENTATION_PATIENT, VR::DS, ds(&iop).as_str()),
        DataElement::new(tags::FRAME_OF_REFERENCE_UID, VR::UI, frame),
        DataElement::new(tags::POSITION_REFERENCE_INDICATOR, VR::LO, ""),
        DataElement::new(tags::IMAGE_COMMENTS, VR::LT, cut(&info.image_comments, 10240).as_str()),
        DataElement::new(tags::SAMPLES_PER_PIXEL, VR::US, us(1)),
        DataElement::new(tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "MONOCHROME2"),
        DataElement::new(tags::ROWS, VR::US, us(rows as u16)),
        DataElement::new(tags::COLUMNS, VR::US, us(cols as u16)),
        DataElement::new(tags::PIXEL_SPACING, VR::DS, ds(&[row_spacing, col_spacing]).as_str()),
        DataElement::new(tags::BITS_ALLOCATED, VR::US, us(16)),
        DataElement::new(tags::BITS_STORED, VR::US, us(16)),
        DataElement::new(tags::HIGH_BIT, VR::US, us(15)),
        DataElement::new(tags::PIXEL_REPRESENTATION, VR::US, us(1)),
        DataElement::new(tags::BURNED_IN_ANNOTATION, VR::CS, "NO"),
        DataElement::new(tags::WINDOW_CENTER, VR::DS, "40"),
        DataElement::new(tags::WINDOW_WIDTH, VR::DS, "400"),
        DataElement::new(tags::RESCALE_INTERCEPT, VR::DS, "0"),
        DataElement::new(tags::RESCALE_SLOPE, VR::DS, "1"),
        DataElement::new(tags::RESCALE_TYPE, VR::LO, "HU"),
        DataElement::new(tags::PIXEL_DATA, VR::OW, PrimitiveValue::U8(pixels.into())),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dicom_io::read_dicom_series;
    use crate::error::Limits;
    use crate::geometry::Affine;

    fn info() -> DicomSeriesInfo {
        DicomSeriesInfo {
            series_description: "text2ct test".into(),
            image_comments: "SYNTHETIC. Findings: right pleural effusion. seed=3".into(),
            patient_id: "t2c-test".into(),
            uid_key: "k".into(),
        }
    }

    /// RAS volumes (as `generate` writes) and an LPS one round-trip through our DICOM reader:
    /// every voxel keeps its value at its world position, spacing and orientation survive.
    #[test]
    fn series_round_trips_through_the_reader() {
        let t = std::env::temp_dir().join(format!("text2ct-dicom-write-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&t);
        for (name, dir) in [
            ("ras", [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]),
            ("lps", [[-1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, 1.0]]),
        ] {
            let aff = Affine::from_parts(dir, [0.8, 0.7, 2.5], [-30.0, 20.0, -55.0]).unwrap();
            let v = Volume::from_fn([5, 4, 3], aff, |x, y, z| {
                (x as f32 * 100.0 - y as f32 * 7.0 + z as f32 * 300.0) - 1000.0
            })
            .unwrap();
            let d = t.join(name);
            let files = write_dicom_series(&v, &d, &info()).unwrap();
            assert_eq!(files.len(), 3);
            let (r, _) = read_dicom_series(&d, None, &Limits::default()).unwrap();
            assert_eq!(r.dims(), [5, 4, 3], "{name}");
            let sp = r.spacing();
            assert!(
                (sp[0] - 0.8).abs() < 1e-6 && (sp[1] - 0.7).abs() < 1e-6 && (sp[2] - 2.5).abs() < 1e-6,
                "{name} {sp:?}"
            );
            assert_eq!(r.orientation(), "LPS", "{name}: rows towards L, columns towards P");
            let inv = r.affine().inverse().unwrap();
            for z in 0..3 {
                for y in 0..4 {
                    for x in 0..5 {
                        let w = v.affine().apply([x as f64, y as f64, z as f64]);
                        let i = inv.apply(w).map(|c| c.round() as usize);
                        assert_eq!(r.get(i[0], i[1], i[2]), v.get(x, y, z), "{name} ({x},{y},{z})");
                    }
                }
            }
            // Same key, same UIDs; an existing folder is refused.
            let e = write_dicom_series(&v, &d, &info()).unwrap_err().to_string();
            assert!(e.contains("already exists"), "{e}");
        }
        let obj = dicom_object::open_file(t.join("ras/IM0001.dcm")).unwrap();
        let text = |tag| obj.element(tag).unwrap().to_str().unwrap().to_string();
        assert_eq!(text(tags::PATIENT_NAME), "SYNTHETIC^TEXT2CT");
        assert_eq!(text(tags::MODALITY), "CT");
        assert!(text(tags::IMAGE_COMMENTS).contains("SYNTHETIC"));
        assert_eq!(text(tags::SOP_CLASS_UID).trim_end_matches('\0'), uids::CT_IMAGE_STORAGE);
        let obj2 = dicom_object::open_file(t.join("lps/IM0001.dcm")).unwrap();
        assert_eq!(
            obj2.element(tags::SERIES_INSTANCE_UID).unwrap().to_str().unwrap(),
            obj.element(tags::SERIES_INSTANCE_UID).unwrap().to_str().unwrap()
        );
        let _ = std::fs::remove_dir_all(&t);
    }

    #[test]
    fn non_finite_volumes_are_refused() {
        let mut v = Volume::filled([2, 2, 2], [1.0; 3], [0.0; 3], 0.0).unwrap();
        v.set(1, 1, 1, f32::NAN);
        let d = std::env::temp_dir().join(format!("text2ct-dicom-nan-{}", std::process::id()));
        assert!(write_dicom_series(&v, &d, &info()).is_err());
        assert!(!d.exists());
    }
}
