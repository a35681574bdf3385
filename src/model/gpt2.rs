//! GPT-2 in candle with a hand-written backward pass (in the spirit of llm.c): the forward
//! keeps what the backward needs, and the backward carries a seed gradient at the ln_f output
//! down the network, handing every block's module-output gradients (δ) and module-operand
//! gradients to a visitor. No weight gradients are computed: AGOP needs none.
//!
//! HF tensor names and the Conv1D [in, out] layout are kept (y = x·W + b).

use anyhow::{bail, Result};
use candle_core::{DType, Tensor};

use super::attention::{AttentionBackward, AttentionMix, AttentionProbs};
use super::config::Gpt2Config;
use super::kernels;

/// LayerNorm parameters (γ, β).
#[derive(Debug, Clone)]
pub struct LayerNorm {
    pub weight: Tensor,
    pub bias: Tensor,
}

/// One transformer block; weights in stored Conv1D layout [in, out].
#[derive(Debug, Clone)]
pub struct Block {
    pub ln_1: LayerNorm,
    pub c_attn_w: Tensor,
    pub c_attn_b: Tensor,
    pub c_proj_w: Tensor,
    pub c_proj_b: Tensor,
    pub ln_2: LayerNorm,
    pub fc_w: Tensor,
    pub fc_b: Tensor,
    pub mp_w: Tensor,
    pub mp_b: Tensor,
}

/// A GPT-2 language model; the LM head is tied to `wte`.
#[derive(Debug, Clone)]
pub struct Gpt2 {
    pub cfg: Gpt2Config,
    pub wte: Tensor,
    pub wpe: Tensor,
    pub blocks: Vec<Block>,
    pub ln_f: LayerNorm,
}

/// Saved LayerNorm statistics: normalized input and 1/σ.
struct LnCache {
    /// Rows of [x̂ (C) | 1/σ], as written by the forward kernel.
    packed: Tensor,
}

/// What the backward pass needs from one block's forward.
struct BlockCache {
    ln_1: LnCache,
    /// attn.c_attn output (B, T, 3C) = [Q | K | V].
    qkv: Tensor,
    /// Attention probabilities (B, H, T, T).
    att: Tensor,
    ln_2: LnCache,
    fc_pre: Tensor,
}

/// The forward pass over a batch of windows (B, T), kept for one or more backward passes.
pub struct Forward {
    blocks: Vec<BlockCache>,
    ln_f: LnCache,
    /// ln_f output (B, T, C); logits are `hidden · wteᵀ`.
    pub hidden: Tensor,
}

/// Places in a block where [`Gpt2::forward_hooked`] offers the tensor to a hook; each matches
/// one field of [`BlockGrads`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Site {
    /// ln_1 output, the operand of attn.c_attn.
    AttnIn,
    /// attn.c_attn output (q | k | v).
    QkvOut,
    /// merged heads, the operand of attn.c_proj.
    ProjIn,
    /// ln_2 output, the operand of mlp.c_fc.
    FcIn,
    /// mlp.c_proj output, before the residual add.
    MlpOut,
}

/// Gradients of one block, all (B, T, ·), for one seed. δ = gradient at a module's output
/// (pre-activation); "operand gradient" = gradient at a module's input through that module only.
pub struct BlockGrads<'a> {
    /// δ at attn.c_attn output (B, T, 3C) = [dQ | dK | dV]; head h of Q is columns h·hs..(h+1)·hs.
    pub qkv_out: &'a Tensor,
    /// Operand gradient of attn.c_attn: qkv_out · W_attnᵀ (B, T, C).
    pub attn_in: &'a Tensor,
    /// Operand gradient of attn.c_proj: δ_ap · W_apᵀ (B, T, C).
    pub proj_in: &'a Tensor,
    /// Operand gradient of mlp.c_fc: δ_fc · W_fcᵀ (B, T, C).
    pub fc_in: &'a Tensor,
    /// δ at mlp.c_proj output (B, T, C), i.e. the residual gradient after the block.
    pub mlp_out: &'a Tensor,
}

impl Gpt2 {
    pub fn new(cfg: Gpt2Config, wte: Tensor, wpe: Tensor, blocks: Vec<Block>, ln_f: LayerNorm) -> Result<Self> {
        Ok(Self { cfg, wte, wpe, blocks, ln_f })
    }

