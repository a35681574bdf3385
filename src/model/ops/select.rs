//! The ops of a forward and a hand-written backward pass, from one of two implementations: the
//! CPU kernels of [`super::kernels`] and [`super::attention`] (host memory, work split by window
//! and head, so a window's numbers never depend on its batch), or candle's own ops
//! ([`super::plain`]: any device, CUDA included), in which on a CUDA device the ops that have a
//! fused GPU kernel ([`super::softmax`], LayerNorm and the GELU backward) run as that kernel.
//! Every architecture's model runs on these.

use anyhow::Result;
use candle_core::{DType, Device, Tensor};

use super::attention::{AttentionBackward, AttentionMix, AttentionProbs};
use super::rotary::{RotaryShape, RotaryTables};
use super::softmax::{CausalSoftmax, SoftmaxBackward};
use super::{kernels, plain};
use crate::model::device::Precision;
use crate::model::params::{LayerNorm, Linear};

/// Saved LayerNorm statistics: normalized input and 1/σ.
pub struct LnCache {
    /// Rows of [x̂ (C) | 1/σ], as written by the forward kernel.
    pub packed: Tensor,
}

impl LnCache {
    /// The cache of the batch repeated `n` times ([`crate::model::Network::repeat_forward`]).
    pub fn repeat(&self, n: usize) -> anyhow::Result<Self> {
        Ok(Self { packed: crate::model::network::repeat_batch(&self.packed, n)? })
    }
}

/// The ops of the forward and backward passes (see the module doc): the CPU kernels, or candle's
/// own ops with the fused GPU kernels on a CUDA device.
#[derive(Debug, Clone, Copy)]
pub struct Ops {
    plain: bool,
    /// The fused GPU kernels ([`super::cuda`]) for the ops that have one, on a CUDA device.
    fused: bool,
    /// gelu with erf instead of the tanh form.
    erf: bool,
    /// The products' operands rounded to this type (`--precision bf16`; plain ops only).
    low: Option<DType>,
}

impl Ops {
    /// `plain`: candle's own ops (off the CPU always); `erf`: the exact GELU; `precision`: of the
    /// products ([`Precision`]: bf16 rounds their operands, which the plain ops do; TF32 is
    /// cuBLAS's setting, made where the device is).
    pub fn new(plain: bool, erf: bool, precision: Precision) -> Self {
        let plain = plain || precision == Precision::Bf16;
        Self { plain, fused: false, erf, low: (precision == Precision::Bf16).then_some(DType::BF16) }
    }

    /// The ops for a model on `device`: the CPU kernels in host memory (unless `plain_ops`),
    /// elsewhere candle's ops, with the fused kernels on a CUDA device (unless the environment
    /// sets `AGOP_FUSED_KERNELS=0`, which leaves the plain ops alone, for comparisons).
    pub fn for_device(device: &Device, plain_ops: bool, erf: bool, precision: Precision) -> Self {
        let fused = device.is_cuda() && std::env::var("AGOP_FUSED_KERNELS").map_or(true, |v| v != "0");
        Self { fused, ..Self::new(plain_ops || !device.is_cpu(), erf, precision) }
    }

    /// Whether an op that has a fused GPU kernel runs as the custom op (the CPU kernel, or the
    /// GPU kernel) rather than as candle's ops.
    fn custom(&self) -> bool {
        !self.plain || self.fused
    }

    /// x (B, T, in) · W (in, out) + b.
    pub fn linear(&self, x: &Tensor, l: &Linear) -> Result<Tensor> {
        Ok(if self.plain {
            plain::bmm_bias(x, &l.weight, &l.bias, self.low)?
        } else {
            kernels::bmm_bias(x, &l.weight, &l.bias)?
        })
    }

    /// The rotary embedding of a packed (B, T, 3C) [Q | K | V] activation, or its transpose
    /// (the backward) with `inverse` ([`super::rotary`]).
    pub fn rotate(&self, qkv: &Tensor, tables: &RotaryTables, shape: RotaryShape, inverse: bool) -> Result<Tensor> {
        Ok(super::rotary::rotate(qkv, tables, shape, inverse, self.plain)?)
    }

