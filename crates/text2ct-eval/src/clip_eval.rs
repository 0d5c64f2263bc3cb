//! Evaluation of a 3D CLIP from its embeddings (the protocol is pinned in
//! `docs/evaluation/clip.md`):
//!
//! - **zero-shot** classification of the 18 abnormalities with two prompt styles
//!   ([`PromptStyle`]): for class `c`, `p = softmax(s·[cos(v, t⁺_c), cos(v, t⁻_c)])[0]`
//!   (`s` = the logit multiplier `exp(logit_scale)`), i.e. `P(present)`; accuracy at 0.5, ROC AUC,
//!   precision at 0.5, each per class with macro and support-weighted averages (classes where a
//!   metric is undefined — AUC with one class only — are left out of its averages and counted);
//! - **volume-to-volume** MAP@K (K = 1, 5, 10, 50): relevance = shares ≥ 1 abnormality, the query
//!   excluded ([`crate::retrieval::map_at_k`]), plus CT-CLIP's quirky computation
//!   ([`crate::retrieval::ctclip_map_at_ks`]) and a random-ranking baseline;
//! - **report-to-volume** Recall@K (K = 5, 10, 50, 100), report `i` paired with volume `i`
//!   ([`crate::retrieval::recall_at_k`]), with the random baseline `min(K, N)/N`.
//!
//! Similarities are cosines (rows are re-normalised here). JSON via serde; Markdown via
//! [`ClipEvalReport::to_markdown`].

use serde::{Deserialize, Serialize};

use crate::classification::{precision_at_threshold, roc_auc};
use crate::error::{EvalError, Result};
use crate::retrieval::{ctclip_map_at_ks, map_at_k, recall_at_k};

/// Version of the protocol in `docs/evaluation/clip.md`.
pub const PROTOCOL: &str = "text2ct-clip-eval-v1";
/// K values of volume-to-volume MAP@K.
pub const MAP_KS: [usize; 4] = [1, 5, 10, 50];
/// K values of report-to-volume Recall@K.
pub const RECALL_KS: [usize; 4] = [5, 10, 50, 100];
/// Seeded random rankings averaged for the MAP@K random baseline.
pub const RANDOM_TRIALS: usize = 20;

/// The two zero-shot prompt pairs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PromptStyle {
    /// CT-CLIP's `"{X} is present."` / `"{X} is not present."`.
    IsPresent,
    /// `"This scan shows signs of {X}"` / `"This scan does not show signs of {X}"`.
    ShowsSigns,
}

impl PromptStyle {
    pub const ALL: [PromptStyle; 2] = [PromptStyle::IsPresent, PromptStyle::ShowsSigns];

    /// `(present, absent)` prompts for class name `x`.
    pub fn prompts(self, x: &str) -> (String, String) {
        match self {
            PromptStyle::IsPresent => (format!("{x} is present."), format!("{x} is not present.")),
            PromptStyle::ShowsSigns => {
                (format!("This scan shows signs of {x}"), format!("This scan does not show signs of {x}"))
            }
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            PromptStyle::IsPresent => "\"{X} is present.\" / \"{X} is not present.\"",
            PromptStyle::ShowsSigns => "\"This scan shows signs of {X}\" / \"This scan does not show signs of {X}\"",
        }
    }
}

/// A metric per class with its averages over the classes where it is defined.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClassMetric {
    /// `None` where undefined (AUC of a class with only positives or only negatives).
    pub per_class: Vec<Option<f64>>,
    pub macro_avg: Option<f64>,
    /// Weighted by the number of positives of each class.
    pub weighted_avg: Option<f64>,
    /// Classes that entered the averages.
    pub n_classes: usize,
}

