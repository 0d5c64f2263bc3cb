//! Text front end: the CLIP byte-level BPE tokenizer of the Text2CT release, and (module [`wordpiece`]) the
//! BERT WordPiece tokenizer of the MiniLM encoder used by the CLIP ablation.
//!
//! [`ClipTokenizer`] reproduces, id for id, what the Text2CT release gets from
//! `CLIPTokenizer.from_pretrained("openai/clip-vit-large-patch14")` of **transformers 4.30.1, the slow
//! (Python) tokenizer, with `ftfy` not installed**, called as
//! `tokenizer(text, truncation=True, max_length=512, padding="max_length")`.
//!
//! # Pipeline (mirrors `transformers/models/clip/tokenization_clip.py` 4.30.1)
//! 1. `PreTrainedTokenizer.tokenize` splits the raw text on the literal special tokens `<|startoftext|>` and
//!    `<|endoftext|>` (case-sensitive; they become ids 49406 / 49407 wherever they appear).
//! 2. Each remaining piece goes through the BERT `BasicTokenizer(do_lower_case=True)` (the fallback the CLIP
//!    tokenizer uses when `ftfy` is missing): drop NUL, U+FFFD and control/format/unassigned characters
//!    (category `C*` except `\t\n\r`), map whitespace (`\t\n\r`, `Zs`) to a space, put spaces around CJK
//!    ideographs, split on whitespace, lower-case, strip accents (NFD, drop `Mn`), split every punctuation
//!    character (ASCII non-alphanumerics and `P*`) into its own token, re-join with single spaces.
//! 3. The CLIP regex `<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+`
//!    (case-insensitive) finds the words; each word's UTF-8 bytes are mapped with `bytes_to_unicode` and
//!    byte-pair-encoded with a `</w>` end-of-word marker, using the first 48,894 merges.
//! 4. `[<|startoftext|>] + ids + [<|endoftext|>]`; with `max_len` the content is cut to `max_len - 2` ids
//!    (BOS and EOS are always kept) and padded with `<|endoftext|>` (49407).
//!
//! Because step 2 splits off every punctuation mark (apostrophes included), the contraction alternatives of the
//! regex never fire: `"it's"` is tokenised as `it ' s`. That is what the release does.
//!
//! # Input format
//! The release tokenises one string per volume, built by `text2ct_data::layout::report_text`:
//! `"Findings: {findings} Impression: {impressions}"` (missing fields are the literal `"nan"`).
//!
//! # Known limits
//! Character classes come from Unicode tables (Rust crates: Unicode 16 for categories and the regex, newer for
//! NFD) while the reference ran on Python's `unicodedata` (14.0 for the Python 3.11 used for the fixtures).
//! Only characters assigned after Unicode 14 (rare emoji, new scripts) can tokenise differently: Python sees
//! them as unassigned (`Cn`) and drops them.

pub mod wordpiece;
pub use wordpiece::{WordPieceBatch, WordPieceError, WordPieceTokenizer, MINILM_MAX_LEN};

use std::collections::HashMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use regex::Regex;
use unicode_general_category::{get_general_category, GeneralCategory};
use unicode_normalization::UnicodeNormalization;

/// Vocabulary size of the CLIP text model (`openai/clip-vit-large-patch14`).
pub const VOCAB_SIZE: usize = 49_408;
/// Number of merges used: lines `1 ..= 48_894` of the merges file (`[1 : 49152 - 256 - 2 + 1]`).
pub const NUM_MERGES: usize = 49_152 - 256 - 2;
/// `<|startoftext|>`.
pub const BOS_ID: u32 = 49_406;
/// `<|endoftext|>`.
pub const EOS_ID: u32 = 49_407;
/// Padding id: `<|endoftext|>` (the release sets `pad_token = "<|endoftext|>"`).
pub const PAD_ID: u32 = EOS_ID;
/// Unknown-token id: `<|endoftext|>` (never produced by the byte-level BPE in practice).
pub const UNK_ID: u32 = EOS_ID;
/// Text2CT's `clip_3D.max_length`.
pub const DEFAULT_MAX_LEN: usize = 512;
/// Literal of the BOS token.
pub const BOS_TOKEN: &str = "<|startoftext|>";
/// Literal of the EOS / pad / unk token.
pub const EOS_TOKEN: &str = "<|endoftext|>";

