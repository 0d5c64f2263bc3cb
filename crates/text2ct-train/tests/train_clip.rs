//! End-to-end 3D-CLIP training on a tiny model and data set.

mod common;

use std::path::Path;

use text2ct_train::clip::{read_records, train_clip_with, ClipTrainConfig, ClipTrainOptions};
use text2ct_train::TrainError;

fn quiet() -> impl FnMut(text2ct_train::ProgressEvent) {
    |_| {}
}

/// The blob data set of `common`, with a report naming each blob's position.
fn dataset(dir: &Path, n: usize, seed: u64) -> std::path::PathBuf {
    let m = common::tiny_dataset(dir, n, [16, 16, 8], seed);
    let words = ["left", "centre left", "middle", "centre right", "right"];
    let rows = ["front", "upper", "lower", "back"];
    let s = std::fs::read_to_string(&m).unwrap();
    let mut out = String::new();
    for (i, line) in s.lines().enumerate() {
        let mut v: serde_json::Value = serde_json::from_str(line).unwrap();
        let a = (i as u64 * 7 + seed) % 5;
        let b = (i as u64 * 3 + seed) % 4;
        v["report"] = format!(
            "Findings: a bright blob in the {} {} part. Impression: blob.",
            words[a as usize], rows[b as usize]
        )
        .into();
        let mut labels = vec![0u8; 18];
        labels[a as usize] = 1;
        v["labels"] = labels.into();
        out.push_str(&v.to_string());
        out.push('\n');
    }
    std::fs::write(&m, out).unwrap();
    m
}

fn config(train: &Path, out: &Path, steps: usize, extra_optim: &str) -> String {
    format!(
        r#"
[model]
projection_dim = 16

[model.text_config]
hidden_size = 16
num_hidden_layers = 1
num_attention_heads = 2
intermediate_size = 32
max_position_embeddings = 24
projection_dim = 16

[model.vision_config]
dim = 16
codebook_size = 64
image_size = 16
patch_size = 8
temporal_patch_size = 4
input_depth = 8
spatial_depth = 1
temporal_depth = 1
dim_head = 8
heads = 2

[data]
train_manifest = {train:?}
batch_size = 4

[optim]
lr = 3e-3
{extra_optim}

[run]
out_dir = {out:?}
steps = {steps}
checkpoint_every = 0
"#,
        train = train.to_string_lossy(),
        out = out.to_string_lossy(),
    )
}

