//! GPT-2 weights: loading HF safetensors (with or without the `transformer.` prefix, Conv1D
//! [in, out] layout, F32/F16/BF16) and the SPEC.md §4 random-init control, both through the one
//! schema of [`Params::build`], onto a given device.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

use super::config::Gpt2Config;
use super::gpt2::Gpt2;
use super::params::Params;
use crate::{bad, bail_bad};

/// Which weights a measurement uses (SPEC.md §4 controls).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WeightsKind {
    /// The checkpoint's weights.
    Pretrained,
    /// The same architecture re-initialized as HF GPT-2 does, from the seed.
    RandomInit,
}

impl WeightsKind {
    pub fn as_str(self) -> &'static str {
        match self {
            WeightsKind::Pretrained => "pretrained",
            WeightsKind::RandomInit => "random-init",
        }
    }
    /// From its name (`pretrained`, `random-init`).
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "pretrained" => Ok(Self::Pretrained),
            "random-init" => Ok(Self::RandomInit),
            _ => bail_bad!("unknown weights \"{s}\" (expected pretrained or random-init)"),
        }
    }
}

impl std::fmt::Display for WeightsKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The safetensors files of a checkpoint directory: `model.safetensors`, or the shards listed by
/// `model.safetensors.index.json`.
pub fn safetensors_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index = dir.join("model.safetensors.index.json");
    if index.is_file() {
        let text = std::fs::read_to_string(&index)?;
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| bad!("{}: invalid JSON: {e}", index.display()))?;
        let map = v
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| bad!("{}: no weight_map object", index.display()))?;
        let mut files: Vec<String> = map.values().filter_map(|f| f.as_str().map(String::from)).collect();
        files.sort();
        files.dedup();
        return Ok(files.into_iter().map(|f| dir.join(f)).collect());
    }
    bail_bad!("{}: no model.safetensors (or model.safetensors.index.json) in this directory", dir.display())
}

/// Load the checkpoint in `dir` with the given (already validated) config onto `device`.
pub fn load_pretrained(dir: &Path, cfg: &Gpt2Config, device: &Device) -> Result<Gpt2> {
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    for file in safetensors_files(dir)? {
        let loaded = candle_core::safetensors::load(&file, device)
            .map_err(|e| bad!("{}: not a readable safetensors file (truncated or corrupted?): {e}", file.display()))?;
        for (name, t) in loaded {
            let name = name.strip_prefix("transformer.").unwrap_or(&name).to_string();
            tensors.insert(name, t);
        }
    }
    let file = dir.join("model.safetensors");
    let take = |name: &str, shape: &[usize]| -> Result<Tensor> {
        let t = tensors.remove(name).ok_or_else(|| bad!("{}: tensor {name} is missing", file.display()))?;
        if t.dims() != shape {
            bail_bad!("{}: tensor {name} has shape {:?}, expected {:?}", file.display(), t.dims(), shape);
        }
        match t.dtype() {
            DType::F32 | DType::F16 | DType::BF16 | DType::F64 => {}
            other => bail_bad!("{}: tensor {name} has dtype {other:?}; expected a float type", file.display()),
        }
        Ok(t.to_dtype(DType::F32)?)
    };
    Ok(Gpt2::new(cfg.clone(), Params::build(cfg, take)?))
}

/// The random-init control of SPEC.md §4: weights and embeddings N(0, initializer_range), both
/// c_proj weights N(0, initializer_range/√(2·n_layer)), biases 0, LayerNorm 1/0. Tensors are
/// drawn in the schema's order from a ChaCha8 stream keyed by `seed`, so the same seed gives the
/// same model on every device.
pub fn random_init(cfg: &Gpt2Config, seed: u64, device: &Device) -> Result<Gpt2> {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    key[24..].copy_from_slice(b"agopinit");
    let mut rng = ChaCha8Rng::from_seed(key);
    let std = cfg.initializer_range;
    let proj_std = std / (2.0 * cfg.n_layer as f64).sqrt();
    let take = |name: &str, shape: &[usize]| -> Result<Tensor> {
        let n: usize = shape.iter().product();
        let t = if name.ends_with(".bias") {
            Tensor::zeros(shape, DType::F32, device)?
        } else if name.contains("ln_") {
            Tensor::ones(shape, DType::F32, device)?
        } else {
            let s = if name.ends_with("c_proj.weight") { proj_std } else { std };
            let normal = Normal::new(0.0f32, s as f32).context("initializer_range")?;
            let data: Vec<f32> = (0..n).map(|_| normal.sample(&mut rng)).collect();
            Tensor::from_vec(data, shape, device)?
        };
        Ok(t)
    };
    Ok(Gpt2::new(cfg.clone(), Params::build(cfg, take)?))
}

/// Load `pretrained` weights from `dir`, or build the `random-init` control from `seed`.
pub fn load_model(dir: &Path, cfg: &Gpt2Config, weights: WeightsKind, seed: u64, device: &Device) -> Result<Gpt2> {
    match weights {
        WeightsKind::Pretrained => load_pretrained(dir, cfg, device),
        WeightsKind::RandomInit => random_init(cfg, seed, device),
    }
}
