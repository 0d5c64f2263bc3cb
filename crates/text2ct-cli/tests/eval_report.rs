//! `text2ct eval sweep` and `text2ct eval report` through the binary, on the tiny released-layout
//! model (32 × 32 × 16 outputs, 2 sampling steps), small phantom sets and small random-weight
//! backbones written by the test: one row per guidance scale, the same noise at every scale
//! (w = 0 twice gives identical voxels; w = 0 and w = 5 differ), resume skips what exists and
//! refuses other settings; the report writes the configured tables and fails clearly.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use text2ct_models::resnet2d::{ResNet2d, ResNet2dConfig};
use text2ct_models::resnet3d::{ResNet3d, ResNet3dConfig};

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_text2ct")).args(args).env_remove("TEXT2CT_MODEL").output().expect("binary runs")
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

fn fails(args: &[&str], want: &[&str]) -> String {
    let o = run(args);
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert_eq!(o.status.code(), Some(1), "{args:?} should fail cleanly: {err}");
    for w in want {
        assert!(err.contains(w), "{args:?}: stderr {err:?} lacks {w:?}");
    }
    assert!(!err.contains("panicked"), "{err}");
    err
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("text2ct-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn model() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../text2ct-generate/fixtures/release_tiny")
}

fn voxels(p: &Path) -> Vec<f32> {
    text2ct_io::nifti_io::read_nifti(p, &text2ct_io::Limits::default()).unwrap().0.data().to_vec()
}

/// A phantom set of `count` volumes of `size`, the reports CSV, a small MedicalNet-layout 3D
/// backbone and a small ResNet-18 2D backbone (random weights) with their JSON architectures.
struct Fixture {
    dir: PathBuf,
    real: PathBuf,
    reports: PathBuf,
    w3: PathBuf,
    c3: PathBuf,
    w2: PathBuf,
    c2: PathBuf,
}

fn phantoms(out: &Path, count: &str, size: &str, seed: &str) {
    ok(&["phantom", "--out", s(out), "--count", count, "--size", size, "--seed", seed, "--split-fraction", "0"]);
}

fn fixture(name: &str) -> Fixture {
    let dir = tmp(name);
    let real = dir.join("real");
    phantoms(&real, "3", "32,32,16", "1");
    let reports = dir.join("reports.csv");
    std::fs::write(
        &reports,
        "VolumeName,ClinicalInformation_EN,Technique_EN,Findings_EN,Impressions_EN\n\
         valid_1_a_1.nii.gz,c,t,Right pleural effusion.,Effusion.\n\
         valid_2_a_1.nii.gz,c,t,Normal lungs.,No acute finding.\n",
    )
    .unwrap();
    let r3 = ResNet3dConfig { widths: [8, 8, 12, 16], stem_width: 8, ..ResNet3dConfig::medicalnet(10).unwrap() };
    let w3 = dir.join("mn10.safetensors");
    ResNet3d::random_state_dict(&r3, 2).unwrap().write_safetensors(&w3, None).unwrap();
    let c3 = dir.join("mn10.json");
    std::fs::write(&c3, serde_json::to_string(&r3).unwrap()).unwrap();
    let r2 = ResNet2dConfig { widths: [8, 8, 16, 16], stem_width: 8, ..ResNet2dConfig::resnet18() };
    let w2 = dir.join("r18.safetensors");
    ResNet2d::random_state_dict(&r2, 1).unwrap().write_safetensors(&w2, None).unwrap();
    let c2 = dir.join("r18.json");
    std::fs::write(&c2, serde_json::to_string(&r2).unwrap()).unwrap();
    Fixture { dir, real, reports, w3, c3, w2, c2 }
}

fn sweep_args<'a>(f: &'a Fixture, out: &'a str, guidance: &'a str, steps: &'a str) -> Vec<&'a str> {
    vec![
        "eval",
        "sweep",
        "--model",
        s_static(model()),
        "--reports",
        s(&f.reports),
        "--real",
        s(&f.real),
        "--guidance",
        guidance,
        "--steps",
        steps,
        "--seed",
        "3",
        "--backbone",
        "medicalnet-resnet10",
        "--weights",
        s(&f.w3),
        "--backbone-config",
        s(&f.c3),
        "--out",
        out,
    ]
}

