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
//! Noise comes from a ChaCha8 stream seeded by the job's seed (so seeds reproduce within text2ct,
//! on any machine) or from a `.npy` the caller passes (to reproduce a reference run exactly).

use std::path::{Path, PathBuf};
use std::time::Instant;

use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};
use text2ct_diffusion::{
    cfg_combine, BetaSchedule, DdimScheduler, DdpmScheduler, RFlowMode, RFlowScheduler, TimestepSpacing,
};
use text2ct_io::{Affine, Volume};
use text2ct_models::burn::prelude::{Device, Int, Tensor, TensorData};
use text2ct_models::speed::{self, DecodeShape};
use text2ct_models::unet::{Unet, UnetCond, UnetConfig};
use text2ct_models::vae::{Vae, VaeConfig};

use crate::card::ModelCard;
use crate::error::{GenerateError, Result};
use crate::output::{sha256_bytes, sha256_file, write_outputs, Sidecar, Timings};
use crate::prompts::Job;
use crate::text_encoder::TextEncoder;

/// How to sample (defaults from the card; flags override).
#[derive(Clone, Debug)]
pub struct SampleOptions {
    pub sampler: String,
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
}

impl SampleOptions {
    /// The samplers [`Pipeline::sample`] knows.
    pub const SAMPLERS: [&'static str; 3] = ["rflow", "ddpm", "ddim"];

    /// Check what does not depend on the model: a known sampler, at least one step, a finite
    /// guidance scale, a positive decode window. Front ends call it before doing any work.
    pub fn validate(&self) -> Result<()> {
        if !Self::SAMPLERS.contains(&self.sampler.as_str()) {
            return Err(GenerateError::Invalid(format!("sampler {:?} is not rflow, ddpm or ddim", self.sampler)));
        }
        if self.steps == 0 {
            return Err(GenerateError::Invalid("the number of sampling steps must be at least 1".into()));
        }
        if !self.guidance.is_finite() {
            return Err(GenerateError::Invalid(format!("the guidance scale {} is not finite", self.guidance)));
        }
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
    /// Load the three networks named by `dir/model.json`, strictly.
    pub fn load(dir: &Path, device: &Device) -> Result<Pipeline> {
        let card = ModelCard::load(dir)?;
        let cfg = |c| -> Result<String> { Ok(ModelCard::config_json(dir, c)?.to_string()) };
        let vae_cfg = VaeConfig::from_json_str(&cfg(&card.vae.config)?).map_err(model_err)?;
        let unet_cfg = UnetConfig::from_json_str(&cfg(&card.unet.config)?).map_err(model_err)?;
        let text_cfg = cfg(&card.text_encoder.config)?;
        let vae = Vae::load(&vae_cfg, &dir.join(&card.vae.weights), device).map_err(model_err)?;
        let ck = Unet::load_checkpoint(&unet_cfg, &dir.join(&card.unet.weights), device).map_err(model_err)?;
        let tok_file = card.tokenizer.file.as_ref().map(|f| dir.join(f));
        let text = TextEncoder::load(
            card.text_encoder.kind,
            &text_cfg,
            &dir.join(&card.text_encoder.weights),
            tok_file.as_deref(),
            device,
        )?;
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
        for (_, f) in card.files() {
            weights_sha256.push((f.clone(), sha256_file(&dir.join(&f))?));
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

    /// Default sampling options from the card.
    pub fn default_options(&self) -> SampleOptions {
        SampleOptions {
            sampler: self.card.sampler.kind.clone(),
            steps: self.card.sampler.steps,
            guidance: self.card.sampler.guidance,
            exact: self.card.sampler.exact,
            size: self.card.output.size,
            decode_window: self.card.decode.window,
            decode_splits: 1,
            negative_prompt: None,
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

    /// Refuse a decode whose estimated memory (`speed::vae_decode_bytes`) exceeds what this machine
    /// has available, before any work is done (CPU only: a GPU's memory is its own).
    pub fn check_decode_memory(&self, opts: &SampleOptions, latent: [usize; 3]) -> Result<()> {
        if self.device != Device::flex() {
            return Ok(());
        }
        let how = match opts.decode_window {
            Some(window) => DecodeShape::Sliding { window },
            None => DecodeShape::OnePass { splits: opts.decode_splits },
        };
        let need = speed::vae_decode_bytes(&self.vae.config, latent, how);
        let hint = match how {
            DecodeShape::Sliding { .. } => "pass a smaller --decode-window (e.g. 32,32,16)",
            DecodeShape::OnePass { .. } => {
                "decode with a sliding window (--decode-window 32,32,16) or more --decode-splits"
            }
        };
        speed::check_fits(need, &format!("decoding ({})", self.describe_decode(opts, latent)), hint).map_err(model_err)
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

    /// Standard-normal noise for a latent, from a seed.
    pub fn noise(&self, latent: [usize; 3], seed: u64) -> Tensor<5> {
        let c = self.unet.config.in_channels;
        let n = c * latent.iter().product::<usize>();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let v: Vec<f32> = (0..n).map(|_| StandardNormal.sample(&mut rng)).collect();
        Tensor::from_data(TensorData::new(v, [1, c, latent[0], latent[1], latent[2]]), &self.device)
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

    /// The guided model output at timestep `t`: one batched U-Net call for the conditional and
    /// unconditional branches (`w = 1` needs only the conditional one, `w = 0` only the
    /// unconditional one, at `uncond`: zeros or a negative prompt's context).
    fn guided(&self, x: &Tensor<5>, t: f32, ctx: &Tensor<3>, uncond: &Tensor<3>, w: f32) -> Result<Tensor<5>> {
        let dev = &self.device;
        let call = |xb: Tensor<5>, c: Tensor<3>, b: usize| -> Result<Tensor<5>> {
            let tt = Tensor::<1>::from_data(TensorData::new(vec![t; b], [b]), dev);
            self.unet.forward_cond(xb, tt, &self.cond(Some(c), b)).map_err(model_err)
        };
        if w == 1.0 {
            return call(x.clone(), ctx.clone(), 1);
        }
        if w == 0.0 {
            return call(x.clone(), uncond.clone(), 1);
        }
        let out =
            call(Tensor::cat(vec![x.clone(), x.clone()], 0), Tensor::cat(vec![uncond.clone(), ctx.clone()], 0), 2)?;
        let d = out.dims();
        let vu = out.clone().slice([0..1, 0..d[1], 0..d[2], 0..d[3], 0..d[4]]);
        let vc = out.slice([1..2, 0..d[1], 0..d[2], 0..d[3], 0..d[4]]);
        // v = v_u + w (v_c − v_u), as text2ct_diffusion::cfg_combine on tensors.
        Ok(vu.clone() + (vc - vu).mul_scalar(w))
    }

    /// Run the sampler from `x` (noise) to a clean latent with the zero unconditional context
    /// (the release's rule). `progress(step, total)`.
    pub fn sample(
        &self,
        x: Tensor<5>,
        ctx: &Tensor<3>,
        opts: &SampleOptions,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Tensor<5>> {
        self.sample_with_uncond(x, ctx, None, opts, progress)
    }

    /// [`Pipeline::sample`] with the unconditional branch at `uncond` (e.g. a negative prompt's
    /// context from [`Pipeline::encode_prompt`]) instead of zeros; `None` is `sample`.
    pub fn sample_with_uncond(
        &self,
        mut x: Tensor<5>,
        ctx: &Tensor<3>,
        uncond: Option<&Tensor<3>>,
        opts: &SampleOptions,
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
        let _ = cfg_combine; // the slice form of the same rule, tested in text2ct-diffusion
        let d = x.dims();
        let numel = (d[2] * d[3] * d[4]) as u64;
        match opts.sampler.as_str() {
            "rflow" => {
                let s = RFlowScheduler::text2ct()
                    .set_timesteps(opts.steps, numel, RFlowMode::from_exact(opts.exact))
                    .map_err(model_err)?;
                for (i, (&t, &dt)) in s.timesteps.iter().zip(&s.dts).enumerate() {
                    let v = self.guided(&x, t as f32, ctx, &uncond, opts.guidance)?;
                    x = x + v.mul_scalar(dt as f32);
                    progress(i + 1, s.len());
                }
                Ok(x)
            }
            "ddpm" | "ddim" => {
                // The paper's variant: ε-prediction with MAISI's scaled-linear betas.
                let ddim = opts.sampler == "ddim";
                let ddpm_s = DdpmScheduler::new(BetaSchedule::maisi_scaled_linear(), 1000).map_err(model_err)?;
                let ddim_s = DdimScheduler::new(BetaSchedule::maisi_scaled_linear(), 1000).map_err(model_err)?;
                let ts = if ddim {
                    ddim_s.timesteps(opts.steps).map_err(model_err)?
                } else {
                    text2ct_diffusion::inference_timesteps(1000, opts.steps, 0, TimestepSpacing::Leading)
                        .map_err(model_err)?
                };
                let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0x5eed ^ opts.steps as u64);
                let shape = x.dims();
                for (i, &t) in ts.iter().enumerate() {
                    let eps = self.guided(&x, t as f32, ctx, &uncond, opts.guidance)?;
                    let xv = x.clone().into_data().convert::<f32>().try_into_vec::<f32>().map_err(model_err)?;
                    let ev = eps.into_data().convert::<f32>().try_into_vec::<f32>().map_err(model_err)?;
                    let next = if ddim {
                        let prev = ddim_s.prev_timestep(t, opts.steps).map_err(model_err)?;
                        ddim_s.step(&ev, t, prev, &xv, 0.0, None).map_err(model_err)?.prev_sample
                    } else {
                        let noise: Vec<f32> = (0..xv.len()).map(|_| StandardNormal.sample(&mut rng)).collect();
                        ddpm_s.step(&ev, t, &xv, Some(&noise)).map_err(model_err)?.prev_sample
                    };
                    x = Tensor::from_data(TensorData::new(next, shape), &self.device);
                    progress(i + 1, ts.len());
                }
                Ok(x)
            }
            other => Err(GenerateError::Invalid(format!("sampler {other:?} is not rflow, ddpm or ddim"))),
        }
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
                    let hu = (v[(x * ny + y) * nz + z] * 2000.0 - 1000.0).clamp(-1000.0, 1000.0);
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
        self.check_decode_memory(opts, latent)?;
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
        let z = self.sample_with_uncond(x, &ctx, uncond.as_ref(), opts, progress)?;
        let t_sample = t1.elapsed().as_secs_f64();
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
            sampler: opts.sampler.clone(),
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
            text2ct_version: env!("CARGO_PKG_VERSION").into(),
            note: format!("scale factor from {}; trained on: {}", self.scale_factor_source, self.card.trained_on),
        };
        write_outputs(out, job, &vol, &mut sc)?;
        Ok(sc)
    }
}
