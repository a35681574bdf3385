//! The rotary position embedding (GPT-NeoX's rotate-half) of the query and key parts of a packed
//! [Q | K | V] activation, and its transpose for the backward pass.
//!
//! Per head, dimensions i and i + r/2 (i < r/2, r = the rotary dimensions) turn by the angle
//! t·θ_i of the row's position t:
//!
//!   y_i = x_i cos − x_{i+r/2} sin,   y_{i+r/2} = x_{i+r/2} cos + x_i sin
//!
//! and the transpose (the backward) turns by −t·θ_i. The rest of each head, and V, pass through.
//! [`rotate`] is one pass over the rows on the CPU ([`Rotary`]); [`rotate_plain`] is the same
//! map in candle's ops (other devices, the plain-ops models, and the test's reference; both make
//! the same roundings, so they agree bitwise).

use candle_core::{Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;

use super::kernels::Real;
use super::Map2;

/// The rotary tables: cos and sin (T, r/2) of the angles t·θ_i, in the activations' dtype.
#[derive(Clone)]
pub struct RotaryTables {
    pub cos: Tensor,
    pub sin: Tensor,
}

/// The packed layout the rotation acts on: `heads` heads of `head_size` in each of Q, K and V,
/// the first `dims` (even) of each query and key head rotated.
#[derive(Debug, Clone, Copy)]
pub struct RotaryShape {
    pub heads: usize,
    pub head_size: usize,
    pub dims: usize,
}

/// The rotation of `qkv` (B, T, 3C) by the tables (T ≥ the rows' positions), or its transpose
/// with `inverse`: the CPU kernel when `plain` is false and the tensor is in host memory.
pub fn rotate(qkv: &Tensor, tables: &RotaryTables, shape: RotaryShape, inverse: bool, plain: bool) -> Result<Tensor> {
    if plain || !qkv.device().is_cpu() {
        return rotate_plain(qkv, tables, shape, inverse);
    }
    let (_, t, _) = qkv.dims3()?;
    let cos_sin = Tensor::cat(&[tables.cos.narrow(0, 0, t)?, tables.sin.narrow(0, 0, t)?], 1)?.contiguous()?;
    qkv.contiguous()?.apply_op2_no_bwd(&cos_sin, &Rotary { shape, inverse })
}

/// [`rotate`] in candle's ops.
pub fn rotate_plain(qkv: &Tensor, tables: &RotaryTables, shape: RotaryShape, inverse: bool) -> Result<Tensor> {
    let (b, t, c3) = qkv.dims3()?;
    let (c, h, hs, r) = (c3 / 3, shape.heads, shape.head_size, shape.dims);
    let half = r / 2;
    // (T, r/2) → (1, T, 1, r/2), broadcast over batch and heads.
    let cos = tables.cos.narrow(0, 0, t)?.reshape((1, t, 1, half))?;
    let sin = tables.sin.narrow(0, 0, t)?.reshape((1, t, 1, half))?;
    let turn = |x: &Tensor| -> Result<Tensor> {
        let x = x.reshape((b, t, h, hs))?;
        let x1 = x.narrow(D::Minus1, 0, half)?;
        let x2 = x.narrow(D::Minus1, half, half)?;
        let (s1, s2) = if inverse { (sin.neg()?, sin.clone()) } else { (sin.clone(), sin.neg()?) };
        let y1 = (x1.broadcast_mul(&cos)? + x2.broadcast_mul(&s2)?)?;
        let y2 = (x2.broadcast_mul(&cos)? + x1.broadcast_mul(&s1)?)?;
        let mut parts = vec![y1, y2];
        if r < hs {
            parts.push(x.narrow(D::Minus1, r, hs - r)?);
        }
        Tensor::cat(&parts, D::Minus1)?.reshape((b, t, c))
    };
    let q = turn(&qkv.narrow(2, 0, c)?)?;
    let k = turn(&qkv.narrow(2, c, c)?)?;
    let v = qkv.narrow(2, 2 * c, c)?;
    Tensor::cat(&[q, k, v], 2)?.contiguous()
}

/// The CPU kernel: inputs qkv (B, T, 3C) and [cos | sin] (T, r), rows in parallel.
struct Rotary {
    shape: RotaryShape,
    inverse: bool,
}

impl Map2 for Rotary {
    const NAME: &'static str = "rotary";
    fn f<T: Real>(&self, x: &[T], lx: &Layout, cs: &[T], _: &Layout) -> Result<(Vec<T>, Shape)> {
        let (_, t, c3) = lx.shape().dims3()?;
        let RotaryShape { heads, head_size: hs, dims: r } = self.shape;
        let half = r / 2;
        if c3 != 3 * heads * hs || r > hs || r % 2 == 1 || cs.len() != t * r {
            candle_core::bail!(
                "rotary: shapes (3C {c3}, {heads} heads of {hs}, {r} rotary dimensions, table {})",
                cs.len()
            );
        }
        let mut out = x.to_vec();
        out.par_chunks_mut(c3).enumerate().for_each(|(row, o)| {
            let table = &cs[(row % t) * r..(row % t + 1) * r];
            let (cos, sin) = table.split_at(half);
            // The query and key heads: 2·heads blocks of hs at the row's start.
            for head in o[..2 * heads * hs].chunks_exact_mut(hs) {
                let (x1, x2) = head[..r].split_at_mut(half);
                for i in 0..half {
                    let (a, b) = (x1[i], x2[i]);
                    if self.inverse {
                        x1[i] = a * cos[i] + b * sin[i];
                        x2[i] = b * cos[i] - a * sin[i];
                    } else {
                        x1[i] = a * cos[i] - b * sin[i];
                        x2[i] = b * cos[i] + a * sin[i];
                    }
                }
            }
        });
        Ok((out, lx.shape().clone()))
    }
}
custom_op!(2, Rotary);

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    /// The kernel against candle's ops, forward and inverse, f64 and f32, with and without a
    /// pass-through part of each head; and the inverse undoes the rotation.
    #[test]
    fn kernel_matches_plain() {
        let dev = Device::Cpu;
        let (b, t, heads, hs) = (2, 5, 3, 8);
        for dims in [4, 8] {
            let shape = RotaryShape { heads, head_size: hs, dims };
            let angles = Tensor::randn(0f64, 2.0, (t + 2, dims / 2), &dev).unwrap();
            let tables = RotaryTables { cos: angles.cos().unwrap(), sin: angles.sin().unwrap() };
            let qkv = Tensor::randn(0f64, 1.0, (b, t, 3 * heads * hs), &dev).unwrap();
            for dtype in [DType::F64, DType::F32] {
                let cast = |x: &Tensor| x.to_dtype(dtype).unwrap();
                let tab = RotaryTables { cos: cast(&tables.cos), sin: cast(&tables.sin) };
                let x = cast(&qkv);
                for inverse in [false, true] {
                    let fast = rotate(&x, &tab, shape, inverse, false).unwrap();
                    let want = rotate_plain(&x, &tab, shape, inverse).unwrap();
                    let diff = (fast - &want).unwrap().abs().unwrap().max_all().unwrap();
                    assert_eq!(
                        diff.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap(),
                        0.0,
                        "{dtype:?} {inverse}"
                    );
                    // V and the pass-through dimensions are untouched; the rotation moves q and k.
                    let moved = (&want - &x).unwrap().abs().unwrap().to_dtype(DType::F64).unwrap();
                    let v_part = moved.narrow(2, 2 * heads * hs, heads * hs).unwrap().max_all().unwrap();
                    assert_eq!(v_part.to_scalar::<f64>().unwrap(), 0.0);
                    let qk = moved.narrow(2, 0, 2 * heads * hs).unwrap().max_all().unwrap();
                    assert!(qk.to_scalar::<f64>().unwrap() > 0.1);
                }
                let back = rotate(&rotate(&x, &tab, shape, false, false).unwrap(), &tab, shape, true, false).unwrap();
                let err = (back - &x).unwrap().abs().unwrap().max_all().unwrap();
                let tol = if dtype == DType::F64 { 1e-14 } else { 1e-5 };
                assert!(err.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap() < tol);
            }
        }
    }
}
