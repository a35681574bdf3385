//! No input may yield a wrong result with exit 0 (issue 16). Each numbered case of the issue is
//! reproduced and must now fail with exit 2 and a message naming the file, field, tensor or
//! value (or, where the input is legitimate, give the right result); then one test per class
//! (mismatched provenance, non-finite values, duplicated inputs, silent acceptance) runs more
//! members of the class than the issue listed.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Output;

use agop::tokenize::{write_tokens, TokensMeta, Window};
use agop::util::parquet::read_parquet;
use candle_core::{Device, Tensor};
use common::*;
use polars::prelude::*;

const TINY: &str = r#"{"model_type":"gpt2","n_layer":2,"n_head":3,"n_embd":24,"n_positions":32,"vocab_size":50}"#;

fn assert_ok(o: &Output) {
    assert!(o.status.success(), "expected success: {}", stderr(o));
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A random-init checkpoint of the tiny config.
fn init(dir: &Path, name: &str, seed: u64) -> PathBuf {
    init_checkpoint(dir, name, TINY, seed)
}

/// A copy of a checkpoint folder with tensors edited: `edit(name, tensor)` returns a
/// replacement, or `None` to keep it; `extra` tensors are added.
fn edited(src: &Path, dst: &Path, edit: impl Fn(&str, &Tensor) -> Option<Tensor>, extra: &[(&str, Tensor)]) -> PathBuf {
    std::fs::create_dir_all(dst).unwrap();
    std::fs::copy(src.join("config.json"), dst.join("config.json")).unwrap();
    let mut tensors: HashMap<String, Tensor> =
        candle_core::safetensors::load(src.join("model.safetensors"), &Device::Cpu).unwrap();
    for (name, t) in tensors.iter_mut() {
        if let Some(new) = edit(name, t) {
            *t = new;
        }
    }
    for (n, t) in extra {
        tensors.insert(n.to_string(), t.clone());
    }
    candle_core::safetensors::save(&tensors, dst.join("model.safetensors")).unwrap();
    dst.to_path_buf()
}

/// A copy of `t` with one entry set to `v`.
fn with_value(t: &Tensor, v: f32) -> Tensor {
    let mut data = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let mid = data.len() / 2;
    data[mid] = v;
    Tensor::from_vec(data, t.dims(), &Device::Cpu).unwrap()
}

/// A one-layer random checkpoint with the GPT-2 vocabulary (and tokenizer files), for tokenize.
fn gpt2_vocab_model(dir: &Path) -> PathBuf {
    let config = r#"{"model_type":"gpt2","n_layer":1,"n_head":1,"n_embd":8,"n_positions":64,"vocab_size":50257}"#;
    init_checkpoint(dir, "gpt2", config, 0)
}

fn windows(n: u64, t: usize) -> Vec<Window> {
    (0..n)
        .map(|i| Window { index: i, tokens: (0..t as u64).map(|j| ((i * 13 + j * 7 + i * j) % 50) as u32).collect() })
        .collect()
}

fn tokens_file(dir: &Path, n: u64) -> PathBuf {
    let p = dir.join(format!("tokens-{n}.parquet"));
    write_tokens(&p, &windows(n, 8), &TokensMeta::default()).unwrap();
    p
}

fn measure(model: &Path, tokens: &Path, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["measure", "--model", s(model), "--tokens", s(tokens), "--out", s(out)];
    args.extend_from_slice(extra);
    agop(&args)
}

/// A tokens.parquet from raw columns.
fn raw_tokens(path: &Path, window: Series, tokens: Series) {
    let mut df = DataFrame::new_infer_height(vec![window.into(), tokens.into()]).unwrap();
    let f = std::fs::File::create(path).unwrap();
    ParquetWriter::new(f).finish(&mut df).unwrap();
}

// ---- the numbered cases of the issue ----

#[test]
fn case1_correlate_refuses_other_weights_with_the_same_config() {
    let tmp = tempfile::tempdir().unwrap();
    let (m1, m2) = (init(tmp.path(), "m1", 1), init(tmp.path(), "m2", 2));
    let tokens = tokens_file(tmp.path(), 4);
    let gop = tmp.path().join("gop.safetensors");
    assert_ok(&measure(&m1, &tokens, &gop, &[]));
    let out = tmp.path().join("c.parquet");
    let o = agop(&["correlate", "--model", s(&m2), "--gop", s(&gop), "--out", s(&out)]);
    let sha1 = agop::util::sha256_file(&m1.join("model.safetensors")).unwrap();
    let sha2 = agop::util::sha256_file(&m2.join("model.safetensors")).unwrap();
    assert_bad(&o, &[&sha1, &sha2, "--force"]);
    assert!(!out.exists());
    assert_ok(&agop(&["correlate", "--model", s(&m2), "--gop", s(&gop), "--out", s(&out), "--force"]));
    assert_ok(&agop(&["correlate", "--model", s(&m1), "--gop", s(&gop), "--out", s(&out)]));
}

#[test]
fn case2_non_finite_weights_are_refused_at_load_naming_the_tensor() {
    let tmp = tempfile::tempdir().unwrap();
    let src = init(tmp.path(), "m", 1);
    let tokens = tokens_file(tmp.path(), 2);
    for (i, (tensor, v)) in
        [("h.0.mlp.c_fc.weight", f32::NAN), ("h.1.ln_1.weight", f32::NAN), ("wte.weight", f32::INFINITY)]
            .into_iter()
            .enumerate()
    {
        let m = edited(&src, &tmp.path().join(format!("bad{i}")), |n, t| (n == tensor).then(|| with_value(t, v)), &[]);
        let out = tmp.path().join(format!("g{i}.safetensors"));
        let o = measure(&m, &tokens, &out, &[]);
        assert_bad(&o, &[tensor, "non-finite", "model.safetensors"]);
        assert!(!out.exists());
    }
}

#[test]
fn case3_a_corpus_folder_linking_to_itself_is_read_once() {
    let tmp = tempfile::tempdir().unwrap();
    let m = gpt2_vocab_model(tmp.path());
    // base/corpus/{a.txt, b.txt → a.txt, loop → corpus, parent → base}; outputs outside base.
    let base = tmp.path().join("base");
    let corpus = base.join("corpus");
    std::fs::create_dir_all(&corpus).unwrap();
    std::fs::write(corpus.join("a.txt"), "To be, or not to be, that is the question.".repeat(20)).unwrap();
    let count = |name: &str| -> (u64, String) {
        let out = tmp.path().join(format!("{name}.parquet"));
        let o = agop(&["tokenize", "--model", s(&m), "--corpus", s(&corpus), "--seq-len", "8", "--out", s(&out)]);
        assert_ok(&o);
        (agop::tokenize::read_tokens(&out).unwrap().0.len() as u64, stderr(&o))
    };
    let (once, _) = count("plain");
    std::os::unix::fs::symlink(&corpus, corpus.join("loop")).unwrap();
    std::os::unix::fs::symlink(&base, corpus.join("parent")).unwrap();
    std::os::unix::fs::symlink(corpus.join("a.txt"), corpus.join("b.txt")).unwrap();
    let (with_links, err) = count("links");
    assert_eq!(with_links, once, "{err}");
    assert!(err.contains("link loop") && err.contains("read once"), "{err}");
}

#[test]
fn case4_correlate_refuses_a_gop_file_without_windows() {
    let tmp = tempfile::tempdir().unwrap();
    let m = init(tmp.path(), "m", 1);
    let tokens = tokens_file(tmp.path(), 6);
    let gop = tmp.path().join("empty.safetensors");
    assert_ok(&measure(&m, &tokens, &gop, &["--shard", "7/100"]));
    let out = tmp.path().join("c.parquet");
    assert_bad(
        &agop(&["correlate", "--model", s(&m), "--gop", s(&gop), "--out", s(&out)]),
        &["empty.safetensors", "no measured windows"],
    );
    assert!(!out.exists());
}

/// A module whose NFM is zero has no correlation: null with a note, never NaN.
#[test]
fn case4_an_undefined_correlation_is_null_with_a_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let src = init(tmp.path(), "m", 1);
    let m = edited(
        &src,
        &tmp.path().join("zero"),
        |n, t| (n == "h.0.mlp.c_proj.weight").then(|| t.zeros_like().unwrap()),
        &[],
    );
    let tokens = tokens_file(tmp.path(), 2);
    let gop = tmp.path().join("g.safetensors");
    assert_ok(&measure(&m, &tokens, &gop, &[]));
    let out = tmp.path().join("c.parquet");
    assert_ok(&agop(&["correlate", "--model", s(&m), "--gop", s(&gop), "--out", s(&out)]));
    let df = read_parquet(&out).unwrap();
    let (value, note, module, layer) = (
        df.column("value").unwrap().f64().unwrap(),
        df.column("note").unwrap().str().unwrap(),
        df.column("module").unwrap().str().unwrap(),
        df.column("layer").unwrap().u32().unwrap(),
    );
    // Layer 0's mlp.c_proj has a zero NFM, and its zero weight also zeroes the gradient reaching
    // mlp.c_fc of layer 0 (a zero AGOP): those rows are null with the reason; every other value
    // is a finite number; nothing is NaN.
    for i in 0..df.height() {
        let (md, l) = (module.get(i).unwrap(), layer.get(i).unwrap());
        match value.get(i) {
            Some(v) => {
                assert!(v.is_finite(), "row {i}: {v}");
                assert!(!(l == 0 && md == "mlp.c_proj"), "row {i} of the zero module has a value {v}");
                assert!(note.get(i).is_none());
            }
            None => {
                assert!(l == 0 && (md == "mlp.c_proj" || md == "mlp.c_fc"), "row {i} ({md}, layer {l}) is null");
                assert!(note.get(i).unwrap().contains("undefined"), "row {i}");
            }
        }
    }
    let zero_rows = (0..df.height())
        .filter(|&i| layer.get(i) == Some(0) && module.get(i) == Some("mlp.c_proj") && value.get(i).is_none())
        .count();
    assert_eq!(zero_rows, 4 + 3, "2 powers × 2 metrics, and subspace-1, -4 and -16 (a zero NFM has no eigenvectors)");
}

