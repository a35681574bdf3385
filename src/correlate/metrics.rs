//! Correlations between each module's NFM and AGOP^α (docs/reference.md §4): Pearson and cosine.

use anyhow::{Context, Result};
use faer::Mat;
use rayon::prelude::*;

use super::gram::{agop_mean, nfm, weight};
use super::jackknife::{jackknife, Interval};
use super::spectral::{nfm_moments, subspace_agreement, subspace_ks, Eigen};
use super::sums::RunSums;
use crate::math::linalg;
use crate::measure::Gop;
use crate::model::{Module, ModuleWeights};

/// One row of correlations.parquet, without the run-level columns.
#[derive(Debug, Clone, PartialEq)]
pub struct Correlation {
    pub layer: u32,
    pub module: &'static str,
    /// The architecture-neutral role of the module (`qkv`, `q`, …, `mlp_out`).
    pub role: &'static str,
    pub head: Option<u32>,
    pub dim: u32,
    pub power: f64,
    pub metric: &'static str,
    /// `None` when the correlation is undefined (see `note`).
    pub value: Option<f64>,
    /// Why `value` is null: a zero (or, for Pearson, constant) matrix has no correlation.
    pub note: Option<&'static str>,
    /// `nfa` (NFM vs AGOP^power); the `ansatz` column of docs/reference.md §8.
    pub ansatz: &'static str,
    /// `gram` (WᵀW); the `nfm` column of docs/reference.md §8.
    pub nfm: &'static str,
    /// Jackknife standard error and 95% interval (None with fewer than two groups or when a
    /// leave-one-out value is undefined).
    pub interval: Option<Interval>,
    /// The number of window groups (1: no interval).
    pub groups: u32,
    /// The value with each group left out in turn (empty with one group): what paired
    /// differences between runs are computed from.
    pub loo: Vec<f64>,
}

/// The `note` of a null correlation.
pub const UNDEFINED: &str = "undefined: the NFM or AGOP^power is zero (or, for pearson, has constant entries)";

/// The `note` of a null `subspace-<k>` row.
pub const UNDEFINED_SUBSPACE: &str = "undefined: the NFM or the AGOP has fewer than k nonzero eigenvalues";

/// The `note` of a null FACT row.
pub const UNDEFINED_FACT: &str =
    "undefined: the NFM or the FACT matrix −WᵀG is zero (or, for pearson, has constant entries)";

/// The `note` of the delta-gram rows of a series' first checkpoint (or any checkpoint whose
/// module weight equals the first's).
pub const NO_CHANGE: &str = "undefined: ΔNFM is zero (this module's weight equals the first checkpoint's)";

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

/// The rows of one module: every power × (pearson, cosine), `nfm` = `gram` or `delta-gram`,
/// then one `subspace-<k>` row (power 1) per value of `subspace` (the sizes of [`subspace_ks`]
/// in order; the `gram` rows only); a non-finite value becomes null with the reason.
fn rows(m: &Module, nfm: &'static str, powers: &[f64], values: &[(f64, f64)], subspace: &[f64]) -> Vec<Correlation> {
    let mut out = Vec::new();
    let row = |power: f64, metric: &'static str, value: f64, undefined: &'static str| {
        let (value, note) = if value.is_finite() { (Some(value), None) } else { (None, Some(undefined)) };
        Correlation {
            layer: m.layer as u32,
            module: m.short,
            role: m.role.as_str(),
            head: m.head.map(|h| h as u32),
            dim: m.d_in as u32,
            power,
            metric,
            value,
            note,
            ansatz: "nfa",
            nfm,
            interval: None,
            groups: 1,
            loo: Vec::new(),
        }
    };
    for (&power, &(p, c)) in powers.iter().zip(values) {
        for (metric, value) in [("pearson", p), ("cosine", c)] {
            out.push(row(power, metric, value, UNDEFINED));
        }
    }
    for (&(_, metric), &value) in subspace_ks(m.d_in, m.d_out).iter().zip(subspace) {
        out.push(row(1.0, metric, value, UNDEFINED_SUBSPACE));
    }
    out
}

/// The `subspace-<k>` values of a module: top-k agreement of its NFM's and its AGOP's
/// eigenvectors for every k of [`subspace_ks`].
fn subspace_values(m: &Module, nfm: &Eigen, agop: &Eigen) -> Vec<f64> {
    subspace_ks(m.d_in, m.d_out).iter().map(|&(k, _)| subspace_agreement(&nfm.vectors, &agop.vectors, k)).collect()
}

/// How many eigenvectors the subspace rows of `m` need.
fn top_needed(m: &Module) -> usize {
    subspace_ks(m.d_in, m.d_out).last().map_or(0, |&(k, _)| k)
}

