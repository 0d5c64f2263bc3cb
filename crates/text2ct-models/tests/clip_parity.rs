//! Parity of the 3D-CLIP networks with the references (fixtures written by
//! `fixtures/gen_clip_text_fixtures.py`, transformers 4.30.1 `CLIPTextModel`, and
//! `fixtures/gen_ctvit_fixtures.py`, Text2CT's CTViT + vector-quantize-pytorch 1.1.2).
//! Relative L2 errors must be <= 1e-4.

use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor, TensorData};
use text2ct_models::clip_text::eos_positions;
use text2ct_models::{
    clip_loss, clip_loss_with_negatives, Clip3d, Clip3dConfig, ClipTextConfig, ClipTextEncoder, CtVitConfig, NpyArray,
    StateDict,
};

fn fixtures(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures").join(name)
}

fn rel_l2<const D: usize>(got: Tensor<D>, want: &Path) -> f64 {
    let want = NpyArray::read(want).unwrap();
    assert_eq!(got.dims().to_vec(), want.shape, "shape of {}", want_name(&want));
    rel_l2_vec(&got.into_data().convert::<f32>().try_into_vec::<f32>().unwrap(), &want.data)
}

fn want_name(a: &NpyArray) -> String {
    format!("{:?}", a.shape)
}

fn rel_l2_vec(g: &[f32], w: &[f32]) -> f64 {
    assert_eq!(g.len(), w.len());
    let (mut num, mut den) = (0f64, 0f64);
    for (a, b) in g.iter().zip(w) {
        num += ((a - b) as f64).powi(2);
        den += (*b as f64).powi(2);
    }
    (num / den.max(1e-30)).sqrt()
}

fn text_meta() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixtures("clip_text/meta.json")).unwrap()).unwrap()
}

fn case_ids(meta: &serde_json::Value, case: &str) -> Vec<Vec<u32>> {
    serde_json::from_value(meta["cases"][case]["ids"].clone()).unwrap()
}

#[test]
fn text_encoder_matches_transformers() {
    let dev = Device::flex();
    let dir = fixtures("clip_text");
    let cfg = ClipTextConfig::from_json_file(&dir.join("config.json")).unwrap();
    let enc = ClipTextEncoder::load(&cfg, &dir.join("clip_text.pt"), &dev).unwrap_or_else(|e| panic!("{e}"));
    let meta = text_meta();
    for case in ["full", "short"] {
        let ids = case_ids(&meta, case);
        let want_pos: Vec<usize> = serde_json::from_value(meta["cases"][case]["eos_pos"].clone()).unwrap();
        assert_eq!(eos_positions(&ids), want_pos, "{case}: EOS positions");
        let t = ClipTextEncoder::ids_tensor(&ids, &dev);
        let e_hidden = rel_l2(enc.text_model.forward(t.clone()), &dir.join(format!("{case}_hidden.npy")));
        let e_embed = rel_l2(enc.encode(t.clone()), &dir.join(format!("{case}_embed.npy")));
        let e_checked = rel_l2(enc.encode_ids(&ids).unwrap(), &dir.join(format!("{case}_embed.npy")));
        println!("clip text {case}: hidden rel L2 {e_hidden:.3e}, embedding {e_embed:.3e}");
        assert!(e_hidden <= 1e-4 && e_embed <= 1e-4 && e_checked <= 1e-4, "{case}: {e_hidden} {e_embed}");
        let ctx = enc.encode_context(t);
        assert_eq!(ctx.dims(), [ids.len(), 1, cfg.projection_dim]);
    }
}

#[test]
fn text_encoder_rejects_bad_ids() {
    let dev = Device::flex();
    let dir = fixtures("clip_text");
    let cfg = ClipTextConfig::from_json_file(&dir.join("config.json")).unwrap();
    let enc = ClipTextEncoder::load(&cfg, &dir.join("clip_text.pt"), &dev).unwrap();
    assert!(enc.encode_ids(&[]).is_err());
    assert!(enc.encode_ids(&[vec![]]).is_err());
    assert!(enc.encode_ids(&[vec![1, 2000, 999]]).unwrap_err().to_string().contains("vocabulary"));
    assert!(enc.encode_ids(&[vec![999; 513]]).unwrap_err().to_string().contains("1..=512"));
    assert!(enc.encode_ids(&[vec![1, 999], vec![999]]).is_err());
}

