//! The engine's custom candle ops, CPU kernels written for this model: fused GELU and LayerNorm
//! passes and the batched GEMM ([`kernels`]), causal attention on the packed Q | K | V
//! ([`attention`]). Candle's own ops record autograd graphs and run single-threaded passes; these
//! run one parallel pass each and no autograd.
//!
//! Each op implements one of [`Map1`], [`Map2`], [`Map3`] once, generically over the element type
//! (f32 for measurement, f64 for the finite-difference tests); [`map1`]/[`map2`]/[`map3`] do the
//! F32/F64 dispatch of candle's `cpu_fwd`, and `custom_op!` writes the candle trait impl. The ops
//! with a fused GPU kernel (`kernels.cu`, [`cuda`] with the `cuda` feature) get their `cuda_fwd`
//! from `custom_op!(N, Op, cuda)`; their CPU bodies are the kernels' twins.

use candle_core::{CpuStorage, Layout, Result, Shape};

pub use kernels::{bmm, bmm_bias, fast_exp, fast_tanh, Real};

/// [`bmm`] on the tensors' device: the CPU kernel in host memory, candle's matmul elsewhere.
pub fn matmul(a: &candle_core::Tensor, b: &candle_core::Tensor, a_t: bool, b_t: bool) -> Result<candle_core::Tensor> {
    if a.device().is_cpu() {
        bmm(a, b, a_t, b_t)
    } else {
        plain::bmm(a, b, a_t, b_t, None)
    }
}

/// The contiguous part of a storage slice described by `l`.
pub(crate) fn contiguous<'a, T>(data: &'a [T], l: &Layout, what: &str) -> Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("{what}: input must be contiguous"),
    }
}

/// An op of one input: the output values and shape from the contiguous input.
pub(crate) trait Map1 {
    const NAME: &'static str;
    fn f<T: Real>(&self, x: &[T], l: &Layout) -> Result<(Vec<T>, Shape)>;
}

/// An op of two inputs of one dtype.
pub(crate) trait Map2 {
    const NAME: &'static str;
    fn f<T: Real>(&self, a: &[T], la: &Layout, b: &[T], lb: &Layout) -> Result<(Vec<T>, Shape)>;
}

/// An op of three inputs of one dtype.
pub(crate) trait Map3 {
    const NAME: &'static str;
    #[allow(clippy::too_many_arguments)]
    fn f<T: Real>(&self, a: &[T], la: &Layout, b: &[T], lb: &Layout, c: &[T], lc: &Layout) -> Result<(Vec<T>, Shape)>;
}

/// F32/F64 dispatch of a [`Map1`] op.
pub(crate) fn map1<M: Map1>(op: &M, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
    let what = M::NAME;
    Ok(match s {
        CpuStorage::F32(x) => {
            let (v, shape) = op.f(contiguous(x, l, what)?, l)?;
            (CpuStorage::F32(v), shape)
        }
        CpuStorage::F64(x) => {
            let (v, shape) = op.f(contiguous(x, l, what)?, l)?;
            (CpuStorage::F64(v), shape)
        }
        _ => candle_core::bail!("{what}: F32 or F64 input"),
    })
}

/// F32/F64 dispatch of a [`Map2`] op.
pub(crate) fn map2<M: Map2>(
    op: &M,
    s1: &CpuStorage,
    l1: &Layout,
    s2: &CpuStorage,
    l2: &Layout,
) -> Result<(CpuStorage, Shape)> {
    let what = M::NAME;
    Ok(match (s1, s2) {
        (CpuStorage::F32(a), CpuStorage::F32(b)) => {
            let (v, shape) = op.f(contiguous(a, l1, what)?, l1, contiguous(b, l2, what)?, l2)?;
            (CpuStorage::F32(v), shape)
        }
        (CpuStorage::F64(a), CpuStorage::F64(b)) => {
            let (v, shape) = op.f(contiguous(a, l1, what)?, l1, contiguous(b, l2, what)?, l2)?;
            (CpuStorage::F64(v), shape)
        }
        _ => candle_core::bail!("{what}: F32 or F64 inputs of one dtype"),
    })
}

