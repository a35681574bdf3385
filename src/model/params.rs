//! The parameter schema of GPT-2: one list of every tensor's HF name and shape
//! ([`Params::build`]) that loading, random-init, dtype and device conversion and saving all go
//! through, so a name can never drift between them.
//!
//! HF names without the `transformer.` prefix; weights in the Conv1D layout [in, out]
//! (y = x·W + b).

use anyhow::Result;
use candle_core::Tensor;

use super::config::Gpt2Config;
use super::modules::Kind;

/// A Conv1D / linear layer: `weight` [in, out], `bias` [out].
#[derive(Debug, Clone)]
pub struct Linear<T = Tensor> {
    pub weight: T,
    pub bias: T,
}

/// LayerNorm parameters γ (`weight`) and β (`bias`), each [C].
#[derive(Debug, Clone)]
pub struct LayerNorm<T = Tensor> {
    pub weight: T,
    pub bias: T,
}

/// `attn.c_attn` [C, 3C] (packed Q | K | V) and `attn.c_proj` [C, C].
#[derive(Debug, Clone)]
pub struct Attn<T = Tensor> {
    pub c_attn: Linear<T>,
    pub c_proj: Linear<T>,
}

/// `mlp.c_fc` [C, F] and `mlp.c_proj` [F, C].
#[derive(Debug, Clone)]
pub struct Mlp<T = Tensor> {
    pub c_fc: Linear<T>,
    pub c_proj: Linear<T>,
}

/// One transformer block `h.{l}`.
#[derive(Debug, Clone)]
pub struct Block<T = Tensor> {
    pub ln_1: LayerNorm<T>,
    pub attn: Attn<T>,
    pub ln_2: LayerNorm<T>,
    pub mlp: Mlp<T>,
}

/// Every parameter of a GPT-2 language model.
#[derive(Debug, Clone)]
pub struct Params<T = Tensor> {
    /// Token embeddings [V, C].
    pub wte: T,
    /// Position embeddings [n_positions, C].
    pub wpe: T,
    pub blocks: Vec<Block<T>>,
    pub ln_f: LayerNorm<T>,
    /// The untied LM head `lm_head.weight` [V, C] (nn.Linear layout) when the config says
    /// `tie_word_embeddings: false`; `None` when the head is `wte`.
    pub lm_head: Option<T>,
}

/// A parameter's HF name and shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamSpec {
    pub name: String,
    pub shape: Vec<usize>,
}

impl<T> Linear<T> {
    fn try_map<'a, U>(&'a self, f: &mut impl FnMut(&'a T) -> Result<U>) -> Result<Linear<U>> {
        Ok(Linear { weight: f(&self.weight)?, bias: f(&self.bias)? })
    }
}

impl<T> LayerNorm<T> {
    fn try_map<'a, U>(&'a self, f: &mut impl FnMut(&'a T) -> Result<U>) -> Result<LayerNorm<U>> {
        Ok(LayerNorm { weight: f(&self.weight)?, bias: f(&self.bias)? })
    }
}

impl<T> Block<T> {
    /// The layer whose weight is module `kind` (per-head kinds are column blocks of c_attn).
    pub fn linear(&self, kind: Kind) -> &Linear<T> {
        match kind {
            Kind::CAttn | Kind::Q | Kind::K | Kind::V => &self.attn.c_attn,
            Kind::AttnCProj => &self.attn.c_proj,
            Kind::CFc => &self.mlp.c_fc,
            Kind::MlpCProj => &self.mlp.c_proj,
        }
    }
}

