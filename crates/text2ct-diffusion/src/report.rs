//! Serializable summary of a sampling schedule (backs `text2ct schedule --sampler ... --steps N --latent C,X,Y,Z`).

use serde::Serialize;

use crate::error::{DiffusionError, Result};
use crate::rflow::RFlowMode;
pub use crate::sampling::Sampler;
use crate::sampling::Scheduler;

/// Timesteps and step sizes of a schedule.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScheduleReport {
    /// Sampler used.
    pub sampler: Sampler,
    /// Number of inference steps.
    pub steps: usize,
    /// Latent dims `[C, X, Y, Z]`.
    pub latent_dims: Vec<usize>,
    /// `X·Y·Z` (drives the rectified-flow shift).
    pub input_img_size_numel: u64,
    /// Clean variant requested (rflow only: no float16 rounding / truncation).
    pub exact: bool,
    /// Number of training timesteps `T`.
    pub num_train_timesteps: usize,
    /// Timesteps given to the network, descending.
    pub timesteps: Vec<f64>,
    /// Timestep each step moves to (rflow: the stored next timestep; ddpm: `t-1`; ddim: `t - T/n`, negative
    /// meaning "past t = 0").
    pub next_timesteps: Vec<f64>,
    /// Step sizes: rflow `dt` as a fraction of the unit interval (Σ ≈ 1); ddpm/ddim `(t - next)/T`.
    pub step_sizes: Vec<f64>,
    /// Σ step_sizes.
    pub total_step_size: f64,
    /// Human-readable description of the conventions.
    pub notes: String,
}

/// Builds the [`ScheduleReport`] for `sampler` with `steps` steps on a latent `[C, X, Y, Z]`.
pub fn schedule_report(sampler: Sampler, steps: usize, latent_dims: &[usize], exact: bool) -> Result<ScheduleReport> {
    if latent_dims.len() != 4 || latent_dims.contains(&0) {
        return Err(DiffusionError::InvalidConfig(format!(
            "latent dims must be 4 positive values C,X,Y,Z (got {latent_dims:?})"
        )));
    }
    let numel: u64 = latent_dims[1..].iter().map(|&d| d as u64).product();
    let (timesteps, next, sizes, t_train, notes) = match Scheduler::text2ct(sampler, steps, numel, exact)? {
        Scheduler::Rflow { scheduler, schedule: s } => {
            let notes = match s.mode {
                RFlowMode::Released => "rectified flow as released (MONAI 1.5 RFlowScheduler): shifted timesteps \
                                        cast to float16, dt = (t - int(next_t))/1000"
                    .to_string(),
                RFlowMode::Exact => {
                    "rectified flow, clean variant: float64 shifted timesteps, dt = (t - next_t)/1000".to_string()
                }
            };
            (s.timesteps, s.next_timesteps, s.dts, scheduler.num_train_timesteps, notes)
        }
        Scheduler::Ddpm { scheduler, timesteps: ts } => {
            let t_train = scheduler.schedule.num_train_timesteps();
            let next: Vec<f64> = ts.iter().map(|&t| t as f64 - 1.0).collect();
            let sizes = vec![1.0 / t_train as f64; ts.len()];
            let notes =
                "DDPM (MONAI 1.5 leading spacing); each step is the t -> t-1 posterior as in MONAI's step".to_string();
            (ts.iter().map(|&t| t as f64).collect(), next, sizes, t_train, notes)
        }
        Scheduler::Ddim { scheduler, timesteps: ts, steps, .. } => {
            let t_train = scheduler.schedule.num_train_timesteps();
            let mut next = Vec::with_capacity(ts.len());
            for &t in &ts {
                next.push(scheduler.prev_timestep(t, steps)? as f64);
            }
            let sizes = ts.iter().zip(&next).map(|(&t, &n)| (t as f64 - n) / t_train as f64).collect();
            let notes = "DDIM eta=0, leading spacing (MONAI 1.5 / diffusers 'leading'), steps_offset 0, \
                         set_alpha_to_one; prev_t = t - T/n"
                .to_string();
            (ts.iter().map(|&t| t as f64).collect(), next, sizes, t_train, notes)
        }
    };
    let total = sizes.iter().sum();
    Ok(ScheduleReport {
        sampler,
        steps,
        latent_dims: latent_dims.to_vec(),
        input_img_size_numel: numel,
        exact,
        num_train_timesteps: t_train,
        timesteps,
        next_timesteps: next,
        step_sizes: sizes,
        total_step_size: total,
        notes,
    })
}
