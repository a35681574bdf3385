//! GPT-NeoX against transformers' GPTNeoXForCausalLM: two tiny checkpoints written by
//! `tests/fixtures/neox/make.py` (parallel residual with transformers 5's `rope_parameters`
//! in model.safetensors; serial residual with the hub's `rotary_pct` in pytorch_model.bin), with
//! golden logits and, for a fixed seed direction at the final layer norm, every gradient the
//! measurement reads (operand gradients, δ at outputs, and the weight gradients FACT sums), all
//! from PyTorch's autograd in float64.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;

use agop::model::{self, Grad, Model, ModelConfig, Network, Role, WeightGrad, WeightsKind};
use candle_core::{DType, Device, Tensor};
use common::*;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/neox").join(name)
}

fn golden(name: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture(name).join("golden.safetensors"), &Device::Cpu).unwrap()
}

fn neox(name: &str) -> agop::model::neox::GptNeoX {
    let dir = fixture(name);
    let cfg = ModelConfig::from_file(&dir.join("config.json")).unwrap();
    assert_eq!(cfg.architecture(), "gpt_neox");
    match model::load_model(&dir, &cfg, WeightsKind::Pretrained, 0, &Device::Cpu).unwrap() {
        Model::NeoX(m) => m.to_dtype(DType::F64).unwrap(),
        Model::Gpt2(_) => panic!("{name} loaded as GPT-2"),
    }
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims());
    let (a, b) = (a.to_dtype(DType::F64).unwrap(), b.to_dtype(DType::F64).unwrap());
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f64>().unwrap()
}

fn scale(a: &Tensor) -> f64 {
    a.to_dtype(DType::F64).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f64>().unwrap()
}

/// Columns of a (…, 3C) tensor in the checkpoint's per-head [q | k | v] order, put in the
/// model's [Q | K | V] order (`dim` 2 for activations, 0 for the rows of a weight gradient).
fn to_model_order(t: &Tensor, m: &agop::model::neox::GptNeoX, dim: usize) -> Tensor {
    let order =
        Tensor::from_vec(agop::model::neox::params::qkv_order(&m.cfg), 3 * m.cfg.hidden_size, &Device::Cpu).unwrap();
    t.index_select(&order, dim).unwrap()
}

