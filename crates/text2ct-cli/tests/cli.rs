//! The `text2ct` binary end to end: phantom -> prepare -> preview/inspect, and bad input.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_text2ct"))
}

fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("binary runs")
}

fn ok(args: &[&str]) -> String {
    let o = run(args);
    assert!(
        o.status.success(),
        "{args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).to_string()
}

/// Fails with exit code 1 and a message containing `want`; never a panic.
fn fails(args: &[&str], want: &str) {
    let o = run(args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{args:?} should fail cleanly: {err}");
    assert!(err.contains(want), "{args:?}: stderr {err:?} lacks {want:?}");
    assert!(!err.contains("panicked"), "{err}");
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("text2ct-cli-{}-{}", name, std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn phantom_prepare_preview_inspect() {
    let d = tmp("e2e");
    let data = d.join("data");
    let out = ok(&["phantom", "--out", s(&data), "--count", "5", "--size", "32,32,16", "--seed", "3", "--jobs", "2"]);
    assert!(out.contains("4 train, 1 valid"), "{out}");
    assert!(out.contains("not patients"));
    let vol = data.join("dataset/train/train_1/train_1_a/train_1_a_1.nii.gz");
    assert!(vol.exists());

    let info = ok(&["inspect", "--json", s(&vol)]);
    let j: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(j["orientation"], "LPS");
    assert_eq!(j["dims"], serde_json::json!([32, 32, 16]));
    assert_eq!(j["header"]["dtype"], "i16");
    let text = ok(&["inspect", s(&vol)]);
    assert!(text.contains("orientation  LPS") && text.contains("FOV"), "{text}");

    let prepared = d.join("prepared");
    let args = [
        "prepare",
        "ctrate",
        "--root",
        s(&data),
        "--split",
        "train",
        "--out",
        s(&prepared),
        "--mode",
        "paper",
        "--spacing",
        "12,12,20",
        "--size",
        "32,32,16",
        "--jobs",
        "2",
    ];
    let out = ok(&args);
    assert!(out.contains("prepared 4 volume(s)"), "{out}");
    let manifest = std::fs::read_to_string(prepared.join("manifest.jsonl")).unwrap();
    assert_eq!(manifest.lines().count(), 4);
    // Resumable: the second run prepares nothing new.
    let out = ok(&args);
    assert!(out.contains("prepared 0 volume(s), 4 already done"), "{out}");
    let out = ok(&[
        "prepare",
        "ctrate",
        "--root",
        s(&data),
        "--split",
        "valid",
        "--out",
        s(&d.join("pv")),
        "--mode",
        "release",
        "--size",
        "32,32,16",
    ]);
    assert!(out.contains("prepared 1 volume(s)"), "{out}");

    let png = d.join("p.png");
    ok(&["preview", s(&vol), s(&vol), "--out", s(&png), "--window", "lung,mediastinum"]);
    let bytes = std::fs::read(&png).unwrap();
    assert_eq!(&bytes[1..4], b"PNG");
}

#[test]
fn bad_input_fails_cleanly() {
    let d = tmp("bad");
    let junk = d.join("junk.nii.gz");
    std::fs::write(&junk, b"\x1f\x8b\x08\x00garbage that is not gzip").unwrap();
    fails(&["inspect", s(&junk)], "junk.nii.gz");
    fails(&["preview", s(&d.join("missing.nii")), "--out", s(&d.join("x.png"))], "missing.nii");
    fails(&["preview", s(&junk), "--out", s(&d.join("x.png")), "--window", "blue"], "window");
    fails(&["phantom", "--out", s(&d.join("p")), "--count", "0"], "count");
    fails(&["phantom", "--out", s(&d.join("p")), "--size", "32,32"], "size");
    fails(&["prepare", "ctrate", "--root", s(&d), "--out", s(&d.join("o"))], "reports.csv");
    fails(&["prepare", "ctrate", "--root", s(&d), "--out", s(&d.join("o")), "--mode", "fast"], "--mode");
    fails(&["prepare", "ctrate", "--root", s(&d), "--out", s(&d.join("o")), "--spacing", "0,1,1"], "spacing");
    // An empty DICOM folder.
    let empty = d.join("dicom");
    std::fs::create_dir_all(&empty).unwrap();
    fails(&["inspect", s(&empty)], "no DICOM");
}

#[test]
fn schedule_prints_the_released_timesteps() {
    let out = ok(&["schedule", "--sampler", "rflow", "--steps", "30", "--latent", "4,128,128,32"]);
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    let t: Vec<f64> = j["timesteps"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    assert_eq!(t.len(), 30);
    assert_eq!(t[0], 1000.0);
    assert_eq!(t[1], 986.5);
    assert_eq!(t[29], 79.9375);
    fails(&["schedule", "--sampler", "euler"], "euler");
    fails(&["schedule", "--latent", "4,128,128"], "--latent");
    fails(&["schedule", "--steps", "0"], "step");
}

#[test]
fn model_cards() {
    let d = tmp("card");
    let out = ok(&["model", "init-release", s(&d)]);
    assert!(out.contains("still to download") && out.contains("unet_rflow_200ep.pt"), "{out}");
    fails(&["model", "init-release", s(&d)], "--force");
    fails(&["model", "show", s(&d)], "missing");
    // Files that are there but are not weights: each is named, none is accepted.
    let files = ["autoencoder_epoch273.pt", "unet_rflow_200ep.pt", "CLIP3D_Finding_Impression_30ep.pt"];
    for f in files {
        std::fs::write(d.join(f), b"x").unwrap();
    }
    for f in files {
        fails(&["model", "show", s(&d)], &d.join(f).display().to_string());
    }
    fails(&["model", "show", s(&d)], "3 of its 3 networks");
    // The released layout at toy size loads, and show prints the card and what it checked.
    let tiny = Path::new(env!("CARGO_MANIFEST_DIR")).join("../text2ct-generate/fixtures/release_tiny");
    let o = run(&["model", "show", s(&tiny)]);
    let (out, err) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "{err}");
    assert!(out.contains("\"fallback_scale_factor\": 1.0287"), "{out}");
    assert!(err.contains("U-Net weights: unet_rflow_200ep.pt (sha256 "), "{err}");
    fails(&["model", "show", s(&d.join("none"))], "model.json");
}

#[test]
fn train_vae_through_the_binary() {
    let d = tmp("train");
    let data = d.join("data");
    ok(&["phantom", "--out", s(&data), "--count", "3", "--size", "16,16,8", "--seed", "1", "--split-fraction", "0.34"]);
    let prepared = d.join("prepared");
    for split in ["train", "valid"] {
        let out = prepared.join(split);
        ok(&[
            "prepare",
            "ctrate",
            "--root",
            s(&data),
            "--split",
            split,
            "--out",
            s(&out),
            "--spacing",
            "22,22,40",
            "--size",
            "16,16,8",
        ]);
    }
    let cfg = d.join("vae.toml");
    let toml = format!(
        "[model]\nspatial_dims = 3\nin_channels = 1\nout_channels = 1\nlatent_channels = 4\nnum_channels = [4, 8, 8]\n\
         num_res_blocks = [1, 1, 1]\nnorm_num_groups = 4\nnorm_eps = 1e-6\nattention_levels = [false, false, false]\n\
         [data]\ntrain_manifest = {:?}\nval_manifest = {:?}\nbatch_size = 1\n[run]\nout_dir = {:?}\nsteps = 3\n\
         checkpoint_every = 2\nseed = 0\n",
        s(&prepared.join("train/manifest.jsonl")),
        s(&prepared.join("valid/manifest.jsonl")),
        s(&d.join("run"))
    );
    std::fs::write(&cfg, toml).unwrap();
    let out = ok(&["train", "vae", "--config", s(&cfg)]);
    assert!(out.contains("trained 3 / 3 steps"), "{out}");
    assert!(out.contains("held-out (1 volumes)"), "{out}");
    // Resuming a finished run with more steps continues from the checkpoint.
    let out = ok(&["train", "vae", "--config", s(&cfg), "--resume", "--steps", "4"]);
    assert!(out.contains("trained 4 / 4 steps (1 this session"), "{out}");
    fails(&["train", "vae", "--config", s(&d.join("none.toml"))], "none.toml");
    std::fs::write(&cfg, "[model]\nbogus = 1\n").unwrap();
    fails(&["train", "vae", "--config", s(&cfg)], "bogus");
}
