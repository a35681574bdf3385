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
        ("seed", DataType::UInt64),
        ("role", DataType::String),
    ];
    let names: Vec<String> = df.get_column_names().iter().map(|s| s.to_string()).collect();
    assert_eq!(names, schema.iter().map(|(n, _)| n.to_string()).collect::<Vec<_>>());
    for (n, t) in &schema {
        assert_eq!(df.column(n).unwrap().dtype(), t, "column {n}");
    }
    // NFA: weights × layers × (4 + 3·heads) × powers × metrics = 2 × 2 × (4 + 12) × 2 × 2; tiny.toml
    // also measures FACT: weights × layers × (4 + 12) × 4 metrics at power 1.
    // Subspace rows: k ∈ {1, 4, 16} below the whole matrices' rank 64, {1, 4} below a head's 16.
    assert_eq!(df.height(), 2 * 2 * (4 + 3 * 4) * 2 * 2 + 2 * 2 * (4 + 3 * 4) * 4 + 2 * 2 * (4 * 3 + 12 * 2));
    let ansatz: Vec<String> = df.column("ansatz").unwrap().str().unwrap().iter().map(|x| x.unwrap().into()).collect();
    let metric: Vec<String> = df.column("metric").unwrap().str().unwrap().iter().map(|x| x.unwrap().into()).collect();
    let power: Vec<f64> = df.column("power").unwrap().f64().unwrap().iter().map(|x| x.unwrap()).collect();
    for m in ["pearson", "cosine", "antisymmetry", "w-cosine"] {
        let n = (0..df.height()).filter(|&i| ansatz[i] == "fact" && metric[i] == m && power[i] == 1.0).count();
        assert_eq!(n, 2 * 2 * 16, "FACT rows of {m}");
    }
    assert!(
        out.join("plots/by-layer-fact.png").is_file() && stdout.contains("FACT: NFM vs the symmetric part of −WᵀG"),
        "{stdout}"
    );
    let values: Vec<f64> = df.column("value").unwrap().f64().unwrap().iter().map(|v| v.unwrap()).collect();
    assert!(values.iter().all(|v| v.is_finite() && (-1.0..=1.0).contains(v)));
    let heads = df.column("head").unwrap().u32().unwrap();
    let modules = df.column("module").unwrap().str().unwrap();
    for (h, m) in heads.iter().zip(modules.iter()) {
        let m = m.unwrap();
        assert_eq!(h.is_some(), matches!(m, "attn.q" | "attn.k" | "attn.v"), "{m} {h:?}");
    }
    // `role`: the architecture-neutral words of the issue, for GPT-2's modules.
    let roles = df.column("role").unwrap().str().unwrap();
    for (m, r) in modules.iter().zip(roles.iter()) {
        let want = match m.unwrap() {
            "attn.c_attn" => "qkv",
            "attn.q" => "q",
            "attn.k" => "k",
            "attn.v" => "v",
            "attn.c_proj" => "attn_out",
            "mlp.c_fc" => "mlp_in",
            "mlp.c_proj" => "mlp_out",
            other => panic!("unexpected module {other}"),
        };
        assert_eq!(r, Some(want));
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
            let grad = agop::correlate::fact::module_gradient(&module, g);
            want.extend(agop::correlate::fact::fact_moments(&side, &grad).values());
        }
        assert_eq!(fact.len(), want.len());
        for (g, w) in fact.iter().zip(&want) {
            assert!((g - w).abs() < 1e-12, "FACT {g} vs {w}");
        }
    }
    // features.parquet: spectra and read-outs of both weights, the read-outs as GPT-2 tokens.
    let f = read_parquet(&out.join("features.parquet")).unwrap();
    let fw: Vec<&str> = f.column("weights").unwrap().str().unwrap().iter().flatten().collect();
    assert!(fw.contains(&"pretrained") && fw.contains(&"random-init"));
    let readout = f.column("readout").unwrap().str().unwrap();
    let text = f.column("text").unwrap().str().unwrap();
    let with_readout = readout.iter().filter(|r| r.is_some()).count();
    // 2 weights × 2 layers × 14 read-out modules (c_attn, 12 heads, c_fc) × 2 sources × 4 ranks × 2 read-outs × 2 signs × 5 tokens.
    assert_eq!(with_readout, 2 * 2 * 14 * 2 * 4 * 2 * 2 * 5);
    assert!(readout.iter().zip(text.iter()).all(|(r, t)| r.is_none() || t.is_some()));
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
    let (model, tokens) = slow_measure_inputs(tmp.path());
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
        assert!(!s.contains("gres") && !s.contains("--device") && !s.contains("CUDA_HOME"), "{s}");
    }
    // The GPU tasks find the CUDA libraries from $CUDA_HOME when the site's setup lines do not.
    assert!(script("measure-pretrained").contains("LD_LIBRARY_PATH=\"$CUDA_HOME/lib64"));
}

