//! `text2ct train`: training jobs configured by TOML files (`configs/`).

use std::path::PathBuf;

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use text2ct_train::config::RunConfig;
use text2ct_train::progress::StepLosses;
use text2ct_train::{ProgressEvent, VaeTrainConfig};

#[derive(clap::Subcommand)]
pub enum TrainCommand {
    /// Train the MAISI 3D VAE on a prepared manifest: L1 + KL + gradient "perceptual" term +
    /// 3D patch adversarial loss, AdamW, atomic checkpoints with exact resume, loss curve,
    /// previews and a held-out MAE/PSNR evaluation. See configs/train_vae_phantom.toml.
    Vae(TrainArgs),
    /// Train a 3D CLIP (text encoder + CT-ViT + projections) on prepared volumes and their
    /// reports: symmetric InfoNCE with a clamped learnable temperature, AdamW, cosine schedule
    /// with warm-up, exact resume; weights with Text2CT's key names. See
    /// configs/train_clip_phantom.toml.
    Clip(TrainArgs),
    /// Train the latent-diffusion U-Net (rectified flow L1 as released, or DDPM L2 as in the
    /// paper) on latents of a frozen VAE and text embeddings of a frozen CLIP text encoder
    /// (cached), CFG dropout, Adam + polynomial LR, exact resume; exports a model folder for
    /// `text2ct generate --model`. See configs/train_ldm_phantom.toml.
    Ldm(TrainArgs),
    /// Train the CT-Net classifier of the factual-correctness evaluation on labelled volumes
    /// (prepared manifests, or NIfTI folders with a labels CSV; several sources mix real and
    /// synthetic): multi-label BCE over the 18 labels with pos_weight from the training
    /// prevalence, shifts and intensity jitter (no flips: labels name sides), AdamW, exact
    /// resume, loss curve, held-out AUC per epoch; exports the folder `text2ct eval factual
    /// --classifier` loads. See configs/train_classifier_phantom.toml.
    Classifier(TrainArgs),
}

#[derive(clap::Args)]
pub struct TrainArgs {
    /// The training config (TOML; unknown keys are errors).
    #[arg(long)]
    pub config: PathBuf,
    /// Continue from the latest checkpoint in the run's out_dir (same as run.resume = true).
    #[arg(long)]
    pub resume: bool,
    /// Override run.steps.
    #[arg(long)]
    pub steps: Option<usize>,
    /// Override run.out_dir.
    #[arg(long)]
    pub out_dir: Option<PathBuf>,
}

pub fn run(cmd: TrainCommand) -> Result<()> {
    match cmd {
        TrainCommand::Vae(a) => vae(a),
        TrainCommand::Clip(a) => clip(a),
        TrainCommand::Ldm(a) => ldm(a),
        TrainCommand::Classifier(a) => classifier(a),
    }
}

/// Apply the command-line overrides to a run section, and check its output folder.
fn apply_overrides(run: &mut RunConfig, a: TrainArgs) -> Result<()> {
    run.resume |= a.resume;
    if let Some(s) = a.steps {
        run.steps = s;
    }
    if let Some(o) = a.out_dir {
        run.out_dir = o;
    }
    crate::util::output_dir(&run.out_dir, "the output folder (--out-dir or [run] out_dir)")
}

