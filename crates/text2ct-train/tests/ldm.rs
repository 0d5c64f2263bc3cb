//! LDM training on a tiny data set with tiny seeded networks: loss goes down, exact resume,
//! the exported model folder generates, the scale factor is 1/std of the first batch, CFG
//! dropout happens at rate p.

mod common;

use std::path::{Path, PathBuf};

use text2ct_models::burn::tensor::Device;
use text2ct_models::{
    ClipTextConfig, ClipTextEncoder, MiniLm, MiniLmConfig, StateDict, Unet, UnetConfig, Vae, VaeConfig,
};
use text2ct_train::ldm::{
    draw_micro, scale_factor_of, train_ldm_with, LdmTrainConfig, LdmTrainOptions, Objective, TextEncoderConfig,
    UnetKeyMap,
};
use text2ct_train::ProgressEvent;

const UNET: &str = r#"{"spatial_dims": 3, "in_channels": 2, "out_channels": 2, "num_channels": [8, 8],
  "attention_levels": [false, true], "num_head_channels": 4, "norm_num_groups": 4, "num_res_blocks": 1,
  "with_conditioning": true, "cross_attention_dim": 8, "num_class_embeds": 2, "include_spacing_input": true,
  "resblock_updown": true, "include_fc": true, "transformer_num_layers": 1}"#;

/// Tiny frozen VAE and text encoder saved under `dir`, and a 4-volume manifest with reports.
fn setup(dir: &Path) -> PathBuf {
    let dev = Device::flex();
    let vae_cfg: VaeConfig = serde_json::from_str(
        r#"{"spatial_dims": 3, "in_channels": 1, "out_channels": 1, "latent_channels": 2,
            "num_channels": [4, 8, 8], "num_res_blocks": [1, 1, 1], "norm_num_groups": 4,
            "attention_levels": [false, false, false]}"#,
    )
    .unwrap();
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("vae_config.json"), serde_json::to_string(&vae_cfg).unwrap()).unwrap();
    Vae::new(&vae_cfg, 5, &dev).unwrap().save_safetensors(&dir.join("vae.safetensors")).unwrap();
    let text_json = r#"{"vocab_size": 49408, "hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2,
        "intermediate_size": 16, "max_position_embeddings": 32, "projection_dim": 8}"#;
    std::fs::write(dir.join("text_config.json"), text_json).unwrap();
    let tc = ClipTextConfig::from_json_str(text_json).unwrap();
    ClipTextEncoder::new(&tc, 6, &dev)
        .unwrap()
        .to_state_dict()
        .unwrap()
        .write_safetensors(&dir.join("text.safetensors"), None)
        .unwrap();
    std::fs::write(dir.join("unet_config.json"), UNET).unwrap();
    let m = common::tiny_dataset(&dir.join("data"), 4, [16, 16, 8], 3);
    // Give every volume a report.
    let reports =
        ["Findings: nodule left.", "Findings: normal lungs.", "Findings: effusion right.", "Findings: normal."];
    let text = std::fs::read_to_string(&m).unwrap();
    let lines: Vec<String> = text
        .lines()
        .zip(reports)
        .map(|(l, r)| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["report"] = r.into();
            v.to_string()
        })
        .collect();
    std::fs::write(&m, lines.join("\n") + "\n").unwrap();
    m
}

