//! Fused elementwise kernels for the hand-written backward (and LayerNorm forward), as candle
//! custom ops: one parallel pass over the data instead of a chain of candle ops, each of which
//! allocates and makes its own single-threaded pass. F32 and F64 (the latter for
//! finite-difference tests). All inputs must be contiguous.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Rows per parallel task (a row is the last dimension).
const MIN_ROWS: usize = 16;

fn contiguous<'a, T>(data: &'a [T], l: &Layout, what: &str) -> Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("{what}: input must be contiguous"),
    }
}

/// Numbers the kernels work on.
trait Real: Copy + Send + Sync + 'static {
    fn to(self) -> f64;
    fn from(x: f64) -> Self;
}
impl Real for f32 {
    fn to(self) -> f64 {
        self as f64
    }
    fn from(x: f64) -> Self {
        x as f32
    }
}
impl Real for f64 {
    fn to(self) -> f64 {
        self
    }
    fn from(x: f64) -> Self {
        x
    }
}

/// d gelu/dx at x: tanh approximation (gelu_new) or exact erf form.
fn gelu_grad(x: f64, erf: bool) -> f64 {
    if erf {
        let cdf = 0.5 * (1.0 + libm_erf(x / std::f64::consts::SQRT_2));
        let pdf = (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt();
        cdf + x * pdf
    } else {
        let c = (2.0 / std::f64::consts::PI).sqrt();
        let u = c * (x + 0.044715 * x * x * x);
        let th = u.tanh();
        0.5 * (1.0 + th) + 0.5 * x * (1.0 - th * th) * c * (1.0 + 3.0 * 0.044715 * x * x)
    }
}

/// erf through candle's own implementation (shared with its gelu_erf).
fn libm_erf(x: f64) -> f64 {
    candle_core::cpu::erf::erf_f64(x)
}

/// du ⊙ gelu'(pre).
pub struct GeluBackward {
    pub erf: bool,
}

impl GeluBackward {
    fn run<T: Real>(&self, du: &[T], pre: &[T]) -> Vec<T> {
        let mut out = vec![T::from(0.0); du.len()];
        out.par_chunks_mut(4096).zip(du.par_chunks(4096).zip(pre.par_chunks(4096))).for_each(|(o, (d, p))| {
            for ((o, d), p) in o.iter_mut().zip(d).zip(p) {
                // The tanh form is evaluated in T's precision for f32 speed, f64 otherwise.
                *o = T::from(d.to() * gelu_grad(p.to(), self.erf));
            }
        });
        out
    }
}

impl CustomOp2 for GeluBackward {
    fn name(&self) -> &'static str {
        "gelu-backward"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let shape = l1.shape().clone();
        Ok(match (s1, s2) {
            (CpuStorage::F32(a), CpuStorage::F32(b)) => {
                (CpuStorage::F32(self.run(contiguous(a, l1, "du")?, contiguous(b, l2, "pre")?)), shape)
            }
            (CpuStorage::F64(a), CpuStorage::F64(b)) => {
                (CpuStorage::F64(self.run(contiguous(a, l1, "du")?, contiguous(b, l2, "pre")?)), shape)
            }
            _ => candle_core::bail!("gelu-backward: F32 or F64 inputs of one dtype"),
        })
    }
}

/// Softmax backward along the last dimension: scale · p ⊙ (dp − Σ dp ⊙ p).
pub struct SoftmaxBackward {
    pub scale: f64,
}

impl SoftmaxBackward {
    fn run<T: Real>(&self, dp: &[T], p: &[T], n: usize) -> Vec<T> {
        let mut out = vec![T::from(0.0); dp.len()];
        out.par_chunks_mut(n * MIN_ROWS).zip(dp.par_chunks(n * MIN_ROWS).zip(p.par_chunks(n * MIN_ROWS))).for_each(
            |(o, (dp, p))| {
                for ((o, dp), p) in o.chunks_mut(n).zip(dp.chunks(n)).zip(p.chunks(n)) {
                    let dot: f64 = dp.iter().zip(p).map(|(a, b)| a.to() * b.to()).sum();
                    for ((o, a), b) in o.iter_mut().zip(dp).zip(p) {
                        *o = T::from(self.scale * b.to() * (a.to() - dot));
                    }
                }
            },
        );
        out
    }
}

impl CustomOp2 for SoftmaxBackward {
    fn name(&self) -> &'static str {
        "softmax-backward"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let shape = l1.shape().clone();
        let n = *shape.dims().last().unwrap_or(&1);
        Ok(match (s1, s2) {
            (CpuStorage::F32(a), CpuStorage::F32(b)) => {
                (CpuStorage::F32(self.run(contiguous(a, l1, "dp")?, contiguous(b, l2, "p")?, n)), shape)
            }
            (CpuStorage::F64(a), CpuStorage::F64(b)) => {
                (CpuStorage::F64(self.run(contiguous(a, l1, "dp")?, contiguous(b, l2, "p")?, n)), shape)
            }
            _ => candle_core::bail!("softmax-backward: F32 or F64 inputs of one dtype"),
        })
    }
}

