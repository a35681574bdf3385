//! `agop run`: every stage of a pipeline into `outputs/<name>/`, skipping a stage whose output
//! is complete and was made from the same inputs (a fingerprint stored in the file's metadata).
//! The stages are also callable one by one (`--stage`), which is how cluster jobs run them.
//!
//! Layout of the output folder:
//!   model/                         only for `init_config` pipelines: the random checkpoint
//!   model.json                     the resolved model (id, commit, folder, weights sha256)
//!   tokens.parquet
//!   shards/gop-<weights>-<i>-of-<n>.safetensors   only for sharded (cluster) runs
//!   gop-pretrained.safetensors, gop-random-init.safetensors
//!   gop-pretrained@<revision>.safetensors          each checkpoint of a series (instead)
//!   model-pretrained@<revision>.json, correlations-pretrained@<revision>.parquet
//!                                  a checkpoint deleted from the cache (`keep_checkpoints = false`)
//!   correlations.parquet
//!   plots/*.png

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::config::Pipeline;
use crate::bail_bad;
use crate::correlate::{self, RunContext};
use crate::fetch::ModelRecord;
use crate::fetch::{resolve_model, ResolvedModel};
use crate::measure::groups::GroupedFile;
use crate::measure::{self, GopMeta, MeasureOptions, Settings};
use crate::model::{init_model, WeightsKind};
use crate::tokenize::corpus::CorpusOptions;
use crate::tokenize::{self, read_tokens, TokenizeOptions};
use crate::util::parquet::parquet_metadata;
use crate::util::{fingerprint, sha256_file, write_atomic};

fn say(quiet: bool, msg: String) {
    if !quiet {
        eprintln!("{msg}");
    }
}

fn has_inputs_key(path: &Path, key: &str) -> bool {
    path.is_file() && parquet_metadata(path).map(|m| m.iter().any(|(k, v)| k == "inputs" && v == key)).unwrap_or(false)
}

/// The output folder of a pipeline: `--out`, or `outputs/<name>`.
pub fn out_dir(p: &Pipeline, out: Option<&Path>) -> PathBuf {
    out.map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("outputs").join(&p.name))
}

/// What the prepare stage established: the model and the tokens file.
pub struct Prepared {
    pub out: PathBuf,
    pub model: ResolvedModel,
    pub tokens: PathBuf,
    pub tokens_sha: String,
    pub n_windows: u64,
}

/// The pipeline's model: the random checkpoint written by init-model into `out/model/` for
/// `init_config` pipelines (rewritten only when the config or seed changed), else `[model] id`
/// resolved (fetched when needed).
fn pipeline_model(p: &Pipeline, out: &Path, quiet: bool) -> Result<ResolvedModel> {
    if let Some(t) = &p.train {
        train_series(p, t, out, quiet)?;
    }
    if let Some(dir) = p.local_checkpoint(out, &p.checkpoints()[0]) {
        return ResolvedModel::local(&dir);
    }
    match &p.model.init_config {
        Some(cfg) => {
            let dir = out.join("model");
            let cfg_path = p.resolve_path(cfg);
            let cfg_text = std::fs::read_to_string(&cfg_path)
                .map_err(|e| crate::bad!("init_config {}: {e}", cfg_path.display()))?;
            let key = fingerprint(&[&cfg_text, &p.model.init_seed.to_string()]);
            let stamp = dir.join(".agop-init");
            let stamped = std::fs::read_to_string(&stamp).ok();
            if stamped.as_deref() != Some(key.as_str()) {
                // Only a folder agop made (stamped) is replaced; anything else there is the user's.
                let users = dir.exists() && stamped.is_none() && std::fs::read_dir(&dir)?.next().is_some();
                let holds_config = std::fs::canonicalize(&cfg_path)
                    .ok()
                    .zip(std::fs::canonicalize(&dir).ok())
                    .is_some_and(|(c, d)| c.starts_with(d));
                if users || holds_config {
                    bail_bad!(
                        "{} holds files agop did not write{}; an init_config pipeline writes its model there: move \
                         them, or give another --out",
                        dir.display(),
                        if holds_config {
                            format!(" (init_config {} among them)", cfg_path.display())
                        } else {
                            String::new()
                        }
                    );
                }
                say(
                    quiet,
                    format!(
                        "[model] init-model {} (seed {}) → {}",
                        cfg_path.display(),
                        p.model.init_seed,
                        dir.display()
                    ),
                );
                // The pipeline's own folder: a stale model is replaced (init-model refuses to).
                // Written and stamped in a temporary folder, then renamed: a run stopped midway
                // leaves no unstamped model/ (which the next run would take for the user's).
                let partial = out.join(".model.partial");
                if partial.exists() {
                    std::fs::remove_dir_all(&partial)?;
                }
                init_model(&cfg_path, p.model.init_seed, &partial)?;
                write_atomic(&partial.join(".agop-init"), key.as_bytes())?;
                if dir.exists() {
                    std::fs::remove_dir_all(&dir)?;
                }
                std::fs::rename(&partial, &dir)
                    .with_context(|| format!("renaming {} to {}", partial.display(), dir.display()))?;
            } else {
                say(quiet, format!("[model] {} is up to date", dir.display()));
            }
            ResolvedModel::local(&dir)
        }
        None => resolve_model(&p.model_spec().expect("validated"), p.checkpoints()[0].revision.as_deref()),
    }
}

