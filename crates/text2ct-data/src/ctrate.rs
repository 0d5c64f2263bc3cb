//! CT-RATE ingestion: read the reports, labels and metadata CSVs and the non-chest exclusion
//! lists, join them by `VolumeName`, and preprocess every volume into a prepared folder (see
//! [`crate::manifest`]). Resumable (finished items are skipped), parallel, and tolerant: a bad
//! row or volume is skipped with its reason, the rest goes on.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use text2ct_io::error::atomic_write_bytes;
use text2ct_io::nifti_io::read_nifti;
use text2ct_io::npy::write_npy_i16;
use text2ct_io::{IoError, Limits, Result};

use crate::csvfile::CsvTable;
use crate::labels::{LABELS, NUM_LABELS};
use crate::layout::{self, Split};
use crate::manifest::{label_names, write_manifest, DatasetInfo, ManifestEntry, SourceSpacing};
use crate::preprocess::{decide_hu, preprocess, PreprocessConfig, RescalePolicy};

/// Options of `text2ct prepare ctrate`.
#[derive(Clone, Debug)]
pub struct PrepareOptions {
    pub root: PathBuf,
    pub split: Split,
    pub out: PathBuf,
    pub preprocess: PreprocessConfig,
    pub rescale: RescalePolicy,
    /// Where the source voxel size comes from (the NIfTI header, as the release, or the
    /// metadata CSV's XYSpacing / ZSpacing).
    pub spacing_source: SpacingSource,
    /// Stop after this many usable rows (after exclusions).
    pub limit: Option<usize>,
    pub jobs: usize,
    pub limits: Limits,
}

/// Where `prepare` takes a source volume's voxel size from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SpacingSource {
    /// The NIfTI header (what the released code does).
    Header,
    /// The metadata CSV's `XYSpacing` and `ZSpacing` (the DICOM values); the header's
    /// directions and origin are kept.
    Metadata,
}

impl SpacingSource {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "header" => Some(Self::Header),
            "metadata" => Some(Self::Metadata),
            _ => None,
        }
    }
}

/// Relative difference above which the header's and the metadata's voxel sizes disagree.
pub const SPACING_TOLERANCE: f64 = 0.01;

/// The metadata CSV's voxel size in the voxel-axis order of a volume with affine `a`: the axis
/// that runs along world x gets `XYSpacing[0]`, along y `XYSpacing[1]`, along z (the slice axis
/// of an axial CT) `ZSpacing`, whatever the order of the axes in the file.
pub fn metadata_spacing_in_voxel_order(a: &text2ct_io::Affine, xy_z: [f64; 3]) -> [f64; 3] {
    a.axis_mapping().map(|(world, _)| xy_z[world])
}

/// A row that was not prepared, and why.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Skipped {
    pub volume: String,
    pub reason: String,
}

/// One volume to prepare.
#[derive(Clone, Debug)]
pub struct Item {
    pub name: String,
    pub path: PathBuf,
    pub report: String,
    pub labels: Vec<u8>,
    pub rescale: Option<(f64, f64)>,
    pub meta_spacing: Option<[f64; 3]>,
}

/// The joined table: what will be prepared and what was skipped before any volume is read.
#[derive(Debug)]
pub struct Plan {
    pub items: Vec<Item>,
    pub skipped: Vec<Skipped>,
    pub warnings: Vec<String>,
}

/// How one item ended.
#[derive(Clone, Debug)]
pub enum Outcome {
    Prepared(Box<ManifestEntry>),
    AlreadyDone(Box<ManifestEntry>),
    Failed(Skipped),
}

/// Counts and reasons, written to `summary.json`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Summary {
    pub split: String,
    pub rows_in_reports: usize,
    pub prepared: usize,
    pub already_done: usize,
    pub skipped: Vec<Skipped>,
    pub warnings: Vec<String>,
    pub seconds: f64,
    pub manifest: String,
}

/// One row of the metadata CSV, parsed.
#[derive(Clone, Debug)]
struct MetaRow {
    /// (RescaleSlope, RescaleIntercept), or why they cannot be used.
    rescale: std::result::Result<(f64, f64), String>,
    /// (XYSpacing, ZSpacing), when both are positive numbers.
    spacing: Option<[f64; 3]>,
}

fn parse_label(s: &str) -> Option<u8> {
    match s.trim() {
        "0" | "0.0" | "False" | "false" => Some(0),
        "1" | "1.0" | "True" | "true" => Some(1),
        _ => None,
    }
}

