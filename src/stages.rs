//! The pipeline stages as library functions: measure, merge, correlate, init-model. The CLI and
//! the pipeline runner call these; tests call them directly.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use sha2::{Digest, Sha256};

use crate::agop::{gop, Gop, GopMeta, Measurer, Settings, Window};
use crate::bail_bad;
use crate::model::{self, Gpt2, Gpt2Config, WeightsKind};
use crate::outputs::{self, RunInfo};

/// A model resolved to a local directory, with its identity for output metadata.
#[derive(Debug, Clone)]
pub struct ResolvedModel {
    /// What the user named: a hub id or a directory.
    pub id: String,
    /// Resolved commit for hub models, `local` for directories.
    pub revision: String,
    pub dir: PathBuf,
}

impl ResolvedModel {
    /// A local checkpoint directory.
    pub fn local(dir: &Path) -> Result<Self> {
        if !dir.join("config.json").is_file() {
            bail_bad!("{}: not a model directory (no config.json)", dir.display());
        }
        Ok(Self { id: dir.display().to_string(), revision: "local".into(), dir: dir.to_path_buf() })
    }

    pub fn config(&self) -> Result<Gpt2Config> {
        Gpt2Config::from_file(&self.dir.join("config.json"))
    }

    /// sha256 of the checkpoint's weights (all safetensors files, in order), hex.
    pub fn weights_sha256(&self) -> Result<String> {
        sha256_files(&model::weights::safetensors_files(&self.dir)?)
    }
}

/// Resolve `--model`: a local directory (hub ids are resolved by `data::hub`).
pub fn resolve_model(spec: &str, revision: Option<&str>) -> Result<ResolvedModel> {
    let p = Path::new(spec);
    if p.is_dir() {
        return ResolvedModel::local(p);
    }
    crate::data::hub::resolve_model(spec, revision)
}

/// Shard `i` of `n`: a contiguous block of the windows (in global window order).
pub fn shard_windows(mut windows: Vec<Window>, shard: Option<(usize, usize)>) -> Result<Vec<Window>> {
    windows.sort_by_key(|w| w.index);
    let Some((i, n)) = shard else { return Ok(windows) };
    if n == 0 || i >= n {
        bail_bad!("--shard {i}/{n}: expected I/N with 0 ≤ I < N");
    }
    let len = windows.len();
    let (s, e) = (i * len / n, (i + 1) * len / n);
    Ok(windows.drain(s..e).collect())
}

/// Options of the measure stage beyond [`Settings`].
#[derive(Debug, Clone)]
pub struct MeasureOptions {
    pub weights: WeightsKind,
    pub settings: Settings,
    pub batch: usize,
    pub shard: Option<(usize, usize)>,
    pub progress: bool,
    /// Write a checkpoint after this many windows (0: only by time).
    pub checkpoint_windows: usize,
    /// Write a checkpoint when this many seconds have passed since the last one.
    pub checkpoint_secs: f64,
}

impl MeasureOptions {
    pub fn new(weights: WeightsKind, settings: Settings, batch: usize) -> Self {
        Self { weights, settings, batch, shard: None, progress: false, checkpoint_windows: 0, checkpoint_secs: 60.0 }
    }
}

/// Check windows against the model: length within n_positions, ids within the vocabulary.
pub fn check_windows(windows: &[Window], cfg: &Gpt2Config, source: &str) -> Result<()> {
    for w in windows {
        if w.tokens.len() > cfg.n_positions {
            bail_bad!(
                "{source}: seq_len {} is larger than the model's n_positions {}",
                w.tokens.len(),
                cfg.n_positions
            );
        }
        if let Some(t) = w.tokens.iter().find(|&&t| t as usize >= cfg.vocab_size) {
            bail_bad!(
                "{source}: window {} has token id {t}, outside the model's vocabulary of {}",
                w.index,
                cfg.vocab_size
            );
        }
    }
    Ok(())
}

