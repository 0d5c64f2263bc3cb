//! The `clip` command through the binary: embed-text (on a tiny full-vocabulary CLIP written here,
//! checked against the library) and embed-volume (on the CT-ViT reference fixtures of
//! text2ct-models), plus bad input: empty text, wrong volume shape, unknown keys.

use std::path::{Path, PathBuf};
use std::process::Command;

use text2ct_io::nifti_io::{write_nifti, DType, WriteOptions};
use text2ct_io::{Affine, Volume};
use text2ct_models::burn::tensor::Device;
use text2ct_models::{Clip3d, Clip3dConfig, ClipTextConfig, CtVitConfig, NpyArray, RawTensor, StateDict};
use text2ct_text::ClipTokenizer;

#[path = "common/hf_clip.rs"]
mod hf_clip;

/// Run `text2ct ARGS`; Ok(stderr) on success, Err(stderr) when it exits 1.
fn run(args: &[&str]) -> Result<String, String> {
    let o = Command::new(env!("CARGO_BIN_EXE_text2ct")).args(args).output().map_err(|e| e.to_string())?;
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(!err.contains("panicked"), "{args:?}: {err}");
    if o.status.success() {
        Ok(err)
    } else {
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        Err(err)
    }
}

fn fixture(f: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../text2ct-models/fixtures/ctvit").join(f)
}

fn tmp(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("t2ct_cli_clip_{tag}_{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A tiny CLIP3D with the real 49,408-token vocabulary and 512 positions, saved as
/// `.safetensors` with Text2CT's `model.` key names; returns (config path, weights path, config).
fn tiny_full_vocab(d: &Path) -> (PathBuf, PathBuf, Clip3dConfig) {
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
    let clip = Clip3d::new(&cfg, 7, &Device::flex()).unwrap();
    let sd = clip.to_state_dict().unwrap();
    let sd = StateDict { tensors: sd.tensors.into_iter().map(|(k, v)| (format!("model.{k}"), v)).collect() };
    let w = d.join("tiny.safetensors");
    sd.write_safetensors(&w, None).unwrap();
    let c = d.join("tiny.json");
    std::fs::write(&c, cfg.to_json()).unwrap();
    (c, w, cfg)
}

fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den).sqrt()
}

#[test]
fn embed_text_one_text_and_reports() {
    let d = tmp("text");
    let (c, w, cfg) = tiny_full_vocab(&d);
    let out = d.join("one.npy");
    let text = "Findings: Bilateral pleural effusion. Impression: Effusion.";
    run(&["clip", "embed-text", "--config", s(&c), "--weights", s(&w), "--text", text, "--output", s(&out)]).unwrap();
    let got = NpyArray::read(&out).unwrap();
    assert_eq!(got.shape, vec![1, 6]);
    // Same as the library on the release tokenisation.
    let clip = Clip3d::load_text_only(&cfg, &w, &Device::flex()).unwrap();
    let tok = ClipTokenizer::default_embedded().unwrap();
    let (ids, _) = tok.encode_padded(text, 512);
    let want = clip.text.encode_ids(&[ids]).unwrap().into_data().convert::<f32>().try_into_vec::<f32>().unwrap();
    assert!(rel_l2(&got.data, &want) < 1e-6);
    let norm: f32 = got.data.iter().map(|v| v * v).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() < 1e-5, "{norm}");

    // A CT-RATE reports CSV; one report is longer than 512 tokens (warned, truncated).
    let csv = d.join("reports.csv");
    let long = "nodule ".repeat(700);
    std::fs::write(
        &csv,
        format!(
            "VolumeName,ClinicalInformation_EN,Technique_EN,Findings_EN,Impressions_EN\n\
             valid_1_a_1.nii.gz,x,y,Bilateral pleural effusion.,Effusion.\n\
             valid_2_a_1.nii.gz,x,y,{long},Many nodules.\n"
        ),
    )
    .unwrap();
    let out2 = d.join("reports.npy");
    let err =
        run(&["clip", "embed-text", "--config", s(&c), "--weights", s(&w), "--reports", s(&csv), "--output", s(&out2)])
            .unwrap();
    assert!(err.contains("warning: valid_2_a_1") && err.contains("truncated"), "{err}");
    let got2 = NpyArray::read(&out2).unwrap();
    assert_eq!(got2.shape, vec![2, 6]);
    // Row 0 is the same report text as above ("Findings: … Impression: …").
    assert!(rel_l2(&got2.data[..6], &got.data) < 1e-6);
    let side: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("reports.json")).unwrap()).unwrap();
    assert_eq!(side["ids"], serde_json::json!(["valid_1_a_1", "valid_2_a_1"]));
    assert_eq!(side["truncated"], serde_json::json!(["valid_2_a_1"]));
}