#[test]
fn case5_tokens_files_with_duplicate_huge_or_fractional_values_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let m = init(tmp.path(), "m", 1);
    let list = |rows: Vec<Series>| Series::new("tokens".into(), rows);
    let ids = |v: &[u32]| Series::new(PlSmallStr::EMPTY, v);
    let gop = tmp.path().join("g.safetensors");
    let cases: Vec<(&str, Series, Series, Vec<&str>)> = vec![
        (
            "dup",
            Series::new("window".into(), [0u64, 0, 1]),
            list(vec![ids(&[1, 2]), ids(&[3, 4]), ids(&[5, 6])]),
            vec!["rows 0 and 1", "window index 0"],
        ),
        (
            "huge",
            Series::new("window".into(), [0u64, u64::MAX]),
            list(vec![ids(&[1, 2]), ids(&[3, 4])]),
            vec!["row 1", "18446744073709551615", "2^63"],
        ),
        (
            "float",
            Series::new("window".into(), [0u64, 1]),
            list(vec![Series::new(PlSmallStr::EMPTY, [1.5f64, 2.0]), Series::new(PlSmallStr::EMPTY, [3.0f64, 4.0])]),
            vec!["`tokens`", "list of integers"],
        ),
        (
            "negative",
            Series::new("window".into(), [0u64, 1]),
            list(vec![Series::new(PlSmallStr::EMPTY, [1i64, -1]), Series::new(PlSmallStr::EMPTY, [3i64, 4])]),
            vec!["row 0", "token id -1", "position 1"],
        ),
        (
            "wide",
            Series::new("window".into(), [0u64, 1]),
            list(vec![Series::new(PlSmallStr::EMPTY, [1i64, 2]), Series::new(PlSmallStr::EMPTY, [1i64 << 33, 4])]),
            vec!["row 1", "token id 8589934592"],
        ),
        (
            "negative-window",
            Series::new("window".into(), [0i64, -3]),
            list(vec![ids(&[1, 2]), ids(&[3, 4])]),
            vec!["row 1", "window index -3"],
        ),
    ];
    for (name, window, tokens, want) in cases {
        let p = tmp.path().join(format!("{name}.parquet"));
        raw_tokens(&p, window, tokens);
        let mut want = want;
        want.push(p.file_name().unwrap().to_str().unwrap());
        assert_bad(&measure(&m, &p, &gop, &[]), &want);
        assert!(!gop.exists());
    }
}

