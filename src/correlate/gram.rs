//! Per-module matrices of docs/reference.md §2–3: the NFM W Wᵀ (stored layout) and the mean AGOP,
//! reconstructed from the stored side of a GOP file.

use anyhow::Result;
use faer::Mat;

use crate::math::linalg;
use crate::model::ModuleWeights;
use crate::model::{Module, Side};

/// The mean AGOP of one module, as stored: full operand-space matrix, or W and K with AGOP = W K Wᵀ.
pub enum Agop {
    Full(Mat<f64>),
    Factored { w: Mat<f64>, k: Mat<f64> },
}

impl Agop {
    /// AGOP^α (operand space), eigenvalues clamped at 0.
    pub fn power(&self, alpha: f64) -> Result<Mat<f64>> {
        match self {
            Agop::Full(a) => linalg::sym_power(a, alpha),
            Agop::Factored { w, k } => linalg::lowrank_power(w, k, alpha),
        }
    }

    /// The operand-space mean AGOP itself.
    pub fn dense(&self) -> Mat<f64> {
        match self {
            Agop::Full(a) => a.clone(),
            Agop::Factored { w, k } => w * k * w.transpose(),
        }
    }
}

/// The module's weight (d_in × d_out, stored layout) in f64.
pub fn weight(model: &dyn ModuleWeights, m: &Module) -> Result<Mat<f64>> {
    linalg::from_tensor(&model.module_weight(m)?)
}

/// NFM = W Wᵀ in operand space (d_in × d_in).
pub fn nfm(w: &Mat<f64>) -> Mat<f64> {
    w * w.transpose()
}

/// Mean AGOP (sum / n_tokens) of module `m` from its stored sum (dim, row-major values).
pub fn agop_mean(sum: &(usize, Vec<f64>), n_tokens: u64, m: &Module, w: &Mat<f64>) -> Agop {
    let s = linalg::from_square(sum.0, &sum.1, 1.0 / n_tokens.max(1) as f64);
    match m.side() {
        Side::Operand => Agop::Full(s),
        Side::Output => Agop::Factored { w: w.clone(), k: s },
    }
}
