//! Causal self-attention straight from the packed `c_attn` output (B, T, 3C) = [Q | K | V], as
//! candle custom ops. Head h of Q is the column block h·hs..(h+1)·hs, so every per-head product
//! is a strided GEMM on the packed layout: no head split, transpose or merge copies, in forward
//! or backward. Work is split by (window, head), each GEMM on one thread, so a window's numbers
//! never depend on the batch it is in or on the thread count.

use candle_core::{Layout, Result, Shape};
use rayon::prelude::*;

use super::{Map1, Map2, Map3, Real};
use crate::math::gemm::{gemm_into, SyncPtr, View};

/// att (B, H, T, T) = causal softmax(scale · Q Kᵀ) per window and head; zero above the diagonal.
pub struct AttentionProbs {
    pub heads: usize,
    pub scale: f64,
}

/// y (B, T, C) = att · V per head, heads side by side (the operand of attn.c_proj).
pub struct AttentionMix {
    pub heads: usize,
}

/// Gradient at the packed c_attn output, d(Q | K | V) (B, T, 3C), from dy (B, T, C), att and
/// the packed (Q | K | V).
pub struct AttentionBackward {
    pub heads: usize,
    pub scale: f64,
}

/// Rows per block of the causal products: row block r0..r0 + rows only meets keys 0..r0 + rows.
const ROW_BLOCK: usize = 64;

/// (first row, rows) of each row block of a T × T causal matrix.
fn row_blocks(t: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..t).step_by(ROW_BLOCK).map(move |r0| (r0, ROW_BLOCK.min(t - r0)))
}

/// Sizes of a packed qkv (B, T, 3C) with `heads` heads: (B, T, C, hs).
fn dims(l: &Layout, heads: usize, what: &str) -> Result<(usize, usize, usize, usize)> {
    let (b, t, c3) = l.shape().dims3()?;
    if c3 % (3 * heads) != 0 {
        candle_core::bail!("{what}: last dimension {c3} is not 3 × a multiple of {heads} heads");
    }
    Ok((b, t, c3 / 3, c3 / 3 / heads))
}

/// The (T × hs) block of window `w`, part `part` (0 = Q, 1 = K, 2 = V) and head `head`.
fn head<T>(qkv: &[T], t: usize, c: usize, hs: usize, w: usize, part: usize, head: usize) -> View<T> {
    View::new(qkv[w * t * 3 * c + part * c + head * hs..].as_ptr(), 3 * c, 1)
}

impl AttentionProbs {
    fn run<T: Real>(&self, qkv: &[T], (b, t, c, hs): (usize, usize, usize, usize)) -> Vec<T> {
        let h = self.heads;
        let mut att = vec![T::from(0.0); b * h * t * t];
        att.par_chunks_mut(t * t).enumerate().for_each(|(i, p)| {
            let (w, hd) = (i / h, i % h);
            let q = head(qkv, t, c, hs, w, 0, hd);
            let k = head(qkv, t, c, hs, w, 1, hd);
            // Causal: row block r0.. needs only columns 0..r0 + rows.
            for (r0, rows) in row_blocks(t) {
                // SAFETY: p is t × t; q and k are t × hs blocks inside qkv.
                unsafe {
                    gemm_into(
                        rows,
                        r0 + rows,
                        hs,
                        p.as_mut_ptr().add(r0 * t),
                        t,
                        q.rows(r0),
                        k.t(),
                        T::from(self.scale),
                    )
                };
            }
            for (i, row) in p.chunks_mut(t).enumerate() {
                let (live, masked) = row.split_at_mut(i + 1);
                let max = live.iter().map(|x| x.to()).fold(f64::NEG_INFINITY, f64::max);
                let max = T::from(max);
                let mut sum = 0.0;
                for x in live.iter_mut() {
                    *x = (*x - max).exp_();
                    sum += x.to();
                }
                let inv = T::from(1.0 / sum);
                for x in live.iter_mut() {
                    *x = *x * inv;
                }
                masked.fill(T::from(0.0));
            }
        });
        att
    }
}

