//! Parity of the WordPiece tokenizer with transformers 4.30.1 `BertTokenizerFast` on the real
//! all-MiniLM-L6-v2 `tokenizer.json` (committed gzipped, Apache-2.0, `fixtures/minilm/`). Fixtures:
//! `fixtures/minilm/wordpiece_ids.json`, made by `fixtures/gen_wordpiece_fixtures.py`.

use serde_json::Value;
use text2ct_text::{WordPieceError, WordPieceTokenizer, MINILM_MAX_LEN};

fn dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/minilm")
}

fn tok() -> WordPieceTokenizer {
    WordPieceTokenizer::from_file(dir().join("tokenizer.json.gz")).expect("load tokenizer.json.gz")
}

fn fixtures() -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir().join("wordpiece_ids.json")).unwrap()).unwrap()
}

#[test]
fn special_ids_and_vocab_match_reference() {
    let t = tok();
    let meta = &fixtures()["meta"];
    assert_eq!(t.vocab_size() as u64, meta["vocab_size"].as_u64().unwrap());
    assert_eq!(t.cls_id() as u64, meta["cls"].as_u64().unwrap());
    assert_eq!(t.sep_id() as u64, meta["sep"].as_u64().unwrap());
    assert_eq!(t.pad_id() as u64, meta["pad"].as_u64().unwrap());
    assert_eq!(t.token_to_id("[UNK]").map(u64::from), meta["unk"].as_u64());
    assert_eq!(meta["max_len"].as_u64(), Some(MINILM_MAX_LEN as u64));
}

#[test]
fn all_fixture_texts_match_reference_ids() {
    let t = tok();
    let fx = fixtures();
    let cases = fx["cases"].as_array().unwrap();
    assert!(cases.len() >= 70, "{} cases", cases.len());
    let mut failures = Vec::new();
    let mut n_trunc = 0;
    for c in cases {
        let text = c["text"].as_str().unwrap();
        let want: Vec<u32> = c["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        let want_trunc = c["truncated"].as_bool().unwrap();
        n_trunc += usize::from(want_trunc);
        let (got, trunc) = t.encode(text, MINILM_MAX_LEN).unwrap();
        if got != want || trunc != want_trunc {
            failures.push(format!("{text:?}:\n got  {got:?} ({trunc})\n want {want:?} ({want_trunc})"));
        }
        let untrunc = t.content_ids(text).unwrap().len() + 2;
        assert_eq!(untrunc as u64, c["untruncated_len"].as_u64().unwrap(), "{text:?}");
        // Tokens too (the vocabulary lookup the other way).
        let toks: Vec<String> = got.iter().map(|&i| t.id_to_token(i).unwrap()).collect();
        let want_toks: Vec<&str> = c["tokens"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        assert_eq!(toks, want_toks, "{text:?}");
    }
    assert!(n_trunc >= 3, "fixtures should exercise truncation");
    assert!(failures.is_empty(), "{} of {} differ:\n{}", failures.len(), cases.len(), failures.join("\n"));
}

#[test]
fn batch_is_padded_with_mask_and_truncation_flags() {
    let t = tok();
    let long = "pleural effusion ".repeat(300);
    let b = t.encode_batch(&["Lungs clear.", "", long.as_str()], 16).unwrap();
    assert_eq!(b.ids.len(), 3);
    assert!(b.ids.iter().all(|r| r.len() == 16));
    assert_eq!(b.truncated, vec![false, false, true]);
    // "" -> [CLS] [SEP] then padding.
    assert_eq!(&b.ids[1][..3], &[t.cls_id(), t.sep_id(), t.pad_id()]);
    assert_eq!(b.mask[1].iter().sum::<u32>(), 2);
    assert_eq!(b.mask[2].iter().sum::<u32>(), 16);
    assert_eq!(*b.ids[2].last().unwrap(), t.sep_id());
    let (ids, tr) = t.encode("Lungs clear.", 2).unwrap();
    assert_eq!((ids, tr), (vec![t.cls_id(), t.sep_id()], true));
    assert!(matches!(t.encode("x", 1), Err(WordPieceError::MaxLen(1))));
}

#[test]
fn bad_files_give_clear_errors() {
    let e = WordPieceTokenizer::from_file("/nonexistent/tokenizer.json").unwrap_err().to_string();
    assert!(e.contains("/nonexistent/tokenizer.json") && e.contains("cannot read"), "{e}");
    let e = WordPieceTokenizer::from_bytes(b"{\"not\": \"a tokenizer\"}", "x.json").unwrap_err().to_string();
    assert!(e.contains("x.json") && e.contains("not a Hugging Face tokenizer.json"), "{e}");
    let e = WordPieceTokenizer::from_bytes(b"\x00\x01garbage", "g.json").unwrap_err().to_string();
    assert!(e.contains("g.json"), "{e}");
    // A valid tokenizer.json without BERT's special tokens (a tiny WordLevel model).
    let wl = r#"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],"normalizer":null,
        "pre_tokenizer":{"type":"Whitespace"},"post_processor":null,"decoder":null,
        "model":{"type":"WordLevel","vocab":{"a":0,"[UNK]":1},"unk_token":"[UNK]"}}"#;
    let e = WordPieceTokenizer::from_bytes(wl.as_bytes(), "wl.json").unwrap_err().to_string();
    assert!(e.contains("not a BERT WordPiece tokenizer") && e.contains("[CLS]"), "{e}");
    // BERT tokens but no [CLS] ... [SEP] post-processor.
    let wl2 = wl.replace(r#""a":0,"[UNK]":1"#, r#""a":0,"[UNK]":1,"[CLS]":2,"[SEP]":3,"[PAD]":4,"lung":5,"nodule":6"#);
    let e = WordPieceTokenizer::from_bytes(wl2.as_bytes(), "wl2.json").unwrap_err().to_string();
    assert!(e.contains("post-processor"), "{e}");
}