fn s_static(p: PathBuf) -> &'static str {
    Box::leak(p.into_os_string().into_string().unwrap().into_boxed_str())
}

fn sweep_json(out: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(out.join("sweep.json")).unwrap()).unwrap()
}

#[test]
fn sweep_rows_noise_and_resume() {
    let f = fixture("sweep");
    let a = f.dir.join("a");
    let stdout = ok(&sweep_args(&f, s(&a), "0,5", "2"));
    assert!(stdout.contains("w = 0: 2 volumes (2 generated, 0 present)"), "{stdout}");
    let j = sweep_json(&a);
    let rows = j["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["guidance"], 0.0);
    assert_eq!(rows[1]["guidance"], 5.0);
    for r in rows {
        let fid = r["fid_3d"].as_f64().unwrap();
        assert!(fid.is_finite() && fid > 0.0, "{r}");
        assert!(r["fid_25d"].is_null());
    }
    assert_eq!(j["backbones"][0]["name"], "medicalnet-resnet10");
    assert_eq!(j["backbones"][0]["weights_sha256"].as_str().unwrap().len(), 64);
    assert!(a.join("sweep.png").is_file() && a.join("sweep.md").is_file());
    let md = std::fs::read_to_string(a.join("sweep.md")).unwrap();
    assert!(md.contains("| guidance w | FID 3D ↓ | volumes |") && md.contains("| 5 |"), "{md}");

    // Same seeds at every scale; w changes the voxels.
    let stem = "valid_2_a_1_seed4";
    let sc0: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(a.join(format!("w0/{stem}.json"))).unwrap()).unwrap();
    let sc5: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(a.join(format!("w5/{stem}.json"))).unwrap()).unwrap();
    assert_eq!((sc0["seed"].as_u64(), sc0["guidance"].as_f64()), (Some(4), Some(0.0)));
    assert_eq!((sc5["seed"].as_u64(), sc5["guidance"].as_f64()), (Some(4), Some(5.0)));
    let v0 = voxels(&a.join(format!("w0/{stem}.nii.gz")));
    let v5 = voxels(&a.join(format!("w5/{stem}.nii.gz")));
    assert_ne!(v0, v5, "w = 0 and w = 5 gave the same volume");
    // w = 0 in another sweep (other scales, other folder): identical voxels.
    let b = f.dir.join("b");
    ok(&sweep_args(&f, s(&b), "0", "2"));
    assert_eq!(voxels(&b.join(format!("w0/{stem}.nii.gz"))), v0);
    // And the sweep's w = 5 is `generate --guidance 5` with the same seed.
    let g = f.dir.join("g");
    ok(&[
        "generate",
        "--model",
        s_static(model()),
        "--reports",
        s(&f.reports),
        "--out",
        s(&g),
        "--steps",
        "2",
        "--seed",
        "3",
        "--guidance",
        "5",
    ]);
    assert_eq!(voxels(&g.join(format!("{stem}.nii.gz"))), v5);

    // Resume: nothing regenerated, same FIDs; a new scale only generates its own volumes.
    let t = std::fs::metadata(a.join(format!("w0/{stem}.nii.gz"))).unwrap().modified().unwrap();
    let stdout = ok(&sweep_args(&f, s(&a), "0,1,5", "2"));
    assert!(stdout.contains("w = 0: 2 volumes (0 generated, 2 present)"), "{stdout}");
    assert!(stdout.contains("w = 1: 2 volumes (2 generated, 0 present)"), "{stdout}");
    assert!(stdout.contains("w = 5: 2 volumes (0 generated, 2 present)"), "{stdout}");
    assert_eq!(std::fs::metadata(a.join(format!("w0/{stem}.nii.gz"))).unwrap().modified().unwrap(), t);
    let j2 = sweep_json(&a);
    assert_eq!(j2["rows"].as_array().unwrap().len(), 3);
    assert_eq!(j2["rows"][0]["fid_3d"], j["rows"][0]["fid_3d"]);
    // Other settings in the same folder: refused, never mixed.
    fails(&sweep_args(&f, s(&a), "0", "3"), &["other settings", "steps 2 (now 3)"]);

    // Bad input through the binary.
    let c = f.dir.join("c");
    let empty = f.dir.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let mut args = sweep_args(&f, s(&c), "0,5", "2");
    let real_at = args.iter().position(|x| *x == "--real").unwrap() + 1;
    args[real_at] = s(&empty);
    fails(&args, &["no volumes"]);
    let one = f.dir.join("one.csv");
    std::fs::write(&one, "id,prompt\na,Normal lungs.\n").unwrap();
    let mut args = sweep_args(&f, s(&c), "0,5", "2");
    let rep_at = args.iter().position(|x| *x == "--reports").unwrap() + 1;
    args[rep_at] = s(&one);
    fails(&args, &["at least 2"]);
    fails(&sweep_args(&f, s(&c), "0,x", "2"), &["not a number"]);
    fails(&sweep_args(&f, s(&c), "0,0", "2"), &["twice"]);
    fails(&sweep_args(&f, s(&c), "0,-1", "2"), &[">= 0"]);
    // A real set on another grid without a common size: a clear mismatch.
    let other = f.dir.join("other");
    phantoms(&other, "2", "32,32,24", "5");
    let mut args = sweep_args(&f, s(&c), "0", "2");
    args[real_at] = s(&other);
    fails(&args, &["mismatched sets", "size"]);
}

