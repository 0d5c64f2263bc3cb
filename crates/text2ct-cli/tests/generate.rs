//! `text2ct generate` through the binary on the tiny released-layout model.

use std::path::{Path, PathBuf};
use std::process::Command;

fn model() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../text2ct-generate/fixtures/release_tiny")
}

fn run(args: &[&str]) -> (bool, String, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_text2ct")).args(args).env_remove("TEXT2CT_MODEL").output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(!err.contains("panicked"), "{err}");
    (o.status.success(), String::from_utf8_lossy(&o.stdout).to_string(), err)
}

#[test]
fn generate_from_reports_with_shards_and_resume() {
    let d = std::env::temp_dir().join(format!("text2ct-cli-gen-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    let csv = d.join("reports.csv");
    std::fs::write(
        &csv,
        "VolumeName,ClinicalInformation_EN,Technique_EN,Findings_EN,Impressions_EN\n\
         valid_1_a_1.nii.gz,c,t,Right pleural effusion.,Effusion.\n\
         valid_2_a_1.nii.gz,c,t,Normal lungs.,No acute finding.\n\
         valid_3_a_1.nii.gz,c,t,Emphysema.,Emphysema.\n",
    )
    .unwrap();
    let m = model();
    let out = d.join("out");
    let (ms, os) = (m.to_str().unwrap(), out.to_str().unwrap());
    for shard in ["0/2", "1/2"] {
        let (ok, stdout, err) = run(&[
            "generate",
            "--model",
            ms,
            "--reports",
            csv.to_str().unwrap(),
            "--out",
            os,
            "--steps",
            "2",
            "--seed",
            "5",
            "--shard",
            shard,
        ]);
        assert!(ok, "{err}");
        assert!(stdout.contains("generated"), "{stdout}");
    }
    // Rows 0, 1, 2 with seeds 5, 6, 7 whatever the shard.
    for (id, seed) in [("valid_1_a_1", 5), ("valid_2_a_1", 6), ("valid_3_a_1", 7)] {
        for ext in ["nii.gz", "png", "json"] {
            assert!(out.join(format!("{id}_seed{seed}.{ext}")).is_file(), "{id} {ext}");
        }
    }
    let sc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("valid_1_a_1_seed5.json")).unwrap()).unwrap();
    assert_eq!(sc["prompt"], "Findings: Right pleural effusion. Impression: Effusion.");
    assert_eq!(sc["steps"], 2);
    assert_eq!(sc["orientation"], "RAS");
    // Resume: nothing left to do.
    let (ok, stdout, _) = run(&[
        "generate",
        "--model",
        ms,
        "--reports",
        csv.to_str().unwrap(),
        "--out",
        os,
        "--steps",
        "2",
        "--seed",
        "5",
    ]);
    assert!(ok && stdout.contains("generated 0 volume(s), 3 already present"), "{stdout}");
    // Options are checked before finished volumes are skipped: a bad sampler fails even when
    // there is nothing left to generate.
    let (ok, _, err) = run(&[
        "generate",
        "--model",
        ms,
        "--reports",
        csv.to_str().unwrap(),
        "--out",
        os,
        "--steps",
        "2",
        "--seed",
        "5",
        "--sampler",
        "euler",
    ]);
    assert!(!ok && err.contains("euler"), "{err}");
    // The same seed gives the same volume.
    let a = std::fs::read(out.join("valid_2_a_1_seed6.nii.gz")).unwrap();
    // One normal-lungs prompt, seed 6, 2 steps, into d/SUB, with extra flags.
    let normal = |sub: &str, extra: &[&str]| {
        let out = d.join(sub);
        let mut args =
            vec!["generate", "--model", ms, "--prompt", "Findings: Normal lungs. Impression: No acute finding."];
        args.extend(["--out", out.to_str().unwrap(), "--steps", "2", "--seed", "6"]);
        args.extend(extra);
        run(&args)
    };
    let (ok, _, err) = normal("p", &[]);
    assert!(ok, "{err}");
    let b = std::fs::read(d.join("p/prompt_seed6.nii.gz")).unwrap();
    assert_eq!(a, b);
    // Another decode window gives a (slightly) different blend but the same geometry.
    let (ok, _, err) = normal("w", &["--decode-window", "8,8,4"]);
    assert!(ok, "{err}");
    let sc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("w/prompt_seed6.json")).unwrap()).unwrap();
    assert_eq!(sc["size"], serde_json::json!([32, 32, 16]));
    assert_eq!(sc["decode"], "sliding window [8, 8, 4] latent voxels, overlap 0.4");
    // The whole latent in one pass, in slabs: recorded in the sidecar; the same geometry, HU that
    // differ from the sliding window's (windows normalise with their own statistics).
    let (ok, _, err) = normal("o", &["--decode", "one-pass", "--decode-splits", "2"]);
    assert!(ok, "{err}");
    assert!(err.contains("decode: one pass in 2 slabs"), "{err}");
    let sc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("o/prompt_seed6.json")).unwrap()).unwrap();
    assert_eq!(sc["decode"], "one pass in 2 slabs along x");
    assert_eq!(sc["size"], serde_json::json!([32, 32, 16]));
    assert_ne!(std::fs::read(d.join("o/prompt_seed6.nii.gz")).unwrap(), b);
    // A negative prompt changes the volume (same seed) and is recorded in the sidecar.
    let (ok, _, err) = normal("n", &["--negative-prompt", "Findings: Right pleural effusion."]);
    assert!(ok, "{err}");
    assert!(err.contains("away from the negative prompt"), "{err}");
    assert_ne!(std::fs::read(d.join("n/prompt_seed6.nii.gz")).unwrap(), b);
    let sc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("n/prompt_seed6.json")).unwrap()).unwrap();
    assert_eq!(sc["negative_prompt"], "Findings: Right pleural effusion.");
    // The precision is recorded as run: f32 by default; --precision bf16 gives bf16 where the CPU
    // has AVX512-BF16 (and says f32 where it runs f32), and a volume of the same geometry.
    let read_sc = |sub: &str| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(d.join(sub).join("prompt_seed6.json")).unwrap()).unwrap()
    };
    assert_eq!(read_sc("p")["precision"], "f32");
    let (ok, _, err) = normal("b", &["--precision", "bf16"]);
    assert!(ok, "{err}");
    let ran = text2ct_models::Precision::Bf16.on_this_cpu().to_string();
    assert_eq!(read_sc("b")["precision"], ran.as_str());
    assert_eq!(read_sc("b")["size"], read_sc("p")["size"]);
    assert!(err.contains(&format!("{ran} convolutions")), "{err}");
}

