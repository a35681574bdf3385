//! The hostile inputs of the newcomer round (issue 24): each ends in a correct result or exit 2
//! naming the file, field or tensor, with nothing of the user's deleted and nothing partial left.
//! Items are numbered as in the issue.

mod common;

use std::path::{Path, PathBuf};

use agop::fetch::ResolvedModel;
use agop::model::{self, WeightsKind};
use common::*;

/// A load error that is bad input (exit 2) and names every `want`.
fn assert_bad_load(dir: &Path, want: &[&str]) {
    let e = model::load_dir(dir, WeightsKind::Pretrained, 0).expect_err("the checkpoint loaded");
    let msg = format!("{e:#}");
    assert!(agop::error::is_bad_input(&e), "not bad input: {msg}");
    for w in want {
        assert!(msg.contains(w), "message lacks {w:?}: {msg}");
    }
}

fn symlink(target: &Path, link: &Path) {
    std::fs::create_dir_all(link.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(target, link).unwrap();
}

/// Item 1: evicting a later checkpoint never deletes a blob or snapshot another kept checkpoint
/// uses. A hub-cache layout by hand: c1 (the kept first checkpoint), c2 sharing c1's weights blob,
/// c3 with a blob of its own, c4 sharing c3's blob.
#[test]
fn eviction_never_deletes_what_another_checkpoint_uses() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("hub");
    let repo = cache.join("models--o--n");
    let blobs = repo.join("blobs");
    std::fs::create_dir_all(&blobs).unwrap();
    for (name, bytes) in [("A", vec![1u8; 100]), ("B", vec![2u8; 300]), ("cfg", b"{}".to_vec())] {
        std::fs::write(blobs.join(name), bytes).unwrap();
    }
    let snap = |c: &str, blob: &str| -> ResolvedModel {
        let dir = repo.join("snapshots").join(c);
        symlink(&blobs.join(blob), &dir.join("model.safetensors"));
        symlink(&blobs.join("cfg"), &dir.join("config.json"));
        ResolvedModel::new("o/n".into(), c.into(), dir)
    };
    let (c1, c2, c3, c4) = (snap("c1", "A"), snap("c2", "A"), snap("c3", "B"), snap("c4", "B"));
    let evict = |m: &ResolvedModel| agop::fetch::hub::evict_weights_in(&cache, m, &c1).unwrap();
    // A later revision at the first checkpoint's commit (e.g. `main`): nothing is deleted.
    let same = ResolvedModel::new("o/n".into(), "main".into(), c1.dir.clone());
    assert_eq!(evict(&same), 0);
    assert!(c1.dir.join("model.safetensors").is_file());
    // Sharing the first checkpoint's blob: only c2's link goes.
    assert_eq!(evict(&c2), 0);
    assert!(!c2.dir.join("model.safetensors").exists());
    assert_eq!(std::fs::read(c1.dir.join("model.safetensors")).unwrap(), vec![1u8; 100]);
    // Sharing a blob with a checkpoint not yet measured: the blob stays for it.
    assert_eq!(evict(&c3), 0);
    assert_eq!(std::fs::read(c4.dir.join("model.safetensors")).unwrap(), vec![2u8; 300]);
    // The last user of a blob: link and blob go; config stays.
    assert_eq!(evict(&c4), 300);
    assert!(!blobs.join("B").exists() && blobs.join("A").exists());
    assert!(c4.dir.join("config.json").is_file());
    // Outside the cache: refused, nothing deleted.
    let local = ResolvedModel::new("x".into(), "local".into(), fixture_model());
    assert!(agop::fetch::hub::evict_weights_in(&cache, &local, &c1).is_err());
    assert!(fixture_model().join("model.safetensors").is_file());
}

/// The fixture's tensors (names without prefix) as F32.
fn fixture_tensors() -> Vec<(String, Vec<usize>, Vec<f32>)> {
    torch_bin::read_safetensors_f32(&fixture_model().join("model.safetensors"))
        .into_iter()
        .map(|(n, s, v)| (n.strip_prefix("transformer.").unwrap_or(&n).to_string(), s, v))
        .collect()
}

