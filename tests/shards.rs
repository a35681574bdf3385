//! Scale-out: shards merged equal one unsharded run, crash-safe resume, refused checkpoints and
//! merges, and independence from the thread count.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use agop::measure::{self, MeasureOptions};
use agop::measure::{Estimator, Gop, Output as Out, Settings};
use agop::model::WeightsKind;
use agop::tokenize::Window;
use agop::tokenize::{write_tokens, TokensMeta};
use common::*;

fn write_windows(path: &Path, n: u64, t: usize, vocab: u64) {
    let windows: Vec<Window> = (0..n)
        .map(|i| Window {
            index: i,
            tokens: (0..t as u64).map(|j| ((i * 13 + j * 7 + i * j) % vocab) as u32).collect(),
        })
        .collect();
    write_tokens(path, &windows, &TokensMeta::default()).unwrap();
}

fn opts(shard: Option<(usize, usize)>, batch: usize) -> MeasureOptions {
    let settings = Settings { output: Out::Logits, estimator: Estimator::Sketch, probes: 3, seed: 9, fact: false };
    MeasureOptions { shard, ..MeasureOptions::new(WeightsKind::Pretrained, settings, batch) }
}

fn assert_close(a: &Gop, b: &Gop, tol: f64) {
    assert_eq!(a.meta.n_tokens, b.meta.n_tokens);
    assert_eq!(a.meta.windows, b.meta.windows);
    for (k, (_, v)) in &a.sums {
        let e = rel_frob(&b.sums[k].1, v);
        assert!(e <= tol, "{k}: relative Frobenius difference {e:.3e}");
    }
}

#[test]
fn shards_merged_equal_unsharded() {
    let tmp = tempfile::tempdir().unwrap();
    let tokens = tmp.path().join("tokens.parquet");
    write_windows(&tokens, 11, 8, 50);
    let model = agop::fetch::ResolvedModel::local(&fixture_model()).unwrap();
    let whole = measure::measure(&model, &tokens, &tmp.path().join("whole.safetensors"), &opts(None, 4)).unwrap();
    assert_eq!(whole.meta.n_windows, 11);
    for n in [1usize, 2, 3, 7] {
        let parts: Vec<PathBuf> = (0..n)
            .map(|i| {
                let p = tmp.path().join(format!("part-{i}-of-{n}.safetensors"));
                // Different batch sizes per shard on purpose.
                measure::measure(&model, &tokens, &p, &opts(Some((i, n)), 1 + i % 3)).unwrap();
                p
            })
            .collect();
        let merged = measure::merge_files(&parts, &tmp.path().join(format!("merged-{n}.safetensors"))).unwrap();
        assert_close(&whole, &merged, 1e-9);
        // Also through the file written by merge.
        let reread = Gop::load(&tmp.path().join(format!("merged-{n}.safetensors"))).unwrap();
        assert_close(&whole, &reread, 1e-9);
    }
}

#[test]
fn overlapping_or_conflicting_merge_is_refused_and_gaps_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let tokens = tmp.path().join("tokens.parquet");
    write_windows(&tokens, 6, 8, 50);
    let model = agop::fetch::ResolvedModel::local(&fixture_model()).unwrap();
    let p = |n: &str| tmp.path().join(n);
    measure::measure(&model, &tokens, &p("a.safetensors"), &opts(Some((0, 2)), 2)).unwrap();
    measure::measure(&model, &tokens, &p("b.safetensors"), &opts(Some((1, 2)), 2)).unwrap();
    measure::measure(&model, &tokens, &p("all.safetensors"), &opts(None, 2)).unwrap();
    let mut other = opts(Some((1, 2)), 2);
    other.settings.seed = 10;
    measure::measure(&model, &tokens, &p("b-seed10.safetensors"), &other).unwrap();

    let run = |args: &[&Path]| -> Output {
        let mut c = Command::new(agop_bin());
        c.arg("merge");
        for a in args {
            c.arg(a);
        }
        c.arg("--out").arg(p("m.safetensors")).output().unwrap()
    };
    let o = run(&[&p("a.safetensors"), &p("all.safetensors")]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("overlap") && err.contains("0..3"), "{err}");
    assert!(!p("m.safetensors").exists());

    let o = run(&[&p("a.safetensors"), &p("b-seed10.safetensors")]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("measured differently") && err.contains("seed 10 vs 9"), "{err}");
    // Only what differs is listed.
    assert!(!err.contains("weights") && !err.contains("probes"), "{err}");

    let o = run(&[&p("b.safetensors")]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("missing windows 0..3"), "{err}");
}