/// Measure GOP sums for `windows` with a loaded model, starting from `start` (a checkpoint:
/// the windows it covers are skipped). With `checkpoint`, partial sums are written there
/// atomically after whole batches, so a killed run can resume with identical results.
pub fn measure_model(
    model: &Gpt2,
    windows: &[Window],
    start: Gop,
    opts: &MeasureOptions,
    checkpoint: Option<&Path>,
) -> Result<Gop> {
    let measurer = Measurer::new(model, opts.settings)?;
    let mut gop = start;
    let done: Vec<(u64, u64)> = gop.meta.windows.clone();
    let is_done = |i: u64| done.iter().any(|&(s, e)| s <= i && i < e);
    let mut done_idx: Vec<u64> = windows.iter().map(|w| w.index).filter(|&i| is_done(i)).collect();
    let todo: Vec<&Window> = windows.iter().filter(|w| !is_done(w.index)).collect();
    let total: u64 = windows.iter().map(|w| w.tokens.len() as u64).sum();
    let bar = progress_bar(total, opts.progress, "measure", "tokens");
    bar.set_position(gop.meta.n_tokens);
    let batch = opts.batch.max(1);
    let mut last = std::time::Instant::now();
    let mut since = 0usize;
    for chunk in todo.chunks(batch) {
        let chunk: Vec<Window> = chunk.iter().map(|w| (*w).clone()).collect();
        measurer.measure_batch(&chunk, &mut gop)?;
        let tokens: u64 = chunk.iter().map(|w| w.tokens.len() as u64).sum();
        gop.meta.n_windows += chunk.len() as u64;
        gop.meta.n_tokens += tokens;
        done_idx.extend(chunk.iter().map(|w| w.index));
        bar.inc(tokens);
        since += chunk.len();
        if let Some(path) = checkpoint {
            let by_count = opts.checkpoint_windows > 0 && since >= opts.checkpoint_windows;
            let by_time = last.elapsed().as_secs_f64() >= opts.checkpoint_secs;
            if by_count || by_time {
                gop.meta.windows = gop::ranges_of(done_idx.clone());
                gop.save(path)?;
                last = std::time::Instant::now();
                since = 0;
            }
        }
    }
    bar.finish_and_clear();
    gop.meta.windows = gop::ranges_of(done_idx);
    Ok(gop)
}

/// The checkpoint file of a measure output: `<out>.partial`.
pub fn checkpoint_path(out: &Path) -> PathBuf {
    let mut name = out.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".partial");
    out.with_file_name(name)
}

/// `agop measure`: read tokens, load the model, measure (resuming from `<out>.partial` when one
/// from the same command exists), write the GOP file, remove the checkpoint.
pub fn measure(
    model_spec: &str,
    revision: Option<&str>,
    tokens: &Path,
    out: &Path,
    opts: &MeasureOptions,
) -> Result<Gop> {
    measure_timed(model_spec, revision, tokens, out, opts).map(|(g, _)| g)
}

/// [`measure`], also returning the seconds spent in forward/backward passes (not loading).
pub fn measure_timed(
    model_spec: &str,
    revision: Option<&str>,
    tokens: &Path,
    out: &Path,
    opts: &MeasureOptions,
) -> Result<(Gop, f64)> {
    let resolved = resolve_model(model_spec, revision)?;
    let cfg = resolved.config()?;
    let (windows, tmeta) = outputs::read_tokens(tokens)?;
    if windows.is_empty() {
        bail_bad!("{}: no windows to measure", tokens.display());
    }
    check_windows(&windows, &cfg, &tokens.display().to_string())?;
    let total_windows = windows.len() as u64;
    let windows = shard_windows(windows, opts.shard)?;
    let model = model::load_model(&resolved.dir, &cfg, opts.weights, opts.settings.seed)?;
    let meta = GopMeta {
        agop_version: env!("CARGO_PKG_VERSION").into(),
        model: resolved.id.clone(),
        revision: resolved.revision.clone(),
        model_sha256: resolved.weights_sha256()?,
        weights: opts.weights.as_str().into(),
        output: opts.settings.output.as_str().into(),
        estimator: opts.settings.estimator.as_str().into(),
        probes: opts.settings.recorded_probes(),
        seed: opts.settings.seed,
        seq_len: tmeta.seq_len,
        tokens_sha256: sha256_file(tokens)?,
        total_windows,
        shard: opts.shard.map(|(i, n)| format!("{i}/{n}")).unwrap_or_default(),
        n_windows: 0,
        n_tokens: 0,
        windows: vec![],
        config: cfg,
    };
    let ckpt = checkpoint_path(out);
    let start = if ckpt.is_file() {
        let part = Gop::load(&ckpt)?;
        let mut expect = meta.clone();
        expect.windows = part.meta.windows.clone();
        expect.n_windows = part.meta.n_windows;
        expect.n_tokens = part.meta.n_tokens;
        if part.meta != expect {
            bail_bad!(
                "{}: this checkpoint was written by a different measure command (model, tokens, settings or \
                 shard differ: it has model {} weights {} output {} estimator {} probes {} seed {} shard {:?}); \
                 delete it to start over",
                ckpt.display(),
                part.meta.model,
                part.meta.weights,
                part.meta.output,
                part.meta.estimator,
                part.meta.probes,
                part.meta.seed,
                part.meta.shard
            );
        }
        if opts.progress {
            eprintln!("resuming from {} ({} windows done)", ckpt.display(), part.meta.n_windows);
        }
        part
    } else {
        Gop::zeros(meta)
    };
    let t0 = std::time::Instant::now();
    let gop = measure_model(&model, &windows, start, opts, Some(&ckpt))?;
    let secs = t0.elapsed().as_secs_f64();
    gop.save(out)?;
    let _ = std::fs::remove_file(&ckpt);
    Ok((gop, secs))
}

