//! The engine's ops written with candle's own tensor ops, which run on every device candle
//! supports: this is the GPU path (CUDA: cuBLAS matmuls, candle's fused softmax and elementwise
//! kernels), and, run on the CPU, a second code path the tests compare the CPU kernels of
//! [`super::kernels`] and [`super::attention`] with. Same inputs, outputs and layouts as those
//! kernels where the caller sees them (the packed LayerNorm statistics [x̂ | 1/σ], the packed
//! Q | K | V); the attention probabilities are (B, H, T, T) here too.

use candle_core::{DType, Device, Result, Tensor, D};

/// a·b (batched alike, or b 2-D and shared), with both operands rounded to `low` first when it is
/// given (`--precision bf16`) and the product returned in a's dtype, as PyTorch's autocast does.
fn mm(a: &Tensor, b: &Tensor, low: Option<DType>) -> Result<Tensor> {
    match low {
        Some(d) if d != a.dtype() => a.to_dtype(d)?.broadcast_matmul(&b.to_dtype(d)?)?.to_dtype(a.dtype()),
        _ => a.broadcast_matmul(b),
    }
}

/// op(a)·op(b) for a (batch, r, c) and b (batch, r, c) or 2-D (shared), op = identity or transpose;
/// the products in `low` precision when given ([`mm`]). A shared b takes one GEMM over all
/// batch·r rows (on a GPU one cuBLAS call, not a batch of small ones).
pub fn bmm(a: &Tensor, b: &Tensor, a_t: bool, b_t: bool, low: Option<DType>) -> Result<Tensor> {
    if let (3, 2, false) = (a.rank(), b.rank(), a_t) {
        let (n, r, c) = a.dims3()?;
        // A transposed b is read in place (cuBLAS and gemm take transposed operands).
        let b = if b_t { b.contiguous()?.t()? } else { b.contiguous()? };
        let y = mm(&a.contiguous()?.reshape((n * r, c))?, &b, low)?;
        return y.reshape((n, r, y.dim(1)?));
    }
    let a = if a_t { a.transpose(1, 2)? } else { a.clone() };
    let b = match (b.rank(), b_t) {
        (2, true) => b.t()?,
        (_, true) => b.transpose(1, 2)?,
        _ => b.clone(),
    };
    mm(&a.contiguous()?, &b.contiguous()?, low)
}

/// x·W + bias.
pub fn bmm_bias(x: &Tensor, w: &Tensor, bias: &Tensor, low: Option<DType>) -> Result<Tensor> {
    bmm(x, w, false, false, low)?.broadcast_add(bias)
}

/// LayerNorm statistics packed as rows [x̂ (C) | 1/σ], x̂ = (x − mean)/σ, σ = √(var + eps).
pub fn layer_norm_forward(x: &Tensor, eps: f64) -> Result<Tensor> {
    let mean = x.mean_keepdim(D::Minus1)?;
    let xc = x.broadcast_sub(&mean)?;
    let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
    let rstd = (var + eps)?.sqrt()?.recip()?;
    Tensor::cat(&[&xc.broadcast_mul(&rstd)?, &rstd], D::Minus1)
}

/// γ·x̂ + β from packed statistics.
pub fn layer_norm_affine(packed: &Tensor, gamma: &Tensor, beta: &Tensor) -> Result<Tensor> {
    let c = gamma.dim(0)?;
    packed.narrow(D::Minus1, 0, c)?.broadcast_mul(gamma)?.broadcast_add(beta)
}

/// dx = (1/σ)·(dx̂ − mean(dx̂) − x̂·mean(dx̂·x̂)), dx̂ = dy·γ.
pub fn layer_norm_backward(dy: &Tensor, packed: &Tensor, gamma: &Tensor) -> Result<Tensor> {
    let c = gamma.dim(0)?;
    let xhat = packed.narrow(D::Minus1, 0, c)?;
    let rstd = packed.narrow(D::Minus1, c, 1)?;
    let dxhat = dy.broadcast_mul(gamma)?;
    let m1 = dxhat.mean_keepdim(D::Minus1)?;
    let m2 = (&dxhat * &xhat)?.mean_keepdim(D::Minus1)?;
    dxhat.broadcast_sub(&m1)?.sub(&xhat.broadcast_mul(&m2)?)?.broadcast_mul(&rstd)
}

/// gelu(x): the tanh form (`gelu_new`) or the erf form.
pub fn gelu(x: &Tensor, erf: bool) -> Result<Tensor> {
    if erf {
        x.gelu_erf()
    } else {
        x.gelu()
    }
}

