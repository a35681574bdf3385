//! The device path: the GPU runs the model through candle's own ops (`model::ops::plain`), and GOP
//! and FACT sums are added on the device. On the CPU (every build, CI included), the plain ops
//! are checked against the CPU kernels as a second code path; with `--features cuda` on a
//! machine with a GPU, the GPU is checked against the CPU (golden fixture, a GPT-2-small-dimension
//! model, and a CPU shard merged with a GPU shard). Without a GPU those tests say so and pass.

mod common;

use agop::measure::{Estimator, Gop, GopMeta, Measurer, Output, Settings};
use agop::model::{self, Gpt2, WeightsKind};
use agop::tokenize::Window;
use candle_core::{DType, Device, Tensor};
use common::*;

fn fixture() -> Gpt2 {
    model::load_dir(&fixture_model(), WeightsKind::Pretrained, 0).unwrap()
}

fn ids(windows: &[Window], dev: &Device) -> Tensor {
    let flat: Vec<u32> = windows.iter().flat_map(|w| w.tokens.iter().copied()).collect();
    Tensor::from_vec(flat, (windows.len(), windows[0].tokens.len()), dev).unwrap()
}

fn max_rel(a: &Tensor, b: &Tensor) -> f64 {
    let a = a.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
    let b = b.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
    rel_frob(&a, &b)
}

/// Every tensor a backward pass hands out (with operands), in order.
fn backward_tensors(m: &Gpt2, windows: &[Window], seed: &Tensor) -> Vec<(String, Tensor)> {
    let fwd = m.forward(&ids(windows, m.device())).unwrap();
    let mut out = vec![("hidden".to_string(), fwd.hidden.clone())];
    m.backward_operands(&fwd, seed, |l, g| {
        let ops = g.operands.unwrap();
        for (n, t) in [
            ("qkv_out", g.qkv_out),
            ("attn_in", g.attn_in),
            ("proj_in", g.proj_in),
            ("fc_in", g.fc_in),
            ("mlp_out", g.mlp_out),
            ("proj_out", g.proj_out),
            ("fc_out", g.fc_out),
            ("a", &ops.attn),
            ("y", &ops.proj),
            ("m", &ops.fc),
            ("u", &ops.mlp_proj),
        ] {
            out.push((format!("h.{l} {n}"), t.clone()));
        }
        Ok(())
    })
    .unwrap();
    out
}

/// The plain-op path and the CPU kernels agree on the forward, every backward tensor and the
/// operands: to f64 rounding in f64, to f32 rounding in f32.
#[test]
fn plain_ops_match_the_cpu_kernels() {
    let windows = golden_windows();
    for (dtype, tol) in [(DType::F64, 1e-12), (DType::F32, 1e-5)] {
        let kernels = fixture().to_dtype(dtype).unwrap();
        let plain = kernels.clone().with_plain_ops();
        let (b, t, c) = (windows.len(), windows[0].tokens.len(), kernels.cfg.n_embd);
        let seed = Tensor::randn(0f32, 1.0, (b, t, c), &Device::Cpu).unwrap().to_dtype(dtype).unwrap();
        let (k, p) = (backward_tensors(&kernels, &windows, &seed), backward_tensors(&plain, &windows, &seed));
        let mut worst = 0f64;
        for ((name, a), (_, b)) in k.iter().zip(&p) {
            let e = max_rel(b, a);
            assert!(e < tol, "{dtype:?} {name}: plain ops vs kernels, relative error {e:.3e}");
            worst = worst.max(e);
        }
        eprintln!("{dtype:?}: plain ops vs CPU kernels, worst relative error {worst:.3e}");
    }
}

fn settings(fact: bool) -> Settings {
    Settings { output: Output::Logits, estimator: Estimator::Sketch, probes: 2, seed: 3, fact }
}

