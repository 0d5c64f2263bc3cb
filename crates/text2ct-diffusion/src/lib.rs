//! Noise schedules and samplers for text2ct as small pure components over plain `f32` slices:
//!
//! * [`rflow`]: rectified flow exactly as Text2CT releases it (MONAI 1.5 `RFlowScheduler`, float16 timesteps,
//!   truncated `next_t`), with a clean [`RFlowMode::Exact`] variant; training helpers (`sample_timestep`,
//!   `add_noise`, [`velocity_target`]).
//! * [`ddpm`]: DDPM and DDIM as in MONAI's `DDPMScheduler` / `DDIMScheduler` (linear and scaled-linear betas).
//! * [`guidance`]: classifier-free guidance.
//! * [`lr`]: polynomial learning-rate decay.
//! * [`report`]: JSON-serializable [`ScheduleReport`].
//!
//! Tests compare against fixtures produced by MONAI itself (`fixtures/gen_schedules.py`).

pub mod ddpm;
pub mod error;
pub mod f16;
pub mod guidance;
pub mod lr;
pub mod report;
pub mod rflow;

pub use ddpm::{
    inference_timesteps, BetaSchedule, DdimScheduler, DdpmScheduler, NoiseSchedule, PredictionType, StepOutput,
    TimestepSpacing, VarianceType,
};
pub use error::{DiffusionError, Result};
pub use f16::round_to_f16;
pub use guidance::cfg_combine;
pub use lr::polynomial_lr;
pub use report::{schedule_report, Sampler, ScheduleReport};
pub use rflow::{velocity_target, RFlowMode, RFlowSchedule, RFlowScheduler};
