//! Preprocessing of CT volumes, in the two documented modes.
//!
//! The paper and the released Text2CT code disagree (see `docs/preprocessing.md`):
//!
//! | step | `paper` | `release` |
//! |---|---|---|
//! | HU | slope/intercept where the file is not already HU | none (assumes the `_fixed` HU volumes) |
//! | orientation | RAS (not stated in the paper; needed for consistency) | RAS |
//! | geometry | trilinear resample to 0.75 x 0.75 x 1.5 mm, then centre crop/pad to 512 x 512 x 128 (pad −1000 HU) | trilinear resize to 0.75 x 0.75 x 3.0 mm, then trilinear *resize* to 512 x 512 x 128 (whatever the extent) |
//! | intensities | clip [−1000, 1000] | clip [−1000, 1000] (before resizing) |
//!
//! Both produce clipped HU; models read `(hu + 1000) / 2000` in [0, 1]. Unlike the release
//! (which writes a nominal spacing), the affine of a `release`-mode output is the true one:
//! the resize changes the voxel size, and the stored geometry says so.

use text2ct_io::nifti_io::NiftiInfo;
use text2ct_io::transform::{clip, crop_or_pad, reorient, resample_to_spacing, resize, AIR_HU};
use text2ct_io::{IoError, Result, Volume};

/// Which preprocessing to follow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Paper,
    Release,
}

impl Mode {
    pub fn parse(s: &str) -> Option<Mode> {
        match s {
            "paper" => Some(Mode::Paper),
            "release" => Some(Mode::Release),
            _ => None,
        }
    }
}

/// Parameters of preprocessing. Spacing and size are free so that small demo scales use the
/// same code as the 512 x 512 x 128 default.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PreprocessConfig {
    pub mode: Mode,
    /// Target voxel size, mm (x, y, z in RAS voxel order).
    pub spacing: [f64; 3],
    /// Target size in voxels.
    pub size: [usize; 3],
    pub hu_min: f32,
    pub hu_max: f32,
}

impl PreprocessConfig {
    /// The paper: 0.75 x 0.75 x 1.5 mm, crop/pad to 512 x 512 x 128.
    pub fn paper() -> Self {
        PreprocessConfig {
            mode: Mode::Paper,
            spacing: [0.75, 0.75, 1.5],
            size: [512, 512, 128],
            hu_min: -1000.0,
            hu_max: 1000.0,
        }
    }
    /// The released code: nominal 0.75 x 0.75 x 3.0 mm, resized to 512 x 512 x 128.
    pub fn release() -> Self {
        PreprocessConfig { mode: Mode::Release, spacing: [0.75, 0.75, 3.0], ..Self::paper() }
    }
    pub fn for_mode(mode: Mode) -> Self {
        match mode {
            Mode::Paper => Self::paper(),
            Mode::Release => Self::release(),
        }
    }
    pub fn validate(&self) -> Result<()> {
        if self.spacing.iter().any(|s| !s.is_finite() || *s <= 0.0) {
            return Err(IoError::invalid(format!("spacing must be positive, got {:?}", self.spacing)));
        }
        if self.size.contains(&0) || self.size.iter().any(|&s| s > 2048) {
            return Err(IoError::invalid(format!("size must be in 1..=2048 per axis, got {:?}", self.size)));
        }
        if !(self.hu_min < self.hu_max) {
            return Err(IoError::invalid("hu_min must be below hu_max"));
        }
        Ok(())
    }
}

/// How to treat RescaleSlope / RescaleIntercept from the metadata.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RescalePolicy {
    /// Apply only when the voxels are not already HU (detected; see [`decide_hu`]).
    Auto,
    /// Apply; refuse (error) when the voxels already look like HU.
    Apply,
    /// Never apply.
    Never,
}

impl RescalePolicy {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "auto" => Some(Self::Auto),
            "apply" => Some(Self::Apply),
            "never" => Some(Self::Never),
            _ => None,
        }
    }
}

/// What was done to get HU.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[serde(tag = "hu", rename_all = "snake_case")]
pub enum HuDecision {
    /// Metadata slope/intercept applied to the stored values.
    Applied { slope: f64, intercept: f64 },
    /// The values were already HU; metadata not applied (and why).
    AlreadyHu { reason: String },
}

