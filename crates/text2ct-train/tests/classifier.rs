//! CT-Net classifier training on a tiny labelled set: the loss goes down, the classifier folder
//! loads and predicts, and a resumed run is bit-identical to an uninterrupted one.

mod common;

use std::path::{Path, PathBuf};

use text2ct_train::classifier::{train_with, ClassifierTrainConfig, ClassifierTrainOptions};

fn quiet() -> impl FnMut(text2ct_train::ProgressEvent) {
    |_| {}
}

/// `n` volumes of 32 x 32 x 6 with two learnable labels: "Medical material" (index 0) = a
/// small 1000 HU cube, "Pleural effusion" (index 12) = a fluid layer (0 HU) at the bottom of
/// the right half (x < 16, RAS). Everything else is soft tissue / air.
pub fn labelled_dataset(dir: &Path, n: usize, seed: u64) -> PathBuf {
    let dims = [32usize, 32, 6];
    std::fs::create_dir_all(dir.join("volumes")).unwrap();
    let mut lines = String::new();
    for i in 0..n {
        let h = (i as u64).wrapping_mul(2654435761).wrapping_add(seed * 97);
        let k = i + seed as usize;
        let metal = k % 2 == 0;
        let fluid = (k / 2) % 3 != 0;
        let [nx, ny, nz] = dims;
        let mut data = vec![-1000i16; nx * ny * nz];
        for z in 0..nz {
            for y in 4..28 {
                for x in 4..28 {
                    data[x + nx * (y + ny * z)] = -800 + ((x * 7 + y * 3 + z * 11) % 40) as i16;
                }
            }
            if fluid {
                for y in 18..26 {
                    for x in 5..15 {
                        data[x + nx * (y + ny * z)] = 10;
                    }
                }
            }
        }
        if metal {
            let (cx, cy) = (8 + (h % 13) as usize, 6 + ((h >> 11) % 10) as usize);
            for z in 1..5 {
                for y in cy..cy + 3 {
                    for x in cx..cx + 3 {
                        data[x + nx * (y + ny * z)] = 1000;
                    }
                }
            }
        }
        let mut labels = vec![0u8; 18];
        labels[0] = metal as u8;
        labels[12] = fluid as u8;
        let id = format!("vol_{seed}_{i}");
        common::write_i16_npy(&dir.join(format!("volumes/{id}.npy")), dims, &data);
        let entry = serde_json::json!({
            "id": id, "volume": format!("volumes/{id}.npy"), "report": "", "labels": labels,
            "spacing": [6.0, 6.0, 10.0], "dims": dims,
            "affine": [[6.0, 0.0, 0.0, 0.0], [0.0, 6.0, 0.0, 0.0], [0.0, 0.0, 10.0, 0.0], [0.0, 0.0, 0.0, 1.0]],
            "source": "test", "hu": "as_is"
        });
        lines.push_str(&entry.to_string());
        lines.push('\n');
    }
    let m = dir.join("manifest.jsonl");
    std::fs::write(&m, lines).unwrap();
    m
}

