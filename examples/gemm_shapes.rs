//! Single-threaded f32 GEMM on the engine's shapes: the `gemm` crate (agop's) against faer's
//! matmul (private-gemm-x86), GFLOP/s each. `cargo run --release --example gemm_shapes`.

use agop::math::gemm::{gemm_into, View};
use faer::{Accum, MatMut, MatRef, Par};
use std::time::Instant;

fn fill(n: usize, seed: u32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2654435761).wrapping_add(1);
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s as f32 / u32::MAX as f32) - 0.5
        })
        .collect()
}

fn main() {
    // (name, m, k, n, a transposed (a stored k × m), b transposed (b stored n × k))
    // Forward x·W (W stored in × out: B row-major) and backward δ·Wᵀ (B a transposed view),
    // each also with the other layout, for the four GPT-2 weights.
    let shapes = [
        ("fwd c_attn  W", 256, 768, 2304, false, false),
        ("fwd c_attn  Wt", 256, 768, 2304, false, true),
        ("fwd a.proj  W", 256, 768, 768, false, false),
        ("fwd a.proj  Wt", 256, 768, 768, false, true),
        ("fwd c_fc    W", 256, 768, 3072, false, false),
        ("fwd c_fc    Wt", 256, 768, 3072, false, true),
        ("fwd m.proj  W", 256, 3072, 768, false, false),
        ("fwd m.proj  Wt", 256, 3072, 768, false, true),
        ("bwd c_attn  Wt", 256, 2304, 768, false, true),
        ("bwd c_attn  W", 256, 2304, 768, false, false),
        ("bwd c_fc    Wt", 256, 3072, 768, false, true),
        ("bwd c_fc    W", 256, 3072, 768, false, false),
        ("bwd m.proj  Wt", 256, 768, 3072, false, true),
        ("bwd m.proj  W", 256, 768, 3072, false, false),
        ("gram 768x256x768", 768, 256, 768, true, false),
        ("gram 128x256x128", 128, 256, 128, true, false),
    ];
    let reps: usize = std::env::args().nth(1).map(|s| s.parse().unwrap()).unwrap_or(20);
    for (name, m, k, n, at, bt) in shapes {
        let a = fill(m * k, 1);
        let b = fill(k * n, 2);
        let mut c1 = vec![0f32; m * n];
        let mut c2 = vec![0f32; m * n];
        let av = if at { View::new(a.as_ptr(), 1, m) } else { View::new(a.as_ptr(), k, 1) };
        let bv = if bt { View::new(b.as_ptr(), 1, k) } else { View::new(b.as_ptr(), n, 1) };
        let (ars, acs) = if at { (1isize, m as isize) } else { (k as isize, 1) };
        let (brs, bcs) = if bt { (1isize, k as isize) } else { (n as isize, 1) };
        let run_gemm = |c: &mut [f32]| unsafe { gemm_into(m, n, k, c.as_mut_ptr(), n, av, bv, 1.0) };
        let run_faer = |c: &mut [f32]| unsafe {
            let lhs = MatRef::<f32>::from_raw_parts(a.as_ptr(), m, k, ars, acs);
            let rhs = MatRef::<f32>::from_raw_parts(b.as_ptr(), k, n, brs, bcs);
            let dst = MatMut::<f32>::from_raw_parts_mut(c.as_mut_ptr(), m, n, n as isize, 1);
            faer::linalg::matmul::matmul(dst, Accum::Replace, lhs, rhs, 1.0, Par::Seq);
        };
        let flops = 2.0 * (m * n * k) as f64 * reps as f64;
        let mut best = [f64::MAX; 2];
        for _round in 0..3 {
            run_gemm(&mut c1);
            let t = Instant::now();
            for _ in 0..reps {
                run_gemm(&mut c1);
            }
            best[0] = best[0].min(t.elapsed().as_secs_f64());
            run_faer(&mut c2);
            let t = Instant::now();
            for _ in 0..reps {
                run_faer(&mut c2);
            }
            best[1] = best[1].min(t.elapsed().as_secs_f64());
        }
        let diff = c1.iter().zip(&c2).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        println!(
            "{name:24} gemm {:6.1}  faer {:6.1} GFLOP/s  max|diff| {diff:.2e}",
            flops / best[0] / 1e9,
            flops / best[1] / 1e9
        );
    }
}
