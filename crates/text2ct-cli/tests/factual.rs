//! `train classifier`, `eval factual` and `eval augment` through the binary: the metrics are
//! what `classification.rs` computes on the classifier's scores, NIfTI + sidecar volumes match
//! their labels, "real" is the first row, and bad input gives a clear error (exit status 1).

use std::path::{Path, PathBuf};
use std::process::Command;

use text2ct_data::labels::LABELS;
use text2ct_eval::classification::{multilabel, precision_at_threshold, roc_auc};
use text2ct_io::nifti_io::{write_nifti, WriteOptions};
use text2ct_io::{Affine, Volume};

/// Run `text2ct ARGS`; Ok(stdout) or Err(stderr) (exit status 1, never a panic).
fn run(args: &[&str]) -> Result<String, String> {
    let o = Command::new(env!("CARGO_BIN_EXE_text2ct")).args(args).output().map_err(|e| e.to_string())?;
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(!err.contains("panicked"), "{args:?}: {err}");
    if o.status.success() {
        Ok(String::from_utf8_lossy(&o.stdout).to_string())
    } else {
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        Err(err)
    }
}

fn write_i16_npy(path: &Path, dims: [usize; 3], data: &[i16]) {
    let mut header =
        format!("{{'descr': '<i2', 'fortran_order': True, 'shape': ({}, {}, {}), }}", dims[0], dims[1], dims[2]);
    let total = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - total % 64) % 64));
    header.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    for v in data {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    std::fs::write(path, bytes).unwrap();
}

const DIMS: [usize; 3] = [32, 32, 6];

/// HU of volume `i`: soft tissue, a 1000 HU cube when `metal`, a fluid layer when `fluid`.
fn volume(i: usize, metal: bool, fluid: bool) -> Vec<i16> {
    let [nx, ny, nz] = DIMS;
    let mut d = vec![-1000i16; nx * ny * nz];
    for z in 0..nz {
        for y in 4..28 {
            for x in 4..28 {
                d[x + nx * (y + ny * z)] = if fluid && (18..26).contains(&y) && (5..15).contains(&x) {
                    10
                } else {
                    -800 + ((x * 7 + y * 3 + z * 11) % 40) as i16
                };
            }
        }
    }
    if metal {
        let c = 8 + i % 12;
        for z in 1..5 {
            for y in 8..11 {
                for x in c..c + 3 {
                    d[x + nx * (y + ny * z)] = 1000;
                }
            }
        }
    }
    d
}

/// A prepared set of `n` volumes with labels 0 (metal) and 12 (fluid); returns the manifest.
fn prepared(dir: &Path, n: usize, seed: usize) -> PathBuf {
    std::fs::create_dir_all(dir.join("volumes")).unwrap();
    let mut lines = String::new();
    for i in 0..n {
        let (metal, fluid) = ((i + seed) % 2 == 0, (i + seed) % 3 != 0);
        let id = format!("train_{}_a_{}", seed, i);
        write_i16_npy(&dir.join(format!("volumes/{id}.npy")), DIMS, &volume(i, metal, fluid));
        let mut labels = vec![0u8; 18];
        labels[0] = metal as u8;
        labels[12] = fluid as u8;
        let e = serde_json::json!({
            "id": id, "volume": format!("volumes/{id}.npy"), "report": "", "labels": labels,
            "spacing": [6.0, 6.0, 10.0], "dims": DIMS,
            "affine": [[6.0, 0.0, 0.0, 0.0], [0.0, 6.0, 0.0, 0.0], [0.0, 0.0, 10.0, 0.0], [0.0, 0.0, 0.0, 1.0]],
            "source": "test", "hu": "as_is"
        });
        lines.push_str(&format!("{e}\n"));
    }
    let m = dir.join("manifest.jsonl");
    std::fs::write(&m, lines).unwrap();
    m
}

fn manifest_rows(m: &Path) -> Vec<(String, Vec<u8>)> {
    std::fs::read_to_string(m)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let labels = v["labels"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u8).collect();
            (v["id"].as_str().unwrap().to_string(), labels)
        })
        .collect()
}

