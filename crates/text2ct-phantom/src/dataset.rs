//! Writing a data set of phantoms in CT-RATE's own on-disk layout (see
//! `text2ct_data::layout`), so every CT-RATE reader of the project can read it unchanged.
//!
//! Like CT-RATE's corrected (`_fixed`) release, the default stores voxels already in HU while
//! the metadata says `RescaleIntercept -1024`: applying slope/intercept again is wrong, exactly
//! the trap of the real data. With `store_raw` the stored values are `HU + 1024` and the
//! metadata's intercept really applies.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use text2ct_data::labels::{LABELS, NUM_LABELS};
use text2ct_data::layout::{self, Split};
use text2ct_io::error::atomic_write_bytes;
use text2ct_io::nifti_io::{write_nifti, WriteOptions};
use text2ct_io::IoError;

use crate::config::DatasetConfig;
use crate::{generate_scan, PhantomError, Result};

/// What [`write_ctrate_dataset`] wrote.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DatasetSummary {
    pub root: PathBuf,
    pub count: usize,
    pub train: usize,
    pub valid: usize,
    /// Number of scans with each label, in `LABELS` order.
    pub label_counts: Vec<usize>,
    pub volume_names: Vec<String>,
}

/// The split and CT-RATE volume name of scan `index` of a data set of `count` scans whose last
/// `valid` scans are the validation split.
pub fn volume_name(index: usize, count: usize, valid: usize) -> (Split, String) {
    let n_train = count - valid;
    if index < n_train {
        (Split::Train, format!("train_{}_a_1.nii.gz", index + 1))
    } else {
        (Split::Valid, format!("valid_{}_a_1.nii.gz", index - n_train + 1))
    }
}

struct Row {
    split: Split,
    name: String,
    report: [String; 4],
    labels: [bool; NUM_LABELS],
    meta: Vec<String>,
    params_json: String,
}

fn fmt_num(v: f64) -> String {
    let r = (v * 1e6).round() / 1e6;
    if r == r.trunc() {
        format!("{:.1}", r)
    } else {
        format!("{r}")
    }
}

fn csv_err(path: &Path, e: impl std::fmt::Display) -> IoError {
    IoError::format(path, format!("writing CSV failed: {e}"))
}

fn write_csv(path: &Path, header: &[&str], rows: &[Vec<String>]) -> Result<()> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(header).map_err(|e| csv_err(path, e))?;
    for r in rows {
        w.write_record(r).map_err(|e| csv_err(path, e))?;
    }
    let bytes = w.into_inner().map_err(|e| csv_err(path, e))?;
    atomic_write_bytes(path, &bytes)?;
    Ok(())
}

