//! Bad corpus and settings input: each gives a clear message naming the file or field, exit 2,
//! and no output file.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::*;

fn model(dir: &Path) -> std::path::PathBuf {
    let config = r#"{"model_type":"gpt2","n_layer":1,"n_head":2,"n_embd":8,"n_positions":32,"vocab_size":50257}"#;
    init_checkpoint(dir, "model", config, 0)
}

fn tokenize(model: &Path, corpus: &[&Path], seq_len: &str, extra: &[&str], out: &Path) -> Output {
    let mut c = Command::new(agop_bin());
    c.args(["tokenize", "--model"]).arg(model).arg("--corpus");
    for s in corpus {
        c.arg(s);
    }
    c.args(["--seq-len", seq_len]).args(extra).arg("--out").arg(out);
    c.output().unwrap()
}

fn fails_with(o: &Output, out: &Path, needles: &[&str]) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    for n in needles {
        assert!(err.contains(n), "missing {n:?} in: {err}");
    }
    assert!(!err.contains("panicked"), "{err}");
    assert!(!out.exists(), "{} written despite the error", out.display());
}

#[test]
fn non_utf8_is_reported_with_offset_or_skipped_with_count() {
    let tmp = tempfile::tempdir().unwrap();
    let m = model(tmp.path());
    let bad = tmp.path().join("bad.txt");
    let mut bytes = b"Hello world, this is fine until here: ".to_vec();
    let offset = bytes.len();
    bytes.extend([0xff, 0xfe]);
    bytes.extend(b" and more");
    std::fs::write(&bad, &bytes).unwrap();
    let good = tmp.path().join("good.txt");
    std::fs::write(&good, "To be, or not to be, that is the question: ".repeat(10)).unwrap();
    let out = tmp.path().join("tokens.parquet");
    let o = tokenize(&m, &[&bad, &good], "8", &[], &out);
    fails_with(&o, &out, &["bad.txt", &format!("byte offset {offset}"), "invalid UTF-8"]);

    let o = tokenize(&m, &[&bad, &good], "8", &["--skip-invalid-utf8"], &out);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("skipped 1 documents"), "{err}");
}

#[test]
fn empty_corpus_and_too_short_corpus() {
    let tmp = tempfile::tempdir().unwrap();
    let m = model(tmp.path());
    let empty = tmp.path().join("empty.txt");
    std::fs::write(&empty, "").unwrap();
    let out = tmp.path().join("tokens.parquet");
    fails_with(&tokenize(&m, &[&empty], "8", &[], &out), &out, &["empty.txt", "is empty"]);
    let short = tmp.path().join("short.txt");
    std::fs::write(&short, "Hello world").unwrap();
    fails_with(&tokenize(&m, &[&short], "8", &[], &out), &out, &["short.txt", "shorter than one window"]);
}

#[test]
fn seq_len_above_n_positions() {
    let tmp = tempfile::tempdir().unwrap();
    let m = model(tmp.path());
    let f = tmp.path().join("a.txt");
    std::fs::write(&f, "word ".repeat(200)).unwrap();
    let out = tmp.path().join("tokens.parquet");
    fails_with(&tokenize(&m, &[&f], "64", &[], &out), &out, &["--seq-len 64", "n_positions 32"]);
}

#[test]
fn parquet_without_the_named_column() {
    use polars::prelude::*;
    let tmp = tempfile::tempdir().unwrap();
    let m = model(tmp.path());
    let pq = tmp.path().join("docs.parquet");
    let mut df =
        DataFrame::new_infer_height(vec![Series::new("body".into(), ["some text"; 20].to_vec()).into()]).unwrap();
    ParquetWriter::new(std::fs::File::create(&pq).unwrap()).finish(&mut df).unwrap();
    let out = tmp.path().join("tokens.parquet");
    fails_with(&tokenize(&m, &[&pq], "4", &[], &out), &out, &["docs.parquet", "no column `text`", "body"]);
    // With the right column it works: 20 × ("some text" = 2 tokens + EOS) = 60 tokens → 15 windows of 4.
    let o = tokenize(&m, &[&pq], "4", &["--text-column", "body"], &out);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (w, _) = agop::tokenize::read_tokens(&out).unwrap();
    assert_eq!(w.len(), 15);
}

#[test]
fn missing_corpus_file_and_bad_pipeline_field() {
    let tmp = tempfile::tempdir().unwrap();
    let m = model(tmp.path());
    let out = tmp.path().join("tokens.parquet");
    let missing = tmp.path().join("nope.txt");
    fails_with(&tokenize(&m, &[&missing], "4", &[], &out), &out, &["nope.txt", "no such file"]);

    let p = tmp.path().join("p.toml");
    std::fs::write(
        &p,
        "name = \"x\"\n[model]\nid = \"m\"\n[corpus]\nsources = [\"a.txt\"]\nseq_len = 8\n[measure]\nprobez = 3\n",
    )
    .unwrap();
    let o = Command::new(agop_bin()).arg("run").arg(&p).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("p.toml") && err.contains("probez"), "{err}");
}
