//! Models and datasets on the Hugging Face hub.

use anyhow::Result;

use crate::bail_bad;
use crate::stages::ResolvedModel;

/// Resolve a hub model id to a local snapshot directory.
pub fn resolve_model(id: &str, _revision: Option<&str>) -> Result<ResolvedModel> {
    bail_bad!("{id}: no such local directory, and hub downloads are not available in this build")
}

/// Resolve an `hf://datasets/...` source to local files.
pub fn resolve_dataset_files(src: &str) -> Result<Vec<std::path::PathBuf>> {
    bail_bad!("{src}: hub datasets are not available in this build")
}