fn write_config(f: &Fixture, name: &str, body: &str) -> PathBuf {
    let p = f.dir.join(name);
    std::fs::write(&p, body).unwrap();
    p
}

#[test]
fn report_writes_tables_and_fails_clearly() {
    let f = fixture("report");
    let fake = f.dir.join("fake");
    phantoms(&fake, "2", "32,32,16", "2");
    let sweep_out = f.dir.join("sweep");
    let body = format!(
        "[report]\ntitle = \"tiny benchmark\"\n\n[fid]\nreal = \"{real}\"\n\
         backbone_3d = {{ name = \"medicalnet-resnet10\", weights = \"{w3}\", config = \"{c3}\" }}\n\
         backbone_2d = {{ name = \"resnet18-2d\", weights = \"{w2}\", config = \"{c2}\" }}\n\
         [[fid.sets]]\nname = \"phantoms seed 2\"\npath = \"{fake}\"\n\
         [[fid.sets]]\nname = \"real copy\"\npath = \"{real}\"\n\n\
         [sweep]\nmodel = \"{model}\"\nreports = \"{reports}\"\nguidance = [0, 5]\nsteps = 1\nout = \"{so}\"\n",
        real = s(&f.real),
        w3 = s(&f.w3),
        c3 = s(&f.c3),
        w2 = s(&f.w2),
        c2 = s(&f.c2),
        fake = s(&fake),
        model = s_static(model()),
        reports = s(&f.reports),
        so = s(&sweep_out),
    );
    let cfg = write_config(&f, "eval.toml", &body);
    let out = f.dir.join("out");
    ok(&["eval", "report", "--config", s(&cfg), "--out", s(&out)]);
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    for want in [
        "# tiny benchmark",
        "## Table 2",
        "| Method | Axial ↓ | Coronal ↓ | Sagittal ↓ | Avg. ↓ | FID 3D ↓ |",
        "| phantoms seed 2 |",
        "## Figure 3",
        "figure3_guidance.png",
        "## Provenance",
        "eval report --config",
        "| [fid] |",
        "| [sweep] |",
        "SHA-256",
    ] {
        assert!(md.contains(want), "report.md lacks {want:?}:\n{md}");
    }
    assert!(!md.contains("Table 4"), "no [clip] section was configured");
    let j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    let rows = j["fid"]["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    // The real set against itself: 0 in every column.
    assert!(rows[1]["fid_3d"].as_f64().unwrap().abs() < 1e-6, "{}", rows[1]);
    assert!(rows[1]["fid_25d"].as_f64().unwrap().abs() < 1e-6, "{}", rows[1]);
    assert!(rows[0]["fid_3d"].as_f64().unwrap() > 0.0);
    assert_eq!(rows[0]["planes"].as_array().unwrap().len(), 3);
    assert_eq!(j["sweep"]["rows"].as_array().unwrap().len(), 2);
    // The sweep took the [fid] section's real set and both backbones.
    assert!(j["sweep"]["rows"][0]["fid_25d"].as_f64().is_some());
    assert_eq!(j["provenance"]["sections"].as_array().unwrap().len(), 2);
    assert!(j["provenance"]["config"].as_str().unwrap().contains("[sweep]"));
    // Built from this checkout: its commit is recorded.
    assert_eq!(j["provenance"]["git_commit"].as_str().map(str::len), Some(40), "{}", j["provenance"]);
    assert!(out.join("figure3_guidance.png").is_file() && out.join("config.toml").is_file());
    assert!(sweep_out.join("w5").is_dir());

    // Bad sections and missing inputs: the error names the section.
    let cases: Vec<(String, Vec<&str>)> = vec![
        ("[tables]\nx = 1\n".into(), vec!["unknown section [tables]"]),
        ("[factual]\nclassifier = \"x\"\n".into(), vec!["section [factual]", "real"]),
        ("[report]\ntitle = \"x\"\n".into(), vec!["no section to run"]),
        (
            body.replace(&format!("real = \"{}\"", s(&f.real)), "real = \"/nonexistent/real\""),
            vec!["section [fid]", "/nonexistent/real"],
        ),
        (body.replace("guidance = [0, 5]", "guidance = [0, 5]\nwhat = 1"), vec!["section [sweep]", "what"]),
        (body.replace("steps = 1", "steps = 0"), vec!["section [sweep]", "steps"]),
        (body.replace("medicalnet-resnet10", "resnet-9000"), vec!["section [fid]", "resnet-9000"]),
        ("[fid\n".into(), vec!["bad TOML"]),
    ];
    for (i, (cfg_text, want)) in cases.iter().enumerate() {
        let c = write_config(&f, &format!("bad{i}.toml"), cfg_text);
        fails(&["eval", "report", "--config", s(&c), "--out", s(&f.dir.join(format!("bad{i}")))], want);
    }
    // An empty set and a set on another grid.
    let empty = f.dir.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let c = write_config(
        &f,
        "empty.toml",
        &body.replace(&format!("path = \"{}\"", s(&fake)), &format!("path = \"{}\"", s(&empty))),
    );
    fails(&["eval", "report", "--config", s(&c), "--out", s(&f.dir.join("e"))], &["section [fid]", "no volumes"]);
    let other = f.dir.join("other");
    phantoms(&other, "2", "32,32,24", "5");
    let c = write_config(
        &f,
        "other.toml",
        &body.replace(&format!("path = \"{}\"", s(&fake)), &format!("path = \"{}\"", s(&other))),
    );
    let o = f.dir.join("o");
    fails(&["eval", "report", "--config", s(&c), "--out", s(&o)], &["section [fid]", "mismatched sets"]);
    // What failed is written down.
    let md = std::fs::read_to_string(o.join("report.md")).unwrap();
    assert!(md.contains("Section [fid] failed") && md.contains("| [fid] |"), "{md}");
}

/// A tiny random CLIP3D (real 49,408-token vocabulary, 8 × 8 × 4 volumes) saved as a trained CLIP
/// folder (`clip_config.json` + `clip.safetensors`, `model.` keys).
fn tiny_clip(dir: &Path) {
    use text2ct_models::clip3d::{Clip3d, Clip3dConfig};
    use text2ct_models::clip_text::ClipTextConfig;
    use text2ct_models::ctvit::CtVitConfig;
    use text2ct_models::StateDict;
    let text = ClipTextConfig {
        vocab_size: 49408,
        hidden_size: 8,
        num_hidden_layers: 1,
        num_attention_heads: 2,
        intermediate_size: 16,
        max_position_embeddings: 512,
        projection_dim: 6,
        ..ClipTextConfig::default()
    };
    let vision = CtVitConfig {
        dim: 8,
        codebook_size: 4,
        image_size: 8,
        patch_size: 4,
        temporal_patch_size: 2,
        spatial_depth: 1,
        temporal_depth: 1,
        dim_head: 4,
        heads: 2,
        channels: 1,
        input_depth: 4,
        input_layout: "HWD".into(),
        quantize: true,
        normalize_patches: true,
    };
    let cfg =
        Clip3dConfig { text_config: text, vision_config: vision, projection_dim: 6, logit_scale_init_value: 2.6592 };
    let clip = Clip3d::new(&cfg, 7, &text2ct_models::burn::tensor::Device::flex()).unwrap();
    let sd = clip.to_state_dict().unwrap();
    let sd = StateDict { tensors: sd.tensors.into_iter().map(|(k, v)| (format!("model.{k}"), v)).collect() };
    std::fs::create_dir_all(dir).unwrap();
    sd.write_safetensors(&dir.join("clip.safetensors"), None).unwrap();
    std::fs::write(dir.join("clip_config.json"), cfg.to_json()).unwrap();
}

#[test]
fn report_clip_table() {
    let d = tmp("report-clip");
    let ph = d.join("ph");
    phantoms(&ph, "4", "32,32,16", "4");
    let prepared = d.join("prepared");
    ok(&[
        "prepare",
        "ctrate",
        "--root",
        s(&ph),
        "--split",
        "train",
        "--out",
        s(&prepared),
        "--spacing",
        "40,40,40",
        "--size",
        "8,8,4",
    ]);
    let model = d.join("clip");
    tiny_clip(&model);
    let cfg = d.join("eval.toml");
    std::fs::write(
        &cfg,
        format!(
            "[clip]\nmodel = \"{}\"\nmanifest = \"{}\"\nbatch = 2\n",
            s(&model),
            s(&prepared.join("manifest.jsonl"))
        ),
    )
    .unwrap();
    let out = d.join("out");
    ok(&["eval", "report", "--config", s(&cfg), "--out", s(&out)]);
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    for want in ["## Table 4", "| Methods | Acc. | AUC | Pre. | MAP@1 |", "Re@100 |", "| Ours (", "| random baseline |"]
    {
        assert!(md.contains(want), "report.md lacks {want:?}:\n{md}");
    }
    assert!(!md.contains("## Table 2") && !md.contains("## Figure 3"), "{md}");
    let j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(j["clip"]["n_volumes"], 4);
    assert_eq!(j["clip"]["meta"]["weights_sha256"].as_str().unwrap().len(), 64);
    // `eval clip` runs the same code.
    let o2 = d.join("clip_eval");
    ok(&["eval", "clip", "--model", s(&model), "--manifest", s(&prepared.join("manifest.jsonl")), "--out", s(&o2)]);
    let j2: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(o2.join("clip_eval.json")).unwrap()).unwrap();
    assert_eq!(j2["report_to_volume"], j["clip"]["report_to_volume"]);
    // A manifest that is not there: the section is named.
    std::fs::write(&cfg, format!("[clip]\nmodel = \"{}\"\nmanifest = \"/nonexistent/m.jsonl\"\n", s(&model))).unwrap();
    fails(&["eval", "report", "--config", s(&cfg), "--out", s(&out)], &["section [clip]", "/nonexistent/m.jsonl"]);
}