fn checkpoint_with(dir: &Path, config: &str, tensors: &[(String, Vec<usize>, Vec<f32>)]) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("config.json"), config).unwrap();
    torch_bin::write_pytorch_bin(&dir.join("pytorch_model.bin"), tensors);
    dir.to_path_buf()
}

fn fixture_config() -> String {
    std::fs::read_to_string(fixture_model().join("config.json")).unwrap()
}

/// Item 3: one parameter under two names (`wte.weight` and `transformer.wte.weight`) or in two
/// shards is refused, naming both, instead of one being picked at random.
#[test]
fn a_parameter_stored_twice_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let mut t = fixture_tensors();
    let (_, shape, values) = t.iter().find(|(n, _, _)| n == "wte.weight").cloned().unwrap();
    t.push(("transformer.wte.weight".into(), shape, values.iter().map(|v| v + 1.0).collect()));
    let dir = checkpoint_with(&tmp.path().join("twice"), &fixture_config(), &t);
    assert_bad_load(&dir, &["wte.weight is stored twice", "transformer.wte.weight", "pytorch_model.bin"]);

    // Across the shards of an index: the same name in two shard files.
    let sharded = tmp.path().join("sharded");
    std::fs::create_dir_all(&sharded).unwrap();
    std::fs::write(sharded.join("config.json"), fixture_config()).unwrap();
    let t = fixture_tensors();
    let ln_f = t.iter().find(|(n, _, _)| n == "ln_f.weight").cloned().unwrap();
    torch_bin::write_pytorch_bin(&sharded.join("part-1.bin"), &t);
    torch_bin::write_pytorch_bin(&sharded.join("part-2.bin"), &[ln_f]);
    let index = serde_json::json!({"weight_map": {"wte.weight": "part-1.bin", "ln_f.weight": "part-2.bin"}});
    std::fs::write(sharded.join("pytorch_model.bin.index.json"), index.to_string()).unwrap();
    assert_bad_load(&sharded, &["ln_f.weight is stored twice", "part-1.bin", "part-2.bin"]);
}

/// Item 2: `tie_word_embeddings: false` without an `lm_head.weight` is refused (transformers would
/// draw a random head); with one, it is the unembedding (tests/fact.rs checks the numbers).
#[test]
fn an_untied_config_needs_its_head() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = fixture_config().replace("\"tie_word_embeddings\": true", "\"tie_word_embeddings\": false");
    assert!(cfg.contains("\"tie_word_embeddings\": false"));
    let dir = checkpoint_with(&tmp.path().join("nohead"), &cfg, &fixture_tensors());
    assert_bad_load(&dir, &["lm_head.weight is missing"]);
    let mut t = fixture_tensors();
    let (_, shape, values) = t.iter().find(|(n, _, _)| n == "wte.weight").cloned().unwrap();
    t.push(("lm_head.weight".into(), shape, values.iter().map(|v| -v).collect()));
    let dir = checkpoint_with(&tmp.path().join("head"), &cfg, &t);
    let m = model::load_dir(&dir, WeightsKind::Pretrained, 0).unwrap();
    let head = m.unembedding_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(head, values.iter().map(|v| -v).collect::<Vec<_>>());
    // Tied (the default), a stored lm_head.weight is ignored as transformers ignores it.
    let dir = checkpoint_with(&tmp.path().join("tied"), &fixture_config(), &t);
    let m = model::load_dir(&dir, WeightsKind::Pretrained, 0).unwrap();
    assert_eq!(m.unembedding_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap(), values);
}

/// `n` windows of 8 fixture-vocabulary tokens.
fn tokens_file(dir: &Path, n: u64) -> PathBuf {
    let p = dir.join("tokens.parquet");
    let windows: Vec<agop::tokenize::Window> = (0..n)
        .map(|i| agop::tokenize::Window { index: i, tokens: (0..8).map(|j| ((i * 7 + j * 3) % 50) as u32).collect() })
        .collect();
    agop::tokenize::write_tokens(&p, &windows, &Default::default()).unwrap();
    p
}

