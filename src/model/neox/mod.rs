//! GPT-NeoX (Pythia and kin) with a hand-written backward pass, on the same ops as GPT-2
//! ([`Ops`]). What differs from GPT-2: no position embedding but a rotary one on the first
//! `rotary_dims` of every query and key head (rotate-half), a parallel residual by default
//! (x + attn(ln₁ x) + mlp(ln₂ x)), an untied `embed_out`, exact GELU, and nn.Linear weights.
//!
//! candle-transformers has no GPT-NeoX: this model is agop's own.

pub mod config;
pub mod params;

use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

use self::config::NeoXConfig;
use self::params::NeoXParams;
use super::device::Precision;
use super::modules::{Module, Role};
use super::network::{repeat_batch, Grad, ModuleWeights, Network, Norm, TokenSpace, WeightGrad};
use super::ops::rotary::{RotaryShape, RotaryTables};
use super::ops::select::{LnCache, Ops};

/// A GPT-NeoX language model.
#[derive(Debug, Clone)]
pub struct GptNeoX {
    pub cfg: NeoXConfig,
    pub params: NeoXParams,
    /// The module table ([`modules`]).
    pub table: Vec<Module>,
    /// Run candle's own ops even on the CPU (the second code path of the tests).
    pub plain_ops: bool,
    /// The precision of the model's products ([`Precision`]; f32 unless `--precision`).
    pub precision: Precision,
}

/// GPT-NeoX's module table, layer by layer in the reference's role order: query_key_value,
/// the heads' q, k, v (each a column block of the model's [Q | K | V] order), dense,
/// dense_h_to_4h, dense_4h_to_h.
pub fn modules(cfg: &NeoXConfig) -> Vec<Module> {
    let (c, f, hs) = (cfg.hidden_size, cfg.intermediate_size, cfg.head_size());
    const QKV: &str = "attention.query_key_value";
    let row = |layer, role: Role, short: &'static str, head: Option<usize>, d_in, d_out, offset| Module {
        layer,
        role,
        head,
        short,
        block: "layers",
        d_in,
        d_out,
        offset,
        owner: if head.is_some() { QKV } else { short },
    };
    let mut out = Vec::new();
    for l in 0..cfg.num_hidden_layers {
        out.push(row(l, Role::Qkv, QKV, None, c, 3 * c, 0));
        for (p, (role, short)) in
            [(Role::Q, "attention.q"), (Role::K, "attention.k"), (Role::V, "attention.v")].into_iter().enumerate()
        {
            out.extend((0..cfg.num_attention_heads).map(|h| row(l, role, short, Some(h), c, hs, p * c + h * hs)));
        }
        out.push(row(l, Role::AttnOut, "attention.dense", None, c, c, 0));
        out.push(row(l, Role::MlpIn, "mlp.dense_h_to_4h", None, c, f, 0));
        out.push(row(l, Role::MlpOut, "mlp.dense_4h_to_h", None, f, c, 0));
    }
    out
}

/// What the backward pass needs from one layer's forward.
struct LayerCache {
    ln_1: LnCache,
    ln_2: LnCache,
    /// query_key_value output after the rotary embedding (B, T, 3C), [Q | K | V].
    qkv: Tensor,
    fc_pre: Tensor,
}

/// The forward pass over a batch of windows (B, T), kept for backward passes.
pub struct NeoXForward {
    layers: Vec<LayerCache>,
    ln_f: LnCache,
    /// cos and sin of the rotary angles (T, rotary_dims / 2).
    rotary: Option<RotaryTables>,
    /// final_layer_norm output (B, T, C); logits are `hidden · embed_outᵀ`.
    pub hidden: Tensor,
}

impl GptNeoX {
    pub fn new(cfg: NeoXConfig, params: NeoXParams) -> Self {
        let table = modules(&cfg);
        Self { cfg, params, table, plain_ops: false, precision: Precision::F32 }
    }

    /// The same model computing with candle's own ops on the CPU too.
    pub fn with_plain_ops(self) -> Self {
        Self { plain_ops: true, ..self }
    }

