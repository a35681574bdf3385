//! Writing a checkpoint folder in HF layout (`config.json`, `model.safetensors` and, for
//! GPT-2-vocabulary models, the GPT-2 tokenizer files), and `agop init-model`: a random-init
//! checkpoint from a config.json.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result};
use candle_core::Device;

use super::config::Gpt2Config;
use super::gpt2::Gpt2;
use super::weights::random_init;
use crate::util::write_atomic;

/// The GPT-2 vocabulary shipped with agop (the same files the `gpt2` hub repositories serve).
pub const GPT2_VOCAB: &str = include_str!("../../assets/gpt2-tokenizer/vocab.json");
pub const GPT2_MERGES: &str = include_str!("../../assets/gpt2-tokenizer/merges.txt");

/// Write `model` as an HF-layout checkpoint: `config.json` and `model.safetensors` (names of the
/// parameter schema, without prefix, Conv1D layout), each written to a temporary name and renamed.
pub fn save_checkpoint(model: &Gpt2, dir: &Path) -> Result<()> {
    save_weights(model, dir)?;
    let mut cfg = serde_json::to_value(&model.cfg)?;
    if let Some(o) = cfg.as_object_mut() {
        o.insert("architectures".into(), serde_json::json!(["GPT2LMHeadModel"]));
    }
    write_atomic(&dir.join("config.json"), serde_json::to_string_pretty(&cfg)?.as_bytes())?;
    Ok(())
}

/// Write `model.safetensors` alone (see [`save_checkpoint`]).
fn save_weights(model: &Gpt2, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tensors: HashMap<String, candle_core::Tensor> = model.params.named(&model.cfg).into_iter().collect();
    crate::util::fs::write_atomic_path(&dir.join("model.safetensors"), |tmp| {
        Ok(candle_core::safetensors::save(&tensors, tmp)?)
    })
}

/// `agop init-model`: a random-init checkpoint in HF layout from a config.json (plus the GPT-2
/// tokenizer files when the vocabulary is GPT-2's, so that it can tokenize corpora). When
/// `config` is the folder's own config.json it is left as it is (with any fields agop does not
/// read), and tokenizer files already in the folder are never replaced.
pub fn init_model(config: &Path, seed: u64, out: &Path) -> Result<()> {
    let cfg = Gpt2Config::from_file(config)?;
    if out.is_file() {
        crate::bail_bad!("--out {} is a file; init-model writes a model folder", out.display());
    }
    // A folder's own config.json may be the --config given; any other model file is a model.
    let same_config = std::fs::canonicalize(config).ok() == std::fs::canonicalize(out.join("config.json")).ok();
    if let Some(f) = ["config.json", "model.safetensors", "pytorch_model.bin", "model.safetensors.index.json"]
        .iter()
        .find(|f| out.join(f).exists() && !(**f == "config.json" && same_config))
    {
        crate::bail_bad!(
            "--out {} already holds a model ({f}); init-model does not replace a model: give a new folder",
            out.display()
        );
    }
    let model = random_init(&cfg, seed, &Device::Cpu)?;
    if same_config {
        save_weights(&model, out)?;
    } else {
        save_checkpoint(&model, out)?;
    }
    if cfg.vocab_size == 50257 {
        for (name, text) in [("vocab.json", GPT2_VOCAB), ("merges.txt", GPT2_MERGES)] {
            if !out.join(name).exists() {
                write_atomic(&out.join(name), text.as_bytes())?;
            }
        }
    }
    Ok(())
}
