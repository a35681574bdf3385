//! Training data: the corpus cut into windows of `seq_len` tokens (GPT-2 BPE), K of them held
//! out for the evaluation loss (never trained on), and the batch of each step drawn from the rest.
//!
//! Every draw is a function of (seed, step) alone, so a resumed run trains on exactly the batches
//! an uninterrupted one would.

use anyhow::Result;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::bail_bad;
use crate::tokenize::bpe::{self, Gpt2Tokenizer};
use crate::tokenize::corpus::{read_sources, CorpusOptions, Document};
use crate::tokenize::Window;
use crate::util::progress_bar;

/// The training and held-out windows of a corpus.
pub struct Split {
    /// Windows trained on (global indices kept).
    pub train: Vec<Window>,
    /// The K held-out windows, in corpus order.
    pub eval: Vec<Window>,
    /// The corpus text's fingerprint ([`corpus_sha256`]).
    pub corpus_sha256: String,
}

/// sha256 of the text of a corpus's documents, in reading order: what a resumed run checks
/// it is trained on (the settings record the sources' names only).
pub fn corpus_sha256(docs: &[Document]) -> String {
    crate::util::fingerprint(&docs.iter().map(|d| d.text.as_str()).collect::<Vec<_>>())
}

/// [`corpus_sha256`] of `sources`, read again.
pub fn read_corpus_sha256(sources: &[String], corpus: &CorpusOptions) -> Result<String> {
    Ok(corpus_sha256(&read_sources(sources, corpus)?.0))
}

fn rng(seed: u64, stream: &[u8; 8], step: u64) -> ChaCha8Rng {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    key[8..16].copy_from_slice(&step.to_le_bytes());
    key[24..].copy_from_slice(stream);
    ChaCha8Rng::from_seed(key)
}

/// Read and tokenize `sources` with the GPT-2 tokenizer, cut windows of `seq_len`, and hold out
/// `eval_windows` of them chosen by `seed` (spread over the corpus, not its tail).
pub fn split(
    sources: &[String],
    corpus: &CorpusOptions,
    seq_len: usize,
    eval_windows: usize,
    vocab_size: usize,
    seed: u64,
    progress: bool,
) -> Result<Split> {
    let tok = Gpt2Tokenizer::builtin()?;
    let (docs, _) = read_sources(sources, corpus)?;
    let corpus_sha256 = corpus_sha256(&docs);
    let bytes: u64 = docs.iter().map(|d| d.text.len() as u64).sum();
    let what = sources.join(", ");
    if bytes == 0 {
        bail_bad!("corpus {what} is empty");
    }
    let bar = progress_bar(bytes, progress, "tokenize", "bytes");
    let stream = bpe::token_stream(&tok, &docs, &bar)?;
    bar.finish_and_clear();
    if let Some(t) = stream.iter().find(|&&t| t as usize >= vocab_size) {
        bail_bad!(
            "the GPT-2 tokenizer produced id {t}, outside the config's vocab_size {vocab_size}; training uses the \
             GPT-2 tokenizer, so vocab_size must be at least 50257"
        );
    }
    let windows = bpe::windows(&stream, seq_len, None)?;
    if windows.len() < eval_windows + 1 {
        bail_bad!(
            "corpus {what} has {} windows of {seq_len} tokens: not enough to hold out {eval_windows} and train on \
             the rest",
            windows.len()
        );
    }
    let mut order: Vec<usize> = (0..windows.len()).collect();
    order.shuffle(&mut rng(seed, b"agopeval", 0));
    let mut held = vec![false; windows.len()];
    for &i in &order[..eval_windows] {
        held[i] = true;
    }
    let (mut train, mut eval) = (Vec::new(), Vec::new());
    for (w, h) in windows.into_iter().zip(held) {
        if h {
            eval.push(w)
        } else {
            train.push(w)
        }
    }
    Ok(Split { train, eval, corpus_sha256 })
}

/// The training windows of step `step` (0-based update count): `batch` draws with replacement,
/// a function of (seed, step) only.
pub fn batch_indices(n_train: usize, batch: usize, seed: u64, step: u64) -> Vec<usize> {
    let mut r = rng(seed, b"agopbtch", step);
    (0..batch).map(|_| r.random_range(0..n_train)).collect()
}