/// Correlations of one module at every power from its stored sum (`dim` × `dim`, row-major)
/// over `n_tokens` tokens, through one eigendecomposition shared by all powers
/// ([`super::spectral`]).
pub fn correlate_module(
    model: &dyn ModuleWeights,
    m: &Module,
    sum: &(usize, Vec<f64>),
    n_tokens: u64,
    powers: &[f64],
) -> Result<Vec<Correlation>> {
    module_rows(model, None, m, sum, n_tokens, powers)
}

/// The body of [`correlate_module`] and [`correlate_module_delta`]: the NFM of `model`, minus
/// that of `base` when given (`delta-gram`), against the AGOP^α of `model`.
fn module_rows(
    model: &dyn ModuleWeights,
    base: Option<&dyn ModuleWeights>,
    m: &Module,
    sum: &(usize, Vec<f64>),
    n_tokens: u64,
    powers: &[f64],
) -> Result<Vec<Correlation>> {
    let w = weight(model, m)?;
    let w0 = base.map(|b| weight(b, m)).transpose()?;
    let stored = linalg::from_square(sum.0, &sum.1, 1.0 / n_tokens.max(1) as f64);
    let (mut moments, agop) = nfm_moments(&w, &[w0.as_ref()], &stored, m.side(), powers, top_needed(m))
        .with_context(|| format!("AGOP of {}", m.name()))?;
    let values: Vec<(f64, f64)> = moments.remove(0).iter().map(|x| (x.pearson(), x.cosine())).collect();
    let subspace = match base {
        None => subspace_values(m, &Eigen::of_nfm(&w, top_needed(m))?, &agop),
        Some(_) => vec![],
    };
    Ok(rows(m, nfm_label(base), powers, &values, &subspace))
}

/// `gram`, or `delta-gram` with a base checkpoint.
fn nfm_label(base: Option<&dyn ModuleWeights>) -> &'static str {
    if base.is_some() {
        "delta-gram"
    } else {
        "gram"
    }
}

/// [`correlate_module`] with error bars: the correlations from `total` (the module's sum over
/// all windows of `run`, as [`RunSums::total`] reads it), and again with each window group left out (total − group), for the jackknife interval
/// of every row. Costs G + 1 eigendecompositions per module instead of one.
///
/// With `base` (the first checkpoint of a series) the same eigendecompositions also give the
/// rows of ΔNFM = WₜWₜᵀ − W₀W₀ᵀ (`nfm` = `delta-gram`), after the `gram` rows.
pub fn correlate_module_grouped(
    model: &dyn ModuleWeights,
    base: Option<&dyn ModuleWeights>,
    m: &Module,
    run: &RunSums,
    total: &(usize, Vec<f64>, u64),
    powers: &[f64],
) -> Result<Vec<Correlation>> {
    let w = weight(model, m)?;
    let w0 = base.map(|b| weight(b, m)).transpose()?;
    let bases: Vec<Option<&Mat<f64>>> = std::iter::once(None).chain(w0.as_ref().map(Some)).collect();
    let (d, total, n) = (total.0, &total.1, total.2);
    let nfm_eigen = Eigen::of_nfm(&w, top_needed(m))?;
    // (pearson, cosine) per power, for each NFM; and the subspace values (NFM, not ΔNFM).
    type Values = (Vec<Vec<(f64, f64)>>, Vec<f64>);
    let values = |sum: &[f64], n: u64| -> Result<Values> {
        let stored = linalg::from_square(d, sum, 1.0 / n.max(1) as f64);
        let (moments, agop) = nfm_moments(&w, &bases, &stored, m.side(), powers, top_needed(m))
            .with_context(|| format!("AGOP of {}", m.name()))?;
        Ok((
            moments.iter().map(|ms| ms.iter().map(|x| (x.pearson(), x.cosine())).collect()).collect(),
            subspace_values(m, &nfm_eigen, &agop),
        ))
    };
    let full = values(total, n)?;
    let groups = run.group_count();
    // Groups in parallel (each an eigendecomposition of its own; memory: one group sum per thread).
    let loo = if groups < 2 {
        vec![]
    } else {
        (0..groups)
            .into_par_iter()
            .map(|g| {
                let (_, s, ng) = run.group(g, m)?;
                let rest: Vec<f64> = total.iter().zip(&s).map(|(a, b)| a - b).collect();
                values(&rest, n - ng)
            })
            .collect::<Result<Vec<_>>>()?
    };
    let mut out = Vec::new();
    // ΔNFM of a weight equal to the base's is exactly zero, whatever rounding the moments carry.
    let unchanged = w0.as_ref().is_some_and(|w0| {
        w0.nrows() == w.nrows() && w0.ncols() == w.ncols() && {
            (0..w.nrows()).all(|r| (0..w.ncols()).all(|c| w0[(r, c)] == w[(r, c)]))
        }
    });
    for (i, nfm_name) in ["gram", "delta-gram"].into_iter().take(bases.len()).enumerate() {
        let subspace: &[f64] = if i == 0 { &full.1 } else { &[] };
        let mut rows = rows(m, nfm_name, powers, &full.0[i], subspace);
        if i == 1 && unchanged {
            for row in rows.iter_mut() {
                (row.value, row.note) = (None, Some(NO_CHANGE));
            }
            out.extend(rows);
            continue;
        }
        // Rows are (power, metric) in the order of `rows`: pearson, then cosine, for each power;
        // then the subspace sizes.
        let np = 2 * powers.len();
        for (k, row) in rows.iter_mut().enumerate() {
            if groups >= 2 {
                let (pi, cosine) = (k / 2, k % 2 == 1);
                row.loo = loo
                    .iter()
                    .map(|v| match k {
                        _ if k >= np => v.1[k - np],
                        _ if cosine => v.0[i][pi].1,
                        _ => v.0[i][pi].0,
                    })
                    .collect();
                row.groups = groups as u32;
                row.interval = row.value.and_then(|v| jackknife(v, &row.loo));
            }
        }
        out.extend(rows);
    }
    Ok(out)
}

