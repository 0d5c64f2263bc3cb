//! Does the prompt matter? Paired generation with and without a finding, compared with the
//! finding's voxel signature in real (here: phantom) data.
//!
//! **Signature** of a finding `f` on a prepared set: `S_f = mean(volumes with f) − mean(volumes
//! without f)` in HU, voxel by voxel. Other findings are drawn independently of `f` in the
//! phantoms, so they cancel in the difference up to sampling noise; `S_f` is where and how `f`
//! changes a scan (fluid at one lung base for a pleural effusion, a larger heart for
//! cardiomegaly, darker lungs for emphysema, …).
//!
//! **Effect** of a prompt: for pair `k`, two volumes generated from the *same noise seed*, one
//! from a report stating `f`, one from the same patient's report without findings;
//! `Δ_k = with_k − without_k`. The table reports, for each prompted finding, the Pearson
//! correlation (over voxels) of the mean effect `mean_k Δ_k` with every signature: a model whose
//! text conditioning works puts the largest value on the diagonal (the prompted finding's own
//! signature, e.g. a right effusion prompt correlates with the right-effusion signature more than
//! with the left one). Also per row: how many single pairs correlate positively with their own
//! signature, and the mean absolute voxel change in HU (0 would mean the prompt is ignored).
//!
//! Correlation over the whole volume is dominated by large, diffuse differences; a finding that
//! occupies a small place (fluid at one lung base) can be drawn at a tenth of its strength, or on
//! both sides, and still correlate. So the report also measures *where and how much*: each
//! signature's **region** is the [`REGION_FRACTION`] of voxels where `|S_g|` is largest, and for
//! each prompted finding it gives the mean effect inside every region, in HU, next to the real
//! change there (the signature's own mean in its region). A right-effusion prompt that works
//! adds about as much inside the right-effusion region as real right effusions do, and much
//! less inside the left one.
//!
//! The arrays compared must share one voxel order (the generation size equals the prepared size:
//! the generator decodes in the layout it was trained on); a sanity value, the correlation of
//! the mean generated volume with the mean real volume, is reported to catch a mismatch.

use std::path::Path;

use serde::Serialize;
use text2ct_data::manifest::{read_manifest, volume_path, MappedVolume};

use crate::error::{EvalError, Result};

/// A finding whose voxel signature is unambiguous in the phantoms.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FindingDef {
    /// Short name used in tables, e.g. `right pleural effusion`.
    pub name: String,
    /// Index in the 18 CT-RATE labels.
    pub label: usize,
    /// `Some("Right")` / `Some("Left")`: only reports whose impression states that side
    /// (`"Right pleural effusion."`); `None`: any report with the label.
    pub side: Option<String>,
}

impl FindingDef {
    pub fn new(name: &str, label: usize, side: Option<&str>) -> Self {
        FindingDef { name: name.into(), label, side: side.map(Into::into) }
    }

    /// Whether a scan with these labels and this report shows the finding.
    pub fn matches(&self, labels: &[u8], report: &str) -> bool {
        if labels.get(self.label).copied().unwrap_or(0) == 0 {
            return false;
        }
        match &self.side {
            None => true,
            Some(side) => {
                let imp = report.split("Impression:").nth(1).unwrap_or("");
                let label = text2ct_data::labels::LABELS[self.label].to_lowercase();
                imp.contains(&format!("{side} {label}"))
            }
        }
    }
}

/// The findings checked on phantoms: pleural effusion by side, cardiomegaly, lung nodule,
/// emphysema (labels in CT-RATE order).
pub fn phantom_findings() -> Vec<FindingDef> {
    let idx = |name: &str| text2ct_data::labels::LABELS.iter().position(|l| *l == name).expect("a CT-RATE label");
    vec![
        FindingDef::new("right pleural effusion", idx("Pleural effusion"), Some("Right")),
        FindingDef::new("left pleural effusion", idx("Pleural effusion"), Some("Left")),
        FindingDef::new("cardiomegaly", idx("Cardiomegaly"), None),
        FindingDef::new("lung nodule", idx("Lung nodule"), None),
        FindingDef::new("emphysema", idx("Emphysema"), None),
    ]
}

