//! `config.json` of a GPT-2 checkpoint (HF layout), parsed and validated (docs/reference.md §1).

use std::path::Path;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::bail_bad;
use crate::error::BadInputExt;

/// The largest model agop accepts, in parameters: 60 times gpt2-xl, so that an absurd size in a
/// config (n_positions 1e12) is refused before anything is allocated.
pub const MAX_PARAMS: u64 = 100_000_000_000;

/// The fields of an HF GPT-2 config that the model needs. Unknown fields are ignored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Gpt2Config {
    #[serde(default)]
    pub model_type: Option<String>,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_embd: usize,
    pub n_positions: usize,
    pub vocab_size: usize,
    /// Width of the MLP; `null` means 4·n_embd.
    #[serde(default)]
    pub n_inner: Option<usize>,
    #[serde(default = "default_eps")]
    pub layer_norm_epsilon: f64,
    #[serde(default = "default_act")]
    pub activation_function: String,
    #[serde(default = "default_true")]
    pub scale_attn_weights: bool,
    #[serde(default)]
    pub scale_attn_by_inverse_layer_idx: bool,
    #[serde(default = "default_init_range")]
    pub initializer_range: f64,
    #[serde(default)]
    pub eos_token_id: Option<u32>,
    /// Whether the LM head is `wte` (HF's default, every OpenAI GPT-2); when false the
    /// checkpoint's own `lm_head.weight` [V, C] is the unembedding.
    #[serde(default = "default_true")]
    pub tie_word_embeddings: bool,
}

fn default_eps() -> f64 {
    1e-5
}
fn default_act() -> String {
    "gelu_new".into()
}
fn default_true() -> bool {
    true
}
fn default_init_range() -> f64 {
    0.02
}

impl Gpt2Config {
    /// Read and validate `config.json`; every problem names the file and the field.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).bad_input(|| format!("cannot read {}", path.display()))?;
        let model_type = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v.get("model_type")?.as_str().map(str::to_owned));
        if let Some(t) = model_type.filter(|t| t != "gpt2") {
            bail_bad!("{}: model_type is \"{t}\"; this command builds GPT-2 models (model_type gpt2)", path.display());
        }
        let cfg: Gpt2Config =
            serde_json::from_str(&text).bad_input(|| format!("{}: not a GPT-2 config.json", path.display()))?;
        cfg.validate().map_err(|e| e.context(format!("in {}", path.display())))?;
        Ok(cfg)
    }

    /// Check every field docs/reference.md §1 relies on.
    pub fn validate(&self) -> Result<()> {
        match self.model_type.as_deref() {
            Some("gpt2") => {}
            Some(other) => bail_bad!(
                "model_type is \"{other}\"; agop reads \"gpt2\" and \"gpt_neox\" checkpoints (docs/reference.md §1)"
            ),
            None => bail_bad!("config field model_type is missing; agop reads \"gpt2\" and \"gpt_neox\" checkpoints"),
        }
        for (field, v) in [
            ("n_layer", self.n_layer),
            ("n_head", self.n_head),
            ("n_embd", self.n_embd),
            ("n_positions", self.n_positions),
            ("vocab_size", self.vocab_size),
        ] {
            if v == 0 {
                bail_bad!("config field {field} must be positive, got 0");
            }
        }
        if !self.n_embd.is_multiple_of(self.n_head) {
            bail_bad!("config field n_embd ({}) is not divisible by n_head ({})", self.n_embd, self.n_head);
        }
        if self.n_inner == Some(0) {
            bail_bad!("config field n_inner must be positive or null, got 0");
        }
        if !(self.layer_norm_epsilon > 0.0 && self.layer_norm_epsilon.is_finite()) {
            bail_bad!("config field layer_norm_epsilon must be positive, got {}", self.layer_norm_epsilon);
        }
        check_init_range(self.initializer_range)?;
        match self.n_params() {
            Some(n) if n <= MAX_PARAMS => {}
            n => bail_bad!(
                "config describes {} parameters (n_layer {}, n_embd {}, n_inner {}, vocab_size {}, n_positions {}), \
                 more than agop's limit of {MAX_PARAMS} (gpt2-xl has 1.6e9); check the sizes",
                n.map(|n| format!("{n:.3e}", n = n as f64)).unwrap_or_else(|| "more than 2^64".into()),
                self.n_layer,
                self.n_embd,
                self.n_inner(),
                self.vocab_size,
                self.n_positions
            ),
        }
        if !matches!(self.activation_function.as_str(), "gelu_new" | "gelu_pytorch_tanh" | "gelu") {
            bail_bad!(
                "config field activation_function is \"{}\"; supported: gelu_new, gelu_pytorch_tanh, gelu",
                self.activation_function
            );
        }
        Ok(())
    }

    /// The number of parameters (the schema's tensors), or `None` when it overflows u64.
    pub fn n_params(&self) -> Option<u64> {
        let (c, f, v, p, l) = (
            self.n_embd as u64,
            self.n_inner() as u64,
            self.vocab_size as u64,
            self.n_positions as u64,
            self.n_layer as u64,
        );
        let embed = v.checked_mul(c)?.checked_add(p.checked_mul(c)?)?;
        // ln_1, ln_2: 4C; c_attn: 3C² + 3C; attn.c_proj: C² + C; c_fc: C·F + F; mlp.c_proj: F·C + C.
        let c2 = c.checked_mul(c)?;
        let cf = c.checked_mul(f)?;
        let block = c2.checked_mul(4)?.checked_add(cf.checked_mul(2)?)?.checked_add(9 * c + f)?;
        let head = if self.tie_word_embeddings { 0 } else { v.checked_mul(c)? };
        embed.checked_add(block.checked_mul(l)?)?.checked_add(2 * c)?.checked_add(head)
    }

    /// MLP width F.
    pub fn n_inner(&self) -> usize {
        self.n_inner.unwrap_or(4 * self.n_embd)
    }

    /// Whether the activation is the exact erf GELU ("gelu"); otherwise the tanh approximation.
    pub fn gelu_erf(&self) -> bool {
        self.activation_function == "gelu"
    }

    /// Head size hs = C / H.
    pub fn head_size(&self) -> usize {
        self.n_embd / self.n_head
    }

    /// The end-of-text token (50256 for GPT-2).
    pub fn eos(&self) -> u32 {
        self.eos_token_id.unwrap_or(self.vocab_size as u32 - 1)
    }
}

/// `initializer_range`, the standard deviation of the random-init control's weights: positive
/// and finite in f32, the precision they are drawn in.
pub fn check_init_range(r: f64) -> Result<()> {
    if !(r > 0.0 && (r as f32).is_finite() && r as f32 > 0.0) {
        bail_bad!("config field initializer_range must be a positive number (a standard deviation), got {r}");
    }
    Ok(())
}
