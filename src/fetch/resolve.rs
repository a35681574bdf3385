//! [`ResolvedModel`]: what every stage after fetching is given, resolved and hashed once per
//! process (and, in a pipeline, once per run: the prepare stage records it in the output folder
//! so that cluster array tasks do not hash multi-gigabyte weights again).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::bail_bad;
use crate::model::weights::weights_files;
use crate::model::ModelConfig;
use crate::util::sha256_files;

/// A model resolved to a local directory, with its identity for output metadata.
#[derive(Debug, Clone)]
pub struct ResolvedModel {
    /// What the user named: a hub id or a directory.
    pub id: String,
    /// Resolved commit for hub models, `local` for directories.
    pub revision: String,
    pub dir: PathBuf,
    /// sha256 of the weights files, computed on first use.
    sha: OnceLock<String>,
}

/// How a [`ResolvedModel`] is recorded on disk (`model.json` of a pipeline's output folder):
/// identity, weights sha256, and the size and modification time of every weights file, so a
/// later process can trust the hash without reading the weights again.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ModelRecord {
    pub id: String,
    pub revision: String,
    pub dir: PathBuf,
    pub weights_sha256: String,
    /// (file, size in bytes, modification time in ns since the epoch).
    pub files: Vec<(PathBuf, u64, u128)>,
}

impl ResolvedModel {
    pub fn new(id: String, revision: String, dir: PathBuf) -> Self {
        Self { id, revision, dir, sha: OnceLock::new() }
    }

    /// A local checkpoint directory.
    pub fn local(dir: &Path) -> Result<Self> {
        if !dir.join("config.json").is_file() && !crate::model::nanogpt::is_nanogpt(dir) {
            bail_bad!("{}: not a model directory (no config.json)", dir.display());
        }
        Ok(Self::new(dir.display().to_string(), "local".into(), dir.to_path_buf()))
    }

    /// The files an output must never replace: config.json, the weights files (also the names a
    /// loader would read before the present ones: `model.safetensors`, `pytorch_model.bin`) and
    /// the tokenizer files.
    pub fn protected_files(&self) -> Vec<std::path::PathBuf> {
        [
            "config.json",
            "model.safetensors",
            "pytorch_model.bin",
            "ckpt.pt",
            "tokenizer.json",
            "vocab.json",
            "merges.txt",
        ]
        .iter()
        .map(|f| self.dir.join(f))
        .chain(crate::model::weights::weights_files(&self.dir).unwrap_or_default())
        .collect()
    }

    pub fn config(&self) -> Result<ModelConfig> {
        crate::model::dir_config(&self.dir)
    }

    /// sha256 of the checkpoint's weights (all safetensors files, in order), hex; computed once.
    pub fn weights_sha256(&self) -> Result<&str> {
        if let Some(s) = self.sha.get() {
            return Ok(s);
        }
        let sha = sha256_files(&weights_files(&self.dir)?)?;
        Ok(self.sha.get_or_init(|| sha))
    }

    /// The record of this model (hashes the weights if not done yet).
    pub fn record(&self) -> Result<ModelRecord> {
        Ok(ModelRecord {
            id: self.id.clone(),
            revision: self.revision.clone(),
            dir: self.dir.clone(),
            weights_sha256: self.weights_sha256()?.to_string(),
            files: file_stamps(&self.dir)?,
        })
    }

    /// The model a record describes, trusting its weights sha256 without looking at the files:
    /// for a checkpoint whose weights were deleted from the cache after it was measured
    /// (`keep_checkpoints = false`), to check its outputs without fetching it again.
    pub fn recorded(r: &ModelRecord) -> Self {
        let m = Self::new(r.id.clone(), r.revision.clone(), r.dir.clone());
        let _ = m.sha.set(r.weights_sha256.clone());
        m
    }

    /// The model a record describes, if its weights files are unchanged (same paths, sizes and
    /// modification times); `None` when anything differs, so the caller resolves and hashes anew.
    pub fn from_record(r: &ModelRecord) -> Option<Self> {
        let stamps = file_stamps(&r.dir).ok()?;
        if stamps != r.files {
            return None;
        }
        let m = Self::new(r.id.clone(), r.revision.clone(), r.dir.clone());
        let _ = m.sha.set(r.weights_sha256.clone());
        Some(m)
    }
}

fn file_stamps(dir: &Path) -> Result<Vec<(PathBuf, u64, u128)>> {
    weights_files(dir)?
        .into_iter()
        .map(|f| {
            let md = std::fs::metadata(&f)?;
            let mtime = md.modified()?.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
            Ok((f, md.len(), mtime))
        })
        .collect()
}
