//! The model card (`model.json`): which networks, configs and weight files make a text-to-CT
//! model, how it samples and decodes, what geometry its outputs have, and what it was trained
//! on, under which licence.
//!
//! Text2CT's three released files work as they are: write the card with
//! [`ModelCard::text2ct_release`] next to `autoencoder_epoch273.pt`, `unet_rflow_200ep.pt` and
//! `CLIP3D_Finding_Impression_30ep.pt` (`text2ct model init-release DIR` does it).

use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};
use text2ct_models::Precision;

use text2ct_diffusion::Sampler;

use crate::error::{GenerateError, Result};
use crate::text_encoder::TextEncoderKind;

/// A network's configuration: a JSON file beside the card, or the object inline.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ConfigRef {
    File(String),
    Inline(serde_json::Value),
}

/// One network of the model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkRef {
    pub config: ConfigRef,
    /// Weights file (`.pt` or `.safetensors`), relative to the card's folder.
    pub weights: String,
}

/// The text encoder.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextEncoderRef {
    /// `clip3d` (default; Text2CT's 3D-CLIP text encoder, config a `CLIPTextConfig`) or `minilm` (the CLIP
    /// ablation's all-MiniLM-L6-v2, config a `BertConfig`; needs a `wordpiece` tokenizer file). Cards written
    /// before this field existed are `clip3d`; `clip3d` cards do not write it.
    #[serde(default, skip_serializing_if = "TextEncoderKind::is_clip3d")]
    pub kind: TextEncoderKind,
    pub config: ConfigRef,
    pub weights: String,
    /// Load only the text half of a CLIP checkpoint (the vision half is not needed to generate).
    #[serde(default = "yes")]
    pub text_only: bool,
}

fn yes() -> bool {
    true
}

/// The tokenizer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenizerRef {
    /// `clip-bpe`: the release's CLIP BPE (merges embedded in text2ct), for `clip3d`; `wordpiece`: a BERT
    /// WordPiece `tokenizer.json` beside the card (`file`), for `minilm`.
    pub kind: String,
    pub max_length: usize,
    /// The tokenizer file, relative to the card's folder (`wordpiece` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
}

/// Sampling defaults (flags override them).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SamplerRef {
    /// `rflow`, `ddpm` or `ddim` (anything else is refused when the card is read).
    pub kind: Sampler,
    pub steps: usize,
    /// Classifier-free guidance scale w: v = v_u + w (v_c - v_u).
    pub guidance: f32,
    /// Rectified flow without the release's float16 timestep rounding and next-step truncation.
    #[serde(default)]
    pub exact: bool,
}

/// Output geometry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputRef {
    /// Volume size in voxels (X, Y, Z); the latent is this / 4.
    pub size: [usize; 3],
    /// Voxel size written to the NIfTI header, mm.
    pub spacing: [f64; 3],
    /// Orientation of the voxel axes (the release writes RAS).
    pub orientation: String,
    /// How `spacing` should be read (e.g. "nominal, as the release writes it").
    #[serde(default)]
    pub spacing_note: String,
}

/// Extra conditioning inputs of the U-Net.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConditioningRef {
    /// Spacing input, mm x 100 (the release passes [75, 75, 300]); absent when the U-Net has none.
    #[serde(default)]
    pub spacing_input: Option<[f32; 3]>,
    /// Class label (MAISI modality; the release passes 1 = CT); absent when the U-Net has none.
    #[serde(default)]
    pub class_label: Option<i64>,
    /// Per-dimension standardisation of the text embedding, `(e - mean) / std`, applied before
    /// the U-Net (the unconditional context stays zeros, i.e. the mean embedding). Absent for
    /// the release (raw CLIP embedding); `text2ct train ldm` writes it with
    /// `[text_encoder] standardize = true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_norm: Option<ContextNorm>,
}

/// See [`ConditioningRef::context_norm`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContextNorm {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

impl ContextNorm {
    /// Apply in place to one or more embeddings of `mean.len()` values each.
    pub fn apply(&self, x: &mut [f32]) {
        let d = self.mean.len();
        for row in x.chunks_mut(d) {
            for ((v, m), s) in row.iter_mut().zip(&self.mean).zip(&self.std) {
                *v = (*v - m) / s;
            }
        }
    }
}

