//! VAE training: `L1 + β·KL + λp·P + λadv·G_adv` with a 3D PatchGAN discriminator, AdamW,
//! gradient accumulation, optional clipping, a polynomial (or constant / cosine) schedule,
//! atomic checkpoints with exact resume, a JSONL log, a loss curve, reconstruction previews and
//! a held-out evaluation (MAE in HU, PSNR on the [0, 1] scale with data range 1).
//!
//! One optimizer step:
//! 1. for each of `grad_accum_steps` micro-batches: encode, sample `z = mu + eps·sigma` with
//!    `eps` from a generator seeded by `(seed, step, micro)`, decode; the generator loss
//!    (divided by the number of micro-batches) is back-propagated and the VAE's gradients are
//!    accumulated; once the adversarial warm-up is over the reconstruction also goes through
//!    the discriminator (whose parameters are not updated by this loss);
//! 2. one AdamW step on the VAE;
//! 3. after the warm-up: the discriminator's loss on the real inputs and the detached
//!    reconstructions of the same micro-batches, one AdamW step on the discriminator.
//!
//! Loss definitions (MONAI's, where MAISI has them):
//! - L1 = mean |recon - x| (voxels in [0, 1]);
//! - KL = 0.5 · Σ_latent (mu² + sigma² - ln sigma² - 1), averaged over the batch;
//! - P = the multi-scale 3D gradient L1 documented on [`VaeLossConfig`](crate::config::VaeLossConfig)
//!   (a stand-in for MAISI's pretrained perceptual network, which we cannot ship);
//! - least squares: G = mean (D(fake) - 1)², D = ½ [mean (D(real) - 1)² + mean D(fake)²];
//!   hinge: G = -mean D(fake), D = ½ [mean relu(1 - D(real)) + mean relu(1 + D(fake))].

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::Module;
use burn::optim::grad_clipping::GradientClippingConfig;
use burn::optim::lr_scheduler::LrScheduler;
use burn::optim::{AdamWConfig, GradientsAccumulator, GradientsParams, ModuleOptimizer};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor, TensorData};
use rand::SeedableRng;
use rand_distr::Distribution;
use serde::{Deserialize, Serialize};
use text2ct_io::preview::{render_planes, save_png, stack_vertical, Window};
use text2ct_io::{Affine, Volume};
use text2ct_models::{Vae, VaeConfig};

use crate::checkpoint::{self, TrainState};
use crate::config::{AdvLoss, VaeTrainConfig};
use crate::data::{step_seed, Loader, LoaderOptions, VolumeSet};
use crate::disc::PatchDiscriminator;
use crate::error::{Result, TrainError};
use crate::metrics::{MetricsLog, StepRecord};
use crate::params;
use crate::progress::{Progress, ProgressEvent, StepLosses};
use crate::schedule::Schedule;

/// Held-out evaluation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalResult {
    /// Volumes evaluated.
    pub n: usize,
    /// Mean absolute error in HU (inputs clipped to [-1000, 1000]; reconstruction clamped to
    /// the same range), averaged over volumes.
    pub mae_hu: f64,
    /// PSNR in dB on the [0, 1] scale (data range 1), averaged over volumes.
    pub psnr_db: f64,
    /// `(id, MAE HU, PSNR dB)` per volume.
    pub per_volume: Vec<(String, f64, f64)>,
}

/// What a training run did.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VaeSummary {
    pub out_dir: PathBuf,
    /// Optimizer steps done (all sessions) and planned.
    pub steps_done: usize,
    pub total_steps: usize,
    /// Steps done in this session, its wall time and speed.
    pub session_steps: usize,
    pub session_wall_s: f64,
    pub steps_per_s: f64,
    /// Wall time of all sessions.
    pub total_wall_s: f64,
    pub resumed_from: Option<PathBuf>,
    pub stopped_early: bool,
    /// Mean losses over the last (up to) 50 steps.
    pub final_losses: StepLosses,
    pub eval: Option<EvalResult>,
    pub last_checkpoint: Option<PathBuf>,
    /// `final/`: vae.safetensors, vae_config.json, train_config.toml, metrics.json,
    /// loss_curve.png, recon_preview.png.
    pub final_dir: Option<PathBuf>,
    pub num_params: usize,
}