#[test]
fn loss_decreases_and_weights_load_with_text2ct_names() {
    let dir = tempfile::tempdir().unwrap();
    let train = dataset(&dir.path().join("train"), 4, 0);
    let out = dir.path().join("run");
    let cfg = ClipTrainConfig::from_toml_str(&config(&train, &out, 30, "")).unwrap();
    assert_eq!(cfg.warmup_steps(), 6);
    assert_eq!(cfg.optim.weight_decay, 1e-4);
    let s = train_clip_with(&cfg, &ClipTrainOptions::default(), &mut quiet()).unwrap();
    assert_eq!(s.steps_done, 30);
    let recs = read_records(&out.join("metrics.jsonl")).unwrap();
    assert_eq!(recs.len(), 30);
    let first: f64 = recs[..5].iter().map(|r| r.loss).sum::<f64>() / 5.0;
    let last: f64 = recs[25..].iter().map(|r| r.loss).sum::<f64>() / 5.0;
    assert!(last < 0.7 * first && last < (4f64).ln(), "InfoNCE did not decrease: first {first}, last {last}");
    assert!(recs.iter().all(|r| (0.0..=text2ct_models::clip3d::LOGIT_SCALE_MAX + 1e-6).contains(&r.logit_scale)));
    // warm-up then cosine
    assert!(recs[0].lr < recs[5].lr && recs[29].lr < recs[6].lr);
    for f in [
        "clip.safetensors",
        "clip_f16.safetensors",
        "clip_config.json",
        "train_config.toml",
        "metrics.json",
        "loss_curve.png",
    ] {
        assert!(out.join("final").join(f).is_file(), "missing final/{f}");
    }
    let sd = text2ct_models::StateDict::read_safetensors(&out.join("final/clip.safetensors")).unwrap();
    assert!(sd.tensors.keys().all(|k| k.starts_with("model.")));
    assert!(sd.tensors.contains_key("model.logit_scale"));
    assert!(sd.tensors.contains_key("model.visual_projection.weight"));
    let dev = text2ct_models::burn::tensor::Device::flex();
    let mcfg = text2ct_models::Clip3dConfig::from_json_file(&out.join("final/clip_config.json")).unwrap();
    let full = text2ct_models::Clip3d::load(&mcfg, &out.join("final/clip.safetensors"), &dev).unwrap();
    let half = text2ct_models::Clip3d::load(&mcfg, &out.join("final/clip_f16.safetensors"), &dev).unwrap();
    text2ct_models::ClipTextEncoder::load(&mcfg.text_config, &out.join("final/clip.safetensors"), &dev).unwrap();
    let a = full.to_state_dict().unwrap();
    let b = half.to_state_dict().unwrap();
    for (k, t) in &a.tensors {
        let u = &b.tensors[k];
        for (x, y) in t.data.iter().zip(&u.data) {
            assert!((x - y).abs() <= 1e-3 * x.abs().max(1e-2), "{k}: {x} vs {y}");
        }
    }
    // The trained model separates its training pairs (text i is nearest to volume i).
    let tok = text2ct_text::ClipTokenizer::default_embedded().unwrap();
    let set = text2ct_train::data::VolumeSet::open(&train, None).unwrap();
    let vols = text2ct_train::clip::embed_volumes(&full, &set, 2, &mut quiet()).unwrap();
    let texts: Vec<String> = set.items.iter().map(|i| i.entry.report.clone()).collect();
    let txt = text2ct_train::clip::embed_texts(&full, &tok, &texts, 3).unwrap();
    let r = top1_recall(&txt, &vols);
    assert!(r >= 0.5, "training-pair top-1 recall {r}");
}

/// A run of `config` with no options, trained to the end.
fn train_plain(train: &Path, out: &Path, steps: usize) {
    let cfg = ClipTrainConfig::from_toml_str(&config(train, out, steps, "")).unwrap();
    train_clip_with(&cfg, &ClipTrainOptions::default(), &mut quiet()).unwrap();
}

fn top1_recall(t: &[Vec<f32>], v: &[Vec<f32>]) -> f64 {
    let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
    let hits = (0..t.len()).filter(|&i| (0..v.len()).all(|j| j == i || dot(&t[i], &v[j]) < dot(&t[i], &v[i]))).count();
    hits as f64 / t.len() as f64
}

fn weights(path: &Path) -> Vec<(String, Vec<f32>)> {
    text2ct_models::StateDict::read_safetensors(path).unwrap().tensors.into_iter().map(|(k, t)| (k, t.data)).collect()
}

#[test]
fn resume_continues_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let train = dataset(&dir.path().join("train"), 6, 1);
    assert_resume_exact(dir.path(), &|out| config(&train, out, 6, "grad_accum_steps = 2\ngrad_clip_norm = 1.0"));
}

