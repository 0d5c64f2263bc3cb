//! Sampling on tensors: the sampler choice ([`Sampler`]), a schedule ready to run ([`Scheduler`]: the timesteps
//! the network sees and one update per step, on the tensors' device), and the one guided sampling loop
//! ([`sample_guided`]) that every caller uses (`generate`, the guidance sweep, the prompt-effects check).
//!
//! The updates are the slice-level schedulers' ([`RFlowScheduler::step`], [`DdpmScheduler::step`],
//! [`DdimScheduler::step`]) done as elementwise tensor arithmetic with per-step scalars computed on the host, so
//! the latent never leaves the device; the slice forms stay the tested reference (tests/tensor_steps.rs).

use std::fmt;
use std::str::FromStr;

use burn::prelude::Tensor;
use serde::{Deserialize, Serialize};

use crate::ddpm::{BetaSchedule, DdimScheduler, DdpmScheduler};
use crate::error::{DiffusionError, Result};
use crate::guidance::cfg_combine_tensor;
use crate::noise::NoiseStream;
use crate::rflow::{RFlowMode, RFlowSchedule, RFlowScheduler};

/// Sampler choice. Serialized (model cards, sidecars, reports) as `rflow`, `ddpm`, `ddim`, nothing else.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Sampler {
    /// Rectified flow (Text2CT's scheduler).
    Rflow,
    /// DDPM ancestral sampling (MAISI scaled-linear betas).
    Ddpm,
    /// DDIM, eta = 0 (MAISI scaled-linear betas).
    Ddim,
}

impl Sampler {
    /// Every sampler, in the order the help text lists them.
    pub const ALL: [Sampler; 3] = [Sampler::Rflow, Sampler::Ddpm, Sampler::Ddim];

    /// The name used on the command line and in files.
    pub fn name(self) -> &'static str {
        match self {
            Sampler::Rflow => "rflow",
            Sampler::Ddpm => "ddpm",
            Sampler::Ddim => "ddim",
        }
    }
}

impl fmt::Display for Sampler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Sampler {
    type Err = DiffusionError;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "rflow" | "rectified_flow" | "rectified-flow" => Ok(Sampler::Rflow),
            "ddpm" => Ok(Sampler::Ddpm),
            "ddim" => Ok(Sampler::Ddim),
            _ => Err(DiffusionError::UnknownSampler(s.to_string())),
        }
    }
}

/// A sampler set up for a number of steps on one latent size: the tensor-level scheduler interface.
#[derive(Debug, Clone, PartialEq)]
pub enum Scheduler {
    /// Rectified flow and its schedule.
    Rflow { scheduler: RFlowScheduler, schedule: RFlowSchedule },
    /// DDPM and its inference timesteps.
    Ddpm { scheduler: DdpmScheduler, timesteps: Vec<usize> },
    /// DDIM (deterministic when `eta = 0`), its inference timesteps and the number of steps (`prev_t = t − T/n`).
    Ddim { scheduler: DdimScheduler, timesteps: Vec<usize>, steps: usize, eta: f32 },
}

impl Scheduler {
    /// text2ct's samplers: rectified flow as Text2CT configures it (`exact` = the clean variant, see
    /// [`RFlowMode`]), DDPM and DDIM (eta = 0) with MAISI's scaled-linear betas over 1000 training steps and
    /// MONAI 1.5's leading spacing; `input_img_size_numel` = X·Y·Z of the latent (drives the rflow shift).
    pub fn text2ct(sampler: Sampler, steps: usize, input_img_size_numel: u64, exact: bool) -> Result<Self> {
        Ok(match sampler {
            Sampler::Rflow => {
                let scheduler = RFlowScheduler::text2ct();
                let schedule = scheduler.set_timesteps(steps, input_img_size_numel, RFlowMode::from_exact(exact))?;
                Scheduler::Rflow { scheduler, schedule }
            }
            Sampler::Ddpm => {
                let scheduler = DdpmScheduler::new(BetaSchedule::maisi_scaled_linear(), 1000)?;
                let timesteps = scheduler.timesteps(steps)?;
                Scheduler::Ddpm { scheduler, timesteps }
            }
            Sampler::Ddim => {
                let scheduler = DdimScheduler::new(BetaSchedule::maisi_scaled_linear(), 1000)?;
                let timesteps = scheduler.timesteps(steps)?;
                Scheduler::Ddim { scheduler, timesteps, steps, eta: 0.0 }
            }
        })
    }

    /// Which sampler this is.
    pub fn sampler(&self) -> Sampler {
        match self {
            Scheduler::Rflow { .. } => Sampler::Rflow,
            Scheduler::Ddpm { .. } => Sampler::Ddpm,
            Scheduler::Ddim { .. } => Sampler::Ddim,
        }
    }

    /// Number of steps.
    pub fn len(&self) -> usize {
        match self {
            Scheduler::Rflow { schedule, .. } => schedule.len(),
            Scheduler::Ddpm { timesteps, .. } | Scheduler::Ddim { timesteps, .. } => timesteps.len(),
        }
    }

