//! Label captions: short reports written from a volume's 18 CT-RATE labels, an optional text
//! augmentation for CLIP training (`[data] label_caption_prob` in `train clip`).
//!
//! Why: a CT-RATE-style report states every finding, most as negations, in ~300 tokens of free
//! wording, so at initialisation two reports' pooled embeddings are nearly identical (cosine ≈ 0.99)
//! and the contrastive signal is buried under wording and anatomy noise (docs/evaluation/clip.md).
//! A short caption built from the labels differs between volumes exactly where their findings
//! differ. Mixing such captions into the text side is what CXR-CLIP (You et al., MICCAI 2023) does
//! for image–label data; here both the captions and the reports describe the same volume.
//!
//! The templates deliberately avoid the zero-shot evaluation's wording (`"{X} is present."`,
//! `"This scan shows signs of {X}"`, docs/evaluation/clip.md), so zero-shot numbers still test
//! generalisation from one phrasing to another.

use rand::seq::SliceRandom;
use rand::Rng;
use text2ct_data::labels::LABELS;

/// Sentences for a present finding (`{X}` = the label name, `{x}` = lower-cased).
const POSITIVE: [&str; 4] = ["{X}.", "There is {x}.", "{X} is seen.", "{X} is noted."];
/// Sentences for an absent finding.
const NEGATIVE: [&str; 3] = ["No {x}.", "There is no {x}.", "{X} is not seen."];
/// Probability that an absent finding is mentioned at all (reports mention some negatives).
const NEGATIVE_MENTION: f64 = 0.3;

fn fill(template: &str, label: &str) -> String {
    template.replace("{X}", label).replace("{x}", &label.to_lowercase())
}

/// A caption `"Findings: … Impression: …"` for a binary label vector in the order of
/// [`LABELS`]: every present finding in a random template and order, about a third of the absent
/// ones as negations, and an impression listing the present findings (or "No significant
/// abnormality."). Extra entries beyond the 18 labels are ignored; non-zero means present.
pub fn label_caption<R: Rng + ?Sized>(labels: &[u8], rng: &mut R) -> String {
    let mut sentences = Vec::new();
    let mut present = Vec::new();
    for (i, name) in LABELS.iter().enumerate() {
        if labels.get(i).copied().unwrap_or(0) != 0 {
            sentences.push(fill(POSITIVE[rng.random_range(0..POSITIVE.len())], name));
            present.push(*name);
        } else if rng.random_bool(NEGATIVE_MENTION) {
            sentences.push(fill(NEGATIVE[rng.random_range(0..NEGATIVE.len())], name));
        }
    }
    sentences.shuffle(rng);
    present.shuffle(rng);
    let impression =
        if present.is_empty() { "No significant abnormality.".to_string() } else { format!("{}.", present.join(". ")) };
    format!("Findings: {} Impression: {}", sentences.join(" "), impression)
}

/// The report of the mirror-image scan: every whole word `left` / `right` swapped, case kept
/// (`Left` ↔ `Right`, `LEFT` ↔ `RIGHT`); `None` when the report names no side. Used as a hard
/// negative for CLIP training (`[loss] mirror_negatives` in `train clip`): a volume must match its
/// own report better than the same report with the sides swapped, which only an encoder that
/// reads laterality can do. (Words such as "leftward" or "bright" are left alone.)
pub fn mirror_sides(report: &str) -> Option<String> {
    static SIDE: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(r"\b(left|right|Left|Right|LEFT|RIGHT)\b").expect("valid pattern")
    });
    if !SIDE.is_match(report) {
        return None;
    }
    let swapped = SIDE.replace_all(report, |c: &regex::Captures| match &c[1] {
        "left" => "right",
        "right" => "left",
        "Left" => "Right",
        "Right" => "Left",
        "LEFT" => "RIGHT",
        _ => "LEFT",
    });
    Some(swapped.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn caption_names_every_present_finding_and_only_negates_absent_ones() {
        let mut labels = vec![0u8; 18];
        labels[2] = 1; // Cardiomegaly
        labels[12] = 1; // Pleural effusion
        for seed in 0..20 {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let c = label_caption(&labels, &mut rng);
            let (findings, impression) = c.split_once(" Impression: ").expect("two sections");
            assert!(findings.starts_with("Findings: "));
            for name in ["cardiomegaly", "pleural effusion"] {
                assert!(findings.to_lowercase().contains(name), "{c}");
                assert!(impression.to_lowercase().contains(name), "{c}");
                assert!(!findings.to_lowercase().contains(&format!("no {name}")), "{c}");
                assert!(!findings.to_lowercase().contains(&format!("{name} is not seen")), "{c}");
            }
            assert!(!impression.to_lowercase().contains("emphysema"), "{c}");
            assert!(!c.contains("present") && !c.contains("signs of"), "eval wording leaked: {c}");
        }
    }

    #[test]
    fn caption_without_findings_says_so_and_is_seeded() {
        let labels = vec![0u8; 18];
        let a = label_caption(&labels, &mut ChaCha8Rng::seed_from_u64(7));
        let b = label_caption(&labels, &mut ChaCha8Rng::seed_from_u64(7));
        assert_eq!(a, b);
        assert!(a.ends_with("Impression: No significant abnormality."), "{a}");
        let many: std::collections::HashSet<String> =
            (0..10).map(|s| label_caption(&labels, &mut ChaCha8Rng::seed_from_u64(s))).collect();
        assert!(many.len() > 5, "captions should vary with the seed");
    }

    #[test]
    fn mirror_swaps_whole_side_words_only() {
        assert_eq!(
            mirror_sides("Right pleural effusion. Nodule in the left upper lobe; LEFT-sided.").as_deref(),
            Some("Left pleural effusion. Nodule in the right upper lobe; RIGHT-sided.")
        );
        assert_eq!(mirror_sides("Bright leftward copyright rightly."), None);
        assert_eq!(mirror_sides("No pleural effusion."), None);
        assert_eq!(mirror_sides("right"), Some("left".to_string()));
        let r = "Effusion on the right, nodule on the left.";
        assert_eq!(mirror_sides(&mirror_sides(r).unwrap()).as_deref(), Some(r));
    }
}
