//! Getting a model: `--model` resolved to a local checkpoint folder, from a directory or the
//! Hugging Face hub (pinned revision, offline cache), with its identity (id, commit, weights
//! sha256) for output metadata. Datasets on the hub (`hf://datasets/...`) are fetched here too.

pub mod hub;
pub mod resolve;

use std::path::Path;

use anyhow::Result;

pub use resolve::{ModelRecord, ResolvedModel};

/// Resolve `--model`: a local directory, or a hub id (through [`hub`]).
pub fn resolve_model(spec: &str, revision: Option<&str>) -> Result<ResolvedModel> {
    let p = Path::new(spec);
    if p.is_dir() {
        return ResolvedModel::local(p);
    }
    if p.is_file() {
        crate::bail_bad!(
            "--model {spec} is a file; give the model folder (with config.json and model.safetensors or pytorch_model.bin) or a hub id"
        );
    }
    hub::resolve_model(spec, revision)
}