pub fn tiny_config(train: &Path, val: Option<&Path>, out: &Path, steps: usize) -> String {
    let val = val.map(|v| format!("[data.val]\nvolumes = {:?}\n", v.to_string_lossy())).unwrap_or_default();
    format!(
        r#"
[model]
trunk_widths = [4, 4, 8, 8]
trunk_stem_width = 4
fc = [16, 8]
dropout = 0.2

[data]
batch_size = 4

[[data.train]]
volumes = {train:?}

{val}
[optim]
lr = 3e-3

[schedule]
kind = "constant"

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
fn loss_decreases_and_the_classifier_folder_works() {
    let dir = tempfile::tempdir().unwrap();
    let train = labelled_dataset(&dir.path().join("train"), 16, 0);
    let val = labelled_dataset(&dir.path().join("val"), 8, 5);
    let out = dir.path().join("run");
    let cfg = ClassifierTrainConfig::from_toml_str(&tiny_config(&train, Some(&val), &out, 150)).unwrap();
    let s = train_with(&cfg, &ClassifierTrainOptions::default(), &mut quiet()).unwrap();
    assert_eq!(s.steps_done, 150);
    assert_eq!(s.input_size, [32, 32, 6]);
    // The output bias starts at the base rates, so what the loss loses is learnt from the images.
    assert!(s.final_loss < 0.9 * s.first_loss, "loss {} -> {}", s.first_loss, s.final_loss);
    // Prevalence weights: N_neg / N_pos, clamped to [1, 10]; classes without positives get 1.
    let prev = &s.train_prevalence;
    assert!((s.pos_weight[0] - ((1.0 - prev[0]) / prev[0]).clamp(1.0, 10.0)).abs() < 1e-12);
    assert_eq!(s.pos_weight[1], 1.0);
    // Held-out AUC after every epoch (16 volumes / batch 4 = one epoch per 4 steps) and at the end.
    assert!(s.val_history.len() >= 37, "{} validation records", s.val_history.len());
    let v = s.val.as_ref().unwrap();
    assert_eq!(v.auc.n_classes, 2, "two classes have both values in the held-out set");
    let fin = s.final_dir.clone().unwrap();
    for f in ["classifier.json", "ctnet_config.json", "ctnet.safetensors", "loss_curve.png", "summary.json"] {
        assert!(fin.join(f).is_file(), "{f}");
    }
    assert!(out.join("val_auc.png").is_file());
    // The folder loads, and its predictions give the final validation metrics.
    let dev = text2ct_models::burn::tensor::Device::flex();
    let clf = text2ct_eval::factual::Classifier::load(&fin, &dev).unwrap();
    assert_eq!(clf.info.data_size, [32, 32, 6]);
    let set = text2ct_eval::factual::LabeledSet::open(&val, None).unwrap();
    let probs =
        text2ct_eval::factual::predict(&clf.model, &set, Some([32, 32, 6]), &Default::default(), &mut |_, _| {})
            .unwrap();
    let m = text2ct_eval::factual::set_metrics("validation", &set.label_rows(), &probs, 0.5).unwrap();
    let close = |a: Option<f64>, b: Option<f64>| (a.unwrap() - b.unwrap()).abs() < 1e-6;
    assert!(close(m.auc.macro_avg, v.auc.macro_avg), "{:?} vs {:?}", m.auc, v.auc);
    assert!(close(m.precision.weighted_avg, v.precision.weighted_avg));
    // Refuses to start over a run that holds checkpoints.
    let err = train_with(&cfg, &ClassifierTrainOptions::default(), &mut quiet()).unwrap_err();
    assert!(err.to_string().contains("already holds checkpoints"), "{err}");
}

fn tensors(path: &Path) -> Vec<(String, Vec<f32>)> {
    let sd = text2ct_models::StateDict::read_safetensors(path).unwrap();
    sd.tensors.into_iter().map(|(k, t)| (k, t.data)).collect()
}

#[test]
fn resume_is_bit_identical() {
    let dir = tempfile::tempdir().unwrap();
    let train = labelled_dataset(&dir.path().join("train"), 6, 2);
    let cfg_for = |out: &Path| ClassifierTrainConfig::from_toml_str(&tiny_config(&train, None, out, 8)).unwrap();
    let a = dir.path().join("a");
    let sa = train_with(&cfg_for(&a), &ClassifierTrainOptions::default(), &mut quiet()).unwrap();
    let b = dir.path().join("b");
    let sb1 = train_with(&cfg_for(&b), &ClassifierTrainOptions { stop_at: Some(3) }, &mut quiet()).unwrap();
    assert_eq!(sb1.steps_done, 3);
    assert!(sb1.final_dir.is_none());
    let mut cb = cfg_for(&b);
    cb.run.resume = true;
    let sb = train_with(&cb, &ClassifierTrainOptions::default(), &mut quiet()).unwrap();
    assert_eq!(sb.steps_done, 8);
    assert_eq!(sb.session_steps, 5);
    let wa = tensors(&sa.final_dir.unwrap().join("ctnet.safetensors"));
    let wb = tensors(&sb.final_dir.unwrap().join("ctnet.safetensors"));
    assert_eq!(wa.len(), wb.len());
    for ((ka, va), (kb, vb)) in wa.iter().zip(&wb) {
        assert_eq!(ka, kb);
        assert!(va == vb, "{ka} differs after resume");
    }
    // The loss logs agree step by step too.
    let la = std::fs::read_to_string(a.join("metrics.jsonl")).unwrap();
    let lb = std::fs::read_to_string(b.join("metrics.jsonl")).unwrap();
    let losses = |s: &str| -> Vec<f64> {
        s.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"].as_f64().unwrap()).collect()
    };
    assert_eq!(losses(&la), losses(&lb));
}

#[test]
fn bad_data_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let train = labelled_dataset(&dir.path().join("train"), 4, 1);
    // A second source of another shape: refused unless data.pad_crop.
    let other = common::tiny_dataset(&dir.path().join("other"), 2, [16, 16, 8], 0);
    let out = dir.path().join("run");
    let mut cfg = ClassifierTrainConfig::from_toml_str(&tiny_config(&train, None, &out, 2)).unwrap();
    cfg.data.train.push(text2ct_train::classifier::SourceConfig { volumes: other.clone(), labels: None, limit: None });
    let err = train_with(&cfg, &ClassifierTrainOptions::default(), &mut quiet()).unwrap_err().to_string();
    assert!(err.contains("vol_0.npy") && err.contains("pad_crop"), "{err}");
    // Missing manifest: names the key and the path.
    let bad = tiny_config(&dir.path().join("nope/manifest.jsonl"), None, &out, 2);
    let err = ClassifierTrainConfig::from_toml_str(&bad).unwrap().validate().unwrap_err().to_string();
    assert!(err.contains("data.train[0].volumes") && err.contains("nope"), "{err}");
    // Unknown keys are refused.
    assert!(ClassifierTrainConfig::from_toml_str(&format!(
        "{}\n[augment]\nflip = true\n",
        tiny_config(&train, None, &out, 2)
    ))
    .is_err());
}
