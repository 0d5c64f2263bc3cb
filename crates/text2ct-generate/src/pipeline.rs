//! The text-to-CT pipeline: tokenizer → frozen text encoder (Text2CT's 3D CLIP, or MiniLM for the CLIP
//! ablation; [`crate::text_encoder`]) → latent diffusion with classifier-free guidance → MAISI VAE decoder
//! (sliding window) → HU volume.
//!
//! As Text2CT's inference code runs it (`../shared/reference/text2ct-upstream.md` §1.5.2): noise
//! `[1, 4, X/4, Y/4, Z/4]`; for each step `v = v_u + w (v_c − v_u)` with the unconditional
//! context all zeros (or, with a negative prompt, `v_u` taken at the negative prompt's context, as
//! diffusers' `negative_prompt`); rectified-flow steps `x ← x + v·dt`; decode `z / scale_factor`; HU =
//! `x·2000 − 1000`, clipped to [−1000, 1000] and truncated to int16 as NumPy does.
//!
//! The sampling loop itself is [`text2ct_diffusion::sample_guided`] (shared with the guidance sweep
//! and the prompt-effects check, which sample through this pipeline); this module supplies the U-Net
//! call for each guidance branch.
//!
//! Noise comes from a ChaCha8 stream seeded by the job's seed (so seeds reproduce within text2ct,
//! on any machine) or from a `.npy` the caller passes (to reproduce a reference run exactly). DDPM's
//! per-step noise comes from another stream of the same seed ([`NoiseStream::sampler`]), so it
//! changes with the seed even when the initial noise is given.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use text2ct_diffusion::{sample_guided, Branches, NoiseStream, Sampler, Scheduler};
use text2ct_io::{Affine, Volume};
use text2ct_models::burn::prelude::{Device, Int, Tensor, TensorData};
use text2ct_models::unet::{Unet, UnetCond, UnetConfig};
use text2ct_models::vae::{Vae, VaeConfig};
use text2ct_models::Precision;

use crate::card::ModelCard;
use crate::error::{GenerateError, Result};
use crate::output::{sha256_bytes, sha256_file, write_outputs, Sidecar, Timings};
use crate::prompts::Job;
use crate::text_encoder::TextEncoder;

/// How to sample (defaults from the card; flags override).
#[derive(Clone, Debug)]
pub struct SampleOptions {
    pub sampler: Sampler,
    pub steps: usize,
    pub guidance: f32,
    pub exact: bool,
    /// Output size X, Y, Z (multiples of 4 × the U-Net's size multiple).
    pub size: [usize; 3],
    /// VAE sliding window in latent voxels (clipped to the latent); `None` decodes in one pass.
    /// Peak memory grows with the window's volume, not the output's.
    pub decode_window: Option<[usize; 3]>,
    /// One-pass decoding (`decode_window: None`) in this many slabs of the largest layer
    /// (`Vae::decode_split`, MAISI's `num_splits`): the whole latent once, with bounded temporaries;
    /// 1 (the default) is the plain `Vae::decode`. Must be 1 with a sliding window.
    pub decode_splits: usize,
    /// A negative prompt: guidance steers away from it (`v = v_n + w (v_c − v_n)`, `v_n` at the
    /// negative prompt's context) instead of from the zero context. `None`: the release's rule.
    pub negative_prompt: Option<String>,
    /// Stops the job between sampling steps (and before decoding) once set from another thread:
    /// the generation returns [`GenerateError::Cancelled`] and writes nothing (`text2ct serve`'s
    /// cancel and Ctrl-C). Never set by default.
    pub cancel: CancelFlag,
}

/// A flag another thread sets to stop a generation at the next sampling step
/// ([`SampleOptions::cancel`]). Clones share the flag.
#[derive(Clone, Debug, Default)]
pub struct CancelFlag(Arc<AtomicBool>);

impl CancelFlag {
    pub fn new() -> CancelFlag {
        CancelFlag::default()
    }