fn config(dir: &Path, out: &str, steps: usize, extra: &str, objective: &str, lr: f64, bs: usize) -> LdmTrainConfig {
    let p = |s: &str| dir.join(s).to_string_lossy().to_string();
    let unet: serde_json::Value = serde_json::from_str(UNET).unwrap();
    let mut model = String::new();
    for (k, v) in unet.as_object().unwrap() {
        model.push_str(&format!("{k} = {v}\n"));
    }
    let toml = format!(
        r#"
[model]
{model}
[vae]
config = {vc:?}
weights = {vw:?}

[text_encoder]
config = {tc:?}
weights = {tw:?}

[data]
train_manifest = {m:?}
batch_size = {bs}

[objective]
kind = "{objective}"

[optim]
lr = {lr}

[run]
out_dir = {o:?}
steps = {steps}
checkpoint_every = 0
seed = 11
{extra}
[export]
sampler_steps = 2
guidance = 2.0
"#,
        vc = p("vae_config.json"),
        vw = p("vae.safetensors"),
        tc = p("text_config.json"),
        tw = p("text.safetensors"),
        m = p("data/manifest.jsonl"),
        o = p(out),
    );
    LdmTrainConfig::from_toml_str(&toml).unwrap()
}

fn quiet() -> impl FnMut(ProgressEvent) {
    |_| {}
}

fn unet_tensors(dir: &Path) -> StateDict {
    StateDict::read_safetensors(&dir.join("unet.safetensors")).unwrap()
}

#[test]
fn trains_resumes_exactly_and_exports_a_generating_model() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    setup(d);

    // Straight run of 4 steps (batch 4 = the whole set, so the first batch is every latent).
    let cfg = config(d, "a", 4, "", "rflow", 1e-3, 4);
    let mut q = quiet();
    let a = train_ldm_with(&cfg, &LdmTrainOptions::default(), &mut q).unwrap();
    assert_eq!(a.steps_done, 4);
    assert_eq!(a.latent_shape, [2, 4, 4, 2]);

    // Scale factor = 1 / unbiased std of the first batch's (cached) latents.
    let mut all = Vec::new();
    for e in std::fs::read_dir(d.join("a/cache/latents")).unwrap() {
        all.extend(text2ct_io::npy::NpyArray::read(&e.unwrap().path()).unwrap().data);
    }
    assert_eq!(all.len(), 4 * 2 * 4 * 4 * 2);
    let sf = scale_factor_of(&all).unwrap();
    assert!((a.scale_factor - sf).abs() < 1e-9 * sf, "{} vs {sf}", a.scale_factor);
    let mean = all.iter().map(|&v| v as f64).sum::<f64>() / all.len() as f64;
    let var = all.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / (all.len() - 1) as f64;
    assert!((sf - 1.0 / var.sqrt()).abs() < 1e-9 * sf);

    // Interrupted at 2, resumed to 4: identical weights and optimizer-driven trajectory.
    let cfg_b = config(d, "b", 4, "", "rflow", 1e-3, 4);
    let mut q = quiet();
    let b1 = train_ldm_with(&cfg_b, &LdmTrainOptions { stop_at: Some(2) }, &mut q).unwrap();
    assert!(b1.stopped_early && b1.model_dir.is_none());
    let mut cfg_b2 = cfg_b.clone();
    cfg_b2.run.resume = true;
    let mut q = quiet();
    let b = train_ldm_with(&cfg_b2, &LdmTrainOptions::default(), &mut q).unwrap();
    assert_eq!(b.steps_done, 4);
    assert!(b.resumed_from.is_some());
    let (sa, sb) = (unet_tensors(&d.join("a/model")), unet_tensors(&d.join("b/model")));
    assert_eq!(sa.tensors.len(), sb.tensors.len());
    for (k, ta) in &sa.tensors {
        assert_eq!(ta.data, sb.tensors[k].data, "{k} differs after resume");
    }
    assert_eq!(a.final_loss, b.final_loss);
    // A fresh run refuses an out_dir with checkpoints.
    let mut q = quiet();
    assert!(train_ldm_with(&cfg_b, &LdmTrainOptions::default(), &mut q).unwrap_err().to_string().contains("resume"));

    // The exported U-Net: MONAI keys under unet_state_dict., a scale_factor, strict load.
    assert!(sa.tensors.contains_key("unet_state_dict.conv_in.conv.weight"));
    assert_eq!(sa.tensors["scale_factor"].data, vec![a.scale_factor as f32]);
    let ucfg = UnetConfig::from_json_str(UNET).unwrap();
    let ck = Unet::load_checkpoint(&ucfg, &d.join("a/model/unet.safetensors"), &Device::flex()).unwrap();
    assert_eq!(ck.scale_factor, Some(a.scale_factor as f32));
    // The key map is the inverse of loading: export(load(file)) == file.
    let map = UnetKeyMap::new(&ucfg).unwrap();
    let back = map.state_dict(&ck.unet.net).unwrap();
    for (k, t) in &back.tensors {
        let orig = &sa.tensors[&format!("unet_state_dict.{k}")];
        assert_eq!((&t.shape, &t.data), (&orig.shape, &orig.data), "{k}");
    }
    assert_eq!(back.tensors.len() + 1, sa.tensors.len());

    // The model folder loads in the generation pipeline and makes a volume of the trained size.
    let dev = Device::flex();
    let pipe = text2ct_generate::pipeline::Pipeline::load(&d.join("a/model"), &dev).unwrap();
    assert_eq!(pipe.scale_factor_source, "U-Net checkpoint");
    assert!((pipe.scale_factor - a.scale_factor).abs() < 1e-6 * a.scale_factor);
    assert_eq!(pipe.card.output.size, [16, 16, 8]);
    assert_eq!(pipe.card.output.spacing, [2.0, 2.0, 4.0]);
    assert_eq!(pipe.card.conditioning.spacing_input, Some([200.0, 200.0, 400.0]));
    assert_eq!(pipe.card.conditioning.class_label, Some(1));
    assert!(pipe.card.trained_on.contains("4 prepared volumes"), "{}", pipe.card.trained_on);
    let opts = pipe.default_options();
    assert_eq!((opts.sampler, opts.steps), (text2ct_generate::Sampler::Rflow, 2));
    let latent = pipe.check_size(opts.size).unwrap();
    let (ctx, _) = pipe.encode_prompt("Findings: nodule left.").unwrap();
    let z = pipe.sample(pipe.noise(latent, 1), &ctx, &opts, 1, &mut |_, _| {}).unwrap();
    let vol = pipe.decode(z, opts.size).unwrap();
    assert_eq!(vol.dims(), [16, 16, 8]);
    assert!(vol.data().iter().all(|v| v.is_finite() && (-1000.0..=1000.0).contains(v)));
    assert!(d.join("a/model/loss_curve.png").is_file() && d.join("a/loss_curve.png").is_file());
    assert!(d.join("a/model/metrics.json").is_file());
}

