//! agop: the Neural Feature Ansatz on GPT-2-family models. For every weight matrix W, how well
//! the weight Gram matrix (NFM) lines up with the Average Gradient Outer Product (AGOP) of the
//! model's output with respect to that matrix's input. See docs/reference.md for the mathematics and
//! ARCHITECTURE.md for the map of this crate.
//!
//! The rooms follow the flow of a run, and dependencies point one way, down this list (a room
//! uses only rooms above it; `tests/architecture.rs` fails on a cycle or an upward edge):
//!
//! - [`error`], [`util`], [`math`]: leaves (exit-code convention; hashing, atomic writes,
//!   Parquet, progress; strided GEMM and dense linear algebra).
//! - [`model`]: the network — config, parameter schema, weights, forward and hand-written
//!   backward, CPU kernels, module list, and the [`model::Network`] trait measurement uses.
//! - [`fetch`]: `--model` resolved to a local checkpoint (hub, cache, directories).
//! - [`tokenize`]: corpus → windows → `tokens.parquet`.
//! - [`train`]: `agop train`, a GPT-2 trained on a corpus into a series of checkpoints.
//! - [`measure`]: estimators, GOP sums and files, the checkpointed measure loop, merge.
//! - [`correlate`]: NFM against AGOP^α → `correlations.parquet`.
//! - [`features`]: the AGOP's and NFM's spectra and leading eigenvectors read out as tokens →
//!   `features.parquet`.
//! - [`report`]: terminal table and plots.
//! - [`pipeline`]: pipeline files, `agop run` stage by stage, Slurm scripts.

pub mod error;
pub mod math;
pub mod util;

pub mod model;

pub mod fetch;

pub mod tokenize;

pub mod train;

pub mod measure;

pub mod correlate;

pub mod features;

pub mod report;

pub mod pipeline;

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
