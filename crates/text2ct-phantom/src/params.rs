//! The hidden parameters of one phantom. Every scan's voxels, report and labels are derived
//! from one [`PhantomParams`], so the data set carries known ground truth.
//!
//! Coordinates: `mm` are patient millimetres in DICOM's LPS convention (+x toward the
//! patient's Left, +y Posterior, +z Superior) measured from the centre of the field of view.
//! The NIfTI world position (RAS+) of a point is `(-x, -y, z)`. `voxel` are (fractional) voxel
//! indices of the same point in the rendered grid.

use serde::{Deserialize, Serialize};
use text2ct_data::labels::NUM_LABELS;

pub type Vec3 = [f64; 3];

/// A point in both mm (LPS from the FOV centre) and voxel indices.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Loc {
    pub mm: Vec3,
    pub voxel: Vec3,
}

/// Maps mm (LPS, from the FOV centre) to voxel indices and back.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Grid {
    pub dims: [usize; 3],
    pub spacing: Vec3,
}

impl Grid {
    /// Fractional voxel index of a point in mm.
    pub fn to_voxel(&self, mm: Vec3) -> Vec3 {
        [0, 1, 2].map(|i| mm[i] / self.spacing[i] + (self.dims[i] as f64 - 1.0) / 2.0)
    }
    /// Position in mm of a voxel index.
    pub fn to_mm(&self, v: Vec3) -> Vec3 {
        [0, 1, 2].map(|i| (v[i] - (self.dims[i] as f64 - 1.0) / 2.0) * self.spacing[i])
    }
    pub fn loc(&self, mm: Vec3) -> Loc {
        Loc { mm, voxel: self.to_voxel(mm) }
    }
    /// Nearest voxel index of a point, if inside the grid.
    pub fn nearest(&self, mm: Vec3) -> Option<[usize; 3]> {
        let v = self.to_voxel(mm);
        let mut out = [0usize; 3];
        for i in 0..3 {
            let r = v[i].round();
            if r < 0.0 || r > self.dims[i] as f64 - 1.0 {
                return None;
            }
            out[i] = r as usize;
        }
        Some(out)
    }
}

/// Which side of the patient.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    Right,
    Left,
    Bilateral,
}

impl Side {
    /// Sign along +x (LPS): Left is +1, Right is -1, Bilateral 0.
    pub fn sign(self) -> f64 {
        match self {
            Side::Right => -1.0,
            Side::Left => 1.0,
            Side::Bilateral => 0.0,
        }
    }
    pub fn word(self) -> &'static str {
        match self {
            Side::Right => "right",
            Side::Left => "left",
            Side::Bilateral => "bilateral",
        }
    }
    /// Combine the sides of several regions.
    pub fn of(sides: impl IntoIterator<Item = Side>) -> Side {
        let (mut r, mut l) = (false, false);
        for s in sides {
            match s {
                Side::Right => r = true,
                Side::Left => l = true,
                Side::Bilateral => {
                    r = true;
                    l = true
                }
            }
        }
        match (r, l) {
            (true, false) => Side::Right,
            (false, true) => Side::Left,
            _ => Side::Bilateral,
        }
    }
}

/// Grade of a finding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Mild,
    Moderate,
    Severe,
}

impl Severity {
    pub fn word(self) -> &'static str {
        match self {
            Severity::Mild => "mild",
            Severity::Moderate => "moderate",
            Severity::Severe => "severe",
        }
    }
    pub fn level(self) -> usize {
        self as usize
    }
}

/// Pulmonary lobe.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Lobe {
    RUL,
    RML,
    RLL,
    LUL,
    LLL,
}

impl Lobe {
    pub fn side(self) -> Side {
        match self {
            Lobe::RUL | Lobe::RML | Lobe::RLL => Side::Right,
            _ => Side::Left,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Lobe::RUL => "right upper lobe",
            Lobe::RML => "right middle lobe",
            Lobe::RLL => "right lower lobe",
            Lobe::LUL => "left upper lobe",
            Lobe::LLL => "left lower lobe",
        }
    }
}

/// The synthetic subject's demographics (for the metadata CSV).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Patient {
    pub age: u32,
    /// "M" or "F".
    pub sex: String,
    /// YYYYMMDD.
    pub study_date: String,
}

