//! Gradient-outer-product sums: f64 accumulators per module, the GOP safetensors file
//! (docs/reference.md §5) and exact merging of shards.
//!
//! Every tensor holds an estimate of the docs/reference.md §3 *sum* Σ_windows Σ_outputs Σ_s g gᵀ
//! (operand side) or δ δᵀ (output side); for the sketch estimator each probe's contribution is
//! weighted 1/probes, so files from both estimators are on the same scale. AGOP = sum / n_tokens.
//!
//! A file measured with `--fact` also holds, per whole module, the FACT sum G = Σ δ hᵀ of the
//! summed loss (tensor `{name}.fact`, d_out × d_in; [`super::fact`]) and records `fact: true`.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use anyhow::{bail, Result};
use rayon::prelude::*;
use safetensors::tensor::{Dtype, TensorView};
use serde::{Deserialize, Serialize};

use super::fact::{add_window_cross, fact_modules, fact_tensor};
use super::settings::{Estimator, Output};
use crate::math::gemm::{gemm_into, SyncPtr, View};
use crate::model::{full_f32, Grad, ModelConfig, Module, Precision, WeightGrad, WeightsKind};
use crate::util::tensor_file::TensorFile;
use crate::{bad, bail_bad};

/// What a GOP file was measured from; stored as safetensors metadata (the JSON of this struct
/// under `agop`, and each field but `config` as its own string key). The enums serialize to the
/// strings files have always held (`pretrained`, `logits`, `sketch`, ...).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GopMeta {
    pub agop_version: String,
    pub model: String,
    pub revision: String,
    pub model_sha256: String,
    pub weights: WeightsKind,
    pub output: Output,
    pub estimator: Estimator,
    pub probes: u32,
    pub seed: u64,
    pub seq_len: usize,
    /// sha256 of the tokens.parquet the windows came from.
    #[serde(default)]
    pub tokens_sha256: String,
    /// Windows in the whole tokens file (all shards together).
    #[serde(default)]
    pub total_windows: u64,
    /// `I/N` for a shard, empty otherwise.
    #[serde(default)]
    pub shard: String,
    pub n_windows: u64,
    pub n_tokens: u64,
    /// Half-open ranges of global window indices that were measured, sorted, non-overlapping.
    pub windows: Vec<(u64, u64)>,
    /// The model config, so that a GOP file can be checked against the model it is used with.
    pub config: ModelConfig,
    /// Window groups of the measurement (`--groups`, for the delete-one-group jackknife): the
    /// sums of each group are kept in group files beside this one ([`super::groups`]). 1: none.
    #[serde(default = "one")]
    pub groups: u32,
    /// Set in a group file: which group it holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<GroupPart>,
    /// Whether the file also holds the FACT sums G = Σ δ hᵀ of the summed loss ([`super::fact`]).
    #[serde(default)]
    pub fact: bool,
    /// Where it was measured (`cpu`, `cuda:0`; `cpu+cuda:0` for merged parts): recorded, but not
    /// a setting that must match (CPU and GPU shards merge). Empty in files from before.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub device: String,
    /// The precision of the model's products (`--precision`; f32, not written, unless reduced).
    /// A setting: parts measured in different precisions do not merge.
    #[serde(default, skip_serializing_if = "Precision::is_f32")]
    pub precision: Precision,
}

/// Which group a group file holds: its index (0-based, in global window order) and how many
/// windows the whole group has (a shard may hold only part of a group; merging the shards'
/// pieces of it puts the group back together).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct GroupPart {
    pub index: u32,
    pub windows: u64,
}

fn one() -> u32 {
    1
}

impl GopMeta {
    /// Metadata with only the model config filled in (for library use without files): pretrained
    /// weights, logits, sketch; set the fields that matter with struct update syntax.
    pub fn for_config(config: ModelConfig) -> Self {
        Self {
            agop_version: env!("CARGO_PKG_VERSION").into(),
            model: String::new(),
            revision: String::new(),
            model_sha256: String::new(),
            weights: WeightsKind::Pretrained,
            output: Output::Logits,
            estimator: Estimator::Sketch,
            probes: 0,
            seed: 0,
            seq_len: 0,
            tokens_sha256: String::new(),
            total_windows: 0,
            shard: String::new(),
            n_windows: 0,
            n_tokens: 0,
            windows: vec![],
            config,
            groups: 1,
            group: None,
            fact: false,
            device: String::new(),
            precision: Precision::F32,
        }
    }
}

