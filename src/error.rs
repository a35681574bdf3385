//! One error convention for the whole crate: `anyhow` errors, where bad input is marked
//! with [`BadInput`] somewhere in the chain. `main` maps it to exit code 2, everything else to 1.

use std::fmt;

/// Marker for errors caused by what the user gave us (a file, a flag, a tensor, a field).
#[derive(Debug)]
pub struct BadInput(pub String);

impl fmt::Display for BadInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BadInput {}

/// Build an `anyhow::Error` marked as bad input: `bail_bad!("config.json: n_head is 0")`.
#[macro_export]
macro_rules! bad {
    ($($arg:tt)*) => { anyhow::Error::new($crate::error::BadInput(format!($($arg)*))) };
}

/// Return early with a bad-input error.
#[macro_export]
macro_rules! bail_bad {
    ($($arg:tt)*) => { return Err($crate::bad!($($arg)*)) };
}

/// True when any error in the chain is a [`BadInput`].
pub fn is_bad_input(err: &anyhow::Error) -> bool {
    err.chain().any(|e| e.is::<BadInput>())
}

/// Exit code for an error: 2 for bad input, 1 otherwise.
pub fn exit_code(err: &anyhow::Error) -> i32 {
    if is_bad_input(err) {
        2
    } else {
        1
    }
}

/// Extension to mark an existing error (e.g. an I/O error opening a user's file) as bad input,
/// with context naming what was being read.
pub trait BadInputExt<T> {
    fn bad_input(self, what: impl FnOnce() -> String) -> anyhow::Result<T>;
}

impl<T, E: fmt::Display> BadInputExt<T> for Result<T, E> {
    fn bad_input(self, what: impl FnOnce() -> String) -> anyhow::Result<T> {
        self.map_err(|e| anyhow::Error::new(BadInput(format!("{}: {e}", what()))))
    }
}