/// `[train]`: train (or resume, or find finished) the run in `<out>/train/`.
fn train_series(p: &Pipeline, t: &super::config::TrainSpec, out: &Path, quiet: bool) -> Result<()> {
    let settings = p.train_settings(t)?;
    let dir = out.join("train");
    if crate::train::is_finished(&dir, &settings)? {
        say(quiet, format!("[train] {} is up to date ({} steps)", dir.display(), settings.steps));
        return Ok(());
    }
    say(quiet, format!("[train] {} steps → {}", settings.steps, dir.display()));
    let r = crate::train::train(&crate::train::TrainOptions { settings, out: dir, progress: !quiet })?;
    if let Some(tps) = r.tokens_per_sec {
        say(quiet, format!("[train] {tps:.0} training tokens/s"));
    }
    Ok(())
}

/// The pretrained checkpoints to measure with their resolved models: the prepared model, and in
/// a series each further revision: from its record (`model-<tag>.json`) while its files are
/// unchanged, else resolved (fetched when needed), hashed once and recorded.
fn checkpoint_model(p: &Pipeline, prep: &Prepared, k: usize) -> Result<ResolvedModel> {
    if k == 0 {
        return Ok(prep.model.clone());
    }
    let record = checkpoint_record_path(&prep.out, &tag(p, WeightsKind::Pretrained, k));
    if let Some(m) = read_record(&record).as_ref().and_then(ResolvedModel::from_record) {
        return Ok(m);
    }
    let c = &p.checkpoints()[k];
    let m = match p.local_checkpoint(&prep.out, c) {
        Some(dir) => ResolvedModel::local(&dir)?,
        None => resolve_model(&p.model_spec().expect("validated"), c.revision.as_deref())?,
    };
    check_series_member(p, prep, k, &m)?;
    write_atomic(&record, serde_json::to_string_pretty(&m.record()?)?.as_bytes())?;
    Ok(m)
}

/// Checkpoint `k` of a series belongs with the first: the same architecture (config). (Identical
/// weights at two steps are kept and reported: [`identical_weights`].)
fn check_series_member(p: &Pipeline, prep: &Prepared, k: usize, m: &ResolvedModel) -> Result<()> {
    let (first, this) = (prep.model.config()?, m.config()?);
    let rev = p.checkpoints()[k].revision.clone().unwrap_or_default();
    let rev0 = p.checkpoints()[0].revision.clone().unwrap_or_default();
    if first != this {
        let a = serde_json::to_value(&first)?;
        let b = serde_json::to_value(&this)?;
        let fields: Vec<String> = a
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(key, v)| b.get(key.as_str()) != Some(v))
            .map(|(key, v)| format!("{key} {v} vs {}", b.get(key.as_str()).unwrap_or(&serde_json::Value::Null)))
            .collect();
        bail_bad!(
            "checkpoint {rev} ({}) has another architecture than the series' first checkpoint {rev0}: {}; a series \
             is one model along training",
            m.dir.display(),
            fields.join(", ")
        );
    }
    Ok(())
}

/// Fetch (or find in the cache) every checkpoint of a series, so that cluster jobs can read
/// them offline (the prepare stage of `agop slurm`).
pub fn fetch_checkpoints(p: &Pipeline, quiet: bool) -> Result<()> {
    if p.train.is_some() || p.local_series().is_some() {
        return Ok(()); // local folders: nothing to fetch
    }
    for c in p.checkpoints().iter().skip(1) {
        let m = resolve_model(&p.model_spec().expect("validated"), c.revision.as_deref())?;
        say(quiet, format!("[model] {} @ {} → {}", m.id, m.revision, m.dir.display()));
    }
    Ok(())
}

/// What names a measurement's files: `pretrained`, `random-init`, in a series
/// `pretrained@<revision>` (characters other than letters, digits, `.`, `-`, `_` become `_`),
/// and for the further random inits of `init_seeds` `random-init-seed<S>`.
fn tag(p: &Pipeline, weights: WeightsKind, k: usize) -> String {
    match (weights, p.is_series()) {
        (WeightsKind::RandomInit, _) if k > 0 => format!("random-init-seed{}", p.measurement_seed(weights, k)),
        (WeightsKind::Pretrained, true) => {
            let rev = p.checkpoints()[k].revision.clone().unwrap_or_default();
            let safe: String =
                rev.chars().map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '_' }).collect();
            format!("pretrained@{safe}")
        }
        _ => weights.as_str().to_string(),
    }
}