/// VAE decoding.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecodeRef {
    /// Sliding-window size in latent voxels (clipped to the latent), or none for one pass.
    pub window: Option<[usize; 3]>,
    pub overlap: f32,
}

/// Licences of the code and of the weights, stated separately.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Licence {
    pub code: String,
    pub weights: String,
}

/// `model.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelCard {
    pub format: String,
    pub name: String,
    pub description: String,
    /// What the weights were trained on, plainly.
    pub trained_on: String,
    pub intended_use: String,
    pub licence: Licence,
    pub provenance: String,
    pub vae: NetworkRef,
    pub unet: NetworkRef,
    pub text_encoder: TextEncoderRef,
    pub tokenizer: TokenizerRef,
    /// Latent scale factor; `None` = read it from the U-Net file, else `fallback_scale_factor`.
    #[serde(default)]
    pub scale_factor: Option<f64>,
    pub fallback_scale_factor: f64,
    pub sampler: SamplerRef,
    pub output: OutputRef,
    pub conditioning: ConditioningRef,
    pub decode: DecodeRef,
    /// The arithmetic of the U-Net's and the VAE's 3x3x3 convolutions unless `--precision` says
    /// otherwise: `f32` (also when absent) or `bf16` (products of bf16-rounded activations and
    /// weights summed in f32; needs AVX512-BF16, else f32 runs). Cards without it stay valid, and
    /// cards that leave it out do not write it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precision: Option<Precision>,
}

impl ModelCard {
    pub const FORMAT: &'static str = "text2ct-model-card-v1";
    pub const FILE: &'static str = "model.json";

    /// The card for Text2CT's released weights, as its inference code runs them
    /// (`../shared/reference/text2ct-upstream.md` §1.5.2).
    pub fn text2ct_release() -> ModelCard {
        let vae = serde_json::json!({
            "spatial_dims": 3, "in_channels": 1, "out_channels": 1, "latent_channels": 4,
            "num_channels": [64, 128, 256], "num_res_blocks": [2, 2, 2], "norm_num_groups": 32,
            "norm_eps": 1e-6, "attention_levels": [false, false, false],
            "with_encoder_nonlocal_attn": false, "with_decoder_nonlocal_attn": false,
            "use_checkpointing": false, "use_convtranspose": false, "norm_float16": true,
            "num_splits": 4, "dim_split": 1
        });
        let unet = serde_json::json!({
            "spatial_dims": 3, "in_channels": 4, "out_channels": 4,
            "num_channels": [64, 128, 256, 512], "attention_levels": [false, false, true, true],
            "num_head_channels": [0, 0, 32, 32], "num_res_blocks": 2, "use_flash_attention": true,
            "include_top_region_index_input": false, "include_bottom_region_index_input": false,
            "include_spacing_input": true, "num_class_embeds": 128, "resblock_updown": true,
            "include_fc": true, "with_conditioning": true, "cross_attention_dim": 768
        });
        let clip = serde_json::json!({
            "vocab_size": 49408, "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
            "intermediate_size": 3072, "max_position_embeddings": 512, "hidden_act": "quick_gelu",
            "layer_norm_eps": 1e-5, "projection_dim": 768
        });
        ModelCard {
            format: Self::FORMAT.into(),
            name: "text2ct-release".into(),
            description: "Text2CT (Molino, Caruso et al., 2025): 3D-CLIP text encoder, MAISI VAE and a rectified-flow \
                          latent-diffusion U-Net, with the released inference settings."
                .into(),
            trained_on: "CT-RATE (non-contrast chest CT with radiology reports), per the Text2CT authors.".into(),
            intended_use: "Research: synthetic chest CT for augmentation, teaching and simulation. Not for diagnosis."
                .into(),
            licence: Licence {
                code: "Apache-2.0 (text2ct)".into(),
                weights: "as published by the Text2CT authors (check their repository before use)".into(),
            },
            provenance: "Weights downloaded by the user from the Text2CT authors' release; configs from \
                         Text2CT configs/config_rflow.json and clip.yaml."
                .into(),
            vae: NetworkRef { config: ConfigRef::Inline(vae), weights: "autoencoder_epoch273.pt".into() },
            unet: NetworkRef { config: ConfigRef::Inline(unet), weights: "unet_rflow_200ep.pt".into() },
            text_encoder: TextEncoderRef {
                kind: TextEncoderKind::Clip3d,
                config: ConfigRef::Inline(clip),
                weights: "CLIP3D_Finding_Impression_30ep.pt".into(),
                text_only: true,
            },
            tokenizer: TokenizerRef { kind: "clip-bpe".into(), max_length: 512, file: None },
            scale_factor: None,
            fallback_scale_factor: 1.0287,
            sampler: SamplerRef { kind: Sampler::Rflow, steps: 30, guidance: 5.0, exact: false },
            output: OutputRef {
                size: [512, 512, 128],
                spacing: [0.75, 0.75, 3.0],
                orientation: "RAS".into(),
                spacing_note: "nominal, as the release writes it (its training volumes were resized to \
                               512x512x128 whatever their extent)"
                    .into(),
            },
            conditioning: ConditioningRef {
                spacing_input: Some([75.0, 75.0, 300.0]),
                class_label: Some(1),
                context_norm: None,
            },
            decode: DecodeRef { window: Some([80, 80, 80]), overlap: 0.4 },
            precision: None,
        }
    }

