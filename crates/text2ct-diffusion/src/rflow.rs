//! Rectified flow exactly as Text2CT releases it: MONAI 1.5 `RFlowScheduler` with `num_train_timesteps=1000`,
//! `use_discrete_timesteps=false`, `use_timestep_transform=true`, `base_img_size_numel=32^3`, `spatial_dim=3`
//! (the `scale=1.4` of the config is the unused logit-normal scale; `transform_scale` stays 1.0).
//!
//! Conventions: `t ∈ [0, T]` with `T = num_train_timesteps`; `t = T` is pure noise, `t = 0` is data.
//! `x_t = (1 - t/T)·x0 + (t/T)·ε`, the network predicts `v = x0 - ε`, sampling integrates `x ← x + v·dt` from
//! `t = T` down to 0 with `dt = (t - t_next)/T > 0`.

use burn::prelude::Tensor;
use serde::Serialize;

use crate::error::{check_dims, check_finite, check_len, DiffusionError, Result};
use crate::f16::round_to_f16;

/// Which flavour of the inference schedule to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RFlowMode {
    /// Bit-faithful to the released code: timesteps cast to float16, `dt = f16(t - trunc(t_next)) / T`
    /// (`next_t` truncated to an integer, so Σdt ≈ 1.00874 for the 30-step Text2CT schedule).
    Released,
    /// Clean variant: float64 timesteps, no float16 rounding, `dt = (t - t_next) / T` (Σdt = 1 exactly up to
    /// rounding).
    Exact,
}

impl RFlowMode {
    /// `exact = true` → [`RFlowMode::Exact`], else [`RFlowMode::Released`].
    pub fn from_exact(exact: bool) -> Self {
        if exact {
            RFlowMode::Exact
        } else {
            RFlowMode::Released
        }
    }
}

/// Configuration of the rectified-flow scheduler (defaults = Text2CT's `config_rflow.json`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct RFlowScheduler {
    /// Number of training timesteps `T` (1000).
    pub num_train_timesteps: usize,
    /// Reference volume `H·W·D` for the resolution shift (32³).
    pub base_img_size_numel: u64,
    /// Spatial dimensionality used in the shift exponent (3).
    pub spatial_dim: u32,
    /// Apply the resolution-dependent timestep shift (true).
    pub use_timestep_transform: bool,
}

impl Default for RFlowScheduler {
    fn default() -> Self {
        Self::text2ct()
    }
}

/// An inference schedule: the timesteps fed to the network, the following timesteps, and the step sizes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RFlowSchedule {
    /// Mode the schedule was built with.
    pub mode: RFlowMode,
    /// Timesteps `t_i` passed to the network, descending, in `[0, T]`.
    pub timesteps: Vec<f64>,
    /// `t_{i+1}` (last entry 0) as stored by the released code (not yet truncated).
    pub next_timesteps: Vec<f64>,
    /// Step sizes `dt_i` (fractions of the unit interval) used in `x ← x + v·dt`.
    pub dts: Vec<f64>,
}

impl RFlowSchedule {
    /// Number of steps.
    pub fn len(&self) -> usize {
        self.timesteps.len()
    }

    /// True when there are no steps (never the case for a schedule built by [`RFlowScheduler::set_timesteps`]).
    pub fn is_empty(&self) -> bool {
        self.timesteps.is_empty()
    }

    /// Σ dt (1.00874 for the released 30-step Text2CT schedule).
    pub fn total_dt(&self) -> f64 {
        self.dts.iter().sum()
    }
}

impl RFlowScheduler {
    /// The scheduler exactly as configured by Text2CT.
    pub fn text2ct() -> Self {
        Self {
            num_train_timesteps: 1000,
            base_img_size_numel: 32 * 32 * 32,
            spatial_dim: 3,
            use_timestep_transform: true,
        }
    }

    fn validate(&self) -> Result<()> {
        if self.num_train_timesteps == 0 {
            return Err(DiffusionError::InvalidConfig("num_train_timesteps must be > 0".into()));
        }
        if self.base_img_size_numel == 0 || self.spatial_dim == 0 {
            return Err(DiffusionError::InvalidConfig("base_img_size_numel and spatial_dim must be > 0".into()));
        }
        Ok(())
    }

    /// Resolution ratio `r = (numel / base)^(1/spatial_dim)` (2.519842 for 128·128·32).
    pub fn shift_ratio(&self, input_img_size_numel: u64) -> f64 {
        (input_img_size_numel as f64 / self.base_img_size_numel as f64).powf(1.0 / self.spatial_dim as f64)
    }

    /// MONAI `timestep_transform` in float64 (as `set_timesteps` evaluates it on Python floats):
    /// `s = t/T`, `t' = r·s / (1 + (r-1)·s) · T`.
    pub fn timestep_transform(&self, t: f64, input_img_size_numel: u64) -> f64 {
        let tf = self.num_train_timesteps as f64;
        let s = t / tf;
        let r = self.shift_ratio(input_img_size_numel);
        r * s / (1.0 + (r - 1.0) * s) * tf
    }

