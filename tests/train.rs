//! `agop train` and series of local checkpoints (issue 22): training lowers the held-out loss, the
//! logged eval loss is transformers' loss (a Rust computation here, and transformers itself
//! where Python with torch is installed), a seed gives the same bytes, a run killed and resumed
//! equals an uninterrupted one, and a `[train]` pipeline's series equals the same checkpoints
//! measured as a local series and one by one.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use agop::model::{self, WeightsKind};
use agop::tokenize::read_tokens;
use agop::util::parquet::read_parquet;
use common::*;

const CFG: &str = r#"{"model_type":"gpt2","n_layer":2,"n_head":2,"n_embd":32,"n_positions":64,"vocab_size":50257}"#;

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/corpus/shakespeare/hamlet.txt")
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// The `agop train` command line of these tests.
fn train_cmd(cfg: &Path, out: &Path, steps: u64, save: &str) -> Command {
    let mut c = Command::new(agop_bin());
    c.args(["train", "--config", s(cfg), "--corpus", s(&corpus()), "--seq-len", "32", "--out", s(out)])
        .args(["--steps", &steps.to_string(), "--save-steps", save, "--batch", "4", "--lr", "3e-3"])
        .args(["--eval-windows", "8", "--seed", "1"]);
    c
}

fn config(dir: &Path) -> PathBuf {
    let p = dir.join("config.json");
    std::fs::write(&p, CFG).unwrap();
    p
}

/// (step, eval_loss) of the saved steps in train.parquet.
fn eval_losses(out: &Path) -> Vec<(u64, f64)> {
    agop::train::eval_losses(out).unwrap()
}

/// Mean next-token loss over the windows, written out here: logits from the model's forward
/// pass, log-sum-exp in f64, every position but the last of each window.
fn loss_by_hand(dir: &Path, windows: &[agop::tokenize::Window]) -> f64 {
    let m = model::load_dir(dir, WeightsKind::Pretrained, 0).unwrap();
    let (mut total, mut n) = (0f64, 0usize);
    for w in windows {
        let ids = candle_core::Tensor::from_vec(w.tokens.clone(), (1, w.tokens.len()), m.device()).unwrap();
        let hidden = m.forward(&ids).unwrap().hidden;
        let z = m.logits(&hidden).unwrap().to_dtype(candle_core::DType::F64).unwrap().to_vec3::<f64>().unwrap();
        for t in 0..w.tokens.len() - 1 {
            let row = &z[0][t];
            let max = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let lse = max + row.iter().map(|x| (x - max).exp()).sum::<f64>().ln();
            total += lse - row[w.tokens[t + 1] as usize];
            n += 1;
        }
    }
    total / n as f64
}

