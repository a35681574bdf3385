//! Numerical building blocks with no notion of models or files: the strided single-thread GEMM
//! the CPU kernels and Gram accumulation are made of, and dense f64 linear algebra (faer).

pub mod gemm;
pub mod linalg;
