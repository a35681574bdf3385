//! FACT (issue 15): the weight-gradient sums G against central finite differences of the summed
//! loss (f64), the engine's f32 sums against the same, the FACT correlations against a dense
//! computation, a stationary point reached by gradient descent with G as the gradient, and
//! sharded / merged / resumed FACT sums equal to one run.

mod common;

use std::path::{Path, PathBuf};

use agop::correlate::fact::{fact_moments, fact_moments_dense, module_gradient, FactMoments, WeightSide};
use agop::correlate::{cosine, pearson};
use agop::measure::fact::{fact_modules, fact_tensor};
use agop::measure::{self, Estimator, Gop, GopMeta, MeasureOptions, Measurer, Output, Settings};
use agop::model::{self, all_modules, gpt2_module, Gpt2, Kind, Module, Network, WeightsKind};
use agop::tokenize::{write_tokens, TokensMeta, Window};
use candle_core::{DType, Device, Tensor};
use common::*;
use faer::Mat;

fn fixture() -> Gpt2 {
    model::load_dir(&fixture_model(), WeightsKind::Pretrained, 0).unwrap()
}

fn ids(windows: &[Window], dev: &Device) -> Tensor {
    let t = windows[0].tokens.len();
    let flat: Vec<u32> = windows.iter().flat_map(|w| w.tokens.iter().copied()).collect();
    Tensor::from_vec(flat, (windows.len(), t), dev).unwrap()
}

/// L = Σ over windows and positions t < T−1 of −log softmax(z_t)[y_{t+1}], in the model's dtype
/// (f64 here), from the forward pass: the quantity G is the gradient of.
fn loss(m: &Gpt2, windows: &[Window]) -> f64 {
    let fwd = m.forward(&ids(windows, m.device())).unwrap();
    let z = m.logits(&fwd.hidden).unwrap().to_dtype(DType::F64).unwrap().to_vec3::<f64>().unwrap();
    let mut total = 0.0;
    for (b, w) in windows.iter().enumerate() {
        for t in 0..w.tokens.len() - 1 {
            let row = &z[b][t];
            let max = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let lse = max + row.iter().map(|x| (x - max).exp()).sum::<f64>().ln();
            total += lse - row[w.tokens[t + 1] as usize];
        }
    }
    total
}

/// ∂L/∂(ln_f output), (B, T, C), written out here independently of the engine:
/// (softmax(z_t) − e_{y_{t+1}})·E for t < T−1, zero at the last position; E is the LM head the
/// test says the model has (`wte`, or the untied head it wrote).
fn loss_seed(m: &Gpt2, windows: &[Window], hidden: &Tensor, head: &Tensor) -> Tensor {
    let z = m.logits(hidden).unwrap().to_vec3::<f64>().unwrap();
    let (b, t, v) = (windows.len(), windows[0].tokens.len(), z[0][0].len());
    let mut p = vec![0f64; b * t * v];
    for (bi, w) in windows.iter().enumerate() {
        for pos in 0..t - 1 {
            let row = &z[bi][pos];
            let max = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let s: f64 = row.iter().map(|x| (x - max).exp()).sum();
            for j in 0..v {
                p[(bi * t + pos) * v + j] = (row[j] - max).exp() / s;
            }
            p[(bi * t + pos) * v + w.tokens[pos + 1] as usize] -= 1.0;
        }
    }
    let p = Tensor::from_vec(p, (b, t, v), m.device()).unwrap();
    p.broadcast_matmul(head).unwrap()
}

/// The FACT sums of a (f64) model through the engine's backward with operands and
/// `Gop::add_fact`, seeded with [`loss_seed`] (E = `wte`).
fn fact_sums_f64(m: &Gpt2, windows: &[Window]) -> Gop {
    fact_sums_f64_head(m, windows, &m.params.wte)
}

fn fact_sums_f64_head(m: &Gpt2, windows: &[Window], head: &Tensor) -> Gop {
    let meta = GopMeta { fact: true, ..GopMeta::for_config(m.cfg.clone().into()) };
    let mut gop = Gop::zeros(meta);
    let fwd = m.forward(&ids(windows, m.device())).unwrap();
    let seed = loss_seed(m, windows, &fwd.hidden, head);
    m.backward_weights(&fwd, &seed, &mut |g| gop.add_fact(g)).unwrap();
    gop
}