fn sums(m: &Gpt2, windows: &[Window], fact: bool) -> Gop {
    let meta = GopMeta { fact, seq_len: windows[0].tokens.len(), ..GopMeta::for_config(m.cfg.clone().into()) };
    let mut gop = Gop::zeros(meta);
    let measurer = Measurer::new(m, settings(fact)).unwrap();
    for chunk in windows.chunks(2) {
        measurer.measure_batch(chunk, &mut gop).unwrap();
    }
    gop.sync().unwrap();
    gop
}

fn assert_sums_close(a: &Gop, b: &Gop, tol: f64, what: &str) -> f64 {
    let mut worst = 0f64;
    for (k, (_, v)) in &a.sums {
        let e = rel_frob(&b.sums[k].1, v);
        assert!(e <= tol, "{what} {k}: relative Frobenius difference {e:.3e}");
        worst = worst.max(e);
    }
    for (k, f) in &a.fact {
        let e = rel_frob(&b.fact[k].values, &f.values);
        assert!(e <= tol, "{what} {k}: relative Frobenius difference {e:.3e}");
        worst = worst.max(e);
    }
    worst
}

/// GOP and FACT sums through the plain ops equal the kernels' (the same probes).
#[test]
fn plain_ops_give_the_same_sums() {
    let m = fixture();
    let windows: Vec<Window> = (0..5u64)
        .map(|i| Window { index: i, tokens: (0..8u64).map(|j| ((i * 13 + j * 7) % 50) as u32).collect() })
        .collect();
    let (a, b) = (sums(&m, &windows, true), sums(&m.clone().with_plain_ops(), &windows, true));
    let worst = assert_sums_close(&a, &b, 1e-5, "plain vs kernels");
    eprintln!("sums, plain ops vs CPU kernels: worst relative difference {worst:.3e}");
}

/// The batch-wide Grams and FACT products of the GPU path ([`Gop::add_batched`],
/// [`Gop::add_fact_batched`]: one GEMM per module per batch), run on the CPU, equal the
/// window-by-window CPU sums (which take f32 gradients) to f32 rounding.
#[test]
fn batched_sums_match_window_sums() {
    use agop::model::Network;
    let windows: Vec<Window> = (0..6u64)
        .map(|i| Window { index: i, tokens: (0..9u64).map(|j| ((i * 11 + j * 5) % 50) as u32).collect() })
        .collect();
    let m = fixture().to_dtype(DType::F32).unwrap();
    let meta = GopMeta { fact: true, seq_len: 9, ..GopMeta::for_config(m.cfg.clone().into()) };
    let (mut windowed, mut batched) = (Gop::zeros(meta.clone()), Gop::zeros(meta));
    for chunk in windows.chunks(3) {
        let fwd = m.forward(&ids(chunk, m.device())).unwrap();
        let (b, t, c) = (chunk.len(), 9, m.cfg.n_embd);
        let seed = Tensor::randn(0f32, 1.0, (b, t, c), &Device::Cpu).unwrap();
        Network::backward(&m, &fwd, &seed, &mut |g| {
            windowed.add(g, 0.25)?;
            batched.add_batched(g, 0.25)
        })
        .unwrap();
        Network::backward_weights(&m, &fwd, &seed, &mut |g| {
            windowed.add_fact(g)?;
            batched.add_fact_batched(g)
        })
        .unwrap();
    }
    batched.sync().unwrap();
    assert!(batched.sums.values().any(|(_, v)| v.iter().any(|x| *x != 0.0)), "nothing was added");
    let worst = assert_sums_close(&windowed, &batched, 2e-6, "batched vs windowed");
    eprintln!("batch-wide GEMMs vs window-by-window sums: worst relative difference {worst:.3e}");
}

