//! The next-token loss of training: per-row cross-entropy ℓ_i = logsumexp(z_i) − z_i[y_i] over
//! logits z (N, V), with a backward, so that candle's autograd can train through it.
//!
//! Candle's own composition (log-softmax, gather) makes about a dozen passes over the (N, V)
//! logits, forward and backward, which for GPT-2's 50,257-wide vocabulary cost more than the
//! model's matmuls; the CPU op here makes one pass forward and one backward, rows in parallel.
//! [`cross_entropy_plain`] is the same function in candle's ops: the path on other devices and
//! the reference the tests compare the kernel with.
//!
//! Two kernels never hold the (N, V) logits at once: [`next_token_gradients`] (training: the loss
//! and its gradients at the hidden states and the unembedding) and [`loss_directions`] (FACT's
//! seed: each row's loss gradient at the hidden state).
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

/// Rows of one task of [`next_token_gradients`] (one logits GEMM, its rows' losses and
/// gradients, one back-projection); rows whose ∂loss/∂logits are held at once; vocabulary rows
/// per task of the unembedding's gradient. Fixed numbers, so that every sum is made in the same
/// order whatever the thread count.
const TRAIN_ROWS: usize = 96;
const TRAIN_CHUNK: usize = 8 * TRAIN_ROWS;
const TRAIN_VOCAB: usize = 256;

/// The training loss and its gradients at the unembedding, for hidden states h (N, C) and the
/// unembedding E (V, C), both row-major, and `targets` (N; None: the row predicts nothing):
/// (Σ_i ℓ_i, g·∂Σℓ/∂h (N, C), g·∂Σℓ/∂E (V, C)) with ℓ_i = logsumexp(E h_i) − (E h_i)[y_i] and
/// dz_i = softmax(E h_i) − e_{y_i}:
///
///   z = h Eᵀ (rows × V)   →   ℓ_i and g·dz_i in one pass per row   →   ∂h = dz E
///   ∂E = Σ_rows dzᵀ h   (one GEMM per vocabulary block, over all the chunk's rows)
///
/// Rows go in chunks of [`TRAIN_CHUNK`] (their dz held: chunk × V), each chunk in tasks of
/// [`TRAIN_ROWS`] rows; ∂E is added chunk by chunk, in blocks of [`TRAIN_VOCAB`] rows, so the
/// (N, V) logits never exist at once and ∂E is written once per chunk rather than once per
/// task. The training path ([`crate::train`]); its reference is candle's autograd through
/// [`cross_entropy_plain`].
pub fn next_token_gradients<T: Real + From<f32>>(
    hidden: &[T],
    e: &[T],
    targets: &[Option<u32>],
    c: usize,
    v: usize,
    g: f64,
) -> (f64, Vec<T>, Vec<T>) {
    use crate::math::gemm::{gemm_add, gemm_into, View};
    let n = targets.len();
    assert!(hidden.len() == n * c && e.len() == v * c && v > 0 && c > 0, "next-token gradients: shapes");
    let one = <T as Real>::from(1.0);
    let mut d_hidden = vec![T::default(); n * c];
    let mut d_e = vec![T::default(); v * c];
    let mut dz = vec![T::default(); TRAIN_CHUNK.min(n) * v];
    let mut loss = 0f64;
    for c0 in (0..n).step_by(TRAIN_CHUNK) {
        let len = TRAIN_CHUNK.min(n - c0);
        let h = &hidden[c0 * c..(c0 + len) * c];
        let losses: Vec<f64> = dz[..len * v]
            .par_chunks_mut(TRAIN_ROWS * v)
            .zip(d_hidden[c0 * c..(c0 + len) * c].par_chunks_mut(TRAIN_ROWS * c))
            .enumerate()
            .map(|(k, (z, dh))| {
                let (r0, rows) = (k * TRAIN_ROWS, z.len() / v);
                // SAFETY: z is rows × V; h's rows r0.. are rows × C; Eᵀ is C × V.
                unsafe {
                    gemm_into(
                        rows,
                        v,
                        c,
                        z.as_mut_ptr(),
                        v,
                        View::new(h[r0 * c..].as_ptr(), c, 1),
                        View::new(e.as_ptr(), 1, c),
                        one,
                    )
                };
                let l =
                    z.chunks_exact_mut(v).zip(&targets[c0 + r0..]).map(|(row, &y)| cross_entropy_row(row, y, g)).sum();
                // SAFETY: dh is rows × C; z is rows × V; E is V × C.
                unsafe {
                    gemm_into(
                        rows,
                        c,
                        v,
                        dh.as_mut_ptr(),
                        c,
                        View::new(z.as_ptr(), v, 1),
                        View::new(e.as_ptr(), c, 1),
                        one,
                    )
                };
                l
            })
            .collect();
        loss += losses.iter().sum::<f64>();
        let dz = &dz;
        d_e.par_chunks_mut(TRAIN_VOCAB * c).enumerate().for_each(|(j, de)| {
            let (v0, nv) = (j * TRAIN_VOCAB, de.len() / c);
            // SAFETY: de is nv × C; dz's columns v0.. transposed are nv × len; h is len × C.
            unsafe {
                gemm_add(
                    nv,
                    c,
                    len,
                    de.as_mut_ptr(),
                    c,
                    View::new(dz[v0..].as_ptr(), 1, v),
                    View::new(h.as_ptr(), c, 1),
                )
            };
        });
    }
    (loss, d_hidden, d_e)
}

