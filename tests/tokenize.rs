//! Tokenization against the GPT-2 reference encodings, and windowing / EOS placement on a
//! small corpus with hand-counted expectations.

mod common;

use agop::fetch::ResolvedModel;
use agop::tokenize::bpe::{windows, Gpt2Tokenizer};
use agop::tokenize::corpus::{read_sources, CorpusOptions};
use agop::tokenize::read_tokens;
use agop::tokenize::{self, TokenizeOptions};
use common::*;

#[test]
fn known_gpt2_encodings() {
    let tok = Gpt2Tokenizer::builtin().unwrap();
    let cases: [(&str, &[u32]); 4] = [
        ("Hello world", &[15496, 995]),
        (
            "To be, or not to be, that is the question:",
            &[2514, 307, 11, 393, 407, 284, 307, 11, 326, 318, 262, 1808, 25],
        ),
        (" naïve café — 東京 🙂", &[41492, 40304, 851, 10545, 251, 109, 12859, 105, 32485]),
        ("<|endoftext|>", &[50256]),
    ];
    for (text, want) in cases {
        assert_eq!(tok.encode(text).unwrap(), want, "{text:?}");
    }
    assert_eq!(tok.eos, 50256);
}

#[test]
fn windows_are_consecutive_chunks_without_the_partial_tail() {
    let stream: Vec<u32> = (0..23).collect();
    let w = windows(&stream, 5, None).unwrap();
    assert_eq!(w.len(), 4); // 23 tokens → 4 full windows, 3 dropped
    assert_eq!(w[0].tokens, vec![0, 1, 2, 3, 4]);
    assert_eq!(w[3].tokens, vec![15, 16, 17, 18, 19]);
    assert_eq!(w.iter().map(|x| x.index).collect::<Vec<_>>(), vec![0, 1, 2, 3]);
    // max_tokens 14 keeps ⌊14/5⌋ = 2 windows.
    assert_eq!(windows(&stream, 5, Some(14)).unwrap().len(), 2);
}

/// A tiny GPT-2-vocabulary model directory (tokenizer files included) for tokenize tests.
fn gpt2_vocab_model(dir: &std::path::Path) {
    let cfg = dir.join("config.json");
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        &cfg,
        r#"{"model_type":"gpt2","n_layer":1,"n_head":2,"n_embd":8,"n_positions":64,"vocab_size":50257}"#,
    )
    .unwrap();
    agop::model::init_model(&cfg, 0, dir).unwrap();
}

#[test]
fn documents_end_with_eos_in_order_across_source_kinds() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    gpt2_vocab_model(&model);
    let corpus = tmp.path().join("corpus");
    std::fs::create_dir_all(corpus.join("sub")).unwrap();
    // Folder files come in sorted path order: a.txt, b.jsonl, sub/c.txt.
    std::fs::write(corpus.join("a.txt"), "Hello world").unwrap(); // 15496 995
    std::fs::write(corpus.join("b.jsonl"), "{\"text\": \"Hello\"}\n{\"other\": 1, \"text\": \" world\"}\n").unwrap(); // 15496 | 995
    std::fs::write(corpus.join("sub/c.txt"), "Hello").unwrap(); // 15496
    std::fs::write(corpus.join("ignored.md"), "not a corpus file").unwrap();
    let (docs, _) = read_sources(&[corpus.display().to_string()], &CorpusOptions::default()).unwrap();
    assert_eq!(docs.iter().map(|d| d.text.as_str()).collect::<Vec<_>>(), ["Hello world", "Hello", " world", "Hello"]);

    let out = tmp.path().join("tokens.parquet");
    let opts = TokenizeOptions {
        sources: vec![corpus.display().to_string()],
        seq_len: 3,
        max_tokens: None,
        corpus: CorpusOptions::default(),
        progress: false,
        inputs: String::new(),
    };
    // Stream: 15496 995 E | 15496 E | 995 E | 15496 E  (E = 50256) = 9 tokens → 3 windows.
    let n = tokenize::tokenize(&ResolvedModel::local(&model).unwrap(), &opts, &out).unwrap();
    assert_eq!(n, 3);
    let (w, meta) = read_tokens(&out).unwrap();
    let e = 50256;
    assert_eq!(w[0].tokens, vec![15496, 995, e]);
    assert_eq!(w[1].tokens, vec![15496, e, 995]);
    assert_eq!(w[2].tokens, vec![e, 15496, e]);
    assert_eq!(meta.seq_len, 3);
    assert!(meta.tokenizer.contains("vocab") || meta.tokenizer.contains("model"), "{}", meta.tokenizer);

    // max_tokens 7 keeps ⌊7/3⌋ = 2 windows.
    let opts2 = TokenizeOptions { max_tokens: Some(7), ..opts.clone() };
    assert_eq!(tokenize::tokenize(&ResolvedModel::local(&model).unwrap(), &opts2, &out).unwrap(), 2);

    // Shorter than one window: a clear error, marked bad input.
    let opts3 = TokenizeOptions { seq_len: 50, ..opts };
    let err =
        tokenize::tokenize(&ResolvedModel::local(&model).unwrap(), &opts3, &tmp.path().join("x.parquet")).unwrap_err();
    assert!(agop::error::is_bad_input(&err));
    assert!(format!("{err:#}").contains("shorter than one window"), "{err:#}");
    assert!(!tmp.path().join("x.parquet").exists());
}

#[test]
fn builtin_shakespeare_tokenizes_like_the_shipped_files() {
    let (builtin, _) = read_sources(&["builtin:shakespeare".into()], &CorpusOptions::default()).unwrap();
    let folder = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/corpus/shakespeare");
    let (files, _) = read_sources(&[folder.display().to_string()], &CorpusOptions::default()).unwrap();
    assert_eq!(builtin.len(), 27);
    assert_eq!(builtin.iter().map(|d| &d.text).collect::<Vec<_>>(), files.iter().map(|d| &d.text).collect::<Vec<_>>());
    let _ = agop_bin();
}
