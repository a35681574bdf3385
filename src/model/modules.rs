//! The weight matrices ("modules") of docs/reference.md §2: their names (the one source of module names:
//! [`Kind::ALL`] and [`Kind::as_str`]), operand and output dimensions, which side of the gradient
//! outer product a GOP file stores, and their weight blocks.

use super::config::Gpt2Config;

/// The kind of a module; `Q`, `K`, `V` are per attention head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    CAttn,
    Q,
    K,
    V,
    AttnCProj,
    CFc,
    MlpCProj,
}

impl Kind {
    /// Every kind, in the reference's (and display) order.
    pub const ALL: [Kind; 7] = [Kind::CAttn, Kind::Q, Kind::K, Kind::V, Kind::AttnCProj, Kind::CFc, Kind::MlpCProj];

    /// Whether the kind is per attention head.
    pub fn per_head(self) -> bool {
        matches!(self, Kind::Q | Kind::K | Kind::V)
    }

    /// The `role` column of correlations.parquet: what the module does, in words every
    /// architecture shares (`qkv`, `q`, `k`, `v`, `attn_out`, `mlp_in`, `mlp_out`), so that one
    /// query compares architectures whose `module` names differ.
    pub fn role(self) -> &'static str {
        match self {
            Kind::CAttn => "qkv",
            Kind::Q => "q",
            Kind::K => "k",
            Kind::V => "v",
            Kind::AttnCProj => "attn_out",
            Kind::CFc => "mlp_in",
            Kind::MlpCProj => "mlp_out",
        }
    }

    /// The `module` column of correlations.parquet.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::CAttn => "attn.c_attn",
            Kind::Q => "attn.q",
            Kind::K => "attn.k",
            Kind::V => "attn.v",
            Kind::AttnCProj => "attn.c_proj",
            Kind::CFc => "mlp.c_fc",
            Kind::MlpCProj => "mlp.c_proj",
        }
    }
}

/// Which side a GOP file stores for a module: the operand-space sum Σ g gᵀ (tensor `{name}`) or
/// the output-side sum K = Σ δ δᵀ (tensor `{name}.out`); AGOP = W K Wᵀ in stored layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Operand,
    Output,
}

/// One module of one block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Module {
    pub layer: usize,
    pub kind: Kind,
    pub head: Option<usize>,
}

impl Module {
    /// docs/reference.md §2 name, e.g. `h.3.attn.q.7`, `h.0.mlp.c_proj`.
    pub fn name(&self) -> String {
        match self.head {
            Some(h) => format!("h.{}.{}.{}", self.layer, self.kind.as_str(), h),
            None => format!("h.{}.{}", self.layer, self.kind.as_str()),
        }
    }

    /// Operand dimension d_in.
    pub fn d_in(&self, cfg: &Gpt2Config) -> usize {
        match self.kind {
            Kind::MlpCProj => cfg.n_inner(),
            _ => cfg.n_embd,
        }
    }

    /// Output dimension d_out.
    pub fn d_out(&self, cfg: &Gpt2Config) -> usize {
        match self.kind {
            Kind::CAttn => 3 * cfg.n_embd,
            Kind::Q | Kind::K | Kind::V => cfg.head_size(),
            Kind::AttnCProj | Kind::MlpCProj => cfg.n_embd,
            Kind::CFc => cfg.n_inner(),
        }
    }

    /// The side stored in GOP files: the smaller one for GPT-2 shapes (heads and mlp.c_proj
    /// store K; c_attn, attn.c_proj and mlp.c_fc store the operand-space sum).
    pub fn side(&self) -> Side {
        match self.kind {
            Kind::Q | Kind::K | Kind::V | Kind::MlpCProj => Side::Output,
            _ => Side::Operand,
        }
    }

    /// Name of the tensor in a GOP file.
    pub fn gop_tensor(&self) -> String {
        match self.side() {
            Side::Operand => self.name(),
            Side::Output => format!("{}.out", self.name()),
        }
    }

    /// Dimension of the stored square matrix.
    pub fn stored_dim(&self, cfg: &Gpt2Config) -> usize {
        match self.side() {
            Side::Operand => self.d_in(cfg),
            Side::Output => self.d_out(cfg),
        }
    }
}

/// Every module of the model, block by block in the reference's order (docs/reference.md §2): c_attn, q.0.., k.0.., v.0..,
/// attn.c_proj, mlp.c_fc, mlp.c_proj.
pub fn all_modules(cfg: &Gpt2Config) -> Vec<Module> {
    let mut out = Vec::new();
    for layer in 0..cfg.n_layer {
        for kind in Kind::ALL {
            if kind.per_head() {
                out.extend((0..cfg.n_head).map(|h| Module { layer, kind, head: Some(h) }));
            } else {
                out.push(Module { layer, kind, head: None });
            }
        }
    }
    out
}