    /// Read and check `DIR/model.json`: the format, the sampler, the geometry, and that every
    /// referenced file exists.
    pub fn load(dir: &Path) -> Result<ModelCard> {
        let path = dir.join(Self::FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| {
            GenerateError::Card(format!(
                "{}: {e} (a model folder needs a model.json card; `text2ct model init-release {}` writes one for \
                 Text2CT's released weights)",
                path.display(),
                dir.display()
            ))
        })?;
        let card: ModelCard = serde_json::from_str(&text)
            .map_err(|e| GenerateError::Card(format!("{}: not a model card: {e}", path.display())))?;
        card.validate(dir)?;
        Ok(card)
    }

    /// Check the card against its folder.
    pub fn validate(&self, dir: &Path) -> Result<()> {
        let bad = |m: String| Err(GenerateError::Card(format!("{}: {m}", dir.join(Self::FILE).display())));
        if self.format != Self::FORMAT {
            return bad(format!("format {:?}, expected {:?}", self.format, Self::FORMAT));
        }
        if self.sampler.steps == 0 || !self.sampler.guidance.is_finite() {
            return bad("sampler steps must be > 0 and guidance finite".into());
        }
        if let Some(n) = &self.conditioning.context_norm {
            if n.mean.is_empty()
                || n.mean.len() != n.std.len()
                || n.mean.iter().any(|v| !v.is_finite())
                || n.std.iter().any(|v| !(v.is_finite() && *v > 0.0))
            {
                return bad("conditioning.context_norm needs equally long mean and std, finite, std > 0".into());
            }
        }
        if self.output.size.iter().any(|&s| s == 0 || s % 4 != 0) {
            return bad(format!("output size {:?} must be positive multiples of 4", self.output.size));
        }
        if self.output.spacing.iter().any(|s| !s.is_finite() || *s <= 0.0) {
            return bad(format!("output spacing {:?} must be positive", self.output.spacing));
        }
        let want_tok = self.text_encoder.kind.tokenizer_kind();
        if self.tokenizer.kind != want_tok {
            return bad(format!(
                "tokenizer {:?} does not go with the {} text encoder (it needs {want_tok:?})",
                self.tokenizer.kind,
                self.text_encoder.kind.name()
            ));
        }
        match (self.text_encoder.kind, &self.tokenizer.file) {
            (TextEncoderKind::Minilm, None) => {
                return bad("the wordpiece tokenizer needs its file (tokenizer.file, e.g. \"tokenizer.json\")".into())
            }
            (TextEncoderKind::Clip3d, Some(f)) => {
                return bad(format!("tokenizer.file {f:?} is not used by clip-bpe (its merges are built in)"))
            }
            _ => {}
        }
        if self.tokenizer.max_length < 2 {
            return bad(format!("tokenizer max_length {} must be at least 2", self.tokenizer.max_length));
        }
        if !(self.fallback_scale_factor.is_finite() && self.fallback_scale_factor > 0.0) {
            return bad("fallback_scale_factor must be positive".into());
        }
        if !(0.0..1.0).contains(&self.decode.overlap) {
            return bad(format!("decode overlap {} must be in [0, 1)", self.decode.overlap));
        }
        for (what, f) in self.files() {
            Self::resolve(dir, what, &f)?;
        }
        Ok(())
    }