/// The progress bar of every training command.
fn training_bar(prefix: &'static str, steps: usize) -> ProgressBar {
    let pb = ProgressBar::new(steps as u64);
    pb.set_style(
        ProgressStyle::with_template("{prefix:>6} [{bar:30.cyan/blue}] {pos}/{len} {msg} (eta {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb.set_prefix(prefix);
    pb
}

/// The first summary line of every training command.
fn print_trained(done: usize, total: usize, session: usize, wall_s: f64, steps_per_s: f64, stopped_early: bool) {
    println!(
        "trained {done} / {total} steps ({session} this session in {wall_s:.0} s, {steps_per_s:.3} steps/s){}",
        if stopped_early { ", stopped early" } else { "" }
    );
}

/// The progress-bar handler every training command shares: resume line, position, checkpoint and
/// message lines; `step_msg(epoch, lr, losses, steps_per_s)` is the bar's text after each step,
/// `on_eval(done, total)` handles the trainer's evaluation (or cache) progress.
fn bar_events<'a>(
    pb: &'a ProgressBar,
    step_msg: impl Fn(usize, f64, &StepLosses, f64) -> String + 'a,
    mut on_eval: impl FnMut(&ProgressBar, usize, usize) + 'a,
) -> impl FnMut(ProgressEvent) + 'a {
    move |ev| match ev {
        ProgressEvent::Start { start_step, resumed_from, .. } => {
            pb.set_position(start_step as u64);
            if let Some(p) = resumed_from {
                pb.println(format!("resumed from {} (step {start_step})", p.display()));
            }
        }
        ProgressEvent::Step { step, lr, losses, steps_per_s, epoch, .. } => {
            pb.set_position(step as u64);
            pb.set_message(step_msg(epoch, lr, &losses, steps_per_s));
        }
        ProgressEvent::Checkpoint { step, path } => pb.println(format!("step {step}: checkpoint {}", path.display())),
        ProgressEvent::Eval { done, total } => on_eval(pb, done, total),
        ProgressEvent::Message(m) => pb.println(m),
    }
}

fn vae(a: TrainArgs) -> Result<()> {
    let mut cfg = VaeTrainConfig::from_file(&a.config).with_context(|| format!("reading {}", a.config.display()))?;
    apply_overrides(&mut cfg.run, a)?;
    cfg.validate()?;
    let pb = training_bar("train", cfg.run.steps);
    let mut on_event = bar_events(
        &pb,
        |epoch, lr, l, steps_per_s| {
            let adv = if l.d_loss > 0.0 { format!(" G {:.3} D {:.3}", l.g_adv, l.d_loss) } else { String::new() };
            format!(
                "ep {epoch} L1 {:.4} KL {:.0} P {:.4}{adv} lr {lr:.2e} {steps_per_s:.2} it/s",
                l.l1, l.kl, l.perceptual
            )
        },
        |pb, done, total| {
            if done == 1 {
                pb.println(format!("evaluating {total} held-out volume(s)"));
            }
        },
    );
    let s = text2ct_train::train_vae(&cfg, &mut on_event)?;
    pb.finish_and_clear();
    print_trained(s.steps_done, s.total_steps, s.session_steps, s.session_wall_s, s.steps_per_s, s.stopped_early);
    let l = &s.final_losses;
    println!(
        "final losses (mean of last 50 steps): total {:.4}  L1 {:.4}  KL {:.1}  perceptual {:.4}  G_adv {:.4}  D {:.4}",
        l.total, l.l1, l.kl, l.perceptual, l.g_adv, l.d_loss
    );
    if let Some(e) = &s.eval {
        println!("held-out ({} volumes): MAE {:.1} HU, PSNR {:.2} dB", e.n, e.mae_hu, e.psnr_db);
    }
    if let Some(c) = &s.last_checkpoint {
        println!("last checkpoint: {}", c.display());
    }
    if let Some(f) = &s.final_dir {
        println!("final model:     {}", f.display());
    }
    Ok(())
}