/// sha256 of a file, hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    sha256_files(std::slice::from_ref(&path.to_path_buf()))
}

/// sha256 of the concatenation of files, hex.
pub fn sha256_files(paths: &[PathBuf]) -> Result<String> {
    let mut h = Sha256::new();
    for path in paths {
        let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
        std::io::copy(&mut f, &mut h)?;
    }
    Ok(hex::encode(h.finalize()))
}

/// Options of the tokenize stage.
#[derive(Debug, Clone)]
pub struct TokenizeOptions {
    pub sources: Vec<String>,
    pub seq_len: usize,
    pub max_tokens: Option<u64>,
    pub corpus: crate::data::corpus::CorpusOptions,
    pub progress: bool,
    /// Recorded as the `inputs` metadata key (the pipeline runner's fingerprint).
    pub inputs: String,
}

/// `agop tokenize`: read the corpus, tokenize with the model's tokenizer, write tokens.parquet.
/// Returns the number of windows.
pub fn tokenize(model_spec: &str, revision: Option<&str>, opts: &TokenizeOptions, out: &Path) -> Result<usize> {
    use crate::data::{corpus, tokenize as tk};
    let resolved = resolve_model(model_spec, revision)?;
    let cfg = resolved.config()?;
    if opts.seq_len > cfg.n_positions {
        bail_bad!("--seq-len {} is larger than the model's n_positions {}", opts.seq_len, cfg.n_positions);
    }
    let tok = tk::Gpt2Tokenizer::from_dir(&resolved.dir)?;
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
    let stream = tk::token_stream(&tok, &docs, &bar)?;
    bar.finish_and_clear();
    if let Some(t) = stream.iter().find(|&&t| t as usize >= cfg.vocab_size) {
        bail_bad!(
            "the tokenizer of {} produced id {t}, outside the model's vocabulary of {}",
            resolved.id,
            cfg.vocab_size
        );
    }
    let windows = tk::windows(&stream, opts.seq_len, opts.max_tokens)?;
    if windows.is_empty() {
        bail_bad!("corpus {what} has {} tokens, shorter than one window of seq_len {}", stream.len(), opts.seq_len);
    }
    let meta = outputs::TokensMeta {
        tokenizer: format!("{} ({})", resolved.id, tok.source),
        corpus: what,
        seq_len: opts.seq_len,
        inputs: opts.inputs.clone(),
    };
    outputs::write_tokens(out, &windows, &meta)?;
    Ok(windows.len())
}

/// `agop merge`: add shard files, write the sum.
pub fn merge(parts: &[PathBuf], out: &Path) -> Result<Gop> {
    let loaded = parts.iter().map(|p| Ok((p.display().to_string(), Gop::load(p)?))).collect::<Result<Vec<_>>>()?;
    let merged = gop::merge(&loaded)?;
    let missing = gop::missing_ranges(&merged.meta.windows, merged.meta.total_windows);
    if !missing.is_empty() {
        eprintln!(
            "warning: the merged files cover {} of {} windows; missing windows {}",
            merged.meta.n_windows,
            merged.meta.total_windows,
            gop::format_ranges(&missing)
        );
    }
    merged.save(out)?;
    Ok(merged)
}

/// Load the weights a GOP file was measured with (pretrained from `dir`, or random-init from
/// the file's seed), checking that the config matches.
pub fn model_for_gop(resolved: &ResolvedModel, gop: &Gop) -> Result<Gpt2> {
    let cfg = resolved.config()?;
    if cfg != gop.meta.config {
        bail_bad!("the GOP file was measured on a model with a different config than {}", resolved.id);
    }
    let weights = WeightsKind::parse(&gop.meta.weights)?;
    model::load_model(&resolved.dir, &cfg, weights, gop.meta.seed)
}

/// Run-level context recorded in correlations.parquet (empty outside a pipeline).
#[derive(Debug, Clone, Default)]
pub struct RunContext {
    pub pipeline: String,
    pub corpus: String,
    /// The pipeline file's text.
    pub text: String,
    /// Fingerprint of the inputs (used by `agop run` to skip finished stages).
    pub inputs: String,
}