/// Knobs for tests and front ends that the config does not hold.
#[derive(Clone, Debug, Default)]
pub struct TrainOptions {
    /// Stop (with a checkpoint, without the final outputs) once this many steps are done:
    /// simulates an interruption.
    pub stop_at: Option<usize>,
    /// Skip the final held-out evaluation and previews.
    pub skip_eval: bool,
}

/// Train per the config (see the module docs). `progress` receives [`ProgressEvent`]s.
pub fn train_vae(cfg: &VaeTrainConfig, progress: Progress) -> Result<VaeSummary> {
    train_vae_with(cfg, &TrainOptions::default(), progress)
}

fn tensor_vec<const D: usize>(t: Tensor<D>) -> Result<Vec<f32>> {
    t.into_data().convert::<f32>().try_into_vec::<f32>().map_err(|e| TrainError::Train(format!("{e:?}")))
}

fn scalar(t: &Tensor<1>) -> f64 {
    t.clone().into_scalar::<f32>() as f64
}

fn normal_noise(seed: u64, dims: [usize; 5], device: &Device) -> Tensor<5> {
    let n: usize = dims.iter().product();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let v: Vec<f32> = (0..n).map(|_| rand_distr::StandardNormal.sample(&mut rng)).collect();
    Tensor::from_data(TensorData::new(v, dims), device)
}

/// KL divergence to N(0, I): sum over latent elements, mean over the batch.
pub fn kl_loss(mu: Tensor<5>, sigma: Tensor<5>) -> Tensor<1> {
    let b = mu.dims()[0] as f64;
    let s2 = sigma.square();
    let t = mu.square() + s2.clone() - s2.log() - 1.0;
    t.sum().mul_scalar(0.5 / b)
}

fn avg_pool2(t: Tensor<5>) -> Tensor<5> {
    let [b, c, x, y, z] = t.dims();
    let (x2, y2, z2) = (x / 2, y / 2, z / 2);
    let t = t.narrow(2, 0, 2 * x2).narrow(3, 0, 2 * y2).narrow(4, 0, 2 * z2);
    let t = t.reshape([b * c, x2, 2, 4 * y2 * z2]).mean_dim(2);
    let t = t.reshape([b * c * x2, y2, 2, 2 * z2]).mean_dim(2);
    let t = t.reshape([b * c * x2 * y2, z2, 2]).mean_dim(2);
    t.reshape([b, c, x2, y2, z2])
}

/// The multi-scale 3D gradient L1 (the documented perceptual substitute).
pub fn gradient_loss(recon: Tensor<5>, x: Tensor<5>, scales: usize) -> Tensor<1> {
    let (mut a, mut b) = (recon, x);
    let mut terms: Vec<Tensor<1>> = Vec::new();
    for s in 0..scales {
        if s > 0 {
            if a.dims()[2..].iter().any(|&n| n < 4) {
                break;
            }
            a = avg_pool2(a);
            b = avg_pool2(b);
        }
        for ax in 2..5 {
            let n = a.dims()[ax];
            if n < 2 {
                continue;
            }
            let da = a.clone().narrow(ax, 1, n - 1) - a.clone().narrow(ax, 0, n - 1);
            let db = b.clone().narrow(ax, 1, n - 1) - b.clone().narrow(ax, 0, n - 1);
            terms.push((da - db).abs().mean());
        }
    }
    let k = terms.len().max(1) as f64;
    let mut it = terms.into_iter();
    match it.next() {
        None => Tensor::<1>::zeros([1], &a.device()),
        Some(first) => it.fold(first, |acc, t| acc + t).div_scalar(k),
    }
}

