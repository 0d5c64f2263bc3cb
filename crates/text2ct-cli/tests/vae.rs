//! The `vae` command through the binary, against the small MONAI fixtures of text2ct-models.

use std::path::{Path, PathBuf};
use std::process::Command;

use text2ct_models::NpyArray;

/// Run `text2ct ARGS`; Err(stderr) when it exits non-zero.
fn run(args: &[&str]) -> Result<(), String> {
    let o = Command::new(env!("CARGO_BIN_EXE_text2ct")).args(args).output().map_err(|e| e.to_string())?;
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(!err.contains("panicked"), "{args:?}: {err}");
    if o.status.success() {
        Ok(())
    } else {
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        Err(err)
    }
}

fn small(f: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../text2ct-models/fixtures/small")
        .join(f)
        .to_string_lossy()
        .into_owned()
}

fn tmp(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("t2ct_cli_vae_{tag}_{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn max_rel(a: &NpyArray, b: &NpyArray) -> f64 {
    assert_eq!(a.shape, b.shape);
    let num: f64 = a.data.iter().zip(&b.data).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let den: f64 = b.data.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den).sqrt()
}

#[test]
fn encode_decode_npy_and_nifti() {
    let d = tmp("ok");
    let (cfg, w) = (small("config.json"), small("vae.pt"));
    let mu = d.join("mu.npy");
    run(&[
        "vae",
        "encode",
        "--config",
        &cfg,
        "--weights",
        &w,
        "--input",
        &small("enc_input.npy"),
        "--output",
        mu.to_str().unwrap(),
    ])
    .unwrap();
    let got = NpyArray::read(&mu).unwrap();
    assert!(max_rel(&got, &NpyArray::read(Path::new(&small("enc_mu.npy"))).unwrap()) < 1e-4);

    let smp = d.join("s.npy");
    let enc_sample = |out: &Path, seed: &str| {
        run(&[
            "vae",
            "encode",
            "--config",
            &cfg,
            "--weights",
            &w,
            "--input",
            &small("enc_input.npy"),
            "--output",
            out.to_str().unwrap(),
            "--sample",
            "--seed",
            seed,
        ])
        .unwrap();
        NpyArray::read(out).unwrap()
    };
    let s1 = enc_sample(&smp, "3");
    assert_eq!(s1.shape, got.shape);
    assert_ne!(s1.data, got.data);

    let dec = d.join("dec.npy");
    run(&[
        "vae",
        "decode",
        "--config",
        &cfg,
        "--weights",
        &w,
        "--input",
        &small("dec_input.npy"),
        "--output",
        dec.to_str().unwrap(),
    ])
    .unwrap();
    assert!(
        max_rel(&NpyArray::read(&dec).unwrap(), &NpyArray::read(Path::new(&small("dec_output.npy"))).unwrap()) < 1e-4
    );

    // sliding window through the CLI: window clipped to the latent, as MAISI's dynamic_infer
    let sw = d.join("sw.npy");
    run(&[
        "vae",
        "decode",
        "--config",
        &cfg,
        "--weights",
        &w,
        "--input",
        &small("sw_input.npy"),
        "--output",
        sw.to_str().unwrap(),
        "--window",
        "6,5,4",
        "--overlap",
        "0.4",
    ])
    .unwrap();
    assert_eq!(NpyArray::read(&sw).unwrap().shape, vec![1, 1, 40, 32, 24]);

    // NIfTI out, then NIfTI in
    let nii = d.join("ct.nii.gz");
    run(&[
        "vae",
        "decode",
        "--config",
        &cfg,
        "--weights",
        &w,
        "--input",
        &small("dec_input.npy"),
        "--output",
        nii.to_str().unwrap(),
        "--spacing",
        "0.8,0.8,2",
    ])
    .unwrap();
    let (vol, info) = text2ct_io::nifti_io::read_nifti(&nii, &text2ct_io::Limits::default()).unwrap();
    assert_eq!(vol.dims(), [24, 20, 16]);
    assert_eq!(info.dtype.name(), "int16");
    assert!((vol.spacing()[2] - 2.0).abs() < 1e-6);
    let raw = NpyArray::read(Path::new(&small("dec_output.npy"))).unwrap();
    // voxel (x=3, y=5, z=7) of the volume is tensor element [0,0,3,5,7]
    let v = raw.data[(3 * 20 + 5) * 16 + 7];
    let want = (v * 2000.0 - 1000.0).clamp(-1000.0, 1000.0).trunc();
    assert_eq!(vol.get(3, 5, 7), want);
    let mu2 = d.join("mu2.npy");
    run(&[
        "vae",
        "encode",
        "--config",
        &cfg,
        "--weights",
        &w,
        "--input",
        nii.to_str().unwrap(),
        "--output",
        mu2.to_str().unwrap(),
    ])
    .unwrap();
    assert_eq!(NpyArray::read(&mu2).unwrap().shape, vec![1, 4, 6, 5, 4]);

    // convert
    let st = d.join("w.safetensors");
    run(&["vae", "convert", "--input", &small("vae_nested.pt"), "--output", st.to_str().unwrap()]).unwrap();
    let dec2 = d.join("dec2.npy");
    run(&[
        "vae",
        "decode",
        "--config",
        &cfg,
        "--weights",
        st.to_str().unwrap(),
        "--input",
        &small("dec_input.npy"),
        "--output",
        dec2.to_str().unwrap(),
    ])
    .unwrap();
    assert_eq!(NpyArray::read(&dec2).unwrap(), NpyArray::read(&dec).unwrap());
    std::fs::remove_dir_all(&d).ok();
}