/// `[loss] label_weight` and `[data] label_caption_prob`: the run still resumes exactly (the label
/// head and its optimizer state live in the checkpoints, the captions are seeded by step), the
/// auxiliary loss is logged, and the exported CLIP holds exactly the keys of a run without them.
#[test]
fn label_head_and_captions_resume_exactly_and_stay_out_of_the_export() {
    let dir = tempfile::tempdir().unwrap();
    let train = dataset(&dir.path().join("train"), 6, 1);
    let toml = |out: &Path| {
        config(&train, out, 6, "grad_accum_steps = 2")
            .replace("batch_size = 4", "batch_size = 4\nlabel_caption_prob = 0.5")
            .replace("[run]", "[loss]\nlabel_weight = 0.5\n\n[run]")
    };
    let (a, _) = assert_resume_exact(dir.path(), &toml);
    assert!(a.join("checkpoints/step-00000006/label_head.safetensors").is_file());
    assert!(a.join("checkpoints/step-00000006/label_head_optim.bpk").is_file());
    let recs = read_records(&a.join("metrics.jsonl")).unwrap();
    assert!(recs.iter().all(|r| r.label_loss.is_some_and(|l| l.is_finite() && l > 0.0)), "{recs:?}");
    // Same keys as a plain run's export.
    let plain = dir.path().join("plain");
    train_plain(&train, &plain, 1);
    let keys = |p: &Path| weights(p).into_iter().map(|(k, _)| k).collect::<Vec<_>>();
    assert_eq!(keys(&a.join("final/clip.safetensors")), keys(&plain.join("final/clip.safetensors")));
    // The label loss is what the head and the towers learn: after 30 steps on 6 pairs it is
    // below its start (the head starts at the training priors, so a model that does not learn
    // stays at the start).
    let long = dir.path().join("long");
    let cfg = ClipTrainConfig::from_toml_str(
        &config(&train, &long, 30, "").replace("[run]", "[loss]\nlabel_weight = 1.0\n\n[run]"),
    )
    .unwrap();
    train_clip_with(&cfg, &ClipTrainOptions::default(), &mut quiet()).unwrap();
    let r = read_records(&long.join("metrics.jsonl")).unwrap();
    let first = r[..3].iter().map(|x| x.label_loss.unwrap()).sum::<f64>() / 3.0;
    let last = r[27..].iter().map(|x| x.label_loss.unwrap()).sum::<f64>() / 3.0;
    assert!(last < 0.95 * first, "label BCE {first} -> {last}");
    let bad = config(&train, &long, 3, "").replace("[run]", "[loss]\nlabel_weight = -1.0\n\n[run]");
    assert!(ClipTrainConfig::from_toml_str(&bad).unwrap().validate().is_err());
}

/// Train to 6 steps in one go (`root/a`) and in two sessions with a stop at 3 (`root/b`); the
/// step-6 weights and the logged losses must agree. Returns both run folders.
fn assert_resume_exact(root: &Path, toml: &dyn Fn(&Path) -> String) -> (std::path::PathBuf, std::path::PathBuf) {
    let opts = ClipTrainOptions::default();
    let a = root.join("a");
    train_clip_with(&ClipTrainConfig::from_toml_str(&toml(&a)).unwrap(), &opts, &mut quiet()).unwrap();
    let b = root.join("b");
    let mut cfg_b = ClipTrainConfig::from_toml_str(&toml(&b)).unwrap();
    let s = train_clip_with(&cfg_b, &ClipTrainOptions { stop_at: Some(3) }, &mut quiet()).unwrap();
    assert!(s.stopped_early);
    assert_eq!(s.steps_done, 3);
    match train_clip_with(&cfg_b, &opts, &mut quiet()) {
        Err(TrainError::Config(m)) => assert!(m.contains("resume"), "{m}"),
        other => panic!("expected a config error, got {other:?}"),
    }
    cfg_b.run.resume = true;
    let s = train_clip_with(&cfg_b, &opts, &mut quiet()).unwrap();
    assert_eq!(s.steps_done, 6);
    assert!(s.resumed_from.is_some());
    let wa = weights(&a.join("checkpoints/step-00000006/clip.safetensors"));
    let wb = weights(&b.join("checkpoints/step-00000006/clip.safetensors"));
    assert_eq!(wa.len(), wb.len());
    let mut d = 0f32;
    for ((ka, va), (kb, vb)) in wa.iter().zip(&wb) {
        assert_eq!(ka, kb);
        for (x, y) in va.iter().zip(vb) {
            d = d.max((x - y).abs());
        }
    }
    let ra = read_records(&a.join("metrics.jsonl")).unwrap();
    let rb = read_records(&b.join("metrics.jsonl")).unwrap();
    assert!(d <= 1e-6, "weights differ by {d}");
    assert_eq!(ra.len(), 6);
    assert_eq!(rb.len(), 6);
    for (x, y) in ra.iter().zip(&rb) {
        assert_eq!(x.step, y.step);
        assert!((x.loss - y.loss).abs() <= 1e-6, "step {}: {} vs {}", x.step, x.loss, y.loss);
        assert_eq!(x.lr, y.lr);
    }
    (a, b)
}