#[test]
fn training_lowers_the_eval_loss_as_transformers_defines_it() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path());
    let out = tmp.path().join("run");
    let o = train_cmd(&cfg, &out, 40, "20").output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let losses = eval_losses(&out);
    assert_eq!(losses.iter().map(|x| x.0).collect::<Vec<_>>(), [0, 20, 40]);
    let (first, last) = (losses[0].1, losses[2].1);
    eprintln!("eval loss {first:.3} → {last:.3}");
    assert!(first - last >= 1.0, "eval loss fell only {first:.3} → {last:.3}");
    // The logged loss is the mean over every predicted position of the held-out windows,
    // computed here by hand from each saved checkpoint.
    let (eval, meta) = read_tokens(&out.join("eval-tokens.parquet")).unwrap();
    assert_eq!((eval.len(), meta.seq_len), (8, 32));
    for (step, logged) in &losses {
        let by_hand = loss_by_hand(&agop::train::checkpoint_dir(&out, *step), &eval);
        assert!((by_hand - logged).abs() < 1e-4 * logged, "step {step}: logged {logged}, by hand {by_hand}");
    }
    // Checkpoint 0 is the random-init control's draw from the seed.
    let init = model::random_init(&model::Gpt2Config::from_file(&cfg).unwrap(), 1, &candle_core::Device::Cpu).unwrap();
    let saved = model::load_dir(&agop::train::checkpoint_dir(&out, 0), WeightsKind::Pretrained, 0).unwrap();
    for (a, b) in init.params.iter().into_iter().zip(saved.params.iter()) {
        assert_eq!(
            a.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            b.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
    }
    // train.parquet: a row per update, tokens and learning rates as configured.
    let df = read_parquet(&out.join("train.parquet")).unwrap();
    assert_eq!(df.height(), 41);
    let tokens: Vec<u64> = df.column("tokens").unwrap().u64().unwrap().into_no_null_iter().collect();
    assert_eq!(tokens[40], 40 * 4 * 32);
    // transformers itself, where it is installed.
    match torch_python() {
        Some(py) => {
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/train_baseline.py");
            let ck = agop::train::checkpoint_dir(&out, 40);
            let o = Command::new(py)
                .args([s(&script), "--check", s(&ck), "--tokens", s(&out.join("eval-tokens.parquet"))])
                .output()
                .unwrap();
            assert!(o.status.success(), "{}", text(&o));
            let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
            let hf = v["eval_loss"].as_f64().unwrap();
            eprintln!("transformers' loss {hf:.6}, logged {last:.6}");
            assert!((hf - last).abs() < 1e-4 * last, "transformers {hf} vs logged {last}");
        }
        None => {
            eprintln!("skipped the transformers check: no Python with torch, transformers and polars (AGOP_PYTHON)")
        }
    }
}

#[test]
fn same_seed_same_bytes_and_a_killed_run_resumes_to_the_same_result() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path());
    let run = |name: &str| {
        let out = tmp.path().join(name);
        let o = train_cmd(&cfg, &out, 24, "8,16").output().unwrap();
        assert!(o.status.success(), "{}", text(&o));
        (out, o)
    };
    let (a, _) = run("a");
    let (b, _) = run("b");
    let bytes = |d: &Path| std::fs::read(agop::train::checkpoint_dir(d, 24).join("model.safetensors")).unwrap();
    assert_eq!(bytes(&a), bytes(&b), "same seed, different weights");
    // Killed once checkpoint-8 is written, then run again.
    let c = tmp.path().join("c");
    let mut child = train_cmd(&cfg, &c, 24, "8,16").stderr(std::process::Stdio::null()).spawn().unwrap();
    let t0 = std::time::Instant::now();
    while !agop::train::checkpoint_dir(&c, 8).is_dir() && t0.elapsed().as_secs() < 300 {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let finished_before_kill = agop::train::checkpoint_dir(&c, 24).is_dir();
    let o = train_cmd(&cfg, &c, 24, "8,16").output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    if finished_before_kill {
        eprintln!("the run finished before it was killed; the resume path was not exercised");
    } else {
        assert!(text(&o).contains("resumed from checkpoint-"), "{}", text(&o));
    }
    assert_eq!(bytes(&a), bytes(&c), "resumed run differs from an uninterrupted one");
    let log = |d: &Path| {
        let df = read_parquet(&d.join("train.parquet")).unwrap();
        df.column("loss").unwrap().f64().unwrap().iter().collect::<Vec<_>>()
    };
    assert_eq!(log(&a), log(&c));
    // Other settings into the same folder: refused, naming the field.
    let o = train_cmd(&cfg, &c, 30, "8,16").output().unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("steps"), "{}", text(&o));
}

/// Pipeline text for these tests; `model` is the `[model]` body, `extra` more sections.
fn pipeline(dir: &Path, name: &str, model: &str, extra: &str) -> PathBuf {
    let p = dir.join(format!("{name}.toml"));
    let text = format!(
        "name = \"{name}\"\n[model]\n{model}\n[corpus]\nsources = [\"{}\"]\nseq_len = 16\nmax_tokens = 256\n\
         [measure]\nprobes = 1\ngroups = 4\nfact = true\n[correlate]\npowers = [1.0]\n{extra}",
        s(&corpus())
    );
    std::fs::write(&p, text).unwrap();
    p
}