#[test]
fn text_weights_strict_and_roundtrip() {
    let dev = Device::flex();
    let dir = fixtures("clip_text");
    let cfg = ClipTextConfig::from_json_file(&dir.join("config.json")).unwrap();
    let path = dir.join("clip_text.pt");
    // Wrong config: every shape problem is named.
    let mut wrong = cfg.clone();
    wrong.hidden_size = 48;
    wrong.num_attention_heads = 4;
    let err = ClipTextEncoder::load(&wrong, &path, &dev).unwrap_err().to_string();
    assert!(err.contains("wrong shape") && err.contains("token_embedding.weight"), "{err}");
    let mut more = cfg.clone();
    more.num_hidden_layers = 3;
    let err = ClipTextEncoder::load(&more, &path, &dev).unwrap_err().to_string();
    assert!(err.contains("missing") && err.contains("text_model.encoder.layers.2."), "{err}");
    // Round trip through our own export: identical tensors.
    let enc = ClipTextEncoder::load(&cfg, &path, &dev).unwrap();
    let sd = enc.to_state_dict().unwrap();
    let orig = StateDict::read(&path)
        .unwrap()
        .select_by_anchor("text_model.embeddings.token_embedding.weight", &path)
        .unwrap();
    for (k, t) in &sd.tensors {
        assert_eq!(orig.tensors[k], *t, "{k}");
    }
    assert_eq!(sd.len() + 1, orig.len(), "all but logit_scale");
    // An unexpected key is an error.
    let mut extra = orig.clone();
    extra.tensors.insert("text_model.surprise".into(), text2ct_models::RawTensor::new(vec![1], vec![0.0]));
    let err = ClipTextEncoder::from_state_dict(&cfg, extra, &dev, &path).unwrap_err().to_string();
    assert!(err.contains("unexpected") && err.contains("text_model.surprise"), "{err}");
}

/// transformers >= 4.31 saves no `text_model.embeddings.position_ids`: such a file loads and
/// embeds exactly as one with the buffer; a buffer that is not `arange` is refused naming the file.
#[test]
fn position_ids_are_optional_and_checked() {
    let dev = Device::flex();
    let dir = fixtures("clip_text");
    let cfg = ClipTextConfig::from_json_file(&dir.join("config.json")).unwrap();
    let path = dir.join("clip_text.pt");
    let with = ClipTextEncoder::load(&cfg, &path, &dev).unwrap();
    let ids = case_ids(&text_meta(), "short");
    let want = with.encode_ids(&ids).unwrap().into_data().try_into_vec::<f32>().unwrap();
    let orig = StateDict::read(&path).unwrap();
    let key = "model.text_model.embeddings.position_ids";
    assert!(orig.tensors.contains_key(key), "the transformers 4.30 fixture has the buffer");

    let t = std::env::temp_dir().join(format!("t2ct-clip-pid-{}", std::process::id()));
    std::fs::create_dir_all(&t).unwrap();
    // Without the buffer: the same embedding, through both text loaders.
    let mut sd = orig.clone();
    sd.tensors.remove(key);
    let f = t.join("no_pid.safetensors");
    sd.write_safetensors(&f, None).unwrap();
    let got = ClipTextEncoder::load(&cfg, &f, &dev).unwrap().encode_ids(&ids).unwrap();
    assert_eq!(got.into_data().try_into_vec::<f32>().unwrap(), want);
    let clip = Clip3d::load_text_only(&Clip3dConfig::text_only(cfg.clone()), &f, &dev).unwrap();
    assert_eq!(clip.text.encode_ids(&ids).unwrap().into_data().try_into_vec::<f32>().unwrap(), want);

    // A buffer that is not arange (positions swapped, or the wrong length) is refused, by name.
    for (name, edit) in [
        ("swapped", Box::new(|t: &mut text2ct_models::RawTensor| t.data.swap(0, 1)) as Box<dyn Fn(&mut _)>),
        (
            "short",
            Box::new(|t: &mut text2ct_models::RawTensor| {
                t.data.pop();
                t.shape = vec![1, t.data.len()];
            }),
        ),
    ] {
        let mut sd = orig.clone();
        edit(sd.tensors.get_mut(key).unwrap());
        let f = t.join(format!("{name}.safetensors"));
        sd.write_safetensors(&f, None).unwrap();
        for e in [
            ClipTextEncoder::load(&cfg, &f, &dev).unwrap_err().to_string(),
            Clip3d::load_text_only(&Clip3dConfig::text_only(cfg.clone()), &f, &dev).unwrap_err().to_string(),
        ] {
            assert!(e.contains(&f.display().to_string()) && e.contains("text_model.embeddings.position_ids"), "{e}");
        }
    }
    let _ = std::fs::remove_dir_all(&t);
}

