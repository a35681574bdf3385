//! Dense f64 linear algebra on faer matrices: conversion from candle, symmetric eigen, and
//! symmetric matrix powers (full, and low-rank W K Wᵀ without forming the big matrix first).

use anyhow::{anyhow, Result};
use candle_core::{DType, Tensor};
use faer::{Mat, Side};

/// A 2-D candle tensor as an f64 faer matrix.
pub fn from_tensor(t: &Tensor) -> Result<Mat<f64>> {
    let (r, c) = t.dims2()?;
    let v = t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
    Ok(Mat::from_fn(r, c, |i, j| v[i * c + j]))
}

/// A row-major d × d slice as a faer matrix, times `scale`.
pub fn from_square(d: usize, v: &[f64], scale: f64) -> Mat<f64> {
    Mat::from_fn(d, d, |i, j| v[i * d + j] * scale)
}

/// Row-major values of a matrix.
pub fn to_row_major(m: &Mat<f64>) -> Vec<f64> {
    let mut out = Vec::with_capacity(m.nrows() * m.ncols());
    for i in 0..m.nrows() {
        for j in 0..m.ncols() {
            out.push(m[(i, j)]);
        }
    }
    out
}

/// Eigenvalues (ascending) and eigenvectors (columns) of the symmetrized matrix (A + Aᵀ)/2.
pub fn sym_eigen(a: &Mat<f64>) -> Result<(Vec<f64>, Mat<f64>)> {
    let s = Mat::from_fn(a.nrows(), a.ncols(), |i, j| 0.5 * (a[(i, j)] + a[(j, i)]));
    let evd = s.self_adjoint_eigen(Side::Lower).map_err(|e| anyhow!("eigendecomposition failed: {e:?}"))?;
    let vals: Vec<f64> = evd.S().column_vector().iter().copied().collect();
    Ok((vals, evd.U().to_owned()))
}

/// [`sym_eigen`] on the calling thread only: the same values whatever the thread count (faer's
/// parallel eigensolver rounds differently with a different number of threads). For what a
/// measurement is built on (the probe factor), which must not depend on the machine's cores.
pub fn sym_eigen_sequential(a: &Mat<f64>) -> Result<(Vec<f64>, Mat<f64>)> {
    let prev = faer::get_global_parallelism();
    faer::set_global_parallelism(faer::Par::Seq);
    let out = sym_eigen(a);
    faer::set_global_parallelism(prev);
    out
}

/// AᵀA (c × c, row-major) of a row-major r × c matrix, in f64, split over column blocks each
/// summed on one thread in row order: the same values whatever the thread count.
pub fn gram_deterministic(a: &[f64], r: usize, c: usize) -> Vec<f64> {
    use crate::math::gemm::{gemm_into, SyncPtr, View};
    use rayon::prelude::*;
    const BLOCK: usize = 64;
    assert_eq!(a.len(), r * c, "gram: shape");
    let mut out = vec![0.0; c * c];
    let dst = SyncPtr(out.as_mut_ptr());
    (0..c.div_ceil(BLOCK)).into_par_iter().for_each(|i| {
        let j0 = i * BLOCK;
        let at = View::new(a.as_ptr(), 1, c); // c × r
        let b = View::new(a.as_ptr(), c, 1).cols(j0); // r × BLOCK

        // SAFETY: block i alone writes columns j0..j0 + BLOCK of out; the views address a.
        unsafe { gemm_into(c, BLOCK.min(c - j0), r, dst.at(j0), c, at, b, 1.0) };
    });
    out
}

/// A^α for symmetric positive semi-definite A, eigenvalues clamped at 0.
pub fn sym_power(a: &Mat<f64>, alpha: f64) -> Result<Mat<f64>> {
    let (vals, u) = sym_eigen(a)?;
    let n = a.nrows();
    let scaled = Mat::from_fn(n, n, |i, k| u[(i, k)] * clamp_pow(vals[k], alpha));
    Ok(&scaled * u.transpose())
}

/// (W K Wᵀ)^α for W (d_in × r) and symmetric PSD K (r × r), through r × r eigenproblems only:
/// with B = W K^{1/2} and BᵀB = U Λ Uᵀ, (B Bᵀ)^α = B U Λ^{α−1} Uᵀ Bᵀ over the nonzero λ.
pub fn lowrank_power(w: &Mat<f64>, k: &Mat<f64>, alpha: f64) -> Result<Mat<f64>> {
    let b = w * sym_power(k, 0.5)?;
    let (vals, u) = sym_eigen(&(b.transpose() * &b))?;
    let max = vals.iter().cloned().fold(0.0, f64::max);
    let keep: Vec<usize> = (0..vals.len()).filter(|&i| vals[i] > max * 1e-13 && vals[i] > 0.0).collect();
    let bu = &b * &u; // columns: B u_i, norm² = λ_i
    let d = w.nrows();
    let left = Mat::from_fn(d, keep.len(), |i, c| bu[(i, keep[c])] * vals[keep[c]].powf(0.5 * alpha - 0.5));
    Ok(&left * left.transpose())
}

fn clamp_pow(x: f64, alpha: f64) -> f64 {
    if x <= 0.0 {
        0.0
    } else {
        x.powf(alpha)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The measurement's factor at GPT-2's width: the Gram against a direct f64 sum, and both it
    /// and the eigendecomposition bitwise equal on 1 and 3 threads (faer's default parallel
    /// eigensolver is not, at this size).
    #[test]
    fn deterministic_gram_and_eigen_do_not_depend_on_threads() {
        let (r, c) = (300, 768);
        let a: Vec<f64> = (0..r * c).map(|i| ((i * 7919 % 1013) as f64 / 1013.0) - 0.5).collect();
        let on = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| {
                let g = gram_deterministic(&a, r, c);
                let (vals, vecs) = sym_eigen_sequential(&from_square(c, &g, 1.0)).unwrap();
                (g, vals, to_row_major(&vecs))
            })
        };
        let (one, three) = (on(1), on(3));
        for (i, j) in [(0, 0), (5, 700), (767, 3)] {
            let want: f64 = (0..r).map(|k| a[k * c + i] * a[k * c + j]).sum();
            assert!((one.0[i * c + j] - want).abs() < 1e-10, "gram ({i}, {j})");
        }
        assert!(one == three, "the factor differs between 1 and 3 threads");
    }
}
