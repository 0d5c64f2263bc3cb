//! The text encoders that can condition the U-Net, behind one type: tokenizer + frozen network → one
//! embedding row per text (`[B, D]`; the U-Net's context is `[B, 1, D]`).
//!
//! - [`TextEncoderKind::Clip3d`] (default): Text2CT's 3D-CLIP text encoder (CLIP BPE, EOS padding to
//!   `max_length`, hidden state at the first EOS, projection, L2 normalisation), D = `projection_dim`.
//! - [`TextEncoderKind::MiniLm`]: the CLIP ablation's encoder never aligned with CT, all-MiniLM-L6-v2 (BERT
//!   WordPiece from a `tokenizer.json`, `[CLS] … [SEP]` cut to `max_length`, mean pooling over the attention
//!   mask, L2 normalisation), D = `hidden_size` (384).
//!
//! Used by `text2ct generate` (the model card names the kind), `text2ct train ldm` (the `[text_encoder]`
//! section) and `text2ct text embed`.

use std::path::Path;

use serde::{Deserialize, Serialize};
use text2ct_models::burn::prelude::{Device, Tensor};
use text2ct_models::clip_text::{ClipTextConfig, ClipTextEncoder};
use text2ct_models::minilm::{MiniLm, MiniLmConfig};
use text2ct_text::{ClipTokenizer, WordPieceTokenizer, MINILM_MAX_LEN};

use crate::error::{GenerateError, Result};

/// Which text encoder.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TextEncoderKind {
    /// Text2CT's 3D-CLIP text encoder.
    #[default]
    Clip3d,
    /// all-MiniLM-L6-v2 (BERT + mean pooling + normalisation): the CLIP ablation.
    Minilm,
}

impl TextEncoderKind {
    pub fn is_clip3d(&self) -> bool {
        *self == TextEncoderKind::Clip3d
    }
    /// The tokenizer kind a model card names for this encoder.
    pub fn tokenizer_kind(&self) -> &'static str {
        match self {
            TextEncoderKind::Clip3d => "clip-bpe",
            TextEncoderKind::Minilm => "wordpiece",
        }
    }
    pub fn name(&self) -> &'static str {
        match self {
            TextEncoderKind::Clip3d => "clip3d",
            TextEncoderKind::Minilm => "minilm",
        }
    }
}

impl std::str::FromStr for TextEncoderKind {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "clip3d" | "clip" => Ok(TextEncoderKind::Clip3d),
            "minilm" => Ok(TextEncoderKind::Minilm),
            o => Err(format!("text encoder {o:?} is not clip3d or minilm")),
        }
    }
}

/// A loaded text encoder with its tokenizer.
pub enum TextEncoder {
    Clip { enc: ClipTextEncoder, tok: ClipTokenizer },
    MiniLm { enc: MiniLm, tok: WordPieceTokenizer },
}

fn err(e: impl std::fmt::Display) -> GenerateError {
    GenerateError::Invalid(e.to_string())
}

impl TextEncoder {
    /// The 3D-CLIP text encoder (its tokenizer is embedded in text2ct); `weights` is a CLIP3D checkpoint or
    /// a file of the text keys.
    pub fn load_clip(cfg: &ClipTextConfig, weights: &Path, dev: &Device) -> Result<Self> {
        let enc = ClipTextEncoder::load(cfg, weights, dev).map_err(err)?;
        let tok = ClipTokenizer::default_embedded().map_err(|e| err(format!("CLIP tokenizer: {e}")))?;
        Ok(TextEncoder::Clip { enc, tok })
    }

    /// MiniLM from its `config.json`, `model.safetensors` and `tokenizer.json`; the tokenizer's vocabulary
    /// must match the config's `vocab_size`.
    pub fn load_minilm(cfg: &MiniLmConfig, weights: &Path, tokenizer: &Path, dev: &Device) -> Result<Self> {
        let tok = WordPieceTokenizer::from_file(tokenizer).map_err(err)?;
        if tok.vocab_size() != cfg.vocab_size {
            return Err(err(format!(
                "{}: the tokenizer has {} ids, the encoder config's vocab_size is {}: not the same model",
                tokenizer.display(),
                tok.vocab_size(),
                cfg.vocab_size
            )));
        }
        let enc = MiniLm::load(cfg, weights, dev).map_err(err)?;
        Ok(TextEncoder::MiniLm { enc, tok })
    }