    /// The same model computing its products in `precision` (bf16 runs the plain ops).
    pub fn with_precision(self, precision: Precision) -> Self {
        Self { precision, ..self }
    }

    fn ops(&self) -> Ops {
        Ops::for_device(self.device(), self.plain_ops, self.cfg.gelu_erf(), self.precision)
    }

    pub fn device(&self) -> &Device {
        self.params.embed_in.device()
    }

    /// The same model computing in `dtype`.
    pub fn to_dtype(&self, dtype: DType) -> Result<Self> {
        Ok(Self { params: self.params.try_map(|t| Ok(t.to_dtype(dtype)?))?, ..self.clone() })
    }

    /// The same model on another device.
    pub fn to_device(&self, device: &Device) -> Result<Self> {
        Ok(Self { params: self.params.try_map(|t| Ok(t.to_device(device)?))?, ..self.clone() })
    }

    /// The unembedding (V × C): `embed_out`, or `embed_in` when tied.
    pub fn unembedding_tensor(&self) -> &Tensor {
        self.params.embed_out.as_ref().unwrap_or(&self.params.embed_in)
    }

    /// Logits (B, T, V) from the final hidden state.
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        self.ops().matmul_t(hidden, self.unembedding_tensor())
    }

    /// cos and sin (T, r/2) of the rotary angles t·θ_i, θ_i = base^(−2i/r), as transformers
    /// computes them (f32 frequencies), in the model's dtype.
    fn rotary_tables(&self, t: usize) -> Result<Option<RotaryTables>> {
        let r = self.cfg.rotary_dims();
        if r == 0 {
            return Ok(None);
        }
        let base = self.cfg.rotary_base() as f32;
        let inv: Vec<f32> = (0..r / 2).map(|i| 1.0 / base.powf((2 * i) as f32 / r as f32)).collect();
        let (mut cos, mut sin) = (Vec::with_capacity(t * r / 2), Vec::with_capacity(t * r / 2));
        for pos in 0..t {
            for f in &inv {
                let a = pos as f32 * f;
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
        let dtype = self.params.dtype();
        let dev = self.device();
        let cos = Tensor::from_vec(cos, (t, r / 2), dev)?.to_dtype(dtype)?;
        let sin = Tensor::from_vec(sin, (t, r / 2), dev)?.to_dtype(dtype)?;
        Ok(Some(RotaryTables { cos, sin }))
    }

    /// The rotary embedding of the q and k parts of `qkv` (B, T, 3C), or its transpose (the
    /// backward: a rotation by −angle) with `inverse`. Per head, dimensions i and i + r/2
    /// (i < r/2) turn by angle t·θ_i; the rest of each head and v pass unchanged.
    fn rotate(&self, qkv: &Tensor, tables: &Option<RotaryTables>, inverse: bool) -> Result<Tensor> {
        let Some(tables) = tables else { return Ok(qkv.clone()) };
        let shape = RotaryShape {
            heads: self.cfg.num_attention_heads,
            head_size: self.cfg.head_size(),
            dims: self.cfg.rotary_dims(),
        };
        self.ops().rotate(qkv, tables, shape, inverse)
    }

    fn scale(&self) -> f64 {
        1.0 / (self.cfg.head_size() as f64).sqrt()
    }

    /// The forward pass over token ids (B, T).
    pub fn forward(&self, ids: &Tensor) -> Result<NeoXForward> {
        let cfg = &self.cfg;
        let (b, t) = ids.dims2()?;
        if t > cfg.max_position_embeddings {
            bail!("sequence length {t} exceeds max_position_embeddings {}", cfg.max_position_embeddings);
        }
        let (c, h, eps) = (cfg.hidden_size, cfg.num_attention_heads, cfg.layer_norm_eps);
        let p = &self.params;
        let ops = self.ops();
        let rotary = self.rotary_tables(t)?;
        let mut x = p.embed_in.embedding(&ids.flatten_all()?)?.reshape((b, t, c))?;
        let mut caches = Vec::with_capacity(p.layers.len());
        for layer in &p.layers {
            let (a, ln_1) = ops.layer_norm(&x, &layer.input_layernorm, eps)?;
            let qkv = self.rotate(&ops.linear(&a, &layer.query_key_value)?, &rotary, false)?;
            let att = ops.attention_probs(&qkv, h, self.scale())?;
            let y = ops.attention_mix(&att, &qkv, h)?;
            let attn_out = ops.linear(&y, &layer.dense)?;
            // Parallel: the MLP reads the layer's input; serial: the input plus attention.
            let mid = if cfg.use_parallel_residual { x.clone() } else { (&x + &attn_out)? };
            let (m, ln_2) = ops.layer_norm(&mid, &layer.post_attention_layernorm, eps)?;
            let fc_pre = ops.linear(&m, &layer.dense_h_to_4h)?;
            let mlp_out = ops.linear(&ops.gelu(&fc_pre)?, &layer.dense_4h_to_h)?;
            x = if cfg.use_parallel_residual { ((x + attn_out)? + mlp_out)? } else { (mid + mlp_out)? };
            caches.push(LayerCache { ln_1, ln_2, qkv, fc_pre });
        }
        let (hidden, ln_f) = ops.layer_norm(&x, &p.final_layer_norm, eps)?;
        Ok(NeoXForward { layers: caches, ln_f, rotary, hidden })
    }

    /// Backward from `seed` = ∂f/∂hidden (B, T, C): every layer's gradients, last layer first,
    /// to `visit` as (stored sides, weight-gradient pairs when `operands`).
    fn backward_inner(
        &self,
        fwd: &NeoXForward,
        seed: &Tensor,
        operands: bool,
        visit: &mut dyn FnMut(usize, LayerGrads) -> Result<()>,
    ) -> Result<()> {
        let cfg = &self.cfg;
        let h = cfg.num_attention_heads;
        let ops = self.ops();
        let mut dx = ops.layer_norm_backward(seed, &fwd.ln_f, &self.params.final_layer_norm)?;
        for l in (0..self.params.layers.len()).rev() {
            let layer = &self.params.layers[l];
            let cache = &fwd.layers[l];
            // MLP: δ at dense_4h_to_h's output is the residual gradient after the layer.
            let mlp_out = dx.clone();
            let du = ops.matmul_t(&mlp_out, &layer.dense_4h_to_h.weight)?;
            let fc_out = ops.gelu_backward(&du, &cache.fc_pre)?;
            let fc_in = ops.matmul_t(&fc_out, &layer.dense_h_to_4h.weight)?;
            let ln2_back = ops.layer_norm_backward(&fc_in, &cache.ln_2, &layer.post_attention_layernorm)?;
            // Serial: the MLP's input is x + attn, so its gradient joins the residual before
            // attention; parallel: it joins at the layer's input, with attention's.
            let proj_out = if cfg.use_parallel_residual { dx.clone() } else { (&dx + &ln2_back)? };
            let proj_in = ops.matmul_t(&proj_out, &layer.dense.weight)?;
            let att = ops.attention_probs(&cache.qkv, h, self.scale())?;
            let d_rot = ops.attention_backward(&proj_in, &att, &cache.qkv, h, self.scale())?;
            let qkv_out = self.rotate(&d_rot, &fwd.rotary, true)?;
            let attn_in = ops.matmul_t(&qkv_out, &layer.query_key_value.weight)?;
            let ops_values = if operands {
                Some([
                    ops.layer_norm_output(&cache.ln_1, &layer.input_layernorm)?,
                    ops.attention_mix(&att, &cache.qkv, h)?,
                    ops.layer_norm_output(&cache.ln_2, &layer.post_attention_layernorm)?,
                    ops.gelu(&cache.fc_pre)?,
                ])
            } else {
                None
            };
            visit(
                l,
                LayerGrads {
                    qkv_out: &qkv_out,
                    attn_in: &attn_in,
                    proj_out: &proj_out,
                    proj_in: &proj_in,
                    fc_out: &fc_out,
                    fc_in: &fc_in,
                    mlp_out: &mlp_out,
                    operands: ops_values.as_ref(),
                },
            )?;
            if l > 0 {
                let ln1_back = ops.layer_norm_backward(&attn_in, &cache.ln_1, &layer.input_layernorm)?;
                dx = if cfg.use_parallel_residual { ((dx + ln1_back)? + ln2_back)? } else { (proj_out + ln1_back)? };
            }
        }
        Ok(())
    }
}

/// Gradients of one layer for one seed, all (B, T, ·): δ at module outputs, operand gradients
/// (through that module only) at their inputs, and with `operands` the modules' inputs
/// [ln₁ output, merged heads, ln₂ output, gelu output].
struct LayerGrads<'a> {
    qkv_out: &'a Tensor,
    attn_in: &'a Tensor,
    proj_out: &'a Tensor,
    proj_in: &'a Tensor,
    fc_out: &'a Tensor,
    fc_in: &'a Tensor,
    mlp_out: &'a Tensor,
    operands: Option<&'a [Tensor; 4]>,
}