/// Per-finding signatures of a prepared set.
#[derive(Clone, Debug)]
pub struct Signatures {
    pub findings: Vec<FindingDef>,
    pub dims: [usize; 3],
    /// `S_f` in HU, the prepared arrays' voxel order.
    pub maps: Vec<Vec<f32>>,
    /// `(with, without)` volume counts per finding.
    pub counts: Vec<(usize, usize)>,
    /// Mean of all volumes used (HU).
    pub mean: Vec<f32>,
}

/// Compute [`Signatures`] from a prepared manifest (at most `limit` volumes, in manifest order).
pub fn signatures(manifest: &Path, findings: &[FindingDef], limit: Option<usize>) -> Result<Signatures> {
    let entries = read_manifest(manifest).map_err(|e| EvalError::Invalid(format!("{}: {e}", manifest.display())))?;
    let n = limit.unwrap_or(usize::MAX).min(entries.len());
    if n == 0 {
        return Err(EvalError::Invalid(format!("{} holds no volumes", manifest.display())));
    }
    let dims = entries[0].dims;
    let len: usize = dims.iter().product();
    let mut with = vec![vec![0f64; len]; findings.len()];
    let mut total = vec![0f64; len];
    let mut counts = vec![(0usize, 0usize); findings.len()];
    for e in &entries[..n] {
        if e.dims != dims {
            return Err(EvalError::Invalid(format!(
                "{}: volume {} is {:?}, the first is {dims:?}",
                manifest.display(),
                e.id,
                e.dims
            )));
        }
        let p = volume_path(manifest, e);
        let v = MappedVolume::open(&p).map_err(|err| EvalError::Invalid(format!("{}: {err}", p.display())))?;
        let hu: Vec<f64> = (0..len).map(|i| v.hu(i) as f64).collect();
        for (t, h) in total.iter_mut().zip(&hu) {
            *t += h;
        }
        for (k, f) in findings.iter().enumerate() {
            if f.matches(&e.labels, &e.report) {
                counts[k].0 += 1;
                for (w, h) in with[k].iter_mut().zip(&hu) {
                    *w += h;
                }
            } else {
                counts[k].1 += 1;
            }
        }
    }
    let mut maps = Vec::with_capacity(findings.len());
    for (k, f) in findings.iter().enumerate() {
        let (a, b) = counts[k];
        if a == 0 || b == 0 {
            return Err(EvalError::Invalid(format!(
                "{}: no volumes {} {:?} among the first {n}; a signature needs both",
                manifest.display(),
                if a == 0 { "with" } else { "without" },
                f.name
            )));
        }
        // mean(without) = (total - with) / b
        maps.push((0..len).map(|i| (with[k][i] / a as f64 - (total[i] - with[k][i]) / b as f64) as f32).collect());
    }
    let mean = total.iter().map(|t| (t / n as f64) as f32).collect();
    Ok(Signatures { findings: findings.to_vec(), dims, maps, counts, mean })
}

/// Pearson correlation of two equally long arrays (0 when either is constant).
pub fn pearson(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "pearson: lengths differ");
    let n = a.len() as f64;
    let ma = a.iter().map(|&x| x as f64).sum::<f64>() / n;
    let mb = b.iter().map(|&x| x as f64).sum::<f64>() / n;
    let (mut sab, mut saa, mut sbb) = (0f64, 0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        let (dx, dy) = (x as f64 - ma, y as f64 - mb);
        sab += dx * dy;
        saa += dx * dx;
        sbb += dy * dy;
    }
    if saa <= 0.0 || sbb <= 0.0 {
        0.0
    } else {
        sab / (saa * sbb).sqrt()
    }
}

