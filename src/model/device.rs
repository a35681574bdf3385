//! `--device cpu|cuda[:N]`: where the model and the measurement run; `--precision`: how a GPU
//! computes the model's products.

use anyhow::Result;
use candle_core::Device;

use crate::bail_bad;

/// The arithmetic of the model's own products on a GPU (`--precision`). The Grams, the FACT
/// products and every sum stay f32 products added in f64 whatever this is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Precision {
    /// f32 products, TF32 off (the default; the CPU's only precision).
    #[default]
    F32,
    /// cuBLAS's TF32 tensor-core mode for the model's f32 products (10-bit mantissa inputs).
    Tf32,
    /// The model's products with bf16 operands (f32 accumulation), everything else in f32, as
    /// PyTorch's autocast.
    Bf16,
}

impl Precision {
    pub fn as_str(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Tf32 => "tf32",
            Precision::Bf16 => "bf16",
        }
    }

    pub fn is_f32(&self) -> bool {
        *self == Precision::F32
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Check that `precision` applies on `device` (a reduced precision needs a GPU; on the CPU agop
/// computes in f32) and set cuBLAS's TF32 mode for it.
pub fn set_precision(device: &Device, precision: Precision) -> Result<()> {
    if device.is_cpu() && !precision.is_f32() {
        bail_bad!(
            "--precision {precision} ([measure] precision in a pipeline): reduced precision applies on a \
             GPU (--device cuda); the CPU computes in f32"
        );
    }
    #[cfg(feature = "cuda")]
    candle_core::cuda::set_gemm_reduced_precision_f32(precision == Precision::Tf32);
    Ok(())
}

/// Run `f` with cuBLAS's TF32 mode off (the Grams and FACT products under `--precision tf32`),
/// then restore it. Nothing to do without CUDA.
pub fn full_f32<T>(f: impl FnOnce() -> T) -> T {
    #[cfg(feature = "cuda")]
    {
        let was = candle_core::cuda::gemm_reduced_precision_f32();
        candle_core::cuda::set_gemm_reduced_precision_f32(false);
        let out = f();
        candle_core::cuda::set_gemm_reduced_precision_f32(was);
        out
    }
    #[cfg(not(feature = "cuda"))]
    f()
}

/// The device named by `spec`: `cpu`, `cuda` (GPU 0) or `cuda:N`. A CUDA device needs a build
/// with the `cuda` feature and a visible GPU; both failures are bad input (exit 2) saying what to
/// do. On a GPU, f32 matmuls run in full f32 (TF32 off).
pub fn parse_device(spec: &str) -> Result<Device> {
    match device_spec(spec)? {
        None => Ok(Device::Cpu),
        Some(ordinal) => cuda(ordinal, spec.trim()),
    }
}

/// The GPU ordinal `spec` names (None: the CPU), checking only its form (no GPU is looked for:
/// a pipeline file is checked this way on any machine).
pub fn device_spec(spec: &str) -> Result<Option<usize>> {
    let spec = spec.trim();
    if spec == "cpu" {
        return Ok(None);
    }
    match spec.strip_prefix("cuda") {
        Some("") => Ok(Some(0)),
        Some(rest) => match rest.strip_prefix(':').and_then(|n| n.parse::<usize>().ok()) {
            Some(n) => Ok(Some(n)),
            None => bail_bad!("--device {spec}: expected cpu, cuda or cuda:N"),
        },
        None => bail_bad!("--device {spec}: expected cpu, cuda or cuda:N"),
    }
}

#[cfg(feature = "cuda")]
fn cuda(ordinal: usize, spec: &str) -> Result<Device> {
    candle_core::cuda::set_gemm_reduced_precision_f32(false);
    candle_core::cuda::set_gemm_reduced_precision_f16(false);
    candle_core::cuda::set_gemm_reduced_precision_bf16(false);
    match Device::new_cuda(ordinal) {
        Ok(d) => {
            tune_cuda(&d)?;
            Ok(d)
        }
        // candle's error text carries a backtrace after the first line.
        Err(e) => bail_bad!(
            "--device {spec}: no usable NVIDIA GPU {ordinal} ({}); check `nvidia-smi`, CUDA_VISIBLE_DEVICES, and \
             that the CUDA 13 libraries (cuBLAS, cuRAND) are on LD_LIBRARY_PATH",
            e.to_string().lines().next().unwrap_or_default()
        ),
    }
}

/// Per-launch overheads off on a fresh device: candle's tensors need no CUDA events (they all
/// live on the device's one stream, so cudarc's cross-stream event tracking only costs two event
/// creations per allocation), and the stream-ordered memory pool keeps freed memory instead of
/// returning it to the driver at every synchronization (its default release threshold is 0), as
/// PyTorch's caching allocator does.
#[cfg(feature = "cuda")]
fn tune_cuda(device: &Device) -> Result<()> {
    use candle_core::cuda::cudarc::driver::sys;
    let cuda = device.as_cuda_device()?;
    // SAFETY: agop creates no second stream on this context; every tensor is used on the one
    // stream candle made it on, which is what makes event tracking unnecessary.
    unsafe { cuda.disable_event_tracking() };
    let stream = cuda.cuda_stream();
    let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
    let mut threshold: u64 = u64::MAX;
    // SAFETY: plain driver calls on the device the context was made for; `threshold` outlives them.
    let status = unsafe {
        stream.context().bind_to_thread()?;
        match sys::cuDeviceGetDefaultMemPool(&mut pool, stream.context().cu_device()) {
            sys::CUresult::CUDA_SUCCESS => sys::cuMemPoolSetAttribute(
                pool,
                sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
                (&mut threshold as *mut u64).cast(),
            ),
            other => other,
        }
    };
    if status != sys::CUresult::CUDA_SUCCESS {
        // Only speed depends on it (a GPU without memory pools allocates synchronously).
        eprintln!("note: could not keep the CUDA memory pool's freed memory ({status:?}); continuing");
    }
    Ok(())
}

#[cfg(not(feature = "cuda"))]
fn cuda(_ordinal: usize, spec: &str) -> Result<Device> {
    bail_bad!(
        "--device {spec}: this agop was built without CUDA. Build it with `cargo build --release --features cuda` \
         (with a CUDA toolkit installed, or one laid out by scripts/cuda-toolkit.sh; docs/gpu.md)"
    )
}

/// How a device is recorded in GOP metadata: `cpu` or `cuda:N`.
pub fn device_name(d: &Device) -> String {
    match d.location() {
        candle_core::DeviceLocation::Cpu => "cpu".into(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_specs() {
        assert!(matches!(parse_device("cpu").unwrap(), Device::Cpu));
        for bad in ["gpu", "cuda:x", "cuda1", "cuda:"] {
            let e = parse_device(bad).unwrap_err();
            assert!(crate::error::is_bad_input(&e), "{bad}: {e:#}");
        }
        #[cfg(not(feature = "cuda"))]
        {
            let e = format!("{:#}", parse_device("cuda:1").unwrap_err());
            assert!(e.contains("--features cuda"), "{e}");
        }
        assert_eq!(device_name(&Device::Cpu), "cpu");
    }
}