    /// Embeddings and all blocks for token ids (B, T); returns the cache for backward.
    pub fn forward(&self, ids: &Tensor) -> Result<Forward> {
        self.forward_hooked(ids, &mut |_, _, t| Ok(t))
    }

    /// [`Gpt2::forward`] with a hook that may replace the tensor at each [`Site`] of each block
    /// (used by finite-difference tests to perturb one module's operand or output).
    pub fn forward_hooked(
        &self,
        ids: &Tensor,
        hook: &mut dyn FnMut(usize, Site, Tensor) -> Result<Tensor>,
    ) -> Result<Forward> {
        let cfg = &self.cfg;
        let (b, t) = ids.dims2()?;
        if t > cfg.n_positions {
            bail!("sequence length {t} exceeds n_positions {}", cfg.n_positions);
        }
        let (c, h) = (cfg.n_embd, cfg.n_head);
        let eps = cfg.layer_norm_epsilon;
        let tok = self.wte.embedding(&ids.flatten_all()?)?.reshape((b, t, c))?;
        let mut x = tok.broadcast_add(&self.wpe.narrow(0, 0, t)?)?;
        let mut caches = Vec::with_capacity(self.blocks.len());
        for (l, blk) in self.blocks.iter().enumerate() {
            let (a, ln_1) = layer_norm(&x, &blk.ln_1, eps)?;
            let a = hook(l, Site::AttnIn, a)?;
            let qkv = hook(l, Site::QkvOut, linear(&a, &blk.c_attn_w, &blk.c_attn_b)?)?.contiguous()?;
            let scale = self.attn_scale(l);
            let att = qkv.apply_op1_no_bwd(&AttentionProbs { heads: h, scale })?;
            let y = hook(l, Site::ProjIn, att.apply_op2_no_bwd(&qkv, &AttentionMix { heads: h })?)?;
            x = (x + linear(&y, &blk.c_proj_w, &blk.c_proj_b)?)?;
            let (m, ln_2) = layer_norm(&x, &blk.ln_2, eps)?;
            let m = hook(l, Site::FcIn, m)?;
            let fc_pre = linear(&m, &blk.fc_w, &blk.fc_b)?;
            let u = self.gelu(&fc_pre)?;
            x = (x + hook(l, Site::MlpOut, linear(&u, &blk.mp_w, &blk.mp_b)?)?)?;
            caches.push(BlockCache { ln_1, qkv, att, ln_2, fc_pre });
        }
        let (hidden, ln_f) = layer_norm(&x, &self.ln_f, eps)?;
        Ok(Forward { blocks: caches, ln_f, hidden })
    }