/// Share of the voxels, those where `|S_g|` is largest, that make a signature's region (2 %).
pub const REGION_FRACTION: f64 = 0.02;

/// Smallest real mean change (HU) in a signature's region for which a strength ratio is given.
pub const MIN_REGION_HU: f64 = 10.0;

/// The voxel indices of a signature's region: the `max(1, round(fraction · len))` voxels with the
/// largest `|s|` (ties broken by index, so the region is deterministic).
pub fn signature_region(s: &[f32], fraction: f64) -> Vec<usize> {
    let k = ((fraction * s.len() as f64).round() as usize).clamp(1, s.len().max(1));
    let mut idx: Vec<usize> = (0..s.len()).collect();
    idx.sort_by(|&a, &b| s[b].abs().total_cmp(&s[a].abs()).then(a.cmp(&b)));
    idx.truncate(k.min(s.len()));
    idx.sort_unstable();
    idx
}

fn region_mean(v: &[f32], region: &[usize]) -> f64 {
    if region.is_empty() {
        return 0.0;
    }
    region.iter().map(|&i| v[i] as f64).sum::<f64>() / region.len() as f64
}

/// One prompted finding's result.
#[derive(Clone, Debug, Serialize)]
pub struct EffectRow {
    pub finding: String,
    pub pairs: usize,
    /// Correlation of the mean effect with each signature (same order as
    /// [`EffectReport::signatures`]).
    pub correlation: Vec<f64>,
    /// Correlation with the prompted finding's own signature.
    pub own: f64,
    /// Whether `own` is the largest value of the row.
    pub own_is_largest: bool,
    /// Pairs whose single `Δ_k` correlates positively with the own signature.
    pub pairs_positive: usize,
    /// Mean over pairs and voxels of `|Δ_k|`, HU.
    pub mean_abs_change_hu: f64,
    /// Mean effect inside each signature's region, HU (same order as [`EffectReport::signatures`]).
    pub region_change_hu: Vec<f64>,
    /// `region_change_hu[own] / EffectReport::region_signature_hu[own]`: the share of the real
    /// change that the prompt produces where the finding lives (1 = as strong as in real data).
    /// `None` where the real change in the region is under [`MIN_REGION_HU`] (a finding with no
    /// fixed place, such as scattered nodules, or a diffuse one).
    pub own_region_ratio: Option<f64>,
}

/// The whole table.
#[derive(Clone, Debug, Serialize)]
pub struct EffectReport {
    pub signatures: Vec<String>,
    pub signature_counts: Vec<(usize, usize)>,
    pub rows: Vec<EffectRow>,
    /// Voxels in each signature's region ([`REGION_FRACTION`] of the volume).
    pub region_voxels: usize,
    /// Each signature's mean inside its own region, HU: the real change there.
    pub region_signature_hu: Vec<f64>,
    /// Correlation of the mean of all generated volumes with the mean real volume (layout check).
    pub generated_vs_real_mean: f64,
}