/// `--precision bf16` (products with bf16 operands, the rest f32), run through the plain ops on
/// the CPU: the GOP and FACT sums move by bf16 rounding (a few percent on this tiny model), and not by
/// nothing (the operands really are rounded).
#[test]
fn bf16_products_stay_near_f32() {
    let m = fixture().to_dtype(DType::F32).unwrap();
    let windows: Vec<Window> = (0..4u64)
        .map(|i| Window { index: i, tokens: (0..8u64).map(|j| ((i * 17 + j * 3) % 50) as u32).collect() })
        .collect();
    let f32_sums = sums(&m.clone().with_plain_ops(), &windows, true);
    let bf16_sums = sums(&m.with_precision(agop::model::Precision::Bf16), &windows, true);
    let worst = assert_sums_close(&f32_sums, &bf16_sums, 1e-1, "bf16 vs f32");
    assert!(worst > 1e-4, "bf16 products changed the sums by only {worst:.2e}: are the operands rounded?");
    eprintln!("sums, bf16 products vs f32: worst relative difference {worst:.3e}");
}

#[cfg(feature = "cuda")]
mod gpu {
    use std::path::PathBuf;

    use agop::measure::{self, MeasureOptions};
    use agop::tokenize::{write_tokens, TokensMeta};

    use super::*;

    /// The GPU tests run one at a time: `--precision tf32` sets cuBLAS's mode for the process.
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

    /// GPU 0, or None (the test then passes with a message) when this machine has none.
    fn gpu() -> Option<Device> {
        match agop::model::parse_device("cuda") {
            Ok(d) => Some(d),
            Err(e) => {
                eprintln!("skipped: no GPU visible ({e:#})");
                None
            }
        }
    }

    /// Each fused GPU kernel (src/model/ops/kernels.cu) against its CPU twin, the same op's
    /// `cpu_fwd`: f64 to rounding, f32 to the CPU's fast exp/erf/tanh approximations.
    #[test]
    fn gpu_kernels_match_their_cpu_twins() {
        use agop::model::ops::kernels::{GeluBackward, LayerNormAffine, LayerNormBackward, LayerNormForward};
        use agop::model::ops::softmax::{CausalSoftmax, SoftmaxBackward};
        let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let Some(dev) = gpu() else { return };
        let cpu = Device::Cpu;
        let rand = |shape: &[usize], dtype| Tensor::randn(0f64, 1.0, shape, &cpu).unwrap().to_dtype(dtype).unwrap();
        let on = |t: &Tensor| t.to_device(&dev).unwrap();
        let rel = |gpu: &Tensor, cpu: &Tensor| {
            let (g, c) = (gpu.to_device(&Device::Cpu).unwrap(), cpu);
            let scale = c.abs().unwrap().max_all().unwrap().to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap();
            let diff = (&g - c).unwrap().abs().unwrap().max_all().unwrap().to_dtype(DType::F64).unwrap();
            diff.to_scalar::<f64>().unwrap() / scale.max(1e-300)
        };
        for (dtype, tol) in [(DType::F64, 1e-12), (DType::F32, 1e-5)] {
            let mut worst = Vec::new();
            let mut check = |name: &str, gpu: Tensor, cpu: Tensor| {
                assert_eq!(gpu.dims(), cpu.dims(), "{name}");
                let e = rel(&gpu, &cpu);
                assert!(e < tol, "{dtype:?} {name}: GPU kernel vs CPU twin, relative error {e:.3e}");
                worst.push(format!("{name} {e:.1e}"));
            };
            for c in [768, 1600] {
                let x = rand(&[3, 5, c], dtype);
                let ln = LayerNormForward { eps: 1e-5 };
                let packed = x.apply_op1_no_bwd(&ln).unwrap();
                check("layer-norm-forward", on(&x).apply_op1_no_bwd(&ln).unwrap(), packed.clone());
                let (gamma, beta, dy) = (rand(&[c], dtype), rand(&[c], dtype), rand(&[3, 5, c], dtype));
                let affine = packed.apply_op3_no_bwd(&gamma, &beta, &LayerNormAffine).unwrap();
                check(
                    "layer-norm-affine",
                    on(&packed).apply_op3_no_bwd(&on(&gamma), &on(&beta), &LayerNormAffine).unwrap(),
                    affine,
                );
                let dx = dy.apply_op3_no_bwd(&packed, &gamma, &LayerNormBackward).unwrap();
                check(
                    "layer-norm-backward",
                    on(&dy).apply_op3_no_bwd(&on(&packed), &on(&gamma), &LayerNormBackward).unwrap(),
                    dx,
                );
            }
            for erf in [true, false] {
                let (du, pre) = (rand(&[2, 5, 3072], dtype), (rand(&[2, 5, 3072], dtype) * 3.0).unwrap());
                let op = GeluBackward { erf };
                check(
                    "gelu-backward",
                    on(&du).apply_op2_no_bwd(&on(&pre), &op).unwrap(),
                    du.apply_op2_no_bwd(&pre, &op).unwrap(),
                );
            }
            for shape in [[2, 3, 37, 37], [1, 2, 256, 256]] {
                let (scores, datt) = (rand(&shape, dtype), rand(&shape, dtype));
                let op = CausalSoftmax { scale: 0.125 };
                let att = scores.apply_op1_no_bwd(&op).unwrap();
                check("causal-softmax", on(&scores).apply_op1_no_bwd(&op).unwrap(), att.clone());
                let back = SoftmaxBackward { scale: 0.125 };
                let ds = datt.apply_op2_no_bwd(&att, &back).unwrap();
                check("softmax-backward", on(&datt).apply_op2_no_bwd(&on(&att), &back).unwrap(), ds);
            }
            eprintln!("{dtype:?}: GPU kernels vs CPU twins: {}", worst.join(", "));
        }
    }