/// A model big enough that measuring takes a few seconds.
fn slow_setup(dir: &Path) -> (PathBuf, PathBuf) {
    let config = r#"{"model_type":"gpt2","n_layer":2,"n_head":4,"n_embd":64,"n_positions":128,"vocab_size":500}"#;
    let model = init_checkpoint(dir, "model", config, 3);
    let tokens = dir.join("tokens.parquet");
    write_windows(&tokens, 160, 64, 500);
    (model, tokens)
}

fn measure_cmd(model: &Path, tokens: &Path, out: &Path, seed: &str) -> Command {
    let mut c = Command::new(agop_bin());
    c.args(["measure", "--model"]).arg(model).arg("--tokens").arg(tokens).arg("--out").arg(out);
    c.args(["--probes", "2", "--seed", seed, "--batch", "2", "--checkpoint-windows", "4"]);
    c
}

#[test]
fn resume_after_kill_equals_uninterrupted_run() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, tokens) = slow_setup(tmp.path());
    let reference = tmp.path().join("reference.safetensors");
    assert!(measure_cmd(&model, &tokens, &reference, "5").status().unwrap().success());

    let out = tmp.path().join("gop.safetensors");
    let partial = measure::run::checkpoint_path(&out);
    let mut child = measure_cmd(&model, &tokens, &out, "5").spawn().unwrap();
    // Kill (SIGKILL) once a checkpoint with some windows exists.
    let start = std::time::Instant::now();
    loop {
        if let Ok(g) = Gop::load(&partial) {
            if g.meta.n_windows >= 8 {
                break;
            }
        }
        assert!(start.elapsed().as_secs() < 120, "no checkpoint appeared");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!out.exists(), "the killed run finished before it was killed; make the workload larger");
    let done = Gop::load(&partial).unwrap().meta.n_windows;
    assert!(done > 0 && done < 160);

    let o = measure_cmd(&model, &tokens, &out, "5").output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(!partial.exists(), "checkpoint left after a finished run");
    let (a, b) = (Gop::load(&reference).unwrap(), Gop::load(&out).unwrap());
    assert_eq!(a.meta, b.meta);
    assert_eq!(a.sums, b.sums, "resumed result differs from the uninterrupted one");
}

#[test]
fn mismatched_checkpoint_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, tokens) = slow_setup(tmp.path());
    let out = tmp.path().join("gop.safetensors");
    // A finished run with seed 5, its result renamed into place as the checkpoint of a seed-6 run.
    assert!(measure_cmd(&model, &tokens, &out, "5").status().unwrap().success());
    std::fs::rename(&out, measure::run::checkpoint_path(&out)).unwrap();
    let o = measure_cmd(&model, &tokens, &out, "6").output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("different measure command") && err.contains("seed 5"), "{err}");
    assert!(!out.exists());
}

#[test]
fn results_do_not_depend_on_thread_count() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, tokens) = slow_setup(tmp.path());
    let mut gops = Vec::new();
    for threads in ["1", "2", "3"] {
        let out = tmp.path().join(format!("gop-{threads}.safetensors"));
        let mut c = measure_cmd(&model, &tokens, &out, "5");
        c.env("RAYON_NUM_THREADS", threads);
        assert!(c.status().unwrap().success());
        gops.push(Gop::load(&out).unwrap());
    }
    for g in &gops[1..] {
        assert_eq!(g.sums, gops[0].sums, "results differ with the thread count");
    }
}