    /// Ask the generation to stop.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    /// `Err(Cancelled)` once cancelled.
    pub fn check(&self) -> Result<()> {
        if self.is_cancelled() {
            return Err(GenerateError::Cancelled);
        }
        Ok(())
    }
}

impl SampleOptions {
    /// Check what does not depend on the model: at least one step, a finite guidance scale
    /// within ±[`crate::limits::MAX_GUIDANCE`], a positive decode window. Front ends call it
    /// before doing any work.
    pub fn validate(&self) -> Result<()> {
        if self.steps == 0 {
            return Err(GenerateError::Invalid("the number of sampling steps must be at least 1".into()));
        }
        crate::limits::check_guidance(self.guidance)?;
        if self.negative_prompt.as_deref().is_some_and(|n| n.trim().is_empty()) {
            return Err(GenerateError::Invalid(
                "the negative prompt is empty (leave it out for the zero context)".into(),
            ));
        }
        if self.decode_window.is_some_and(|w| w.contains(&0)) {
            return Err(GenerateError::Invalid("the decode window must be positive on every axis".into()));
        }
        if self.decode_splits == 0 || self.decode_splits > MAX_DECODE_SPLITS {
            return Err(GenerateError::Invalid(format!(
                "the number of decode splits must be in 1..={MAX_DECODE_SPLITS}, got {}",
                self.decode_splits
            )));
        }
        if self.decode_window.is_some() && self.decode_splits != 1 {
            return Err(GenerateError::Invalid(
                "decode splits apply to one-pass decoding, not to a sliding window".into(),
            ));
        }
        Ok(())
    }

    /// Choose the decoding from a front end's options: `mode` (one pass or sliding window),
    /// `window` (latent voxels; implies a sliding window) and `splits` (implies one pass), each
    /// `None` where not given. A sliding window without `window` takes the card's
    /// (`card_window`); one pass without `splits` takes `default_splits` (the VAE config's
    /// `num_splits`). Contradictions are errors naming the options.
    pub fn set_decode(
        &mut self,
        mode: Option<DecodeMode>,
        window: Option<[usize; 3]>,
        splits: Option<usize>,
        card_window: Option<[usize; 3]>,
        default_splits: usize,
    ) -> Result<()> {
        let bad = |m: &str| Err(GenerateError::Invalid(m.into()));
        let mode = match (mode, window, splits) {
            (_, Some(_), Some(_)) => {
                return bad("--decode-window (a sliding window) and --decode-splits (one pass) exclude each other")
            }
            (Some(DecodeMode::OnePass), Some(_), _) => {
                return bad("--decode one-pass takes no --decode-window (that is the sliding window's)")
            }
            (Some(DecodeMode::Sliding), _, Some(_)) => {
                return bad("--decode sliding takes no --decode-splits (they split the one-pass decode)")
            }
            (Some(m), _, _) => m,
            (None, Some(_), _) => DecodeMode::Sliding,
            (None, None, Some(_)) => DecodeMode::OnePass,
            (None, None, None) => return Ok(()),
        };
        match mode {
            DecodeMode::Sliding => {
                let Some(w) = window.or(card_window) else {
                    return bad("--decode sliding needs --decode-window X,Y,Z (the model card has no window)");
                };
                self.decode_window = Some(w);
                self.decode_splits = 1;
            }
            DecodeMode::OnePass => {
                self.decode_window = None;
                self.decode_splits = splits.unwrap_or(default_splits.max(1));
            }
        }
        self.validate()
    }
}

/// The most slabs a one-pass decode may be split into.
pub const MAX_DECODE_SPLITS: usize = 4096;

/// How the VAE decodes a latent: the whole latent in one pass, or window by window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeMode {
    /// The whole latent at once (optionally in slabs: `SampleOptions::decode_splits`).
    OnePass,
    /// MONAI's Gaussian-blended sliding window (`SampleOptions::decode_window`, the card's overlap).
    Sliding,
}