/// Per-module f64 sums.
#[derive(Debug, Clone)]
pub struct Gop {
    pub meta: GopMeta,
    /// Stored tensor name → (dim, row-major dim × dim values).
    pub sums: BTreeMap<String, (usize, Vec<f64>)>,
    /// With `meta.fact`: FACT tensor name ([`fact_tensor`]) → the weight gradient G of a whole
    /// module; empty otherwise.
    pub fact: BTreeMap<String, FactSum>,
    /// Sums added on a GPU since the last [`Gop::sync`]: tensor name → f64 tensor on the device
    /// (the square sum of `sums`, or the d_out × d_in G of `fact`). Only the sums are copied
    /// back to the host, never a per-window product.
    pub device: BTreeMap<String, candle_core::Tensor>,
}

/// One whole module's FACT sum G = Σ δ hᵀ (nn.Linear view: d_out rows × d_in columns, row-major).
#[derive(Debug, Clone, PartialEq)]
pub struct FactSum {
    pub rows: usize,
    pub cols: usize,
    pub values: Vec<f64>,
}

impl Gop {
    /// Zero sums for every module of `cfg`.
    pub fn zeros(meta: GopMeta) -> Self {
        let table = meta.config.modules();
        let sums = table
            .iter()
            .map(|m| {
                let d = m.stored_dim();
                (m.gop_tensor(), (d, vec![0.0; d * d]))
            })
            .collect();
        let fact = if meta.fact {
            fact_modules(&table)
                .iter()
                .map(|m| {
                    let (rows, cols) = (m.d_out, m.d_in);
                    (fact_tensor(m), FactSum { rows, cols, values: vec![0.0; rows * cols] })
                })
                .collect()
        } else {
            BTreeMap::new()
        };
        Self { meta, sums, fact, device: BTreeMap::new() }
    }

    /// The size of the sums of one GOP file for `cfg` (f64, the stored side of every module,
    /// and with `fact` the weight gradients), without allocating them: what a measurement writes
    /// per file (the total, and each group file again).
    pub fn file_bytes(cfg: &ModelConfig, fact: bool) -> u64 {
        let table = cfg.modules();
        let sums: usize = table.iter().map(|m| m.stored_dim().pow(2)).sum();
        let g: usize = if fact { fact_modules(&table).iter().map(|m| m.d_out * m.d_in).sum() } else { 0 };
        8 * (sums + g) as u64
    }

    /// The stored sum for a module.
    pub fn get(&self, m: &Module) -> Result<&(usize, Vec<f64>)> {
        self.sums.get(&m.gop_tensor()).ok_or_else(|| bad!("GOP file has no tensor {}", m.gop_tensor()))
    }

    /// Add one backward pass's gradients (one layer's, as [`crate::model::Network::backward`]
    /// hands them over) with weight `scale`: for every window b of the batch, in order, the f32
    /// per-window Gram Gᵀ G (summed over the window's T positions) is added in f64. Windows are
    /// added one at a time, in batch order, so the result does not depend on how windows are
    /// grouped into batches.
    pub fn add(&mut self, grads: &[Grad], scale: f64) -> Result<()> {
        if let Some(g) = grads.first() {
            let t = match g {
                Grad::Module(_, t) => t,
                Grad::Packed { tensor, .. } => tensor,
            };
            if !t.device().is_cpu() {
                return self.add_batched(grads, scale);
            }
        }
        for g in grads {
            match g {
                Grad::Module(m, grad) => {
                    let (b, t, d) = grad.dims3()?;
                    let acc = self.acc(m, d)?;
                    with_f32(grad, |x| add_window_grams(acc, x, b, t, d, scale))?;
                }
                Grad::Packed { modules, width, tensor } => {
                    // Column blocks of width w read in place from (B, T, n·w).
                    let (b, t, cols) = tensor.dims3()?;
                    let w = *width;
                    if cols != modules.len() * w {
                        bail!("packed gradient of {cols} columns for {} modules of width {w}", modules.len());
                    }
                    let grams = with_f32(tensor, |x| head_grams(x, b, t, cols, w))?; // (B, n, w, w)
                    for (i, m) in modules.iter().enumerate() {
                        // Window b's block i sits at ((b·n + i)·w²).
                        add_windows(self.acc(m, w)?, &grams, b, cols * w, i * w * w, scale);
                    }
                }
            }
        }
        Ok(())
    }

    /// Add one FACT backward pass (one layer's modules, as
    /// [`crate::model::Network::backward_weights`] hands them over): for every window b of the
    /// batch, in order, the per-window product δ_bᵀ h_b (in the tensors' precision, f32 or f64)
    /// is added in f64.
    pub fn add_fact(&mut self, grads: &[WeightGrad]) -> Result<()> {
        if grads.first().is_some_and(|g| !g.delta.device().is_cpu()) {
            return self.add_fact_batched(grads);
        }
        for g in grads {
            let (b, t, dout, din) = self.fact_shape(g)?;
            let acc = &mut self.fact.get_mut(&fact_tensor(&g.module)).expect("checked").values;
            add_cross(acc, &g.delta.contiguous()?, &g.operand.contiguous()?, b, t, dout, din)?;
        }
        Ok(())
    }

