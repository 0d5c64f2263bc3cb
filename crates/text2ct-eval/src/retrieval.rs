//! Retrieval metrics: report-to-volume Recall@K and volume-to-volume MAP@K (standard and CT-CLIP's computation).

use crate::error::{EvalError, Result};

fn top_k(row: &[f64], k: usize, exclude: Option<usize>) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..row.len()).filter(|&j| Some(j) != exclude).collect();
    // descending score, ties broken by index (stable)
    idx.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
    idx.truncate(k);
    idx
}

fn check_sim(sim: &[f64], n: usize, m: usize) -> Result<()> {
    if sim.len() != n * m {
        return Err(EvalError::ShapeMismatch { what: "similarity matrix", expected: n * m, got: sim.len() });
    }
    if sim.iter().any(|v| !v.is_finite()) {
        return Err(EvalError::NonFinite { what: "similarity matrix" });
    }
    if n == 0 || m == 0 {
        return Err(EvalError::Empty { what: "similarity matrix" });
    }
    Ok(())
}

/// Recall@K for paired retrieval: `sim` is row-major `n×n` (query `i` = report `i`, candidate `j` = volume `j`);
/// query `i` is a hit when volume `i` is among its top `k` (ties broken by index).
pub fn recall_at_k(sim: &[f64], n: usize, k: usize) -> Result<f64> {
    check_sim(sim, n, n)?;
    if k == 0 {
        return Err(EvalError::Invalid("k must be > 0".into()));
    }
    let hits = (0..n).filter(|&i| top_k(&sim[i * n..(i + 1) * n], k, None).contains(&i)).count();
    Ok(hits as f64 / n as f64)
}

/// Volume-to-volume MAP@K with binary relevance (candidate shares ≥ 1 positive label with the query), the query
/// excluded from its own ranking: `AP@K = Σ_{r≤K} P@r·rel_r / min(K, #relevant)`, averaged over queries that have
/// at least one relevant candidate. `labels[i]` are the binary labels of volume `i`, `sim` is `n×n`.
pub fn map_at_k(sim: &[f64], labels: &[Vec<bool>], k: usize) -> Result<f64> {
    let n = labels.len();
    check_sim(sim, n, n)?;
    if k == 0 {
        return Err(EvalError::Invalid("k must be > 0".into()));
    }
    let rel = |a: usize, b: usize| labels[a].iter().zip(&labels[b]).any(|(&x, &y)| x && y);
    let (mut sum, mut count) = (0.0, 0usize);
    for q in 0..n {
        let n_rel = (0..n).filter(|&j| j != q && rel(q, j)).count();
        if n_rel == 0 {
            continue;
        }
        let (mut hits, mut ap) = (0usize, 0.0);
        for (r, &j) in top_k(&sim[q * n..(q + 1) * n], k, Some(q)).iter().enumerate() {
            if rel(q, j) {
                hits += 1;
                ap += hits as f64 / (r + 1) as f64;
            }
        }
        sum += ap / n_rel.min(k) as f64;
        count += 1;
    }
    if count == 0 {
        return Err(EvalError::Invalid("no query has a relevant candidate".into()));
    }
    Ok(sum / count as f64)
}

/// CT-CLIP's `volume_to_volume_new.py` "MAP@K": for each `K` in `ks` (in order), every query's top-K candidates
/// (query **not** excluded; candidates = volumes with ≥ 1 positive label, given by `candidate_ids`) are scored by
/// Jaccard `|A∩B| / (|A∩B| + |A△B|)`, each query contributes the mean score of its top K, and the reported value is
/// the mean of an accumulator that is **not reset between K values** (so later K also average earlier ones).
/// `sim` is row-major `n_queries × candidate_ids.len()`.
pub fn ctclip_map_at_ks(
    sim: &[f64],
    query_labels: &[Vec<bool>],
    candidate_ids: &[usize],
    candidate_labels: &[Vec<bool>],
    ks: &[usize],
) -> Result<Vec<f64>> {
    let (n, m) = (query_labels.len(), candidate_ids.len());
    check_sim(sim, n, m)?;
    if candidate_labels.len() != m {
        return Err(EvalError::ShapeMismatch { what: "candidate labels", expected: m, got: candidate_labels.len() });
    }
    let jacc = |a: &[bool], b: &[bool]| {
        let inter = a.iter().zip(b).filter(|(&x, &y)| x && y).count() as f64;
        let sym = a.iter().zip(b).filter(|(&x, &y)| x != y).count() as f64;
        if inter + sym == 0.0 {
            0.0
        } else {
            inter / (inter + sym)
        }
    };
    let mut acc: Vec<f64> = Vec::new();
    let mut out = Vec::with_capacity(ks.len());
    for &k in ks {
        if k == 0 {
            return Err(EvalError::Invalid("k must be > 0".into()));
        }
        for q in 0..n {
            let top = top_k(&sim[q * m..(q + 1) * m], k, None);
            let mean =
                top.iter().map(|&j| jacc(&query_labels[q], &candidate_labels[j])).sum::<f64>() / top.len() as f64;
            acc.push(mean);
        }
        out.push(acc.iter().sum::<f64>() / acc.len() as f64);
    }
    Ok(out)
}