/// A random-weight CT-Net classifier folder for 32 × 32 × 16 volumes (what `train classifier`
/// writes as `<run>/final/`), under `run`.
fn random_classifier(run: &Path) -> PathBuf {
    use text2ct_eval::factual::{Classifier, ClassifierInfo, CLASSIFIER_FORMAT};
    use text2ct_models::ctnet::{CtNet, CtNetConfig};
    let mut cfg = CtNetConfig::fitted(18, [32, 32], [4, 4, 8, 8], 4).unwrap();
    cfg.fc = [16, 8];
    let net = CtNet::new(&cfg, 5, &text2ct_models::burn::tensor::Device::flex()).unwrap();
    let info = ClassifierInfo {
        format: CLASSIFIER_FORMAT.into(),
        label_names: text2ct_data::labels::LABELS.iter().map(|s| s.to_string()).collect(),
        data_size: [32, 32, 16],
        data_spacing: None,
        threshold: 0.5,
        train_prevalence: Vec::new(),
        pos_weight: Vec::new(),
        n_train: 0,
        steps: 0,
        note: "random weights (test)".into(),
    };
    let fin = run.join("final");
    Classifier::save(&fin, &net, &info).unwrap();
    fin
}

/// The labels CSV `text2ct phantom` wrote under `root` (one split).
fn phantom_labels(root: &Path) -> PathBuf {
    let d = root.join("dataset/multi_abnormality_labels");
    let mut v: Vec<PathBuf> = std::fs::read_dir(&d).unwrap().map(|e| e.unwrap().path()).collect();
    v.retain(|p| std::fs::read_to_string(p).unwrap().lines().count() > 1);
    assert_eq!(v.len(), 1, "{v:?}");
    v.pop().unwrap()
}