/// A CLIP as a current transformers saves it (config.json with its extra keys and a 2D vision
/// config, no `position_ids`) embeds through `clip embed-text` and `text embed` exactly as the
/// encoder it came from; a stored `position_ids` that is not `arange` is refused by both.
#[test]
fn embed_text_reads_a_current_transformers_clip() {
    let d = tmp("hf");
    let (c, w, enc) = hf_clip::write(&d.join("ok"), None);
    let text = "Findings: Bilateral pleural effusion. Impression: Effusion.";
    let tok = ClipTokenizer::default_embedded().unwrap();
    let (ids, _) = tok.encode_padded(text, 512);
    let want = enc.encode_ids(&[ids]).unwrap().into_data().convert::<f32>().try_into_vec::<f32>().unwrap();
    let cmds = |c: &Path, w: &Path, out: &Path| -> [Vec<String>; 2] {
        let common = ["--config", s(c), "--weights", s(w), "--text", text, "--output", s(out)];
        [
            ["clip", "embed-text"].iter().chain(&common).map(|x| x.to_string()).collect(),
            ["text", "embed", "--encoder", "clip3d"].iter().chain(&common).map(|x| x.to_string()).collect(),
        ]
    };
    for (i, args) in cmds(&c, &w, &d.join("out.npy")).iter().enumerate() {
        let out = d.join(format!("out{i}.npy"));
        let mut args = args.clone();
        *args.last_mut().unwrap() = s(&out).to_string();
        run(&args.iter().map(String::as_str).collect::<Vec<_>>()).unwrap();
        let got = NpyArray::read(&out).unwrap();
        assert_eq!(got.shape, vec![1, hf_clip::PROJ], "{args:?}");
        assert!(rel_l2(&got.data, &want) < 1e-6, "{args:?}");
    }
    let (c, w, _) = hf_clip::write(&d.join("bad"), Some(hf_clip::swapped_positions()));
    let out = d.join("bad.npy");
    for args in cmds(&c, &w, &out) {
        let e = run(&args.iter().map(String::as_str).collect::<Vec<_>>()).unwrap_err();
        assert!(e.contains(s(&w)) && e.contains("text_model.embeddings.position_ids is not 0, 1, ..., 511"), "{e}");
        assert!(!out.exists());
    }
}

#[test]
fn embed_text_bad_input() {
    let d = tmp("textbad");
    let (c, w, _) = tiny_full_vocab(&d);
    let out = d.join("o.npy");
    let e = run(&["clip", "embed-text", "--config", s(&c), "--weights", s(&w), "--text", "  ", "--output", s(&out)])
        .unwrap_err();
    assert!(e.contains("empty text"), "{e}");
    // Unknown key in the text half: strict loading names it.
    let mut sd = StateDict::read(&w).unwrap();
    sd.tensors.insert("model.text_model.encoder.layers.0.surprise".into(), RawTensor::new(vec![2], vec![0.0, 1.0]));
    let w2 = d.join("extra.safetensors");
    sd.write_safetensors(&w2, None).unwrap();
    let e =
        run(&["clip", "embed-text", "--config", s(&c), "--weights", s(&w2), "--text", "effusion", "--output", s(&out)])
            .unwrap_err();
    assert!(e.contains("unexpected") && e.contains("layers.0.surprise"), "{e}");
    // A vocabulary too small for the tokenizer: a clear error, not a panic.
    let e = run(&[
        "clip",
        "embed-text",
        "--config",
        s(&fixture("clip3d_config.json")),
        "--weights",
        s(&fixture("clip3d.pt")),
        "--text",
        "effusion",
        "--output",
        s(&out),
    ])
    .unwrap_err();
    assert!(e.contains("vocabulary"), "{e}");
    // Not .npy output; missing weights file.
    let e = run(&["clip", "embed-text", "--config", s(&c), "--weights", s(&w), "--text", "a", "--output", "o.txt"])
        .unwrap_err();
    assert!(e.contains(".npy"), "{e}");
    let e = run(&[
        "clip",
        "embed-text",
        "--config",
        s(&c),
        "--weights",
        "/nonexistent.pt",
        "--text",
        "a",
        "--output",
        s(&out),
    ])
    .unwrap_err();
    assert!(e.contains("nonexistent"), "{e}");
}