/// `agop correlate`: correlations of every module for each GOP file (e.g. pretrained and
/// random-init), in one table written to `out`; optionally the mean AGOPs.
pub fn correlate(
    model_spec: &str,
    revision: Option<&str>,
    gop_paths: &[PathBuf],
    out: &Path,
    powers: &[f64],
    agop_out: Option<&Path>,
    ctx: &RunContext,
) -> Result<polars::prelude::DataFrame> {
    if powers.is_empty() || powers.iter().any(|p| !p.is_finite() || *p <= 0.0) {
        bail_bad!("--powers must be positive numbers, got {powers:?}");
    }
    let resolved = resolve_model(model_spec, revision)?;
    let mut runs = Vec::new();
    let mut agops = Vec::new();
    let mut seed = 0;
    for path in gop_paths {
        let gop = Gop::load(path)?;
        let model = model_for_gop(&resolved, &gop).map_err(|e| e.context(format!("with {}", path.display())))?;
        let rows = crate::nfa::correlate(&model, &gop, powers)?;
        let info = RunInfo {
            pipeline: ctx.pipeline.clone(),
            model: gop.meta.model.clone(),
            revision: gop.meta.revision.clone(),
            weights: gop.meta.weights.clone(),
            corpus: ctx.corpus.clone(),
            n_tokens: gop.meta.n_tokens,
            output: gop.meta.output.clone(),
            estimator: gop.meta.estimator.clone(),
            probes: gop.meta.probes,
        };
        seed = gop.meta.seed;
        if agop_out.is_some() {
            let prefix = if gop_paths.len() > 1 { format!("{}/", gop.meta.weights) } else { String::new() };
            agops.extend(mean_agops(&model, &gop, &prefix)?);
        }
        runs.push((info, rows));
    }
    let mut df = outputs::correlations_frame(&runs)?;
    outputs::write_correlations(out, &mut df, &ctx.text, seed, &ctx.inputs)?;
    if let Some(p) = agop_out {
        write_f32_matrices(p, &agops)?;
    }
    Ok(df)
}

/// The operand-space mean AGOP of every module, named `{prefix}{module name}`.
pub fn mean_agops(model: &Gpt2, gop: &Gop, prefix: &str) -> Result<Vec<(String, usize, Vec<f64>)>> {
    use crate::nfa::gram;
    crate::modules::all_modules(&model.cfg)
        .iter()
        .map(|m| {
            let w = gram::weight(model, m)?;
            let a = gram::agop_mean(gop, m, &w)?.dense();
            Ok((format!("{prefix}{}", m.name()), a.nrows(), crate::nfa::linalg::to_row_major(&a)))
        })
        .collect()
}

/// `--agop-out`: square matrices as F32 safetensors, written atomically.
pub fn write_f32_matrices(path: &Path, mats: &[(String, usize, Vec<f64>)]) -> Result<()> {
    let bufs: Vec<(String, usize, Vec<u8>)> = mats
        .iter()
        .map(|(n, d, v)| (n.clone(), *d, v.iter().flat_map(|x| (*x as f32).to_le_bytes()).collect()))
        .collect();
    let views = bufs
        .iter()
        .map(|(n, d, b)| {
            Ok((n.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![*d, *d], b)?))
        })
        .collect::<Result<Vec<_>>>()?;
    let data = safetensors::serialize(views, None)?;
    outputs::write_atomic(path, &data)
}

/// `agop init-model`: a random-init checkpoint in HF layout from a config.json (plus the GPT-2
/// tokenizer files when the vocabulary is GPT-2's).
pub fn init_model(config: &Path, seed: u64, out: &Path) -> Result<()> {
    let cfg = Gpt2Config::from_file(config)?;
    let model = model::random_init(&cfg, seed)?;
    model::save_checkpoint(&model, out)?;
    // A GPT-2-vocabulary model gets the GPT-2 tokenizer files, so it can tokenize corpora.
    if cfg.vocab_size == 50257 {
        use crate::data::tokenize::{GPT2_MERGES, GPT2_VOCAB};
        outputs::write_atomic(&out.join("vocab.json"), GPT2_VOCAB.as_bytes())?;
        outputs::write_atomic(&out.join("merges.txt"), GPT2_MERGES.as_bytes())?;
    }
    Ok(())
}

/// A progress bar (rate in `unit`/s, ETA) drawn on stderr when it is a terminal and `show` is
/// set; hidden otherwise, so logs of batch jobs stay clean.
pub fn progress_bar(len: u64, show: bool, what: &str, unit: &str) -> ProgressBar {
    use std::io::IsTerminal;
    let target = if show && std::io::stderr().is_terminal() {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    };
    let bar = ProgressBar::with_draw_target(Some(len), target);
    bar.set_message(what.to_string());
    if let Ok(style) = ProgressStyle::with_template(&format!(
        "{{msg:>10}} [{{bar:30}}] {{human_pos}}/{{human_len}} {unit}  {{per_sec}}  ETA {{eta}}"
    )) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}