#[test]
fn loss_decreases_on_a_learnable_set() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    setup(d);
    let mut cfg = config(d, "r", 200, "", "rflow", 3e-3, 4);
    cfg.schedule.kind = text2ct_train::config::ScheduleKind::Constant;
    let mut q = quiet();
    let s = train_ldm_with(&cfg, &LdmTrainOptions::default(), &mut q).unwrap();
    let recs = text2ct_train::metrics::MetricsLog::read(&d.join("r/metrics.jsonl")).unwrap();
    assert_eq!(recs.len(), 200);
    let m = |r: &[text2ct_train::metrics::StepRecord]| r.iter().map(|x| x.losses.total).sum::<f64>() / r.len() as f64;
    let (first, last) = (m(&recs[..20]), m(&recs[180..]));
    assert!(last < 0.9 * first, "loss did not decrease: first 20 steps {first:.4}, last 20 {last:.4}");
    assert!(s.final_loss < s.first_loss);
}

#[test]
fn ddpm_objective_trains_and_exports_a_ddpm_card() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    setup(d);
    let mut cfg = config(d, "p", 2, "", "ddpm", 1e-3, 2);
    cfg.optim.grad_accum_steps = 2;
    cfg.optim.kind = text2ct_train::ldm::OptimKind::Adamw;
    let mut events = 0usize;
    let mut count = |e: ProgressEvent| {
        if matches!(e, ProgressEvent::Step { .. }) {
            events += 1
        }
    };
    let s = train_ldm_with(&cfg, &LdmTrainOptions::default(), &mut count).unwrap();
    assert_eq!(events, 2);
    assert_eq!(s.objective, Objective::Ddpm);
    let card = text2ct_generate::ModelCard::load(&d.join("p/model")).unwrap();
    assert_eq!(card.sampler.kind, text2ct_generate::Sampler::Ddpm);
    // The cache is reused by a second run over the same data.
    let before = std::fs::metadata(d.join("p/cache/latents/vol_0.npy")).unwrap().modified().unwrap();
    let mut cfg2 = cfg.clone();
    cfg2.run.resume = true;
    cfg2.run.steps = 3;
    let mut q = quiet();
    train_ldm_with(&cfg2, &LdmTrainOptions::default(), &mut q).unwrap();
    let after = std::fs::metadata(d.join("p/cache/latents/vol_0.npy")).unwrap().modified().unwrap();
    assert_eq!(before, after);
}

