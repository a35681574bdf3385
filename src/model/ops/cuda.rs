//! The GPU side of the fused ops: LayerNorm forward, affine and backward and the GELU backward
//! ([`super::kernels`]), the causal softmax and its backward ([`super::softmax`]). Their CUDA C is
//! `kernels.cu`, compiled once per process by NVRTC and loaded once per device; each op's
//! `cuda_fwd` (written by `custom_op!(N, Op, cuda)`) calls [`fwd1`]/[`fwd2`]/[`fwd3`], which
//! dispatch on f32/f64 and launch the op's kernel through its [`Kernel1`]/[`Kernel2`]/[`Kernel3`]
//! impl below. The ops' CPU bodies are the twins the GPU tests compare each kernel with.

use std::sync::OnceLock;

use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView, DeviceRepr, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::{kernel_name, CudaDevice, CudaStorageSlice as S, WrapErr};
use candle_core::{bail, CudaStorage, Layout, Result, Shape, WithDType};

use super::kernels::{GeluBackward, LayerNormAffine, LayerNormBackward, LayerNormForward};
use super::softmax::{CausalSoftmax, SoftmaxBackward};

/// The CUDA C of every fused kernel.
pub const SOURCE: &str = include_str!("kernels.cu");

/// Threads per block of every kernel (8 warps).
const THREADS: u32 = 256;

/// The PTX of [`SOURCE`], compiled by NVRTC on first use.
fn ptx() -> Result<&'static str> {
    static PTX: OnceLock<std::result::Result<String, String>> = OnceLock::new();
    match PTX.get_or_init(|| {
        candle_core::cuda_backend::cudarc::nvrtc::compile_ptx(SOURCE).map(|p| p.to_src()).map_err(|e| e.to_string())
    }) {
        Ok(p) => Ok(p),
        Err(e) => {
            bail!("compiling agop's fused CUDA kernels (NVRTC): {e}; AGOP_FUSED_KERNELS=0 runs candle's ops instead")
        }
    }
}

/// Launch kernel `root` for element type T (`root_f32`, `root_f64`; loaded on the device once)
/// with `cfg` and the arguments in the kernel's parameter order (kernels.cu).
macro_rules! launch {
    ($dev:expr, $t:ty, $root:expr, $cfg:expr, $($arg:expr),+) => {{
        let func = $dev.get_or_load_custom_func(&kernel_name::<$t>($root), "agop_kernels", ptx()?)?;
        let mut b = func.builder();
        $(b.arg($arg);)+
        // SAFETY: the arguments match the kernel's parameters in kernels.cu, and every output
        // element is written by the kernel.
        unsafe { b.launch($cfg) }.w()?;
    }};
}

/// The contiguous elements of a tensor's slice described by `l`.
fn view<'a, T>(s: &'a CudaSlice<T>, l: &Layout, what: &str) -> Result<CudaView<'a, T>> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(s.slice(a..b)),
        None => bail!("{what}: input must be contiguous"),
    }
}

/// One block per row.
fn per_row(rows: usize) -> LaunchConfig {
    LaunchConfig { grid_dim: (rows as u32, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 }
}

/// One thread per element (grid-stride loops cover the rest).
fn per_element(n: usize) -> LaunchConfig {
    let blocks = n.div_ceil(THREADS as usize).clamp(1, i32::MAX as usize) as u32;
    LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 }
}

