//! Procedural chest-CT phantoms with radiology-style reports and CT-RATE labels.
//!
//! Every scan is a **synthetic phantom, not a patient**: a procedural chest (body wall, ribs,
//! sternum, spine, lungs with branching vessel and bronchial trees, trachea, heart, aorta,
//! pulmonary arteries, mediastinal fat, liver, stomach and spleen) in Hounsfield units, with any
//! combination of the 18 CT-RATE abnormalities drawn with configurable prevalence. The voxels,
//! the report and the labels all derive from one set of hidden parameters ([`PhantomParams`]),
//! so the data set is a benchmark with known ground truth.
//!
//! - [`sample_params`]: draw the parameters of scan `index` (cheap; no voxels).
//! - [`render`]: voxels and tissue map of a parameter set.
//! - [`generate_scan`]: both, plus the report.
//! - [`write_ctrate_dataset`]: a whole data set in CT-RATE's own layout.
//!
//! Scan `index` of seed `seed` is identical whatever the thread count: each scan derives its
//! own random streams from `(seed, index)` (one per label, one for the anatomy, one for the
//! report), and the CT noise is a counter-based hash of the voxel position.

pub mod anatomy;
pub mod config;
pub mod dataset;
pub mod findings;
pub mod noise;
pub mod params;
mod render;
pub mod report;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use text2ct_data::labels::NUM_LABELS;
use text2ct_io::{Affine, IoError, Volume};

pub use config::{DatasetConfig, PhantomConfig, DEFAULT_PREVALENCE};
pub use dataset::{write_ctrate_dataset, DatasetSummary};
pub use params::{Grid, Loc, PhantomParams, Severity, Side};
pub use report::Report;

/// Errors of the phantom generator.
#[derive(Debug, thiserror::Error)]
pub enum PhantomError {
    #[error("invalid phantom configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Io(#[from] IoError),
    #[error("{path}: {msg}")]
    Write { path: std::path::PathBuf, msg: String },
}

pub type Result<T, E = PhantomError> = std::result::Result<T, E>;

/// Tissue class of a voxel in the tissue map returned by [`render`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Tissue {
    Air = 0,
    /// Skin, intervertebral discs, spinal cord, esophagus.
    Soft,
    Fat,
    Muscle,
    Bone,
    /// Aerated lung parenchyma.
    Lung,
    /// Mediastinal and neck fat.
    Mediastinum,
    Heart,
    /// Great vessels and pulmonary vessels.
    Vessel,
    /// Air inside the trachea and bronchi (and air bronchograms).
    Airway,
    AirwayWall,
    /// Liver, spleen, stomach wall and abdominal fat below the diaphragm.
    Abdomen,
    /// Gas in the stomach or in a hiatal hernia.
    Gas,
    /// Pleural or pericardial fluid.
    Fluid,
    /// Nodules, consolidation, atelectasis, fibrotic bands, hernia wall.
    Lesion,
    Node,
    Calcium,
    Metal,
}

impl Tissue {
    pub const ALL: [Tissue; 18] = [
        Tissue::Air,
        Tissue::Soft,
        Tissue::Fat,
        Tissue::Muscle,
        Tissue::Bone,
        Tissue::Lung,
        Tissue::Mediastinum,
        Tissue::Heart,
        Tissue::Vessel,
        Tissue::Airway,
        Tissue::AirwayWall,
        Tissue::Abdomen,
        Tissue::Gas,
        Tissue::Fluid,
        Tissue::Lesion,
        Tissue::Node,
        Tissue::Calcium,
        Tissue::Metal,
    ];
    pub fn from_u8(v: u8) -> Option<Tissue> {
        Tissue::ALL.get(v as usize).copied()
    }
}

/// One generated scan: a synthetic phantom, not a patient.
#[derive(Clone, Debug)]
pub struct PhantomScan {
    /// Hounsfield units, LPS voxel axes (x toward Left, y Posterior, z Superior).
    pub volume: Volume,
    /// Presence of each label in `text2ct_data::labels::LABELS` order.
    pub labels: [bool; NUM_LABELS],
    pub findings: String,
    pub impressions: String,
    pub clinical_information: String,
    pub technique: String,
    pub params: PhantomParams,
}

/// Voxels plus the tissue class of each voxel (same order, `Tissue as u8`).
#[derive(Clone, Debug)]
pub struct Rendered {
    pub volume: Volume,
    pub tissue: Vec<u8>,
}