#[test]
fn bad_configs_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let train = dataset(&dir.path().join("train"), 4, 0);
    let out = dir.path().join("run");
    let base = config(&train, &out, 5, "");
    assert!(ClipTrainConfig::from_toml_str(&base.replace("batch_size = 4", "batch_size = 4\ntypo = 1")).is_err());
    let c = ClipTrainConfig::from_toml_str(&base.replace("batch_size = 4", "batch_size = 1")).unwrap();
    assert!(matches!(c.validate(), Err(TrainError::Config(_))));
    // Vision input that does not match the volumes.
    let c = ClipTrainConfig::from_toml_str(&base.replace("input_depth = 8", "input_depth = 16")).unwrap();
    match train_clip_with(&c, &ClipTrainOptions::default(), &mut quiet()) {
        Err(TrainError::Config(m)) => assert!(m.contains("expects"), "{m}"),
        other => panic!("expected a config error, got {other:?}"),
    }
    // The TOML round trip (what checkpoints keep) parses back to the same config.
    let c = ClipTrainConfig::from_toml_str(&base).unwrap();
    assert_eq!(ClipTrainConfig::from_toml_str(&c.to_toml_string().unwrap()).unwrap(), c);
}

#[test]
fn training_is_deterministic() {
    let dir = tempfile::tempdir().unwrap();
    let train = dataset(&dir.path().join("train"), 6, 1);
    let toml = |out: &Path| config(&train, out, 6, "grad_accum_steps = 2\ngrad_clip_norm = 1.0");
    let opts = ClipTrainOptions::default();
    let a = dir.path().join("a");
    let b = dir.path().join("b");
    train_clip_with(&ClipTrainConfig::from_toml_str(&toml(&a)).unwrap(), &opts, &mut quiet()).unwrap();
    train_clip_with(&ClipTrainConfig::from_toml_str(&toml(&b)).unwrap(), &opts, &mut quiet()).unwrap();
    let ra = read_records(&a.join("metrics.jsonl")).unwrap();
    let rb = read_records(&b.join("metrics.jsonl")).unwrap();
    assert_eq!(ra.iter().map(|r| r.loss).collect::<Vec<_>>(), rb.iter().map(|r| r.loss).collect::<Vec<_>>());
    let wa = weights(&a.join("checkpoints/step-00000006/clip.safetensors"));
    let wb = weights(&b.join("checkpoints/step-00000006/clip.safetensors"));
    let mut d = 0f32;
    for ((_, va), (_, vb)) in wa.iter().zip(&wb) {
        for (x, y) in va.iter().zip(vb) {
            d = d.max((x - y).abs());
        }
    }
    assert_eq!(d, 0.0, "two identical runs differ");
}

/// `[codebook] update = "ema"` (the default) moves CT-ViT's codebook and its cluster sizes;
/// `"frozen"` leaves both exactly at their initialisation.
#[test]
fn codebook_ema_moves_codes_frozen_keeps_them() {
    let dir = tempfile::tempdir().unwrap();
    let train = dataset(&dir.path().join("train"), 6, 2);
    let run = |name: &str, extra: &str| {
        let out = dir.path().join(name);
        let toml = config(&train, &out, 2, "").replace("[run]", &format!("{extra}\n[run]"));
        train_clip_with(&ClipTrainConfig::from_toml_str(&toml).unwrap(), &ClipTrainOptions::default(), &mut quiet())
            .unwrap();
        let w = weights(&out.join("checkpoints/step-00000002/clip.safetensors"));
        let get = |k: &str| w.iter().find(|(n, _)| n.ends_with(k)).map(|(_, v)| v.clone()).unwrap();
        (get("vq._codebook.embed"), get("vq._codebook.cluster_size"))
    };
    let (e_ema, c_ema) = run("ema", "");
    let (e_fr, c_fr) = run("frozen", "[codebook]\nupdate = \"frozen\"");
    assert!(c_fr.iter().all(|&c| c == 0.0), "frozen codebook counted usage");
    // 2 steps x batch 4 x (2 x 2 x 2) tokens = 64 assignments, EMA-weighted: 0.2*(n2) + 0.16*(n1).
    let total: f32 = c_ema.iter().sum();
    assert!((total - (0.2 * 32.0 + 0.16 * 32.0)).abs() < 1e-3, "EMA cluster sizes sum to {total}");
    let moved = e_ema.iter().zip(&e_fr).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(moved > 1e-3, "EMA did not move the codebook ({moved})");
    let bad = config(&train, &dir.path().join("bad"), 2, "").replace("[run]", "[codebook]\ndecay = 1.5\n[run]");
    assert!(ClipTrainConfig::from_toml_str(&bad).unwrap().validate().is_err());
}

