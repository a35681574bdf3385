//! Leaf utilities every room uses and that use nothing of agop but `error`: hashing, atomic
//! writes, Parquet files, the terminal progress bar.

pub mod fs;
pub mod hash;
pub mod parquet;
pub mod progress;
pub mod tensor_file;

pub use fs::{write_atomic, write_atomic_with};
pub use hash::{fingerprint, sha256_file, sha256_files};
pub use progress::progress_bar;