/// A copy of the fixture model in `dir/model` (so that a test can check it is left intact).
fn model_copy(dir: &Path) -> PathBuf {
    let m = dir.join("model");
    std::fs::create_dir_all(&m).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture_model().join(f), m.join(f)).unwrap();
    }
    m
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Item 4: an output that is an input (or would replace a model) is refused before any work,
/// and the input is left as it was.
#[test]
fn outputs_never_replace_inputs() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, tokens) = (model_copy(tmp.path()), tokens_file(tmp.path(), 12));
    let weights = model.join("model.safetensors");
    let intact =
        [(tokens.clone(), std::fs::read(&tokens).unwrap()), (weights.clone(), std::fs::read(&weights).unwrap())];
    let measure = |out: &Path, extra: &[&str]| {
        let mut a = vec!["measure", "--model", s(&model), "--tokens", s(&tokens), "--out", s(out)];
        a.extend(extra);
        agop(&a)
    };
    assert_bad(&measure(&tokens, &[]), &["--out", "also an input", "tokens.parquet"]);
    assert_bad(&measure(&weights, &[]), &["--out", "also an input", "model.safetensors"]);
    // A weights name the loader would read first, absent today (a .bin model): also refused.
    assert_bad(&measure(&model.join("pytorch_model.bin"), &[]), &["also an input"]);
    let gop = tmp.path().join("gop.safetensors");
    let o = measure(&gop, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let gop2 = tmp.path().join("gop2.safetensors");
    assert!(measure(&gop2, &["--weights", "random-init"]).status.success());
    let gop_bytes = std::fs::read(&gop).unwrap();
    let corr = tmp.path().join("c.parquet");
    let correlate = |extra: &[&str]| {
        let mut a = vec!["correlate", "--model", s(&model), "--gop", s(&gop), "--gop", s(&gop2), "--out", s(&corr)];
        a.extend(extra);
        agop(&a)
    };
    assert_bad(&correlate(&["--agop-out", s(&corr)]), &["--agop-out", "also an input"]);
    assert_bad(&correlate(&["--agop-out", s(&gop)]), &["--agop-out", "also an input"]);
    let o = agop(&["correlate", "--model", s(&model), "--gop", s(&gop), "--out", s(&gop)]);
    assert_bad(&o, &["--out", "also an input"]);
    assert_eq!(std::fs::read(&gop).unwrap(), gop_bytes);
    // merge --out one of its parts (two shards of one measurement).
    let (p0, p1) = (tmp.path().join("p0.safetensors"), tmp.path().join("p1.safetensors"));
    assert!(measure(&p0, &["--shard", "0/2"]).status.success());
    assert!(measure(&p1, &["--shard", "1/2"]).status.success());
    let p0_bytes = std::fs::read(&p0).unwrap();
    assert_bad(&agop(&["merge", s(&p0), s(&p1), "--out", s(&p0)]), &["--out", "also an input"]);
    assert_eq!(std::fs::read(&p0).unwrap(), p0_bytes);
    // tokenize --out a corpus file, or into a corpus folder.
    let corpus = tmp.path().join("corpus");
    std::fs::create_dir_all(&corpus).unwrap();
    let text = corpus.join("a.txt");
    std::fs::write(&text, "To be, or not to be.").unwrap();
    // The fixture has no tokenizer: a GPT-2-vocabulary model.
    let gpt2 = init_checkpoint(
        tmp.path(),
        "g",
        r#"{"model_type":"gpt2","n_layer":1,"n_head":1,"n_embd":4,"n_positions":16,"vocab_size":50257}"#,
        0,
    );
    for (src, out) in [(&text, &text), (&corpus, &corpus.join("t.parquet"))] {
        let o = agop(&["tokenize", "--model", s(&gpt2), "--corpus", s(src), "--seq-len", "2", "--out", s(out)]);
        assert_bad(&o, &["--out"]);
    }
    assert_eq!(std::fs::read_to_string(&text).unwrap(), "To be, or not to be.");
    assert!(!corpus.join("t.parquet").exists());
    // init-model --out an existing model folder.
    let o = agop(&["init-model", "--config", s(&model.join("config.json")), "--out", s(&model)]);
    assert_bad(&o, &["already holds a model"]);
    for (p, bytes) in &intact {
        assert_eq!(&std::fs::read(p).unwrap(), bytes, "{} changed", p.display());
    }
}

