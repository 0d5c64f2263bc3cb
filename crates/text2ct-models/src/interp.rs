//! 3D interpolation that burn 0.22 lacks, written with tensor slicing (differentiable, any backend).

use burn::tensor::Tensor;

/// Linear x2 upsampling of one axis of a 5D tensor with PyTorch's `align_corners=False`
/// semantics: output `2i` = 0.75 x[i] + 0.25 x[i-1], output `2i+1` = 0.75 x[i] + 0.25 x[i+1],
/// with the neighbour clamped at the borders (edge replication), which is exactly what
/// `F.interpolate(scale_factor=2, mode="linear"/"trilinear")` computes.
pub fn upsample_linear_x2_axis(x: Tensor<5>, axis: usize) -> Tensor<5> {
    assert!((2..5).contains(&axis), "axis must be spatial (2, 3 or 4)");
    let n = x.dims()[axis];
    if n == 1 {
        return Tensor::cat(vec![x.clone(), x], axis);
    }
    let first = x.clone().narrow(axis, 0, 1);
    let last = x.clone().narrow(axis, n - 1, 1);
    // previous neighbour (x[i-1], clamped) and next neighbour (x[i+1], clamped)
    let prev = Tensor::cat(vec![first, x.clone().narrow(axis, 0, n - 1)], axis);
    let next = Tensor::cat(vec![x.clone().narrow(axis, 1, n - 1), last], axis);
    let base = x.mul_scalar(0.75);
    let even = base.clone().add(prev.mul_scalar(0.25));
    let odd = base.add(next.mul_scalar(0.25));
    let mut dims = even.dims();
    let stacked: Tensor<6> = Tensor::stack(vec![even, odd], axis + 1);
    dims[axis] *= 2;
    stacked.reshape(dims)
}

/// Trilinear x2 upsampling of the three spatial axes (PyTorch `F.interpolate(x, scale_factor=2,
/// mode="trilinear", align_corners=False)`). Trilinear weights are the product of per-axis linear
/// weights, so three separable passes give the same values (to float rounding).
pub fn upsample_trilinear_x2(x: Tensor<5>) -> Tensor<5> {
    let x = upsample_linear_x2_axis(x, 4);
    let x = upsample_linear_x2_axis(x, 3);
    upsample_linear_x2_axis(x, 2)
}

/// Nearest upsampling of the spatial axes by integer factors (each voxel repeated), which is what
/// PyTorch's `nearest-exact` (and `nearest`) give for integer scale factors.
pub fn repeat_nearest(x: Tensor<5>, factors: [usize; 3]) -> Tensor<5> {
    let [b, c, d, h, w] = x.dims();
    let x: Tensor<8> = x.reshape([b, c, d, 1, h, 1, w, 1]);
    let x = x.expand([b, c, d, factors[0], h, factors[1], w, factors[2]]);
    x.reshape([b, c, d * factors[0], h * factors[1], w * factors[2]])
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, TensorData};

    /// Reference 1D linear x2, align_corners=False, as PyTorch computes it.
    fn ref_linear_x2(v: &[f32]) -> Vec<f32> {
        let n = v.len();
        (0..2 * n)
            .map(|o| {
                let src = ((o as f32 + 0.5) * 0.5 - 0.5).max(0.0);
                let i0 = (src.floor() as usize).min(n - 1);
                let i1 = (i0 + 1).min(n - 1);
                let l = src - i0 as f32;
                v[i0] * (1.0 - l) + v[i1] * l
            })
            .collect()
    }

    #[test]
    fn linear_matches_reference_on_each_axis() {
        let dev = Device::flex();
        let vals: Vec<f32> = (0..5).map(|i| (i * i) as f32 * 0.3 - 1.0).collect();
        let want = ref_linear_x2(&vals);
        for axis in 2..5 {
            let mut shape = [1usize, 1, 1, 1, 1];
            shape[axis] = 5;
            let x = Tensor::<5>::from_data(TensorData::new(vals.clone(), shape), &dev);
            let y = upsample_linear_x2_axis(x, axis);
            let got = y.into_data().try_into_vec::<f32>().unwrap();
            for (g, w) in got.iter().zip(&want) {
                assert!((g - w).abs() < 1e-6, "axis {axis}: {got:?} vs {want:?}");
            }
        }
        let x = Tensor::<5>::from_data(TensorData::new(vec![2.0f32], [1, 1, 1, 1, 1]), &dev);
        assert_eq!(upsample_trilinear_x2(x).dims(), [1, 1, 2, 2, 2]);
    }

    #[test]
    fn nearest_repeat() {
        let dev = Device::flex();
        let x = Tensor::<5>::from_data(TensorData::new(vec![1.0f32, 2.0], [1, 1, 1, 1, 2]), &dev);
        let y = repeat_nearest(x, [1, 2, 2]).into_data().try_into_vec::<f32>().unwrap();
        assert_eq!(y, vec![1.0, 1.0, 2.0, 2.0, 1.0, 1.0, 2.0, 2.0]);
    }
}
