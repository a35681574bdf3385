//! Parquet files through polars: atomic writes with key-value metadata, and reads that name the
//! file when it is not Parquet.

use std::fs::File;
use std::path::Path;

use anyhow::Result;
use polars::prelude::*;

use crate::bad;
use crate::error::BadInputExt;

/// Write `df` to `path` atomically with key-value metadata.
pub fn write_parquet(path: &Path, df: &mut DataFrame, meta: &[(&str, String)]) -> Result<()> {
    let kv = KeyValueMetadata::from_static(meta.iter().map(|(k, v)| (k.to_string(), v.clone())).collect());
    super::fs::write_atomic_with(path, |f| {
        ParquetWriter::new(f).with_key_value_metadata(Some(kv)).finish(df)?;
        Ok(())
    })
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

/// Read a Parquet file into a DataFrame.
pub fn read_parquet(path: &Path) -> Result<DataFrame> {
    let f = File::open(path).bad_input(|| format!("cannot open {}", path.display()))?;
    ParquetReader::new(f).finish().map_err(|e| bad!("{}: not a readable Parquet file: {e}", path.display()))
}