#[test]
fn case6_merge_compares_weights_not_model_names() {
    let tmp = tempfile::tempdir().unwrap();
    let m = init(tmp.path(), "m", 1);
    let other = init(tmp.path(), "other", 2);
    let tokens = tokens_file(tmp.path(), 4);
    let (a, b, c) = (tmp.path().join("a.st"), tmp.path().join("b.st"), tmp.path().join("c.st"));
    // The same folder under two spellings.
    let dotted = format!("{}/./m", tmp.path().display());
    assert_ok(&measure(&m, &tokens, &a, &["--shard", "0/2"]));
    assert_ok(&measure(Path::new(&dotted), &tokens, &b, &["--shard", "1/2"]));
    let merged = tmp.path().join("merged.st");
    assert_ok(&agop(&["merge", s(&a), s(&b), "--out", s(&merged)]));
    // Different weights: the message says so, and lists nothing that is equal.
    assert_ok(&measure(&other, &tokens, &c, &["--shard", "1/2"]));
    let o = agop(&["merge", s(&a), s(&c), "--out", s(&tmp.path().join("x.st"))]);
    assert_bad(&o, &["weights sha256"]);
    for equal in ["seed", "probes", "output", "estimator", "tokens"] {
        assert!(!stderr(&o).contains(equal), "lists {equal}: {}", stderr(&o));
    }
}