/// `quantize = false` (continuous CT-ViT tokens): trains, keeps the option in the exported
/// config, and the exported model's inference embedding separates the training pairs.
#[test]
fn unquantized_vision_trains_and_exports_the_option() {
    let dir = tempfile::tempdir().unwrap();
    let train = dataset(&dir.path().join("train"), 4, 0);
    let out = dir.path().join("run");
    let toml = config(&train, &out, 20, "").replace("heads = 2", "heads = 2\nquantize = false");
    let cfg = ClipTrainConfig::from_toml_str(&toml).unwrap();
    assert!(!cfg.model.vision_config.quantize);
    train_clip_with(&cfg, &ClipTrainOptions::default(), &mut quiet()).unwrap();
    let recs = read_records(&out.join("metrics.jsonl")).unwrap();
    let first: f64 = recs[..4].iter().map(|r| r.loss).sum::<f64>() / 4.0;
    let last: f64 = recs[16..].iter().map(|r| r.loss).sum::<f64>() / 4.0;
    assert!(last < 0.7 * first, "first {first}, last {last}");
    let json = std::fs::read_to_string(out.join("final/clip_config.json")).unwrap();
    assert!(json.contains("\"quantize\": false") || json.contains("\"quantize\":false"), "{json}");
    let mcfg = text2ct_models::Clip3dConfig::from_json_file(&out.join("final/clip_config.json")).unwrap();
    let dev = text2ct_models::burn::tensor::Device::flex();
    let full = text2ct_models::Clip3d::load(&mcfg, &out.join("final/clip.safetensors"), &dev).unwrap();
    let tok = text2ct_text::ClipTokenizer::default_embedded().unwrap();
    let set = text2ct_train::data::VolumeSet::open(&train, None).unwrap();
    let vols = text2ct_train::clip::embed_volumes(&full, &set, 2, &mut quiet()).unwrap();
    let texts: Vec<String> = set.items.iter().map(|i| i.entry.report.clone()).collect();
    let txt = text2ct_train::clip::embed_texts(&full, &tok, &texts, 3).unwrap();
    assert!(top1_recall(&txt, &vols) >= 0.5);
}

/// The phantom recipe parses, keeps its text2ct options through a TOML round trip, and uses the
/// tokenizer's vocabulary.
#[test]
fn phantom_config_parses_with_its_options() {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/train_clip_phantom.toml");
    let c = ClipTrainConfig::from_toml_str(&std::fs::read_to_string(p).unwrap()).unwrap();
    assert!(!c.model.vision_config.normalize_patches && !c.model.vision_config.quantize);
    assert!(c.loss.label_weight > 0.0 && c.data.label_caption_prob > 0.0);
    assert!((c.model.logit_scale_init_value - 100f64.ln()).abs() < 1e-3);
    assert_eq!(c.model.text_config.vocab_size, 49408);
    assert_eq!(ClipTrainConfig::from_toml_str(&c.to_toml_string().unwrap()).unwrap(), c);
}

