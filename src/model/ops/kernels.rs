//! Fused elementwise kernels for the hand-written backward (and LayerNorm forward), as candle
//! custom ops: one parallel pass over the data instead of a chain of candle ops, each of which
//! allocates and makes its own single-threaded pass. F32 and F64 (the latter for
//! finite-difference tests). All inputs must be contiguous. Also the products: [`bmm`] (batched,
//! window by window), calling the `gemm` crate directly.

use candle_core::{Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::{Map1, Map2, Map3};

/// Rows per parallel task (a row is the last dimension).
const MIN_ROWS: usize = 16;

/// Numbers the kernels work on. Reductions run in f64; GELU runs in the type's own precision
/// (f32 through [`fast_tanh`], f64 through libm, which the finite-difference tests use).
pub trait Real:
    Copy
    + Default
    + Send
    + Sync
    + 'static
    + PartialOrd
    + std::ops::Add<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Mul<Output = Self>
{
    fn to(self) -> f64;
    fn from(x: f64) -> Self;
    /// e^x: [`fast_exp`] for f32, libm for f64.
    fn exp_(self) -> Self;
    /// gelu(x) (or its derivative when `grad`), tanh approximation or exact erf form.
    fn gelu(self, erf: bool, grad: bool) -> Self;
}

/// e^x for f32 (Cephes' expf: range reduction and a degree-6 polynomial, ~1 ulp), written so
/// the compiler can vectorize loops over it, unlike a libm call.
#[inline(always)]
pub fn fast_exp(x: f32) -> f32 {
    let x = x.clamp(-87.3, 88.7);
    // Round to nearest by the 1.5·2^23 trick (vectorizes, unlike roundf).
    let n = (x * std::f32::consts::LOG2_E + 12_582_912.0) - 12_582_912.0;
    let r = x - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r + 1.666_666_5e-1)
        * r
        + 5e-1; // Cephes' 5.0000001e-1, which is 0.5 in f32
    let y = p * r * r + r + 1.0;
    y * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

/// erf(x) for f32: x·α(x²)/β(x²) on x clamped to [−4, 4] (beyond which erf is ±1 in f32), the
/// rational approximation of Eigen's and XLA's `erf` for float (degree 13 over degree 8, a few
/// ulp); loops over it vectorize, unlike a libm call.
#[inline(always)]
pub fn fast_erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = -2.726_142_3e-10f32;
    for a in [2.770_681_4e-8, -2.101_024e-6, -5.692_506_4e-5, -7.349_906_3e-4, -2.954_6e-3, -1.609_603_3e-2] {
        p = p * x2 + a;
    }
    let mut q = -1.456_607_2e-5f32;
    for b in [-2.133_740_6e-4, -1.682_827e-3, -7.373_329_2e-3, -1.426_473_9e-2] {
        q = q * x2 + b;
    }
    x * p / q
}

/// tanh for f32 through [`fast_exp`]: sign(u)·(1 − e)/(1 + e), e = e^{−2|u|}.
#[inline(always)]
pub fn fast_tanh(u: f32) -> f32 {
    let e = fast_exp(-2.0 * u.abs());
    ((1.0 - e) / (1.0 + e)).copysign(u)
}

trait Tanh {
    fn tanh_(self) -> Self;
}
impl Tanh for f32 {
    #[inline(always)]
    fn tanh_(self) -> Self {
        fast_tanh(self)
    }
}
impl Tanh for f64 {
    #[inline(always)]
    fn tanh_(self) -> Self {
        self.tanh()
    }
}

macro_rules! real {
    ($t:ty, $erf:path, $exp:expr) => {
        impl Real for $t {
            #[inline(always)]
            fn to(self) -> f64 {
                self as f64
            }
            #[inline(always)]
            fn from(x: f64) -> Self {
                x as $t
            }
            #[inline(always)]
            fn exp_(self) -> Self {
                $exp(self)
            }
            #[inline(always)]
            fn gelu(self, erf: bool, grad: bool) -> Self {
                let x = self;
                if erf {
                    let cdf = 0.5 * (1.0 + $erf(x / std::f64::consts::SQRT_2 as $t));
                    if !grad {
                        return x * cdf;
                    }
                    let pdf = $exp(-0.5 * x * x) / (2.0 * std::f64::consts::PI).sqrt() as $t;
                    cdf + x * pdf
                } else {
                    let c = (2.0 / std::f64::consts::PI).sqrt() as $t;
                    let th = (c * (x + 0.044715 * x * x * x)).tanh_();
                    if !grad {
                        return 0.5 * x * (1.0 + th);
                    }
                    0.5 * (1.0 + th) + 0.5 * x * (1.0 - th * th) * c * (1.0 + 3.0 * 0.044715 * x * x)
                }
            }
        }
    };
}
real!(f32, fast_erf, fast_exp);
real!(f64, candle_core::cpu::erf::erf_f64, f64::exp);