/// OpenAI's `bpe_simple_vocab_16e6.txt.gz`, vendored from the `open_clip_torch` 3.3.0 wheel (MIT).
pub static EMBEDDED_BPE_GZ: &[u8] = include_bytes!("../vocab/bpe_simple_vocab_16e6.txt.gz");

/// The regex of `CLIPTokenizer` (compiled with `re.IGNORECASE` upstream).
const CLIP_PATTERN: &str =
    r"(?i)<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";

/// The BPE cache is cleared when it grows past this many words (bounded memory for long-running processes).
const CACHE_LIMIT: usize = 200_000;

/// Errors loading a merges file.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// The file could not be read.
    #[error("cannot read BPE merges file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The bytes are not a valid gzip stream.
    #[error("BPE merges data is not valid gzip (expected bpe_simple_vocab_16e6.txt.gz): {0}")]
    Gzip(#[source] std::io::Error),
    /// The decompressed merges text is not UTF-8.
    #[error("BPE merges file is not valid UTF-8: {0}")]
    Utf8(#[from] std::string::FromUtf8Error),
    /// Fewer merge lines than the 48,894 the CLIP vocabulary needs.
    #[error("BPE merges file has {found} merge lines after the header, need at least {needed}")]
    TooFewMerges { found: usize, needed: usize },
    /// A merge line is not two space-separated symbols.
    #[error("BPE merges file line {line}: expected two space-separated symbols, got {content:?}")]
    BadMergeLine { line: usize, content: String },
    /// Two vocabulary entries collide, so ids would not match the reference vocabulary.
    #[error("BPE merges file yields duplicate vocabulary entry {token:?} (ids {first} and {second})")]
    DuplicateToken { token: String, first: u32, second: u32 },
}

/// The CLIP byte-level BPE tokenizer of the Text2CT release (see the crate docs for the exact pipeline).
///
/// Thread-safe (`Send + Sync`): the BPE word cache sits behind a mutex.
pub struct ClipTokenizer {
    encoder: HashMap<String, u32>,
    decoder: Vec<String>,
    /// `bytes_to_unicode`: byte -> printable char.
    byte_encoder: [char; 256],
    byte_decoder: HashMap<char, u8>,
    /// Vocabulary id of each byte's symbol, without and with `</w>`.
    byte_id: [u32; 256],
    byte_id_end: [u32; 256],
    /// `(left id, right id) -> (rank, merged id)`.
    merges: HashMap<(u32, u32), (u32, u32)>,
    pattern: Regex,
    cache: Mutex<HashMap<String, Vec<u32>>>,
}

impl std::fmt::Debug for ClipTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClipTokenizer")
            .field("vocab_size", &self.decoder.len())
            .field("merges", &self.merges.len())
            .finish_non_exhaustive()
    }
}

/// GPT-2/CLIP `bytes_to_unicode`: the byte order (printable bytes first) and each byte's char.
fn bytes_to_unicode() -> (Vec<u8>, [char; 256]) {
    let mut bs: Vec<u8> = (b'!'..=b'~').chain(0xA1..=0xAC).chain(0xAE..=0xFF).collect();
    let mut chars = ['\0'; 256];
    for &b in &bs {
        chars[b as usize] = char::from(b);
    }
    let mut n = 0u32;
    for b in 0..=255u8 {
        if !bs.contains(&b) {
            bs.push(b);
            chars[b as usize] = char::from_u32(256 + n).unwrap_or('\u{FFFD}');
            n += 1;
        }
    }
    (bs, chars)
}

