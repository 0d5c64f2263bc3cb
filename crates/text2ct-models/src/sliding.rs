//! Sliding-window inference with MONAI's `sliding_window_inference` semantics (`sw_batch_size=1`,
//! unbuffered), for predictors whose output is an integer multiple of the window (the VAE decoder:
//! x4). Outputs are accumulated in host memory, so device memory is bounded by one window.
//!
//! Steps, as in MONAI (`monai/inferers/utils.py`, `monai/data/utils.py`):
//! 1. A window component of 0 means the whole extent. Where the window exceeds the input, the
//!    input is zero-padded (`diff // 2` before, the rest after) and the output cropped at the end.
//! 2. Scan interval per axis: the window if it equals the (padded) extent, else
//!    `max(int(window * (1 - overlap)), 1)`; window starts `i * interval`, the last one shifted
//!    back to end at the border (`dense_patch_slices`), enumerated with the first axis slowest.
//! 3. Importance map (gaussian): per axis `exp(-x^2 / (2 sigma^2))` over
//!    `x = -(n-1)/2 .. (n-1)/2`, `sigma = sigma_scale * n`, outer product in f32, clamped below at
//!    `max(min(map), 1e-3)`; resized to the output window by `nearest-exact` (repetition).
//! 4. Output = sum(pred * w) / sum(w) over windows, placed at `int(start * scale)`.

use burn::tensor::{Device, Tensor, TensorData};

use crate::error::{ModelError, Result};
use crate::vae::SlidingWindow;

/// Start offsets per axis (MONAI `dense_patch_slices` for one axis).
pub fn window_starts(image: usize, roi: usize, interval: usize) -> Vec<usize> {
    let num = image.div_ceil(interval.max(1));
    let scan_dim = (0..num).find(|&d| d * interval + roi >= image);
    let count = scan_dim.map(|d| d + 1).unwrap_or(1);
    (0..count)
        .map(|i| {
            let s = i * interval;
            s - (s + roi).saturating_sub(image)
        })
        .collect()
}

/// MONAI `compute_importance_map` (f32), flattened C-order over the window.
pub fn importance_map(roi: [usize; 3], gaussian: bool, sigma_scale: f64) -> Vec<f32> {
    let n: usize = roi.iter().product();
    if !gaussian {
        return vec![1.0; n];
    }
    let axes: Vec<Vec<f32>> = roi
        .iter()
        .map(|&len| {
            let sigma = sigma_scale * len as f64;
            let denom = (-2.0 * sigma * sigma) as f32;
            let start = -((len as f32 - 1.0) / 2.0);
            (0..len)
                .map(|k| {
                    let x = start + k as f32;
                    (x * x / denom).exp()
                })
                .collect()
        })
        .collect();
    let mut map = Vec::with_capacity(n);
    for a in &axes[0] {
        for b in &axes[1] {
            let ab = a * b;
            for c in &axes[2] {
                map.push(ab * c);
            }
        }
    }
    let min = map.iter().copied().fold(f32::INFINITY, f32::min);
    let floor = min.max(1e-3);
    for v in &mut map {
        *v = v.max(floor);
    }
    map
}