/// The measurements of `weights`: every checkpoint of a series for pretrained weights, every
/// init seed for random-init (drawn from the first checkpoint's config).
fn checkpoint_indices(p: &Pipeline, weights: WeightsKind) -> std::ops::Range<usize> {
    0..p.measurement_count(weights)
}

/// Are checkpoints after the first deleted from the cache once measured and correlated?
fn evicts(p: &Pipeline) -> bool {
    p.is_series() && !p.model.keep_checkpoints
}

/// The record of checkpoint `tag` of a series (as `model.json` is of the first): identity,
/// commit, weights sha256 and file stamps, so later stages neither resolve nor hash it again,
/// and a checkpoint deleted from the cache is still known by its sha256.
fn checkpoint_record_path(out: &Path, tag: &str) -> PathBuf {
    out.join(format!("model-{tag}.json"))
}

/// The correlation rows of a checkpoint that [`evicts`] deletes, made before its deletion.
fn evicted_rows_path(out: &Path, tag: &str) -> PathBuf {
    out.join(format!("correlations-{tag}.parquet"))
}

/// A model record (`model.json`, `model-<tag>.json`), if it exists and parses.
fn read_record(path: &Path) -> Option<ModelRecord> {
    std::fs::read_to_string(path).ok().and_then(|t| serde_json::from_str(&t).ok())
}

/// `model.json` of an output folder.
fn record_path(out: &Path) -> PathBuf {
    out.join("model.json")
}

/// Stage 1: the model (fetched, or written by init-model), its record `model.json`, and
/// tokens.parquet.
pub fn prepare(p: &Pipeline, out: &Path, quiet: bool) -> Result<Prepared> {
    // Before anything is written there: a run folder inside a corpus folder would become corpus.
    let sources: Vec<PathBuf> = p.sources().iter().map(PathBuf::from).collect();
    crate::util::fs::check_output_dir(out, "--out", &sources)?;
    let existed = out.exists();
    std::fs::create_dir_all(out)?;
    let model = pipeline_model(p, out, quiet).inspect_err(|_| {
        // A run that could not even find its model leaves no empty output folder behind.
        if !existed {
            let _ = std::fs::remove_dir(out);
        }
    })?;
    let record = model.record()?;
    write_atomic(&record_path(out), serde_json::to_string_pretty(&record)?.as_bytes())?;
    write_atomic(&model_key_path(out), model_key(p)?.as_bytes())?;
    let model_sha = record.weights_sha256;

    let tokens = out.join("tokens.parquet");
    let key = tokens_key(p, &model_sha, &p.sources());
    if tokens_up_to_date(p, &tokens, &model_sha) {
        say(quiet, format!("[tokenize] {} is up to date", tokens.display()));
    } else {
        let sources = p.sources();
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
        let n = tokenize::tokenize(&model, &opts, &tokens)?;
        say(quiet, format!("[tokenize] {n} windows of {} tokens", p.corpus.seq_len));
    }
    finish_prepared(out, model, tokens)
}

/// What later stages (cluster array tasks among them) start from: the prepare stage's record
/// and tokens, without hashing the weights again when `model.json` still describes the files on
/// disk (same paths, sizes and modification times). Anything missing or stale: run prepare.
pub fn prepared(p: &Pipeline, out: &Path) -> Result<Prepared> {
    // model.json describes the model of the pipeline that prepared it; another [model] (or
    // [train]) prepares again.
    let same_model = std::fs::read_to_string(model_key_path(out)).ok() == Some(model_key(p)?);
    let record = read_record(&record_path(out)).filter(|_| same_model);
    let Some(model) = record.as_ref().and_then(ResolvedModel::from_record) else {
        return prepare(p, out, true);
    };
    let tokens = out.join("tokens.parquet");
    if !tokens_up_to_date(p, &tokens, model.weights_sha256()?) {
        return prepare(p, out, true);
    }
    finish_prepared(out, model, tokens)
}

/// Where prepare records which `[model]` and `[train]` model.json describes.
fn model_key_path(out: &Path) -> PathBuf {
    out.join(".agop-model")
}

/// The fingerprint of the pipeline's `[model]` and `[train]` sections.
fn model_key(p: &Pipeline) -> Result<String> {
    Ok(fingerprint(&[&serde_json::to_string(&p.model)?, &serde_json::to_string(&p.train)?]))
}