#[test]
fn logits_and_every_gradient_equal_transformers() {
    for name in ["parallel", "serial"] {
        let m = neox(name);
        let g = golden(name);
        assert_eq!(m.cfg.use_parallel_residual, name == "parallel");
        let ids = g["ids"].to_dtype(DType::U32).unwrap();
        let fwd = m.forward(&ids).unwrap();
        let logits = m.logits(&fwd.hidden).unwrap();
        let e = max_diff(&logits, &g["logits"]) / scale(&g["logits"]);
        assert!(e < 1e-6, "{name}: logits differ from transformers by {e:.2e} (relative to the largest)");
        // candle's own ops (the GPU path) give the same logits.
        let plain = m.clone().with_plain_ops();
        let e_plain = max_diff(&plain.logits(&plain.forward(&ids).unwrap().hidden).unwrap(), &logits);
        assert!(e_plain < 1e-10, "{name}: plain ops vs kernels {e_plain:.2e}");

        // The measurement's backward: operand gradients, δ at outputs, per-head packed δ.
        let seed = &g["seed"];
        let mut seen = 0;
        Network::backward(&m, &fwd, seed, &mut |grads: &[Grad]| {
            for gr in grads {
                let (want, got, what) = match gr {
                    Grad::Module(md, t) => {
                        let key = match md.role {
                            Role::Qkv => "a",
                            Role::AttnOut => "y",
                            Role::MlpIn => "m",
                            Role::MlpOut => "out",
                            _ => unreachable!(),
                        };
                        (g[&format!("{key}.{}", md.layer)].clone(), (*t).clone(), md.name())
                    }
                    Grad::Packed { modules, width, tensor } => {
                        assert_eq!(*width, m.cfg.head_size());
                        assert_eq!(modules.len(), 3 * m.cfg.num_attention_heads);
                        let l = modules[0].layer;
                        (
                            to_model_order(&g[&format!("qkv.{l}")], &m, 2),
                            (*tensor).clone(),
                            format!("layers.{l} q|k|v δ"),
                        )
                    }
                };
                let e = max_diff(&got, &want) / scale(&want);
                assert!(e < 1e-7, "{name} {what}: {e:.2e} from autograd");
                seen += 1;
            }
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, 5 * m.cfg.num_hidden_layers);

        // FACT's pairs: Σ δ hᵀ is every weight's gradient.
        let mut checked = 0;
        m.backward_weights(&fwd, seed, &mut |pairs: &[WeightGrad]| {
            for p in pairs {
                let (b, t, dout) = p.delta.dims3().unwrap();
                let din = p.operand.dim(2).unwrap();
                let d = p.delta.reshape((b * t, dout)).unwrap();
                let h = p.operand.reshape((b * t, din)).unwrap();
                let grad = d.t().unwrap().matmul(&h).unwrap();
                let l = p.module.layer;
                let short = p.module.short.rsplit('.').next().unwrap();
                let want = g[&format!("w.{l}.{short}")].clone();
                let want = if p.module.role == Role::Qkv { to_model_order(&want, &m, 0) } else { want };
                let e = max_diff(&grad, &want) / scale(&want);
                assert!(e < 1e-7, "{name} {}: Σ δ hᵀ vs the weight gradient: {e:.2e}", p.module.name());
                checked += 1;
            }
            Ok(())
        })
        .unwrap();
        assert_eq!(checked, 4 * m.cfg.num_hidden_layers);
    }
}

/// Both config spellings read to the same settings; a config whose two spellings disagree, or a
/// rotary scaling agop does not implement, is refused naming the field.
#[test]
fn both_config_spellings_are_read_and_contradictions_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(fixture("parallel").join("config.json")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let new = ModelConfig::from_file(&fixture("parallel").join("config.json")).unwrap();
    let ModelConfig::NeoX(n) = &new else { panic!() };
    assert_eq!((n.rotary_pct(), n.rotary_base(), n.rotary_dims()), (0.5, 10000.0, 4));
    // The same file in the older spelling: an equal config.
    let r = v.as_object_mut().unwrap().remove("rope_parameters").unwrap();
    v["rotary_pct"] = r["partial_rotary_factor"].clone();
    v["rotary_emb_base"] = r["rope_theta"].clone();
    let old = tmp.path().join("old.json");
    std::fs::write(&old, v.to_string()).unwrap();
    assert_eq!(ModelConfig::from_file(&old).unwrap(), new);
    // Both spellings, disagreeing.
    v["rope_parameters"] = serde_json::json!({"partial_rotary_factor": 0.25, "rope_theta": 10000.0});
    std::fs::write(&old, v.to_string()).unwrap();
    let e = format!("{:#}", ModelConfig::from_file(&old).unwrap_err());
    assert!(e.contains("partial_rotary_factor") && e.contains("old.json"), "{e}");
    v["rope_parameters"] = serde_json::json!({"rope_type": "linear", "factor": 2.0});
    std::fs::write(&old, v.to_string()).unwrap();
    let e = format!("{:#}", ModelConfig::from_file(&old).unwrap_err());
    assert!(e.contains("rope_type") && e.contains("linear"), "{e}");
}

/// End to end through the command line: measure (exact, logits and FACT; pretrained and the
/// NeoX random-init control), correlate, report. The table has NeoX's module names, the shared
/// roles, and per-head rows; the random-init draw is NeoX's (every weight N(0, 0.02)).
#[test]
fn a_neox_checkpoint_measures_and_correlates_end_to_end() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = fixture("parallel");
    let windows: Vec<agop::tokenize::Window> = (0..6)
        .map(|i| agop::tokenize::Window {
            index: i,
            tokens: (0..12).map(|j| ((i * 13 + j * 7) % 100) as u32).collect(),
        })
        .collect();
    let tokens = tmp.path().join("tokens.parquet");
    agop::tokenize::write_tokens(&tokens, &windows, &Default::default()).unwrap();
    let mut gops = Vec::new();
    for w in ["pretrained", "random-init"] {
        let out = tmp.path().join(format!("gop-{w}.safetensors"));
        let o = agop(&[
            "measure",
            "--model",
            dir.to_str().unwrap(),
            "--tokens",
            tokens.to_str().unwrap(),
            "--weights",
            w,
            "--estimator",
            "exact",
            "--fact",
            "--groups",
            "3",
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        gops.push(out);
    }
    let corr = tmp.path().join("correlations.parquet");
    let o = agop(&[
        "correlate",
        "--model",
        dir.to_str().unwrap(),
        "--gop",
        gops[0].to_str().unwrap(),
        "--gop",
        gops[1].to_str().unwrap(),
        "--out",
        corr.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let df = agop::util::parquet::read_parquet(&corr).unwrap();
    let col = |c: &str| -> Vec<String> {
        df.column(c).unwrap().str().unwrap().iter().map(|x| x.unwrap_or("").to_string()).collect()
    };
    let (modules, roles) = (col("module"), col("role"));
    let pairs: std::collections::BTreeSet<(String, String)> = modules.into_iter().zip(roles).collect();
    let want: std::collections::BTreeSet<(String, String)> = [
        ("attention.query_key_value", "qkv"),
        ("attention.q", "q"),
        ("attention.k", "k"),
        ("attention.v", "v"),
        ("attention.dense", "attn_out"),
        ("mlp.dense_h_to_4h", "mlp_in"),
        ("mlp.dense_4h_to_h", "mlp_out"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(pairs, want);
    // 2 weights × 2 layers × (4 + 3·4 heads) modules × (2 powers × 2 metrics NFA + 4 FACT), and
    // the subspace rows: k ∈ {1, 4, 16} below the whole matrices' rank 32, {1, 4} below a head's 8.
    assert_eq!(df.height(), 2 * 2 * 16 * (4 + 4) + 2 * 2 * (4 * 3 + 12 * 2));
    let values = df.column("value").unwrap().f64().unwrap();
    assert!(values.iter().flatten().all(|v| v.is_finite() && (-1.0..=1.0).contains(&v)));
    assert!(tmp.path().join("contrasts.parquet").is_file());
    // Features: NeoX's LayerNorms feed the read-outs of the fused projection, the heads and the
    // MLP input; the other two modules get spectra only.
    let feats = tmp.path().join("features.parquet");
    let o = agop(&[
        "features",
        "--model",
        dir.to_str().unwrap(),
        "--gop",
        gops[0].to_str().unwrap(),
        "--gop",
        gops[1].to_str().unwrap(),
        "--out",
        feats.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let f = agop::util::parquet::read_parquet(&feats).unwrap();
    let fcol = |c: &str| -> Vec<Option<String>> {
        f.column(c).unwrap().str().unwrap().iter().map(|x| x.map(String::from)).collect()
    };
    let (fmod, fread) = (fcol("module"), fcol("readout"));
    let read: std::collections::BTreeSet<String> =
        fmod.iter().zip(&fread).filter(|(_, r)| r.is_some()).map(|(m, _)| m.clone().unwrap()).collect();
    let want: std::collections::BTreeSet<String> =
        ["attention.query_key_value", "attention.q", "attention.k", "attention.v", "mlp.dense_h_to_4h"]
            .iter()
            .map(|s| s.to_string())
            .collect();
    assert_eq!(read, want);
    let o = agop(&["report", corr.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("attention.query_key_value") && text.contains("mlp.dense_4h_to_h"), "{text}");

    // The random-init control is NeoX's init: weights N(0, 0.02), biases 0, LayerNorm 1.
    let ModelConfig::NeoX(cfg) = ModelConfig::from_file(&dir.join("config.json")).unwrap() else { panic!() };
    let r = agop::model::neox::random_init(&cfg, 7, &Device::Cpu).unwrap();
    let w = r.params.layers[1].dense_h_to_4h.weight.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let sd = (w.iter().map(|x| (*x as f64).powi(2)).sum::<f64>() / w.len() as f64).sqrt();
    assert!((sd - 0.02).abs() < 0.002, "init std {sd}");
    assert_eq!(scale(&r.params.layers[0].dense.bias.to_dtype(DType::F64).unwrap()), 0.0);
    let again = agop::model::neox::random_init(&cfg, 7, &Device::Cpu).unwrap();
    assert_eq!(max_diff(&r.params.embed_in, &again.params.embed_in), 0.0, "the same seed, the same draw");
}