    /// [`Gop::add_fact`] on a GPU (and a second code path on the CPU), as [`Gop::add_batched`]
    /// is for the Grams: δᵀh over all B·T rows of the batch as one GEMM, added in f64.
    pub fn add_fact_batched(&mut self, grads: &[WeightGrad]) -> Result<()> {
        use candle_core::DType;
        for g in grads {
            let (b, t, dout, din) = self.fact_shape(g)?;
            let delta = widened(g.delta)?.contiguous()?.reshape((b * t, dout))?;
            let operand = widened(g.operand)?.contiguous()?.reshape((b * t, din))?;
            let prod = full_f32(|| delta.t()?.matmul(&operand))?; // (d_out, d_in)
            self.add_device(fact_tensor(&g.module), prod.to_dtype(DType::F64)?)?;
        }
        Ok(())
    }

    /// (B, T, d_out, d_in) of a weight gradient, checked against its FACT sum.
    fn fact_shape(&self, g: &WeightGrad) -> Result<(usize, usize, usize, usize)> {
        let name = fact_tensor(&g.module);
        let (b, t, dout) = g.delta.dims3()?;
        let din = g.operand.dim(2)?;
        match self.fact.get(&name) {
            Some(f) if (f.rows, f.cols) == (dout, din) => Ok((b, t, dout, din)),
            Some(f) => bail!("weight gradient of {dout} × {din} for {name}, whose sum is {} × {}", f.rows, f.cols),
            None => bail!("no FACT sum {name} (measured without --fact?)"),
        }
    }