#[test]
fn cfg_dropout_rate_matches_p_and_draws_are_seeded() {
    let n = 20_000;
    let mut dropped = 0usize;
    for i in 0..n {
        let d = draw_micro(3, i as u64, 1, 512, 1, Objective::Rflow, 0.1).unwrap();
        dropped += d.drop[0] as usize;
        assert!((0.0..1000.0).contains(&d.t[0]));
    }
    let rate = dropped as f64 / n as f64;
    // Binomial sd = sqrt(0.09 / 20000) = 0.0021; allow 4 sd.
    assert!((rate - 0.1).abs() < 0.0085, "dropout rate {rate}");
    let a = draw_micro(3, 7, 2, 512, 4, Objective::Ddpm, 0.5).unwrap();
    assert_eq!(a, draw_micro(3, 7, 2, 512, 4, Objective::Ddpm, 0.5).unwrap());
    assert_ne!(a, draw_micro(3, 8, 2, 512, 4, Objective::Ddpm, 0.5).unwrap());
    assert!(a.t.iter().all(|t| t.fract() == 0.0 && (0.0..1000.0).contains(t)));
    assert_eq!(a.eps.len(), 8);
    let none = draw_micro(3, 7, 64, 512, 1, Objective::Rflow, 0.0).unwrap();
    assert!(none.drop.iter().all(|d| !d));
}

#[test]
fn example_config_parses_and_whole_clip_configs_give_their_text_block() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/train_ldm_phantom.toml");
    let c = LdmTrainConfig::from_toml_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    c.model.validate().unwrap();
    assert_eq!(c.model.cross_attention_dim, Some(64));
    assert_eq!((c.schedule.power, c.objective.cfg_dropout, c.optim.lr), (2.0, 0.1, 5e-4));
    assert!(UnetKeyMap::new(&c.model).unwrap().entries.iter().any(|e| e.0 == "conv_in.conv.weight"));
    // Defaults: polynomial power 2, rflow, Adam, dropout 0.1.
    let t = tempfile::tempdir().unwrap();
    let mut minimal = String::from("[model]\nspatial_dims = 3\nin_channels = 4\nout_channels = 4\n");
    minimal.push_str("[vae]\nconfig = \"a\"\nweights = \"b\"\n[text_encoder]\nconfig = \"c\"\nweights = \"d\"\n");
    minimal.push_str("[data]\ntrain_manifest = \"m\"\n[run]\nout_dir = \"o\"\n");
    let m = LdmTrainConfig::from_toml_str(&minimal).unwrap();
    assert_eq!(
        (m.schedule.power, m.objective.kind, m.optim.kind),
        (2.0, Objective::Rflow, text2ct_train::ldm::OptimKind::Adam)
    );
    assert!(LdmTrainConfig::from_toml_str(&(minimal.clone() + "typo = 1\n")).is_err());
    // A whole CLIP config (text2ct train clip's clip_config.json): its text block, with the
    // top-level projection_dim when the block has none.
    let p = t.path().join("clip_config.json");
    std::fs::write(
        &p,
        r#"{"projection_dim": 16, "text_config": {"hidden_size": 8, "num_hidden_layers": 1,
            "num_attention_heads": 2, "intermediate_size": 16, "max_position_embeddings": 40},
            "vision_config": {"dim": 8}}"#,
    )
    .unwrap();
    let (tc, json) = text2ct_train::ldm::read_text_config(&p).unwrap();
    assert_eq!((tc.hidden_size, tc.projection_dim, tc.max_position_embeddings), (8, 16, 40));
    assert_eq!(json["projection_dim"], 16);
}

