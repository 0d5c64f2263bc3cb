//! Factual correctness (the paper's Table 3; protocol in `docs/evaluation/factual.md`): a trained
//! CT-Net classifier predicts the 18 CT-RATE abnormalities of every volume of a set, and its
//! probabilities are scored against the labels of the report each volume was made from: ROC AUC
//! and precision, per class, macro- and support-weighted averages.
//!
//! - **Classifier folder** ([`Classifier`]): `classifier.json` ([`ClassifierInfo`]),
//!   `ctnet_config.json` (the [`CtNetConfig`]) and `ctnet.safetensors` (ct-net-models key
//!   names; also loadable by `text2ct eval fid --backbone ctnet --weights … --backbone-config …`).
//!   `text2ct train classifier` writes it.
//! - **Volumes** ([`LabeledSet`]): a folder of NIfTI files (e.g. `text2ct generate` output,
//!   searched recursively), a prepared data set (folder with `manifest.jsonl`, or the manifest).
//! - **Labels** ([`LabelTable`]): CT-RATE's labels CSV (`VolumeName` + the 18 label columns, 0/1)
//!   or a prepared manifest. A manifest given as the volumes carries its own labels.
//! - **Matching** a NIfTI volume to its label row ([`report_key`]): the `id` field of the JSON
//!   sidecar beside it (`{stem}.json`, what `generate` writes: the report's `VolumeName` without
//!   extension), else the file name without `.nii`/`.nii.gz` and without a trailing
//!   `_seed<digits>`. Label-table keys are the `VolumeName` / manifest `id` without extension,
//!   with the characters `generate` replaces in file names (anything but ASCII letters, digits,
//!   `-`, `_`, `.`) replaced by `_`. A volume without a row is an error naming it.
//! - **Input**: each volume reoriented to RAS, HU clipped to [-1000, 1000]; its shape must be the
//!   classifier's training shape ([`ClassifierInfo::data_size`]) unless `pad_crop` is set; then
//!   MONAI-style centre pad (-1000 HU) / crop to the network's input
//!   (`[size[1], size[0], n_slices]`), CT-Net's window and mean ([`ctnet_input`]).
//! - **Metrics**: `p = sigmoid(logit)`; ROC AUC per class (classes with only one label value in a
//!   set are undefined, left out of that set's AUC averages and counted); precision of
//!   `p >= threshold` (default [`THRESHOLD`] = 0.5; 0 when nothing is predicted positive, as
//!   scikit-learn's `zero_division=0`), every class in the macro average; weighted averages weight
//!   each class by its positives (scikit-learn's `average="weighted"`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use text2ct_data::labels::{LABELS, NUM_LABELS};
use text2ct_models::burn::tensor::{Device, Tensor, TensorData};
use text2ct_models::ctnet::{prepare_volume, CtNet, CtNetConfig};

use crate::classification::{precision_at_threshold, roc_auc};
use crate::clip_eval::{averaged, ClassMetric};
use crate::fid::{pad_crop_monai, prepare_hu, sha256_file, FidError, VolumeSet};

/// Version of the protocol in `docs/evaluation/factual.md`.
pub const PROTOCOL: &str = "text2ct-factual-v1";
/// Format tag of `classifier.json`.
pub const CLASSIFIER_FORMAT: &str = "text2ct-ctnet-classifier-v1";
/// Default decision threshold on the sigmoid output (the paper does not state one).
pub const THRESHOLD: f64 = 0.5;
/// File names of a classifier folder.
pub const INFO_FILE: &str = "classifier.json";
pub const CONFIG_FILE: &str = "ctnet_config.json";
pub const WEIGHTS_FILE: &str = "ctnet.safetensors";