/// Decide whether to apply the metadata's slope/intercept, and apply it.
///
/// Detection (policy `auto`): the NIfTI reader has already applied a header `scl_slope` /
/// `scl_inter`; if the header had one, the data is HU. Otherwise raw CT storage is unsigned
/// (air stored near 0, intercept about −1024), while HU data holds air near −1000: a volume
/// whose 0.1th percentile is below −200 is taken as already HU. Applying the intercept to such
/// a volume would put air at about −2000 HU (CT-RATE's `_fixed` trap).
pub fn decide_hu(
    vol: &mut Volume,
    info: &NiftiInfo,
    rescale: Option<(f64, f64)>,
    policy: RescalePolicy,
) -> Result<HuDecision> {
    let Some((slope, intercept)) = rescale else {
        return Ok(HuDecision::AlreadyHu { reason: "no slope/intercept in metadata".into() });
    };
    if !slope.is_finite() || !intercept.is_finite() || slope == 0.0 {
        return Err(IoError::invalid(format!("metadata slope/intercept ({slope}, {intercept}) is not usable")));
    }
    if policy == RescalePolicy::Never {
        return Ok(HuDecision::AlreadyHu { reason: "rescale policy 'never'".into() });
    }
    if slope == 1.0 && intercept == 0.0 {
        return Ok(HuDecision::AlreadyHu { reason: "identity slope/intercept".into() });
    }
    let looks_hu = if info.scaled {
        Some(format!(
            "the NIfTI header's scl_slope/scl_inter ({}, {}) was already applied",
            info.scl_slope, info.scl_inter
        ))
    } else {
        let low = low_percentile(vol.data(), 0.001);
        (low < -200.0).then(|| format!("voxels already hold HU (0.1th percentile {low:.0})"))
    };
    match (looks_hu, policy) {
        (Some(reason), RescalePolicy::Auto) => {
            Ok(HuDecision::AlreadyHu { reason: format!("{reason}; not applying slope/intercept twice") })
        }
        (Some(reason), _) => Err(IoError::invalid(format!(
            "refusing to apply RescaleSlope/RescaleIntercept ({slope}, {intercept}) twice: {reason}"
        ))),
        (None, _) => {
            let (s, b) = (slope as f32, intercept as f32);
            vol.map_inplace(move |v| v * s + b);
            Ok(HuDecision::Applied { slope, intercept })
        }
    }
}

/// Approximate low percentile via a histogram (fast, no sort, no allocation per voxel).
fn low_percentile(data: &[f32], q: f64) -> f32 {
    const LO: f32 = -4096.0;
    const BIN: f32 = 16.0;
    let mut hist = [0u64; 1024];
    for &v in data {
        let b = ((v - LO) / BIN).clamp(0.0, 1023.0) as usize;
        hist[b] += 1;
    }
    let target = (data.len() as f64 * q).ceil() as u64;
    let mut acc = 0;
    for (i, h) in hist.iter().enumerate() {
        acc += h;
        if acc >= target.max(1) {
            return LO + (i as f32 + 0.5) * BIN;
        }
    }
    LO + 1024.0 * BIN
}

