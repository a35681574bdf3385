//! The NFA side: per module, the NFM WᵀW against AGOP^α from a GOP file (Pearson and cosine),
//! into `correlations.parquet`; optionally the mean AGOPs themselves (`--agop-out`).

pub mod gram;
pub mod metrics;
pub mod table;

use std::path::{Path, PathBuf};

use anyhow::Result;
use candle_core::Device;

pub use metrics::{correlate, correlate_module, cosine, pearson, Correlation};
pub use table::RunInfo;

use crate::bail_bad;
use crate::fetch::ResolvedModel;
use crate::math::linalg;
use crate::measure::Gop;
use crate::model::{self, all_modules, Gpt2};
use crate::util::write_atomic;

/// Load the weights a GOP file was measured with (pretrained from `dir`, or random-init from
/// the file's seed), checking that the config matches.
pub fn model_for_gop(resolved: &ResolvedModel, gop: &Gop) -> Result<Gpt2> {
    let cfg = resolved.config()?;
    if cfg != gop.meta.config {
        bail_bad!("the GOP file was measured on a model with a different config than {}", resolved.id);
    }
    model::load_model(&resolved.dir, &cfg, gop.meta.weights, gop.meta.seed, &Device::Cpu)
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
    powers: &[f64],
    agop_out: Option<&Path>,
    ctx: &RunContext,
) -> Result<polars::prelude::DataFrame> {
    if powers.is_empty() || powers.iter().any(|p| !p.is_finite() || *p <= 0.0) {
        bail_bad!("--powers must be positive numbers, got {powers:?}");
    }
    let mut runs = Vec::new();
    let mut agops = Vec::new();
    let mut seed = 0;
    for path in gop_paths {
        let gop = Gop::load(path)?;
        let model = model_for_gop(resolved, &gop).map_err(|e| e.context(format!("with {}", path.display())))?;
        let rows = metrics::correlate(&model, &gop, powers)?;
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
        if agop_out.is_some() {
            let prefix = if gop_paths.len() > 1 { format!("{}/", gop.meta.weights) } else { String::new() };
            agops.extend(mean_agops(&model, &gop, &prefix)?);
        }
        runs.push((info, rows));
    }
    let mut df = table::correlations_frame(&runs)?;
    table::write_correlations(out, &mut df, &ctx.text, seed, &ctx.inputs)?;
    if let Some(p) = agop_out {
        write_f32_matrices(p, &agops)?;
    }
    Ok(df)
}

/// The operand-space mean AGOP of every module, named `{prefix}{module name}`.
pub fn mean_agops(model: &Gpt2, gop: &Gop, prefix: &str) -> Result<Vec<(String, usize, Vec<f64>)>> {
    all_modules(&model.cfg)
        .iter()
        .map(|m| {
            let w = gram::weight(model, m)?;
            let a = gram::agop_mean(gop, m, &w)?.dense();
            Ok((format!("{prefix}{}", m.name()), a.nrows(), linalg::to_row_major(&a)))
        })
        .collect()
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
