//! DDPM (Ho et al. 2020) and DDIM (Song et al. 2021) as in MONAI's `DDPMScheduler` / `DDIMScheduler`.
//!
//! All arithmetic mirrors MONAI's float32 tensors: betas come from a float32 `torch.linspace` (same symmetric
//! evaluation order), `alphas_cumprod` is a cumulative product accumulated in float64 and stored as float32 (torch's
//! CPU `cumprod` accumulates float in double), and the step formulas are evaluated in float32.
//!
//! Timestep spacing for inference: [`TimestepSpacing::Leading`] is MONAI ≤ 1.5 (the version Text2CT/MAISI pin) and
//! diffusers' `"leading"`: `t_i = i·(T / n)` (integer division), reversed, plus `steps_offset`.
//! [`TimestepSpacing::Linspace`] is MONAI 1.6's `round(linspace(T-1-offset, 0, n)) + offset`.
//! In both versions the DDIM step uses `prev_t = t - T / n` (integer division), which matches the next listed
//! timestep only for `Leading`.

use burn::prelude::Tensor;
use serde::Serialize;

use crate::error::{check_dims, check_finite, check_len, DiffusionError, Result};

/// Beta schedule (MONAI `NoiseSchedules` names `linear_beta` and `scaled_linear_beta`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BetaSchedule {
    /// `linspace(beta_start, beta_end, T)`; MONAI default 1e-4..2e-2.
    Linear { beta_start: f64, beta_end: f64 },
    /// `linspace(sqrt(beta_start), sqrt(beta_end), T)^2`; MAISI uses 0.0015..0.0195.
    ScaledLinear { beta_start: f64, beta_end: f64 },
}

impl BetaSchedule {
    /// MONAI's default linear schedule (1e-4 .. 2e-2).
    pub fn linear_default() -> Self {
        BetaSchedule::Linear { beta_start: 1e-4, beta_end: 2e-2 }
    }

    /// MAISI's scaled-linear schedule (0.0015 .. 0.0195).
    pub fn maisi_scaled_linear() -> Self {
        BetaSchedule::ScaledLinear { beta_start: 0.0015, beta_end: 0.0195 }
    }
}

/// float32 `torch.linspace(start, end, n)` (CPU kernel: first half `start + step·i`, second half
/// `end - step·(n-1-i)`, all in float32).
fn linspace_f32(start: f64, end: f64, n: usize) -> Vec<f32> {
    let (s, e) = (start as f32, end as f32);
    if n == 1 {
        return vec![s];
    }
    let step = (e - s) / (n - 1) as f32;
    let half = n / 2;
    (0..n).map(|i| if i < half { s + step * i as f32 } else { e - step * (n - 1 - i) as f32 }).collect()
}

/// Precomputed `betas`, `alphas = 1 - betas`, `alphas_cumprod`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NoiseSchedule {
    /// The schedule definition.
    pub kind: BetaSchedule,
    /// β_t, t = 0..T-1.
    pub betas: Vec<f32>,
    /// α_t = 1 - β_t.
    pub alphas: Vec<f32>,
    /// ᾱ_t = Π_{s≤t} α_s.
    pub alphas_cumprod: Vec<f32>,
}

