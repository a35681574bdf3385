//! The weight matrices ("modules") of docs/reference.md §2, whatever the architecture: each
//! network publishes its module table, a [`Module`] row per measured weight (its own name, the
//! shared [`Role`], layer, head, operand and output widths, and for a head where its rows sit in
//! the layer's fused projection). Everything after the model (measure, correlate, FACT, report)
//! reads only the table.

use super::config::Gpt2Config;

/// What a module does, in words every architecture shares (the `role` column).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// The fused query/key/value projection.
    Qkv,
    /// One head's rows of it.
    Q,
    K,
    V,
    /// The attention output projection.
    AttnOut,
    /// The MLP's first (widening) projection.
    MlpIn,
    /// The MLP's second projection, back to the residual stream.
    MlpOut,
}

impl Role {
    /// Every role, in the reference's (and display) order.
    pub const ALL: [Role; 7] = [Role::Qkv, Role::Q, Role::K, Role::V, Role::AttnOut, Role::MlpIn, Role::MlpOut];

    /// Whether modules of this role are per attention head.
    pub fn per_head(self) -> bool {
        matches!(self, Role::Q | Role::K | Role::V)
    }

    /// The `role` column of correlations.parquet.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Qkv => "qkv",
            Role::Q => "q",
            Role::K => "k",
            Role::V => "v",
            Role::AttnOut => "attn_out",
            Role::MlpIn => "mlp_in",
            Role::MlpOut => "mlp_out",
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

/// One row of a network's module table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Module {
    pub layer: usize,
    pub role: Role,
    pub head: Option<usize>,
    /// The architecture's own name of the module (the `module` column): `attn.c_attn`,
    /// `attention.dense`, …
    pub short: &'static str,
    /// What precedes the layer index in the module's full name: `h` (GPT-2), `layers` (GPT-NeoX).
    pub block: &'static str,
    /// Operand dimension d_in: the weight acts on d_in-vectors.
    pub d_in: usize,
    /// Output dimension d_out.
    pub d_out: usize,
    /// A head: the first of its d_out rows in the output of its layer's [`Role::Qkv`] module (in
    /// the order the network computes it); 0 for a whole module.
    pub offset: usize,
    /// The `short` name of the whole module whose weight holds these rows: the layer's qkv
    /// module for a head, the module itself otherwise.
    pub owner: &'static str,
}

impl Module {
    /// docs/reference.md §2 name, e.g. `h.3.attn.q.7`, `h.0.mlp.c_proj`, `layers.2.attention.dense`.
    pub fn name(&self) -> String {
        match self.head {
            Some(h) => format!("{}.{}.{}.{}", self.block, self.layer, self.short, h),
            None => format!("{}.{}.{}", self.block, self.layer, self.short),
        }
    }

    /// The side stored in GOP files: the output side for heads and the MLP's second projection
    /// (smaller than their operands in every GPT shape), the operand side otherwise.
    pub fn side(&self) -> Side {
        match self.role {
            Role::Q | Role::K | Role::V | Role::MlpOut => Side::Output,
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
    pub fn stored_dim(&self) -> usize {
        match self.side() {
            Side::Operand => self.d_in,
            Side::Output => self.d_out,
        }
    }

    /// Whether this is a whole weight (not a head's rows of one).
    pub fn is_whole(&self) -> bool {
        self.head.is_none()
    }
}

/// The whole module whose weight holds module `m`'s rows: `m` itself, or for a head its layer's
/// [`Role::Qkv`] module in `table`.
pub fn owner<'a>(table: &'a [Module], m: &'a Module) -> &'a Module {
    if m.is_whole() {
        return m;
    }
    table
        .iter()
        .find(|o| o.layer == m.layer && o.short == m.owner && o.is_whole())
        .expect("a head's owner is in the table")
}

/// GPT-2's module kinds (its own names); the order of [`Role::ALL`].
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

    /// The GPT-2 name (the `module` column).
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

    pub fn role(self) -> Role {
        Role::ALL[self as usize]
    }

    /// The kind of a GPT-2 module of the table.
    pub fn of(m: &Module) -> Kind {
        Kind::ALL[m.role as usize]
    }
}

/// GPT-2's module table, block by block in the reference's order (docs/reference.md §2):
/// c_attn, q.0.., k.0.., v.0.., attn.c_proj, mlp.c_fc, mlp.c_proj. Head h of part p (q, k, v)
/// is columns p·C + h·hs of c_attn's output.
pub fn all_modules(cfg: &Gpt2Config) -> Vec<Module> {
    let (c, f, hs) = (cfg.n_embd, cfg.n_inner(), cfg.head_size());
    let row = |layer, kind: Kind, head: Option<usize>| {
        let (d_in, d_out) = match kind {
            Kind::CAttn => (c, 3 * c),
            Kind::Q | Kind::K | Kind::V => (c, hs),
            Kind::AttnCProj => (c, c),
            Kind::CFc => (c, f),
            Kind::MlpCProj => (f, c),
        };
        let offset = match (kind, head) {
            (Kind::Q, Some(h)) => h * hs,
            (Kind::K, Some(h)) => c + h * hs,
            (Kind::V, Some(h)) => 2 * c + h * hs,
            _ => 0,
        };
        let owner = if head.is_some() { Kind::CAttn.as_str() } else { kind.as_str() };
        Module { layer, role: kind.role(), head, short: kind.as_str(), block: "h", d_in, d_out, offset, owner }
    };
    let mut out = Vec::new();
    for layer in 0..cfg.n_layer {
        for kind in Kind::ALL {
            if kind.role().per_head() {
                out.extend((0..cfg.n_head).map(|h| row(layer, kind, Some(h))));
            } else {
                out.push(row(layer, kind, None));
            }
        }
    }
    out
}

/// GPT-2 module `kind` (whole) of `layer`, from the table.
pub fn gpt2_module(cfg: &Gpt2Config, layer: usize, kind: Kind, head: Option<usize>) -> Module {
    all_modules(cfg)
        .into_iter()
        .find(|m| m.layer == layer && m.role == kind.role() && m.head == head)
        .expect("the module is in the table")
}
