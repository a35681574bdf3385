//! The NFA side: per module, the NFM WᵀW against AGOP^α from a GOP file (Pearson and cosine),
//! into `correlations.parquet`; optionally the mean AGOPs themselves (`--agop-out`).

pub mod gram;
pub mod metrics;
pub mod spectral;
pub mod table;

use std::path::{Path, PathBuf};

use anyhow::Result;
use candle_core::Device;

pub use metrics::{correlate, correlate_module, correlate_module_dense, cosine, pearson, Correlation};
pub use table::RunInfo;

use crate::bail_bad;
use crate::fetch::ResolvedModel;
use crate::math::linalg;
use crate::measure::gop::{GopFile, GopMeta};
use crate::model::{self, all_modules, Gpt2, WeightsKind};
use crate::util::write_atomic;

/// Load the weights a GOP file was measured with (pretrained from `dir`, or random-init from
/// the file's seed), checking that they are the ones the file records: the same config, and for
/// pretrained weights the same sha256 (unless `force`).
pub fn model_for_gop(resolved: &ResolvedModel, meta: &GopMeta, force: bool) -> Result<Gpt2> {
    let cfg = resolved.config()?;
    if cfg != meta.config {
        bail_bad!("the GOP file was measured on a model with a different config than {}", resolved.id);
    }
    if meta.weights == WeightsKind::Pretrained && !force {
        let sha = resolved.weights_sha256()?;
        if sha != meta.model_sha256 {
            bail_bad!(
                "the GOP file was measured on weights with sha256 {} ({}@{}), but --model {} has weights with \
                 sha256 {sha}: these are different weights, and correlating them would describe neither. Give \
                 the model the file was measured on (--force correlates anyway)",
                meta.model_sha256,
                meta.model,
                meta.revision,
                resolved.id
            );
        }
    }
    model::load_model(&resolved.dir, &cfg, meta.weights, meta.seed, &Device::Cpu)
}

/// What `correlate` computes beyond the model and GOP files.
#[derive(Debug, Clone)]
pub struct CorrelateOptions {
    /// Powers α of AGOP^α.
    pub powers: Vec<f64>,
    /// Also write the operand-space mean AGOPs here.
    pub agop_out: Option<PathBuf>,
    /// Correlate even when the model's weights are not those the GOP file was measured on.
    pub force: bool,
}

impl CorrelateOptions {
    pub fn new(powers: &[f64]) -> Self {
        Self { powers: powers.to_vec(), agop_out: None, force: false }
    }
}

/// Run-level context recorded in correlations.parquet (empty outside a pipeline).
#[derive(Debug, Clone, Default)]
pub struct RunContext {
    pub pipeline: String,
    pub corpus: String,
    /// The pipeline file's text.
    pub text: String,
    /// Fingerprint of the inputs (used by `agop run` to skip finished stages).
    pub inputs: String,
}

/// `agop correlate`: correlations of every module for each GOP file (e.g. pretrained and
/// random-init), in one table written to `out`; optionally the mean AGOPs.
pub fn correlate_files(
    resolved: &ResolvedModel,
    gop_paths: &[PathBuf],
    out: &Path,
    opts: &CorrelateOptions,
    ctx: &RunContext,
) -> Result<polars::prelude::DataFrame> {
    let (powers, agop_out) = (&opts.powers[..], opts.agop_out.as_deref());
    if powers.is_empty() || powers.iter().any(|p| !p.is_finite() || *p <= 0.0) {
        bail_bad!("--powers must be positive numbers, got {powers:?}");
    }
    let mut runs = Vec::new();
    let mut agops = Vec::new();
    let mut seed = 0;
    for path in gop_paths {
        // One module's sum in memory at a time.
        let gop = GopFile::open(path)?;
        if gop.meta.n_windows == 0 || gop.meta.n_tokens == 0 {
            bail_bad!("{}: holds no measured windows (an empty shard?); there is nothing to correlate", path.display());
        }
        let model = model_for_gop(resolved, &gop.meta, opts.force)
            .map_err(|e| e.context(format!("with {}", path.display())))?;
        let prefix = if gop_paths.len() > 1 { format!("{}/", gop.meta.weights) } else { String::new() };
        let mut rows = Vec::new();
        for m in all_modules(&model.cfg) {
            let sum = gop.sum(&m)?;
            rows.extend(metrics::correlate_module(&model, &m, &sum, gop.meta.n_tokens, powers)?);
            if agop_out.is_some() {
                let w = gram::weight(&model, &m)?;
                let a = gram::agop_mean(&sum, gop.meta.n_tokens, &m, &w).dense();
                agops.push((format!("{prefix}{}", m.name()), a.nrows(), linalg::to_row_major(&a)));
            }
        }
        let info = RunInfo {
            pipeline: ctx.pipeline.clone(),
            model: gop.meta.model.clone(),
            revision: gop.meta.revision.clone(),
            weights: gop.meta.weights,
            corpus: ctx.corpus.clone(),
            n_tokens: gop.meta.n_tokens,
            output: gop.meta.output,
            estimator: gop.meta.estimator,
            probes: gop.meta.probes,
        };
        seed = gop.meta.seed;
        runs.push((info, rows));
    }
    let mut df = table::correlations_frame(&runs)?;
    table::write_correlations(out, &mut df, &ctx.text, seed, &ctx.inputs)?;
    if let Some(p) = agop_out {
        write_f32_matrices(p, &agops)?;
    }
    Ok(df)
}

/// `--agop-out`: square matrices as F32 safetensors, written atomically.
pub fn write_f32_matrices(path: &Path, mats: &[(String, usize, Vec<f64>)]) -> Result<()> {
    let bufs: Vec<(String, usize, Vec<u8>)> = mats
        .iter()
        .map(|(n, d, v)| (n.clone(), *d, v.iter().flat_map(|x| (*x as f32).to_le_bytes()).collect()))
        .collect();
    let views = bufs
        .iter()
        .map(|(n, d, b)| {
            Ok((n.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![*d, *d], b)?))
        })
        .collect::<Result<Vec<_>>>()?;
    let data = safetensors::serialize(views, None)?;
    write_atomic(path, &data)
}