/// The `config.json` transformers writes for a `CLIPModel`: extra keys, a 2D vision config, and
/// the text projection's size at the top level (the text block keeps its default 512).
#[test]
fn text_config_reads_transformers_clip_config() {
    let json = r#"{
      "_name_or_path": "tiny-clip", "architectures": ["CLIPModel"], "initializer_factor": 1.0,
      "logit_scale_init_value": 2.6592, "model_type": "clip", "projection_dim": 6,
      "text_config": {
        "model_type": "clip_text_model", "vocab_size": 49408, "hidden_size": 8, "intermediate_size": 16,
        "num_attention_heads": 2, "num_hidden_layers": 1, "max_position_embeddings": 512,
        "bos_token_id": 49406, "eos_token_id": 49407, "pad_token_id": 1, "hidden_act": "quick_gelu",
        "layer_norm_eps": 1e-05, "attention_dropout": 0.0, "dropout": 0.0, "initializer_range": 0.02,
        "projection_dim": 512, "torch_dtype": null
      },
      "torch_dtype": "float32", "transformers_version": "4.44.2",
      "vision_config": {"model_type": "clip_vision_model", "hidden_size": 8, "image_size": 32, "patch_size": 16}
    }"#;
    let c = ClipTextConfig::from_json_str(json).unwrap();
    assert_eq!((c.vocab_size, c.hidden_size, c.max_position_embeddings, c.projection_dim), (49408, 8, 512, 6));
    assert!(ClipTextConfig::from_json_str(r#"{"text_config": 3}"#).unwrap_err().to_string().contains("text_config"));
}

#[test]
fn text_encoder_trains_under_autodiff() {
    let dev = Device::flex().autodiff();
    let cfg = ClipTextConfig {
        vocab_size: 50,
        hidden_size: 16,
        num_hidden_layers: 1,
        num_attention_heads: 2,
        intermediate_size: 32,
        max_position_embeddings: 8,
        projection_dim: 8,
        ..ClipTextConfig::default()
    };
    let enc = ClipTextEncoder::new(&cfg, 3, &dev).unwrap();
    let ids = ClipTextEncoder::ids_tensor(&[vec![48, 3, 4, 49, 49], vec![48, 7, 49, 49, 49]], &dev);
    let z = enc.encode(ids);
    let loss =
        clip_loss(z.clone(), z.clone().flip([0]), Tensor::from_data(TensorData::new(vec![2.6592f32], [1]), &dev));
    let grads = loss.backward();
    let g = enc.text_model.token_embedding.weight.grad(&grads).expect("gradient reaches the embeddings");
    let gsum: f32 = g.abs().sum().into_scalar();
    assert!(gsum.is_finite() && gsum > 0.0, "{gsum}");
    let gp = enc.text_projection.weight.grad(&grads).expect("projection gradient");
    assert!(gp.abs().sum().into_scalar::<f32>().is_finite());
}

#[test]
fn clip_loss_matches_hand_computation() {
    let dev = Device::flex();
    let img = Tensor::<2>::from_data(TensorData::new(vec![1.0f32, 0.0, 0.6, 0.8], [2, 2]), &dev);
    let txt = Tensor::<2>::from_data(TensorData::new(vec![0.8f32, 0.6, 0.0, 1.0], [2, 2]), &dev);
    let ls = 1.0f64;
    let loss: f32 = clip_loss(img, txt, Tensor::from_data(TensorData::new(vec![ls as f32], [1]), &dev)).into_scalar();
    // logits[t][i] = e * <txt_t, img_i>
    let s = ls.exp();
    let l = [[0.8 * s, (0.48 + 0.48) * s], [0.0, 0.8 * s]];
    let ce = |row: [f64; 2], k: usize| -(row[k] - (row[0].exp() + row[1].exp()).ln());
    let lt = (ce(l[0], 0) + ce(l[1], 1)) / 2.0;
    let li = (ce([l[0][0], l[1][0]], 0) + ce([l[0][1], l[1][1]], 1)) / 2.0;
    let want = (lt + li) / 2.0;
    assert!((loss as f64 - want).abs() < 1e-5, "{loss} vs {want}");
    // Clamp: logit_scale 10 acts as ln 100.
    let a: f32 = clip_loss(
        Tensor::from_data(TensorData::new(vec![1.0f32, 0.0, 0.0, 1.0], [2, 2]), &dev),
        Tensor::from_data(TensorData::new(vec![1.0f32, 0.0, 0.0, 1.0], [2, 2]), &dev),
        Tensor::from_data(TensorData::new(vec![10.0f32], [1]), &dev),
    )
    .into_scalar();
    let want = -(100f64 - (100f64.exp() + 1.0).ln());
    assert!((a as f64 - want).abs() < 1e-5, "{a} vs {want}");
}

/// Extra negative texts enter only the image -> text softmax; none at all is `clip_loss`.
#[test]
fn clip_loss_with_negatives_matches_hand_computation() {
    let dev = Device::flex();
    let t = |v: Vec<f32>, r: usize| Tensor::<2>::from_data(TensorData::new(v, [r, 2]), &dev);
    let ls = || Tensor::<1>::from_data(TensorData::new(vec![1.0f32], [1]), &dev);
    let img = || t(vec![1.0, 0.0, 0.6, 0.8], 2);
    let txt = || t(vec![0.8, 0.6, 0.0, 1.0], 2);
    let neg = || t(vec![0.6, -0.8], 1);
    let plain: f32 = clip_loss(img(), txt(), ls()).into_scalar();
    let none: f32 = clip_loss_with_negatives(img(), txt(), None, ls()).into_scalar();
    let empty: f32 = clip_loss_with_negatives(img(), txt(), Some(Tensor::<2>::zeros([0, 2], &dev)), ls()).into_scalar();
    assert_eq!(plain, none);
    assert_eq!(plain, empty);
    let got: f64 = clip_loss_with_negatives(img(), txt(), Some(neg()), ls()).into_scalar::<f32>() as f64;
    let s = 1f64.exp();
    let dot = |a: [f64; 2], b: [f64; 2]| a[0] * b[0] + a[1] * b[1];
    let (im, tx, ng) = ([[1.0, 0.0], [0.6, 0.8]], [[0.8, 0.6], [0.0, 1.0]], [0.6, -0.8]);
    let ce = |row: &[f64], k: usize| -(row[k] - row.iter().map(|v| v.exp()).sum::<f64>().ln());
    // text -> image: as clip_loss.
    let lt = (0..2).map(|k| ce(&[s * dot(tx[k], im[0]), s * dot(tx[k], im[1])], k)).sum::<f64>() / 2.0;
    // image -> text: over both batch texts and the negative.
    let li =
        (0..2).map(|k| ce(&[s * dot(im[k], tx[0]), s * dot(im[k], tx[1]), s * dot(im[k], ng)], k)).sum::<f64>() / 2.0;
    let want = (lt + li) / 2.0;
    assert!((got - want).abs() < 1e-5, "{got} vs {want}");
    assert!(got > plain as f64, "a negative can only add to the loss: {got} vs {plain}");
}

fn ctvit_cfg() -> CtVitConfig {
    serde_json::from_str(&std::fs::read_to_string(fixtures("ctvit/config.json")).unwrap()).unwrap()
}

fn clip3d_cfg() -> Clip3dConfig {
    let text = ClipTextConfig::from_json_file(&fixtures("clip_text/config.json")).unwrap();
    Clip3dConfig {
        projection_dim: text.projection_dim,
        text_config: text,
        vision_config: ctvit_cfg(),
        logit_scale_init_value: 2.6592,
    }
}

fn input(dev: &Device) -> Tensor<5> {
    let a = NpyArray::read(&fixtures("ctvit/input.npy")).unwrap();
    let s: [usize; 5] = a.shape.clone().try_into().unwrap();
    Tensor::from_data(TensorData::new(a.data, s), dev)
}

#[test]
fn ctvit_and_clip3d_match_reference() {
    let dev = Device::flex();
    let dir = fixtures("ctvit");
    let cfg = clip3d_cfg();
    let clip = Clip3d::load(&cfg, &dir.join("clip3d.pt"), &dev).unwrap_or_else(|e| panic!("{e}"));
    let v = clip.vision.as_ref().unwrap();
    let x = input(&dev);
    let tokens = v.vision_model.encode_tokens(v.vision_model.patch_embed(x.clone()));
    let e_tok = rel_l2(tokens.clone(), &dir.join("tokens.npy"));
    let (q, idx) = v.vision_model.quantize(tokens);
    let want_idx = NpyArray::read(&dir.join("indices.npy")).unwrap();
    let got_idx: Vec<i64> = idx.into_data().convert::<i64>().try_into_vec::<i64>().unwrap();
    let same = got_idx.iter().zip(&want_idx.data).filter(|(a, b)| **a as f32 == **b).count();
    let e_q = rel_l2(q, &dir.join("quantized.npy"));
    let e_fwd = rel_l2(v.vision_model.forward(x.clone()), &dir.join("quantized.npy"));
    let e_emb = rel_l2(clip.encode_volume(x).unwrap(), &dir.join("embed.npy"));
    println!(
        "ctvit: tokens rel L2 {e_tok:.3e}, codes {same}/{}, quantised {e_q:.3e}, embedding {e_emb:.3e}",
        got_idx.len()
    );
    assert!(e_tok <= 1e-4, "tokens {e_tok}");
    assert_eq!(same, got_idx.len(), "code indices");
    assert!(e_q <= 1e-6 && e_fwd <= 1e-6 && e_emb <= 1e-4, "{e_q} {e_fwd} {e_emb}");
    // The text half of the same checkpoint still matches.
    let meta = text_meta();
    let ids = case_ids(&meta, "short");
    let e_txt =
        rel_l2(clip.encode_text(ClipTextEncoder::ids_tensor(&ids, &dev)), &fixtures("clip_text/short_embed.npy"));
    assert!(e_txt <= 1e-4, "{e_txt}");
    assert!((clip.logit_scale.val().into_scalar::<f32>() - 2.6592f32).abs() < 1e-6);
}

#[test]
fn clip3d_strict_keys_text_only_and_roundtrip() {
    let dev = Device::flex();
    let dir = fixtures("ctvit");
    let cfg = clip3d_cfg();
    let path = dir.join("clip3d.pt");
    // Text-only loading skips the vision half; the model then refuses volumes.
    let t = Clip3d::load_text_only(&cfg, &path, &dev).unwrap();
    assert!(t.vision.is_none());
    assert!(t.encode_volume(input(&dev)).unwrap_err().to_string().contains("vision half"));
    // The text-only file cannot be loaded as a full CLIP3D: the vision keys are missing.
    let err = Clip3d::load(&cfg, &fixtures("clip_text/clip_text.pt"), &dev).unwrap_err().to_string();
    assert!(err.contains("missing") && err.contains("vision_model.vq._codebook.embed"), "{err}");
    // Round trip of every tensor (including the unused ones and the buffers).
    let clip = Clip3d::load(&cfg, &path, &dev).unwrap();
    let sd = clip.to_state_dict().unwrap();
    let orig = StateDict::read(&path)
        .unwrap()
        .select_by_anchor("text_model.embeddings.token_embedding.weight", &path)
        .unwrap();
    assert_eq!(sd.len(), orig.len());
    for (k, t) in &orig.tensors {
        assert_eq!(sd.tensors.get(k), Some(t), "{k}");
    }
    // Key spec of the vision half = the reference's key list.
    let spec = cfg.vision_config.param_spec().unwrap();
    let listed: Vec<String> = std::fs::read_to_string(dir.join("keys.txt"))
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix("model.vision_model."))
        .map(|l| l.to_string())
        .collect();
    let ours: Vec<String> = spec.iter().map(|(k, s)| format!("{k} {s:?}")).collect();
    assert_eq!(ours.len(), listed.len());
    for l in &listed {
        assert!(ours.contains(l), "{l} not in our spec");
    }
    // Wrong input shape is an error, not a panic.
    let bad = Tensor::<5>::zeros([1, 1, 32, 32, 8], &dev);
    assert!(clip.encode_volume(bad).unwrap_err().to_string().contains("CT-ViT input"));
}

