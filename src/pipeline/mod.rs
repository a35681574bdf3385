//! Pipelines: the file format and the stage runner.

pub mod config;
pub mod run;
pub mod slurm;

pub use config::Pipeline;
