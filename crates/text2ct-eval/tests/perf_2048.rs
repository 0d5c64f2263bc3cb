//! Timing check for 2048-d features (ignored by default; run with `--ignored --nocapture`).

use std::time::Instant;
use text2ct_eval::*;

fn lcg_features(n: usize, d: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    (0..n * d)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        })
        .collect()
}

#[test]
#[ignore]
fn fid_2048_timing() {
    let d = 2048;
    for n in [500usize, 2500] {
        let a = lcg_features(n, d, 1);
        let b = lcg_features(n, d, 2);
        let t0 = Instant::now();
        let s1 = FeatureStats::from_matrix(&a, n, d).unwrap();
        let s2 = FeatureStats::from_matrix(&b, n, d).unwrap();
        let t1 = Instant::now();
        let fid = s1.frechet_distance(&s2).unwrap();
        let t2 = Instant::now();
        println!("n={n} d={d}: stats {:?}, frechet {:?}, fid {fid}", t1 - t0, t2 - t1);
        assert!(fid.is_finite() && fid > 0.0);
    }
}