impl std::str::FromStr for DecodeMode {
    type Err = GenerateError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "one-pass" => Ok(DecodeMode::OnePass),
            "sliding" => Ok(DecodeMode::Sliding),
            o => Err(GenerateError::Invalid(format!("decode mode {o:?} is not one-pass or sliding"))),
        }
    }
}

/// One generated volume before it is written: the volume, whether the prompt was truncated, and
/// how long each stage took.
pub struct Generated {
    pub volume: Volume,
    pub prompt_truncated: bool,
    /// Whether the negative prompt (if any) was cut to the tokenizer's maximum length.
    pub negative_prompt_truncated: bool,
    pub timings: Timings,
}

/// A loaded model.
pub struct Pipeline {
    pub dir: PathBuf,
    pub card: ModelCard,
    pub vae: Vae,
    pub unet: Unet,
    /// The text encoder with its tokenizer (the kind the card names).
    pub text: TextEncoder,
    pub scale_factor: f64,
    /// Where the scale factor came from ("card", "U-Net checkpoint", "fallback").
    pub scale_factor_source: &'static str,
    pub device: Device,
    pub model_hash: String,
    pub weights_sha256: Vec<(String, String)>,
}

fn model_err(e: impl std::fmt::Display) -> GenerateError {
    GenerateError::Invalid(e.to_string())
}

impl Pipeline {
    /// Load the three networks named by `dir/model.json`, strictly: every weights file is read in
    /// full and matched against its network's config (one error lists every file that does not
    /// load, with its missing, unexpected and mis-shaped keys).
    pub fn load(dir: &Path, device: &Device) -> Result<Pipeline> {
        let card = ModelCard::load(dir)?;
        let cfg = |c| -> Result<String> { Ok(ModelCard::config_json(dir, c)?.to_string()) };
        let vae = (|| {
            let c =
                VaeConfig::from_json_str(&cfg(&card.vae.config)?).map_err(|e| model_err(format!("VAE config: {e}")))?;
            Vae::load(&c, &ModelCard::resolve(dir, "VAE weights", &card.vae.weights)?, device).map_err(model_err)
        })();
        let unet = (|| {
            let c = UnetConfig::from_json_str(&cfg(&card.unet.config)?)
                .map_err(|e| model_err(format!("U-Net config: {e}")))?;
            let ck = Unet::load_checkpoint(&c, &ModelCard::resolve(dir, "U-Net weights", &card.unet.weights)?, device)
                .map_err(model_err)?;
            Ok::<_, GenerateError>((c, ck))
        })();
        let text = (|| {
            let tok_file = match &card.tokenizer.file {
                Some(f) => Some(ModelCard::resolve(dir, "tokenizer", f)?),
                None => None,
            };
            let w = ModelCard::resolve(dir, "text encoder weights", &card.text_encoder.weights)?;
            TextEncoder::load(card.text_encoder.kind, &cfg(&card.text_encoder.config)?, &w, tok_file.as_deref(), device)
        })();
        let (mut vae, (unet_cfg, mut ck), text) = match (vae, unet, text) {
            (Ok(v), Ok(u), Ok(t)) => (v, u, t),
            (v, u, t) => {
                let errs: Vec<String> =
                    [v.err(), u.err(), t.err()].into_iter().flatten().map(|e| format!("- {e}")).collect();
                return Err(GenerateError::Card(format!(
                    "{}: the model does not load ({} of its 3 networks):\n{}",
                    dir.join(ModelCard::FILE).display(),
                    errs.len(),
                    errs.join("\n")
                )));
            }
        };
        let precision = card.precision.unwrap_or_default();
        vae.set_precision(precision);
        ck.unet.set_precision(precision);
        if card.tokenizer.max_length > text.max_positions() {
            return Err(GenerateError::Card(format!(
                "{}: tokenizer max_length {} exceeds the text encoder's {} positions",
                dir.join(ModelCard::FILE).display(),
                card.tokenizer.max_length,
                text.max_positions()
            )));
        }
        let (scale_factor, scale_factor_source) = match (card.scale_factor, ck.scale_factor) {
            (Some(s), _) => (s, "card"),
            (None, Some(s)) => (s as f64, "U-Net checkpoint"),
            (None, None) => (card.fallback_scale_factor, "fallback (the U-Net file has none)"),
        };
        if unet_cfg.cross_attention_dim.unwrap_or(0) != text.dim() {
            return Err(GenerateError::Card(format!(
                "the U-Net's cross_attention_dim ({:?}) differs from the {} text encoder's embedding size ({})",
                unet_cfg.cross_attention_dim,
                text.kind().name(),
                text.dim()
            )));
        }
        let mut weights_sha256 = Vec::new();
        for (what, f) in card.files() {
            weights_sha256.push((f.clone(), sha256_file(&ModelCard::resolve(dir, what, &f)?)?));
        }
        let card_json = serde_json::to_vec(&card).map_err(model_err)?;
        let mut all = card_json.clone();
        for (f, h) in &weights_sha256 {
            all.extend_from_slice(f.as_bytes());
            all.extend_from_slice(h.as_bytes());
        }
        let model_hash = sha256_bytes(&all);
        Ok(Pipeline {
            dir: dir.to_path_buf(),
            card,
            vae,
            unet: ck.unet,
            text,
            scale_factor,
            scale_factor_source,
            device: device.clone(),
            model_hash,
            weights_sha256,
        })
    }