/// Run `predict` over windows of `input` (`[B, C, X, Y, Z]`) and blend. `predict` gets one
/// window `[1, C, wx, wy, wz]` and must return `[1, C', s wx, s wy, s wz]` for a fixed integer
/// scale `s` per axis.
pub fn sliding_window_5d(
    input: Tensor<5>,
    opts: &SlidingWindow,
    device: &Device,
    progress: &mut dyn FnMut(usize, usize),
    predict: &mut dyn FnMut(Tensor<5>) -> Result<Tensor<5>>,
) -> Result<Tensor<5>> {
    let [b, c, d0, d1, d2] = input.dims();
    let orig = [d0, d1, d2];
    for &o in &opts.overlap {
        if !(0.0..1.0).contains(&o) {
            return Err(ModelError::Invalid(format!("overlap must be in [0, 1), got {o}")));
        }
    }
    if opts.sigma_scale.is_nan() || opts.sigma_scale <= 0.0 {
        return Err(ModelError::Invalid(format!("sigma_scale must be positive, got {}", opts.sigma_scale)));
    }
    let roi: [usize; 3] = std::array::from_fn(|i| if opts.window[i] == 0 { orig[i] } else { opts.window[i] });
    let image: [usize; 3] = std::array::from_fn(|i| orig[i].max(roi[i]));
    let pad: [(usize, usize); 3] = std::array::from_fn(|i| {
        let diff = image[i] - orig[i];
        (diff / 2, diff - diff / 2)
    });
    let input = if pad.iter().any(|&(a, b)| a + b > 0) { input.pad(pad, 0.0f32) } else { input };
    let interval: [usize; 3] = std::array::from_fn(|i| {
        if roi[i] == image[i] {
            roi[i]
        } else {
            ((roi[i] as f64 * (1.0 - opts.overlap[i])) as usize).max(1)
        }
    });
    let starts: [Vec<usize>; 3] = std::array::from_fn(|i| window_starts(image[i], roi[i], interval[i]));
    let mut slices = Vec::new();
    for &s0 in &starts[0] {
        for &s1 in &starts[1] {
            for &s2 in &starts[2] {
                slices.push([s0, s1, s2]);
            }
        }
    }
    let imp = importance_map(roi, opts.gaussian, opts.sigma_scale);
    let total = slices.len() * b;

    // Filled after the first prediction, when the output scale is known.
    // (output channels, scale, output extent, output sums, weight sums, output-window weights)
    type Accum = (usize, [usize; 3], [usize; 3], Vec<f32>, Vec<f32>, Vec<f32>);
    let mut state: Option<Accum> = None;
    let mut done = 0;
    for bi in 0..b {
        for s in &slices {
            let win =
                input.clone().slice([bi..bi + 1, 0..c, s[0]..s[0] + roi[0], s[1]..s[1] + roi[1], s[2]..s[2] + roi[2]]);
            let pred = predict(win)?;
            let [pb, pc, p0, p1, p2] = pred.dims();
            let pdims = [p0, p1, p2];
            if pb != 1 || (0..3).any(|i| pdims[i] == 0 || pdims[i] % roi[i] != 0) {
                return Err(ModelError::Invalid(format!(
                    "sliding window: predictor returned {:?} for a window {roi:?}; need an integer multiple",
                    pred.dims()
                )));
            }
            let scale: [usize; 3] = std::array::from_fn(|i| pdims[i] / roi[i]);
            if state.is_none() {
                let out_dims: [usize; 3] = std::array::from_fn(|i| image[i] * scale[i]);
                let vox: usize = out_dims.iter().product();
                // importance map resized by nearest-exact = repetition for integer factors
                let mut w = Vec::with_capacity(pdims.iter().product());
                for i in 0..p0 {
                    for j in 0..p1 {
                        for k in 0..p2 {
                            let (a, bb, cc) = (i / scale[0], j / scale[1], k / scale[2]);
                            w.push(imp[(a * roi[1] + bb) * roi[2] + cc]);
                        }
                    }
                }
                let mut count = vec![0f32; vox];
                for s2 in &slices {
                    add_window(&mut count, out_dims, std::array::from_fn(|i| s2[i] * scale[i]), pdims, &w, None);
                }
                state = Some((pc, scale, out_dims, vec![0f32; b * pc * vox], count, w));
            }
            let (oc, oscale, out_dims, out, _, w) = state.as_mut().expect("set above");
            if pc != *oc || scale != *oscale {
                return Err(ModelError::Invalid("sliding window: predictor output shape changed".into()));
            }
            let pv: Vec<f32> = pred
                .into_data()
                .try_into_vec::<f32>()
                .map_err(|e| ModelError::Invalid(format!("sliding window: reading prediction: {e:?}")))?;
            let vox: usize = out_dims.iter().product();
            let wv: usize = pdims.iter().product();
            for ch in 0..pc {
                let dst = &mut out[(bi * pc + ch) * vox..(bi * pc + ch + 1) * vox];
                let off = std::array::from_fn(|i| s[i] * scale[i]);
                add_window(dst, *out_dims, off, pdims, w, Some(&pv[ch * wv..(ch + 1) * wv]));
            }
            done += 1;
            progress(done, total);
        }
    }
    let (oc, scale, out_dims, mut out, count, _) = state.expect("at least one window");
    let vox: usize = out_dims.iter().product();
    for chunk in out.chunks_mut(vox) {
        for (v, cnt) in chunk.iter_mut().zip(&count) {
            *v /= *cnt;
        }
    }
    let result = Tensor::<5>::from_data(TensorData::new(out, [b, oc, out_dims[0], out_dims[1], out_dims[2]]), device);
    if pad.iter().any(|&(a, b)| a + b > 0) {
        Ok(result.slice([
            0..b,
            0..oc,
            pad[0].0 * scale[0]..(pad[0].0 + orig[0]) * scale[0],
            pad[1].0 * scale[1]..(pad[1].0 + orig[1]) * scale[1],
            pad[2].0 * scale[2]..(pad[2].0 + orig[2]) * scale[2],
        ]))
    } else {
        Ok(result)
    }
}

