//! The manifest of a prepared data set, and memory-mapped access to its volumes.
//!
//! A prepared folder holds:
//! - `volumes/<id>.npy`: int16 HU, clipped, shape `(X, Y, Z)` in Fortran order (x fastest),
//!   RAS voxel axes; memory-mappable. Models read `(hu + 1000) / 2000`.
//! - `items/<id>.json`: one [`ManifestEntry`] per finished volume (makes `prepare` resumable).
//! - `manifest.jsonl`: all entries, one JSON object per line, in input order.
//! - `dataset.json`: the [`DatasetInfo`] (mode, spacing, size, label names, storage format).
//! - `summary.json`: counts and every skipped row with its reason.

use std::path::{Path, PathBuf};

use text2ct_io::npy::{NpyHeader, NpyType};
use text2ct_io::{Affine, IoError, Result, Volume};

use crate::labels::{LABELS, NUM_LABELS};

/// One prepared volume.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ManifestEntry {
    /// Volume name without extension, e.g. `train_1_a_1`.
    pub id: String,
    /// Path of the `.npy`, relative to the manifest's folder.
    pub volume: String,
    /// `"Findings: … Impression: …"`.
    pub report: String,
    /// The 18 labels in CT-RATE order (0/1).
    pub labels: Vec<u8>,
    /// True voxel size of the stored volume, mm.
    pub spacing: [f64; 3],
    pub dims: [usize; 3],
    /// Voxel-to-world (RAS) affine of the stored volume, row-major 4x4.
    pub affine: [[f64; 4]; 4],
    /// The source file.
    pub source: String,
    /// What was done to get HU (see `preprocess::HuDecision`).
    pub hu: serde_json::Value,
    /// The source's voxel size from the NIfTI header and from the metadata CSV, and which one
    /// was used (absent in manifests written before it was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_spacing: Option<SourceSpacing>,
    /// Non-fatal remarks (e.g. header spacing disagrees with the metadata CSV).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// The voxel size of a source volume (mm, in the source file's voxel-axis order) as its NIfTI
/// header and the metadata CSV give it (see `prepare --spacing-source`).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SourceSpacing {
    /// The one used.
    pub used: crate::ctrate::SpacingSource,
    pub header: [f64; 3],
    /// `None` when the metadata CSV has no usable XYSpacing/ZSpacing for the volume.
    pub metadata: Option<[f64; 3]>,
}

/// Description of a prepared data set.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DatasetInfo {
    pub format: String,
    pub mode: String,
    pub split: String,
    pub spacing: [f64; 3],
    pub size: [usize; 3],
    pub hu_range: [f32; 2],
    pub label_names: Vec<String>,
    pub storage: String,
    pub source_root: String,
}

impl DatasetInfo {
    pub const FORMAT: &'static str = "text2ct-prepared-v1";
    pub const STORAGE: &'static str =
        "int16 HU clipped to hu_range, .npy shape (X, Y, Z) Fortran order, RAS axes; model input = (hu + 1000) / 2000";
}

/// Read `manifest.jsonl`. Every line must parse and carry 18 labels.
pub fn read_manifest(path: &Path) -> Result<Vec<ManifestEntry>> {
    let text = std::fs::read_to_string(path).map_err(|e| IoError::os(path, e))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let e: ManifestEntry = serde_json::from_str(line)
            .map_err(|e| IoError::format(path, format!("line {}: not a manifest entry: {e}", i + 1)))?;
        if e.labels.len() != NUM_LABELS || e.labels.iter().any(|&l| l > 1) {
            return Err(IoError::format(path, format!("line {}: labels must be 18 values of 0/1", i + 1)));
        }
        out.push(e);
    }
    Ok(out)
}

/// Write `manifest.jsonl` atomically.
pub fn write_manifest(path: &Path, entries: &[ManifestEntry]) -> Result<()> {
    let mut s = String::new();
    for e in entries {
        s.push_str(&serde_json::to_string(e).map_err(|e| IoError::invalid(e.to_string()))?);
        s.push('\n');
    }
    text2ct_io::error::atomic_write_bytes(path, s.as_bytes())
}

