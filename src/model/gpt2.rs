//! GPT-2 in candle with a hand-written backward pass (in the spirit of llm.c): the forward
//! keeps what the backward needs, and the backward carries a seed gradient at the ln_f output
//! down the network, handing every block's module-output gradients (δ) and module-operand
//! gradients to a visitor. No weight gradients are computed: AGOP needs none.
//!
//! HF tensor names and the Conv1D [in, out] layout are kept (y = x·W + b); the parameters are
//! those of [`Params`], on whatever device they were loaded to.
//!
//! candle-transformers has no GPT-2 (it has GPT-BigCode and others): this model is agop's own.

use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};

use super::config::Gpt2Config;
use super::device::Precision;
use super::modules::{all_modules, Kind, Module, Role};
use super::network::{repeat_batch, Grad, ModuleWeights, Network, Norm, TokenSpace, WeightGrad};
use super::ops::select::{LnCache, Ops};
use super::params::Params;

/// A GPT-2 language model; the LM head is `wte` unless the config unties it.
#[derive(Debug, Clone)]
pub struct Gpt2 {
    pub cfg: Gpt2Config,
    pub params: Params,
    /// The module table ([`all_modules`]).
    pub table: Vec<Module>,
    /// Run candle's own ops ([`plain`]) even on the CPU (tests: the second code path). Off the
    /// CPU they are always used.
    pub plain_ops: bool,
    /// The precision of the model's products ([`Precision`]; f32 unless `--precision`).
    pub precision: Precision,
}

/// What the backward pass needs from one block's forward.
struct BlockCache {
    ln_1: LnCache,
    /// attn.c_attn output (B, T, 3C) = [Q | K | V].
    qkv: Tensor,
    ln_2: LnCache,
    fc_pre: Tensor,
}

/// The forward pass over a batch of windows (B, T), kept for one or more backward passes.
pub struct Forward {
    blocks: Vec<BlockCache>,
    ln_f: LnCache,
    /// ln_f output (B, T, C); logits are `hidden · Eᵀ` (E = `wte` or the untied head).
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
    /// δ at attn.c_proj output (B, T, C): the residual gradient between attention and MLP.
    pub proj_out: &'a Tensor,
    /// δ at mlp.c_fc output (B, T, F), before the GELU.
    pub fc_out: &'a Tensor,
    /// The operands of the block's modules, when the backward was asked for them
    /// ([`Gpt2::backward_operands`]).
    pub operands: Option<&'a BlockOperands>,
}

/// The operands (inputs) of one block's modules, recomputed from the forward cache, all (B, T, ·).
pub struct BlockOperands {
    /// ln_1 output a, the operand of attn.c_attn (C).
    pub attn: Tensor,
    /// Merged heads y, the operand of attn.c_proj (C).
    pub proj: Tensor,
    /// ln_2 output m, the operand of mlp.c_fc (C).
    pub fc: Tensor,
    /// gelu(fc_pre) u, the operand of mlp.c_proj (F).
    pub mlp_proj: Tensor,
}

impl Gpt2 {
    pub fn new(cfg: Gpt2Config, params: Params) -> Self {
        let table = all_modules(&cfg);
        Self { cfg, params, table, plain_ops: false, precision: Precision::F32 }
    }

    /// The same model computing with candle's own ops ([`plain`]) on the CPU too.
    pub fn with_plain_ops(self) -> Self {
        Self { plain_ops: true, ..self }
    }

    /// The same model computing its products in `precision` (bf16 runs the plain ops).
    pub fn with_precision(self, precision: Precision) -> Self {
        Self { precision, ..self }
    }

    /// Which implementation of the ops this model runs.
    fn ops(&self) -> Ops {
        Ops::for_device(self.device(), self.plain_ops, self.cfg.gelu_erf(), self.precision)
    }