/// The stored weight (Conv1D, in × out) of whole module `m`, mutable.
fn weight_mut<'a>(m: &'a mut Gpt2, module: &Module) -> &'a mut Tensor {
    let b = &mut m.params.blocks[module.layer];
    match Kind::of(module) {
        Kind::CAttn => &mut b.attn.c_attn.weight,
        Kind::AttnCProj => &mut b.attn.c_proj.weight,
        Kind::CFc => &mut b.mlp.c_fc.weight,
        Kind::MlpCProj => &mut b.mlp.c_proj.weight,
        _ => unreachable!("whole modules only"),
    }
}

/// ∂L/∂W by fourth-order central differences for every entry of whole module `module`, as G (out × in).
fn finite_difference_gradient(m: &Gpt2, module: &Module, windows: &[Window]) -> Vec<f64> {
    let eps = 1e-3;
    let w0 = weight_mut(&mut m.clone(), module).clone();
    let (din, dout) = w0.dims2().unwrap();
    let base = w0.flatten_all().unwrap().to_vec1::<f64>().unwrap();
    let mut g = vec![0f64; dout * din];
    let mut probe = m.clone();
    for i in 0..din {
        for j in 0..dout {
            let mut at = |x: f64| {
                let mut v = base.clone();
                v[i * dout + j] += x;
                *weight_mut(&mut probe, module) = Tensor::from_vec(v, (din, dout), m.device()).unwrap();
                loss(&probe, windows)
            };
            // Fourth-order central difference: error O(ε⁴) from truncation, O(1e-16·L/ε) from rounding.
            g[j * din + i] = (8.0 * (at(eps) - at(-eps)) - (at(2.0 * eps) - at(-2.0 * eps))) / (12.0 * eps);
        }
    }
    g
}

/// LayerNorm over the last dimension in plain (differentiable) candle ops.
fn ln_plain(x: &Tensor, g: &Tensor, b: &Tensor, eps: f64) -> Tensor {
    let mean = x.mean_keepdim(2).unwrap();
    let xc = x.broadcast_sub(&mean).unwrap();
    let var = xc.sqr().unwrap().mean_keepdim(2).unwrap();
    let xhat = xc.broadcast_div(&(var + eps).unwrap().sqrt().unwrap()).unwrap();
    xhat.broadcast_mul(g).unwrap().broadcast_add(b).unwrap()
}