impl GptNeoX {
    fn whole(&self, layer: usize, role: Role) -> Module {
        *self.table.iter().find(|m| m.layer == layer && m.role == role && m.is_whole()).expect("in the table")
    }
}

impl ModuleWeights for GptNeoX {
    fn modules(&self) -> Vec<Module> {
        self.table.clone()
    }

    fn module_weight(&self, m: &Module) -> Result<Tensor> {
        let layer = &self.params.layers[m.layer];
        let w = match m.role {
            Role::Qkv | Role::Q | Role::K | Role::V => &layer.query_key_value.weight,
            Role::AttnOut => &layer.dense.weight,
            Role::MlpIn => &layer.dense_h_to_4h.weight,
            Role::MlpOut => &layer.dense_4h_to_h.weight,
        };
        Ok(if m.is_whole() { w.clone() } else { w.narrow(1, m.offset, m.d_out)? })
    }

    fn token_space(&self) -> TokenSpace<'_> {
        let ln = &self.params.final_layer_norm;
        TokenSpace {
            embedding: &self.params.embed_in,
            final_norm: Norm { gain: &ln.weight, bias: &ln.bias, eps: self.cfg.layer_norm_eps },
            unembedding: self.unembedding_tensor(),
        }
    }

    fn input_norm(&self, m: &Module) -> Option<Norm<'_>> {
        let layer = &self.params.layers[m.layer];
        let ln = match m.role {
            Role::Qkv | Role::Q | Role::K | Role::V => &layer.input_layernorm,
            Role::MlpIn => &layer.post_attention_layernorm,
            Role::AttnOut | Role::MlpOut => return None,
        };
        Some(Norm { gain: &ln.weight, bias: &ln.bias, eps: self.cfg.layer_norm_eps })
    }
}