/// The first fixture volume (values in [0, 1]) as a float32 NIfTI in HU.
fn fixture_nifti(d: &Path, dims_override: Option<[usize; 3]>) -> PathBuf {
    let a = NpyArray::read(&fixture("input.npy")).unwrap();
    let [_, _, nx, ny, nz]: [usize; 5] = a.shape.clone().try_into().unwrap();
    let dims = dims_override.unwrap_or([nx, ny, nz]);
    let vol = Volume::from_fn(dims, Affine::from_spacing_origin([0.75, 0.75, 3.0], [0.0; 3]).unwrap(), |x, y, z| {
        a.data[(x * ny + y) * nz + z] * 2000.0 - 1000.0
    })
    .unwrap();
    let p = d.join(if dims_override.is_some() { "bad.nii.gz" } else { "vol.nii.gz" });
    write_nifti(&p, &vol, &WriteOptions { dtype: DType::F32, xform_code: 1, descrip: String::new() }).unwrap();
    p
}

#[test]
fn embed_volume_matches_reference_and_rejects_bad_input() {
    let d = tmp("vol");
    let (c, w) = (fixture("clip3d_config.json"), fixture("clip3d.pt"));
    let vol = fixture_nifti(&d, None);
    let out = d.join("img.npy");
    run(&["clip", "embed-volume", "--config", s(&c), "--weights", s(&w), "--input", s(&vol), "--output", s(&out)])
        .unwrap();
    let got = NpyArray::read(&out).unwrap();
    let want = NpyArray::read(&fixture("embed.npy")).unwrap();
    assert_eq!(got.shape, vec![1, 24]);
    let e = rel_l2(&got.data, &want.data[..24]);
    assert!(e < 1e-4, "CLI embedding vs reference: rel L2 {e}");

    // Wrong shape: clear error before loading the weights.
    let bad = fixture_nifti(&d, Some([32, 32, 8]));
    let e =
        run(&["clip", "embed-volume", "--config", s(&c), "--weights", s(&w), "--input", s(&bad), "--output", s(&out)])
            .unwrap_err();
    assert!(e.contains("volume shape") && e.contains("[32, 32, 8]") && e.contains("[32, 32, 16]"), "{e}");
    // Unknown key in the vision half.
    let mut sd = StateDict::read(&w).unwrap();
    sd.tensors.insert("model.vision_model.mystery.weight".into(), RawTensor::new(vec![1], vec![0.0]));
    let w2 = d.join("extra.safetensors");
    sd.write_safetensors(&w2, None).unwrap();
    let e =
        run(&["clip", "embed-volume", "--config", s(&c), "--weights", s(&w2), "--input", s(&vol), "--output", s(&out)])
            .unwrap_err();
    assert!(e.contains("unexpected") && e.contains("vision_model.mystery.weight"), "{e}");
    // Neither NIfTI nor manifest.
    let e =
        run(&["clip", "embed-volume", "--config", s(&c), "--weights", s(&w), "--input", "x.csv", "--output", s(&out)])
            .unwrap_err();
    assert!(e.contains("manifest.jsonl"), "{e}");
}

