//! GPT-NeoX's parameter schema: every tensor's HF name and shape once ([`NeoXParams::build`]),
//! through which loading and random-init go.
//!
//! HF names without the `gpt_neox.` prefix. HF stores nn.Linear weights [out, in]; the model
//! keeps them as [in, out] (y = x·W + b, GPT-2's Conv1D layout, so the same kernels run both),
//! and `query_key_value`'s outputs, stored per head as [q | k | v], in GPT-2's order: all heads'
//! q, then k, then v (column p·C + h·hs + i of the model's weight is row h·3hs + p·hs + i of the
//! checkpoint's). Every measured quantity is unchanged by that reordering (NFMs and AGOPs live on
//! the operand side; a head is its own rows either way); FACT's G of query_key_value is stored
//! in the model's order.

use anyhow::Result;
use candle_core::{DType, Tensor};

use super::config::NeoXConfig;
use crate::model::params::{LayerNorm, Linear};

/// One layer's parameters.
#[derive(Debug, Clone)]
pub struct NeoXLayer {
    pub input_layernorm: LayerNorm,
    pub post_attention_layernorm: LayerNorm,
    /// [C, 3C], columns [Q | K | V].
    pub query_key_value: Linear,
    pub dense: Linear,
    pub dense_h_to_4h: Linear,
    pub dense_4h_to_h: Linear,
}

/// Every parameter of a GPT-NeoX model.
#[derive(Debug, Clone)]
pub struct NeoXParams {
    /// [V, C].
    pub embed_in: Tensor,
    pub layers: Vec<NeoXLayer>,
    pub final_layer_norm: LayerNorm,
    /// [V, C]; None when tied to `embed_in`.
    pub embed_out: Option<Tensor>,
}

/// For each column j of the model's [Q | K | V] order, the checkpoint's row (per head q | k | v).
pub fn qkv_order(cfg: &NeoXConfig) -> Vec<u32> {
    let (c, hs) = (cfg.hidden_size, cfg.head_size());
    (0..3 * c)
        .map(|j| {
            let (p, rest) = (j / c, j % c);
            let (h, i) = (rest / hs, rest % hs);
            (h * 3 * hs + p * hs + i) as u32
        })
        .collect()
}

impl NeoXParams {
    /// Build from `take(name, shape)` in the checkpoint's layout, called in schema order:
    /// `embed_in`, every layer (its layer norms, query_key_value, dense, dense_h_to_4h,
    /// dense_4h_to_h), `final_layer_norm`, and `embed_out` unless tied.
    pub fn build(cfg: &NeoXConfig, mut take: impl FnMut(&str, &[usize]) -> Result<Tensor>) -> Result<Self> {
        type Take<'t> = &'t mut dyn FnMut(&str, &[usize]) -> Result<Tensor>;
        let take: Take = &mut take;
        let (c, f, v) = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size);
        fn ln(take: Take, name: &str, c: usize) -> Result<LayerNorm> {
            Ok(LayerNorm { weight: take(&format!("{name}.weight"), &[c])?, bias: take(&format!("{name}.bias"), &[c])? })
        }
        /// The checkpoint's [out, in] weight and its bias (zeros when the config has none).
        fn linear(take: Take, name: &str, out: usize, inp: usize, bias: bool) -> Result<(Tensor, Tensor)> {
            let w = take(&format!("{name}.weight"), &[out, inp])?;
            let b =
                if bias { take(&format!("{name}.bias"), &[out])? } else { Tensor::zeros(out, w.dtype(), w.device())? };
            Ok((w, b))
        }
        fn conv(take: Take, name: &str, out: usize, inp: usize, bias: bool) -> Result<Linear> {
            let (w, b) = linear(take, name, out, inp, bias)?;
            Ok(Linear { weight: w.t()?.contiguous()?, bias: b })
        }
        let embed_in = take("embed_in.weight", &[v, c])?;
        let order = Tensor::from_vec(qkv_order(cfg), 3 * c, embed_in.device())?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for l in 0..cfg.num_hidden_layers {
            let p = format!("layers.{l}");
            let input_layernorm = ln(take, &format!("{p}.input_layernorm"), c)?;
            let post_attention_layernorm = ln(take, &format!("{p}.post_attention_layernorm"), c)?;
            let (w, b) = linear(take, &format!("{p}.attention.query_key_value"), 3 * c, c, cfg.attention_bias)?;
            let query_key_value = Linear {
                weight: w.index_select(&order, 0)?.t()?.contiguous()?,
                bias: b.index_select(&order, 0)?.contiguous()?,
            };
            let dense = conv(take, &format!("{p}.attention.dense"), c, c, cfg.attention_bias)?;
            let dense_h_to_4h = conv(take, &format!("{p}.mlp.dense_h_to_4h"), f, c, true)?;
            let dense_4h_to_h = conv(take, &format!("{p}.mlp.dense_4h_to_h"), c, f, true)?;
            layers.push(NeoXLayer {
                input_layernorm,
                post_attention_layernorm,
                query_key_value,
                dense,
                dense_h_to_4h,
                dense_4h_to_h,
            });
        }
        let final_layer_norm = ln(take, "final_layer_norm", c)?;
        let embed_out = if cfg.tie_word_embeddings { None } else { Some(take("embed_out.weight", &[v, c])?) };
        Ok(Self { embed_in, layers, final_layer_norm, embed_out })
    }

    /// Every tensor converted by `f` (dtype, device).
    pub fn try_map(&self, mut f: impl FnMut(&Tensor) -> Result<Tensor>) -> Result<Self> {
        let f: &mut dyn FnMut(&Tensor) -> Result<Tensor> = &mut f;
        fn ln(l: &LayerNorm, f: &mut dyn FnMut(&Tensor) -> Result<Tensor>) -> Result<LayerNorm> {
            Ok(LayerNorm { weight: f(&l.weight)?, bias: f(&l.bias)? })
        }
        fn lin(l: &Linear, f: &mut dyn FnMut(&Tensor) -> Result<Tensor>) -> Result<Linear> {
            Ok(Linear { weight: f(&l.weight)?, bias: f(&l.bias)? })
        }
        let embed_in = f(&self.embed_in)?;
        let mut layers = Vec::with_capacity(self.layers.len());
        for x in &self.layers {
            layers.push(NeoXLayer {
                input_layernorm: ln(&x.input_layernorm, f)?,
                post_attention_layernorm: ln(&x.post_attention_layernorm, f)?,
                query_key_value: lin(&x.query_key_value, f)?,
                dense: lin(&x.dense, f)?,
                dense_h_to_4h: lin(&x.dense_h_to_4h, f)?,
                dense_4h_to_h: lin(&x.dense_4h_to_h, f)?,
            });
        }
        let final_layer_norm = ln(&self.final_layer_norm, f)?;
        let embed_out = match &self.embed_out {
            Some(t) => Some(f(t)?),
            None => None,
        };
        Ok(Self { embed_in, layers, final_layer_norm, embed_out })
    }

    /// The dtype of the parameters.
    pub fn dtype(&self) -> DType {
        self.embed_in.dtype()
    }
}