    /// The same model computing in `dtype` (F64 for finite-difference checks).
    pub fn to_dtype(&self, dtype: DType) -> Result<Self> {
        let ln = |l: &LayerNorm| -> Result<LayerNorm> {
            Ok(LayerNorm { weight: l.weight.to_dtype(dtype)?, bias: l.bias.to_dtype(dtype)? })
        };
        let blocks = self
            .blocks
            .iter()
            .map(|b| {
                Ok(Block {
                    ln_1: ln(&b.ln_1)?,
                    c_attn_w: b.c_attn_w.to_dtype(dtype)?,
                    c_attn_b: b.c_attn_b.to_dtype(dtype)?,
                    c_proj_w: b.c_proj_w.to_dtype(dtype)?,
                    c_proj_b: b.c_proj_b.to_dtype(dtype)?,
                    ln_2: ln(&b.ln_2)?,
                    fc_w: b.fc_w.to_dtype(dtype)?,
                    fc_b: b.fc_b.to_dtype(dtype)?,
                    mp_w: b.mp_w.to_dtype(dtype)?,
                    mp_b: b.mp_b.to_dtype(dtype)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            cfg: self.cfg.clone(),
            wte: self.wte.to_dtype(dtype)?,
            wpe: self.wpe.to_dtype(dtype)?,
            blocks,
            ln_f: ln(&self.ln_f)?,
        })
    }

    /// Logits (B, T, V) from the ln_f output.
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        Ok(kernels::bmm(hidden, &self.wte, false, true)?)
    }

    /// Backward from `seed` = ∂f/∂(ln_f output), shape (B, T, C). Calls `visit(layer, grads)` for
    /// every block, last block first.
    pub fn backward(
        &self,
        fwd: &Forward,
        seed: &Tensor,
        mut visit: impl FnMut(usize, &BlockGrads) -> Result<()>,
    ) -> Result<()> {
        let cfg = &self.cfg;
        let h = cfg.n_head;
        let mut dx = layer_norm_backward(seed, &fwd.ln_f, &self.ln_f)?;
        for l in (0..self.blocks.len()).rev() {
            let blk = &self.blocks[l];
            let cache = &fwd.blocks[l];
            // MLP: x_out = x_mid + gelu(ln_2(x_mid)·W_fc + b)·W_mp + b
            let mlp_out = dx.clone();
            let du = matmul_t(&mlp_out, &blk.mp_w)?;
            let d_fc = du.apply_op2_no_bwd(&cache.fc_pre, &kernels::GeluBackward { erf: self.cfg.gelu_erf() })?;
            let fc_in = matmul_t(&d_fc, &blk.fc_w)?;
            dx = (dx + layer_norm_backward(&fc_in, &cache.ln_2, &blk.ln_2)?)?;
            // Attention: x_mid = x_in + attn(ln_1(x_in))·W_ap + b
            let proj_in = matmul_t(&dx, &blk.c_proj_w)?;
            // Through att · V and the causal softmax of scale · Q Kᵀ, to the packed (Q | K | V).
            let op = AttentionBackward { heads: h, scale: self.attn_scale(l) };
            let qkv_out = proj_in.apply_op3_no_bwd(&cache.att, &cache.qkv, &op)?;
            let attn_in = matmul_t(&qkv_out, &blk.c_attn_w)?;
            visit(
                l,
                &BlockGrads {
                    qkv_out: &qkv_out,
                    attn_in: &attn_in,
                    proj_in: &proj_in,
                    fc_in: &fc_in,
                    mlp_out: &mlp_out,
                },
            )?;
            if l > 0 {
                dx = (dx + layer_norm_backward(&attn_in, &cache.ln_1, &blk.ln_1)?)?;
            }
        }
        Ok(())
    }

    fn attn_scale(&self, layer: usize) -> f64 {
        let mut s = 1.0;
        if self.cfg.scale_attn_weights {
            s /= ((self.cfg.n_embd / self.cfg.n_head) as f64).sqrt();
        }
        if self.cfg.scale_attn_by_inverse_layer_idx {
            s /= (layer + 1) as f64;
        }
        s
    }

    fn gelu(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.contiguous()?.apply_op1_no_bwd(&kernels::Gelu { erf: self.cfg.gelu_erf() })?)
    }
}

/// x (B, T, in) · W (in, out) + b. Products go through [`kernels::bmm`], window by window, so a
/// window's numbers never depend on which other windows share its batch.
fn linear(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    Ok(kernels::bmm_bias(x, w, b)?)
}

/// g (B, T, out) · Wᵀ (out, in): the gradient at a Conv1D module's input.
fn matmul_t(g: &Tensor, w: &Tensor) -> Result<Tensor> {
    Ok(kernels::bmm(g, w, false, true)?)
}

/// LayerNorm over the last dimension, returning the output and the statistics for backward.
fn layer_norm(x: &Tensor, ln: &LayerNorm, eps: f64) -> Result<(Tensor, LnCache)> {
    let packed = x.contiguous()?.apply_op1_no_bwd(&kernels::LayerNormForward { eps })?;
    let affine =
        kernels::LayerNormAffine { gamma: kernels::gamma_values(&ln.weight)?, beta: kernels::gamma_values(&ln.bias)? };
    let y = packed.apply_op1_no_bwd(&affine)?;
    Ok((y, LnCache { packed }))
}

/// dx = rstd·(dx̂ − mean(dx̂) − x̂·mean(dx̂·x̂)), dx̂ = dy·γ (one fused pass).
fn layer_norm_backward(dy: &Tensor, cache: &LnCache, ln: &LayerNorm) -> Result<Tensor> {
    let op = kernels::LayerNormBackward { gamma: kernels::gamma_values(&ln.weight)? };
    Ok(dy.contiguous()?.apply_op2_no_bwd(&cache.packed, &op)?)
}