impl Map1 for AttentionProbs {
    const NAME: &'static str = "attention-probs";
    fn f<T: Real>(&self, qkv: &[T], l: &Layout) -> Result<(Vec<T>, Shape)> {
        let d = dims(l, self.heads, Self::NAME)?;
        Ok((self.run(qkv, d), Shape::from((d.0, self.heads, d.1, d.1))))
    }
}
custom_op!(1, AttentionProbs);

impl AttentionMix {
    fn run<T: Real>(&self, att: &[T], qkv: &[T], (b, t, c, hs): (usize, usize, usize, usize)) -> Vec<T> {
        let h = self.heads;
        let mut y = vec![T::from(0.0); b * t * c];
        let dst = SyncPtr(y.as_mut_ptr());
        (0..b * h).into_par_iter().for_each(|i| {
            let (w, hd) = (i / h, i % h);
            let p = View::new(att[i * t * t..].as_ptr(), t, 1);
            let v = head(qkv, t, c, hs, w, 2, hd);
            for (r0, rows) in row_blocks(t) {
                // SAFETY: each (window, head) writes its own t × hs column block of y.
                unsafe {
                    gemm_into(rows, hs, r0 + rows, dst.at((w * t + r0) * c + hd * hs), c, p.rows(r0), v, T::from(1.0))
                };
            }
        });
        y
    }
}

impl Map2 for AttentionMix {
    const NAME: &'static str = "attention-mix";
    fn f<T: Real>(&self, att: &[T], l1: &Layout, qkv: &[T], l2: &Layout) -> Result<(Vec<T>, Shape)> {
        let d = dims(l2, self.heads, Self::NAME)?;
        if l1.shape().dims() != [d.0, self.heads, d.1, d.1] {
            candle_core::bail!("attention-mix: att has shape {:?}, qkv {:?}", l1.shape(), l2.shape());
        }
        Ok((self.run(att, qkv, d), Shape::from((d.0, d.1, d.2))))
    }
}
custom_op!(2, AttentionMix);

impl AttentionBackward {
    fn run<T: Real>(&self, dy: &[T], att: &[T], qkv: &[T], (b, t, c, hs): (usize, usize, usize, usize)) -> Vec<T> {
        let h = self.heads;
        let mut dqkv = vec![T::from(0.0); b * t * 3 * c];
        let dst = SyncPtr(dqkv.as_mut_ptr());
        (0..b * h).into_par_iter().for_each(|i| {
            let (w, hd) = (i / h, i % h);
            let p = View::new(att[i * t * t..].as_ptr(), t, 1);
            let d_o = View::new(dy[w * t * c + hd * hs..].as_ptr(), c, 1);
            let (q, k, v) =
                (head(qkv, t, c, hs, w, 0, hd), head(qkv, t, c, hs, w, 1, hd), head(qkv, t, c, hs, w, 2, hd));
            let out = |part: usize, r0: usize| dst.at((w * t + r0) * 3 * c + part * c + hd * hs);
            let mut ds = vec![T::from(0.0); t * t];
            let one = T::from(1.0);
            // Causal: P and dS are zero above the diagonal, so row block r0.. of dP and dQ needs
            // columns 0..r0 + rows, and rows j0.. of dV and dK need rows j0.. of P, dS, dO, Q.
            // SAFETY: ds is t × t; each (window, head) writes its own t × hs blocks of dqkv.
            for (r0, rows) in row_blocks(t) {
                unsafe {
                    gemm_into(rows, r0 + rows, hs, ds.as_mut_ptr().add(r0 * t), t, d_o.rows(r0), v.t(), one); // dP = dO Vᵀ
                    gemm_into(rows, hs, t - r0, out(2, r0), 3 * c, p.rows(r0).cols(r0).t(), d_o.rows(r0), one);
                    // dV = Pᵀ dO
                }
            }
            // dS = scale · P ⊙ (dP − rowsum(dP ⊙ P)); zero above the diagonal, where P is.
            for (i, (row, pr)) in ds.chunks_mut(t).zip(att[i * t * t..(i + 1) * t * t].chunks(t)).enumerate() {
                let live = i + 1;
                let dot: f64 = row[..live].iter().zip(&pr[..live]).map(|(a, b)| a.to() * b.to()).sum();
                for (x, pv) in row[..live].iter_mut().zip(&pr[..live]) {
                    *x = T::from(self.scale * pv.to() * (x.to() - dot));
                }
                row[live..].fill(T::from(0.0));
            }
            let s = View::new(ds.as_ptr(), t, 1);
            for (r0, rows) in row_blocks(t) {
                unsafe {
                    gemm_into(rows, hs, r0 + rows, out(0, r0), 3 * c, s.rows(r0), k, one); // dQ = dS K
                    gemm_into(rows, hs, t - r0, out(1, r0), 3 * c, s.rows(r0).cols(r0).t(), q.rows(r0), one);
                    // dK = dSᵀ Q
                }
            }
        });
        dqkv
    }
}