/// Preprocess a volume already in HU to the configured geometry. Errors on NaN/Inf voxels.
pub fn preprocess(vol: &Volume, cfg: &PreprocessConfig) -> Result<Volume> {
    cfg.validate()?;
    vol.check_finite()?;
    let ras = reorient(vol, "RAS")?;
    match cfg.mode {
        Mode::Paper => {
            let r = resample_to_spacing(&ras, cfg.spacing)?;
            let mut c = crop_or_pad(&r, cfg.size, AIR_HU)?;
            clip(&mut c, cfg.hu_min, cfg.hu_max);
            Ok(c)
        }
        Mode::Release => {
            let mut v = ras;
            clip(&mut v, cfg.hu_min, cfg.hu_max);
            let sp = v.spacing();
            let d = v.dims();
            let mid = [0, 1, 2].map(|i| ((d[i] as f64 * sp[i] / cfg.spacing[i]).round() as usize).max(1));
            let r = resize(&v, mid)?;
            resize(&r, cfg.size)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use text2ct_io::nifti_io::DType;
    use text2ct_io::Affine;

    fn info(scaled: bool) -> NiftiInfo {
        NiftiInfo {
            dtype: DType::I16,
            scl_slope: if scaled { 1.0 } else { 0.0 },
            scl_inter: if scaled { -1024.0 } else { 0.0 },
            scaled,
            qform_code: 1,
            sform_code: 1,
            affine_source: "sform",
            pixdim: [1.0; 4],
            xyzt_units: 2,
            descrip: String::new(),
            gzipped: false,
            big_endian: false,
        }
    }

    /// A phantom-like volume: air outside, a water cylinder inside.
    fn body(dims: [usize; 3], spacing: [f64; 3], air: f32, water: f32) -> Volume {
        let a = Affine::from_spacing_origin(spacing, [0.0; 3]).unwrap();
        Volume::from_fn(dims, a, |x, y, _| {
            let (cx, cy) = (dims[0] as f32 / 2.0, dims[1] as f32 / 2.0);
            let r = ((x as f32 - cx).powi(2) + (y as f32 - cy).powi(2)).sqrt();
            if r < dims[0] as f32 / 3.0 {
                water
            } else {
                air
            }
        })
        .unwrap()
    }

    #[test]
    fn hu_detection_refuses_double_application() {
        // Raw storage: air 24, water 1024, intercept -1024 -> must apply.
        let mut raw = body([20, 20, 4], [1.0; 3], 24.0, 1024.0);
        let d = decide_hu(&mut raw, &info(false), Some((1.0, -1024.0)), RescalePolicy::Auto).unwrap();
        assert_eq!(d, HuDecision::Applied { slope: 1.0, intercept: -1024.0 });
        assert_eq!(raw.get(0, 0, 0), -1000.0);
        assert_eq!(raw.get(10, 10, 0), 0.0);
        // Already HU (CT-RATE _fixed): auto skips, apply refuses.
        let mut hu = body([20, 20, 4], [1.0; 3], -1000.0, 0.0);
        let before = hu.clone();
        let d = decide_hu(&mut hu, &info(false), Some((1.0, -1024.0)), RescalePolicy::Auto).unwrap();
        assert!(matches!(d, HuDecision::AlreadyHu { .. }));
        assert_eq!(hu, before);
        let e = decide_hu(&mut hu, &info(false), Some((1.0, -1024.0)), RescalePolicy::Apply).unwrap_err();
        assert!(e.to_string().contains("twice"), "{e}");
        // Header scaling already applied by the reader.
        let mut raw2 = body([20, 20, 4], [1.0; 3], 24.0, 1024.0);
        let d = decide_hu(&mut raw2, &info(true), Some((1.0, -1024.0)), RescalePolicy::Auto).unwrap();
        assert!(matches!(d, HuDecision::AlreadyHu { ref reason } if reason.contains("scl_slope")));
        assert!(decide_hu(&mut raw2, &info(false), Some((0.0, 1.0)), RescalePolicy::Auto).is_err());
    }

    #[test]
    fn paper_mode_geometry() {
        // 1 x 1 x 3 mm LPS input, 40 x 30 x 10.
        let a = Affine::from_parts([[-1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, 1.0]], [1.0, 1.0, 3.0], [0.0; 3])
            .unwrap();
        let v = Volume::from_fn([40, 30, 10], a, |x, _, _| if x < 20 { -1500.0 } else { 1500.0 }).unwrap();
        let cfg = PreprocessConfig {
            mode: Mode::Paper,
            spacing: [2.0, 2.0, 1.5],
            size: [24, 24, 24],
            hu_min: -1000.0,
            hu_max: 1000.0,
        };
        let out = preprocess(&v, &cfg).unwrap();
        assert_eq!(out.dims(), [24, 24, 24]);
        assert_eq!(out.orientation(), "RAS");
        let sp = out.spacing();
        assert!((sp[0] - 2.0).abs() < 1e-9 && (sp[2] - 1.5).abs() < 1e-9);
        // y: 30 mm -> 15 voxels padded to 24 with air (-1000); z: 30 mm -> 20 voxels padded.
        assert_eq!(out.get(12, 0, 12), AIR_HU);
        assert_eq!(out.get(12, 12, 0), AIR_HU);
        // Clipped to [-1000, 1000]; LPS x<20 (patient left) is RAS x high.
        // x: 40 mm -> 20 voxels, padded by 2 on each side.
        assert_eq!(out.get(0, 12, 12), AIR_HU);
        assert_eq!(out.get(20, 12, 12), -1000.0);
        assert_eq!(out.get(3, 12, 12), 1000.0);
        // World positions preserved: the boundary between halves stays at world x = -19.5 mm.
        let w = out.affine().apply([11.5, 12.0, 12.0]);
        let inv = v.affine().inverse().unwrap().apply(w);
        assert!((inv[0] - 19.5).abs() < 1e-6, "{inv:?}");
    }

    #[test]
    fn release_mode_resizes_to_fixed_size() {
        let v = body([30, 30, 50], [0.8, 0.8, 1.0], -1000.0, 40.0);
        let cfg = PreprocessConfig { size: [16, 16, 8], ..PreprocessConfig::release() };
        let out = preprocess(&v, &cfg).unwrap();
        assert_eq!(out.dims(), [16, 16, 8]);
        // The whole extent is kept: true spacing = 24 mm / 16 and 50 mm / 8.
        let sp = out.spacing();
        assert!((sp[0] - 1.5).abs() < 1e-6 && (sp[2] - 6.25).abs() < 1e-6, "{sp:?}");
        assert!((out.get(8, 8, 4) - 40.0).abs() < 1e-3);
        let mut bad = v.clone();
        bad.data_mut()[5] = f32::NAN;
        assert!(preprocess(&bad, &cfg).unwrap_err().to_string().contains("non-finite"));
        assert!(PreprocessConfig { spacing: [0.0, 1.0, 1.0], ..cfg }.validate().is_err());
    }
}
