//! The NFA side: per module, the NFM WᵀW against AGOP^α from a GOP file (Pearson and cosine),
//! into `correlations.parquet`; optionally the mean AGOPs themselves (`--agop-out`).

pub mod contrasts;
pub mod fact;
pub mod gram;
pub mod jackknife;
pub mod metrics;
pub mod spectral;
pub mod sums;
pub mod table;

use std::path::{Path, PathBuf};

use anyhow::Result;
use candle_core::Device;

pub use metrics::{correlate, correlate_module, correlate_module_dense, cosine, pearson, Correlation};
pub use sums::RunSums;
pub use table::RunInfo;

use crate::bail_bad;
use crate::fetch::ResolvedModel;
use crate::math::linalg;
use crate::measure::gop::GopMeta;
use crate::model::{self, Model, ModuleWeights, WeightsKind};
use crate::util::write_atomic;

/// Load the weights a GOP file was measured with (pretrained from `dir`, or random-init from
/// the file's seed), checking that they are the ones the file records: the same config, and for
/// pretrained weights the same sha256 (unless `force`).
pub fn model_for_gop(resolved: &ResolvedModel, meta: &GopMeta, force: bool) -> Result<Model> {
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
    /// Correlations tables of earlier correlate runs whose rows are appended to the output
    /// (checkpoints of a series correlated before their weights were deleted); with any, no
    /// contrasts are written (more than one pretrained run).
    pub extra_tables: Vec<PathBuf>,
}

