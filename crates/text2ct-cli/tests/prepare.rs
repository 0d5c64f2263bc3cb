//! `prepare ctrate` through the binary on phantom data sets whose CSVs were edited the way real
//! data goes wrong.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn run(args: &[&str]) -> Output {
    let o = Command::new(env!("CARGO_BIN_EXE_text2ct")).args(args).output().expect("binary runs");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!err.contains("panicked"), "{args:?}: {err}");
    o
}

fn ok(args: &[&str]) -> (String, String) {
    let o = run(args);
    let (out, err) = (String::from_utf8_lossy(&o.stdout).to_string(), String::from_utf8_lossy(&o.stderr).to_string());
    assert!(o.status.success(), "{args:?} failed:\n{out}\n{err}");
    (out, err)
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("text2ct-cli-prepare-{}-{}", name, std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A phantom data set in CT-RATE's layout: 2 train volumes, 1 valid.
fn phantom(root: &Path, extra: &[&str]) {
    let mut a = vec!["phantom", "--out", s(root), "--count", "3", "--size", "32,32,16", "--seed", "5", "--jobs", "2"];
    a.extend_from_slice(extra);
    ok(&a);
}

fn metadata(root: &Path) -> PathBuf {
    root.join("dataset/metadata/train_metadata.csv")
}

/// Split one CSV line (quotes hold commas; the metadata has no doubled quotes).
fn fields(line: &str) -> Vec<String> {
    let (mut out, mut cur, mut quoted) = (Vec::new(), String::new(), false);
    for c in line.chars() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => out.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    out.push(cur);
    out
}

/// Set `column` of `volume`'s row in the train metadata CSV to `value`.
fn edit_metadata(root: &Path, volume: &str, column: &str, value: &str) {
    let p = metadata(root);
    let text = std::fs::read_to_string(&p).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let col = fields(&lines[0]).iter().position(|h| h == column).unwrap();
    let row = lines.iter().position(|l| l.starts_with(&format!("{volume},"))).unwrap();
    let mut f = fields(&lines[row]);
    f[col] = value.to_string();
    lines[row] =
        f.iter().map(|x| if x.contains(',') { format!("\"{x}\"") } else { x.clone() }).collect::<Vec<_>>().join(",");
    std::fs::write(&p, lines.join("\n") + "\n").unwrap();
}

fn prepare(root: &Path, out: &Path, extra: &[&str]) -> Vec<String> {
    let mut a = vec![
        "prepare",
        "ctrate",
        "--root",
        s(root),
        "--split",
        "train",
        "--out",
        s(out),
        "--spacing",
        "12,12,20",
        "--size",
        "32,32,16",
        "--jobs",
        "2",
    ];
    a.extend_from_slice(extra);
    a.into_iter().map(str::to_string).collect()
}

fn args(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// Issue 21 item 1: a RescaleSlope that does not parse used to store the raw values (HU + 1024)
/// as if they were HU, exit 0. The item is skipped with the reason; the others are prepared.
#[test]
fn slope_that_does_not_parse_is_skipped_not_stored_raw() {
    let d = tmp("slope");
    let root = d.join("r");
    phantom(&root, &["--store-raw"]);
    edit_metadata(&root, "train_1_a_1.nii.gz", "RescaleSlope", "abc");
    let out = d.join("p");
    let (stdout, _) = ok(&args(&prepare(&root, &out, &[])));
    assert!(stdout.contains("prepared 1 volume(s)"), "{stdout}");
    assert!(stdout.contains("skipped     1 x RescaleSlope \"abc\" is not a number"), "{stdout}");
    assert!(!out.join("volumes/train_1_a_1.npy").exists());
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["skipped"][0]["volume"], "train_1_a_1.nii.gz", "{summary}");
    assert!(summary["skipped"][0]["reason"].as_str().unwrap().contains("\"abc\""), "{summary}");
    // The other (raw-stored) volume got its intercept: air is about -1000 HU, not 0.
    let m = std::fs::read_to_string(out.join("manifest.jsonl")).unwrap();
    let e: serde_json::Value = serde_json::from_str(m.lines().next().unwrap()).unwrap();
    assert_eq!(e["id"], "train_2_a_1");
    assert_eq!(e["hu"]["hu"], "applied");

    // No usable row at all: nothing prepared, exit 1 naming the reason.
    edit_metadata(&root, "train_2_a_1.nii.gz", "RescaleIntercept", "");
    let o = run(&args(&prepare(&root, &d.join("p2"), &[])));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("no volume was prepared: all 2 row(s) were skipped") && err.contains("abc"), "{err}");
    let summary = std::fs::read_to_string(d.join("p2/summary.json")).unwrap();
    assert!(summary.contains("RescaleIntercept \\\"\\\" is not a number"), "{summary}");
    assert!(!d.join("p2/volumes/train_2_a_1.npy").exists());
}

/// Issue 21 item 14: the metadata CSV's spacing disagreeing with the NIfTI header went
/// unremarked. Each such volume is warned about; `--spacing-source` picks one; the manifest
/// records the choice and both values.
#[test]
fn spacing_disagreement_is_warned_chosen_and_recorded() {
    let d = tmp("spacing");
    let root = d.join("r");
    phantom(&root, &[]);
    let meta = std::fs::read_to_string(metadata(&root)).unwrap();
    let row = meta.lines().find(|l| l.starts_with("train_1_a_1.nii.gz,")).unwrap();
    let z: f64 = fields(row)[4].parse().unwrap();
    edit_metadata(&root, "train_1_a_1.nii.gz", "ZSpacing", &format!("{}", z * 1.2));
    let manifest = |out: &Path| -> Vec<serde_json::Value> {
        let m = std::fs::read_to_string(out.join("manifest.jsonl")).unwrap();
        m.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    };
    for (source, used) in [(None, "header"), (Some("metadata"), "metadata")] {
        let out = d.join(format!("p-{used}"));
        let extra: Vec<&str> = source.map(|s| vec!["--spacing-source", s]).unwrap_or_default();
        let (_, stderr) = ok(&args(&prepare(&root, &out, &extra)));
        let warn: Vec<&str> = stderr.lines().filter(|l| l.starts_with("warning: ")).collect();
        assert_eq!(warn.len(), 1, "{stderr}");
        assert!(warn[0].starts_with("warning: train_1_a_1: the NIfTI header's voxel size"), "{stderr}");
        assert!(warn[0].contains(&format!("{used}'s is used")), "{stderr}");
        let m = manifest(&out);
        let e1 = m.iter().find(|e| e["id"] == "train_1_a_1").unwrap();
        let sp = &e1["source_spacing"];
        assert_eq!(sp["used"], used);
        let (h, md) = (sp["header"][2].as_f64().unwrap(), sp["metadata"][2].as_f64().unwrap());
        assert!((h - z).abs() < 1e-4 && (md - 1.2 * z).abs() < 1e-4, "{sp}");
        assert_eq!(e1["warnings"].as_array().unwrap().len(), 1);
        let e2 = m.iter().find(|e| e["id"] == "train_2_a_1").unwrap();
        assert!(e2.get("warnings").is_none(), "{e2}");
        assert_eq!(e2["source_spacing"]["header"], e2["source_spacing"]["metadata"]);
    }
    // (What the choice does to the geometry: text2ct-data's tests/ctrate.rs.)
    let o = run(&args(&prepare(&root, &d.join("bad"), &["--spacing-source", "dicom"])));
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--spacing-source must be header or metadata"));
}
