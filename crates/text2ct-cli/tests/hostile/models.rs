//! Hostile inputs, family `models` (see main.rs): model folders whose card points outside the
//! folder, weights that are truncated or do not match their configs, CLIP checkpoints whose
//! `position_ids` are not `arange`.

use std::path::{Path, PathBuf};

use text2ct_models::StateDict;

use crate::{check_all, s, scratch, Case};

#[path = "../common/hf_clip.rs"]
mod hf_clip;

/// Text2CT's released layout at toy size (text2ct-generate's fixture): a card with inline
/// configs and three `.pt` files.
fn release_tiny() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../text2ct-generate/fixtures/release_tiny")
}

/// A copy of the tiny release folder in `d/name` whose U-Net is the `.safetensors` `unet` (bytes),
/// with the card edited by `edit`.
fn model_folder(d: &Path, name: &str, unet: &[u8], edit: impl Fn(&mut serde_json::Value)) -> PathBuf {
    let m = d.join(name);
    std::fs::create_dir_all(&m).unwrap();
    for f in ["autoencoder_epoch273.pt", "CLIP3D_Finding_Impression_30ep.pt"] {
        std::fs::copy(release_tiny().join(f), m.join(f)).unwrap();
    }
    std::fs::write(m.join("unet.safetensors"), unet).unwrap();
    let mut card: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(release_tiny().join("model.json")).unwrap()).unwrap();
    card["unet"]["weights"] = "unet.safetensors".into();
    edit(&mut card);
    std::fs::write(m.join("model.json"), card.to_string()).unwrap();
    m
}

/// The tiny release U-Net as `.safetensors` bytes, after `edit`.
fn unet_bytes(d: &Path, edit: impl Fn(&mut StateDict)) -> Vec<u8> {
    let mut sd = StateDict::read(&release_tiny().join("unet_rflow_200ep.pt")).unwrap();
    edit(&mut sd);
    let p = d.join("unet.tmp.safetensors");
    sd.write_safetensors(&p, None).unwrap();
    let b = std::fs::read(&p).unwrap();
    std::fs::remove_file(&p).unwrap();
    b
}

pub fn cases() -> Vec<Case> {
    let d = scratch("models");
    let good = unet_bytes(&d, |_| {});
    // The released layout itself passes `model show` (so the cases below fail for their defect).
    let ok = model_folder(&d, "ok", &good, |_| {});
    crate::setup(&["model", "show", &s(&ok)]);

    // A U-Net file cut short (an interrupted download).
    let truncated = model_folder(&d, "truncated", &good[..good.len() - 1000], |_| {});
    // One tensor of the wrong shape.
    let wrong_key = "out.2.conv.weight";
    let wrong = unet_bytes(&d, |sd| {
        let t = sd.tensors.get_mut(wrong_key).expect("the U-Net has its output conv");
        let n = t.shape[0];
        t.shape = vec![n, t.data.len() / n];
    });
    let wrong_shape = model_folder(&d, "wrong-shape", &wrong, |_| {});
    // A tensor missing and one the model does not have.
    let renamed = unet_bytes(&d, |sd| {
        let t = sd.tensors.remove("time_embed.0.weight").unwrap();
        sd.tensors.insert("time_embed.9.weight".into(), t);
    });
    let keys = model_folder(&d, "keys", &renamed, |_| {});
    // Weights named outside the folder: `..`, an absolute path, a symbolic link out.
    let dotdot = model_folder(&d, "dotdot", &good, |c| c["vae"]["weights"] = "../../../../etc/passwd".into());
    let absolute = model_folder(&d, "absolute", &good, |c| c["text_encoder"]["weights"] = "/etc/passwd".into());
    let link = model_folder(&d, "link", &good, |c| c["vae"]["weights"] = "vae.pt".into());
    let outside = d.join("outside-vae.pt");
    std::fs::copy(release_tiny().join("autoencoder_epoch273.pt"), &outside).unwrap();
    #[cfg(unix)]
    std::os::unix::fs::symlink(&outside, link.join("vae.pt")).unwrap();

    let gen = |m: &Path, out: &str| {
        vec!["generate".to_string(), "--model".into(), s(m), "--prompt".into(), "x".into(), "--out".into(), out.into()]
    };
    let case = |name: &str, args: Vec<String>| {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        Case::new(name, &a)
    };
    let mut cases = vec![
        // A model folder without a card.
        Case::new("model-no-card", &["model", "show", &s(&d.join("none"))]).mentions("model.json"),
        Case::new("model-show-truncated-unet", &["model", "show", &s(&truncated)])
            .mentions(s(&truncated.join("unet.safetensors"))),
        Case::new("model-show-wrong-shape", &["model", "show", &s(&wrong_shape)])
            .mentions(s(&wrong_shape.join("unet.safetensors")))
            .mentions(format!("{wrong_key}: file has")),
        Case::new("model-show-missing-unexpected-keys", &["model", "show", &s(&keys)])
            .mentions("missing:")
            .mentions("time_embed.0.weight")
            .mentions("unexpected:")
            .mentions("time_embed.9.weight"),
        Case::new("model-show-weights-dotdot", &["model", "show", &s(&dotdot)])
            .mentions("../../../../etc/passwd")
            .mentions("outside the model folder"),
        Case::new("model-show-weights-absolute", &["model", "show", &s(&absolute)])
            .mentions("\"/etc/passwd\"")
            .mentions("outside the model folder"),
        case("generate-weights-dotdot", gen(&dotdot, &s(&d.join("gen-dotdot"))))
            .mentions("../../../../etc/passwd")
            .writes_nothing_at(d.join("gen-dotdot/prompt_seed0.nii.gz")),
        case("generate-truncated-unet", gen(&truncated, &s(&d.join("gen-truncated"))))
            .mentions("unet.safetensors")
            .writes_nothing_at(d.join("gen-truncated/prompt_seed0.nii.gz")),
    ];
    // A CLIP checkpoint as transformers saves it, but with position_ids that are not 0, 1, 2, ...
    let (hc, hw, _) = hf_clip::write(&d.join("clip-bad-positions"), Some(hf_clip::swapped_positions()));
    for (name, cmd) in [("clip-embed-text", &["clip", "embed-text"][..]), ("text-embed", &["text", "embed"][..])] {
        let out = d.join(format!("{name}.npy"));
        let mut args: Vec<String> = cmd.iter().map(|x| x.to_string()).collect();
        args.extend(
            ["--config", &s(&hc), "--weights", &s(&hw), "--text", "effusion", "--output", &s(&out)].map(String::from),
        );
        cases.push(
            case(&format!("{name}-position-ids-not-arange"), args)
                .mentions(s(&hw))
                .mentions("text_model.embeddings.position_ids")
                .writes_nothing_at(out),
        );
    }
    if cfg!(unix) {
        cases.push(
            Case::new("model-show-weights-link-out", &["model", "show", &s(&link)])
                .mentions("\"vae.pt\" is a link to")
                .mentions("outside the model folder"),
        );
        cases.push(
            case("generate-weights-link-out", gen(&link, &s(&d.join("gen-link"))))
                .mentions("\"vae.pt\" is a link to")
                .writes_nothing_at(d.join("gen-link/prompt_seed0.nii.gz")),
        );
    }
    cases
}

#[test]
fn hostile_models() {
    check_all("models", cases());
}