/// The weight gradients of the summed loss by candle's autograd on a second, plain forward
/// pass written here from the definitions (no custom ops), with LM head `head` (V × C): name of
/// each whole module → G (out × in).
fn autograd_gradients(m: &Gpt2, windows: &[Window], head: &Tensor) -> std::collections::HashMap<String, Vec<f64>> {
    use candle_core::{Var, D};
    let cfg = &m.cfg;
    let dev = m.device();
    let (b, t, c, h) = (windows.len(), windows[0].tokens.len(), cfg.n_embd, cfg.n_head);
    let hs = c / h;
    let ids = ids(windows, dev);
    let p = &m.params;
    let mut x = p.wte.embedding(&ids.flatten_all().unwrap()).unwrap().reshape((b, t, c)).unwrap();
    x = x.broadcast_add(&p.wpe.narrow(0, 0, t).unwrap()).unwrap();
    let mask: Vec<f64> = (0..t * t).map(|k| if k % t > k / t { -1e30 } else { 0.0 }).collect();
    let mask = Tensor::from_vec(mask, (t, t), dev).unwrap();
    let mut vars = Vec::new();
    let lin =
        |x: &Tensor, w: &Var, bias: &Tensor| x.broadcast_matmul(w.as_tensor()).unwrap().broadcast_add(bias).unwrap();
    for (l, blk) in p.blocks.iter().enumerate() {
        let v = [
            Var::from_tensor(&blk.attn.c_attn.weight).unwrap(),
            Var::from_tensor(&blk.attn.c_proj.weight).unwrap(),
            Var::from_tensor(&blk.mlp.c_fc.weight).unwrap(),
            Var::from_tensor(&blk.mlp.c_proj.weight).unwrap(),
        ];
        let a = ln_plain(&x, &blk.ln_1.weight, &blk.ln_1.bias, cfg.layer_norm_epsilon);
        let qkv = lin(&a, &v[0], &blk.attn.c_attn.bias);
        let head = |part: usize| {
            qkv.narrow(2, part * c, c)
                .unwrap()
                .reshape((b, t, h, hs))
                .unwrap()
                .transpose(1, 2)
                .unwrap()
                .contiguous()
                .unwrap()
        };
        let (q, k, vv) = (head(0), head(1), head(2));
        let scores = (q.matmul(&k.t().unwrap()).unwrap() / (hs as f64).sqrt()).unwrap().broadcast_add(&mask).unwrap();
        let e = scores.broadcast_sub(&scores.max_keepdim(D::Minus1).unwrap().detach()).unwrap().exp().unwrap();
        let att = e.broadcast_div(&e.sum_keepdim(D::Minus1).unwrap()).unwrap();
        let y = att.matmul(&vv).unwrap().transpose(1, 2).unwrap().reshape((b, t, c)).unwrap();
        x = (x + lin(&y, &v[1], &blk.attn.c_proj.bias)).unwrap();
        let mm = ln_plain(&x, &blk.ln_2.weight, &blk.ln_2.bias, cfg.layer_norm_epsilon);
        let pre = lin(&mm, &v[2], &blk.mlp.c_fc.bias);
        // gelu_new: 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))
        let inner = ((&pre + (pre.powf(3.0).unwrap() * 0.044715).unwrap()).unwrap()
            * (2.0 / std::f64::consts::PI).sqrt())
        .unwrap();
        let u = ((pre.clone() * 0.5).unwrap() * (inner.tanh().unwrap() + 1.0).unwrap()).unwrap();
        x = (x + lin(&u, &v[3], &blk.mlp.c_proj.bias)).unwrap();
        vars.push((l, v));
    }
    let hid = ln_plain(&x, &p.ln_f.weight, &p.ln_f.bias, cfg.layer_norm_epsilon);
    let z = hid.broadcast_matmul(&head.t().unwrap()).unwrap().narrow(1, 0, t - 1).unwrap().contiguous().unwrap(); // (B, T−1, V)
    let lse = z.exp().unwrap().sum_keepdim(D::Minus1).unwrap().log().unwrap(); // (B, T−1, 1)
    let next: Vec<u32> = windows.iter().flat_map(|w| w.tokens[1..].to_vec()).collect();
    let next = Tensor::from_vec(next, (b, t - 1, 1), dev).unwrap();
    let loss = (lse - z.gather(&next, D::Minus1).unwrap()).unwrap().sum_all().unwrap();
    assert!((loss.to_scalar::<f64>().unwrap() - self::loss(m, windows)).abs() < 1e-9, "the two forward passes differ");
    let grads = loss.backward().unwrap();
    let mut out = std::collections::HashMap::new();
    for (l, v) in vars {
        for (kind, var) in [Kind::CAttn, Kind::AttnCProj, Kind::CFc, Kind::MlpCProj].into_iter().zip(&v) {
            // ∂L/∂W_stored is in × out; G is its transpose.
            let g = grads.get(var.as_tensor()).unwrap().t().unwrap().contiguous().unwrap();
            out.insert(fact_tensor(&gpt2_module(&m.cfg, l, kind, None)), g.flatten_all().unwrap().to_vec1().unwrap());
        }
    }
    out
}

fn head_rows(g: &[f64], cols: usize, rows: std::ops::Range<usize>) -> Vec<f64> {
    g[rows.start * cols..rows.end * cols].to_vec()
}

