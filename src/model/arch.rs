//! The architectures agop knows, behind one type: [`ModelConfig`] (a checkpoint's config by
//! its `model_type`), so that everything after the model reads sizes and the module table
//! without knowing which architecture it has.

use std::path::Path;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use candle_core::{Device, Tensor};

use super::config::Gpt2Config;
use super::device::Precision;
use super::gpt2::{Forward, Gpt2};
use super::modules::Module;
use super::neox::config::NeoXConfig;
use super::neox::{GptNeoX, NeoXForward};
use super::network::{Grad, ModuleWeights, Network, Norm, TokenSpace, WeightGrad};
use super::weights::{load_gpt2, WeightsKind};
use crate::bail_bad;

/// A checkpoint's config, whatever its architecture (`model_type`): what GOP files record and
/// what everything after the model reads (sizes, the module table). Serialized as the
/// architecture's own config, so GOP files written before other architectures read unchanged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ModelConfig {
    /// First: a GPT-2 config lacks NeoX's required fields, so untagged reading tries NeoX and
    /// falls through to GPT-2.
    NeoX(NeoXConfig),
    Gpt2(Gpt2Config),
}

impl ModelConfig {
    /// Read and validate `config.json`, by its `model_type`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| crate::bad!("cannot read {}: {e}", path.display()))?;
        let model_type = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v.get("model_type").and_then(|t| t.as_str()).map(String::from));
        match model_type.as_deref() {
            Some("gpt_neox") => Ok(ModelConfig::NeoX(NeoXConfig::from_file(path)?)),
            _ => Ok(ModelConfig::Gpt2(Gpt2Config::from_file(path)?)),
        }
    }

    /// The architecture's name (`gpt2`, `gpt_neox`), as `model_type` spells it.
    pub fn architecture(&self) -> &'static str {
        match self {
            ModelConfig::Gpt2(_) => "gpt2",
            ModelConfig::NeoX(_) => "gpt_neox",
        }
    }

    /// The GPT-2 config, for what only GPT-2 has (training, nanoGPT, init-model); `what` names
    /// the feature in the error.
    pub fn gpt2(&self, what: &str) -> Result<&Gpt2Config> {
        match self {
            ModelConfig::Gpt2(c) => Ok(c),
            other => bail_bad!("{what} supports GPT-2 checkpoints only; this is a {} model", other.architecture()),
        }
    }

    /// The module table ([`super::Network::modules`] of the model this config describes).
    pub fn modules(&self) -> Vec<Module> {
        match self {
            ModelConfig::Gpt2(c) => super::modules::all_modules(c),
            ModelConfig::NeoX(c) => super::neox::modules(c),
        }
    }

    pub fn n_layer(&self) -> usize {
        match self {
            ModelConfig::Gpt2(c) => c.n_layer,
            ModelConfig::NeoX(c) => c.num_hidden_layers,
        }
    }

    /// Width of the residual stream C.
    pub fn n_embd(&self) -> usize {
        match self {
            ModelConfig::Gpt2(c) => c.n_embd,
            ModelConfig::NeoX(c) => c.hidden_size,
        }
    }

    pub fn n_head(&self) -> usize {
        match self {
            ModelConfig::Gpt2(c) => c.n_head,
            ModelConfig::NeoX(c) => c.num_attention_heads,
        }
    }

    pub fn vocab_size(&self) -> usize {
        match self {
            ModelConfig::Gpt2(c) => c.vocab_size,
            ModelConfig::NeoX(c) => c.vocab_size,
        }
    }

    /// The longest window the model takes.
    pub fn n_positions(&self) -> usize {
        match self {
            ModelConfig::Gpt2(c) => c.n_positions,
            ModelConfig::NeoX(c) => c.max_position_embeddings,
        }
    }

    /// The end-of-text token.
    pub fn eos(&self) -> u32 {
        match self {
            ModelConfig::Gpt2(c) => c.eos(),
            ModelConfig::NeoX(c) => c.eos(),
        }
    }

    /// Forward FLOPs per token of the weight matrices and the unembedding (2 per multiply-add):
    /// what the run estimate scales by.
    pub fn flops_per_token(&self) -> f64 {
        let table = self.modules();
        let weights: usize = table.iter().filter(|m| m.is_whole()).map(|m| m.d_in * m.d_out).sum();
        2.0 * (weights + self.n_embd() * self.vocab_size()) as f64
    }
}

impl From<Gpt2Config> for ModelConfig {
    fn from(c: Gpt2Config) -> Self {
        ModelConfig::Gpt2(c)
    }
}

impl From<NeoXConfig> for ModelConfig {
    fn from(c: NeoXConfig) -> Self {
        ModelConfig::NeoX(c)
    }
}

/// A loaded model of any architecture: what measure and correlate work with.
#[derive(Debug, Clone)]
pub enum Model {
    Gpt2(Gpt2),
    NeoX(GptNeoX),
}