    /// g (B, T, out) · Wᵀ (out, in): the gradient at a Conv1D module's input.
    pub fn matmul_t(&self, g: &Tensor, w: &Tensor) -> Result<Tensor> {
        Ok(if self.plain { plain::bmm(g, w, false, true, self.low)? } else { kernels::bmm(g, w, false, true)? })
    }

    /// LayerNorm over the last dimension, returning the output and the statistics for backward.
    pub fn layer_norm(&self, x: &Tensor, ln: &LayerNorm, eps: f64) -> Result<(Tensor, LnCache)> {
        let packed = if !self.custom() {
            plain::layer_norm_forward(x, eps)?
        } else {
            x.contiguous()?.apply_op1_no_bwd(&kernels::LayerNormForward { eps })?
        };
        let cache = LnCache { packed };
        Ok((self.layer_norm_output(&cache, ln)?, cache))
    }

    /// The LayerNorm output γ·x̂ + β again, from the statistics the forward kept.
    pub fn layer_norm_output(&self, cache: &LnCache, ln: &LayerNorm) -> Result<Tensor> {
        if !self.custom() {
            return Ok(plain::layer_norm_affine(&cache.packed, &ln.weight, &ln.bias)?);
        }
        Ok(cache.packed.apply_op3_no_bwd(&ln.weight, &ln.bias, &kernels::LayerNormAffine)?)
    }

    /// dx = rstd·(dx̂ − mean(dx̂) − x̂·mean(dx̂·x̂)), dx̂ = dy·γ (one fused pass on the CPU).
    pub fn layer_norm_backward(&self, dy: &Tensor, cache: &LnCache, ln: &LayerNorm) -> Result<Tensor> {
        if !self.custom() {
            return Ok(plain::layer_norm_backward(dy, &cache.packed, &ln.weight)?);
        }
        Ok(dy.contiguous()?.apply_op3_no_bwd(&cache.packed, &ln.weight, &kernels::LayerNormBackward)?)
    }

    pub fn gelu(&self, x: &Tensor) -> Result<Tensor> {
        Ok(if self.plain {
            plain::gelu(x, self.erf)?
        } else {
            x.contiguous()?.apply_op1_no_bwd(&kernels::Gelu { erf: self.erf })?
        })
    }

    /// du ⊙ gelu'(pre).
    pub fn gelu_backward(&self, du: &Tensor, pre: &Tensor) -> Result<Tensor> {
        Ok(if !self.custom() {
            plain::gelu_backward(du, pre, self.erf)?
        } else {
            du.contiguous()?.apply_op2_no_bwd(&pre.contiguous()?, &kernels::GeluBackward { erf: self.erf })?
        })
    }

    /// att (B, H, T, T) = causal softmax(scale · Q Kᵀ) from the packed Q | K | V.
    pub fn attention_probs(&self, qkv: &Tensor, heads: usize, scale: f64) -> Result<Tensor> {
        Ok(if self.fused {
            plain::attention_scores(qkv, heads, self.low)?.apply_op1_no_bwd(&CausalSoftmax { scale })?
        } else if self.plain {
            plain::attention_probs(qkv, heads, scale, self.low)?
        } else {
            qkv.apply_op1_no_bwd(&AttentionProbs { heads, scale })?
        })
    }

    /// y (B, T, C) = att · V per head.
    pub fn attention_mix(&self, att: &Tensor, qkv: &Tensor, heads: usize) -> Result<Tensor> {
        Ok(if self.plain {
            plain::attention_mix(att, qkv, heads, self.low)?
        } else {
            att.apply_op2_no_bwd(qkv, &AttentionMix { heads })?
        })
    }

    /// d(Q | K | V) from dy at the merged heads, through att · V and the causal softmax.
    pub fn attention_backward(
        &self,
        dy: &Tensor,
        att: &Tensor,
        qkv: &Tensor,
        heads: usize,
        scale: f64,
    ) -> Result<Tensor> {
        Ok(if self.fused {
            let softmax_backward = |datt: &Tensor, att: &Tensor| datt.apply_op2_no_bwd(att, &SoftmaxBackward { scale });
            plain::attention_backward_with(dy, att, qkv, heads, self.low, softmax_backward)?
        } else if self.plain {
            plain::attention_backward(dy, att, qkv, heads, scale, self.low)?
        } else {
            dy.apply_op3_no_bwd(att, qkv, &AttentionBackward { heads, scale })?
        })
    }
}
