//! The second hostile-input round (2026-12-03): each input below once gave a wrong result, lost
//! data or panicked; now each ends in a correct result or exit 2 naming the file, field or flag.
//! Wrong results and data loss first.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use agop::model::{self, WeightsKind};
use common::*;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `agop` run in `dir` (so that outputs can be given as bare file names).
fn agop_in(dir: &Path, args: &[&str]) -> Output {
    Command::new(agop_bin()).current_dir(dir).args(args).output().unwrap()
}

/// `n` windows of `t` fixture-vocabulary tokens.
fn tokens_file(dir: &Path, n: u64, t: u64) -> PathBuf {
    let p = dir.join(format!("tokens-{t}.parquet"));
    let windows: Vec<agop::tokenize::Window> = (0..n)
        .map(|i| agop::tokenize::Window { index: i, tokens: (0..t).map(|j| ((i * 7 + j * 3) % 50) as u32).collect() })
        .collect();
    agop::tokenize::write_tokens(&p, &windows, &Default::default()).unwrap();
    p
}

/// A GPT-NeoX config.json with `rope_scaling` (transformers 4's scaled rotary) changes every
/// rotary angle: refused, naming the field; `null` (Pythia's files) loads.
#[test]
fn scaled_rotary_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/neox/parallel");
    for (name, scaling) in [
        ("linear", serde_json::json!({"rope_type": "linear", "factor": 4.0})),
        ("dynamic", serde_json::json!({"type": "dynamic", "factor": 8.0})),
        ("null", serde_json::Value::Null),
    ] {
        let dir = tmp.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        for e in std::fs::read_dir(&src).unwrap().flatten() {
            std::fs::copy(e.path(), dir.join(e.file_name())).unwrap();
        }
        let path = dir.join("config.json");
        let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        cfg["rope_scaling"] = scaling.clone();
        std::fs::write(&path, cfg.to_string()).unwrap();
        let loaded = model::dir_config(&dir)
            .and_then(|cfg| model::load_model(&dir, &cfg, WeightsKind::Pretrained, 0, &candle_core::Device::Cpu));
        if scaling.is_null() {
            assert!(loaded.is_ok(), "{:#}", loaded.err().unwrap());
        } else {
            let Err(e) = loaded else { panic!("a scaled rotary ({name}) loaded") };
            let msg = format!("{e:#}");
            assert!(agop::error::is_bad_input(&e), "{msg}");
            assert!(msg.contains("rope_scaling") && msg.contains("config.json"), "{msg}");
        }
    }
}

const TRAIN_CFG: &str =
    r#"{"model_type":"gpt2","n_layer":1,"n_head":2,"n_embd":8,"n_positions":64,"vocab_size":50257}"#;

fn train(dir: &Path, corpus: &str, out: &str, extra: &[&str]) -> Output {
    let mut a = vec!["train", "--config", "config.json", "--corpus", corpus, "--seq-len", "8", "--out", out];
    a.extend(["--steps", "2", "--save-steps", "1", "--batch", "2", "--eval-windows", "2"]);
    a.extend(extra);
    agop_in(dir, &a)
}