impl Network for GptNeoX {
    type Forward = NeoXForward;

    fn device(&self) -> &Device {
        GptNeoX::device(self)
    }

    fn unembedding(&self) -> &Tensor {
        self.unembedding_tensor()
    }

    fn forward(&self, ids: &Tensor) -> Result<NeoXForward> {
        GptNeoX::forward(self, ids)
    }

    fn hidden<'a>(&self, fwd: &'a NeoXForward) -> &'a Tensor {
        &fwd.hidden
    }

    fn repeat_forward(&self, fwd: &NeoXForward, n: usize) -> Result<NeoXForward> {
        let layers = fwd
            .layers
            .iter()
            .map(|l| {
                Ok(LayerCache {
                    ln_1: l.ln_1.repeat(n)?,
                    ln_2: l.ln_2.repeat(n)?,
                    qkv: repeat_batch(&l.qkv, n)?,
                    fc_pre: repeat_batch(&l.fc_pre, n)?,
                })
            })
            .collect::<Result<_>>()?;
        Ok(NeoXForward {
            layers,
            ln_f: fwd.ln_f.repeat(n)?,
            rotary: fwd.rotary.clone(),
            hidden: repeat_batch(&fwd.hidden, n)?,
        })
    }

    fn backward(&self, fwd: &NeoXForward, seed: &Tensor, visit: &mut dyn FnMut(&[Grad]) -> Result<()>) -> Result<()> {
        self.backward_inner(fwd, seed, false, &mut |l, g| {
            let mut heads: Vec<Module> =
                self.table.iter().filter(|m| m.layer == l && m.role.per_head()).copied().collect();
            heads.sort_by_key(|m| m.offset);
            visit(&[
                Grad::Module(self.whole(l, Role::Qkv), g.attn_in),
                Grad::Module(self.whole(l, Role::AttnOut), g.proj_in),
                Grad::Module(self.whole(l, Role::MlpIn), g.fc_in),
                Grad::Module(self.whole(l, Role::MlpOut), g.mlp_out),
                Grad::Packed { width: self.cfg.head_size(), modules: heads, tensor: g.qkv_out },
            ])
        })
    }

    fn backward_weights(
        &self,
        fwd: &NeoXForward,
        seed: &Tensor,
        visit: &mut dyn FnMut(&[WeightGrad]) -> Result<()>,
    ) -> Result<()> {
        self.backward_inner(fwd, seed, true, &mut |l, g| {
            let Some([a, y, m, u]) = g.operands else { bail!("weight gradients need the operands") };
            let pair = |role, delta, operand| WeightGrad { module: self.whole(l, role), delta, operand };
            visit(&[
                pair(Role::Qkv, g.qkv_out, a),
                pair(Role::AttnOut, g.proj_out, y),
                pair(Role::MlpIn, g.fc_out, m),
                pair(Role::MlpOut, g.mlp_out, u),
            ])
        })
    }
}

