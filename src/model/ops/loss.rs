//! The next-token loss of training: per-row cross-entropy ℓ_i = logsumexp(z_i) − z_i[y_i] over
//! logits z (N, V), with a backward, so that candle's autograd can train through it.
//!
//! Candle's own composition (log-softmax, gather) makes about a dozen passes over the (N, V)
//! logits, forward and backward, which for GPT-2's 50,257-wide vocabulary cost more than the
//! model's matmuls; the CPU op here makes one pass forward and one backward, rows in parallel.
//! [`cross_entropy_plain`] is the same function in candle's ops: the path on other devices and
//! the reference the tests compare the kernel with.
//!
//! Targets travel as a float tensor of the logits' dtype (token ids are exact in f32 below
//! 2^24); a negative target marks a row that predicts nothing (the last position of a window):
//! its loss and gradient are zero.

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;

use super::kernels::Real;
use super::{map2, Map2, Map3};

/// Per-row losses (N,) of logits (N, V) against targets (N,) (negative: no prediction).
pub fn cross_entropy_rows(z: &Tensor, targets: &Tensor) -> Result<Tensor> {
    if z.device().is_cpu() {
        z.contiguous()?.apply_op2(&targets.contiguous()?, CrossEntropy)
    } else {
        cross_entropy_plain(z, targets)
    }
}

/// Per-row losses ℓ_i and ∂(g · Σ_i ℓ_i)/∂z (N, V) in one op: each row's exponentials are
/// made once, written into the gradient and summed, then scaled by g / Σ (the training path,
/// [`crate::train`]; the separate [`cross_entropy_rows`] and [`cross_entropy_grad`] make them
/// twice). On other devices, those two.
pub fn cross_entropy_with_grad(z: &Tensor, targets: &Tensor, g: f64) -> Result<(Vec<f64>, Tensor)> {
    if !z.device().is_cpu() {
        let rows = cross_entropy_rows(z, targets)?;
        let dz = cross_entropy_grad(z, targets, &rows, g)?;
        return Ok((rows.to_dtype(candle_core::DType::F64)?.to_vec1()?, dz));
    }
    let op = CrossEntropyFused { g, losses: std::sync::Mutex::new(Vec::new()) };
    let dz = z.contiguous()?.apply_op2_no_bwd(&targets.contiguous()?, &op)?;
    let losses = std::mem::take(&mut *op.losses.lock().expect("not poisoned"));
    Ok((losses, dz))
}

/// [`cross_entropy_with_grad`]'s op: the output is the gradient; the losses go to `losses`.
struct CrossEntropyFused {
    g: f64,
    losses: std::sync::Mutex<Vec<f64>>,
}

impl Map2 for CrossEntropyFused {
    const NAME: &'static str = "cross-entropy-fused";
    fn f<T: Real>(&self, z: &[T], lz: &Layout, y: &[T], _: &Layout) -> Result<(Vec<T>, Shape)> {
        let (n, v) = lz.shape().dims2()?;
        if y.len() != n {
            candle_core::bail!("cross-entropy: {} targets for {n} rows", y.len());
        }
        let mut out = vec![T::default(); n * v];
        let losses: Vec<f64> = out
            .par_chunks_mut(v)
            .zip(z.par_chunks(v))
            .zip(y.par_iter())
            .map(|((o, row), &t)| {
                let t = t.to();
                if t < 0.0 {
                    return 0.0;
                }
                let t = t as usize;
                let max = row.iter().copied().fold(row[0], |m, x| if x > m { x } else { m });
                // Exponentials in eight lanes (as log_sum_exp), kept in the output.
                let mut lanes = [T::default(); 8];
                let mut oc = o.chunks_exact_mut(8);
                let mut rc = row.chunks_exact(8);
                for (oo, rr) in (&mut oc).zip(&mut rc) {
                    for k in 0..8 {
                        let e = (rr[k] - max).exp_();
                        oo[k] = e;
                        lanes[k] = lanes[k] + e;
                    }
                }
                let mut rest = 0f64;
                for (oo, &x) in oc.into_remainder().iter_mut().zip(rc.remainder()) {
                    let e = (x - max).exp_();
                    *oo = e;
                    rest += e.to();
                }
                let sum: f64 = lanes.iter().map(|x| x.to()).sum::<f64>() + rest;
                let scale = T::from(self.g / sum);
                for x in o.iter_mut() {
                    *x = *x * scale;
                }
                o[t] = o[t] - T::from(self.g);
                max.to() + sum.ln() - row[t].to()
            })
            .collect();
        *self.losses.lock().expect("not poisoned") = losses;
        Ok((out, lz.shape().clone()))
    }
}
custom_op!(2, CrossEntropyFused);