/// gelu(x) elementwise, in parallel.
pub struct Gelu {
    pub erf: bool,
}

impl Gelu {
    fn run<T: Real>(&self, x: &[T]) -> Vec<T> {
        let mut out = vec![T::from(0.0); x.len()];
        // The form is chosen outside the loop so that each loop is branch-free and vectorizes.
        let erf = self.erf;
        out.par_chunks_mut(4096).zip(x.par_chunks(4096)).for_each(|(o, x)| {
            if erf {
                o.iter_mut().zip(x).for_each(|(o, x)| *o = x.gelu(true, false));
            } else {
                o.iter_mut().zip(x).for_each(|(o, x)| *o = x.gelu(false, false));
            }
        });
        out
    }
}

impl Map1 for Gelu {
    const NAME: &'static str = "gelu";
    fn f<T: Real>(&self, x: &[T], l: &Layout) -> Result<(Vec<T>, Shape)> {
        Ok((self.run(x), l.shape().clone()))
    }
}
custom_op!(1, Gelu);

/// du ⊙ gelu'(pre).
pub struct GeluBackward {
    pub erf: bool,
}

impl GeluBackward {
    fn run<T: Real>(&self, du: &[T], pre: &[T]) -> Vec<T> {
        let mut out = vec![T::from(0.0); du.len()];
        let erf = self.erf;
        out.par_chunks_mut(4096).zip(du.par_chunks(4096).zip(pre.par_chunks(4096))).for_each(|(o, (d, p))| {
            let it = o.iter_mut().zip(d).zip(p);
            if erf {
                it.for_each(|((o, d), p)| *o = *d * p.gelu(true, true));
            } else {
                it.for_each(|((o, d), p)| *o = *d * p.gelu(false, true));
            }
        });
        out
    }
}

impl Map2 for GeluBackward {
    const NAME: &'static str = "gelu-backward";
    fn f<T: Real>(&self, du: &[T], l: &Layout, pre: &[T], _: &Layout) -> Result<(Vec<T>, Shape)> {
        Ok((self.run(du, pre), l.shape().clone()))
    }
}
custom_op!(2, GeluBackward, cuda);

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

impl Map1 for LayerNormForward {
    const NAME: &'static str = "layer-norm-forward";
    fn f<T: Real>(&self, x: &[T], l: &Layout) -> Result<(Vec<T>, Shape)> {
        let mut dims = l.shape().dims().to_vec();
        let n = *dims.last().unwrap_or(&1);
        *dims.last_mut().unwrap() = n + 1;
        Ok((self.run(x, n), Shape::from(dims)))
    }
}
custom_op!(1, LayerNormForward, cuda);

/// LayerNorm backward: dx = rstd·(g − mean(g) − x̂·mean(g ⊙ x̂)), g = dy ⊙ γ, reading x̂ and
/// rstd from the packed rows of [`LayerNormForward`]. Inputs: dy, the packed rows, γ.
pub struct LayerNormBackward;

impl LayerNormBackward {
    fn run<T: Real>(&self, dy: &[T], packed: &[T], gamma: &[T]) -> Vec<T> {
        let n = gamma.len();
        let mut out = vec![T::from(0.0); dy.len()];
        out.par_chunks_mut(n * MIN_ROWS)
            .zip(dy.par_chunks(n * MIN_ROWS).zip(packed.par_chunks((n + 1) * MIN_ROWS)))
            .for_each(|(o, (dy, pk))| {
                for ((o, dy), pk) in o.chunks_mut(n).zip(dy.chunks(n)).zip(pk.chunks(n + 1)) {
                    let (xh, r) = (&pk[..n], pk[n].to());
                    let (mut m1, mut m2) = (0.0, 0.0);
                    for ((d, x), g) in dy.iter().zip(xh).zip(gamma) {
                        let gd = d.to() * g.to();
                        m1 += gd;
                        m2 += gd * x.to();
                    }
                    m1 /= n as f64;
                    m2 /= n as f64;
                    for (((o, d), x), g) in o.iter_mut().zip(dy).zip(xh).zip(gamma) {
                        *o = T::from(r * (d.to() * g.to() - m1 - x.to() * m2));
                    }
                }
            });
        out
    }
}

