//! Schedules, checkpoints, configs, plots, the loader.

mod common;

use burn::optim::lr_scheduler::LrScheduler;
use text2ct_train::checkpoint::{self, TrainState};
use text2ct_train::config::{ScheduleKind, VaeTrainConfig};
use text2ct_train::data::{Loader, LoaderOptions, VolumeSet};
use text2ct_train::schedule::Schedule;
use text2ct_train::TrainError;

#[test]
fn polynomial_schedule_matches_the_pure_function() {
    for (total, power) in [(10usize, 1.0f64), (37, 0.9), (5, 2.0)] {
        let mut s = Schedule::polynomial(1e-4, total, power).unwrap();
        for k in 0..total + 3 {
            let want = text2ct_diffusion::polynomial_lr(1e-4, k, total, power).unwrap();
            assert_eq!(s.step(), want, "step {k}");
        }
    }
}

#[test]
fn schedules_warm_up_and_restore_from_records() {
    let mut c = Schedule::new(ScheduleKind::Constant, 1.0, 10, 1.0, 4, 0.0).unwrap();
    let v: Vec<f64> = (0..6).map(|_| c.step()).collect();
    assert_eq!(v, vec![0.25, 0.5, 0.75, 1.0, 1.0, 1.0]);
    let mut cos = Schedule::new(ScheduleKind::Cosine, 1.0, 12, 1.0, 2, 0.1).unwrap();
    let v: Vec<f64> = (0..13).map(|_| cos.step()).collect();
    assert_eq!(v[0], 0.5);
    assert!((v[2] - 1.0).abs() < 1e-12);
    assert!((v[12] - 0.1).abs() < 1e-12);
    assert!(v[3..12].windows(2).all(|w| w[1] <= w[0]));
    // Record round trip.
    let rec = cos.to_record();
    let mut fresh = Schedule::new(ScheduleKind::Cosine, 1.0, 12, 1.0, 2, 0.1).unwrap();
    fresh.load_record(rec);
    assert_eq!(fresh.step, 13);
    assert!(Schedule::polynomial(1.0, 0, 1.0).is_err());
}

fn state(step: usize) -> TrainState {
    TrainState { step, loader: Default::default(), schedulers: Default::default(), seed: 0, elapsed_s: 0.0, version: 1 }
}

#[test]
fn checkpoints_are_atomic_and_pruned() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("checkpoints");
    let ok = checkpoint::write_checkpoint(&root, &state(5), |d| {
        std::fs::write(d.join("a.bin"), b"x").map_err(|e| TrainError::io(d, e))
    })
    .unwrap();
    assert!(ok.join("a.bin").is_file() && ok.join("state.json").is_file());
    // A writer that fails half way leaves nothing behind.
    let err = checkpoint::write_checkpoint(&root, &state(10), |d| {
        std::fs::write(d.join("half.bin"), b"x").unwrap();
        Err(TrainError::Train("disk full".into()))
    });
    assert!(err.is_err());
    let names: Vec<String> =
        std::fs::read_dir(&root).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().to_string()).collect();
    assert_eq!(names, vec!["step-00000005".to_string()], "left behind: {names:?}");
    assert_eq!(checkpoint::latest(&root).unwrap(), Some(ok.clone()));
    // A folder without state.json (e.g. copied by hand, incomplete) is not a checkpoint.
    std::fs::create_dir_all(root.join("step-00000099")).unwrap();
    assert_eq!(checkpoint::latest(&root).unwrap(), Some(ok));
    for s in [20, 30, 40] {
        checkpoint::write_checkpoint(&root, &state(s), |_| Ok(())).unwrap();
    }
    checkpoint::prune(&root, 2).unwrap();
    let steps: Vec<usize> = checkpoint::list(&root).unwrap().into_iter().map(|(s, _)| s).collect();
    assert_eq!(steps, vec![30, 40]);
    assert_eq!(checkpoint::read_state(&root.join("step-00000040")).unwrap().step, 40);
}

#[test]
fn config_errors_are_clear() {
    let dir = tempfile::tempdir().unwrap();
    let m = common::tiny_dataset(&dir.path().join("d"), 1, [8, 8, 8], 0);
    let good = common::tiny_config(&m, None, &dir.path().join("o"), 3);
    let cfg = VaeTrainConfig::from_toml_str(&good).unwrap();
    cfg.validate().unwrap();
    assert_eq!(cfg.optim.betas, [0.9, 0.999]);
    assert_eq!(cfg.loss.kl_weight, 1e-7);
    // Unknown key: the message names it.
    let e = VaeTrainConfig::from_toml_str(&good.replace("lr = 3e-3", "lr = 3e-3\nlearning_rate = 1")).unwrap_err();
    assert!(e.to_string().contains("learning_rate"), "{e}");
    // Missing manifest.
    let bad = VaeTrainConfig::from_toml_str(&good.replace("manifest.jsonl", "nope.jsonl")).unwrap();
    let e = bad.validate().unwrap_err().to_string();
    assert!(e.contains("train_manifest") && e.contains("nope.jsonl"), "{e}");
    // A file error names the file.
    let p = dir.path().join("c.toml");
    std::fs::write(&p, good.replace("[run]", "[run]\nsteps_typo = 1")).unwrap();
    let e = VaeTrainConfig::from_file(&p).unwrap_err().to_string();
    assert!(e.contains("c.toml") && e.contains("steps_typo"), "{e}");
    // Patch not a multiple of the downsampling factor.
    let bad = VaeTrainConfig::from_toml_str(&good.replace("batch_size = 1", "batch_size = 1\npatch_size = [6, 8, 8]"))
        .unwrap();
    assert!(bad.validate().unwrap_err().to_string().contains("patch_size"));
}