/// Items 8 and 9: group folders follow the whole file name; an output that cannot be written is
/// refused before measuring, naming the path.
#[test]
fn group_folders_and_unwritable_outputs() {
    let tmp = tempfile::tempdir().unwrap();
    let tokens = tokens_file(tmp.path(), 12);
    let m = fixture_model();
    let measure = |out: &Path, w: &str| {
        agop(&["measure", "--model", s(&m), "--tokens", s(&tokens), "--out", s(out), "--groups", "2", "--weights", w])
    };
    let (a, b) = (tmp.path().join("run.pretrained"), tmp.path().join("run.random"));
    assert!(measure(&a, "pretrained").status.success());
    assert!(measure(&b, "random-init").status.success());
    for p in [&a, &b] {
        let dir = agop::measure::groups::groups_dir(p);
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 2, "{}", dir.display());
    }
    let corr = tmp.path().join("c.parquet");
    let o = agop(&["correlate", "--model", s(&m), "--gop", s(&a), "--gop", s(&b), "--out", s(&corr)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let x = tmp.path().join("x.groups");
    let o = measure(&x, "pretrained");
    assert!(o.status.success() && x.is_file(), "{}", stderr(&o));
    // A folder, `.`, and a folder that cannot be written.
    for out in [tmp.path().to_path_buf(), PathBuf::from(".")] {
        assert_bad(&measure(&out, "pretrained"), &["is a folder"]);
    }
    let ro = tmp.path().join("ro");
    std::fs::create_dir_all(&ro).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).unwrap();
    if std::fs::write(ro.join("probe"), b"").is_err() {
        let o = measure(&ro.join("g.safetensors"), "pretrained");
        assert_bad(&o, &["not writable", "ro"]);
    } else {
        eprintln!("running as root: the read-only folder case is not testable here");
    }
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Items 6, 12, 13 (the `.bin` half): crafted pickles end in exit 2, not a panic or a stack
/// overflow; a transposed (Fortran-order) tensor is read right; two `data.pkl` or a big-endian
/// archive are refused.
#[test]
fn crafted_pytorch_archives() {
    use torch_bin::{global, int, op, state_dict_pickle, text, write_archive};
    let tmp = tempfile::tempdir().unwrap();
    let cfg = fixture_config();
    let t = fixture_tensors();
    let folder = |name: &str| {
        let d = tmp.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("config.json"), &cfg).unwrap();
        d
    };
    let entries = |t: &[(String, Vec<usize>, Vec<f32>)]| -> Vec<(String, Vec<usize>, Vec<usize>, usize)> {
        t.iter()
            .map(|(n, sh, v)| {
                (n.clone(), sh.clone(), (0..sh.len()).map(|i| sh[i + 1..].iter().product()).collect(), v.len())
            })
            .collect()
    };
    let storages = |t: &[(String, Vec<usize>, Vec<f32>)]| -> Vec<Vec<f32>> { t.iter().map(|x| x.2.clone()).collect() };

    // A Fortran-order wte: storage holds wteᵀ, strides (1, V).
    let mut e = entries(&t);
    let mut st = storages(&t);
    let i = t.iter().position(|x| x.0 == "wte.weight").unwrap();
    let (v, c) = (t[i].1[0], t[i].1[1]);
    st[i] = (0..c).flat_map(|j| (0..v).map(move |r| (r, j))).map(|(r, j)| t[i].2[r * c + j]).collect();
    e[i].2 = vec![1, v];
    let d = folder("fortran");
    let refs: Vec<&[f32]> = st.iter().map(|x| x.as_slice()).collect();
    write_archive(&d.join("pytorch_model.bin"), &state_dict_pickle(&e), &refs, &[]);
    let m = model::load_dir(&d, WeightsKind::Pretrained, 0).unwrap();
    assert_eq!(m.params.wte.flatten_all().unwrap().to_vec1::<f32>().unwrap(), t[i].2);

    // Two data.pkl; byteorder big (little is fine).
    let plain = entries(&t);
    let st = storages(&t);
    let refs: Vec<&[f32]> = st.iter().map(|x| x.as_slice()).collect();
    let pkl = state_dict_pickle(&plain);
    let d = folder("two-pickles");
    write_archive(&d.join("pytorch_model.bin"), &pkl, &refs, &[("other/data.pkl", &pkl)]);
    assert_bad_load(&d, &["2 data.pkl entries", "pytorch_model.bin"]);
    let d = folder("big");
    write_archive(&d.join("pytorch_model.bin"), &pkl, &refs, &[("archive/byteorder", b"big")]);
    assert_bad_load(&d, &["byteorder", "big"]);
    let d = folder("little");
    write_archive(&d.join("pytorch_model.bin"), &pkl, &refs, &[("archive/byteorder", b"little")]);
    assert!(model::load_dir(&d, WeightsKind::Pretrained, 0).is_ok());

    // A short argument tuple for _rebuild_tensor_v2, and a persistent id that is not a tuple.
    let crafted = |body: &dyn Fn(&mut Vec<u8>)| {
        let mut p = vec![op::PROTO, 2];
        global(&mut p, "collections", "OrderedDict");
        p.extend([op::EMPTY_TUPLE, op::REDUCE, op::MARK]);
        text(&mut p, "wte.weight");
        body(&mut p);
        p.extend([op::SETITEMS, op::STOP]);
        p
    };
    let short = crafted(&|p| {
        global(p, "torch._utils", "_rebuild_tensor_v2");
        p.push(op::MARK);
        int(p, 0);
        p.extend([op::TUPLE, op::REDUCE]);
    });
    let persid = crafted(&|p| {
        global(p, "torch._utils", "_rebuild_tensor_v2");
        p.push(op::MARK);
        text(p, "storage");
        p.push(op::BINPERSID);
        int(p, 0);
        p.extend([op::TUPLE, op::REDUCE]);
    });
    // Nested 200,000 lists deep (400 KB): EMPTY_LIST × N, APPEND × (N − 1).
    let n = 200_000;
    let mut nested = vec![op::PROTO, 2];
    nested.extend(std::iter::repeat_n(b']', n));
    nested.extend(std::iter::repeat_n(b'a', n - 1));
    nested.push(op::STOP);
    for (name, pkl) in [("short", short), ("persid", persid), ("nested", nested)] {
        let d = folder(name);
        write_archive(&d.join("pytorch_model.bin"), &pkl, &[], &[]);
        let tokens = tokens_file(&d, 2);
        let o = agop(&["measure", "--model", s(&d), "--tokens", s(&tokens), "--out", s(&d.join("g.safetensors"))]);
        assert_bad(&o, &["pytorch_model.bin"]);
    }
}