/// Compare paired generations with the signatures. `pairs[f]` holds `(with, without)` volumes
/// (HU, the signatures' voxel order) for finding `f` of `sig.findings`.
pub fn effects(sig: &Signatures, pairs: &[Vec<(Vec<f32>, Vec<f32>)>]) -> Result<EffectReport> {
    if pairs.len() != sig.findings.len() {
        return Err(EvalError::Invalid(format!(
            "{} findings with signatures but {} sets of pairs",
            sig.findings.len(),
            pairs.len()
        )));
    }
    let len: usize = sig.dims.iter().product();
    let regions: Vec<Vec<usize>> = sig.maps.iter().map(|m| signature_region(m, REGION_FRACTION)).collect();
    let region_signature_hu: Vec<f64> = sig.maps.iter().zip(&regions).map(|(m, r)| region_mean(m, r)).collect();
    let mut gen_sum = vec![0f64; len];
    let mut gen_n = 0usize;
    let mut rows = Vec::new();
    for (f, set) in pairs.iter().enumerate() {
        if set.is_empty() {
            return Err(EvalError::Invalid(format!("no pairs for {:?}", sig.findings[f].name)));
        }
        let mut mean_delta = vec![0f64; len];
        let (mut positive, mut abs_sum) = (0usize, 0f64);
        for (w, wo) in set {
            if w.len() != len || wo.len() != len {
                return Err(EvalError::Invalid(format!(
                    "generated volumes have {} / {} voxels, the signatures {len} ({:?})",
                    w.len(),
                    wo.len(),
                    sig.dims
                )));
            }
            let delta: Vec<f32> = w.iter().zip(wo).map(|(a, b)| a - b).collect();
            if pearson(&delta, &sig.maps[f]) > 0.0 {
                positive += 1;
            }
            abs_sum += delta.iter().map(|d| d.abs() as f64).sum::<f64>() / len as f64;
            for (m, d) in mean_delta.iter_mut().zip(&delta) {
                *m += *d as f64 / set.len() as f64;
            }
            for (g, (a, b)) in gen_sum.iter_mut().zip(w.iter().zip(wo)) {
                *g += (*a + *b) as f64;
            }
            gen_n += 2;
        }
        let md: Vec<f32> = mean_delta.iter().map(|&x| x as f32).collect();
        let correlation: Vec<f64> = sig.maps.iter().map(|s| pearson(&md, s)).collect();
        let own = correlation[f];
        let own_is_largest = correlation.iter().enumerate().all(|(j, &c)| j == f || c < own);
        let region_change_hu: Vec<f64> = regions.iter().map(|r| region_mean(&md, r)).collect();
        let own_region_ratio =
            (region_signature_hu[f].abs() >= MIN_REGION_HU).then(|| region_change_hu[f] / region_signature_hu[f]);
        rows.push(EffectRow {
            finding: sig.findings[f].name.clone(),
            pairs: set.len(),
            correlation,
            own,
            own_is_largest,
            pairs_positive: positive,
            mean_abs_change_hu: abs_sum / set.len() as f64,
            region_change_hu,
            own_region_ratio,
        });
    }
    let gm: Vec<f32> = gen_sum.iter().map(|&g| (g / gen_n as f64) as f32).collect();
    Ok(EffectReport {
        signatures: sig.findings.iter().map(|f| f.name.clone()).collect(),
        signature_counts: sig.counts.clone(),
        rows,
        region_voxels: regions.first().map_or(0, Vec::len),
        region_signature_hu,
        generated_vs_real_mean: pearson(&gm, &sig.mean),
    })
}

impl EffectReport {
    /// How many rows put their largest correlation on their own signature.
    pub fn diagonal_hits(&self) -> usize {
        self.rows.iter().filter(|r| r.own_is_largest).count()
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("serialisable")
    }

    /// A Markdown table's header and separator: the `lead` columns, one column per signature
    /// (`column(name)`), then the `tail` columns.
    fn table_header(&self, lead: &[&str], column: impl Fn(&str) -> String, tail: &[&str]) -> String {
        let names: Vec<String> = lead
            .iter()
            .map(|c| c.to_string())
            .chain(self.signatures.iter().map(|n| column(n)))
            .chain(tail.iter().map(|c| c.to_string()))
            .collect();
        format!("| {} |\n|{}\n", names.join(" | "), "---|".repeat(names.len()))
    }

    /// A row's per-signature cells with `decimals` digits, the prompted finding's own (`own`) in bold.
    fn diagonal_cells(values: &[f64], own: usize, decimals: usize) -> String {
        values
            .iter()
            .enumerate()
            .map(|(j, c)| if j == own { format!(" **{c:.decimals$}** |") } else { format!(" {c:.decimals$} |") })
            .collect()
    }