/// The prepared volumes as `generate` would write them: `{id}_seed7.nii.gz` + sidecar.
fn as_generated(manifest: &Path, out: &Path) {
    std::fs::create_dir_all(out).unwrap();
    let dir = manifest.parent().unwrap();
    for (k, (id, _)) in manifest_rows(manifest).iter().enumerate() {
        let m = text2ct_data::manifest::MappedVolume::open(&dir.join(format!("volumes/{id}.npy"))).unwrap();
        let a = Affine::from_spacing_origin([6.0, 6.0, 10.0], [0.0; 3]).unwrap();
        let vol = m.to_volume(&a.0).unwrap();
        assert_eq!(vol.dims(), DIMS);
        // Alternate: one file with a sidecar naming the report, one named after the report only.
        let stem = format!("{id}_seed7");
        let name = if k % 2 == 0 { format!("gen_{k}.nii.gz") } else { format!("{stem}.nii.gz") };
        write_nifti(&out.join(&name), &vol, &WriteOptions::ct_hu()).unwrap();
        if k % 2 == 0 {
            let sc = serde_json::json!({ "id": id, "prompt": "x", "seed": 7 });
            std::fs::write(out.join(format!("gen_{k}.json")), sc.to_string()).unwrap();
        }
    }
}

fn labels_csv(manifest: &Path, path: &Path, drop_last: bool) {
    let n = if drop_last { 17 } else { 18 };
    let mut s =
        format!("VolumeName,{}\n", LABELS[..n].iter().map(|l| format!("\"{l}\"")).collect::<Vec<_>>().join(","));
    for (id, l) in manifest_rows(manifest) {
        s.push_str(&format!("{id}.nii.gz,{}\n", l[..n].iter().map(|v| v.to_string()).collect::<Vec<_>>().join(",")));
    }
    std::fs::write(path, s).unwrap();
}

fn train_config(train: &Path, val: &Path, out: &Path) -> String {
    format!(
        r#"
[model]
trunk_widths = [4, 4, 8, 8]
trunk_stem_width = 4
fc = [16, 8]

[data]
batch_size = 4
[[data.train]]
volumes = {train:?}
[data.val]
volumes = {val:?}

[optim]
lr = 3e-3

[run]
out_dir = {out:?}
steps = 12
checkpoint_every = 0
"#,
        train = train.to_string_lossy(),
        val = val.to_string_lossy(),
        out = out.to_string_lossy()
    )
}

