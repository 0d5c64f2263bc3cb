//! Text2CT's 3D CLIP (`CLIP3DModel` inside `FrozenCLIP3D`): the text encoder
//! ([`crate::clip_text`]), the CT-ViT vision encoder ([`crate::ctvit`]), the two bias-less
//! projections and `logit_scale`, with the checkpoint's key set (`model.` prefix):
//! `model.text_model.*`, `model.text_projection.weight`, `model.vision_model.*`,
//! `model.visual_projection.weight` `[projection_dim, h*w*dim]`, `model.logit_scale` (0-d).
//!
//! [`Clip3d::load`] reads `CLIP3D_Finding_Impression_30ep.pt` strictly. Generation only needs the
//! text half: [`Clip3d::load_text_only`] skips (does not even read) the vision tensors, which are
//! ~600 M parameters of `visual_projection`.
//!
//! [`clip_loss`] is the symmetric InfoNCE loss of the CLIP training (RAGText2CT's script).

use std::path::Path;

use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::blocks::{InitSource, ParamKind, ParamSource, StateDictSource};
use crate::clip_text::{
    l2_normalize, linear, strict_finish, ClipTextConfig, ClipTextEncoder, Export, CLIP_POSITION_IDS_KEY,
    CLIP_TEXT_ANCHOR_KEY,
};
use crate::ctvit::{pool_tokens, CtVit, CtVitConfig};
use crate::error::{ModelError, Result};
use crate::weights::StateDict;

/// `ln(1 / 0.07)`, CLIP's initial `logit_scale`.
pub const LOGIT_SCALE_INIT: f64 = 2.6592;
/// Upper clamp of `logit_scale` in training: `ln(100)`.
pub const LOGIT_SCALE_MAX: f64 = 4.605_170_185_988_091;

fn d_logit() -> f64 {
    LOGIT_SCALE_INIT
}

/// The 3D CLIP's configuration: text and vision encoders and the shared projection dimension.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Clip3dConfig {
    pub text_config: ClipTextConfig,
    pub vision_config: CtVitConfig,
    /// Output dimension of both projections (768 for Text2CT). Must equal
    /// `text_config.projection_dim`.
    pub projection_dim: usize,
    #[serde(default = "d_logit")]
    pub logit_scale_init_value: f64,
}

impl Clip3dConfig {
    /// Text2CT's `FrozenCLIP3D(max_length=512, vision_embed_dim=786432)`.
    pub fn text2ct() -> Self {
        Clip3dConfig {
            text_config: ClipTextConfig::text2ct(),
            vision_config: CtVitConfig::text2ct(),
            projection_dim: 768,
            logit_scale_init_value: LOGIT_SCALE_INIT,
        }
    }

    /// A config for the text half only (the vision config is Text2CT's and is not used).
    pub fn text_only(text: ClipTextConfig) -> Self {
        Clip3dConfig {
            projection_dim: text.projection_dim,
            text_config: text,
            vision_config: CtVitConfig::text2ct(),
            logit_scale_init_value: LOGIT_SCALE_INIT,
        }
    }

    pub fn from_json_str(s: &str) -> Result<Self> {
        let cfg: Clip3dConfig =
            serde_json::from_str(s).map_err(|e| ModelError::Config(format!("bad CLIP3D JSON: {e}")))?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn from_json_file(path: &Path) -> Result<Self> {
        let s = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
        Self::from_json_str(&s).map_err(|e| ModelError::Config(format!("{}: {e}", path.display())))
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("serialisable")
    }

    pub fn validate(&self) -> Result<()> {
        self.text_config.validate()?;
        self.vision_config.validate()?;
        if self.projection_dim == 0 {
            return Err(ModelError::Config("projection_dim must be positive".into()));
        }
        if self.text_config.projection_dim != self.projection_dim {
            return Err(ModelError::Config(format!(
                "text_config.projection_dim {} differs from projection_dim {}",
                self.text_config.projection_dim, self.projection_dim
            )));
        }
        Ok(())
    }
}

/// The vision half: CT-ViT plus `visual_projection`.
#[derive(Module, Debug)]
pub struct ClipVisionEncoder {
    pub vision_model: CtVit,
    pub visual_projection: Linear,
}

/// Key prefixes of the vision half (after the `model.` prefix).
fn is_vision_key(k: &str) -> bool {
    k.starts_with("vision_model.") || k.starts_with("visual_projection.")
}

impl ClipVisionEncoder {
    fn build(cfg: &Clip3dConfig, src: &mut dyn ParamSource, dev: &Device) -> Self {
        let mut sub = Prefixed { inner: src, prefix: "vision_model." };
        let vision_model = CtVit::build(&cfg.vision_config, &mut sub, dev);
        let visual_projection =
            linear(src, "visual_projection", cfg.vision_config.embed_dim(), cfg.projection_dim, false, dev);
        ClipVisionEncoder { vision_model, visual_projection }
    }