    /// Markdown: the correlation table (rows = prompted finding, columns = signatures, own value
    /// in bold), then the where-and-how-much table.
    pub fn to_markdown(&self) -> String {
        let mut s = self.table_header(
            &["prompted finding", "pairs"],
            |n| format!("r with S({n})"),
            &["own largest", "pairs with r > 0", "mean abs change (HU)"],
        );
        for (i, r) in self.rows.iter().enumerate() {
            s.push_str(&format!("| {} | {} |", r.finding, r.pairs));
            s.push_str(&Self::diagonal_cells(&r.correlation, i, 3));
            s.push_str(&format!(
                " {} | {}/{} | {:.1} |\n",
                if r.own_is_largest { "yes" } else { "no" },
                r.pairs_positive,
                r.pairs,
                r.mean_abs_change_hu
            ));
        }
        s.push_str(&format!(
            "\nWhere and how much: mean change (HU) inside each finding's region (the {:.0} % of voxels, {}, where \
             its signature is largest in magnitude), and the share of the real change the prompt produces in its own \
             region (given where the real change there is at least {MIN_REGION_HU} HU).\n\n",
            REGION_FRACTION * 100.0,
            self.region_voxels
        ));
        s.push_str(&self.table_header(&["prompted finding"], |n| format!("Δ in region({n})"), &["own / real"]));
        s.push_str("| *real: the signature* |");
        for v in &self.region_signature_hu {
            s.push_str(&format!(" *{v:.1}* |"));
        }
        s.push_str(" 1 |\n");
        for (i, r) in self.rows.iter().enumerate() {
            s.push_str(&format!("| {} |", r.finding));
            s.push_str(&Self::diagonal_cells(&r.region_change_hu, i, 1));
            match r.own_region_ratio {
                Some(q) => s.push_str(&format!(" {q:.2} |\n")),
                None => s.push_str(" — (no fixed place) |\n"),
            }
        }
        s.push_str(&format!(
            "\nSignatures from {} (with/without) volumes. Layout check: the mean generated volume correlates \
             {:.3} with the mean real volume. Rows with the largest value on their own signature: {}/{}.\n",
            self.signature_counts.iter().map(|(a, b)| format!("{a}/{b}")).collect::<Vec<_>>().join(", "),
            self.generated_vs_real_mean,
            self.diagonal_hits(),
            self.rows.len()
        ));
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pearson_known_values() {
        assert!((pearson(&[1.0, 2.0, 3.0], &[2.0, 4.0, 6.0]) - 1.0).abs() < 1e-12);
        assert!((pearson(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]) + 1.0).abs() < 1e-12);
        assert_eq!(pearson(&[1.0, 1.0], &[1.0, 2.0]), 0.0);
        // numpy.corrcoef([1, 2, 4, 7], [1, 3, 2, 5])[0, 1]
        assert!((pearson(&[1.0, 2.0, 4.0, 7.0], &[1.0, 3.0, 2.0, 5.0]) - 0.848367780597815).abs() < 1e-12);
    }

    #[test]
    fn side_is_read_from_the_impression() {
        let f = FindingDef::new("right pleural effusion", 12, Some("Right"));
        let mut labels = vec![0u8; 18];
        let r =
            "Findings: Right pleural effusion with a maximal thickness of 9 mm. Impression: Right pleural effusion.";
        assert!(!f.matches(&labels, r));
        labels[12] = 1;
        assert!(f.matches(&labels, r));
        assert!(!f.matches(&labels, "Findings: x. Impression: Left pleural effusion."));
        assert!(!f.matches(&labels, "Findings: x. Impression: Bilateral pleural effusion."));
    }

    #[test]
    fn regions_are_the_largest_magnitudes() {
        let s = [0.0f32, -9.0, 3.0, 9.0, 1.0, -2.0, 0.5, 4.0, 0.0, 0.0];
        assert_eq!(signature_region(&s, 0.2), vec![1, 3]); // |-9| and |9|: a tie, both in
        assert_eq!(signature_region(&s, 0.4), vec![1, 2, 3, 7]);
        assert_eq!(signature_region(&s, 0.0), vec![1]); // at least one voxel
        assert_eq!(signature_region(&s, 5.0).len(), 10);
        assert!(signature_region(&[], 0.5).is_empty());
        assert_eq!(region_mean(&s, &[1, 3]), 0.0);
    }

