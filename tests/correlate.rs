//! The correlate stage's fast path (one eigendecomposition per module shared by every power, no
//! d_in × d_in matrices: `correlate::spectral`) against the dense reference path (NFM and
//! AGOP^α formed and correlated entry by entry), and streaming one module at a time from the
//! file against the in-memory table.

mod common;

use agop::correlate::{self, correlate_module, correlate_module_dense, CorrelateOptions, RunContext};
use agop::fetch::ResolvedModel;
use agop::measure::{self, Estimator, Gop, GopMeta, MeasureOptions, Output, Settings};
use agop::model::{self, all_modules, Gpt2, WeightsKind};
use agop::tokenize::Window;
use candle_core::Device;
use common::*;

fn windows(n: u64, t: usize, vocab: u64) -> Vec<Window> {
    (0..n)
        .map(|i| Window {
            index: i,
            tokens: (0..t as u64).map(|j| ((i * 13 + j * 7 + i * j) % vocab) as u32).collect(),
        })
        .collect()
}

fn sketch(m: &Gpt2, w: &[Window], output: Output, probes: u32) -> Gop {
    let settings = Settings { output, estimator: Estimator::Sketch, probes, seed: 3, fact: false };
    let opts = MeasureOptions::new(WeightsKind::Pretrained, settings, 2);
    let meta = GopMeta { probes, seq_len: w[0].tokens.len(), ..GopMeta::for_config(m.cfg.clone().into()) };
    measure::measure_model(m, w, Gop::zeros(meta), &opts, None).unwrap()
}

/// Largest |fast − dense| over every module, power and metric.
fn worst_difference(m: &Gpt2, gop: &Gop, powers: &[f64]) -> f64 {
    let mut worst = 0.0f64;
    for md in all_modules(&m.cfg) {
        let fast = correlate_module(m, &md, gop.get(&md).unwrap(), gop.meta.n_tokens, powers).unwrap();
        let dense = correlate_module_dense(m, gop, &md, powers).unwrap();
        assert_eq!(fast.len(), dense.len());
        for (f, d) in fast.iter().zip(&dense) {
            assert_eq!((f.power, f.metric), (d.power, d.metric));
            let (fv, dv) = (f.value.unwrap(), d.value.unwrap());
            if let Some(k) = f.metric.strip_prefix("subspace-") {
                // A top-k eigenspace is only determined (and two eigensolvers only agree on it)
                // where the k-th and (k+1)-th eigenvalues are apart; tests/features.rs checks
                // the well-separated ones against principal angles.
                let k: usize = k.parse().unwrap();
                let w = correlate::gram::weight(m, &md).unwrap();
                let a = correlate::gram::agop_mean(gop.get(&md).unwrap(), gop.meta.n_tokens, &md, &w).dense();
                let (mut v, _) = agop::math::linalg::sym_eigen(&a).unwrap();
                v.reverse();
                let (mut x, _) = agop::math::linalg::sym_eigen(&correlate::gram::nfm(&w)).unwrap();
                x.reverse();
                if (v[k - 1] - v[k]) < 1e-3 * v[0] || (x[k - 1] - x[k]) < 1e-3 * x[0] {
                    continue;
                }
            }
            worst = worst.max((fv - dv).abs());
        }
    }
    worst
}

#[test]
fn fast_correlations_equal_the_dense_path() {
    // The fixture (golden weights, exact AGOPs for both outputs) and a random model whose MLP is
    // wider than the residual (mlp.c_proj's operand space F = 3C > C), with sketched AGOPs.
    let fixture = model::load_dir(&fixture_model(), WeightsKind::Pretrained, 0).unwrap();
    let powers = [0.25, 0.5, 1.0, 2.0];
    let mut report = Vec::new();
    for output in [Output::Logits, Output::Loss] {
        let settings = Settings { output, estimator: Estimator::Exact, probes: 0, seed: 0, fact: false };
        let opts = MeasureOptions::new(WeightsKind::Pretrained, settings, 2);
        let meta = GopMeta {
            estimator: Estimator::Exact,
            output,
            probes: 0,
            seq_len: 8,
            ..GopMeta::for_config(fixture.cfg.clone().into())
        };
        let gop = measure::measure_model(&fixture, &golden_windows(), Gop::zeros(meta), &opts, None).unwrap();
        report.push(worst_difference(&fixture, &gop, &powers));
    }
    let cfg: model::Gpt2Config = serde_json::from_str(
        r#"{"model_type":"gpt2","n_layer":2,"n_head":4,"n_embd":48,"n_inner":144,"n_positions":40,"vocab_size":97,"initializer_range":0.2}"#,
    )
    .unwrap();
    let m = model::random_init(&cfg, 5, &Device::Cpu).unwrap();
    for (output, probes) in [(Output::Logits, 3), (Output::Loss, 2)] {
        report.push(worst_difference(&m, &sketch(&m, &windows(6, 40, 97), output, probes), &powers));
    }
    eprintln!(
        "fast vs dense correlations, max abs difference: {:?}",
        report.iter().map(|w| format!("{w:.2e}")).collect::<Vec<_>>()
    );
    for w in report {
        assert!(w < 1e-9, "fast and dense correlations differ by {w:e}");
    }
}

