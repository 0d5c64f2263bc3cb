//! Classifier-free guidance.

use burn::prelude::Tensor;

use crate::error::{check_dims, check_finite, check_len, DiffusionError, Result};

/// `v = v_u + w·(v_c - v_u)` element-wise (float32, same operation order as Text2CT's inference script).
/// `w = 1` returns `v_c`, `w = 0` returns `v_u`; Text2CT uses `w = 5`.
pub fn cfg_combine(v_uncond: &[f32], v_cond: &[f32], guidance_scale: f32) -> Result<Vec<f32>> {
    check_len("cfg conditional output", v_uncond.len(), v_cond.len())?;
    if !guidance_scale.is_finite() {
        return Err(DiffusionError::NonFinite { what: "guidance scale" });
    }
    check_finite("cfg unconditional output", v_uncond)?;
    check_finite("cfg conditional output", v_cond)?;
    Ok(v_uncond.iter().zip(v_cond).map(|(&u, &c)| u + guidance_scale * (c - u)).collect())
}

/// [`cfg_combine`] on tensors, on their device: the same float32 operations in the same order
/// (`v_u + w·(v_c − v_u)`), so the two agree bit for bit. The values are not checked for NaN here (that
/// would read them back to the host every step); the caller checks its final result.
pub fn cfg_combine_tensor<const D: usize>(
    v_uncond: Tensor<D>,
    v_cond: Tensor<D>,
    guidance_scale: f32,
) -> Result<Tensor<D>> {
    check_dims("cfg conditional output", &v_uncond.dims(), &v_cond.dims())?;
    if !guidance_scale.is_finite() {
        return Err(DiffusionError::NonFinite { what: "guidance scale" });
    }
    Ok(v_uncond.clone() + (v_cond - v_uncond).mul_scalar(guidance_scale))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guidance_limits_and_errors() {
        let u = [1.0f32, -2.0, 0.5];
        let c = [3.0f32, 2.0, 0.5];
        assert_eq!(cfg_combine(&u, &c, 0.0).unwrap(), u.to_vec());
        assert_eq!(cfg_combine(&u, &c, 1.0).unwrap(), c.to_vec());
        assert_eq!(cfg_combine(&u, &c, 5.0).unwrap(), vec![11.0, 18.0, 0.5]);
        assert!(matches!(cfg_combine(&u, &c[..2], 5.0), Err(DiffusionError::LengthMismatch { .. })));
        assert!(matches!(cfg_combine(&u, &[f32::NAN, 0.0, 0.0], 5.0), Err(DiffusionError::NonFinite { .. })));
    }
}
