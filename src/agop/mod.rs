//! AGOP measurement: output functions and estimators, and the f64 GOP sums they fill.

pub mod estimator;
pub mod gop;

pub use estimator::{Estimator, Measurer, Output, Settings, Window};
pub use gop::{merge, Gop, GopMeta};
