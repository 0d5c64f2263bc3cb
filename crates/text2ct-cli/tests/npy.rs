//! `.npy` files as NumPy writes them, through the binary (`unet forward` on the small MONAI
//! fixtures of text2ct-models). Files are written byte by byte here: no Python needed.

use std::path::{Path, PathBuf};
use std::process::Command;

use text2ct_models::NpyArray;

fn fx(f: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../text2ct-models/fixtures/unet_small").join(f).to_string_lossy().into()
}

fn tmp(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("t2ct_cli_npy_{tag}_{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A `.npy` as NumPy writes it (`text2ct_io::npy::encode_raw`).
fn npy(descr: &str, shape: &str, data: &[u8]) -> Vec<u8> {
    text2ct_io::npy::encode_raw(descr, false, shape, data)
}

/// `unet forward` with the fixtures and `--class-labels labels`; Ok(output) or Err(stderr).
fn forward(labels: &Path, out: &Path) -> Result<Vec<f32>, String> {
    let o = Command::new(env!("CARGO_BIN_EXE_text2ct"))
        .args(["unet", "forward", "--config", &fx("config.json"), "--weights", &fx("unet.pt"), "--x", &fx("x.npy")])
        .args(["--t", &fx("t.npy"), "--context", &fx("context.npy"), "--spacing", &fx("spacing.npy")])
        .arg("--class-labels")
        .arg(labels)
        .arg("--output")
        .arg(out)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(!err.contains("panicked"), "{err}");
    if o.status.success() {
        Ok(NpyArray::read(out).unwrap().data)
    } else {
        assert_eq!(o.status.code(), Some(1), "{err}");
        Err(err)
    }
}

/// Issue 21 item 10: `np.save("labels.npy", np.array([...]))` writes NumPy's default int64
/// (`<i8`), which `--class-labels` refused as an unsupported dtype. Every integer dtype (and
/// bool) gives the same output as the float labels of the fixture.
#[test]
fn class_labels_of_numpy_integer_dtypes() {
    let d = tmp("labels");
    let want = forward(Path::new(&fx("class_labels.npy")), &d.join("ref.npy")).unwrap();
    let labels: Vec<i64> =
        NpyArray::read(Path::new(&fx("class_labels.npy"))).unwrap().data.iter().map(|&v| v as i64).collect();
    assert_eq!(labels.len(), 2);
    let as_bytes = |f: &dyn Fn(i64) -> Vec<u8>| labels.iter().flat_map(|&v| f(v)).collect::<Vec<u8>>();
    let files = [
        ("<i8", as_bytes(&|v| v.to_le_bytes().to_vec())),
        (">i8", as_bytes(&|v| v.to_be_bytes().to_vec())),
        ("<i4", as_bytes(&|v| (v as i32).to_le_bytes().to_vec())),
        ("<u2", as_bytes(&|v| (v as u16).to_le_bytes().to_vec())),
        ("<u4", as_bytes(&|v| (v as u32).to_le_bytes().to_vec())),
        (">f8", as_bytes(&|v| (v as f64).to_be_bytes().to_vec())),
    ];
    for (descr, body) in files {
        let p = d.join("labels.npy");
        std::fs::write(&p, npy(descr, "(2,)", &body)).unwrap();
        let got = forward(&p, &d.join("out.npy")).unwrap_or_else(|e| panic!("{descr}: {e}"));
        assert_eq!(got, want, "{descr}");
    }
    // A label beyond i32 (and beyond num_class_embeds) is refused naming the file.
    let p = d.join("huge.npy");
    std::fs::write(&p, npy("<i8", "(2,)", &[1i64 << 40, 1].iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<_>>()))
        .unwrap();
    let e = forward(&p, &d.join("out2.npy")).unwrap_err();
    assert!(e.contains("huge.npy") && e.contains("1099511627776") && e.contains("outside 0.."), "{e}");
    assert!(!d.join("out2.npy").exists());
    std::fs::remove_dir_all(&d).ok();
}
