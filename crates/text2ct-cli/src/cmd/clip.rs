//! `text2ct clip`: embeddings with Text2CT's 3D CLIP.
//!
//! - `text2ct clip embed-text --config C.json --weights W (--text "…" | --reports CSV) --output OUT.npy`
//!   Tokenises as the release does (CLIP BPE, 512 ids, EOS padding; over-long text is truncated
//!   with a warning), runs the text encoder and writes the L2-normalised embeddings float32
//!   `[N, projection_dim]` (what conditions the U-Net, one row per text). `--reports` reads a
//!   CT-RATE reports CSV (`VolumeName`, `Findings_EN`, `Impressions_EN`; text
//!   `"Findings: … Impression: …"`) or a CSV with a `prompt`/`text` column. Only the text half of
//!   the checkpoint is read.
//! - `text2ct clip embed-volume --config C.json --weights W --input VOLUME|MANIFEST --output OUT.npy`
//!   VOLUME is a NIfTI CT in HU (clipped to [-1000, 1000], mapped to [0, 1]) whose shape must be
//!   the config's input size; MANIFEST is a prepared data set's `manifest.jsonl`. Writes the
//!   normalised image embeddings `[N, projection_dim]`.
//!
//! Both write `OUT.json` beside the array: the row ids in order (and, for texts, which were
//! truncated). The config of `embed-volume` is a [`Clip3dConfig`] JSON (`text_config`,
//! `vision_config`, `projection_dim`); `embed-text` and `export-text` read only its text part, so
//! they also take a `CLIPTextConfig` or the `config.json` transformers writes for a CLIP (see
//! [`ClipTextConfig::from_json_str`]). Weights are Text2CT's `CLIP3D_Finding_Impression_30ep.pt`
//! layout (`model.text_model.*`, `model.vision_model.*`, ...), or a `.safetensors` with those names
//! (with or without the `model.` prefix, with or without `text_model.embeddings.position_ids`).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use text2ct_data::manifest::{read_manifest, volume_path, MappedVolume};
use text2ct_io::nifti_io::read_nifti;
use text2ct_io::Limits;
use text2ct_models::burn::tensor::{Device, Tensor, TensorData};
use text2ct_models::{Clip3d, Clip3dConfig, ClipTextConfig, NpyArray};
use text2ct_text::ClipTokenizer;

#[derive(clap::Args, Debug)]
pub struct ClipArgs {
    #[command(subcommand)]
    pub command: ClipCommand,
}

#[derive(clap::Subcommand, Debug)]
pub enum ClipCommand {
    /// Embed report text(s) with the CLIP text encoder (normalised, [N, projection_dim]).
    EmbedText(EmbedTextArgs),
    /// Embed CT volume(s) with the CLIP vision encoder (CT-ViT; normalised, [N, projection_dim]).
    EmbedVolume(EmbedVolumeArgs),
    /// Write only the text half of a CLIP3D checkpoint (`model.text_model.*`,
    /// `model.text_projection.weight`, `model.logit_scale`) as safetensors, optionally in f16:
    /// what a generation model folder needs (the vision half is not used to generate).
    ExportText(ExportTextArgs),
}

#[derive(clap::Args, Debug)]
pub struct ExportTextArgs {
    /// CLIP config JSON (CLIP3D, CLIPTextConfig or transformers' CLIP config.json; its text part is read).
    #[arg(long)]
    pub config: PathBuf,
    /// A CLIP3D checkpoint (.pt or .safetensors, keys model.*).
    #[arg(long)]
    pub weights: PathBuf,
    /// Output .safetensors.
    #[arg(long)]
    pub output: PathBuf,
    /// Store f16 (half the size; read back as f32).
    #[arg(long)]
    pub f16: bool,
}