    /// The device the parameters live on.
    pub fn device(&self) -> &Device {
        self.params.wte.device()
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
        let p = &self.params;
        let ops = self.ops();
        let tok = p.wte.embedding(&ids.flatten_all()?)?.reshape((b, t, c))?;
        let mut x = tok.broadcast_add(&p.wpe.narrow(0, 0, t)?)?;
        let mut caches = Vec::with_capacity(p.blocks.len());
        for (l, blk) in p.blocks.iter().enumerate() {
            let (a, ln_1) = ops.layer_norm(&x, &blk.ln_1, eps)?;
            let a = hook(l, Site::AttnIn, a)?;
            let qkv = hook(l, Site::QkvOut, ops.linear(&a, &blk.attn.c_attn)?)?.contiguous()?;
            let scale = self.attn_scale(l);
            let att = ops.attention_probs(&qkv, h, scale)?;
            let y = hook(l, Site::ProjIn, ops.attention_mix(&att, &qkv, h)?)?;
            x = (x + ops.linear(&y, &blk.attn.c_proj)?)?;
            let (m, ln_2) = ops.layer_norm(&x, &blk.ln_2, eps)?;
            let m = hook(l, Site::FcIn, m)?;
            let fc_pre = ops.linear(&m, &blk.mlp.c_fc)?;
            let u = ops.gelu(&fc_pre)?;
            x = (x + hook(l, Site::MlpOut, ops.linear(&u, &blk.mlp.c_proj)?)?)?;
            caches.push(BlockCache { ln_1, qkv, ln_2, fc_pre });
        }
        let (hidden, ln_f) = ops.layer_norm(&x, &p.ln_f, eps)?;
        Ok(Forward { blocks: caches, ln_f, hidden })
    }

    /// The weight of module `m` in stored Conv1D layout (d_in × d_out); for a head, its column
    /// block of c_attn (columns `offset..offset + d_out`).
    pub fn module_weight(&self, m: &Module) -> Result<Tensor> {
        let w = &self.params.blocks[m.layer].linear(Kind::of(m)).weight;
        Ok(if m.is_whole() { w.clone() } else { w.narrow(1, m.offset, m.d_out)? })
    }

    /// The same model computing in `dtype` (F64 for finite-difference checks).
    pub fn to_dtype(&self, dtype: DType) -> Result<Self> {
        Ok(Self { params: self.params.try_map(|t| Ok(t.to_dtype(dtype)?))?, ..self.clone() })
    }

    /// The same model on another device.
    pub fn to_device(&self, device: &Device) -> Result<Self> {
        Ok(Self { params: self.params.try_map(|t| Ok(t.to_device(device)?))?, ..self.clone() })
    }

    /// The LM head E (V × C): `wte`, or the untied `lm_head.weight`.
    pub fn unembedding_tensor(&self) -> &Tensor {
        self.params.lm_head.as_ref().unwrap_or(&self.params.wte)
    }