impl CorrelateOptions {
    pub fn new(powers: &[f64]) -> Self {
        Self { powers: powers.to_vec(), agop_out: None, force: false, extra_tables: vec![] }
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
    /// Warnings the report repeats (identical checkpoints of a series).
    pub warnings: Vec<String>,
}

/// One GOP file to correlate, with the model it was measured on and, in a checkpoint series,
/// the checkpoint's training step.
#[derive(Debug, Clone)]
pub struct Source {
    pub model: ResolvedModel,
    pub gop: PathBuf,
    pub step: Option<u64>,
}

/// `agop correlate`: correlations of every module for each run (e.g. pretrained and
/// random-init), in one table written to `out`, each with its jackknife interval when the run
/// has window groups ([`sums`]); the pretrained − random-init differences in
/// [`contrasts_path`]`(out)` when both are there; optionally the mean AGOPs.
pub fn correlate_files(
    resolved: &ResolvedModel,
    gop_paths: &[PathBuf],
    out: &Path,
    opts: &CorrelateOptions,
    ctx: &RunContext,
) -> Result<polars::prelude::DataFrame> {
    let sources: Vec<Source> =
        gop_paths.iter().map(|p| Source { model: resolved.clone(), gop: p.clone(), step: None }).collect();
    correlate_sources(&sources, None, out, opts, ctx)
}

/// [`correlate_files`] for GOP files measured on different checkpoints (a series): each file
/// is correlated with its own model and recorded with its step; with `base` (the series' first
/// checkpoint), every pretrained run also gets `delta-gram` rows (ΔNFM = WₜᵀWₜ − W₀ᵀW₀ against
/// its AGOP^α).
pub fn correlate_sources(
    sources: &[Source],
    base: Option<&ResolvedModel>,
    out: &Path,
    opts: &CorrelateOptions,
    ctx: &RunContext,
) -> Result<polars::prelude::DataFrame> {
    let (powers, agop_out) = (&opts.powers[..], opts.agop_out.as_deref());
    let mut inputs: Vec<PathBuf> = sources.iter().map(|s| s.gop.clone()).collect();
    inputs.extend(sources.iter().map(|s| crate::measure::groups::groups_dir(&s.gop)));
    for m in sources.iter().map(|s| &s.model).chain(base) {
        inputs.extend(m.protected_files());
    }
    crate::util::fs::check_output(out, "--out", &inputs)?;
    if let Some(a) = agop_out {
        // Nor may it be one of this command's other outputs.
        inputs.extend([out.to_path_buf(), contrasts_path(out)]);
        crate::util::fs::check_output(a, "--agop-out", &inputs)?;
    }
    if powers.is_empty() || powers.iter().any(|p| !p.is_finite() || *p <= 0.0) {
        bail_bad!("--powers must be positive numbers, got {powers:?}");
    }
    if let Some(p) = repeated(powers) {
        bail_bad!("--powers lists {p} twice (each power's rows would appear twice in the table)");
    }
    let sums = open_runs(sources)?;
    let files_of = |r: &RunSums| r.paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ");
    let step_of = |r: &RunSums| sources.iter().find(|s| s.gop == r.paths[0]).and_then(|s| s.step);
    for (i, a) in sums.iter().enumerate() {
        // Two runs of one weights setting of one checkpoint (FACT and not, other probe seeds)
        // would give duplicate keys that no column tells apart; random inits of other seeds are
        // other weights (the control's init seeds, told apart by the `seed` column).
        if let Some(b) = sums[..i].iter().find(|b| {
            b.meta.weights == a.meta.weights
                && b.meta.model_sha256 == a.meta.model_sha256
                && step_of(b) == step_of(a)
                && (a.meta.weights == WeightsKind::Pretrained || a.meta.seed == b.meta.seed)
        }) {
            bail_bad!(
                "{} and {} are two different {} measurements of the same weights ({}); correlate one measurement \
                 (one file, or the shards of one) per weights setting",
                files_of(b),
                files_of(a),
                a.meta.weights,
                crate::measure::gop::differences(&b.meta, &a.meta).join("; ")
            );
        }
        if a.meta.n_windows < a.meta.total_windows {
            eprintln!(
                "warning: {} cover {} of the {} windows of their tokens file; the correlations describe those only \
                 (give every shard to describe them all)",
                files_of(a),
                a.meta.n_windows,
                a.meta.total_windows
            );
        }
    }
    let base_model = match base {
        Some(b) => Some(model::load_model(&b.dir, &b.config()?, WeightsKind::Pretrained, 0, &Device::Cpu)?),
        None => None,
    };
    let mut runs = Vec::new();
    let mut agops = Vec::new();
    let mut seed = 0;
    for run in &sums {
        let source = sources.iter().find(|s| s.gop == run.paths[0]).expect("every run comes from a source");
        let files = run.paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ");
        if run.meta.n_windows == 0 || run.meta.n_tokens == 0 {
            bail_bad!("{files}: holds no measured windows (an empty shard?); there is nothing to correlate");
        }
        let model =
            model_for_gop(&source.model, &run.meta, opts.force).map_err(|e| e.context(format!("with {files}")))?;
        let prefix = if sums.len() > 1 { format!("{}/", run.meta.weights) } else { String::new() };
        let delta_base = base_model.as_ref().filter(|_| run.meta.weights == WeightsKind::Pretrained);
        let mut rows = Vec::new();
        for m in model.modules() {
            // Read once: the correlations and the --agop-out matrix use the same sum.
            let total = run.total(&m)?;
            let delta_base = delta_base.map(|b| b as &dyn ModuleWeights);
            rows.extend(metrics::correlate_module_grouped(&model, delta_base, &m, run, &total, powers)?);
            if agop_out.is_some() {
                let (d, v, n) = total;
                let w = gram::weight(&model, &m)?;
                let a = gram::agop_mean(&(d, v), n, &m, &w).dense();
                agops.push((format!("{prefix}{}", m.name()), a.nrows(), linalg::to_row_major(&a)));
            }
        }
        if run.meta.fact {
            rows.extend(fact::correlate_fact(&model, run).map_err(|e| e.context(format!("FACT rows of {files}")))?);
        }
        let info = RunInfo::new(&run.meta, &ctx.pipeline, &ctx.corpus, source.step);
        if run.meta.weights == WeightsKind::Pretrained || runs.is_empty() {
            seed = run.meta.seed;
        }
        runs.push((info, rows));
    }
    let mut df = table::correlations_frame(&runs)?;
    for extra in &opts.extra_tables {
        let mut more = crate::util::parquet::read_parquet(extra)?;
        if more.column("seed").is_err() {
            // Rows kept by an agop from before the `seed` column: its value is the file's `seed`.
            let meta = crate::util::parquet::parquet_metadata(extra)?;
            let s = meta.iter().find(|(k, _)| k == "seed").and_then(|(_, v)| v.parse::<u64>().ok()).unwrap_or(0);
            let n = more.height();
            more.with_column(polars::prelude::Column::new("seed".into(), vec![s; n]))?;
        }
        if more.column("role").is_err() {
            // Likewise `role`, from the module names.
            let roles: Vec<Option<&str>> = more
                .column("module")?
                .str()?
                .iter()
                .map(|m| crate::model::Kind::ALL.iter().find(|k| Some(k.as_str()) == m).map(|k| k.role().as_str()))
                .collect();
            more.with_column(polars::prelude::Column::new("role".into(), roles))?;
        }
        df.vstack_mut(&more)
            .map_err(|e| crate::bad!("{}: not a correlations table like this one: {e}", extra.display()))?;
    }
    // The contrasts table first: the correlations table, written last, is what marks the run
    // done (a pipeline checks its `inputs` key), so a run stopped between the two writes is
    // done again, never reported with contrasts of an earlier run.
    let cpath = contrasts_path(out);
    let metas = sums.iter().map(|s| serde_json::to_string(&s.meta)).collect::<std::result::Result<Vec<_>, _>>()?;
    let measured = crate::util::fingerprint(&metas.iter().map(String::as_str).collect::<Vec<_>>());
    let contrasts = if opts.extra_tables.is_empty() { contrasts::contrasts(&sums, &runs)? } else { None };
    match contrasts {
        Some((rows, init_seeds)) => {
            let mut cdf = table::contrasts_frame(&rows, init_seeds)?;
            table::write_correlations(&cpath, &mut cdf, &ctx.text, seed, &ctx.inputs, &measured, &ctx.warnings)?;
        }
        // A contrasts file from an earlier run would no longer describe these correlations.
        None => {
            if cpath.is_file() {
                std::fs::remove_file(&cpath)?;
            }
        }
    }
    table::write_correlations(out, &mut df, &ctx.text, seed, &ctx.inputs, &measured, &ctx.warnings)?;
    if let Some(p) = agop_out {
        write_f32_matrices(p, &agops)?;
    }
    Ok(df)
}

/// The GOP files of `sources` read as runs ([`RunSums`]), in the order of their first file.
/// Files of different checkpoints are different runs even when their measurements agree in
/// everything (byte-identical weights at two steps): parts are grouped step by step.
pub fn open_runs(sources: &[Source]) -> Result<Vec<RunSums>> {
    let mut steps: Vec<Option<u64>> = Vec::new();
    for s in sources {
        if !steps.contains(&s.step) {
            steps.push(s.step);
        }
    }
    let mut sums = Vec::new();
    for step in steps {
        let paths: Vec<PathBuf> = sources.iter().filter(|s| s.step == step).map(|s| s.gop.clone()).collect();
        sums.extend(RunSums::open_all(&paths)?);
    }
    Ok(sums)
}

/// The first value that appears again in `values`.
pub fn repeated(values: &[f64]) -> Option<f64> {
    values.iter().enumerate().find(|(i, v)| values[..*i].contains(v)).map(|(_, v)| *v)
}

/// Where correlate writes the contrasts of `out`: `contrasts.parquet` beside a
/// `correlations.parquet`, else `<stem>.contrasts.parquet`.
pub fn contrasts_path(out: &Path) -> PathBuf {
    if out.file_name().is_some_and(|n| n == "correlations.parquet") {
        out.with_file_name("contrasts.parquet")
    } else {
        out.with_extension("contrasts.parquet")
    }
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