/// Parse CT-RATE's `XYSpacing` ("[0.75, 0.75]" or "0.75").
pub fn parse_xy_spacing(s: &str) -> Option<[f64; 2]> {
    let t = s.trim().trim_start_matches('[').trim_end_matches(']');
    let v: Vec<f64> = t.split(',').filter_map(|p| p.trim().parse::<f64>().ok()).collect();
    match v.as_slice() {
        [a] if a.is_finite() && *a > 0.0 => Some([*a, *a]),
        [a, b] if [a, b].iter().all(|v| v.is_finite() && **v > 0.0) => Some([*a, *b]),
        _ => None,
    }
}

/// Read and join the CSVs.
pub fn plan(opts: &PrepareOptions) -> Result<Plan> {
    let root = &opts.root;
    let split = opts.split;
    let mut warnings = Vec::new();
    let mut skipped = Vec::new();

    let rpath = layout::reports_csv(root, split);
    let reports = CsvTable::read(&rpath)?;
    let ri = reports.require(&["VolumeName", "Findings_EN", "Impressions_EN"])?;
    let lpath = layout::labels_csv(root, split);
    let mut lneed = vec!["VolumeName"];
    lneed.extend(LABELS.iter());
    let label_table = CsvTable::read(&lpath)?;
    let li = label_table.require(&lneed)?;
    let mut labels: HashMap<String, std::result::Result<Vec<u8>, String>> = HashMap::new();
    for row in &label_table.rows {
        let name = row.get(li[0]).trim().to_string();
        let vals: Option<Vec<u8>> = (0..NUM_LABELS).map(|k| parse_label(row.get(li[k + 1]))).collect();
        labels.insert(name, vals.ok_or_else(|| "labels row holds a value that is not 0/1".to_string()));
    }

    let mpath = layout::metadata_csv(root, split);
    let mut meta: HashMap<String, MetaRow> = HashMap::new();
    if mpath.exists() {
        let table = CsvTable::read(&mpath)?;
        let mi = table.require(&layout::METADATA_COLUMNS)?;
        let zi = table.column(layout::METADATA_ZSPACING);
        for row in &table.rows {
            let number = |col: &str, cell: &str| {
                cell.trim().parse::<f64>().map_err(|_| format!("{col} {cell:?} is not a number"))
            };
            let rescale = number("RescaleSlope", row.get(mi[1]))
                .and_then(|s| Ok((s, number("RescaleIntercept", row.get(mi[2]))?)));
            let xy = parse_xy_spacing(row.get(mi[3]));
            let z = zi.and_then(|z| row.get(z).trim().parse::<f64>().ok()).filter(|z| z.is_finite() && *z > 0.0);
            let spacing = match (xy, z) {
                (Some([a, b]), Some(z)) => Some([a, b, z]),
                _ => None,
            };
            meta.insert(row.get(mi[0]).trim().to_string(), MetaRow { rescale, spacing });
        }
    } else {
        warnings.push(format!("{}: no metadata CSV; slope/intercept not known, volumes taken as HU", mpath.display()));
    }

    let mut excluded = HashSet::new();
    let npath = layout::no_chest_list(root, split);
    if npath.exists() {
        let t = std::fs::read_to_string(&npath).map_err(|e| IoError::os(&npath, e))?;
        excluded.extend(t.lines().map(|l| l.trim().to_string()).filter(|l| !l.is_empty()));
    }

    let fixed_dir = layout::dataset_dir(root).join(format!("{}_fixed", split.dir()));
    let use_fixed = fixed_dir.is_dir();
    let mut seen = HashSet::new();
    let mut items = Vec::new();
    for row in &reports.rows {
        let name = row.get(ri[0]).trim().to_string();
        let skip = |reason: &str| Skipped { volume: name.clone(), reason: reason.to_string() };
        if !seen.insert(name.clone()) {
            skipped.push(skip("duplicate row in the reports CSV"));
            continue;
        }
        let stem = name.trim_end_matches(".nii.gz").trim_end_matches(".nii");
        if excluded.contains(&name) || excluded.contains(stem) {
            skipped.push(skip("non-chest volume (exclusion list)"));
            continue;
        }
        let Some(path) = layout::volume_path(root, split, &name, use_fixed) else {
            skipped.push(skip("unknown volume name (expected e.g. train_1_a_1.nii.gz)"));
            continue;
        };
        let labs = match labels.get(&name) {
            None => {
                skipped.push(skip("no row in the labels CSV"));
                continue;
            }
            Some(Err(e)) => {
                skipped.push(skip(e));
                continue;
            }
            Some(Ok(l)) => l.clone(),
        };
        if !path.exists() {
            skipped.push(skip(&format!("volume file not found: {}", path.display())));
            continue;
        }
        // Without a metadata CSV at all the run warns once (above); with one, a volume whose row
        // is missing or whose slope/intercept do not parse cannot be brought to HU: skipped,
        // never stored as if it were HU already (unless the user said `--rescale never`).
        let (rescale, meta_spacing) = match meta.get(&name) {
            Some(m) => match &m.rescale {
                Ok(r) => (Some(*r), m.spacing),
                Err(e) => {
                    skipped.push(skip(&format!("{e} in the metadata CSV {}", mpath.display())));
                    continue;
                }
            },
            None if mpath.exists() && opts.rescale != RescalePolicy::Never => {
                skipped.push(skip(&format!(
                    "no row in the metadata CSV {}: RescaleSlope/RescaleIntercept unknown \
                     (pass --rescale never if the volumes are already HU)",
                    mpath.display()
                )));
                continue;
            }
            None => {
                if mpath.exists() {
                    warnings.push(format!("{name}: no row in the metadata CSV (taken as HU: --rescale never)"));
                }
                (None, None)
            }
        };
        items.push(Item {
            name: name.clone(),
            path,
            report: layout::report_text(row.get(ri[1]).trim(), row.get(ri[2]).trim()),
            labels: labs,
            rescale,
            meta_spacing,
        });
        if opts.limit.is_some_and(|l| items.len() >= l) {
            break;
        }
    }
    let reported: HashSet<&String> = seen.iter().collect();
    let orphans = labels.keys().filter(|k| !reported.contains(k)).count();
    if orphans > 0 {
        warnings.push(format!("{orphans} row(s) of the labels CSV have no report"));
    }
    Ok(Plan { items, skipped, warnings })
}

