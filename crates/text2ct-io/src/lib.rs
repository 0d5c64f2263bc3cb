//! Volume I/O for text2ct: the [`Volume`] type and its geometry, NIfTI-1 and DICOM series
//! readers, NIfTI writing, reorientation, resampling, crop/pad, intensity windowing, NumPy
//! `.npy` arrays and PNG previews; the memory a job may use (`memory`).

pub mod dicom_io;
pub mod dicom_write;
pub mod error;
pub mod geometry;
pub mod memory;
pub mod nifti_io;
pub mod npy;
pub mod preview;
pub mod render;
pub mod transform;
pub mod volume;

pub use error::{IoError, Limits, Result};
pub use geometry::Affine;
pub use volume::Volume;

/// `YYYY-MM-DDTHH:MM:SSZ` of a Unix time (UTC).
pub fn utc_string(secs: u64) -> String {
    let days = (secs / 86400) as i64;
    let rem = secs % 86400;
    // Howard Hinnant's civil-from-days.
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}