#[test]
fn generate_bad_input() {
    let m = model();
    let ms = m.to_str().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (&["generate", "--model", "/nonexistent", "--prompt", "x"], "model.json"),
        (&["generate", "--model", ms], "--prompt"),
        (&["generate", "--model", ms, "--prompt", "   "], "empty"),
        (&["generate", "--model", ms, "--prompt", "x", "--size", "30,32,16"], "multiples"),
        (&["generate", "--model", ms, "--prompt", "x", "--shard", "0/2"], "--shard"),
        (&["generate", "--model", ms, "--prompt", "x", "--device", "cuda"], "cuda"),
        (&["generate", "--model", ms, "--prompt", "x", "--decode-window", "4,0,4"], "size"),
        (&["generate", "--model", ms, "--prompt", "x", "--decode", "twice"], "--decode"),
        (&["generate", "--model", ms, "--prompt", "x", "--decode-splits", "0"], "--decode-splits"),
        (
            &["generate", "--model", ms, "--prompt", "x", "--decode-splits", "2", "--decode-window", "4,4,4"],
            "--decode-splits",
        ),
        (
            &["generate", "--model", ms, "--prompt", "x", "--decode", "sliding", "--decode-splits", "2"],
            "--decode-splits",
        ),
        (&["generate", "--model", ms, "--prompt", "x", "--sampler", "euler", "--steps", "1"], "euler"),
        (&["generate", "--model", ms, "--prompt", "x", "--negative-prompt", " "], "negative prompt is empty"),
        (&["generate", "--model", ms, "--prompt", "x", "--precision", "f16"], "--precision"),
        // A scale that saturates every volume to a flat one (it was written, exit 0).
        (&["generate", "--model", ms, "--prompt", "x", "--guidance", "1e30"], "--guidance"),
        // The second seed wrapped to 0; absurd counts panicked or aborted allocating jobs.
        (
            &["generate", "--model", ms, "--prompt", "x", "--seed", "18446744073709551615", "--count", "2"],
            "largest seed",
        ),
        (&["generate", "--model", ms, "--prompt", "x", "--count", "1000000000"], "more than one run makes"),
        (&["generate", "--model", ms, "--prompt", "x", "--count", "18446744073709551615"], "more than one run makes"),
        // Sizes that cannot fit are refused with the estimate (they aborted allocating).
        (&["generate", "--model", ms, "--prompt", "x", "--size", "100000,100000,100000"], "of memory (estimated)"),
        // An output folder that is a file (a raw "File exists (os error 17)" before).
        (&["generate", "--model", ms, "--prompt", "x", "--out", "Cargo.toml"], "is a file, not a folder"),
    ];
    for (args, want) in cases {
        let (ok, _, err) = run(args);
        assert!(!ok, "{args:?} should fail");
        assert!(err.contains(want), "{args:?}: {err}");
    }
}