/// du ⊙ gelu'(pre).
pub fn gelu_backward(du: &Tensor, pre: &Tensor, erf: bool) -> Result<Tensor> {
    let x = pre;
    let d = if erf {
        // Φ(x) + x·φ(x)
        let cdf = ((x / std::f64::consts::SQRT_2)?.erf()? + 1.0)? * 0.5;
        let pdf = ((x.sqr()? * -0.5)?.exp()? * (1.0 / (2.0 * std::f64::consts::PI).sqrt()))?;
        (cdf? + (x * pdf)?)?
    } else {
        // 0.5·(1 + tanh u) + 0.5·x·(1 − tanh² u)·√(2/π)·(1 + 3·0.044715·x²), u = √(2/π)(x + 0.044715x³)
        let k = (2.0 / std::f64::consts::PI).sqrt();
        let x2 = x.sqr()?;
        let u = ((x + (x * &x2)?.affine(0.044715, 0.0)?)? * k)?;
        let th = u.tanh()?;
        let left = ((&th + 1.0)? * 0.5)?;
        let sech2 = (th.sqr()?.neg()? + 1.0)?;
        let du_dx = (x2.affine(3.0 * 0.044715 * k, k))?;
        let right = ((x * sech2)? * du_dx)?.affine(0.5, 0.0)?;
        (left + right)?
    };
    du * d
}

/// Head `part` (0 = Q, 1 = K, 2 = V) of a packed (B, T, 3C) as (B, H, T, hs).
fn head(qkv: &Tensor, part: usize, heads: usize) -> Result<Tensor> {
    let (b, t, c3) = qkv.dims3()?;
    let c = c3 / 3;
    qkv.narrow(2, part * c, c)?.reshape((b, t, heads, c / heads))?.transpose(1, 2)?.contiguous()
}

/// (B, H, T, hs) back to (B, T, C).
fn merge(x: &Tensor) -> Result<Tensor> {
    let (b, h, t, hs) = x.dims4()?;
    x.transpose(1, 2)?.contiguous()?.reshape((b, t, h * hs))
}

/// (T, T): 0 on and below the diagonal, −∞ above.
fn causal_mask(t: usize, dtype: DType, device: &Device) -> Result<Tensor> {
    let m: Vec<f32> = (0..t * t).map(|k| if k % t > k / t { f32::NEG_INFINITY } else { 0.0 }).collect();
    Tensor::from_vec(m, (t, t), device)?.to_dtype(dtype)
}

/// The attention scores Q Kᵀ (B, H, T, T), unscaled and unmasked.
pub fn attention_scores(qkv: &Tensor, heads: usize, low: Option<DType>) -> Result<Tensor> {
    let (q, k) = (head(qkv, 0, heads)?, head(qkv, 1, heads)?);
    mm(&q, &k.transpose(2, 3)?, low)
}

/// att (B, H, T, T) = causal softmax(scale · Q Kᵀ).
pub fn attention_probs(qkv: &Tensor, heads: usize, scale: f64, low: Option<DType>) -> Result<Tensor> {
    let t = qkv.dim(1)?;
    let s = (attention_scores(qkv, heads, low)? * scale)?;
    let s = s.broadcast_add(&causal_mask(t, qkv.dtype(), qkv.device())?)?;
    if s.track_op() {
        // Training (autograd records this graph): candle-nn's fused softmax has no backward.
        let e = s.broadcast_sub(&s.max_keepdim(D::Minus1)?.detach())?.exp()?;
        return e.broadcast_div(&e.sum_keepdim(D::Minus1)?);
    }
    candle_nn::ops::softmax_last_dim(&s)
}

/// y (B, T, C) = att · V per head.
pub fn attention_mix(att: &Tensor, qkv: &Tensor, heads: usize, low: Option<DType>) -> Result<Tensor> {
    merge(&mm(att, &head(qkv, 2, heads)?, low)?)
}

/// d(Q | K | V) (B, T, 3C) from dy (B, T, C), att and the packed Q | K | V.
pub fn attention_backward(
    dy: &Tensor,
    att: &Tensor,
    qkv: &Tensor,
    heads: usize,
    scale: f64,
    low: Option<DType>,
) -> Result<Tensor> {
    // Softmax backward: dS = att ⊙ (dAtt − Σ_j dAtt ⊙ att), times the scale of S = scale·QKᵀ.
    let softmax_backward = |datt: &Tensor, att: &Tensor| {
        let dot = (datt * att)?.sum_keepdim(D::Minus1)?;
        (att * datt.broadcast_sub(&dot)?)? * scale
    };
    attention_backward_with(dy, att, qkv, heads, low, softmax_backward)
}

/// [`attention_backward`] with the softmax backward (dAtt, att) → dS given (a fused kernel on a
/// GPU).
pub fn attention_backward_with(
    dy: &Tensor,
    att: &Tensor,
    qkv: &Tensor,
    heads: usize,
    low: Option<DType>,
    softmax_backward: impl Fn(&Tensor, &Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    let (b, t, c) = dy.dims3()?;
    let dyh = dy.reshape((b, t, heads, c / heads))?.transpose(1, 2)?.contiguous()?;
    let (q, k, v) = (head(qkv, 0, heads)?, head(qkv, 1, heads)?, head(qkv, 2, heads)?);
    let dv = mm(&att.transpose(2, 3)?, &dyh, low)?;
    let datt = mm(&dyh, &v.transpose(2, 3)?, low)?;
    let ds = softmax_backward(&datt, att)?;
    let dq = mm(&ds, &k, low)?;
    let dk = mm(&ds.transpose(2, 3)?, &q, low)?;
    Tensor::cat(&[&merge(&dq)?, &merge(&dk)?, &merge(&dv)?], 2)
}