    /// Pre-projection image feature `[B, h*w*dim]`: quantised tokens, mean over t, flattened.
    pub fn features(&self, video: Tensor<5>) -> Tensor<2> {
        pool_tokens(self.vision_model.forward(video))
    }

    /// `FrozenCLIP3D.encode_vision` without the unsqueeze: projected, L2-normalised `[B, P]`.
    ///
    /// # Panics
    /// On an input of the wrong shape (see [`CtVit::check_input`]).
    pub fn encode(&self, video: Tensor<5>) -> Tensor<2> {
        l2_normalize(self.visual_projection.forward(self.features(video)))
    }
}

/// A source that prefixes every key (to build a sub-module under a name).
struct Prefixed<'a> {
    inner: &'a mut dyn ParamSource,
    prefix: &'a str,
}

impl ParamSource for Prefixed<'_> {
    fn take(&mut self, key: &str, shape: &[usize], kind: ParamKind) -> Vec<f32> {
        self.inner.take(&format!("{}{key}", self.prefix), shape, kind)
    }
}

/// The 3D CLIP (`CLIP3DModel`). `vision` is `None` when only the text half was loaded.
#[derive(Module, Debug)]
pub struct Clip3d {
    pub text: ClipTextEncoder,
    pub vision: Option<ClipVisionEncoder>,
    /// The 0-d `logit_scale`, held as `[1]`.
    pub logit_scale: Param<Tensor<1>>,
}

impl Clip3d {
    fn build(cfg: &Clip3dConfig, src: &mut dyn ParamSource, with_vision: bool, fresh: bool, dev: &Device) -> Self {
        let text = ClipTextEncoder::build(src, &cfg.text_config, cfg.projection_dim, dev);
        let vision = with_vision.then(|| ClipVisionEncoder::build(cfg, src, dev));
        let ls = src.take("logit_scale", &[], ParamKind::Zeros);
        let ls = if fresh { vec![cfg.logit_scale_init_value as f32] } else { ls };
        let logit_scale = Param::from_tensor(Tensor::from_data(TensorData::new(ls, [1]), dev));
        Clip3d { text, vision, logit_scale }
    }

    /// Freshly initialised (seeded), both halves.
    pub fn new(cfg: &Clip3dConfig, seed: u64, dev: &Device) -> Result<Self> {
        cfg.validate()?;
        let mut src = InitSource::new(seed);
        Ok(Self::build(cfg, &mut src, true, true, dev))
    }

    /// Strictly from a state dict with the prefix removed (`text_model.*`, ..., `logit_scale`;
    /// `text_model.embeddings.position_ids` optional, `arange` when present).
    pub fn from_state_dict(cfg: &Clip3dConfig, mut sd: StateDict, dev: &Device, origin: &Path) -> Result<Self> {
        cfg.validate()?;
        let pid = sd.take_position_ids(CLIP_POSITION_IDS_KEY, cfg.text_config.max_position_embeddings);
        let mut src = StateDictSource::new(sd);
        let m = Self::build(cfg, &mut src, true, false, dev);
        strict_finish(src, pid).map_err(|e| ModelError::weights(origin, e))?;
        Ok(m)
    }

    /// Load a CLIP3D checkpoint (`.pt`, keys `model.*` possibly nested/prefixed further, or
    /// `.safetensors`). Strict: one error names every missing, unexpected and mis-shaped key.
    pub fn load(cfg: &Clip3dConfig, path: &Path, dev: &Device) -> Result<Self> {
        cfg.validate()?;
        let sd = StateDict::read(path)?.select_by_anchor(CLIP_TEXT_ANCHOR_KEY, path)?;
        Self::from_state_dict(cfg, sd, dev, path)
    }

