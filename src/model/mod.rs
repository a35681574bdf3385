//! The network: GPT-2's config, its parameter schema, weights (load, random-init, save), the
//! forward pass and the hand-written backward, the CPU kernels they run on, the module list, and
//! the [`Network`] trait through which the measurement talks to it.
//!
//! Every function that makes tensors takes the [`Device`] as data; only `ops/` is CPU-specific.

pub mod checkpoint;
pub mod config;
pub mod device;
pub mod gpt2;
pub mod modules;
pub mod network;
pub mod ops;
pub mod params;
pub mod weights;

use std::path::Path;

use anyhow::Result;
use candle_core::Device;

pub use checkpoint::{init_model, save_checkpoint};
pub use config::Gpt2Config;
pub use device::{device_name, parse_device};
pub use gpt2::{BlockGrads, BlockOperands, Forward, Gpt2, Site};
pub use modules::{all_modules, Kind, Module, Side};
pub use network::{Grad, Network, WeightGrad};
pub use params::{Block, LayerNorm, Linear, Params};
pub use weights::{load_model, random_init, WeightsKind};

/// Read `config.json` from a checkpoint directory and load the weights of the given kind onto
/// the CPU.
pub fn load_dir(dir: &Path, weights: WeightsKind, seed: u64) -> Result<Gpt2> {
    let cfg = Gpt2Config::from_file(&dir.join("config.json"))?;
    load_model(dir, &cfg, weights, seed, &Device::Cpu)
}
