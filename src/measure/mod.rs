//! AGOP measurement: what is measured ([`settings`]), the estimators ([`estimator`]), the f64 GOP sums they fill
//! and their file ([`gop`]), the checkpointed, sharded measure loop ([`run`]), merging of
//! shards ([`merge`]) and `--profile`'s phase timings ([`profile`]).

pub mod estimator;
pub mod fact;
pub mod gop;
pub mod groups;
pub mod merge;
pub mod profile;
pub mod run;
pub mod settings;

pub use estimator::Measurer;
pub use gop::{FactSum, Gop, GopMeta};
pub use merge::{merge, merge_files};
pub use run::{measure, measure_model, MeasureOptions};
pub use settings::{Estimator, Output, Settings};
