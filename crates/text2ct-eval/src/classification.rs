//! Binary / multi-label classification metrics (scikit-learn definitions).

use crate::error::{EvalError, Result};

fn check(y: &[bool], s: &[f64]) -> Result<(usize, usize)> {
    if y.len() != s.len() {
        return Err(EvalError::ShapeMismatch { what: "scores", expected: y.len(), got: s.len() });
    }
    if s.iter().any(|v| !v.is_finite()) {
        return Err(EvalError::NonFinite { what: "scores" });
    }
    let p = y.iter().filter(|&&b| b).count();
    Ok((p, y.len() - p))
}

/// ROC AUC with ties counted as 1/2 (Mann–Whitney form; equals sklearn's `roc_auc_score`). Errors if only one
/// class is present.
pub fn roc_auc(y: &[bool], s: &[f64]) -> Result<f64> {
    let (p, n) = check(y, s)?;
    if p == 0 || n == 0 {
        return Err(EvalError::Invalid("ROC AUC needs both classes".into()));
    }
    let mut idx: Vec<usize> = (0..s.len()).collect();
    idx.sort_by(|&a, &b| s[a].total_cmp(&s[b]));
    // average ranks (1-based) over tie groups
    let mut rank_sum_pos = 0.0;
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && s[idx[j + 1]] == s[idx[i]] {
            j += 1;
        }
        let avg = (i + j) as f64 / 2.0 + 1.0;
        rank_sum_pos += avg * idx[i..=j].iter().filter(|&&k| y[k]).count() as f64;
        i = j + 1;
    }
    Ok((rank_sum_pos - (p * (p + 1)) as f64 / 2.0) / (p as f64 * n as f64))
}

/// Average precision `Σ (R_i - R_{i-1})·P_i` over distinct score thresholds (sklearn's
/// `average_precision_score`). Errors if there are no positives.
pub fn average_precision(y: &[bool], s: &[f64]) -> Result<f64> {
    let (p, _) = check(y, s)?;
    if p == 0 {
        return Err(EvalError::Invalid("average precision needs at least one positive".into()));
    }
    let mut idx: Vec<usize> = (0..s.len()).collect();
    idx.sort_by(|&a, &b| s[b].total_cmp(&s[a]));
    let (mut tp, mut fp, mut prev_recall, mut ap) = (0usize, 0usize, 0.0f64, 0.0f64);
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j < idx.len() && s[idx[j]] == s[idx[i]] {
            if y[idx[j]] {
                tp += 1;
            } else {
                fp += 1;
            }
            j += 1;
        }
        let recall = tp as f64 / p as f64;
        ap += (recall - prev_recall) * tp as f64 / (tp + fp) as f64;
        prev_recall = recall;
        i = j;
    }
    Ok(ap)
}

/// Precision of the prediction `score >= threshold` (0 when nothing is predicted positive, like
/// `zero_division=0`).
pub fn precision_at_threshold(y: &[bool], s: &[f64], threshold: f64) -> Result<f64> {
    check(y, s)?;
    let (mut tp, mut pp) = (0usize, 0usize);
    for (&yi, &si) in y.iter().zip(s) {
        if si >= threshold {
            pp += 1;
            tp += yi as usize;
        }
    }
    Ok(if pp == 0 { 0.0 } else { tp as f64 / pp as f64 })
}

/// Per-class metric values with their macro and support-weighted averages.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Averaged {
    /// Metric of each class (column).
    pub per_class: Vec<f64>,
    /// Unweighted mean over classes.
    pub macro_avg: f64,
    /// Mean weighted by the number of positives per class.
    pub weighted_avg: f64,
}

/// Applies a binary metric column-wise to multi-label data (`y[i][c]`, `s[i][c]`) and averages.
pub fn multilabel<F>(y: &[Vec<bool>], s: &[Vec<f64>], metric: F) -> Result<Averaged>
where
    F: Fn(&[bool], &[f64]) -> Result<f64>,
{
    let c = y.first().map(|r| r.len()).ok_or(EvalError::Empty { what: "labels" })?;
    if s.len() != y.len() {
        return Err(EvalError::ShapeMismatch { what: "score rows", expected: y.len(), got: s.len() });
    }
    if y.iter().any(|r| r.len() != c) || s.iter().any(|r| r.len() != c) {
        return Err(EvalError::ShapeMismatch { what: "class columns", expected: c, got: 0 });
    }
    let mut per_class = Vec::with_capacity(c);
    let mut support = Vec::with_capacity(c);
    for j in 0..c {
        let yc: Vec<bool> = y.iter().map(|r| r[j]).collect();
        let sc: Vec<f64> = s.iter().map(|r| r[j]).collect();
        per_class.push(metric(&yc, &sc)?);
        support.push(yc.iter().filter(|&&b| b).count() as f64);
    }
    let macro_avg = per_class.iter().sum::<f64>() / c as f64;
    let tot: f64 = support.iter().sum();
    let weighted_avg =
        if tot == 0.0 { 0.0 } else { per_class.iter().zip(&support).map(|(m, w)| m * w).sum::<f64>() / tot };
    Ok(Averaged { per_class, macro_avg, weighted_avg })
}