    /// The arithmetic of the U-Net's and the VAE's 3x3x3 convolutions (the card's `precision`,
    /// f32 when it has none, until changed here).
    pub fn set_precision(&mut self, precision: Precision) {
        self.unet.set_precision(precision);
        self.vae.set_precision(precision);
    }

    /// The precision asked for ([`Pipeline::set_precision`]).
    pub fn precision(&self) -> Precision {
        self.unet.precision()
    }

    /// The precision the convolutions actually run in: f32 off the CPU (the bf16 kernels are CPU
    /// kernels) and on CPUs without AVX512-BF16 (see [`Precision::on_this_cpu`]).
    pub fn precision_in_effect(&self) -> Precision {
        if self.device != Device::flex() {
            return Precision::F32;
        }
        self.precision().on_this_cpu()
    }

    /// Default sampling options from the card.
    pub fn default_options(&self) -> SampleOptions {
        SampleOptions {
            sampler: self.card.sampler.kind,
            steps: self.card.sampler.steps,
            guidance: self.card.sampler.guidance,
            exact: self.card.sampler.exact,
            size: self.card.output.size,
            decode_window: self.card.decode.window,
            decode_splits: 1,
            negative_prompt: None,
            cancel: CancelFlag::default(),
        }
    }

    /// The one-pass decode's default number of splits: the VAE config's `num_splits` (MAISI's 4).
    pub fn default_decode_splits(&self) -> usize {
        self.vae.config.num_splits.max(1)
    }

    /// How `opts` decodes a latent of `latent` voxels, in words (for the sidecar and the logs).
    pub fn describe_decode(&self, opts: &SampleOptions, latent: [usize; 3]) -> String {
        match opts.decode_window {
            Some(w) => format!(
                "sliding window {:?} latent voxels, overlap {}",
                [w[0].min(latent[0]), w[1].min(latent[1]), w[2].min(latent[2])],
                self.card.decode.overlap
            ),
            None if opts.decode_splits > 1 => {
                format!("one pass in {} slabs along x", opts.decode_splits)
            }
            None => "one pass".into(),
        }
    }

    /// Check a size against the VAE (×4) and the U-Net's divisibility.
    pub fn check_size(&self, size: [usize; 3]) -> Result<[usize; 3]> {
        let f = 4 * self.unet.config.size_multiple();
        if size.iter().any(|&s| s == 0 || s % f != 0) {
            return Err(GenerateError::Invalid(format!(
                "output size {size:?} must be positive multiples of {f} (4 for the VAE x {} for the U-Net)",
                self.unet.config.size_multiple()
            )));
        }
        Ok([size[0] / 4, size[1] / 4, size[2] / 4])
    }

