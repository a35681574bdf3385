//! Pearson and cosine of NFM = W Wᵀ against AGOP^α without forming either d_in × d_in matrix
//! for every power: both correlations are functions of five numbers,
//!
//!   ⟨X, Y⟩, ‖X‖², ‖Y‖², sum(X), sum(Y)     (X = NFM, Y = AGOP^α, n = d_in² entries)
//!
//!   cosine  = ⟨X,Y⟩ / (‖X‖ ‖Y‖)
//!   pearson = (⟨X,Y⟩ − sum X · sum Y / n) / √((‖X‖² − (sum X)²/n)(‖Y‖² − (sum Y)²/n))
//!
//! and each of them is a sum over one eigendecomposition per module, shared by every α:
//!
//! - operand side (AGOP A stored, d × d): A = U Λ Uᵀ (λ < 0 clamped to 0, as in
//!   [`linalg::sym_power`]); ⟨X, A^α⟩ = Σ λᵢ^α ‖Wᵀuᵢ‖², ‖A^α‖² = Σ λᵢ^{2α},
//!   sum(A^α) = Σ λᵢ^α (uᵢᵀ1)².
//! - output side (K stored, r × r, AGOP = W K Wᵀ): with B = W K^½ and BᵀB = K^½ G K^½ = V Λ Vᵀ
//!   (G = WᵀW, r × r), A^α = B V Λ^{α−1} Vᵀ Bᵀ over the kept λ (as in
//!   [`linalg::lowrank_power`]); ⟨X, A^α⟩ = Σ λₖ^{α−1} ‖G K^½ vₖ‖², ‖A^α‖² = Σ λₖ^{2α},
//!   sum(A^α) = Σ λₖ^{α−1} (vₖᵀ K^½ Wᵀ1)². Everything is r × r: for mlp.c_proj the F × F
//!   matrices of the dense path are never formed.
//! - NFM: ‖X‖² = ‖W Wᵀ‖² = ‖WᵀW‖² from the smaller Gram; sum(X) = ‖Wᵀ1‖².
//!
//! The dense path ([`super::metrics::correlate_module_dense`]) is kept as the reference the
//! tests compare with.

use anyhow::Result;
use faer::Mat;

use crate::math::linalg::{sym_eigen, sym_power};
use crate::model::Side;

/// The five numbers both correlations of one (module, power) are made of.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Moments {
    /// ⟨X, Y⟩.
    pub dot: f64,
    /// ‖X‖², ‖Y‖².
    pub xx: f64,
    pub yy: f64,
    /// Sums of the entries.
    pub sx: f64,
    pub sy: f64,
    /// Number of entries, d_in².
    pub n: f64,
}

impl Moments {
    pub fn cosine(&self) -> f64 {
        self.dot / (self.xx.sqrt() * self.yy.sqrt())
    }

    pub fn pearson(&self) -> f64 {
        let cov = self.dot - self.sx * self.sy / self.n;
        let vx = self.xx - self.sx * self.sx / self.n;
        let vy = self.yy - self.sy * self.sy / self.n;
        cov / (vx.sqrt() * vy.sqrt())
    }
}

/// ‖M‖²_F.
fn frob2(m: &Mat<f64>) -> f64 {
    (0..m.ncols()).map(|j| (0..m.nrows()).map(|i| m[(i, j)] * m[(i, j)]).sum::<f64>()).sum()
}

/// Squared norm of each column.
fn col_norms2(m: &Mat<f64>) -> Vec<f64> {
    (0..m.ncols()).map(|j| (0..m.nrows()).map(|i| m[(i, j)] * m[(i, j)]).sum()).collect()
}

/// xᵀ of each column: Mᵀ v.
fn t_mul_vec(m: &Mat<f64>, v: &[f64]) -> Vec<f64> {
    (0..m.ncols()).map(|j| (0..m.nrows()).map(|i| m[(i, j)] * v[i]).sum()).collect()
}

fn pow0(x: f64, a: f64) -> f64 {
    if x <= 0.0 {
        0.0
    } else {
        x.powf(a)
    }
}