#[test]
fn case7_smaller_inputs_that_were_accepted_or_misreported() {
    let tmp = tempfile::tempdir().unwrap();
    let m = init(tmp.path(), "m", 1);
    let tokens = tokens_file(tmp.path(), 2);
    let gop = tmp.path().join("g.safetensors");
    // --batch 0 on the command line and in a pipeline.
    assert_bad(&measure(&m, &tokens, &gop, &["--batch", "0"]), &["--batch"]);
    let pipeline = |name: &str, extra: &str| -> PathBuf {
        let p = tmp.path().join(format!("{name}.toml"));
        std::fs::write(
            &p,
            format!(
                "name = \"{name}\"\n[model]\nid = \"{}\"\n[corpus]\nsources = [\"x.txt\"]\nseq_len = 8\n{extra}",
                m.display()
            ),
        )
        .unwrap();
        p
    };
    let out = tmp.path().join("out");
    let o = agop(&["run", s(&pipeline("b0", "[measure]\nbatch = 0\n")), "--out", s(&out)]);
    assert_bad(&o, &["[measure] batch", "b0.toml"]);
    // Empty powers: refused when the file is read, naming the key, before any stage ran.
    let o = agop(&["run", s(&pipeline("p0", "[correlate]\npowers = []\n")), "--out", s(&out)]);
    assert_bad(&o, &["[correlate] powers", "p0.toml"]);
    assert!(!out.exists(), "a stage ran before the pipeline was refused");
    // A file given as --model.
    assert_bad(&measure(&m.join("config.json"), &tokens, &gop, &[]), &["config.json", "is a file"]);
    // report on a table of another schema.
    let dir = tmp.path().join("rep");
    std::fs::create_dir_all(&dir).unwrap();
    raw_tokens(
        &dir.join("correlations.parquet"),
        Series::new("window".into(), [0u64]),
        Series::new("tokens".into(), [1u32]),
    );
    assert_bad(&agop(&["report", s(&dir)]), &["correlations.parquet", "column"]);
    // max-tokens below one window blames max-tokens.
    let corpus = tmp.path().join("c.txt");
    std::fs::write(&corpus, "a b c d e f g h i j k l m n o p q r s t u v w x y z ".repeat(10)).unwrap();
    let gpt2 = gpt2_vocab_model(tmp.path());
    let o = agop(&[
        "tokenize",
        "--model",
        s(&gpt2),
        "--corpus",
        s(&corpus),
        "--seq-len",
        "8",
        "--max-tokens",
        "5",
        "--out",
        s(&tmp.path().join("t.parquet")),
    ]);
    assert_bad(&o, &["--max-tokens 5", "--seq-len 8"]);
    // An absurd config is refused before allocating.
    let absurd = tmp.path().join("absurd.json");
    std::fs::write(
        &absurd,
        r#"{"model_type":"gpt2","n_layer":2,"n_head":2,"n_embd":8,"n_positions":1000000000000,"vocab_size":50}"#,
    )
    .unwrap();
    let o = agop(&["init-model", "--config", s(&absurd), "--out", s(&tmp.path().join("absurd"))]);
    assert_bad(&o, &["n_positions 1000000000000", "limit"]);
    // A tensor of a layer the config does not have.
    let extra = Tensor::zeros((24, 72), candle_core::DType::F32, &Device::Cpu).unwrap();
    let big = edited(&m, &tmp.path().join("big"), |_, _| None, &[("h.2.attn.c_attn.weight", extra)]);
    assert_bad(&measure(&big, &tokens, &gop, &[]), &["h.2.attn.c_attn.weight", "not a parameter", "n_layer 2"]);
    // A sharded index pointing outside the model folder.
    let sharded = tmp.path().join("sharded");
    std::fs::create_dir_all(&sharded).unwrap();
    std::fs::copy(m.join("config.json"), sharded.join("config.json")).unwrap();
    std::fs::copy(m.join("model.safetensors"), tmp.path().join("outside.safetensors")).unwrap();
    std::fs::write(
        sharded.join("model.safetensors.index.json"),
        r#"{"metadata":{},"weight_map":{"wte.weight":"../outside.safetensors"}}"#,
    )
    .unwrap();
    assert_bad(&measure(&sharded, &tokens, &gop, &[]), &["weight_map", "../outside.safetensors"]);
}

