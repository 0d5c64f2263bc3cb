//! `text2ct eval fid` through the binary: two phantom sets (different seeds) and an identical
//! copy of one; small random-weight backbones written by the test (2D ResNet-18 layout, MedicalNet
//! ResNet-10 layout, CT-Net); FID(set, copy) ≈ 0 and FID(set, other) > 0; bad input exits 1.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use text2ct_models::ctnet::{CtNet, CtNetConfig};
use text2ct_models::resnet2d::{ResNet2d, ResNet2dConfig};
use text2ct_models::resnet3d::{ResNet3d, ResNet3dConfig};

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_text2ct")).args(args).output().expect("binary runs")
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

fn fails(args: &[&str], want: &str) {
    let o = run(args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{args:?} should fail cleanly: {err}");
    assert!(err.contains(want), "{args:?}: stderr {err:?} lacks {want:?}");
    assert!(!err.contains("panicked"), "{err}");
}

fn tmp() -> PathBuf {
    let d = std::env::temp_dir().join(format!("text2ct-eval-fid-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        let t = to.join(p.file_name().unwrap());
        if p.is_dir() {
            copy_dir(&p, &t)
        } else {
            std::fs::copy(&p, &t).unwrap();
        }
    }
}

fn report(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("fid.json")).unwrap()).unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn fid_of_phantom_sets() {
    let d = tmp();
    let (a, b, a2) = (d.join("a"), d.join("b"), d.join("a_copy"));
    for (dir, seed) in [(&a, "1"), (&b, "2")] {
        ok(&[
            "phantom",
            "--out",
            s(dir),
            "--count",
            "3",
            "--size",
            "32,32,24",
            "--seed",
            seed,
            "--split-fraction",
            "0",
        ]);
    }
    copy_dir(&a, &a2);

    // Small random-weight backbones and their architectures.
    let r2 = ResNet2dConfig { widths: [8, 8, 16, 16], stem_width: 8, ..ResNet2dConfig::resnet18() };
    let w2 = d.join("r18.safetensors");
    ResNet2d::random_state_dict(&r2, 1).unwrap().write_safetensors(&w2, None).unwrap();
    let c2 = d.join("r18.json");
    std::fs::write(&c2, serde_json::to_string(&r2).unwrap()).unwrap();
    let r3 = ResNet3dConfig { widths: [8, 8, 12, 16], stem_width: 8, ..ResNet3dConfig::medicalnet(10).unwrap() };
    let w3 = d.join("mn10.safetensors");
    ResNet3d::random_state_dict(&r3, 2).unwrap().write_safetensors(&w3, None).unwrap();
    let c3 = d.join("mn10.json");
    std::fs::write(&c3, serde_json::to_string(&r3).unwrap()).unwrap();
    let ct = CtNetConfig::fitted(24, [32, 32], [8, 8, 12, 16], 8).unwrap();
    let wct = d.join("ctnet.safetensors");
    CtNet::random_state_dict(&ct, 3).unwrap().write_safetensors(&wct, None).unwrap();

    // Both modes in one call: FID(a, a_copy) = 0.
    let out = d.join("same");
    let stdout = ok(&[
        "eval",
        "fid",
        "--real",
        s(&a),
        "--fake",
        s(&a2),
        "--backbone",
        "resnet18-2d",
        "--weights",
        s(&w2),
        "--backbone-config",
        s(&c2),
        "--backbone",
        "medicalnet-resnet10",
        "--weights",
        s(&w3),
        "--backbone-config",
        s(&c3),
        "--out",
        s(&out),
    ]);
    assert!(stdout.contains("2.5d FID"), "{stdout}");
    let r = report(&out);
    assert_eq!(r["runs"].as_array().unwrap().len(), 2);
    for run in r["runs"].as_array().unwrap() {
        let f = run["fid"].as_f64().unwrap();
        assert!(f.abs() < 1e-6, "FID(set, copy) = {f}");
        assert_eq!(run["backbone"]["weights_sha256"].as_str().unwrap().len(), 64);
    }
    assert_eq!(r["runs"][0]["planes"].as_array().unwrap().len(), 3);
    assert_eq!(r["runs"][0]["n_real"], 72, "3 volumes x 24 axial slices");
    assert!(std::fs::read_to_string(out.join("fid.md")).unwrap().contains("weights SHA-256"));

    // Different seeds: FID > 0, per plane too; centre fraction and a plane subset.
    let out = d.join("diff");
    ok(&[
        "eval",
        "fid",
        "--real",
        s(&a),
        "--fake",
        s(&b),
        "--backbone",
        "resnet18-2d",
        "--weights",
        s(&w2),
        "--backbone-config",
        s(&c2),
        "--planes",
        "axial,sagittal",
        "--center-fraction",
        "0.5",
        "--out",
        s(&out),
    ]);
    let r = report(&out);
    let run = &r["runs"][0];
    assert_eq!(run["mode"], "2.5d");
    assert_eq!(run["planes"].as_array().unwrap().len(), 2);
    assert_eq!(run["n_real"], 36, "3 volumes x 12 central axial slices");
    for p in run["planes"].as_array().unwrap() {
        assert!(p["fid"].as_f64().unwrap() > 1e-6, "{p}");
    }

    // CT-Net features (architecture read off the weights, input size from --size).
    let out = d.join("ctnet");
    ok(&[
        "eval",
        "fid",
        "--real",
        s(&a),
        "--fake",
        s(&b),
        "--backbone",
        "ctnet",
        "--weights",
        s(&wct),
        "--size",
        "32,32,24",
        "--out",
        s(&out),
    ]);
    let r = report(&out);
    assert_eq!(r["runs"][0]["mode"], "3d");
    assert_eq!(r["runs"][0]["backbone"]["feature_dim"], 96);
    assert!(r["runs"][0]["fid"].as_f64().unwrap() > 0.0);
    let out_same = d.join("ctnet_same");
    ok(&[
        "eval",
        "fid",
        "--real",
        s(&a),
        "--fake",
        s(&a2),
        "--backbone",
        "ctnet",
        "--weights",
        s(&wct),
        "--size",
        "32,32,24",
        "--out",
        s(&out_same),
    ]);
    assert!(report(&out_same)["runs"][0]["fid"].as_f64().unwrap().abs() < 1e-6);

    // Bad input.
    let empty = d.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let bb = ["--backbone", "resnet18-2d", "--weights", s(&w2), "--backbone-config", s(&c2)];
    let with = |real: &Path, fake: &Path, extra: &[&str]| {
        let mut v = vec!["eval", "fid", "--real", s(real), "--fake", s(fake)];
        v.extend_from_slice(&bb);
        v.extend_from_slice(extra);
        v.into_iter().map(String::from).collect::<Vec<_>>()
    };
    fails(&sv(&with(&empty, &b, &[])), "no volumes");
    let one = d.join("one");
    std::fs::create_dir_all(&one).unwrap();
    let first = walk_one(&a);
    std::fs::copy(&first, one.join("x.nii.gz")).unwrap();
    fails(&sv(&with(&a, &one, &[])), "at least 2");
    fails(&sv(&with(&a, &d.join("missing"), &[])), "no such file");
    fails(&sv(&with(&a, &b, &["--mode", "3d"])), "3D backbone");
    fails(&sv(&with(&a, &b, &["--planes", "diagonal"])), "unknown plane");
    fails(&sv(&with(&a, &b, &["--center-fraction", "0"])), "center-fraction");
    // A grid of 16 GiB per copy is refused with its estimate before any volume is read (it
    // aborted allocating).
    fails(&sv(&with(&a, &b, &["--size", "2048,2048,1024"])), "of memory (estimated)");
    // A volume with NaN voxels is refused by name (a finite FID was reported).
    let nan = d.join("nan");
    std::fs::create_dir_all(&nan).unwrap();
    let vol = text2ct_io::Volume::from_fn([16, 16, 8], text2ct_io::Affine::identity(), |x, _, _| x as f32).unwrap();
    let f32_opts = text2ct_io::nifti_io::WriteOptions {
        dtype: text2ct_io::nifti_io::DType::F32,
        ..text2ct_io::nifti_io::WriteOptions::ct_hu()
    };
    for name in ["v1.nii", "v2.nii"] {
        text2ct_io::nifti_io::write_nifti(&nan.join(name), &vol, &f32_opts).unwrap();
    }
    let mut bytes = std::fs::read(nan.join("v2.nii")).unwrap();
    bytes[352 + 40..352 + 44].copy_from_slice(&f32::NAN.to_le_bytes());
    std::fs::write(nan.join("v2.nii"), bytes).unwrap();
    fails(&sv(&with(&a, &nan, &[])), "v2.nii: volume holds 1 non-finite voxel(s)");
    // Weights that do not fit the architecture: strict load names the keys.
    fails(
        &["eval", "fid", "--real", s(&a), "--fake", s(&b), "--backbone", "resnet18-2d", "--weights", s(&w3)],
        "does not match",
    );
    fails(
        &["eval", "fid", "--real", s(&a), "--fake", s(&b), "--backbone", "vgg16", "--weights", s(&w2)],
        "unknown backbone",
    );
    // CT-Net with a size its weights were not made for.
    fails(
        &[
            "eval",
            "fid",
            "--real",
            s(&a),
            "--fake",
            s(&b),
            "--backbone",
            "ctnet",
            "--weights",
            s(&wct),
            "--size",
            "32,32,30",
        ],
        "ctnet",
    );
    let _ = std::fs::remove_dir_all(&d);
}

fn sv(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn walk_one(dir: &Path) -> PathBuf {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            let f = walk_one(&p);
            if !f.as_os_str().is_empty() {
                return f;
            }
        } else if p.to_string_lossy().ends_with(".nii.gz") {
            return p;
        }
    }
    PathBuf::new()
}
