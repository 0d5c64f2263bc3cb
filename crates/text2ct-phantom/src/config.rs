//! Configuration of the procedural phantom generator.

use serde::{Deserialize, Serialize};
use text2ct_data::labels::NUM_LABELS;

use crate::PhantomError;

/// Default prevalence of each of the 18 CT-RATE labels (in `LABELS` order), roughly as
/// imbalanced as CT-RATE's silver labels.
pub const DEFAULT_PREVALENCE: [f64; NUM_LABELS] = [
    0.10, // Medical material
    0.28, // Arterial wall calcification
    0.10, // Cardiomegaly
    0.07, // Pericardial effusion
    0.25, // Coronary artery wall calcification
    0.14, // Hiatal hernia
    0.25, // Lymphadenopathy
    0.20, // Emphysema
    0.25, // Atelectasis
    0.45, // Lung nodule
    0.38, // Lung opacity
    0.26, // Pulmonary fibrotic sequela
    0.12, // Pleural effusion
    0.08, // Mosaic attenuation pattern
    0.10, // Peribronchial thickening
    0.17, // Consolidation
    0.10, // Bronchiectasis
    0.07, // Interlobular septal thickening
];

/// Field of view (mm) of the default configuration: 64 x 64 x 32 voxels of 5.5 x 5.5 x 10 mm.
pub const DEFAULT_FOV_MM: [f64; 3] = [352.0, 352.0, 320.0];

/// Largest number of voxels a phantom may have (1024^3).
pub const MAX_VOXELS: u64 = 1 << 30;

/// How to generate synthetic chest-CT phantoms. These are procedural phantoms, not patients.
///
/// The anatomy is defined in millimetres around the centre of the field of view
/// (FOV = `dims * spacing`), so any voxel grid over the same FOV renders the same subject.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PhantomConfig {
    /// Voxels along x (toward patient Left), y (toward Posterior), z (toward Superior).
    pub dims: [usize; 3],
    /// Voxel size in mm.
    pub spacing: [f64; 3],
    /// Seed of the whole data set; scan `index` derives its own RNG from `(seed, index)`.
    pub seed: u64,
    /// Probability that each of the 18 labels (CT-RATE order) is present, each in `[0, 1]`.
    pub prevalence: [f64; NUM_LABELS],
    /// Standard deviation of the CT noise in HU (after its slight in-plane smoothing).
    pub noise_sigma: f32,
}

impl Default for PhantomConfig {
    fn default() -> Self {
        PhantomConfig {
            dims: [64, 64, 32],
            spacing: [5.5, 5.5, 10.0],
            seed: 0,
            prevalence: DEFAULT_PREVALENCE,
            noise_sigma: 15.0,
        }
    }
}

impl PhantomConfig {
    /// The default configuration on another grid with the same (default) field of view.
    pub fn with_dims(dims: [usize; 3]) -> Self {
        let spacing = [0, 1, 2].map(|i| if dims[i] > 0 { DEFAULT_FOV_MM[i] / dims[i] as f64 } else { 1.0 });
        PhantomConfig { dims, spacing, ..Default::default() }
    }

    /// Same configuration with another seed.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Prevalence 1 for the listed labels (indices into `LABELS`) and 0 for all the others.
    pub fn with_only_labels(mut self, present: &[usize]) -> Self {
        self.prevalence = [0.0; NUM_LABELS];
        for &i in present {
            if i < NUM_LABELS {
                self.prevalence[i] = 1.0;
            }
        }
        self
    }

    /// Field of view in mm (`dims * spacing`).
    pub fn fov_mm(&self) -> [f64; 3] {
        [0, 1, 2].map(|i| self.dims[i] as f64 * self.spacing[i])
    }

    /// Number of voxels.
    pub fn voxels(&self) -> u64 {
        self.dims.iter().map(|&d| d as u64).product()
    }

    /// Check every field; errors say what is wrong.
    pub fn validate(&self) -> Result<(), PhantomError> {
        let bad = |m: String| Err(PhantomError::Config(m));
        if self.dims.contains(&0) {
            return bad(format!("dims must all be positive, got {:?}", self.dims));
        }
        if self.dims.iter().any(|&d| d > 4096) {
            return bad(format!("dims {:?}: no axis may exceed 4096 voxels", self.dims));
        }
        if self.voxels() > MAX_VOXELS {
            return bad(format!(
                "dims {:?} make {} voxels, above the limit of {} (1024^3)",
                self.dims,
                self.voxels(),
                MAX_VOXELS
            ));
        }
        if self.spacing.iter().any(|s| !s.is_finite() || *s <= 0.0) {
            return bad(format!("spacing must be finite and positive, got {:?}", self.spacing));
        }
        if self.spacing.iter().any(|s| !(0.01..=100.0).contains(s)) {
            return bad(format!("spacing {:?} mm is outside the supported range 0.01..100 mm", self.spacing));
        }
        for (i, p) in self.prevalence.iter().enumerate() {
            if !p.is_finite() || !(0.0..=1.0).contains(p) {
                return bad(format!("prevalence of {:?} is {p}, must lie in [0, 1]", text2ct_data::labels::LABELS[i]));
            }
        }
        if !self.noise_sigma.is_finite() || !(0.0..=500.0).contains(&self.noise_sigma) {
            return bad(format!("noise_sigma must lie in [0, 500] HU, got {}", self.noise_sigma));
        }
        Ok(())
    }
}

/// How to write a CT-RATE-layout data set of phantoms.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatasetConfig {
    pub phantom: PhantomConfig,
    /// Number of scans (one scan per synthetic patient).
    pub count: usize,
    /// Fraction of the scans that go to the validation split.
    pub valid_fraction: f64,
    /// Worker threads (0 = all cores).
    pub jobs: usize,
    /// Store `HU + 1024` (so that the metadata's intercept -1024 really applies) instead of HU.
    pub store_raw: bool,
}

impl Default for DatasetConfig {
    fn default() -> Self {
        DatasetConfig { phantom: PhantomConfig::default(), count: 100, valid_fraction: 0.2, jobs: 0, store_raw: false }
    }
}

impl DatasetConfig {
    pub fn validate(&self) -> Result<(), PhantomError> {
        self.phantom.validate()?;
        if self.count == 0 {
            return Err(PhantomError::Config("count must be at least 1".into()));
        }
        if self.count > 10_000_000 {
            return Err(PhantomError::Config(format!("count {} is absurdly large", self.count)));
        }
        if !self.valid_fraction.is_finite() || !(0.0..=1.0).contains(&self.valid_fraction) {
            return Err(PhantomError::Config(format!(
                "valid_fraction must lie in [0, 1], got {}",
                self.valid_fraction
            )));
        }
        if self.jobs > 1024 {
            return Err(PhantomError::Config(format!("jobs {} is absurdly large", self.jobs)));
        }
        Ok(())
    }

    /// Number of validation scans (the last ones).
    pub fn valid_count(&self) -> usize {
        ((self.count as f64) * self.valid_fraction).round() as usize
    }
}