/// Generate `cfg.count` phantoms and write them in CT-RATE's layout under `out`:
/// volumes `dataset/{train,valid}/train_N/train_N_a/train_N_a_1.nii.gz` (int16), the reports,
/// labels and metadata CSVs, empty `no_chest_{train,valid}.txt`, and `phantom_params.jsonl`
/// (every hidden parameter, one line per volume) at `out`. `progress` is called with the number
/// of scans finished so far. Output is identical for any `jobs`.
pub fn write_ctrate_dataset(
    out: &Path,
    cfg: &DatasetConfig,
    progress: impl Fn(usize) + Sync,
) -> Result<DatasetSummary> {
    cfg.validate()?;
    let valid = cfg.valid_count();
    let count = cfg.count;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(cfg.jobs)
        .build()
        .map_err(|e| PhantomError::Config(format!("cannot start {} worker threads: {e}", cfg.jobs)))?;
    let done = AtomicUsize::new(0);
    let rows: Vec<Result<Row>> = pool.install(|| {
        (0..count)
            .into_par_iter()
            .map(|i| {
                let row = write_one(out, cfg, i, count, valid)?;
                progress(done.fetch_add(1, Ordering::SeqCst) + 1);
                Ok(row)
            })
            .collect()
    });
    let rows: Vec<Row> = rows.into_iter().collect::<Result<_>>()?;

    let mut label_counts = vec![0usize; NUM_LABELS];
    for r in &rows {
        for (k, &l) in r.labels.iter().enumerate() {
            label_counts[k] += l as usize;
        }
    }
    for split in [Split::Train, Split::Valid] {
        let mine: Vec<&Row> = rows.iter().filter(|r| r.split == split).collect();
        let reports: Vec<Vec<String>> =
            mine.iter().map(|r| std::iter::once(r.name.clone()).chain(r.report.iter().cloned()).collect()).collect();
        write_csv(&layout::reports_csv(out, split), &layout::REPORT_COLUMNS, &reports)?;
        let header: Vec<&str> = std::iter::once("VolumeName").chain(LABELS.iter().copied()).collect();
        let labels: Vec<Vec<String>> = mine
            .iter()
            .map(|r| std::iter::once(r.name.clone()).chain(r.labels.iter().map(|&l| (l as u8).to_string())).collect())
            .collect();
        write_csv(&layout::labels_csv(out, split), &header, &labels)?;
        let meta: Vec<Vec<String>> = mine.iter().map(|r| r.meta.clone()).collect();
        write_csv(&layout::metadata_csv(out, split), &layout::METADATA_FULL_COLUMNS, &meta)?;
        atomic_write_bytes(&layout::no_chest_list(out, split), b"")?;
    }
    let mut jsonl = String::new();
    for r in &rows {
        jsonl.push_str(&r.params_json);
        jsonl.push('\n');
    }
    atomic_write_bytes(&out.join("phantom_params.jsonl"), jsonl.as_bytes())?;
    Ok(DatasetSummary {
        root: out.to_path_buf(),
        count,
        train: count - valid,
        valid,
        label_counts,
        volume_names: rows.iter().map(|r| r.name.clone()).collect(),
    })
}

fn write_one(out: &Path, cfg: &DatasetConfig, i: usize, count: usize, valid: usize) -> Result<Row> {
    let (split, name) = volume_name(i, count, valid);
    let mut scan = generate_scan(&cfg.phantom, i as u64)?;
    if cfg.store_raw {
        scan.volume.map_inplace(|v| v + 1024.0);
    }
    let path = layout::volume_path(out, split, &name, false)
        .ok_or_else(|| PhantomError::Config(format!("bad volume name {name}")))?;
    let descrip = format!("text2ct-phantom seed {} index {}", cfg.phantom.seed, i);
    let opts = WriteOptions::ct_hu().with_descrip(descrip);
    // write_nifti writes atomically (temporary file, then rename).
    write_nifti(&path, &scan.volume, &opts)?;
    let p = &scan.params;
    let [nx, ny, nz] = p.dims;
    let sp = p.spacing_mm;
    // DICOM ImagePositionPatient: LPS position of voxel (0, 0, 0).
    let c = [0, 1, 2].map(|k| -((p.dims[k] as f64 - 1.0) / 2.0) * sp[k]);
    let meta = vec![
        name.clone(),
        "1".into(),
        "-1024".into(),
        format!("[{}, {}]", fmt_num(sp[0]), fmt_num(sp[1])),
        fmt_num(sp[2]),
        p.patient.study_date.clone(),
        format!("{:03}Y", p.patient.age),
        p.patient.sex.clone(),
        "text2ct-phantom".into(),
        "procedural-chest-v1".into(),
        "SYNTHETIC".into(),
        "SYNTHETIC CHEST PHANTOM".into(),
        ny.to_string(),
        nx.to_string(),
        nz.to_string(),
        "[1, 0, 0, 0, 1, 0]".into(),
        format!("[{}, {}, {}]", fmt_num(c[0]), fmt_num(c[1]), fmt_num(c[2])),
    ];
    let mut v = serde_json::to_value(p).map_err(|e| PhantomError::Write { path: path.clone(), msg: e.to_string() })?;
    if let serde_json::Value::Object(m) = &mut v {
        m.insert("VolumeName".into(), serde_json::Value::String(name.clone()));
        m.insert("split".into(), serde_json::Value::String(split.dir().into()));
    }
    let params_json = serde_json::to_string(&v).map_err(|e| PhantomError::Write { path, msg: e.to_string() })?;
    Ok(Row {
        split,
        name,
        report: [scan.clinical_information, scan.technique, scan.findings, scan.impressions],
        labels: scan.labels,
        meta,
        params_json,
    })
}