/// Moments of one module for every power and several NFMs against the one AGOP of `w` (one
/// eigendecomposition for all): `w` is the module's weight (d_in × r, stored layout), `stored`
/// its mean stored-side matrix (operand side: d_in × d_in AGOP; output side: r × r K). For
/// each entry of `bases`, X = the NFM of `w` (None), or the NFM of `w` minus the NFM of the
/// base (the ΔNFM WₜWₜᵀ − W₀W₀ᵀ of a checkpoint series, docs/reference.md §8 `delta-gram`).
/// With M = [Wₜ W₀] everything stays a sum of per-weight terms:
///
///   ⟨X, A^α⟩ = Σ λ^α (‖Wₜᵀu‖² − ‖W₀ᵀu‖²)   (operand side; output side with u → B v),
///   ‖X‖² = ‖WₜᵀWₜ‖² + ‖W₀ᵀW₀‖² − 2‖W₀ᵀWₜ‖²,   sum(X) = ‖Wₜᵀ1‖² − ‖W₀ᵀ1‖².
///
/// Returns one list of per-power moments per base, in order, and the AGOP's `top` leading
/// eigenvectors in operand space from the same eigendecomposition ([`Eigen`]).
pub fn nfm_moments(
    w: &Mat<f64>,
    bases: &[Option<&Mat<f64>>],
    stored: &Mat<f64>,
    side: Side,
    powers: &[f64],
    top: usize,
) -> Result<(Vec<Vec<Moments>>, Eigen)> {
    let (d, r) = (w.nrows(), w.ncols());
    let n = (d * d) as f64;
    let ones = vec![1.0; d];
    let gram_norm2 = |a: &Mat<f64>| frob2(&if d <= r { a * a.transpose() } else { a.transpose() * a });
    let wt1 = t_mul_vec(w, &ones); // Wᵀ1 (r)
    let (sx_w, xx_w) = (wt1.iter().map(|x| x * x).sum::<f64>(), gram_norm2(w));
    // (sum X, ‖X‖²) of each NFM.
    let nfm_sums: Vec<(f64, f64)> = bases
        .iter()
        .map(|b| match b {
            None => (sx_w, xx_w),
            Some(w0) => (
                sx_w - t_mul_vec(w0, &ones).iter().map(|x| x * x).sum::<f64>(),
                xx_w + gram_norm2(w0) - 2.0 * frob2(&(w0.transpose() * w)),
            ),
        })
        .collect();
    Ok(match side {
        Side::Operand => {
            let (vals, u) = sym_eigen(stored)?;
            let eigen = Eigen::from_ascending(&vals, &u, top);
            let wu = col_norms2(&(w.transpose() * &u)); // ‖Wᵀuᵢ‖²
            let s1: Vec<f64> = t_mul_vec(&u, &ones).into_iter().map(|x| x * x).collect(); // (uᵢᵀ1)²
            let moments = bases
                .iter()
                .zip(&nfm_sums)
                .map(|(b, &(sx, xx))| {
                    let mut m = wu.clone(); // uᵢᵀ X uᵢ
                    if let Some(w0) = b {
                        m.iter_mut().zip(col_norms2(&(w0.transpose() * &u))).for_each(|(a, c)| *a -= c);
                    }
                    powers
                        .iter()
                        .map(|&a| {
                            let la: Vec<f64> = vals.iter().map(|&l| pow0(l, a)).collect();
                            Moments {
                                dot: la.iter().zip(&m).map(|(l, m)| l * m).sum(),
                                xx,
                                yy: la.iter().map(|l| l * l).sum(),
                                sx,
                                sy: la.iter().zip(&s1).map(|(l, s)| l * s).sum(),
                                n,
                            }
                        })
                        .collect()
                })
                .collect();
            (moments, eigen)
        }
        Side::Output => {
            let g = w.transpose() * w; // r × r
            let kh = sym_power(stored, 0.5)?;
            let btb = &kh * &g * &kh;
            let (vals, v) = sym_eigen(&btb)?;
            let max = vals.iter().cloned().fold(0.0, f64::max);
            let keep: Vec<usize> = (0..vals.len()).filter(|&i| vals[i] > max * 1e-13 && vals[i] > 0.0).collect();
            // (B vₖ)ᵀ X (B vₖ) with B = W K^½: ‖G K^½ vₖ‖² (− ‖W₀ᵀW K^½ vₖ‖²), all r × r.
            let kv = &kh * &v;
            // The AGOP's eigenvectors in operand space: B vₖ / √λₖ = W K^½ vₖ / √λₖ.
            let eigen = Eigen::from_factor(w, &vals, &kv, top);
            let gkv = col_norms2(&(&g * &kv));
            let bt1 = t_mul_vec(&kh, &wt1); // K^½ Wᵀ1 (K^½ is symmetric)
            let q: Vec<f64> = t_mul_vec(&v, &bt1).into_iter().map(|x| x * x).collect(); // (vₖᵀBᵀ1)²
            let moments = bases
                .iter()
                .zip(&nfm_sums)
                .map(|(b, &(sx, xx))| {
                    let mut p = gkv.clone();
                    if let Some(w0) = b {
                        let h = w0.transpose() * w;
                        p.iter_mut().zip(col_norms2(&(&h * &kv))).for_each(|(a, c)| *a -= c);
                    }
                    powers
                        .iter()
                        .map(|&a| {
                            let (mut dot, mut yy, mut sy) = (0.0, 0.0, 0.0);
                            for &k in &keep {
                                let l = vals[k];
                                let lm1 = l.powf(a - 1.0);
                                dot += lm1 * p[k];
                                yy += l.powf(2.0 * a);
                                sy += lm1 * q[k];
                            }
                            Moments { dot, xx, yy, sx, sy, n }
                        })
                        .collect()
                })
                .collect();
            (moments, eigen)
        }
    })
}

