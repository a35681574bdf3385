//! The measure loop: windows in batches through a [`Measurer`], GOP sums checkpointed atomically
//! so a killed run resumes with identical results, sharding in global window order, and the
//! `agop measure` stage (tokens file + resolved model → GOP file).

use std::path::{Path, PathBuf};

use anyhow::Result;
use candle_core::Device;

use super::estimator::Measurer;
use super::gop::{self, Gop, GopMeta};
use super::groups::{group_path, groups_dir, remove_other_groups, GroupPlan};
use super::settings::{Output, Settings};
use crate::bail_bad;
use crate::fetch::ResolvedModel;
use crate::model::{self, ModelConfig, Network, Precision, WeightsKind};
use crate::tokenize::{read_tokens, Window};
use crate::util::{progress_bar, sha256_file};

/// Shard `i` of `n`: a contiguous block of the windows (in global window order).
pub fn shard_windows(mut windows: Vec<Window>, shard: Option<(usize, usize)>) -> Result<Vec<Window>> {
    windows.sort_by_key(|w| w.index);
    let Some((i, n)) = shard else { return Ok(windows) };
    if n == 0 || i >= n {
        bail_bad!("--shard {i}/{n}: expected I/N with 0 ≤ I < N");
    }
    // In u128: i · len overflows usize for a large enough I.
    let at = |k: usize| (k as u128 * windows.len() as u128 / n as u128) as usize;
    let (s, e) = (at(i), at(i + 1));
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
    /// Where the model runs (`--device`); recorded in the GOP metadata, but not a setting that
    /// must match: results depend on it only through rounding.
    pub device: Device,
    /// Window groups whose sums are kept apart for error bars ([`super::groups`]); 1: none.
    pub groups: u32,
    /// Time each phase with the device synchronized around it and print where the time went
    /// (`--profile`, [`super::profile`]).
    pub profile: bool,
    /// The precision of the model's products on a GPU (`--precision`); recorded, and a setting
    /// that must match.
    pub precision: Precision,
}

impl MeasureOptions {
    /// The same options measuring on `device`.
    pub fn on(self, device: Device) -> Self {
        Self { device, ..self }
    }

    pub fn new(weights: WeightsKind, settings: Settings, batch: usize) -> Self {
        Self {
            weights,
            settings,
            batch,
            shard: None,
            progress: false,
            checkpoint_windows: 0,
            checkpoint_secs: 60.0,
            device: Device::Cpu,
            groups: 1,
            profile: false,
            precision: Precision::F32,
        }
    }
}

/// Check windows against the model: length within n_positions, ids within the vocabulary.
pub fn check_windows(windows: &[Window], cfg: &ModelConfig, source: &str) -> Result<()> {
    for w in windows {
        if w.tokens.len() > cfg.n_positions() {
            bail_bad!(
                "{source}: seq_len {} is larger than the model's n_positions {}",
                w.tokens.len(),
                cfg.n_positions()
            );
        }
        if let Some(t) = w.tokens.iter().find(|&&t| t as usize >= cfg.vocab_size()) {
            bail_bad!(
                "{source}: window {} has token id {t}, outside the model's vocabulary of {}",
                w.index,
                cfg.vocab_size()
            );
        }
    }
    Ok(())
}

/// Measure GOP sums for `windows` with a loaded model, starting from `start` (a checkpoint:
/// the windows it covers are skipped). With `checkpoint`, partial sums are written there
/// atomically after whole batches, so a killed run can resume with identical results.
pub fn measure_model<N: Network>(
    model: &N,
    windows: &[Window],
    start: Gop,
    opts: &MeasureOptions,
    checkpoint: Option<&Path>,
) -> Result<Gop> {
    let measurer = Measurer::new(model, opts.settings)?.with_profile(opts.profile);
    let total: u64 = windows.iter().map(|w| w.tokens.len() as u64).sum();
    let bar = progress_bar(total, opts.progress, "measure", "tokens");
    bar.set_position(start.meta.n_tokens);
    let gop = measure_windows(&measurer, windows, start, opts, checkpoint, &bar)?;
    bar.finish_and_clear();
    Ok(gop)
}