fn png_width(p: &Path) -> u32 {
    let b = std::fs::read(p).unwrap();
    u32::from_be_bytes([b[16], b[17], b[18], b[19]])
}

fn rows_by_name(v: &serde_json::Value) -> std::collections::BTreeMap<String, serde_json::Value> {
    v.as_array().unwrap().iter().map(|r| (r["name"].as_str().unwrap().to_string(), r.clone())).collect()
}

#[test]
fn report_factual_ablation_and_sweep_precision() {
    let f = fixture("report-factual");
    let fake = f.dir.join("fake");
    phantoms(&fake, "2", "32,32,16", "2");
    let (real_labels, fake_labels) = (phantom_labels(&f.real), phantom_labels(&fake));
    let run_dir = f.dir.join("clf_run");
    let fin = random_classifier(&run_dir);
    // The labels of the sweep's two reports (valid_1_a_1: right pleural effusion).
    let sweep_labels = f.dir.join("sweep_labels.csv");
    let header: Vec<String> = text2ct_data::labels::LABELS.iter().map(|l| format!("\"{l}\"")).collect();
    let mut row1 = vec!["0"; 18];
    row1[12] = "1";
    std::fs::write(
        &sweep_labels,
        format!(
            "VolumeName,{}\nvalid_1_a_1.nii.gz,{}\nvalid_2_a_1.nii.gz,{}\n",
            header.join(","),
            row1.join(","),
            vec!["0"; 18].join(",")
        ),
    )
    .unwrap();
    let sweep_out = f.dir.join("sweep");
    // [factual] takes [fid]'s real set; [sweep] takes [factual]'s classifier (the run folder).
    let body = format!(
        "[fid]\nreal = \"{real}\"\n\
         backbone_3d = {{ name = \"medicalnet-resnet10\", weights = \"{w3}\", config = \"{c3}\" }}\n\
         [[fid.sets]]\nname = \"phantoms seed 2\"\npath = \"{fake}\"\n\n\
         [factual]\nclassifier = \"{clf}\"\nreal_labels = \"{rl}\"\n\
         [[factual.sets]]\nname = \"phantoms seed 2\"\npath = \"{fake}\"\nlabels = \"{fl}\"\n\n\
         [ablation]\nsets = [\n  {{ name = \"encoder A\", path = \"{fake}\", labels = \"{fl}\" }},\n  \
         {{ name = \"encoder B\", path = \"{real}\", labels = \"{rl}\" }},\n]\n\n\
         [sweep]\nmodel = \"{model}\"\nreports = \"{reports}\"\nguidance = [0, 5]\nsteps = 1\nout = \"{so}\"\n\
         labels = \"{sl}\"\n",
        real = s(&f.real),
        w3 = s(&f.w3),
        c3 = s(&f.c3),
        fake = s(&fake),
        clf = s(&run_dir),
        rl = s(&real_labels),
        fl = s(&fake_labels),
        model = s_static(model()),
        reports = s(&f.reports),
        so = s(&sweep_out),
        sl = s(&sweep_labels),
    );
    let cfg = write_config(&f, "eval.toml", &body);
    let out = f.dir.join("out");
    ok(&["eval", "report", "--config", s(&cfg), "--out", s(&out)]);
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    for want in [
        "## Table 3 — factual correctness",
        "| Method | AUC (Macro) | AUC (Weighted) | Precision (Macro) | Precision (Weighted) | volumes |",
        "## Table 5 — CLIP ablation",
        "| encoder A |",
        "| encoder B |",
        "Precision (macro) ↑ |",
        "| [factual] |",
        "| [ablation] |",
    ] {
        assert!(md.contains(want), "report.md lacks {want:?}:\n{md}");
    }
    let t3 = &md[md.find("## Table 3").unwrap()..];
    assert!(t3.find("| Real |").unwrap() < t3.find("| phantoms seed 2 |").unwrap(), "Real is the first row:\n{md}");
    let j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    let rows = j["factual"]["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["name"], "Real");
    assert_eq!(rows[0]["n_volumes"], 3);
    assert_eq!(rows[1]["n_volumes"], 2);
    assert!(j["factual"]["classifier"]["dir"].as_str().unwrap().ends_with("final"));

    // The same numbers as `eval factual` on the same inputs (given the weights file this time).
    let o = f.dir.join("factual");
    let (vr, vf) = (format!("real={}", s(&f.real)), format!("synth={}", s(&fake)));
    let (lr, lf) = (format!("real={}", s(&real_labels)), format!("synth={}", s(&fake_labels)));
    ok(&[
        "eval",
        "factual",
        "--classifier",
        s(&fin.join("ctnet.safetensors")),
        "--volumes",
        &vf,
        "--volumes",
        &vr,
        "--labels",
        &lf,
        "--labels",
        &lr,
        "--out",
        s(&o),
    ]);
    let e: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(o.join("factual.json")).unwrap()).unwrap();
    let erows = e["rows"].as_array().unwrap();
    assert_eq!(erows[0]["name"], "real");
    for (a, b) in rows.iter().zip(erows) {
        for k in ["auc", "precision", "support", "predicted_positive", "n_volumes", "predictions"] {
            assert_eq!(a[k], b[k], "{k}: report {} vs eval factual {}", a[k], b[k]);
        }
    }
    assert!(rows[0]["auc"]["macro_avg"].as_f64().is_some());
    assert_eq!(j["factual"]["classifier"]["weights_sha256"], e["classifier"]["weights_sha256"]);

    // Table 5: FID with [fid]'s protocol (encoder A is Table 2's set: the same FID; encoder B is
    // the real set: 0) and AUC / precision with [factual]'s classifier (as eval factual's rows).
    let ab = &j["ablation"];
    let fid_rows = rows_by_name(&ab["fid"]["rows"]);
    assert_eq!(fid_rows["encoder A"]["fid_3d"], j["fid"]["rows"][0]["fid_3d"]);
    assert!(fid_rows["encoder B"]["fid_3d"].as_f64().unwrap().abs() < 1e-6);
    let fac = rows_by_name(&ab["factual"]["rows"]);
    assert_eq!(fac["encoder A"]["precision"], erows[1]["precision"]);
    assert_eq!(fac["encoder B"]["auc"], erows[0]["auc"]);

    // Figure 3: precision per w, the numbers `eval factual` gives on that scale's volumes.
    let sw = j["sweep"]["rows"].as_array().unwrap();
    assert_eq!(sw.len(), 2);
    for r in sw {
        assert!(r["factual"]["precision"]["macro_avg"].as_f64().is_some(), "{r}");
        assert_eq!(r["factual"]["n_volumes"], 2);
    }
    let o5 = f.dir.join("factual_w5");
    ok(&[
        "eval",
        "factual",
        "--classifier",
        s(&fin),
        "--volumes",
        s(&sweep_out.join("w5")),
        "--labels",
        s(&sweep_labels),
        "--out",
        s(&o5),
    ]);
    let e5: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(o5.join("factual.json")).unwrap()).unwrap();
    assert_eq!(sw[1]["factual"]["precision"], e5["rows"][0]["precision"]);
    assert_eq!(sw[1]["factual"]["support"][12], 1, "valid_1_a_1's effusion label");
    assert_eq!(j["sweep"]["classifier"]["weights_sha256"], e["classifier"]["weights_sha256"]);
    // Two panels: FID 3D and CT-Net precision.
    assert_eq!(png_width(&out.join("figure3_guidance.png")), 2 * 640);
    // `eval sweep --classifier` on the same folder: nothing regenerated, the same precision.
    let stdout = ok(&[
        "eval",
        "sweep",
        "--model",
        s_static(model()),
        "--reports",
        s(&f.reports),
        "--real",
        s(&f.real),
        "--guidance",
        "0,5",
        "--steps",
        "1",
        "--backbone",
        "medicalnet-resnet10",
        "--weights",
        s(&f.w3),
        "--backbone-config",
        s(&f.c3),
        "--classifier",
        s(&run_dir),
        "--labels",
        s(&sweep_labels),
        "--out",
        s(&sweep_out),
    ]);
    assert!(
        stdout.contains("w = 5: 2 volumes (0 generated, 2 present)") && stdout.contains("precision macro"),
        "{stdout}"
    );
    assert_eq!(sweep_json(&sweep_out)["rows"][1]["factual"]["precision"], sw[1]["factual"]["precision"]);

    // The classifier as FID backbone on the sets' own grid (32 × 32 × 16; the network reads 18
    // slices): the common grid first, then CT-Net's input.
    let fo = f.dir.join("fid_ctnet");
    let stdout = ok(&[
        "eval",
        "fid",
        "--real",
        s(&f.real),
        "--fake",
        s(&fake),
        "--backbone",
        "ctnet",
        "--weights",
        s(&fin.join("ctnet.safetensors")),
        "--backbone-config",
        s(&fin.join("ctnet_config.json")),
        "--size",
        "32,32,16",
        "--out",
        s(&fo),
    ]);
    assert!(stdout.contains("FID (ctnet)"), "{stdout}");

    // Bad input: each error names its section and the problem, before anything runs.
    let short = f.dir.join("short.csv");
    let full = std::fs::read_to_string(&fake_labels).unwrap();
    let lines: Vec<&str> = full.lines().collect();
    std::fs::write(&short, lines[..lines.len() - 1].join("\n") + "\n").unwrap();
    let dropped = lines[lines.len() - 1].split(',').next().unwrap().trim_end_matches(".nii.gz").to_string();
    let empty = f.dir.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let no_weights = f.dir.join("no_weights");
    std::fs::create_dir_all(&no_weights).unwrap();
    for n in ["classifier.json", "ctnet_config.json"] {
        std::fs::copy(fin.join(n), no_weights.join(n)).unwrap();
    }
    let fl_line = format!("labels = \"{}\"\n\n[ablation]", s(&fake_labels));
    let cases: Vec<(String, Vec<String>)> = vec![
        (
            body.replace(&fl_line, &format!("labels = \"{}\"\n\n[ablation]", s(&short))),
            vec!["section [factual]".into(), "no labels".into(), dropped.clone()],
        ),
        (
            body.replace("real_labels =", "thresold = 0.5\nreal_labels ="),
            vec!["section [factual]".into(), "thresold".into()],
        ),
        (
            body.replace(&format!("classifier = \"{}\"", s(&run_dir)), "classifier = \"/nonexistent/clf\""),
            vec!["section [factual]".into(), "/nonexistent/clf".into()],
        ),
        (
            body.replace(&format!("classifier = \"{}\"", s(&run_dir)), &format!("classifier = \"{}\"", s(&no_weights))),
            vec!["section [factual]".into(), "ctnet.safetensors is missing".into()],
        ),
        (
            body.replace(
                &format!("path = \"{}\"\nlabels = \"{}\"", s(&fake), s(&fake_labels)),
                &format!("path = \"{}\"\nlabels = \"{}\"", s(&empty), s(&fake_labels)),
            ),
            vec!["section [factual]".into(), "no volumes".into()],
        ),
        (
            body.replace("name = \"phantoms seed 2\"\npath", "name = \"real\"\npath"),
            vec!["section [factual]".into(), "real set's row".into()],
        ),
        (body[body.find("[factual]").unwrap()..].to_string(), vec!["section [factual]".into(), "real".into()]),
        (
            body[body.find("[ablation]").unwrap()..body.find("[sweep]").unwrap()].to_string(),
            vec!["section [ablation]".into(), "[fid]".into()],
        ),
        (
            body.replace(&format!(", labels = \"{}\" }},\n]", s(&real_labels)), " },\n]"),
            vec!["section [ablation]".into(), "encoder B".into(), "need labels".into()],
        ),
        (
            body.replace(
                &format!("labels = \"{}\"\n", s(&sweep_labels)),
                &format!("labels = \"{}\"\n", s(&fake_labels)),
            ),
            vec!["section [sweep]".into(), "valid_1_a_1".into(), "no labels".into()],
        ),
        (
            body.replace(&format!("labels = \"{}\"\n", s(&sweep_labels)), ""),
            vec!["section [sweep]".into(), "needs the reports' labels".into()],
        ),
        (
            format!("{body}\n[augmentation]\nconfig = \"/nonexistent/aug.toml\"\n"),
            vec!["section [augmentation]".into(), "/nonexistent/aug.toml".into()],
        ),
    ];
    for (i, (text, want)) in cases.iter().enumerate() {
        let c = write_config(&f, &format!("badf{i}.toml"), text);
        let want: Vec<&str> = want.iter().map(String::as_str).collect();
        let bad_out = f.dir.join(format!("badf{i}"));
        fails(&["eval", "report", "--config", s(&c), "--out", s(&bad_out)], &want);
        assert!(!bad_out.join("report.json").exists(), "case {i}: nothing runs when the config is bad");
    }
}