/// ∂(g · Σ_i ℓ_i)/∂z (N, V) from the logits, the targets and the forward's per-row losses
/// `rows` (so logsumexp is not computed again): g·(softmax(z_i) − e_{y_i}), zero rows without
/// a target. The hand-written training backward's seed ([`crate::train`]).
pub fn cross_entropy_grad(z: &Tensor, targets: &Tensor, rows: &Tensor, g: f64) -> Result<Tensor> {
    let gl = Tensor::stack(&[&(rows.ones_like()? * g)?, rows], 1)?.contiguous()?;
    if z.device().is_cpu() {
        z.contiguous()?.apply_op3_no_bwd(&targets.contiguous()?, &gl, &CrossEntropyGrad)
    } else {
        let zv = candle_core::Var::from_tensor(z)?;
        let l = (cross_entropy_plain(zv.as_tensor(), targets)? * g)?.sum_all()?;
        Ok(l.backward()?.get(zv.as_tensor()).expect("a gradient for the logits").clone())
    }
}

/// The same losses in candle's own ops (differentiable through candle's autograd).
pub fn cross_entropy_plain(z: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let valid = targets.ge(0.0)?.to_dtype(z.dtype())?; // (N,)
    let index = (targets.relu()?).to_dtype(candle_core::DType::U32)?.unsqueeze(1)?; // (N, 1)
    let max = z.max_keepdim(D::Minus1)?.detach();
    let lse = (z.broadcast_sub(&max)?.exp()?.sum_keepdim(D::Minus1)?.log()? + max)?;
    let picked = z.gather(&index, D::Minus1)?;
    (lse - picked)?.squeeze(1)? * valid
}

/// Forward: one pass per row (max, Σ exp, the target's logit).
struct CrossEntropy;

impl Map2 for CrossEntropy {
    const NAME: &'static str = "cross-entropy";
    fn f<T: Real>(&self, z: &[T], lz: &Layout, y: &[T], _: &Layout) -> Result<(Vec<T>, Shape)> {
        let (n, v) = lz.shape().dims2()?;
        if y.len() != n {
            candle_core::bail!("cross-entropy: {} targets for {n} rows", y.len());
        }
        let out: Vec<T> = z
            .par_chunks(v)
            .zip(y.par_iter())
            .map(|(row, &t)| {
                let t = t.to();
                if t < 0.0 {
                    return T::from(0.0);
                }
                let (lse, _) = log_sum_exp(row);
                T::from(lse - row[t as usize].to())
            })
            .collect();
        Ok((out, Shape::from(n)))
    }
}

/// (logsumexp, max) of a row: exponentials in the row's type in eight lanes (loops the compiler
/// vectorizes, through [`Real::exp_`]), the lanes added in f64.
fn log_sum_exp<T: Real>(row: &[T]) -> (f64, f64) {
    let max = row.iter().copied().fold(row[0], |m, x| if x > m { x } else { m });
    let mut lanes = [T::default(); 8];
    let chunks = row.chunks_exact(8);
    let rest: f64 = chunks.remainder().iter().map(|&x| (x - max).exp_().to()).sum();
    for c in chunks {
        for k in 0..8 {
            lanes[k] = lanes[k] + (c[k] - max).exp_();
        }
    }
    let s: f64 = lanes.iter().map(|x| x.to()).sum::<f64>() + rest;
    (max.to() + s.ln(), max.to())
}