/// correlate_files (streaming from the file) writes what the in-memory path computes.
#[test]
fn streamed_file_equals_in_memory_table() {
    let tmp = tempfile::tempdir().unwrap();
    let m = model::load_dir(&fixture_model(), WeightsKind::Pretrained, 0).unwrap();
    let gop = sketch(&m, &windows(5, 8, 50), Output::Logits, 2);
    let path = tmp.path().join("g.safetensors");
    let mut g = gop.clone();
    g.meta.model_sha256 = ResolvedModel::local(&fixture_model()).unwrap().weights_sha256().unwrap().to_string();
    g.save(&path).unwrap();
    let model = ResolvedModel::local(&fixture_model()).unwrap();
    let out = tmp.path().join("c.parquet");
    let df =
        correlate::correlate_files(&model, &[path], &out, &CorrelateOptions::new(&[0.5, 1.0]), &RunContext::default())
            .unwrap();
    let rows = correlate::correlate(&m, &gop, &[0.5, 1.0]).unwrap();
    let values: Vec<f64> = df.column("value").unwrap().f64().unwrap().iter().map(|v| v.unwrap()).collect();
    assert_eq!(values.len(), rows.len());
    for (v, r) in values.iter().zip(&rows) {
        assert_eq!(*v, r.value.unwrap());
    }
}

/// ΔNFM = WₜWₜᵀ − W₀W₀ᵀ against AGOP^α (the `delta-gram` rows of a checkpoint series): the
/// spectral path against the dense one, for a "checkpoint" that is W₀ plus a small change (as
/// between training steps, where the subtraction cancels most of the Gram) and one far from it;
/// and null (undefined) rows when the checkpoint is W₀ itself.
#[test]
fn delta_gram_fast_equals_dense() {
    let cfg: model::Gpt2Config = serde_json::from_str(
        r#"{"model_type":"gpt2","n_layer":2,"n_head":4,"n_embd":48,"n_inner":144,"n_positions":40,"vocab_size":97,"initializer_range":0.2}"#,
    )
    .unwrap();
    let w0 = model::random_init(&cfg, 5, &Device::Cpu).unwrap();
    let far = model::random_init(&cfg, 6, &Device::Cpu).unwrap();
    // W₀ + 1e-3 × (another random init): a small step.
    let near = {
        let mut named = w0.params.named(&cfg);
        let other = far.params.named(&cfg);
        for ((_, t), (_, o)) in named.iter_mut().zip(&other) {
            *t = (t.clone() + (o * 1e-3).unwrap()).unwrap();
        }
        let map: std::collections::HashMap<String, candle_core::Tensor> = named.into_iter().collect();
        model::Gpt2::new(cfg.clone(), model::Params::build(&cfg, |n, _| Ok(map[n].clone())).unwrap())
    };
    let powers = [0.5, 1.0];
    let mut report = Vec::new();
    for m in [&near, &far] {
        let gop = sketch(m, &windows(6, 40, 97), Output::Logits, 2);
        let mut worst = 0f64;
        for md in all_modules(&cfg) {
            let fast = correlate::metrics::correlate_module_delta(
                m,
                &w0,
                &md,
                gop.get(&md).unwrap(),
                gop.meta.n_tokens,
                &powers,
            )
            .unwrap();
            let dense = correlate::metrics::correlate_module_delta_dense(m, &w0, &gop, &md, &powers).unwrap();
            for (f, d) in fast.iter().zip(&dense) {
                assert_eq!((f.nfm, f.power, f.metric), ("delta-gram", d.power, d.metric));
                worst = worst.max((f.value.unwrap() - d.value.unwrap()).abs());
            }
        }
        report.push(worst);
    }
    eprintln!("delta-gram fast vs dense, max abs difference (near, far): {report:?}");
    assert!(report.iter().all(|&w| w < 1e-8), "{report:?}");
    // The first checkpoint against itself: ΔNFM = 0, every row null with the reason.
    let gop = sketch(&w0, &windows(2, 40, 97), Output::Logits, 1);
    let md = &all_modules(&cfg)[0];
    let rows =
        correlate::metrics::correlate_module_delta(&w0, &w0, md, gop.get(md).unwrap(), gop.meta.n_tokens, &powers)
            .unwrap();
    assert!(rows.iter().all(|r| r.value.is_none() && r.note.is_some()), "{rows:?}");
}
