//! GPT-2 byte-level BPE (the `tokenizers` crate) and windowing into `tokens.parquet` (docs/reference.md §5):
//! each document is followed by EOS, windows are consecutive non-overlapping chunks of the
//! stream, the final partial window is dropped, `max_tokens` keeps the first ⌊N/seq_len⌋ windows.

use std::path::Path;

use anyhow::{anyhow, Result};
use rayon::prelude::*;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, Tokenizer};

use super::corpus::Document;
use super::tokens::Window;
use crate::model::checkpoint::{GPT2_MERGES, GPT2_VOCAB};
use crate::{bad, bail_bad};

/// GPT-2's end-of-text token.
pub const EOS_TEXT: &str = "<|endoftext|>";

/// A loaded tokenizer and its EOS id.
pub struct Gpt2Tokenizer {
    pub tokenizer: Tokenizer,
    pub eos: u32,
    /// Where it came from (for metadata).
    pub source: String,
}

impl Gpt2Tokenizer {
    /// From a model directory: `tokenizer.json`, or `vocab.json` + `merges.txt`.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let tj = dir.join("tokenizer.json");
        if tj.is_file() {
            let tokenizer =
                Tokenizer::from_file(&tj).map_err(|e| bad!("{}: cannot load tokenizer: {e}", tj.display()))?;
            return Self::finish(tokenizer, tj.display().to_string());
        }
        let (v, m) = (dir.join("vocab.json"), dir.join("merges.txt"));
        if v.is_file() && m.is_file() {
            let vocab = std::fs::read_to_string(&v).map_err(|e| bad!("{}: {e}", v.display()))?;
            let merges = std::fs::read_to_string(&m).map_err(|e| bad!("{}: {e}", m.display()))?;
            return Self::from_vocab_merges(&vocab, &merges, dir.display().to_string());
        }
        // A nanoGPT folder without tokenizer files: GPT-2's (nanoGPT's GPT-2 runs use tiktoken's gpt2).
        if crate::model::nanogpt::is_nanogpt(dir) {
            return Self::builtin();
        }
        bail_bad!("{}: no tokenizer (tokenizer.json, or vocab.json and merges.txt)", dir.display())
    }

    /// The GPT-2 tokenizer built into agop.
    pub fn builtin() -> Result<Self> {
        Self::from_vocab_merges(GPT2_VOCAB, GPT2_MERGES, "gpt2 (built in)".into())
    }

    /// Byte-level BPE from vocab.json and merges.txt texts, GPT-2 settings (no prefix space).
    pub fn from_vocab_merges(vocab: &str, merges: &str, source: String) -> Result<Self> {
        let vocab: tokenizers::models::bpe::Vocab =
            serde_json::from_str(vocab).map_err(|e| bad!("{source}: vocab.json is not valid: {e}"))?;
        let merges: Vec<(String, String)> = merges
            .lines()
            .filter(|l| !l.starts_with("#version") && !l.trim().is_empty())
            .map(|l| {
                let mut it = l.split(' ');
                match (it.next(), it.next()) {
                    (Some(a), Some(b)) => Ok((a.to_string(), b.to_string())),
                    _ => Err(bad!("{source}: bad line in merges.txt: {l:?}")),
                }
            })
            .collect::<Result<_>>()?;
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|e| anyhow!("{source}: building BPE: {e}"))?;
        let mut tokenizer = Tokenizer::new(bpe);
        tokenizer.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
        tokenizer.with_decoder(Some(ByteLevel::new(false, true, true)));
        Self::finish(tokenizer, source)
    }

    fn finish(mut tokenizer: Tokenizer, source: String) -> Result<Self> {
        tokenizer
            .add_special_tokens([AddedToken::from(EOS_TEXT, true)])
            .map_err(|e| anyhow!("{source}: adding {EOS_TEXT}: {e}"))?;
        let eos =
            tokenizer.token_to_id(EOS_TEXT).ok_or_else(|| bad!("{source}: the vocabulary has no {EOS_TEXT} token"))?;
        Ok(Self { tokenizer, eos, source })
    }

    /// Token ids of a text (no special handling beyond the EOS special token).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.tokenizer.encode(text, false).map_err(|e| anyhow!("tokenizing: {e}"))?;
        Ok(enc.get_ids().to_vec())
    }
}

/// Tokenize documents in parallel; the stream is each document's ids followed by EOS, in order.
pub fn token_stream(tok: &Gpt2Tokenizer, docs: &[Document], progress: &indicatif::ProgressBar) -> Result<Vec<u32>> {
    let encoded: Vec<Vec<u32>> = docs
        .par_iter()
        .map(|d| {
            let ids = tok.encode(&d.text).map_err(|e| e.context(d.origin.clone()))?;
            progress.inc(d.text.len() as u64);
            Ok(ids)
        })
        .collect::<Result<_>>()?;
    let mut stream = Vec::with_capacity(encoded.iter().map(|e| e.len() + 1).sum());
    for ids in encoded {
        stream.extend(ids);
        stream.push(tok.eos);
    }
    Ok(stream)
}

/// Cut a token stream into windows of `seq_len`, dropping the final partial window, keeping at
/// most ⌊max_tokens/seq_len⌋ windows.
pub fn windows(stream: &[u32], seq_len: usize, max_tokens: Option<u64>) -> Result<Vec<Window>> {
    if seq_len == 0 {
        bail_bad!("--seq-len must be positive");
    }
    let mut n = stream.len() / seq_len;
    if let Some(m) = max_tokens {
        if m < seq_len as u64 {
            bail_bad!(
                "--max-tokens {m} is smaller than one window of --seq-len {seq_len} (in a pipeline: [corpus] max_tokens \
                 and seq_len): no window would be kept"
            );
        }
        n = n.min((m / seq_len as u64) as usize);
    }
    Ok(stream
        .chunks_exact(seq_len)
        .take(n)
        .enumerate()
        .map(|(i, c)| Window { index: i as u64, tokens: c.to_vec() })
        .collect())
}