/// The fingerprint of what tokens.parquet is made from, with the corpus `sources` as recorded.
fn tokens_key(p: &Pipeline, model_sha: &str, sources: &[String]) -> String {
    fingerprint(&[
        model_sha,
        &sources.join("\n"),
        &p.corpus.seq_len.to_string(),
        &format!("{:?}", p.corpus.max_tokens),
        &p.corpus.text_column,
        &p.corpus.skip_invalid_utf8.to_string(),
    ])
}

/// Was tokens.parquet made from these inputs? Tokens written before sources were recorded as
/// absolute paths (2026-12-03) count when the pipeline file is named as it was then, so that an
/// upgrade does not tokenize and measure everything again.
fn tokens_up_to_date(p: &Pipeline, tokens: &Path, model_sha: &str) -> bool {
    has_inputs_key(tokens, &tokens_key(p, model_sha, &p.sources()))
        || has_inputs_key(tokens, &tokens_key(p, model_sha, &p.sources_as_named()))
}

fn finish_prepared(out: &Path, model: ResolvedModel, tokens: PathBuf) -> Result<Prepared> {
    let tokens_sha = sha256_file(&tokens)?;
    let n_windows = read_tokens(&tokens)?.0.len() as u64;
    Ok(Prepared { out: out.to_path_buf(), model, tokens, tokens_sha, n_windows })
}

/// The measure settings of measurement `k` of `weights` (its seed: [`Pipeline::measurement_seed`]).
fn settings(p: &Pipeline, weights: WeightsKind, k: usize) -> Settings {
    let m = &p.measure;
    let seed = p.measurement_seed(weights, k);
    Settings { output: m.output, estimator: m.estimator, probes: m.probes, seed, fact: m.fact }
}

/// Does a GOP file hold this pipeline's measurement `k` of `weights` (for the given shard)?
#[allow(clippy::too_many_arguments)]
fn gop_matches(
    meta: &GopMeta,
    p: &Pipeline,
    prep: &Prepared,
    model: &ResolvedModel,
    weights: WeightsKind,
    k: usize,
    shard: Option<(usize, usize)>,
) -> bool {
    let m = &p.measure;
    model.weights_sha256().map(|sha| meta.model_sha256 == sha).unwrap_or(false)
        && meta.weights == weights
        && meta.output == m.output
        && meta.estimator == m.estimator
        && meta.probes == settings(p, weights, k).recorded_probes()
        && meta.seed == p.measurement_seed(weights, k)
        && meta.tokens_sha256 == prep.tokens_sha
        && meta.total_windows == prep.n_windows
        && meta.groups == m.groups
        && meta.fact == m.fact
        && meta.precision == m.precision
        && match shard {
            Some((i, n)) => meta.shard == format!("{i}/{n}"),
            None => meta.n_windows == prep.n_windows,
        }
}

/// Is the GOP file at `path` (with its group files) this pipeline's finished measurement `k` of
/// `weights` on `model` ([`gop_matches`])?
#[allow(clippy::too_many_arguments)]
fn gop_done(
    path: &Path,
    p: &Pipeline,
    prep: &Prepared,
    model: &ResolvedModel,
    weights: WeightsKind,
    k: usize,
    shard: Option<(usize, usize)>,
) -> bool {
    GroupedFile::open(path).map(|g| gop_matches(&g.total.meta, p, prep, model, weights, k, shard)).unwrap_or(false)
}

/// The whole-run GOP file of one weights setting.
pub fn gop_path(out: &Path, weights: WeightsKind) -> PathBuf {
    tagged_gop_path(out, weights.as_str())
}

/// The whole-run GOP file of a measurement tag ([`tag`]).
fn tagged_gop_path(out: &Path, tag: &str) -> PathBuf {
    out.join(format!("gop-{tag}.safetensors"))
}

/// The GOP file of one shard.
pub fn shard_path(out: &Path, weights: WeightsKind, i: usize, n: usize) -> PathBuf {
    tagged_shard_path(out, weights.as_str(), i, n)
}

fn tagged_shard_path(out: &Path, tag: &str, i: usize, n: usize) -> PathBuf {
    out.join("shards").join(format!("gop-{tag}-{i}-of-{n}.safetensors"))
}

/// Stage 2: measure one weights setting, whole (`shard` None) or one shard of it; for the
/// pretrained weights of a checkpoint series every checkpoint in turn (one checkpoint's files
/// are complete before the next is fetched, so a failure keeps what was measured).
pub fn measure(
    p: &Pipeline,
    prep: &Prepared,
    weights: WeightsKind,
    shard: Option<(usize, usize)>,
    quiet: bool,
) -> Result<Vec<PathBuf>> {
    checkpoint_indices(p, weights).map(|k| measure_checkpoint(p, prep, weights, k, shard, quiet)).collect()
}