impl NoiseSchedule {
    /// Builds the schedule for `num_train_timesteps` steps.
    pub fn new(kind: BetaSchedule, num_train_timesteps: usize) -> Result<Self> {
        if num_train_timesteps == 0 {
            return Err(DiffusionError::InvalidConfig("num_train_timesteps must be > 0".into()));
        }
        let (bs, be) = match kind {
            BetaSchedule::Linear { beta_start, beta_end } | BetaSchedule::ScaledLinear { beta_start, beta_end } => {
                (beta_start, beta_end)
            }
        };
        if !(bs.is_finite() && be.is_finite()) || bs <= 0.0 || be >= 1.0 || bs > be {
            return Err(DiffusionError::InvalidConfig(format!("beta range must satisfy 0 < {bs} <= {be} < 1")));
        }
        let betas: Vec<f32> = match kind {
            BetaSchedule::Linear { .. } => linspace_f32(bs, be, num_train_timesteps),
            BetaSchedule::ScaledLinear { .. } => {
                linspace_f32(bs.sqrt(), be.sqrt(), num_train_timesteps).into_iter().map(|b| b * b).collect()
            }
        };
        let alphas: Vec<f32> = betas.iter().map(|b| 1.0 - b).collect();
        let mut acc = 1.0f64;
        let alphas_cumprod = alphas
            .iter()
            .map(|&a| {
                acc *= a as f64;
                acc as f32
            })
            .collect();
        Ok(Self { kind, betas, alphas, alphas_cumprod })
    }

    /// Number of training timesteps `T`.
    pub fn num_train_timesteps(&self) -> usize {
        self.betas.len()
    }

    fn check_t(&self, t: usize) -> Result<()> {
        if t >= self.betas.len() {
            return Err(DiffusionError::TimestepOutOfRange { t: t as f64, max: (self.betas.len() - 1) as f64 });
        }
        Ok(())
    }

    /// Forward process `x_t = sqrt(ᾱ_t)·x0 + sqrt(1 - ᾱ_t)·ε` for one integer timestep.
    pub fn add_noise(&self, x0: &[f32], eps: &[f32], t: usize) -> Result<Vec<f32>> {
        self.check_t(t)?;
        check_len("add_noise noise", x0.len(), eps.len())?;
        check_finite("add_noise x0", x0)?;
        check_finite("add_noise noise", eps)?;
        let ac = self.alphas_cumprod[t];
        let (a, b) = (ac.sqrt(), (1.0 - ac).sqrt());
        Ok(x0.iter().zip(eps).map(|(&x, &e)| a * x + b * e).collect())
    }

    /// Velocity target `v = sqrt(ᾱ_t)·ε - sqrt(1-ᾱ_t)·x0` (MONAI `get_velocity`).
    pub fn velocity(&self, x0: &[f32], eps: &[f32], t: usize) -> Result<Vec<f32>> {
        self.check_t(t)?;
        check_len("velocity noise", x0.len(), eps.len())?;
        let ac = self.alphas_cumprod[t];
        let (a, b) = (ac.sqrt(), (1.0 - ac).sqrt());
        Ok(x0.iter().zip(eps).map(|(&x, &e)| a * e - b * x).collect())
    }
}

/// What the network predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PredictionType {
    /// ε-prediction (default).
    #[default]
    Epsilon,
    /// x0-prediction.
    Sample,
    /// v-prediction (`v = sqrt(ᾱ)·ε - sqrt(1-ᾱ)·x0`).
    VPrediction,
}

/// DDPM posterior variance choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum VarianceType {
    /// `β̃_t = (1-ᾱ_{t-1})/(1-ᾱ_t)·β_t`, clamped at 1e-20 (default).
    #[default]
    FixedSmall,
    /// `β_t`.
    FixedLarge,
}

/// Inference timestep spacing, see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TimestepSpacing {
    /// MONAI ≤ 1.5 / diffusers "leading": `i·(T/n)` reversed, `+ steps_offset` (default).
    #[default]
    Leading,
    /// MONAI 1.6: `round(linspace(T-1-offset, 0, n)) + offset`.
    Linspace,
}

