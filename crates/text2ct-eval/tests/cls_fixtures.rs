//! Classification metrics vs scikit-learn (`fixtures/gen_cls.py`).

use serde_json::Value;
use text2ct_eval::classification::*;

#[test]
fn classification_matches_sklearn() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/cls.json");
    let fx: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let y: Vec<Vec<bool>> = fx["y"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_array().unwrap().iter().map(|v| v.as_i64().unwrap() == 1).collect())
        .collect();
    let s: Vec<Vec<f64>> = fx["scores"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect())
        .collect();
    let close = |a: f64, b: &Value| (a - b.as_f64().unwrap()).abs() < 1e-12;
    let auc = multilabel(&y, &s, roc_auc).unwrap();
    let ap = multilabel(&y, &s, average_precision).unwrap();
    let pr = multilabel(&y, &s, |a, b| precision_at_threshold(a, b, 0.5)).unwrap();
    for j in 0..auc.per_class.len() {
        assert!(close(auc.per_class[j], &fx["auc"][j]), "auc {j}");
        assert!(close(ap.per_class[j], &fx["ap"][j]), "ap {j}");
        assert!(close(pr.per_class[j], &fx["precision05"][j]), "precision {j}");
    }
    assert!(close(auc.macro_avg, &fx["auc_macro"]));
    assert!(close(auc.weighted_avg, &fx["auc_weighted"]));
    assert!(close(ap.macro_avg, &fx["ap_macro"]));
    assert!(close(ap.weighted_avg, &fx["ap_weighted"]));
    assert!(roc_auc(&[true, true], &[0.1, 0.2]).is_err());
    assert!(average_precision(&[false], &[0.1]).is_err());
    assert!(roc_auc(&[true, false], &[0.1]).is_err());
}
