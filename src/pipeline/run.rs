//! `agop run`: every stage of a pipeline into `outputs/<name>/`, skipping a stage whose output
//! is complete and was made from the same inputs (a fingerprint stored in the file's metadata).
//! The stages are also callable one by one (`--stage`), which is how cluster jobs run them.
//!
//! Layout of the output folder:
//!   model/                         only for `init_config` pipelines: the random checkpoint
//!   tokens.parquet
//!   shards/gop-<weights>-<i>-of-<n>.safetensors   only for sharded (cluster) runs
//!   gop-pretrained.safetensors, gop-random-init.safetensors
//!   correlations.parquet
//!   plots/*.png

use std::path::{Path, PathBuf};

use anyhow::Result;
use sha2::{Digest, Sha256};

use super::config::Pipeline;
use crate::agop::{Gop, GopMeta, Settings};
use crate::bail_bad;
use crate::data::corpus::CorpusOptions;
use crate::model::WeightsKind;
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

fn has_inputs_key(path: &Path, key: &str) -> bool {
    path.is_file()
        && outputs::parquet_metadata(path).map(|m| m.iter().any(|(k, v)| k == "inputs" && v == key)).unwrap_or(false)
}

/// The output folder of a pipeline: `--out`, or `outputs/<name>`.
pub fn out_dir(p: &Pipeline, out: Option<&Path>) -> PathBuf {
    out.map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("outputs").join(&p.name))
}

/// What the prepare stage established: the model and the tokens file.
pub struct Prepared {
    pub out: PathBuf,
    pub model_spec: String,
    pub revision: Option<String>,
    pub model_sha: String,
    pub tokens: PathBuf,
    pub tokens_sha: String,
    pub n_windows: u64,
}