fn agop_run(p: &Path, out: &Path) -> Output {
    Command::new(agop_bin()).args(["run", s(p), "--out", s(out)]).output().unwrap()
}

/// Rows keyed by (step, layer, module, head, metric, ansatz, nfm) → (value, se), of `weights`.
fn keyed(out: &Path, weights: &str) -> std::collections::BTreeMap<String, (Option<f64>, Option<f64>)> {
    let d = read_parquet(&out.join("correlations.parquet")).unwrap();
    let col = |c: &str| -> Vec<String> {
        let col = d.column(c).unwrap().cast(&polars::prelude::DataType::String).unwrap();
        col.str().unwrap().iter().map(|x| x.unwrap_or("-").to_string()).collect()
    };
    let cols: Vec<Vec<String>> =
        ["step", "layer", "module", "head", "metric", "ansatz", "nfm"].iter().map(|c| col(c)).collect();
    let w = col("weights");
    let f = |c: &str| d.column(c).unwrap().f64().unwrap().iter().collect::<Vec<_>>();
    let (v, se) = (f("value"), f("se"));
    (0..d.height())
        .filter(|&i| w[i] == weights)
        .map(|i| (cols.iter().map(|c| c[i].as_str()).collect::<Vec<_>>().join("|"), (v[i], se[i])))
        .collect()
}

#[test]
fn a_train_pipeline_and_a_local_series_and_single_runs_agree() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path());
    let train = "[train]\nsteps = 12\nsave_steps = [6]\nseq_len = 32\nbatch = 4\nlr = 3e-3\neval_windows = 8\n";
    let p = pipeline(tmp.path(), "trained", &format!("init_config = \"{}\"\ninit_seed = 1", s(&cfg)), train);
    let out = tmp.path().join("trained-out");
    let o = agop_run(&p, &out);
    assert!(o.status.success(), "{}", text(&o));
    let trained = keyed(&out, "pretrained");
    let steps: std::collections::BTreeSet<String> =
        trained.keys().map(|k| k.split('|').next().unwrap().to_string()).collect();
    assert_eq!(steps.into_iter().collect::<Vec<_>>(), ["0", "12", "6"]);
    let report = Command::new(agop_bin()).args(["report", s(&out)]).output().unwrap();
    assert!(text(&report).contains("Weights trained here: `agop train` for 12 steps"), "{}", text(&report));
    assert!(text(&report).contains("step 12:"), "{}", text(&report));
    // Up to date on a re-run: nothing trained again.
    let o = agop_run(&p, &out);
    assert!(o.status.success() && text(&o).contains("[train]") && text(&o).contains("is up to date"), "{}", text(&o));

    // The same checkpoints as a local series (the folder of checkpoint-<N> folders).
    let series = pipeline(tmp.path(), "local", &format!("id = \"{}\"", s(&out.join("train"))), "");
    let series_out = tmp.path().join("local-out");
    let o = agop_run(&series, &series_out);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(keyed(&series_out, "pretrained"), trained, "a local series differs from the trained pipeline");
    // Checkpoint 6 alone: its rows equal the series' step-6 gram rows.
    let single = pipeline(tmp.path(), "single", &format!("id = \"{}\"", s(&out.join("train/checkpoint-6"))), "");
    let single_out = tmp.path().join("single-out");
    let o = agop_run(&single, &single_out);
    assert!(o.status.success(), "{}", text(&o));
    let alone = keyed(&single_out, "pretrained");
    assert!(!alone.is_empty());
    for (k, v) in &alone {
        let key = k.replacen('-', "6", 1);
        assert_eq!(trained.get(&key), Some(v), "{key}");
    }

    // Named revisions of a local series; errors up front.
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let named = pipeline(
        tmp.path(),
        "named",
        &format!("id = \"{}\"\nrevisions = [\"checkpoint-0\", \"checkpoint-12\"]", s(&out.join("train"))),
        "",
    );
    let named_out = tmp.path().join("named-out");
    let o = agop_run(&named, &named_out);
    assert!(o.status.success(), "{}", text(&o));
    for (model, says) in [
        (
            format!("id = \"{}\"\nrevisions = [\"checkpoint-12\", \"checkpoint-0\"]", s(&out.join("train"))),
            "steps must increase",
        ),
        (format!("id = \"{}\"\nrevisions = [\"a\"]", s(&out.join("train/checkpoint-6"))), "is one checkpoint"),
        (format!("id = \"{}\"\nrevisions = [\"checkpoint-99\"]", s(&out.join("train"))), "checkpoint-99"),
        (format!("id = \"{}\"", s(&empty)), "neither a model nor a series"),
    ] {
        let p = pipeline(tmp.path(), "bad", &model, "");
        let o = agop_run(&p, &tmp.path().join("bad-out"));
        assert_eq!(o.status.code(), Some(2), "{model}: {}", text(&o));
        assert!(text(&o).contains(says), "{model}: {}", text(&o));
    }
}