    /// True when there are no steps (never for a scheduler built by [`Scheduler::text2ct`]).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The timesteps given to the network, one per step, descending.
    pub fn timesteps(&self) -> Vec<f64> {
        match self {
            Scheduler::Rflow { schedule, .. } => schedule.timesteps.clone(),
            Scheduler::Ddpm { timesteps, .. } | Scheduler::Ddim { timesteps, .. } => {
                timesteps.iter().map(|&t| t as f64).collect()
            }
        }
    }

    /// Step `i` (0-based, at timestep `timesteps()[i]`): from `sample` and the network's `model_output` there to
    /// the next sample, on the tensors' device. Noise the step needs (DDPM at t > 0, DDIM with eta > 0) is drawn
    /// from `rng`, one tensor per step.
    pub fn step<const D: usize>(
        &self,
        i: usize,
        model_output: Tensor<D>,
        sample: Tensor<D>,
        rng: &mut NoiseStream,
    ) -> Result<Tensor<D>> {
        if i >= self.len() {
            return Err(DiffusionError::InvalidConfig(format!("step {i} of a {}-step schedule", self.len())));
        }
        match self {
            Scheduler::Rflow { scheduler, schedule } => scheduler.step_tensor(sample, model_output, schedule.dts[i]),
            Scheduler::Ddpm { scheduler, timesteps } => {
                let t = timesteps[i];
                let noise = (t > 0).then(|| rng.normal_tensor(sample.dims(), &sample.device()));
                scheduler.step_tensor(model_output, t, sample, noise)
            }
            Scheduler::Ddim { scheduler, timesteps, steps, eta } => {
                let t = timesteps[i];
                let prev = scheduler.prev_timestep(t, *steps)?;
                let noise = (*eta > 0.0).then(|| rng.normal_tensor(sample.dims(), &sample.device()));
                scheduler.step_tensor(model_output, t, prev, sample, *eta, noise)
            }
        }
    }
}

/// Which branches of classifier-free guidance one network call evaluates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Branches {
    /// The conditional branch alone (guidance scale 1).
    Cond,
    /// The unconditional branch alone (guidance scale 0): the zero context, or a negative prompt's.
    Uncond,
    /// Both in one batch, twice the sample's: the unconditional half first, then the conditional half.
    Both,
}

impl Branches {
    /// What guidance scale `w` needs: `w = 1` only the conditional branch, `w = 0` only the unconditional one,
    /// anything else both.
    pub fn for_scale(w: f32) -> Self {
        if w == 1.0 {
            Branches::Cond
        } else if w == 0.0 {
            Branches::Uncond
        } else {
            Branches::Both
        }
    }
}

/// The guided sampling loop: from `x` (the initial noise) through every step of `scheduler` to a clean sample.
///
/// Per step: `model(x_in, t, branches)` gives the network's output at the float timestep `t` for `x_in` — `x`
/// itself for [`Branches::Cond`] / [`Branches::Uncond`], `x` stacked twice along dimension 0 for
/// [`Branches::Both`] (the model conditions the first half on the unconditional context and the second on the
/// prompt's) — then `v = v_u + w (v_c − v_u)` ([`cfg_combine_tensor`]) and the scheduler's step, drawing any
/// noise from `rng` (the job's [`NoiseStream::sampler`]). `progress(step, total)` after each step.
/// Everything stays on the tensors' device.
pub fn sample_guided<const D: usize, E, F>(
    scheduler: &Scheduler,
    mut x: Tensor<D>,
    guidance: f32,
    rng: &mut NoiseStream,
    mut model: F,
    progress: &mut dyn FnMut(usize, usize),
) -> std::result::Result<Tensor<D>, E>
where
    F: FnMut(Tensor<D>, f32, Branches) -> std::result::Result<Tensor<D>, E>,
    E: From<DiffusionError>,
{
    if !guidance.is_finite() {
        return Err(DiffusionError::NonFinite { what: "guidance scale" }.into());
    }
    let branches = Branches::for_scale(guidance);
    let timesteps = scheduler.timesteps();
    let total = timesteps.len();
    for (i, &t) in timesteps.iter().enumerate() {
        let out = match branches {
            Branches::Both => {
                let dims = x.dims();
                let b = dims[0];
                let out = model(Tensor::cat(vec![x.clone(), x.clone()], 0), t as f32, branches)?;
                let mut want = dims;
                want[0] = 2 * b;
                if out.dims() != want {
                    return Err(DiffusionError::ShapeMismatch {
                        what: "guided model output",
                        expected: want.to_vec(),
                        got: out.dims().to_vec(),
                    }
                    .into());
                }
                let v_uncond = out.clone().narrow(0, 0, b);
                let v_cond = out.narrow(0, b, b);
                cfg_combine_tensor(v_uncond, v_cond, guidance)?
            }
            Branches::Cond | Branches::Uncond => model(x.clone(), t as f32, branches)?,
        };
        x = scheduler.step(i, out, x, rng)?;
        progress(i + 1, total);
    }
    Ok(x)
}