/// The random-init control for GPT-NeoX, as transformers initializes it: every nn.Linear
/// weight and both embeddings N(0, initializer_range), biases 0, LayerNorm 1 and 0. Drawn in
/// the schema's order, each weight in the row-major order of its checkpoint shape, from the
/// ChaCha8 stream of GPT-2's random-init (docs/reference.md §4) keyed by `seed`.
pub fn random_init(cfg: &NeoXConfig, seed: u64, device: &Device) -> Result<GptNeoX> {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    key[24..].copy_from_slice(b"agopinit");
    let mut rng = ChaCha8Rng::from_seed(key);
    let normal = Normal::new(0.0f32, cfg.initializer_range as f32)?;
    let take = |name: &str, shape: &[usize]| -> Result<Tensor> {
        let n: usize = shape.iter().product();
        Ok(if name.ends_with(".bias") {
            Tensor::zeros(shape, DType::F32, device)?
        } else if name.contains("layernorm") || name.contains("layer_norm") {
            Tensor::ones(shape, DType::F32, device)?
        } else {
            let data: Vec<f32> = (0..n).map(|_| normal.sample(&mut rng)).collect();
            Tensor::from_vec(data, shape, device)?
        })
    };
    Ok(GptNeoX::new(cfg.clone(), NeoXParams::build(cfg, take)?))
}

/// Load a GPT-NeoX checkpoint (safetensors, sharded safetensors or `pytorch_model.bin`) onto
/// `device`; HF names with or without the `gpt_neox.` prefix. The causal-mask and rotary
/// buffers older files carry are skipped.
pub fn load_pretrained(dir: &std::path::Path, cfg: &NeoXConfig, device: &Device) -> Result<GptNeoX> {
    let known = |name: &str| -> bool {
        let Some(rest) = name.strip_prefix("layers.") else { return false };
        let Some((layer, tail)) = rest.split_once('.') else { return false };
        layer.parse::<usize>().is_ok_and(|l| l < cfg.num_hidden_layers)
            && matches!(tail, "attention.bias" | "attention.masked_bias" | "attention.rotary_emb.inv_freq")
    };
    let what = format!(
        "num_hidden_layers {}, tie_word_embeddings {}{}",
        cfg.num_hidden_layers,
        cfg.tie_word_embeddings,
        if cfg.tie_word_embeddings { ": embed_in is also the unembedding, so there is no embed_out" } else { "" }
    );
    let params =
        super::weights::load_tensors(dir, device, "gpt_neox.", |take| NeoXParams::build(cfg, take), known, &what)?;
    Ok(GptNeoX::new(cfg.clone(), params))
}