/// Normal anatomy of the subject (all mm, LPS from the FOV centre).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Anatomy {
    /// Body midline position (x, y).
    pub body_center_mm: [f64; 2],
    /// Half width and half depth of the body's elliptic outline.
    pub body_half_width_mm: f64,
    pub body_half_depth_mm: f64,
    pub subcutaneous_fat_mm: f64,
    /// Thoracic cavity (inside the ribs): half width, half depth and the y of its centre.
    pub cavity_half_width_mm: f64,
    pub cavity_half_depth_mm: f64,
    pub cavity_center_y_mm: f64,
    /// Inner thoracic width (2 x cavity half width).
    pub thorax_width_mm: f64,
    /// z of the lowest lung point (posterior costophrenic recess) and of the apices.
    pub lung_base_z_mm: f64,
    pub lung_apex_z_mm: f64,
    pub lung_height_mm: f64,
    /// Heights of the diaphragm domes above the lung base.
    pub dome_height_right_mm: f64,
    pub dome_height_left_mm: f64,
    /// Half width of the mediastinum between the lungs.
    pub mediastinum_half_width_mm: f64,
    /// Approximate volume of both lungs (ml), from the analytic lung shape.
    pub lung_volume_ml: f64,
    /// Heart ellipsoid centre and semi-axes (x, y, z).
    pub heart_center: Loc,
    pub heart_semi_axes_mm: Vec3,
    /// Maximal transverse heart diameter and cardiothoracic ratio.
    pub heart_width_mm: f64,
    pub cardiothoracic_ratio: f64,
    pub trachea_center_mm: [f64; 2],
    pub trachea_radius_mm: f64,
    pub carina: Loc,
    /// Aorta centre line (root, ascending, arch, descending down to the abdomen).
    pub aorta_path_mm: Vec<Vec3>,
    pub aorta_radius_ascending_mm: f64,
    pub aorta_radius_descending_mm: f64,
    /// Pulmonary trunk from the right ventricular outflow to the bifurcation, and hila.
    pub pulmonary_trunk_mm: [Vec3; 2],
    pub hilum_right: Loc,
    pub hilum_left: Loc,
    pub esophagus_center_mm: [f64; 2],
    /// Vertebral body centre (x, y) and its half width.
    pub spine_center_mm: [f64; 2],
    pub vertebral_half_width_mm: f64,
    /// Seed of the branching vessel and bronchial trees and of the parenchymal texture.
    pub tree_seed: u64,
    pub texture_seed: u64,
}

/// The FOV's slice coverage relative to the lungs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Coverage {
    pub fov_z_min_mm: f64,
    pub fov_z_max_mm: f64,
    /// Distance from the lung apices up to the top slice (negative: apices cut off).
    pub above_apex_mm: f64,
    /// Distance from the lung bases down to the bottom slice (negative: bases cut off).
    pub below_base_mm: f64,
}