    /// Logits (B, T, V) from the ln_f output.
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        self.ops().matmul_t(hidden, self.unembedding_tensor())
    }

    /// Backward from `seed` = ∂f/∂(ln_f output), shape (B, T, C). Calls `visit(layer, grads)` for
    /// every block, last block first.
    pub fn backward(
        &self,
        fwd: &Forward,
        seed: &Tensor,
        visit: impl FnMut(usize, &BlockGrads) -> Result<()>,
    ) -> Result<()> {
        self.backward_inner(fwd, seed, false, false, visit).map(|_| ())
    }

    /// [`Gpt2::backward`] that also recomputes every block's module operands from the forward
    /// cache ([`BlockGrads::operands`]): what weight gradients Σ δ hᵀ need.
    pub fn backward_operands(
        &self,
        fwd: &Forward,
        seed: &Tensor,
        visit: impl FnMut(usize, &BlockGrads) -> Result<()>,
    ) -> Result<()> {
        self.backward_inner(fwd, seed, true, false, visit).map(|_| ())
    }

    /// [`Gpt2::backward_operands`] that also returns the gradient at the embeddings' sum, the
    /// input of block 0 (B, T, C): with the visited gradients, everything a training step needs.
    pub fn backward_to_input(
        &self,
        fwd: &Forward,
        seed: &Tensor,
        visit: impl FnMut(usize, &BlockGrads) -> Result<()>,
    ) -> Result<Tensor> {
        self.backward_inner(fwd, seed, true, true, visit)?.ok_or_else(|| anyhow::anyhow!("no blocks"))
    }

    /// The normalized input x̂ (B, T, C) of a LayerNorm of the forward pass: `ln_1` (`second`
    /// false) or `ln_2` of block `layer`, or `ln_f` (`layer` None). γ and β's gradients are
    /// Σ dy ⊙ x̂ and Σ dy.
    pub fn ln_normalized(&self, fwd: &Forward, layer: Option<usize>, second: bool) -> Result<Tensor> {
        let cache = match layer {
            None => &fwd.ln_f,
            Some(l) if second => &fwd.blocks[l].ln_2,
            Some(l) => &fwd.blocks[l].ln_1,
        };
        Ok(cache.packed.narrow(candle_core::D::Minus1, 0, self.cfg.n_embd)?)
    }

    /// Returns the gradient at block 0's input with `input` (the training path).
    fn backward_inner(
        &self,
        fwd: &Forward,
        seed: &Tensor,
        operands: bool,
        input: bool,
        mut visit: impl FnMut(usize, &BlockGrads) -> Result<()>,
    ) -> Result<Option<Tensor>> {
        let cfg = &self.cfg;
        let h = cfg.n_head;
        let ops = self.ops();
        let mut dx = ops.layer_norm_backward(seed, &fwd.ln_f, &self.params.ln_f)?;
        for l in (0..self.params.blocks.len()).rev() {
            let blk = &self.params.blocks[l];
            let cache = &fwd.blocks[l];
            // MLP: x_out = x_mid + gelu(ln_2(x_mid)·W_fc + b)·W_mp + b
            let mlp_out = dx.clone();
            let du = ops.matmul_t(&mlp_out, &blk.mlp.c_proj.weight)?;
            let d_fc = ops.gelu_backward(&du, &cache.fc_pre)?;
            let fc_in = ops.matmul_t(&d_fc, &blk.mlp.c_fc.weight)?;
            dx = (dx + ops.layer_norm_backward(&fc_in, &cache.ln_2, &blk.ln_2)?)?;
            // Attention: x_mid = x_in + attn(ln_1(x_in))·W_ap + b
            let proj_out = dx.clone();
            let proj_in = ops.matmul_t(&dx, &blk.attn.c_proj.weight)?;
            // Through att · V and the causal softmax of scale · Q Kᵀ, to the packed (Q | K | V).
            // The probabilities are recomputed from the cached Q | K | V rather than kept from the
            // forward: (B, H, T, T) per layer is the largest activation (1.3 GB for gpt2-xl at
            // batch 4), and the recomputation is the same deterministic op, so bitwise the same.
            let att = ops.attention_probs(&cache.qkv, h, self.attn_scale(l))?;
            let qkv_out = ops.attention_backward(&proj_in, &att, &cache.qkv, h, self.attn_scale(l))?;
            let attn_in = ops.matmul_t(&qkv_out, &blk.attn.c_attn.weight)?;
            let operand_values = if operands {
                Some(BlockOperands {
                    attn: ops.layer_norm_output(&cache.ln_1, &blk.ln_1)?,
                    proj: ops.attention_mix(&att, &cache.qkv, h)?,
                    fc: ops.layer_norm_output(&cache.ln_2, &blk.ln_2)?,
                    mlp_proj: ops.gelu(&cache.fc_pre)?,
                })
            } else {
                None
            };
            visit(
                l,
                &BlockGrads {
                    qkv_out: &qkv_out,
                    attn_in: &attn_in,
                    proj_in: &proj_in,
                    fc_in: &fc_in,
                    mlp_out: &mlp_out,
                    proj_out: &proj_out,
                    fc_out: &d_fc,
                    operands: operand_values.as_ref(),
                },
            )?;
            if l > 0 || input {
                dx = (dx + ops.layer_norm_backward(&attn_in, &cache.ln_1, &blk.ln_1)?)?;
            }
        }
        Ok(input.then_some(dx))
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
}

impl BlockGrads<'_> {
    /// The gradients as the measurement sees them: each module's stored side (docs/reference.md §2) —
    /// operand gradients of c_attn, attn.c_proj and mlp.c_fc, output gradients (δ) of
    /// mlp.c_proj and, packed in one (B, T, 3C) tensor, of every head's q, k and v.
    pub fn stored_sides(&self, table: &[Module], layer: usize) -> Vec<Grad<'_>> {
        let of_layer = || table.iter().filter(move |m| m.layer == layer);
        let whole = |kind: Kind| *of_layer().find(|m| m.role == kind.role() && m.is_whole()).expect("in the table");
        // In [Q | K | V] order, each head's columns in turn (as `offset` says).
        let mut heads: Vec<Module> = of_layer().filter(|m| m.role.per_head()).copied().collect();
        heads.sort_by_key(|m| m.offset);
        vec![
            Grad::Module(whole(Kind::CAttn), self.attn_in),
            Grad::Module(whole(Kind::AttnCProj), self.proj_in),
            Grad::Module(whole(Kind::CFc), self.fc_in),
            Grad::Module(whole(Kind::MlpCProj), self.mlp_out),
            Grad::Packed { width: heads[0].d_out, modules: heads, tensor: self.qkv_out },
        ]
    }
}