/// F32/F64 dispatch of a [`Map3`] op.
pub(crate) fn map3<M: Map3>(
    op: &M,
    (s1, l1): (&CpuStorage, &Layout),
    (s2, l2): (&CpuStorage, &Layout),
    (s3, l3): (&CpuStorage, &Layout),
) -> Result<(CpuStorage, Shape)> {
    let what = M::NAME;
    Ok(match (s1, s2, s3) {
        (CpuStorage::F32(a), CpuStorage::F32(b), CpuStorage::F32(c)) => {
            let (a, b, c) = (contiguous(a, l1, what)?, contiguous(b, l2, what)?, contiguous(c, l3, what)?);
            let (v, shape) = op.f(a, l1, b, l2, c, l3)?;
            (CpuStorage::F32(v), shape)
        }
        (CpuStorage::F64(a), CpuStorage::F64(b), CpuStorage::F64(c)) => {
            let (a, b, c) = (contiguous(a, l1, what)?, contiguous(b, l2, what)?, contiguous(c, l3, what)?);
            let (v, shape) = op.f(a, l1, b, l2, c, l3)?;
            (CpuStorage::F64(v), shape)
        }
        _ => candle_core::bail!("{what}: F32 or F64 inputs of one dtype"),
    })
}

/// `impl candle_core::CustomOpN for $op` from its `MapN` impl; with `cuda`, also its `cuda_fwd`
/// from its `cuda::KernelN` impl (the op's fused GPU kernel).
macro_rules! custom_op {
    (1, $op:ty $(, $cuda:ident)?) => {
        impl candle_core::CustomOp1 for $op {
            fn name(&self) -> &'static str {
                <$op as $crate::model::ops::Map1>::NAME
            }
            fn cpu_fwd(
                &self,
                s: &candle_core::CpuStorage,
                l: &candle_core::Layout,
            ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
                $crate::model::ops::map1(self, s, l)
            }
            $(
                #[cfg(feature = "cuda")]
                fn cuda_fwd(
                    &self,
                    s: &candle_core::CudaStorage,
                    l: &candle_core::Layout,
                ) -> candle_core::Result<(candle_core::CudaStorage, candle_core::Shape)> {
                    $crate::model::ops::$cuda::fwd1(self, s, l)
                }
            )?
        }
    };
    (2, $op:ty $(, $cuda:ident)?) => {
        impl candle_core::CustomOp2 for $op {
            fn name(&self) -> &'static str {
                <$op as $crate::model::ops::Map2>::NAME
            }
            fn cpu_fwd(
                &self,
                s1: &candle_core::CpuStorage,
                l1: &candle_core::Layout,
                s2: &candle_core::CpuStorage,
                l2: &candle_core::Layout,
            ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
                $crate::model::ops::map2(self, s1, l1, s2, l2)
            }
            $(
                #[cfg(feature = "cuda")]
                fn cuda_fwd(
                    &self,
                    s1: &candle_core::CudaStorage,
                    l1: &candle_core::Layout,
                    s2: &candle_core::CudaStorage,
                    l2: &candle_core::Layout,
                ) -> candle_core::Result<(candle_core::CudaStorage, candle_core::Shape)> {
                    $crate::model::ops::$cuda::fwd2(self, s1, l1, s2, l2)
                }
            )?
        }
    };
    (3, $op:ty $(, $cuda:ident)?) => {
        impl candle_core::CustomOp3 for $op {
            fn name(&self) -> &'static str {
                <$op as $crate::model::ops::Map3>::NAME
            }
            fn cpu_fwd(
                &self,
                s1: &candle_core::CpuStorage,
                l1: &candle_core::Layout,
                s2: &candle_core::CpuStorage,
                l2: &candle_core::Layout,
                s3: &candle_core::CpuStorage,
                l3: &candle_core::Layout,
            ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
                $crate::model::ops::map3(self, (s1, l1), (s2, l2), (s3, l3))
            }
            $(
                #[cfg(feature = "cuda")]
                fn cuda_fwd(
                    &self,
                    s1: &candle_core::CudaStorage,
                    l1: &candle_core::Layout,
                    s2: &candle_core::CudaStorage,
                    l2: &candle_core::Layout,
                    s3: &candle_core::CudaStorage,
                    l3: &candle_core::Layout,
                ) -> candle_core::Result<(candle_core::CudaStorage, candle_core::Shape)> {
                    $crate::model::ops::$cuda::fwd3(self, (s1, l1), (s2, l2), (s3, l3))
                }
            )?
        }
    };
}
// After the macro, so that the ops see it (textual scope).
pub mod attention;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod kernels;
pub mod loss;
pub mod plain;
pub mod rotary;
pub mod select;
pub mod softmax;
