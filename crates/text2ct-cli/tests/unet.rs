//! The `unet forward` command through the binary, against the small MONAI fixtures of
//! text2ct-models (`fixtures/unet_small`, reference computed by MONAI in float64).

use std::path::{Path, PathBuf};
use std::process::Command;

use text2ct_models::{NpyArray, StateDict};

/// Run `text2ct ARGS`; Err(stderr) when it exits non-zero (which must be exit code 1, no panic).
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

fn fx(f: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../text2ct-models/fixtures/unet_small").join(f).to_string_lossy().into()
}

fn tmp(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("t2ct_cli_unet_{tag}_{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The full argument list with `over` replacing (or, with an empty value, dropping) options.
fn args(out: &Path, over: &[(&str, String)]) -> Vec<String> {
    let mut base: Vec<(&str, String)> = vec![
        ("--config", fx("config.json")),
        ("--weights", fx("unet.pt")),
        ("--x", fx("x.npy")),
        ("--t", fx("t.npy")),
        ("--context", fx("context.npy")),
        ("--spacing", fx("spacing.npy")),
        ("--class-labels", fx("class_labels.npy")),
        ("--output", out.to_string_lossy().into()),
    ];
    for (k, v) in over {
        base.retain(|(b, _)| b != k);
        if !v.is_empty() {
            base.push((k, v.clone()));
        }
    }
    let mut a = vec!["unet".to_string(), "forward".to_string()];
    for (k, v) in base {
        a.push(k.to_string());
        a.push(v);
    }
    a
}

fn run_with(out: &Path, over: &[(&str, String)]) -> Result<(), String> {
    let a = args(out, over);
    let refs: Vec<&str> = a.iter().map(String::as_str).collect();
    run(&refs)
}

fn write(dir: &Path, name: &str, shape: Vec<usize>, data: Vec<f32>) -> String {
    let p = dir.join(name);
    NpyArray::new(shape, data).unwrap().write(&p).unwrap();
    p.to_string_lossy().into()
}

#[test]
fn forward_matches_monai() {
    let d = tmp("ok");
    let out = d.join("out.npy");
    run_with(&out, &[]).unwrap();
    let got = NpyArray::read(&out).unwrap();
    let want = NpyArray::read(Path::new(&fx("out.npy"))).unwrap();
    assert_eq!(got.shape, want.shape);
    let num: f64 = got.data.iter().zip(&want.data).map(|(a, b)| ((a - b) as f64).powi(2)).sum();
    let den: f64 = want.data.iter().map(|b| (*b as f64).powi(2)).sum();
    let e = (num / den).sqrt();
    assert!(e <= 1e-4, "rel L2 {e}");

    // A 2D context [B, D] is read as [B, 1, D].
    let ctx = NpyArray::read(Path::new(&fx("context.npy"))).unwrap();
    let c2 = write(&d, "ctx2d.npy", vec![ctx.shape[0], ctx.shape[2]], ctx.data.clone());
    let out2 = d.join("out2.npy");
    run_with(&out2, &[("--context", c2)]).unwrap();
    assert_eq!(NpyArray::read(&out2).unwrap().data, got.data);
    std::fs::remove_dir_all(&d).ok();
}

/// `--precision bf16`: the output stays within 2e-2 relative L2 of MONAI's; an unknown precision
/// is refused by name, before anything is written.
#[test]
fn precision_bf16_and_unknown_values() {
    let d = tmp("precision");
    let out = d.join("out.npy");
    run_with(&out, &[("--precision", "bf16".into())]).unwrap();
    let got = NpyArray::read(&out).unwrap();
    let want = NpyArray::read(Path::new(&fx("out.npy"))).unwrap();
    let num: f64 = got.data.iter().zip(&want.data).map(|(a, b)| ((a - b) as f64).powi(2)).sum();
    let den: f64 = want.data.iter().map(|b| (*b as f64).powi(2)).sum();
    assert!((num / den).sqrt() <= 2e-2);
    let out2 = d.join("out2.npy");
    let e = run_with(&out2, &[("--precision", "half".into())]).unwrap_err();
    assert!(e.contains("--precision") && e.contains("\"half\"") && e.contains("f32, bf16"), "{e}");
    assert!(!out2.exists());
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn bad_inputs_exit_1_with_a_message() {
    let d = tmp("bad");
    let out = d.join("out.npy");
    let err = |over: &[(&str, String)]| run_with(&out, over).unwrap_err();

    // x with a spatial extent that is not a multiple of 8
    let x = write(&d, "x_bad.npy", vec![2, 4, 16, 8, 20], vec![0.0; 2 * 4 * 16 * 8 * 20]);
    let e = err(&[("--x", x)]);
    assert!(e.contains("multiples of 8"), "{e}");
    // x not 5D
    let x4 = write(&d, "x4.npy", vec![2, 4, 16, 8], vec![0.0; 2 * 4 * 16 * 8]);
    assert!(err(&[("--x", x4)]).contains("5D"));
    // wrong number of timesteps
    let t = write(&d, "t3.npy", vec![3], vec![1.0, 2.0, 3.0]);
    assert!(err(&[("--t", t)]).contains("[B] = [2]"));
    // context of the wrong width
    let c = write(&d, "c.npy", vec![2, 1, 7], vec![0.0; 14]);
    let e = err(&[("--context", c)]);
    assert!(e.contains("context") && e.contains("12"), "{e}");
    // spacing of the wrong shape, and missing
    let s = write(&d, "s.npy", vec![2, 2], vec![1.0; 4]);
    assert!(err(&[("--spacing", s)]).contains("[B,3]"));
    assert!(err(&[("--spacing", String::new())]).contains("--spacing"));
    // class labels: not whole, out of range, missing
    let l = write(&d, "l.npy", vec![2], vec![1.5, 2.0]);
    assert!(err(&[("--class-labels", l)]).contains("whole numbers"));
    let l = write(&d, "l2.npy", vec![2], vec![1.0, 9.0]);
    assert!(err(&[("--class-labels", l)]).contains("outside 0..5"));
    assert!(err(&[("--class-labels", String::new())]).contains("--class-labels"));
    // Non-finite or out-of-range values (they gave all-NaN output with exit code 0), named with
    // their file and option; nothing is written.
    let t = write(&d, "t_nan.npy", vec![2], vec![f32::NAN, 37.25]);
    let e = err(&[("--t", t)]);
    assert!(e.contains("t_nan.npy") && e.contains("--t") && e.contains("non-finite"), "{e}");
    let t = write(&d, "t_neg.npy", vec![2], vec![-1.0, 37.25]);
    assert!(err(&[("--t", t)]).contains("outside [0, 1000]"));
    let s = write(&d, "s_nan.npy", vec![2, 3], vec![75.0, f32::NAN, 300.0, 80.0, 70.0, 150.0]);
    let e = err(&[("--spacing", s)]);
    assert!(e.contains("s_nan.npy") && e.contains("--spacing"), "{e}");
    let s = write(&d, "s_zero.npy", vec![2, 3], vec![75.0, 0.0, 300.0, 80.0, 70.0, 150.0]);
    assert!(err(&[("--spacing", s)]).contains("must be positive"));
    let x = NpyArray::read(Path::new(&fx("x.npy"))).unwrap();
    let mut xv = x.data.clone();
    xv[5] = f32::NEG_INFINITY;
    let xb = write(&d, "x_inf.npy", x.shape.clone(), xv);
    assert!(err(&[("--x", xb)]).contains("x_inf.npy"));
    let ctx = NpyArray::read(Path::new(&fx("context.npy"))).unwrap();
    let mut cv = ctx.data.clone();
    cv[0] = f32::NAN;
    let cb = write(&d, "ctx_nan.npy", ctx.shape.clone(), cv);
    assert!(err(&[("--context", cb)]).contains("--context"));
    assert!(!out.exists());
    // not a .npy output
    let e = run_with(&d.join("out.txt"), &[]).unwrap_err();
    assert!(e.contains("--output"), "{e}");
    // a missing input file names it
    let e = err(&[("--x", d.join("nope.npy").to_string_lossy().into())]);
    assert!(e.contains("nope.npy"), "{e}");

    // weights with a missing key and an unexpected one: strict load names both
    let pt = PathBuf::from(fx("unet.pt"));
    let mut sd = StateDict::read(&pt).unwrap().select_by_anchor("conv_in.conv.weight", &pt).unwrap();
    sd.tensors.remove("out.2.conv.bias");
    let extra = sd.tensors["out.0.bias"].clone();
    sd.tensors.insert("extra.bias".into(), extra);
    let w = d.join("bad.safetensors");
    sd.write_safetensors(&w, None).unwrap();
    let e = err(&[("--weights", w.to_string_lossy().into())]);
    assert!(e.contains("out.2.conv.bias") && e.contains("extra.bias") && e.contains("missing"), "{e}");
    // a config that is not a U-Net config
    let cfg = d.join("cfg.json");
    std::fs::write(
        &cfg,
        r#"{"spatial_dims": 3, "in_channels": 4, "out_channels": 4, "with_conditioning": true,
            "cross_attention_dim": 8, "resblock_updown": false}"#,
    )
    .unwrap();
    let e = err(&[("--config", cfg.to_string_lossy().into())]);
    assert!(e.contains("resblock_updown"), "{e}");
    std::fs::remove_dir_all(&d).ok();
}
