//! `agop train`: a GPT-2 trained from a config.json on corpus sources, so that a researcher can
//! measure the NFA along a run of their own.
//!
//! Next-token loss (mean over the predicted positions of the batch, as transformers computes it
//! with `labels = input_ids`), AdamW ([`adamw`]) with weight decay on the 2-D weights, a linear
//! warm-up then cosine decay to a tenth of the peak rate, gradient clipping by global norm. The
//! initial weights are the random-init control's draw ([`crate::model::random_init`]) from the
//! seed, and every batch is a function of (seed, step): a run is deterministic for a seed and a
//! thread count, and a resumed run equals an uninterrupted one bitwise.
//!
//! The gradients come from the measurement engine's hand-written backward extended to every
//! parameter ([`grads`]), with the loss and its gradients at the unembedding from
//! [`crate::model::ops::loss::next_token_gradients`]; candle's autograd through the plain-ops
//! forward ([`autograd_loss_gradients`]) is kept as the reference the tests compare with.
//! Evaluation uses the same CPU kernels.
//!
//! Layout of the output folder:
//!   train-settings.json            what the run was started with (a re-run must match it)
//!   eval-tokens.parquet            the K held-out windows (never trained on)
//!   checkpoint-<step>/             config.json, model.safetensors, vocab.json, merges.txt (HF
//!                                  layout), trainer_state.json (the log so far); the newest
//!                                  also optimizer.safetensors (to resume)
//!   train.parquet                  step, tokens, lr, loss, grad_norm, eval_loss

pub mod adamw;
pub mod data;
pub mod grads;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor, Var};
use polars::prelude::*;
use serde::{Deserialize, Serialize};

use crate::model::checkpoint::{GPT2_MERGES, GPT2_VOCAB};
use crate::model::ops::loss::cross_entropy_rows;
use crate::model::{random_init, save_checkpoint, Gpt2, Gpt2Config, Params};
use crate::tokenize::corpus::{canonical_source, CorpusOptions};
use crate::tokenize::{write_tokens, TokensMeta, Window};
use crate::util::parquet::{read_parquet, write_parquet};
use crate::util::{progress_bar, write_atomic};
use crate::{bad, bail_bad};

use adamw::{AdamW, Param};

/// Everything a training run depends on (recorded in `train-settings.json`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TrainSettings {
    /// The model's config.json, as text.
    pub config: String,
    pub sources: Vec<String>,
    pub text_column: String,
    pub seq_len: usize,
    pub steps: u64,
    pub batch: usize,
    pub lr: f64,
    pub weight_decay: f64,
    pub warmup: u64,
    pub grad_clip: f64,
    pub seed: u64,
    /// Steps whose weights are saved (0 and `steps` always among them), ascending.
    pub save_steps: Vec<u64>,
    pub eval_windows: usize,
}

/// A training run: the settings, where it goes, and whether to draw a progress bar.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    pub settings: TrainSettings,
    pub out: PathBuf,
    pub progress: bool,
}

/// The largest `--batch` of `agop train` (windows per update; a step's activations must fit in
/// memory long before this).
pub const MAX_BATCH: usize = 65_536;

/// The default saved steps: 0, a quarter, half, three quarters and all of `steps`.
pub fn default_save_steps(steps: u64) -> Vec<u64> {
    let mut s: Vec<u64> = (0..=4).map(|i| (steps as u128 * i / 4) as u64).collect();
    s.dedup();
    s
}