#[derive(clap::Args, Debug)]
pub struct EmbedTextArgs {
    /// CLIP config JSON (CLIP3D, CLIPTextConfig or transformers' CLIP config.json; its text part is read).
    #[arg(long)]
    pub config: PathBuf,
    /// Weights: a CLIP3D checkpoint (.pt, keys model.*) or .safetensors; only the text half is read.
    #[arg(long)]
    pub weights: PathBuf,
    /// One text to embed.
    #[arg(long, conflicts_with = "reports", required_unless_present = "reports")]
    pub text: Option<String>,
    /// A CSV of reports (CT-RATE: VolumeName, Findings_EN, Impressions_EN) or prompts (prompt/text).
    #[arg(long)]
    pub reports: Option<PathBuf>,
    /// Output .npy float32 [N, projection_dim].
    #[arg(long)]
    pub output: PathBuf,
    /// Texts per forward pass.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    #[command(flatten)]
    pub device: crate::util::DeviceArg,
}

#[derive(clap::Args, Debug)]
pub struct EmbedVolumeArgs {
    /// CLIP3D config JSON (text_config, vision_config, projection_dim).
    #[arg(long)]
    pub config: PathBuf,
    /// Weights: a CLIP3D checkpoint (.pt, keys model.*) or .safetensors (loaded strictly).
    #[arg(long)]
    pub weights: PathBuf,
    /// A NIfTI volume in HU, or a prepared data set's manifest.jsonl.
    #[arg(long)]
    pub input: PathBuf,
    /// Output .npy float32 [N, projection_dim].
    #[arg(long)]
    pub output: PathBuf,
    #[command(flatten)]
    pub device: crate::util::DeviceArg,
}

pub fn run(args: ClipArgs) -> anyhow::Result<()> {
    match args.command {
        ClipCommand::EmbedText(a) => embed_text(a),
        ClipCommand::EmbedVolume(a) => embed_volume(a),
        ClipCommand::ExportText(a) => export_text(a),
    }
}

fn export_text(a: ExportTextArgs) -> anyhow::Result<()> {
    if !a.output.to_string_lossy().to_lowercase().ends_with(".safetensors") {
        bail!("--output must be a .safetensors file, got {}", a.output.display());
    }
    crate::util::output_file(&a.output, "--output")?;
    let cfg = ClipTextConfig::from_json_file(&a.config)?;
    let dev = text2ct_models::burn::tensor::Device::flex();
    // Load strictly first, so a wrong or partial file is refused with every bad key named.
    text2ct_models::ClipTextEncoder::load(&cfg, &a.weights, &dev)?;
    let sd = text2ct_models::StateDict::read(&a.weights)?;
    let mut out = text2ct_models::StateDict::default();
    for (k, t) in sd.tensors {
        let bare = k.strip_prefix("model.").unwrap_or(&k);
        if bare.starts_with("text_model.") || bare == "text_projection.weight" || bare == "logit_scale" {
            out.tensors.insert(format!("model.{bare}"), t);
        }
    }
    let n = out.tensors.len();
    if a.f16 {
        text2ct_train::clip::write_safetensors_f16(&out, &a.output)?;
    } else {
        out.write_safetensors(&a.output, None)?;
    }
    text2ct_models::ClipTextEncoder::load(&cfg, &a.output, &dev)
        .map_err(|e| anyhow::anyhow!("the written file does not load back: {e}"))?;
    println!("wrote {} ({n} tensors{})", a.output.display(), if a.f16 { ", f16" } else { "" });
    Ok(())
}

pub(crate) fn check_output(p: &Path) -> anyhow::Result<()> {
    if !p.to_string_lossy().to_lowercase().ends_with(".npy") {
        bail!("--output must be a .npy file, got {}", p.display());
    }
    crate::util::output_file(p, "--output")
}

fn sidecar(out: &Path) -> PathBuf {
    out.with_extension("json")
}

pub(crate) fn write_outputs(
    out: &Path,
    rows: Vec<Vec<f32>>,
    dim: usize,
    meta: serde_json::Value,
) -> anyhow::Result<()> {
    let n = rows.len();
    let data: Vec<f32> = rows.into_iter().flatten().collect();
    NpyArray::new(vec![n, dim], data)?.write(out)?;
    let side = sidecar(out);
    let text = serde_json::to_string_pretty(&meta)?;
    let tmp = side.with_extension("json.tmp");
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &side).with_context(|| format!("writing {}", side.display()))?;
    eprintln!("wrote {} [{n}, {dim}] and {}", out.display(), side.display());
    Ok(())
}