/// Errors of the factual-correctness evaluation (each names the file concerned).
#[derive(Debug, thiserror::Error)]
pub enum FactualError {
    #[error("{0}")]
    Input(String),
    #[error(transparent)]
    Io(#[from] text2ct_io::IoError),
    #[error(transparent)]
    Model(#[from] text2ct_models::ModelError),
    #[error(transparent)]
    Metric(#[from] crate::EvalError),
}

impl From<FidError> for FactualError {
    fn from(e: FidError) -> Self {
        match e {
            FidError::Input(m) => FactualError::Input(m),
            FidError::Io(e) => FactualError::Io(e),
            FidError::Model(e) => FactualError::Model(e),
            FidError::Metric(e) => FactualError::Metric(e),
        }
    }
}

pub type FactualResult<T> = std::result::Result<T, FactualError>;

fn input<T>(msg: impl Into<String>) -> FactualResult<T> {
    Err(FactualError::Input(msg.into()))
}

// ---------------------------------------------------------------------------------------------
// The classifier folder
// ---------------------------------------------------------------------------------------------

/// `classifier.json`: what a trained classifier needs besides its network.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClassifierInfo {
    /// [`CLASSIFIER_FORMAT`].
    pub format: String,
    /// Output `i` is this label (CT-RATE's 18, in CT-RATE's order).
    pub label_names: Vec<String>,
    /// Shape `[X, Y, Z]` (RAS voxels) of the volumes it was trained on; volumes of another
    /// shape are refused unless padded / cropped on purpose.
    pub data_size: [usize; 3],
    /// Voxel size (mm) of the training volumes, if they all had one.
    #[serde(default)]
    pub data_spacing: Option<[f64; 3]>,
    /// Default decision threshold of precision.
    pub threshold: f64,
    /// Positives / volumes per class in the training set.
    #[serde(default)]
    pub train_prevalence: Vec<f64>,
    /// BCE `pos_weight` per class used in training.
    #[serde(default)]
    pub pos_weight: Vec<f64>,
    /// Training volumes and optimizer steps.
    #[serde(default)]
    pub n_train: usize,
    #[serde(default)]
    pub steps: usize,
    /// Free-form notes (training sources, augmentation).
    #[serde(default)]
    pub note: String,
}

/// A loaded classifier folder.
#[derive(Debug, Clone)]
pub struct Classifier {
    pub dir: PathBuf,
    pub info: ClassifierInfo,
    pub model: CtNet,
    pub weights_sha256: String,
}

/// `[X, Y, Z]` input of a CT-Net config (`[size[1], size[0], n_slices]`).
pub fn input_dims(cfg: &CtNetConfig) -> [usize; 3] {
    [cfg.size[1], cfg.size[0], cfg.n_slices]
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> FactualResult<T> {
    let s = std::fs::read_to_string(path).map_err(|e| text2ct_io::IoError::os(path, e))?;
    serde_json::from_str(&s).map_err(|e| FactualError::Input(format!("{}: {e}", path.display())))
}

impl Classifier {
    /// The classifier folder a path names: the folder itself (it holds [`INFO_FILE`]), a training
    /// run folder (its `final/`, what `text2ct train classifier` writes), or a file inside the
    /// classifier folder (e.g. its `ctnet.safetensors`). Only checks that the path exists; [`Classifier::check`]
    /// and [`Classifier::load`] check the folder.
    pub fn resolve(path: &Path) -> FactualResult<PathBuf> {
        if path.is_file() {
            return Ok(path.parent().map(Path::to_path_buf).unwrap_or_default());
        }
        if !path.exists() {
            return input(format!("classifier {}: no such file or folder", path.display()));
        }
        if !path.join(INFO_FILE).is_file() && path.join("final").join(INFO_FILE).is_file() {
            return Ok(path.join("final"));
        }
        Ok(path.to_path_buf())
    }

    /// Check a classifier folder without loading the network: the three files and
    /// `classifier.json`'s format and labels. Returns its info.
    pub fn check(dir: &Path) -> FactualResult<ClassifierInfo> {
        if !dir.is_dir() {
            return input(format!(
                "classifier {}: not a folder (expected {INFO_FILE}, {CONFIG_FILE}, {WEIGHTS_FILE})",
                dir.display()
            ));
        }
        for f in [INFO_FILE, CONFIG_FILE, WEIGHTS_FILE] {
            if !dir.join(f).is_file() {
                return input(format!(
                    "classifier {}: {f} is missing (a classifier folder holds {INFO_FILE}, {CONFIG_FILE} and {WEIGHTS_FILE}; \
                     `text2ct train classifier` writes one as <out_dir>/final)",
                    dir.display()
                ));
            }
        }
        let info: ClassifierInfo = read_json(&dir.join(INFO_FILE))?;
        if info.format != CLASSIFIER_FORMAT {
            return input(format!(
                "{}: format {:?}, expected {CLASSIFIER_FORMAT:?}",
                dir.join(INFO_FILE).display(),
                info.format
            ));
        }
        if info.label_names != LABELS {
            return input(format!(
                "{}: label_names are not CT-RATE's 18 labels in CT-RATE's order",
                dir.join(INFO_FILE).display()
            ));
        }
        Ok(info)
    }

    /// Load a classifier folder (see the module docs) on `dev`.
    pub fn load(dir: &Path, dev: &Device) -> FactualResult<Self> {
        let info = Self::check(dir)?;
        let cfg: CtNetConfig = read_json(&dir.join(CONFIG_FILE))?;
        if cfg.n_outputs != NUM_LABELS {
            return input(format!(
                "{}: n_outputs {} (need {NUM_LABELS})",
                dir.join(CONFIG_FILE).display(),
                cfg.n_outputs
            ));
        }
        let wpath = dir.join(WEIGHTS_FILE);
        let model = CtNet::load(&cfg, &wpath, dev)?;
        let weights_sha256 = sha256_file(&wpath)?;
        Ok(Classifier { dir: dir.to_path_buf(), info, model, weights_sha256 })
    }

    /// Write a classifier folder (atomically per file; `classifier.json` last, so a folder with it is
    /// complete).
    pub fn save(dir: &Path, model: &CtNet, info: &ClassifierInfo) -> FactualResult<()> {
        std::fs::create_dir_all(dir).map_err(|e| text2ct_io::IoError::os(dir, e))?;
        let cfg = serde_json::to_string_pretty(&model.config).map_err(|e| FactualError::Input(e.to_string()))?;
        text2ct_io::error::atomic_write_bytes(&dir.join(CONFIG_FILE), cfg.as_bytes())?;
        // Written atomically (a sibling temporary file, then a rename).
        model.save_safetensors(&dir.join(WEIGHTS_FILE))?;
        let js = serde_json::to_string_pretty(info).map_err(|e| FactualError::Input(e.to_string()))?;
        text2ct_io::error::atomic_write_bytes(&dir.join(INFO_FILE), js.as_bytes())?;
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Input preprocessing
// ---------------------------------------------------------------------------------------------

/// CT-Net input values `[T, 3, H, W]` (row-major) of RAS, x-fastest HU data of shape `dims`:
/// centre pad (-1000 HU) / crop to [`input_dims`], then CT-Net's window and mean
/// ([`prepare_volume`]).
pub fn ctnet_input(cfg: &CtNetConfig, hu: &[f32], dims: [usize; 3]) -> FactualResult<Vec<f32>> {
    let want = input_dims(cfg);
    if hu.len() != dims.iter().product::<usize>() {
        return input(format!("volume data of {} values do not match its shape {dims:?}", hu.len()));
    }
    let v = if dims == want {
        prepare_volume(cfg, hu, dims)?
    } else {
        prepare_volume(cfg, &pad_crop_monai(hu, dims, want, -1000.0), want)?
    };
    Ok(v)
}

// ---------------------------------------------------------------------------------------------
// Labels and matching
// ---------------------------------------------------------------------------------------------

/// The key a label row and a volume are matched on: extension stripped, characters that
/// `generate` replaces in file names replaced by `_`.
pub fn normalize_key(s: &str) -> String {
    let t = s.trim();
    let t = t.strip_suffix(".nii.gz").or_else(|| t.strip_suffix(".nii")).unwrap_or(t);
    t.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') { c } else { '_' }).collect()
}

/// A NIfTI file name without extension and without a trailing `_seed<digits>`.
pub fn stem_key(file: &Path) -> String {
    let name = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let stem = name.strip_suffix(".nii.gz").or_else(|| name.strip_suffix(".nii")).unwrap_or(&name).to_string();
    if let Some(i) = stem.rfind("_seed") {
        let tail = &stem[i + 5..];
        if !tail.is_empty() && tail.bytes().all(|b| b.is_ascii_digit()) {
            return stem[..i].to_string();
        }
    }
    stem
}

/// Where a volume's report id came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeySource {
    /// The `id` of the JSON sidecar beside the NIfTI file.
    Sidecar,
    /// The file name (without extension and `_seed<N>`).
    FileName,
    /// The prepared manifest's entry id.
    Manifest,
}

/// The report id of a NIfTI volume (see the module docs): the sidecar's `id`, else
/// [`stem_key`]. A sidecar that exists but cannot be read or lacks a string `id` is an error.
pub fn report_key(file: &Path) -> FactualResult<(String, KeySource)> {
    let name = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let stem = name.strip_suffix(".nii.gz").or_else(|| name.strip_suffix(".nii")).unwrap_or(&name);
    let sidecar = file.with_file_name(format!("{stem}.json"));
    if sidecar.is_file() {
        let v: serde_json::Value = read_json(&sidecar)?;
        return match v.get("id").and_then(|x| x.as_str()) {
            Some(id) if !id.trim().is_empty() => Ok((normalize_key(id), KeySource::Sidecar)),
            _ => input(format!("{}: sidecar of {} has no string field \"id\"", sidecar.display(), file.display())),
        };
    }
    Ok((normalize_key(&stem_key(file)), KeySource::FileName))
}

/// Labels by report id.
#[derive(Clone, Debug)]
pub struct LabelTable {
    pub path: PathBuf,
    /// `csv` or `manifest`.
    pub kind: String,
    pub rows: HashMap<String, Vec<u8>>,
}

fn parse_label(s: &str) -> Option<u8> {
    match s.trim() {
        "0" | "0.0" | "False" | "false" => Some(0),
        "1" | "1.0" | "True" | "true" => Some(1),
        _ => None,
    }
}

fn manifest_path(path: &Path) -> Option<PathBuf> {
    let m = if path.is_dir() { path.join("manifest.jsonl") } else { path.to_path_buf() };
    (m.is_file() && m.extension().is_some_and(|e| e == "jsonl")).then_some(m)
}

impl LabelTable {
    /// Read CT-RATE's labels CSV (a `VolumeName` or `id` column and exactly the 18 label
    /// columns; any other column is refused as a label-set mismatch) or a prepared manifest.
    pub fn open(path: &Path) -> FactualResult<Self> {
        if !path.exists() {
            return input(format!("labels {}: no such file or folder", path.display()));
        }
        if let Some(m) = manifest_path(path) {
            let entries = text2ct_data::manifest::read_manifest(&m)?;
            let mut rows = HashMap::new();
            for e in entries {
                let k = normalize_key(&e.id);
                if rows.insert(k.clone(), e.labels).is_some() {
                    return input(format!("labels {}: id {k:?} appears twice", m.display()));
                }
            }
            if rows.is_empty() {
                return input(format!("labels {}: the manifest has no entries", m.display()));
            }
            return Ok(LabelTable { path: m, kind: "manifest".into(), rows });
        }
        let err = |m: String| FactualError::Input(format!("labels {}: {m}", path.display()));
        let table = text2ct_data::csvfile::CsvTable::read(path)?;
        let header = &table.header;
        let id_col = header
            .iter()
            .position(|h| h == "VolumeName")
            .or_else(|| header.iter().position(|h| h == "id"))
            .ok_or_else(|| err("needs a VolumeName (or id) column".into()))?;
        let missing: Vec<&str> = LABELS.iter().copied().filter(|l| !header.iter().any(|h| h == l)).collect();
        let extra: Vec<&str> = header
            .iter()
            .enumerate()
            .filter(|(i, h)| *i != id_col && !LABELS.contains(&h.as_str()))
            .map(|(_, h)| h.as_str())
            .collect();
        if !missing.is_empty() || !extra.is_empty() {
            return Err(err(format!(
                "label columns do not match CT-RATE's 18 labels (missing: [{}]; unexpected: [{}])",
                missing.join(", "),
                extra.join(", ")
            )));
        }
        let idx: Vec<usize> = LABELS.iter().map(|l| header.iter().position(|h| h == l).unwrap_or(0)).collect();
        let mut rows = HashMap::new();
        for rec in &table.rows {
            let line = rec.line;
            let k = normalize_key(rec.get(id_col));
            if k.is_empty() {
                return Err(err(format!("line {line}: empty {}", header[id_col])));
            }
            let mut v = Vec::with_capacity(NUM_LABELS);
            for (c, &i) in idx.iter().enumerate() {
                let cell = rec.get(i);
                v.push(
                    parse_label(cell)
                        .ok_or_else(|| err(format!("line {line} ({k}): {:?} = {cell:?} is not 0/1", LABELS[c])))?,
                );
            }
            if rows.insert(k.clone(), v).is_some() {
                return Err(err(format!("line {line}: {k:?} appears twice")));
            }
        }
        if rows.is_empty() {
            return Err(err("no rows".into()));
        }
        Ok(LabelTable { path: path.to_path_buf(), kind: "csv".into(), rows })
    }
}

/// One volume with its labels.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LabeledItem {
    /// The volume's name in its set (file name, or manifest id).
    pub id: String,
    /// The report id its labels were looked up by.
    pub key: String,
    pub key_source: KeySource,
    /// The file read.
    pub path: PathBuf,
    pub labels: Vec<u8>,
}

/// A volume set whose every volume has labels.
#[derive(Clone, Debug)]
pub struct LabeledSet {
    pub set: VolumeSet,
    /// Where the labels came from (the manifest itself, or the table given).
    pub labels_path: PathBuf,
    pub items: Vec<LabeledItem>,
}

impl LabeledSet {
    /// Open `volumes` (NIfTI folder / file, prepared folder / manifest) and attach labels: from
    /// `labels` if given, else from the manifest (NIfTI volumes need `labels`). Errors name the
    /// first volume without a label row.
    pub fn open(volumes: &Path, labels: Option<&Path>) -> FactualResult<Self> {
        let set = VolumeSet::open(volumes)?;
        let own = manifest_path(volumes).filter(|_| set.kind == "prepared-manifest");
        let table = match (labels, &own) {
            (Some(l), _) => LabelTable::open(l)?,
            (None, Some(m)) => LabelTable::open(m)?,
            (None, None) => {
                return input(format!(
                    "volumes {}: NIfTI volumes need labels (--labels CSV or manifest)",
                    volumes.display()
                ))
            }
        };
        Self::with_labels(set, &table)
    }

    /// Attach the labels of `table` to every volume of an opened set (matched as in the module
    /// docs); the error names the first volume without a label row.
    pub fn with_labels(set: VolumeSet, table: &LabelTable) -> FactualResult<Self> {
        let mut items = Vec::with_capacity(set.len());
        for i in 0..set.len() {
            let path = set.source(i).to_path_buf();
            let (key, src) = if set.kind == "prepared-manifest" {
                (normalize_key(set.id(i)), KeySource::Manifest)
            } else {
                report_key(&path)?
            };
            let Some(l) = table.rows.get(&key) else {
                let how = match src {
                    KeySource::Sidecar => "the id in its JSON sidecar",
                    KeySource::FileName => "its file name (no JSON sidecar beside it)",
                    KeySource::Manifest => "its manifest id",
                };
                return input(format!(
                    "volume {}: no labels for report id {key:?} (from {how}) in {}",
                    path.display(),
                    table.path.display()
                ));
            };
            items.push(LabeledItem { id: set.id(i).to_string(), key, key_source: src, path, labels: l.clone() });
        }
        Ok(LabeledSet { set, labels_path: table.path.clone(), items })
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Volume `i` in RAS, HU clipped to [-1000, 1000] (x fastest), its shape and voxel size.
    pub fn load_hu(&self, i: usize) -> FactualResult<(Vec<f32>, [usize; 3], [f64; 3])> {
        let vol = self.set.load(i).map_err(|e| at(&self.items[i].path, e.into()))?;
        let spacing = text2ct_io::transform::reorient(&vol, "RAS").map(|v| v.spacing()).unwrap_or(vol.spacing());
        let (data, dims) = prepare_hu(&vol, None).map_err(|e| at(&self.items[i].path, e.into()))?;
        Ok((data, dims, spacing))
    }

    /// Labels as booleans, one row per volume.
    pub fn label_rows(&self) -> Vec<Vec<bool>> {
        self.items.iter().map(|it| it.labels.iter().map(|&l| l != 0).collect()).collect()
    }
}

fn at(path: &Path, e: FactualError) -> FactualError {
    match e {
        FactualError::Input(m) if m.contains(&path.display().to_string()) => FactualError::Input(m),
        FactualError::Input(m) => FactualError::Input(format!("{}: {m}", path.display())),
        other => other,
    }
}

// ---------------------------------------------------------------------------------------------
// Prediction
// ---------------------------------------------------------------------------------------------

/// How volumes are fed to the classifier.
#[derive(Clone, Debug, PartialEq)]
pub struct PredictOptions {
    /// Volumes per forward pass.
    pub batch: usize,
    /// Pad / crop volumes whose shape is not the classifier's training shape (else: an error).
    pub pad_crop: bool,
}

impl Default for PredictOptions {
    fn default() -> Self {
        PredictOptions { batch: 4, pad_crop: false }
    }
}

fn sigmoid(x: f32) -> f64 {
    1.0 / (1.0 + (-(x as f64)).exp())
}

/// `sigmoid(logits)` of every volume (row = volume, column = label). `data_size`: the shape
/// volumes must have (`None`: any; they are padded / cropped). Progress: `(done, total)`.
pub fn predict(
    model: &CtNet,
    set: &LabeledSet,
    data_size: Option<[usize; 3]>,
    opts: &PredictOptions,
    progress: &mut dyn FnMut(usize, usize),
) -> FactualResult<Vec<Vec<f64>>> {
    if set.is_empty() {
        return input(format!("{}: the set holds no volumes", set.set.path.display()));
    }
    let c = &model.config;
    let dev = model.net.fc1.weight.val().device();
    let per: usize = c.n_triplets() * 3 * c.size[0] * c.size[1];
    let b = opts.batch.max(1);
    let mut out = Vec::with_capacity(set.len());
    let mut i = 0;
    while i < set.len() {
        let n = b.min(set.len() - i);
        let mut buf = Vec::with_capacity(n * per);
        for k in i..i + n {
            let (hu, dims, _) = set.load_hu(k)?;
            if let Some(want) = data_size {
                if dims != want && !opts.pad_crop {
                    return input(format!(
                        "volume {}: shape {dims:?} (RAS) but the classifier was trained on {want:?} volumes; \
                         prepare the volumes like its training data, or pad/crop them on purpose (--pad-crop)",
                        set.items[k].path.display()
                    ));
                }
            }
            buf.extend(ctnet_input(c, &hu, dims).map_err(|e| at(&set.items[k].path, e))?);
        }
        let x = Tensor::<5>::from_data(TensorData::new(buf, [n, c.n_triplets(), 3, c.size[0], c.size[1]]), &dev);
        let logits: Vec<f32> = model
            .forward(x)?
            .into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .map_err(|e| FactualError::Input(format!("reading logits: {e:?}")))?;
        for r in 0..n {
            let row: Vec<f64> = logits[r * c.n_outputs..(r + 1) * c.n_outputs].iter().map(|&v| sigmoid(v)).collect();
            if row.iter().any(|p| !p.is_finite()) {
                return input(format!("volume {}: non-finite prediction", set.items[i + r].path.display()));
            }
            out.push(row);
        }
        i += n;
        progress(i, set.len());
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Metrics and the report
// ---------------------------------------------------------------------------------------------

/// The metrics of one set (one row of Table 3).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SetMetrics {
    pub name: String,
    /// The volumes' path and the labels' source.
    pub volumes: String,
    pub labels: String,
    pub n_volumes: usize,
    /// Positives per class.
    pub support: Vec<usize>,
    pub auc: ClassMetric,
    pub precision: ClassMetric,
    /// Volumes predicted positive (`p >= threshold`) per class.
    pub predicted_positive: Vec<usize>,
    /// Per volume: `(volume id, report id, probabilities)`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub predictions: Vec<(String, String, Vec<f64>)>,
}

/// AUC and precision (per class, macro, weighted) of `probs` against `labels`.
pub fn set_metrics(name: &str, labels: &[Vec<bool>], probs: &[Vec<f64>], threshold: f64) -> FactualResult<SetMetrics> {
    if labels.is_empty() {
        return input(format!("set {name}: no volumes"));
    }
    if probs.len() != labels.len() {
        return input(format!("set {name}: {} predictions for {} label rows", probs.len(), labels.len()));
    }
    let c = labels[0].len();
    if labels.iter().any(|r| r.len() != c) || probs.iter().any(|r| r.len() != c) {
        return input(format!("set {name}: rows differ in their number of classes"));
    }
    if !(0.0..=1.0).contains(&threshold) {
        return input(format!("threshold must be in [0, 1], got {threshold}"));
    }
    let support: Vec<usize> = (0..c).map(|j| labels.iter().filter(|r| r[j]).count()).collect();
    let (mut auc, mut prec, mut pp) = (Vec::with_capacity(c), Vec::with_capacity(c), Vec::with_capacity(c));
    for j in 0..c {
        let y: Vec<bool> = labels.iter().map(|r| r[j]).collect();
        let p: Vec<f64> = probs.iter().map(|r| r[j]).collect();
        auc.push(roc_auc(&y, &p).ok());
        prec.push(Some(precision_at_threshold(&y, &p, threshold)?));
        pp.push(p.iter().filter(|&&v| v >= threshold).count());
    }
    Ok(SetMetrics {
        name: name.to_string(),
        volumes: String::new(),
        labels: String::new(),
        n_volumes: labels.len(),
        auc: averaged(auc, &support),
        precision: averaged(prec, &support),
        support,
        predicted_positive: pp,
        predictions: Vec::new(),
    })
}

/// Provenance of the classifier in a report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClassifierRef {
    pub dir: String,
    pub weights_sha256: String,
    pub config: CtNetConfig,
    pub data_size: [usize; 3],
}

/// Table 3: one row per set, "Real" first.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FactualReport {
    pub protocol: String,
    pub classifier: ClassifierRef,
    pub threshold: f64,
    pub pad_crop: bool,
    pub class_names: Vec<String>,
    pub rows: Vec<SetMetrics>,
    #[serde(default)]
    pub meta: serde_json::Map<String, serde_json::Value>,
}

/// Put the set named `real` (case-insensitive) first, keeping the others' order.
pub fn real_first<T>(sets: Vec<(String, T)>) -> Vec<(String, T)> {
    let (mut real, rest): (Vec<_>, Vec<_>) = sets.into_iter().partition(|(n, _)| n.eq_ignore_ascii_case("real"));
    real.extend(rest);
    real
}

/// Options of [`evaluate`].
#[derive(Clone, Debug, PartialEq)]
pub struct FactualOptions {
    pub predict: PredictOptions,
    /// Decision threshold (default: the classifier's, normally [`THRESHOLD`]).
    pub threshold: Option<f64>,
    /// Keep every volume's probabilities in the report.
    pub keep_predictions: bool,
}

impl Default for FactualOptions {
    fn default() -> Self {
        FactualOptions { predict: PredictOptions::default(), threshold: None, keep_predictions: true }
    }
}

/// Evaluate `clf` on named sets (a set named "real" becomes the first row). Names must be
/// unique and non-empty. Progress: `(set name, done, total)`.
pub fn evaluate(
    clf: &Classifier,
    sets: Vec<(String, LabeledSet)>,
    opts: &FactualOptions,
    progress: &mut dyn FnMut(&str, usize, usize),
) -> FactualResult<FactualReport> {
    if sets.is_empty() {
        return input("no volume sets to evaluate");
    }
    let mut seen = std::collections::HashSet::new();
    for (n, _) in &sets {
        if n.trim().is_empty() || !seen.insert(n.to_ascii_lowercase()) {
            return input(format!("set names must be unique and non-empty, got {n:?} twice or empty"));
        }
    }
    let threshold = opts.threshold.unwrap_or(clf.info.threshold);
    let mut rows = Vec::new();
    for (name, set) in real_first(sets) {
        let probs =
            predict(&clf.model, &set, Some(clf.info.data_size), &opts.predict, &mut |d, t| progress(&name, d, t))?;
        let mut m = set_metrics(&name, &set.label_rows(), &probs, threshold)?;
        m.volumes = set.set.path.display().to_string();
        m.labels = set.labels_path.display().to_string();
        if opts.keep_predictions {
            m.predictions = set.items.iter().zip(probs).map(|(it, p)| (it.id.clone(), it.key.clone(), p)).collect();
        }
        rows.push(m);
    }
    Ok(FactualReport {
        protocol: PROTOCOL.into(),
        classifier: ClassifierRef {
            dir: clf.dir.display().to_string(),
            weights_sha256: clf.weights_sha256.clone(),
            config: clf.model.config.clone(),
            data_size: clf.info.data_size,
        },
        threshold,
        pad_crop: opts.predict.pad_crop,
        class_names: LABELS.iter().map(|s| s.to_string()).collect(),
        rows,
        meta: Default::default(),
    })
}

fn f3(v: Option<f64>) -> String {
    v.map(|x| format!("{x:.3}")).unwrap_or_else(|| "–".into())
}

/// Table 3's four columns for rows of metrics (used by the factual report and the
/// augmentation study).
pub fn table3_markdown(first_col: &str, rows: &[SetMetrics]) -> String {
    let mut s = format!(
        "| {first_col} | AUC (Macro) | AUC (Weighted) | Precision (Macro) | Precision (Weighted) | volumes | classes with AUC |\n|---|---|---|---|---|---|---|\n"
    );
    for r in rows {
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} |\n",
            r.name,
            f3(r.auc.macro_avg),
            f3(r.auc.weighted_avg),
            f3(r.precision.macro_avg),
            f3(r.precision.weighted_avg),
            r.n_volumes,
            r.auc.n_classes
        ));
    }
    s
}