fn item_id(name: &str) -> String {
    name.trim_end_matches(".nii.gz").trim_end_matches(".nii").to_string()
}

/// Prepare one volume (or find it already prepared).
pub fn prepare_item(item: &Item, opts: &PrepareOptions) -> Outcome {
    let id = item_id(&item.name);
    let rel = format!("volumes/{id}.npy");
    let npy = opts.out.join(&rel);
    let record = opts.out.join("items").join(format!("{id}.json"));
    if npy.exists() && record.exists() {
        if let Ok(e) = std::fs::read_to_string(&record)
            .map_err(|e| e.to_string())
            .and_then(|t| serde_json::from_str::<ManifestEntry>(&t).map_err(|e| e.to_string()))
        {
            return Outcome::AlreadyDone(Box::new(e));
        }
    }
    let fail = |reason: String| Outcome::Failed(Skipped { volume: item.name.clone(), reason });
    let run = || -> Result<ManifestEntry> {
        let (mut vol, info) = read_nifti(&item.path, &opts.limits)?;
        vol.check_finite().map_err(|e| e.at(&item.path))?;
        let mut warnings = Vec::new();
        let header = vol.spacing();
        let metadata = item.meta_spacing.map(|m| metadata_spacing_in_voxel_order(vol.affine(), m));
        if let Some(m) = metadata {
            if (0..3).any(|i| (header[i] - m[i]).abs() > SPACING_TOLERANCE * m[i]) {
                let used = match opts.spacing_source {
                    SpacingSource::Header => "the header's is used (--spacing-source metadata for the other)",
                    SpacingSource::Metadata => "the metadata's is used",
                };
                warnings.push(format!(
                    "the NIfTI header's voxel size {} mm differs from the metadata CSV's XYSpacing/ZSpacing {} mm \
                     by more than {}%; {used}",
                    fmt_mm(header),
                    fmt_mm(m),
                    SPACING_TOLERANCE * 100.0
                ));
            }
        }
        if opts.spacing_source == SpacingSource::Metadata {
            let m = metadata.ok_or_else(|| {
                IoError::invalid(
                    "--spacing-source metadata: the metadata CSV has no usable XYSpacing/ZSpacing for this volume",
                )
            })?;
            let a = text2ct_io::Affine::from_parts(vol.affine().direction(), m, vol.origin())?;
            vol.set_affine(a)?;
        }
        let source_spacing = SourceSpacing { used: opts.spacing_source, header, metadata };
        let hu = decide_hu(&mut vol, &info, item.rescale, opts.rescale).map_err(|e| e.at(&item.path))?;
        let out = preprocess(&vol, &opts.preprocess).map_err(|e| e.at(&item.path))?;
        let data: Vec<i16> = out.data().iter().map(|v| v.round() as i16).collect();
        let d = out.dims();
        write_npy_i16(&npy, &d, &data, true)?;
        let entry = ManifestEntry {
            id: id.clone(),
            volume: rel.clone(),
            report: item.report.clone(),
            labels: item.labels.clone(),
            spacing: out.spacing(),
            dims: d,
            affine: out.affine().0,
            source: item.path.display().to_string(),
            hu: serde_json::to_value(&hu).unwrap_or_default(),
            source_spacing: Some(source_spacing),
            warnings,
        };
        let json = serde_json::to_vec_pretty(&entry).map_err(|e| IoError::invalid(e.to_string()))?;
        atomic_write_bytes(&record, &json)?;
        Ok(entry)
    };
    match run() {
        Ok(e) => Outcome::Prepared(Box::new(e)),
        Err(e) => fail(e.to_string()),
    }
}