#[test]
fn text2ct_configs_are_consistent() {
    let c = Clip3dConfig::text2ct();
    c.validate().unwrap();
    assert_eq!(c.vision_config.embed_dim(), 786_432);
    assert_eq!(c.vision_config.grid(), [8, 32, 32]);
    assert_eq!(c.vision_config.ff_inner(), 2048);
    assert_eq!(CtVitConfig::ct_clip().embed_dim(), 294_912);
    let back = Clip3dConfig::from_json_str(&c.to_json()).unwrap();
    assert_eq!(back, c);
}

/// Full Text2CT sizes on random weights: shapes and CPU time (no reference numbers).
/// `cargo test --release -p text2ct-models --test clip_parity -- --ignored --nocapture`
#[test]
#[ignore = "full-size networks (~170 M parameters without the 600 M visual projection); ~1 min on 2 cores"]
fn full_size_text_and_ctvit_run() {
    let dev = Device::flex();
    let t = std::time::Instant::now();
    let enc = ClipTextEncoder::new(&ClipTextConfig::text2ct(), 0, &dev).unwrap();
    let tok: Vec<Vec<u32>> = vec![(0..512)
        .map(|i| {
            if i == 0 {
                49406
            } else if i < 300 {
                320 + i
            } else {
                49407
            }
        })
        .collect()];
    println!("text encoder built in {:.1} s", t.elapsed().as_secs_f64());
    let t = std::time::Instant::now();
    let z = enc.encode_ids(&tok).unwrap();
    assert_eq!(z.dims(), [1, 768]);
    println!("text encoder: 1 x 512 tokens in {:.2} s", t.elapsed().as_secs_f64());
    let cfg = CtVitConfig::text2ct();
    let mut src = text2ct_models::blocks::InitSource::new(1);
    let vit = text2ct_models::ctvit::CtVit::build_from(&cfg, &mut src, &dev).unwrap();
    let x = Tensor::<5>::random([1, 1, 512, 512, 128], burn::tensor::Distribution::Uniform(0.0, 1.0), &dev);
    let t = std::time::Instant::now();
    let q = vit.forward(x);
    assert_eq!(q.dims(), [1, 8, 32, 32, 768]);
    println!("CT-ViT: 512x512x128 -> {:?} in {:.1} s", q.dims(), t.elapsed().as_secs_f64());
}