/// Inference timesteps for `steps` steps out of `train` (descending).
pub fn inference_timesteps(train: usize, steps: usize, offset: usize, spacing: TimestepSpacing) -> Result<Vec<usize>> {
    if steps == 0 {
        return Err(DiffusionError::ZeroSteps);
    }
    if steps > train {
        return Err(DiffusionError::TooManySteps { steps, train });
    }
    match spacing {
        TimestepSpacing::Leading => {
            let ratio = train / steps;
            if offset >= ratio {
                return Err(DiffusionError::InvalidConfig(format!(
                    "steps_offset {offset} must be < num_train_timesteps / steps = {ratio}"
                )));
            }
            Ok((0..steps).rev().map(|i| i * ratio + offset).collect())
        }
        TimestepSpacing::Linspace => {
            if offset >= train {
                return Err(DiffusionError::InvalidConfig(format!("steps_offset {offset} must be < {train}")));
            }
            // float32 torch.linspace, then round half to even (torch.round), then offset.
            let v = linspace_f32((train - 1 - offset) as f64, 0.0, steps);
            Ok(v.into_iter().map(|x| x.round_ties_even().max(0.0) as usize + offset).collect())
        }
    }
}

fn pred_x0_eps(pred: PredictionType, model_output: f32, sample: f32, a_t: f32, b_t: f32) -> (f32, f32) {
    // a_t = ᾱ_t, b_t = 1 - ᾱ_t
    match pred {
        PredictionType::Epsilon => ((sample - b_t.sqrt() * model_output) / a_t.sqrt(), model_output),
        PredictionType::Sample => (model_output, (sample - a_t.sqrt() * model_output) / b_t.sqrt()),
        PredictionType::VPrediction => {
            (a_t.sqrt() * sample - b_t.sqrt() * model_output, a_t.sqrt() * model_output + b_t.sqrt() * sample)
        }
    }
}

/// [`pred_x0_eps`]'s x0 on tensors (the same float32 operations, per-step scalars computed on the host).
fn pred_x0_tensor<const D: usize>(
    pred: PredictionType,
    model_output: Tensor<D>,
    sample: Tensor<D>,
    a_t: f32,
    b_t: f32,
) -> Tensor<D> {
    match pred {
        PredictionType::Epsilon => (sample - model_output.mul_scalar(b_t.sqrt())).div_scalar(a_t.sqrt()),
        PredictionType::Sample => model_output,
        PredictionType::VPrediction => sample.mul_scalar(a_t.sqrt()) - model_output.mul_scalar(b_t.sqrt()),
    }
}

/// [`pred_x0_eps`]'s ε on tensors.
fn pred_eps_tensor<const D: usize>(
    pred: PredictionType,
    model_output: Tensor<D>,
    sample: Tensor<D>,
    a_t: f32,
    b_t: f32,
) -> Tensor<D> {
    match pred {
        PredictionType::Epsilon => model_output,
        PredictionType::Sample => (sample - model_output.mul_scalar(a_t.sqrt())).div_scalar(b_t.sqrt()),
        PredictionType::VPrediction => model_output.mul_scalar(a_t.sqrt()) + sample.mul_scalar(b_t.sqrt()),
    }
}

fn clip_tensor<const D: usize>(x0: Tensor<D>, clip: Option<(f32, f32)>) -> Tensor<D> {
    match clip {
        Some((lo, hi)) => x0.clamp(lo, hi),
        None => x0,
    }
}

/// Output of one reverse step.
#[derive(Debug, Clone, PartialEq)]
pub struct StepOutput {
    /// `x_{t_prev}`.
    pub prev_sample: Vec<f32>,
    /// Predicted `x0` (after optional clipping).
    pub pred_original_sample: Vec<f32>,
}

/// DDPM sampler (paper variant: ancestral step `t → t-1`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DdpmScheduler {
    /// β/ᾱ tables.
    pub schedule: NoiseSchedule,
    /// Prediction type (ε by default).
    pub prediction_type: PredictionType,
    /// Posterior variance (fixed_small by default).
    pub variance_type: VarianceType,
    /// Clip predicted x0 to `[-1, 1]` (off by default here; MONAI defaults to on).
    pub clip_sample: Option<(f32, f32)>,
}

