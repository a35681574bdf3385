//! `agop run pipelines/tiny.toml` end to end: schema, row count, value ranges, agreement with the
//! engine, skipping finished stages, and atomic outputs.

mod common;

use std::process::Command;

use agop::measure::Gop;
use agop::model::{self, WeightsKind};
use agop::util::parquet::read_parquet;
use common::*;
use polars::prelude::DataType;

fn tiny_pipeline() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/tiny.toml")
}

#[test]
fn tiny_pipeline_end_to_end() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("tiny");
    let run = || {
        let o = Command::new(agop_bin()).arg("run").arg(tiny_pipeline()).arg("--out").arg(&out).output().unwrap();
        let stderr = String::from_utf8_lossy(&o.stderr).to_string();
        assert!(o.status.success(), "agop run failed: {stderr}");
        (String::from_utf8_lossy(&o.stdout).to_string(), stderr)
    };
    let (stdout, _) = run();
    assert!(stdout.contains("attn.c_attn") && stdout.contains("random-init"), "{stdout}");
    assert!(stdout.contains(" ± ") && stdout.contains("Pretrained − random-init difference"), "{stdout}");

    let df = read_parquet(&out.join("correlations.parquet")).unwrap();
    let schema: Vec<(&str, DataType)> = vec![
        ("pipeline", DataType::String),
        ("model", DataType::String),
        ("revision", DataType::String),
        ("weights", DataType::String),
        ("corpus", DataType::String),
        ("n_tokens", DataType::UInt64),
        ("output", DataType::String),
        ("estimator", DataType::String),
        ("probes", DataType::UInt32),
        ("layer", DataType::UInt32),
        ("module", DataType::String),
        ("head", DataType::UInt32),
        ("dim", DataType::UInt32),
        ("power", DataType::Float64),
        ("metric", DataType::String),
        ("value", DataType::Float64),
        ("note", DataType::String),
        ("ansatz", DataType::String),
        ("nfm", DataType::String),
        ("step", DataType::UInt64),
        ("se", DataType::Float64),
        ("ci_low", DataType::Float64),
        ("ci_high", DataType::Float64),
        ("groups", DataType::UInt32),
    ];
    let names: Vec<String> = df.get_column_names().iter().map(|s| s.to_string()).collect();
    assert_eq!(names, schema.iter().map(|(n, _)| n.to_string()).collect::<Vec<_>>());
    for (n, t) in &schema {
        assert_eq!(df.column(n).unwrap().dtype(), t, "column {n}");
    }
    // NFA: weights × layers × (4 + 3·heads) × powers × metrics = 2 × 2 × (4 + 12) × 2 × 2; tiny.toml
    // also measures FACT: weights × layers × (4 + 12) × 4 metrics at power 1.
    assert_eq!(df.height(), 2 * 2 * (4 + 3 * 4) * 2 * 2 + 2 * 2 * (4 + 3 * 4) * 4);
    let ansatz: Vec<String> = df.column("ansatz").unwrap().str().unwrap().iter().map(|x| x.unwrap().into()).collect();
    let metric: Vec<String> = df.column("metric").unwrap().str().unwrap().iter().map(|x| x.unwrap().into()).collect();
    let power: Vec<f64> = df.column("power").unwrap().f64().unwrap().iter().map(|x| x.unwrap()).collect();
    for m in ["pearson", "cosine", "antisymmetry", "w-cosine"] {
        let n = (0..df.height()).filter(|&i| ansatz[i] == "fact" && metric[i] == m && power[i] == 1.0).count();
        assert_eq!(n, 2 * 2 * 16, "FACT rows of {m}");
    }
    assert!(out.join("plots/by-layer-fact.png").is_file() && stdout.contains("pretrained FACT"), "{stdout}");
    let values: Vec<f64> = df.column("value").unwrap().f64().unwrap().iter().map(|v| v.unwrap()).collect();
    assert!(values.iter().all(|v| v.is_finite() && (-1.0..=1.0).contains(v)));
    let heads = df.column("head").unwrap().u32().unwrap();
    let modules = df.column("module").unwrap().str().unwrap();
    for (h, m) in heads.iter().zip(modules.iter()) {
        let m = m.unwrap();
        assert_eq!(h.is_some(), matches!(m, "attn.q" | "attn.k" | "attn.v"), "{m} {h:?}");
    }
    assert!(df.column("n_tokens").unwrap().u64().unwrap().iter().all(|n| n == Some(8192)));
    assert!(df.column("pipeline").unwrap().str().unwrap().iter().all(|p| p == Some("tiny")));
    // tiny.toml measures in 10 window groups: every row has an interval around its value.
    assert!(df.column("groups").unwrap().u32().unwrap().iter().all(|g| g == Some(10)));
    let col = |d: &polars::prelude::DataFrame, n: &str| -> Vec<f64> {
        d.column(n).unwrap().f64().unwrap().iter().map(|v| v.expect("no nulls")).collect()
    };
    let (se, lo, hi) = (col(&df, "se"), col(&df, "ci_low"), col(&df, "ci_high"));
    for i in 0..df.height() {
        // Centred on the bias-corrected value (not on `value`): only the width is fixed by se.
        let t975_9 = 2.262_157_162_740_992;
        assert!(se[i] > 0.0 && ((hi[i] - lo[i]) / (2.0 * t975_9 * se[i]) - 1.0).abs() < 1e-9, "row {i}");
    }
    // contrasts.parquet: the same keys without `weights`, value = pretrained − random-init.
    let c = read_parquet(&out.join("contrasts.parquet")).unwrap();
    assert_eq!(c.height(), df.height() / 2);
    assert!(c.column("weights").is_err());
    let (cv, pv) = (col(&c, "value"), &values[..df.height() / 2]);
    let rv = &values[df.height() / 2..];
    for i in 0..c.height() {
        assert!((cv[i] - (pv[i] - rv[i])).abs() < 1e-15, "contrast row {i}");
    }
    assert!(c.column("se").unwrap().null_count() == 0);

    // The table agrees with the engine's own numbers computed from the GOP files.
    let model_dir = out.join("model");
    for weights in [WeightsKind::Pretrained, WeightsKind::RandomInit] {
        let gop = Gop::load(&out.join(format!("gop-{}.safetensors", weights.as_str()))).unwrap();
        assert_eq!(gop.meta.n_windows, 128);
        let m = model::load_dir(&model_dir, weights, gop.meta.seed).unwrap();
        let rows = agop::correlate::correlate(&m, &gop, &[0.5, 1.0]).unwrap();
        let ws: Vec<Option<&str>> = df.column("weights").unwrap().str().unwrap().iter().collect();
        let vals = df.column("value").unwrap().f64().unwrap();
        let pick = |which: &str| -> Vec<f64> {
            (0..df.height())
                .filter(|&i| ws[i] == Some(weights.as_str()) && ansatz[i] == which)
                .map(|i| vals.get(i).unwrap())
                .collect()
        };
        let got = pick("nfa");
        assert_eq!(got.len(), rows.len());
        for (g, r) in got.iter().zip(&rows) {
            assert!((g - r.value.unwrap()).abs() < 1e-12, "{r:?} vs {g}");
        }
        // FACT rows: pearson, cosine, antisymmetry, w-cosine per module in the reference's order (docs/reference.md §2), from
        // the GOP file's G.
        let fact = pick("fact");
        let mut want = Vec::new();
        for module in agop::model::all_modules(&m.cfg) {
            let g = &gop.fact[&agop::measure::fact::fact_tensor(&module)];
            let side = agop::correlate::fact::WeightSide::new(agop::correlate::gram::weight(&m, &module).unwrap());
            let grad = agop::correlate::fact::module_gradient(&m, &module, g);
            want.extend(agop::correlate::fact::fact_moments(&side, &grad).values());
        }
        assert_eq!(fact.len(), want.len());
        for (g, w) in fact.iter().zip(&want) {
            assert!((g - w).abs() < 1e-12, "FACT {g} vs {w}");
        }
    }
    // Plots exist and are PNGs.
    let png = std::fs::read(out.join("plots/by-layer-power1.png")).unwrap();
    assert_eq!(&png[1..4], b"PNG");
    assert!(out.join("plots/heads-q-pretrained-power0.5.png").is_file());

    // A second run skips every stage and leaves the results as they were.
    let before = std::fs::read(out.join("correlations.parquet")).unwrap();
    let (_, stderr) = run();
    assert!(stderr.contains("[tokenize]") && stderr.matches("is up to date").count() >= 5, "{stderr}");
    assert_eq!(before, std::fs::read(out.join("correlations.parquet")).unwrap());
}