/// The loop of [`measure_model`]: the windows of `windows` that `start` does not cover, in
/// batches, into `start`, advancing `bar` by their tokens.
fn measure_windows<N: Network>(
    measurer: &Measurer<N>,
    windows: &[Window],
    start: Gop,
    opts: &MeasureOptions,
    checkpoint: Option<&Path>,
    bar: &indicatif::ProgressBar,
) -> Result<Gop> {
    let mut gop = start;
    let done: Vec<(u64, u64)> = gop.meta.windows.clone();
    let is_done = |i: u64| done.iter().any(|&(s, e)| s <= i && i < e);
    let mut done_idx: Vec<u64> = windows.iter().map(|w| w.index).filter(|&i| is_done(i)).collect();
    let todo: Vec<&Window> = windows.iter().filter(|w| !is_done(w.index)).collect();
    if opts.batch == 0 {
        bail_bad!("--batch must be at least 1");
    }
    let mut last = std::time::Instant::now();
    let mut since = 0usize;
    // Windows added since the sums were last checked to be finite (at each checkpoint and at
    // the end), named when a NaN or Inf turns up.
    let mut unchecked: Vec<u64> = Vec::new();
    for chunk in todo.chunks(opts.batch) {
        let chunk: Vec<Window> = chunk.iter().map(|w| (*w).clone()).collect();
        measurer.measure_batch(&chunk, &mut gop).map_err(|e| out_of_memory(e, opts.batch))?;
        let tokens: u64 = chunk.iter().map(|w| w.tokens.len() as u64).sum();
        gop.meta.n_windows += chunk.len() as u64;
        gop.meta.n_tokens += tokens;
        done_idx.extend(chunk.iter().map(|w| w.index));
        unchecked.extend(chunk.iter().map(|w| w.index));
        bar.inc(tokens);
        since += chunk.len();
        if let Some(path) = checkpoint {
            let by_count = opts.checkpoint_windows > 0 && since >= opts.checkpoint_windows;
            let by_time = last.elapsed().as_secs_f64() >= opts.checkpoint_secs;
            if by_count || by_time {
                measurer.profile().time("checkpoints", || {
                    gop.sync()?;
                    check_sums(&gop, &mut unchecked)?;
                    gop.meta.windows = gop::ranges_of(done_idx.clone());
                    gop.save(path)
                })?;
                last = std::time::Instant::now();
                since = 0;
            }
        }
    }
    measurer.profile().time("sums to host", || gop.sync())?;
    check_sums(&gop, &mut unchecked)?;
    gop.meta.windows = gop::ranges_of(done_idx);
    Ok(gop)
}

/// A device out-of-memory error as bad input suggesting a smaller batch; anything else unchanged.
fn out_of_memory(e: anyhow::Error, batch: usize) -> anyhow::Error {
    let text = format!("{e:#}");
    if text.contains("out of memory") || text.contains("OUT_OF_MEMORY") {
        let smaller = (batch / 2).max(1);
        crate::bad!(
            "out of GPU memory measuring a batch of {batch} windows ({text}); try --batch {smaller} (pipeline: \
             [measure] batch = {smaller})"
        )
    } else {
        e
    }
}

/// Refuse sums that are no longer finite, naming the module and the windows added since the
/// last check (nothing is written: the last checkpoint, if any, stays as it was).
fn check_sums(gop: &Gop, unchecked: &mut Vec<u64>) -> Result<()> {
    if let Some(tensor) = gop.first_non_finite() {
        bail_bad!(
            "the GOP sum {tensor} became NaN or infinite while measuring windows {}; the model or the \
             tokens produce non-finite gradients there (nothing was written)",
            gop::format_ranges(&gop::ranges_of(std::mem::take(unchecked)))
        );
    }
    unchecked.clear();
    Ok(())
}

/// The checkpoint file of a measure output: `<out>.partial`.
pub fn checkpoint_path(out: &Path) -> PathBuf {
    let mut name = out.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".partial");
    out.with_file_name(name)
}

/// `agop measure`: read tokens, load the model, measure (resuming from `<out>.partial` when one
/// from the same command exists), write the GOP file, remove the checkpoint.
pub fn measure(model: &ResolvedModel, tokens: &Path, out: &Path, opts: &MeasureOptions) -> Result<Gop> {
    measure_timed(model, tokens, out, opts).map(|(g, _)| g)
}

