//! The gradient of the mean next-token loss with respect to every parameter, by the model's own
//! hand-written backward (the measurement's kernels) instead of candle's autograd: the forward
//! pass, the loss and its gradient at the hidden state in pieces of rows (so the (B·T, V) logits
//! never exist at once), then one backward that hands every block's δ and operands:
//!
//!   linear (Conv1D, y = x·W + b):  ∂W = Σ_rows xᵀ δ,  ∂b = Σ_rows δ
//!   LayerNorm (y = γ x̂ + β):       ∂γ = Σ_rows dy ⊙ x̂,  ∂β = Σ_rows dy
//!   unembedding E (V × C):          ∂E = Σ_rows dzᵀ h   (dz = ∂loss/∂logits)
//!   embeddings:                     ∂wte[id] += dx₀ row,  ∂wpe[t] = Σ_b dx₀[b, t]
//!
//! with dx₀ the gradient at block 0's input, and ∂wte also collecting ∂E when the head is tied.
//! `tests/train.rs` checks every gradient against candle's autograd through the plain-ops
//! forward (the path training used before, kept as the reference).

use std::collections::HashMap;

use anyhow::Result;
use candle_core::{DType, Tensor};

use crate::model::ops::loss;
use crate::model::Gpt2;

/// A 2-D product on the CPU kernel (single-threaded blocks, deterministic): a (r × k, or k × r
/// with `a_t`) times b (k × c, or c × k with `b_t`).
fn mm(a: &Tensor, b: &Tensor, a_t: bool, b_t: bool) -> Result<Tensor> {
    Ok(crate::model::ops::matmul(&a.unsqueeze(0)?, b, a_t, b_t)?.squeeze(0)?)
}

/// [`loss::next_token_gradients`] on tensors: (Σℓ, g·∂/∂hidden (N, C), g·∂/∂E (V, C)).
fn unembedding_gradients<T>(
    hidden: &Tensor,
    e: &Tensor,
    targets: &[Option<u32>],
    g: f64,
) -> Result<(f64, Tensor, Tensor)>
where
    T: candle_core::WithDType + crate::model::ops::Real + From<f32>,
{
    let ((n, c), (v, _)) = (hidden.dims2()?, e.dims2()?);
    let flat = |x: &Tensor| x.flatten_all()?.to_vec1::<T>();
    let (loss, dh, de) = loss::next_token_gradients(&flat(hidden)?, &flat(e)?, targets, c, v, g);
    let dev = hidden.device();
    Ok((loss, Tensor::from_vec(dh, (n, c), dev)?, Tensor::from_vec(de, (v, c), dev)?))
}