/// Prepare every item of the plan in parallel (`jobs` threads), calling `on_done` after each,
/// then write `manifest.jsonl`, `dataset.json` and `summary.json`.
pub fn run(
    plan: &Plan,
    opts: &PrepareOptions,
    rows_in_reports: usize,
    on_done: &(dyn Fn(&Outcome) + Sync),
) -> Result<Summary> {
    let t0 = std::time::Instant::now();
    opts.preprocess.validate()?;
    std::fs::create_dir_all(opts.out.join("volumes")).map_err(|e| IoError::os(&opts.out, e))?;
    std::fs::create_dir_all(opts.out.join("items")).map_err(|e| IoError::os(&opts.out, e))?;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(opts.jobs.max(1))
        .build()
        .map_err(|e| IoError::invalid(format!("cannot start {} worker threads: {e}", opts.jobs)))?;
    let outcomes: Vec<Outcome> = pool.install(|| {
        plan.items
            .par_iter()
            .map(|it| {
                let o = prepare_item(it, opts);
                on_done(&o);
                o
            })
            .collect()
    });
    let mut entries = Vec::new();
    let mut skipped = plan.skipped.clone();
    let (mut prepared, mut done) = (0, 0);
    for o in outcomes {
        match o {
            Outcome::Prepared(e) => {
                prepared += 1;
                entries.push(*e);
            }
            Outcome::AlreadyDone(e) => {
                done += 1;
                entries.push(*e);
            }
            Outcome::Failed(s) => skipped.push(s),
        }
    }
    let manifest = opts.out.join("manifest.jsonl");
    write_manifest(&manifest, &entries)?;
    let info = DatasetInfo {
        format: DatasetInfo::FORMAT.into(),
        mode: format!("{:?}", opts.preprocess.mode).to_lowercase(),
        split: opts.split.dir().into(),
        spacing: opts.preprocess.spacing,
        size: opts.preprocess.size,
        hu_range: [opts.preprocess.hu_min, opts.preprocess.hu_max],
        label_names: label_names(),
        storage: DatasetInfo::STORAGE.into(),
        source_root: opts.root.display().to_string(),
    };
    atomic_write_bytes(&opts.out.join("dataset.json"), &to_json(&info))?;
    let summary = Summary {
        split: opts.split.dir().into(),
        rows_in_reports,
        prepared,
        already_done: done,
        skipped,
        warnings: plan.warnings.clone(),
        seconds: t0.elapsed().as_secs_f64(),
        manifest: manifest.display().to_string(),
    };
    atomic_write_bytes(&opts.out.join("summary.json"), &to_json(&summary))?;
    Ok(summary)
}

fn fmt_mm(v: [f64; 3]) -> String {
    v.map(|x| format!("{}", (x * 1e4).round() / 1e4)).join(" x ")
}

fn to_json<T: serde::Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec_pretty(v).unwrap_or_default()
}

/// Number of data rows in the reports CSV (for the summary).
pub fn count_report_rows(root: &Path, split: Split) -> usize {
    CsvTable::read(&layout::reports_csv(root, split)).map(|t| t.rows.len()).unwrap_or(0)
}