/// Correlations of module `m` of checkpoint `model` between ΔNFM = WₜWₜᵀ − W₀W₀ᵀ (W₀ from
/// `base`, the first checkpoint of a series) and the AGOP^α of `model`: rows with `nfm` =
/// `delta-gram`. For the first checkpoint itself ΔNFM = 0 and the rows are null (undefined).
pub fn correlate_module_delta(
    model: &dyn ModuleWeights,
    base: &dyn ModuleWeights,
    m: &Module,
    sum: &(usize, Vec<f64>),
    n_tokens: u64,
    powers: &[f64],
) -> Result<Vec<Correlation>> {
    module_rows(model, Some(base), m, sum, n_tokens, powers)
}

/// The dense reference of [`correlate_module_delta`].
pub fn correlate_module_delta_dense(
    model: &dyn ModuleWeights,
    base: &dyn ModuleWeights,
    gop: &Gop,
    m: &Module,
    powers: &[f64],
) -> Result<Vec<Correlation>> {
    dense_rows(model, Some(base), gop, m, powers)
}

/// The reference path: NFM and AGOP^α formed as dense d_in × d_in matrices, correlated entry by
/// entry. Slow for big models; the tests check [`correlate_module`] against it.
pub fn correlate_module_dense(
    model: &dyn ModuleWeights,
    gop: &Gop,
    m: &Module,
    powers: &[f64],
) -> Result<Vec<Correlation>> {
    dense_rows(model, None, gop, m, powers)
}

/// The body of the dense paths: X = the NFM of `model` (minus that of `base`) and AGOP^α as
/// d_in × d_in matrices.
fn dense_rows(
    model: &dyn ModuleWeights,
    base: Option<&dyn ModuleWeights>,
    gop: &Gop,
    m: &Module,
    powers: &[f64],
) -> Result<Vec<Correlation>> {
    let w = weight(model, m)?;
    let x = match base {
        Some(b) => nfm(&w) - nfm(&weight(b, m)?),
        None => nfm(&w),
    };
    let agop = agop_mean(gop.get(m)?, gop.meta.n_tokens, m, &w);
    let mut values = Vec::new();
    for &power in powers {
        let a = agop.power(power).with_context(|| format!("AGOP^{power} of {}", m.name()))?;
        values.push((pearson(&x, &a), cosine(&x, &a)));
    }
    // Subspaces from the dense d_in × d_in matrices' own eigendecompositions.
    let subspace = match base {
        Some(_) => vec![],
        None => {
            let top = top_needed(m);
            let (nv, nu) = linalg::sym_eigen(&x)?;
            let (av, au) = linalg::sym_eigen(&agop.dense())?;
            subspace_values(m, &Eigen::from_ascending(&nv, &nu, top), &Eigen::from_ascending(&av, &au, top))
        }
    };
    Ok(rows(m, nfm_label(base), powers, &values, &subspace))
}

/// Correlations for every module of the model, in the reference's module order.
pub fn correlate(model: &dyn ModuleWeights, gop: &Gop, powers: &[f64]) -> Result<Vec<Correlation>> {
    let mut out = Vec::new();
    for m in model.modules() {
        out.extend(correlate_module(model, &m, gop.get(&m)?, gop.meta.n_tokens, powers)?);
    }
    Ok(out)
}
