//! Noise schedules and samplers for text2ct: small pure components over plain `f32` slices (the tested reference,
//! compared with MONAI) and their tensor forms, which run on the caller's burn device:
//!
//! * [`rflow`]: rectified flow exactly as Text2CT releases it (MONAI 1.5 `RFlowScheduler`, float16 timesteps,
//!   truncated `next_t`), with a clean [`RFlowMode::Exact`] variant; training helpers (`sample_timestep`,
//!   `add_noise`, [`velocity_target`]).
//! * [`ddpm`]: DDPM and DDIM as in MONAI's `DDPMScheduler` / `DDIMScheduler` (linear and scaled-linear betas).
//! * [`guidance`]: classifier-free guidance.
//! * [`sampling`]: the [`Sampler`] choice, the tensor-level [`Scheduler`] (timesteps + one step on burn tensors)
//!   and the one guided sampling loop [`sample_guided`] used by generation, the guidance sweep and the
//!   prompt-effects check.
//! * [`noise`]: the job's seeded random streams ([`NoiseStream`]: initial latent noise, the sampler's noise).
//! * [`lr`]: polynomial learning-rate decay.
//! * [`report`]: JSON-serializable [`ScheduleReport`].
//!
//! Tests compare against fixtures produced by MONAI itself (`fixtures/gen_schedules.py`).

pub mod ddpm;
pub mod error;
pub mod f16;
pub mod guidance;
pub mod lr;
pub mod noise;
pub mod report;
pub mod rflow;
pub mod sampling;

pub use ddpm::{
    inference_timesteps, BetaSchedule, DdimScheduler, DdpmScheduler, NoiseSchedule, PredictionType, StepOutput,
    TimestepSpacing, VarianceType,
};
pub use error::{DiffusionError, Result};
pub use f16::round_to_f16;
pub use guidance::{cfg_combine, cfg_combine_tensor};
pub use lr::polynomial_lr;
pub use noise::NoiseStream;
pub use report::{schedule_report, ScheduleReport};
pub use rflow::{velocity_target, RFlowMode, RFlowSchedule, RFlowScheduler};
pub use sampling::{sample_guided, Branches, Sampler, Scheduler};
