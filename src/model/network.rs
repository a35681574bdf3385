//! The seam between a network and the measurement: what `measure` needs from a model. GPT-2
//! ([`super::Gpt2`]) and GPT-NeoX ([`super::neox::GptNeoX`]) implement it; each lists its
//! modules in the architecture-neutral table, and the estimators, GOP sums and checkpointed
//! measure loop work unchanged for both (and for a third architecture that implements it). The device is the network's: every tensor the measurement makes is put there.

use anyhow::Result;
use candle_core::{Device, Tensor};

use super::modules::Module;

/// Gradients of one backward pass, as the measurement accumulates them: each is the stored side
/// (operand or output, [`Module::side`]) of one or more modules, all (B, T, ·).
pub enum Grad<'a> {
    /// (B, T, d): the stored-side gradient of one module.
    Module(Module, &'a Tensor),
    /// (B, T, n·width): column block i (`width` columns) is the stored-side gradient of
    /// `modules[i]`; read in place (per-head modules of a packed projection).
    Packed { modules: Vec<Module>, width: usize, tensor: &'a Tensor },
}

/// The two factors of one module's weight gradient for one backward pass, all (B, T, ·): the
/// gradient δ at the module's output (d_out columns) and the module's operand h (d_in columns);
/// the weight gradient (nn.Linear view, d_out × d_in) is Σ_s δ_s h_sᵀ (the FACT sums).
pub struct WeightGrad<'a> {
    /// A whole module (`head` is None): per-head gradients are row blocks of their c_attn's.
    pub module: Module,
    pub delta: &'a Tensor,
    pub operand: &'a Tensor,
}

/// What the correlate stage needs of a model: its module table and the weights of its modules
/// (object-safe, so one `&dyn ModuleWeights` serves every architecture).
pub trait ModuleWeights {
    /// The module table: every weight matrix measured, in the reference's order
    /// (docs/reference.md §2).
    fn modules(&self) -> Vec<Module>;

    /// The weight of a module of the table as d_in × d_out (y = x·W): the NFM is W Wᵀ in this
    /// layout (WᵀW of the usual [out, in] view); for a head, its d_out columns.
    fn module_weight(&self, m: &Module) -> Result<Tensor>;

    /// The token side of the model, for reading a module's features out as tokens
    /// (docs/features.md): the embedding, the final LayerNorm and the unembedding.
    fn token_space(&self) -> TokenSpace<'_>;

    /// The LayerNorm whose output is the operand of `m`, when that operand is the normalized
    /// residual stream (roles `qkv`, `q`, `k`, `v`, `mlp_in`); None for the others.
    fn input_norm(&self, m: &Module) -> Option<Norm<'_>>;
}

/// A LayerNorm: y = γ ⊙ (x − mean) / √(var + eps) + β.
#[derive(Debug, Clone, Copy)]
pub struct Norm<'a> {
    pub gain: &'a Tensor,
    pub bias: &'a Tensor,
    pub eps: f64,
}

/// Where tokens enter and leave the residual stream.
#[derive(Debug, Clone, Copy)]
pub struct TokenSpace<'a> {
    /// Token embeddings (V × C).
    pub embedding: &'a Tensor,
    /// The LayerNorm before the unembedding.
    pub final_norm: Norm<'a>,
    /// The unembedding E (V × C): logits = hidden · Eᵀ.
    pub unembedding: &'a Tensor,
}

/// `t` repeated `n` times along its first dimension (batch, or rows ordered by batch), for
/// [`Network::repeat_forward`].
pub fn repeat_batch(t: &Tensor, n: usize) -> Result<Tensor> {
    Ok(Tensor::cat(&vec![t; n], 0)?)
}

/// A language model whose AGOPs agop can measure.
pub trait Network: ModuleWeights + Sync {
    /// What the forward pass keeps for one or more backward passes.
    type Forward;

    /// Where the parameters (and so every activation) live.
    fn device(&self) -> &Device;

    /// The unembedding E (V × C): logits = hidden · Eᵀ.
    fn unembedding(&self) -> &Tensor;

    /// The forward pass over token ids (B, T).
    fn forward(&self, ids: &Tensor) -> Result<Self::Forward>;

    /// The final hidden state (B, T, C) the logits are computed from.
    fn hidden<'a>(&self, fwd: &'a Self::Forward) -> &'a Tensor;

    /// `fwd`'s windows repeated `n` times along the batch (copy k of window b at k·B + b): what
    /// `forward` of the repeated ids keeps, by copying instead of computing it again, so that
    /// many seeds of the same windows go back in one backward pass (the exact estimator's seeds,
    /// the sketch's stacked probes).
    fn repeat_forward(&self, fwd: &Self::Forward, n: usize) -> Result<Self::Forward>;

    /// Backward from `seed` = ∂f/∂hidden (B, T, C), handing every layer's stored-side gradients
    /// to `visit` (no weight gradients are computed).
    fn backward(&self, fwd: &Self::Forward, seed: &Tensor, visit: &mut dyn FnMut(&[Grad]) -> Result<()>) -> Result<()>;

    /// Backward from `seed` handing every whole module's output gradient and operand to `visit`
    /// (the FACT pass: the seed is the loss gradient, and Σ δ hᵀ is each weight's gradient).
    fn backward_weights(
        &self,
        fwd: &Self::Forward,
        seed: &Tensor,
        visit: &mut dyn FnMut(&[WeightGrad]) -> Result<()>,
    ) -> Result<()>;
}