impl BlockGrads<'_> {
    /// Each whole module's (δ at its output, operand) pair; needs the operands
    /// ([`Gpt2::backward_operands`]).
    pub fn weight_grads(&self, table: &[Module], layer: usize) -> Result<Vec<WeightGrad<'_>>> {
        let Some(ops) = self.operands else { bail!("weight gradients need the backward with operands") };
        let whole = |kind: Kind| {
            *table.iter().find(|m| m.layer == layer && m.role == kind.role() && m.is_whole()).expect("in the table")
        };
        let pair = |kind, delta, operand| WeightGrad { module: whole(kind), delta, operand };
        Ok(vec![
            pair(Kind::CAttn, self.qkv_out, &ops.attn),
            pair(Kind::AttnCProj, self.proj_out, &ops.proj),
            pair(Kind::CFc, self.fc_out, &ops.fc),
            pair(Kind::MlpCProj, self.mlp_out, &ops.mlp_proj),
        ])
    }
}

impl ModuleWeights for Gpt2 {
    fn modules(&self) -> Vec<Module> {
        self.table.clone()
    }

    fn module_weight(&self, m: &Module) -> Result<Tensor> {
        Gpt2::module_weight(self, m)
    }

    fn token_space(&self) -> TokenSpace<'_> {
        let ln = &self.params.ln_f;
        TokenSpace {
            embedding: &self.params.wte,
            final_norm: Norm { gain: &ln.weight, bias: &ln.bias, eps: self.cfg.layer_norm_epsilon },
            unembedding: self.unembedding_tensor(),
        }
    }

    fn input_norm(&self, m: &Module) -> Option<Norm<'_>> {
        let blk = &self.params.blocks[m.layer];
        let ln = match m.role {
            Role::Qkv | Role::Q | Role::K | Role::V => &blk.ln_1,
            Role::MlpIn => &blk.ln_2,
            Role::AttnOut | Role::MlpOut => return None,
        };
        Some(Norm { gain: &ln.weight, bias: &ln.bias, eps: self.cfg.layer_norm_epsilon })
    }
}

impl Network for Gpt2 {
    type Forward = Forward;

    fn device(&self) -> &Device {
        Gpt2::device(self)
    }

    fn unembedding(&self) -> &Tensor {
        self.unembedding_tensor()
    }

    fn forward(&self, ids: &Tensor) -> Result<Forward> {
        Gpt2::forward(self, ids)
    }

    fn hidden<'a>(&self, fwd: &'a Forward) -> &'a Tensor {
        &fwd.hidden
    }

    fn repeat_forward(&self, fwd: &Forward, n: usize) -> Result<Forward> {
        let blocks = fwd
            .blocks
            .iter()
            .map(|b| {
                Ok(BlockCache {
                    ln_1: b.ln_1.repeat(n)?,
                    qkv: repeat_batch(&b.qkv, n)?,
                    ln_2: b.ln_2.repeat(n)?,
                    fc_pre: repeat_batch(&b.fc_pre, n)?,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Forward { blocks, ln_f: fwd.ln_f.repeat(n)?, hidden: repeat_batch(&fwd.hidden, n)? })
    }

    fn backward(&self, fwd: &Forward, seed: &Tensor, visit: &mut dyn FnMut(&[Grad]) -> Result<()>) -> Result<()> {
        Gpt2::backward(self, fwd, seed, |l, g| visit(&g.stored_sides(&self.table, l)))
    }

    fn backward_weights(
        &self,
        fwd: &Forward,
        seed: &Tensor,
        visit: &mut dyn FnMut(&[WeightGrad]) -> Result<()>,
    ) -> Result<()> {
        Gpt2::backward_operands(self, fwd, seed, |l, g| visit(&g.weight_grads(&self.table, l)?))
    }
}