/// Stage 1: the model (fetched, or written by init-model) and tokens.parquet.
pub fn prepare(p: &Pipeline, out: &Path, quiet: bool) -> Result<Prepared> {
    std::fs::create_dir_all(out)?;
    let (model_spec, revision) = match &p.model.init_config {
        Some(cfg) => {
            let dir = out.join("model");
            let cfg_path = p.resolve_path(cfg);
            let cfg_text = std::fs::read_to_string(&cfg_path)
                .map_err(|e| crate::bad!("init_config {}: {e}", cfg_path.display()))?;
            let key = fingerprint(&[&cfg_text, &p.model.init_seed.to_string()]);
            let stamp = dir.join(".agop-init");
            if std::fs::read_to_string(&stamp).ok().as_deref() != Some(key.as_str()) {
                say(
                    quiet,
                    format!(
                        "[model] init-model {} (seed {}) → {}",
                        cfg_path.display(),
                        p.model.init_seed,
                        dir.display()
                    ),
                );
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

    let tokens = out.join("tokens.parquet");
    let sources = p.sources();
    let key = fingerprint(&[
        &model_sha,
        &sources.join("\n"),
        &p.corpus.seq_len.to_string(),
        &format!("{:?}", p.corpus.max_tokens),
        &p.corpus.text_column,
        &p.corpus.skip_invalid_utf8.to_string(),
    ]);
    if has_inputs_key(&tokens, &key) {
        say(quiet, format!("[tokenize] {} is up to date", tokens.display()));
    } else {
        say(quiet, format!("[tokenize] {} → {}", sources.join(", "), tokens.display()));
        let opts = TokenizeOptions {
            sources,
            seq_len: p.corpus.seq_len,
            max_tokens: p.corpus.max_tokens,
            corpus: CorpusOptions {
                text_column: p.corpus.text_column.clone(),
                skip_invalid_utf8: p.corpus.skip_invalid_utf8,
            },
            progress: !quiet,
            inputs: key,
        };
        let n = stages::tokenize(&model_spec, revision.as_deref(), &opts, &tokens)?;
        say(quiet, format!("[tokenize] {n} windows of {} tokens", p.corpus.seq_len));
    }
    let tokens_sha = stages::sha256_file(&tokens)?;
    let n_windows = outputs::read_tokens(&tokens)?.0.len() as u64;
    Ok(Prepared { out: out.to_path_buf(), model_spec, revision, model_sha, tokens, tokens_sha, n_windows })
}

fn settings(p: &Pipeline) -> Settings {
    let m = &p.measure;
    Settings { output: m.output, estimator: m.estimator, probes: m.probes, seed: m.seed }
}

/// Does a GOP file hold this pipeline's measurement of `weights` (for the given shard)?
fn gop_matches(
    meta: &GopMeta,
    p: &Pipeline,
    prep: &Prepared,
    weights: WeightsKind,
    shard: Option<(usize, usize)>,
) -> bool {
    let m = &p.measure;
    meta.model_sha256 == prep.model_sha
        && meta.weights == weights.as_str()
        && meta.output == m.output.as_str()
        && meta.estimator == m.estimator.as_str()
        && meta.probes == settings(p).recorded_probes()
        && meta.seed == m.seed
        && meta.tokens_sha256 == prep.tokens_sha
        && meta.total_windows == prep.n_windows
        && match shard {
            Some((i, n)) => meta.shard == format!("{i}/{n}"),
            None => meta.n_windows == prep.n_windows,
        }
}

/// The whole-run GOP file of one weights setting.
pub fn gop_path(out: &Path, weights: WeightsKind) -> PathBuf {
    out.join(format!("gop-{}.safetensors", weights.as_str()))
}

/// The GOP file of one shard.
pub fn shard_path(out: &Path, weights: WeightsKind, i: usize, n: usize) -> PathBuf {
    out.join("shards").join(format!("gop-{}-{i}-of-{n}.safetensors", weights.as_str()))
}

/// Stage 2: measure one weights setting, whole (`shard` None) or one shard of it.
pub fn measure(
    p: &Pipeline,
    prep: &Prepared,
    weights: WeightsKind,
    shard: Option<(usize, usize)>,
    quiet: bool,
) -> Result<PathBuf> {
    let path = match shard {
        Some((i, n)) => shard_path(&prep.out, weights, i, n),
        None => gop_path(&prep.out, weights),
    };
    let label = match shard {
        Some((i, n)) => format!("measure {} {i}/{n}", weights.as_str()),
        None => format!("measure {}", weights.as_str()),
    };
    if Gop::load(&path).map(|g| gop_matches(&g.meta, p, prep, weights, shard)).unwrap_or(false) {
        say(quiet, format!("[{label}] {} is up to date", path.display()));
        return Ok(path);
    }
    let m = &p.measure;
    say(
        quiet,
        format!("[{label}] {} {} ({} probes) → {}", m.estimator.as_str(), m.output.as_str(), m.probes, path.display()),
    );
    let opts = MeasureOptions { progress: !quiet, shard, ..MeasureOptions::new(weights, settings(p), m.batch) };
    stages::measure(&prep.model_spec, prep.revision.as_deref(), &prep.tokens, &path, &opts)?;
    Ok(path)
}

/// Stage 3: (with `shards`) merge the shard files of every weights setting, then correlate
/// and report.
pub fn reduce(p: &Pipeline, prep: &Prepared, shards: Option<usize>, quiet: bool) -> Result<()> {
    let mut gops = Vec::new();
    for &weights in &p.measure.weights {
        let path = gop_path(&prep.out, weights);
        if let Some(n) = shards {
            let done = Gop::load(&path).map(|g| gop_matches(&g.meta, p, prep, weights, None)).unwrap_or(false);
            if done {
                say(quiet, format!("[merge {}] {} is up to date", weights.as_str(), path.display()));
            } else {
                let parts: Vec<PathBuf> = (0..n).map(|i| shard_path(&prep.out, weights, i, n)).collect();
                if let Some(missing) = parts.iter().find(|p| !p.is_file()) {
                    bail_bad!("shard file {} is missing; measure every shard before reducing", missing.display());
                }
                say(quiet, format!("[merge {}] {n} shards → {}", weights.as_str(), path.display()));
                let merged = stages::merge(&parts, &path)?;
                if merged.meta.n_windows != prep.n_windows {
                    bail_bad!("merged shards cover {} of {} windows", merged.meta.n_windows, prep.n_windows);
                }
            }
        }
        gops.push(path);
    }

    let corr = prep.out.join("correlations.parquet");
    let shas = gops.iter().map(|g| stages::sha256_file(g)).collect::<Result<Vec<_>>>()?;
    let powers = format!("{:?}", p.correlate.powers);
    let mut parts: Vec<&str> = shas.iter().map(String::as_str).collect();
    parts.push(&powers);
    parts.push(&p.name);
    let key = fingerprint(&parts);
    if has_inputs_key(&corr, &key) {
        say(quiet, format!("[correlate] {} is up to date", corr.display()));
    } else {
        say(quiet, format!("[correlate] → {}", corr.display()));
        let ctx = RunContext {
            pipeline: p.name.clone(),
            corpus: p.corpus.sources.join(", "),
            text: p.text.clone(),
            inputs: key,
        };
        stages::correlate(&prep.model_spec, prep.revision.as_deref(), &gops, &corr, &p.correlate.powers, None, &ctx)?;
    }
    let report = crate::report::report(&prep.out)?;
    if !quiet {
        println!("{report}");
    }
    Ok(())
}

/// Run every stage in one process. Returns the output folder.
pub fn run(p: &Pipeline, out: Option<&Path>, quiet: bool) -> Result<PathBuf> {
    let out = out_dir(p, out);
    let prep = prepare(p, &out, quiet)?;
    for &weights in &p.measure.weights {
        measure(p, &prep, weights, None, quiet)?;
    }
    reduce(p, &prep, None, quiet)?;
    Ok(out)
}