/// One measurement `k` of [`measure`] (`agop run --stage measure --checkpoint K`): checkpoint `k`
/// of the pretrained weights, or the random init of seed `seed + k`.
pub fn measure_checkpoint(
    p: &Pipeline,
    prep: &Prepared,
    weights: WeightsKind,
    k: usize,
    shard: Option<(usize, usize)>,
    quiet: bool,
) -> Result<PathBuf> {
    if weights == WeightsKind::Pretrained && k > 0 && evicts(p) {
        if shard.is_some() {
            bail_bad!(
                "[model] keep_checkpoints = false is for single-process runs (`agop run`): shards are merged and \
                 correlated in the reduce job, which needs every checkpoint's weights"
            );
        }
        return measure_evicted(p, prep, k, quiet);
    }
    let tag = tag(p, weights, k);
    let path = match shard {
        Some((i, n)) => tagged_shard_path(&prep.out, &tag, i, n),
        None => tagged_gop_path(&prep.out, &tag),
    };
    let label = match shard {
        Some((i, n)) => format!("measure {tag} {i}/{n}"),
        None => format!("measure {tag}"),
    };
    let model = checkpoint_model(p, prep, if weights == WeightsKind::Pretrained { k } else { 0 })?;
    if gop_done(&path, p, prep, &model, weights, k, shard) {
        say(quiet, format!("[{label}] {} is up to date", path.display()));
        return Ok(path);
    }
    measure_into(p, prep, &model, (weights, k), shard, &path, &label, quiet)?;
    Ok(path)
}

/// Measure `weights` of `model` (measurement `k`: one shard, or all windows) into `path`.
#[allow(clippy::too_many_arguments)]
fn measure_into(
    p: &Pipeline,
    prep: &Prepared,
    model: &ResolvedModel,
    (weights, k): (WeightsKind, usize),
    shard: Option<(usize, usize)>,
    path: &Path,
    label: &str,
    quiet: bool,
) -> Result<()> {
    let m = &p.measure;
    say(
        quiet,
        format!("[{label}] {} {} ({} probes) → {}", m.estimator.as_str(), m.output.as_str(), m.probes, path.display()),
    );
    let opts = MeasureOptions {
        progress: !quiet,
        shard,
        groups: m.groups,
        precision: m.precision,
        ..MeasureOptions::new(weights, settings(p, weights, k), m.batch)
    }
    .on(crate::model::parse_device(&m.device)?);
    measure::measure(model, &prep.tokens, path, &opts)?;
    Ok(())
}

/// The run context of a pipeline's correlate runs, with the fingerprint of their inputs.
fn context(p: &Pipeline, inputs: String) -> RunContext {
    RunContext {
        pipeline: p.name.clone(),
        corpus: p.corpus.sources.join(", "),
        text: p.text.clone(),
        inputs,
        warnings: vec![],
    }
}

/// What a checkpoint's own correlation rows are made from: its GOP file (and group files, whose
/// sums the GOP file's sha covers through its metadata), the correlate settings, and the base
/// checkpoint of the delta-gram rows.
fn evicted_rows_key(p: &Pipeline, prep: &Prepared, gop: &Path) -> Result<String> {
    let settings = format!("{:?} groups {}", p.correlate.powers, p.measure.groups);
    Ok(fingerprint(&[&sha256_file(gop)?, &settings, prep.model.weights_sha256()?, &p.name]))
}

/// Checkpoint `k` > 0 of a series with `keep_checkpoints = false`: fetched, measured, correlated
/// on its own (rows in `correlations-<tag>.parquet`, which the reduce stage adds to the table),
/// then its weights deleted from the hub cache. Up to date without fetching when its record,
/// GOP file and rows all still match.
fn measure_evicted(p: &Pipeline, prep: &Prepared, k: usize, quiet: bool) -> Result<PathBuf> {
    let weights = WeightsKind::Pretrained;
    let tag = tag(p, weights, k);
    let (path, rows, record) =
        (tagged_gop_path(&prep.out, &tag), evicted_rows_path(&prep.out, &tag), checkpoint_record_path(&prep.out, &tag));
    let label = format!("measure {tag}");
    if let Some(r) = &read_record(&record) {
        let model = ResolvedModel::recorded(r);
        if gop_done(&path, p, prep, &model, weights, k, None)
            && has_inputs_key(&rows, &evicted_rows_key(p, prep, &path)?)
        {
            say(quiet, format!("[{label}] {} and {} are up to date", path.display(), rows.display()));
            return Ok(path);
        }
    }
    let model = checkpoint_model(p, prep, k)?;
    if gop_done(&path, p, prep, &model, weights, k, None) {
        say(quiet, format!("[{label}] {} is up to date", path.display()));
    } else {
        measure_into(p, prep, &model, (weights, k), None, &path, &label, quiet)?;
    }
    say(quiet, format!("[correlate {tag}] → {}", rows.display()));
    let source = correlate::Source { model: model.clone(), gop: path.clone(), step: p.checkpoints()[k].step };
    let ctx = context(p, evicted_rows_key(p, prep, &path)?);
    let opts = correlate::CorrelateOptions::new(&p.correlate.powers);
    correlate::correlate_sources(std::slice::from_ref(&source), Some(&prep.model), &rows, &opts, &ctx)?;
    if p.features.enabled {
        let fpath = evicted_features_path(&prep.out, &tag);
        say(quiet, format!("[features {tag}] → {}", fpath.display()));
        crate::features::features_sources(&[source], &fpath, &feature_options(p, vec![]), &ctx)?;
    }
    let freed = crate::fetch::hub::evict_weights(&model, &prep.model)?;
    say(quiet, format!("[evict {tag}] deleted its weights from the hub cache ({:.1} MB)", freed as f64 / 1e6));
    Ok(path)
}