/// `[slurm]` puts a site's lines into every script (module loads, account, extra sbatch
/// options); resources default to 12 h, 4 CPUs and 16G unless given; flags override the
/// section; the jobs run a copy of the binary beside the scripts; `--prepare-here` runs the
/// prepare stage at once (for compute nodes without internet).
#[test]
fn slurm_section_defaults_and_prepare_here() {
    let tmp = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(tiny_pipeline()).unwrap().replace(
        "[correlate]",
        "[slurm]\naccount = \"nfa-lab\"\nmem = \"6G\"\nsetup = [\"module load rust/1.90\", \"source /opt/venv/bin/activate\"]\n\
         sbatch = [\"--qos=short\"]\n\n[correlate]",
    );
    let file = tiny_pipeline().with_file_name("slurm-section-test.toml");
    let file = tmp.path().join(file.file_name().unwrap());
    std::fs::write(
        &file,
        text.replace("\"tiny/config.json\"", &format!("{:?}", tiny_pipeline().with_file_name("tiny/config.json")))
            .replace("\"corpus/", &format!("\"{}/corpus/", tiny_pipeline().parent().unwrap().display())),
    )
    .unwrap();
    let out = tmp.path().join("out");
    let o = agop(&[
        "slurm",
        file.to_str().unwrap(),
        "--shards",
        "2",
        "--cpus",
        "3",
        "--prepare-here",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(out.join("tokens.parquet").is_file() && out.join("model.json").is_file(), "prepare ran here");
    let script = |n: &str| std::fs::read_to_string(out.join("slurm").join(format!("{n}.sbatch"))).unwrap();
    for n in ["prepare", "measure-pretrained", "measure-random-init", "reduce"] {
        let s = script(n);
        for want in [
            "#SBATCH --account=nfa-lab\n",
            "#SBATCH --mem=6G\n",
            "#SBATCH --cpus-per-task=3\n",
            "#SBATCH --time=12:00:00\n",
            "#SBATCH --qos=short\n",
            "module load rust/1.90\nsource /opt/venv/bin/activate\n",
            "export RAYON_NUM_THREADS=3\n",
        ] {
            assert!(s.contains(want), "{n} lacks {want:?}:\n{s}");
        }
        let exe = out.join("slurm/agop");
        assert!(s.contains(&format!("'{}' run", exe.display())), "{n} does not run the copied binary:\n{s}");
        assert!(s.find("module load").unwrap() < s.find("' run").unwrap());
    }
    let exe = out.join("slurm/agop");
    let o = std::process::Command::new(&exe).arg("--version").output().unwrap();
    assert!(o.status.success(), "the copied binary runs");
    // A malformed sbatch entry is refused at once.
    std::fs::write(&file, std::fs::read_to_string(&file).unwrap().replace("--qos=short", "qos short")).unwrap();
    assert_bad(&agop(&["slurm", file.to_str().unwrap(), "--shards", "2"]), &["[slurm] sbatch", "qos short"]);
}

/// `[measure] init_seeds = 3`: the control is measured on three random inits (seeds 10, 11, 12,
/// in their own GOP files), correlations.parquet tells them apart by `seed`, and each contrast
/// is pretrained − the mean of the three, with an interval at least as wide as the spread of
/// the inits alone (se² ≥ s²(1 + 1/3), computed here from the correlations table). A control seed
/// equal to the "pretrained" init's seed is refused.
#[test]
fn several_init_seeds_make_the_control() {
    let tmp = tempfile::tempdir().unwrap();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = |seed: u64| {
        format!(
            "name = \"seeds\"\n[model]\ninit_config = \"{}\"\ninit_seed = 1\n[corpus]\nsources = [\"{}\"]\nseq_len = \
             32\nmax_tokens = 2048\n[measure]\nprobes = 2\nseed = {seed}\nbatch = 8\ngroups = 4\ninit_seeds = \
             3\n[correlate]\npowers = [1.0]\n",
            root.join("pipelines/tiny/config.json").display(),
            root.join("pipelines/corpus/shakespeare/hamlet.txt").display()
        )
    };
    let (file, out) = (tmp.path().join("seeds.toml"), tmp.path().join("out"));
    std::fs::write(&file, text(0)).unwrap();
    let o = agop(&["run", file.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert_bad(&o, &["init_seed 1", "seed 0", "init_seeds 3"]);
    assert!(!out.exists());

    std::fs::write(&file, text(10)).unwrap();
    let o = agop(&["run", file.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    // Prose in the report is wrapped: compare with single spaces.
    let report = String::from_utf8_lossy(&o.stdout).split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(report.contains("3 random inits (seeds 10, 11, 12)"), "{report}");
    assert!(report.contains("spread across the 3 random inits"), "{report}");
    for f in ["gop-random-init", "gop-random-init-seed11", "gop-random-init-seed12", "gop-pretrained"] {
        assert!(out.join(format!("{f}.safetensors")).is_file(), "{f}");
    }
    let df = read_parquet(&out.join("correlations.parquet")).unwrap();
    let strs = |d: &polars::prelude::DataFrame, c: &str| -> Vec<String> {
        let col = d.column(c).unwrap().cast(&DataType::String).unwrap();
        col.str().unwrap().iter().map(|x| x.unwrap_or("-").to_string()).collect()
    };
    let f64s = |d: &polars::prelude::DataFrame, c: &str| -> Vec<Option<f64>> {
        d.column(c).unwrap().f64().unwrap().iter().collect()
    };
    let key_cols = ["layer", "module", "head", "power", "metric", "ansatz", "nfm"];
    let keys = |d: &polars::prelude::DataFrame| -> Vec<String> {
        let cols: Vec<Vec<String>> = key_cols.iter().map(|c| strs(d, c)).collect();
        (0..d.height()).map(|i| cols.iter().map(|c| c[i].as_str()).collect::<Vec<_>>().join("|")).collect()
    };
    let (w, seed, k, v) = (strs(&df, "weights"), strs(&df, "seed"), keys(&df), f64s(&df, "value"));
    let mut by: std::collections::HashMap<(String, String), f64> = Default::default();
    for i in 0..df.height() {
        let who = if w[i] == "pretrained" { "pretrained".to_string() } else { format!("seed{}", seed[i]) };
        assert!(by.insert((who, k[i].clone()), v[i].unwrap()).is_none(), "duplicate key {} {}", w[i], k[i]);
        assert!(w[i] == "random-init" || seed[i] == "10", "the pretrained run's seed is [measure] seed");
    }
    let c = read_parquet(&out.join("contrasts.parquet")).unwrap();
    assert!(c.column("init_seeds").unwrap().u32().unwrap().iter().all(|n| n == Some(3)));
    let (ck, cv, cse) = (keys(&c), f64s(&c, "value"), f64s(&c, "se"));
    assert_eq!(c.height(), by.len() / 4);
    let mut wider = 0;
    for i in 0..c.height() {
        let ctl: Vec<f64> = (10..13).map(|s| by[&(format!("seed{s}"), ck[i].clone())]).collect();
        let mean = ctl.iter().sum::<f64>() / 3.0;
        let want = by[&("pretrained".to_string(), ck[i].clone())] - mean;
        assert!((cv[i].unwrap() - want).abs() < 1e-12, "{}: {:?} vs {want}", ck[i], cv[i]);
        let s2 = ctl.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / 2.0;
        let se = cse[i].unwrap();
        assert!(se * se >= s2 * (1.0 + 1.0 / 3.0) * (1.0 - 1e-9), "{}: se {se} below the seed spread", ck[i]);
        wider += usize::from(se * se > s2 * (1.0 + 1.0 / 3.0) * 1.01);
    }
    assert!(wider > 0, "the window part of the interval is missing");
}

/// The estimate printed at the start of `agop run`: the built-in default pipeline on GPT-2
/// small at 2 threads is the benchmark it is scaled from (300 tokens/s, FACT 2.32×): 2 × 262,144
/// tokens, 1.13 h; its bytes are what the GOP files hold (checked against a file measure wrote).
#[test]
fn the_run_estimate_matches_its_calibration_and_the_files() {
    use agop::pipeline::{run, Pipeline};
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let p = Pipeline::from_file(&root.join("pipelines/gpt2-shakespeare.toml")).unwrap();
    let small: agop::model::ModelConfig = serde_json::from_str(
        r#"{"model_type":"gpt2","n_layer":12,"n_head":12,"n_embd":768,"n_positions":1024,"vocab_size":50257}"#,
    )
    .unwrap();
    let e = run::estimate(&p, &small, 1024, 2);
    assert_eq!(e.tokens, 2 * 262_144);
    let want = 2.0 * 262_144.0 * 2.32 / 300.0;
    assert!((e.seconds.unwrap() / want - 1.0).abs() < 1e-12, "{:?} vs {want}", e.seconds);
    assert!((e.seconds.unwrap() / 3600.0 - 1.13).abs() < 0.01);
    // Twice the threads, half the time.
    assert!((run::estimate(&p, &small, 1024, 4).seconds.unwrap() * 2.0 / want - 1.0).abs() < 1e-12);

    // The bytes: a measured file of the tiny model holds its sums plus a small header.
    let tmp = tempfile::tempdir().unwrap();
    let cfg = root.join("pipelines/tiny/config.json");
    let model = tmp.path().join("m");
    assert!(agop(&["init-model", "--config", cfg.to_str().unwrap(), "--out", model.to_str().unwrap()])
        .status
        .success());
    let tokens = tmp.path().join("t.parquet");
    let hamlet = root.join("pipelines/corpus/shakespeare/hamlet.txt");
    let o = agop(&[
        "tokenize",
        "--model",
        model.to_str().unwrap(),
        "--corpus",
        hamlet.to_str().unwrap(),
        "--seq-len",
        "16",
        "--max-tokens",
        "64",
        "--out",
        tokens.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    for fact in [false, true] {
        let gop = tmp.path().join(format!("g{fact}.safetensors"));
        let mut args = vec!["measure", "--model", model.to_str().unwrap(), "--tokens", tokens.to_str().unwrap()];
        args.extend(["--out", gop.to_str().unwrap()]);
        if fact {
            args.push("--fact");
        }
        assert!(agop(&args).status.success());
        let size = std::fs::metadata(&gop).unwrap().len();
        let tiny = agop::model::ModelConfig::from_file(&cfg).unwrap();
        let bytes = agop::measure::Gop::file_bytes(&tiny, fact);
        assert!(size >= bytes && size - bytes < 64 * 1024, "fact {fact}: file {size} B, estimate {bytes} B");
    }
}
