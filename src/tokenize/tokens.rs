//! `tokens.parquet` (SPEC.md §5): the windows every later stage reads. `window` UInt64 is the
//! global window index, `tokens` List(UInt32) its token ids.

use std::fs::File;
use std::path::Path;

use anyhow::Result;
use polars::prelude::*;

use crate::error::BadInputExt;
use crate::util::parquet::{parquet_metadata, write_parquet};
use crate::{bad, bail_bad};

/// One window of token ids with its global index.
#[derive(Debug, Clone)]
pub struct Window {
    pub index: u64,
    pub tokens: Vec<u32>,
}

/// Metadata of a tokens file.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TokensMeta {
    pub tokenizer: String,
    pub corpus: String,
    pub seq_len: usize,
    /// Fingerprint of what produced the file (used by `agop run` to skip finished stages).
    pub inputs: String,
}

/// Write `tokens.parquet`: `window` UInt64, `tokens` List(UInt32).
pub fn write_tokens(path: &Path, windows: &[Window], meta: &TokensMeta) -> Result<()> {
    let idx: Vec<u64> = windows.iter().map(|w| w.index).collect();
    let lists: Vec<Series> = windows.iter().map(|w| Series::new(PlSmallStr::EMPTY, w.tokens.as_slice())).collect();
    let mut tokens = Series::new("tokens".into(), lists);
    if windows.is_empty() {
        tokens = Series::new_empty("tokens".into(), &DataType::List(Box::new(DataType::UInt32)));
    }
    let mut df = DataFrame::new_infer_height(vec![Series::new("window".into(), idx).into(), tokens.into()])?;
    write_parquet(
        path,
        &mut df,
        &[
            ("tokenizer", meta.tokenizer.clone()),
            ("corpus", meta.corpus.clone()),
            ("seq_len", meta.seq_len.to_string()),
            ("inputs", meta.inputs.clone()),
            ("agop_version", env!("CARGO_PKG_VERSION").to_string()),
        ],
    )
}

/// Read any `tokens.parquet` of the SPEC.md §5 schema; checks column types and equal lengths.
pub fn read_tokens(path: &Path) -> Result<(Vec<Window>, TokensMeta)> {
    let f = File::open(path).bad_input(|| format!("cannot open tokens file {}", path.display()))?;
    let df =
        ParquetReader::new(f).finish().map_err(|e| bad!("{}: not a readable Parquet file: {e}", path.display()))?;
    let col = |name: &str| df.column(name).map_err(|_| bad!("{}: no column `{name}`", path.display()));
    let window = col("window")?;
    let tokens = col("tokens")?;
    let window = window
        .cast(&DataType::UInt64)
        .map_err(|_| bad!("{}: column `window` must be an unsigned integer", path.display()))?;
    let window = window.u64()?;
    let tokens = tokens
        .cast(&DataType::List(Box::new(DataType::UInt32)))
        .map_err(|_| bad!("{}: column `tokens` must be List(UInt32), found {}", path.display(), tokens.dtype()))?;
    let tokens = tokens.list()?;
    let mut out = Vec::with_capacity(df.height());
    for (i, w) in window.iter().enumerate() {
        let (Some(w), Some(t)) = (w, tokens.get_as_series(i)) else {
            bail_bad!("{}: row {i} has a null window or tokens", path.display())
        };
        let t: Vec<u32> = t
            .u32()?
            .iter()
            .map(|x| x.ok_or_else(|| bad!("{}: row {i} has a null token", path.display())))
            .collect::<Result<_>>()?;
        out.push(Window { index: w, tokens: t });
    }
    if let Some(first) = out.first() {
        let t = first.tokens.len();
        if t == 0 {
            bail_bad!("{}: windows are empty", path.display());
        }
        if let Some(bad) = out.iter().find(|w| w.tokens.len() != t) {
            bail_bad!(
                "{}: window {} has {} tokens, the first has {t}; all windows must have seq_len tokens",
                path.display(),
                bad.index,
                bad.tokens.len()
            );
        }
    }
    let meta = parquet_metadata(path)?;
    let get = |k: &str| meta.iter().find(|(kk, _)| kk == k).map(|(_, v)| v.clone()).unwrap_or_default();
    let seq_len = out.first().map(|w| w.tokens.len()).unwrap_or(0);
    Ok((out, TokensMeta { tokenizer: get("tokenizer"), corpus: get("corpus"), seq_len, inputs: get("inputs") }))
}