fn json(p: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn opt(v: &serde_json::Value) -> Option<f64> {
    v.as_f64()
}

#[test]
fn train_then_evaluate_real_and_generated_sets() {
    let d = tempfile::tempdir().unwrap();
    let train = prepared(&d.path().join("train"), 12, 0);
    let test = prepared(&d.path().join("test"), 8, 1);
    let cfg = d.path().join("train.toml");
    let run_dir = d.path().join("run");
    std::fs::write(&cfg, train_config(&train, &test, &run_dir)).unwrap();
    let out = run(&["train", "classifier", "--config", cfg.to_str().unwrap()]).unwrap();
    assert!(out.contains("classifier:"), "{out}");
    let clf = run_dir.join("final");
    let clf_s = clf.to_str().unwrap();

    // Generated-like NIfTI of the test volumes, with and without sidecars; labels from a CSV.
    let gen = d.path().join("gen");
    as_generated(&test, &gen);
    let csv = d.path().join("labels.csv");
    labels_csv(&test, &csv, false);
    let o = d.path().join("factual");
    let syn = format!("synth={}", gen.display());
    let real = format!("real={}", test.display());
    let lab = format!("synth={}", csv.display());
    run(&[
        "eval",
        "factual",
        "--classifier",
        clf_s,
        "--volumes",
        &syn,
        "--volumes",
        &real,
        "--labels",
        &lab,
        "--out",
        o.to_str().unwrap(),
    ])
    .unwrap();
    let r = json(&o.join("factual.json"));
    let rows = r["rows"].as_array().unwrap();
    assert_eq!(rows[0]["name"], "real", "real is the first row");
    assert_eq!(rows[1]["name"], "synth");
    assert!(std::fs::read_to_string(o.join("factual.md")).unwrap().contains("| real |"));

    // The report's metrics are classification.rs's on the report's own scores.
    let truth: std::collections::HashMap<String, Vec<u8>> = manifest_rows(&test).into_iter().collect();
    for row in rows {
        let preds = row["predictions"].as_array().unwrap();
        assert_eq!(preds.len(), 8);
        let mut y = Vec::new();
        let mut s = Vec::new();
        for p in preds {
            let key = p[1].as_str().unwrap();
            y.push(truth[key].iter().map(|&v| v != 0).collect::<Vec<bool>>());
            s.push(p[2].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect::<Vec<f64>>());
        }
        let prec = multilabel(&y, &s, |a, b| precision_at_threshold(a, b, 0.5)).unwrap();
        assert!((opt(&row["precision"]["macro_avg"]).unwrap() - prec.macro_avg).abs() < 1e-12);
        assert!((opt(&row["precision"]["weighted_avg"]).unwrap() - prec.weighted_avg).abs() < 1e-12);
        for c in [0usize, 12] {
            let yc: Vec<bool> = y.iter().map(|r| r[c]).collect();
            let sc: Vec<f64> = s.iter().map(|r| r[c]).collect();
            assert!((opt(&row["auc"]["per_class"][c]).unwrap() - roc_auc(&yc, &sc).unwrap()).abs() < 1e-12);
        }
        assert!(row["auc"]["per_class"][1].is_null(), "a class without positives has no AUC");
        assert_eq!(row["auc"]["n_classes"], 2);
        let m = (opt(&row["auc"]["per_class"][0]).unwrap() + opt(&row["auc"]["per_class"][12]).unwrap()) / 2.0;
        assert!((opt(&row["auc"]["macro_avg"]).unwrap() - m).abs() < 1e-12);
    }
    // The same voxels as NIfTI give the same scores as from the manifest.
    let by_key = |row: &serde_json::Value| -> std::collections::BTreeMap<String, Vec<f64>> {
        row["predictions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p[1].as_str().unwrap().to_string(),
                    p[2].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect(),
                )
            })
            .collect()
    };
    let (a, b) = (by_key(&rows[0]), by_key(&rows[1]));
    for (k, v) in &a {
        let w = &b[k];
        assert!(v.iter().zip(w).all(|(x, y)| (x - y).abs() < 1e-6), "{k}: {v:?} vs {w:?}");
    }

    // Bad input.
    let o2 = d.path().join("bad");
    let o2s = o2.to_str().unwrap();
    let gens = gen.to_str().unwrap();
    // Labels missing for a volume: the CSV lacks one report.
    let short = d.path().join("short.csv");
    let full = std::fs::read_to_string(&csv).unwrap();
    let mut lines: Vec<&str> = full.lines().collect();
    let dropped = lines.pop().unwrap().split(',').next().unwrap().trim_end_matches(".nii.gz").to_string();
    std::fs::write(&short, lines.join("\n") + "\n").unwrap();
    let e = run(&[
        "eval",
        "factual",
        "--classifier",
        clf_s,
        "--volumes",
        gens,
        "--labels",
        short.to_str().unwrap(),
        "--out",
        o2s,
    ])
    .unwrap_err();
    assert!(e.contains(&dropped) && e.contains("no labels"), "{e}");
    // NIfTI without labels at all.
    let e = run(&["eval", "factual", "--classifier", clf_s, "--volumes", gens, "--out", o2s]).unwrap_err();
    assert!(e.contains("need labels"), "{e}");
    // Mismatched label columns.
    let c17 = d.path().join("c17.csv");
    labels_csv(&test, &c17, true);
    let e = run(&[
        "eval",
        "factual",
        "--classifier",
        clf_s,
        "--volumes",
        gens,
        "--labels",
        c17.to_str().unwrap(),
        "--out",
        o2s,
    ])
    .unwrap_err();
    assert!(e.contains("c17.csv") && e.contains("Interlobular septal thickening"), "{e}");
    // An empty set.
    let empty = d.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let e = run(&[
        "eval",
        "factual",
        "--classifier",
        clf_s,
        "--volumes",
        empty.to_str().unwrap(),
        "--labels",
        csv.to_str().unwrap(),
        "--out",
        o2s,
    ])
    .unwrap_err();
    assert!(e.contains("empty") && e.contains("no volumes"), "{e}");
    // A volume of the wrong shape: named, with the way out.
    let odd = d.path().join("odd");
    std::fs::create_dir_all(&odd).unwrap();
    let (id0, _) = &manifest_rows(&test)[0];
    let a = Affine::from_spacing_origin([6.0, 6.0, 10.0], [0.0; 3]).unwrap();
    let vol = Volume::from_fn([32, 32, 9], a, |_, _, _| -900.0).unwrap();
    write_nifti(&odd.join(format!("{id0}_seed1.nii.gz")), &vol, &WriteOptions::ct_hu()).unwrap();
    let e = run(&[
        "eval",
        "factual",
        "--classifier",
        clf_s,
        "--volumes",
        odd.to_str().unwrap(),
        "--labels",
        csv.to_str().unwrap(),
        "--out",
        o2s,
    ])
    .unwrap_err();
    assert!(e.contains(&format!("{id0}_seed1.nii.gz")) && e.contains("--pad-crop"), "{e}");
    run(&[
        "eval",
        "factual",
        "--classifier",
        clf_s,
        "--volumes",
        odd.to_str().unwrap(),
        "--labels",
        csv.to_str().unwrap(),
        "--pad-crop",
        "--out",
        o2s,
    ])
    .unwrap();
    // Not a classifier folder.
    let e =
        run(&["eval", "factual", "--classifier", gens, "--volumes", test.to_str().unwrap(), "--out", o2s]).unwrap_err();
    assert!(e.contains("classifier.json"), "{e}");
}