    /// Builds the inference schedule for `steps` steps on a latent with `input_img_size_numel = X·Y·Z` voxels
    /// (channels excluded; 128·128·32 = 524288 for Text2CT).
    ///
    /// `t_i = (1 - i/n)·T`, shifted, then (in [`RFlowMode::Released`]) cast to float16; `next = t[1..] ++ [0]`;
    /// released `dt_i = f16(t_i - trunc(next_i)) / T` (MONAI subtracts an int from a float16 tensor), exact
    /// `dt_i = (t_i - next_i) / T`.
    pub fn set_timesteps(&self, steps: usize, input_img_size_numel: u64, mode: RFlowMode) -> Result<RFlowSchedule> {
        self.validate()?;
        if steps == 0 {
            return Err(DiffusionError::ZeroSteps);
        }
        if steps > self.num_train_timesteps {
            return Err(DiffusionError::TooManySteps { steps, train: self.num_train_timesteps });
        }
        if input_img_size_numel == 0 {
            return Err(DiffusionError::InvalidConfig("input_img_size_numel must be > 0".into()));
        }
        let tf = self.num_train_timesteps as f64;
        let timesteps: Vec<f64> = (0..steps)
            .map(|i| {
                let t = (1.0 - i as f64 / steps as f64) * tf;
                let t = if self.use_timestep_transform { self.timestep_transform(t, input_img_size_numel) } else { t };
                match mode {
                    RFlowMode::Released => round_to_f16(t),
                    RFlowMode::Exact => t,
                }
            })
            .collect();
        let mut next_timesteps: Vec<f64> = timesteps[1..].to_vec();
        next_timesteps.push(0.0);
        let dts = timesteps
            .iter()
            .zip(&next_timesteps)
            .map(|(&t, &n)| match mode {
                RFlowMode::Released => round_to_f16(t - n.trunc()) / tf,
                RFlowMode::Exact => (t - n) / tf,
            })
            .collect();
        Ok(RFlowSchedule { mode, timesteps, next_timesteps, dts })
    }

    /// Training-time timestep: `t = u·T` with `u ~ U[0,1)`, then the same shift (evaluated in float32, as
    /// `sample_timesteps` does on float32 tensors). Returns a float timestep in `[0, T)`.
    pub fn sample_timestep(&self, u: f32, input_img_size_numel: u64) -> Result<f32> {
        self.validate()?;
        if !u.is_finite() || !(0.0..1.0).contains(&u) {
            return Err(DiffusionError::UniformOutOfRange { u: u as f64 });
        }
        let tf = self.num_train_timesteps as f32;
        let t = u * tf;
        if !self.use_timestep_transform {
            return Ok(t);
        }
        let s = t / tf;
        let ratio = (input_img_size_numel as f32 / self.base_img_size_numel as f32).powf(1.0 / self.spatial_dim as f32);
        Ok(ratio * s / (1.0 + (ratio - 1.0) * s) * tf)
    }

    /// `x_t = a·x0 + (1 - a)·ε` with `a = 1 - t/T` (float32, same operation order as MONAI's `add_noise`).
    pub fn add_noise(&self, x0: &[f32], eps: &[f32], t: f32) -> Result<Vec<f32>> {
        self.validate()?;
        check_len("add_noise noise", x0.len(), eps.len())?;
        self.check_t(t as f64)?;
        check_finite("add_noise x0", x0)?;
        check_finite("add_noise noise", eps)?;
        let a = 1.0 - t / self.num_train_timesteps as f32;
        Ok(x0.iter().zip(eps).map(|(&x, &e)| a * x + (1.0 - a) * e).collect())
    }

    fn check_t(&self, t: f64) -> Result<()> {
        let max = self.num_train_timesteps as f64;
        if !t.is_finite() || !(0.0..=max).contains(&t) {
            return Err(DiffusionError::TimestepOutOfRange { t, max });
        }
        Ok(())
    }

    /// One Euler step `x ← x + v·dt` in place (`dt` as in [`RFlowSchedule::dts`], applied in float32 like torch).
    pub fn step(&self, x: &mut [f32], v: &[f32], dt: f64) -> Result<()> {
        check_len("step velocity", x.len(), v.len())?;
        if !dt.is_finite() {
            return Err(DiffusionError::NonFinite { what: "step dt" });
        }
        check_finite("step velocity", v)?;
        let dt = dt as f32;
        for (xi, &vi) in x.iter_mut().zip(v) {
            *xi += vi * dt;
        }
        Ok(())
    }

    /// [`Self::step`] on tensors, on their device: `x + v·dt` with `dt` cast to float32 as the slice form does (the
    /// same numbers bit for bit). Returns the new sample.
    pub fn step_tensor<const D: usize>(&self, x: Tensor<D>, v: Tensor<D>, dt: f64) -> Result<Tensor<D>> {
        check_dims("step velocity", &x.dims(), &v.dims())?;
        if !dt.is_finite() {
            return Err(DiffusionError::NonFinite { what: "step dt" });
        }
        Ok(x + v.mul_scalar(dt as f32))
    }

    /// Runs the whole sampler: for each `(t, dt)` of `schedule`, `v = model(x, t)` then `x ← x + v·dt`.
    /// `model` receives the current sample and the float timestep and returns the velocity.
    pub fn sample<F>(&self, schedule: &RFlowSchedule, mut x: Vec<f32>, mut model: F) -> Result<Vec<f32>>
    where
        F: FnMut(&[f32], f32) -> Vec<f32>,
    {
        check_finite("initial noise", &x)?;
        for (&t, &dt) in schedule.timesteps.iter().zip(&schedule.dts) {
            let v = model(&x, t as f32);
            self.step(&mut x, &v, dt)?;
        }
        Ok(x)
    }
}

/// Velocity target of rectified flow: `v = x0 - ε`.
pub fn velocity_target(x0: &[f32], eps: &[f32]) -> Result<Vec<f32>> {
    check_len("velocity_target noise", x0.len(), eps.len())?;
    Ok(x0.iter().zip(eps).map(|(&x, &e)| x - e).collect())
}