pub(crate) fn averaged(vals: Vec<Option<f64>>, support: &[usize]) -> ClassMetric {
    let defined: Vec<(f64, usize)> = vals.iter().zip(support).filter_map(|(v, &s)| v.map(|v| (v, s))).collect();
    let n = defined.len();
    let macro_avg = (n > 0).then(|| defined.iter().map(|d| d.0).sum::<f64>() / n as f64);
    let w: usize = defined.iter().map(|d| d.1).sum();
    let weighted_avg = (w > 0).then(|| defined.iter().map(|d| d.0 * d.1 as f64).sum::<f64>() / w as f64);
    ClassMetric { per_class: vals, macro_avg, weighted_avg, n_classes: n }
}

/// Zero-shot results of one prompt style.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ZeroShot {
    pub style: PromptStyle,
    pub prompts: String,
    pub accuracy: ClassMetric,
    pub auc: ClassMetric,
    pub precision: ClassMetric,
    /// Positives per class.
    pub support: Vec<usize>,
    /// `P(present)` per volume and class (row = volume).
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub probs: Vec<Vec<f64>>,
}

/// Volume-to-volume retrieval.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VolumeToVolume {
    pub ks: Vec<usize>,
    /// Standard MAP@K (query excluded, relevance = ≥ 1 shared abnormality); `None` where no query
    /// has a relevant candidate.
    pub map: Vec<Option<f64>>,
    /// Mean over [`RANDOM_TRIALS`] seeded random rankings of the same MAP@K.
    pub map_random: Vec<Option<f64>>,
    /// CT-CLIP's `volume_to_volume_new.py` values (Jaccard scores, query not excluded,
    /// candidates = volumes with ≥ 1 abnormality, accumulator not reset between K).
    pub ctclip_map: Vec<Option<f64>>,
    /// Queries with at least one relevant candidate.
    pub n_queries: usize,
}

/// Report-to-volume retrieval.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReportToVolume {
    pub ks: Vec<usize>,
    pub recall: Vec<f64>,
    /// `min(K, N) / N`.
    pub random: Vec<f64>,
}

/// The whole evaluation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClipEvalReport {
    pub protocol: String,
    pub n_volumes: usize,
    pub logit_multiplier: f64,
    pub class_names: Vec<String>,
    pub zero_shot: Vec<ZeroShot>,
    pub volume_to_volume: VolumeToVolume,
    pub report_to_volume: ReportToVolume,
    /// Free-form provenance (model path, manifest, ...), written by the caller.
    #[serde(default)]
    pub meta: serde_json::Map<String, serde_json::Value>,
}

fn normalized(rows: &[Vec<f32>], what: &'static str) -> Result<Vec<Vec<f64>>> {
    let d = rows.first().map(|r| r.len()).ok_or(EvalError::Empty { what })?;
    rows.iter()
        .map(|r| {
            if r.len() != d {
                return Err(EvalError::ShapeMismatch { what, expected: d, got: r.len() });
            }
            if r.iter().any(|v| !v.is_finite()) {
                return Err(EvalError::NonFinite { what });
            }
            let n = r.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>().sqrt().max(1e-12);
            Ok(r.iter().map(|&v| v as f64 / n).collect())
        })
        .collect()
}