/// The leading eigenpairs of a symmetric PSD operand-space matrix (an AGOP or an NFM).
#[derive(Debug, Clone)]
pub struct Eigen {
    /// Every eigenvalue, descending, negative rounding clamped to 0 (for a matrix known through
    /// a factor, its nonzero eigenvalues only: the rest are 0).
    pub values: Vec<f64>,
    /// The leading eigenvectors as unit columns (d × k, k ≤ the `top` asked for), in the order
    /// of `values`; only those of nonzero eigenvalues (the others are not determined).
    pub vectors: Mat<f64>,
}

impl Eigen {
    /// From `sym_eigen`'s ascending eigenvalues and eigenvector columns of the matrix itself.
    pub fn from_ascending(vals: &[f64], u: &Mat<f64>, top: usize) -> Self {
        let values: Vec<f64> = vals.iter().rev().map(|&l| l.max(0.0)).collect();
        let k = top.min(values.iter().take_while(|&&l| l > values[0] * 1e-13 && l > 0.0).count());
        let n = vals.len();
        Eigen { values, vectors: Mat::from_fn(u.nrows(), k, |i, j| u[(i, n - 1 - j)]) }
    }

    /// For A = F Fᵀ with F = W M (d × r) known through FᵀF = V Λ Vᵀ (`vals` ascending, V's
    /// columns) and `mv` = M V: A's nonzero eigenvalues are Λ's, its eigenvectors F vₖ / √λₖ.
    pub fn from_factor(w: &Mat<f64>, vals: &[f64], mv: &Mat<f64>, top: usize) -> Self {
        let max = vals.iter().cloned().fold(0.0, f64::max);
        let kept: Vec<usize> = (0..vals.len()).rev().filter(|&i| vals[i] > max * 1e-13 && vals[i] > 0.0).collect();
        let values: Vec<f64> = kept.iter().map(|&i| vals[i]).collect();
        let k = top.min(kept.len());
        let cols = Mat::from_fn(mv.nrows(), k, |i, j| mv[(i, kept[j])] / vals[kept[j]].sqrt());
        Eigen { values, vectors: w * cols }
    }

    /// The NFM W Wᵀ (operand space) of a weight W (d × r): eigen of the smaller Gram.
    pub fn of_nfm(w: &Mat<f64>, top: usize) -> Result<Self> {
        if w.nrows() <= w.ncols() {
            let (vals, u) = sym_eigen(&(w * w.transpose()))?;
            Ok(Self::from_ascending(&vals, &u, top))
        } else {
            let (vals, v) = sym_eigen(&(w.transpose() * w))?;
            Ok(Self::from_factor(w, &vals, &v, top))
        }
    }

    /// Share of the trace held by eigenvalue `i` (0-based).
    pub fn share(&self, i: usize) -> f64 {
        self.values[i] / self.values.iter().sum::<f64>()
    }

    /// The participation ratio (Σλ)² / Σλ²: the number of equally strong directions that would
    /// carry the same spread (1 for rank one, d for a multiple of the identity).
    pub fn effective_rank(&self) -> f64 {
        let s: f64 = self.values.iter().sum();
        s * s / self.values.iter().map(|l| l * l).sum::<f64>()
    }
}

/// Subspace agreement of the top-k eigenvectors of two matrices: ‖U_kᵀV_k‖²_F / k, the mean
/// squared cosine of the principal angles between the two k-dimensional eigenspaces (1: the
/// same subspace; k/d on average for random ones). NaN when either has fewer than k vectors.
pub fn subspace_agreement(u: &Mat<f64>, v: &Mat<f64>, k: usize) -> f64 {
    if u.ncols() < k || v.ncols() < k || k == 0 {
        return f64::NAN;
    }
    frob2(&(u.subcols(0, k).transpose() * v.subcols(0, k))) / k as f64
}

/// The subspace sizes k of the `subspace-<k>` rows for a module of operand dimension `d_in`
/// and output dimension `d_out`: 1, 4, 16, 64 below the weight's rank min(d_in, d_out). At k =
/// rank both spaces would be W's whole column space for output-side modules, agreeing by
/// construction, so that k is left out.
pub fn subspace_ks(d_in: usize, d_out: usize) -> Vec<(usize, &'static str)> {
    [(1, "subspace-1"), (4, "subspace-4"), (16, "subspace-16"), (64, "subspace-64")]
        .into_iter()
        .filter(|&(k, _)| k < d_in.min(d_out))
        .collect()
}