/// `agop train`: a run whose corpus text changed is not resumed (it would train on both texts);
/// a run that failed before saving anything does not block the corrected command; `--out`
/// inside a corpus folder is refused; sizes that overflow are exit 2, not a panic.
#[test]
fn training_runs_check_their_corpus_and_sizes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(dir.join("config.json"), TRAIN_CFG).unwrap();
    let text = "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer. ";
    std::fs::write(dir.join("c.txt"), text.repeat(8)).unwrap();
    let o = train(dir, "c.txt", "run", &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let weights = std::fs::read(dir.join("run/checkpoint-2/model.safetensors")).unwrap();
    // The same command again finds the run complete; with the text changed it is refused.
    assert!(train(dir, "c.txt", "run", &[]).status.success());
    std::fs::write(dir.join("c.txt"), text.replace("question", "answer").repeat(8)).unwrap();
    assert_bad(&train(dir, "c.txt", "run", &[]), &["run", "other text", "c.txt"]);
    assert_eq!(std::fs::read(dir.join("run/checkpoint-2/model.safetensors")).unwrap(), weights);

    // A corpus too short fails before anything is written; the corrected command then runs.
    std::fs::write(dir.join("short.txt"), "hi").unwrap();
    assert_bad(&train(dir, "short.txt", "fresh", &[]), &["short.txt"]);
    assert!(!dir.join("fresh/train-settings.json").exists());
    let o = train(dir, "c.txt", "fresh", &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    // A folder whose run saved no checkpoint (stopped early) starts again with new settings.
    std::fs::remove_dir_all(dir.join("fresh")).unwrap();
    std::fs::create_dir_all(dir.join("fresh")).unwrap();
    std::fs::write(dir.join("fresh/train-settings.json"), "{\"steps\": 99}").unwrap();
    let o = train(dir, "c.txt", "fresh", &["--seed", "3"]);
    assert!(o.status.success(), "{}", stderr(&o));

    // --out inside a corpus folder would train on its own files when resumed.
    std::fs::create_dir_all(dir.join("corp")).unwrap();
    std::fs::write(dir.join("corp/a.txt"), text.repeat(8)).unwrap();
    assert_bad(&train(dir, "corp", "corp/run", &[]), &["corp/run", "inside the input folder"]);
    assert!(!dir.join("corp/run").exists());

    // Sizes: exit 2 naming the flag.
    let mut a = vec!["train", "--config", "config.json", "--corpus", "c.txt", "--seq-len", "8", "--out", "big"];
    a.extend(["--steps", "2", "--batch", "18446744073709551615"]);
    assert_bad(&agop_in(dir, &a), &["--batch must be between"]);
    assert!(!dir.join("big").exists());
    let mut a = vec!["train", "--config", "config.json", "--corpus", "c.txt", "--seq-len", "8", "--out", "huge"];
    a.extend(["--steps", "5000000000000000000"]);
    assert_bad(&agop_in(dir, &a), &["--steps 5000000000000000000", "more than agop can count"]);
    assert!(!dir.join("huge").exists());
}

/// Outputs of one command that share a path, given as bare names: refused before any work,
/// and the table already there is left intact. `--agop-out` may not be the contrasts table
/// either.
#[test]
fn two_outputs_of_one_command_never_share_a_path() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let tokens = tokens_file(dir, 4, 8);
    let model = fixture_model();
    for (w, out) in [("pretrained", "pre.safetensors"), ("random-init", "rand.safetensors")] {
        let o = agop_in(dir, &["measure", "--model", s(&model), "--tokens", s(&tokens), "--weights", w, "--out", out]);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let correlate = |extra: &[&str]| {
        let mut a = vec!["correlate", "--model", s(&model), "--gop", "pre.safetensors", "--gop", "rand.safetensors"];
        a.extend(["--out", "c.parquet"]);
        a.extend(extra);
        agop_in(dir, &a)
    };
    assert!(correlate(&[]).status.success());
    let table = std::fs::read(dir.join("c.parquet")).unwrap();
    let contrasts = std::fs::read(dir.join("c.contrasts.parquet")).unwrap();
    assert_bad(&correlate(&["--agop-out", "c.parquet"]), &["--agop-out", "c.parquet"]);
    assert_bad(&correlate(&["--agop-out", "c.contrasts.parquet"]), &["--agop-out", "c.contrasts.parquet"]);
    assert_eq!(std::fs::read(dir.join("c.parquet")).unwrap(), table);
    assert_eq!(std::fs::read(dir.join("c.contrasts.parquet")).unwrap(), contrasts);
    // And not yet there: nothing is written.
    std::fs::remove_file(dir.join("c.parquet")).unwrap();
    assert_bad(&correlate(&["--agop-out", "c.parquet"]), &["--agop-out"]);
    assert!(!dir.join("c.parquet").exists());
}

/// `init-model --config DIR/config.json --out DIR` fills the folder with weights and leaves the
/// user's config.json (and its fields agop does not read) as it was; the weights are those of an
/// init-model into a new folder.
#[test]
fn init_model_keeps_its_own_config() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m");
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = r#"{"model_type":"gpt2","n_layer":1,"n_head":2,"n_embd":8,"n_positions":32,"vocab_size":50,"my_note":"keep me"}"#;
    std::fs::write(dir.join("config.json"), cfg).unwrap();
    let o = agop(&["init-model", "--config", s(&dir.join("config.json")), "--seed", "4", "--out", s(&dir)]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read_to_string(dir.join("config.json")).unwrap(), cfg);
    let other = tmp.path().join("other");
    let o = agop(&["init-model", "--config", s(&dir.join("config.json")), "--seed", "4", "--out", s(&other)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let bytes = |d: &Path| std::fs::read(d.join("model.safetensors")).unwrap();
    assert_eq!(bytes(&dir), bytes(&other));
    assert!(model::load_dir(&dir, WeightsKind::Pretrained, 0).is_ok());
}

/// A series' known steps must increase even when a revision in between has no step number.
#[test]
fn a_series_with_an_unnumbered_revision_is_still_checked_for_order() {
    let tmp = tempfile::tempdir().unwrap();
    let series = tmp.path().join("series");
    std::fs::create_dir_all(&series).unwrap();
    let cfg = r#"{"model_type":"gpt2","n_layer":1,"n_head":2,"n_embd":8,"n_positions":64,"vocab_size":50257}"#;
    for (k, name) in ["checkpoint-4", "final", "checkpoint-1"].iter().enumerate() {
        init_checkpoint(&series, name, cfg, k as u64);
        std::fs::remove_file(series.join(format!("{name}.config.json"))).unwrap();
        // the helper's copy
    }
    let p = tmp.path().join("p.toml");
    let body = format!(
        "name = \"p\"\n[model]\nid = \"{}\"\nrevisions = [\"checkpoint-4\", \"final\", \"checkpoint-1\"]\n\
         [corpus]\nsources = [\"builtin:shakespeare\"]\nseq_len = 8\nmax_tokens = 32\n",
        s(&series)
    );
    std::fs::write(&p, body).unwrap();
    let out = tmp.path().join("out");
    assert_bad(&agop(&["run", s(&p), "--out", s(&out)]), &["step 1 (checkpoint-1) follows step 4 (checkpoint-4)"]);
    assert!(!out.exists());
}

/// A power listed twice would give every key of that power twice in the table; a power whose
/// decimal form is too long for a file name still gets its plots.
#[test]
fn powers_repeated_or_extreme() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let tokens = tokens_file(dir, 4, 8);
    let model = fixture_model();
    let o = agop_in(dir, &["measure", "--model", s(&model), "--tokens", s(&tokens), "--out", "g.safetensors"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let correlate = |powers: &str, out: &str| {
        agop_in(dir, &["correlate", "--model", s(&model), "--gop", "g.safetensors", "--out", out, "--powers", powers])
    };
    assert_bad(&correlate("1,1.0", "d.parquet"), &["--powers", "1 twice"]);
    let o = correlate("1e-300", "tiny/correlations.parquet");
    assert!(o.status.success(), "{}", stderr(&o));
    let o = agop_in(dir, &["report", "tiny"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(dir.join("tiny/plots/by-layer-power1e-300.png").is_file());
    let table = String::from_utf8_lossy(&o.stdout);
    assert!(table.contains("AGOP^1e-300 (α = 1e-300)") && !table.contains("0.0000000"), "{table}");
    // A reader that goes away before the report is printed (`agop report … | head`): no panic.
    let mut child = Command::new(agop_bin())
        .current_dir(dir)
        .args(["report", "tiny"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success() && !stderr(&o).contains("panicked"), "{:?} {}", o.status, stderr(&o));
}

/// Config values and messages: an initializer_range that is not a positive f32 is exit 2 naming
/// the file and field; a GPT-NeoX config given to a GPT-2-only command says so; the loss of
/// one-token windows is refused, not measured as zeros.
#[test]
fn config_values_and_one_token_windows() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    for range in ["1e300", "0", "-0.02"] {
        let cfg = format!(
            r#"{{"model_type":"gpt2","n_layer":1,"n_head":2,"n_embd":8,"n_positions":32,"vocab_size":50,"initializer_range":{range}}}"#
        );
        std::fs::write(dir.join("r.json"), cfg).unwrap();
        let o = agop_in(dir, &["init-model", "--config", "r.json", "--out", "m"]);
        assert_bad(&o, &["r.json", "initializer_range"]);
    }
    let neox = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/neox/parallel/config.json");
    assert_bad(&agop_in(dir, &["init-model", "--config", s(&neox), "--out", "n"]), &["gpt_neox", "GPT-2"]);
    std::fs::write(
        dir.join("bad.json"),
        r#"{"model_type":"gpt2","n_layer":1,"n_head":3,"n_embd":8,"n_positions":32,"vocab_size":50257}"#,
    )
    .unwrap();
    let o = agop_in(
        dir,
        &[
            "train",
            "--config",
            "bad.json",
            "--corpus",
            "builtin:shakespeare",
            "--seq-len",
            "8",
            "--steps",
            "1",
            "--out",
            "t",
        ],
    );
    assert_bad(&o, &["bad.json", "n_head"]);

    let (tokens, model) = (tokens_file(dir, 4, 1), fixture_model());
    let measure = |extra: &[&str]| {
        let mut a = vec!["measure", "--model", s(&model), "--tokens", s(&tokens), "--out", "g.safetensors"];
        a.extend(extra);
        agop_in(dir, &a)
    };
    assert_bad(&measure(&["--output", "loss"]), &["1 token", "--output loss"]);
    assert_bad(&measure(&["--fact"]), &["1 token", "--fact"]);
    assert!(measure(&[]).status.success());
}

// The second round of the same day, on pipelines run twice, stage by stage and on a cluster.

const TINY: &str = r#"{"model_type":"gpt2","n_layer":1,"n_head":2,"n_embd":8,"n_positions":64,"vocab_size":50257}"#;

/// A quick pipeline in `dir` (`p.toml`): a random 1-layer model from `tiny.json`, corpus
/// `corpus.txt`, FACT on, both weights, 2 groups, then `extra` lines.
fn quick_pipeline(dir: &Path, name: &str, extra: &str) -> PathBuf {
    std::fs::write(dir.join("tiny.json"), TINY).unwrap();
    if !dir.join("corpus.txt").exists() {
        std::fs::write(dir.join("corpus.txt"), "Friends, Romans, countrymen, lend me your ears. ".repeat(12)).unwrap();
    }
    let p = dir.join(name);
    let text = format!(
        "name = \"q\"\n[model]\ninit_config = \"tiny.json\"\ninit_seed = 1\n[corpus]\nsources = [\"corpus.txt\"]\n\
         seq_len = 16\nmax_tokens = 128\n[measure]\nprobes = 1\nbatch = 2\nweights = [\"pretrained\", \
         \"random-init\"]\ngroups = 2\nfact = true\n{extra}"
    );
    std::fs::write(&p, text).unwrap();
    p
}

fn run_ok(dir: &Path, args: &[&str]) -> String {
    let o = agop_in(dir, args);
    assert!(o.status.success(), "{}", stderr(&o));
    format!("{}{}", String::from_utf8_lossy(&o.stdout), stderr(&o))
}

/// Run again with features off, the old features table goes; plots and report blocks follow the
/// powers now measured, and a user's PNGs beside them stay; a user's folder where the pipeline
/// writes its model is never deleted, and one left half-written by a stopped run is not taken for
/// the user's; `--out` inside the corpus folder is refused before anything is written; flags of
/// another stage are refused.
#[test]
fn pipelines_run_again_follow_what_changed() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let p = quick_pipeline(dir, "p.toml", "[correlate]\npowers = [0.5, 1.0]\n");
    run_ok(dir, &["run", "p.toml", "--out", "o"]);
    assert!(dir.join("o/features.parquet").is_file() && dir.join("o/plots/by-layer-power1.png").is_file());
    let mine = ["heads-up-my-notes.png", "trajectory-of-my-thesis.png", "by-layer-figure-2.png"];
    for n in mine {
        std::fs::write(dir.join("o/plots").join(n), "my figure").unwrap();
    }
    // Powers without 1, features off: no α = 1 block, no power-1 plots, no features table.
    quick_pipeline(dir, "p.toml", "[correlate]\npowers = [2.0]\n[features]\nenabled = false\n");
    let out = run_ok(dir, &["run", "p.toml", "--out", "o"]);
    assert!(!out.contains("α = 1)") && out.contains("α = 2)"), "{out}");
    assert!(out.contains("Heads with the highest"), "{out}");
    assert!(!dir.join("o/features.parquet").exists() && !out.contains("Top features"), "{out}");
    let plots: Vec<String> = std::fs::read_dir(dir.join("o/plots"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(plots.iter().all(|n| !n.contains("power1") && !n.contains("power0.5") && !n.starts_with('.')), "{plots:?}");
    assert!(plots.iter().any(|n| n == "by-layer-power2.png"), "{plots:?}");
    for n in mine {
        assert_eq!(std::fs::read_to_string(dir.join("o/plots").join(n)).unwrap(), "my figure");
    }
    // A stopped run's half-written model (its temporary folder) is cleared by the next run.
    std::fs::remove_dir_all(dir.join("o/model")).unwrap();
    std::fs::create_dir_all(dir.join("o/.model.partial")).unwrap();
    std::fs::write(dir.join("o/.model.partial/config.json"), "{").unwrap();
    run_ok(dir, &["run", "p.toml", "--out", "o"]);
    assert!(dir.join("o/model/.agop-init").is_file() && !dir.join("o/.model.partial").exists());

    // The run folder inside the corpus folder.
    std::fs::create_dir_all(dir.join("texts")).unwrap();
    std::fs::copy(dir.join("corpus.txt"), dir.join("texts/a.txt")).unwrap();
    let inside = std::fs::read_to_string(&p).unwrap().replace("\"corpus.txt\"", "\"texts\"");
    std::fs::write(dir.join("pin.toml"), inside).unwrap();
    assert_bad(&agop_in(dir, &["run", "pin.toml", "--out", "texts/run"]), &["texts/run", "inside the input folder"]);
    assert!(!dir.join("texts/run").exists());

    // A model folder the pipeline did not write is the user's.
    std::fs::create_dir_all(dir.join("u/model")).unwrap();
    std::fs::write(dir.join("u/model/NOTES.txt"), "mine").unwrap();
    assert_bad(&agop_in(dir, &["run", s(&p), "--out", "u"]), &["u/model", "did not write"]);
    assert_eq!(std::fs::read_to_string(dir.join("u/model/NOTES.txt")).unwrap(), "mine");

    for args in [
        vec!["run", "p.toml", "--out", "o", "--weights", "pretrained"],
        vec!["run", "p.toml", "--out", "o", "--stage", "reduce", "--shard", "0/2"],
        vec!["run", "p.toml", "--out", "o", "--stage", "measure", "--shards", "2"],
    ] {
        assert_bad(&agop_in(dir, &args), &["is a flag of --stage"]);
    }
}

/// Stage by stage: a stage run with another `[model]` than the prepared one prepares again; the
/// reduce stage refuses shards and GOP files measured with other settings, and says what to run
/// when they are missing.
#[test]
fn stages_check_what_they_reuse() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    quick_pipeline(dir, "p.toml", "");
    run_ok(dir, &["run", "p.toml", "--out", "s", "--stage", "prepare"]);
    let o = agop_in(dir, &["run", "p.toml", "--out", "s", "--stage", "reduce"]);
    assert_bad(&o, &["gop-pretrained.safetensors", "missing", "measure"]);
    assert_bad(&agop_in(dir, &["run", "p.toml", "--out", "s", "--stage", "reduce", "--shards", "0"]), &["--shards"]);
    for i in ["0/2", "1/2"] {
        run_ok(dir, &["run", "p.toml", "--out", "s", "--stage", "measure", "--shard", i]);
    }
    // Other probes: the shards are not this pipeline's any more.
    let changed = std::fs::read_to_string(dir.join("p.toml")).unwrap().replace("probes = 1", "probes = 2");
    std::fs::write(dir.join("p2.toml"), changed).unwrap();
    let o = agop_in(dir, &["run", "p2.toml", "--out", "s", "--stage", "reduce", "--shards", "2"]);
    assert_bad(&o, &["gop-pretrained-0-of-2.safetensors", "measure shard 0/2 again"]);
    run_ok(dir, &["run", "p.toml", "--out", "s", "--stage", "reduce", "--shards", "2"]);
    let o = agop_in(dir, &["run", "p2.toml", "--out", "s", "--stage", "reduce"]);
    assert_bad(&o, &["gop-pretrained.safetensors", "not this pipeline's measurement"]);

    // Another init seed: measure prepares the model again instead of measuring the old one.
    let model = std::fs::read(dir.join("s/model/model.safetensors")).unwrap();
    let seeded = std::fs::read_to_string(dir.join("p.toml")).unwrap().replace("init_seed = 1", "init_seed = 9");
    std::fs::write(dir.join("p9.toml"), seeded).unwrap();
    run_ok(dir, &["run", "p9.toml", "--out", "s", "--stage", "measure", "--weights", "pretrained"]);
    assert_ne!(std::fs::read(dir.join("s/model/model.safetensors")).unwrap(), model);
}

/// `#SBATCH` lines cannot hold spaces, quotes, '#' or line breaks: such values (and zero CPUs)
/// are refused before any script is written.
#[test]
fn slurm_header_values_are_checked() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    quick_pipeline(dir, "p.toml", "");
    for (extra, want) in [
        (vec!["--out", "out dir"], "--out (the log folder)"),
        (vec!["--out", "o", "--time", "1:00\nrm -rf $HOME"], "time"),
        (vec!["--out", "o", "--mem", ""], "mem"),
        (vec!["--out", "o", "--partition", "gpu #x"], "partition"),
        (vec!["--out", "o", "--cpus", "0"], "--cpus"),
    ] {
        let mut a = vec!["slurm", "p.toml", "--shards", "2"];
        a.extend(extra);
        assert_bad(&agop_in(dir, &a), &[want]);
    }
    assert!(!dir.join("o/slurm").exists() && !dir.join("out dir/slurm").exists());
    run_ok(dir, &["slurm", "p.toml", "--shards", "2", "--out", "o"]);
}

/// A finished `[train]` pipeline stays finished when its corpus can no longer be read (moved, or
/// not mounted where a later stage runs): the run again redoes nothing.
#[test]
fn a_finished_training_pipeline_does_not_need_its_corpus_again() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    quick_pipeline(dir, "p.toml", "[train]\nsteps = 2\nbatch = 2\neval_windows = 2\n[features]\nenabled = false\n");
    run_ok(dir, &["run", "p.toml", "--out", "o"]);
    std::fs::rename(dir.join("corpus.txt"), dir.join("moved.txt")).unwrap();
    let out = run_ok(dir, &["run", "p.toml", "--out", "o"]);
    assert!(out.contains("[train]") && out.contains("is up to date (2 steps)"), "{out}");
    for what in ["tokens.parquet", "gop-pretrained@checkpoint-2.safetensors", "correlations.parquet"] {
        assert!(out.contains(&format!("{what} is up to date")), "{out}");
    }
}

// Left over from the rounds, fixed the same day.

/// One pipeline named two ways (relative from one folder, relative from another, absolute)
/// is one run: its corpus sources are recorded as absolute paths, so nothing is tokenized or
/// measured again (before, `agop run p.toml` then `agop run $PWD/p.toml` redid everything, and
/// `agop slurm --prepare-here` with a relative path left its jobs preparing again).
#[test]
fn a_pipeline_named_another_way_is_the_same_run() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let sub = dir.join("sub");
    std::fs::create_dir_all(&sub).unwrap();
    quick_pipeline(&sub, "p.toml", "[features]\nenabled = false\n");
    run_ok(dir, &["run", "sub/p.toml", "--out", "o"]);
    let abs = sub.join("p.toml");
    for (cwd, args) in
        [(sub.as_path(), vec!["run", "p.toml", "--out", "../o"]), (dir, vec!["run", s(&abs), "--out", "o"])]
    {
        let out = run_ok(cwd, &args);
        for what in ["tokens.parquet", "gop-pretrained.safetensors", "gop-random-init.safetensors"] {
            assert!(out.contains(&format!("{what} is up to date")), "{args:?}: {out}");
        }
    }
}

/// `agop train` named its corpus `c.txt` in one folder and by its absolute path from another:
/// the same run (found complete, or resumed), also for a folder written before sources were
/// recorded as absolute paths (which recorded `c.txt`).
#[test]
fn a_training_corpus_named_another_way_is_the_same_corpus() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(dir.join("config.json"), TRAIN_CFG).unwrap();
    std::fs::write(dir.join("c.txt"), "Now is the winter of our discontent made glorious summer. ".repeat(8)).unwrap();
    let o = train(dir, "c.txt", "run", &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let settings = dir.join("run/train-settings.json");
    let mut rec: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&settings).unwrap()).unwrap();
    let recorded = rec["sources"][0].as_str().unwrap().to_string();
    assert!(Path::new(&recorded).is_absolute() && recorded.ends_with("c.txt"), "{recorded}");
    let weights = std::fs::read(dir.join("run/checkpoint-2/model.safetensors")).unwrap();
    let elsewhere = tmp.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    std::fs::copy(dir.join("config.json"), elsewhere.join("config.json")).unwrap();
    let (c, run) = (dir.join("c.txt"), dir.join("run"));
    let o = train(&elsewhere, s(&c), s(&run), &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    // A record as agop wrote it before: the corpus as typed.
    rec["sources"] = serde_json::json!(["c.txt"]);
    std::fs::write(&settings, rec.to_string()).unwrap();
    let o = train(dir, "c.txt", "run", &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = train(&elsewhere, s(&c), s(&run), &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    // And a run with other text under the same name is still refused.
    std::fs::write(dir.join("c.txt"), "Now is the winter. ".repeat(30)).unwrap();
    assert_bad(&train(&elsewhere, s(&c), s(&run), &[]), &["other text"]);
    assert_eq!(std::fs::read(dir.join("run/checkpoint-2/model.safetensors")).unwrap(), weights);
}

/// An output path that reaches into a corpus folder through `..` past a folder that does not
/// exist yet (`corp/new/../run` is `corp/run`) is refused like `corp/run`.
#[test]
fn an_output_inside_the_corpus_through_dot_dot_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(dir.join("config.json"), TRAIN_CFG).unwrap();
    std::fs::create_dir_all(dir.join("corp")).unwrap();
    std::fs::write(dir.join("corp/a.txt"), "Once more unto the breach, dear friends. ".repeat(10)).unwrap();
    for out in ["corp/new/../run", "corp/./x/y/../../run", "elsewhere/../corp/run"] {
        assert_bad(&train(dir, "corp", out, &[]), &[out, "inside the input folder"]);
        assert!(!dir.join("corp/run").exists() && !dir.join("corp/new").exists() && !dir.join("corp/x").exists());
    }
    // `..` past a missing folder, then a link to the corpus folder.
    std::os::unix::fs::symlink(dir.join("corp"), dir.join("cl")).unwrap();
    assert_bad(&train(dir, "corp", "nothere/../cl/run", &[]), &["inside the input folder"]);
    assert!(!dir.join("corp/run").exists() && !dir.join("nothere").exists());
    // A path that only passes through the corpus folder and leaves it is fine.
    let o = train(dir, "corp", "corp/../run", &[]);
    assert!(o.status.success(), "{}", stderr(&o));
}

/// Weights written by `agop init-model` and `agop train` are readable by whoever can read the
/// folder's other files (safetensors 0.8 made them 0600, so on a shared cluster a colleague or a
/// job under another account could not load them).
#[test]
fn written_weights_have_the_folders_usual_mode() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(dir.join("config.json"), TRAIN_CFG).unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let o = agop_in(dir, &["init-model", "--config", "config.json", "--out", "m"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(mode(&dir.join("m/model.safetensors")), mode(&dir.join("m/config.json")));
    std::fs::write(dir.join("c.txt"), "Is this a dagger which I see before me? ".repeat(10)).unwrap();
    let o = train(dir, "c.txt", "run", &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let reference = mode(&dir.join("run/train-settings.json"));
    assert_ne!(reference & 0o044, 0, "the test's umask hides everything; mode {reference:o}");
    for f in ["checkpoint-1/model.safetensors", "checkpoint-2/optimizer.safetensors", "checkpoint-2/model.safetensors"]
    {
        assert_eq!(mode(&dir.join("run").join(f)), reference, "{f}");
    }
}

// The fourth round (2026-12-03): correlate, report and outputs.

/// Shards given to `correlate` in any order pair pretrained and random-init group by group: the
/// contrasts get the same intervals as when given in window order (they lost them before).
#[test]
fn parts_given_in_any_order_pair_their_groups() {
    use polars::prelude::*;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let model = fixture_model();
    let tokens = tokens_file(dir, 8, 16);
    for w in ["pretrained", "random-init"] {
        for i in 0..2 {
            let out = dir.join(format!("{w}-{i}.safetensors"));
            let shard = format!("{i}/2");
            let o = agop(
                &["measure", "--model", s(&model), "--tokens", s(&tokens), "--out", s(&out), "--shard", &shard]
                    .into_iter()
                    .chain(["--weights", w, "--probes", "2"])
                    .collect::<Vec<_>>(),
            );
            assert!(o.status.success(), "{}", stderr(&o));
        }
    }
    let table = |name: &str, order: [&str; 4]| {
        let out = dir.join(format!("{name}.parquet"));
        let mut a = vec!["correlate".to_string(), "--model".into(), s(&model).into()];
        for g in order {
            a.extend(["--gop".to_string(), s(&dir.join(format!("{g}.safetensors"))).into()]);
        }
        a.extend(["--out".to_string(), s(&out).into()]);
        let o = agop(&a.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(!stderr(&o).contains("different window groups"), "{}", stderr(&o));
        let file = std::fs::File::open(dir.join(format!("{name}.contrasts.parquet"))).unwrap();
        ParquetReader::new(file).finish().unwrap()
    };
    let ordered = table("ordered", ["pretrained-0", "pretrained-1", "random-init-0", "random-init-1"]);
    let shuffled = table("shuffled", ["pretrained-0", "random-init-1", "pretrained-1", "random-init-0"]);
    for c in ["value", "se", "ci_low", "ci_high"] {
        let (a, b) = (ordered.column(c).unwrap().f64().unwrap(), shuffled.column(c).unwrap().f64().unwrap());
        assert!(a.null_count() < a.len(), "{c}: no values");
        assert_eq!(a.null_count(), b.null_count(), "{c}");
        for (x, y) in a.iter().zip(b.iter()) {
            assert!(x == y || (x.unwrap() - y.unwrap()).abs() < 1e-12, "{c}: {x:?} vs {y:?}");
        }
    }
}

/// No command writes a model folder's files (the weights, config, tokenizer, or a name that
/// would become one): `measure --out`, `merge --out` and `correlate --agop-out` into a copy of
/// the fixture model replaced its weights before.
#[test]
fn outputs_never_replace_a_models_files() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let model = fixture_model();
    let copy = dir.join("m");
    std::fs::create_dir_all(&copy).unwrap();
    for e in std::fs::read_dir(&model).unwrap().flatten() {
        std::fs::copy(e.path(), copy.join(e.file_name())).unwrap();
    }
    let weights = std::fs::read(copy.join("model.safetensors")).unwrap();
    let tokens = tokens_file(dir, 2, 8);
    let gop = dir.join("g.safetensors");
    let o = agop(&["measure", "--model", s(&model), "--tokens", s(&tokens), "--out", s(&gop)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let target = copy.join("model.safetensors");
    let corr = dir.join("c.parquet");
    for args in [
        vec!["measure", "--model", s(&model), "--tokens", s(&tokens), "--out", s(&target)],
        vec!["merge", s(&gop), "--out", s(&target)],
        vec!["correlate", "--model", s(&model), "--gop", s(&gop), "--out", s(&corr), "--agop-out", s(&target)],
        vec![
            "tokenize",
            "--model",
            s(&model),
            "--corpus",
            s(&tokens),
            "--seq-len",
            "4",
            "--out",
            s(&copy.join("tokenizer.json")),
        ],
    ] {
        assert_bad(&agop(&args), &["is a model folder"]);
        assert_eq!(std::fs::read(&target).unwrap(), weights, "{args:?}");
    }
    // A name that would become the model's weights (a sharded file) is refused too; any other
    // name in the folder is fine.
    let shard = copy.join("model-00001-of-00002.safetensors");
    assert_bad(&agop(&["merge", s(&gop), "--out", s(&shard)]), &["model-00001-of-00002.safetensors"]);
    assert!(!shard.exists());
    // Through `..` past a folder that does not exist yet: the same folder.
    let around = format!("{}/sub/../model.safetensors", s(&copy));
    assert_bad(&agop(&["merge", s(&gop), "--out", &around]), &["is a model folder"]);
    assert_eq!(std::fs::read(&target).unwrap(), weights);
    for name in ["gop.safetensors", "model-merged.safetensors"] {
        let o = agop(&["merge", s(&gop), "--out", s(&copy.join(name))]);
        assert!(o.status.success(), "{name}: {}", stderr(&o));
    }
}

/// `agop report TABLE.parquet` of a table not named correlations.parquet draws into
/// `TABLE.plots/`: a folder's own `plots/` (PNGs that happen to carry agop's names) and the plots
/// of another table beside it are left alone. A contrasts table that is really a correlations
/// table, or another run's, is refused instead of printed as pretrained − random-init.
#[test]
fn report_keeps_to_its_own_table() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let tokens = tokens_file(dir, 4, 8);
    let model = fixture_model();
    for w in ["pretrained", "random-init"] {
        let o = agop_in(
            dir,
            &[
                "measure",
                "--model",
                s(&model),
                "--tokens",
                s(&tokens),
                "--out",
                &format!("{w}.safetensors"),
                "--weights",
                w,
            ],
        );
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let o = agop_in(
        dir,
        &["correlate", "--model", s(&model), "--gop", "pretrained.safetensors", "--gop", "random-init.safetensors"]
            .into_iter()
            .chain(["--out", "mine.parquet"])
            .collect::<Vec<_>>(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    std::fs::create_dir_all(dir.join("plots")).unwrap();
    for n in ["spectrum.png", "trajectory.png", "by-step-power1.png", "by-layer-power1.png"] {
        std::fs::write(dir.join("plots").join(n), "my figure").unwrap();
    }
    let o = agop_in(dir, &["report", "mine.parquet"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(dir.join("mine.plots/by-layer-power1.png").is_file());
    for n in ["spectrum.png", "trajectory.png", "by-step-power1.png", "by-layer-power1.png"] {
        assert_eq!(std::fs::read_to_string(dir.join("plots").join(n)).unwrap(), "my figure", "{n}");
    }

    // The contrasts table beside it replaced by a correlations table: refused, naming it.
    std::fs::copy(dir.join("mine.parquet"), dir.join("mine.contrasts.parquet")).unwrap();
    assert_bad(&agop_in(dir, &["report", "mine.parquet"]), &["mine.contrasts.parquet", "weights", "not the contrasts"]);
    // Another model's contrasts beside it: refused.
    let cfg = r#"{"model_type":"gpt2","n_layer":2,"n_head":2,"n_embd":8,"n_positions":64,"vocab_size":50257}"#;
    init_checkpoint(dir, "other", cfg, 3);
    for w in ["pretrained", "random-init"] {
        let o = agop_in(
            dir,
            &[
                "measure",
                "--model",
                "other",
                "--tokens",
                s(&tokens),
                "--out",
                &format!("o-{w}.safetensors"),
                "--weights",
                w,
            ],
        );
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let o = agop_in(
        dir,
        &["correlate", "--model", "other", "--gop", "o-pretrained.safetensors", "--gop", "o-random-init.safetensors"]
            .into_iter()
            .chain(["--out", "o.parquet"])
            .collect::<Vec<_>>(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    std::fs::copy(dir.join("o.contrasts.parquet"), dir.join("mine.contrasts.parquet")).unwrap();
    assert_bad(&agop_in(dir, &["report", "mine.parquet"]), &["mine.contrasts.parquet", "another run"]);
    // The same model on other windows of the same count: model, revision and n_tokens agree, the
    // GOP files do not.
    let other_tokens = dir.join("other-tokens.parquet");
    let windows: Vec<agop::tokenize::Window> = (0..4u64)
        .map(|i| agop::tokenize::Window {
            index: i,
            tokens: (0..8u64).map(|j| ((i * 5 + j * 11) % 50) as u32).collect(),
        })
        .collect();
    agop::tokenize::write_tokens(&other_tokens, &windows, &Default::default()).unwrap();
    for w in ["pretrained", "random-init"] {
        let out = format!("t-{w}.safetensors");
        let o = agop_in(
            dir,
            &["measure", "--model", s(&model), "--tokens", s(&other_tokens), "--out", &out, "--weights", w],
        );
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let mut a = vec!["correlate", "--model", s(&model), "--gop", "t-pretrained.safetensors"];
    a.extend(["--gop", "t-random-init.safetensors", "--out", "t.parquet"]);
    let o = agop_in(dir, &a);
    assert!(o.status.success(), "{}", stderr(&o));
    std::fs::copy(dir.join("t.contrasts.parquet"), dir.join("mine.contrasts.parquet")).unwrap();
    assert_bad(&agop_in(dir, &["report", "mine.parquet"]), &["mine.contrasts.parquet", "other GOP files"]);
    // Its own contrasts again: reported.
    let mut a = vec!["correlate", "--model", s(&model), "--gop", "pretrained.safetensors"];
    a.extend(["--gop", "random-init.safetensors", "--out", "mine.parquet"]);
    assert!(agop_in(dir, &a).status.success());
    let o = agop_in(dir, &["report", "mine.parquet"]);
    assert!(o.status.success() && String::from_utf8_lossy(&o.stdout).contains("random-init"), "{}", stderr(&o));
}

/// A finished pipeline whose corpus folder moved away stays finished when its sources are named
/// through `..` (or its file through a linked folder): the record and the pipeline resolve them
/// alike even when the files are gone.
#[test]
fn a_finished_run_survives_its_corpus_moving_when_named_through_dot_dot() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let pipes = dir.join("pipes");
    std::fs::create_dir_all(&pipes).unwrap();
    std::fs::create_dir_all(dir.join("corpus")).unwrap();
    std::fs::write(dir.join("corpus/c.txt"), "Good night, good night! Parting is such sweet sorrow. ".repeat(12))
        .unwrap();
    quick_pipeline(&pipes, "p.toml", "[features]\nenabled = false\n");
    let text = std::fs::read_to_string(pipes.join("p.toml")).unwrap().replace("\"corpus.txt\"", "\"../corpus/c.txt\"");
    std::fs::write(pipes.join("p.toml"), text).unwrap();
    std::os::unix::fs::symlink(&pipes, dir.join("plink")).unwrap();
    run_ok(dir, &["run", "pipes/p.toml", "--out", "o"]);
    std::fs::rename(dir.join("corpus"), dir.join("corpus.moved")).unwrap();
    for p in ["pipes/p.toml", "plink/p.toml"] {
        let out = run_ok(dir, &["run", p, "--out", "o"]);
        for what in ["tokens.parquet", "gop-pretrained.safetensors", "correlations.parquet"] {
            assert!(out.contains(&format!("{what} is up to date")), "{p}: {out}");
        }
    }
}

/// A GOP file's header rewritten in place (the `agop` metadata edited by `edit`).
fn edit_gop_meta(path: &Path, out: &Path, edit: impl Fn(&mut serde_json::Value)) {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let mut meta: serde_json::Value = serde_json::from_str(header["__metadata__"]["agop"].as_str().unwrap()).unwrap();
    edit(&mut meta);
    header["__metadata__"]["agop"] = serde_json::Value::String(meta.to_string());
    let mut text = header.to_string().into_bytes();
    while !text.len().is_multiple_of(8) {
        text.push(b' ');
    }
    let mut file = (text.len() as u64).to_le_bytes().to_vec();
    file.extend(text);
    file.extend(&bytes[8 + n..]);
    std::fs::write(out, file).unwrap();
}

/// A GOP file whose counts disagree with each other (edited by hand, or damaged) is refused,
/// naming the field, by every command that reads it; before, `merge` added the same windows
/// twice and `correlate` divided by a wrong token count.
#[test]
fn gop_metadata_must_add_up() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let tokens = tokens_file(dir, 4, 8);
    let model = fixture_model();
    let gop = dir.join("g.safetensors");
    let o = agop(&["measure", "--model", s(&model), "--tokens", s(&tokens), "--out", s(&gop)]);
    assert!(o.status.success(), "{}", stderr(&o));
    // The unedited copy is read as before.
    let same = dir.join("same.safetensors");
    edit_gop_meta(&gop, &same, |_| {});
    let corr = dir.join("c.parquet");
    let o = agop(&["correlate", "--model", s(&model), "--gop", s(&same), "--out", s(&corr)]);
    assert!(o.status.success(), "{}", stderr(&o));
    type Edit = Box<dyn Fn(&mut serde_json::Value)>;
    let edits: Vec<(&str, Edit)> = vec![
        ("`windows` range 4..0", Box::new(|m| m["windows"] = serde_json::json!([[4, 0]]))),
        ("`n_windows` is 7", Box::new(|m| m["n_windows"] = serde_json::json!(7))),
        ("`n_tokens` is 1", Box::new(|m| m["n_tokens"] = serde_json::json!(1))),
        ("`n_tokens` is 32", Box::new(|m| m["seq_len"] = serde_json::json!(100000))),
        ("`probes` is 0", Box::new(|m| m["probes"] = serde_json::json!(0))),
        ("`shard` \"3/2\"", Box::new(|m| m["shard"] = serde_json::json!("3/2"))),
    ];
    for (want, edit) in edits {
        let bad = dir.join("bad.safetensors");
        edit_gop_meta(&gop, &bad, edit);
        let merged = dir.join("m.safetensors");
        assert_bad(&agop(&["merge", s(&bad), "--out", s(&merged)]), &["bad.safetensors", want]);
        assert!(!merged.exists());
        let o = agop(&["correlate", "--model", s(&model), "--gop", s(&bad), "--out", s(&dir.join("d.parquet"))]);
        assert_bad(&o, &["bad.safetensors", want, "edited or damaged"]);
    }
}

/// A local series whose checkpoints differ in a field other than the shapes: the message names
/// the fields that differ (it listed n_layer and n_embd, equal, before); two folders of one step
/// are named.
#[test]
fn a_series_names_what_differs() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let series = dir.join("series");
    std::fs::create_dir_all(&series).unwrap();
    let cfg = r#"{"model_type":"gpt2","n_layer":1,"n_head":2,"n_embd":8,"n_positions":64,"vocab_size":50257}"#;
    init_checkpoint(&series, "checkpoint-0", cfg, 1);
    let other = cfg.replace("}", r#","layer_norm_epsilon":0.001}"#);
    init_checkpoint(&series, "checkpoint-2", &other, 2);
    std::fs::write(dir.join("c.txt"), "Out, damned spot! out, I say! ".repeat(10)).unwrap();
    let pipeline = "name = \"s\"\n[model]\nid = \"series\"\n[corpus]\nsources = [\"c.txt\"]\nseq_len = 8\n";
    std::fs::write(dir.join("p.toml"), pipeline).unwrap();
    let o = agop_in(dir, &["run", "p.toml", "--out", "o"]);
    assert_bad(&o, &["checkpoint-2", "layer_norm_epsilon 0.001 vs 0.00001"]);
    assert!(!stderr(&o).contains("n_layer"), "{}", stderr(&o));
    // checkpoint-02 beside checkpoint-2: both named.
    init_checkpoint(&series, "checkpoint-2", cfg, 2);
    init_checkpoint(&series, "checkpoint-02", cfg, 3);
    assert_bad(&agop_in(dir, &["run", "p.toml", "--out", "o"]), &["checkpoint-02", "checkpoint-2", "keep one"]);
}

/// A JSONL file that begins with a UTF-8 byte-order mark reads as the same documents as without
/// it (it was "not valid JSON at line 1 column 1").
#[test]
fn a_jsonl_byte_order_mark_is_not_text() {
    use agop::tokenize::corpus::{read_sources, CorpusOptions};
    let tmp = tempfile::tempdir().unwrap();
    let text = "{\"text\": \"All the world's a stage\"}\n{\"text\": \"and all the men and women merely players\"}\n";
    let (plain, bom) = (tmp.path().join("plain.jsonl"), tmp.path().join("bom.jsonl"));
    std::fs::write(&plain, text).unwrap();
    std::fs::write(&bom, format!("\u{feff}{text}")).unwrap();
    let read = |p: &Path| read_sources(&[s(p).to_string()], &CorpusOptions::default()).unwrap().0;
    let (a, b) = (read(&plain), read(&bom));
    assert_eq!(a.len(), 2);
    assert_eq!(a.iter().map(|d| &d.text).collect::<Vec<_>>(), b.iter().map(|d| &d.text).collect::<Vec<_>>());
}
