//! The CLIP ablation's MiniLM text encoder through the binary: `text embed --encoder minilm` (checked
//! against the library), `train ldm` with `[text_encoder] kind = "minilm"` on a tiny data set, and
//! `generate --model` on the exported folder; bad input gives clear errors (exit 1, no panic).

#[path = "../../text2ct-train/tests/common.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use text2ct_generate::TextEncoder;
use text2ct_models::burn::tensor::Device;
use text2ct_models::{MiniLm, MiniLmConfig, NpyArray, Vae, VaeConfig};

fn run(args: &[&str]) -> Result<String, String> {
    let o = Command::new(env!("CARGO_BIN_EXE_text2ct"))
        .args(args)
        .env_remove("TEXT2CT_MODEL")
        .output()
        .map_err(|e| e.to_string())?;
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(!err.contains("panicked"), "{args:?}: {err}");
    if o.status.success() {
        Ok(err)
    } else {
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        Err(err)
    }
}

fn tmp(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("t2ct_cli_text_{tag}_{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The real all-MiniLM-L6-v2 tokenizer.json (gzipped fixture of text2ct-text).
fn tokenizer() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../text2ct-text/fixtures/minilm/tokenizer.json.gz")
}

/// A tiny random MiniLM with the real 30,522-id vocabulary: (config, weights).
fn tiny_minilm(d: &Path, hidden: usize) -> (PathBuf, PathBuf) {
    let cfg = MiniLmConfig {
        hidden_size: hidden,
        num_hidden_layers: 1,
        num_attention_heads: 2,
        intermediate_size: 16,
        max_position_embeddings: 64,
        ..MiniLmConfig::all_minilm_l6_v2()
    };
    let c = d.join(format!("minilm_{hidden}.json"));
    std::fs::write(&c, serde_json::to_string(&cfg).unwrap()).unwrap();
    let w = d.join(format!("minilm_{hidden}.safetensors"));
    MiniLm::new(&cfg, 4, &Device::flex()).unwrap().to_state_dict().unwrap().write_safetensors(&w, None).unwrap();
    (c, w)
}

#[test]
fn text_embed_minilm_and_bad_input() {
    let t = tmp("embed");
    let d = t.as_path();
    let (c, w) = tiny_minilm(d, 8);
    let tok = tokenizer();
    let out = d.join("one.npy");
    let text = "Findings: Bilateral pleural effusion. Impression: Effusion.";
    let base = ["text", "embed", "--encoder", "minilm", "--config", s(&c), "--weights", s(&w)];
    let with =
        |extra: &[&str]| -> Vec<String> { base.iter().chain(extra.iter()).map(|x| x.to_string()).collect::<Vec<_>>() };
    let args = with(&["--tokenizer", s(&tok), "--text", text, "--output", s(&out)]);
    run(&args.iter().map(String::as_str).collect::<Vec<_>>()).unwrap();
    let got = NpyArray::read(&out).unwrap();
    assert_eq!(got.shape, vec![1, 8]);
    let cfg = MiniLmConfig::from_json_file(&c).unwrap();
    let enc = TextEncoder::load_minilm(&cfg, &w, &tok, &Device::flex()).unwrap();
    let (want, _) = enc.encode(&[text], 64).unwrap();
    let want = want.into_data().convert::<f32>().try_into_vec::<f32>().unwrap();
    let diff = got.data.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(diff < 1e-6, "{diff}");
    let norm: f32 = got.data.iter().map(|v| v * v).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() < 1e-5, "{norm}");

    // A reports CSV: the long report is truncated to the 64 positions, with a warning; batches of 1 give the
    // same rows as one batch (padding is masked).
    let csv = d.join("reports.csv");
    let long = "nodule ".repeat(100);
    std::fs::write(
        &csv,
        format!(
            "VolumeName,ClinicalInformation_EN,Technique_EN,Findings_EN,Impressions_EN\n\
             valid_1_a_1.nii.gz,x,y,Bilateral pleural effusion.,Effusion.\n\
             valid_2_a_1.nii.gz,x,y,{long},Many nodules.\n"
        ),
    )
    .unwrap();
    let out2 = d.join("reports.npy");
    let args = with(&["--tokenizer", s(&tok), "--reports", s(&csv), "--output", s(&out2), "--batch", "1"]);
    let err = run(&args.iter().map(String::as_str).collect::<Vec<_>>()).unwrap();
    assert!(err.contains("warning: valid_2_a_1") && err.contains("truncated"), "{err}");
    let got2 = NpyArray::read(&out2).unwrap();
    assert_eq!(got2.shape, vec![2, 8]);
    let diff = got2.data[..8].iter().zip(&got.data).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(diff < 1e-5, "{diff}");
    let side: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("reports.json")).unwrap()).unwrap();
    assert_eq!(side["encoder"], "minilm");
    assert_eq!(side["max_len"], 64);
    assert_eq!(side["truncated"], serde_json::json!(["valid_2_a_1"]));

    // Bad input.
    let o = s(&out);
    let bad_tok = d.join("nope/tokenizer.json");
    let clip_cfg = d.join("clip.json");
    std::fs::write(&clip_cfg, r#"{"model_type": "clip_text_model", "hidden_size": 8}"#).unwrap();
    let not_json = d.join("not.json");
    std::fs::write(&not_json, "{ nope").unwrap();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (with(&["--text", text, "--output", o]), "needs --tokenizer"),
        (with(&["--tokenizer", s(&bad_tok), "--text", text, "--output", o]), "nope/tokenizer.json"),
        (with(&["--tokenizer", s(&c), "--text", text, "--output", o]), "not a Hugging Face tokenizer.json"),
        (with(&["--tokenizer", s(&tok), "--text", "   ", "--output", o]), "empty text"),
        (with(&["--tokenizer", s(&tok), "--text", text, "--output", o, "--max-length", "65"]), "2..=64"),
        (with(&["--tokenizer", s(&tok), "--text", text, "--output", s(&d.join("x.txt"))]), ".npy"),
    ];
    for (args, want) in cases {
        let e = run(&args.iter().map(String::as_str).collect::<Vec<_>>()).unwrap_err();
        assert!(e.contains(want), "{args:?}: want {want:?} in {e}");
    }
    for (cfg, want) in [(&clip_cfg, "model_type"), (&not_json, "bad JSON")] {
        let args = ["text", "embed", "--encoder", "minilm", "--config", s(cfg), "--weights", s(&w)];
        let e = run(&[&args[..], &["--tokenizer", s(&tok), "--text", text, "--output", o]].concat()).unwrap_err();
        assert!(e.contains(want), "{want}: {e}");
    }
    let e = run(&[
        "text",
        "embed",
        "--encoder",
        "bert",
        "--config",
        s(&c),
        "--weights",
        s(&w),
        "--text",
        text,
        "--output",
        o,
    ])
    .unwrap_err();
    assert!(e.contains("bert") && e.contains("minilm"), "{e}");
    // CLIP weights for a MiniLM config: the strict load names the missing keys.
    let wrong_w = d.join("minilm_16.safetensors");
    tiny_minilm(d, 16);
    let args = with(&["--tokenizer", s(&tok), "--text", text, "--output", o]);
    let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
    args[7] = s(&wrong_w);
    let e = run(&args).unwrap_err();
    assert!(e.contains("wrong shape") && e.contains("embeddings.word_embeddings.weight"), "{e}");
}