/// One warp per row.
fn warp_per_row(rows: usize) -> LaunchConfig {
    let per_block = (THREADS / 32) as usize;
    LaunchConfig { grid_dim: (rows.div_ceil(per_block) as u32, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 }
}

/// An op of one input with a kernel: its output and shape.
pub(crate) trait Kernel1 {
    const NAME: &'static str;
    fn launch<T: DeviceRepr + WithDType>(
        &self,
        x: &CudaView<T>,
        l: &Layout,
        dev: &CudaDevice,
    ) -> Result<(CudaSlice<T>, Shape)>;
}

/// An op of two inputs of one dtype with a kernel.
pub(crate) trait Kernel2 {
    const NAME: &'static str;
    fn launch<T: DeviceRepr + WithDType>(
        &self,
        a: (&CudaView<T>, &Layout),
        b: (&CudaView<T>, &Layout),
        dev: &CudaDevice,
    ) -> Result<(CudaSlice<T>, Shape)>;
}

/// An op of three inputs of one dtype with a kernel.
pub(crate) trait Kernel3 {
    const NAME: &'static str;
    fn launch<T: DeviceRepr + WithDType>(
        &self,
        a: (&CudaView<T>, &Layout),
        b: (&CudaView<T>, &Layout),
        c: (&CudaView<T>, &Layout),
        dev: &CudaDevice,
    ) -> Result<(CudaSlice<T>, Shape)>;
}

/// F32/F64 dispatch of a [`Kernel1`] op (its `cuda_fwd`).
pub(crate) fn fwd1<K: Kernel1>(k: &K, s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
    let dev = &s.device;
    let (slice, shape) = match &s.slice {
        S::F32(x) => k.launch(&view(x, l, K::NAME)?, l, dev).map(|(o, sh)| (S::F32(o), sh))?,
        S::F64(x) => k.launch(&view(x, l, K::NAME)?, l, dev).map(|(o, sh)| (S::F64(o), sh))?,
        _ => bail!("{}: F32 or F64 input", K::NAME),
    };
    Ok((CudaStorage { slice, device: dev.clone() }, shape))
}

/// F32/F64 dispatch of a [`Kernel2`] op.
pub(crate) fn fwd2<K: Kernel2>(
    k: &K,
    s1: &CudaStorage,
    l1: &Layout,
    s2: &CudaStorage,
    l2: &Layout,
) -> Result<(CudaStorage, Shape)> {
    let (dev, n) = (&s1.device, K::NAME);
    let (slice, shape) = match (&s1.slice, &s2.slice) {
        (S::F32(a), S::F32(b)) => {
            k.launch((&view(a, l1, n)?, l1), (&view(b, l2, n)?, l2), dev).map(|(o, sh)| (S::F32(o), sh))?
        }
        (S::F64(a), S::F64(b)) => {
            k.launch((&view(a, l1, n)?, l1), (&view(b, l2, n)?, l2), dev).map(|(o, sh)| (S::F64(o), sh))?
        }
        _ => bail!("{n}: F32 or F64 inputs of one dtype"),
    };
    Ok((CudaStorage { slice, device: dev.clone() }, shape))
}

/// F32/F64 dispatch of a [`Kernel3`] op.
pub(crate) fn fwd3<K: Kernel3>(
    k: &K,
    (s1, l1): (&CudaStorage, &Layout),
    (s2, l2): (&CudaStorage, &Layout),
    (s3, l3): (&CudaStorage, &Layout),
) -> Result<(CudaStorage, Shape)> {
    let (dev, n) = (&s1.device, K::NAME);
    let (slice, shape) = match (&s1.slice, &s2.slice, &s3.slice) {
        (S::F32(a), S::F32(b), S::F32(c)) => k
            .launch((&view(a, l1, n)?, l1), (&view(b, l2, n)?, l2), (&view(c, l3, n)?, l3), dev)
            .map(|(o, sh)| (S::F32(o), sh))?,
        (S::F64(a), S::F64(b), S::F64(c)) => k
            .launch((&view(a, l1, n)?, l1), (&view(b, l2, n)?, l2), (&view(c, l3, n)?, l3), dev)
            .map(|(o, sh)| (S::F64(o), sh))?,
        _ => bail!("{n}: F32 or F64 inputs of one dtype"),
    };
    Ok((CudaStorage { slice, device: dev.clone() }, shape))
}

/// The last dimension of `l` and the number of rows before it.
fn rows_of(l: &Layout) -> (usize, usize) {
    let n = *l.shape().dims().last().unwrap_or(&1);
    (l.shape().elem_count() / n.max(1), n)
}

impl Kernel1 for LayerNormForward {
    const NAME: &'static str = "layer-norm-forward";
    fn launch<T: DeviceRepr + WithDType>(
        &self,
        x: &CudaView<T>,
        l: &Layout,
        dev: &CudaDevice,
    ) -> Result<(CudaSlice<T>, Shape)> {
        let (rows, n) = rows_of(l);
        // SAFETY: the kernel writes every element.
        let out = unsafe { dev.alloc::<T>(rows * (n + 1)) }?;
        let (n32, eps) = (n as i32, self.eps);
        launch!(dev, T, "layer_norm_forward", per_row(rows), x, &out, &n32, &eps);
        let mut dims = l.shape().dims().to_vec();
        *dims.last_mut().expect("rank ≥ 1") = n + 1;
        Ok((out, Shape::from(dims)))
    }
}

impl Kernel3 for LayerNormAffine {
    const NAME: &'static str = "layer-norm-affine";
    fn launch<T: DeviceRepr + WithDType>(
        &self,
        (packed, l): (&CudaView<T>, &Layout),
        (gamma, lg): (&CudaView<T>, &Layout),
        (beta, _): (&CudaView<T>, &Layout),
        dev: &CudaDevice,
    ) -> Result<(CudaSlice<T>, Shape)> {
        let n = lg.shape().elem_count();
        let (rows, _) = rows_of(l);
        let total = rows * n;
        // SAFETY: the kernel writes every element.
        let out = unsafe { dev.alloc::<T>(total) }?;
        let (n32, total64) = (n as i32, total as u64);
        launch!(dev, T, "layer_norm_affine", per_element(total), packed, gamma, beta, &out, &n32, &total64);
        let mut dims = l.shape().dims().to_vec();
        *dims.last_mut().expect("rank ≥ 1") = n;
        Ok((out, Shape::from(dims)))
    }
}

impl Kernel3 for LayerNormBackward {
    const NAME: &'static str = "layer-norm-backward";
    fn launch<T: DeviceRepr + WithDType>(
        &self,
        (dy, l): (&CudaView<T>, &Layout),
        (packed, _): (&CudaView<T>, &Layout),
        (gamma, _): (&CudaView<T>, &Layout),
        dev: &CudaDevice,
    ) -> Result<(CudaSlice<T>, Shape)> {
        let (rows, n) = rows_of(l);
        // SAFETY: the kernel writes every element.
        let out = unsafe { dev.alloc::<T>(rows * n) }?;
        let n32 = n as i32;
        launch!(dev, T, "layer_norm_backward", per_row(rows), dy, packed, gamma, &out, &n32);
        Ok((out, l.shape().clone()))
    }
}

impl Kernel2 for GeluBackward {
    const NAME: &'static str = "gelu-backward";
    fn launch<T: DeviceRepr + WithDType>(
        &self,
        (du, l): (&CudaView<T>, &Layout),
        (pre, _): (&CudaView<T>, &Layout),
        dev: &CudaDevice,
    ) -> Result<(CudaSlice<T>, Shape)> {
        let total = l.shape().elem_count();
        // SAFETY: the kernel writes every element.
        let out = unsafe { dev.alloc::<T>(total) }?;
        let (total64, erf) = (total as u64, self.erf as i32);
        launch!(dev, T, "gelu_backward", per_element(total), du, pre, &out, &total64, &erf);
        Ok((out, l.shape().clone()))
    }
}

impl Kernel1 for CausalSoftmax {
    const NAME: &'static str = "causal-softmax";
    fn launch<T: DeviceRepr + WithDType>(
        &self,
        s: &CudaView<T>,
        l: &Layout,
        dev: &CudaDevice,
    ) -> Result<(CudaSlice<T>, Shape)> {
        let (rows, t) = rows_of(l);
        // SAFETY: the kernel writes every element.
        let out = unsafe { dev.alloc::<T>(rows * t) }?;
        let (rows64, t32, scale) = (rows as u64, t as i32, self.scale);
        launch!(dev, T, "causal_softmax", warp_per_row(rows), s, &out, &rows64, &t32, &scale);
        Ok((out, l.shape().clone()))
    }
}

impl Kernel2 for SoftmaxBackward {
    const NAME: &'static str = "softmax-backward";
    fn launch<T: DeviceRepr + WithDType>(
        &self,
        (datt, l): (&CudaView<T>, &Layout),
        (att, _): (&CudaView<T>, &Layout),
        dev: &CudaDevice,
    ) -> Result<(CudaSlice<T>, Shape)> {
        let (rows, t) = rows_of(l);
        // SAFETY: the kernel writes every element.
        let out = unsafe { dev.alloc::<T>(rows * t) }?;
        let (rows64, t32, scale) = (rows as u64, t as i32, self.scale);
        launch!(dev, T, "softmax_backward", warp_per_row(rows), datt, att, &out, &rows64, &t32, &scale);
        Ok((out, l.shape().clone()))
    }
}