// ---- the classes ----

/// Every consumer checks what its input was computed from: other weights, other tokens, other
/// settings, another config.
#[test]
fn class_mismatched_provenance() {
    let tmp = tempfile::tempdir().unwrap();
    let m = init(tmp.path(), "m", 1);
    let other = init(tmp.path(), "other", 2);
    let t4 = tokens_file(tmp.path(), 4);
    let t6 = tokens_file(tmp.path(), 6);
    let p = |n: &str| tmp.path().join(n);
    assert_ok(&measure(&m, &t4, &p("a"), &["--shard", "0/2"]));
    assert_ok(&measure(&m, &t6, &p("b-t6"), &["--shard", "1/2"]));
    assert_ok(&measure(&m, &t4, &p("b-loss"), &["--shard", "1/2", "--output", "loss"]));
    assert_ok(&measure(&m, &t4, &p("b-p2"), &["--shard", "1/2", "--probes", "2"]));
    for (part, want) in [("b-t6", "tokens sha256"), ("b-loss", "output loss vs logits"), ("b-p2", "probes 2 vs 1")] {
        assert_bad(&agop(&["merge", s(&p("a")), s(&p(part)), "--out", s(&p("x"))]), &[want]);
    }
    // correlate against another checkpoint and against another config.
    assert_bad(&agop(&["correlate", "--model", s(&other), "--gop", s(&p("a")), "--out", s(&p("c"))]), &["sha256"]);
    init_checkpoint(tmp.path(), "one-layer", &TINY.replace("\"n_layer\":2", "\"n_layer\":1"), 1);
    assert_bad(
        &agop(&["correlate", "--model", s(&p("one-layer")), "--gop", s(&p("a")), "--out", s(&p("c"))]),
        &["config"],
    );
    // A checkpoint of another command is not resumed.
    std::fs::copy(p("a"), p("d.partial")).unwrap();
    assert_bad(&measure(&m, &t4, &p("d"), &["--seed", "3"]), &["different measure command"]);
}

/// Non-finite values are refused where they enter: any weight tensor, a GOP file, sums that
/// overflow while measuring.
#[test]
fn class_non_finite_values() {
    let tmp = tempfile::tempdir().unwrap();
    let src = init(tmp.path(), "m", 1);
    let tokens = tokens_file(tmp.path(), 4);
    let p = |n: &str| tmp.path().join(n);
    for (i, tensor) in ["wpe.weight", "ln_f.bias", "h.1.attn.c_proj.bias", "h.0.attn.c_attn.weight"].iter().enumerate()
    {
        let m =
            edited(&src, &p(&format!("w{i}")), |n, t| (n == *tensor).then(|| with_value(t, f32::NEG_INFINITY)), &[]);
        assert_bad(&measure(&m, &tokens, &p("g"), &[]), &[tensor]);
    }
    // Finite weights whose gradients overflow f32: the sums are refused before being written.
    let huge = edited(&src, &p("huge"), |n, t| (n == "ln_f.weight").then(|| (t * 1e25).unwrap()), &[]);
    let o = measure(&huge, &tokens, &p("g-huge"), &[]);
    assert_bad(&o, &["NaN or infinite", "windows 0..4"]);
    assert!(!p("g-huge").exists());
    // A GOP file holding a NaN is refused by merge and correlate, naming the tensor.
    assert_ok(&measure(&src, &tokens, &p("good"), &[]));
    let mut g = agop::measure::Gop::load(&p("good")).unwrap();
    let name = g.sums.keys().next().unwrap().clone();
    g.sums.get_mut(&name).unwrap().1[3] = f64::NAN;
    g.save(&p("nan")).unwrap();
    assert_bad(&agop(&["merge", s(&p("nan")), "--out", s(&p("x"))]), &["nan", &name]);
    assert_bad(&agop(&["correlate", "--model", s(&src), "--gop", s(&p("nan")), "--out", s(&p("c"))]), &[&name]);
}