/// `--splits` decodes the whole latent in slabs: the MONAI fixture's output to the same tolerance as
/// the plain decode, and the plain decode's to float rounding; `--splits` with `--window` and
/// `--splits 0` are refused.
#[test]
fn split_decode_matches_monai_and_plain() {
    let d = tmp("split");
    let (cfg, w, input) = (small("config.json"), small("vae.pt"), small("dec_input.npy"));
    let decode = |out: &Path, extra: &[&str]| {
        let mut args = vec![
            "vae",
            "decode",
            "--config",
            &cfg,
            "--weights",
            &w,
            "--input",
            &input,
            "--output",
            out.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        run(&args).map(|_| NpyArray::read(out).unwrap())
    };
    let plain = decode(&d.join("plain.npy"), &[]).unwrap();
    // 24 output planes along x: three slabs of 8 at the top level.
    let split = decode(&d.join("split.npy"), &["--splits", "3"]).unwrap();
    assert!(max_rel(&split, &plain) < 1e-5, "{}", max_rel(&split, &plain));
    assert!(max_rel(&split, &NpyArray::read(Path::new(&small("dec_output.npy"))).unwrap()) < 1e-4);
    let e = decode(&d.join("x.npy"), &["--splits", "2", "--window", "4,4,4"]).unwrap_err();
    assert!(e.contains("--splits") && e.contains("--window"), "{e}");
    let e = decode(&d.join("x.npy"), &["--splits", "0"]).unwrap_err();
    assert!(e.contains("--splits"), "{e}");
    assert!(!d.join("x.npy").exists());
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn clear_errors() {
    let d = tmp("err");
    let (cfg, w) = (small("config.json"), small("vae.pt"));
    let out = d.join("o.npy");
    let o = out.to_str().unwrap();
    // latent given to encode: wrong channel count
    let e =
        run(&["vae", "encode", "--config", &cfg, "--weights", &w, "--input", &small("dec_input.npy"), "--output", o])
            .unwrap_err();
    assert!(format!("{e:#}").contains("VAE input must be"), "{e:#}");
    // image given to decode
    let e =
        run(&["vae", "decode", "--config", &cfg, "--weights", &w, "--input", &small("enc_input.npy"), "--output", o])
            .unwrap_err();
    assert!(format!("{e:#}").contains("VAE latent must be"), "{e:#}");
    // bad output extension, bad window, bad overlap, missing weights
    assert!(run(&[
        "vae",
        "encode",
        "--config",
        &cfg,
        "--weights",
        &w,
        "--input",
        &small("enc_input.npy"),
        "--output",
        "x.txt"
    ])
    .is_err());
    assert!(run(&[
        "vae",
        "decode",
        "--config",
        &cfg,
        "--weights",
        &w,
        "--input",
        &small("dec_input.npy"),
        "--output",
        o,
        "--window",
        "2,0,2"
    ])
    .is_err());
    assert!(run(&[
        "vae",
        "decode",
        "--config",
        &cfg,
        "--weights",
        &w,
        "--input",
        &small("dec_input.npy"),
        "--output",
        o,
        "--window",
        "2,2,2",
        "--overlap",
        "1.5"
    ])
    .is_err());
    let e = run(&[
        "vae",
        "decode",
        "--config",
        &cfg,
        "--weights",
        "/nonexistent.pt",
        "--input",
        &small("dec_input.npy"),
        "--output",
        o,
    ])
    .unwrap_err();
    assert!(format!("{e:#}").contains("nonexistent.pt"), "{e:#}");
    std::fs::remove_dir_all(&d).ok();
}

/// `--precision bf16` on encode and decode: outputs within 2e-2 relative L2 of MONAI's (bf16
/// rounding of the 16-channel convolutions; f32 where the CPU lacks AVX512-BF16); an unknown
/// precision is refused by name, before anything is written.
#[test]
fn precision_bf16_and_unknown_values() {
    let d = tmp("precision");
    let (cfg, w) = (small("config.json"), small("vae.pt"));
    let (mu, dec) = (d.join("mu.npy"), d.join("dec.npy"));
    let base = |cmd: &str, input: &str, out: &Path, p: &str| -> Result<(), String> {
        let (i, o) = (small(input), out.to_string_lossy().into_owned());
        run(&["vae", cmd, "--config", &cfg, "--weights", &w, "--input", &i, "--output", &o, "--precision", p])
    };
    base("encode", "enc_input.npy", &mu, "bf16").unwrap();
    let e = max_rel(&NpyArray::read(&mu).unwrap(), &NpyArray::read(Path::new(&small("enc_mu.npy"))).unwrap());
    assert!(e <= 2e-2, "encode in bf16: {e}");
    base("decode", "dec_input.npy", &dec, "bf16").unwrap();
    let e = max_rel(&NpyArray::read(&dec).unwrap(), &NpyArray::read(Path::new(&small("dec_output.npy"))).unwrap());
    assert!(e <= 2e-2, "decode in bf16: {e}");
    for cmd in ["encode", "decode"] {
        let out = d.join(format!("{cmd}_f16.npy"));
        let input = if cmd == "encode" { "enc_input.npy" } else { "dec_input.npy" };
        let e = base(cmd, input, &out, "f16").unwrap_err();
        assert!(e.contains("--precision") && e.contains("\"f16\"") && e.contains("bf16"), "{e}");
        assert!(!out.exists());
    }
    std::fs::remove_dir_all(&d).ok();
}
