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
pub mod transform;
pub mod volume;

pub use error::{IoError, Limits, Result};
pub use geometry::Affine;
pub use volume::Volume;