/// LayerNorm forward statistics: x̂ = (x − mean)/σ and 1/σ, packed per row as [x̂ (C) | 1/σ].
pub struct LayerNormForward {
    pub eps: f64,
}

impl LayerNormForward {
    fn run<T: Real>(&self, x: &[T], n: usize) -> Vec<T> {
        let rows = x.len() / n;
        let mut out = vec![T::from(0.0); rows * (n + 1)];
        out.par_chunks_mut((n + 1) * MIN_ROWS).zip(x.par_chunks(n * MIN_ROWS)).for_each(|(o, x)| {
            for (o, x) in o.chunks_mut(n + 1).zip(x.chunks(n)) {
                let mean = x.iter().map(|v| v.to()).sum::<f64>() / n as f64;
                let var = x.iter().map(|v| (v.to() - mean).powi(2)).sum::<f64>() / n as f64;
                let rstd = 1.0 / (var + self.eps).sqrt();
                for (o, v) in o.iter_mut().zip(x) {
                    *o = T::from((v.to() - mean) * rstd);
                }
                o[n] = T::from(rstd);
            }
        });
        out
    }
}

impl CustomOp1 for LayerNormForward {
    fn name(&self) -> &'static str {
        "layer-norm-forward"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let mut dims = l.shape().dims().to_vec();
        let n = *dims.last().unwrap_or(&1);
        *dims.last_mut().unwrap() = n + 1;
        Ok(match s {
            CpuStorage::F32(a) => (CpuStorage::F32(self.run(contiguous(a, l, "x")?, n)), Shape::from(dims)),
            CpuStorage::F64(a) => (CpuStorage::F64(self.run(contiguous(a, l, "x")?, n)), Shape::from(dims)),
            _ => candle_core::bail!("layer-norm-forward: F32 or F64 input"),
        })
    }
}

/// LayerNorm backward: dx = rstd·(g − mean(g) − x̂·mean(g ⊙ x̂)), g = dy ⊙ γ.
pub struct LayerNormBackward {
    pub gamma: Vec<f64>,
}

impl LayerNormBackward {
    fn run<T: Real>(&self, dy: &[T], xhat: &[T], rstd: &[T]) -> Vec<T> {
        let n = self.gamma.len();
        let mut out = vec![T::from(0.0); dy.len()];
        out.par_chunks_mut(n * MIN_ROWS)
            .zip(dy.par_chunks(n * MIN_ROWS).zip(xhat.par_chunks(n * MIN_ROWS)))
            .zip(rstd.par_chunks(MIN_ROWS))
            .for_each(|((o, (dy, xh)), rs)| {
                for (((o, dy), xh), r) in o.chunks_mut(n).zip(dy.chunks(n)).zip(xh.chunks(n)).zip(rs) {
                    let (mut m1, mut m2) = (0.0, 0.0);
                    for ((d, x), g) in dy.iter().zip(xh).zip(&self.gamma) {
                        let gd = d.to() * g;
                        m1 += gd;
                        m2 += gd * x.to();
                    }
                    m1 /= n as f64;
                    m2 /= n as f64;
                    let r = r.to();
                    for (((o, d), x), g) in o.iter_mut().zip(dy).zip(xh).zip(&self.gamma) {
                        *o = T::from(r * (d.to() * g - m1 - x.to() * m2));
                    }
                }
            });
        out
    }
}

impl CustomOp3 for LayerNormBackward {
    fn name(&self) -> &'static str {
        "layer-norm-backward"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let shape = l1.shape().clone();
        Ok(match (s1, s2, s3) {
            (CpuStorage::F32(a), CpuStorage::F32(b), CpuStorage::F32(c)) => (
                CpuStorage::F32(self.run(contiguous(a, l1, "dy")?, contiguous(b, l2, "xhat")?, contiguous(c, l3, "rstd")?)),
                shape,
            ),
            (CpuStorage::F64(a), CpuStorage::F64(b), CpuStorage::F64(c)) => (
                CpuStorage::F64(self.run(contiguous(a, l1, "dy")?, contiguous(b, l2, "xhat")?, contiguous(c, l3, "rstd")?)),
                shape,
            ),
            _ => candle_core::bail!("layer-norm-backward: F32 or F64 inputs of one dtype"),
        })
    }
}

/// γ as f64 values (for the backward kernel).
pub fn gamma_values(gamma: &Tensor) -> Result<Vec<f64>> {
    gamma.to_dtype(candle_core::DType::F64)?.to_vec1::<f64>()
}
