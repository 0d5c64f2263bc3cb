//! Retrieval metrics on small hand-computed cases.

use text2ct_eval::retrieval::*;

#[test]
fn recall_at_k_hand_computed() {
    // 3 reports × 3 volumes; correct volume ranks: 1st, 2nd, 3rd
    let sim = [0.9, 0.1, 0.0, 0.8, 0.5, 0.1, 0.9, 0.8, 0.2];
    assert!((recall_at_k(&sim, 3, 1).unwrap() - 1.0 / 3.0).abs() < 1e-15);
    assert!((recall_at_k(&sim, 3, 2).unwrap() - 2.0 / 3.0).abs() < 1e-15);
    assert_eq!(recall_at_k(&sim, 3, 3).unwrap(), 1.0);
    assert!(recall_at_k(&sim, 3, 0).is_err());
    assert!(recall_at_k(&sim[..8], 3, 1).is_err());
}

#[test]
fn map_at_k_hand_computed() {
    // labels: 0:{a}, 1:{a}, 2:{b}, 3:{a,b}
    let l = vec![vec![true, false], vec![true, false], vec![false, true], vec![true, true]];
    // query 0 ranking (excluding itself): 2 (irrelevant), 1 (relevant), 3 (relevant)
    let mut sim = vec![0.0; 16];
    sim[2] = 0.9;
    sim[1] = 0.5;
    sim[3] = 0.1;
    // query 1: 0, 3, 2 -> rel rel irr; query 2: 3, 0, 1 -> rel irr irr; query 3: 0, 1, 2 -> all relevant
    sim[4] = 0.9;
    sim[4 + 3] = 0.5;
    sim[4 + 2] = 0.1;
    sim[8 + 3] = 0.9;
    sim[8] = 0.5;
    sim[8 + 1] = 0.1;
    sim[12] = 0.9;
    sim[12 + 1] = 0.5;
    sim[12 + 2] = 0.1;
    // K=2: q0: rel at rank 2 -> (1/2)/min(2,2) = 0.25; q1: (1+1)/2 = 1; q2: 1/min(2,1) = 1; q3: 1
    let m2 = map_at_k(&sim, &l, 2).unwrap();
    assert!((m2 - (0.25 + 1.0 + 1.0 + 1.0) / 4.0).abs() < 1e-15, "{m2}");
    // K=3: q0: (1/2 + 2/3)/2
    let m3 = map_at_k(&sim, &l, 3).unwrap();
    assert!((m3 - ((0.5 + 2.0 / 3.0) / 2.0 + 1.0 + 1.0 + 1.0) / 4.0).abs() < 1e-15, "{m3}");
}

#[test]
fn ctclip_quirk_accumulates_across_k() {
    // two queries, three candidates; query itself is candidate 0 / 1 (not excluded)
    let q = vec![vec![true, false], vec![true, true]];
    let cands = vec![vec![true, false], vec![true, true], vec![false, true]];
    let sim = [0.9, 0.5, 0.1, 0.2, 0.9, 0.5];
    let r = ctclip_map_at_ks(&sim, &q, &[0, 1, 2], &cands, &[1, 2]).unwrap();
    // K=1: q0 top {c0}: J=1; q1 top {c1}: J=1 -> 1
    assert_eq!(r[0], 1.0);
    // K=2: q0 {c0: 1, c1: 1/2} -> 0.75; q1 {c1: 1, c2: 1/2} -> 0.75; accumulator = [1, 1, .75, .75] -> 0.875
    assert!((r[1] - 0.875).abs() < 1e-15);
}