const UNET: &str = r#"{"spatial_dims": 3, "in_channels": 2, "out_channels": 2, "num_channels": [8, 8],
  "attention_levels": [false, true], "num_head_channels": 4, "norm_num_groups": 4, "num_res_blocks": 1,
  "with_conditioning": true, "cross_attention_dim": 8, "num_class_embeds": 2, "include_spacing_input": true,
  "resblock_updown": true, "include_fc": true, "transformer_num_layers": 1}"#;

fn ldm_toml(d: &Path, minilm: (&Path, &Path), tokenizer: Option<&Path>, out: &str) -> PathBuf {
    let unet: serde_json::Value = serde_json::from_str(UNET).unwrap();
    let mut model = String::new();
    for (k, v) in unet.as_object().unwrap() {
        model.push_str(&format!("{k} = {v}\n"));
    }
    let tok = tokenizer.map(|t| format!("tokenizer = {:?}\n", s(t))).unwrap_or_default();
    let toml = format!(
        r#"
[model]
{model}
[vae]
config = {vc:?}
weights = {vw:?}

[text_encoder]
kind = "minilm"
config = {tc:?}
weights = {tw:?}
{tok}
[data]
train_manifest = {m:?}
batch_size = 2

[run]
out_dir = {o:?}
steps = 2
checkpoint_every = 0
seed = 3

[export]
sampler_steps = 2
guidance = 2.0
"#,
        vc = s(&d.join("vae_config.json")),
        vw = s(&d.join("vae.safetensors")),
        tc = s(minilm.0),
        tw = s(minilm.1),
        m = s(&d.join("data/manifest.jsonl")),
        o = s(&d.join(out)),
    );
    let p = d.join(format!("{out}.toml"));
    std::fs::write(&p, toml).unwrap();
    p
}