pub(crate) fn rows_of(t: Tensor<2>) -> anyhow::Result<Vec<Vec<f32>>> {
    let [_, d] = t.dims();
    let v =
        t.into_data().convert::<f32>().try_into_vec::<f32>().map_err(|e| anyhow::anyhow!("reading tensor: {e:?}"))?;
    Ok(v.chunks(d.max(1)).map(<[f32]>::to_vec).collect())
}

/// The texts of `--text` (id "text") or `--reports` (ids from the CSV), none of them blank.
pub(crate) fn read_texts(text: Option<&str>, reports: Option<&Path>) -> anyhow::Result<(Vec<String>, Vec<String>)> {
    let (ids, texts): (Vec<String>, Vec<String>) = match (text, reports) {
        (Some(t), None) => (vec!["text".to_string()], vec![t.to_string()]),
        (None, Some(csv)) => {
            let jobs = text2ct_generate::jobs_from_csv(csv, 1, 0, text2ct_generate::Shard::ALL)?;
            if jobs.is_empty() {
                bail!("{}: no reports in the CSV", csv.display());
            }
            jobs.into_iter().map(|j| (j.id, j.prompt)).unzip()
        }
        _ => bail!("give exactly one of --text or --reports"),
    };
    for (id, t) in ids.iter().zip(&texts) {
        if t.trim().is_empty() {
            bail!("empty text ({id}): nothing to embed");
        }
    }
    Ok((ids, texts))
}

fn embed_text(a: EmbedTextArgs) -> anyhow::Result<()> {
    check_output(&a.output)?;
    if a.batch == 0 {
        bail!("--batch must be at least 1");
    }
    let (ids, texts) = read_texts(a.text.as_deref(), a.reports.as_deref())?;
    let cfg = Clip3dConfig::text_only(ClipTextConfig::from_json_file(&a.config)?);
    let device = a.device.get()?;
    let t0 = Instant::now();
    let clip = Clip3d::load_text_only(&cfg, &a.weights, &device)?;
    eprintln!("loaded the CLIP text encoder from {} in {:.1} s", a.weights.display(), t0.elapsed().as_secs_f64());
    let tok = ClipTokenizer::default_embedded().map_err(|e| anyhow::anyhow!("tokenizer: {e}"))?;
    let max_len = clip.text.max_len();
    let vocab = clip.text.vocab_size();
    let mut truncated = Vec::new();
    let mut tokens = Vec::with_capacity(texts.len());
    for (id, t) in ids.iter().zip(&texts) {
        let (row, cut) = tok.encode_padded(t, max_len);
        if cut {
            eprintln!(
                "warning: {id}: text longer than {max_len} tokens ({} BPE tokens); truncated as the release does",
                tok.encode_content(t).len()
            );
            truncated.push(id.clone());
        }
        if let Some(&bad) = row.iter().find(|&&v| v as usize >= vocab) {
            bail!("token id {bad} is outside the model's vocabulary ({vocab}): config/tokenizer mismatch");
        }
        tokens.push(row);
    }
    let t1 = Instant::now();
    let mut rows = Vec::with_capacity(tokens.len());
    for chunk in tokens.chunks(a.batch) {
        rows.extend(rows_of(clip.text.encode_ids(chunk)?)?);
    }
    eprintln!("embedded {} text(s) in {:.1} s", rows.len(), t1.elapsed().as_secs_f64());
    let meta = serde_json::json!({ "ids": ids, "truncated": truncated, "kind": "text", "max_len": max_len });
    write_outputs(&a.output, rows, cfg.projection_dim, meta)
}

/// HU (x fastest, dims `[X, Y, Z]`) to the model's `[1, 1, ...]` input in [0, 1]: `(X, Y, Z)` for
/// the "HWD" layout (Text2CT), `(Z, X, Y)` for "DHW" (CT-CLIP).
fn to_input(hu: &dyn Fn(usize) -> f32, dims: [usize; 3], hwd: bool, dev: &Device) -> anyhow::Result<Tensor<5>> {
    let [nx, ny, nz] = dims;
    let mut data = vec![0f32; nx * ny * nz];
    for z in 0..nz {
        for y in 0..ny {
            for x in 0..nx {
                let v = hu(x + nx * (y + ny * z));
                if !v.is_finite() {
                    bail!("non-finite voxel at ({x},{y},{z})");
                }
                let u = text2ct_io::transform::hu_to_unit(v);
                let i = if hwd { (x * ny + y) * nz + z } else { (z * nx + x) * ny + y };
                data[i] = u;
            }
        }
    }
    let shape = if hwd { [1, 1, nx, ny, nz] } else { [1, 1, nz, nx, ny] };
    Ok(Tensor::from_data(TensorData::new(data, shape), dev))
}

