//! End-to-end VAE training on a tiny model and data set.

mod common;

use text2ct_train::config::VaeTrainConfig;
use text2ct_train::vae::{train_vae_with, TrainOptions};
use text2ct_train::TrainError;

fn quiet() -> impl FnMut(text2ct_train::ProgressEvent) {
    |_| {}
}

#[test]
fn loss_decreases_and_outputs_are_written() {
    let dir = tempfile::tempdir().unwrap();
    let train = common::tiny_dataset(&dir.path().join("train"), 4, [16, 16, 8], 0);
    let val = common::tiny_dataset(&dir.path().join("val"), 2, [16, 16, 8], 3);
    let out = dir.path().join("run");
    let cfg = VaeTrainConfig::from_toml_str(&common::tiny_config(&train, Some(&val), &out, 40)).unwrap();
    let s = train_vae_with(&cfg, &TrainOptions::default(), &mut quiet()).unwrap();
    assert_eq!(s.steps_done, 40);
    let recs = text2ct_train::metrics::MetricsLog::read(&out.join("metrics.jsonl")).unwrap();
    assert_eq!(recs.len(), 40);
    let first: f64 = recs[..5].iter().map(|r| r.losses.l1).sum::<f64>() / 5.0;
    let last: f64 = recs[35..].iter().map(|r| r.losses.l1).sum::<f64>() / 5.0;
    assert!(last < 0.7 * first, "L1 did not decrease: first {first}, last {last}");
    let ev = s.eval.expect("evaluation");
    assert_eq!(ev.n, 2);
    assert!(ev.mae_hu.is_finite() && ev.psnr_db.is_finite());
    for f in [
        "vae.safetensors",
        "vae_config.json",
        "train_config.toml",
        "metrics.json",
        "loss_curve.png",
        "recon_preview.png",
    ] {
        assert!(out.join("final").join(f).is_file(), "missing final/{f}");
    }
    // The saved weights load back with MONAI names.
    let vcfg = text2ct_models::VaeConfig::from_json_file(&out.join("final/vae_config.json")).unwrap();
    text2ct_models::Vae::load(&vcfg, &out.join("final/vae.safetensors"), &text2ct_models::burn::tensor::Device::flex())
        .unwrap();
}

fn weights(path: &std::path::Path) -> Vec<(String, Vec<f32>)> {
    text2ct_models::StateDict::read_safetensors(path).unwrap().tensors.into_iter().map(|(k, t)| (k, t.data)).collect()
}

fn max_diff(a: &[(String, Vec<f32>)], b: &[(String, Vec<f32>)]) -> f32 {
    assert_eq!(a.len(), b.len());
    let mut m = 0f32;
    for ((ka, va), (kb, vb)) in a.iter().zip(b) {
        assert_eq!(ka, kb);
        for (x, y) in va.iter().zip(vb) {
            m = m.max((x - y).abs());
        }
    }
    m
}

#[test]
fn resume_continues_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let train = common::tiny_dataset(&dir.path().join("train"), 3, [16, 16, 8], 1);
    let toml = |out: &std::path::Path| {
        common::tiny_config(&train, None, out, 8)
            .replace("batch_size = 1", "batch_size = 1\npatch_size = [8, 8, 8]\nflip_prob = [0.5, 0.5, 0.0]")
            .replace("adv_weight = 0.0", "adv_weight = 0.1\nadv_start_step = 2\ndisc_channels = 4\ndisc_layers = 1")
            .replace("lr = 3e-3", "lr = 3e-3\ngrad_accum_steps = 2\ngrad_clip_norm = 1.0")
    };
    // Straight: 8 steps.
    let a = dir.path().join("a");
    let cfg_a = VaeTrainConfig::from_toml_str(&toml(&a)).unwrap();
    let opts = TrainOptions { stop_at: None, skip_eval: true };
    train_vae_with(&cfg_a, &opts, &mut quiet()).unwrap();
    // Interrupted after 4 steps, then resumed.
    let b = dir.path().join("b");
    let mut cfg_b = VaeTrainConfig::from_toml_str(&toml(&b)).unwrap();
    let s = train_vae_with(&cfg_b, &TrainOptions { stop_at: Some(4), skip_eval: true }, &mut quiet()).unwrap();
    assert!(s.stopped_early);
    assert_eq!(s.steps_done, 4);
    // A fresh run on the same folder is refused.
    match train_vae_with(&cfg_b, &opts, &mut quiet()) {
        Err(TrainError::Config(m)) => assert!(m.contains("resume"), "{m}"),
        other => panic!("expected a config error, got {other:?}"),
    }
    cfg_b.run.resume = true;
    let s = train_vae_with(&cfg_b, &opts, &mut quiet()).unwrap();
    assert_eq!(s.steps_done, 8);
    assert!(s.resumed_from.is_some());
    let ca = a.join("checkpoints/step-00000008");
    let cb = b.join("checkpoints/step-00000008");
    let d = max_diff(&weights(&ca.join("vae.safetensors")), &weights(&cb.join("vae.safetensors")));
    assert!(d <= 1e-6, "VAE weights differ by {d}");
    let d = max_diff(&weights(&ca.join("disc.safetensors")), &weights(&cb.join("disc.safetensors")));
    assert!(d <= 1e-6, "discriminator weights differ by {d}");
    // The logs agree too (losses step by step).
    let ma = text2ct_train::metrics::MetricsLog::read(&a.join("metrics.jsonl")).unwrap();
    let mb = text2ct_train::metrics::MetricsLog::read(&b.join("metrics.jsonl")).unwrap();
    assert_eq!(ma.len(), 8);
    assert_eq!(mb.len(), 8);
    for (x, y) in ma.iter().zip(&mb) {
        assert_eq!(x.step, y.step);
        assert!(
            (x.losses.total - y.losses.total).abs() <= 1e-6,
            "step {}: {} vs {}",
            x.step,
            x.losses.total,
            y.losses.total
        );
        assert!((x.losses.d_loss - y.losses.d_loss).abs() <= 1e-6);
    }
}
