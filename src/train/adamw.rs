//! AdamW (Loshchilov & Hutter), as PyTorch's `torch.optim.AdamW` computes it, with its state
//! saved beside each checkpoint so that a resumed run continues bitwise where it stopped.
//! (candle-nn's `AdamW` keeps its moments private, so they could not be saved.)
//!
//! Per parameter p with gradient g at update t (1-based), learning rate η, decay λ:
//!   p ← p·(1 − ηλ);  m ← β₁m + (1−β₁)g;  v ← β₂v + (1−β₂)g²;
//!   p ← p − η·(m/(1−β₁ᵗ)) / (√(v/(1−β₂ᵗ)) + ε).
//! λ applies to the 2-D weights only (matrices and embeddings), not to biases and LayerNorm
//! parameters, as nanoGPT and HF's Trainer do.

use std::collections::HashMap;
use std::path::Path;

use anyhow::Result;
use candle_core::{Tensor, Var};

use crate::bad;

/// One parameter: its HF name, the variable, and whether weight decay applies.
pub struct Param {
    pub name: String,
    pub var: Var,
    pub decay: bool,
}

/// Moments of every parameter.
pub struct AdamW {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
}

impl AdamW {
    /// Zero moments for `params`.
    pub fn new(params: &[Param], weight_decay: f64) -> Result<Self> {
        let zeros = |p: &Param| p.var.as_tensor().zeros_like();
        Ok(Self {
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay,
            m: params.iter().map(zeros).collect::<candle_core::Result<_>>()?,
            v: params.iter().map(zeros).collect::<candle_core::Result<_>>()?,
        })
    }

    /// Update `t` (1-based) with learning rate `lr` and the (already clipped) gradients.
    pub fn step(&mut self, params: &[Param], grads: &[Tensor], lr: f64, t: u64) -> Result<()> {
        let (b1, b2) = (self.beta1, self.beta2);
        let c1 = 1.0 - b1.powi(t as i32);
        let c2 = 1.0 - b2.powi(t as i32);
        for (i, (p, g)) in params.iter().zip(grads).enumerate() {
            let mut w = p.var.as_tensor().detach();
            if p.decay && self.weight_decay > 0.0 {
                w = (w * (1.0 - lr * self.weight_decay))?;
            }
            self.m[i] = ((&self.m[i] * b1)? + (g * (1.0 - b1))?)?;
            self.v[i] = ((&self.v[i] * b2)? + (g.sqr()? * (1.0 - b2))?)?;
            let denom = ((&self.v[i] / c2)?.sqrt()? + self.eps)?;
            let update = ((&self.m[i] / c1)? / denom)?;
            p.var.set(&(w - (update * lr)?)?)?;
        }
        Ok(())
    }

    /// Write the moments (`{name}.m`, `{name}.v`) to a safetensors file.
    pub fn save(&self, params: &[Param], path: &Path) -> Result<()> {
        let mut t = HashMap::new();
        for (i, p) in params.iter().enumerate() {
            t.insert(format!("{}.m", p.name), self.m[i].clone());
            t.insert(format!("{}.v", p.name), self.v[i].clone());
        }
        crate::util::fs::write_atomic_path(path, |tmp| Ok(candle_core::safetensors::save(&t, tmp)?))
    }

    /// Read the moments back (shapes checked against the parameters).
    pub fn load(params: &[Param], weight_decay: f64, path: &Path) -> Result<Self> {
        let mut opt = Self::new(params, weight_decay)?;
        let mut t = candle_core::safetensors::load(path, params[0].var.device())
            .map_err(|e| bad!("{}: cannot read the optimizer state: {e}", path.display()))?;
        for (i, p) in params.iter().enumerate() {
            for (which, slot) in [("m", &mut opt.m[i]), ("v", &mut opt.v[i])] {
                let key = format!("{}.{which}", p.name);
                let x = t.remove(&key).ok_or_else(|| bad!("{}: tensor {key} is missing", path.display()))?;
                if x.dims() != p.var.dims() {
                    return Err(bad!(
                        "{}: tensor {key} has shape {:?}, expected {:?}",
                        path.display(),
                        x.dims(),
                        p.var.dims()
                    ));
                }
                *slot = x;
            }
        }
        Ok(opt)
    }
}