    /// On the golden fixture: the exact AGOP measured on the GPU matches the golden f64 AGOPs, and
    /// the GPU's sketch and FACT sums match the CPU's (the same probes).
    #[test]
    fn gpu_matches_cpu_and_golden_on_the_fixture() {
        let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let Some(dev) = gpu() else { return };
        let cpu = fixture();
        let gpu = cpu.to_device(&dev).unwrap();
        let windows = golden_windows();
        let (a, b) = (sums(&cpu, &windows, true), sums(&gpu, &windows, true));
        let worst = assert_sums_close(&a, &b, 1e-4, "fixture GPU vs CPU");
        eprintln!("fixture: GPU vs CPU sums, worst relative difference {worst:.3e}");
        // Exact AGOP vs golden.
        let exact = Settings { output: Output::Logits, estimator: Estimator::Exact, probes: 0, seed: 0, fact: false };
        let mut gop = Gop::zeros(GopMeta { seq_len: 8, ..GopMeta::for_config(cpu.cfg.clone().into()) });
        Measurer::new(&gpu, exact).unwrap().measure_batch(&windows, &mut gop).unwrap();
        gop.sync().unwrap();
        let golden = golden_tensors();
        let mut worst = 0f64;
        for m in agop::model::all_modules(&cpu.cfg) {
            // golden.safetensors holds the operand-space sums (mean AGOP × tokens).
            let key = format!("logits/{}", m.name());
            let (_, want) = &golden[&key];
            let w = agop::correlate::gram::weight(&cpu, &m).unwrap();
            let got = agop::correlate::gram::agop_mean(gop.get(&m).unwrap(), 16, &m, &w).dense();
            let got: Vec<f64> = agop::math::linalg::to_row_major(&got).into_iter().map(|x| x * 16.0).collect();
            let e = rel_frob(&got, want);
            assert!(e < 1e-4, "{key}: GPU exact AGOP vs golden {e:.3e}");
            worst = worst.max(e);
        }
        eprintln!("fixture: GPU exact AGOP vs golden, worst relative error {worst:.3e}");
    }

