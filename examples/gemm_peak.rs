//! Measured f32 GEMM peak of this machine through candle (the same GEMM agop uses):
//! prints GFLOP/s for a square product. Used by benches/throughput.sh.

use candle_core::{Device, Tensor};

fn main() -> anyhow::Result<()> {
    let n: usize = std::env::args().nth(1).map(|s| s.parse()).transpose()?.unwrap_or(1024);
    let a = Tensor::randn(0f32, 1.0, (n, n), &Device::Cpu)?;
    let b = Tensor::randn(0f32, 1.0, (n, n), &Device::Cpu)?;
    let _ = a.matmul(&b)?; // warm-up
    let reps = 10;
    let t = std::time::Instant::now();
    for _ in 0..reps {
        let _ = a.matmul(&b)?;
    }
    let s = t.elapsed().as_secs_f64();
    println!("gemm_gflops {:.1}", 2.0 * (n as f64).powi(3) * reps as f64 / s / 1e9);
    Ok(())
}