fn check_dims(cfg: &Clip3dConfig, dims: [usize; 3], what: &str) -> anyhow::Result<()> {
    let v = &cfg.vision_config;
    let want = [v.image_size, v.image_size, v.input_depth];
    if v.channels != 1 {
        bail!("the vision config has {} channels; volumes have one", v.channels);
    }
    if dims != want {
        bail!(
            "{what}: volume shape (X, Y, Z) = {dims:?}, but the CLIP vision encoder takes {want:?} \
             (image_size x image_size x input_depth); prepare the data at that size"
        );
    }
    Ok(())
}

fn embed_volume(a: EmbedVolumeArgs) -> anyhow::Result<()> {
    check_output(&a.output)?;
    let cfg = Clip3dConfig::from_json_file(&a.config)?;
    let device = a.device.get()?;
    let hwd = cfg.vision_config.input_layout != "DHW";
    let name = a.input.to_string_lossy().to_lowercase();
    // Inputs first (cheap checks before loading ~3 GB of weights).
    enum Src {
        Nifti(text2ct_io::Volume),
        Manifest(Vec<(String, PathBuf)>),
    }
    let src = if name.ends_with(".nii") || name.ends_with(".nii.gz") {
        let (vol, _) = read_nifti(&a.input, &Limits::default())?;
        check_dims(&cfg, vol.dims(), &a.input.display().to_string())?;
        Src::Nifti(vol)
    } else if name.ends_with(".jsonl") {
        let entries = read_manifest(&a.input)?;
        if entries.is_empty() {
            bail!("{}: the manifest has no entries", a.input.display());
        }
        let mut items = Vec::with_capacity(entries.len());
        for e in &entries {
            check_dims(&cfg, e.dims, &format!("{} ({})", e.id, a.input.display()))?;
            items.push((e.id.clone(), volume_path(&a.input, e)));
        }
        Src::Manifest(items)
    } else {
        bail!("--input must be a NIfTI volume (.nii/.nii.gz) or a manifest.jsonl, got {}", a.input.display());
    };
    let t0 = Instant::now();
    let clip = Clip3d::load(&cfg, &a.weights, &device)?;
    eprintln!("loaded the CLIP from {} in {:.1} s", a.weights.display(), t0.elapsed().as_secs_f64());
    let mut rows = Vec::new();
    let mut ids = Vec::new();
    let t1 = Instant::now();
    match src {
        Src::Nifti(vol) => {
            let data = vol.data();
            let x = to_input(&|i| data[i], vol.dims(), hwd, &device).with_context(|| a.input.display().to_string())?;
            rows.extend(rows_of(clip.encode_volume(x)?)?);
            ids.push(a.input.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default());
        }
        Src::Manifest(items) => {
            let n = items.len();
            for (k, (id, path)) in items.into_iter().enumerate() {
                let mv = MappedVolume::open(&path)?;
                check_dims(&cfg, mv.dims(), &format!("{id} ({})", path.display()))?;
                let x = to_input(&|i| mv.hu(i) as f32, mv.dims(), hwd, &device)?;
                rows.extend(rows_of(clip.encode_volume(x).with_context(|| id.clone())?)?);
                ids.push(id);
                eprintln!("  {}/{n} ({:.1} s)", k + 1, t1.elapsed().as_secs_f64());
            }
        }
    }
    eprintln!("embedded {} volume(s) in {:.1} s", rows.len(), t1.elapsed().as_secs_f64());
    let meta = serde_json::json!({ "ids": ids, "kind": "volume" });
    write_outputs(&a.output, rows, cfg.projection_dim, meta)
}