fn g_adv_loss(kind: AdvLoss, fake_logits: Tensor<5>) -> Tensor<1> {
    match kind {
        AdvLoss::LeastSquares => (fake_logits - 1.0).square().mean(),
        AdvLoss::Hinge => fake_logits.mean().neg(),
    }
}

fn d_adv_loss(kind: AdvLoss, real: Tensor<5>, fake: Tensor<5>) -> Tensor<1> {
    let t = match kind {
        AdvLoss::LeastSquares => (real - 1.0).square().mean() + fake.square().mean(),
        AdvLoss::Hinge => relu(real.neg() + 1.0).mean() + relu(fake + 1.0).mean(),
    };
    t.mul_scalar(0.5)
}

fn adamw(cfg: &VaeTrainConfig) -> ModuleOptimizer {
    let o = &cfg.optim;
    AdamWConfig::new()
        .with_beta_1(o.betas[0])
        .with_beta_2(o.betas[1])
        .with_epsilon(o.eps)
        .with_weight_decay(o.weight_decay)
        .with_grad_clipping(o.grad_clip_norm.map(GradientClippingConfig::Norm))
        .init()
}

const VAE_ID_BASE: u64 = 0;
const DISC_ID_BASE: u64 = 1 << 32;

/// Reconstruct one whole volume with the posterior mean (inference mode); returns
/// `(input, reconstruction)` in [0, 1], tensor layout, and the dims.
fn reconstruct(vae: &Vae, set: &VolumeSet, i: usize, device: &Device) -> Result<(Vec<f32>, Vec<f32>, [usize; 3])> {
    let (x, d) = set.read_unit(i)?;
    let dims = [1, 1, d[0], d[1], d[2]];
    vae.check_image_shape(dims)?;
    let f = vae.config.downsample_factor();
    if d.iter().any(|&n| n % f != 0) {
        return Err(TrainError::Data(format!(
            "{}: volume {d:?} is not divisible by the VAE's factor {f}",
            set.items[i].path.display()
        )));
    }
    let xt = Tensor::<5>::from_data(TensorData::new(x.clone(), dims), device);
    let r = vae.decode(vae.encode_mean(xt));
    Ok((x, tensor_vec(r)?, d))
}

fn unit_volume(data: &[f32], d: [usize; 3], affine: &[[f64; 4]; 4]) -> Result<Volume> {
    let [nx, ny, nz] = d;
    let mut v = vec![0f32; nx * ny * nz];
    for x in 0..nx {
        for y in 0..ny {
            for z in 0..nz {
                v[x + nx * (y + ny * z)] = text2ct_io::transform::unit_to_hu(data[(x * ny + y) * nz + z]);
            }
        }
    }
    Ok(Volume::new(d, v, Affine(*affine))?)
}

/// Input (top) vs reconstruction (bottom), three planes each, lung window.
fn write_preview(vae: &Vae, set: &VolumeSet, device: &Device, path: &Path) -> Result<()> {
    let (x, r, d) = reconstruct(vae, set, 0, device)?;
    let aff = &set.items[0].entry.affine;
    let a = render_planes(&unit_volume(&x, d, aff)?, Window::LUNG, None)?;
    let b = render_planes(&unit_volume(&r, d, aff)?, Window::LUNG, None)?;
    save_png(&stack_vertical(&[a, b]), path)?;
    Ok(())
}

