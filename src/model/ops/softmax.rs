//! The causal softmax of attention scores and its backward as ops of their own, for the GPU
//! path: there each is one fused kernel ([`super::cuda`]) instead of candle's chain of scale,
//! mask, softmax (forward) and multiply, sum, subtract, multiply (backward). The CPU bodies here
//! are their plain references (the GPU tests compare the kernels with them); the CPU path itself
//! fuses attention further ([`super::attention`]).

use candle_core::{Layout, Result, Shape};

use super::{Map1, Map2, Real};

/// att = causal softmax(scale · s) over the last dimension of scores s (…, T, T): row i of each
/// T × T block keeps columns j ≤ i (the rest are 0).
pub struct CausalSoftmax {
    pub scale: f64,
}

impl Map1 for CausalSoftmax {
    const NAME: &'static str = "causal-softmax";
    fn f<T: Real>(&self, s: &[T], l: &Layout) -> Result<(Vec<T>, Shape)> {
        let t = square_rows(l, Self::NAME)?;
        let mut out = vec![T::from(0.0); s.len()];
        for (r, (o, s)) in out.chunks_mut(t).zip(s.chunks(t)).enumerate() {
            let i = r % t;
            let max = s[..=i].iter().map(|v| self.scale * v.to()).fold(f64::NEG_INFINITY, f64::max);
            let mut sum = 0.0;
            for (o, v) in o[..=i].iter_mut().zip(s) {
                let e = (self.scale * v.to() - max).exp();
                sum += e;
                *o = T::from(e);
            }
            o[..=i].iter_mut().for_each(|o| *o = T::from(o.to() / sum));
        }
        Ok((out, l.shape().clone()))
    }
}
custom_op!(1, CausalSoftmax, cuda);

/// dS = scale · att ⊙ (dAtt − Σ_j dAtt ⊙ att) per row: the gradient at the scores s of
/// [`CausalSoftmax`] from the gradient at its output. Inputs: dAtt, att.
pub struct SoftmaxBackward {
    pub scale: f64,
}

impl Map2 for SoftmaxBackward {
    const NAME: &'static str = "softmax-backward";
    fn f<T: Real>(&self, datt: &[T], l: &Layout, att: &[T], _: &Layout) -> Result<(Vec<T>, Shape)> {
        let t = *l.shape().dims().last().unwrap_or(&1);
        let mut out = vec![T::from(0.0); datt.len()];
        for ((o, d), a) in out.chunks_mut(t).zip(datt.chunks(t)).zip(att.chunks(t)) {
            let dot: f64 = d.iter().zip(a).map(|(d, a)| d.to() * a.to()).sum();
            for ((o, d), a) in o.iter_mut().zip(d).zip(a) {
                *o = T::from(self.scale * a.to() * (d.to() - dot));
            }
        }
        Ok((out, l.shape().clone()))
    }
}
custom_op!(2, SoftmaxBackward, cuda);

/// T of scores shaped (…, T, T).
fn square_rows(l: &Layout, what: &str) -> Result<usize> {
    match l.shape().dims() {
        [.., a, b] if a == b => Ok(*b),
        d => candle_core::bail!("{what}: scores must be (…, T, T), got {d:?}"),
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Tensor, D};

    use super::*;

    /// Both ops against candle's own ops (the plain path's chain), f64.
    #[test]
    fn softmax_ops_match_the_plain_chain() {
        let (b, h, t, scale) = (2, 3, 5, 0.37);
        let dev = Device::Cpu;
        let s = Tensor::randn(0f64, 2.0, (b, h, t, t), &dev).unwrap();
        let mask: Vec<f64> = (0..t * t).map(|k| if k % t > k / t { f64::NEG_INFINITY } else { 0.0 }).collect();
        let mask = Tensor::from_vec(mask, (t, t), &dev).unwrap();
        let plain = candle_nn::ops::softmax_last_dim(&(&s * scale).unwrap().broadcast_add(&mask).unwrap()).unwrap();
        let att = s.apply_op1_no_bwd(&CausalSoftmax { scale }).unwrap();
        let diff =
            |a: &Tensor, b: &Tensor| (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap();
        assert!(diff(&att, &plain) < 1e-14, "forward {}", diff(&att, &plain));
        let datt = Tensor::randn(0f64, 1.0, (b, h, t, t), &dev).unwrap();
        let dot = (&datt * &att).unwrap().sum_keepdim(D::Minus1).unwrap();
        let plain = ((&att * datt.broadcast_sub(&dot).unwrap()).unwrap() * scale).unwrap();
        let ds = datt.apply_op2_no_bwd(&att, &SoftmaxBackward { scale }).unwrap();
        assert!(diff(&ds, &plain) < 1e-14, "backward {}", diff(&ds, &plain));
        // Causal: nothing above the diagonal, in either direction.
        let upper = att.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
        assert!(upper.iter().enumerate().all(|(k, v)| k % t <= (k / t) % t || *v == 0.0));
    }
}