#[test]
fn shipped_example_config_parses() {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/train_vae_phantom.toml");
    let s = std::fs::read_to_string(p).unwrap();
    let cfg = VaeTrainConfig::from_toml_str(&s).unwrap();
    cfg.model.validate().unwrap();
}

#[test]
fn plot_writes_png_of_the_requested_size() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("plot.png");
    let mut plot = text2ct_train::plot::LinePlot::new("Title", "step", "loss")
        .with_series("a", (0..50).map(|i| (i as f64, 1.0 / (1.0 + i as f64))).collect())
        .with_series("b", (0..50).map(|i| (i as f64, 0.5 / (1.0 + i as f64))).collect());
    plot.width = 640;
    plot.height = 400;
    plot.log_y = true;
    plot.save_png(&p).unwrap();
    let img = image::open(&p).unwrap();
    assert_eq!((img.width(), img.height()), (640, 400));
    // Not blank: some dark pixels (text, axes) and some coloured ones (lines).
    let rgb = img.to_rgb8();
    assert!(rgb.pixels().filter(|p| p.0.iter().all(|&c| c < 80)).count() > 200);
    assert!(rgb.pixels().any(|p| p.0 == [31, 119, 180]));
    // An empty plot still renders.
    text2ct_train::plot::LinePlot::new("empty", "x", "y").save_png(&dir.path().join("e.png")).unwrap();
}

#[test]
fn loader_is_deterministic_and_resumable() {
    let dir = tempfile::tempdir().unwrap();
    let m = common::tiny_dataset(&dir.path().join("d"), 5, [16, 16, 8], 0);
    let opts = LoaderOptions { batch_size: 2, patch: Some([8, 8, 4]), flip_prob: [0.5, 0.5, 0.5], seed: 7 };
    let mut a = Loader::new(VolumeSet::open(&m, None).unwrap(), opts.clone()).unwrap();
    let batches: Vec<_> = (0..6).map(|_| a.next_batch().unwrap()).collect();
    assert_eq!(batches[0].dims, [2, 1, 8, 8, 4]);
    assert!(batches.iter().all(|b| b.data.iter().all(|v| (0.0..=1.0).contains(v))));
    // Each epoch visits every volume once.
    let ids: Vec<String> = batches.iter().flat_map(|b| b.ids.clone()).take(5).collect();
    let mut sorted = ids.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), 5);
    // Same seed: same batches; restored state: same continuation.
    let mut b = Loader::new(VolumeSet::open(&m, None).unwrap(), opts.clone()).unwrap();
    for _ in 0..3 {
        b.next_batch().unwrap();
    }
    let st = b.state();
    let mut c = Loader::new(VolumeSet::open(&m, None).unwrap(), opts.clone()).unwrap();
    c.set_state(st);
    for want in &batches[3..] {
        assert_eq!(&c.next_batch().unwrap(), want);
    }
    // Another seed: another order or crops.
    let mut d = Loader::new(VolumeSet::open(&m, None).unwrap(), LoaderOptions { seed: 8, ..opts }).unwrap();
    assert_ne!(d.next_batch().unwrap(), batches[0]);
    // Patch larger than the volumes: a clear error.
    let e = Loader::new(
        VolumeSet::open(&m, None).unwrap(),
        LoaderOptions { batch_size: 1, patch: Some([32, 8, 8]), flip_prob: [0.0; 3], seed: 0 },
    );
    assert!(matches!(e, Err(TrainError::Data(_))));
    // Missing manifest.
    assert!(matches!(VolumeSet::open(&dir.path().join("none.jsonl"), None), Err(TrainError::Data(_))));
}

#[test]
fn data_parallel_shards_cover_the_batch_evenly() {
    use text2ct_train::ldm::shard_ranges;
    assert_eq!(shard_ranges(4, 1), vec![(0, 4)]);
    assert_eq!(shard_ranges(5, 2), vec![(0, 3), (3, 5)]);
    assert_eq!(shard_ranges(7, 3), vec![(0, 3), (3, 5), (5, 7)]);
    assert_eq!(shard_ranges(3, 3), vec![(0, 1), (1, 2), (2, 3)]);
}

#[test]
fn single_device_trainers_refuse_a_device_list() {
    let run: text2ct_train::config::RunConfig = toml::from_str("out_dir = \"/tmp/x\"\ndevice = \"cpu,cpu\"").unwrap();
    let e = run.device().unwrap_err().to_string();
    assert!(e.contains("implemented for `train ldm`"), "{e}");
    assert_eq!(run.devices().unwrap().len(), 2);
}