impl DdpmScheduler {
    /// ε-prediction, fixed_small variance, no clipping.
    pub fn new(kind: BetaSchedule, num_train_timesteps: usize) -> Result<Self> {
        Ok(Self {
            schedule: NoiseSchedule::new(kind, num_train_timesteps)?,
            prediction_type: PredictionType::Epsilon,
            variance_type: VarianceType::FixedSmall,
            clip_sample: None,
        })
    }

    /// Inference timesteps (MONAI 1.5 DDPM `set_timesteps`: leading spacing, no offset). Note that [`Self::step`]
    /// always uses the posterior between `t` and `t-1`, as MONAI does.
    pub fn timesteps(&self, steps: usize) -> Result<Vec<usize>> {
        inference_timesteps(self.schedule.num_train_timesteps(), steps, 0, TimestepSpacing::Leading)
    }

    /// Posterior variance at `t` (before the square root).
    pub fn variance(&self, t: usize) -> Result<f32> {
        self.schedule.check_t(t)?;
        let s = &self.schedule;
        let ap = s.alphas_cumprod[t];
        let ap_prev = if t > 0 { s.alphas_cumprod[t - 1] } else { 1.0 };
        Ok(match self.variance_type {
            VarianceType::FixedSmall => ((1.0 - ap_prev) / (1.0 - ap) * s.betas[t]).max(1e-20),
            VarianceType::FixedLarge => s.betas[t],
        })
    }

    /// One ancestral step from `t` to `t-1`. `noise` (standard normal, same length) is required for `t > 0` and
    /// ignored at `t = 0`.
    pub fn step(&self, model_output: &[f32], t: usize, sample: &[f32], noise: Option<&[f32]>) -> Result<StepOutput> {
        self.schedule.check_t(t)?;
        check_len("step sample", model_output.len(), sample.len())?;
        check_finite("step model_output", model_output)?;
        check_finite("step sample", sample)?;
        let noise = if t > 0 {
            let n = noise.ok_or_else(|| DiffusionError::InvalidConfig("DDPM step at t > 0 needs noise".into()))?;
            check_len("step noise", sample.len(), n.len())?;
            check_finite("step noise", n)?;
            Some(n)
        } else {
            None
        };
        let s = &self.schedule;
        let ap = s.alphas_cumprod[t];
        let ap_prev = if t > 0 { s.alphas_cumprod[t - 1] } else { 1.0 };
        let bp = 1.0 - ap;
        let bp_prev = 1.0 - ap_prev;
        let c0 = (ap_prev.sqrt() * s.betas[t]) / bp;
        let ct = s.alphas[t].sqrt() * bp_prev / bp;
        let std = if t > 0 { self.variance(t)?.sqrt() } else { 0.0 };
        let mut prev = Vec::with_capacity(sample.len());
        let mut x0s = Vec::with_capacity(sample.len());
        for i in 0..sample.len() {
            let (mut x0, _) = pred_x0_eps(self.prediction_type, model_output[i], sample[i], ap, bp);
            if let Some((lo, hi)) = self.clip_sample {
                x0 = x0.clamp(lo, hi);
            }
            let mut p = c0 * x0 + ct * sample[i];
            if let Some(n) = noise {
                p += std * n[i];
            }
            prev.push(p);
            x0s.push(x0);
        }
        Ok(StepOutput { prev_sample: prev, pred_original_sample: x0s })
    }