    /// Pairs built to move along one signature are attributed to it and to no other.
    #[test]
    fn effects_put_a_planted_change_on_the_diagonal() {
        let len = 64;
        let a: Vec<f32> = (0..len).map(|i| if i < 16 { 100.0 } else { 0.0 }).collect();
        let b: Vec<f32> = (0..len).map(|i| if (32..48).contains(&i) { -50.0 } else { 0.0 }).collect();
        let sig = Signatures {
            findings: vec![FindingDef::new("a", 0, None), FindingDef::new("b", 1, None)],
            dims: [4, 4, 4],
            maps: vec![a.clone(), b.clone()],
            counts: vec![(3, 5), (4, 4)],
            mean: (0..len).map(|i| i as f32).collect(),
        };
        let base: Vec<f32> = (0..len).map(|i| i as f32 + ((i * 7919) % 13) as f32).collect();
        let mk = |s: &Vec<f32>, k: f32| -> (Vec<f32>, Vec<f32>) {
            let noise: Vec<f32> = (0..len).map(|i| ((i as f32 + k) * 12.9898).sin() * 5.0).collect();
            let w: Vec<f32> = base.iter().zip(s).zip(&noise).map(|((x, d), n)| x + 0.7 * d + n).collect();
            (w, base.clone())
        };
        let pairs = vec![vec![mk(&a, 1.0), mk(&a, 2.0)], vec![mk(&b, 3.0), mk(&b, 4.0), mk(&b, 5.0)]];
        let rep = effects(&sig, &pairs).unwrap();
        assert_eq!(rep.diagonal_hits(), 2);
        assert!(rep.rows[0].own > 0.8 && rep.rows[1].own > 0.8, "{:?}", rep.rows);
        assert_eq!(rep.rows[1].pairs_positive, 3);
        assert!(rep.generated_vs_real_mean > 0.5, "{}", rep.generated_vs_real_mean);
        let md = rep.to_markdown();
        assert!(md.contains("**") && md.contains("| a | 2 |") && md.contains("Δ in region(b)"), "{md}");
        // Regions: 2 % of 64 voxels -> 1 voxel, the largest |S| (index 0 for a, 32 for b). The
        // planted change is 0.7 of the signature plus noise of at most 5 HU.
        assert_eq!(rep.region_voxels, 1);
        assert_eq!(rep.region_signature_hu, vec![100.0, -50.0]);
        assert!((rep.rows[0].region_change_hu[0] - 70.0).abs() < 5.0, "{:?}", rep.rows[0]);
        assert!(rep.rows[0].region_change_hu[1].abs() < 5.0);
        assert!((rep.rows[1].own_region_ratio.unwrap() - 0.7).abs() < 0.1, "{:?}", rep.rows[1]);
        // A signature too weak in its region gets no ratio.
        let mut weak = sig.clone();
        weak.maps[1] = b.iter().map(|v| v / 10.0).collect();
        let rep = effects(&weak, &pairs).unwrap();
        assert!(rep.rows[0].own_region_ratio.is_some() && rep.rows[1].own_region_ratio.is_none());
        assert!(rep.to_markdown().contains("no fixed place"));
        // Unchanged prompts: zero change, no correlation.
        let same = vec![vec![(base.clone(), base.clone())], vec![(base.clone(), base.clone())]];
        let rep = effects(&sig, &same).unwrap();
        assert_eq!(rep.rows[0].mean_abs_change_hu, 0.0);
        assert_eq!(rep.diagonal_hits(), 0);
        assert!(effects(&sig, &pairs[..1]).is_err());
    }
}
