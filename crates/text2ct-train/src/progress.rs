//! Progress reporting through a callback, so that the CLI can draw an indicatif bar and tests
//! can stay quiet.

/// Losses of one optimizer step (averaged over its micro-batches).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StepLosses {
    /// Generator objective actually minimised (weighted sum).
    pub total: f64,
    /// L1 reconstruction on the [0, 1] scale.
    pub l1: f64,
    /// KL divergence of the posterior to N(0, I) (sum over latent voxels, mean over the batch).
    pub kl: f64,
    /// Perceptual substitute (multi-scale 3D gradient L1); 0 when its weight is 0.
    pub perceptual: f64,
    /// Generator adversarial loss; 0 before the adversarial warm-up ends.
    pub g_adv: f64,
    /// Discriminator loss; 0 before the adversarial warm-up ends.
    pub d_loss: f64,
}

/// What a training run reports while it runs.
#[derive(Clone, Debug)]
pub enum ProgressEvent {
    /// The run starts (or resumes) at `start_step` of `total_steps`.
    Start { start_step: usize, total_steps: usize, resumed_from: Option<std::path::PathBuf> },
    /// An optimizer step finished.
    Step { step: usize, total_steps: usize, epoch: usize, lr: f64, losses: StepLosses, steps_per_s: f64 },
    /// A checkpoint was written.
    Checkpoint { step: usize, path: std::path::PathBuf },
    /// Held-out evaluation progress.
    Eval { done: usize, total: usize },
    /// Free-form information (one line).
    Message(String),
}

/// A progress callback.
pub type Progress<'a> = &'a mut dyn FnMut(ProgressEvent);
