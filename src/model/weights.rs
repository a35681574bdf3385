//! GPT-2 weights: loading HF safetensors (with or without the `transformer.` prefix, Conv1D
//! [in, out] layout, F32/F16/BF16), the SPEC.md §4 random-init control, and writing a checkpoint.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

use super::config::Gpt2Config;
use super::gpt2::{Block, Gpt2, LayerNorm};
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
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "pretrained" => Ok(Self::Pretrained),
            "random-init" => Ok(Self::RandomInit),
            _ => bail_bad!("unknown weights \"{s}\" (expected pretrained or random-init)"),
        }
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

/// Load the checkpoint in `dir` with the given (already validated) config.
pub fn load_pretrained(dir: &Path, cfg: &Gpt2Config) -> Result<Gpt2> {
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    for file in safetensors_files(dir)? {
        let loaded = candle_core::safetensors::load(&file, &Device::Cpu)
            .map_err(|e| bad!("{}: not a readable safetensors file (truncated or corrupted?): {e}", file.display()))?;
        for (name, t) in loaded {
            let name = name.strip_prefix("transformer.").unwrap_or(&name).to_string();
            tensors.insert(name, t);
        }
    }
    let file = dir.join("model.safetensors");
    let mut take = |name: &str, shape: &[usize]| -> Result<Tensor> {
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
    build(cfg, &mut take)
}

/// Assemble a [`Gpt2`] from a tensor source keyed by HF name (no prefix).
fn build(cfg: &Gpt2Config, take: &mut dyn FnMut(&str, &[usize]) -> Result<Tensor>) -> Result<Gpt2> {
    let (c, f, v, p) = (cfg.n_embd, cfg.n_inner(), cfg.vocab_size, cfg.n_positions);
    let ln = |take: &mut dyn FnMut(&str, &[usize]) -> Result<Tensor>, pre: &str| -> Result<LayerNorm> {
        Ok(LayerNorm { weight: take(&format!("{pre}.weight"), &[c])?, bias: take(&format!("{pre}.bias"), &[c])? })
    };
    let ln_f = ln(take, "ln_f")?;
    let mut blocks = Vec::with_capacity(cfg.n_layer);
    for l in 0..cfg.n_layer {
        let ln_1 = ln(take, &format!("h.{l}.ln_1"))?;
        let ln_2 = ln(take, &format!("h.{l}.ln_2"))?;
        let h = |s: &str| format!("h.{l}.{s}");
        blocks.push(Block {
            ln_1,
            c_attn_w: take(&h("attn.c_attn.weight"), &[c, 3 * c])?,
            c_attn_b: take(&h("attn.c_attn.bias"), &[3 * c])?,
            c_proj_w: take(&h("attn.c_proj.weight"), &[c, c])?,
            c_proj_b: take(&h("attn.c_proj.bias"), &[c])?,
            ln_2,
            fc_w: take(&h("mlp.c_fc.weight"), &[c, f])?,
            fc_b: take(&h("mlp.c_fc.bias"), &[f])?,
            mp_w: take(&h("mlp.c_proj.weight"), &[f, c])?,
            mp_b: take(&h("mlp.c_proj.bias"), &[c])?,
        });
    }
    Gpt2::new(cfg.clone(), take("wte.weight", &[v, c])?, take("wpe.weight", &[p, c])?, blocks, ln_f)
}

/// The random-init control of SPEC.md §4: weights and embeddings N(0, initializer_range), both
/// c_proj weights N(0, initializer_range/√(2·n_layer)), biases 0, LayerNorm 1/0. Tensors are
/// drawn in a fixed order from a ChaCha8 stream keyed by `seed`, so the same seed gives the same model.
pub fn random_init(cfg: &Gpt2Config, seed: u64) -> Result<Gpt2> {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    key[24..].copy_from_slice(b"agopinit");
    let mut rng = ChaCha8Rng::from_seed(key);
    let std = cfg.initializer_range;
    let proj_std = std / (2.0 * cfg.n_layer as f64).sqrt();
    let mut take = |name: &str, shape: &[usize]| -> Result<Tensor> {
        let n: usize = shape.iter().product();
        let t = if name.ends_with(".bias") {
            Tensor::zeros(shape, DType::F32, &Device::Cpu)?
        } else if name.contains("ln_") {
            Tensor::ones(shape, DType::F32, &Device::Cpu)?
        } else {
            let s = if name.ends_with("c_proj.weight") { proj_std } else { std };
            let normal = Normal::new(0.0f32, s as f32).context("initializer_range")?;
            let data: Vec<f32> = (0..n).map(|_| normal.sample(&mut rng)).collect();
            Tensor::from_vec(data, shape, &Device::Cpu)?
        };
        Ok(t)
    };
    build(cfg, &mut take)
}

/// Load `pretrained` weights from `dir`, or build the `random-init` control from `seed`.
pub fn load_model(dir: &Path, cfg: &Gpt2Config, weights: WeightsKind, seed: u64) -> Result<Gpt2> {
    match weights {
        WeightsKind::Pretrained => load_pretrained(dir, cfg),
        WeightsKind::RandomInit => random_init(cfg, seed),
    }
}

/// Write `model` as an HF-layout checkpoint: `config.json` and `model.safetensors` (names
/// without prefix, Conv1D layout), each written to a temporary name and renamed.
pub fn save_checkpoint(model: &Gpt2, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut tensors: Vec<(String, Tensor)> = vec![
        ("wte.weight".into(), model.wte.clone()),
        ("wpe.weight".into(), model.wpe.clone()),
        ("ln_f.weight".into(), model.ln_f.weight.clone()),
        ("ln_f.bias".into(), model.ln_f.bias.clone()),
    ];
    for (l, b) in model.blocks.iter().enumerate() {
        for (n, t) in [
            ("ln_1.weight", &b.ln_1.weight),
            ("ln_1.bias", &b.ln_1.bias),
            ("attn.c_attn.weight", &b.c_attn_w),
            ("attn.c_attn.bias", &b.c_attn_b),
            ("attn.c_proj.weight", &b.c_proj_w),
            ("attn.c_proj.bias", &b.c_proj_b),
            ("ln_2.weight", &b.ln_2.weight),
            ("ln_2.bias", &b.ln_2.bias),
            ("mlp.c_fc.weight", &b.fc_w),
            ("mlp.c_fc.bias", &b.fc_b),
            ("mlp.c_proj.weight", &b.mp_w),
            ("mlp.c_proj.bias", &b.mp_b),
        ] {
            tensors.push((format!("h.{l}.{n}"), t.clone()));
        }
    }
    let st = dir.join("model.safetensors");
    let tmp = dir.join("model.safetensors.tmp");
    candle_core::safetensors::save(&tensors.into_iter().collect::<HashMap<_, _>>(), &tmp)?;
    std::fs::rename(&tmp, &st)?;
    let mut cfg = serde_json::to_value(&model.cfg)?;
    if let Some(o) = cfg.as_object_mut() {
        o.insert("architectures".into(), serde_json::json!(["GPT2LMHeadModel"]));
        o.insert("tie_word_embeddings".into(), serde_json::json!(true));
    }
    crate::outputs::write_atomic(&dir.join("config.json"), serde_json::to_string_pretty(&cfg)?.as_bytes())?;
    Ok(())
}