/// `agop train`'s gradients (the hand-written backward on the measurement's kernels, the loss in
/// pieces) against candle's autograd through the plain-ops forward, in f64, for every parameter
/// of a tied and an untied model, windows whose last positions predict nothing. The tolerance is
/// that of the FACT gradients against autograd (`tests/fact.rs`: 1e-6; the kernels' f64 backward
/// agrees with autograd to about 2e-7 here).
#[test]
fn hand_written_training_gradients_equal_autograd() {
    for tied in [true, false] {
        let cfg: agop::model::Gpt2Config = serde_json::from_value(serde_json::json!({
            "model_type": "gpt2", "n_layer": 2, "n_head": 2, "n_embd": 16, "n_positions": 12,
            "vocab_size": 211, "tie_word_embeddings": tied
        }))
        .unwrap();
        let m = agop::model::random_init(&cfg, 5, &candle_core::Device::Cpu).unwrap();
        // LayerNorm and bias values away from 1 and 0, so their gradients are exercised in full.
        let m = agop::model::Gpt2::new(
            cfg.clone(),
            m.params
                .try_map(|t| {
                    let noise = t.randn_like(0.0, 0.1)?;
                    Ok((t + noise)?.to_dtype(candle_core::DType::F64)?)
                })
                .unwrap(),
        );
        let windows: Vec<agop::tokenize::Window> = (0..3)
            .map(|i| agop::tokenize::Window {
                index: i,
                tokens: (0..10).map(|j| ((i * 37 + j * 11) % 211) as u32).collect(),
            })
            .collect();
        let refs: Vec<&agop::tokenize::Window> = windows.iter().collect();
        let (ids, targets) = agop::train::batch_tensors(&refs, &candle_core::Device::Cpu).unwrap();
        let targets = targets.to_dtype(candle_core::DType::F64).unwrap();
        let (loss, hand) = agop::train::grads::loss_gradients(&m, &ids, &targets).unwrap();
        let (want_loss, auto) = agop::train::autograd_loss_gradients(&m, &ids, &targets).unwrap();
        assert!((loss - want_loss).abs() < 1e-12 * want_loss, "loss {loss} vs {want_loss}");
        assert_eq!(hand.len(), auto.len(), "tied {tied}: every parameter has a gradient");
        let mut worst = 0f64;
        for (name, a) in &auto {
            let h = &hand[name];
            assert_eq!(h.dims(), a.dims(), "{name}");
            let (h, a) = (
                h.flatten_all().unwrap().to_vec1::<f64>().unwrap(),
                a.flatten_all().unwrap().to_vec1::<f64>().unwrap(),
            );
            let e = rel_frob(&h, &a);
            assert!(e < 1e-6, "tied {tied}: {name}: relative error {e:.2e}");
            worst = worst.max(e);
        }
        eprintln!(
            "tied {tied}: hand-written vs autograd, worst relative error {worst:.2e} over {} tensors",
            auto.len()
        );
    }
}