/// The features table of an evicted checkpoint, added to features.parquet by the reduce stage.
fn evicted_features_path(out: &Path, tag: &str) -> PathBuf {
    out.join(format!("features-{tag}.parquet"))
}

/// The pipeline's `[features]` settings as options.
fn feature_options(p: &Pipeline, extra_tables: Vec<PathBuf>) -> crate::features::FeatureOptions {
    crate::features::FeatureOptions {
        top: p.features.top,
        tokens: p.features.tokens,
        extra_tables,
        ..Default::default()
    }
}

/// Stage 3: (with `shards`) merge the shard files of every measurement, then correlate,
/// read out the features and report.
pub fn reduce(p: &Pipeline, prep: &Prepared, shards: Option<usize>, quiet: bool) -> Result<()> {
    let mut sources = Vec::new();
    // Checkpoints deleted after their own correlate run: their GOP files and rows.
    let (mut evicted_gops, mut evicted_rows, mut evicted_features) = (Vec::new(), Vec::new(), Vec::new());
    for &weights in &p.measure.weights {
        for k in checkpoint_indices(p, weights) {
            let tag = tag(p, weights, k);
            if weights == WeightsKind::Pretrained && k > 0 && evicts(p) {
                if shards.is_some() {
                    bail_bad!(
                        "[model] keep_checkpoints = false is for single-process runs (`agop run`), not sharded ones"
                    );
                }
                // Measured, correlated and deleted by the measure stage (again here if its rows
                // are missing or stale).
                evicted_gops.push(measure_evicted(p, prep, k, true)?);
                evicted_rows.push(evicted_rows_path(&prep.out, &tag));
                evicted_features.push(evicted_features_path(&prep.out, &tag));
                continue;
            }
            let model = checkpoint_model(p, prep, if weights == WeightsKind::Pretrained { k } else { 0 })?;
            let path = tagged_gop_path(&prep.out, &tag);
            if let Some(n) = shards {
                let done = gop_done(&path, p, prep, &model, weights, k, None);
                if done {
                    say(quiet, format!("[merge {tag}] {} is up to date", path.display()));
                } else {
                    if n == 0 {
                        bail_bad!("--shards must be at least 1");
                    }
                    let parts: Vec<PathBuf> = (0..n).map(|i| tagged_shard_path(&prep.out, &tag, i, n)).collect();
                    if let Some(missing) = parts.iter().find(|p| !p.is_file()) {
                        bail_bad!("shard file {} is missing; measure every shard before reducing", missing.display());
                    }
                    // Each shard must be this pipeline's (its settings, tokens and model), not a
                    // leftover of an earlier one.
                    for (i, part) in parts.iter().enumerate() {
                        if !gop_done(part, p, prep, &model, weights, k, Some((i, n))) {
                            bail_bad!(
                                "shard file {} was not measured by this pipeline as it is now (other settings, \
                                 tokens or model); measure shard {i}/{n} again before reducing",
                                part.display()
                            );
                        }
                    }
                    say(quiet, format!("[merge {tag}] {n} shards → {}", path.display()));
                    let merged = measure::merge_files(&parts, &path)?;
                    if merged.meta.n_windows != prep.n_windows {
                        bail_bad!("merged shards cover {} of {} windows", merged.meta.n_windows, prep.n_windows);
                    }
                }
            }
            if !gop_done(&path, p, prep, &model, weights, k, None) {
                bail_bad!(
                    "{} is {}; run the measure stage (or measure the shards and reduce with --shards) first",
                    path.display(),
                    if path.is_file() {
                        "not this pipeline's measurement as it is now (other settings, tokens or model)"
                    } else {
                        "missing"
                    }
                );
            }
            let step = if weights == WeightsKind::Pretrained { p.checkpoints()[k].step } else { None };
            sources.push(correlate::Source { model, gop: path, step });
        }
    }

    let warnings = identical_weights(p, prep)?;
    for w in &warnings {
        eprintln!("warning: {w}");
    }
    let corr = prep.out.join("correlations.parquet");
    let shas = sources
        .iter()
        .map(|s| s.gop.as_path())
        .chain(evicted_gops.iter().map(PathBuf::as_path))
        .map(sha256_file)
        .collect::<Result<Vec<_>>>()?;
    let powers = format!("{:?} groups {}", p.correlate.powers, p.measure.groups);
    let mut parts: Vec<&str> = shas.iter().map(String::as_str).collect();
    parts.push(&powers);
    parts.push(&p.name);
    let key = fingerprint(&parts);
    if has_inputs_key(&corr, &key) {
        say(quiet, format!("[correlate] {} is up to date", corr.display()));
    } else {
        say(quiet, format!("[correlate] → {}", corr.display()));
        let ctx = RunContext { warnings, ..context(p, key.clone()) };
        let opts = correlate::CorrelateOptions {
            extra_tables: evicted_rows,
            ..correlate::CorrelateOptions::new(&p.correlate.powers)
        };
        let base = p.is_series().then_some(&prep.model);
        correlate::correlate_sources(&sources, base, &corr, &opts, &ctx)?;
    }
    let feats = prep.out.join("features.parquet");
    if p.features.enabled {
        let settings = format!("features top {} tokens {}", p.features.top, p.features.tokens);
        let fkey = fingerprint(&[&key, &settings]);
        if has_inputs_key(&feats, &fkey) {
            say(quiet, format!("[features] {} is up to date", feats.display()));
        } else {
            say(quiet, format!("[features] → {}", feats.display()));
            let ctx = context(p, fkey);
            crate::features::features_sources(&sources, &feats, &feature_options(p, evicted_features), &ctx)?;
        }
    }
    if !p.features.enabled {
        // Features of an earlier run with them on would be read as this run's.
        for f in [feats.clone(), crate::features::overlap_path(&feats)] {
            if f.exists() {
                std::fs::remove_file(&f).with_context(|| format!("removing {}", f.display()))?;
            }
        }
    }
    let report = crate::report::report(&prep.out)?;
    if !quiet {
        crate::util::print_stdout(&report)?;
    }
    Ok(())
}

