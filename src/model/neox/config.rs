//! `config.json` of a GPT-NeoX checkpoint (`model_type` = `gpt_neox`: Pythia and kin), parsed
//! and validated. Two spellings of the rotary settings occur in the wild: `rotary_pct` /
//! `rotary_emb_base` (the hub's Pythia files) and `rope_parameters` (`partial_rotary_factor`,
//! `rope_theta`; files re-saved by transformers 5). [`NeoXConfig::normalized`] folds the second
//! into the first, so two files that describe the same model compare equal.

use std::path::Path;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::bail_bad;
use crate::error::BadInputExt;
use crate::model::config::MAX_PARAMS;

/// transformers 5's rotary settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RopeParameters {
    #[serde(default)]
    pub rope_type: Option<String>,
    #[serde(default)]
    pub rope_theta: Option<f64>,
    #[serde(default)]
    pub partial_rotary_factor: Option<f64>,
}

/// The fields of an HF GPT-NeoX config that the model needs. Unknown fields are ignored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NeoXConfig {
    pub model_type: String,
    pub hidden_size: usize,
    pub num_attention_heads: usize,
    pub num_hidden_layers: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    pub vocab_size: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    /// Share of each head's dimensions that get the rotary embedding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotary_pct: Option<f64>,
    /// Base of the rotary frequencies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotary_emb_base: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_parameters: Option<RopeParameters>,
    /// transformers 4's scaled rotary (linear, dynamic, …): refused when set, since it changes
    /// every rotary angle; kept only to be checked (`null` in Pythia's files).
    #[serde(default, skip_serializing)]
    pub rope_scaling: Option<serde_json::Value>,
    /// x + attn(ln₁ x) + mlp(ln₂ x) (Pythia) instead of the serial GPT-2 form.
    #[serde(default = "default_true")]
    pub use_parallel_residual: bool,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default = "default_init_range")]
    pub initializer_range: f64,
    /// Whether `embed_out` is `embed_in` (false for every Pythia).
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Biases on query_key_value and dense (true for Pythia).
    #[serde(default = "default_true")]
    pub attention_bias: bool,
    #[serde(default)]
    pub eos_token_id: Option<u32>,
}

fn default_eps() -> f64 {
    1e-5
}
fn default_true() -> bool {
    true
}
fn default_act() -> String {
    "gelu".into()
}
fn default_init_range() -> f64 {
    0.02
}