/// MAE (HU) and PSNR (dB, data range 1) of reconstructions of a manifest's volumes.
pub fn evaluate(vae: &Vae, set: &VolumeSet, max_items: usize, progress: Progress) -> Result<EvalResult> {
    let device = vae.device();
    let n = if max_items == 0 { set.len() } else { max_items.min(set.len()) };
    let mut per = Vec::with_capacity(n);
    for i in 0..n {
        let (x, r, _) = reconstruct(vae, set, i, &device)?;
        let (mut ae, mut se) = (0.0f64, 0.0f64);
        for (a, b) in x.iter().zip(&r) {
            let d = (b.clamp(0.0, 1.0) - a) as f64;
            ae += d.abs();
            se += d * d;
        }
        let m = x.len() as f64;
        let mse = (se / m).max(1e-20);
        per.push((set.items[i].entry.id.clone(), ae / m * 2000.0, 10.0 * (1.0 / mse).log10()));
        progress(ProgressEvent::Eval { done: i + 1, total: n });
    }
    let k = per.len().max(1) as f64;
    Ok(EvalResult {
        n: per.len(),
        mae_hu: per.iter().map(|p| p.1).sum::<f64>() / k,
        psnr_db: per.iter().map(|p| p.2).sum::<f64>() / k,
        per_volume: per,
    })
}

fn mean_losses(records: &[StepRecord]) -> StepLosses {
    let tail = &records[records.len().saturating_sub(50)..];
    let k = tail.len().max(1) as f64;
    let mut m = StepLosses::default();
    for r in tail {
        m.total += r.losses.total / k;
        m.l1 += r.losses.l1 / k;
        m.kl += r.losses.kl / k;
        m.perceptual += r.losses.perceptual / k;
        m.g_adv += r.losses.g_adv / k;
        m.d_loss += r.losses.d_loss / k;
    }
    m
}

fn write_json<T: Serialize>(path: &Path, v: &T) -> Result<()> {
    let s = serde_json::to_string_pretty(v).map_err(|e| TrainError::Train(e.to_string()))?;
    text2ct_io::error::atomic_write_bytes(path, s.as_bytes())?;
    Ok(())
}

fn rec_err(path: &Path, e: impl std::fmt::Debug) -> TrainError {
    TrainError::ckpt(path, format!("{e:?}"))
}

