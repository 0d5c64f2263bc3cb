//! Weight loading: formats, strictness, bad files, config validation.

use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor, TensorData};
use text2ct_models::vae::VAE_ANCHOR_KEY;
use text2ct_models::{convert_to_safetensors, ModelError, StateDict, Vae, VaeConfig};

fn small() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/small")
}

fn small_cfg() -> VaeConfig {
    VaeConfig::from_json_file(&small().join("config.json")).unwrap()
}

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("t2ct_vae_{tag}_{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn latent(dev: &Device) -> Tensor<5> {
    let data: Vec<f32> = (0..4 * 3 * 2 * 2).map(|i| ((i * 7919) % 101) as f32 / 50.0 - 1.0).collect();
    Tensor::from_data(TensorData::new(data, [1, 4, 3, 2, 2]), dev)
}

fn values(t: Tensor<5>) -> Vec<f32> {
    t.into_data().try_into_vec::<f32>().unwrap()
}

#[test]
fn safetensors_conversion_roundtrip() {
    let dev = Device::flex();
    let dir = tmpdir("st");
    let st = dir.join("vae.safetensors");
    // from the nested + prefixed checkpoint: the prefix is removed
    let n = convert_to_safetensors(&small().join("vae_nested.pt"), &st).unwrap();
    let plain = StateDict::read(&small().join("vae.pt")).unwrap();
    assert_eq!(n, plain.len());
    assert_eq!(StateDict::read(&st).unwrap(), plain);
    let a = Vae::load(&small_cfg(), &small().join("vae.pt"), &dev).unwrap();
    let b = Vae::load(&small_cfg(), &st, &dev).unwrap();
    assert_eq!(values(a.decode(latent(&dev))), values(b.decode(latent(&dev))));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn strict_load_names_every_problem() {
    let mut sd = StateDict::read(&small().join("vae.pt")).unwrap();
    sd.tensors.remove("encoder.blocks.1.norm1.weight");
    sd.tensors.remove("post_quant_conv.conv.bias");
    let t = sd.tensors.get_mut("decoder.blocks.2.conv.conv.conv.weight").unwrap();
    t.shape = vec![16, 16, 27];
    let extra = sd.tensors["quant_conv_mu.conv.bias"].clone();
    sd.tensors.insert("encoder.blocks.99.weight".into(), extra);
    let err = Vae::from_state_dict(&small_cfg(), sd, &Device::flex(), Path::new("x.pt")).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, ModelError::Weights { .. }));
    for needle in [
        "2 missing, 1 unexpected, 1 with the wrong shape",
        "encoder.blocks.1.norm1.weight [8]",
        "post_quant_conv.conv.bias [4]",
        "encoder.blocks.99.weight",
        "decoder.blocks.2.conv.conv.conv.weight: file has [16, 16, 27], model needs [16, 16, 3, 3, 3]",
    ] {
        assert!(msg.contains(needle), "missing `{needle}` in:\n{msg}");
    }
}

#[test]
fn wrong_config_for_weights_is_an_error() {
    let mut cfg = small_cfg();
    cfg.num_channels = vec![8, 16, 32];
    let err = Vae::load(&cfg, &small().join("vae.pt"), &Device::flex()).unwrap_err().to_string();
    assert!(err.contains("wrong shape"), "{err}");
    let mut cfg = small_cfg();
    cfg.num_res_blocks = vec![1, 1, 1];
    let err = Vae::load(&cfg, &small().join("vae.pt"), &Device::flex()).unwrap_err().to_string();
    assert!(err.contains("unexpected"), "{err}");
}