/// Item 13 (the GOP half): a total that is not the sum of its group files is refused by
/// correlate, naming the file and module.
#[test]
fn a_total_that_is_not_the_sum_of_its_groups_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let tokens = tokens_file(tmp.path(), 12);
    let m = fixture_model();
    let gop = tmp.path().join("g.safetensors");
    let o = agop(&["measure", "--model", s(&m), "--tokens", s(&tokens), "--out", s(&gop), "--groups", "3"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let corr = tmp.path().join("c.parquet");
    let correlate = || agop(&["correlate", "--model", s(&m), "--gop", s(&gop), "--out", s(&corr)]);
    let o = correlate();
    assert!(o.status.success(), "{}", stderr(&o));
    let mut g = agop::measure::Gop::load(&gop).unwrap();
    let (name, (_, values)) = g.sums.iter_mut().next().unwrap();
    let name = name.clone();
    values.iter_mut().for_each(|v| *v *= 1.5);
    g.save(&gop).unwrap();
    let o = correlate();
    assert_bad(&o, &["is not the sum of its group files", "g.safetensors"]);
    let _ = name;
}

/// Item 10: two measurements of one weights setting are refused by correlate (they would give
/// duplicate keys); parts that do not cover the tokens file's windows are warned about.
#[test]
fn mixed_runs_are_refused_and_partial_coverage_is_said() {
    let tmp = tempfile::tempdir().unwrap();
    let tokens = tokens_file(tmp.path(), 12);
    let m = fixture_model();
    let measure = |out: &Path, extra: &[&str]| {
        let mut a = vec!["measure", "--model", s(&m), "--tokens", s(&tokens), "--out", s(out)];
        a.extend(extra);
        let o = agop(&a);
        assert!(o.status.success(), "{}", stderr(&o));
    };
    let (plain, fact, seeded) =
        (tmp.path().join("a.safetensors"), tmp.path().join("b.safetensors"), tmp.path().join("c.safetensors"));
    measure(&plain, &[]);
    measure(&fact, &["--fact"]);
    measure(&seeded, &["--seed", "7"]);
    let corr = tmp.path().join("c.parquet");
    for other in [&fact, &seeded] {
        let o = agop(&["correlate", "--model", s(&m), "--gop", s(&plain), "--gop", s(other), "--out", s(&corr)]);
        assert_bad(&o, &["two different pretrained measurements"]);
        assert!(!corr.exists());
    }
    let shards: Vec<PathBuf> = (0..3).map(|i| tmp.path().join(format!("s{i}.safetensors"))).collect();
    for (i, p) in shards.iter().enumerate() {
        measure(p, &["--shard", &format!("{i}/3")]);
    }
    let o = agop(&["correlate", "--model", s(&m), "--gop", s(&shards[0]), "--gop", s(&shards[1]), "--out", s(&corr)]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("cover 8 of the 12 windows"), "{}", stderr(&o));
}

/// Item 5: a series whose checkpoints differ in architecture is refused before anything is
/// measured; so are decreasing steps.
#[test]
fn a_series_is_checked_before_measuring() {
    let tmp = tempfile::tempdir().unwrap();
    let series = tmp.path().join("series");
    let cfg = |layers: u32| {
        format!(
            r#"{{"model_type":"gpt2","n_layer":{layers},"n_head":2,"n_embd":8,"n_positions":64,"vocab_size":50257}}"#
        )
    };
    std::fs::create_dir_all(&series).unwrap();
    init_checkpoint(&series, "checkpoint-0", &cfg(1), 0);
    init_checkpoint(&series, "checkpoint-10", &cfg(2), 1);
    for f in std::fs::read_dir(&series).unwrap().flatten() {
        if f.path().is_file() {
            std::fs::remove_file(f.path()).unwrap(); // the helper's config copies
        }
    }
    let corpus = tmp.path().join("c.txt");
    std::fs::write(&corpus, "To be, or not to be, that is the question. ".repeat(20)).unwrap();
    let p = tmp.path().join("p.toml");
    std::fs::write(
        &p,
        format!(
            "name = \"p\"\n[model]\nid = \"{}\"\n[corpus]\nsources = [\"{}\"]\nseq_len = 8\n",
            s(&series),
            s(&corpus)
        ),
    )
    .unwrap();
    let out = tmp.path().join("out");
    let o = agop(&["run", s(&p), "--out", s(&out)]);
    assert_bad(&o, &["checkpoint-10", "another config"]);
    assert!(!out.exists(), "something was made before the series was checked");
}

/// Also: two concurrent measures into one `--out` would interleave their group files; the
/// second is refused while the first runs (exit 2, naming the lock), and a killed first run
/// leaves no lock that blocks the next (the OS releases it with the process).
#[test]
fn also_a_second_measure_into_the_same_out_is_refused_while_the_first_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, tokens) = slow_measure_inputs(tmp.path());
    let gop = tmp.path().join("gop.safetensors");
    let args = ["measure", "--model", model.to_str().unwrap(), "--tokens", tokens.to_str().unwrap()];
    let mut first = std::process::Command::new(agop_bin())
        .args(args)
        .args(["--groups", "4", "--out", gop.to_str().unwrap()])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let lock = tmp.path().join("gop.safetensors.lock");
    let start = std::time::Instant::now();
    while !lock.exists() && start.elapsed().as_secs() < 30 {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let o = agop(&[&args[..], &["--groups", "4", "--out", gop.to_str().unwrap()]].concat());
    first.kill().unwrap();
    first.wait().unwrap();
    assert_bad(&o, &["another agop is writing it now", "gop.safetensors.lock"]);
    // The killed run's lock file is left, but not its lock: the next run can take it.
    assert!(lock.exists());
    let guard = agop::util::fs::OutputLock::acquire(&gop, "--out").unwrap();
    drop(guard);
    assert!(!lock.exists(), "the lock file is removed when its holder finishes");
}