fn cos(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn sim_matrix(q: &[Vec<f64>], c: &[Vec<f64>]) -> Vec<f64> {
    q.iter().flat_map(|a| c.iter().map(move |b| cos(a, b))).collect()
}

/// Zero-shot classification. `volumes[i]` embedding of volume `i`, `present[c]` / `absent[c]` the
/// embeddings of class `c`'s two prompts, `labels[i][c]` the truth, `s` the logit multiplier.
pub fn zero_shot(
    style: PromptStyle,
    volumes: &[Vec<f32>],
    present: &[Vec<f32>],
    absent: &[Vec<f32>],
    labels: &[Vec<bool>],
    s: f64,
) -> Result<ZeroShot> {
    let v = normalized(volumes, "volume embeddings")?;
    let tp = normalized(present, "present-prompt embeddings")?;
    let ta = normalized(absent, "absent-prompt embeddings")?;
    let c = tp.len();
    if ta.len() != c {
        return Err(EvalError::ShapeMismatch { what: "absent prompts", expected: c, got: ta.len() });
    }
    if tp[0].len() != v[0].len() || ta[0].len() != v[0].len() {
        return Err(EvalError::ShapeMismatch { what: "prompt embedding size", expected: v[0].len(), got: tp[0].len() });
    }
    if labels.len() != v.len() {
        return Err(EvalError::ShapeMismatch { what: "label rows", expected: v.len(), got: labels.len() });
    }
    if labels.iter().any(|r| r.len() != c) {
        return Err(EvalError::ShapeMismatch { what: "label columns", expected: c, got: 0 });
    }
    if !(s.is_finite() && s > 0.0) {
        return Err(EvalError::Invalid(format!("logit multiplier must be finite and > 0, got {s}")));
    }
    // softmax over (present, absent): first entry = sigmoid(s (cp - ca)).
    let probs: Vec<Vec<f64>> = v
        .iter()
        .map(|vi| (0..c).map(|j| 1.0 / (1.0 + (-s * (cos(vi, &tp[j]) - cos(vi, &ta[j]))).exp())).collect())
        .collect();
    let support: Vec<usize> = (0..c).map(|j| labels.iter().filter(|r| r[j]).count()).collect();
    let (mut acc, mut auc, mut prec) = (Vec::new(), Vec::new(), Vec::new());
    for j in 0..c {
        let y: Vec<bool> = labels.iter().map(|r| r[j]).collect();
        let p: Vec<f64> = probs.iter().map(|r| r[j]).collect();
        let correct = y.iter().zip(&p).filter(|(&yi, &pi)| (pi >= 0.5) == yi).count();
        acc.push(Some(correct as f64 / y.len() as f64));
        auc.push(roc_auc(&y, &p).ok());
        prec.push(Some(precision_at_threshold(&y, &p, 0.5)?));
    }
    Ok(ZeroShot {
        style,
        prompts: style.name().to_string(),
        accuracy: averaged(acc, &support),
        auc: averaged(auc, &support),
        precision: averaged(prec, &support),
        support,
        probs,
    })
}

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Volume-to-volume retrieval over `ks`.
pub fn volume_to_volume(volumes: &[Vec<f32>], labels: &[Vec<bool>], ks: &[usize]) -> Result<VolumeToVolume> {
    let v = normalized(volumes, "volume embeddings")?;
    let n = v.len();
    if labels.len() != n {
        return Err(EvalError::ShapeMismatch { what: "label rows", expected: n, got: labels.len() });
    }
    let sim = sim_matrix(&v, &v);
    let rel = |a: usize, b: usize| labels[a].iter().zip(&labels[b]).any(|(&x, &y)| x && y);
    let n_queries = (0..n).filter(|&q| (0..n).any(|j| j != q && rel(q, j))).count();
    let map: Vec<Option<f64>> = ks.iter().map(|&k| map_at_k(&sim, labels, k).ok()).collect();
    let mut map_random = vec![Some(0.0); ks.len()];
    let mut state = 0x5EED_u64;
    for _ in 0..RANDOM_TRIALS {
        let r: Vec<f64> = (0..n * n).map(|_| (splitmix(&mut state) >> 11) as f64 / (1u64 << 53) as f64).collect();
        for (i, &k) in ks.iter().enumerate() {
            map_random[i] = match (map_random[i], map_at_k(&r, labels, k).ok()) {
                (Some(a), Some(b)) => Some(a + b / RANDOM_TRIALS as f64),
                _ => None,
            };
        }
    }
    let cand: Vec<usize> = (0..n).filter(|&j| labels[j].iter().any(|&b| b)).collect();
    let ctclip_map = if cand.is_empty() {
        vec![None; ks.len()]
    } else {
        let cv: Vec<Vec<f64>> = cand.iter().map(|&j| v[j].clone()).collect();
        let cl: Vec<Vec<bool>> = cand.iter().map(|&j| labels[j].clone()).collect();
        ctclip_map_at_ks(&sim_matrix(&v, &cv), labels, &cand, &cl, ks)?.into_iter().map(Some).collect()
    };
    Ok(VolumeToVolume { ks: ks.to_vec(), map, map_random, ctclip_map, n_queries })
}

/// Report-to-volume Recall@K: `reports[i]` is paired with `volumes[i]`.
pub fn report_to_volume(reports: &[Vec<f32>], volumes: &[Vec<f32>], ks: &[usize]) -> Result<ReportToVolume> {
    let r = normalized(reports, "report embeddings")?;
    let v = normalized(volumes, "volume embeddings")?;
    let n = v.len();
    if r.len() != n {
        return Err(EvalError::ShapeMismatch { what: "report rows", expected: n, got: r.len() });
    }
    let sim = sim_matrix(&r, &v);
    let recall = ks.iter().map(|&k| recall_at_k(&sim, n, k)).collect::<Result<Vec<_>>>()?;
    let random = ks.iter().map(|&k| k.min(n) as f64 / n as f64).collect();
    Ok(ReportToVolume { ks: ks.to_vec(), recall, random })
}

/// Inputs of [`evaluate`]: embeddings paired by index, the 18 labels, the prompts' embeddings per style.
pub struct ClipEvalInput<'a> {
    pub volumes: &'a [Vec<f32>],
    pub reports: &'a [Vec<f32>],
    pub labels: &'a [Vec<bool>],
    pub class_names: &'a [String],
    /// `(style, present[c], absent[c])`.
    pub prompts: &'a [(PromptStyle, Vec<Vec<f32>>, Vec<Vec<f32>>)],
    pub logit_multiplier: f64,
}