/// `[init]`: a run starts from the given CLIP (and label head) instead of a random one; a CLIP of
/// another shape, a missing file or a head without `label_weight` are refused.
#[test]
fn init_fine_tunes_from_trained_weights() {
    let dir = tempfile::tempdir().unwrap();
    let train = dataset(&dir.path().join("train"), 6, 2);
    let with_head = |out: &Path, steps: usize, extra: &str| {
        config(&train, out, steps, extra)
            .replace("[run]", "[loss]\nlabel_weight = 0.5\n\n[codebook]\nupdate = \"frozen\"\n\n[run]")
    };
    let a = dir.path().join("a");
    let opts = ClipTrainOptions::default();
    train_clip_with(&ClipTrainConfig::from_toml_str(&with_head(&a, 20, "")).unwrap(), &opts, &mut quiet()).unwrap();
    let clip = a.join("final/clip.safetensors");
    let head = a.join("checkpoints/step-00000020/label_head.safetensors");
    let init = format!("\n[init]\nclip = {:?}\nlabel_head = {:?}\n", clip.to_string_lossy(), head.to_string_lossy());
    // One step at a vanishing rate: the weights stay those of `a`, and the first loss is a trained
    // model's (below a fresh model's first loss).
    let b = dir.path().join("b");
    let cfg_b =
        ClipTrainConfig::from_toml_str(&(with_head(&b, 1, "").replace("lr = 3e-3", "lr = 1e-12") + &init)).unwrap();
    assert!(cfg_b.init.as_ref().is_some_and(|i| i.label_head.is_some()));
    train_clip_with(&cfg_b, &opts, &mut quiet()).unwrap();
    let wa = weights(&clip);
    let wb = weights(&b.join("final/clip.safetensors"));
    assert_eq!(wa.len(), wb.len());
    for ((ka, va), (kb, vb)) in wa.iter().zip(&wb) {
        assert_eq!(ka, kb);
        let d = va.iter().zip(vb).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        assert!(d <= 1e-6, "{ka}: differs from the init by {d}");
    }
    let ra = read_records(&a.join("metrics.jsonl")).unwrap();
    let rb = read_records(&b.join("metrics.jsonl")).unwrap();
    assert!(rb[0].loss < ra[0].loss, "fine-tune starts at {} (fresh run: {})", rb[0].loss, ra[0].loss);
    let la = ra.last().unwrap().label_loss.unwrap();
    let lb = rb[0].label_loss.unwrap();
    assert!(lb < ra[0].label_loss.unwrap(), "label head not loaded: {lb} vs fresh {}", ra[0].label_loss.unwrap());
    assert!(lb.is_finite() && la.is_finite());
    // [init] without a label head keeps the run's fresh head (the label loss is still trained).
    let fresh = dir.path().join("fresh");
    let only_clip = format!("\n[init]\nclip = {:?}\n", clip.to_string_lossy());
    train_clip_with(
        &ClipTrainConfig::from_toml_str(&(with_head(&fresh, 1, "") + &only_clip)).unwrap(),
        &opts,
        &mut quiet(),
    )
    .unwrap();
    let rf = read_records(&fresh.join("metrics.jsonl")).unwrap();
    assert!(rf[0].label_loss.is_some_and(|l| l.is_finite()), "{rf:?}");
    assert!(fresh.join("checkpoints/step-00000001/label_head.safetensors").is_file());
    // Refused: a CLIP of another shape (strict load), a missing file, a head with no head loss.
    let c = dir.path().join("c");
    let other = (config(&train, &c, 1, "") + &format!("\n[init]\nclip = {:?}\n", clip.to_string_lossy()))
        .replace("intermediate_size = 32", "intermediate_size = 48");
    assert!(train_clip_with(&ClipTrainConfig::from_toml_str(&other).unwrap(), &opts, &mut quiet()).is_err());
    let missing = config(&train, &c, 1, "") + "\n[init]\nclip = \"/nonexistent/clip.safetensors\"\n";
    assert!(ClipTrainConfig::from_toml_str(&missing).unwrap().validate().is_err());
    let headless = config(&train, &c, 1, "") + &init;
    match ClipTrainConfig::from_toml_str(&headless).unwrap().validate() {
        Err(TrainError::Config(m)) => assert!(m.contains("label_weight"), "{m}"),
        other => panic!("expected a config error, got {other:?}"),
    }
}