    /// Tokenize and encode a prompt to the context `[1, 1, D]`; reports truncation.
    pub fn encode_prompt(&self, prompt: &str) -> Result<(Tensor<3>, bool)> {
        if prompt.trim().is_empty() {
            return Err(GenerateError::Prompts("the prompt is empty".into()));
        }
        let (ctx, truncated) = self.text.encode(&[prompt], self.card.tokenizer.max_length)?;
        let d = ctx.dims()[1];
        let ctx = match &self.card.conditioning.context_norm {
            None => ctx,
            Some(n) => {
                if n.mean.len() != d {
                    return Err(GenerateError::Invalid(format!(
                        "conditioning.context_norm has {} dimensions, the text encoder gives {d}",
                        n.mean.len()
                    )));
                }
                let mut v = ctx.into_data().convert::<f32>().try_into_vec::<f32>().map_err(model_err)?;
                n.apply(&mut v);
                Tensor::from_data(TensorData::new(v, [1, d]), &self.device)
            }
        };
        Ok((ctx.reshape([1, 1, d]), truncated[0]))
    }

    /// Standard-normal noise for a latent, from a seed ([`NoiseStream::latent`]).
    pub fn noise(&self, latent: [usize; 3], seed: u64) -> Tensor<5> {
        let c = self.unet.config.in_channels;
        NoiseStream::latent(seed).normal_tensor([1, c, latent[0], latent[1], latent[2]], &self.device)
    }

    fn cond(&self, ctx: Option<Tensor<3>>, batch: usize) -> UnetCond {
        let dev = &self.device;
        let c = &self.card.conditioning;
        UnetCond {
            context: ctx,
            class_labels: c
                .class_label
                .map(|l| Tensor::<1, Int>::from_data(TensorData::new(vec![l; batch], [batch]), dev)),
            spacing: c.spacing_input.map(|s| {
                let v: Vec<f32> = (0..batch).flat_map(|_| s).collect();
                Tensor::<2>::from_data(TensorData::new(v, [batch, 3]), dev)
            }),
            ..Default::default()
        }
    }

    /// The U-Net's output at timestep `t` for the guidance `branches` of [`sample_guided`]: `x` at
    /// the prompt's context `ctx`, at the unconditional one `uncond` (zeros or a negative prompt's
    /// context), or — for [`Branches::Both`] — `x`'s two halves at `uncond` then `ctx`, in one call.
    fn unet_branches(
        &self,
        x: Tensor<5>,
        t: f32,
        branches: Branches,
        ctx: &Tensor<3>,
        uncond: &Tensor<3>,
    ) -> Result<Tensor<5>> {
        let c = match branches {
            Branches::Cond => ctx.clone(),
            Branches::Uncond => uncond.clone(),
            Branches::Both => Tensor::cat(vec![uncond.clone(), ctx.clone()], 0),
        };
        let b = x.dims()[0];
        let tt = Tensor::<1>::from_data(TensorData::new(vec![t; b], [b]), &self.device);
        self.unet.forward_cond(x, tt, &self.cond(Some(c), b)).map_err(model_err)
    }

