//! The 3D-CLIP text encoder of Text2CT: Hugging Face's `CLIPTextTransformer` (transformers 4.30.1,
//! vendored by Text2CT) plus the bias-less `text_projection`, exactly as `FrozenCLIP3D.encode_text`
//! runs them.
//!
//! - embeddings: `token_embedding(ids) + position_embedding(arange(L))`. `position_ids` is a buffer that
//!   transformers up to 4.30 (Text2CT's checkpoint) save as `arange(max_position_embeddings)` and later
//!   versions do not save at all: absent is fine, present it must be `arange` (checked when loading).
//! - `num_hidden_layers` pre-LayerNorm layers: `x = x + out_proj(attn(layer_norm1(x)))`,
//!   `x = x + fc2(act(fc1(layer_norm2(x))))`; attention with q scaled by `head_dim^-0.5`, q/k/v/out
//!   projections with bias, the **causal mask always** and no padding mask (Text2CT passes none);
//!   `act` = quick_gelu `x * sigmoid(1.702 x)` for Text2CT (exact `gelu` also accepted).
//! - `final_layer_norm`; pooling = the hidden state at `argmax(ids)` per row (the first position
//!   holding the largest id: the first `<|endoftext|>`, since EOS = PAD = 49407 is the largest id).
//! - `text_projection` (no bias), then division by the L2 norm.
//!
//! Key names are those of Text2CT's `CLIP3D_Finding_Impression_30ep.pt` with the `model.` prefix
//! removed: `text_model.embeddings.{token_embedding.weight, position_embedding.weight}` (and `position_ids`, optional),
//! `text_model.encoder.layers.N.{self_attn.{q,k,v,out}_proj, layer_norm1, layer_norm2, mlp.fc1, mlp.fc2}.*`,
//! `text_model.final_layer_norm.*`, `text_projection.weight`.
//!
//! The networks are burn [`Module`]s: they run under autodiff (`device.autodiff()`) for training.

use std::path::Path;

use burn::module::{Module, Param};
use burn::nn::{Embedding, Linear};
use burn::tensor::activation::{gelu, sigmoid, softmax};
use burn::tensor::{Device, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::blocks::{param, InitSource, ParamKind, ParamSource, StateDictSource};
use crate::error::{ModelError, Result};
use crate::weights::{RawTensor, StateDict};

/// A key every CLIP text state dict has (after the prefix), used to find the prefix (`model.`).
pub const CLIP_TEXT_ANCHOR_KEY: &str = "text_model.embeddings.token_embedding.weight";
/// The optional `arange` buffer of the position table (see the module docs).
pub const CLIP_POSITION_IDS_KEY: &str = "text_model.embeddings.position_ids";

fn d_vocab() -> usize {
    49408
}
fn d_hidden() -> usize {
    512
}
fn d_layers() -> usize {
    12
}
fn d_heads() -> usize {
    8
}
fn d_inter() -> usize {
    2048
}
fn d_maxpos() -> usize {
    77
}
fn d_act() -> String {
    "quick_gelu".to_string()
}
fn d_eps() -> f64 {
    1e-5
}
fn d_proj() -> usize {
    512
}

/// Hugging Face `CLIPTextConfig` fields this port uses, with HF's names and defaults. Other HF
/// fields (token ids, dropout, initializer ranges, ...) are accepted and ignored, so an HF
/// `config.json` text block deserialises as is.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClipTextConfig {
    #[serde(default = "d_vocab")]
    pub vocab_size: usize,
    #[serde(default = "d_hidden")]
    pub hidden_size: usize,
    #[serde(default = "d_layers")]
    pub num_hidden_layers: usize,
    #[serde(default = "d_heads")]
    pub num_attention_heads: usize,
    #[serde(default = "d_inter")]
    pub intermediate_size: usize,
    #[serde(default = "d_maxpos")]
    pub max_position_embeddings: usize,
    #[serde(default = "d_act")]
    pub hidden_act: String,
    #[serde(default = "d_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "d_proj")]
    pub projection_dim: usize,
}