    /// [`Self::step`] on tensors, on their device: the same elementwise float32 arithmetic with the per-step
    /// coefficients computed on the host, so nothing but `noise` (drawn by the caller) crosses to the device.
    /// Returns `x_{t-1}`. Shapes are checked; values are not (that would need a read-back every step).
    pub fn step_tensor<const D: usize>(
        &self,
        model_output: Tensor<D>,
        t: usize,
        sample: Tensor<D>,
        noise: Option<Tensor<D>>,
    ) -> Result<Tensor<D>> {
        self.schedule.check_t(t)?;
        check_dims("step model_output", &sample.dims(), &model_output.dims())?;
        let noise = if t > 0 {
            let n = noise.ok_or_else(|| DiffusionError::InvalidConfig("DDPM step at t > 0 needs noise".into()))?;
            check_dims("step noise", &sample.dims(), &n.dims())?;
            Some(n)
        } else {
            None
        };
        let s = &self.schedule;
        let ap = s.alphas_cumprod[t];
        let ap_prev = if t > 0 { s.alphas_cumprod[t - 1] } else { 1.0 };
        let bp = 1.0 - ap;
        let bp_prev = 1.0 - ap_prev;
        let c0 = (ap_prev.sqrt() * s.betas[t]) / bp;
        let ct = s.alphas[t].sqrt() * bp_prev / bp;
        let x0 = pred_x0_tensor(self.prediction_type, model_output, sample.clone(), ap, bp);
        let x0 = clip_tensor(x0, self.clip_sample);
        let prev = x0.mul_scalar(c0) + sample.mul_scalar(ct);
        Ok(match noise {
            Some(n) => prev + n.mul_scalar(self.variance(t)?.sqrt()),
            None => prev,
        })
    }
}

/// DDIM sampler.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DdimScheduler {
    /// β/ᾱ tables.
    pub schedule: NoiseSchedule,
    /// Prediction type (ε by default).
    pub prediction_type: PredictionType,
    /// Clip predicted x0 (off by default here).
    pub clip_sample: Option<(f32, f32)>,
    /// Use ᾱ = 1 for the step past t = 0 (MONAI default true); false uses ᾱ_0.
    pub set_alpha_to_one: bool,
    /// Offset added to the inference timesteps (MONAI default 0).
    pub steps_offset: usize,
    /// Timestep spacing (leading = MONAI 1.5 by default).
    pub spacing: TimestepSpacing,
}

impl DdimScheduler {
    /// ε-prediction, no clipping, `set_alpha_to_one = true`, `steps_offset = 0`, leading spacing.
    pub fn new(kind: BetaSchedule, num_train_timesteps: usize) -> Result<Self> {
        Ok(Self {
            schedule: NoiseSchedule::new(kind, num_train_timesteps)?,
            prediction_type: PredictionType::Epsilon,
            clip_sample: None,
            set_alpha_to_one: true,
            steps_offset: 0,
            spacing: TimestepSpacing::Leading,
        })
    }

    /// Inference timesteps (descending).
    pub fn timesteps(&self, steps: usize) -> Result<Vec<usize>> {
        inference_timesteps(self.schedule.num_train_timesteps(), steps, self.steps_offset, self.spacing)
    }

    /// MONAI's previous timestep `t - T/n` (may be negative: then the "final" ᾱ is used).
    pub fn prev_timestep(&self, t: usize, steps: usize) -> Result<i64> {
        if steps == 0 {
            return Err(DiffusionError::ZeroSteps);
        }
        Ok(t as i64 - (self.schedule.num_train_timesteps() / steps) as i64)
    }