#[test]
fn interrupted_write_leaves_nothing_that_looks_complete() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("correlations.parquet");
    let r = agop::util::write_atomic_with(&path, |f| {
        use std::io::Write;
        f.write_all(b"PAR1 half a file")?;
        anyhow::bail!("interrupted")
    });
    assert!(r.is_err());
    assert!(!path.exists());
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0, "temporary file left behind");
}

#[test]
fn killed_measure_leaves_no_gop_file() {
    let tmp = tempfile::tempdir().unwrap();
    let config = r#"{"model_type":"gpt2","n_layer":4,"n_head":4,"n_embd":128,"n_positions":256,"vocab_size":1000}"#;
    let model = init_checkpoint(tmp.path(), "model", config, 0);
    let windows: Vec<agop::tokenize::Window> = (0..1500)
        .map(|i| agop::tokenize::Window { index: i, tokens: (0..256).map(|j| ((i * 7 + j) % 1000) as u32).collect() })
        .collect();
    let tokens = tmp.path().join("tokens.parquet");
    agop::tokenize::write_tokens(&tokens, &windows, &Default::default()).unwrap();
    let gop = tmp.path().join("gop.safetensors");
    let mut child = Command::new(agop_bin())
        .args(["measure", "--model"])
        .arg(&model)
        .arg("--tokens")
        .arg(&tokens)
        .arg("--out")
        .arg(&gop)
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!gop.exists(), "a killed measure left {}", gop.display());
}