#[test]
fn minilm_ablation_trains_and_generates_through_the_binary() {
    let t = tmp("ldm");
    let d = t.as_path();
    let vae_cfg: VaeConfig = serde_json::from_str(
        r#"{"spatial_dims": 3, "in_channels": 1, "out_channels": 1, "latent_channels": 2,
            "num_channels": [4, 8, 8], "num_res_blocks": [1, 1, 1], "norm_num_groups": 4,
            "attention_levels": [false, false, false]}"#,
    )
    .unwrap();
    std::fs::write(d.join("vae_config.json"), serde_json::to_string(&vae_cfg).unwrap()).unwrap();
    Vae::new(&vae_cfg, 5, &Device::flex()).unwrap().save_safetensors(&d.join("vae.safetensors")).unwrap();
    let m = common::tiny_dataset(&d.join("data"), 2, [16, 16, 8], 3);
    let text = std::fs::read_to_string(&m).unwrap();
    let lines: Vec<String> = text
        .lines()
        .zip(["Findings: nodule left.", "Findings: normal lungs."])
        .map(|(l, r)| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["report"] = r.into();
            v.to_string()
        })
        .collect();
    std::fs::write(&m, lines.join("\n") + "\n").unwrap();
    let (c8, w8) = tiny_minilm(d, 8);
    let (c16, w16) = tiny_minilm(d, 16);
    let tok = tokenizer();

    // Bad configs first: no tokenizer; an encoder whose size is not the U-Net's cross_attention_dim.
    let e = run(&["train", "ldm", "--config", s(&ldm_toml(d, (&c8, &w8), None, "no_tok"))]).unwrap_err();
    assert!(e.contains("needs tokenizer"), "{e}");
    let e = run(&["train", "ldm", "--config", s(&ldm_toml(d, (&c16, &w16), Some(&tok), "wide"))]).unwrap_err();
    assert!(e.contains("cross_attention_dim") && e.contains("minilm") && e.contains("16"), "{e}");

    // Train 2 steps with the MiniLM encoder; the exported folder names it and carries the tokenizer.
    run(&["train", "ldm", "--config", s(&ldm_toml(d, (&c8, &w8), Some(&tok), "abl"))]).unwrap();
    let md = d.join("abl/model");
    let card: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(md.join("model.json")).unwrap()).unwrap();
    assert_eq!(card["text_encoder"]["kind"], "minilm");
    assert_eq!(card["tokenizer"]["kind"], "wordpiece");
    assert_eq!(card["tokenizer"]["file"], "tokenizer.json.gz");
    assert_eq!(card["tokenizer"]["max_length"], 64);
    assert!(md.join("tokenizer.json.gz").is_file());
    // The cached text embeddings are the MiniLM's.
    let cached = NpyArray::read(&d.join("abl/cache/text/vol_0.npy")).unwrap();
    let enc =
        TextEncoder::load_minilm(&MiniLmConfig::from_json_file(&c8).unwrap(), &w8, &tok, &Device::flex()).unwrap();
    let want = enc
        .encode(&["Findings: nodule left."], 64)
        .unwrap()
        .0
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .unwrap();
    assert_eq!(cached.shape, vec![1, 8]);
    assert!(cached.data.iter().zip(&want).all(|(a, b)| (a - b).abs() < 1e-6));
    run(&["model", "show", s(&md)]).unwrap();

    // generate --model on the ablation folder.
    let out = d.join("gen");
    let err = run(&["generate", "--model", s(&md), "--prompt", "Findings: nodule left.", "--out", s(&out)]).unwrap();
    let files: Vec<String> =
        std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(files.iter().any(|f| f.ends_with(".nii.gz")), "{files:?} {err}");
    let side = files.iter().find(|f| f.ends_with(".json")).unwrap();
    let side: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join(side)).unwrap()).unwrap();
    let hashed: Vec<String> =
        serde_json::from_value(side["weights_sha256"].as_array().unwrap().iter().map(|p| p[0].clone()).collect())
            .unwrap();
    assert!(hashed.contains(&"tokenizer.json.gz".to_string()), "{hashed:?}");
    // The folder without its tokenizer: a clear error.
    std::fs::remove_file(md.join("tokenizer.json.gz")).unwrap();
    let e = run(&["generate", "--model", s(&md), "--prompt", "x", "--out", s(&d.join("gen2"))]).unwrap_err();
    assert!(e.contains("tokenizer") && e.contains("missing"), "{e}");
}