    /// Load by kind from a config JSON (CLIP: see [`ClipTextConfig::from_json_str`]; MiniLM: a `BertConfig`). MiniLM needs `tokenizer`.
    pub fn load(
        kind: TextEncoderKind,
        config_json: &str,
        weights: &Path,
        tokenizer: Option<&Path>,
        dev: &Device,
    ) -> Result<Self> {
        match kind {
            TextEncoderKind::Clip3d => {
                Self::load_clip(&ClipTextConfig::from_json_str(config_json).map_err(err)?, weights, dev)
            }
            TextEncoderKind::Minilm => {
                let cfg = MiniLmConfig::from_json_str(config_json).map_err(err)?;
                let tok = tokenizer.ok_or_else(|| err("the minilm text encoder needs a tokenizer.json"))?;
                Self::load_minilm(&cfg, weights, tok, dev)
            }
        }
    }

    pub fn kind(&self) -> TextEncoderKind {
        match self {
            TextEncoder::Clip { .. } => TextEncoderKind::Clip3d,
            TextEncoder::MiniLm { .. } => TextEncoderKind::Minilm,
        }
    }

    /// Embedding dimension D (the U-Net's `cross_attention_dim`).
    pub fn dim(&self) -> usize {
        match self {
            TextEncoder::Clip { enc, .. } => enc.projection_dim(),
            TextEncoder::MiniLm { enc, .. } => enc.output_dim(),
        }
    }

    /// The most tokens the network takes (its position table).
    pub fn max_positions(&self) -> usize {
        match self {
            TextEncoder::Clip { enc, .. } => enc.max_len(),
            TextEncoder::MiniLm { enc, .. } => enc.max_len(),
        }
    }

    /// Tokens per text when none is configured: CLIP pads to its whole position table (512 for Text2CT, as
    /// the release); MiniLM uses sentence-transformers' 256 (`max_seq_length`), or fewer positions if the
    /// network has fewer.
    pub fn default_max_length(&self) -> usize {
        match self {
            TextEncoder::Clip { enc, .. } => enc.max_len(),
            TextEncoder::MiniLm { enc, .. } => enc.max_len().min(MINILM_MAX_LEN),
        }
    }

    /// Number of tokens of a text before truncation (with the special tokens), for warnings.
    pub fn token_count(&self, text: &str) -> Result<usize> {
        match self {
            TextEncoder::Clip { tok, .. } => Ok(tok.encode(text).len()),
            TextEncoder::MiniLm { tok, .. } => Ok(tok.content_ids(text).map_err(err)?.len() + 2),
        }
    }

    /// Embed texts: `[B, D]` and, per text, whether it was truncated to `max_len` tokens. Empty (blank) texts
    /// and `max_len` outside `2..=max_positions` are errors.
    pub fn encode<S: AsRef<str>>(&self, texts: &[S], max_len: usize) -> Result<(Tensor<2>, Vec<bool>)> {
        if texts.is_empty() {
            return Err(err("no texts to embed"));
        }
        if let Some(i) = texts.iter().position(|t| t.as_ref().trim().is_empty()) {
            return Err(GenerateError::Prompts(format!("text {i} is empty: nothing to embed")));
        }
        self.encode_raw(texts, max_len)
    }

    /// [`TextEncoder::encode`] without the empty-text check (an empty text is `[BOS, EOS]` / `[CLS, SEP]`, as
    /// the reference tokenizers give; the LDM cache encodes reports as they are).
    pub fn encode_raw<S: AsRef<str>>(&self, texts: &[S], max_len: usize) -> Result<(Tensor<2>, Vec<bool>)> {
        if texts.is_empty() {
            return Err(err("no texts to embed"));
        }
        let n = self.max_positions();
        if max_len < 2 || max_len > n {
            return Err(err(format!("max_length {max_len} must be in 2..={n} (the text encoder's positions)")));
        }
        match self {
            TextEncoder::Clip { enc, tok } => {
                let rows = tok.encode_padded_batch(texts, max_len);
                let truncated = rows.iter().map(|(_, t)| *t).collect();
                let ids: Vec<Vec<u32>> = rows.into_iter().map(|(r, _)| r).collect();
                Ok((enc.encode_ids(&ids).map_err(err)?, truncated))
            }
            TextEncoder::MiniLm { enc, tok } => {
                let b = tok.encode_batch(texts, max_len).map_err(err)?;
                Ok((enc.encode_ids(&b.ids, &b.mask).map_err(err)?, b.truncated))
            }
        }
    }
}
