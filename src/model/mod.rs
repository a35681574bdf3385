//! The networks: GPT-2 (here) and GPT-NeoX (`neox/`), each with its config, parameter schema,
//! weights (load, random-init; GPT-2 also save), the forward pass and the hand-written backward, the CPU kernels they run on, the module list, and
//! the [`Network`] trait through which the measurement talks to it.
//!
//! Every function that makes tensors takes the [`Device`] as data; only `ops/` is CPU-specific.

pub mod arch;
pub mod checkpoint;
pub mod config;
pub mod device;
pub mod gpt2;
pub mod modules;
pub mod nanogpt;
pub mod neox;
pub mod network;
pub mod ops;
pub mod params;
pub mod torch_zip;
pub mod weights;

use std::path::Path;

use anyhow::Result;
use candle_core::Device;

pub use arch::ModelConfig;
pub use arch::{load_model, Model};
pub use checkpoint::{init_model, save_checkpoint};
pub use config::Gpt2Config;
pub use device::{device_name, full_f32, parse_device, set_precision, Precision};
pub use gpt2::{BlockGrads, BlockOperands, Forward, Gpt2, Site};
pub use modules::{all_modules, gpt2_module, owner, Kind, Module, Role, Side};
pub use network::{Grad, ModuleWeights, Network, Norm, TokenSpace, WeightGrad};
pub use params::{Block, LayerNorm, Linear, Params};
pub use weights::{load_gpt2, random_init, WeightsKind};

/// Read `config.json` from a checkpoint directory and load the weights of the given kind onto
/// the CPU.
/// The config of a checkpoint folder: its `config.json`, or for a nanoGPT folder (a `ckpt.pt`
/// and no config.json) the checkpoint's `model_args`.
pub fn dir_config(dir: &Path) -> Result<ModelConfig> {
    if nanogpt::is_nanogpt(dir) {
        return Ok(nanogpt::config(&dir.join(nanogpt::CKPT))?.into());
    }
    ModelConfig::from_file(&dir.join("config.json"))
}

pub fn load_dir(dir: &Path, weights: WeightsKind, seed: u64) -> Result<Gpt2> {
    let cfg = dir_config(dir)?;
    load_gpt2(dir, cfg.gpt2("load_dir")?, weights, seed, &Device::Cpu)
}