    /// The path of a file the card names (`what` says its role in messages). It must lie inside
    /// the card's folder: a relative path without `..`, naming an existing file that, with every
    /// symbolic link followed, is still inside the folder. Anything else is refused, so a card
    /// can never make a command open a file elsewhere (`../../etc/passwd`, `/dev/zero`, a link out).
    pub fn resolve(dir: &Path, what: &str, f: &str) -> Result<PathBuf> {
        let card = dir.join(Self::FILE);
        let bad = |m: String| Err(GenerateError::Card(format!("{}: {what} file {f:?} {m}", card.display())));
        let rel = Path::new(f);
        if f.is_empty() || rel.components().all(|c| c == Component::CurDir) {
            return bad("is not a file name".into());
        }
        if rel.components().any(|c| !matches!(c, Component::Normal(_) | Component::CurDir)) {
            return bad(format!(
                "is outside the model folder {}: files must be named relative to it, without `..` or an absolute path",
                dir.display()
            ));
        }
        let full = dir.join(rel);
        if !full.is_file() {
            return bad(format!("is missing from {}", dir.display()));
        }
        let root = dir.canonicalize().map_err(|e| GenerateError::Card(format!("{}: {e}", dir.display())))?;
        let real = full.canonicalize().map_err(|e| GenerateError::Card(format!("{}: {e}", full.display())))?;
        if !real.starts_with(&root) {
            return bad(format!(
                "is a link to {}, outside the model folder {}: copy the file into the folder",
                real.display(),
                root.display()
            ));
        }
        Ok(full)
    }

    /// Every file the card refers to, with its role.
    pub fn files(&self) -> Vec<(&'static str, String)> {
        let mut v = vec![
            ("VAE weights", self.vae.weights.clone()),
            ("U-Net weights", self.unet.weights.clone()),
            ("text encoder weights", self.text_encoder.weights.clone()),
        ];
        if let Some(f) = &self.tokenizer.file {
            v.push(("tokenizer", f.clone()));
        }
        for (what, c) in [
            ("VAE config", &self.vae.config),
            ("U-Net config", &self.unet.config),
            ("text encoder config", &self.text_encoder.config),
        ] {
            if let ConfigRef::File(f) = c {
                v.push((what, f.clone()));
            }
        }
        v
    }

    /// Resolve a network config to JSON.
    pub fn config_json(dir: &Path, c: &ConfigRef) -> Result<serde_json::Value> {
        match c {
            ConfigRef::Inline(v) => Ok(v.clone()),
            ConfigRef::File(f) => {
                let p = Self::resolve(dir, "config", f)?;
                let t =
                    std::fs::read_to_string(&p).map_err(|e| GenerateError::Card(format!("{}: {e}", p.display())))?;
                serde_json::from_str(&t).map_err(|e| GenerateError::Card(format!("{}: not JSON: {e}", p.display())))
            }
        }
    }

    /// The latent shape [C, X/4, Y/4, Z/4] for an output size.
    pub fn latent_shape(size: [usize; 3], channels: usize) -> [usize; 4] {
        [channels, size[0] / 4, size[1] / 4, size[2] / 4]
    }