#[test]
fn fact_sums_equal_the_weight_gradient_of_the_summed_loss() {
    let m32 = fixture();
    let m = m32.to_dtype(DType::F64).unwrap();
    let windows = golden_windows();
    let gop64 = fact_sums_f64(&m, &windows);
    // The engine itself, in f32, through the Measurer (its own loss seed) on the same windows.
    let settings = Settings { output: Output::Logits, estimator: Estimator::Sketch, probes: 1, seed: 0, fact: true };
    let meta = GopMeta { fact: true, seq_len: 8, ..GopMeta::for_config(m32.cfg.clone().into()) };
    let mut gop32 = Gop::zeros(meta);
    Measurer::new(&m32, settings).unwrap().measure_batch(&windows, &mut gop32).unwrap();
    let reference = autograd_gradients(&m, &windows, &m.params.wte);
    let (mut worst64, mut worst32, mut worst_fd) = (0f64, 0f64, 0f64);
    for owner in fact_modules(&m.table) {
        let name = fact_tensor(&owner);
        let auto = &reference[&name];
        // The reference itself against finite differences of the loss (whole modules).
        let fd = finite_difference_gradient(&m, &owner, &windows);
        let e = rel_frob(auto, &fd);
        assert!(e < 1e-7, "{}: autograd vs finite differences: relative error {e:.3e}", owner.name());
        worst_fd = worst_fd.max(e);
        let cols = owner.d_in;
        let mut check = |label: String, rows: std::ops::Range<usize>| {
            let want = head_rows(auto, cols, rows.clone());
            let e64 = rel_frob(&head_rows(&gop64.fact[&name].values, cols, rows.clone()), &want);
            let e32 = rel_frob(&head_rows(&gop32.fact[&name].values, cols, rows), &want);
            assert!(e64 < 1e-6, "{label}: G (f64) vs autograd: relative error {e64:.3e}");
            assert!(e32 < 1e-4, "{label}: G (engine, f32) vs autograd: relative error {e32:.3e}");
            worst64 = worst64.max(e64);
            worst32 = worst32.max(e32);
        };
        check(owner.name(), 0..owner.d_out);
        if Kind::of(&owner) == Kind::CAttn {
            // Head h of part p (q, k, v) is rows p·C + h·hs of c_attn's G (Conv1D columns).
            let (c, hs) = (m.cfg.n_embd, m.cfg.head_size());
            for (p, kind) in [Kind::Q, Kind::K, Kind::V].into_iter().enumerate() {
                for h in 0..m.cfg.n_head {
                    let hm = gpt2_module(&m.cfg, owner.layer, kind, Some(h));
                    assert_eq!(agop::measure::fact::fact_rows(&hm), p * c + h * hs..p * c + (h + 1) * hs);
                    check(hm.name(), p * c + h * hs..p * c + (h + 1) * hs);
                }
            }
        }
    }
    eprintln!(
        "G vs autograd, every module and head: worst relative error {worst64:.3e} (f64), {worst32:.3e} (engine, \
         f32); autograd vs finite differences {worst_fd:.3e}"
    );
}