impl Map3 for AttentionBackward {
    const NAME: &'static str = "attention-backward";
    fn f<T: Real>(
        &self,
        dy: &[T],
        l1: &Layout,
        att: &[T],
        l2: &Layout,
        qkv: &[T],
        l3: &Layout,
    ) -> Result<(Vec<T>, Shape)> {
        let d = dims(l3, self.heads, Self::NAME)?;
        if l1.shape().dims() != [d.0, d.1, d.2] || l2.shape().dims() != [d.0, self.heads, d.1, d.1] {
            candle_core::bail!("attention-backward: dy {:?}, att {:?}, qkv {:?}", l1.shape(), l2.shape(), l3.shape());
        }
        Ok((self.run(dy, att, qkv, d), l3.shape().clone()))
    }
}
custom_op!(3, AttentionBackward);

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Tensor, Var, D};

    /// The blocked causal ops against candle's differentiable ops (autograd for the backward), in
    /// f64, with T spanning several row blocks and a partial last block.
    #[test]
    fn attention_matches_candle_autograd() -> candle_core::Result<()> {
        let (b, t, h, hs) = (2, 2 * ROW_BLOCK + 22, 3, 8);
        let c = h * hs;
        let scale = 0.37;
        let dev = Device::Cpu;
        let qkv = Var::from_tensor(&Tensor::randn(0f64, 1.0, (b, t, 3 * c), &dev)?)?;
        let dy = Tensor::randn(0f64, 1.0, (b, t, c), &dev)?;
        let mask: Vec<f64> =
            (0..t).flat_map(|i| (0..t).map(move |j| if j <= i { 0.0 } else { f64::NEG_INFINITY })).collect();
        let mask = Tensor::from_vec(mask, (t, t), &dev)?;
        let mut ys = Vec::new();
        let mut atts = Vec::new();
        for hd in 0..h {
            let part = |p: usize| qkv.as_tensor().narrow(2, p * c + hd * hs, hs);
            let (q, k, v) = (part(0)?, part(1)?, part(2)?);
            let s = (q.matmul(&k.t()?)? * scale)?.broadcast_add(&mask)?;
            let att = candle_nn::ops::softmax(&s, D::Minus1)?;
            ys.push(att.matmul(&v)?);
            atts.push(att.unsqueeze(1)?);
        }
        let y_ref = Tensor::cat(&ys, 2)?;
        let att_ref = Tensor::cat(&atts, 1)?;
        let grads = (&y_ref * &dy)?.sum_all()?.backward()?;
        let d_ref = grads.get(&qkv).expect("gradient at qkv");

        let qkv_t = qkv.as_tensor().detach();
        let att = qkv_t.apply_op1_no_bwd(&AttentionProbs { heads: h, scale })?;
        let y = att.apply_op2_no_bwd(&qkv_t, &AttentionMix { heads: h })?;
        let d = dy.apply_op3_no_bwd(&att, &qkv_t, &AttentionBackward { heads: h, scale })?;
        let err = |a: &Tensor, r: &Tensor| -> candle_core::Result<f64> {
            (a - r)?.abs()?.flatten_all()?.max(0)?.to_dtype(DType::F64)?.to_scalar::<f64>()
        };
        assert!(err(&att, &att_ref)? < 1e-12, "att {}", err(&att, &att_ref)?);
        assert!(err(&y, &y_ref)? < 1e-12, "y {}", err(&y, &y_ref)?);
        assert!(err(&d, d_ref)? < 1e-12, "d(qkv) {}", err(&d, d_ref)?);
        Ok(())
    }
}
