//! `text2ct bench` through the binary, at tiny sizes: the JSON fields each benchmark promises,
//! the table, and clear refusals.

use std::path::{Path, PathBuf};
use std::process::Command;

fn tiny_model() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../text2ct-generate/fixtures/release_tiny")
}

/// `(success, stdout, stderr)`; never a panic, and failures exit 1.
fn run(args: &[&str]) -> (bool, String, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_text2ct")).args(args).env_remove("TEXT2CT_MODEL").output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(!err.contains("panicked"), "{args:?}: {err}");
    if !o.status.success() {
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
    }
    (o.status.success(), String::from_utf8_lossy(&o.stdout).to_string(), err)
}

/// The JSON object on stdout's last line.
fn json(args: &[&str]) -> serde_json::Value {
    let (ok, out, err) = run(args);
    assert!(ok, "{args:?}: {err}");
    let last = out.lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|e| panic!("{args:?}: last line is not JSON ({e}): {out}"))
}

fn positive(v: &serde_json::Value, key: &str) -> f64 {
    let x = v[key].as_f64().unwrap_or_else(|| panic!("{key} missing or not a number in {v}"));
    assert!(x > 0.0 && x.is_finite(), "{key} = {x}");
    x
}

/// Linux reports peak memory: a positive number of bytes.
fn peak(v: &serde_json::Value, key: &str) {
    if cfg!(target_os = "linux") {
        assert!(v[key].as_u64().is_some_and(|b| b > 1 << 20), "{key} in {v}");
    }
}

#[test]
fn unet_json_and_table() {
    let m = tiny_model();
    let m = m.to_str().unwrap();
    let v = json(&["bench", "unet", "--latent", "4,4,4,2", "--model", m, "--repeats", "2", "--threads", "1", "--json"]);
    assert_eq!(v["bench"], "unet");
    let best = positive(&v, "seconds_per_forward");
    let each: Vec<f64> = v["seconds_forwards"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
    assert_eq!(each.len(), 2);
    assert_eq!(best, each.iter().copied().fold(f64::INFINITY, f64::min));
    assert_eq!(v["threads"], 1);
    assert_eq!(v["latent"], serde_json::json!([4, 4, 4, 2]));
    peak(&v, "peak_rss_bytes");
    let (ok, out, err) = run(&["bench", "unet", "--latent", "4,4,4,2", "--model", m, "--batch", "2"]);
    assert!(ok, "{err}");
    assert!(out.contains("forward 1") && out.contains("seconds per forward") && out.contains("peak RSS"), "{out}");
}

#[test]
fn vae_json_with_both_decodes() {
    // The released VAE's architecture with random weights (no --model).
    let v = json(&["bench", "vae", "--size", "16,16,16", "--threads", "2", "--json"]);
    assert_eq!(v["bench"], "vae");
    positive(&v, "seconds_encode");
    positive(&v, "seconds_decode");
    assert_eq!(v["latent"], serde_json::json!([4, 4, 4, 4]));
    assert_eq!(v["decode"], "one pass in 4 slabs");
    peak(&v, "peak_rss_bytes");
    let m = tiny_model();
    let v = json(&[
        "bench",
        "vae",
        "--size",
        "32,32,16",
        "--model",
        m.to_str().unwrap(),
        "--decode",
        "both",
        "--splits",
        "2",
        "--window",
        "4,4,2",
        "--json",
    ]);
    let s = &v["sliding"];
    positive(s, "seconds_decode");
    // Windows normalise with their own statistics: the outputs differ, but not wildly.
    let (mean, p99, max) =
        (positive(s, "hu_mean_abs_diff"), positive(s, "hu_p99_abs_diff"), positive(s, "hu_max_abs_diff"));
    assert!(mean <= p99 && p99 <= max && max <= 2000.0, "{s}");
}

#[test]
fn generate_json_fields() {
    let m = tiny_model();
    let v = json(&[
        "bench",
        "generate",
        "--model",
        m.to_str().unwrap(),
        "--size",
        "16,16,16",
        "--steps",
        "2",
        "--decode",
        "one-pass",
        "--decode-splits",
        "2",
        "--json",
    ]);
    assert_eq!(v["bench"], "generate");
    assert_eq!(v["steps"], 2);
    assert_eq!(v["guidance"], 5.0);
    assert_eq!(v["decode"], "one pass in 2 slabs along x");
    let total = positive(&v, "seconds_total");
    let per_step = positive(&v, "seconds_per_step");
    let decode = positive(&v, "seconds_decode");
    assert!(per_step * 2.0 <= total && decode <= total, "{v}");
    // The card's 5 steps: the total scaled from 2 steps to 5.
    assert_eq!(v["steps_scaled_to"], 5);
    assert!(positive(&v, "seconds_total_scaled") > total);
    peak(&v, "peak_rss_bytes");
}

#[test]
fn refusals_name_the_option() {
    let m = tiny_model();
    let m = m.to_str().unwrap();
    for (args, needle) in [
        (vec!["bench", "unet", "--latent", "4,8,8"], "--latent"),
        (vec!["bench", "unet", "--latent", "4,8,8,8", "--threads", "0"], "--threads"),
        (vec!["bench", "unet", "--latent", "4,8,8,8", "--repeats", "0"], "--repeats"),
        (vec!["bench", "unet", "--latent", "4,12,8,8"], "--latent"),
        (vec!["bench", "unet", "--latent", "4,8,8,8", "--model", "/nonexistent/model"], "--model"),
        (vec!["bench", "vae", "--size", "6,8,8"], "--size"),
        (vec!["bench", "vae", "--size", "8,8,8", "--decode", "twice"], "--decode"),
        (vec!["bench", "vae", "--size", "8,8,8", "--overlap", "1"], "--overlap"),
        (vec!["bench", "generate", "--model", m, "--size", "16,16,16", "--decode-splits", "0"], "--decode-splits"),
        (
            vec![
                "bench",
                "generate",
                "--model",
                m,
                "--size",
                "16,16,16",
                "--decode",
                "one-pass",
                "--decode-window",
                "4,4,4",
            ],
            "--decode-window",
        ),
        (vec!["bench", "generate", "--model", m, "--size", "15,16,16"], "--size"),
    ] {
        let (ok, _, err) = run(&args);
        assert!(!ok && err.contains(needle), "{args:?}: {err}");
    }
    // Sizes far beyond this machine's memory are refused before anything of their size exists.
    if cfg!(target_os = "linux") {
        let (ok, _, err) = run(&["bench", "unet", "--latent", "4,8192,8192,8192", "--model", m]);
        assert!(!ok && err.contains("needs about") && err.contains("--latent"), "{err}");
        let (ok, _, err) = run(&["bench", "vae", "--size", "40000,40000,40000"]);
        assert!(!ok && err.contains("needs about"), "{err}");
    }
}