const STREAM_LABELS: u64 = 1;
const STREAM_ANATOMY: u64 = 2;
const STREAM_REPORT: u64 = 3;
const STREAM_NOISE: u64 = 4;
const STREAM_FINDING0: u64 = 10;

/// The random stream `stream` of scan `index` of data set `seed`.
pub fn scan_rng(seed: u64, index: u64, stream: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(noise::derive(noise::derive(seed, index), stream))
}

/// Draw the 18 labels of scan `index` (cheap; the same labels [`sample_params`] uses).
pub fn draw_labels(cfg: &PhantomConfig, index: u64) -> [bool; NUM_LABELS] {
    let mut rng = scan_rng(cfg.seed, index, STREAM_LABELS);
    let mut out = [false; NUM_LABELS];
    for (k, o) in out.iter_mut().enumerate() {
        let x: f64 = rng.random();
        *o = x < cfg.prevalence[k];
    }
    out
}

/// The affine of a phantom grid: LPS voxel axes (RAS direction diag(-1, -1, 1)), the given
/// spacing, and the FOV centre at world (0, 0, 0).
pub fn phantom_affine(dims: [usize; 3], spacing: [f64; 3]) -> Result<Affine> {
    let c = [0, 1, 2].map(|i| (dims[i] as f64 - 1.0) / 2.0 * spacing[i]);
    let dir = [[-1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, 1.0]];
    Ok(Affine::from_parts(dir, spacing, [c[0], c[1], -c[2]])?)
}

/// Draw every hidden parameter of scan `index` without rendering it.
pub fn sample_params(cfg: &PhantomConfig, index: u64) -> Result<PhantomParams> {
    cfg.validate()?;
    let grid = Grid { dims: cfg.dims, spacing: cfg.spacing };
    let labels = draw_labels(cfg, index);
    let mut rngs: Vec<ChaCha8Rng> =
        (0..NUM_LABELS as u64).map(|k| scan_rng(cfg.seed, index, STREAM_FINDING0 + k)).collect();
    let cm = labels[2].then(|| findings::sample_cardiomegaly(&mut rngs[2]));
    let mut arng = scan_rng(cfg.seed, index, STREAM_ANATOMY);
    let (anatomy, coverage, patient) = anatomy::sample_anatomy(&mut arng, &grid, cm.map(|c| c.1));
    let body = anatomy::Body::new(&anatomy);
    let trees = anatomy::build_trees(&anatomy, &body);
    let ctx = findings::Ctx { an: &anatomy, body: &body, trees: &trees, grid, cov: &coverage };
    let found = findings::sample_findings(&ctx, &labels, &mut rngs, cm);
    debug_assert_eq!(found.labels(), labels);
    let noise_seed = scan_rng(cfg.seed, index, STREAM_NOISE).random();
    Ok(PhantomParams {
        seed: cfg.seed,
        index,
        dims: cfg.dims,
        spacing_mm: cfg.spacing,
        patient,
        anatomy,
        coverage,
        labels,
        findings: found,
        noise_seed,
        noise_sigma: cfg.noise_sigma,
    })
}

/// Render the voxels (HU) and the tissue map of a parameter set.
pub fn render(params: &PhantomParams) -> Result<Rendered> {
    let cfg = PhantomConfig { dims: params.dims, spacing: params.spacing_mm, ..Default::default() };
    cfg.validate()?;
    let body = anatomy::Body::new(&params.anatomy);
    let trees = anatomy::build_trees(&params.anatomy, &body);
    let prims = findings::build_scene(params, &body, &trees);
    let (data, tissue) = render::rasterize(params, &body, &prims);
    let volume = Volume::new(params.dims, data, phantom_affine(params.dims, params.spacing_mm)?)?;
    Ok(Rendered { volume, tissue })
}

/// Write the report of a parameter set (deterministic for its seed and index).
pub fn make_report(params: &PhantomParams) -> Report {
    let mut rng = scan_rng(params.seed, params.index, STREAM_REPORT);
    report::write_report(params, &mut rng)
}

/// Generate scan `index`: parameters, voxels and report.
pub fn generate_scan(cfg: &PhantomConfig, index: u64) -> Result<PhantomScan> {
    let params = sample_params(cfg, index)?;
    let rendered = render(&params)?;
    let rep = make_report(&params);
    Ok(PhantomScan {
        volume: rendered.volume,
        labels: params.labels,
        findings: rep.findings,
        impressions: rep.impressions,
        clinical_information: rep.clinical_information,
        technique: rep.technique,
        params,
    })
}
