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

/// Moments of every parameter (f32, flat, in the parameter's row-major order).
pub struct AdamW {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    m: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
}

/// Elements per parallel task of the update (each element's arithmetic is the same wherever
/// it falls, so the result does not depend on the thread count).
const CHUNK: usize = 1 << 14;

impl AdamW {
    /// Zero moments for `params`.
    pub fn new(params: &[Param], weight_decay: f64) -> Result<Self> {
        let zeros = |p: &Param| vec![0f32; p.var.as_tensor().elem_count()];
        Ok(Self {
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay,
            m: params.iter().map(zeros).collect(),
            v: params.iter().map(zeros).collect(),
        })
    }

    /// Update `t` (1-based) with learning rate `lr`, the gradients (flat, f32) scaled by `coef`
    /// (gradient clipping), in one pass over each parameter's values.
    pub fn step(&mut self, params: &[Param], grads: &[Vec<f32>], coef: f64, lr: f64, t: u64) -> Result<()> {
        use rayon::prelude::*;
        let (b1, b2) = (self.beta1 as f32, self.beta2 as f32);
        let c1 = (1.0 - self.beta1.powi(t as i32)) as f32;
        let c2 = (1.0 - self.beta2.powi(t as i32)) as f32;
        let (lr32, eps, coef) = (lr as f32, self.eps as f32, coef as f32);
        for (i, (p, g)) in params.iter().zip(grads).enumerate() {
            let w_t = p.var.as_tensor();
            let mut w: Vec<f32> = w_t.flatten_all()?.to_vec1()?;
            let decay = if p.decay { (1.0 - lr * self.weight_decay) as f32 } else { 1.0 };
            w.par_chunks_mut(CHUNK)
                .zip(g.par_chunks(CHUNK))
                .zip(self.m[i].par_chunks_mut(CHUNK))
                .zip(self.v[i].par_chunks_mut(CHUNK))
                .for_each(|(((w, g), m), v)| {
                    for j in 0..w.len() {
                        let gj = g[j] * coef;
                        m[j] = b1 * m[j] + (1.0 - b1) * gj;
                        v[j] = b2 * v[j] + (1.0 - b2) * gj * gj;
                        let update = (m[j] / c1) / ((v[j] / c2).sqrt() + eps);
                        w[j] = w[j] * decay - lr32 * update;
                    }
                });
            p.var.set(&Tensor::from_vec(w, w_t.shape(), w_t.device())?)?;
        }
        Ok(())
    }

    /// Write the moments (`{name}.m`, `{name}.v`) to a safetensors file.
    pub fn save(&self, params: &[Param], path: &Path) -> Result<()> {
        let mut t = HashMap::new();
        for (i, p) in params.iter().enumerate() {
            let shape = p.var.as_tensor().shape().clone();
            let dev = p.var.device();
            t.insert(format!("{}.m", p.name), Tensor::from_vec(self.m[i].clone(), &shape, dev)?);
            t.insert(format!("{}.v", p.name), Tensor::from_vec(self.v[i].clone(), &shape, dev)?);
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
                *slot = x.flatten_all()?.to_dtype(candle_core::DType::F32)?.to_vec1()?;
            }
        }
        Ok(opt)
    }
}