    /// Load only the text half (text encoder, `text_projection`, `logit_scale`): the vision
    /// tensors (`vision_model.*`, `visual_projection.*`) are skipped unread. Every other key must
    /// match the text half exactly; `logit_scale` may be absent (then the config's initial value).
    pub fn load_text_only(cfg: &Clip3dConfig, path: &Path, dev: &Device) -> Result<Self> {
        cfg.text_config.validate()?;
        if cfg.text_config.projection_dim != cfg.projection_dim {
            return Err(ModelError::Config(format!(
                "text_config.projection_dim {} differs from projection_dim {}",
                cfg.text_config.projection_dim, cfg.projection_dim
            )));
        }
        let keep = |name: &str| !(name.contains("vision_model.") || name.contains("visual_projection."));
        let mut sd = StateDict::read_filtered(path, &keep)?.select_by_anchor(CLIP_TEXT_ANCHOR_KEY, path)?;
        sd.tensors.retain(|k, _| !is_vision_key(k));
        let pid = sd.take_position_ids(CLIP_POSITION_IDS_KEY, cfg.text_config.max_position_embeddings);
        let has_scale = sd.tensors.contains_key("logit_scale");
        let mut src = StateDictSource::new(sd);
        let mut m = Self::build(cfg, &mut src, false, false, dev);
        if !has_scale {
            src.missing.retain(|k| !k.starts_with("logit_scale "));
        }
        strict_finish(src, pid).map_err(|e| ModelError::weights(path, e))?;
        if !has_scale {
            m.logit_scale = Param::from_tensor(Tensor::from_data(
                TensorData::new(vec![cfg.logit_scale_init_value as f32], [1]),
                dev,
            ));
        }
        Ok(m)
    }

    /// Normalised text embeddings `[B, P]` (see [`ClipTextEncoder::encode`]).
    pub fn encode_text(&self, ids: Tensor<2, Int>) -> Tensor<2> {
        self.text.encode(ids)
    }

    /// Normalised image embeddings `[B, P]`; an error when the vision half was not loaded or the
    /// input has the wrong shape.
    pub fn encode_volume(&self, video: Tensor<5>) -> Result<Tensor<2>> {
        let v = self.vision.as_ref().ok_or_else(|| {
            ModelError::Invalid("the vision half of the CLIP was not loaded (text-only model)".into())
        })?;
        v.vision_model.check_input(video.dims())?;
        Ok(v.encode(video))
    }

    /// All parameters and buffers with the checkpoint's names, without the `model.` prefix
    /// (prepend it with [`StateDict`] key mapping to write a Text2CT-layout file).
    pub fn to_state_dict(&self) -> Result<StateDict> {
        let mut ex = Export::default();
        self.text.export(&mut ex);
        if let Some(v) = &self.vision {
            v.vision_model.export(&mut ex, "vision_model");
            ex.linear("visual_projection", &v.visual_projection);
        }
        ex.put_shaped("logit_scale".into(), self.logit_scale.val(), vec![]);
        ex.finish()
    }
}

/// Symmetric InfoNCE (CLIP) loss: with `s = exp(clamp(logit_scale, 0, ln 100))` and the rows of
/// `img`, `txt` (`[B, P]`) re-normalised, `logits = s * txt . img^T`; the loss is the mean of the
/// cross-entropies of `logits` (text -> image) and `logits^T` (image -> text) with the diagonal as
/// targets. `logit_scale` is `[1]`. Differentiable in all three (the clamp stops the gradient of
/// `logit_scale` outside the range).
pub fn clip_loss(img: Tensor<2>, txt: Tensor<2>, logit_scale: Tensor<1>) -> Tensor<1> {
    clip_loss_with_negatives(img, txt, None, logit_scale)
}

/// [`clip_loss`] with `extra` texts (`[M, P]`) that belong to no volume of the batch: in the
/// image → text direction each volume's softmax runs over the `B` batch texts and the `M` extra
/// ones (its target stays its own text); the text → image direction is unchanged. With hard
/// negatives as extras (e.g. a report with its sides swapped, which the trainer builds), a volume
/// must tell its report from one that differs only there. No extras (`None` or `M = 0`) is
/// [`clip_loss`].
pub fn clip_loss_with_negatives(
    img: Tensor<2>,
    txt: Tensor<2>,
    extra: Option<Tensor<2>>,
    logit_scale: Tensor<1>,
) -> Tensor<1> {
    let [b, _] = img.dims();
    let dev = img.device();
    let scale = logit_scale.clamp(0.0, LOGIT_SCALE_MAX).exp().reshape([1, 1]);
    let img = l2_normalize(img);
    let logits = l2_normalize(txt).matmul(img.clone().transpose()) * scale.clone();
    // Image -> text: the transposed batch logits, then one column per extra text.
    let i2t = match extra.filter(|e| e.dims()[0] > 0) {
        Some(e) => Tensor::cat(vec![logits.clone().transpose(), img.matmul(l2_normalize(e).transpose()) * scale], 1),
        None => logits.clone().transpose(),
    };
    let ce = |l: Tensor<2>| {
        let cols = l.dims()[1];
        let eye = Tensor::<2>::from_data(
            TensorData::new(
                (0..b * cols).map(|i| if i / cols == i % cols { 1.0f32 } else { 0.0 }).collect::<Vec<_>>(),
                [b, cols],
            ),
            &dev,
        );
        (log_softmax(l, 1) * eye).sum().neg().div_scalar(b as f64)
    };
    (ce(logits) + ce(i2t)).div_scalar(2.0)
}
