//! Learning-rate schedules as pure functions.

use crate::error::{DiffusionError, Result};

/// torch `PolynomialLR` closed form: `lr_t = lr0 · (1 - min(t, T)/T)^power` (Text2CT: power 2,
/// `T = n_epochs_total · len(dataset) / batch_size`, stepped every iteration).
pub fn polynomial_lr(lr0: f64, step: usize, total_iters: usize, power: f64) -> Result<f64> {
    if total_iters == 0 {
        return Err(DiffusionError::InvalidConfig("polynomial_lr: total_iters must be > 0".into()));
    }
    if !lr0.is_finite() || !power.is_finite() {
        return Err(DiffusionError::NonFinite { what: "polynomial_lr parameters" });
    }
    let frac = 1.0 - step.min(total_iters) as f64 / total_iters as f64;
    Ok(lr0 * frac.powf(power))
}