/// One row of [`next_token_gradients`]: replaces the logits by g·(softmax − e_y) (zero without a
/// target) and returns the row's loss (0 without a target). The exponentials are made once
/// ([`exp_shifted_sum`]), kept in the row and summed.
fn cross_entropy_row<T: Real>(row: &mut [T], target: Option<u32>, g: f64) -> f64 {
    let Some(t) = target.map(|t| t as usize) else {
        row.iter_mut().for_each(|x| *x = T::default());
        return 0.0;
    };
    let zt = row[t].to();
    let max = row.iter().copied().fold(row[0], |m, x| if x > m { x } else { m });
    let sum = exp_shifted_sum(row, max);
    let scale = T::from(g / sum);
    row.iter_mut().for_each(|x| *x = *x * scale);
    row[t] = row[t] - T::from(g);
    max.to() + sum.ln() - zt
}

/// Replaces each x of `row` by e^(x − max) and returns their sum: the exponentials in the row's
/// type in eight lanes (a loop the compiler vectorizes, through [`Real::exp_`]), the lanes and
/// the remainder added in f64.
fn exp_shifted_sum<T: Real>(row: &mut [T], max: T) -> f64 {
    let mut lanes = [T::default(); 8];
    let mut chunks = row.chunks_exact_mut(8);
    for ch in &mut chunks {
        for k in 0..8 {
            ch[k] = (ch[k] - max).exp_();
            lanes[k] = lanes[k] + ch[k];
        }
    }
    let mut rest = 0f64;
    for x in chunks.into_remainder() {
        *x = (*x - max).exp_();
        rest += x.to();
    }
    lanes.iter().map(|x| x.to()).sum::<f64>() + rest
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

/// Rows of a window that make one task of [`loss_directions`], and vocabulary entries per block.
const DIR_ROWS: usize = 128;
const DIR_VOCAB: usize = 1024;

/// The gradient of each next-token loss ℓ_t at the final hidden state h_t (the ln_f output):
/// Eᵀ(softmax(E h_t) − e_{y_t}) = Σ_j p_j E_j − E_{y_t}, for hidden (B·T, C) row-major, E (V, C)
/// and `targets` (B·T; None at a window's last position, whose row is zero).
///
/// The (B, T, V) logits are never held: each task (128 rows of one window) runs over the
/// vocabulary in blocks of 1024, making the block's logits (one GEMM), their exponentials
/// against a running row maximum (rescaling what was summed when the maximum grows, as online
/// softmax does), and adding p·E_block to the row sums (a second GEMM). The tasks' shapes depend
/// only on T, so a window's rows do not depend on its batch or the thread count.
/// [`loss_directions_plain`] is the same function in candle's ops.
pub fn loss_directions<T: Real + From<f32>>(
    hidden: &[T],
    e: &[T],
    targets: &[Option<u32>],
    t: usize,
    c: usize,
    v: usize,
) -> Vec<T> {
    use crate::math::gemm::{gemm_add, gemm_into, SyncPtr, View};
    let n_rows = targets.len();
    assert!(
        hidden.len() == n_rows * c && e.len() == v * c && t > 0 && n_rows.is_multiple_of(t),
        "loss directions: shapes"
    );
    let tasks: Vec<usize> = (0..n_rows / t).flat_map(|w| (0..t).step_by(DIR_ROWS).map(move |r| w * t + r)).collect();
    let mut out = vec![T::default(); n_rows * c];
    let dst = SyncPtr(out.as_mut_ptr());
    tasks.into_par_iter().for_each(|g0| {
        let n = DIR_ROWS.min(t - g0 % t);
        // SAFETY: task g0 alone writes rows g0..g0 + n.
        let acc = unsafe { std::slice::from_raw_parts_mut(dst.at(g0 * c), n * c) };
        let h = View::new(hidden[g0 * c..].as_ptr(), c, 1); // (n × C)
        let mut z = vec![T::default(); n * DIR_VOCAB];
        let mut max = vec![f64::NEG_INFINITY; n];
        let mut sum = vec![0f64; n];
        for v0 in (0..v).step_by(DIR_VOCAB) {
            let nv = DIR_VOCAB.min(v - v0);
            let eb = &e[v0 * c..(v0 + nv) * c];
            // SAFETY: z holds n × nv; E's rows v0.. transposed are C × nv.
            unsafe { gemm_into(n, nv, c, z.as_mut_ptr(), nv, h, View::new(eb.as_ptr(), 1, c), <T as Real>::from(1.0)) };
            for r in 0..n {
                let row = &mut z[r * nv..(r + 1) * nv];
                let m = row.iter().fold(f64::NEG_INFINITY, |m, x| m.max(x.to()));
                if m > max[r] {
                    let f = (max[r] - m).exp();
                    sum[r] *= f;
                    let ft = <T as Real>::from(f);
                    acc[r * c..(r + 1) * c].iter_mut().for_each(|a| *a = *a * ft);
                    max[r] = m;
                }
                sum[r] += exp_shifted_sum(row, <T as Real>::from(max[r]));
            }
            // SAFETY: acc is n × C; z is n × nv; the block of E is nv × C.
            unsafe {
                gemm_add(n, c, nv, acc.as_mut_ptr(), c, View::new(z.as_ptr(), nv, 1), View::new(eb.as_ptr(), c, 1))
            };
        }
        for r in 0..n {
            let row = &mut acc[r * c..(r + 1) * c];
            match targets[g0 + r] {
                Some(y) => {
                    let inv = <T as Real>::from(1.0 / sum[r]);
                    let ey = &e[y as usize * c..(y as usize + 1) * c];
                    row.iter_mut().zip(ey).for_each(|(a, &b)| *a = *a * inv - b);
                }
                None => row.iter_mut().for_each(|a| *a = T::default()),
            }
        }
    });
    out
}

/// [`loss_directions`] in candle's ops, for hidden (B, T, C) and E (V, C): softmax(h Eᵀ)·E −
/// E[y], zero at each window's last position (the path on other devices, and the tests'
/// reference).
pub fn loss_directions_plain(hidden: &Tensor, e: &Tensor, targets: &[Option<u32>]) -> Result<Tensor> {
    let dev = hidden.device();
    let (b, t, c) = hidden.dims3()?;
    let logits = hidden.reshape((b * t, c))?.matmul(&e.t()?)?;
    let expected = candle_nn::ops::softmax_last_dim(&logits)?.matmul(e)?;
    let next: Vec<u32> = targets.iter().map(|y| y.unwrap_or(0)).collect();
    let target = e.embedding(&Tensor::from_vec(next, b * t, dev)?)?;
    let mask: Vec<f32> = targets.iter().map(|y| if y.is_some() { 1.0 } else { 0.0 }).collect();
    let mask = Tensor::from_vec(mask, (b * t, 1), dev)?.to_dtype(hidden.dtype())?;
    (expected - target)?.broadcast_mul(&mask)?.reshape((b, t, c))
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
        // f32 too, against the f64 values.
        let z32 = z.as_tensor().to_dtype(DType::F32).unwrap();
        let y32 = y.to_dtype(DType::F32).unwrap();
        let c = cross_entropy_rows(&z32, &y32).unwrap().to_vec1::<f32>().unwrap();
        for (x, r) in c.iter().zip(&b) {
            assert!((*x as f64 - r).abs() < 1e-5);
        }
    }

    /// The training kernel's loss and gradients at h and E against candle's autograd through
    /// `cross_entropy_plain(h Eᵀ)`, f64, for more rows than a chunk (two chunks, the last one
    /// not a multiple of a task) and a vocabulary that is not a multiple of its blocks; then f32
    /// against the f64 values.
    #[test]
    fn next_token_gradients_match_autograd() {
        let dev = Device::Cpu;
        let (n, c, v, g) = (TRAIN_CHUNK + TRAIN_ROWS + 5, 12, 2 * TRAIN_VOCAB + 37, 0.25);
        let h = Var::from_tensor(&Tensor::randn(0f64, 1.0, (n, c), &dev).unwrap()).unwrap();
        let e = Var::from_tensor(&Tensor::randn(0f64, 1.0, (v, c), &dev).unwrap()).unwrap();
        let targets: Vec<Option<u32>> = (0..n).map(|i| (i % 9 != 8).then_some(((i * 7919) % v) as u32)).collect();
        let y: Vec<f64> = targets.iter().map(|t| t.map_or(-1.0, |t| t as f64)).collect();
        let y = Tensor::from_vec(y, n, &dev).unwrap();
        let z = h.as_tensor().matmul(&e.as_tensor().t().unwrap()).unwrap();
        let total = cross_entropy_plain(&z, &y).unwrap().sum_all().unwrap();
        let grads = (&total * g).unwrap().backward().unwrap();
        let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let (want_dh, want_de) = (flat(grads.get(h.as_tensor()).unwrap()), flat(grads.get(e.as_tensor()).unwrap()));
        let want_loss = total.to_scalar::<f64>().unwrap();
        let (hv, ev) = (flat(h.as_tensor()), flat(e.as_tensor()));
        let (loss, dh, de) = next_token_gradients(&hv, &ev, &targets, c, v, g);
        assert!((loss - want_loss).abs() < 1e-9 * want_loss, "loss {loss} vs {want_loss}");
        let close = |got: &[f64], want: &[f64], tol: f64, what: &str| {
            let scale = want.iter().fold(0f64, |m, x| m.max(x.abs()));
            for (i, (x, r)) in got.iter().zip(want).enumerate() {
                assert!((x - r).abs() < tol * scale, "{what}[{i}]: {x} vs {r}");
            }
        };
        close(&dh, &want_dh, 1e-12, "dh");
        close(&de, &want_de, 1e-12, "dE");
        let to32 = |x: &[f64]| x.iter().map(|&x| x as f32).collect::<Vec<f32>>();
        let (loss32, dh32, de32) = next_token_gradients(&to32(&hv), &to32(&ev), &targets, c, v, g);
        assert!((loss32 - want_loss).abs() < 1e-5 * want_loss, "f32 loss {loss32} vs {want_loss}");
        let up = |x: &[f32]| x.iter().map(|&x| x as f64).collect::<Vec<f64>>();
        close(&up(&dh32), &want_dh, 1e-4, "f32 dh");
        close(&up(&de32), &want_de, 1e-4, "f32 dE");
    }

    /// The blocked, online-softmax loss directions against candle's softmax and matmuls, for
    /// sizes that are not multiples of the row and vocabulary blocks and logits large enough that
    /// the running maximum moves from block to block; f64, then f32 against the f64 values.
    #[test]
    fn loss_directions_match_plain() {
        let dev = Device::Cpu;
        let (b, t, c, v) = (2, DIR_ROWS + 5, 12, 2 * DIR_VOCAB + 37);
        let hidden = Tensor::randn(0f64, 1.0, (b, t, c), &dev).unwrap();
        // Later vocabulary entries are larger, so the row maximum grows across blocks.
        let ramp = Tensor::arange(0f64, v as f64, &dev).unwrap().affine(3.0 / v as f64, 0.5).unwrap();
        let e = Tensor::randn(0f64, 1.0, (v, c), &dev).unwrap().broadcast_mul(&ramp.unsqueeze(1).unwrap()).unwrap();
        let targets: Vec<Option<u32>> =
            (0..b * t).map(|i| (i % t + 1 < t).then_some(((i * 7919) % v) as u32)).collect();
        let want =
            loss_directions_plain(&hidden, &e, &targets).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let hv = hidden.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let ev = e.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let got = loss_directions(&hv, &ev, &targets, t, c, v);
        let scale = want.iter().fold(0f64, |m, x| m.max(x.abs()));
        for (i, (x, r)) in got.iter().zip(&want).enumerate() {
            assert!((x - r).abs() < 1e-12 * scale, "row {} column {}: {x} vs {r}", i / c, i % c);
        }
        assert!(got[(t - 1) * c..t * c].iter().all(|&x| x == 0.0), "a window's last row is zero");
        let h32: Vec<f32> = hv.iter().map(|&x| x as f32).collect();
        let e32: Vec<f32> = ev.iter().map(|&x| x as f32).collect();
        let got32 = loss_directions(&h32, &e32, &targets, t, c, v);
        for (x, r) in got32.iter().zip(&want) {
            assert!((*x as f64 - r).abs() < 1e-5 * scale, "f32 {x} vs {r}");
        }
    }
}