impl Default for ClipTextConfig {
    fn default() -> Self {
        serde_json::from_str("{}").expect("all fields have defaults")
    }
}

impl ClipTextConfig {
    /// Text2CT's text encoder: openai/clip-vit-large-patch14's text config with 512 positions,
    /// projection 768.
    pub fn text2ct() -> Self {
        ClipTextConfig {
            vocab_size: 49408,
            hidden_size: 768,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            intermediate_size: 3072,
            max_position_embeddings: 512,
            hidden_act: "quick_gelu".into(),
            layer_norm_eps: 1e-5,
            projection_dim: 768,
        }
    }

    /// Parse JSON: a `CLIPTextConfig`, or a whole CLIP config (a [`crate::Clip3dConfig`], or the
    /// `config.json` transformers writes for a `CLIPModel`) whose `text_config` block is used, with
    /// the top-level `projection_dim` when there is one (the size of `CLIPModel`'s text projection).
    /// Other keys (`transformers_version`, `model_type`, `architectures`, `torch_dtype`, token ids,
    /// `vision_config`, ...) are ignored.
    pub fn from_json_str(s: &str) -> Result<Self> {
        let v: serde_json::Value = serde_json::from_str(s).map_err(|e| ModelError::Config(format!("bad JSON: {e}")))?;
        let text = match v.get("text_config") {
            None => v.clone(),
            Some(t) if t.is_object() => {
                let mut t = t.clone();
                if let (Some(p), Some(o)) = (v.get("projection_dim"), t.as_object_mut()) {
                    o.insert("projection_dim".into(), p.clone());
                }
                t
            }
            Some(t) => return Err(ModelError::Config(format!("text_config is {t}, not an object"))),
        };
        let cfg: ClipTextConfig = serde_json::from_value(text).map_err(|e| ModelError::Config(e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn from_json_file(path: &Path) -> Result<Self> {
        let s = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
        Self::from_json_str(&s).map_err(|e| ModelError::Config(format!("{}: {e}", path.display())))
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(ModelError::Config(m));
        if self.vocab_size == 0 || self.hidden_size == 0 || self.intermediate_size == 0 || self.projection_dim == 0 {
            return bad("vocab_size, hidden_size, intermediate_size and projection_dim must be positive".into());
        }
        if self.max_position_embeddings == 0 {
            return bad("max_position_embeddings must be positive".into());
        }
        if self.num_attention_heads == 0 || self.hidden_size % self.num_attention_heads != 0 {
            return bad(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if !(self.layer_norm_eps > 0.0 && self.layer_norm_eps.is_finite()) {
            return bad(format!("layer_norm_eps must be positive, got {}", self.layer_norm_eps));
        }
        Activation::parse(&self.hidden_act)?;
        Ok(())
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
}

/// The MLP activation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// `x * sigmoid(1.702 x)` (CLIP).
    QuickGelu,
    /// Exact (erf) GELU.
    Gelu,
}

impl Activation {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "quick_gelu" => Ok(Activation::QuickGelu),
            "gelu" => Ok(Activation::Gelu),
            other => Err(ModelError::Config(format!("hidden_act `{other}` is not implemented (quick_gelu, gelu are)"))),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Layer helpers shared by the CLIP networks (PyTorch layouts in, burn modules out).

/// A PyTorch `nn.Linear(d_in, d_out, bias)`: `{key}.weight` `[d_out, d_in]` (stored transposed, as
/// burn's `Linear` wants `[d_in, d_out]`) and `{key}.bias` `[d_out]`.
pub(crate) fn linear(
    src: &mut dyn ParamSource,
    key: &str,
    d_in: usize,
    d_out: usize,
    bias: bool,
    dev: &Device,
) -> Linear {
    let w = src.take(&format!("{key}.weight"), &[d_out, d_in], ParamKind::Fan(d_in));
    let w = Tensor::<2>::from_data(TensorData::new(w, [d_out, d_in]), dev).transpose();
    let bias = bias.then(|| param(src, &format!("{key}.bias"), [d_out], ParamKind::Fan(d_in), dev));
    Linear { weight: Param::from_tensor(w), bias }
}

/// A PyTorch `nn.Embedding(n, d)`: `{key}.weight` `[n, d]`.
pub(crate) fn embedding(src: &mut dyn ParamSource, key: &str, n: usize, d: usize, dev: &Device) -> Embedding {
    Embedding { weight: param(src, &format!("{key}.weight"), [n, d], ParamKind::Fan(d), dev) }
}

/// LayerNorm over the last axis with a learnt scale and shift (`nn.LayerNorm`: `{key}.weight`,
/// `{key}.bias`).
#[derive(Module, Debug)]
pub struct LayerNorm {
    pub gamma: Param<Tensor<1>>,
    pub beta: Param<Tensor<1>>,
    pub eps: f64,
}

impl LayerNorm {
    pub(crate) fn build(src: &mut dyn ParamSource, key: &str, d: usize, eps: f64, dev: &Device) -> Self {
        let gamma = param(src, &format!("{key}.weight"), [d], ParamKind::Ones, dev);
        let beta = param(src, &format!("{key}.bias"), [d], ParamKind::Zeros, dev);
        LayerNorm { gamma, beta, eps }
    }

    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        burn::tensor::module::layer_norm(x, self.gamma.val(), Some(self.beta.val()), self.eps)
    }
}

/// Collects module parameters under PyTorch names (the inverse of building from a [`ParamSource`]).
#[derive(Default)]
pub(crate) struct Export {
    pub sd: StateDict,
    pub err: Option<String>,
}

impl Export {
    pub fn put<const D: usize>(&mut self, key: String, t: Tensor<D>) {
        let shape = t.dims().to_vec();
        self.put_shaped(key, t, shape);
    }
    /// With an explicit PyTorch shape (e.g. `[]` for a 0-d parameter stored as `[1]`).
    pub fn put_shaped<const D: usize>(&mut self, key: String, t: Tensor<D>, shape: Vec<usize>) {
        match t.into_data().convert::<f32>().try_into_vec::<f32>() {
            Ok(v) => {
                self.sd.tensors.insert(key, RawTensor::new(shape, v));
            }
            Err(e) => self.err = Some(format!("{key}: {e:?}")),
        }
    }
    pub fn raw(&mut self, key: String, t: RawTensor) {
        self.sd.tensors.insert(key, t);
    }
    pub fn linear(&mut self, key: &str, l: &Linear) {
        self.put(format!("{key}.weight"), l.weight.val().transpose());
        if let Some(b) = &l.bias {
            self.put(format!("{key}.bias"), b.val());
        }
    }
    pub fn layer_norm(&mut self, key: &str, n: &LayerNorm) {
        self.put(format!("{key}.weight"), n.gamma.val());
        self.put(format!("{key}.bias"), n.beta.val());
    }
    pub fn finish(self) -> Result<StateDict> {
        match self.err {
            Some(e) => Err(ModelError::Invalid(format!("reading parameter {e}"))),
            None => Ok(self.sd),
        }
    }
}

/// Records the `(key, shape)` spec; serves zeros.
#[derive(Default)]
pub(crate) struct SpecSource {
    pub spec: Vec<(String, Vec<usize>)>,
}

impl ParamSource for SpecSource {
    fn take(&mut self, key: &str, shape: &[usize], _kind: ParamKind) -> Vec<f32> {
        self.spec.push((key.to_string(), shape.to_vec()));
        vec![0.0; shape.iter().product()]
    }
}

/// [`StateDictSource::finish`] with the result of [`StateDict::take_position_ids`]: one message
/// naming every problem.
pub(crate) fn strict_finish(
    src: StateDictSource,
    position_ids: std::result::Result<(), String>,
) -> std::result::Result<(), String> {
    match (src.finish(), position_ids) {
        (Ok(()), Ok(())) => Ok(()),
        (Err(m), Ok(())) | (Ok(()), Err(m)) => Err(m),
        (Err(a), Err(b)) => Err(format!("{a}\n  {b}")),
    }
}

/// Divide each row by its L2 norm (`z / torch.norm(z, dim=-1, keepdim=True)`; the norm is floored
/// at 1e-12 so that a zero row gives zeros, not NaN).
pub fn l2_normalize<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    let n = x.clone().powi_scalar(2).sum_dim(D - 1).sqrt().clamp_min(1e-12);
    x / n
}

// ---------------------------------------------------------------------------------------------

/// `CLIPAttention`: multi-head self-attention with biased projections, q scaled by `head_dim^-0.5`.
#[derive(Module, Debug)]
pub struct ClipAttention {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub out_proj: Linear,
    pub heads: usize,
}

impl ClipAttention {
    fn build(src: &mut dyn ParamSource, key: &str, d: usize, heads: usize, dev: &Device) -> Self {
        let q_proj = linear(src, &format!("{key}.q_proj"), d, d, true, dev);
        let k_proj = linear(src, &format!("{key}.k_proj"), d, d, true, dev);
        let v_proj = linear(src, &format!("{key}.v_proj"), d, d, true, dev);
        let out_proj = linear(src, &format!("{key}.out_proj"), d, d, true, dev);
        ClipAttention { q_proj, k_proj, v_proj, out_proj, heads }
    }

    /// `x` `[B, L, D]`, `mask` additive `[1, 1, L, L]` (0 or -inf).
    pub fn forward(&self, x: Tensor<3>, mask: Tensor<4>) -> Tensor<3> {
        let [b, l, d] = x.dims();
        let h = self.heads;
        let dh = d / h;
        let scale = (dh as f64).powf(-0.5);
        let split = |t: Tensor<3>| t.reshape([b, l, h, dh]).swap_dims(1, 2);
        let q = split(self.q_proj.forward(x.clone()).mul_scalar(scale));
        let k = split(self.k_proj.forward(x.clone()));
        let v = split(self.v_proj.forward(x));
        let scores = q.matmul(k.swap_dims(2, 3)) + mask;
        let attn = softmax(scores, 3);
        let out = attn.matmul(v).swap_dims(1, 2).reshape([b, l, d]);
        self.out_proj.forward(out)
    }
}

/// `CLIPEncoderLayer` (pre-LayerNorm).
#[derive(Module, Debug)]
pub struct ClipEncoderLayer {
    pub layer_norm1: LayerNorm,
    pub self_attn: ClipAttention,
    pub layer_norm2: LayerNorm,
    pub fc1: Linear,
    pub fc2: Linear,
    /// `true`: quick_gelu; `false`: exact gelu.
    pub quick_gelu: bool,
}

impl ClipEncoderLayer {
    fn build(src: &mut dyn ParamSource, key: &str, cfg: &ClipTextConfig, dev: &Device) -> Self {
        let (d, eps) = (cfg.hidden_size, cfg.layer_norm_eps);
        let self_attn = ClipAttention::build(src, &format!("{key}.self_attn"), d, cfg.num_attention_heads, dev);
        let layer_norm1 = LayerNorm::build(src, &format!("{key}.layer_norm1"), d, eps, dev);
        let fc1 = linear(src, &format!("{key}.mlp.fc1"), d, cfg.intermediate_size, true, dev);
        let fc2 = linear(src, &format!("{key}.mlp.fc2"), cfg.intermediate_size, d, true, dev);
        let layer_norm2 = LayerNorm::build(src, &format!("{key}.layer_norm2"), d, eps, dev);
        let quick_gelu = Activation::parse(&cfg.hidden_act).map(|a| a == Activation::QuickGelu).unwrap_or(true);
        ClipEncoderLayer { layer_norm1, self_attn, layer_norm2, fc1, fc2, quick_gelu }
    }

    pub fn forward(&self, x: Tensor<3>, mask: Tensor<4>) -> Tensor<3> {
        let x = x.clone() + self.self_attn.forward(self.layer_norm1.forward(x), mask);
        let h = self.fc1.forward(self.layer_norm2.forward(x.clone()));
        let h = if self.quick_gelu { h.clone() * sigmoid(h.mul_scalar(1.702)) } else { gelu(h) };
        x + self.fc2.forward(h)
    }
}

/// `CLIPTextTransformer` (`text_model.*`): embeddings, encoder layers, final LayerNorm.
#[derive(Module, Debug)]
pub struct ClipTextTransformer {
    pub token_embedding: Embedding,
    pub position_embedding: Embedding,
    /// The `position_ids` buffer `[1, max_position_embeddings]`: `arange`, a constant, not trained.
    pub position_ids: Tensor<2, Int>,
    pub layers: Vec<ClipEncoderLayer>,
    pub final_layer_norm: LayerNorm,
}

impl ClipTextTransformer {
    /// Build from a source (keys under `key`, e.g. `text_model`). The source is not asked for
    /// `position_ids` (always `arange`; a state dict's copy is checked and removed first, with
    /// [`StateDict::take_position_ids`]).
    pub(crate) fn build(src: &mut dyn ParamSource, key: &str, cfg: &ClipTextConfig, dev: &Device) -> Self {
        let (d, n) = (cfg.hidden_size, cfg.max_position_embeddings);
        let token_embedding = embedding(src, &format!("{key}.embeddings.token_embedding"), cfg.vocab_size, d, dev);
        let position_embedding = embedding(src, &format!("{key}.embeddings.position_embedding"), n, d, dev);
        let pid: Vec<i64> = (0..n as i64).collect();
        let position_ids = Tensor::<2, Int>::from_data(TensorData::new(pid, [1, n]), dev);
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| ClipEncoderLayer::build(src, &format!("{key}.encoder.layers.{i}"), cfg, dev))
            .collect();
        let final_layer_norm = LayerNorm::build(src, &format!("{key}.final_layer_norm"), d, cfg.layer_norm_eps, dev);
        ClipTextTransformer { token_embedding, position_embedding, position_ids, layers, final_layer_norm }
    }

    /// Last hidden state `[B, L, D]` (after the final LayerNorm).
    pub fn forward(&self, ids: Tensor<2, Int>) -> Tensor<3> {
        let [_, l] = ids.dims();
        let dev = ids.device();
        let pos = self.position_ids.clone().slice([0..1, 0..l]);
        let mut x = self.token_embedding.forward(ids) + self.position_embedding.forward(pos);
        let mask = causal_mask(l, &dev);
        for layer in &self.layers {
            x = layer.forward(x, mask.clone());
        }
        self.final_layer_norm.forward(x)
    }

    pub(crate) fn export(&self, ex: &mut Export, key: &str) {
        ex.put(format!("{key}.embeddings.token_embedding.weight"), self.token_embedding.weight.val());
        ex.put(format!("{key}.embeddings.position_embedding.weight"), self.position_embedding.weight.val());
        ex.put(format!("{key}.embeddings.position_ids"), self.position_ids.clone().float());
        for (i, l) in self.layers.iter().enumerate() {
            let k = format!("{key}.encoder.layers.{i}");
            for (name, lin) in [
                ("self_attn.q_proj", &l.self_attn.q_proj),
                ("self_attn.k_proj", &l.self_attn.k_proj),
                ("self_attn.v_proj", &l.self_attn.v_proj),
                ("self_attn.out_proj", &l.self_attn.out_proj),
                ("mlp.fc1", &l.fc1),
                ("mlp.fc2", &l.fc2),
            ] {
                ex.linear(&format!("{k}.{name}"), lin);
            }
            ex.layer_norm(&format!("{k}.layer_norm1"), &l.layer_norm1);
            ex.layer_norm(&format!("{k}.layer_norm2"), &l.layer_norm2);
        }
        ex.layer_norm(&format!("{key}.final_layer_norm"), &self.final_layer_norm);
    }
}

/// Additive causal mask `[1, 1, L, L]`: 0 on and below the diagonal, -inf above.
fn causal_mask(l: usize, dev: &Device) -> Tensor<4> {
    let mut m = vec![0f32; l * l];
    for i in 0..l {
        for j in i + 1..l {
            m[i * l + j] = f32::NEG_INFINITY;
        }
    }
    Tensor::from_data(TensorData::new(m, [1, 1, l, l]), dev)
}

/// Position of the first largest id in each row (`input_ids.argmax(-1)`, first on ties).
pub fn eos_positions(ids: &[Vec<u32>]) -> Vec<usize> {
    ids.iter()
        .map(|row| {
            let mut best = 0;
            for (i, &v) in row.iter().enumerate() {
                if v > row[best] {
                    best = i;
                }
            }
            best
        })
        .collect()
}

/// The text encoder with its projection: what conditions Text2CT's U-Net.
#[derive(Module, Debug)]
pub struct ClipTextEncoder {
    pub text_model: ClipTextTransformer,
    pub text_projection: Linear,
}

impl ClipTextEncoder {
    /// Build from a source with Text2CT's key names (no `model.` prefix); `proj_dim` is the CLIP
    /// projection dimension.
    pub(crate) fn build(src: &mut dyn ParamSource, cfg: &ClipTextConfig, proj_dim: usize, dev: &Device) -> Self {
        let text_model = ClipTextTransformer::build(src, "text_model", cfg, dev);
        let text_projection = linear(src, "text_projection", cfg.hidden_size, proj_dim, false, dev);
        ClipTextEncoder { text_model, text_projection }
    }

    /// Freshly initialised (seeded) encoder with projection `config.projection_dim`.
    pub fn new(config: &ClipTextConfig, seed: u64, dev: &Device) -> Result<Self> {
        config.validate()?;
        let mut src = InitSource::new(seed);
        Ok(Self::build(&mut src, config, config.projection_dim, dev))
    }

    /// Strictly from a state dict with keys `text_model.*` and `text_projection.weight` (prefix
    /// removed), optionally `text_model.embeddings.position_ids` (`arange`), and nothing else.
    pub fn from_state_dict(config: &ClipTextConfig, mut sd: StateDict, dev: &Device, origin: &Path) -> Result<Self> {
        config.validate()?;
        let pid = sd.take_position_ids(CLIP_POSITION_IDS_KEY, config.max_position_embeddings);
        let mut src = StateDictSource::new(sd);
        let enc = Self::build(&mut src, config, config.projection_dim, dev);
        strict_finish(src, pid).map_err(|m| ModelError::weights(origin, m))?;
        Ok(enc)
    }

    /// Load the text half of a CLIP3D checkpoint (Text2CT's `CLIP3D_Finding_Impression_30ep.pt`,
    /// or a file with only the text keys); see [`crate::clip3d::Clip3d::load_text_only`].
    pub fn load(config: &ClipTextConfig, path: &Path, dev: &Device) -> Result<Self> {
        let cfg = crate::clip3d::Clip3dConfig::text_only(config.clone());
        Ok(crate::clip3d::Clip3d::load_text_only(&cfg, path, dev)?.text)
    }

    pub fn device(&self) -> Device {
        self.text_projection.weight.val().device()
    }

    pub fn vocab_size(&self) -> usize {
        self.text_model.token_embedding.weight.dims()[0]
    }

    pub fn max_len(&self) -> usize {
        self.text_model.position_ids.dims()[1]
    }

    pub fn projection_dim(&self) -> usize {
        self.text_projection.weight.dims()[1]
    }

    /// Check token ids: a non-empty batch of equal-length rows, `1 <= L <= max_position_embeddings`,
    /// every id `< vocab_size`.
    pub fn check_ids(&self, ids: &[Vec<u32>]) -> Result<()> {
        let (v, n) = (self.vocab_size(), self.max_len());
        let Some(first) = ids.first() else {
            return Err(ModelError::Invalid("no token sequences to encode".into()));
        };
        let l = first.len();
        if l == 0 || l > n {
            return Err(ModelError::Invalid(format!("token sequences must have 1..={n} ids, got {l}")));
        }
        for (i, row) in ids.iter().enumerate() {
            if row.len() != l {
                return Err(ModelError::Invalid(format!("sequence {i} has {} ids, sequence 0 has {l}", row.len())));
            }
            if let Some(&bad) = row.iter().find(|&&t| t as usize >= v) {
                return Err(ModelError::Invalid(format!("sequence {i} holds id {bad}, the vocabulary has {v}")));
            }
        }
        Ok(())
    }

    /// Token ids as a `[B, L]` Int tensor (no checks; see [`ClipTextEncoder::check_ids`]).
    pub fn ids_tensor(ids: &[Vec<u32>], dev: &Device) -> Tensor<2, Int> {
        let l = ids.first().map_or(0, Vec::len);
        let flat: Vec<i64> = ids.iter().flat_map(|r| r.iter().map(|&t| t as i64)).collect();
        Tensor::from_data(TensorData::new(flat, [ids.len(), l]), dev)
    }

    /// Pooled hidden state `[B, D]` at `argmax(ids)` of each row (before the projection).
    pub fn pooled(&self, ids: Tensor<2, Int>) -> Tensor<2> {
        let [b, l] = ids.dims();
        let dev = ids.device();
        let host: Vec<i64> = ids.clone().into_data().convert::<i64>().try_into_vec::<i64>().unwrap_or_default();
        let rows: Vec<Vec<u32>> = host.chunks(l.max(1)).map(|r| r.iter().map(|&v| v as u32).collect()).collect();
        let pos = eos_positions(&rows);
        let hidden = self.text_model.forward(ids);
        let d = hidden.dims()[2];
        let flat_idx: Vec<i64> = pos.iter().enumerate().map(|(i, &p)| (i * l + p) as i64).collect();
        let idx = Tensor::<1, Int>::from_data(TensorData::new(flat_idx, [b]), &dev);
        hidden.reshape([b * l, d]).select(0, idx)
    }

    /// Projected, L2-normalised text embedding `[B, projection_dim]`.
    ///
    /// # Panics
    /// On ids burn cannot embed (out of the vocabulary, longer than the position table); check
    /// them with [`ClipTextEncoder::check_ids`] or use [`ClipTextEncoder::encode_ids`].
    pub fn encode(&self, ids: Tensor<2, Int>) -> Tensor<2> {
        l2_normalize(self.text_projection.forward(self.pooled(ids)))
    }

    /// The U-Net's conditioning: [`ClipTextEncoder::encode`] as `[B, 1, projection_dim]`.
    pub fn encode_context(&self, ids: Tensor<2, Int>) -> Tensor<3> {
        self.encode(ids).unsqueeze_dim(1)
    }

    /// Checked [`ClipTextEncoder::encode`] from host ids.
    pub fn encode_ids(&self, ids: &[Vec<u32>]) -> Result<Tensor<2>> {
        self.check_ids(ids)?;
        Ok(self.encode(Self::ids_tensor(ids, &self.device())))
    }

    /// All parameters with Text2CT's key names (without the `model.` prefix).
    pub fn to_state_dict(&self) -> Result<StateDict> {
        let mut ex = Export::default();
        self.export(&mut ex);
        ex.finish()
    }

    pub(crate) fn export(&self, ex: &mut Export) {
        self.text_model.export(ex, "text_model");
        ex.linear("text_projection", &self.text_projection);
    }
}
