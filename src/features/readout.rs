//! Token read-outs of operand-space directions (docs/features.md): which tokens a direction u of
//! a module's operand space (an AGOP or NFM eigenvector, unit length) stands for.
//!
//! - `embedding`: score(t) = cos(LN(e_t), u), with e_t token t's embedding and LN the LayerNorm
//!   whose output is the module's operand (its gain, bias and eps): the operand the module
//!   would see for a residual stream holding that token's embedding alone.
//! - `logit-lens`: r = u ⊘ γ (the residual-stream direction that LN's gain maps onto u; where
//!   |γ| is below 1e-8 of its largest entry, 0), carried through the final LayerNorm's gain and
//!   unit-normalised, g = (γ_f ⊙ r) / ‖γ_f ⊙ r‖; score(t) = ⟨E_t, g⟩, the logit of token t per
//!   unit of that direction (E the unembedding; centring, scale and biases left out).

use anyhow::Result;
use candle_core::{DType, Tensor};
use faer::Mat;

use crate::model::Norm;

/// A LayerNorm's parameters in f64.
#[derive(Debug, Clone)]
pub struct NormF64 {
    pub gain: Vec<f64>,
    pub bias: Vec<f64>,
    pub eps: f64,
}

impl NormF64 {
    pub fn new(n: &Norm) -> Result<Self> {
        let v = |t: &Tensor| -> Result<Vec<f64>> { Ok(t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?) };
        Ok(Self { gain: v(n.gain)?, bias: v(n.bias)?, eps: n.eps })
    }

    /// LN(x) for one row.
    pub fn apply(&self, x: &[f64]) -> Vec<f64> {
        let c = x.len() as f64;
        let mean = x.iter().sum::<f64>() / c;
        let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / c;
        let s = 1.0 / (var + self.eps).sqrt();
        x.iter().zip(&self.gain).zip(&self.bias).map(|((v, g), b)| (v - mean) * s * g + b).collect()
    }
}

/// LN(e_t) of every embedding row, scaled to unit length (V × C): multiplied by unit directions
/// it gives the `embedding` scores.
pub fn normalized_embeddings(embedding: &Mat<f64>, norm: &NormF64) -> Mat<f64> {
    let (v, c) = (embedding.nrows(), embedding.ncols());
    let mut out = Mat::zeros(v, c);
    for t in 0..v {
        let row: Vec<f64> = (0..c).map(|j| embedding[(t, j)]).collect();
        let h = norm.apply(&row);
        let len = h.iter().map(|x| x * x).sum::<f64>().sqrt();
        let inv = if len > 0.0 { 1.0 / len } else { 0.0 };
        for (j, x) in h.into_iter().enumerate() {
            out[(t, j)] = x * inv;
        }
    }
    out
}

/// The logit-lens directions g of the columns of `u` (C × k), as columns (C × k).
pub fn logit_directions(u: &Mat<f64>, norm: &NormF64, final_gain: &[f64]) -> Mat<f64> {
    let cutoff = 1e-8 * norm.gain.iter().fold(0.0f64, |a, g| a.max(g.abs()));
    let mut g = Mat::from_fn(u.nrows(), u.ncols(), |i, j| {
        let gi = norm.gain[i];
        if gi.abs() > cutoff {
            u[(i, j)] / gi * final_gain[i]
        } else {
            0.0
        }
    });
    for j in 0..g.ncols() {
        let len = (0..g.nrows()).map(|i| g[(i, j)] * g[(i, j)]).sum::<f64>().sqrt();
        if len > 0.0 {
            for i in 0..g.nrows() {
                g[(i, j)] /= len;
            }
        }
    }
    g
}

/// The `n` highest scores of a column (token, score), highest first; ties by token id.
pub fn top_tokens(scores: &[f64], n: usize) -> Vec<(u32, f64)> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    let by = |a: &usize, b: &usize| scores[*b].total_cmp(&scores[*a]).then(a.cmp(b));
    let n = n.min(idx.len());
    if n < idx.len() && n > 0 {
        idx.select_nth_unstable_by(n - 1, by);
    }
    idx.truncate(n);
    idx.sort_by(by);
    idx.into_iter().map(|i| (i as u32, scores[i])).collect()
}
