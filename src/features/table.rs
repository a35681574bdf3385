//! `features.parquet` and `feature-overlap.parquet` (docs/reference.md §5 points to their columns
//! in docs/features.md).

use anyhow::Result;
use polars::prelude::*;

use crate::correlate::RunInfo;

/// One row of features.parquet, without the run-level columns: a spectrum row (no read-out) or
/// one read-out token of one eigenvector.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureRow {
    pub layer: u32,
    pub module: &'static str,
    pub role: &'static str,
    pub head: Option<u32>,
    pub dim: u32,
    /// `agop` or `nfm`: whose eigenvector.
    pub source: &'static str,
    /// 1-based, by eigenvalue, largest first.
    pub rank: u32,
    pub eigenvalue: f64,
    /// eigenvalue / trace.
    pub share: f64,
    /// The matrix's participation ratio (Σλ)²/Σλ² (the same on every row of one matrix).
    pub effective_rank: f64,
    /// `embedding` or `logit-lens`; None on spectrum rows.
    pub readout: Option<&'static str>,
    /// `+` (highest scores) or `-` (lowest).
    pub sign: Option<&'static str>,
    /// 1-based place in the sign's list.
    pub position: Option<u32>,
    pub token: Option<u32>,
    pub text: Option<String>,
    pub score: Option<f64>,
}

/// The rows of one run.
pub type RunFeatures = (RunInfo, Vec<FeatureRow>);

/// features.parquet for one or more runs.
pub fn features_frame(runs: &[RunFeatures]) -> Result<DataFrame> {
    let rows: Vec<(&RunInfo, &FeatureRow)> = runs.iter().flat_map(|(r, fs)| fs.iter().map(move |f| (r, f))).collect();
    let run_str = |f: &dyn Fn(&RunInfo) -> String| rows.iter().map(|(r, _)| f(r)).collect::<Vec<String>>();
    macro_rules! col {
        ($name:expr, $f:expr) => {
            Column::new($name.into(), rows.iter().map($f).collect::<Vec<_>>())
        };
    }
    let cols = vec![
        Column::new("pipeline".into(), run_str(&|r| r.pipeline.clone())),
        Column::new("model".into(), run_str(&|r| r.model.clone())),
        Column::new("revision".into(), run_str(&|r| r.revision.clone())),
        Column::new("weights".into(), run_str(&|r| r.weights.to_string())),
        col!("seed", |(r, _)| r.seed),
        col!("step", |(r, _)| r.step),
        col!("layer", |(_, f)| f.layer),
        col!("module", |(_, f)| f.module),
        col!("role", |(_, f)| f.role),
        col!("head", |(_, f)| f.head),
        col!("dim", |(_, f)| f.dim),
        col!("source", |(_, f)| f.source),
        col!("rank", |(_, f)| f.rank),
        col!("eigenvalue", |(_, f)| f.eigenvalue),
        col!("share", |(_, f)| f.share),
        col!("effective_rank", |(_, f)| f.effective_rank),
        col!("readout", |(_, f)| f.readout),
        col!("sign", |(_, f)| f.sign),
        col!("position", |(_, f)| f.position),
        col!("token", |(_, f)| f.token),
        col!("text", |(_, f)| f.text.clone()),
        col!("score", |(_, f)| f.score),
    ];
    Ok(DataFrame::new_infer_height(cols)?)
}

/// One row of feature-overlap.parquet: how much of a module's top-k eigenspace one checkpoint of
/// a series shares with the previous one.
#[derive(Debug, Clone, PartialEq)]
pub struct OverlapRow {
    pub layer: u32,
    pub module: &'static str,
    pub role: &'static str,
    pub head: Option<u32>,
    pub source: &'static str,
    pub k: u32,
    pub step_from: u64,
    pub step_to: u64,
    /// ‖U_kᵀV_k‖²_F / k (null when either has fewer than k nonzero eigenvalues).
    pub value: Option<f64>,
}

pub fn overlap_frame(model: &str, rows: &[OverlapRow]) -> Result<DataFrame> {
    macro_rules! col {
        ($name:expr, $f:expr) => {
            Column::new($name.into(), rows.iter().map($f).collect::<Vec<_>>())
        };
    }
    let cols = vec![
        Column::new("model".into(), vec![model.to_string(); rows.len()]),
        col!("layer", |r| r.layer),
        col!("module", |r| r.module),
        col!("role", |r| r.role),
        col!("head", |r| r.head),
        col!("source", |r| r.source),
        col!("k", |r| r.k),
        col!("step_from", |r| r.step_from),
        col!("step_to", |r| r.step_to),
        col!("value", |r| r.value),
    ];
    Ok(DataFrame::new_infer_height(cols)?)
}