/// [`train_vae`] with [`TrainOptions`].
pub fn train_vae_with(cfg: &VaeTrainConfig, opts: &TrainOptions, progress: Progress) -> Result<VaeSummary> {
    cfg.validate()?;
    let device = cfg.run.device()?; // a wrong device name fails before any data is read
    let session_start = Instant::now();
    let out = cfg.run.out_dir.clone();
    std::fs::create_dir_all(&out).map_err(|e| TrainError::io(&out, e))?;
    let ckpt_root = out.join("checkpoints");
    let seed = cfg.run.seed;
    let total = cfg.run.steps;
    let accum = cfg.optim.grad_accum_steps;
    let lw = &cfg.loss;
    let use_adv = lw.adv_weight > 0.0;

    let train_set = VolumeSet::open(&cfg.data.train_manifest, cfg.data.limit)?;
    let val_set = match &cfg.data.val_manifest {
        Some(p) => Some(VolumeSet::open(p, None)?),
        None => None,
    };
    let mut loader = Loader::new(
        train_set.clone(),
        LoaderOptions {
            batch_size: cfg.data.batch_size,
            patch: cfg.data.patch_size,
            flip_prob: cfg.data.flip_prob,
            seed,
        },
    )?;
    let sd = loader.sample_dims();
    let f = cfg.model.downsample_factor();
    if sd.iter().any(|&n| n % f != 0 || n < f) {
        return Err(TrainError::Config(format!(
            "training samples are {sd:?}: each extent must be a multiple of the VAE's factor {f} (set data.patch_size)"
        )));
    }

    let dev = device.autodiff();
    let mut vae = Vae::new(&cfg.model, seed, &dev)?;
    vae.net = params::assign_ids(vae.net, VAE_ID_BASE);
    let mut disc = use_adv.then(|| {
        params::assign_ids(
            PatchDiscriminator::new(1, lw.disc_channels, lw.disc_layers, seed ^ 0xD15C, &dev),
            DISC_ID_BASE,
        )
    });
    let mut optim = adamw(cfg);
    let mut doptim = adamw(cfg);
    let mut sched = Schedule::from_config(&cfg.schedule, cfg.optim.lr, total)?;
    let mut dsched = Schedule::from_config(&cfg.schedule, cfg.optim.disc_lr.unwrap_or(cfg.optim.lr), total)?;
    let mut step = 0usize;
    let mut prior_elapsed = 0.0f64;
    let mut records = Vec::new();

    let existing = checkpoint::latest(&ckpt_root)?;
    let resumed_from = if cfg.run.resume { existing.clone() } else { None };
    if !cfg.run.resume {
        if let Some(p) = &existing {
            return Err(TrainError::Config(format!(
                "{} already holds checkpoints (latest {}): resume with --resume / run.resume = true, or choose another run.out_dir",
                out.display(),
                p.display()
            )));
        }
    }
    if let Some(dir) = &resumed_from {
        let st = checkpoint::read_state(dir)?;
        let saved_cfg = VaeTrainConfig::from_toml_str(
            &std::fs::read_to_string(dir.join("config.toml"))
                .map_err(|e| TrainError::io(dir.join("config.toml"), e))?,
        )
        .map_err(|e| TrainError::ckpt(dir, format!("config.toml: {e}")))?;
        if saved_cfg.model != cfg.model {
            return Err(TrainError::ckpt(dir, "the checkpoint's [model] differs from the config's"));
        }
        if st.seed != seed {
            return Err(TrainError::ckpt(dir, format!("the checkpoint's seed is {}, the config's {seed}", st.seed)));
        }
        let mut v = Vae::load(&cfg.model, &dir.join("vae.safetensors"), &dev)?;
        v.net = params::assign_ids(v.net, VAE_ID_BASE);
        vae = v;
        let p = dir.join("optim_vae.bpk");
        optim = optim.load(&p).map_err(|e| rec_err(&p, e))?;
        if let Some(d) = disc.take() {
            let p = dir.join("disc.safetensors");
            disc = Some(params::load_safetensors(d, &p)?);
            let p = dir.join("optim_disc.bpk");
            doptim = doptim.load(&p).map_err(|e| rec_err(&p, e))?;
        }
        loader.set_state(st.loader);
        sched.step = *st.schedulers.get("vae").unwrap_or(&st.step);
        dsched.step = *st.schedulers.get("disc").unwrap_or(&st.step);
        step = st.step;
        prior_elapsed = st.elapsed_s;
        records = MetricsLog::read(&dir.join("metrics.jsonl"))?;
        records.retain(|r| r.step <= step);
    }
    let mut log = MetricsLog::create(&out.join("metrics.jsonl"), records)?;
    let num_params = vae.net.num_params();
    progress(ProgressEvent::Message(format!(
        "VAE {:?} ({num_params} parameters), {} training volumes, samples {sd:?}, batch {} x {accum} accumulation",
        cfg.model.num_channels,
        train_set.len(),
        cfg.data.batch_size
    )));
    progress(ProgressEvent::Start { start_step: step, total_steps: total, resumed_from: resumed_from.clone() });

    let preview_set = val_set.as_ref().unwrap_or(&train_set);
    let inner = Device::flex();
    let start_step = step;
    let mut last_ckpt: Option<PathBuf> = None;
    let mut stopped_early = false;
    let max_wall = cfg.run.max_wall_minutes.map(|m| m * 60.0);

    let save = |step: usize,
                vae: &Vae,
                disc: &Option<PatchDiscriminator>,
                optim: &ModuleOptimizer,
                doptim: &ModuleOptimizer,
                sched: &Schedule,
                dsched: &Schedule,
                loader: &Loader,
                log: &MetricsLog,
                elapsed: f64|
     -> Result<PathBuf> {
        let mut schedulers = std::collections::BTreeMap::new();
        schedulers.insert("vae".to_string(), sched.to_record().scalar::<u64>("step").unwrap_or(0) as usize);
        schedulers.insert("disc".to_string(), dsched.to_record().scalar::<u64>("step").unwrap_or(0) as usize);
        let st = TrainState { step, loader: loader.state(), schedulers, seed, elapsed_s: elapsed, version: 1 };
        let p = checkpoint::write_checkpoint(&ckpt_root, &st, |dir| {
            vae.save_safetensors(&dir.join("vae.safetensors"))?;
            write_json(&dir.join("vae_config.json"), &vae.config)?;
            let p = dir.join("optim_vae.bpk");
            optim.save(&p).map_err(|e| rec_err(&p, e))?;
            if let Some(d) = disc {
                params::save_safetensors(d, &dir.join("disc.safetensors"))?;
                let p = dir.join("optim_disc.bpk");
                doptim.save(&p).map_err(|e| rec_err(&p, e))?;
            }
            let toml = cfg.to_toml_string()?;
            std::fs::write(dir.join("config.toml"), toml).map_err(|e| TrainError::io(dir.join("config.toml"), e))?;
            log.rewrite(&dir.join("metrics.jsonl"))
        })?;
        checkpoint::prune(&ckpt_root, cfg.run.keep_checkpoints)?;
        Ok(p)
    };

    while step < total {
        if opts.stop_at.is_some_and(|s| step >= s) {
            stopped_early = true;
            break;
        }
        if max_wall.is_some_and(|m| session_start.elapsed().as_secs_f64() >= m) {
            stopped_early = true;
            progress(ProgressEvent::Message(format!("run.max_wall_minutes reached after step {step}")));
            break;
        }
        let t0 = Instant::now();
        let epoch = loader.state().epoch;
        let lr = sched.step();
        let dlr = dsched.step();
        let adv = use_adv && step >= lw.adv_start_step;
        let mut acc = GradientsAccumulator::new();
        let mut sums = StepLosses::default();
        let mut fakes = Vec::new();
        for micro in 0..accum {
            let batch = loader.next_batch()?;
            let x = Tensor::<5>::from_data(TensorData::new(batch.data, batch.dims), &dev);
            let ldims = vae.latent_dims(batch.dims);
            let eps = normal_noise(step_seed(seed, 1, (step * accum + micro) as u64), ldims, &dev);
            let (recon, mu, sigma) = vae.forward_train(x.clone(), eps)?;
            let l1 = (recon.clone() - x.clone()).abs().mean();
            let kl = kl_loss(mu, sigma);
            sums.l1 += scalar(&l1);
            sums.kl += scalar(&kl);
            let mut loss = l1.mul_scalar(lw.l1_weight) + kl.mul_scalar(lw.kl_weight);
            if lw.perceptual_weight > 0.0 {
                let p = gradient_loss(recon.clone(), x.clone(), lw.perceptual_scales);
                sums.perceptual += scalar(&p);
                loss = loss + p.mul_scalar(lw.perceptual_weight);
            }
            if let (true, Some(d)) = (adv, &disc) {
                let g = g_adv_loss(lw.adv_loss, d.forward(recon.clone()));
                sums.g_adv += scalar(&g);
                loss = loss + g.mul_scalar(lw.adv_weight);
                fakes.push((x, recon.detach()));
            }
            let lv = scalar(&loss);
            if !lv.is_finite() {
                return Err(TrainError::Train(format!("non-finite loss {lv} at step {step}")));
            }
            sums.total += lv;
            let grads = loss.div_scalar(accum as f64).backward();
            acc.accumulate(&vae.net, GradientsParams::from_grads(grads, &vae.net));
        }
        vae.net = optim.step(lr, vae.net, acc.grads());
        if let Some(d) = if adv { disc.take() } else { None } {
            let mut dacc = GradientsAccumulator::new();
            for (x, fake) in fakes {
                let dl = d_adv_loss(lw.adv_loss, d.forward(x), d.forward(fake));
                sums.d_loss += scalar(&dl);
                let grads = dl.div_scalar(accum as f64).backward();
                dacc.accumulate(&d, GradientsParams::from_grads(grads, &d));
            }
            disc = Some(doptim.step(dlr, d, dacc.grads()));
        }
        let k = accum as f64;
        for v in [&mut sums.total, &mut sums.l1, &mut sums.kl, &mut sums.perceptual, &mut sums.g_adv, &mut sums.d_loss]
        {
            *v /= k;
        }
        step += 1;
        let step_s = t0.elapsed().as_secs_f64();
        log.push(StepRecord { step, epoch, lr, losses: sums.clone(), step_s })?;
        let sps = (step - start_step) as f64 / session_start.elapsed().as_secs_f64().max(1e-9);
        progress(ProgressEvent::Step { step, total_steps: total, epoch, lr, losses: sums, steps_per_s: sps });
        if cfg.run.checkpoint_every > 0 && step % cfg.run.checkpoint_every == 0 && step < total {
            let elapsed = prior_elapsed + session_start.elapsed().as_secs_f64();
            let p = save(step, &vae, &disc, &optim, &doptim, &sched, &dsched, &loader, &log, elapsed)?;
            progress(ProgressEvent::Checkpoint { step, path: p.clone() });
            last_ckpt = Some(p);
            if !opts.skip_eval {
                let ev = Vae { config: vae.config.clone(), net: vae.net.valid() };
                let pdir = out.join("previews");
                write_preview(&ev, preview_set, &inner, &pdir.join(format!("{}.png", checkpoint::folder_name(step))))?;
                log.loss_curve("VAE training").save_png(&out.join("loss_curve.png"))?;
            }
        }
    }
    let session_wall = session_start.elapsed().as_secs_f64();
    let elapsed = prior_elapsed + session_wall;
    if step > start_step || last_ckpt.is_none() {
        let p = save(step, &vae, &disc, &optim, &doptim, &sched, &dsched, &loader, &log, elapsed)?;
        progress(ProgressEvent::Checkpoint { step, path: p.clone() });
        last_ckpt = Some(p);
    }
    let mut summary = VaeSummary {
        out_dir: out.clone(),
        steps_done: step,
        total_steps: total,
        session_steps: step - start_step,
        session_wall_s: session_wall,
        steps_per_s: (step - start_step) as f64 / session_wall.max(1e-9),
        total_wall_s: elapsed,
        resumed_from,
        stopped_early,
        final_losses: mean_losses(&log.records),
        eval: None,
        last_checkpoint: last_ckpt,
        final_dir: None,
        num_params,
    };
    if opts.stop_at.is_some() && stopped_early {
        return Ok(summary);
    }
    // Final outputs.
    let fin = out.join("final");
    std::fs::create_dir_all(&fin).map_err(|e| TrainError::io(&fin, e))?;
    vae.save_safetensors(&fin.join("vae.safetensors"))?;
    write_json(&fin.join("vae_config.json"), &vae.config)?;
    text2ct_io::error::atomic_write_bytes(&fin.join("train_config.toml"), cfg.to_toml_string()?.as_bytes())?;
    log.loss_curve("VAE training").save_png(&out.join("loss_curve.png"))?;
    log.loss_curve("VAE training").save_png(&fin.join("loss_curve.png"))?;
    if !opts.skip_eval {
        let ev = Vae { config: vae.config.clone(), net: vae.net.valid() };
        write_preview(&ev, preview_set, &inner, &fin.join("recon_preview.png"))?;
        if let Some(vs) = &val_set {
            summary.eval = Some(evaluate(&ev, vs, cfg.run.eval_max_items, progress)?);
        }
    }
    summary.final_dir = Some(fin.clone());
    write_json(&fin.join("metrics.json"), &summary)?;
    Ok(summary)
}

/// The VAE config of a trained model folder (`vae_config.json`).
pub fn read_vae_config(path: &Path) -> Result<VaeConfig> {
    Ok(VaeConfig::from_json_file(path)?)
}