/// `[text_encoder] standardize = true`: the card stores the per-dimension mean / std of the
/// cached training embeddings, and the pipeline's prompt context is `(raw - mean) / std`.
#[test]
fn standardized_context_is_stored_and_applied_at_generation() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    setup(d);
    let mut cfg = config(d, "s", 2, "", "rflow", 1e-3, 4);
    cfg.text_encoder.standardize = true;
    let mut q = quiet();
    train_ldm_with(&cfg, &LdmTrainOptions::default(), &mut q).unwrap();
    let mut rows = Vec::new();
    for e in std::fs::read_dir(d.join("s/cache/text")).unwrap() {
        rows.push(text2ct_io::npy::NpyArray::read(&e.unwrap().path()).unwrap().data);
    }
    let dim = rows[0].len();
    let n = rows.len() as f64;
    let dev = Device::flex();
    let pipe = text2ct_generate::pipeline::Pipeline::load(&d.join("s/model"), &dev).unwrap();
    let norm = pipe.card.conditioning.context_norm.clone().expect("context_norm in the card");
    assert_eq!(norm.mean.len(), dim);
    for k in 0..dim {
        let m = rows.iter().map(|r| r[k] as f64).sum::<f64>() / n;
        let s = (rows.iter().map(|r| (r[k] as f64 - m).powi(2)).sum::<f64>() / n).sqrt();
        assert!((norm.mean[k] as f64 - m).abs() < 1e-5 && (norm.std[k] as f64 - s.max(1e-6)).abs() < 1e-5, "dim {k}");
    }
    let prompt = "Findings: nodule left.";
    let (ctx, _) = pipe.encode_prompt(prompt).unwrap();
    let got = ctx.into_data().convert::<f32>().try_into_vec::<f32>().unwrap();
    let (raw, _) = pipe.text.encode(&[prompt], pipe.card.tokenizer.max_length).unwrap();
    let raw = raw.into_data().convert::<f32>().try_into_vec::<f32>().unwrap();
    for k in 0..dim {
        let want = (raw[k] - norm.mean[k]) / norm.std[k];
        assert!((got[k] - want).abs() < 1e-4 * want.abs().max(1.0), "dim {k}: {} vs {want}", got[k]);
    }
    // A card whose norm does not fit the encoder is refused.
    let mut bad = pipe.card.clone();
    bad.conditioning.context_norm.as_mut().unwrap().std[0] = 0.0;
    assert!(bad.validate(&d.join("s/model")).is_err());
}