/// A lung lesion region (ellipsoid) on one side.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Region {
    pub side: Side,
    pub lobe: Lobe,
    pub center: Loc,
    pub semi_axes_mm: Vec3,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceKind {
    Pacemaker,
    Port,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MedicalMaterial {
    pub kind: DeviceKind,
    pub side: Side,
    /// Device body (box) centre and half sizes.
    pub device: Loc,
    pub device_half_size_mm: Vec3,
    /// Lead / catheter polyline (mm).
    pub lead_mm: Vec<Vec3>,
    pub lead_radius_mm: f64,
    pub hu: f32,
}

/// A calcified plaque (small sphere).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Plaque {
    pub center: Loc,
    pub radius_mm: f64,
    pub hu: f32,
    /// Vessel or segment it sits in ("ascending aorta", "LAD", ...).
    pub vessel: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Calcification {
    pub severity: Severity,
    pub plaques: Vec<Plaque>,
    /// Vessels or aortic segments involved, in report order.
    pub vessels: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Cardiomegaly {
    pub severity: Severity,
    pub heart_width_mm: f64,
    pub cardiothoracic_ratio: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PericardialEffusion {
    pub severity: Severity,
    /// Thickness of the fluid rim around the heart.
    pub thickness_mm: f64,
    pub hu: f32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HiatalHernia {
    pub severity: Severity,
    pub center: Loc,
    pub semi_axes_mm: Vec3,
    /// Largest diameter.
    pub size_mm: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LymphNode {
    pub station: String,
    pub center: Loc,
    pub short_axis_mm: f64,
    pub long_axis_mm: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Lymphadenopathy {
    pub nodes: Vec<LymphNode>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Emphysema {
    pub severity: Severity,
    pub side: Side,
    /// "centrilobular" or "paraseptal".
    pub kind: String,
    /// Region where the low-attenuation areas lie (upper-zone predominant).
    pub regions: Vec<Region>,
    /// Intended fraction of the affected region below -950 HU.
    pub target_fraction: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RegionFinding {
    pub severity: Severity,
    pub side: Side,
    pub regions: Vec<Region>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Nodule {
    pub side: Side,
    pub lobe: Lobe,
    pub center: Loc,
    pub diameter_mm: f64,
    pub hu: f32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Nodules {
    pub nodules: Vec<Nodule>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FibroticBand {
    pub a_mm: Vec3,
    pub b_mm: Vec3,
    pub radius_mm: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Fibrosis {
    pub severity: Severity,
    pub side: Side,
    pub regions: Vec<Region>,
    pub bands: Vec<FibroticBand>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EffusionSide {
    pub side: Side,
    pub severity: Severity,
    /// Maximal thickness of the dependent fluid layer.
    pub depth_mm: f64,
    /// A point in the middle of the fluid layer.
    pub sample: Loc,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PleuralEffusion {
    pub side: Side,
    pub sides: Vec<EffusionSide>,
    pub hu: f32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Mosaic {
    pub side: Side,
    pub regions: Vec<Region>,
    /// Size of the lobular patches.
    pub patch_mm: f64,
    /// HU amplitude of the alternating densities.
    pub amplitude_hu: f32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AirwayFinding {
    pub severity: Severity,
    pub side: Side,
    /// "lower lobes", "both lungs" etc.
    pub zone: String,
    /// Bronchial wall thickness (peribronchial thickening) or bronchoarterial ratio
    /// (bronchiectasis) in the affected bronchi.
    pub value: f64,
    /// Representative affected bronchial segments (start, end, lumen radius).
    pub segments: Vec<(Vec3, Vec3, f64)>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Consolidation {
    pub side: Side,
    pub regions: Vec<Region>,
    /// Air bronchograms (start, end, radius).
    pub bronchograms: Vec<(Vec3, Vec3, f64)>,
    pub hu: f32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SeptalThickening {
    pub severity: Severity,
    pub side: Side,
    pub regions: Vec<Region>,
    /// Distance between septa and their thickness.
    pub spacing_mm: f64,
    pub thickness_mm: f64,
}

/// The 18 abnormalities; `None` where absent.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Findings {
    pub medical_material: Option<MedicalMaterial>,
    pub arterial_wall_calcification: Option<Calcification>,
    pub cardiomegaly: Option<Cardiomegaly>,
    pub pericardial_effusion: Option<PericardialEffusion>,
    pub coronary_calcification: Option<Calcification>,
    pub hiatal_hernia: Option<HiatalHernia>,
    pub lymphadenopathy: Option<Lymphadenopathy>,
    pub emphysema: Option<Emphysema>,
    pub atelectasis: Option<RegionFinding>,
    pub lung_nodule: Option<Nodules>,
    pub lung_opacity: Option<RegionFinding>,
    pub fibrotic_sequela: Option<Fibrosis>,
    pub pleural_effusion: Option<PleuralEffusion>,
    pub mosaic_attenuation: Option<Mosaic>,
    pub peribronchial_thickening: Option<AirwayFinding>,
    pub consolidation: Option<Consolidation>,
    pub bronchiectasis: Option<AirwayFinding>,
    pub septal_thickening: Option<SeptalThickening>,
}

impl Findings {
    /// Presence of each label, in `LABELS` order.
    pub fn labels(&self) -> [bool; NUM_LABELS] {
        [
            self.medical_material.is_some(),
            self.arterial_wall_calcification.is_some(),
            self.cardiomegaly.is_some(),
            self.pericardial_effusion.is_some(),
            self.coronary_calcification.is_some(),
            self.hiatal_hernia.is_some(),
            self.lymphadenopathy.is_some(),
            self.emphysema.is_some(),
            self.atelectasis.is_some(),
            self.lung_nodule.is_some(),
            self.lung_opacity.is_some(),
            self.fibrotic_sequela.is_some(),
            self.pleural_effusion.is_some(),
            self.mosaic_attenuation.is_some(),
            self.peribronchial_thickening.is_some(),
            self.consolidation.is_some(),
            self.bronchiectasis.is_some(),
            self.septal_thickening.is_some(),
        ]
    }
}

/// Every hidden parameter of one phantom scan.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PhantomParams {
    pub seed: u64,
    pub index: u64,
    pub dims: [usize; 3],
    pub spacing_mm: Vec3,
    pub patient: Patient,
    pub anatomy: Anatomy,
    pub coverage: Coverage,
    /// Labels in `text2ct_data::labels::LABELS` order.
    pub labels: [bool; NUM_LABELS],
    pub findings: Findings,
    /// Seed of the CT noise.
    pub noise_seed: u64,
    pub noise_sigma: f32,
}

impl PhantomParams {
    pub fn grid(&self) -> Grid {
        Grid { dims: self.dims, spacing: self.spacing_mm }
    }
}