impl Map3 for LayerNormBackward {
    const NAME: &'static str = "layer-norm-backward";
    fn f<T: Real>(
        &self,
        dy: &[T],
        l: &Layout,
        packed: &[T],
        _: &Layout,
        gamma: &[T],
        _: &Layout,
    ) -> Result<(Vec<T>, Shape)> {
        Ok((self.run(dy, packed, gamma), l.shape().clone()))
    }
}
custom_op!(3, LayerNormBackward, cuda);

/// y = x̂ ⊙ γ + β from the packed rows of [`LayerNormForward`]. Inputs: the packed rows, γ, β.
pub struct LayerNormAffine;

impl LayerNormAffine {
    fn run<T: Real>(&self, packed: &[T], gamma: &[T], beta: &[T]) -> Vec<T> {
        let n = gamma.len();
        let rows = packed.len() / (n + 1);
        let mut out = vec![T::from(0.0); rows * n];
        out.par_chunks_mut(n * MIN_ROWS).zip(packed.par_chunks((n + 1) * MIN_ROWS)).for_each(|(o, pk)| {
            for (o, pk) in o.chunks_mut(n).zip(pk.chunks(n + 1)) {
                for (((o, x), g), b) in o.iter_mut().zip(&pk[..n]).zip(gamma).zip(beta) {
                    *o = T::from(x.to() * g.to() + b.to());
                }
            }
        });
        out
    }
}

impl Map3 for LayerNormAffine {
    const NAME: &'static str = "layer-norm-affine";
    fn f<T: Real>(
        &self,
        packed: &[T],
        l: &Layout,
        gamma: &[T],
        _: &Layout,
        beta: &[T],
        _: &Layout,
    ) -> Result<(Vec<T>, Shape)> {
        let mut dims = l.shape().dims().to_vec();
        *dims.last_mut().unwrap() = gamma.len();
        Ok((self.run(packed, gamma, beta), Shape::from(dims)))
    }
}
custom_op!(3, LayerNormAffine, cuda);

/// Batched matrix product C_i = op(A_i)·op(B_i), op = identity or transpose, on contiguous
/// inputs: A is (batch, r, c); B is (batch, r, c) or 2-D (shared by every batch element, e.g. a
/// weight). With several batch elements they run in parallel, each GEMM on one thread; a single
/// one uses all threads. Each product is computed the same way in both cases, so a window's
/// numbers never depend on the batch it is in or on the thread count.
pub struct BatchMatMul {
    pub a_t: bool,
    pub b_t: bool,
}

/// (rows, cols, row stride, col stride) of op(X) for a contiguous stored r × c matrix.
fn view(r: usize, c: usize, t: bool) -> (usize, usize, isize, isize) {
    if t {
        (c, r, 1, c as isize)
    } else {
        (r, c, c as isize, 1)
    }
}

impl BatchMatMul {
    #[allow(clippy::too_many_arguments)]
    fn run<T: Real>(
        &self,
        a: &[T],
        ad: &[usize],
        b: &[T],
        bd: &[usize],
        bias: Option<&[T]>,
    ) -> Result<(Vec<T>, Shape)> {
        let batch = ad[0];
        let (m, k, a_rs, a_cs) = view(ad[1], ad[2], self.a_t);
        let shared = bd.len() == 2;
        let (br, bc) = if shared { (bd[0], bd[1]) } else { (bd[1], bd[2]) };
        let (k2, n, b_rs, b_cs) = view(br, bc, self.b_t);
        if k != k2 || (!shared && bd[0] != batch) {
            candle_core::bail!(
                "batch-matmul: shapes {ad:?} and {bd:?} do not match (a_t {}, b_t {})",
                self.a_t,
                self.b_t
            );
        }
        let mut out = vec![T::from(0.0); batch * m * n];
        if let Some(bias) = bias {
            if bias.len() != n {
                candle_core::bail!("batch-matmul: bias of length {} for {n} columns", bias.len());
            }
            out.par_chunks_mut(n).for_each(|row| row.copy_from_slice(bias));
        }
        let read_dst = bias.is_some();
        let b_skip = if shared { 0 } else { br * bc };
        let one = |i: usize, dst: &mut [T], par: gemm::Parallelism| unsafe {
            gemm::gemm(
                m,
                n,
                k,
                dst.as_mut_ptr(),
                1,
                n as isize,
                read_dst,
                a[i * ad[1] * ad[2]..].as_ptr(),
                a_cs,
                a_rs,
                b[i * b_skip..].as_ptr(),
                b_cs,
                b_rs,
                T::from(1.0),
                T::from(1.0),
                false,
                false,
                false,
                par,
            )
        };
        if batch == 1 {
            let threads = rayon::current_num_threads();
            let par = if threads > 1 { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None };
            one(0, &mut out, par);
        } else if m * n > 0 {
            out.par_chunks_mut(m * n).enumerate().for_each(|(i, dst)| one(i, dst, gemm::Parallelism::None));
        }
        let mut dims = vec![batch, m, n];
        if batch == 0 {
            dims = vec![0, m, n];
        }
        Ok((out, Shape::from(dims)))
    }
}

