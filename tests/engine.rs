//! The AGOP engine against independent references: golden f64 PyTorch values for the fixture
//! model, central finite differences for the hand-written backward, and the exact estimator
//! for the sketch.

mod common;

use agop::correlate::{self, gram};
use agop::math::linalg;
use agop::measure::{self, MeasureOptions};
use agop::measure::{Estimator, Gop, GopMeta, Output, Settings};
use agop::model::all_modules;
use agop::model::{self, Gpt2, Site, WeightsKind};
use agop::tokenize::Window;
use candle_core::{DType, Device, Tensor};
use common::*;

fn fixture() -> Gpt2 {
    model::load_dir(&fixture_model(), WeightsKind::Pretrained, 0).unwrap()
}

fn meta(m: &Gpt2, output: Output, estimator: Estimator, probes: u32, seed: u64) -> GopMeta {
    GopMeta {
        weights: WeightsKind::Pretrained,
        output,
        estimator,
        probes,
        seed,
        seq_len: 8,
        ..GopMeta::for_config(m.cfg.clone().into())
    }
}

fn run(
    m: &Gpt2,
    windows: &[Window],
    output: Output,
    estimator: Estimator,
    probes: u32,
    seed: u64,
    batch: usize,
) -> Gop {
    let settings = Settings { output, estimator, probes, seed, fact: false };
    let opts = MeasureOptions::new(WeightsKind::Pretrained, settings, batch);
    measure::measure_model(m, windows, Gop::zeros(meta(m, output, estimator, probes, seed)), &opts, None).unwrap()
}

/// Operand-space sum (row-major) of every module, reconstructed from the stored side.
fn operand_sums(m: &Gpt2, gop: &Gop) -> Vec<(String, Vec<f64>)> {
    all_modules(&m.cfg)
        .iter()
        .map(|md| {
            let w = gram::weight(m, md).unwrap();
            let a = gram::agop_mean(gop.get(md).unwrap(), gop.meta.n_tokens, md, &w).dense();
            let n = gop.meta.n_tokens as f64;
            (md.name(), linalg::to_row_major(&a).into_iter().map(|x| x * n).collect())
        })
        .collect()
}

#[test]
fn logits_match_golden() {
    let m = fixture();
    let golden = golden_tensors();
    let (shape, want) = &golden["logits"];
    let ids: Vec<u32> = golden_windows().iter().flat_map(|w| w.tokens.clone()).collect();
    let ids = Tensor::from_vec(ids, (shape[0], shape[1]), &Device::Cpu).unwrap();
    let fwd = m.forward(&ids).unwrap();
    let got = m.logits(&fwd.hidden).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let max = got.iter().zip(want).map(|(g, w)| (*g as f64 - w).abs()).fold(0.0, f64::max);
    eprintln!("logits max abs error {max:.3e}");
    assert!(max < 1e-4, "logits differ from golden by {max}");
}

#[test]
fn exact_agop_matches_golden_for_both_outputs() {
    let m = fixture();
    let golden = golden_tensors();
    let windows = golden_windows();
    for output in [Output::Logits, Output::Loss] {
        for batch in [1, 2] {
            let gop = run(&m, &windows, output, Estimator::Exact, 0, 0, batch);
            assert_eq!(gop.meta.n_tokens, 16);
            let mut worst = 0.0f64;
            for (name, got) in operand_sums(&m, &gop) {
                let (_, want) = &golden[&format!("{}/{name}", output.as_str())];
                let e = rel_frob(&got, want);
                assert!(e < 1e-4, "{} {name}: relative Frobenius error {e:.3e}", output.as_str());
                worst = worst.max(e);
            }
            eprintln!("exact {} (batch {batch}): worst relative Frobenius error {worst:.3e}", output.as_str());
        }
    }
}

#[test]
fn correlations_match_golden() {
    let m = fixture();
    let gj = golden_json();
    let windows = golden_windows();
    for output in [Output::Logits, Output::Loss] {
        let gop = run(&m, &windows, output, Estimator::Exact, 0, 0, 2);
        let rows = correlate::correlate(&m, &gop, &[0.5, 1.0]).unwrap();
        // The golden file has pearson and cosine; the subspace rows are checked in features.rs.
        let rows: Vec<_> = rows.into_iter().filter(|r| !r.metric.starts_with("subspace-")).collect();
        assert_eq!(rows.len(), all_modules(&m.cfg).len() * 2 * 2);
        let mut worst = 0.0f64;
        for r in rows {
            let name = match r.head {
                Some(h) => format!("h.{}.{}.{h}", r.layer, r.module),
                None => format!("h.{}.{}", r.layer, r.module),
            };
            let key = format!("{}/{name}/power={:.1}", output.as_str(), r.power);
            let want = gj["correlations"][&key][r.metric].as_f64().unwrap_or_else(|| panic!("no golden {key}"));
            let e = (r.value.unwrap() - want).abs();
            assert!(e < 1e-4, "{key} {}: got {:?} want {want}", r.metric, r.value);
            worst = worst.max(e);
        }
        eprintln!("correlations ({}): max abs error {worst:.3e}", output.as_str());
    }
}