    /// GPT-NeoX (the two tiny checkpoints transformers wrote, parallel and serial residual) on
    /// the GPU: logits against transformers' golden ones, and the sketch and FACT sums against
    /// the CPU's (the same probes).
    #[test]
    fn neox_on_the_gpu_matches_transformers_and_the_cpu() {
        use agop::model::{Model, ModelConfig};
        let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let Some(dev) = gpu() else { return };
        for name in ["parallel", "serial"] {
            let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/neox").join(name);
            let cfg = ModelConfig::from_file(&dir.join("config.json")).unwrap();
            let load = |d: &Device| match model::load_model(&dir, &cfg, WeightsKind::Pretrained, 0, d).unwrap() {
                Model::NeoX(m) => m,
                Model::Gpt2(_) => panic!("{name} loaded as GPT-2"),
            };
            let (cpu, gpu) = (load(&Device::Cpu), load(&dev));
            let golden = candle_core::safetensors::load(dir.join("golden.safetensors"), &Device::Cpu).unwrap();
            let ids = golden["ids"].to_dtype(DType::U32).unwrap().to_device(&dev).unwrap();
            let logits = gpu.logits(&gpu.forward(&ids).unwrap().hidden).unwrap();
            let e = max_rel(&logits.to_device(&Device::Cpu).unwrap(), &golden["logits"]);
            assert!(e < 1e-4, "{name}: GPU logits vs transformers {e:.3e}");
            let windows: Vec<Window> = (0..4u64)
                .map(|i| Window { index: i, tokens: (0..8u64).map(|j| ((i * 13 + j * 7) % 50) as u32).collect() })
                .collect();
            let sums_of = |m: &agop::model::neox::GptNeoX| {
                let meta = GopMeta { fact: true, seq_len: 8, ..GopMeta::for_config(ModelConfig::NeoX(m.cfg.clone())) };
                let mut gop = Gop::zeros(meta);
                let measurer = Measurer::new(m, settings(true)).unwrap();
                for chunk in windows.chunks(2) {
                    measurer.measure_batch(chunk, &mut gop).unwrap();
                }
                gop.sync().unwrap();
                gop
            };
            let worst = assert_sums_close(&sums_of(&cpu), &sums_of(&gpu), 1e-4, &format!("NeoX {name} GPU vs CPU"));
            eprintln!("NeoX {name}: GPU logits vs transformers {e:.3e}; sums GPU vs CPU, worst {worst:.3e}");
        }
    }

    fn windows_file(dir: &std::path::Path, n: u64, t: usize) -> PathBuf {
        let path = dir.join("tokens.parquet");
        let w: Vec<Window> = (0..n)
            .map(|i| Window {
                index: i,
                tokens: (0..t as u64).map(|j| ((i * 7919 + j * 104729) % 50257) as u32).collect(),
            })
            .collect();
        write_tokens(&path, &w, &TokensMeta::default()).unwrap();
        path
    }

