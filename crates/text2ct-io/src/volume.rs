//! The [`Volume`] type: voxels plus geometry.
//!
//! Voxels are stored as `f32` in NIfTI's own order: x fastest, then y, then z
//! (`index = x + nx * (y + ny * z)`). Values are whatever the volume holds, for CT
//! normally Hounsfield units. The geometry is a 4x4 affine that maps voxel indices
//! `(i, j, k)` to world millimetres.
//!
//! World convention (NIfTI's and nibabel's, "RAS+"): +x points to the patient's Right,
//! +y Anterior, +z Superior. DICOM uses LPS+ (+x Left, +y Posterior); the DICOM reader
//! converts by negating x and y. The orientation *code* of a volume (e.g. "LPS") says where
//! each voxel axis points, in nibabel's `aff2axcodes` sense.

use crate::error::{IoError, Result};
use crate::geometry::Affine;

/// A 3D scalar volume with its geometry.
#[derive(Clone, Debug, PartialEq)]
pub struct Volume {
    dims: [usize; 3],
    data: Vec<f32>,
    affine: Affine,
}

impl Volume {
    /// Make a volume from voxels (x fastest) and an affine. Checks that the data length
    /// matches the dimensions and that the affine is finite and invertible.
    pub fn new(dims: [usize; 3], data: Vec<f32>, affine: Affine) -> Result<Self> {
        let n = dims
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| IoError::invalid("volume dimensions overflow"))?;
        if dims.contains(&0) {
            return Err(IoError::invalid(format!("volume has a zero dimension: {dims:?}")));
        }
        if data.len() != n {
            return Err(IoError::invalid(format!(
                "volume data has {} voxels but dimensions {:?} need {}",
                data.len(),
                dims,
                n
            )));
        }
        affine.validate()?;
        Ok(Self { dims, data, affine })
    }

    /// A volume filled with one value, with axis-aligned RAS geometry of the given spacing
    /// and origin (world position of voxel (0,0,0)).
    pub fn filled(dims: [usize; 3], spacing: [f64; 3], origin: [f64; 3], value: f32) -> Result<Self> {
        let n = dims.iter().product();
        Self::new(dims, vec![value; n], Affine::from_spacing_origin(spacing, origin)?)
    }

    /// Make a volume by evaluating `f(x, y, z)` at every voxel index.
    pub fn from_fn(dims: [usize; 3], affine: Affine, mut f: impl FnMut(usize, usize, usize) -> f32) -> Result<Self> {
        let mut data = Vec::with_capacity(dims.iter().product());
        for z in 0..dims[2] {
            for y in 0..dims[1] {
                for x in 0..dims[0] {
                    data.push(f(x, y, z));
                }
            }
        }
        Self::new(dims, data, affine)
    }

    pub fn dims(&self) -> [usize; 3] {
        self.dims
    }
    pub fn len(&self) -> usize {
        self.data.len()
    }
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
    pub fn data(&self) -> &[f32] {
        &self.data
    }
    pub fn data_mut(&mut self) -> &mut [f32] {
        &mut self.data
    }
    pub fn into_data(self) -> Vec<f32> {
        self.data
    }
    pub fn affine(&self) -> &Affine {
        &self.affine
    }
    /// Replace the geometry (voxels unchanged).
    pub fn set_affine(&mut self, affine: Affine) -> Result<()> {
        affine.validate()?;
        self.affine = affine;
        Ok(())
    }
    /// Voxel size in mm along each voxel axis (norms of the affine's columns).
    pub fn spacing(&self) -> [f64; 3] {
        self.affine.spacing()
    }
    /// World position (mm, RAS+) of voxel (0, 0, 0).
    pub fn origin(&self) -> [f64; 3] {
        self.affine.origin()
    }
    /// Unit direction cosines of each voxel axis in RAS+ world space (columns).
    pub fn direction(&self) -> [[f64; 3]; 3] {
        self.affine.direction()
    }
    /// Three-letter orientation code, nibabel style (e.g. "RAS", "LPS").
    pub fn orientation(&self) -> String {
        self.affine.orientation_code()
    }

    #[inline]
    pub fn index(&self, x: usize, y: usize, z: usize) -> usize {
        x + self.dims[0] * (y + self.dims[1] * z)
    }
    #[inline]
    pub fn get(&self, x: usize, y: usize, z: usize) -> f32 {
        self.data[self.index(x, y, z)]
    }
    #[inline]
    pub fn set(&mut self, x: usize, y: usize, z: usize, v: f32) {
        let i = self.index(x, y, z);
        self.data[i] = v;
    }

    /// Error out if any voxel is NaN or infinite.
    pub fn check_finite(&self) -> Result<()> {
        if let Some(i) = self.data.iter().position(|v| !v.is_finite()) {
            let x = i % self.dims[0];
            let y = (i / self.dims[0]) % self.dims[1];
            let z = i / (self.dims[0] * self.dims[1]);
            let bad = self.data.iter().filter(|v| !v.is_finite()).count();
            return Err(IoError::invalid(format!(
                "volume holds {bad} non-finite voxel(s) (NaN or Inf), the first at ({x}, {y}, {z})"
            )));
        }
        Ok(())
    }

    /// Apply `f` to every voxel.
    pub fn map_inplace(&mut self, f: impl Fn(f32) -> f32 + Sync + Send) {
        use rayon::prelude::*;
        self.data.par_iter_mut().for_each(|v| *v = f(*v));
    }
}