impl TrainSettings {
    /// Check the numbers and put `save_steps` in order (0 and `steps` added).
    pub fn validate(mut self) -> Result<Self> {
        if self.steps == 0 {
            bail_bad!("--steps must be at least 1");
        }
        if self.batch == 0 || self.batch > MAX_BATCH {
            bail_bad!("--batch must be between 1 and {MAX_BATCH} windows, got {}", self.batch);
        }
        if self.seq_len < 2 {
            bail_bad!("--seq-len must be at least 2 (a window predicts its tokens after the first)");
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            bail_bad!("--lr must be a positive number, got {}", self.lr);
        }
        if !(self.weight_decay >= 0.0 && self.weight_decay.is_finite()) {
            bail_bad!("--weight-decay must be a non-negative number, got {}", self.weight_decay);
        }
        if !(self.grad_clip > 0.0 && self.grad_clip.is_finite()) {
            bail_bad!("--grad-clip must be positive, got {}", self.grad_clip);
        }
        // The token counts of the log (steps × batch × seq_len) must fit.
        if self.steps.checked_mul((self.batch as u64).saturating_mul(self.seq_len as u64)).is_none() {
            bail_bad!(
                "--steps {} × --batch {} × --seq-len {} training tokens is more than agop can count",
                self.steps,
                self.batch,
                self.seq_len
            );
        }
        if self.eval_windows == 0 {
            bail_bad!("--eval-windows must be at least 1 (the eval loss is computed on them)");
        }
        if let Some(s) = self.save_steps.iter().find(|&&s| s > self.steps) {
            bail_bad!("--save-steps names step {s}, after the last step {}", self.steps);
        }
        self.save_steps.extend([0, self.steps]);
        self.save_steps.sort_unstable();
        self.save_steps.dedup();
        if self.sources.is_empty() {
            bail_bad!("--corpus: give at least one source");
        }
        self.sources = canonical_sources(&self.sources);
        Ok(self)
    }

    fn cfg(&self) -> Result<Gpt2Config> {
        let cfg: Gpt2Config = serde_json::from_str(&self.config)
            .map_err(|e| bad!("the training config is not a GPT-2 config.json: {e}"))?;
        cfg.validate()?;
        if self.seq_len > cfg.n_positions {
            bail_bad!(
                "--seq-len {} (in a pipeline: [train] or [corpus] seq_len) is larger than the config's n_positions {}",
                self.seq_len,
                cfg.n_positions
            );
        }
        Ok(cfg)
    }

    /// The learning rate of update `k` (0-based): linear warm-up to `lr` over `warmup` updates,
    /// then cosine decay to `lr`/10 at the last update.
    pub fn lr_at(&self, k: u64) -> f64 {
        if k < self.warmup {
            return self.lr * (k + 1) as f64 / self.warmup as f64;
        }
        let span = (self.steps - self.warmup).max(1) as f64;
        let progress = ((k - self.warmup) as f64 / span).min(1.0);
        let min = self.lr / 10.0;
        min + 0.5 * (self.lr - min) * (1.0 + (std::f64::consts::PI * progress).cos())
    }
}

/// One row of `train.parquet`: after update `step` (step 0: the initial weights).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LogRow {
    pub step: u64,
    /// Training tokens seen (batch × seq_len per update).
    pub tokens: u64,
    /// The learning rate of this update (none at step 0).
    pub lr: Option<f64>,
    /// The training batch's mean loss before this update.
    pub loss: Option<f64>,
    /// The global gradient norm before clipping.
    pub grad_norm: Option<f64>,
    /// Mean next-token loss on the held-out windows, at saved steps.
    pub eval_loss: Option<f64>,
}

/// `trainer_state.json` of a checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct TrainerState {
    global_step: u64,
    log_history: Vec<LogRow>,
}

/// What a finished (or resumed-to-the-end) run reports.
#[derive(Debug, Clone)]
pub struct TrainSummary {
    pub checkpoints: Vec<(u64, PathBuf)>,
    pub rows: Vec<LogRow>,
    /// The step the run resumed from, if it did.
    pub resumed_from: Option<u64>,
    /// Training tokens per second of this process's updates (None when none ran).
    pub tokens_per_sec: Option<f64>,
}

/// The folder of the checkpoint after `step` updates.
pub fn checkpoint_dir(out: &Path, step: u64) -> PathBuf {
    out.join(format!("checkpoint-{step}"))
}

fn settings_path(out: &Path) -> PathBuf {
    out.join("train-settings.json")
}

/// Is `out` a (complete or interrupted) training run's folder?
pub fn is_train_dir(out: &Path) -> bool {
    settings_path(out).is_file()
}

/// What `train-settings.json` holds: the settings, and the fingerprint of the corpus text they
/// were trained on (absent in runs from before agop recorded it).
#[derive(Serialize, Deserialize)]
struct SettingsRecord {
    #[serde(flatten)]
    settings: TrainSettings,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    corpus_sha256: Option<String>,
}

/// The folder's recorded settings. Runs from before 2026-12-03 recorded sources as typed
/// (`c.txt`); they are read as absolute paths from the working folder, as agop records them now.
fn read_record(out: &Path) -> Option<SettingsRecord> {
    let mut r: SettingsRecord = serde_json::from_str(&std::fs::read_to_string(settings_path(out)).ok()?).ok()?;
    r.settings.sources = canonical_sources(&r.settings.sources);
    Some(r)
}

