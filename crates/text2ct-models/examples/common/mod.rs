//! Pieces the speed examples share (`#[path = "common/mod.rs"] mod common;`).

use std::time::Instant;

use burn::tensor::Tensor;

/// Shapes from the command line, one `A,B,...` argument each (`usage` names the fields), or
/// `default` when none is given.
pub fn shapes_from_args<const N: usize>(usage: &str, default: Vec<[usize; N]>) -> Vec<[usize; N]> {
    let shapes: Vec<[usize; N]> = std::env::args()
        .skip(1)
        .map(|a| {
            let v: Vec<usize> = a.split(',').map(|s| s.trim().parse().expect(usage)).collect();
            v.try_into().unwrap_or_else(|_| panic!("{a:?}: expected {usage}"))
        })
        .collect();
    if shapes.is_empty() {
        default
    } else {
        shapes
    }
}

/// Best of three wall-clock runs of `f`, in seconds (the result is read back, so lazy work counts).
pub fn best_of_3(f: &dyn Fn() -> Tensor<5>) -> f64 {
    let mut best = f64::INFINITY;
    for _ in 0..3 {
        let t = Instant::now();
        let _ = f().into_data();
        best = best.min(t.elapsed().as_secs_f64());
    }
    best
}