    /// Write the card atomically into `dir`.
    pub fn save(&self, dir: &Path) -> Result<PathBuf> {
        let p = dir.join(Self::FILE);
        let json = serde_json::to_vec_pretty(self).map_err(|e| GenerateError::Card(e.to_string()))?;
        text2ct_io::error::atomic_write_bytes(&p, &json)?;
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_card_round_trips_and_checks_files() {
        let d = std::env::temp_dir().join(format!("text2ct-card-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        let card = ModelCard::text2ct_release();
        card.save(&d).unwrap();
        let e = ModelCard::load(&d).unwrap_err().to_string();
        assert!(e.contains("autoencoder_epoch273.pt") && e.contains("missing"), "{e}");
        for (_, f) in card.files() {
            std::fs::write(d.join(f), b"x").unwrap();
        }
        let back = ModelCard::load(&d).unwrap();
        assert_eq!(back, card);
        assert_eq!(ModelCard::latent_shape(back.output.size, 4), [4, 128, 128, 32]);
        // Unknown keys and bad values are refused.
        let mut j: serde_json::Value = serde_json::to_value(&card).unwrap();
        j["sampler"]["kind"] = "euler".into();
        std::fs::write(d.join("model.json"), j.to_string()).unwrap();
        let e = ModelCard::load(&d).unwrap_err().to_string();
        assert!(
            e.contains("euler") && e.contains("rflow") && e.contains(&d.join("model.json").display().to_string()),
            "{e}"
        );
        // The sampler is written and read as the same three strings.
        assert_eq!(serde_json::to_value(&card).unwrap()["sampler"]["kind"], "rflow");
        j["sampler"]["kind"] = "ddim".into();
        std::fs::write(d.join("model.json"), j.to_string()).unwrap();
        assert_eq!(ModelCard::load(&d).unwrap().sampler.kind, Sampler::Ddim);
        j["sampler"]["kind"] = "DDIM".into();
        std::fs::write(d.join("model.json"), j.to_string()).unwrap();
        assert!(ModelCard::load(&d).unwrap_err().to_string().contains("DDIM"));
        j["sampler"]["kind"] = "rflow".into();
        j["extra"] = 1.into();
        std::fs::write(d.join("model.json"), j.to_string()).unwrap();
        assert!(ModelCard::load(&d).unwrap_err().to_string().contains("extra"));
        let e = ModelCard::load(&d.join("nowhere")).unwrap_err().to_string();
        assert!(e.contains("init-release"), "{e}");
    }

    /// A card may name only files inside its folder: no `..`, no absolute path, no link out.
    #[test]
    fn card_files_must_lie_inside_the_folder() {
        let base = std::env::temp_dir().join(format!("text2ct-card-inside-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let d = base.join("model");
        std::fs::create_dir_all(d.join("sub")).unwrap();
        let card = ModelCard::text2ct_release();
        for (_, f) in card.files() {
            std::fs::write(d.join(f), b"x").unwrap();
        }
        std::fs::write(base.join("outside.pt"), b"x").unwrap();
        card.validate(&d).unwrap();
        let refused = |c: &ModelCard, needles: &[&str]| {
            let e = c.validate(&d).unwrap_err().to_string();
            for n in needles {
                assert!(e.contains(n), "{n:?} not in {e}");
            }
        };
        let mut c = card.clone();
        c.vae.weights = "../outside.pt".into();
        refused(&c, &["VAE weights file \"../outside.pt\" is outside the model folder", "model.json"]);
        c.vae.weights = "sub/../../outside.pt".into();
        refused(&c, &["outside the model folder"]);
        c.vae.weights = base.join("outside.pt").to_string_lossy().into_owned();
        refused(&c, &["outside the model folder"]);
        c.vae.weights = String::new();
        refused(&c, &["is not a file name"]);
        let mut c = card.clone();
        c.unet.config = ConfigRef::File("../outside.pt".into());
        refused(&c, &["U-Net config file \"../outside.pt\" is outside"]);
        assert!(ModelCard::config_json(&d, &ConfigRef::File("../outside.pt".into())).is_err());
        #[cfg(unix)]
        {
            // A link out is refused; a link to a file inside the folder is fine.
            std::os::unix::fs::symlink(base.join("outside.pt"), d.join("link.pt")).unwrap();
            std::fs::write(d.join("sub/real.pt"), b"x").unwrap();
            std::os::unix::fs::symlink(d.join("sub/real.pt"), d.join("inner.pt")).unwrap();
            let mut c = card.clone();
            c.text_encoder.weights = "link.pt".into();
            refused(&c, &["text encoder weights file \"link.pt\" is a link to", "outside the model folder"]);
            c.text_encoder.weights = "inner.pt".into();
            c.validate(&d).unwrap();
            c.text_encoder.weights = "./sub/real.pt".into();
            c.validate(&d).unwrap();
        }
        let _ = std::fs::remove_dir_all(&base);
    }

    /// `precision` is optional (absent = f32, not written when absent), read when given, and an
    /// unknown value is refused by name.
    #[test]
    fn precision_default_is_optional_and_checked() {
        let d = std::env::temp_dir().join(format!("text2ct-card-precision-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        let card = ModelCard::text2ct_release();
        for (_, f) in card.files() {
            std::fs::write(d.join(f), b"x").unwrap();
        }
        let mut j = serde_json::to_value(&card).unwrap();
        assert!(j.get("precision").is_none(), "{j}");
        assert_eq!(card.precision, None);
        j["precision"] = "bf16".into();
        std::fs::write(d.join("model.json"), j.to_string()).unwrap();
        assert_eq!(ModelCard::load(&d).unwrap().precision, Some(Precision::Bf16));
        j["precision"] = "f16".into();
        std::fs::write(d.join("model.json"), j.to_string()).unwrap();
        let e = ModelCard::load(&d).unwrap_err().to_string();
        assert!(e.contains("f16") && e.contains("bf16"), "{e}");
    }

    #[test]
    fn text_encoder_kind_is_backwards_compatible_and_checked() {
        let d = std::env::temp_dir().join(format!("text2ct-card-kind-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        let card = ModelCard::text2ct_release();
        for (_, f) in card.files() {
            std::fs::write(d.join(f), b"x").unwrap();
        }
        // A clip3d card writes neither `kind` nor `tokenizer.file`: cards read by older text2ct stay valid.
        let j = serde_json::to_value(&card).unwrap();
        assert!(j["text_encoder"].get("kind").is_none() && j["tokenizer"].get("file").is_none(), "{j}");
        // A card written before the fields existed reads as clip3d.
        std::fs::write(d.join("model.json"), j.to_string()).unwrap();
        assert_eq!(ModelCard::load(&d).unwrap().text_encoder.kind, TextEncoderKind::Clip3d);

        // minilm: wordpiece tokenizer with its file, which must exist and is hashed with the weights.
        let mut m = card.clone();
        m.text_encoder.kind = TextEncoderKind::Minilm;
        let e = m.validate(&d).unwrap_err().to_string();
        assert!(e.contains("\"clip-bpe\" does not go with the minilm text encoder"), "{e}");
        m.tokenizer.kind = "wordpiece".into();
        let e = m.validate(&d).unwrap_err().to_string();
        assert!(e.contains("needs its file"), "{e}");
        m.tokenizer.file = Some("tokenizer.json".into());
        let e = m.validate(&d).unwrap_err().to_string();
        assert!(e.contains("tokenizer file \"tokenizer.json\" is missing"), "{e}");
        std::fs::write(d.join("tokenizer.json"), b"{}").unwrap();
        m.validate(&d).unwrap();
        assert!(m.files().iter().any(|(w, f)| *w == "tokenizer" && f == "tokenizer.json"));
        m.save(&d).unwrap();
        let j: serde_json::Value = serde_json::from_slice(&std::fs::read(d.join("model.json")).unwrap()).unwrap();
        assert_eq!(j["text_encoder"]["kind"], "minilm");
        assert_eq!(ModelCard::load(&d).unwrap(), m);
        // Unknown kinds are refused by name; clip3d with a tokenizer file is refused.
        let mut j2 = j.clone();
        j2["text_encoder"]["kind"] = "bert".into();
        std::fs::write(d.join("model.json"), j2.to_string()).unwrap();
        let e = ModelCard::load(&d).unwrap_err().to_string();
        assert!(e.contains("bert") && e.contains("minilm"), "{e}");
        let mut c = card.clone();
        c.tokenizer.file = Some("tokenizer.json".into());
        assert!(c.validate(&d).unwrap_err().to_string().contains("not used by clip-bpe"));
    }
}