/// An untied LM head (`tie_word_embeddings: false` with its own `lm_head.weight`) is the
/// unembedding: the checkpoint is written with a head H unlike `wte`, loaded from disk, and its G
/// (engine f32 and f64 backward) checked against autograd through H, and its logits against
/// hidden·Hᵀ (issue 24, item 2).
#[test]
fn an_untied_lm_head_is_used() {
    let tied = fixture();
    let (v, c) = (tied.cfg.vocab_size, tied.cfg.n_embd);
    let head = (Tensor::randn(0f32, 0.05, (v, c), &Device::Cpu).unwrap() + 0.01).unwrap();
    let mut untied = tied.clone();
    untied.cfg.tie_word_embeddings = false;
    untied.params.lm_head = Some(head.clone());
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("untied");
    agop::model::save_checkpoint(&untied, &dir).unwrap();
    let cfg_text = std::fs::read_to_string(dir.join("config.json")).unwrap();
    assert!(cfg_text.contains("\"tie_word_embeddings\": false"), "{cfg_text}");
    let loaded = model::load_dir(&dir, WeightsKind::Pretrained, 0).unwrap();
    let m = loaded.to_dtype(DType::F64).unwrap();
    let head64 = head.to_dtype(DType::F64).unwrap();
    let windows = golden_windows();
    let reference = autograd_gradients(&m, &windows, &head64);
    let tied_reference = autograd_gradients(
        &tied.to_dtype(DType::F64).unwrap(),
        &windows,
        &tied.params.wte.to_dtype(DType::F64).unwrap(),
    );
    let gop64 = fact_sums_f64_head(&m, &windows, &head64);
    let settings = Settings { output: Output::Logits, estimator: Estimator::Sketch, probes: 1, seed: 0, fact: true };
    let meta = GopMeta { fact: true, seq_len: 8, ..GopMeta::for_config(loaded.cfg.clone().into()) };
    let mut gop32 = Gop::zeros(meta);
    Measurer::new(&loaded, settings).unwrap().measure_batch(&windows, &mut gop32).unwrap();
    for owner in fact_modules(&m.table) {
        let name = fact_tensor(&owner);
        let e64 = rel_frob(&gop64.fact[&name].values, &reference[&name]);
        let e32 = rel_frob(&gop32.fact[&name].values, &reference[&name]);
        assert!(e64 < 1e-6 && e32 < 1e-4, "{name}: G vs autograd through the untied head: {e64:.2e} {e32:.2e}");
        // And the head matters: the tied model's G is another.
        let other = rel_frob(&tied_reference[&name], &reference[&name]);
        assert!(other > 0.1, "{name}: the untied head changed nothing ({other:.2e})");
    }
    // The logits (and so the sketch's EᵀE) read the head written, not wte.
    let hidden = loaded.forward(&ids(&windows, &Device::Cpu)).unwrap().hidden;
    let z = loaded.logits(&hidden).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let want = hidden.broadcast_matmul(&head.t().unwrap()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let diff = z.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(diff < 1e-5, "logits vs hidden·Hᵀ: {diff:.2e}");
}

/// The FACT rows' numbers against N, F and F_s formed densely and correlated entry by entry.
#[test]
fn fact_correlations_match_a_dense_computation() {
    let m = fixture().to_dtype(DType::F64).unwrap();
    let gop = fact_sums_f64(&m, &golden_windows());
    let mut worst = 0f64;
    for module in all_modules(&m.cfg) {
        let w = agop::correlate::gram::weight(&m, &module).unwrap();
        let g = module_gradient(&module, &gop.fact[&fact_tensor(&module)]);
        let got = fact_moments(&WeightSide::new(w.clone()), &g).values();
        // Dense: N = W Wᵀ, F = −W G, F_s = (F + Fᵀ)/2, F_a = (F − Fᵀ)/2.
        let n = &w * w.transpose();
        let f = -(&w * &g);
        let fs = Mat::from_fn(f.nrows(), f.ncols(), |i, j| 0.5 * (f[(i, j)] + f[(j, i)]));
        let fa = Mat::from_fn(f.nrows(), f.ncols(), |i, j| 0.5 * (f[(i, j)] - f[(j, i)]));
        let wt = w.transpose().to_owned();
        let neg_g = -&g;
        let want = [pearson(&n, &fs), cosine(&n, &fs), fa.norm_l2() / f.norm_l2(), cosine(&wt, &neg_g)];
        for k in 0..4 {
            let e = (got[k] - want[k]).abs();
            assert!(e < 1e-10, "{} metric {k}: {} vs dense {}", module.name(), got[k], want[k]);
            worst = worst.max(e);
        }
        // The small-side path (mlp.c_proj, heads) and the dense-side path agree with the reference moments.
        let dense: FactMoments = fact_moments_dense(&w, &g);
        let rel = |a: f64, b: f64| (a - b).abs() / b.abs().max(1e-300);
        let a = fact_moments(&WeightSide::new(w.clone()), &g);
        for (x, y) in [(a.nf, dense.nf), (a.nn, dense.nn), (a.ff, dense.ff), (a.ftf, dense.ftf), (a.sf, dense.sf)] {
            assert!(rel(x, y) < 1e-9, "{}: moments {x} vs {y}", module.name());
        }
    }
    eprintln!("FACT correlations vs dense: max abs difference {worst:.3e}");
}

/// Gradient descent on L + (λ/2)‖W‖² over one weight matrix (everything else frozen), with the
/// FACT sum G as the gradient: the regularized loss (from the forward pass) falls at every step,
/// and at the stationary point FACT's correlation for that W is 1.
#[test]
fn gradient_descent_with_g_reaches_a_point_where_fact_holds() {
    let mut m = fixture().to_dtype(DType::F64).unwrap();
    let windows = golden_windows();
    let target = gpt2_module(&fixture().cfg, 1, Kind::CFc, None);
    let (lambda, lr) = (2.0, 0.02);
    let fact_of = |m: &Gpt2| -> (f64, f64) {
        let gop = fact_sums_f64(m, &windows);
        let w = agop::correlate::gram::weight(m, &target).unwrap();
        let g = module_gradient(&target, &gop.fact[&fact_tensor(&target)]);
        let v = fact_moments(&WeightSide::new(w), &g).values();
        (v[0], v[3])
    };
    let (p0, wc0) = fact_of(&m);
    let objective = |m: &Gpt2| {
        let w = weight_mut(&mut m.clone(), &target).clone();
        loss(m, &windows) + 0.5 * lambda * w.sqr().unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap()
    };
    let mut prev = objective(&m);
    let mut steps = 0;
    let residual = loop {
        let gop = fact_sums_f64(&m, &windows);
        let g = &gop.fact[&fact_tensor(&target)]; // out × in
        let w = weight_mut(&mut m, &target);
        let (din, dout) = w.dims2().unwrap();
        let wv = w.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        // ∂/∂W_stored[i, j] of the objective = G[j, i] + λ W[i, j].
        let grad: Vec<f64> = (0..din * dout).map(|k| g.values[(k % dout) * din + k / dout] + lambda * wv[k]).collect();
        let res =
            grad.iter().map(|x| x * x).sum::<f64>().sqrt() / (lambda * wv.iter().map(|x| x * x).sum::<f64>().sqrt());
        if res < 1e-6 || steps == 5000 {
            break res;
        }
        let next: Vec<f64> = wv.iter().zip(&grad).map(|(w, g)| w - lr * g).collect();
        *w = Tensor::from_vec(next, (din, dout), &Device::Cpu).unwrap();
        let obj = objective(&m);
        // It falls at every step; only next to the stationary point may the change be below rounding.
        assert!(
            obj < prev || (res < 1e-5 && obj <= prev),
            "step {steps}: the regularized loss went from {prev} to {obj}"
        );
        prev = obj;
        steps += 1;
    };
    let (p1, wc1) = fact_of(&m);
    eprintln!(
        "{steps} steps, ‖G + λW‖/‖λW‖ = {residual:.2e}; FACT pearson {p0:.4} → {p1:.6}, W-cosine {wc0:.4} → {wc1:.6}"
    );
    assert!(residual < 1e-6, "did not reach a stationary point: residual {residual:.2e} after {steps} steps");
    assert!(p0 < 0.99, "FACT already held before training ({p0}): the test would show nothing");
    assert!(p1 >= 0.999, "FACT pearson at the stationary point {p1}");
    assert!(wc1 >= 0.999, "cosine(W, −G) at the stationary point {wc1}");
    // The NFA at the same point, for comparison (exact AGOP of the logits, f32 engine): not 1.
    let m32 = m.to_dtype(DType::F32).unwrap();
    let settings = Settings { output: Output::Logits, estimator: Estimator::Exact, probes: 0, seed: 0, fact: false };
    let mut gop = Gop::zeros(GopMeta { seq_len: 8, ..GopMeta::for_config(m32.cfg.clone().into()) });
    Measurer::new(&m32, settings).unwrap().measure_batch(&windows, &mut gop).unwrap();
    gop.meta.n_tokens = 16;
    let nfa = agop::correlate::correlate_module(&m32, &target, gop.get(&target).unwrap(), 16, &[0.5]).unwrap();
    eprintln!("NFA at the same point (α = 0.5): pearson {:?}", nfa[0].value);
}

fn write_windows(path: &Path, n: u64, t: usize) {
    let windows: Vec<Window> = (0..n)
        .map(|i| Window { index: i, tokens: (0..t as u64).map(|j| ((i * 13 + j * 7 + i * j) % 50) as u32).collect() })
        .collect();
    write_tokens(path, &windows, &TokensMeta::default()).unwrap();
}

fn fact_opts(shard: Option<(usize, usize)>, batch: usize, groups: u32) -> MeasureOptions {
    let settings = Settings { output: Output::Logits, estimator: Estimator::Sketch, probes: 2, seed: 9, fact: true };
    MeasureOptions { shard, groups, ..MeasureOptions::new(WeightsKind::Pretrained, settings, batch) }
}

fn assert_fact_close(a: &Gop, b: &Gop, tol: f64) {
    assert_eq!(a.fact.len(), fact_modules(&a.meta.config.modules()).len());
    assert_eq!(a.fact.keys().collect::<Vec<_>>(), b.fact.keys().collect::<Vec<_>>());
    for (k, f) in &a.fact {
        let e = rel_frob(&b.fact[k].values, &f.values);
        assert!(e <= tol, "{k}: relative Frobenius difference {e:.3e}");
    }
    for (k, (_, v)) in &a.sums {
        assert!(rel_frob(&b.sums[k].1, v) <= tol, "{k}");
    }
}

#[test]
fn fact_sums_shard_merge_resume_and_group_like_one_run() {
    let tmp = tempfile::tempdir().unwrap();
    let tokens = tmp.path().join("tokens.parquet");
    write_windows(&tokens, 9, 8);
    let model = agop::fetch::ResolvedModel::local(&fixture_model()).unwrap();
    let p = |n: &str| tmp.path().join(n);
    let whole = measure::measure(&model, &tokens, &p("whole.safetensors"), &fact_opts(None, 4, 1)).unwrap();
    assert!(whole.meta.fact);
    let parts: Vec<PathBuf> = (0..3)
        .map(|i| {
            let out = p(&format!("part-{i}.safetensors"));
            measure::measure(&model, &tokens, &out, &fact_opts(Some((i, 3)), 1 + i % 2, 1)).unwrap();
            out
        })
        .collect();
    let merged = measure::merge_files(&parts, &p("merged.safetensors")).unwrap();
    assert_fact_close(&whole, &merged, 1e-9);
    assert_fact_close(&whole, &Gop::load(&p("merged.safetensors")).unwrap(), 1e-9);
    // Grouped: the total equals the ungrouped run, and the group files add up to it.
    let grouped = measure::measure(&model, &tokens, &p("grouped.safetensors"), &fact_opts(None, 2, 3)).unwrap();
    assert_fact_close(&whole, &grouped, 1e-9);
    let mut sum = Gop::load(&measure::groups::group_path(&p("grouped.safetensors"), 0, 3)).unwrap();
    for g in 1..3 {
        sum.add_gop(&Gop::load(&measure::groups::group_path(&p("grouped.safetensors"), g, 3)).unwrap());
    }
    assert_fact_close(&whole, &sum, 1e-9);
    // Resume: a checkpoint after the first 4 windows (written by an interrupted run), then the
    // same command finishes it.
    let mut first = fact_opts(None, 2, 1);
    first.checkpoint_windows = 2;
    let ckpt = measure::run::checkpoint_path(&p("resumed.safetensors"));
    let windows: Vec<Window> = agop::tokenize::read_tokens(&tokens).unwrap().0;
    let m = model::load_dir(&fixture_model(), WeightsKind::Pretrained, 0).unwrap();
    let start = Gop::zeros(GopMeta { ..whole.meta.clone() });
    let start = GopMeta { n_windows: 0, n_tokens: 0, windows: vec![], ..start.meta };
    let partial = measure::measure_model(&m, &windows[..4], Gop::zeros(start), &first, None).unwrap();
    partial.save(&ckpt).unwrap();
    let resumed = measure::measure(&model, &tokens, &p("resumed.safetensors"), &first).unwrap();
    assert!(!ckpt.exists());
    assert_fact_close(&whole, &resumed, 1e-9);
    // A file with FACT sums and one without are different measurements: merge refuses them.
    let plain =
        MeasureOptions { settings: Settings { fact: false, ..first.settings }, ..fact_opts(Some((1, 3)), 1, 1) };
    measure::measure(&model, &tokens, &p("plain-1.safetensors"), &plain).unwrap();
    let err = measure::merge_files(&[parts[0].clone(), p("plain-1.safetensors")], &p("bad.safetensors")).unwrap_err();
    assert!(
        format!("{err:#}").contains("fact true vs false") || format!("{err:#}").contains("fact false vs true"),
        "{err:#}"
    );
}