/// How long a measurement took.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Seconds in forward/backward passes and sums (not loading, not writing).
    pub secs: f64,
    /// Tokens per second after the first batch, leaving out one-time start-up (None with a
    /// single batch).
    pub after_first_batch: Option<f64>,
}

/// [`measure`], also returning how long the passes took.
pub fn measure_timed(
    resolved: &ResolvedModel,
    tokens: &Path,
    out: &Path,
    opts: &MeasureOptions,
) -> Result<(Gop, Timing)> {
    let cfg = resolved.config()?;
    let mut inputs = resolved.protected_files();
    inputs.push(tokens.to_path_buf());
    crate::util::fs::check_output(out, "--out", &inputs)?;
    let _lock = crate::util::fs::OutputLock::acquire(out, "--out")?;
    let (mut windows, tmeta) = read_tokens(tokens)?;
    if windows.is_empty() {
        bail_bad!("{}: no windows to measure", tokens.display());
    }
    check_windows(&windows, &cfg, &tokens.display().to_string())?;
    // The loss predicts each token from those before it: a one-token window has no term.
    let needs_loss = opts.settings.output == Output::Loss || opts.settings.fact;
    if needs_loss && tmeta.seq_len < 2 {
        bail_bad!(
            "{}: windows of {} token{} have no next-token loss, which {} needs; tokenize with --seq-len 2 or more",
            tokens.display(),
            tmeta.seq_len,
            if tmeta.seq_len == 1 { "" } else { "s" },
            if opts.settings.fact { "--fact" } else { "--output loss" }
        );
    }
    let total_windows = windows.len() as u64;
    windows.sort_by_key(|w| w.index);
    let plan = GroupPlan::new(&windows.iter().map(|w| w.index).collect::<Vec<_>>(), opts.groups)?;
    let windows = shard_windows(windows, opts.shard)?;
    model::set_precision(&opts.device, opts.precision)?;
    let model = model::load_model(&resolved.dir, &cfg, opts.weights, opts.settings.seed, &opts.device)?
        .with_precision(opts.precision);
    let meta = GopMeta {
        agop_version: env!("CARGO_PKG_VERSION").into(),
        model: resolved.id.clone(),
        revision: resolved.revision.clone(),
        model_sha256: resolved.weights_sha256()?.to_string(),
        weights: opts.weights,
        output: opts.settings.output,
        estimator: opts.settings.estimator,
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
        groups: plan.len(),
        group: None,
        fact: opts.settings.fact,
        device: crate::model::device_name(&opts.device),
        precision: opts.precision,
    };
    let ckpt = checkpoint_path(out);
    let resume = if ckpt.is_file() { Some(load_checkpoint(&ckpt, &meta, &plan, opts.progress)?) } else { None };
    let measurer = Measurer::new(&model, opts.settings)?.with_profile(opts.profile);
    let bar = progress_bar(windows.iter().map(|w| w.tokens.len() as u64).sum(), opts.progress, "measure", "tokens");
    let t0 = std::time::Instant::now();
    let gop = if plan.len() == 1 {
        let start = resume.unwrap_or_else(|| Gop::zeros(meta));
        bar.set_position(start.meta.n_tokens);
        let gop = measure_windows(&measurer, &windows, start, opts, Some(&ckpt), &bar)?;
        // Group files of an earlier grouped run to this output no longer belong to it.
        remove_other_groups(out, 1, &[])?;
        gop
    } else {
        // Group by group; each finished group is written to its file and added into the total
        // in group order. A group whose file already holds exactly these windows, measured the
        // same way, is read back instead of measured again (a resumed run).
        let open = resume.as_ref().and_then(|r| r.meta.group).map(|p| p.index);
        let mut resume = resume;
        let mut total = Gop::zeros(meta.clone());
        let mut touched = Vec::new();
        for (g, ws) in plan.split(windows) {
            touched.push(g);
            let path = group_path(out, g, plan.len());
            let gmeta = GopMeta { group: Some(plan.part(g)), ..meta.clone() };
            let done = GopMeta {
                n_windows: ws.len() as u64,
                n_tokens: ws.iter().map(|w| w.tokens.len() as u64).sum(),
                windows: gop::ranges_of(ws.iter().map(|w| w.index).collect()),
                ..gmeta.clone()
            };
            let piece = match (open == Some(g)).then(|| resume.take()).flatten() {
                Some(start) => {
                    bar.inc(start.meta.n_tokens);
                    measure_windows(&measurer, &ws, start, opts, Some(&ckpt), &bar)?
                }
                // (Measured on any device: the device is recorded, not a setting.)
                None => match Gop::load(&path)
                    .ok()
                    .filter(|f| f.meta == GopMeta { device: f.meta.device.clone(), ..done.clone() })
                {
                    Some(f) => {
                        bar.inc(f.meta.n_tokens);
                        total.add_gop(&f);
                        continue;
                    }
                    None => measure_windows(&measurer, &ws, Gop::zeros(gmeta), opts, Some(&ckpt), &bar)?,
                },
            };
            std::fs::create_dir_all(groups_dir(out))?;
            piece.save(&path)?;
            total.add_gop(&piece);
        }
        remove_other_groups(out, plan.len(), &touched)?;
        total
    };
    bar.finish_and_clear();
    let timing = Timing { secs: t0.elapsed().as_secs_f64(), after_first_batch: measurer.rate_after_first_batch() };
    let secs = timing.secs;
    if opts.profile {
        eprint!("{}", measurer.profile().report(secs));
    }
    drop(model); // the weights are not needed to write the sums
    gop.save(out)?;
    let _ = std::fs::remove_file(&ckpt);
    Ok((gop, timing))
}