/// The measure rate the time estimate is scaled from: GPT-2 small (sketch, 1 probe, logits,
/// FACT off) measured 300–316 tokens/s on 2 threads of a 2-core machine on 2026-12-03
/// (docs/performance.md; 316 at a quiet hour, a little less at busier ones).
const REFERENCE_RATE: f64 = 300.0;
/// How much longer `--fact` makes a measurement (the same benchmark: 2.32×).
const FACT_COST: f64 = 2.32;

/// What the measure stage will cost, roughly: tokens measured (every checkpoint and init), the
/// time on `threads` CPU threads (None on a GPU, or for the exact estimator, whose cost grows
/// with the output's width), and the bytes of GOP files it writes.
#[derive(Debug, Clone, PartialEq)]
pub struct Estimate {
    /// Measurements (every checkpoint and init), each over the whole tokens file.
    pub measurements: u64,
    pub tokens: u64,
    pub seconds: Option<f64>,
    pub bytes: u64,
}

/// [`Estimate`] for a pipeline whose model has config `cfg` and whose tokens file has
/// `n_windows` windows. The time scales [`REFERENCE_RATE`] by the forward FLOPs per token
/// (2·(12·n_layer·C² + C·V), attention's T-dependent part left out), by the passes per window
/// (a forward and a backward per probe: 1 + 2·probes), by the threads, and by [`FACT_COST`].
pub fn estimate(p: &Pipeline, cfg: &crate::model::ModelConfig, n_windows: u64, threads: usize) -> Estimate {
    let m = &p.measure;
    let measurements: u64 = m.weights.iter().map(|&w| p.measurement_count(w) as u64).sum();
    let tokens = n_windows * p.corpus.seq_len as u64 * measurements;
    // GPT-2 small (12 layers of 12·C² weights, C = 768, 50257 tokens); one probe (3 passes).
    let reference = 2.0 * (12.0 * 12.0 * 768.0 * 768.0 + 768.0 * 50257.0) * 3.0;
    let passes = match (m.estimator, m.output) {
        (crate::measure::Estimator::Sketch, crate::measure::Output::Logits) => 1.0 + 2.0 * m.probes as f64,
        (_, crate::measure::Output::Loss) => 3.0,
        (crate::measure::Estimator::Exact, _) => f64::NAN,
    };
    let rate = REFERENCE_RATE * (threads.max(1) as f64 / 2.0) * reference
        / (cfg.flops_per_token() * passes)
        / if m.fact { FACT_COST } else { 1.0 };
    let on_cpu = m.device == "cpu";
    let seconds = (on_cpu && rate.is_finite()).then(|| tokens as f64 / rate);
    let files = if m.groups > 1 { 1 + m.groups as u64 } else { 1 };
    let bytes = crate::measure::Gop::file_bytes(cfg, m.fact) * files * measurements;
    Estimate { measurements, tokens, seconds, bytes }
}