fn check_bmm_dims(ad: &[usize], bd: &[usize]) -> Result<()> {
    if ad.len() != 3 || !(bd.len() == 2 || bd.len() == 3) {
        candle_core::bail!("batch-matmul: expected (batch, r, c) and (batch, r, c) or (r, c), got {ad:?} and {bd:?}");
    }
    Ok(())
}

impl Map2 for BatchMatMul {
    const NAME: &'static str = "batch-matmul";
    fn f<T: Real>(&self, a: &[T], la: &Layout, b: &[T], lb: &Layout) -> Result<(Vec<T>, Shape)> {
        let (ad, bd) = (la.shape().dims(), lb.shape().dims());
        check_bmm_dims(ad, bd)?;
        self.run(a, ad, b, bd, None)
    }
}
custom_op!(2, BatchMatMul);

/// With a bias (third input, one value per output column) added inside the GEMM.
impl Map3 for BatchMatMul {
    const NAME: &'static str = "batch-matmul-bias";
    fn f<T: Real>(
        &self,
        a: &[T],
        la: &Layout,
        b: &[T],
        lb: &Layout,
        bias: &[T],
        _: &Layout,
    ) -> Result<(Vec<T>, Shape)> {
        let (ad, bd) = (la.shape().dims(), lb.shape().dims());
        check_bmm_dims(ad, bd)?;
        self.run(a, ad, b, bd, Some(bias))
    }
}
custom_op!(3, BatchMatMul);

/// op(a)·op(b) + bias, see [`bmm`].
pub fn bmm_bias(a: &Tensor, b: &Tensor, bias: &Tensor) -> Result<Tensor> {
    a.contiguous()?.apply_op3_no_bwd(&b.contiguous()?, &bias.contiguous()?, &BatchMatMul { a_t: false, b_t: false })
}

/// op(a)·op(b) for a (batch, r, c) and b (batch, r, c) or (r, c); see [`BatchMatMul`].
pub fn bmm(a: &Tensor, b: &Tensor, a_t: bool, b_t: bool) -> Result<Tensor> {
    a.contiguous()?.apply_op2_no_bwd(&b.contiguous()?, &BatchMatMul { a_t, b_t })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_tanh_and_exp_match_libm() {
        let mut worst_exp = 0.0f64;
        let mut worst_tanh = 0.0f64;
        for i in -200_000..=200_000 {
            let x = i as f32 * 1e-4 * 4.0; // −80 … 80 for exp, −80 … 80 for tanh
            let e = fast_exp(x.clamp(-80.0, 80.0)) as f64;
            let want = (x.clamp(-80.0, 80.0) as f64).exp();
            worst_exp = worst_exp.max(((e - want) / want).abs());
            let t = fast_tanh(x) as f64;
            worst_tanh = worst_tanh.max((t - (x as f64).tanh()).abs());
        }
        assert!(worst_exp < 5e-7, "exp relative error {worst_exp}");
        assert!(worst_tanh < 5e-7, "tanh absolute error {worst_tanh}");
    }

    /// fast_erf against f64's erf (candle's) over [−6, 6], absolute error.
    #[test]
    fn fast_erf_matches_f64() {
        let mut worst = 0.0f64;
        for i in -600_000..=600_000 {
            let x = i as f32 * 1e-5;
            let want = candle_core::cpu::erf::erf_f64(x as f64);
            worst = worst.max((fast_erf(x) as f64 - want).abs());
        }
        assert!(worst < 5e-7, "erf absolute error {worst}");
    }
}