    /// A GPT-2-small-dimension random-init model: GPU and CPU sums and correlations agree, and a
    /// CPU shard merged with a GPU shard equals the CPU run.
    #[test]
    fn gpu_matches_cpu_on_gpt2_small_dimensions() {
        let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let Some(dev) = gpu() else { return };
        let tmp = tempfile::tempdir().unwrap();
        let model_dir = gpt2_small(tmp.path());
        let tokens = windows_file(tmp.path(), 4, 128);
        let resolved = agop::fetch::ResolvedModel::local(&model_dir).unwrap();
        let opts = |shard, device: &Device| {
            MeasureOptions { shard, groups: 1, ..MeasureOptions::new(WeightsKind::RandomInit, settings(true), 2) }
                .on(device.clone())
        };
        let p = |n: &str| tmp.path().join(n);
        let cpu = measure::measure(&resolved, &tokens, &p("cpu.safetensors"), &opts(None, &Device::Cpu)).unwrap();
        let gpu = measure::measure(&resolved, &tokens, &p("gpu.safetensors"), &opts(None, &dev)).unwrap();
        assert_eq!(gpu.meta.device, "cuda:0");
        let worst = assert_sums_close(&cpu, &gpu, 1e-4, "gpt2-small dims GPU vs CPU");
        eprintln!("gpt2-small dims: GPU vs CPU sums, worst relative difference {worst:.3e}");
        // Correlations (NFA and FACT rows).
        let c = |gop: &str, out: &str| {
            agop::correlate::correlate_files(
                &resolved,
                &[p(gop)],
                &p(out),
                &agop::correlate::CorrelateOptions::new(&[0.5, 1.0]),
                &Default::default(),
            )
            .unwrap()
        };
        let (dc, dg) = (c("cpu.safetensors", "cpu.parquet"), c("gpu.safetensors", "gpu.parquet"));
        let (vc, vg) = (dc.column("value").unwrap().f64().unwrap(), dg.column("value").unwrap().f64().unwrap());
        let worst = vc.iter().zip(vg.iter()).filter_map(|(a, b)| Some((a? - b?).abs())).fold(0.0, f64::max);
        assert!(worst < 1e-4, "correlations GPU vs CPU: {worst:.3e}");
        eprintln!("gpt2-small dims: correlations GPU vs CPU, max |difference| {worst:.3e}");
        // A CPU shard and a GPU shard merged.
        measure::measure(&resolved, &tokens, &p("s0.safetensors"), &opts(Some((0, 2)), &Device::Cpu)).unwrap();
        measure::measure(&resolved, &tokens, &p("s1.safetensors"), &opts(Some((1, 2)), &dev)).unwrap();
        let merged = measure::merge_files(&[p("s0.safetensors"), p("s1.safetensors")], &p("m.safetensors")).unwrap();
        assert_eq!(merged.meta.device, "cpu+cuda:0");
        let worst = assert_sums_close(&cpu, &merged, 1e-4, "CPU shard + GPU shard vs CPU");
        eprintln!("CPU shard + GPU shard merged vs CPU run: worst relative difference {worst:.3e}");
    }

    /// A random-init model of GPT-2 small's dimensions, written under `dir`.
    fn gpt2_small(dir: &std::path::Path) -> PathBuf {
        init_checkpoint(
            dir,
            "g2",
            r#"{"model_type":"gpt2","n_layer":12,"n_head":12,"n_embd":768,"n_positions":1024,"vocab_size":50257}"#,
            5,
        )
    }

    /// `--precision tf32` and `bf16` against f32 on the GPU, GPT-2-small dimensions: every
    /// module's GOP and FACT sums and every correlation stay within the stated tolerances (the
    /// GPU page, docs/gpu.md, quotes what this prints).
    #[test]
    fn gpu_reduced_precisions_stay_near_f32() {
        use agop::model::Precision;
        let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let Some(dev) = gpu() else { return };
        let tmp = tempfile::tempdir().unwrap();
        let model_dir = gpt2_small(tmp.path());
        let tokens = windows_file(tmp.path(), 4, 256);
        let resolved = agop::fetch::ResolvedModel::local(&model_dir).unwrap();
        let p = |n: &str| tmp.path().join(n);
        let run = |precision: Precision| {
            let opts = MeasureOptions {
                precision,
                ..MeasureOptions::new(WeightsKind::RandomInit, settings(true), 2).on(dev.clone())
            };
            let name = format!("{precision}.safetensors");
            let gop = measure::measure(&resolved, &tokens, &p(&name), &opts).unwrap();
            let corr = agop::correlate::correlate_files(
                &resolved,
                &[p(&name)],
                &p(&format!("{precision}.parquet")),
                &agop::correlate::CorrelateOptions::new(&[0.5, 1.0]),
                &Default::default(),
            )
            .unwrap();
            let values: Vec<f64> =
                corr.column("value").unwrap().f64().unwrap().iter().map(|x| x.unwrap_or(f64::NAN)).collect();
            (gop, values)
        };
        let (base, base_corr) = run(Precision::F32);
        for (precision, sum_tol, corr_tol) in [(Precision::Tf32, 5e-2, 1e-2), (Precision::Bf16, 2e-1, 5e-2)] {
            let (gop, corr) = run(precision);
            assert_eq!(gop.meta.precision, precision);
            let worst = assert_sums_close(&base, &gop, sum_tol, &format!("{precision} vs f32"));
            let mut errs: Vec<f64> = base
                .sums
                .iter()
                .map(|(k, (_, v))| rel_frob(&gop.sums[k].1, v))
                .chain(base.fact.iter().map(|(k, f)| rel_frob(&gop.fact[k].values, &f.values)))
                .collect();
            errs.sort_by(f64::total_cmp);
            let moved = base_corr.iter().zip(&corr).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
            assert!(moved < corr_tol, "{precision}: a correlation moved by {moved:.3e} from f32");
            eprintln!(
                "gpt2-small dims, {precision} vs f32: GOP/FACT sums relative error median {:.2e}, worst {worst:.2e}; \
                 largest correlation change {moved:.2e}",
                errs[errs.len() / 2]
            );
        }
        agop::model::set_precision(&dev, Precision::F32).unwrap();
    }
}