#[test]
fn bad_files_give_errors_not_panics() {
    let dev = Device::flex();
    let dir = tmpdir("bad");
    let bytes = std::fs::read(small().join("vae.pt")).unwrap();
    for (name, content) in [
        ("trunc.pt", bytes[..bytes.len() / 2].to_vec()),
        ("trunc_tail.pt", bytes[..bytes.len() - 100].to_vec()),
        ("garbage.pt", b"this is not a checkpoint".to_vec()),
        ("empty.pt", Vec::new()),
        ("garbage.safetensors", b"\x10\0\0\0\0\0\0\0{\"a\":1}".to_vec()),
    ] {
        let p = dir.join(name);
        std::fs::write(&p, content).unwrap();
        let r = std::panic::catch_unwind(|| Vae::load(&small_cfg(), &p, &dev).map(|_| ()));
        match r {
            Ok(Err(e)) => {
                let m = e.to_string();
                assert!(m.contains(name), "error should name the file: {m}");
            }
            Ok(Ok(())) => panic!("{name} loaded"),
            Err(_) => panic!("{name} panicked"),
        }
    }
    // truncated safetensors
    let st = dir.join("ok.safetensors");
    convert_to_safetensors(&small().join("vae.pt"), &st).unwrap();
    let sb = std::fs::read(&st).unwrap();
    let p = dir.join("trunc.safetensors");
    std::fs::write(&p, &sb[..sb.len() - 10]).unwrap();
    assert!(Vae::load(&small_cfg(), &p, &dev).is_err());
    // a file that does not exist
    assert!(Vae::load(&small_cfg(), Path::new("/nonexistent/vae.pt"), &dev).is_err());
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn anchor_selection() {
    let sd = StateDict::read(&small().join("vae_nested.pt")).unwrap();
    assert!(sd.tensors.keys().all(|k| k.starts_with("state_dict.module.")));
    let sel = sd.clone().select_by_anchor(VAE_ANCHOR_KEY, Path::new("n.pt")).unwrap();
    assert!(sel.tensors.contains_key(VAE_ANCHOR_KEY));
    let err = sd.select_by_anchor("unet.conv_in.weight", Path::new("n.pt")).unwrap_err().to_string();
    assert!(err.contains("no tensor named"), "{err}");
}

#[test]
fn config_validation_and_json() {
    let mut c = small_cfg();
    c.attention_levels = vec![false, false, true];
    assert!(c.validate().unwrap_err().to_string().contains("attention"));
    let mut c = small_cfg();
    c.with_decoder_nonlocal_attn = true;
    assert!(c.validate().unwrap_err().to_string().contains("nonlocal"));
    let mut c = small_cfg();
    c.use_convtranspose = true;
    assert!(c.validate().unwrap_err().to_string().contains("convtranspose"));
    let mut c = small_cfg();
    c.num_channels = vec![8, 16, 18];
    assert!(c.validate().is_err());
    let mut c = small_cfg();
    c.num_res_blocks = vec![1, 1];
    assert!(c.validate().is_err());
    // MAISI's model config layout, with _target_ and extra MONAI options
    let json = r#"{"autoencoder_def": {"_target_": "monai.apps.generation.maisi.networks.autoencoderkl_maisi.AutoencoderKlMaisi",
        "spatial_dims": 3, "in_channels": 1, "out_channels": 1, "latent_channels": 4,
        "num_channels": [64, 128, 256], "num_res_blocks": [2, 2, 2], "norm_num_groups": 32, "norm_eps": 1e-06,
        "attention_levels": [false, false, false], "with_encoder_nonlocal_attn": false,
        "with_decoder_nonlocal_attn": false, "use_checkpointing": false, "use_convtranspose": false,
        "norm_float16": true, "num_splits": 4, "dim_split": 1}, "diffusion_unet_def": {}}"#;
    let c = VaeConfig::from_json_str(json).unwrap();
    assert_eq!(VaeConfig { target: None, ..c }, VaeConfig::maisi());
    assert!(VaeConfig::from_json_str(r#"{"spatial_dims": 3, "in_channels": 1}"#).is_err());
    assert!(VaeConfig::from_json_str(
        r#"{"spatial_dims": 3, "in_channels": 1, "out_channels": 1, "num_channels": [8], "num_res_blocks": [1],
            "attention_levels": [false], "norm_num_groups": 4, "typo_field": 1}"#
    )
    .unwrap_err()
    .to_string()
    .contains("typo_field"));
}

#[test]
fn sampling_is_seeded_and_shapes_are_checked() {
    let dev = Device::flex();
    let vae = Vae::load(&small_cfg(), &small().join("vae.pt"), &dev).unwrap();
    let x = Tensor::<5>::from_data(TensorData::new(vec![0.5f32; 8 * 8 * 4], [1, 1, 8, 8, 4]), &dev);
    let a = values(vae.encode_sample(x.clone(), 7));
    let b = values(vae.encode_sample(x.clone(), 7));
    let c = values(vae.encode_sample(x.clone(), 8));
    assert_eq!(a, b);
    assert_ne!(a, c);
    assert_eq!(vae.encode_mean(x).dims(), [1, 4, 2, 2, 1]);
    assert!(vae.check_image_shape([1, 2, 8, 8, 8]).is_err());
    assert!(vae.check_image_shape([1, 1, 8, 3, 8]).is_err());
    assert!(vae.check_latent_shape([1, 3, 2, 2, 2]).is_err());
    assert!(vae.decode_sliding_window(latent(&dev), [2, 2, 2], 1.0).is_err());
    // window covering the whole latent = plain decode (single window, weights cancel)
    let full = values(vae.decode(latent(&dev)));
    let sw = values(vae.decode_sliding_window(latent(&dev), [3, 2, 2], 0.4).unwrap());
    let err: f32 = full.iter().zip(&sw).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
    assert!(err < 1e-5, "{err}");
}

#[test]
fn random_init_builds_every_parameter() {
    let cfg = small_cfg();
    let vae = Vae::new(&cfg, 3, &Device::flex()).unwrap();
    let out = vae.decode(latent(&Device::flex()));
    assert_eq!(out.dims(), [1, 1, 12, 8, 8]);
    assert!(values(out).iter().all(|v| v.is_finite()));
}

#[test]
fn export_roundtrips_monai_names() {
    let dev = Device::flex();
    let vae = Vae::load(&small_cfg(), &small().join("vae.pt"), &dev).unwrap();
    let exported = vae.net.to_state_dict().unwrap();
    assert_eq!(exported, StateDict::read(&small().join("vae.pt")).unwrap());
    let dir = tmpdir("export");
    let p = dir.join("saved.safetensors");
    vae.save_safetensors(&p).unwrap();
    let again = Vae::load(&small_cfg(), &p, &dev).unwrap();
    assert_eq!(values(again.decode(latent(&dev))), values(vae.decode(latent(&dev))));
    // a fresh init exports exactly the spec
    let fresh = Vae::new(&small_cfg(), 1, &dev).unwrap().net.to_state_dict().unwrap();
    let spec = small_cfg().param_spec().unwrap();
    assert_eq!(fresh.len(), spec.len());
    for (k, s) in spec {
        assert_eq!(fresh.tensors[&k].shape, s, "{k}");
    }
    std::fs::remove_dir_all(&dir).ok();
}