/// f(model) = Σ seed · ln_f output, with an optional perturbation added at one site.
fn probe_value(m: &Gpt2, ids: &Tensor, seed: &Tensor, site: Site, layer: usize, delta: Option<&Tensor>) -> f64 {
    let fwd = m
        .forward_hooked(ids, &mut |l, s, t| match delta {
            Some(d) if l == layer && s == site => Ok((t + d)?),
            _ => Ok(t),
        })
        .unwrap();
    (fwd.hidden * seed).unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap()
}

#[test]
fn backward_matches_finite_differences() {
    // A random model with larger weights than the 0.02 init so every path matters, in f64.
    let mut cfg = fixture().cfg.clone();
    cfg.initializer_range = 0.3;
    cfg.n_inner = Some(40);
    let m = model::random_init(&cfg, 7, &Device::Cpu).unwrap().to_dtype(DType::F64).unwrap();
    let (b, t, c) = (2, 5, cfg.n_embd);
    let ids =
        Tensor::from_vec((0..(b * t) as u32).map(|i| (i * 7 + 3) % 50).collect::<Vec<u32>>(), (b, t), &Device::Cpu)
            .unwrap();
    let seed = Tensor::randn(0f64, 1.0, (b, t, c), &Device::Cpu).unwrap();
    let fwd = m.forward(&ids).unwrap();
    let mut grads: Vec<Vec<(Site, Tensor)>> = vec![vec![]; cfg.n_layer];
    m.backward(&fwd, &seed, |l, g| {
        grads[l] = vec![
            (Site::AttnIn, g.attn_in.clone()),
            (Site::QkvOut, g.qkv_out.clone()),
            (Site::ProjIn, g.proj_in.clone()),
            (Site::FcIn, g.fc_in.clone()),
            (Site::MlpOut, g.mlp_out.clone()),
        ];
        Ok(())
    })
    .unwrap();
    let eps = 1e-5;
    let mut worst = 0.0f64;
    for (layer, sites) in grads.iter().enumerate() {
        for (site, g) in sites {
            let dims = g.dims().to_vec();
            let gv = g.flatten_all().unwrap().to_vec1::<f64>().unwrap();
            let n = gv.len();
            // A spread of entries: every position of both windows, several feature indices.
            for k in (0..n).step_by(n / 23 + 1) {
                let mut d = vec![0f64; n];
                d[k] = eps;
                let dp = Tensor::from_vec(d.clone(), dims.as_slice(), &Device::Cpu).unwrap();
                d[k] = -eps;
                let dm = Tensor::from_vec(d, dims.as_slice(), &Device::Cpu).unwrap();
                let fd = (probe_value(&m, &ids, &seed, *site, layer, Some(&dp))
                    - probe_value(&m, &ids, &seed, *site, layer, Some(&dm)))
                    / (2.0 * eps);
                let err = (fd - gv[k]).abs() / (1.0 + gv[k].abs());
                assert!(err < 1e-6, "layer {layer} {site:?} entry {k}: backward {} vs finite difference {fd}", gv[k]);
                worst = worst.max(err);
            }
        }
    }
    eprintln!("finite differences: worst error {worst:.3e}");
}

fn more_windows(n: usize, t: usize) -> Vec<Window> {
    (0..n)
        .map(|i| Window { index: i as u64, tokens: (0..t).map(|j| ((i * 31 + j * 17 + i * j) % 50) as u32).collect() })
        .collect()
}

#[test]
fn sketch_converges_to_exact_at_inverse_sqrt_k() {
    let m = fixture();
    let windows = more_windows(4, 8);
    for output in [Output::Logits, Output::Loss] {
        let exact = operand_sums(&m, &run(&m, &windows, output, Estimator::Exact, 0, 0, 4));
        let err = |k: u32| -> f64 {
            // Mean over modules and 3 seeds of the relative Frobenius error.
            let mut total = 0.0;
            let mut count = 0.0;
            for seed in 0..3 {
                let sk = operand_sums(&m, &run(&m, &windows, output, Estimator::Sketch, k, seed, 4));
                for ((_, s), (_, e)) in sk.iter().zip(&exact) {
                    total += rel_frob(s, e);
                    count += 1.0;
                }
            }
            total / count
        };
        let (e16, e256) = (err(16), err(256));
        let ratio = e16 / e256;
        eprintln!(
            "sketch {}: error k=16 {e16:.4}, k=256 {e256:.4}, ratio {ratio:.2} (1/√k predicts 4)",
            output.as_str()
        );
        assert!(ratio > 2.8 && ratio < 5.5, "error ratio {ratio} is not near √16 = 4");
        assert!(e256 < 0.15, "k = 256 error {e256} too large");
    }
}

