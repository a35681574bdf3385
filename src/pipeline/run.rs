//! `agop run`: every stage of a pipeline into `outputs/<name>/`, skipping a stage whose output
//! is complete and was made from the same inputs (a fingerprint stored in the file's metadata).
//!
//! Layout of the output folder:
//!   model/                         only for `init_config` pipelines: the random checkpoint
//!   tokens.parquet
//!   gop-pretrained.safetensors, gop-random-init.safetensors
//!   correlations.parquet
//!   plots/*.png

use std::path::{Path, PathBuf};

use anyhow::Result;
use sha2::{Digest, Sha256};

use super::config::Pipeline;
use crate::agop::{Estimator, Gop, Settings};
use crate::data::corpus::CorpusOptions;
use crate::outputs;
use crate::stages::{self, MeasureOptions, RunContext, TokenizeOptions};

fn fingerprint(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0u8]);
    }
    hex::encode(h.finalize())
}

fn say(quiet: bool, msg: String) {
    if !quiet {
        eprintln!("{msg}");
    }
}

/// Run the pipeline into `out` (default `outputs/<name>`). Returns the output folder.
pub fn run(p: &Pipeline, out: Option<&Path>, quiet: bool) -> Result<PathBuf> {
    let out = out.map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("outputs").join(&p.name));
    std::fs::create_dir_all(&out)?;

    // Model: a hub id / directory, or a random checkpoint written once into out/model.
    let (model_spec, revision) = match &p.model.init_config {
        Some(cfg) => {
            let dir = out.join("model");
            let cfg_path = p.resolve_path(cfg);
            let key = fingerprint(&[&std::fs::read_to_string(&cfg_path).unwrap_or_default(), &p.model.init_seed.to_string()]);
            let stamp = dir.join(".agop-init");
            if std::fs::read_to_string(&stamp).ok().as_deref() != Some(key.as_str()) {
                say(quiet, format!("[model] init-model {} (seed {}) → {}", cfg_path.display(), p.model.init_seed, dir.display()));
                stages::init_model(&cfg_path, p.model.init_seed, &dir)?;
                outputs::write_atomic(&stamp, key.as_bytes())?;
            } else {
                say(quiet, format!("[model] {} is up to date", dir.display()));
            }
            (dir.display().to_string(), None)
        }
        None => (p.model_spec().expect("validated"), p.model.revision.clone()),
    };
    let resolved = stages::resolve_model(&model_spec, revision.as_deref())?;
    let model_sha = resolved.weights_sha256()?;

    // Tokens.
    let tokens = out.join("tokens.parquet");
    let sources = p.sources();
    let tok_key = fingerprint(&[
        &model_sha,
        &sources.join("\n"),
        &p.corpus.seq_len.to_string(),
        &format!("{:?}", p.corpus.max_tokens),
        &p.corpus.text_column,
        &p.corpus.skip_invalid_utf8.to_string(),
    ]);
    let tokens_done = tokens.is_file()
        && outputs::parquet_metadata(&tokens)
            .map(|m| m.iter().any(|(k, v)| k == "inputs" && *v == tok_key))
            .unwrap_or(false);
    if tokens_done {
        say(quiet, format!("[tokenize] {} is up to date", tokens.display()));
    } else {
        say(quiet, format!("[tokenize] {} → {}", sources.join(", "), tokens.display()));
        let opts = TokenizeOptions {
            sources: sources.clone(),
            seq_len: p.corpus.seq_len,
            max_tokens: p.corpus.max_tokens,
            corpus: CorpusOptions { text_column: p.corpus.text_column.clone(), skip_invalid_utf8: p.corpus.skip_invalid_utf8 },
            progress: !quiet,
            inputs: tok_key,
        };
        let n = stages::tokenize(&model_spec, revision.as_deref(), &opts, &tokens)?;
        say(quiet, format!("[tokenize] {n} windows of {} tokens", p.corpus.seq_len));
    }
    let tokens_sha = stages::sha256_file(&tokens)?;
    let n_windows = outputs::read_tokens(&tokens)?.0.len() as u64;

    // Measure, once per weights setting.
    let m = &p.measure;
    let settings = Settings { output: m.output, estimator: m.estimator, probes: m.probes, seed: m.seed };
    let probes = if m.estimator == Estimator::Exact { 0 } else { m.probes };
    let mut gops = Vec::new();
    for &weights in &m.weights {
        let path = out.join(format!("gop-{}.safetensors", weights.as_str()));
        let done = Gop::load(&path)
            .map(|g| {
                let gm = &g.meta;
                gm.model_sha256 == model_sha
                    && gm.weights == weights.as_str()
                    && gm.output == m.output.as_str()
                    && gm.estimator == m.estimator.as_str()
                    && gm.probes == probes
                    && gm.seed == m.seed
                    && gm.tokens_sha256 == tokens_sha
                    && gm.n_windows == n_windows
            })
            .unwrap_or(false);
        if done {
            say(quiet, format!("[measure {}] {} is up to date", weights.as_str(), path.display()));
        } else {
            say(quiet, format!("[measure {}] {} {} ({} probes) → {}", weights.as_str(), m.estimator.as_str(), m.output.as_str(), probes, path.display()));
            let opts = MeasureOptions { progress: !quiet, ..MeasureOptions::new(weights, settings, m.batch) };
            stages::measure(&model_spec, revision.as_deref(), &tokens, &path, &opts)?;
        }
        gops.push(path);
    }

    // Correlate.
    let corr = out.join("correlations.parquet");
    let gop_shas = gops.iter().map(|g| stages::sha256_file(g)).collect::<Result<Vec<_>>>()?;
    let powers = format!("{:?}", p.correlate.powers);
    let mut key_parts: Vec<&str> = gop_shas.iter().map(String::as_str).collect();
    key_parts.push(&powers);
    key_parts.push(&p.name);
    let corr_key = fingerprint(&key_parts);
    let corr_done = corr.is_file()
        && outputs::parquet_metadata(&corr)
            .map(|m| m.iter().any(|(k, v)| k == "inputs" && *v == corr_key))
            .unwrap_or(false);
    if corr_done {
        say(quiet, format!("[correlate] {} is up to date", corr.display()));
    } else {
        say(quiet, format!("[correlate] → {}", corr.display()));
        let ctx = RunContext { pipeline: p.name.clone(), corpus: p.corpus.sources.join(", "), text: p.text.clone(), inputs: corr_key };
        stages::correlate(&model_spec, revision.as_deref(), &gops, &corr, &p.correlate.powers, None, &ctx)?;
    }

    // Report.
    let report = crate::report::report(&out)?;
    if !quiet {
        println!("{report}");
    }
    Ok(out)
}