impl ClipTokenizer {
    /// Tokenizer from the vendored `bpe_simple_vocab_16e6.txt.gz` (embedded in the binary).
    pub fn default_embedded() -> Result<Self, TokenizerError> {
        Self::from_bpe_gz_bytes(EMBEDDED_BPE_GZ)
    }

    /// Tokenizer from a gzip'd CLIP merges file (`bpe_simple_vocab_16e6.txt.gz`).
    pub fn from_bpe_gz(path: impl AsRef<Path>) -> Result<Self, TokenizerError> {
        let path = path.as_ref();
        let bytes = fs::read(path).map_err(|source| TokenizerError::Io { path: path.to_path_buf(), source })?;
        Self::from_bpe_gz_bytes(&bytes)
    }

    /// Tokenizer from the bytes of a gzip'd CLIP merges file.
    pub fn from_bpe_gz_bytes(gz: &[u8]) -> Result<Self, TokenizerError> {
        let mut raw = Vec::new();
        flate2::read::GzDecoder::new(gz).read_to_end(&mut raw).map_err(TokenizerError::Gzip)?;
        Self::from_merges_text(&String::from_utf8(raw)?)
    }

    /// Tokenizer from the (decompressed) merges text: a header line, then one `left right` merge per line.
    ///
    /// The vocabulary is built as OpenAI's CLIP and the HF `vocab.json` do: the 256 byte symbols (in
    /// `bytes_to_unicode` order), the same with `</w>`, the concatenation of each of the first 48,894 merges,
    /// then `<|startoftext|>` and `<|endoftext|>` — 49,408 entries.
    pub fn from_merges_text(text: &str) -> Result<Self, TokenizerError> {
        // Upstream (HF): `merges_handle.read().strip().split("\n")[1 : 49152 - 256 - 2 + 1]`.
        let lines: Vec<&str> = text.trim().split('\n').skip(1).take(NUM_MERGES).collect();
        if lines.len() < NUM_MERGES {
            return Err(TokenizerError::TooFewMerges { found: lines.len(), needed: NUM_MERGES });
        }
        let mut pairs = Vec::with_capacity(NUM_MERGES);
        for (i, line) in lines.iter().enumerate() {
            // Python's `merge.split()`: split on any whitespace.
            let mut parts = line.split_whitespace();
            match (parts.next(), parts.next(), parts.next()) {
                (Some(a), Some(b), None) => pairs.push((a, b)),
                _ => return Err(TokenizerError::BadMergeLine { line: i + 2, content: line.to_string() }),
            }
        }

        let (order, byte_encoder) = bytes_to_unicode();
        let mut decoder: Vec<String> = Vec::with_capacity(VOCAB_SIZE);
        for &b in &order {
            decoder.push(byte_encoder[b as usize].to_string());
        }
        for &b in &order {
            decoder.push(format!("{}</w>", byte_encoder[b as usize]));
        }
        for (a, b) in &pairs {
            decoder.push(format!("{a}{b}"));
        }
        decoder.push(BOS_TOKEN.to_string());
        decoder.push(EOS_TOKEN.to_string());

        let mut encoder = HashMap::with_capacity(decoder.len());
        for (id, tok) in decoder.iter().enumerate() {
            if let Some(first) = encoder.insert(tok.clone(), id as u32) {
                return Err(TokenizerError::DuplicateToken { token: tok.clone(), first, second: id as u32 });
            }
        }

        let mut byte_id = [0u32; 256];
        let mut byte_id_end = [0u32; 256];
        for (pos, &b) in order.iter().enumerate() {
            byte_id[b as usize] = pos as u32;
            byte_id_end[b as usize] = (pos + 256) as u32;
        }

        // Upstream: `bpe_ranks = dict(zip(merges, range(len(merges))))`. A merge whose halves are not vocabulary
        // tokens can never apply (every BPE symbol is a vocabulary token), so it is left out.
        let mut merges = HashMap::with_capacity(pairs.len());
        for (rank, (a, b)) in pairs.iter().enumerate() {
            if let (Some(&ia), Some(&ib)) = (encoder.get(*a), encoder.get(*b)) {
                let merged = encoder[&format!("{a}{b}")];
                merges.insert((ia, ib), (rank as u32, merged));
            }
        }

        let byte_decoder = (0..=255u8).map(|b| (byte_encoder[b as usize], b)).collect();
        let pattern = Regex::new(CLIP_PATTERN).expect("CLIP pattern is a valid regex");

        Ok(Self {
            encoder,
            decoder,
            byte_encoder,
            byte_decoder,
            byte_id,
            byte_id_end,
            merges,
            pattern,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// Number of vocabulary entries (49,408 for the CLIP file).
    pub fn vocab_size(&self) -> usize {
        self.decoder.len()
    }

    /// Id of a vocabulary token (byte-level form, e.g. `"lung</w>"`).
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.encoder.get(token).copied()
    }

    /// Vocabulary token of an id.
    pub fn id_to_token(&self, id: u32) -> Option<&str> {
        self.decoder.get(id as usize).map(String::as_str)
    }

    /// `" ".join(BasicTokenizer(do_lower_case=True).tokenize(text))`, the pre-tokenised text the CLIP regex
    /// then runs on (for one piece of text without literal special tokens).
    pub fn pretokenize(text: &str) -> String {
        basic_tokenize(text).join(" ")
    }

    /// Content ids (no BOS/EOS), as `tokenizer.tokenize` + `convert_tokens_to_ids`.
    pub fn encode_content(&self, text: &str) -> Vec<u32> {
        let mut ids = Vec::new();
        for piece in split_special(text) {
            match piece {
                Piece::Special(id) => ids.push(id),
                Piece::Text(t) => {
                    let pre = Self::pretokenize(t);
                    for m in self.pattern.find_iter(&pre) {
                        self.bpe_word(m.as_str(), &mut ids);
                    }
                }
            }
        }
        ids
    }

    /// `[BOS] + content + [EOS]`, not truncated.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let content = self.encode_content(text);
        let mut ids = Vec::with_capacity(content.len() + 2);
        ids.push(BOS_ID);
        ids.extend_from_slice(&content);
        ids.push(EOS_ID);
        ids
    }

    /// The release's call `tokenizer(text, truncation=True, max_length=max_len, padding="max_length")`:
    /// exactly `max_len` ids `[BOS, content[..max_len-2], EOS, PAD, …]` and whether content was cut off
    /// (the caller should warn). For `max_len < 2` the result is `[BOS, EOS]` cut to `max_len` (reported as
    /// truncated); Text2CT uses [`DEFAULT_MAX_LEN`] = 512.
    pub fn encode_padded(&self, text: &str, max_len: usize) -> (Vec<u32>, bool) {
        let content = self.encode_content(text);
        if max_len < 2 {
            return ([BOS_ID, EOS_ID][..max_len].to_vec(), true);
        }
        let keep = content.len().min(max_len - 2);
        let truncated = keep < content.len();
        let mut ids = Vec::with_capacity(max_len);
        ids.push(BOS_ID);
        ids.extend_from_slice(&content[..keep]);
        ids.push(EOS_ID);
        ids.resize(max_len, PAD_ID);
        (ids, truncated)
    }

    /// [`encode_padded`](Self::encode_padded) for several texts.
    pub fn encode_padded_batch<S: AsRef<str>>(&self, texts: &[S], max_len: usize) -> Vec<(Vec<u32>, bool)> {
        texts.iter().map(|t| self.encode_padded(t.as_ref(), max_len)).collect()
    }

    /// Vocabulary tokens of `ids` (special tokens included; unknown ids as `"<unk:ID>"`), for debugging.
    pub fn decode_tokens(&self, ids: &[u32]) -> Vec<String> {
        ids.iter().map(|&id| self.id_to_token(id).map_or_else(|| format!("<unk:{id}>"), str::to_string)).collect()
    }

    /// Text of `ids` for debugging: special tokens (BOS/EOS/pad) skipped, bytes decoded (invalid UTF-8 as
    /// U+FFFD), `</w>` turned into a space, trimmed. Lossy: the pre-tokenisation (lower-casing, accent
    /// stripping, punctuation splitting) is not undone. Unknown ids are skipped.
    pub fn decode(&self, ids: &[u32]) -> String {
        let mut bytes = Vec::new();
        for &id in ids {
            if id == BOS_ID || id == EOS_ID {
                continue;
            }
            let Some(tok) = self.id_to_token(id) else { continue };
            let (body, end) = match tok.strip_suffix("</w>") {
                Some(body) => (body, true),
                None => (tok, false),
            };
            for c in body.chars() {
                if let Some(&b) = self.byte_decoder.get(&c) {
                    bytes.push(b);
                }
            }
            if end {
                bytes.push(b' ');
            }
        }
        String::from_utf8_lossy(&bytes).trim().to_string()
    }

    /// BPE of one regex match (with `</w>` at its end), appending the ids; results are cached per word.
    fn bpe_word(&self, word: &str, out: &mut Vec<u32>) {
        if let Ok(cache) = self.cache.lock() {
            if let Some(ids) = cache.get(word) {
                out.extend_from_slice(ids);
                return;
            }
        }
        let ids = self.bpe_uncached(word);
        out.extend_from_slice(&ids);
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() >= CACHE_LIMIT {
                cache.clear();
            }
            cache.insert(word.to_string(), ids);
        }
    }