/// Later stages (Slurm array tasks) take the model from the prepare stage's `model.json`
/// without hashing the weights again, and hash again when the weights file changed.
#[test]
fn later_stages_reuse_the_recorded_weights_hash() {
    use agop::pipeline::{run, Pipeline};
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("tiny");
    let p = Pipeline::from_file(&tiny_pipeline()).unwrap();
    let prep = run::prepare(&p, &out, true).unwrap();
    let st = out.join("model/model.safetensors");
    let real = prep.model.weights_sha256().unwrap().to_string();
    assert_eq!(real, agop::util::sha256_file(&st).unwrap());
    // Change one byte of the weights but keep size and modification time: a stage that hashed
    // the weights would see a new sha256; one that trusts the record keeps the old one.
    let mtime = std::fs::metadata(&st).unwrap().modified().unwrap();
    let mut bytes = std::fs::read(&st).unwrap();
    *bytes.last_mut().unwrap() ^= 1;
    std::fs::write(&st, &bytes).unwrap();
    std::fs::File::options().write(true).open(&st).unwrap().set_modified(mtime).unwrap();
    let again = run::prepared(&p, &out).unwrap();
    assert_eq!(again.model.weights_sha256().unwrap(), real, "the weights were hashed again");
    // A new modification time: the record no longer describes the file, so it is hashed again
    // (and the record rewritten).
    let later = mtime + std::time::Duration::from_secs(5);
    std::fs::File::options().write(true).open(&st).unwrap().set_modified(later).unwrap();
    let fresh = run::prepared(&p, &out).unwrap();
    let changed = agop::util::sha256_file(&st).unwrap();
    assert_ne!(changed, real);
    assert_eq!(fresh.model.weights_sha256().unwrap(), changed);
    assert!(std::fs::read_to_string(out.join("model.json")).unwrap().contains(&changed));
}

/// `agop slurm --gpus G`: the measure arrays ask for G GPUs and measure with `--device cuda`;
/// prepare and reduce ask for none.
#[test]
fn slurm_gpus_go_to_the_measure_tasks() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let o = Command::new(agop_bin())
        .arg("slurm")
        .arg(tiny_pipeline())
        .args(["--shards", "2", "--gpus", "1", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let script = |n: &str| std::fs::read_to_string(out.join("slurm").join(format!("{n}.sbatch"))).unwrap();
    for w in ["pretrained", "random-init"] {
        let s = script(&format!("measure-{w}"));
        assert!(s.contains("#SBATCH --gres=gpu:1") && s.contains("--device cuda"), "{s}");
    }
    for n in ["prepare", "reduce"] {
        let s = script(n);
        assert!(!s.contains("gres") && !s.contains("--device"), "{s}");
    }
}
