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

/// Print `text` and a line break on standard output. A reader that went away (`agop report |
/// head`) ends the output quietly instead of a panic (`println!`'s, on a broken pipe).
pub fn print_stdout(text: &str) -> std::io::Result<()> {
    use std::io::Write;
    match writeln!(std::io::stdout().lock(), "{text}") {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => r,
    }
}