impl<T> Params<T> {
    /// Build every parameter by asking `take(name, shape)`. This is the schema: the one place
    /// that lists names and shapes. The order of the calls is also the order in which the
    /// random-init control draws its tensors (docs/reference.md §4), so it must not change.
    pub fn build(cfg: &Gpt2Config, mut take: impl FnMut(&str, &[usize]) -> Result<T>) -> Result<Self> {
        let (c, f, v, p) = (cfg.n_embd, cfg.n_inner(), cfg.vocab_size, cfg.n_positions);
        let mut take = |name: String, shape: &[usize]| take(&name, shape);
        let ln = |take: &mut dyn FnMut(String, &[usize]) -> Result<T>, pre: &str| -> Result<LayerNorm<T>> {
            Ok(LayerNorm { weight: take(format!("{pre}.weight"), &[c])?, bias: take(format!("{pre}.bias"), &[c])? })
        };
        let linear = |take: &mut dyn FnMut(String, &[usize]) -> Result<T>, pre: &str, i: usize, o: usize| {
            Ok::<_, anyhow::Error>(Linear {
                weight: take(format!("{pre}.weight"), &[i, o])?,
                bias: take(format!("{pre}.bias"), &[o])?,
            })
        };
        let ln_f = ln(&mut take, "ln_f")?;
        let mut blocks = Vec::with_capacity(cfg.n_layer);
        for l in 0..cfg.n_layer {
            let ln_1 = ln(&mut take, &format!("h.{l}.ln_1"))?;
            let ln_2 = ln(&mut take, &format!("h.{l}.ln_2"))?;
            let c_attn = linear(&mut take, &format!("h.{l}.attn.c_attn"), c, 3 * c)?;
            let attn_c_proj = linear(&mut take, &format!("h.{l}.attn.c_proj"), c, c)?;
            let c_fc = linear(&mut take, &format!("h.{l}.mlp.c_fc"), c, f)?;
            let mlp_c_proj = linear(&mut take, &format!("h.{l}.mlp.c_proj"), f, c)?;
            blocks.push(Block {
                ln_1,
                attn: Attn { c_attn, c_proj: attn_c_proj },
                ln_2,
                mlp: Mlp { c_fc, c_proj: mlp_c_proj },
            });
        }
        let wte = take("wte.weight".into(), &[v, c])?;
        let wpe = take("wpe.weight".into(), &[p, c])?;
        // Last, so that a tied model's random-init draws are what they always were.
        let lm_head = if cfg.tie_word_embeddings { None } else { Some(take("lm_head.weight".into(), &[v, c])?) };
        Ok(Params { wte, wpe, blocks, ln_f, lm_head })
    }

    /// The same structure with `f` applied to every parameter (no names: the structure is the
    /// schema's, field for field).
    pub fn try_map<'a, U>(&'a self, mut f: impl FnMut(&'a T) -> Result<U>) -> Result<Params<U>> {
        let f = &mut f;
        let mut blocks = Vec::with_capacity(self.blocks.len());
        for b in &self.blocks {
            blocks.push(Block {
                ln_1: b.ln_1.try_map(f)?,
                attn: Attn { c_attn: b.attn.c_attn.try_map(f)?, c_proj: b.attn.c_proj.try_map(f)? },
                ln_2: b.ln_2.try_map(f)?,
                mlp: Mlp { c_fc: b.mlp.c_fc.try_map(f)?, c_proj: b.mlp.c_proj.try_map(f)? },
            });
        }
        let (wte, wpe, ln_f) = (f(&self.wte)?, f(&self.wpe)?, self.ln_f.try_map(f)?);
        let lm_head = self.lm_head.as_ref().map(&mut *f).transpose()?;
        Ok(Params { wte, wpe, blocks, ln_f, lm_head })
    }

    /// Every parameter, in [`Params::try_map`] order.
    pub fn iter(&self) -> Vec<&T> {
        let mut all = Vec::new();
        let _ = self.try_map(|t| {
            all.push(t);
            Ok(())
        });
        all
    }
}

impl Params<ParamSpec> {
    /// Names and shapes of every parameter of a config.
    pub fn schema(cfg: &Gpt2Config) -> Self {
        Params::build(cfg, |name, shape| Ok(ParamSpec { name: name.to_string(), shape: shape.to_vec() }))
            .expect("building the schema cannot fail")
    }
}

impl Params<Tensor> {
    /// (HF name, tensor) for every parameter.
    pub fn named(&self, cfg: &Gpt2Config) -> Vec<(String, Tensor)> {
        let schema = Params::schema(cfg);
        schema.iter().into_iter().zip(self.iter()).map(|(s, t)| (s.name.clone(), t.clone())).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// try_map visits the fields in a fixed order: the names it pairs with the schema are those
    /// of the tensors themselves (each shape matches its name) and every name appears once.
    #[test]
    fn schema_traversal_pairs_every_name_with_its_own_tensor() {
        let cfg: Gpt2Config = serde_json::from_str(
            r#"{"model_type":"gpt2","n_layer":2,"n_head":2,"n_embd":8,"n_positions":16,"vocab_size":11,"n_inner":12}"#,
        )
        .unwrap();
        let schema = Params::schema(&cfg);
        // A Params<String> built by the same list, carrying its own name as the value.
        let named = Params::build(&cfg, |n, _| Ok(n.to_string())).unwrap();
        let pairs: Vec<(String, String)> =
            schema.iter().into_iter().zip(named.iter()).map(|(s, n)| (s.name.clone(), n.clone())).collect();
        assert_eq!(pairs.len(), 4 + 2 * 12);
        for (a, b) in &pairs {
            assert_eq!(a, b);
        }
        let mut names: Vec<&String> = pairs.iter().map(|(a, _)| a).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), pairs.len());
    }
}