/// Local corpus paths as absolute paths ([`canonical_source`]).
fn canonical_sources(sources: &[String]) -> Vec<String> {
    sources.iter().map(|s| canonical_source(s)).collect()
}

/// Has the run in `out` been trained to the end with exactly these settings, on the corpus text
/// its sources hold now (read again to check)? A corpus that cannot be read any more (moved,
/// or not mounted where a later stage runs) does not undo a finished run.
pub fn is_finished(out: &Path, s: &TrainSettings) -> Result<bool> {
    let Some(old) = read_record(out).filter(|r| &r.settings == s) else { return Ok(false) };
    if !(checkpoint_dir(out, s.steps).join("trainer_state.json").is_file() && out.join("train.parquet").is_file()) {
        return Ok(false);
    }
    let Some(recorded) = old.corpus_sha256 else { return Ok(true) };
    let corpus = CorpusOptions { text_column: s.text_column.clone(), skip_invalid_utf8: false };
    Ok(data::read_corpus_sha256(&s.sources, &corpus).map_or(true, |now| now == recorded))
}

/// Does `out` hold a saved checkpoint (anything a run could resume from or would replace)?
fn has_checkpoint(out: &Path) -> bool {
    std::fs::read_dir(out).into_iter().flatten().flatten().any(|e| {
        e.file_name().to_string_lossy().starts_with("checkpoint-") && e.path().join("trainer_state.json").is_file()
    })
}

/// The mean next-token loss over `windows` (transformers' loss with `labels = input_ids`: the
/// mean over every predicted position), with the engine's CPU kernels.
pub fn eval_loss(model: &Gpt2, windows: &[Window], batch: usize) -> Result<f64> {
    let (mut total, mut count) = (0f64, 0usize);
    for chunk in windows.chunks(batch.max(1)) {
        let chunk: Vec<&Window> = chunk.iter().collect();
        let (ids, targets) = batch_tensors(&chunk, model.device())?;
        let hidden = model.forward(&ids)?.hidden;
        let (b, t, _) = hidden.dims3()?;
        let z = model.logits(&hidden)?.reshape((b * t, ()))?;
        let rows = cross_entropy_rows(&z, &targets)?.to_dtype(DType::F64)?;
        total += rows.sum_all()?.to_scalar::<f64>()?;
        count += b * (t - 1);
    }
    Ok(total / count as f64)
}

/// Rows of logits per piece of the loss: 96 × 50,257 f32 is 19 MB, below glibc's largest mmap
/// threshold (32 MiB), so the pieces are served from the heap and reused step after step instead
/// of being mapped fresh (and page-faulted in) every time.
const LOSS_ROWS: usize = 96;

/// Σ of the next-token losses of hidden rows (N, C) against targets (N,), the logits made and
/// consumed [`LOSS_ROWS`] rows at a time (the same sum, in pieces).
fn summed_loss(model: &Gpt2, hidden: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let n = hidden.dim(0)?;
    // Eᵀ (C, V) laid out once per step; autograd sums its gradient over the pieces.
    let et = model.unembedding_tensor().t()?.contiguous()?;
    let mut total: Option<Tensor> = None;
    for start in (0..n).step_by(LOSS_ROWS) {
        let len = LOSS_ROWS.min(n - start);
        let z = hidden.narrow(0, start, len)?.matmul(&et)?;
        let part = cross_entropy_rows(&z, &targets.narrow(0, start, len)?)?.sum_all()?;
        total = Some(match total {
            Some(t) => (t + part)?,
            None => part,
        });
    }
    total.ok_or_else(|| anyhow::anyhow!("no rows to train on"))
}