#[test]
fn embed_volume_from_manifest_equals_nifti() {
    let d = tmp("manifest");
    let (c, w) = (fixture("clip3d_config.json"), fixture("clip3d.pt"));
    let a = NpyArray::read(&fixture("input.npy")).unwrap();
    let [b, _, nx, ny, nz]: [usize; 5] = a.shape.clone().try_into().unwrap();
    std::fs::create_dir_all(d.join("volumes")).unwrap();
    let mut lines = String::new();
    let mut first_hu = Vec::new();
    for i in 0..b {
        // int16 HU, x fastest (Fortran order), as `prepare` writes them
        let mut hu = vec![0i16; nx * ny * nz];
        for z in 0..nz {
            for y in 0..ny {
                for x in 0..nx {
                    let v = a.data[(((i * nx) + x) * ny + y) * nz + z] * 2000.0 - 1000.0;
                    hu[x + nx * (y + ny * z)] = v.round() as i16;
                }
            }
        }
        let id = format!("valid_{i}_a_1");
        text2ct_io::npy::write_npy_i16(&d.join(format!("volumes/{id}.npy")), &[nx, ny, nz], &hu, true).unwrap();
        if i == 0 {
            first_hu = hu;
        }
        let e = serde_json::json!({
            "id": id, "volume": format!("volumes/{id}.npy"), "report": "Findings: x Impression: y",
            "labels": vec![0u8; 18], "spacing": [0.75, 0.75, 3.0], "dims": [nx, ny, nz],
            "affine": [[0.75, 0.0, 0.0, 0.0], [0.0, 0.75, 0.0, 0.0], [0.0, 0.0, 3.0, 0.0], [0.0, 0.0, 0.0, 1.0]],
            "source": "fixture", "hu": "as is"
        });
        lines.push_str(&format!("{e}\n"));
    }
    let manifest = d.join("manifest.jsonl");
    std::fs::write(&manifest, lines).unwrap();
    let out = d.join("m.npy");
    run(&["clip", "embed-volume", "--config", s(&c), "--weights", s(&w), "--input", s(&manifest), "--output", s(&out)])
        .unwrap();
    let got = NpyArray::read(&out).unwrap();
    assert_eq!(got.shape, vec![b, 24]);
    let side: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(d.join("m.json")).unwrap()).unwrap();
    assert_eq!(side["ids"], serde_json::json!(["valid_0_a_1", "valid_1_a_1"]));
    // The same int16 volume through NIfTI gives the same row.
    let vol =
        Volume::from_fn([nx, ny, nz], Affine::from_spacing_origin([0.75, 0.75, 3.0], [0.0; 3]).unwrap(), |x, y, z| {
            first_hu[x + nx * (y + ny * z)] as f32
        })
        .unwrap();
    let p = d.join("v0.nii.gz");
    write_nifti(&p, &vol, &WriteOptions::ct_hu()).unwrap();
    let out1 = d.join("n.npy");
    run(&["clip", "embed-volume", "--config", s(&c), "--weights", s(&w), "--input", s(&p), "--output", s(&out1)])
        .unwrap();
    let one = NpyArray::read(&out1).unwrap();
    assert!(rel_l2(&got.data[..24], &one.data) < 1e-6);
    // (int16 rounding can flip codebook choices, so no comparison with the float reference here)
    for row in got.data.chunks(24) {
        let n: f32 = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((n - 1.0).abs() < 1e-5, "{n}");
    }
    // A manifest entry with another size: clear error naming the item.
    let bad = std::fs::read_to_string(&manifest).unwrap().replacen(&format!("[{nx},{ny},{nz}]"), "[32,32,8]", 1);
    std::fs::write(&manifest, bad).unwrap();
    let e = run(&[
        "clip",
        "embed-volume",
        "--config",
        s(&c),
        "--weights",
        s(&w),
        "--input",
        s(&manifest),
        "--output",
        s(&out),
    ])
    .unwrap_err();
    assert!(e.contains("valid_0_a_1") && e.contains("volume shape"), "{e}");
}

/// `clip export-text` keeps only the text half (f16 when asked): the written file embeds text as
/// the full checkpoint does (f16: to 1e-2) and has no vision keys; a non-checkpoint is refused.
#[test]
fn export_text_keeps_the_text_half() {
    let d = tmp("export");
    let (c, w, _) = tiny_full_vocab(&d);
    let text = "Findings: Right pleural effusion. Impression: Effusion.";
    let embed = |weights: &Path, tag: &str| -> Vec<f32> {
        let out = d.join(format!("{tag}.npy"));
        run(&["clip", "embed-text", "--config", s(&c), "--weights", s(weights), "--text", text, "--output", s(&out)])
            .unwrap();
        NpyArray::read(&out).unwrap().data
    };
    let want = embed(&w, "full");
    for (tag, extra) in [("f32", None), ("f16", Some("--f16"))] {
        let o = d.join(format!("text_{tag}.safetensors"));
        let mut args = vec!["clip", "export-text", "--config", s(&c), "--weights", s(&w), "--output", s(&o)];
        args.extend(extra);
        run(&args).unwrap();
        let sd = StateDict::read_safetensors(&o).unwrap();
        assert!(
            sd.tensors.keys().all(|k| k.starts_with("model.text_") || k == "model.logit_scale"),
            "{:?}",
            sd.tensors.keys()
        );
        let e = rel_l2(&embed(&o, tag), &want);
        assert!(e < if tag == "f16" { 1e-2 } else { 1e-6 }, "{tag}: {e}");
    }
    let err =
        run(&["clip", "export-text", "--config", s(&c), "--weights", s(&c), "--output", s(&d.join("x.safetensors"))])
            .unwrap_err();
    assert!(err.contains("tiny.json"), "{err}");
}