/// A memory-mapped prepared volume (int16 HU, Fortran order).
pub struct MappedVolume {
    map: memmap2::Mmap,
    offset: usize,
    dims: [usize; 3],
}

impl MappedVolume {
    /// Map a prepared `.npy`; checks dtype, order, rank and size.
    pub fn open(path: &Path) -> Result<Self> {
        let f = std::fs::File::open(path).map_err(|e| IoError::os(path, e))?;
        // SAFETY: the file is opened read-only; text2ct writes volumes atomically (rename), so a
        // mapped file is never modified in place by text2ct.
        let map = unsafe { memmap2::Mmap::map(&f) }.map_err(|e| IoError::os(path, e))?;
        let h = NpyHeader::parse(&map[..map.len().min(1 << 16)], path)?;
        if h.dtype != NpyType::I16 || h.big_endian || !h.fortran_order || h.shape.len() != 3 {
            return Err(IoError::format(
                path,
                "a prepared volume must be little-endian int16 (<i2), Fortran order, 3D",
            ));
        }
        let dims = [h.shape[0], h.shape[1], h.shape[2]];
        if Some(map.len()) != h.len().checked_mul(2).and_then(|n| n.checked_add(h.data_offset)) {
            return Err(IoError::format(path, "prepared volume is truncated"));
        }
        Ok(MappedVolume { map, offset: h.data_offset, dims })
    }
    pub fn dims(&self) -> [usize; 3] {
        self.dims
    }
    /// HU at voxel index `i` (x fastest).
    #[inline]
    pub fn hu(&self, i: usize) -> i16 {
        let o = self.offset + 2 * i;
        i16::from_le_bytes([self.map[o], self.map[o + 1]])
    }
    /// All voxels scaled to [0, 1] (x fastest), as models read them.
    pub fn to_unit(&self) -> Vec<f32> {
        let n = self.dims.iter().product();
        (0..n).map(|i| text2ct_io::transform::hu_to_unit(f32::from(self.hu(i)))).collect()
    }
    /// The volume in HU with the entry's geometry.
    pub fn to_volume(&self, affine: &[[f64; 4]; 4]) -> Result<Volume> {
        let n = self.dims.iter().product();
        Volume::new(self.dims, (0..n).map(|i| self.hu(i) as f32).collect(), Affine(*affine))
    }
}

/// Resolve an entry's volume path against the manifest's folder.
pub fn volume_path(manifest: &Path, entry: &ManifestEntry) -> PathBuf {
    manifest.parent().unwrap_or(Path::new(".")).join(&entry.volume)
}

/// The label names, as owned strings (for `dataset.json`).
pub fn label_names() -> Vec<String> {
    LABELS.iter().map(|s| s.to_string()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A prepared volume whose shape product overflows (2^32 x 2^32 x 1 wraps to 0 elements,
    /// which an empty data section would have matched) is refused, not mapped.
    #[test]
    fn overflowing_shape_is_refused() {
        let d = std::env::temp_dir().join(format!("text2ct-manifest-overflow-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let p = d.join("v.npy");
        let mut dict = "{'descr': '<i2', 'fortran_order': True, 'shape': (4294967296, 4294967296, 1), }".to_string();
        while !(10 + dict.len() + 1).is_multiple_of(64) {
            dict.push(' ');
        }
        dict.push('\n');
        let mut b = b"\x93NUMPY\x01\x00".to_vec();
        b.extend_from_slice(&(dict.len() as u16).to_le_bytes());
        b.extend_from_slice(dict.as_bytes());
        std::fs::write(&p, &b).unwrap();
        let e = MappedVolume::open(&p).err().expect("refused").to_string();
        assert!(e.contains("v.npy") && e.contains("truncated"), "{e}");
        std::fs::remove_dir_all(&d).ok();
    }
}