    /// Run the sampler from `x` (noise) to a clean latent with the zero unconditional context
    /// (the release's rule). `seed` is the job's: DDPM's per-step noise comes from it.
    /// `progress(step, total)`.
    pub fn sample(
        &self,
        x: Tensor<5>,
        ctx: &Tensor<3>,
        opts: &SampleOptions,
        seed: u64,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Tensor<5>> {
        self.sample_with_uncond(x, ctx, None, opts, seed, progress)
    }

    /// [`Pipeline::sample`] with the unconditional branch at `uncond` (e.g. a negative prompt's
    /// context from [`Pipeline::encode_prompt`]) instead of zeros; `None` is `sample`.
    pub fn sample_with_uncond(
        &self,
        x: Tensor<5>,
        ctx: &Tensor<3>,
        uncond: Option<&Tensor<3>>,
        opts: &SampleOptions,
        seed: u64,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Tensor<5>> {
        // The unconditional context, made once for all steps.
        let uncond = match uncond {
            Some(u) if u.dims() != ctx.dims() => {
                return Err(GenerateError::Invalid(format!(
                    "the unconditional context has shape {:?}, the prompt's {:?}",
                    u.dims(),
                    ctx.dims()
                )))
            }
            Some(u) => u.clone(),
            None => Tensor::<3>::zeros(ctx.dims(), &self.device),
        };
        let d = x.dims();
        let numel = (d[2] * d[3] * d[4]) as u64;
        let scheduler = Scheduler::text2ct(opts.sampler, opts.steps, numel, opts.exact)?;
        let mut rng = NoiseStream::sampler(seed);
        sample_guided(
            &scheduler,
            x,
            opts.guidance,
            &mut rng,
            |xb, t, branches| {
                opts.cancel.check()?;
                self.unet_branches(xb, t, branches, ctx, &uncond)
            },
            progress,
        )
    }

    /// Decode a latent to HU: `z / scale_factor` → VAE (sliding window per the card) →
    /// `x·2000 − 1000`, clipped, truncated toward zero like NumPy's int16 cast.
    pub fn decode(&self, z: Tensor<5>, size: [usize; 3]) -> Result<Volume> {
        self.decode_with_window(z, size, self.card.decode.window)
    }

    /// [`Pipeline::decode`] with an explicit sliding window (latent voxels; `None`: one pass).
    pub fn decode_with_window(&self, z: Tensor<5>, size: [usize; 3], window: Option<[usize; 3]>) -> Result<Volume> {
        self.decode_with(z, size, window, 1)
    }

    /// [`Pipeline::decode`] with an explicit sliding window (latent voxels), or, with `window`
    /// `None`, one pass over the whole latent in `splits` slabs (`Vae::decode_split`; 1: plain).
    pub fn decode_with(
        &self,
        z: Tensor<5>,
        size: [usize; 3],
        window: Option<[usize; 3]>,
        splits: usize,
    ) -> Result<Volume> {
        if window.is_some_and(|w| w.contains(&0)) {
            return Err(GenerateError::Invalid("the decode window must be positive on every axis".into()));
        }
        let z = z.div_scalar(self.scale_factor as f32);
        let ld = z.dims();
        let out = match window {
            Some(w) => {
                let w = [w[0].min(ld[2]), w[1].min(ld[3]), w[2].min(ld[4])];
                self.vae.decode_sliding_window(z, w, self.card.decode.overlap as f64).map_err(model_err)?
            }
            None => self.vae.decode_split(z, splits).map_err(model_err)?,
        };
        let d = out.dims();
        if [d[2], d[3], d[4]] != size {
            return Err(GenerateError::Invalid(format!("decoder gave {:?}, expected {size:?}", &d[2..])));
        }
        // [1, 1, X, Y, Z] in C order (Z fastest) -> Volume order (X fastest).
        let v = out.into_data().convert::<f32>().try_into_vec::<f32>().map_err(model_err)?;
        let (nx, ny, nz) = (size[0], size[1], size[2]);
        let mut data = vec![0.0f32; v.len()];
        for x in 0..nx {
            for y in 0..ny {
                for z in 0..nz {
                    let hu = text2ct_io::transform::unit_to_hu(v[(x * ny + y) * nz + z]);
                    data[x + nx * (y + ny * z)] = if hu.is_finite() { hu.trunc() } else { f32::NAN };
                }
            }
        }
        let sp = self.card.output.spacing;
        let origin = [0, 1, 2].map(|i| -((size[i] as f64 - 1.0) / 2.0) * sp[i]);
        let vol = Volume::new(size, data, Affine::from_spacing_origin(sp, origin)?)?;
        vol.check_finite()
            .map_err(|e| GenerateError::Invalid(format!("the decoder produced non-finite values: {e}")))?;
        Ok(vol)
    }

    /// Text → volume, nothing written: encode the prompt, draw the seeded noise (or take `noise`,
    /// shape `[1, C, X/4, Y/4, Z/4]`), sample, decode. What `run_job`, the guidance sweep and the
    /// prompt-effects check share.
    pub fn generate_volume(
        &self,
        prompt: &str,
        seed: u64,
        noise: Option<Tensor<5>>,
        opts: &SampleOptions,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Generated> {
        opts.validate()?;
        let latent = self.check_size(opts.size)?;
        crate::memory::check_fits(self, opts)?;
        let t0 = Instant::now();
        let (ctx, truncated) = self.encode_prompt(prompt)?;
        let (uncond, negative_truncated) = match opts.negative_prompt.as_deref() {
            Some(n) => {
                let (u, tr) =
                    self.encode_prompt(n).map_err(|e| GenerateError::Prompts(format!("the negative prompt: {e}")))?;
                (Some(u), tr)
            }
            None => (None, false),
        };
        let t_text = t0.elapsed().as_secs_f64();
        let x = match noise {
            Some(n) => {
                let d = n.dims();
                let want = [1, self.unet.config.in_channels, latent[0], latent[1], latent[2]];
                if d != want {
                    return Err(GenerateError::Invalid(format!("noise has shape {d:?}, expected {want:?}")));
                }
                n
            }
            None => self.noise(latent, seed),
        };
        let t1 = Instant::now();
        let z = self.sample_with_uncond(x, &ctx, uncond.as_ref(), opts, seed, progress)?;
        let t_sample = t1.elapsed().as_secs_f64();
        opts.cancel.check()?;
        let t2 = Instant::now();
        let vol = self.decode_with(z, opts.size, opts.decode_window, opts.decode_splits)?;
        let t_decode = t2.elapsed().as_secs_f64();
        Ok(Generated {
            volume: vol,
            prompt_truncated: truncated,
            negative_prompt_truncated: negative_truncated,
            timings: Timings { text: t_text, sampling: t_sample, decoding: t_decode, writing: 0.0 },
        })
    }

    /// Generate one job into `out`, writing NIfTI, PNG and sidecar. `noise` overrides the seeded
    /// noise (shape [1, C, X/4, Y/4, Z/4]).
    pub fn run_job(
        &self,
        job: &Job,
        opts: &SampleOptions,
        out: &Path,
        noise: Option<Tensor<5>>,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Sidecar> {
        let g = self.generate_volume(&job.prompt, job.seed, noise, opts, progress)?;
        let (vol, truncated) = (g.volume, g.prompt_truncated);
        let mut sc = Sidecar {
            id: job.id.clone(),
            prompt: job.prompt.clone(),
            prompt_truncated: truncated,
            negative_prompt: opts.negative_prompt.clone(),
            negative_prompt_truncated: g.negative_prompt_truncated,
            seed: job.seed,
            sampler: opts.sampler,
            exact: opts.exact,
            steps: opts.steps,
            guidance: opts.guidance,
            scale_factor: self.scale_factor,
            model: self.card.name.clone(),
            model_hash: self.model_hash.clone(),
            weights_sha256: self.weights_sha256.clone(),
            size: vol.dims(),
            spacing: vol.spacing(),
            orientation: vol.orientation(),
            files: vec![],
            timings_s: g.timings,
            decode: self.describe_decode(opts, opts.size.map(|s| s / 4)),
            device: format!("{:?}", self.device),
            precision: self.precision_in_effect(),
            text2ct_version: env!("CARGO_PKG_VERSION").into(),
            note: format!("scale factor from {}; trained on: {}", self.scale_factor_source, self.card.trained_on),
        };
        write_outputs(out, job, &vol, &mut sc)?;
        Ok(sc)
    }
}