/// The CLIP ablation: `[text_encoder] kind = "minilm"` (a tiny random MiniLM with the real WordPiece
/// vocabulary); the cache holds MiniLM embeddings, the exported folder loads in the pipeline and generates.
#[test]
fn minilm_text_encoder_trains_and_the_export_generates() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    setup(d);
    let dev = Device::flex();
    let mcfg = MiniLmConfig {
        hidden_size: 8,
        num_hidden_layers: 1,
        num_attention_heads: 2,
        intermediate_size: 16,
        max_position_embeddings: 32,
        ..MiniLmConfig::all_minilm_l6_v2()
    };
    std::fs::write(d.join("minilm.json"), serde_json::to_string(&mcfg).unwrap()).unwrap();
    let mw = d.join("minilm.safetensors");
    MiniLm::new(&mcfg, 9, &dev).unwrap().to_state_dict().unwrap().write_safetensors(&mw, None).unwrap();
    let tok = Path::new(env!("CARGO_MANIFEST_DIR")).join("../text2ct-text/fixtures/minilm/tokenizer.json.gz");
    let mut cfg = config(d, "m", 2, "", "rflow", 1e-3, 2);
    cfg.text_encoder = TextEncoderConfig {
        kind: text2ct_generate::TextEncoderKind::Minilm,
        config: d.join("minilm.json"),
        weights: mw.clone(),
        tokenizer: Some(tok.clone()),
        max_length: None,
        standardize: false,
    };
    // The config round-trips through TOML with the new fields; a clip3d config does not write them.
    let back = LdmTrainConfig::from_toml_str(&cfg.to_toml_string().unwrap()).unwrap();
    assert_eq!(back, cfg);
    let clip_toml = config(d, "c", 2, "", "rflow", 1e-3, 2).to_toml_string().unwrap();
    assert!(!clip_toml.contains("kind = \"clip3d\"") && !clip_toml.contains("tokenizer"), "{clip_toml}");

    let mut q = quiet();
    let r = train_ldm_with(&cfg, &LdmTrainOptions::default(), &mut q).unwrap();
    assert_eq!(r.steps_done, 2);
    // The cache holds the MiniLM embedding of each report (max_length = min(32 positions, 256)).
    let enc = text2ct_generate::TextEncoder::load_minilm(&mcfg, &mw, &tok, &dev).unwrap();
    let (want, _) = enc.encode(&["Findings: nodule left."], 32).unwrap();
    let want = want.into_data().convert::<f32>().try_into_vec::<f32>().unwrap();
    let got = text2ct_io::npy::NpyArray::read(&d.join("m/cache/text/vol_0.npy")).unwrap();
    assert_eq!(got.shape, vec![1, 8]);
    assert!(got.data.iter().zip(&want).all(|(a, b)| (a - b).abs() < 1e-6));

    let pipe = text2ct_generate::pipeline::Pipeline::load(&d.join("m/model"), &dev).unwrap();
    assert_eq!(pipe.text.kind(), text2ct_generate::TextEncoderKind::Minilm);
    assert_eq!((pipe.text.dim(), pipe.card.tokenizer.max_length), (8, 32));
    assert!(pipe.card.description.contains("MiniLM"), "{}", pipe.card.description);
    let (ctx, _) = pipe.encode_prompt("Findings: nodule left.").unwrap();
    let c = ctx.clone().into_data().convert::<f32>().try_into_vec::<f32>().unwrap();
    assert!(c.iter().zip(&want).all(|(a, b)| (a - b).abs() < 1e-6));
    let opts = pipe.default_options();
    let z = pipe.sample(pipe.noise(pipe.check_size(opts.size).unwrap(), 1), &ctx, &opts, 1, &mut |_, _| {}).unwrap();
    assert_eq!(pipe.decode(z, opts.size).unwrap().dims(), [16, 16, 8]);
    assert!(pipe.encode_prompt("  ").unwrap_err().to_string().contains("empty"));

    // The ablation's example config parses, with the encoder's size as the U-Net's context size.
    let ex = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/train_ldm_phantom_minilm.toml"),
    )
    .unwrap();
    let ex = LdmTrainConfig::from_toml_str(&ex).unwrap();
    assert_eq!(ex.text_encoder.kind, text2ct_generate::TextEncoderKind::Minilm);
    assert_eq!(ex.model.cross_attention_dim, Some(MiniLmConfig::all_minilm_l6_v2().output_dim()));

    // Bad [text_encoder] sections.
    let mut bad = cfg.clone();
    bad.text_encoder.tokenizer = None;
    assert!(bad.validate().unwrap_err().to_string().contains("needs tokenizer"));
    bad.text_encoder.tokenizer = Some(d.join("missing.json"));
    assert!(bad.validate().unwrap_err().to_string().contains("missing.json"));
    let mut bad = config(d, "x", 2, "", "rflow", 1e-3, 2);
    bad.text_encoder.tokenizer = Some(tok.clone());
    assert!(bad.validate().unwrap_err().to_string().contains("built in"));
    let mut bad = cfg.clone();
    bad.text_encoder.config = d.join("text_config.json"); // a CLIP config for kind = minilm
    bad.run.out_dir = d.join("y");
    let mut q = quiet();
    let e = train_ldm_with(&bad, &LdmTrainOptions::default(), &mut q).unwrap_err().to_string();
    assert!(e.contains("minilm"), "{e}");
}