fn ldm(a: TrainArgs) -> Result<()> {
    use text2ct_train::LdmTrainConfig;
    let mut cfg = LdmTrainConfig::from_file(&a.config).with_context(|| format!("reading {}", a.config.display()))?;
    apply_overrides(&mut cfg.run, a)?;
    cfg.validate()?;
    let pb = training_bar("ldm", cfg.run.steps);
    let mut on_event = bar_events(
        &pb,
        |epoch, lr, l, steps_per_s| format!("ep {epoch} loss {:.4} lr {lr:.2e} {steps_per_s:.2} it/s", l.total),
        // The latent / text-embedding cache reports its progress as Eval events.
        |pb, done, total| pb.set_message(format!("cache {done}/{total}")),
    );
    let s = text2ct_train::train_ldm(&cfg, &mut on_event)?;
    pb.finish_and_clear();
    print_trained(s.steps_done, s.total_steps, s.session_steps, s.session_wall_s, s.steps_per_s, s.stopped_early);
    println!(
        "{:?} loss: first 50 steps {:.4}, last 50 steps {:.4}; scale_factor {:.6}; {} latents {:?}",
        s.objective, s.first_loss, s.final_loss, s.scale_factor, s.num_latents, s.latent_shape
    );
    if let Some(c) = &s.last_checkpoint {
        println!("last checkpoint: {}", c.display());
    }
    if let Some(m) = &s.model_dir {
        println!("model folder:    {} (text2ct generate --model {})", m.display(), m.display());
    }
    Ok(())
}

fn clip(a: TrainArgs) -> Result<()> {
    use text2ct_train::clip::{train_clip, ClipTrainConfig};
    let mut cfg = ClipTrainConfig::from_file(&a.config).with_context(|| format!("reading {}", a.config.display()))?;
    apply_overrides(&mut cfg.run, a)?;
    cfg.validate()?;
    let pb = training_bar("clip", cfg.run.steps);
    let mut on_event = bar_events(
        &pb,
        |epoch, lr, l, steps_per_s| format!("ep {epoch} InfoNCE {:.4} lr {lr:.2e} {steps_per_s:.2} it/s", l.total),
        |_, _, _| {},
    );
    let s = train_clip(&cfg, &mut on_event)?;
    pb.finish_and_clear();
    print_trained(s.steps_done, s.total_steps, s.session_steps, s.session_wall_s, s.steps_per_s, s.stopped_early);
    println!(
        "final (mean of last 50 steps): InfoNCE {:.4} (chance ln B = {:.4}), in-batch top-1 {:.3}, logit_scale {:.3}",
        s.final_loss, s.chance_loss, s.final_batch_acc, s.logit_scale
    );
    if let Some(c) = &s.last_checkpoint {
        println!("last checkpoint: {}", c.display());
    }
    if let Some(f) = &s.final_dir {
        println!("final model:     {}", f.display());
    }
    Ok(())
}

fn classifier(a: TrainArgs) -> Result<()> {
    use text2ct_train::classifier::{train, ClassifierTrainConfig};
    let mut cfg =
        ClassifierTrainConfig::from_file(&a.config).with_context(|| format!("reading {}", a.config.display()))?;
    apply_overrides(&mut cfg.run, a)?;
    cfg.validate()?;
    let pb = training_bar("ctnet", cfg.run.steps);
    let mut on_event = bar_events(
        &pb,
        |epoch, lr, l, steps_per_s| format!("ep {epoch} BCE {:.4} lr {lr:.2e} {steps_per_s:.2} it/s", l.total),
        |_, _, _| {},
    );
    let s = train(&cfg, &mut on_event)?;
    pb.finish_and_clear();
    print_trained(s.steps_done, s.total_steps, s.session_steps, s.session_wall_s, s.steps_per_s, s.stopped_early);
    println!(
        "weighted BCE: first 20 steps {:.4}, last 20 steps {:.4}; {} training volumes, input {:?}",
        s.first_loss, s.final_loss, s.n_train, s.input_size
    );
    if let Some(v) = &s.val {
        let f = |x: Option<f64>| x.map(|v| format!("{v:.3}")).unwrap_or_else(|| "-".into());
        println!(
            "held-out ({} volumes): AUC macro {} weighted {}, precision macro {} weighted {}",
            v.n_volumes,
            f(v.auc.macro_avg),
            f(v.auc.weighted_avg),
            f(v.precision.macro_avg),
            f(v.precision.weighted_avg)
        );
    }
    if let Some(c) = &s.last_checkpoint {
        println!("last checkpoint: {}", c.display());
    }
    if let Some(f) = &s.final_dir {
        println!("classifier:      {} (text2ct eval factual --classifier {})", f.display(), f.display());
    }
    Ok(())
}