/// The gradients of [`grads::loss_gradients`] by candle's autograd through the plain-ops
/// forward (the reference the hand-written training backward is tested against, and the path
/// `agop train` took before it): (mean loss, every parameter's gradient by HF name).
pub fn autograd_loss_gradients(model: &Gpt2, ids: &Tensor, targets: &Tensor) -> Result<(f64, HashMap<String, Tensor>)> {
    let cfg = &model.cfg;
    let vars: Vec<(String, Var)> =
        model.params.named(cfg).into_iter().map(|(n, t)| Ok((n, Var::from_tensor(&t)?))).collect::<Result<_>>()?;
    let by_name: HashMap<&str, &Var> = vars.iter().map(|(n, v)| (n.as_str(), v)).collect();
    let m =
        Gpt2::new(cfg.clone(), Params::build(cfg, |name, _| Ok(by_name[name].as_tensor().clone()))?).with_plain_ops();
    let hidden = m.forward(ids)?.hidden;
    let (b, t, _) = hidden.dims3()?;
    let count = targets.ge(0.0)?.to_dtype(DType::F64)?.sum_all()?.to_scalar::<f64>()?;
    let loss = (summed_loss(&m, &hidden.reshape((b * t, ()))?, targets)? / count)?;
    let store = loss.backward()?;
    let grads = vars
        .iter()
        .map(|(n, v)| {
            let g = store.get(v.as_tensor()).cloned().map_or_else(|| v.as_tensor().zeros_like(), Ok)?;
            Ok((n.clone(), g.detach()))
        })
        .collect::<Result<_>>()?;
    Ok((loss.to_dtype(DType::F64)?.to_scalar::<f64>()?, grads))
}

/// Token ids (B, T) and next-token targets (B·T,) as floats, −1 at each window's last position.
pub fn batch_tensors(windows: &[&Window], device: &Device) -> Result<(Tensor, Tensor)> {
    let t = windows[0].tokens.len();
    let ids: Vec<u32> = windows.iter().flat_map(|w| w.tokens.iter().copied()).collect();
    let targets: Vec<f32> =
        windows.iter().flat_map(|w| w.tokens[1..].iter().map(|&x| x as f32).chain(std::iter::once(-1.0))).collect();
    Ok((Tensor::from_vec(ids, (windows.len(), t), device)?, Tensor::from_vec(targets, windows.len() * t, device)?))
}

/// The newest complete checkpoint among the saved steps: (step, folder).
fn last_checkpoint(out: &Path, s: &TrainSettings) -> Option<(u64, PathBuf)> {
    s.save_steps
        .iter()
        .rev()
        .map(|&k| (k, checkpoint_dir(out, k)))
        .find(|(_, d)| d.join("trainer_state.json").is_file() && d.join("model.safetensors").is_file())
}

/// Compare a folder's recorded settings with this run's; a difference names the field.
fn check_same_run(out: &Path, s: &TrainSettings) -> Result<()> {
    let path = settings_path(out);
    let text = std::fs::read_to_string(&path)?;
    let mut old: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| bad!("{}: not a training settings file: {e}", path.display()))?;
    if let Some(Ok(sources)) = old.get("sources").map(|v| serde_json::from_value::<Vec<String>>(v.clone())) {
        old["sources"] = serde_json::to_value(canonical_sources(&sources))?;
    }
    let new = serde_json::to_value(s)?;
    let fields: Vec<String> = new
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(k, v)| old.get(k.as_str()) != Some(v))
        .map(|(k, _)| k.clone())
        .collect();
    if !fields.is_empty() {
        bail_bad!(
            "{} was trained with other settings ({} differ); resume with the same settings, or train into another \
             --out",
            out.display(),
            fields.join(", ")
        );
    }
    Ok(())
}

