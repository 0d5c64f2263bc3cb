//! A tiny random CLIP as a current transformers (>= 4.31) saves a `CLIPModel`: `config.json` with
//! transformers' extra keys and a 2D vision config, `model.safetensors` with unprefixed keys, the
//! 2D vision half, a 0-d `logit_scale` and no `text_model.embeddings.position_ids` (unless asked
//! for). Shared by the CLI tests and the hostile corpus.

use std::path::{Path, PathBuf};

use text2ct_models::burn::tensor::Device;
use text2ct_models::{ClipTextConfig, ClipTextEncoder, RawTensor, StateDict};

/// The projection size (top level of `config.json`; the text block keeps transformers' default 512).
pub const PROJ: usize = 6;

/// Write `config.json` and `model.safetensors` into `d`; `position_ids` are stored when given.
/// Returns (config, weights, the encoder the weights came from).
pub fn write(d: &Path, position_ids: Option<Vec<f32>>) -> (PathBuf, PathBuf, ClipTextEncoder) {
    std::fs::create_dir_all(d).unwrap();
    let text = ClipTextConfig {
        vocab_size: 49408,
        hidden_size: 8,
        num_hidden_layers: 1,
        num_attention_heads: 2,
        intermediate_size: 16,
        max_position_embeddings: 512,
        projection_dim: PROJ,
        ..ClipTextConfig::default()
    };
    let enc = ClipTextEncoder::new(&text, 11, &Device::flex()).unwrap();
    let mut sd: StateDict = enc.to_state_dict().unwrap();
    let key = "text_model.embeddings.position_ids";
    sd.tensors.remove(key);
    if let Some(v) = position_ids {
        sd.tensors.insert(key.into(), RawTensor::new(vec![1, v.len()], v));
    }
    for (k, shape) in [
        ("vision_model.embeddings.class_embedding", vec![8]),
        ("vision_model.embeddings.patch_embedding.weight", vec![8, 3, 16, 16]),
        ("vision_model.embeddings.position_embedding.weight", vec![5, 8]),
        ("vision_model.post_layernorm.weight", vec![8]),
        ("visual_projection.weight", vec![PROJ, 8]),
    ] {
        let n = shape.iter().product::<usize>();
        sd.tensors.insert(k.into(), RawTensor::new(shape, (0..n).map(|i| (i % 7) as f32 * 0.1).collect()));
    }
    sd.tensors.insert("logit_scale".into(), RawTensor::new(vec![], vec![2.6592]));
    let w = d.join("model.safetensors");
    sd.write_safetensors(&w, None).unwrap();
    let config = serde_json::json!({
        "_name_or_path": "tiny-clip",
        "architectures": ["CLIPModel"],
        "initializer_factor": 1.0,
        "logit_scale_init_value": 2.6592,
        "model_type": "clip",
        "projection_dim": PROJ,
        "text_config": {
            "model_type": "clip_text_model",
            "vocab_size": 49408, "hidden_size": 8, "intermediate_size": 16, "num_attention_heads": 2,
            "num_hidden_layers": 1, "max_position_embeddings": 512, "hidden_act": "quick_gelu",
            "layer_norm_eps": 1e-05, "attention_dropout": 0.0, "dropout": 0.0, "initializer_range": 0.02,
            "initializer_factor": 1.0, "bos_token_id": 49406, "eos_token_id": 49407, "pad_token_id": 1,
            "projection_dim": 512
        },
        "torch_dtype": "float32",
        "transformers_version": "4.44.2",
        "vision_config": {
            "model_type": "clip_vision_model", "hidden_size": 8, "intermediate_size": 16, "num_attention_heads": 2,
            "num_hidden_layers": 0, "image_size": 32, "patch_size": 16, "num_channels": 3, "projection_dim": 512
        }
    });
    let c = d.join("config.json");
    std::fs::write(&c, serde_json::to_string_pretty(&config).unwrap()).unwrap();
    (c, w, enc)
}

/// `0, 1, ..., 511` with the first two swapped: a `position_ids` buffer that is not `arange`.
pub fn swapped_positions() -> Vec<f32> {
    let mut v: Vec<f32> = (0..512).map(|i| i as f32).collect();
    v.swap(0, 1);
    v
}
