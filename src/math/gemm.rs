//! Strided matrix views and a single-threaded GEMM on them (the `gemm` crate), for kernels that
//! split work themselves (by window, head or block) and must not depend on the thread count.

/// A strided matrix view for [`gemm_into`]: element (i, j) at `ptr + i·rs + j·cs`.
#[derive(Clone, Copy)]
pub struct View<T> {
    ptr: *const T,
    rs: isize,
    cs: isize,
}

impl<T> View<T> {
    pub fn new(ptr: *const T, rs: usize, cs: usize) -> Self {
        Self { ptr, rs: rs as isize, cs: cs as isize }
    }
    /// The view starting at row `r` (same columns).
    pub fn rows(self, r: usize) -> Self {
        Self { ptr: self.ptr.wrapping_offset(r as isize * self.rs), ..self }
    }
    /// The view starting at column `c` (same rows).
    pub fn cols(self, c: usize) -> Self {
        Self { ptr: self.ptr.wrapping_offset(c as isize * self.cs), ..self }
    }
    /// The transposed view (no data moves).
    pub fn t(self) -> Self {
        Self { ptr: self.ptr, rs: self.cs, cs: self.rs }
    }
}

// SAFETY: views are read-only windows into buffers that outlive the parallel loops using them.
unsafe impl<T: Sync> Send for View<T> {}
unsafe impl<T: Sync> Sync for View<T> {}

/// A raw output pointer shared by parallel tasks that write disjoint parts of one buffer.
#[derive(Clone, Copy)]
pub struct SyncPtr<T>(pub *mut T);
unsafe impl<T: Send> Send for SyncPtr<T> {}
unsafe impl<T: Send> Sync for SyncPtr<T> {}

impl<T> SyncPtr<T> {
    pub fn at(self, offset: usize) -> *mut T {
        // SAFETY (of callers): offset stays inside the buffer.
        unsafe { self.0.add(offset) }
    }
}

/// dst (m × n, row stride `dst_rs`) = beta · a (m × k) · b (k × n), single-threaded; dst is
/// written, not read.
///
/// # Safety
/// The views and dst must address valid m × k, k × n and m × n matrices.
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm_into<T: Copy + Default + 'static>(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut T,
    dst_rs: usize,
    a: View<T>,
    b: View<T>,
    beta: T,
) {
    // dst := alpha·dst + beta·a·b with alpha = 0 (T::default()); dst is not read.
    gemm_single(m, n, k, dst, dst_rs, false, T::default(), a, b, beta)
}

/// dst (m × n, row stride `dst_rs`) += a (m × k) · b (k × n), single-threaded.
///
/// # Safety
/// The views and dst must address valid m × k, k × n and m × n matrices.
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm_add<T: Copy + Default + 'static + From<f32>>(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut T,
    dst_rs: usize,
    a: View<T>,
    b: View<T>,
) {
    gemm_single(m, n, k, dst, dst_rs, true, T::from(1.0), a, b, T::from(1.0))
}

/// dst := alpha·dst (read only when `read`) + beta·a·b on the calling thread.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_single<T: Copy + Default + 'static>(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut T,
    dst_rs: usize,
    read: bool,
    alpha: T,
    a: View<T>,
    b: View<T>,
    beta: T,
) {
    gemm::gemm(
        m,
        n,
        k,
        dst,
        1,
        dst_rs as isize,
        read,
        a.ptr,
        a.cs,
        a.rs,
        b.ptr,
        b.cs,
        b.rs,
        alpha,
        beta,
        false,
        false,
        false,
        gemm::Parallelism::None,
    )
}