/// The same input twice is counted once or refused: windows, corpus files, shards.
#[test]
fn class_duplicated_inputs() {
    let tmp = tempfile::tempdir().unwrap();
    let m = init(tmp.path(), "m", 1);
    let p = |n: &str| tmp.path().join(n);
    // The same window index in two rows, not adjacent.
    raw_tokens(
        &p("dup.parquet"),
        Series::new("window".into(), [5u64, 1, 2, 5]),
        Series::new("tokens".into(), (0..4).map(|_| Series::new(PlSmallStr::EMPTY, [1u32, 2])).collect::<Vec<_>>()),
    );
    assert_bad(&measure(&m, &p("dup.parquet"), &p("g"), &[]), &["rows 0 and 3", "window index 5"]);
    // A corpus file listed twice, and once more through a link, is read once.
    let gpt2 = gpt2_vocab_model(tmp.path());
    std::fs::write(p("a.txt"), "One two three four five six seven eight nine ten. ".repeat(10)).unwrap();
    std::os::unix::fs::symlink(p("a.txt"), p("link.txt")).unwrap();
    let n = |sources: &[&Path], out: &str| -> usize {
        let mut args = vec!["tokenize", "--model", s(&gpt2), "--seq-len", "8", "--out"];
        let out = p(out);
        args.push(s(&out));
        args.push("--corpus");
        args.extend(sources.iter().map(|x| s(x)));
        assert_ok(&agop(&args));
        agop::tokenize::read_tokens(&out).unwrap().0.len()
    };
    let once = n(&[&p("a.txt")], "t1.parquet");
    assert_eq!(n(&[&p("a.txt"), &p("a.txt"), &p("link.txt")], "t3.parquet"), once);
    // The same shard merged twice overlaps.
    let t = tokens_file(tmp.path(), 4);
    assert_ok(&measure(&m, &t, &p("s0"), &["--shard", "0/2"]));
    assert_bad(&agop(&["merge", s(&p("s0")), s(&p("s0")), "--out", s(&p("x"))]), &["overlap"]);
}

/// Settings that cannot be meant are refused, naming the flag or key.
#[test]
fn class_silent_acceptance() {
    let tmp = tempfile::tempdir().unwrap();
    let m = init(tmp.path(), "m", 1);
    let tokens = tokens_file(tmp.path(), 2);
    let g = tmp.path().join("g");
    for (args, want) in [
        (vec!["--batch", "0"], "--batch"),
        (vec!["--probes", "0"], "--probes"),
        (vec!["--shard", "2/2"], "shard"),
        (vec!["--shard", "0/0"], "shard"),
    ] {
        assert_bad(&measure(&m, &tokens, &g, &args), &[want]);
    }
    let out = tmp.path().join("c");
    for powers in ["0", "-1", "nan"] {
        assert_ok(&measure(&m, &tokens, &g, &[]));
        let o = agop(&["correlate", "--model", s(&m), "--gop", s(&g), "--out", s(&out), "--powers", powers]);
        assert_eq!(o.status.code(), Some(2), "--powers {powers}: {}", stderr(&o));
    }
    // Pipeline keys, each refused when the file is read.
    for (extra, want) in [
        ("[measure]\nprobes = 0\n", "[measure] probes"),
        ("[measure]\nweights = []\n", "[measure] weights"),
        ("[correlate]\npowers = [0.5, -1.0]\n", "[correlate] powers"),
    ] {
        let p = tmp.path().join("p.toml");
        std::fs::write(
            &p,
            format!(
                "name = \"p\"\n[model]\nid = \"{}\"\n[corpus]\nsources = [\"x.txt\"]\nseq_len = 8\n{extra}",
                m.display()
            ),
        )
        .unwrap();
        assert_bad(&agop(&["run", s(&p), "--out", s(&tmp.path().join("o"))]), &[want]);
    }
}