/// Without --model (and without TEXT2CT_MODEL) the embedded phantom model is written to the
/// cache and used: a NIfTI of the card's size and spacing, in HU, with the seed in its name.
#[test]
fn generate_uses_the_embedded_default_model() {
    let d = std::env::temp_dir().join(format!("text2ct-cli-gen-default-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    let out = d.join("out");
    // The same job each time (a restart finds what the first run wrote).
    let generate = || {
        Command::new(env!("CARGO_BIN_EXE_text2ct"))
            .args(["generate", "--prompt", "Findings: Right pleural effusion. Impression: Right pleural effusion."])
            .args(["--steps", "2", "--seed", "3", "--dicom", "--out", out.to_str().unwrap()])
            .env_remove("TEXT2CT_MODEL")
            .env("TEXT2CT_CACHE", d.join("cache"))
            .output()
            .unwrap()
    };
    let o = generate();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("phantom-default") && err.contains("not patients"), "{err}");
    assert!(err.contains("per volume (estimated)"), "the memory estimate is printed: {err}");
    let cache = std::fs::read_dir(d.join("cache/models")).unwrap().next().unwrap().unwrap().path();
    assert!(cache.join("model.json").is_file() && cache.join("unet.safetensors").is_file());
    let (v, _) =
        text2ct_io::nifti_io::read_nifti(&out.join("prompt_seed3.nii.gz"), &text2ct_io::Limits::default()).unwrap();
    let card: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(cache.join("model.json")).unwrap()).unwrap();
    let size: Vec<usize> = serde_json::from_value(card["output"]["size"].clone()).unwrap();
    assert_eq!(v.dims().to_vec(), size);
    let sp: Vec<f64> = serde_json::from_value(card["output"]["spacing"].clone()).unwrap();
    for (a, b) in v.spacing().iter().zip(&sp) {
        assert!((a - b).abs() < 1e-6, "{:?} vs {sp:?}", v.spacing());
    }
    assert!(v.data().iter().all(|h| (-1000.0..=1000.0).contains(h)));
    // --dicom: the same HU at the same world positions, read back through the DICOM reader.
    let (dv, info) =
        text2ct_io::dicom_io::read_dicom_series(&out.join("prompt_seed3_dicom"), None, &text2ct_io::Limits::default())
            .unwrap();
    assert_eq!(dv.dims(), v.dims());
    assert!(info.series.description.starts_with("SYNTHETIC"), "{info:?}");
    let inv = dv.affine().inverse().unwrap();
    let [nx, ny, nz] = v.dims();
    for (x, y, z) in [(0, 0, 0), (nx / 2, ny / 3, nz / 2), (nx - 1, ny - 1, nz - 1), (3, ny - 2, 1)] {
        let i = inv.apply(v.affine().apply([x as f64, y as f64, z as f64])).map(|c| c.round() as usize);
        assert_eq!(dv.get(i[0], i[1], i[2]), v.get(x, y, z));
    }
    // Every slice passes the standard's validator, where dicom3tools is installed.
    let mut slices: Vec<PathBuf> =
        std::fs::read_dir(out.join("prompt_seed3_dicom")).unwrap().map(|e| e.unwrap().path()).collect();
    slices.sort();
    assert_eq!(slices.len(), nz);
    for f in &slices {
        match text2ct_io::dicom_write::dciodvfy(f) {
            None => {
                eprintln!("skipped the dciodvfy check: dicom3tools is not installed");
                break;
            }
            Some(p) => {
                let p = p.unwrap();
                assert!(p.is_empty(), "dciodvfy {}:\n{}", f.display(), p.join("\n"));
            }
        }
    }
    // A restarted job skips the finished volume but writes a missing DICOM series.
    std::fs::remove_dir_all(out.join("prompt_seed3_dicom")).unwrap();
    let o = generate();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("1 already present"));
    let (dv2, _) =
        text2ct_io::dicom_io::read_dicom_series(&out.join("prompt_seed3_dicom"), None, &text2ct_io::Limits::default())
            .unwrap();
    assert_eq!(dv2.data(), dv.data());
    let _ = std::fs::remove_dir_all(&d);
}

