//! Text-to-CT generation: the model card (`model.json`), prompts and deterministic sharding,
//! per-volume seeds, and the files written for every generated volume.

pub mod card;
pub mod default_model;
pub mod error;
pub mod limits;
pub mod memory;
pub mod output;
pub mod pipeline;
pub mod prompts;
pub mod text_encoder;

pub use card::ModelCard;
pub use error::{GenerateError, Result};
pub use prompts::{jobs_for_prompt, jobs_from_csv, seed_for, Job, JobList, Shard};
pub use text2ct_diffusion::Sampler;
pub use text_encoder::{TextEncoder, TextEncoderKind};
