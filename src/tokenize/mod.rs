//! Text to windows: corpus sources (files, folders, JSONL, Parquet, `hf://datasets`, the built-in
//! Shakespeare), GPT-2 byte-level BPE, and `tokens.parquet` (the [`Window`]s every later stage reads).

pub mod bpe;
pub mod builtin;
pub mod corpus;
pub mod tokens;

use std::path::Path;

use anyhow::Result;

pub use tokens::{read_tokens, write_tokens, TokensMeta, Window};

use crate::bail_bad;
use crate::fetch::ResolvedModel;
use crate::util::progress_bar;

/// Options of the tokenize stage.
#[derive(Debug, Clone)]
pub struct TokenizeOptions {
    pub sources: Vec<String>,
    pub seq_len: usize,
    pub max_tokens: Option<u64>,
    pub corpus: corpus::CorpusOptions,
    pub progress: bool,
    /// Recorded as the `inputs` metadata key (the pipeline runner's fingerprint).
    pub inputs: String,
}

/// `agop tokenize`: read the corpus, tokenize with the model's tokenizer, write tokens.parquet.
/// Returns the number of windows.
pub fn tokenize(model: &ResolvedModel, opts: &TokenizeOptions, out: &Path) -> Result<usize> {
    let cfg = model.config()?;
    let mut inputs = model.protected_files();
    inputs.extend(
        opts.sources
            .iter()
            .filter(|s| !s.starts_with("hf://") && !s.starts_with("builtin:"))
            .map(std::path::PathBuf::from),
    );
    crate::util::fs::check_output(out, "--out", &inputs)?;
    if opts.seq_len > cfg.n_positions() {
        bail_bad!(
            "--seq-len {} (in a pipeline: [corpus] seq_len) is larger than the model's n_positions {}",
            opts.seq_len,
            cfg.n_positions()
        );
    }
    let tok = bpe::Gpt2Tokenizer::from_dir(&model.dir)?;
    let (docs, skipped) = corpus::read_sources(&opts.sources, &opts.corpus)?;
    if skipped > 0 {
        eprintln!("skipped {skipped} documents that are not valid UTF-8");
    }
    let bytes: u64 = docs.iter().map(|d| d.text.len() as u64).sum();
    let what = opts.sources.join(", ");
    if bytes == 0 {
        bail_bad!("corpus {what} is empty");
    }
    let bar = progress_bar(bytes, opts.progress, "tokenize", "bytes");
    let stream = bpe::token_stream(&tok, &docs, &bar)?;
    bar.finish_and_clear();
    if let Some(t) = stream.iter().find(|&&t| t as usize >= cfg.vocab_size()) {
        bail_bad!(
            "the tokenizer of {} produced id {t}, outside the model's vocabulary of {}",
            model.id,
            cfg.vocab_size()
        );
    }
    let windows = bpe::windows(&stream, opts.seq_len, opts.max_tokens)?;
    if windows.is_empty() {
        bail_bad!("corpus {what} has {} tokens, shorter than one window of seq_len {}", stream.len(), opts.seq_len);
    }
    let meta = TokensMeta {
        tokenizer: format!("{} ({})", model.id, tok.source),
        corpus: what,
        seq_len: opts.seq_len,
        inputs: opts.inputs.clone(),
    };
    write_tokens(out, &windows, &meta)?;
    Ok(windows.len())
}