/// The forward pass of a [`Model`].
pub enum AnyForward {
    Gpt2(Forward),
    NeoX(NeoXForward),
}

/// Load `pretrained` weights from `dir` (any architecture `cfg` names), or build the
/// `random-init` control from `seed`.
pub fn load_model(dir: &Path, cfg: &ModelConfig, weights: WeightsKind, seed: u64, device: &Device) -> Result<Model> {
    Ok(match cfg {
        ModelConfig::Gpt2(c) => Model::Gpt2(load_gpt2(dir, c, weights, seed, device)?),
        ModelConfig::NeoX(c) => Model::NeoX(match weights {
            WeightsKind::Pretrained => super::neox::load_pretrained(dir, c, device)?,
            WeightsKind::RandomInit => super::neox::random_init(c, seed, device)?,
        }),
    })
}

impl Model {
    /// The config it was built from.
    pub fn config(&self) -> ModelConfig {
        match self {
            Model::Gpt2(m) => ModelConfig::Gpt2(m.cfg.clone()),
            Model::NeoX(m) => ModelConfig::NeoX(m.cfg.clone()),
        }
    }

    /// The same model computing its products in `precision` (`--precision`).
    pub fn with_precision(self, precision: Precision) -> Self {
        match self {
            Model::Gpt2(m) => Model::Gpt2(m.with_precision(precision)),
            Model::NeoX(m) => Model::NeoX(m.with_precision(precision)),
        }
    }
}

impl ModuleWeights for Model {
    fn modules(&self) -> Vec<Module> {
        match self {
            Model::Gpt2(m) => m.table.clone(),
            Model::NeoX(m) => m.table.clone(),
        }
    }

    fn module_weight(&self, m: &Module) -> Result<Tensor> {
        match self {
            Model::Gpt2(x) => x.module_weight(m),
            Model::NeoX(x) => ModuleWeights::module_weight(x, m),
        }
    }

    fn token_space(&self) -> TokenSpace<'_> {
        match self {
            Model::Gpt2(x) => x.token_space(),
            Model::NeoX(x) => x.token_space(),
        }
    }

    fn input_norm(&self, m: &Module) -> Option<Norm<'_>> {
        match self {
            Model::Gpt2(x) => x.input_norm(m),
            Model::NeoX(x) => x.input_norm(m),
        }
    }
}

impl Network for Model {
    type Forward = AnyForward;

    fn device(&self) -> &Device {
        match self {
            Model::Gpt2(m) => m.device(),
            Model::NeoX(m) => m.device(),
        }
    }

    fn unembedding(&self) -> &Tensor {
        match self {
            Model::Gpt2(m) => m.unembedding_tensor(),
            Model::NeoX(m) => m.unembedding_tensor(),
        }
    }

    fn forward(&self, ids: &Tensor) -> Result<AnyForward> {
        Ok(match self {
            Model::Gpt2(m) => AnyForward::Gpt2(m.forward(ids)?),
            Model::NeoX(m) => AnyForward::NeoX(m.forward(ids)?),
        })
    }

    fn hidden<'a>(&self, fwd: &'a AnyForward) -> &'a Tensor {
        match fwd {
            AnyForward::Gpt2(f) => &f.hidden,
            AnyForward::NeoX(f) => &f.hidden,
        }
    }

    fn repeat_forward(&self, fwd: &AnyForward, n: usize) -> Result<AnyForward> {
        Ok(match (self, fwd) {
            (Model::Gpt2(m), AnyForward::Gpt2(f)) => AnyForward::Gpt2(m.repeat_forward(f, n)?),
            (Model::NeoX(m), AnyForward::NeoX(f)) => AnyForward::NeoX(m.repeat_forward(f, n)?),
            _ => anyhow::bail!("a forward pass of one architecture given to another's model"),
        })
    }

    fn backward(&self, fwd: &AnyForward, seed: &Tensor, visit: &mut dyn FnMut(&[Grad]) -> Result<()>) -> Result<()> {
        match (self, fwd) {
            (Model::Gpt2(m), AnyForward::Gpt2(f)) => Network::backward(m, f, seed, visit),
            (Model::NeoX(m), AnyForward::NeoX(f)) => Network::backward(m, f, seed, visit),
            _ => anyhow::bail!("a forward pass of one architecture given to another's backward"),
        }
    }

    fn backward_weights(
        &self,
        fwd: &AnyForward,
        seed: &Tensor,
        visit: &mut dyn FnMut(&[WeightGrad]) -> Result<()>,
    ) -> Result<()> {
        match (self, fwd) {
            (Model::Gpt2(m), AnyForward::Gpt2(f)) => m.backward_weights(f, seed, visit),
            (Model::NeoX(m), AnyForward::NeoX(f)) => m.backward_weights(f, seed, visit),
            _ => anyhow::bail!("a forward pass of one architecture given to another's backward"),
        }
    }
}
