//! `correlations.parquet` (docs/reference.md §5): one row per (run, module, power, metric).

use std::path::Path;

use anyhow::Result;
use polars::prelude::*;

use super::metrics::Correlation;
use crate::measure::{Estimator, GopMeta, Output};
use crate::model::WeightsKind;
use crate::util::parquet::write_parquet;

/// Run-level columns of correlations.parquet.
#[derive(Debug, Clone)]
pub struct RunInfo {
    pub pipeline: String,
    pub model: String,
    pub revision: String,
    pub weights: WeightsKind,
    pub corpus: String,
    pub n_tokens: u64,
    pub output: Output,
    pub estimator: Estimator,
    pub probes: u32,
    /// Training step of a checkpoint in a series (docs/reference.md §8); None otherwise.
    pub step: Option<u64>,
    /// The measurement's seed: the random init's for random-init weights (one run per init
    /// seed with `[measure] init_seeds`), the probes' for both.
    pub seed: u64,
}

impl RunInfo {
    /// The run-level columns of a measurement `meta` of `pipeline` on `corpus`, a checkpoint at
    /// `step` of a series or None.
    pub fn new(meta: &GopMeta, pipeline: &str, corpus: &str, step: Option<u64>) -> Self {
        Self {
            pipeline: pipeline.into(),
            model: meta.model.clone(),
            revision: meta.revision.clone(),
            weights: meta.weights,
            corpus: corpus.into(),
            n_tokens: meta.n_tokens,
            output: meta.output,
            estimator: meta.estimator,
            probes: meta.probes,
            step,
            seed: meta.seed,
        }
    }
}

/// The rows of one run: its run-level columns and its correlations.
pub type RunRows = (RunInfo, Vec<Correlation>);

/// Build the correlations table (docs/reference.md §5) for one or more runs.
pub fn correlations_frame(runs: &[RunRows]) -> Result<DataFrame> {
    let rows: Vec<(&RunInfo, &Correlation)> = runs.iter().flat_map(|(r, cs)| cs.iter().map(move |c| (r, c))).collect();
    let s = |f: &dyn Fn(&RunInfo) -> String| rows.iter().map(|(r, _)| f(r)).collect::<Vec<String>>();
    let cols: Vec<Column> = vec![
        Series::new("pipeline".into(), s(&|r| r.pipeline.clone())).into(),
        Series::new("model".into(), s(&|r| r.model.clone())).into(),
        Series::new("revision".into(), s(&|r| r.revision.clone())).into(),
        Series::new("weights".into(), s(&|r| r.weights.to_string())).into(),
        Series::new("corpus".into(), s(&|r| r.corpus.clone())).into(),
        Series::new("n_tokens".into(), rows.iter().map(|(r, _)| r.n_tokens).collect::<Vec<u64>>()).into(),
        Series::new("output".into(), s(&|r| r.output.to_string())).into(),
        Series::new("estimator".into(), s(&|r| r.estimator.to_string())).into(),
        Series::new("probes".into(), rows.iter().map(|(r, _)| r.probes).collect::<Vec<u32>>()).into(),
        Series::new("layer".into(), rows.iter().map(|(_, c)| c.layer).collect::<Vec<u32>>()).into(),
        Series::new("module".into(), rows.iter().map(|(_, c)| c.module).collect::<Vec<&str>>()).into(),
        Series::new("head".into(), rows.iter().map(|(_, c)| c.head).collect::<Vec<Option<u32>>>()).into(),
        Series::new("dim".into(), rows.iter().map(|(_, c)| c.dim).collect::<Vec<u32>>()).into(),
        Series::new("power".into(), rows.iter().map(|(_, c)| c.power).collect::<Vec<f64>>()).into(),
        Series::new("metric".into(), rows.iter().map(|(_, c)| c.metric).collect::<Vec<&str>>()).into(),
        Series::new("value".into(), rows.iter().map(|(_, c)| c.value).collect::<Vec<Option<f64>>>()).into(),
        Series::new("note".into(), rows.iter().map(|(_, c)| c.note).collect::<Vec<Option<&str>>>()).into(),
        Series::new("ansatz".into(), rows.iter().map(|(_, c)| c.ansatz).collect::<Vec<&str>>()).into(),
        Series::new("nfm".into(), rows.iter().map(|(_, c)| c.nfm).collect::<Vec<&str>>()).into(),
        Series::new("step".into(), rows.iter().map(|(r, _)| r.step).collect::<Vec<Option<u64>>>()).into(),
        Series::new("se".into(), rows.iter().map(|(_, c)| c.interval.map(|i| i.se)).collect::<Vec<_>>()).into(),
        Series::new("ci_low".into(), rows.iter().map(|(_, c)| c.interval.map(|i| i.low)).collect::<Vec<_>>()).into(),
        Series::new("ci_high".into(), rows.iter().map(|(_, c)| c.interval.map(|i| i.high)).collect::<Vec<_>>()).into(),
        Series::new("groups".into(), rows.iter().map(|(_, c)| c.groups).collect::<Vec<u32>>()).into(),
        Series::new("seed".into(), rows.iter().map(|(r, _)| r.seed).collect::<Vec<u64>>()).into(),
        Series::new("role".into(), rows.iter().map(|(_, c)| c.role).collect::<Vec<&str>>()).into(),
    ];
    Ok(DataFrame::new_infer_height(cols)?)
}

/// The contrasts table (docs/reference.md §8): the columns of correlations.parquet without `weights`
/// (`seed` is the pretrained run's), one row per pretrained − random-init difference, and
/// `init_seeds`: how many random inits the control's mean and the interval's spread rest on.
pub fn contrasts_frame(rows: &[RunRows], init_seeds: u32) -> Result<DataFrame> {
    let mut df = correlations_frame(rows)?.drop("weights")?;
    let n = df.height();
    df.with_column(Column::new("init_seeds".into(), vec![init_seeds; n]))?;
    Ok(df)
}

/// Write correlations.parquet atomically with its key-value metadata. `measured` identifies what
/// the table was computed from (the fingerprint of its GOP files' metadata): a correlations table
/// and the contrasts table written beside it share it, so `agop report` can tell another run's
/// contrasts apart.
pub fn write_correlations(
    path: &Path,
    df: &mut DataFrame,
    pipeline_text: &str,
    seed: u64,
    inputs: &str,
    measured: &str,
    warnings: &[String],
) -> Result<()> {
    let mut meta = vec![
        ("agop_version", env!("CARGO_PKG_VERSION").to_string()),
        ("pipeline", pipeline_text.to_string()),
        ("seed", seed.to_string()),
        ("inputs", inputs.to_string()),
        ("measured", measured.to_string()),
    ];
    if !warnings.is_empty() {
        meta.push(("warnings", warnings.join("\n")));
    }
    write_parquet(path, df, &meta)
}