/// The full protocol.
pub fn evaluate(inp: &ClipEvalInput) -> Result<ClipEvalReport> {
    let zero_shot = inp
        .prompts
        .iter()
        .map(|(st, p, a)| zero_shot(*st, inp.volumes, p, a, inp.labels, inp.logit_multiplier))
        .collect::<Result<Vec<_>>>()?;
    Ok(ClipEvalReport {
        protocol: PROTOCOL.into(),
        n_volumes: inp.volumes.len(),
        logit_multiplier: inp.logit_multiplier,
        class_names: inp.class_names.to_vec(),
        zero_shot,
        volume_to_volume: volume_to_volume(inp.volumes, inp.labels, &MAP_KS)?,
        report_to_volume: report_to_volume(inp.reports, inp.volumes, &RECALL_KS)?,
        meta: Default::default(),
    })
}

fn f(v: Option<f64>) -> String {
    v.map_or("n/a".into(), |x| format!("{x:.3}"))
}

impl ClipEvalReport {
    /// Pretty JSON (per-volume probabilities omitted unless kept in `probs`).
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("serialisable")
    }

    /// A Markdown summary: headline tables and the per-class zero-shot AUC.
    pub fn to_markdown(&self) -> String {
        let mut s = String::new();
        s.push_str(&format!("# 3D-CLIP evaluation ({})\n\n", self.protocol));
        s.push_str(&format!("{} volumes; logit multiplier {:.3}.\n\n", self.n_volumes, self.logit_multiplier));
        for (k, v) in &self.meta {
            s.push_str(&format!("- {k}: {v}\n"));
        }
        s.push_str("\n## Zero-shot (18 abnormalities; random = AUC 0.5)\n\n");
        s.push_str("| prompts | AUC macro | AUC weighted | accuracy macro | accuracy weighted | precision macro | precision weighted |\n|---|---|---|---|---|---|---|\n");
        for z in &self.zero_shot {
            s.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {} |\n",
                z.prompts.replace('|', "\\|"),
                f(z.auc.macro_avg),
                f(z.auc.weighted_avg),
                f(z.accuracy.macro_avg),
                f(z.accuracy.weighted_avg),
                f(z.precision.macro_avg),
                f(z.precision.weighted_avg)
            ));
        }
        s.push_str("\n## Volume-to-volume MAP@K (relevance: ≥ 1 shared abnormality, query excluded)\n\n");
        s.push_str("| K | MAP@K | random ranking | CT-CLIP computation |\n|---|---|---|---|\n");
        let vv = &self.volume_to_volume;
        for (i, k) in vv.ks.iter().enumerate() {
            s.push_str(&format!("| {k} | {} | {} | {} |\n", f(vv.map[i]), f(vv.map_random[i]), f(vv.ctclip_map[i])));
        }
        s.push_str("\n## Report-to-volume Recall@K\n\n| K | Recall@K | random K/N |\n|---|---|---|\n");
        let rv = &self.report_to_volume;
        for (i, k) in rv.ks.iter().enumerate() {
            s.push_str(&format!("| {k} | {:.3} | {:.3} |\n", rv.recall[i], rv.random[i]));
        }
        s.push_str("\n## Zero-shot AUC per class\n\n| class | positives |");
        for z in &self.zero_shot {
            s.push_str(&format!(" AUC {:?} |", z.style));
        }
        s.push_str("\n|---|---|");
        for _ in &self.zero_shot {
            s.push_str("---|");
        }
        s.push('\n');
        for (c, name) in self.class_names.iter().enumerate() {
            let sup = self.zero_shot.first().map_or(0, |z| z.support.get(c).copied().unwrap_or(0));
            s.push_str(&format!("| {name} | {sup} |"));
            for z in &self.zero_shot {
                s.push_str(&format!(" {} |", f(z.auc.per_class.get(c).copied().flatten())));
            }
            s.push('\n');
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(v: &[f32]) -> Vec<f32> {
        v.to_vec()
    }

    #[test]
    fn zero_shot_perfect_and_inverted() {
        // 2 classes in 2-D: class 0 "present" = +x, "absent" = -x; class 1 on y.
        let present = vec![e(&[1.0, 0.0]), e(&[0.0, 1.0])];
        let absent = vec![e(&[-1.0, 0.0]), e(&[0.0, -1.0])];
        let vols = vec![e(&[1.0, 1.0]), e(&[1.0, -1.0]), e(&[-1.0, 1.0]), e(&[-1.0, -1.0])];
        let labels = vec![vec![true, true], vec![true, false], vec![false, true], vec![false, false]];
        let z = zero_shot(PromptStyle::IsPresent, &vols, &present, &absent, &labels, 10.0).unwrap();
        assert_eq!(z.auc.macro_avg, Some(1.0));
        assert_eq!(z.accuracy.macro_avg, Some(1.0));
        assert_eq!(z.precision.weighted_avg, Some(1.0));
        // P(present) = sigmoid(s * (cos+ - cos-)) = sigmoid(10 * 2/sqrt2)
        let want = 1.0 / (1.0 + (-10.0 * 2.0 / 2f64.sqrt()).exp());
        assert!((z.probs[0][0] - want).abs() < 1e-12);
        // Swapping the prompts inverts everything.
        let z = zero_shot(PromptStyle::IsPresent, &vols, &absent, &present, &labels, 10.0).unwrap();
        assert_eq!(z.auc.macro_avg, Some(0.0));
        assert_eq!(z.accuracy.macro_avg, Some(0.0));
        assert_eq!(z.precision.macro_avg, Some(0.0));
    }

    #[test]
    fn undefined_auc_is_left_out_of_averages() {
        let present = vec![e(&[1.0, 0.0]), e(&[0.0, 1.0])];
        let absent = vec![e(&[-1.0, 0.0]), e(&[0.0, -1.0])];
        let vols = vec![e(&[1.0, 0.5]), e(&[-1.0, 0.5])];
        // class 1 positive in every volume: AUC undefined.
        let labels = vec![vec![true, true], vec![false, true]];
        let z = zero_shot(PromptStyle::ShowsSigns, &vols, &present, &absent, &labels, 1.0).unwrap();
        assert_eq!(z.auc.per_class, vec![Some(1.0), None]);
        assert_eq!(z.auc.n_classes, 1);
        assert_eq!(z.auc.macro_avg, Some(1.0));
        assert_eq!(z.accuracy.per_class, vec![Some(1.0), Some(1.0)]);
        assert_eq!(z.support, vec![1, 2]);
    }

    #[test]
    fn prompts_are_the_pinned_strings() {
        assert_eq!(
            PromptStyle::IsPresent.prompts("Emphysema"),
            ("Emphysema is present.".into(), "Emphysema is not present.".into())
        );
        assert_eq!(
            PromptStyle::ShowsSigns.prompts("Emphysema"),
            ("This scan shows signs of Emphysema".into(), "This scan does not show signs of Emphysema".into())
        );
    }

    #[test]
    fn retrieval_known_answers() {
        // Volumes 0,1 share class 0 and are close; 2,3 share class 1 and are close.
        let vols = vec![e(&[1.0, 0.1]), e(&[1.0, 0.0]), e(&[0.0, 1.0]), e(&[0.1, 1.0])];
        let labels = vec![vec![true, false], vec![true, false], vec![false, true], vec![false, true]];
        let vv = volume_to_volume(&vols, &labels, &[1, 5]).unwrap();
        assert_eq!(vv.map, vec![Some(1.0), Some(1.0)]);
        assert_eq!(vv.n_queries, 4);
        // CT-CLIP: query not excluded -> top-1 is itself (Jaccard 1).
        assert_eq!(vv.ctclip_map[0], Some(1.0));
        // K=5 covers all 4 candidates: 2 with Jaccard 1, 2 with 0 -> 0.5; accumulated with K=1 -> 0.75.
        assert!((vv.ctclip_map[1].unwrap() - 0.75).abs() < 1e-12);
        // random ranking, K >= n-1: AP = 1/(rank of the single relevant), mean over 3 positions = 11/18
        assert!(vv.map_random[1].unwrap() > 0.3 && vv.map_random[1].unwrap() < 0.9);

        let reps = vec![e(&[1.0, 0.1]), e(&[1.0, 0.0]), e(&[0.0, 1.0]), e(&[0.1, 1.0])];
        let rv = report_to_volume(&reps, &vols, &[1, 2, 100]).unwrap();
        assert_eq!(rv.recall, vec![1.0, 1.0, 1.0]);
        assert_eq!(rv.random, vec![0.25, 0.5, 1.0]);
        // Reversed pairing: report i matches volume 3 - i.
        let rev: Vec<Vec<f32>> = reps.iter().rev().cloned().collect();
        let rv = report_to_volume(&rev, &vols, &[1, 2]).unwrap();
        assert_eq!(rv.recall, vec![0.0, 0.0]);
    }

    #[test]
    fn full_report_and_writers() {
        let vols = vec![e(&[1.0, 0.0]), e(&[0.0, 1.0]), e(&[1.0, 1.0])];
        let labels = vec![vec![true, false], vec![false, true], vec![true, true]];
        let present = vec![e(&[1.0, 0.0]), e(&[0.0, 1.0])];
        let absent = vec![e(&[-1.0, 0.0]), e(&[0.0, -1.0])];
        let names = vec!["A".to_string(), "B".to_string()];
        let prompts = vec![(PromptStyle::IsPresent, present.clone(), absent.clone())];
        let r = evaluate(&ClipEvalInput {
            volumes: &vols,
            reports: &vols,
            labels: &labels,
            class_names: &names,
            prompts: &prompts,
            logit_multiplier: 100.0,
        })
        .unwrap();
        assert_eq!(r.report_to_volume.recall[0], 1.0);
        let j: ClipEvalReport = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(j.n_volumes, 3);
        let md = r.to_markdown();
        assert!(md.contains("| 5 | 1.000 | 1.000 |"), "{md}");
        assert!(md.contains("| A | 2 |"));
        assert!(zero_shot(PromptStyle::IsPresent, &vols, &present, &absent[..1], &labels, 1.0).is_err());
    }
}