/// Backward: dz_i = g_i · (softmax(z_i) − e_{y_i}), zero for rows without a target. The third
/// input holds rows [g_i, ℓ_i] (the incoming gradient and the forward's loss), so that
/// logsumexp(z_i) = ℓ_i + z_i[y_i] is not computed a second time.
struct CrossEntropyGrad;

impl Map3 for CrossEntropyGrad {
    const NAME: &'static str = "cross-entropy-grad";
    fn f<T: Real>(&self, z: &[T], lz: &Layout, y: &[T], _: &Layout, gl: &[T], _: &Layout) -> Result<(Vec<T>, Shape)> {
        let (n, v) = lz.shape().dims2()?;
        let mut out = vec![T::default(); n * v];
        out.par_chunks_mut(v).zip(z.par_chunks(v)).enumerate().for_each(|(i, (o, row))| {
            let t = y[i].to();
            if t < 0.0 {
                return;
            }
            let (gi, lse_t) = (gl[2 * i], gl[2 * i + 1] + row[t as usize]);
            for (oj, &zj) in o.iter_mut().zip(row) {
                *oj = gi * (zj - lse_t).exp_();
            }
            o[t as usize] = o[t as usize] - gi;
        });
        Ok((out, lz.shape().clone()))
    }
}
custom_op!(3, CrossEntropyGrad);

impl CustomOp2 for CrossEntropy {
    fn name(&self) -> &'static str {
        <Self as Map2>::NAME
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        map2(self, s1, l1, s2, l2)
    }
    fn bwd(&self, z: &Tensor, y: &Tensor, res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let gl = Tensor::stack(&[grad, res], 1)?.contiguous()?;
        let dz = z.apply_op3_no_bwd(y, &gl, &CrossEntropyGrad)?;
        Ok((Some(dz), None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};

    /// The kernel's losses and gradients against candle's own ops through autograd (f64).
    #[test]
    fn kernel_matches_candle_autograd() {
        let dev = Device::Cpu;
        let (n, v) = (7, 13);
        let z = Var::from_tensor(&Tensor::randn(0f64, 3.0, (n, v), &dev).unwrap()).unwrap();
        let y = Tensor::new(&[3f64, 0.0, 12.0, -1.0, 5.0, 5.0, -1.0], &dev).unwrap();
        let w = Tensor::randn(0f64, 1.0, n, &dev).unwrap();
        let fast = cross_entropy_rows(z.as_tensor(), &y).unwrap();
        let plain = cross_entropy_plain(z.as_tensor(), &y).unwrap();
        let (a, b) = (fast.to_vec1::<f64>().unwrap(), plain.to_vec1::<f64>().unwrap());
        for (x, r) in a.iter().zip(&b) {
            assert!((x - r).abs() < 1e-12, "{a:?} vs {b:?}");
        }
        assert_eq!(a[3], 0.0);
        let ga = (fast * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let gb = (plain * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let da = ga.get(z.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let db = gb.get(z.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
        for (x, r) in da.iter().zip(&db) {
            assert!((x - r).abs() < 1e-12);
        }
        // The fused op: the same losses, and the gradient of g·Σℓ.
        let (fused, dz) = cross_entropy_with_grad(z.as_tensor(), &y, 0.25).unwrap();
        for (x, r) in fused.iter().zip(&b) {
            assert!((x - r).abs() < 1e-12, "fused loss {x} vs {r}");
        }
        let gw =
            (cross_entropy_plain(z.as_tensor(), &y).unwrap() * 0.25).unwrap().sum_all().unwrap().backward().unwrap();
        let want = gw.get(z.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
        for (x, r) in dz.flatten_all().unwrap().to_vec1::<f64>().unwrap().iter().zip(&want) {
            assert!((x - r).abs() < 1e-12, "fused gradient {x} vs {r}");
        }
        // f32 too, against the f64 values.
        let z32 = z.as_tensor().to_dtype(DType::F32).unwrap();
        let y32 = y.to_dtype(DType::F32).unwrap();
        let c = cross_entropy_rows(&z32, &y32).unwrap().to_vec1::<f32>().unwrap();
        for (x, r) in c.iter().zip(&b) {
            assert!((*x as f64 - r).abs() < 1e-5);
        }
    }
}