    /// One DDIM step from `t` to `prev_t` (use [`Self::prev_timestep`]); `eta = 0` is deterministic, `eta > 0`
    /// needs `noise`.
    pub fn step(
        &self,
        model_output: &[f32],
        t: usize,
        prev_t: i64,
        sample: &[f32],
        eta: f32,
        noise: Option<&[f32]>,
    ) -> Result<StepOutput> {
        let s = &self.schedule;
        s.check_t(t)?;
        if prev_t >= s.num_train_timesteps() as i64 {
            return Err(DiffusionError::TimestepOutOfRange {
                t: prev_t as f64,
                max: (s.num_train_timesteps() - 1) as f64,
            });
        }
        if !eta.is_finite() || eta < 0.0 {
            return Err(DiffusionError::InvalidConfig(format!("eta must be finite and >= 0 (got {eta})")));
        }
        check_len("step sample", model_output.len(), sample.len())?;
        check_finite("step model_output", model_output)?;
        check_finite("step sample", sample)?;
        let noise = if eta > 0.0 {
            let n = noise.ok_or_else(|| DiffusionError::InvalidConfig("DDIM step with eta > 0 needs noise".into()))?;
            check_len("step noise", sample.len(), n.len())?;
            check_finite("step noise", n)?;
            Some(n)
        } else {
            None
        };
        let ap = s.alphas_cumprod[t];
        let final_ap = if self.set_alpha_to_one { 1.0 } else { s.alphas_cumprod[0] };
        let ap_prev = if prev_t >= 0 { s.alphas_cumprod[prev_t as usize] } else { final_ap };
        let bp = 1.0 - ap;
        let variance = ((1.0 - ap_prev) / bp) * (1.0 - ap / ap_prev);
        let std = eta * variance.sqrt();
        let dir_coef = (1.0 - ap_prev - std * std).sqrt();
        let mut prev = Vec::with_capacity(sample.len());
        let mut x0s = Vec::with_capacity(sample.len());
        for i in 0..sample.len() {
            let (mut x0, e) = pred_x0_eps(self.prediction_type, model_output[i], sample[i], ap, bp);
            if let Some((lo, hi)) = self.clip_sample {
                x0 = x0.clamp(lo, hi);
            }
            let mut p = ap_prev.sqrt() * x0 + dir_coef * e;
            if let Some(n) = noise {
                p += variance.sqrt() * eta * n[i];
            }
            prev.push(p);
            x0s.push(x0);
        }
        Ok(StepOutput { prev_sample: prev, pred_original_sample: x0s })
    }

    /// [`Self::step`] on tensors, on their device (the same float32 arithmetic, per-step coefficients computed on
    /// the host; `noise`, needed for `eta > 0`, is drawn by the caller). Returns `x_{prev_t}`. Shapes are checked;
    /// values are not.
    pub fn step_tensor<const D: usize>(
        &self,
        model_output: Tensor<D>,
        t: usize,
        prev_t: i64,
        sample: Tensor<D>,
        eta: f32,
        noise: Option<Tensor<D>>,
    ) -> Result<Tensor<D>> {
        let s = &self.schedule;
        s.check_t(t)?;
        if prev_t >= s.num_train_timesteps() as i64 {
            return Err(DiffusionError::TimestepOutOfRange {
                t: prev_t as f64,
                max: (s.num_train_timesteps() - 1) as f64,
            });
        }
        if !eta.is_finite() || eta < 0.0 {
            return Err(DiffusionError::InvalidConfig(format!("eta must be finite and >= 0 (got {eta})")));
        }
        check_dims("step model_output", &sample.dims(), &model_output.dims())?;
        let noise = if eta > 0.0 {
            let n = noise.ok_or_else(|| DiffusionError::InvalidConfig("DDIM step with eta > 0 needs noise".into()))?;
            check_dims("step noise", &sample.dims(), &n.dims())?;
            Some(n)
        } else {
            None
        };
        let ap = s.alphas_cumprod[t];
        let final_ap = if self.set_alpha_to_one { 1.0 } else { s.alphas_cumprod[0] };
        let ap_prev = if prev_t >= 0 { s.alphas_cumprod[prev_t as usize] } else { final_ap };
        let bp = 1.0 - ap;
        let variance = ((1.0 - ap_prev) / bp) * (1.0 - ap / ap_prev);
        let std = eta * variance.sqrt();
        let dir_coef = (1.0 - ap_prev - std * std).sqrt();
        let e = pred_eps_tensor(self.prediction_type, model_output.clone(), sample.clone(), ap, bp);
        let x0 = pred_x0_tensor(self.prediction_type, model_output, sample, ap, bp);
        let x0 = clip_tensor(x0, self.clip_sample);
        let prev = x0.mul_scalar(ap_prev.sqrt()) + e.mul_scalar(dir_coef);
        Ok(match noise {
            Some(n) => prev + n.mul_scalar(variance.sqrt() * eta),
            None => prev,
        })
    }
}