impl NeoXConfig {
    /// Read, normalize and validate `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).bad_input(|| format!("cannot read {}", path.display()))?;
        let cfg: NeoXConfig =
            serde_json::from_str(&text).bad_input(|| format!("{}: not a GPT-NeoX config.json", path.display()))?;
        let cfg = cfg.normalized().map_err(|e| e.context(format!("in {}", path.display())))?;
        cfg.validate().map_err(|e| e.context(format!("in {}", path.display())))?;
        Ok(cfg)
    }

    /// The rotary settings in the `rotary_pct` / `rotary_emb_base` spelling (defaults 0.25 and
    /// 10000, transformers'), `rope_parameters` folded in; a file giving both spellings must
    /// agree.
    pub fn normalized(mut self) -> Result<Self> {
        if let Some(scaling) = self.rope_scaling.take() {
            bail_bad!("config field rope_scaling is {scaling}; agop supports only unscaled (\"default\") rotary");
        }
        if let Some(r) = self.rope_parameters.take() {
            if let Some(t) = r.rope_type.as_deref().filter(|t| *t != "default") {
                bail_bad!("config field rope_parameters.rope_type is \"{t}\"; agop supports only \"default\" rotary");
            }
            for (name, new, old) in [
                ("partial_rotary_factor", r.partial_rotary_factor, &mut self.rotary_pct),
                ("rope_theta", r.rope_theta, &mut self.rotary_emb_base),
            ] {
                match (new, *old) {
                    (Some(a), Some(b)) if a != b => {
                        bail_bad!("config gives rope_parameters.{name} = {a} and the older spelling {b}; which is it?")
                    }
                    (Some(a), _) => *old = Some(a),
                    _ => {}
                }
            }
        }
        self.rotary_pct.get_or_insert(0.25);
        self.rotary_emb_base.get_or_insert(10000.0);
        Ok(self)
    }

    /// Check every field the model relies on.
    pub fn validate(&self) -> Result<()> {
        if self.model_type != "gpt_neox" {
            bail_bad!("model_type is \"{}\", not \"gpt_neox\"", self.model_type);
        }
        for (field, v) in [
            ("hidden_size", self.hidden_size),
            ("num_attention_heads", self.num_attention_heads),
            ("num_hidden_layers", self.num_hidden_layers),
            ("intermediate_size", self.intermediate_size),
            ("max_position_embeddings", self.max_position_embeddings),
            ("vocab_size", self.vocab_size),
        ] {
            if v == 0 {
                bail_bad!("config field {field} must be positive, got 0");
            }
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            bail_bad!(
                "config field hidden_size ({}) is not divisible by num_attention_heads ({})",
                self.hidden_size,
                self.num_attention_heads
            );
        }
        let pct = self.rotary_pct();
        if !(0.0..=1.0).contains(&pct) {
            bail_bad!("config field rotary_pct must be in [0, 1], got {pct}");
        }
        if !self.rotary_dims().is_multiple_of(2) {
            bail_bad!(
                "rotary_pct {pct} of head size {} gives {} rotary dimensions; rotate-half needs an even number",
                self.head_size(),
                self.rotary_dims()
            );
        }
        if !(self.rotary_base() > 0.0 && self.rotary_base().is_finite()) {
            bail_bad!("config field rotary_emb_base must be positive, got {}", self.rotary_base());
        }
        if !(self.layer_norm_eps > 0.0 && self.layer_norm_eps.is_finite()) {
            bail_bad!("config field layer_norm_eps must be positive, got {}", self.layer_norm_eps);
        }
        crate::model::config::check_init_range(self.initializer_range)?;
        if !matches!(self.hidden_act.as_str(), "gelu" | "gelu_new" | "gelu_pytorch_tanh") {
            bail_bad!(
                "config field hidden_act is \"{}\"; supported: gelu, gelu_new, gelu_pytorch_tanh",
                self.hidden_act
            );
        }
        match self.n_params() {
            Some(n) if n <= MAX_PARAMS => Ok(()),
            _ => bail_bad!("config describes more than agop's limit of {MAX_PARAMS} parameters; check the sizes"),
        }
    }

    /// The number of parameters, or `None` when it overflows u64.
    pub fn n_params(&self) -> Option<u64> {
        let (c, f, v, l) = (
            self.hidden_size as u64,
            self.intermediate_size as u64,
            self.vocab_size as u64,
            self.num_hidden_layers as u64,
        );
        let c2 = c.checked_mul(c)?;
        let block = c2.checked_mul(4)?.checked_add(c.checked_mul(f)?.checked_mul(2)?)?.checked_add(9 * c + f)?;
        let embed = v.checked_mul(c)?.checked_mul(if self.tie_word_embeddings { 1 } else { 2 })?;
        embed.checked_add(block.checked_mul(l)?)?.checked_add(2 * c)
    }

    pub fn head_size(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    pub fn rotary_pct(&self) -> f64 {
        self.rotary_pct.unwrap_or(0.25)
    }

    pub fn rotary_base(&self) -> f64 {
        self.rotary_emb_base.unwrap_or(10000.0)
    }

    /// The rotary dimensions of each head: ⌊head_size · rotary_pct⌋ (transformers' `int()`).
    pub fn rotary_dims(&self) -> usize {
        (self.head_size() as f64 * self.rotary_pct()) as usize
    }

    /// Whether the activation is the exact erf GELU ("gelu", Pythia's).
    pub fn gelu_erf(&self) -> bool {
        self.hidden_act == "gelu"
    }

    /// The end-of-text token (0 for Pythia's tokenizer when the config does not say).
    pub fn eos(&self) -> u32 {
        self.eos_token_id.unwrap_or(0)
    }
}