/// `[loss] mirror_negatives`: reports naming a side bring their mirror as an extra negative. Same
/// seed, same first batch: the first loss is higher with them (more candidates in the image ->
/// text softmax, the hardest one a near copy of the target); the run resumes exactly.
#[test]
fn mirror_negatives_add_hard_negatives_and_resume_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let train = dataset(&dir.path().join("train"), 6, 3);
    // The blob reports name sides ("left", "centre right", ...) except "middle".
    assert!(std::fs::read_to_string(&train).unwrap().contains("right"));
    let mirror = |out: &Path| config(&train, out, 6, "").replace("[run]", "[loss]\nmirror_negatives = true\n\n[run]");
    let (a, _) = assert_resume_exact(dir.path(), &mirror);
    let plain = dir.path().join("plain");
    train_plain(&train, &plain, 1);
    let with = read_records(&a.join("metrics.jsonl")).unwrap()[0].loss;
    let without = read_records(&plain.join("metrics.jsonl")).unwrap()[0].loss;
    assert!(with > without + 1e-4, "first loss with mirrors {with}, without {without}");
}

/// `[[loss.report_labels]]`: targets matched in the report join the label head (18 + n outputs,
/// in the checkpoint), the run resumes exactly, and bad entries are refused.
#[test]
fn report_labels_extend_the_label_head() {
    let dir = tempfile::tempdir().unwrap();
    let train = dataset(&dir.path().join("train"), 6, 4);
    let extra = "[loss]\nlabel_weight = 0.5\n\n[[loss.report_labels]]\nname = \"right side\"\npattern = \"(?i)\\\\bright\\\\b\"\nweight = 5.0\n\n[[loss.report_labels]]\nname = \"left side\"\npattern = \"(?i)\\\\bleft\\\\b\"\n\n[run]";
    let toml = |out: &Path| config(&train, out, 6, "").replace("[run]", extra);
    let cfg = ClipTrainConfig::from_toml_str(&toml(&dir.path().join("x"))).unwrap();
    assert_eq!(cfg.loss.report_labels.len(), 2);
    assert_eq!((cfg.loss.report_labels[0].weight, cfg.loss.report_labels[1].weight), (5.0, 1.0));
    assert!(cfg.loss.report_label_regexes().unwrap()[0].is_match("centre Right front"));
    let (a, _) = assert_resume_exact(dir.path(), &toml);
    let head = text2ct_models::StateDict::read_safetensors(&a.join("checkpoints/step-00000006/label_head.safetensors"))
        .unwrap();
    let w = head.tensors.values().find(|t| t.shape.len() == 2).expect("head weight");
    assert!(w.shape.contains(&20), "head shape {:?}", w.shape);
    let recs = read_records(&a.join("metrics.jsonl")).unwrap();
    assert!(recs.iter().all(|r| r.label_loss.is_some_and(|l| l.is_finite())));
    // Refused: no label head, a bad pattern, an unnamed entry.
    let c = dir.path().join("c");
    let no_head = toml(&c).replace("label_weight = 0.5", "label_weight = 0.0");
    assert!(ClipTrainConfig::from_toml_str(&no_head).unwrap().validate().is_err());
    let bad = toml(&c).replace("(?i)\\\\bleft\\\\b", "(unclosed");
    match ClipTrainConfig::from_toml_str(&bad).unwrap().validate() {
        Err(TrainError::Config(m)) => assert!(m.contains("left side") && m.contains("pattern"), "{m}"),
        other => panic!("expected a config error, got {other:?}"),
    }
    let unnamed = toml(&c).replace("name = \"left side\"", "name = \" \"");
    assert!(ClipTrainConfig::from_toml_str(&unnamed).unwrap().validate().is_err());
    let negative = toml(&c).replace("weight = 5.0", "weight = -1.0");
    match ClipTrainConfig::from_toml_str(&negative).unwrap().validate() {
        Err(TrainError::Config(m)) => assert!(m.contains("right side") && m.contains("weight"), "{m}"),
        other => panic!("expected a config error, got {other:?}"),
    }
}
