//! `text2ct text embed`: report embeddings with either text encoder that can condition the U-Net.
//!
//! `text2ct text embed --encoder clip3d|minilm --config C.json --weights W [--tokenizer T.json]
//! (--text "…" | --reports CSV) --output OUT.npy [--max-length N] [--batch N]`
//!
//! - `clip3d` (default): Text2CT's 3D-CLIP text encoder, as `text2ct clip embed-text` (config: a CLIP3D config
//!   with `text_config`, or a `CLIPTextConfig`; weights: a CLIP3D checkpoint or the text keys; the CLIP BPE is
//!   built in). Default length: the position table (512).
//! - `minilm`: all-MiniLM-L6-v2, the CLIP ablation's encoder never aligned with CT (config: the package's
//!   `config.json`; weights: its `model.safetensors`; `--tokenizer`: its `tokenizer.json`). Default length 256
//!   (sentence-transformers' `max_seq_length`); mean pooling and L2 normalisation.
//!
//! Writes float32 `[N, D]` (one normalised row per text) and `OUT.json` beside it (row ids, which texts were
//! truncated, the encoder, the length). Over-long texts are truncated with a warning.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context};
use text2ct_generate::{TextEncoder, TextEncoderKind};
use text2ct_models::burn::tensor::Device;

use super::clip::{check_output, read_texts, rows_of, write_outputs};

#[derive(clap::Args, Debug)]
pub struct TextArgs {
    #[command(subcommand)]
    pub command: TextCommand,
}

#[derive(clap::Subcommand, Debug)]
pub enum TextCommand {
    /// Embed report text(s) with the 3D-CLIP or the MiniLM text encoder (normalised, [N, D]).
    Embed(EmbedArgs),
}

#[derive(clap::Args, Debug)]
pub struct EmbedArgs {
    /// Which encoder: clip3d (Text2CT's 3D CLIP) or minilm (all-MiniLM-L6-v2, the CLIP ablation).
    #[arg(long, default_value = "clip3d")]
    pub encoder: String,
    /// The encoder's config JSON (clip3d: CLIP3D or CLIPTextConfig; minilm: the package's config.json).
    #[arg(long)]
    pub config: PathBuf,
    /// Weights (clip3d: a CLIP3D checkpoint, text half read; minilm: model.safetensors).
    #[arg(long)]
    pub weights: PathBuf,
    /// The WordPiece tokenizer.json (minilm only).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// One text to embed.
    #[arg(long, conflicts_with = "reports", required_unless_present = "reports")]
    pub text: Option<String>,
    /// A CSV of reports (CT-RATE: VolumeName, Findings_EN, Impressions_EN) or prompts (prompt/text).
    #[arg(long)]
    pub reports: Option<PathBuf>,
    /// Output .npy float32 [N, D].
    #[arg(long)]
    pub output: PathBuf,
    /// Tokens per text (default: clip3d its position table, minilm 256).
    #[arg(long)]
    pub max_length: Option<usize>,
    /// Texts per forward pass.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
}

pub fn run(args: TextArgs) -> anyhow::Result<()> {
    match args.command {
        TextCommand::Embed(a) => embed(a),
    }
}

fn embed(a: EmbedArgs) -> anyhow::Result<()> {
    check_output(&a.output)?;
    if a.batch == 0 {
        bail!("--batch must be at least 1");
    }
    let kind: TextEncoderKind = a.encoder.parse().map_err(|e: String| anyhow::anyhow!("--encoder: {e}"))?;
    match (kind, &a.tokenizer) {
        (TextEncoderKind::Minilm, None) => bail!("--encoder minilm needs --tokenizer (the package's tokenizer.json)"),
        (TextEncoderKind::Clip3d, Some(_)) => bail!("--tokenizer is for --encoder minilm (clip3d's BPE is built in)"),
        _ => {}
    }
    let (ids, texts) = read_texts(a.text.as_deref(), a.reports.as_deref())?;
    let config = std::fs::read_to_string(&a.config).with_context(|| format!("reading {}", a.config.display()))?;
    let device = Device::flex();
    let t0 = Instant::now();
    let enc = TextEncoder::load(kind, &config, &a.weights, a.tokenizer.as_deref(), &device)
        .with_context(|| format!("loading the {} text encoder ({})", kind.name(), a.config.display()))?;
    eprintln!(
        "loaded the {} text encoder from {} in {:.1} s",
        kind.name(),
        a.weights.display(),
        t0.elapsed().as_secs_f64()
    );
    let max_len = a.max_length.unwrap_or_else(|| enc.default_max_length());
    let t1 = Instant::now();
    let mut rows = Vec::with_capacity(texts.len());
    let mut truncated = Vec::new();
    for (chunk_ids, chunk) in ids.chunks(a.batch).zip(texts.chunks(a.batch)) {
        let (z, cut) = enc.encode(chunk, max_len)?;
        for ((id, t), c) in chunk_ids.iter().zip(chunk).zip(cut) {
            if c {
                eprintln!(
                    "warning: {id}: text longer than {max_len} tokens ({} tokens); truncated",
                    enc.token_count(t)?
                );
                truncated.push(id.clone());
            }
        }
        rows.extend(rows_of(z)?);
    }
    eprintln!("embedded {} text(s) in {:.1} s", rows.len(), t1.elapsed().as_secs_f64());
    let meta = serde_json::json!({
        "ids": ids, "truncated": truncated, "kind": "text", "encoder": kind.name(), "max_len": max_len,
    });
    write_outputs(&a.output, rows, enc.dim(), meta)
}
