//! Training infrastructure of text2ct, and the VAE trainer.
//!
//! - [`config`]: TOML training configs (serde, unknown keys refused, defaults documented).
//! - [`data`]: a seeded, exactly resumable loader over a prepared manifest (shuffled epochs,
//!   random crops, flips), batches `[B, 1, X, Y, Z]` in [0, 1].
//! - [`schedule`]: learning-rate schedules as burn [`LrScheduler`](burn::optim::lr_scheduler::LrScheduler)s
//!   (polynomial decay, constant, cosine; linear warm-up), with checkpointable state.
//! - [`checkpoint`]: atomic checkpoint folders and finding the latest one.
//! - [`metrics`]: a JSONL log of step losses and its loss-curve PNG.
//! - [`plot`]: legible line plots as PNG (plotters, vendored DejaVu Sans Mono).
//! - [`params`]: deterministic parameter ids and generic parameter save/load (what makes
//!   optimizer state survive a restart).
//! - [`clip`]: [`train_clip`](clip::train_clip): 3D-CLIP training (symmetric InfoNCE, clamped
//!   learnable temperature, cosine + warm-up), embeddings for `text2ct eval clip`.
//! - [`classifier`]: [`train`](classifier::train): the CT-Net classifier (weighted multi-label BCE,
//!   label-preserving augmentation), exported as the folder `text2ct eval factual` loads.
//!   (The augmentation study that trains it on real / synthetic / both is an experiment:
//!   `text2ct_bench::augment`.)
//! - [`runloop`]: the run-loop skeleton shared by trainers (resume policy, stop conditions,
//!   AdamW, checkpoints, JSONL logs).
//! - [`disc`]: a 3D PatchGAN discriminator.
//! - [`ldm`]: [`train_ldm`](ldm::train_ldm): latent diffusion (rectified flow L1 / DDPM L2) with
//!   cached VAE latents and text embeddings, exported as a `text2ct generate` model folder.
//! - [`vae`]: [`train_vae`](vae::train_vae): L1 + KL + gradient "perceptual" + patch adversarial.
//!
//! Progress is reported through a callback ([`progress::ProgressEvent`]) so front ends draw
//! their own bars.

pub mod caption;
pub mod checkpoint;
pub mod classifier;
pub mod clip;
pub mod config;
pub mod data;
pub mod disc;
pub mod error;
pub mod ldm;
pub mod metrics;
pub mod params;
pub mod plot;
pub mod progress;
pub mod runloop;
pub mod schedule;
pub mod vae;

pub use config::VaeTrainConfig;
pub use error::{Result, TrainError};
pub use ldm::{train_ldm, LdmSummary, LdmTrainConfig};
pub use progress::ProgressEvent;
pub use vae::{train_vae, VaeSummary};