/// `dst[off + p] += w[p] * values[p]` (or `+= w[p]` without values) over a window `wdims`.
fn add_window(
    dst: &mut [f32],
    dims: [usize; 3],
    off: [usize; 3],
    wdims: [usize; 3],
    w: &[f32],
    values: Option<&[f32]>,
) {
    for i in 0..wdims[0] {
        for j in 0..wdims[1] {
            let src = (i * wdims[1] + j) * wdims[2];
            let d = ((off[0] + i) * dims[1] + off[1] + j) * dims[2] + off[2];
            let row = &mut dst[d..d + wdims[2]];
            match values {
                Some(v) => {
                    for k in 0..wdims[2] {
                        row[k] += v[src + k] * w[src + k];
                    }
                }
                None => {
                    for k in 0..wdims[2] {
                        row[k] += w[src + k];
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_match_monai() {
        // MAISI: latent 128, window 80, overlap 0.4 -> interval 48, starts 0, 48.
        assert_eq!(window_starts(128, 80, 48), vec![0, 48]);
        assert_eq!(window_starts(32, 32, 32), vec![0]);
        assert_eq!(window_starts(10, 6, 3), vec![0, 3, 4]);
    }

    #[test]
    fn importance_clamped() {
        let m = importance_map([4, 4, 4], true, 0.125);
        let max = m.iter().copied().fold(0.0, f32::max);
        let min = m.iter().copied().fold(1.0, f32::min);
        assert!(max < 1.0 && min >= 1e-3);
    }

    #[test]
    fn identity_predictor_reproduces_input() {
        let dev = Device::flex();
        let data: Vec<f32> = (0..2 * 7 * 5 * 3).map(|i| (i as f32 * 0.37).sin()).collect();
        let x = Tensor::<5>::from_data(TensorData::new(data.clone(), [1, 2, 7, 5, 3]), &dev);
        let opts = SlidingWindow::gaussian([4, 3, 4], 0.5);
        let y =
            sliding_window_5d(x, &opts, &dev, &mut |_, _| {}, &mut |w| Ok(crate::interp::repeat_nearest(w, [2, 2, 2])))
                .unwrap();
        assert_eq!(y.dims(), [1, 2, 14, 10, 6]);
        let y = y.into_data().try_into_vec::<f32>().unwrap();
        // voxel (c, i, j, k) of the output equals input voxel (c, i/2, j/2, k/2)
        for ch in 0..2 {
            for i in 0..14 {
                for j in 0..10 {
                    for k in 0..6 {
                        let got = y[((ch * 14 + i) * 10 + j) * 6 + k];
                        let want = data[((ch * 7 + i / 2) * 5 + j / 2) * 3 + k / 2];
                        assert!((got - want).abs() < 1e-5);
                    }
                }
            }
        }
    }
}