/// `--device cuda` on a build without the feature, and a malformed device anywhere: exit 2 with
/// what to do.
#[test]
fn device_errors_are_bad_input() {
    let tmp = tempfile::tempdir().unwrap();
    let tokens = tmp.path().join("tokens.parquet");
    let w = vec![Window { index: 0, tokens: vec![1, 2, 3, 4] }];
    agop::tokenize::write_tokens(&tokens, &w, &agop::tokenize::TokensMeta::default()).unwrap();
    let measure_with = |device: &str, precision: &str| {
        std::process::Command::new(agop_bin())
            .args(["measure", "--model"])
            .arg(fixture_model())
            .arg("--tokens")
            .arg(&tokens)
            .arg("--out")
            .arg(tmp.path().join("g.safetensors"))
            .args(["--device", device, "--precision", precision])
            .output()
            .unwrap()
    };
    let measure = |device: &str| measure_with(device, "f32");
    let text = |o: &std::process::Output| String::from_utf8_lossy(&o.stderr).to_string();
    let o = measure("gpu0");
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("expected cpu, cuda or cuda:N"), "{}", text(&o));
    // A reduced precision is a GPU's; the CPU refuses it before any work, and writes nothing.
    for p in ["tf32", "bf16"] {
        let o = measure_with("cpu", p);
        assert_eq!(o.status.code(), Some(2), "{}", text(&o));
        assert!(text(&o).contains("applies on a GPU"), "{}", text(&o));
        assert!(!tmp.path().join("g.safetensors").exists());
    }
    #[cfg(not(feature = "cuda"))]
    {
        let o = measure("cuda");
        assert_eq!(o.status.code(), Some(2), "{}", text(&o));
        assert!(text(&o).contains("--features cuda"), "{}", text(&o));
    }
    // A pipeline file's device is checked when the file is read.
    let p = tmp.path().join("p.toml");
    std::fs::write(&p, "name = \"p\"\n[model]\nid = \"x/y\"\n[corpus]\nsources = [\"a.txt\"]\nseq_len = 8\n[measure]\ndevice = \"gpu\"\n")
        .unwrap();
    let o = std::process::Command::new(agop_bin()).arg("run").arg(&p).output().unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("[measure] device"), "{}", text(&o));
    // And its precision: a name that is none, when read.
    let header = "name = \"p\"\n[model]\nid = \"x/y\"\n[corpus]\nsources = [\"a.txt\"]\nseq_len = 8\n[measure]\n";
    std::fs::write(&p, format!("{header}precision = \"fp16\"\n")).unwrap();
    let o = std::process::Command::new(agop_bin()).arg("run").arg(&p).output().unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("fp16") && text(&o).contains("bf16"), "{}", text(&o));
}