    /// `CLIPTokenizer.bpe`: repeatedly merge the lowest-ranked adjacent pair, all its non-overlapping
    /// occurrences left to right, until no pair has a rank.
    fn bpe_uncached(&self, word: &str) -> Vec<u32> {
        // The literal special tokens are matched by the regex only if they survive pre-tokenisation (they
        // cannot: `<` and `|` are split off); upstream's cache maps them to themselves.
        if word == BOS_TOKEN {
            return vec![BOS_ID];
        }
        if word == EOS_TOKEN {
            return vec![EOS_ID];
        }
        let bytes = word.as_bytes();
        let Some((&last, init)) = bytes.split_last() else { return Vec::new() };
        let mut sym: Vec<u32> = init.iter().map(|&b| self.byte_id[b as usize]).collect();
        sym.push(self.byte_id_end[last as usize]);

        let mut next = Vec::with_capacity(sym.len());
        while sym.len() > 1 {
            let mut best: Option<(u32, u32, u32)> = None; // (rank, left, right)
            for w in sym.windows(2) {
                if let Some(&(rank, _)) = self.merges.get(&(w[0], w[1])) {
                    if best.is_none_or(|(r, _, _)| rank < r) {
                        best = Some((rank, w[0], w[1]));
                    }
                }
            }
            let Some((_, first, second)) = best else { break };
            let merged = self.merges[&(first, second)].1;
            next.clear();
            let mut i = 0;
            while i < sym.len() {
                if sym[i] == first && i + 1 < sym.len() && sym[i + 1] == second {
                    next.push(merged);
                    i += 2;
                } else {
                    next.push(sym[i]);
                    i += 1;
                }
            }
            std::mem::swap(&mut sym, &mut next);
        }
        sym
    }