/// (mean loss over the predicted positions, every parameter's gradient by HF name) for token ids
/// (B, T) and targets (B·T,) (−1: no target).
pub fn loss_gradients(model: &Gpt2, ids: &Tensor, targets: &Tensor) -> Result<(f64, HashMap<String, Tensor>)> {
    let cfg = &model.cfg;
    let (b, t) = ids.dims2()?;
    let c = cfg.n_embd;
    let n = b * t;
    let fwd = model.forward(ids)?;
    let hidden = fwd.hidden.reshape((n, c))?;
    let e = model.unembedding_tensor();
    let dtype = hidden.dtype();
    let target_ids: Vec<Option<u32>> =
        targets.to_dtype(DType::F64)?.to_vec1::<f64>()?.iter().map(|&y| (y >= 0.0).then_some(y as u32)).collect();
    let count = target_ids.iter().flatten().count() as f64;
    if count == 0.0 {
        anyhow::bail!("no positions to predict in the batch");
    }
    let g = 1.0 / count;
    // The loss, ∂loss/∂hidden and ∂E, without the (B·T, V) logits at once.
    let (total, seed, d_e) = match dtype {
        DType::F32 => unembedding_gradients::<f32>(&hidden, e, &target_ids, g)?,
        DType::F64 => unembedding_gradients::<f64>(&hidden, e, &target_ids, g)?,
        other => anyhow::bail!("training runs in f32 or f64, not {other:?}"),
    };
    let seed = seed.reshape((b, t, c))?;

    let rows = |x: &Tensor| -> Result<Tensor> {
        let d = x.dims();
        Ok(x.reshape((d[..d.len() - 1].iter().product::<usize>(), d[d.len() - 1]))?.contiguous()?)
    };
    // Σ_rows xᵀ δ (in × out) and Σ_rows δ.
    let linear = |x: &Tensor, delta: &Tensor| -> Result<(Tensor, Tensor)> {
        let (x, d) = (rows(x)?, rows(delta)?);
        Ok((mm(&x, &d, true, false)?, d.sum(0)?))
    };
    let layer_norm = |dy: &Tensor, xhat: &Tensor| -> Result<(Tensor, Tensor)> {
        let (dy, xh) = (rows(dy)?, rows(xhat)?);
        Ok(((&dy * &xh)?.sum(0)?, dy.sum(0)?))
    };
    let mut out: HashMap<String, Tensor> = HashMap::new();
    let dx0 = model.backward_to_input(&fwd, &seed, |l, g| {
        let ops = g.operands.expect("the training backward recomputes the operands");
        let (ln1_g, ln1_b) = layer_norm(g.attn_in, &model.ln_normalized(&fwd, Some(l), false)?)?;
        let (attn_w, attn_b) = linear(&ops.attn, g.qkv_out)?;
        let (proj_w, proj_b) = linear(&ops.proj, g.proj_out)?;
        let (ln2_g, ln2_b) = layer_norm(g.fc_in, &model.ln_normalized(&fwd, Some(l), true)?)?;
        let (fc_w, fc_b) = linear(&ops.fc, g.fc_out)?;
        let (mp_w, mp_b) = linear(&ops.mlp_proj, g.mlp_out)?;
        for (name, grad) in [
            ("ln_1.weight", ln1_g),
            ("ln_1.bias", ln1_b),
            ("attn.c_attn.weight", attn_w),
            ("attn.c_attn.bias", attn_b),
            ("attn.c_proj.weight", proj_w),
            ("attn.c_proj.bias", proj_b),
            ("ln_2.weight", ln2_g),
            ("ln_2.bias", ln2_b),
            ("mlp.c_fc.weight", fc_w),
            ("mlp.c_fc.bias", fc_b),
            ("mlp.c_proj.weight", mp_w),
            ("mlp.c_proj.bias", mp_b),
        ] {
            out.insert(format!("h.{l}.{name}"), grad);
        }
        Ok(())
    })?;
    let (lnf_g, lnf_b) = layer_norm(&seed, &model.ln_normalized(&fwd, None, false)?)?;
    // Embeddings: token rows scattered by id, positions summed over the batch.
    let dx0 = rows(&dx0)?; // (B·T, C)
    let flat_ids = ids.flatten_all()?;
    let mut d_wte = Tensor::zeros((cfg.vocab_size, c), dtype, hidden.device())?.index_add(&flat_ids, &dx0, 0)?;
    let d_pos = dx0.reshape((b, t, c))?.sum(0)?; // (T, C)
    let d_wpe = if t < cfg.n_positions {
        Tensor::cat(&[d_pos, Tensor::zeros((cfg.n_positions - t, c), dtype, hidden.device())?], 0)?
    } else {
        d_pos
    };
    let untied_head = model.params.lm_head.is_some();
    if !untied_head {
        d_wte = (d_wte + &d_e)?;
    }
    out.insert("wte.weight".into(), d_wte);
    out.insert("wpe.weight".into(), d_wpe);
    out.insert("ln_f.weight".into(), lnf_g);
    out.insert("ln_f.bias".into(), lnf_b);
    if untied_head {
        out.insert("lm_head.weight".into(), d_e);
    }
    Ok((total / count, out))
}
