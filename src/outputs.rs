//! Files agop writes and reads (SPEC.md §5): atomic writes, `tokens.parquet`,
//! `correlations.parquet`. GOP safetensors live in `agop::gop`.

use std::fs::File;
use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use polars::prelude::*;

use crate::agop::Window;
use crate::error::BadInputExt;
use crate::nfa::Correlation;
use crate::{bad, bail_bad};

/// Write `bytes` to `path` through a temporary file in the same folder, then rename, so a
/// reader never sees a half-written file under the final name.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, |f| Ok(f.write_all(bytes)?))
}

/// Like [`write_atomic`], with a writer callback.
pub fn write_atomic_with(path: &Path, write: impl FnOnce(&mut File) -> Result<()>) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp{}", std::process::id()));
    let result = (|| {
        let mut f = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        write(&mut f)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Parquet key-value metadata from pairs.
fn kv(pairs: &[(&str, String)]) -> KeyValueMetadata {
    KeyValueMetadata::from_static(pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect())
}

fn write_parquet(path: &Path, df: &mut DataFrame, meta: &[(&str, String)]) -> Result<()> {
    write_atomic_with(path, |f| {
        ParquetWriter::new(f).with_key_value_metadata(Some(kv(meta))).finish(df)?;
        Ok(())
    })
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

/// Read the key-value metadata of a Parquet file.
pub fn parquet_metadata(path: &Path) -> Result<Vec<(String, String)>> {
    let f = File::open(path).bad_input(|| format!("cannot open {}", path.display()))?;
    let mut r = ParquetReader::new(f);
    let md = r.get_metadata().map_err(|e| bad!("{}: not a Parquet file: {e}", path.display()))?;
    Ok(md
        .key_value_metadata
        .iter()
        .flatten()
        .map(|kv| (kv.key.clone(), kv.value.clone().unwrap_or_default()))
        .collect())
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

/// Run-level columns of correlations.parquet.
#[derive(Debug, Clone)]
pub struct RunInfo {
    pub pipeline: String,
    pub model: String,
    pub revision: String,
    pub weights: String,
    pub corpus: String,
    pub n_tokens: u64,
    pub output: String,
    pub estimator: String,
    pub probes: u32,
}

/// Build the correlations table (SPEC.md §5) for one or more runs.
pub fn correlations_frame(runs: &[(RunInfo, Vec<Correlation>)]) -> Result<DataFrame> {
    let rows: Vec<(&RunInfo, &Correlation)> = runs.iter().flat_map(|(r, cs)| cs.iter().map(move |c| (r, c))).collect();
    let s = |f: &dyn Fn(&RunInfo) -> String| rows.iter().map(|(r, _)| f(r)).collect::<Vec<String>>();
    let cols: Vec<Column> = vec![
        Series::new("pipeline".into(), s(&|r| r.pipeline.clone())).into(),
        Series::new("model".into(), s(&|r| r.model.clone())).into(),
        Series::new("revision".into(), s(&|r| r.revision.clone())).into(),
        Series::new("weights".into(), s(&|r| r.weights.clone())).into(),
        Series::new("corpus".into(), s(&|r| r.corpus.clone())).into(),
        Series::new("n_tokens".into(), rows.iter().map(|(r, _)| r.n_tokens).collect::<Vec<u64>>()).into(),
        Series::new("output".into(), s(&|r| r.output.clone())).into(),
        Series::new("estimator".into(), s(&|r| r.estimator.clone())).into(),
        Series::new("probes".into(), rows.iter().map(|(r, _)| r.probes).collect::<Vec<u32>>()).into(),
        Series::new("layer".into(), rows.iter().map(|(_, c)| c.layer).collect::<Vec<u32>>()).into(),
        Series::new("module".into(), rows.iter().map(|(_, c)| c.module).collect::<Vec<&str>>()).into(),
        Series::new("head".into(), rows.iter().map(|(_, c)| c.head).collect::<Vec<Option<u32>>>()).into(),
        Series::new("dim".into(), rows.iter().map(|(_, c)| c.dim).collect::<Vec<u32>>()).into(),
        Series::new("power".into(), rows.iter().map(|(_, c)| c.power).collect::<Vec<f64>>()).into(),
        Series::new("metric".into(), rows.iter().map(|(_, c)| c.metric).collect::<Vec<&str>>()).into(),
        Series::new("value".into(), rows.iter().map(|(_, c)| c.value).collect::<Vec<f64>>()).into(),
    ];
    Ok(DataFrame::new_infer_height(cols)?)
}

/// Write correlations.parquet atomically with its key-value metadata.
pub fn write_correlations(path: &Path, df: &mut DataFrame, pipeline_text: &str, seed: u64, inputs: &str) -> Result<()> {
    write_parquet(
        path,
        df,
        &[
            ("agop_version", env!("CARGO_PKG_VERSION").to_string()),
            ("pipeline", pipeline_text.to_string()),
            ("seed", seed.to_string()),
            ("inputs", inputs.to_string()),
        ],
    )
}

/// Read a Parquet file into a DataFrame (for `report` and tests).
pub fn read_parquet(path: &Path) -> Result<DataFrame> {
    let f = File::open(path).bad_input(|| format!("cannot open {}", path.display()))?;
    ParquetReader::new(f).finish().map_err(|e| bad!("{}: not a readable Parquet file: {e}", path.display()))
}