/// The cache is keyed by the weights' content: a retrained text encoder of the same architecture
/// (a file of the same size) is refused instead of silently reusing the old embeddings.
#[test]
fn cache_refuses_a_different_text_encoder_of_the_same_size() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    setup(d);
    let cfg = config(d, "r", 1, "", "rflow", 1e-3, 2);
    let mut q = quiet();
    text2ct_train::ldm::build_cache(&cfg, &mut q).unwrap();
    // Same cache, same weights: reused.
    text2ct_train::ldm::build_cache(&cfg, &mut q).unwrap();
    let before = std::fs::metadata(d.join("text.safetensors")).unwrap().len();
    let tc = ClipTextConfig::from_json_file(&d.join("text_config.json")).unwrap();
    ClipTextEncoder::new(&tc, 99, &Device::flex())
        .unwrap()
        .to_state_dict()
        .unwrap()
        .write_safetensors(&d.join("text.safetensors"), None)
        .unwrap();
    assert_eq!(std::fs::metadata(d.join("text.safetensors")).unwrap().len(), before);
    match text2ct_train::ldm::build_cache(&cfg, &mut q) {
        Err(e) => assert!(e.to_string().contains("rebuild the cache"), "{e}"),
        Ok(_) => panic!("a cache made with other text-encoder weights was reused"),
    }
}

/// `[init] unet`: a run starts from the given weights and keeps their scale factor; with a
/// vanishing learning rate the export equals the initial weights. A file for another `[model]`
/// is refused by the strict load.
#[test]
fn init_starts_from_given_weights_and_keeps_their_scale_factor() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    setup(d);
    let mut q = quiet();
    train_ldm_with(&config(d, "a", 3, "", "rflow", 1e-3, 4), &LdmTrainOptions::default(), &mut q).unwrap();
    let init = d.join("a/model/unet.safetensors");
    // Another data set ordering (batch 2) would give another first-batch scale factor.
    let mut cfg = config(d, "b", 1, "", "rflow", 1e-12, 2);
    cfg.init = Some(text2ct_train::ldm::InitConfig { unet: init.clone() });
    train_ldm_with(&cfg, &LdmTrainOptions::default(), &mut q).unwrap();
    let (sa, sb) = (unet_tensors(&d.join("a/model")), unet_tensors(&d.join("b/model")));
    assert_eq!(sa.tensors.len(), sb.tensors.len());
    let mut diff = 0f32;
    for (k, ta) in &sa.tensors {
        let tb = &sb.tensors[k];
        assert_eq!(ta.shape, tb.shape, "{k}");
        for (x, y) in ta.data.iter().zip(&tb.data) {
            diff = diff.max((x - y).abs());
        }
    }
    assert!(diff < 1e-6, "fine-tuning with lr 1e-12 moved the weights by {diff}");
    // A fresh run (no init) with lr 1e-12 is far from them.
    train_ldm_with(&config(d, "c", 1, "", "rflow", 1e-12, 2), &LdmTrainOptions::default(), &mut q).unwrap();
    let sc = unet_tensors(&d.join("c/model"));
    let far =
        sa.tensors.iter().any(|(k, ta)| ta.data.iter().zip(&sc.tensors[k].data).any(|(x, y)| (x - y).abs() > 1e-3));
    assert!(far, "an uninitialised run should not reproduce the trained weights");
    // Bad init files.
    let mut bad = config(d, "e", 1, "", "rflow", 1e-3, 2);
    bad.init = Some(text2ct_train::ldm::InitConfig { unet: d.join("missing.safetensors") });
    assert!(bad.validate().is_err());
    bad.init = Some(text2ct_train::ldm::InitConfig { unet: d.join("vae.safetensors") });
    let e = train_ldm_with(&bad, &LdmTrainOptions::default(), &mut q).unwrap_err().to_string();
    assert!(e.contains("no tensor named"), "{e}");
}