    /// Byte-level form of a word (`bytes_to_unicode` applied to its UTF-8 bytes), as BPE sees it.
    pub fn byte_encode(&self, word: &str) -> String {
        word.bytes().map(|b| self.byte_encoder[b as usize]).collect()
    }
}

enum Piece<'a> {
    Text(&'a str),
    Special(u32),
}

/// `tokens_trie.split` over the no-split tokens `<|startoftext|>` / `<|endoftext|>` (neither is a prefix of the
/// other, so leftmost matching is what the trie does). Empty text pieces are dropped.
fn split_special(text: &str) -> Vec<Piece<'_>> {
    let mut out = Vec::new();
    let mut rest = text;
    loop {
        let hit = [(BOS_TOKEN, BOS_ID), (EOS_TOKEN, EOS_ID)]
            .iter()
            .filter_map(|&(lit, id)| rest.find(lit).map(|pos| (pos, lit.len(), id)))
            .min_by_key(|&(pos, _, _)| pos);
        match hit {
            Some((pos, len, id)) => {
                if pos > 0 {
                    out.push(Piece::Text(&rest[..pos]));
                }
                out.push(Piece::Special(id));
                rest = &rest[pos + len..];
            }
            None => {
                if !rest.is_empty() {
                    out.push(Piece::Text(rest));
                }
                return out;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// BERT BasicTokenizer (transformers 4.30.1, `tokenization_bert.BasicTokenizer`, do_lower_case=True,
// tokenize_chinese_chars=True, strip_accents=None, never_split empty).
// ---------------------------------------------------------------------------------------------------------------

/// `BasicTokenizer(do_lower_case=True).tokenize(text)`.
fn basic_tokenize(text: &str) -> Vec<String> {
    let cleaned = clean_text(text);
    let spaced = tokenize_chinese_chars(&cleaned);
    let mut split_tokens: Vec<String> = Vec::new();
    for token in whitespace_tokenize(&spaced) {
        let lowered = token.to_lowercase();
        let stripped = strip_accents(&lowered);
        split_on_punc(&stripped, &mut split_tokens);
    }
    // `whitespace_tokenize(" ".join(split_tokens))`: drops tokens emptied by accent stripping.
    let joined = split_tokens.join(" ");
    whitespace_tokenize(&joined).into_iter().map(str::to_string).collect()
}

/// `_clean_text`: drop NUL, U+FFFD and control characters; whitespace becomes a space.
fn clean_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c == '\0' || c == '\u{FFFD}' || is_control(c) {
            continue;
        }
        out.push(if is_whitespace(c) { ' ' } else { c });
    }
    out
}

/// `_tokenize_chinese_chars`: spaces around CJK ideographs.
fn tokenize_chinese_chars(text: &str) -> String {
    if !text.chars().any(is_chinese_char) {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if is_chinese_char(c) {
            out.push(' ');
            out.push(c);
            out.push(' ');
        } else {
            out.push(c);
        }
    }
    out
}

/// `whitespace_tokenize`: Python's `text.strip().split()` (splits on `str.isspace` characters).
fn whitespace_tokenize(text: &str) -> Vec<&str> {
    text.split(py_isspace).filter(|t| !t.is_empty()).collect()
}

/// `_run_strip_accents`: NFD, then drop nonspacing marks (`Mn`).
fn strip_accents(text: &str) -> String {
    text.nfd().filter(|&c| get_general_category(c) != GeneralCategory::NonspacingMark).collect()
}

/// `_run_split_on_punc`: every punctuation character becomes its own token.
fn split_on_punc(text: &str, out: &mut Vec<String>) {
    let mut start_new_word = true;
    for c in text.chars() {
        if is_punctuation(c) {
            out.push(c.to_string());
            start_new_word = true;
        } else {
            if start_new_word {
                out.push(String::new());
            }
            start_new_word = false;
            if let Some(last) = out.last_mut() {
                last.push(c);
            }
        }
    }
}

/// `tokenization_utils._is_whitespace`.
fn is_whitespace(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r') || get_general_category(c) == GeneralCategory::SpaceSeparator
}

/// `tokenization_utils._is_control`: category `C*` (Cc, Cf, Cs, Co, Cn) except `\t\n\r`.
fn is_control(c: char) -> bool {
    if matches!(c, '\t' | '\n' | '\r') {
        return false;
    }
    use GeneralCategory::*;
    matches!(get_general_category(c), Control | Format | Surrogate | PrivateUse | Unassigned)
}

/// `tokenization_utils._is_punctuation`: ASCII non-alphanumerics and category `P*`.
fn is_punctuation(c: char) -> bool {
    let cp = c as u32;
    if (33..=47).contains(&cp) || (58..=64).contains(&cp) || (91..=96).contains(&cp) || (123..=126).contains(&cp) {
        return true;
    }
    use GeneralCategory::*;
    matches!(
        get_general_category(c),
        ConnectorPunctuation
            | DashPunctuation
            | OpenPunctuation
            | ClosePunctuation
            | InitialPunctuation
            | FinalPunctuation
            | OtherPunctuation
    )
}

/// `BasicTokenizer._is_chinese_char`.
fn is_chinese_char(c: char) -> bool {
    let cp = c as u32;
    (0x4E00..=0x9FFF).contains(&cp)
        || (0x3400..=0x4DBF).contains(&cp)
        || (0x20000..=0x2A6DF).contains(&cp)
        || (0x2A700..=0x2B73F).contains(&cp)
        || (0x2B740..=0x2B81F).contains(&cp)
        || (0x2B820..=0x2CEAF).contains(&cp)
        || (0xF900..=0xFAFF).contains(&cp)
        || (0x2F800..=0x2FA1F).contains(&cp)
}

/// Python's `str.isspace` (bidirectional class WS/B/S or category Zs), which `str.split()` uses.
fn py_isspace(c: char) -> bool {
    matches!(
        c,
        '\t' | '\n'
            | '\u{0B}'
            | '\u{0C}'
            | '\r'
            | '\u{1C}'..='\u{1F}'
            | ' '
            | '\u{85}'
            | '\u{A0}'
            | '\u{1680}'
            | '\u{2000}'..='\u{200A}'
            | '\u{2028}'
            | '\u{2029}'
            | '\u{202F}'
            | '\u{205F}'
            | '\u{3000}'
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_table_is_gpt2s() {
        let (order, chars) = bytes_to_unicode();
        assert_eq!(order.len(), 256);
        assert_eq!(chars[b'!' as usize], '!');
        assert_eq!(chars[b' ' as usize], '\u{120}'); // 'Ġ'
        assert_eq!(chars[0], '\u{100}');
        let mut sorted = order.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), 256);
    }

    #[test]
    fn basic_tokenizer_examples() {
        assert_eq!(ClipTokenizer::pretokenize("  Sjögren's  café\t3.5mm "), "sjogren ' s cafe 3 . 5mm");
        assert_eq!(ClipTokenizer::pretokenize("肺结节"), "肺 结 节");
        assert_eq!(ClipTokenizer::pretokenize("a\u{200B}b\u{2028}c"), "ab c");
        assert_eq!(ClipTokenizer::pretokenize(""), "");
    }

    #[test]
    fn special_split() {
        let p = split_special("a<|endoftext|><|startoftext|>b");
        let kinds: Vec<String> = p
            .iter()
            .map(|x| match x {
                Piece::Text(t) => t.to_string(),
                Piece::Special(id) => id.to_string(),
            })
            .collect();
        assert_eq!(kinds, ["a", "49407", "49406", "b"]);
    }

    #[test]
    fn errors_are_clear() {
        assert!(matches!(ClipTokenizer::from_bpe_gz("/nonexistent/x.gz"), Err(TokenizerError::Io { .. })));
        assert!(matches!(ClipTokenizer::from_bpe_gz_bytes(b"not gzip"), Err(TokenizerError::Gzip(_))));
        assert!(matches!(
            ClipTokenizer::from_merges_text("#version\na b\n"),
            Err(TokenizerError::TooFewMerges { found: 1, .. })
        ));
        let mut bad = String::from("#version: 0.2\n");
        for _ in 0..NUM_MERGES {
            bad.push_str("a b c\n");
        }
        assert!(matches!(ClipTokenizer::from_merges_text(&bad), Err(TokenizerError::BadMergeLine { line: 2, .. })));
        let mut dup = String::from("#version: 0.2\n");
        for _ in 0..NUM_MERGES {
            dup.push_str("a b\n");
        }
        assert!(matches!(ClipTokenizer::from_merges_text(&dup), Err(TokenizerError::DuplicateToken { .. })));
        let e = ClipTokenizer::from_bpe_gz("/nonexistent/x.gz").unwrap_err().to_string();
        assert!(e.contains("/nonexistent/x.gz"), "{e}");
    }
}
