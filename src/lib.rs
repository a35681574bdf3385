//! agop: the Neural Feature Ansatz on GPT-2-family models. For every weight matrix W, how well
//! the weight Gram matrix (NFM) lines up with the Average Gradient Outer Product (AGOP) of the
//! model's output with respect to that matrix's input. See SPEC.md for the mathematics.
//!
//! Data flows one way: model → agop (measure GOP sums) → nfa (correlate) → outputs.

pub mod agop;
pub mod data;
pub mod error;
pub mod model;
pub mod modules;
pub mod nfa;
pub mod outputs;
pub mod pipeline;
pub mod report;
pub mod stages;

/// Keep freed activation buffers in the heap for reuse: glibc would otherwise hand every large
/// tensor back to the OS and fault its pages in again on the next allocation (~10% of a
/// measure run). Call once at start-up.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    unsafe {
        // M_MMAP_THRESHOLD = -3 (at most 32 MiB on 64-bit), M_TRIM_THRESHOLD = -1 (malloc.h).
        libc::mallopt(-3, 32 << 20);
        libc::mallopt(-1, i32::MAX);
    }
}