#[test]
fn augmentation_study_writes_table_and_plot() {
    let d = tempfile::tempdir().unwrap();
    let real = prepared(&d.path().join("real"), 8, 0);
    let syn_src = prepared(&d.path().join("synsrc"), 8, 2);
    let gen = d.path().join("gen");
    as_generated(&syn_src, &gen);
    let test = prepared(&d.path().join("test"), 6, 1);
    let out = d.path().join("study");
    let cfg = format!(
        r#"
[study]
out_dir = {out:?}
real = [{{ volumes = {real:?} }}]
synthetic = [{{ volumes = {gen:?}, labels = {syn:?} }}]
test = {{ volumes = {test:?} }}

[train]
steps = 4
batch_size = 2

[model]
trunk_widths = [4, 4, 8, 8]
trunk_stem_width = 4
fc = [16, 8]
"#,
        out = out.to_string_lossy(),
        real = real.to_string_lossy(),
        gen = gen.to_string_lossy(),
        syn = syn_src.to_string_lossy(),
        test = test.to_string_lossy()
    );
    let p = d.path().join("aug.toml");
    std::fs::write(&p, cfg).unwrap();
    let stdout = run(&["eval", "augment", "--config", p.to_str().unwrap()]).unwrap();
    assert!(stdout.contains("Real + Synthetic"), "{stdout}");
    let r = json(&out.join("augment.json"));
    let res = r["results"].as_array().unwrap();
    assert_eq!(res.len(), 3);
    assert_eq!(res[0]["n_train"], 8);
    assert_eq!(res[1]["n_train"], 8);
    assert_eq!(res[2]["n_train"], 16);
    assert!(res.iter().all(|x| x["test"]["n_volumes"] == 6 && x["steps"] == 4));
    assert!(out.join("augment.png").is_file() && out.join("augment.md").is_file());
    // A second run reuses the finished classifiers (same hashes).
    run(&["eval", "augment", "--config", p.to_str().unwrap()]).unwrap();
    let r2 = json(&out.join("augment.json"));
    for k in 0..3 {
        assert_eq!(r2["results"][k]["weights_sha256"], res[k]["weights_sha256"]);
        assert!(r2["results"][k]["training"].is_null());
    }
    // `eval report` with an [augmentation] section runs the same study (the finished classifiers
    // are reused) and embeds its table: the same numbers as augment.json.
    let eval = d.path().join("eval.toml");
    std::fs::write(&eval, format!("[augmentation]\nconfig = {:?}\n", p.to_string_lossy())).unwrap();
    let rep = d.path().join("report");
    run(&["eval", "report", "--config", eval.to_str().unwrap(), "--out", rep.to_str().unwrap()]).unwrap();
    let j = json(&rep.join("report.json"));
    let a = j["augmentation"]["results"].as_array().unwrap();
    assert_eq!(a.len(), 3);
    for k in 0..3 {
        assert_eq!(a[k]["regime"], res[k]["regime"]);
        assert_eq!(a[k]["weights_sha256"], res[k]["weights_sha256"]);
        assert_eq!(a[k]["test"]["auc"], r2["results"][k]["test"]["auc"]);
        assert_eq!(a[k]["test"]["precision"], r2["results"][k]["test"]["precision"]);
    }
    let md = std::fs::read_to_string(rep.join("report.md")).unwrap();
    for want in
        ["## Table 6", "| Training set | AUC (Macro) |", "| Real only |", "| Real + Synthetic |", "| [augmentation] |"]
    {
        assert!(md.contains(want), "report.md lacks {want:?}:\n{md}");
    }
    assert!(rep.join("table6_augmentation.png").is_file());
    // An unknown key is refused, naming the section.
    let bad = d.path().join("bad.toml");
    std::fs::write(&bad, format!("[augmentation]\nconfig = {:?}\nstep = 3\n", p.to_string_lossy())).unwrap();
    let e = run(&["eval", "report", "--config", bad.to_str().unwrap(), "--out", rep.to_str().unwrap()]).unwrap_err();
    assert!(e.contains("section [augmentation]") && e.contains("unknown field `step`"), "{e}");

    // Bad config: the test set does not exist.
    std::fs::write(&p, std::fs::read_to_string(&p).unwrap().replace(test.to_str().unwrap(), "/nonexistent/m.jsonl"))
        .unwrap();
    let e = run(&["eval", "augment", "--config", p.to_str().unwrap()]).unwrap_err();
    assert!(e.contains("study.test.volumes") && e.contains("aug.toml"), "{e}");
    let e = run(&["eval", "report", "--config", eval.to_str().unwrap(), "--out", rep.to_str().unwrap()]).unwrap_err();
    assert!(e.contains("section [augmentation]") && e.contains("study.test.volumes"), "{e}");
}