#[test]
fn sketch_is_independent_of_batch_size() {
    let m = fixture();
    let windows = more_windows(7, 8);
    for output in [Output::Logits, Output::Loss] {
        // One probe: windows are added in the same order whatever the batch, so results are bitwise equal.
        let base = run(&m, &windows, output, Estimator::Sketch, 1, 11, 1);
        for batch in [2, 3, 7, 16] {
            let other = run(&m, &windows, output, Estimator::Sketch, 1, 11, batch);
            for (k, (_, v)) in &base.sums {
                assert!(
                    &other.sums[k].1 == v,
                    "batch {batch}: {k} differs ({}), rel {:.3e}",
                    output.as_str(),
                    rel_frob(&other.sums[k].1, v)
                );
            }
        }
        // Several probes: equal up to f64 summation order.
        let base = run(&m, &windows, output, Estimator::Sketch, 4, 11, 1);
        let other = run(&m, &windows, output, Estimator::Sketch, 4, 11, 3);
        for (k, (_, v)) in &base.sums {
            let e = rel_frob(&other.sums[k].1, v);
            assert!(e < 1e-12, "{k}: {e}");
        }
    }
}

#[test]
fn probes_depend_on_window_index_not_position() {
    // Measuring windows 2..5 alone equals the same windows measured inside a longer run minus the rest.
    let m = fixture();
    let windows = more_windows(6, 8);
    let all = run(&m, &windows, Output::Logits, Estimator::Sketch, 2, 5, 2);
    let a = run(&m, &windows[..3], Output::Logits, Estimator::Sketch, 2, 5, 2);
    let b = run(&m, &windows[3..], Output::Logits, Estimator::Sketch, 2, 5, 3);
    for (k, (_, v)) in &all.sums {
        let sum: Vec<f64> = a.sums[k].1.iter().zip(&b.sums[k].1).map(|(x, y)| x + y).collect();
        assert!(rel_frob(&sum, v) < 1e-12, "{k}");
    }
}

#[test]
fn sketch_is_independent_of_batch_and_threads_across_kernel_blocks() {
    // Width 160 spans two Gram blocks (128 + 32) and T = 80 two causal row blocks (64 + 16), so the
    // blocked paths are exercised; one probe must give bitwise-equal sums for any batch size and
    // thread count, and so must the FACT sums (tiles of 128 × 256, and a vocabulary of 1100 that
    // spans two blocks of the loss directions).
    let cfg: model::Gpt2Config = serde_json::from_str(
        r#"{"model_type":"gpt2","n_layer":1,"n_head":2,"n_embd":160,"n_positions":80,"vocab_size":1100}"#,
    )
    .unwrap();
    let m = model::random_init(&cfg, 3, &Device::Cpu).unwrap();
    let windows: Vec<Window> = (0..5)
        .map(|i| Window {
            index: i as u64,
            tokens: (0..80).map(|j| ((i * 13 + j * 7 + i * j) % 1100) as u32).collect(),
        })
        .collect();
    let go = |batch: usize, threads: usize, probes: u32| -> Gop {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| {
            let settings =
                Settings { output: Output::Logits, estimator: Estimator::Sketch, probes, seed: 9, fact: true };
            let opts = MeasureOptions::new(WeightsKind::RandomInit, settings, batch);
            let meta = GopMeta { seq_len: 80, fact: true, ..meta(&m, Output::Logits, Estimator::Sketch, probes, 9) };
            measure::measure_model(&m, &windows, Gop::zeros(meta), &opts, None).unwrap()
        })
    };
    // Several probes: on 2 and 3 threads a batch of 1 sends 2 and 3 probes back as one stacked
    // pass, which must not change a bit. (Across batch sizes the windows' probes are added in
    // another order, so there the f64 sums agree to rounding only: docs/reference.md §3.)
    let three = go(1, 1, 3);
    for threads in [2, 3] {
        let other = go(1, threads, 3);
        for (k, (_, v)) in &three.sums {
            assert!(
                &other.sums[k].1 == v,
                "3 probes on {threads} threads: {k} differs, rel {:.3e}",
                rel_frob(&other.sums[k].1, v)
            );
        }
        assert_eq!(other.fact, three.fact, "3 probes on {threads} threads: FACT sums differ");
    }
    let other = go(2, 2, 3);
    for (k, (_, v)) in &three.sums {
        assert!(rel_frob(&other.sums[k].1, v) < 1e-14, "3 probes, batch 2: {k}");
    }
    let base = go(1, 1, 1);
    for (batch, threads) in [(2, 2), (5, 1), (5, 2), (3, 3)] {
        let other = go(batch, threads, 1);
        assert_eq!(other.fact, base.fact, "batch {batch}, {threads} threads: FACT sums differ");
    }
}