/// The training-mode EMA codebook update equals vector-quantize-pytorch 1.1.2's
/// (`fixtures/gen_vq_ema_fixture.py`): same codes picked, same buffers after two updates.
#[test]
fn codebook_ema_update_matches_vector_quantize_pytorch() {
    use burn::tensor::Int;
    use text2ct_models::ctvit::CosineCodebook;
    let fx: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures("ctvit/vq_ema.json")).unwrap()).unwrap();
    let mat = |v: &serde_json::Value| -> Vec<f32> {
        v.as_array()
            .unwrap()
            .iter()
            .flat_map(|r| r.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32))
            .collect()
    };
    let vecf = |v: &serde_json::Value| -> Vec<f32> {
        v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
    };
    let (d, k) = (fx["dim"].as_u64().unwrap() as usize, fx["codebook_size"].as_u64().unwrap() as usize);
    let decay = fx["decay"].as_f64().unwrap() as f32;
    let dev = Device::flex();
    let mut cb = CosineCodebook {
        embed: Tensor::<2>::from_data(TensorData::new(mat(&fx["embed0"]), [k, d]), &dev),
        initted: Tensor::<1>::ones([1], &dev),
        cluster_size: Tensor::<2>::from_data(TensorData::new(vecf(&fx["cluster0"]), [1, k]), &dev),
    };
    for (s, step) in fx["steps"].as_array().unwrap().iter().enumerate() {
        let xs = mat(&step["x"]);
        let n = xs.len() / d;
        let x = Tensor::<2>::from_data(TensorData::new(xs, [n, d]), &dev);
        let idx = cb.indices(x.clone());
        let got: Vec<i64> = idx.clone().into_data().convert::<i64>().try_to_vec::<i64>().unwrap();
        let want: Vec<i64> = step["idx"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
        assert_eq!(got, want, "codes at update {s}");
        let _: &Tensor<1, Int> = &idx;
        cb.ema_update(x, idx, decay);
        let e: Vec<f32> = cb.embed.clone().into_data().convert::<f32>().try_to_vec::<f32>().unwrap();
        let c: Vec<f32> = cb.cluster_size.clone().into_data().convert::<f32>().try_to_vec::<f32>().unwrap();
        let re = rel_l2_vec(&e, &mat(&step["embed"]));
        let rc = rel_l2_vec(&c, &vecf(&step["cluster"]));
        assert!(re < 1e-5 && rc < 1e-6, "update {s}: embed rel {re:e}, cluster_size rel {rc:e}");
    }
}