#[test]
fn data_parallel_training_equals_the_single_device_run() {
    // Two replicas (here both on the CPU; on a GPU machine "wgpu:0,wgpu:1") with an uneven split of
    // a 3-sample batch (2 + 1) and gradient accumulation: the same weights as one device, up to
    // float summation order.
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    setup(d);
    let mut one = config(d, "one", 3, "", "rflow", 1e-3, 3);
    one.optim.grad_accum_steps = 2;
    let mut two = one.clone();
    two.run.out_dir = d.join("two");
    two.run.device = "cpu, cpu".into();
    let mut q = quiet();
    let a = train_ldm_with(&one, &LdmTrainOptions::default(), &mut q).unwrap();
    let mut msgs = Vec::new();
    let b = train_ldm_with(&two, &LdmTrainOptions::default(), &mut |e| {
        if let ProgressEvent::Message(m) = e {
            msgs.push(m)
        }
    })
    .unwrap();
    assert!(msgs.iter().any(|m| m.contains("data-parallel over 2 devices")), "{msgs:?}");
    assert!(
        (a.final_loss - b.final_loss).abs() < 1e-5 * a.final_loss.abs().max(1.0),
        "{} vs {}",
        a.final_loss,
        b.final_loss
    );
    let (sa, sb) = (unet_tensors(&d.join("one/model")), unet_tensors(&d.join("two/model")));
    let (mut num, mut den, mut moved) = (0f64, 0f64, 0f64);
    for (k, ta) in &sa.tensors {
        let tb = &sb.tensors[k];
        for (x, y) in ta.data.iter().zip(&tb.data) {
            num += ((x - y) as f64).powi(2);
            den += (*x as f64).powi(2);
        }
    }
    let rel = (num / den).sqrt();
    assert!(rel < 1e-5, "relative L2 difference {rel:e} between one and two devices");
    // The split must not be a no-op: a run with a different seed differs by far more.
    let mut other = one.clone();
    other.run.out_dir = d.join("other");
    other.run.seed = 12;
    let mut q = quiet();
    train_ldm_with(&other, &LdmTrainOptions::default(), &mut q).unwrap();
    let so = unet_tensors(&d.join("other/model"));
    for (k, ta) in &sa.tensors {
        for (x, y) in ta.data.iter().zip(&so.tensors[k].data) {
            moved += ((x - y) as f64).powi(2);
        }
    }
    assert!(
        (moved / den).sqrt() > 1e3 * rel.max(1e-9),
        "seed change {:e} vs device split {rel:e}",
        (moved / den).sqrt()
    );
}

#[test]
fn device_lists_are_checked_before_training() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    setup(d);
    let mut cfg = config(d, "x", 1, "", "rflow", 1e-3, 2);
    cfg.run.device = "cpu,cpu,cpu".into();
    let e = cfg.validate().unwrap_err().to_string();
    assert!(e.contains("batch_size 2 is smaller than the 3 devices"), "{e}");
    cfg.run.device = "cpu,".into();
    let mut q = quiet();
    let e = train_ldm_with(&cfg, &LdmTrainOptions::default(), &mut q).unwrap_err().to_string();
    assert!(e.contains("empty entry"), "{e}");
}