/// Per-class AUC / precision, one column pair per set.
pub fn per_class_markdown(class_names: &[String], rows: &[SetMetrics]) -> String {
    let mut s = String::from("| class |");
    let mut sep = String::from("|---|");
    for r in rows {
        s.push_str(&format!(" {0} AUC | {0} precision | {0} positives |", r.name));
        sep.push_str("---|---|---|");
    }
    s.push('\n');
    s.push_str(&sep);
    s.push('\n');
    for (j, cn) in class_names.iter().enumerate() {
        s.push_str(&format!("| {cn} |"));
        for r in rows {
            s.push_str(&format!(
                " {} | {} | {} |",
                f3(r.auc.per_class.get(j).copied().flatten()),
                f3(r.precision.per_class.get(j).copied().flatten()),
                r.support.get(j).copied().unwrap_or(0)
            ));
        }
        s.push('\n');
    }
    s
}

impl FactualReport {
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    }

    pub fn to_markdown(&self) -> String {
        let mut s = String::from("# Factual correctness (CT-Net)\n\n");
        s.push_str(&format!(
            "Protocol `{}` (docs/evaluation/factual.md). Classifier `{}` (weights sha256 `{}`), input {:?} \
             (X, Y, Z), trained on {:?} volumes; HU window {:?}. Precision at p >= {}. \
             Weighted = weighted by positives per class; AUC averages leave out classes with one label value only.\n\n",
            self.protocol,
            self.classifier.dir,
            self.classifier.weights_sha256,
            input_dims(&self.classifier.config),
            self.classifier.data_size,
            self.classifier.config.hu_window,
            self.threshold
        ));
        s.push_str(&table3_markdown("Set", &self.rows));
        s.push_str("\n## Per class\n\n");
        s.push_str(&per_class_markdown(&self.class_names, &self.rows));
        s.push_str("\n## Sets\n\n");
        for r in &self.rows {
            s.push_str(&format!(
                "- **{}**: {} volumes from `{}`, labels `{}`\n",
                r.name, r.n_volumes, r.volumes, r.labels
            ));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classification::multilabel;

    /// Issue 21 item 2: the labels CSV goes through the shared reader, so an unterminated quote
    /// is refused with its line instead of merging rows.
    #[test]
    fn labels_csv_with_an_unterminated_quote_is_refused() {
        let d = std::env::temp_dir().join(format!("text2ct-factual-quote-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let p = d.join("labels.csv");
        let row = |id: &str| format!("{id},{}\n", vec!["0"; NUM_LABELS].join(","));
        let good = format!("VolumeName,{}\n{}{}", LABELS.join(","), row("a"), row("b"));
        std::fs::write(&p, &good).unwrap();
        assert_eq!(LabelTable::open(&p).unwrap().rows.len(), 2);
        std::fs::write(&p, good.replacen("\na,", "\n\"a,", 1)).unwrap();
        let e = LabelTable::open(&p).unwrap_err().to_string();
        assert!(e.contains("labels.csv") && e.contains("line 2: a quoted field opens here and is never closed"), "{e}");
        std::fs::remove_dir_all(&d).ok();
    }

    #[test]
    fn keys_and_stems() {
        assert_eq!(stem_key(Path::new("/a/valid_1_a_1_seed42.nii.gz")), "valid_1_a_1");
        assert_eq!(stem_key(Path::new("x_seedling.nii")), "x_seedling");
        assert_eq!(stem_key(Path::new("x_seed.nii")), "x_seed");
        assert_eq!(normalize_key("train_1 a.nii.gz"), "train_1_a");
    }

    #[test]
    fn metrics_match_classification_module() {
        let labels =
            vec![vec![true, false, true], vec![false, false, true], vec![true, false, true], vec![false, false, true]];
        let probs = vec![vec![0.9, 0.2, 0.6], vec![0.4, 0.7, 0.3], vec![0.3, 0.1, 0.8], vec![0.6, 0.4, 0.55]];
        let m = set_metrics("s", &labels, &probs, 0.5).unwrap();
        // Column 1 has no positives and column 2 no negatives: AUC only for class 0.
        assert_eq!(m.auc.n_classes, 1);
        assert_eq!(m.auc.per_class[0], Some(roc_auc(&[true, false, true, false], &[0.9, 0.4, 0.3, 0.6]).unwrap()));
        let p = multilabel(&labels, &probs, |y, s| precision_at_threshold(y, s, 0.5)).unwrap();
        assert_eq!(m.precision.macro_avg, Some(p.macro_avg));
        assert_eq!(m.precision.weighted_avg, Some(p.weighted_avg));
        assert_eq!(m.support, vec![2, 0, 4]);
        assert_eq!(m.predicted_positive, vec![2, 1, 3]);
    }

    #[test]
    fn real_goes_first() {
        let v = real_first(vec![("synth".to_string(), 1), ("Real".to_string(), 2), ("b".to_string(), 3)]);
        assert_eq!(v.iter().map(|x| x.1).collect::<Vec<_>>(), vec![2, 1, 3]);
    }
}