/// `normalize_patches = false`: the same keys load (the reference checkpoint), the first patch
/// LayerNorm keeps only its affine part, so two volumes that differ by a constant intensity give
/// different tokens — the reference's per-patch LayerNorm maps them to the same tokens.
#[test]
fn unnormalized_patches_keep_the_intensity_level() {
    let dev = Device::flex();
    let dir = fixtures("ctvit");
    let mut cfg = clip3d_cfg();
    let x = input(&dev);
    let shifted = x.clone() + 0.2;
    let tokens = |clip: &Clip3d, x: Tensor<5>| {
        let v = &clip.vision.as_ref().unwrap().vision_model;
        v.encode_tokens(v.patch_embed(x)).into_data().convert::<f32>().try_into_vec::<f32>().unwrap()
    };
    let max_diff = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    let reference = Clip3d::load(&cfg, &dir.join("clip3d.pt"), &dev).unwrap();
    let (a, b) = (tokens(&reference, x.clone()), tokens(&reference, shifted.clone()));
    // A constant intensity shift vanishes under the per-patch LayerNorm.
    assert!(max_diff(&a, &b) < 1e-3, "{}", max_diff(&a, &b));
    cfg.vision_config.normalize_patches = false;
    let json = serde_json::to_string(&cfg.vision_config).unwrap();
    assert!(json.contains("\"normalize_patches\":false"), "{json}");
    assert!(!serde_json::to_string(&ctvit_cfg()).unwrap().contains("normalize_patches"));
    let raw = Clip3d::load(&cfg, &dir.join("clip3d.pt"), &dev).unwrap();
    let (c, d) = (tokens(&raw, x), tokens(&raw, shifted));
    assert!(max_diff(&c, &d) > 0.1, "{}", max_diff(&c, &d));
    assert!(max_diff(&a, &c) > 0.1, "the option changed nothing");
}
