//! Correlations between each module's NFM and AGOP^α (SPEC.md §4): Pearson and cosine.

use anyhow::{Context, Result};
use faer::Mat;

use super::gram::{agop_mean, nfm, weight};
use crate::measure::Gop;
use crate::model::Gpt2;
use crate::model::{all_modules, Module};

/// One row of correlations.parquet, without the run-level columns.
#[derive(Debug, Clone, PartialEq)]
pub struct Correlation {
    pub layer: u32,
    pub module: &'static str,
    pub head: Option<u32>,
    pub dim: u32,
    pub power: f64,
    pub metric: &'static str,
    /// `None` when the correlation is undefined (see `note`).
    pub value: Option<f64>,
    /// Why `value` is null: a zero (or, for Pearson, constant) matrix has no correlation.
    pub note: Option<&'static str>,
}

/// The `note` of a null correlation.
pub const UNDEFINED: &str = "undefined: the NFM or AGOP^power is zero (or, for pearson, has constant entries)";

/// Cosine similarity of the matrix entries: ⟨A,B⟩ / (‖A‖‖B‖).
pub fn cosine(a: &Mat<f64>, b: &Mat<f64>) -> f64 {
    let (mut ab, mut aa, mut bb) = (0.0, 0.0, 0.0);
    for j in 0..a.ncols() {
        for i in 0..a.nrows() {
            let (x, y) = (a[(i, j)], b[(i, j)]);
            ab += x * y;
            aa += x * x;
            bb += y * y;
        }
    }
    ab / (aa.sqrt() * bb.sqrt())
}

/// Pearson correlation of the matrix entries: cosine after subtracting each matrix's mean entry.
pub fn pearson(a: &Mat<f64>, b: &Mat<f64>) -> f64 {
    let n = (a.nrows() * a.ncols()) as f64;
    let mean = |m: &Mat<f64>| (0..m.ncols()).map(|j| (0..m.nrows()).map(|i| m[(i, j)]).sum::<f64>()).sum::<f64>() / n;
    let (ma, mb) = (mean(a), mean(b));
    let ca = Mat::from_fn(a.nrows(), a.ncols(), |i, j| a[(i, j)] - ma);
    let cb = Mat::from_fn(b.nrows(), b.ncols(), |i, j| b[(i, j)] - mb);
    cosine(&ca, &cb)
}

/// Correlations for one module at every power, plus (if asked) its dense mean AGOP.
pub fn correlate_module(model: &Gpt2, gop: &Gop, m: &Module, powers: &[f64]) -> Result<Vec<Correlation>> {
    let w = weight(model, m)?;
    let nfm = nfm(&w);
    let agop = agop_mean(gop, m, &w)?;
    let mut rows = Vec::new();
    for &power in powers {
        let a = agop.power(power).with_context(|| format!("AGOP^{power} of {}", m.name()))?;
        for (metric, value) in [("pearson", pearson(&nfm, &a)), ("cosine", cosine(&nfm, &a))] {
            let (value, note) = if value.is_finite() { (Some(value), None) } else { (None, Some(UNDEFINED)) };
            rows.push(Correlation {
                layer: m.layer as u32,
                module: m.kind.as_str(),
                head: m.head.map(|h| h as u32),
                dim: m.d_in(&model.cfg) as u32,
                power,
                metric,
                value,
                note,
            });
        }
    }
    Ok(rows)
}

/// Correlations for every module of the model, in SPEC.md module order.
pub fn correlate(model: &Gpt2, gop: &Gop, powers: &[f64]) -> Result<Vec<Correlation>> {
    let mut rows = Vec::new();
    for m in all_modules(&model.cfg) {
        rows.extend(correlate_module(model, gop, &m, powers)?);
    }
    Ok(rows)
}
