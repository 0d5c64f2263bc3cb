//! A JSONL log of step losses, and its loss-curve PNG.

use serde::{Deserialize, Serialize};

use crate::plot::LinePlot;
use crate::progress::StepLosses;
use crate::runloop::JsonlLog;

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

/// The metrics log: kept in memory and appended to `path` line by line (the generic
/// [`JsonlLog`] of the run-loop module: `create`, `push`, `rewrite`, `read`).
pub type MetricsLog = JsonlLog<StepRecord>;

impl JsonlLog<StepRecord> {
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
