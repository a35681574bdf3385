//! `tokens.parquet` (docs/reference.md §5): the windows every later stage reads. `window` UInt64 is the
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

/// Window indices must be below this bound (2^63), so that ranges `start..end` of indices never
/// wrap and fit every integer type readers use.
pub const MAX_WINDOW_INDEX: u64 = 1 << 63;

/// Read any `tokens.parquet` of the docs/reference.md §5 schema. Checked: `window` is an integer column
/// with unique values in 0..2^63, `tokens` a list of integers in 0..2^32 (no floats: 1.5 is not
/// silently truncated), no nulls, all windows of one length; each problem names the row and
/// the value.
pub fn read_tokens(path: &Path) -> Result<(Vec<Window>, TokensMeta)> {
    let f = File::open(path).bad_input(|| format!("cannot open tokens file {}", path.display()))?;
    let df =
        ParquetReader::new(f).finish().map_err(|e| bad!("{}: not a readable Parquet file: {e}", path.display()))?;
    let name = path.display();
    let col = |name: &str| df.column(name).map_err(|_| bad!("{}: no column `{name}`", path.display()));
    let window = col("window")?.as_materialized_series().clone();
    let tokens = col("tokens")?;
    let indices = integers(&window)
        .ok_or_else(|| bad!("{name}: column `window` must be an integer column, found {}", window.dtype()))?;
    let inner_ok = matches!(tokens.dtype(), DataType::List(inner) if inner.is_integer());
    if !inner_ok {
        bail_bad!("{name}: column `tokens` must be a list of integers (List(UInt32)), found {}", tokens.dtype());
    }
    let tokens = tokens.list()?;
    let mut out = Vec::with_capacity(df.height());
    let mut first_row = std::collections::HashMap::new();
    for (i, w) in indices.into_iter().enumerate() {
        let w = match w {
            None => bail_bad!("{name}: row {i} has a null window"),
            Some(w) if !(0..MAX_WINDOW_INDEX as i128).contains(&w) => {
                bail_bad!("{name}: row {i} has window index {w}, outside 0..2^63")
            }
            Some(w) => w as u64,
        };
        if let Some(prev) = first_row.insert(w, i) {
            bail_bad!("{name}: rows {prev} and {i} both have window index {w}; window indices must be unique");
        }
        let Some(t) = tokens.get_as_series(i) else { bail_bad!("{name}: row {i} (window {w}) has null tokens") };
        let values = integers(&t).expect("checked: a list of integers");
        let t: Vec<u32> = values
            .into_iter()
            .enumerate()
            .map(|(j, x)| match x {
                None => Err(bad!("{name}: row {i} (window {w}) has a null token at position {j}")),
                Some(x) if !(0..=u32::MAX as i128).contains(&x) => {
                    Err(bad!("{name}: row {i} (window {w}) has token id {x} at position {j}, outside 0..2^32"))
                }
                Some(x) => Ok(x as u32),
            })
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

/// The values of an integer series, widened to i128 (so every integer type fits); `None` for a
/// series that is not of an integer type.
fn integers(s: &Series) -> Option<Vec<Option<i128>>> {
    if !s.dtype().is_integer() {
        return None;
    }
    if s.dtype().is_signed_integer() {
        let v = s.cast(&DataType::Int64).ok()?;
        Some(v.i64().ok()?.iter().map(|x| x.map(i128::from)).collect())
    } else {
        let v = s.cast(&DataType::UInt64).ok()?;
        Some(v.u64().ok()?.iter().map(|x| x.map(i128::from)).collect())
    }
}