    /// [`Gop::add`] for gradients on a GPU (and, on the CPU, a second code path the tests compare
    /// with the window-by-window one): each module's Gram over the whole batch, Gᵀ G over all B·T
    /// rows, is one GEMM (f32 with TF32 off, or f64 for an f64 model), and the heads of a packed
    /// gradient are one batched GEMM over the heads; each is converted to f64 and added into the
    /// module's device sum. So a batch costs one d × d f64 addition per module instead of one per
    /// window. The f32 sums run over a batch, not a window: the result agrees with the CPU path's
    /// to f32 rounding, and on a GPU it depends on the batch size at that level.
    pub fn add_batched(&mut self, grads: &[Grad], scale: f64) -> Result<()> {
        use candle_core::DType;
        for g in grads {
            match g {
                Grad::Module(m, grad) => {
                    let (b, t, d) = grad.dims3()?;
                    self.acc(m, d)?; // checks the shape
                    let x = widened(grad)?.contiguous()?.reshape((b * t, d))?;
                    let gram = full_f32(|| x.t()?.matmul(&x))?; // (d, d)
                    self.add_device(m.gop_tensor(), (gram.to_dtype(DType::F64)? * scale)?)?;
                }
                Grad::Packed { modules, width, tensor } => {
                    let (b, t, cols) = tensor.dims3()?;
                    let (n, w) = (modules.len(), *width);
                    if cols != n * w {
                        bail!("packed gradient of {cols} columns for {n} modules of width {w}");
                    }
                    // (B·T, n, w) → (n, B·T, w); (n, w, B·T) · (n, B·T, w) = (n, w, w).
                    let x = widened(tensor)?.reshape((b * t, n, w))?.transpose(0, 1)?.contiguous()?;
                    let gram = full_f32(|| x.transpose(1, 2)?.matmul(&x))?;
                    let sums = (gram.to_dtype(DType::F64)? * scale)?;
                    for (i, m) in modules.iter().enumerate() {
                        self.acc(m, w)?;
                        self.add_device(m.gop_tensor(), sums.get(i)?)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Add an f64 device tensor into the device sum `name`.
    fn add_device(&mut self, name: String, sum: candle_core::Tensor) -> Result<()> {
        let next = match self.device.remove(&name) {
            Some(acc) => (acc + sum)?,
            None => sum,
        };
        self.device.insert(name, next);
        Ok(())
    }

    /// Copy the sums added on a GPU since the last call into the host sums (and FACT sums), and
    /// clear them there. Called before the sums are checked, saved or read.
    pub fn sync(&mut self) -> Result<()> {
        for (name, t) in std::mem::take(&mut self.device) {
            let v = t.flatten_all()?.to_vec1::<f64>()?;
            let acc = match (self.sums.get_mut(&name), self.fact.get_mut(&name)) {
                (Some((_, acc)), _) => acc,
                (None, Some(f)) => &mut f.values,
                _ => bail!("device sum {name} has no host sum"),
            };
            if acc.len() != v.len() {
                bail!("device sum {name} has {} values, its host sum {}", v.len(), acc.len());
            }
            acc.iter_mut().zip(&v).for_each(|(a, b)| *a += b);
        }
        Ok(())
    }

    /// The accumulator of module `m`, checked to be d × d.
    fn acc(&mut self, m: &Module, d: usize) -> Result<&mut [f64]> {
        let name = m.gop_tensor();
        match self.sums.get_mut(&name) {
            Some((dim, acc)) if *dim == d => Ok(acc),
            Some((dim, _)) => bail!("gradient of width {d} for {name}, whose sum is {dim} × {dim}"),
            None => bail!("no sum for {name}"),
        }
    }

    /// Add the sums of another measurement of other windows (a group or a shard), with its window
    /// and token counts. The caller checks that it was measured the same way.
    pub fn add_gop(&mut self, other: &Gop) {
        for (t, (_, v)) in self.sums.iter_mut() {
            if let Some((_, w)) = other.sums.get(t) {
                v.iter_mut().zip(w).for_each(|(a, b)| *a += b);
            }
        }
        for (t, f) in self.fact.iter_mut() {
            if let Some(o) = other.fact.get(t) {
                f.values.iter_mut().zip(&o.values).for_each(|(a, b)| *a += b);
            }
        }
        self.meta.n_windows += other.meta.n_windows;
        self.meta.n_tokens += other.meta.n_tokens;
        let mut r = self.meta.windows.clone();
        r.extend(other.meta.windows.iter().copied());
        self.meta.windows = normalize_ranges(r);
    }

    /// The name of the first stored sum holding a NaN or ±Inf, if any.
    pub fn first_non_finite(&self) -> Option<&str> {
        let bad = |v: &[f64]| v.iter().any(|x| !x.is_finite());
        let sums = self.sums.iter().find(|(_, (_, v))| bad(v)).map(|(n, _)| n.as_str());
        sums.or_else(|| self.fact.iter().find(|(_, f)| bad(&f.values)).map(|(n, _)| n.as_str()))
    }

    /// Write the file atomically (temporary name, then rename), tensor by tensor from the sums
    /// in memory: no second copy of the sums is made (4 GB for gpt2-xl).
    pub fn save(&self, path: &Path) -> Result<()> {
        let squares = self.sums.iter().map(|(n, (d, v))| (n, vec![*d, *d], v));
        let facts = self.fact.iter().map(|(n, f)| (n, vec![f.rows, f.cols], &f.values));
        let views: Vec<(String, TensorView)> = squares
            .chain(facts)
            .map(|(n, shape, v)| Ok((n.clone(), TensorView::new(Dtype::F64, shape, f64_bytes(v))?)))
            .collect::<Result<_>>()?;
        let mut meta = HashMap::new();
        meta.insert("agop".to_string(), serde_json::to_string(&self.meta)?);
        for (k, v) in serde_json::to_value(&self.meta)?.as_object().unwrap() {
            if k != "config" {
                meta.insert(k.clone(), v.as_str().map(String::from).unwrap_or_else(|| v.to_string()));
            }
        }
        crate::util::fs::write_atomic_path(path, |tmp| Ok(safetensors::serialize_to_file(views, Some(meta), tmp)?))
    }

    /// Read a GOP file written by [`Gop::save`] whole (see [`GopFile`] to read one module at a
    /// time).
    pub fn load(path: &Path) -> Result<Self> {
        let f = GopFile::open(path)?;
        let mut sums = BTreeMap::new();
        for m in f.meta.config.modules() {
            sums.insert(m.gop_tensor(), f.sum(&m)?);
        }
        let mut fact = BTreeMap::new();
        if f.meta.fact {
            for m in fact_modules(&f.meta.config.modules()) {
                fact.insert(fact_tensor(&m), f.fact(&m)?);
            }
        }
        Ok(Gop { meta: f.meta, sums, fact, device: BTreeMap::new() })
    }
}

impl GopMeta {
    /// The counts agree with each other, as measure and merge write them: the window ranges are
    /// non-empty, in order and disjoint (window indices are the tokens file's own, so they are not
    /// bounded by its window count); `n_windows` is their length
    /// and `n_tokens` that many windows of `seq_len`; a sketch has probes; a shard is `I/N`, I < N.
    fn check_counts(&self) -> std::result::Result<(), String> {
        let mut end = 0;
        for (k, &(s, e)) in self.windows.iter().enumerate() {
            if s >= e || (k > 0 && s < end) {
                return Err(format!("`windows` range {s}..{e} is empty, out of order or overlapping"));
            }
            end = e;
        }
        let n: u64 = self.windows.iter().map(|(s, e)| e - s).sum();
        if n != self.n_windows {
            return Err(format!("`n_windows` is {} but `windows` holds {n}", self.n_windows));
        }
        if Some(self.n_tokens) != self.n_windows.checked_mul(self.seq_len as u64) {
            return Err(format!(
                "`n_tokens` is {} but {} windows of `seq_len` {} are {}",
                self.n_tokens,
                self.n_windows,
                self.seq_len,
                self.n_windows as u128 * self.seq_len as u128
            ));
        }
        if self.estimator == Estimator::Sketch && self.probes == 0 {
            return Err("`probes` is 0 for the sketch estimator".into());
        }
        if !self.shard.is_empty() {
            let ok =
                self.shard.split_once('/').and_then(|(i, n)| Some((i.parse::<u64>().ok()?, n.parse::<u64>().ok()?)));
            if ok.is_none_or(|(i, n)| i >= n) {
                return Err(format!("`shard` {:?} is not I/N with I < N", self.shard));
            }
        }
        Ok(())
    }
}

/// A GOP file opened for reading one module's sum at a time, so that memory holds one module
/// (correlate streams a gpt2-xl file of 4 GB this way). The header and every module's tensor
/// (present, square f64 of the module's stored dimension) are checked when it is opened; the
/// values are checked to be finite when read.
pub struct GopFile {
    pub meta: GopMeta,
    file: TensorFile,
}

impl GopFile {
    pub fn open(path: &Path) -> Result<Self> {
        let name = path.display();
        let file = TensorFile::open(path).map_err(|e| e.context(format!("reading GOP file {name}")))?;
        let meta_json =
            file.metadata.get("agop").ok_or_else(|| bad!("{name}: not an agop GOP file (no `agop` metadata)"))?;
        let meta: GopMeta = serde_json::from_str(meta_json).map_err(|e| bad!("{name}: bad agop metadata: {e}"))?;
        meta.check_counts().map_err(|e| bad!("{name}: agop metadata: {e}; the file was edited or damaged"))?;
        for m in meta.config.modules() {
            let t = m.gop_tensor();
            let e = file.entries.get(&t).ok_or_else(|| bad!("{name}: GOP file has no tensor {t}"))?;
            let d = m.stored_dim();
            if e.dtype != "F64" || e.shape != [d, d] {
                bail_bad!("{name}: tensor {t} is {} {:?}, expected F64 [{d}, {d}]", e.dtype, e.shape);
            }
        }
        if meta.fact {
            for m in fact_modules(&meta.config.modules()) {
                let t = fact_tensor(&m);
                let e = file.entries.get(&t).ok_or_else(|| bad!("{name}: GOP file has no FACT tensor {t}"))?;
                let (r, c) = (m.d_out, m.d_in);
                if e.dtype != "F64" || e.shape != [r, c] {
                    bail_bad!("{name}: tensor {t} is {} {:?}, expected F64 [{r}, {c}]", e.dtype, e.shape);
                }
            }
        }
        Ok(Self { meta, file })
    }

    /// The FACT sum G of the whole module that holds module `m`'s ([`super::fact::fact_owner`]).
    pub fn fact(&self, m: &Module) -> Result<FactSum> {
        let name = self.file.path.display();
        if !self.meta.fact {
            bail_bad!("{name}: measured without --fact; it holds no FACT sums");
        }
        let t = fact_tensor(m);
        let values = self.file.read_f64(&t)?;
        if values.iter().any(|x| !x.is_finite()) {
            bail_bad!("{name}: tensor {t} holds NaN or infinite values; this GOP file cannot be used");
        }
        let table = self.meta.config.modules();
        let owner = crate::model::owner(&table, m);
        Ok(FactSum { rows: owner.d_out, cols: owner.d_in, values })
    }

    /// The stored sum of module `m`: (dim, row-major dim × dim values).
    pub fn sum(&self, m: &Module) -> Result<(usize, Vec<f64>)> {
        let t = m.gop_tensor();
        let v = self.file.read_f64(&t)?;
        if v.iter().any(|x| !x.is_finite()) {
            bail_bad!(
                "{}: tensor {t} holds NaN or infinite values; this GOP file cannot be used",
                self.file.path.display()
            );
        }
        Ok((m.stored_dim(), v))
    }
}

/// The little-endian bytes of f64 values, borrowed (safetensors stores little-endian).
fn f64_bytes(v: &[f64]) -> &[u8] {
    #[cfg(not(target_endian = "little"))]
    compile_error!("GOP files are written from memory as little-endian f64");
    // SAFETY: f64 has no padding and u8 has alignment 1; the slice covers exactly v's bytes.
    unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, std::mem::size_of_val(v)) }
}

/// Square blocks of this size make up the per-window Grams; only blocks on and below the
/// diagonal are multiplied.
const GRAM_BLOCK: usize = 128;

/// acc (d × d, f64) += scale · G_bᵀ G_b for every window b of gradients G (B, T, d), in batch
/// order. Each window's Gram is formed in f32, square block by block (one single-threaded GEMM
/// over the window's T positions per block), and added to the block's f64 sum at once. The
/// product is symmetric, so only the blocks on and below the diagonal go through the GEMM (21 of
/// 36 for d = 768) and are added to (row by row, contiguous); the upper triangle then takes the
/// lower one's values, once per call. A symmetric `acc` (zeros, or a sum this wrote) gets bit for
/// bit what adding each value to both its places would give; one that is not (a GPU's sum
/// resumed on the CPU) ends with its upper triangle equal to its lower. What a window adds does
/// not depend on its batch or the thread count, and no (B, d, d) Grams are ever held.
pub fn add_window_grams(acc: &mut [f64], g: &[f32], b: usize, t: usize, d: usize, scale: f64) {
    assert_eq!(acc.len(), d * d, "Gram sum of the wrong size");
    let nb = d.div_ceil(GRAM_BLOCK);
    let pairs: Vec<(usize, usize)> = (0..nb).flat_map(|i| (0..=i).map(move |j| (i, j))).collect();
    let dst = SyncPtr(acc.as_mut_ptr());
    let extent = |bi: usize, bj: usize| {
        let (i0, j0) = (bi * GRAM_BLOCK, bj * GRAM_BLOCK);
        (i0, j0, GRAM_BLOCK.min(d - i0), GRAM_BLOCK.min(d - j0))
    };
    pairs.par_iter().for_each(|&(bi, bj)| {
        let (i0, j0, mi, nj) = extent(bi, bj);
        let mut block = vec![0f32; mi * nj];
        for w in 0..b {
            let x = &g[w * t * d..(w + 1) * t * d];
            let a = View::new(x[i0..].as_ptr(), 1, d); // (mi × T): columns i0.. of G, transposed
            let bv = View::new(x[j0..].as_ptr(), d, 1); // (T × nj): columns j0.. of G

            // SAFETY: the views address window w's T rows; `block` is mi × nj.
            unsafe { gemm_into(mi, nj, t, block.as_mut_ptr(), nj, a, bv, 1.0) };
            for r in 0..mi {
                // A diagonal block's lower triangle stands for both halves.
                let cols = if bi == bj { r + 1 } else { nj };
                // SAFETY: row i0 + r, columns j0.. j0 + cols lie in block (bi, bj) on or below the
                // diagonal, which task (bi, bj) alone touches in this loop.
                let row = unsafe { std::slice::from_raw_parts_mut(dst.at((i0 + r) * d + j0), cols) };
                for (s, &v) in row.iter_mut().zip(&block[r * nj..r * nj + cols]) {
                    *s += scale * v as f64;
                }
            }
        }
    });
    // The mirror: task (bi, bj) copies block (bi, bj)'s entries below the diagonal into their
    // places above it (block (bj, bi)); no task writes what another reads.
    pairs.into_par_iter().for_each(|(bi, bj)| {
        let (i0, j0, mi, nj) = extent(bi, bj);
        for r in 0..mi {
            let cols = if bi == bj { r } else { nj };
            for c in 0..cols {
                // SAFETY: both indices lie inside the d × d sum.
                unsafe { *dst.at((j0 + c) * d + i0 + r) = *dst.at((i0 + r) * d + j0 + c) };
            }
        }
    });
}

/// Per-window Grams of the (T × hs) column blocks of a packed (B, T, n·hs) gradient (per-head
/// q, k, v: [Q | K | V]): (B, n, hs, hs), block (w, p) = Xᵀ X for columns p·hs..(p+1)·hs of window w.
pub fn head_grams(g: &[f32], b: usize, t: usize, c3: usize, hs: usize) -> Vec<f32> {
    let parts = c3 / hs;
    let mut out = vec![0f32; b * parts * hs * hs];
    out.par_chunks_mut(hs * hs).enumerate().for_each(|(i, o)| {
        let (w, p) = (i / parts, i % parts);
        let x = &g[w * t * c3 + p * hs..];
        // SAFETY: o is hs × hs; the views address T × hs inside window w.
        unsafe {
            gemm_into(hs, hs, t, o.as_mut_ptr(), hs, View::new(x.as_ptr(), 1, c3), View::new(x.as_ptr(), c3, 1), 1.0)
        };
    });
    out
}

/// acc[i] += scale · grams[w·stride + offset + i] for every window w in order, in f64. Parallel over
/// the entries of `acc`; each entry adds its windows in the same order, so the result does not
/// depend on the thread count.
fn add_windows<T: Copy + Into<f64> + Sync>(
    acc: &mut [f64],
    grams: &[T],
    windows: usize,
    stride: usize,
    offset: usize,
    scale: f64,
) {
    const CHUNK: usize = 1 << 14;
    acc.par_chunks_mut(CHUNK).enumerate().for_each(|(c, a)| {
        let start = offset + c * CHUNK;
        for w in 0..windows {
            let g = &grams[w * stride + start..w * stride + start + a.len()];
            for (x, y) in a.iter_mut().zip(g) {
                *x += scale * (*y).into();
            }
        }
    });
}

/// The values of a contiguous F32 tensor in host memory, borrowed for `f`. This is the CPU
/// accumulation path; a device accumulator would add per-window Grams where the tensor lives.
fn with_f32<R>(t: &candle_core::Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    let (s, l) = t.storage_and_layout();
    match (&*s, l.contiguous_offsets()) {
        (candle_core::Storage::Cpu(candle_core::CpuStorage::F32(v)), Some((a, b))) => Ok(f(&v[a..b])),
        _ => bail!("expected a contiguous F32 tensor in host memory, got {:?} on {:?}", t.dtype(), t.device()),
    }
}

/// [`add_window_cross`] of contiguous host tensors δ (B, T, d_out) and h (B, T, d_in), in the
/// precision the model computed in (f32, or f64 for the finite-difference tests).
fn add_cross(
    acc: &mut [f64],
    delta: &candle_core::Tensor,
    h: &candle_core::Tensor,
    b: usize,
    t: usize,
    dout: usize,
    din: usize,
) -> Result<()> {
    use candle_core::{CpuStorage, Storage};
    let (sd, ld) = delta.storage_and_layout();
    let (sh, lh) = h.storage_and_layout();
    let (Some((d0, d1)), Some((h0, h1))) = (ld.contiguous_offsets(), lh.contiguous_offsets()) else {
        bail!("FACT sums: expected contiguous tensors");
    };
    match (&*sd, &*sh) {
        (Storage::Cpu(CpuStorage::F32(d)), Storage::Cpu(CpuStorage::F32(x))) => {
            add_window_cross(acc, &d[d0..d1], &x[h0..h1], b, t, dout, din)
        }
        (Storage::Cpu(CpuStorage::F64(d)), Storage::Cpu(CpuStorage::F64(x))) => {
            add_window_cross(acc, &d[d0..d1], &x[h0..h1], b, t, dout, din)
        }
        _ => bail!(
            "FACT sums: expected F32 or F64 tensors in host memory, got {:?} on {:?}",
            delta.dtype(),
            delta.device()
        ),
    }
    Ok(())
}

/// Sorted, merged half-open ranges from a list of window indices.
pub fn ranges_of(mut idx: Vec<u64>) -> Vec<(u64, u64)> {
    idx.sort_unstable();
    idx.dedup();
    normalize_ranges(idx.into_iter().map(|i| (i, i + 1)).collect())
}

/// Merge ranges (already non-overlapping) into canonical form.
pub fn normalize_ranges(mut r: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    r.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (s, e) in r {
        match out.last_mut() {
            Some((_, pe)) if *pe == s => *pe = e,
            _ => out.push((s, e)),
        }
    }
    out
}

/// The settings two GOP files differ in, as `field: a vs b` (empty when they can be merged).
pub fn differences(a: &GopMeta, b: &GopMeta) -> Vec<String> {
    let mut out = Vec::new();
    if a.model_sha256 != b.model_sha256 {
        out.push(format!(
            "weights sha256 {} ({}@{}) vs {} ({}@{})",
            short(&a.model_sha256),
            a.model,
            a.revision,
            short(&b.model_sha256),
            b.model,
            b.revision
        ));
    }
    let mut field = |name: &str, x: String, y: String| {
        if x != y {
            out.push(format!("{name} {x} vs {y}"));
        }
    };
    field("weights", a.weights.to_string(), b.weights.to_string());
    field("output", a.output.to_string(), b.output.to_string());
    field("estimator", a.estimator.to_string(), b.estimator.to_string());
    field("probes", a.probes.to_string(), b.probes.to_string());
    field("seed", a.seed.to_string(), b.seed.to_string());
    field("seq_len", a.seq_len.to_string(), b.seq_len.to_string());
    field("tokens sha256", short(&a.tokens_sha256).into(), short(&b.tokens_sha256).into());
    field("total windows", a.total_windows.to_string(), b.total_windows.to_string());
    field("groups", a.groups.to_string(), b.groups.to_string());
    field("fact", a.fact.to_string(), b.fact.to_string());
    field("precision", a.precision.to_string(), b.precision.to_string());
    if a.config != b.config {
        out.push("model config differs".into());
    }
    out
}

fn short(sha: &str) -> &str {
    &sha[..sha.len().min(12)]
}

/// `0..10, 20..25` style text for ranges.
pub fn format_ranges(r: &[(u64, u64)]) -> String {
    r.iter().map(|(s, e)| format!("{s}..{e}")).collect::<Vec<_>>().join(", ")
}

/// A gradient in the precision its products are taken in: f32 or f64 as it is, a 16-bit one
/// (`--precision bf16`) widened to f32.
fn widened(t: &candle_core::Tensor) -> Result<candle_core::Tensor> {
    use candle_core::DType;
    Ok(match t.dtype() {
        DType::F32 | DType::F64 => t.clone(),
        _ => t.to_dtype(DType::F32)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Blocked, mirrored Grams against a direct f64 sum, for a width that is not a multiple of the
    /// block size; and exact symmetry.
    #[test]
    fn window_grams_match_direct_sums() {
        let (b, t, d) = (2, 7, 2 * GRAM_BLOCK + 44);
        let g: Vec<f32> = (0..b * t * d).map(|i| ((i * 7919 % 1013) as f32 / 1013.0) - 0.5).collect();
        let mut grams = vec![0.0; d * d];
        add_window_grams(&mut grams, &g, b, t, d, 0.5);
        let mut worst = 0f64;
        for i in 0..d {
            for j in 0..d {
                let want: f64 = 0.5 * (0..b * t).map(|s| g[s * d + i] as f64 * g[s * d + j] as f64).sum::<f64>();
                let got = grams[i * d + j];
                worst = worst.max((got - want).abs());
                assert_eq!(got, grams[j * d + i], "not symmetric at ({i}, {j})");
            }
        }
        assert!(worst < 1e-5, "worst error {worst}");
        // Bit for bit what adding each f32 value to both its places in f64 gives, from a symmetric
        // start that is not zero.
        let mut want = grams.clone();
        add_window_grams(&mut grams, &g, b, t, d, 0.25);
        for w in 0..b {
            let x = &g[w * t * d..(w + 1) * t * d];
            for (bi, bj) in (0..d.div_ceil(GRAM_BLOCK)).flat_map(|i| (0..=i).map(move |j| (i, j))) {
                let (i0, j0) = (bi * GRAM_BLOCK, bj * GRAM_BLOCK);
                let (mi, nj) = (GRAM_BLOCK.min(d - i0), GRAM_BLOCK.min(d - j0));
                let mut block = vec![0f32; mi * nj];
                // SAFETY: as in add_window_grams.
                unsafe {
                    gemm_into(
                        mi,
                        nj,
                        t,
                        block.as_mut_ptr(),
                        nj,
                        View::new(x[i0..].as_ptr(), 1, d),
                        View::new(x[j0..].as_ptr(), d, 1),
                        1.0,
                    )
                };
                for r in 0..mi {
                    for c in 0..if bi == bj { r + 1 } else { nj } {
                        let v = 0.25 * block[r * nj + c] as f64;
                        want[(i0 + r) * d + j0 + c] += v;
                        if bi != bj || c != r {
                            want[(j0 + c) * d + i0 + r] += v;
                        }
                    }
                }
            }
        }
        assert!(grams.iter().zip(&want).all(|(x, y)| x.to_bits() == y.to_bits()), "not the mirrored sums' bits");
        // Per-head blocks of a packed (B, T, 3·2·hs) gradient.
        let (hs, c3) = (8, 48);
        let g: Vec<f32> = (0..b * t * c3).map(|i| ((i * 31 % 97) as f32 / 97.0) - 0.5).collect();
        let hg = head_grams(&g, b, t, c3, hs);
        for w in 0..b {
            for p in 0..c3 / hs {
                for i in 0..hs {
                    for j in 0..hs {
                        let want: f64 = (0..t)
                            .map(|s| g[(w * t + s) * c3 + p * hs + i] as f64 * g[(w * t + s) * c3 + p * hs + j] as f64)
                            .sum();
                        let got = hg[((w * (c3 / hs) + p) * hs + i) * hs + j] as f64;
                        assert!((got - want).abs() < 1e-5, "head block {p} ({i}, {j}): {got} vs {want}");
                    }
                }
            }
        }
    }
}
