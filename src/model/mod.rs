//! The GPT-2 model: config, weights, forward and backward.

pub mod attention;
pub mod config;
pub mod gpt2;
pub mod kernels;
pub mod weights;

use std::path::Path;

use anyhow::Result;

pub use config::Gpt2Config;
pub use gpt2::{BlockGrads, Forward, Gpt2, Site};
pub use weights::{load_model, random_init, save_checkpoint, WeightsKind};

/// Read `config.json` from a checkpoint directory and load the weights of the given kind.
pub fn load_dir(dir: &Path, weights: WeightsKind, seed: u64) -> Result<Gpt2> {
    let cfg = Gpt2Config::from_file(&dir.join("config.json"))?;
    load_model(dir, &cfg, weights, seed)
}