/// The estimate as one line for the start of a run.
fn estimate_line(p: &Pipeline, prep: &Prepared) -> Result<String> {
    let threads = rayon::current_num_threads();
    let e = estimate(p, &prep.model.config()?, prep.n_windows, threads);
    let time = match e.seconds {
        Some(s) if s >= 3600.0 => format!("about {:.1} h on {threads} threads", s / 3600.0),
        Some(s) => format!("about {:.0} min on {threads} threads", (s / 60.0).max(1.0)),
        None => "time not estimated (GPU or exact estimator)".to_string(),
    };
    Ok(format!(
        "[estimate] measuring everything: {} tokens ({} measurements × {} tokens){}: {time}, {:.1} GB \
         of GOP files in {} (a rough guide, scaled from GPT-2 small's {REFERENCE_RATE} tokens/s on 2 threads; \
         measurements already up to date are skipped below; the progress bars show the real rate)",
        e.tokens,
        e.measurements,
        e.tokens / e.measurements.max(1),
        if p.measure.fact { " with FACT" } else { "" },
        e.bytes as f64 / 1e9,
        prep.out.display()
    ))
}

/// Checkpoints of a series whose weights are byte-identical (some published Pythia branches
/// are copies of others): both are kept, measured and correlated, and named here, for stderr and
/// the report. From each checkpoint's recorded sha256 (deleted checkpoints included).
fn identical_weights(p: &Pipeline, prep: &Prepared) -> Result<Vec<String>> {
    if !p.is_series() {
        return Ok(vec![]);
    }
    let mut seen: Vec<(String, String)> = Vec::new();
    let mut out = Vec::new();
    for (k, c) in p.checkpoints().iter().enumerate() {
        let sha = if k == 0 {
            prep.model.weights_sha256()?.to_string()
        } else {
            match read_record(&checkpoint_record_path(&prep.out, &tag(p, WeightsKind::Pretrained, k))) {
                Some(r) => r.weights_sha256,
                None => continue,
            }
        };
        let rev = c.revision.clone().unwrap_or_default();
        if let Some((first, _)) = seen.iter().find(|(_, s)| *s == sha) {
            out.push(format!(
                "identical weights: checkpoints {first} and {rev} have byte-identical weights (sha256 {}); both are \
                 kept, and their rows are equal",
                &sha[..16.min(sha.len())]
            ));
        }
        seen.push((rev, sha));
    }
    Ok(out)
}

/// Run every stage in one process. Returns the output folder.
pub fn run(p: &Pipeline, out: Option<&Path>, quiet: bool) -> Result<PathBuf> {
    let out = out_dir(p, out);
    let prep = prepare(p, &out, quiet)?;
    say(quiet, estimate_line(p, &prep)?);
    for &weights in &p.measure.weights {
        measure(p, &prep, weights, None, quiet)?;
    }
    reduce(p, &prep, None, quiet)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokenize::{write_tokens, TokensMeta, Window};

    /// tokens.parquet written by agop before sources were recorded as absolute paths (its key
    /// holds the source as the pipeline file's folder joined to it, here `rel/corpus.txt`) is
    /// up to date; so is one with today's key; another corpus is not.
    #[test]
    fn tokens_of_older_versions_are_recognised() {
        let text = "name = \"s\"\n[model]\nid = \"o/n\"\n[corpus]\nsources = [\"corpus.txt\"]\nseq_len = 8\n";
        let p = Pipeline::from_str(text, PathBuf::from("rel"), "test").unwrap();
        let now = p.sources();
        assert!(Path::new(&now[0]).is_absolute() && now[0].ends_with("rel/corpus.txt"), "{now:?}");
        let tmp = tempfile::tempdir().unwrap();
        let tokens = tmp.path().join("tokens.parquet");
        let windows = [Window { index: 0, tokens: vec![1, 2, 3] }];
        for (sources, fresh) in
            [(vec!["rel/corpus.txt".to_string()], true), (now, true), (vec!["rel/other.txt".to_string()], false)]
        {
            let meta = TokensMeta { inputs: tokens_key(&p, "abc", &sources), ..Default::default() };
            write_tokens(&tokens, &windows, &meta).unwrap();
            assert_eq!(tokens_up_to_date(&p, &tokens, "abc"), fresh, "{sources:?}");
            assert!(!tokens_up_to_date(&p, &tokens, "another model"));
        }
    }
}