/// Train (or resume) into `opts.out`.
pub fn train(opts: &TrainOptions) -> Result<TrainSummary> {
    let s = &opts.settings;
    let out = &opts.out;
    let cfg = s.cfg()?;
    if out.is_file() {
        bail_bad!("--out {} is a file; training writes a folder", out.display());
    }
    let sources: Vec<PathBuf> = s.sources.iter().map(PathBuf::from).collect();
    crate::util::fs::check_output_dir(out, "--out", &sources)?;
    // A folder whose run saved no checkpoint (it failed or was stopped before step 0 was saved)
    // trained nothing: it starts again, with whatever settings.
    let resuming = is_train_dir(out) && has_checkpoint(out);
    if resuming {
        check_same_run(out, s)?;
    } else if !is_train_dir(out) && out.is_dir() && std::fs::read_dir(out)?.next().is_some() {
        bail_bad!(
            "--out {} is a folder that holds other files and no training run; give a new or empty folder",
            out.display()
        );
    }
    // The corpus is read and checked before anything is written.
    let corpus = CorpusOptions { text_column: s.text_column.clone(), skip_invalid_utf8: false };
    let split = data::split(&s.sources, &corpus, s.seq_len, s.eval_windows, cfg.vocab_size, s.seed, opts.progress)?;
    if resuming {
        if let Some(old) = read_record(out).and_then(|r| r.corpus_sha256).filter(|h| *h != split.corpus_sha256) {
            bail_bad!(
                "{} was trained on other text: the corpus {} has changed since (corpus sha256 {old}, now {}); \
                 resuming would train on both; train into another --out",
                out.display(),
                s.sources.join(", "),
                split.corpus_sha256
            );
        }
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let record = SettingsRecord { settings: s.clone(), corpus_sha256: Some(split.corpus_sha256.clone()) };
    write_atomic(&settings_path(out), serde_json::to_string_pretty(&record)?.as_bytes())?;
    let meta = TokensMeta {
        tokenizer: "gpt2 (built in)".into(),
        corpus: s.sources.join(", "),
        seq_len: s.seq_len,
        inputs: format!("held-out windows of training run {}", out.display()),
    };
    write_tokens(&out.join("eval-tokens.parquet"), &split.eval, &meta)?;

    // The parameters as variables, in the schema's order; the model's tensors share their storage.
    let dev = Device::Cpu;
    let init = random_init(&cfg, s.seed, &dev)?;
    let params: Vec<Param> = init
        .params
        .named(&cfg)
        .into_iter()
        .map(|(name, t)| Ok(Param { decay: t.rank() == 2, var: Var::from_tensor(&t)?, name }))
        .collect::<Result<_>>()?;
    let by_name: HashMap<&str, &Var> = params.iter().map(|p| (p.name.as_str(), &p.var)).collect();
    // The model reads the variables' storage (detached: the hand-written backward needs no
    // autograd graph), so every optimizer update is what the next forward pass sees.
    let model = Gpt2::new(cfg.clone(), Params::build(&cfg, |name, _| Ok(by_name[name].as_tensor().detach()))?);

    let mut opt = AdamW::new(&params, s.weight_decay)?;
    let mut rows: Vec<LogRow> = Vec::new();
    let resumed_from = last_checkpoint(out, s);
    let start = match &resumed_from {
        Some((k, dir)) => {
            let state: TrainerState = serde_json::from_str(&std::fs::read_to_string(dir.join("trainer_state.json"))?)
                .map_err(|e| bad!("{}: unreadable trainer_state.json: {e}", dir.display()))?;
            let weights = candle_core::safetensors::load(dir.join("model.safetensors"), &dev)?;
            for p in &params {
                let t = weights.get(&p.name).ok_or_else(|| bad!("{}: tensor {} is missing", dir.display(), p.name))?;
                p.var.set(t)?;
            }
            if *k > 0 {
                let path = dir.join("optimizer.safetensors");
                if !path.is_file() {
                    bail_bad!("{}: no optimizer.safetensors, so the run cannot resume from it", dir.display());
                }
                opt = AdamW::load(&params, s.weight_decay, &path)?;
            }
            rows = state.log_history;
            *k
        }
        None => 0,
    };
    let eval_model = |m: &Gpt2| -> Result<f64> {
        let engine = Gpt2::new(cfg.clone(), m.params.try_map(|t| Ok(t.detach()))?);
        eval_loss(&engine, &split.eval, s.batch)
    };
    let save = |step: u64, rows: &[LogRow], opt: &AdamW| -> Result<()> {
        let dir = checkpoint_dir(out, step);
        let tmp = out.join(format!(".checkpoint-{step}.partial"));
        let _ = std::fs::remove_dir_all(&tmp);
        let detached = Gpt2::new(cfg.clone(), model.params.try_map(|t| Ok(t.detach()))?);
        save_checkpoint(&detached, &tmp)?;
        write_atomic(&tmp.join("vocab.json"), GPT2_VOCAB.as_bytes())?;
        write_atomic(&tmp.join("merges.txt"), GPT2_MERGES.as_bytes())?;
        if step > 0 {
            opt.save(&params, &tmp.join("optimizer.safetensors"))?;
        }
        let state = TrainerState { global_step: step, log_history: rows.to_vec() };
        write_atomic(&tmp.join("trainer_state.json"), serde_json::to_string_pretty(&state)?.as_bytes())?;
        std::fs::rename(&tmp, &dir).with_context(|| format!("renaming {} to {}", tmp.display(), dir.display()))?;
        // Only the newest checkpoint's optimizer state is needed to resume.
        for &k in s.save_steps.iter().filter(|&&k| k < step) {
            let _ = std::fs::remove_file(checkpoint_dir(out, k).join("optimizer.safetensors"));
        }
        write_log(out, rows)
    };
    if resumed_from.is_none() {
        let e = eval_model(&model)?;
        rows.push(LogRow { step: 0, tokens: 0, lr: None, loss: None, grad_norm: None, eval_loss: Some(e) });
        save(0, &rows, &opt)?;
    }

    let bar = progress_bar(s.steps, opts.progress, "train", "steps");
    bar.set_position(start);
    let n_train = split.train.len();
    let clock = std::time::Instant::now();
    for k in start..s.steps {
        let idx = data::batch_indices(n_train, s.batch, s.seed, k);
        let windows: Vec<&Window> = idx.iter().map(|&i| &split.train[i]).collect();
        let (ids, targets) = batch_tensors(&windows, &dev)?;
        let (loss, mut by_name) = grads::loss_gradients(&model, &ids, &targets)?;
        let grads: Vec<Vec<f32>> = params
            .iter()
            .map(|p| {
                let g = by_name.remove(&p.name).ok_or_else(|| anyhow::anyhow!("no gradient for {}", p.name))?;
                Ok(g.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?)
            })
            .collect::<Result<_>>()?;
        // The global norm in f64, parameter by parameter in schema order.
        let norm = grads.iter().map(|g| g.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>()).sum::<f64>().sqrt();
        if !norm.is_finite() {
            anyhow::bail!("the gradient norm at update {} is {norm}; try a lower --lr", k + 1);
        }
        let coef = (s.grad_clip / (norm + 1e-6)).min(1.0);
        let lr = s.lr_at(k);
        opt.step(&params, &grads, coef, lr, k + 1)?;
        let step = k + 1;
        let mut row = LogRow {
            step,
            tokens: step * (s.batch * s.seq_len) as u64,
            lr: Some(lr),
            loss: Some(loss),
            grad_norm: Some(norm),
            eval_loss: None,
        };
        let saving = s.save_steps.contains(&step);
        if saving {
            row.eval_loss = Some(eval_model(&model)?);
        }
        rows.push(row);
        if saving {
            save(step, &rows, &opt)?;
        }
        bar.set_message(format!("loss {loss:.3}"));
        bar.inc(1);
    }
    bar.finish_and_clear();
    let ran = s.steps - start;
    write_log(out, &rows)?;
    Ok(TrainSummary {
        checkpoints: s.save_steps.iter().map(|&k| (k, checkpoint_dir(out, k))).collect(),
        rows,
        resumed_from: resumed_from.map(|(k, _)| k),
        tokens_per_sec: (ran > 0)
            .then(|| (ran * (s.batch * s.seq_len) as u64) as f64 / clock.elapsed().as_secs_f64().max(1e-9)),
    })
}

/// Write `train.parquet` from the log rows.
fn write_log(out: &Path, rows: &[LogRow]) -> Result<()> {
    let col = |name: &str, f: &dyn Fn(&LogRow) -> Option<f64>| {
        Column::new(name.into(), rows.iter().map(f).collect::<Vec<_>>())
    };
    let mut df = DataFrame::new_infer_height(vec![
        Column::new("step".into(), rows.iter().map(|r| r.step).collect::<Vec<_>>()),
        Column::new("tokens".into(), rows.iter().map(|r| r.tokens).collect::<Vec<_>>()),
        col("lr", &|r| r.lr),
        col("loss", &|r| r.loss),
        col("grad_norm", &|r| r.grad_norm),
        col("eval_loss", &|r| r.eval_loss),
    ])?;
    write_parquet(&out.join("train.parquet"), &mut df, &[("agop_version", env!("CARGO_PKG_VERSION").to_string())])
}

/// The rows of a run's `train.parquet` (step, eval loss) at its saved steps, for reports.
pub fn eval_losses(out: &Path) -> Result<Vec<(u64, f64)>> {
    let df = read_parquet(&out.join("train.parquet"))?;
    let step = df.column("step")?.u64()?.clone();
    let eval = df.column("eval_loss")?.f64()?.clone();
    Ok(step.iter().zip(eval.iter()).filter_map(|(s, e)| Some((s?, e?))).collect())
}