/// `--max-memory`: without a decode option, a decoding that fits is chosen (said, and recorded in
/// the sidecar); a cap too small for anything or not a byte count is refused before the model
/// loads.
#[test]
fn generate_fits_the_decoding_to_max_memory() {
    let d = std::env::temp_dir().join(format!("text2ct-cli-gen-maxmem-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    let gen = |sub: &str, extra: &[&str]| {
        let out = d.join(sub);
        let o = Command::new(env!("CARGO_BIN_EXE_text2ct"))
            .args(["generate", "--prompt", "Findings: Cardiomegaly.", "--size", "128,128,64", "--steps", "1"])
            .args(["--out", out.to_str().unwrap()])
            .args(extra)
            .env_remove("TEXT2CT_MODEL")
            .env("TEXT2CT_CACHE", d.join("cache"))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        assert!(!err.contains("panicked"), "{err}");
        (o.status.success(), err)
    };
    let sidecar = |sub: &str| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(d.join(sub).join("prompt_seed0.json")).unwrap()).unwrap()
    };
    // The default model decodes in one pass; at 128 x 128 x 64 that needs ~570 MiB.
    let (ok, err) = gen("plain", &[]);
    assert!(ok, "{err}");
    assert_eq!(sidecar("plain")["decode"], "one pass");
    let (ok, err) = gen("capped", &["--max-memory", "300M"]);
    assert!(ok, "{err}");
    assert!(err.contains("would not fit in 300.0 MiB"), "{err}");
    let decode = sidecar("capped")["decode"].as_str().unwrap().to_string();
    assert!(decode.starts_with("sliding window"), "{decode}");
    assert_eq!(sidecar("capped")["size"], serde_json::json!([128, 128, 64]));
    // A decode option is the user's choice: checked against the cap, not replaced.
    let (ok, err) = gen("mine", &["--max-memory", "300M", "--decode", "one-pass"]);
    assert!(!ok && err.contains("--max-memory") && err.contains("needs about"), "{err}");
    for (bad, says) in [("1K", "below 64 MiB"), ("lots", "not a byte count")] {
        let (ok, err) = gen("bad", &["--max-memory", bad]);
        assert!(!ok && err.contains("--max-memory") && err.contains(says), "{bad}: {err}");
        assert!(!err.contains("loading"), "refused before loading: {err}");
    }
    assert!(!d.join("bad").exists());
    let _ = std::fs::remove_dir_all(&d);
}
