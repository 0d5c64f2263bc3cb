//! A JSONL log of step losses, and its loss-curve PNG.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};
use crate::plot::LinePlot;
use crate::progress::StepLosses;

/// One line of `metrics.jsonl`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    pub step: usize,
    pub epoch: usize,
    pub lr: f64,
    #[serde(flatten)]
    pub losses: StepLosses,
    /// Seconds this step took.
    pub step_s: f64,
}

/// The metrics log: kept in memory and appended to `path` line by line.
pub struct MetricsLog {
    pub path: PathBuf,
    pub records: Vec<StepRecord>,
}

impl MetricsLog {
    /// A fresh log (truncates `path`) holding `records` (those of a checkpoint when resuming).
    pub fn create(path: &Path, records: Vec<StepRecord>) -> Result<Self> {
        let log = MetricsLog { path: path.to_path_buf(), records };
        log.rewrite(path)?;
        Ok(log)
    }

    /// Append one record (to memory and to the file).
    pub fn push(&mut self, r: StepRecord) -> Result<()> {
        let line = serde_json::to_string(&r).map_err(|e| TrainError::Train(e.to_string()))?;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(|e| TrainError::io(&self.path, e))?;
        writeln!(f, "{line}").map_err(|e| TrainError::io(&self.path, e))?;
        self.records.push(r);
        Ok(())
    }

    /// Write all records as JSONL to `path` (atomically).
    pub fn rewrite(&self, path: &Path) -> Result<()> {
        let mut s = String::new();
        for r in &self.records {
            s.push_str(&serde_json::to_string(r).map_err(|e| TrainError::Train(e.to_string()))?);
            s.push('\n');
        }
        text2ct_io::error::atomic_write_bytes(path, s.as_bytes())?;
        Ok(())
    }

    /// Read a JSONL log.
    pub fn read(path: &Path) -> Result<Vec<StepRecord>> {
        let s = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
        s.lines()
            .filter(|l| !l.trim().is_empty())
            .enumerate()
            .map(|(i, l)| {
                serde_json::from_str(l)
                    .map_err(|e| TrainError::Data(format!("{}: line {}: {e}", path.display(), i + 1)))
            })
            .collect()
    }

    /// The loss curves (moving averages over `window` steps), log y axis.
    pub fn loss_curve(&self, title: &str) -> LinePlot {
        let window = (self.records.len() / 50).clamp(1, 50);
        let series = |f: &dyn Fn(&StepRecord) -> f64, from: usize| -> Vec<(f64, f64)> {
            let rs: Vec<&StepRecord> = self.records.iter().filter(|r| r.step >= from).collect();
            moving_average(&rs.iter().map(|r| (r.step as f64, f(r))).collect::<Vec<_>>(), window)
        };
        let mut p = LinePlot::new(title, "optimizer step", "loss (moving average, log scale)");
        p.log_y = true;
        p = p.with_series("L1 reconstruction", series(&|r| r.losses.l1, 0));
        if self.records.iter().any(|r| r.losses.perceptual > 0.0) {
            p = p.with_series("gradient (perceptual substitute)", series(&|r| r.losses.perceptual, 0));
        }
        p = p.with_series("total (generator)", series(&|r| r.losses.total, 0));
        if let Some(first) = self.records.iter().find(|r| r.losses.d_loss > 0.0) {
            p = p.with_series("discriminator", series(&|r| r.losses.d_loss, first.step));
            p = p.with_series("generator adversarial", series(&|r| r.losses.g_adv, first.step));
        }
        p
    }
}

/// Trailing moving average over `window` points.
pub fn moving_average(points: &[(f64, f64)], window: usize) -> Vec<(f64, f64)> {
    let w = window.max(1);
    let mut out = Vec::with_capacity(points.len());
    let mut sum = 0.0;
    for i in 0..points.len() {
        sum += points[i].1;
        if i >= w {
            sum -= points[i - w].1;
        }
        let n = (i + 1).min(w) as f64;
        out.push((points[i].0, sum / n));
    }
    out
}