/// Read a measure checkpoint and check that the same command wrote it (for a grouped run: the
/// partial sums of one group).
fn load_checkpoint(ckpt: &Path, meta: &GopMeta, plan: &GroupPlan, progress: bool) -> Result<Gop> {
    let part = Gop::load(ckpt)?;
    let expect = GopMeta {
        windows: part.meta.windows.clone(),
        n_windows: part.meta.n_windows,
        n_tokens: part.meta.n_tokens,
        group: part.meta.group.filter(|p| p.index < plan.len()).map(|p| plan.part(p.index)),
        device: part.meta.device.clone(),
        ..meta.clone()
    };
    if part.meta != expect {
        bail_bad!(
            "{}: this checkpoint was written by a different measure command (model, tokens, settings, groups or \
             shard differ: it has model {} weights {} output {} estimator {} probes {} seed {} shard {:?} groups {}); \
             delete it to start over",
            ckpt.display(),
            part.meta.model,
            part.meta.weights,
            part.meta.output,
            part.meta.estimator,
            part.meta.probes,
            part.meta.seed,
            part.meta.shard,
            part.meta.groups
        );
    }
    if progress {
        match part.meta.group {
            // Finished groups are in their own files, read back as the run reaches them.
            Some(g) => eprintln!(
                "resuming from {} ({} windows of group {} of {} done; the groups before it are read back from their \
                 files)",
                ckpt.display(),
                part.meta.n_windows,
                g.index + 1,
                part.meta.groups
            ),
            None => eprintln!("resuming from {} ({} windows done)", ckpt.display(), part.meta.n_windows),
        }
    }
    Ok(part)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn windows(n: u64) -> Vec<Window> {
        (0..n).map(|index| Window { index, tokens: vec![0] }).collect()
    }

    /// Shards are contiguous blocks that together hold every window once, for any I/N, however
    /// large (i · len once overflowed).
    #[test]
    fn shards_cover_the_windows_once() {
        for (len, n) in [(10u64, 3usize), (4, 4), (3, 5), (7, 1)] {
            let all: Vec<u64> = (0..n)
                .flat_map(|i| shard_windows(windows(len), Some((i, n))).unwrap().into_iter().map(|w| w.index))
                .collect();
            assert_eq!(all, (0..len).collect::<Vec<_>>(), "{len} windows in {n} shards");
        }
        let last = shard_windows(windows(4), Some((usize::MAX - 1, usize::MAX))).unwrap();
        assert_eq!(last.iter().map(|w| w.index).collect::<Vec<_>>(), vec![3]);
        assert!(shard_windows(windows(4), Some((0, usize::MAX))).unwrap().is_empty());
    }
}
