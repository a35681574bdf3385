//! The Neural Feature Ansatz side: NFMs, AGOP powers and their correlations.

pub mod correlate;
pub mod gram;
pub mod linalg;

pub use correlate::{correlate, Correlation};
