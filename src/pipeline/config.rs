//! Pipeline files (`pipelines/*.toml`): which model, which corpus, which settings.
//! Relative paths (model directories, corpus sources, init configs) are relative to the file.

use std::path::{Path, PathBuf};

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::measure::{Estimator, Output};
use crate::model::{Precision, WeightsKind};
use crate::tokenize::corpus::canonical_source;
use crate::{bad, bail_bad};

/// A whole pipeline file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pipeline {
    /// Names the output folder `outputs/<name>/`.
    pub name: String,
    pub model: ModelSpec,
    pub corpus: CorpusSpec,
    #[serde(default)]
    pub measure: MeasureSpec,
    #[serde(default)]
    pub correlate: CorrelateSpec,
    /// `[features]`: the eigenvector read-outs after correlate (on by default).
    #[serde(default)]
    pub features: FeaturesSpec,
    /// `[train]`: train the `init_config` model on the corpus first; its checkpoints are the series.
    #[serde(default)]
    pub train: Option<TrainSpec>,
    /// `[slurm]`: site lines and resources for `agop slurm` (its flags override them).
    #[serde(default)]
    pub slurm: SlurmSpec,
    /// Folder holding the pipeline file; relative paths resolve against it (not serialized).
    #[serde(skip)]
    pub base: PathBuf,
    /// The file's text, recorded in correlations.parquet metadata.
    #[serde(skip)]
    pub text: String,
}

/// `[slurm]`: what `agop slurm` writes into every job script. Resources left out get defaults
/// (`agop slurm --help`); the command's flags override these keys.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlurmSpec {
    #[serde(default)]
    pub partition: Option<String>,
    #[serde(default)]
    pub account: Option<String>,
    /// Wall-clock limit of the measure and reduce jobs, as sbatch takes it (`12:00:00`).
    #[serde(default)]
    pub time: Option<String>,
    #[serde(default)]
    pub cpus: Option<u32>,
    /// Memory per job, as sbatch takes it (`16G`).
    #[serde(default)]
    pub mem: Option<String>,
    /// Shell lines run first in every job: `module load …`, a virtual environment, an
    /// `LD_LIBRARY_PATH` for the CUDA libraries.
    #[serde(default)]
    pub setup: Vec<String>,
    /// More sbatch options, one per entry without `#SBATCH` (`--qos=normal`, `--constraint=h100`).
    #[serde(default)]
    pub sbatch: Vec<String>,
}

/// `[model]`: a hub id or local directory, or a random checkpoint made by `init-model`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// Hub id (`openai-community/gpt2`) or a local directory. Not needed with `init_config`.
    #[serde(default)]
    pub id: Option<String>,
    /// Branch, tag or commit on the hub; pin a commit for reproducible runs.
    #[serde(default)]
    pub revision: Option<String>,
    /// Instead of `id`: a config.json from which `init-model` writes a checkpoint into the
    /// output folder (`model/`), with `init_seed`.
    #[serde(default)]
    pub init_config: Option<String>,
    #[serde(default)]
    pub init_seed: u64,
    /// A checkpoint series (instead of `revision`): branches, tags or commits of `id`, measured
    /// one after the other on the same windows and probes (docs/reference.md §8).
    #[serde(default)]
    pub revisions: Vec<String>,
    /// The training step of each of `revisions` (same length); or, with `revision_format`, the
    /// steps to measure. Without it a revision's step is its trailing integer (`checkpoint-500`).
    #[serde(default)]
    pub steps: Vec<u64>,
    /// With `steps`: the revision of a step, `{step}` replaced (`"checkpoint-{step}"`).
    #[serde(default)]
    pub revision_format: Option<String>,
    /// In a series, `false` deletes each checkpoint after the first from the hub cache once it
    /// is measured and correlated (its rows are kept in `correlations-<tag>.parquet`), so a long
    /// series needs the disk of two checkpoints, not of all of them. Single-process runs only.
    #[serde(default = "default_true")]
    pub keep_checkpoints: bool,
}

fn default_true() -> bool {
    true
}

/// One checkpoint of the pretrained weights: a revision and its training step, if known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub revision: Option<String>,
    pub step: Option<u64>,
}

/// The trailing integer of a revision name (`checkpoint-500` → 500).
fn trailing_step(rev: &str) -> Option<u64> {
    let digits: String = rev.chars().rev().take_while(|c| c.is_ascii_digit()).collect();
    digits.chars().rev().collect::<String>().parse().ok()
}

/// `[train]`: the flags of `agop train` (the config is `[model] init_config`, the seed
/// `[model] init_seed`). The checkpoints go to `<out>/train/` and become the measured series.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSpec {
    pub steps: u64,
    /// Training sources; default: `[corpus] sources`.
    #[serde(default)]
    pub sources: Option<Vec<String>>,
    /// Training window length; default: `[corpus] seq_len`.
    #[serde(default)]
    pub seq_len: Option<usize>,
    #[serde(default = "default_train_batch")]
    pub batch: usize,
    #[serde(default = "default_lr")]
    pub lr: f64,
    #[serde(default = "default_weight_decay")]
    pub weight_decay: f64,
    /// Default: a tenth of `steps`, at most 100.
    #[serde(default)]
    pub warmup: Option<u64>,
    #[serde(default = "default_grad_clip")]
    pub grad_clip: f64,
    /// Default: 0, quarters of `steps`, `steps`.
    #[serde(default)]
    pub save_steps: Option<Vec<u64>>,
    #[serde(default = "default_eval_windows")]
    pub eval_windows: usize,
}

fn default_train_batch() -> usize {
    8
}
fn default_lr() -> f64 {
    1e-3
}
fn default_weight_decay() -> f64 {
    0.1
}
fn default_grad_clip() -> f64 {
    1.0
}
fn default_eval_windows() -> usize {
    32
}

/// `[corpus]`: sources and windowing.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorpusSpec {
    /// Files, folders or `hf://datasets/...` paths (docs/reference.md §6), in order.
    pub sources: Vec<String>,
    /// Tokens per window.
    pub seq_len: usize,
    /// Keep the first ⌊max_tokens/seq_len⌋ windows.
    #[serde(default)]
    pub max_tokens: Option<u64>,
    /// JSONL field / Parquet column with the text.
    #[serde(default = "default_text_column")]
    pub text_column: String,
    /// Skip non-UTF-8 documents (counted) instead of stopping.
    #[serde(default)]
    pub skip_invalid_utf8: bool,
}

fn default_text_column() -> String {
    "text".into()
}

/// `[measure]`: output function, estimator and controls.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeasureSpec {
    #[serde(default = "default_output")]
    pub output: Output,
    #[serde(default = "default_estimator")]
    pub estimator: Estimator,
    #[serde(default = "default_probes")]
    pub probes: u32,
    #[serde(default)]
    pub seed: u64,
    #[serde(default = "default_batch")]
    pub batch: usize,
    /// Which weights to measure; `random-init` is the control.
    #[serde(default = "default_weights")]
    pub weights: Vec<WeightsKind>,
    /// Window groups for the jackknife error bars (`measure --groups`); 1: none.
    #[serde(default = "default_groups")]
    pub groups: u32,
    /// Also measure the FACT sums (`measure --fact`): one more backward per window, and the
    /// correlate stage writes `ansatz` = `fact` rows.
    #[serde(default)]
    pub fact: bool,
    /// How many random inits the control is measured on: seeds `seed`, `seed + 1`, …; with
    /// more than one, the pretrained − random-init intervals include the spread across them.
    #[serde(default = "default_init_seeds")]
    pub init_seeds: u32,
    /// Where to measure: `cpu`, `cuda` or `cuda:N` (`measure --device`; `agop run --device`
    /// overrides it, as the Slurm scripts of `agop slurm --gpus` do).
    #[serde(default = "default_device")]
    pub device: String,
    /// The precision of the model's products on a GPU (`measure --precision`): `f32`, `tf32`
    /// or `bf16`; tf32 and bf16 need a GPU (`device = "cuda"`, or `agop run --device cuda`).
    #[serde(default)]
    pub precision: Precision,
}

fn default_device() -> String {
    "cpu".into()
}

fn default_output() -> Output {
    Output::Logits
}
fn default_estimator() -> Estimator {
    Estimator::Sketch
}
fn default_probes() -> u32 {
    1
}
fn default_batch() -> usize {
    4
}
fn default_groups() -> u32 {
    1
}
fn default_init_seeds() -> u32 {
    1
}
fn default_weights() -> Vec<WeightsKind> {
    vec![WeightsKind::Pretrained, WeightsKind::RandomInit]
}

impl Default for MeasureSpec {
    fn default() -> Self {
        Self {
            output: default_output(),
            estimator: default_estimator(),
            probes: default_probes(),
            seed: 0,
            batch: default_batch(),
            weights: default_weights(),
            groups: default_groups(),
            fact: false,
            init_seeds: default_init_seeds(),
            device: default_device(),
            precision: Precision::F32,
        }
    }
}

/// `[correlate]`: powers of the AGOP.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorrelateSpec {
    #[serde(default = "default_powers")]
    pub powers: Vec<f64>,
}

/// `[features]`: `agop features` as a stage after correlate.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeaturesSpec {
    /// Run the stage (features.parquet, and feature-overlap.parquet for a series).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Eigenvectors per matrix read out as tokens.
    #[serde(default = "default_top")]
    pub top: usize,
    /// Tokens listed per read-out and sign.
    #[serde(default = "default_feature_tokens")]
    pub tokens: usize,
}

fn default_top() -> usize {
    4
}

fn default_feature_tokens() -> usize {
    5
}

impl Default for FeaturesSpec {
    fn default() -> Self {
        Self { enabled: true, top: default_top(), tokens: default_feature_tokens() }
    }
}

fn default_powers() -> Vec<f64> {
    vec![0.5, 1.0]
}

impl Default for CorrelateSpec {
    fn default() -> Self {
        Self { powers: default_powers() }
    }
}

impl Pipeline {
    /// Parse a pipeline file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).map_err(|e| bad!("cannot read pipeline file {}: {e}", path.display()))?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Self::from_str(&text, base, &path.display().to_string())
    }

    /// Parse pipeline text; `base` is where relative paths start, `origin` names it in errors.
    pub fn from_str(text: &str, base: PathBuf, origin: &str) -> Result<Self> {
        let mut p: Pipeline = toml::from_str(text).map_err(|e| bad!("{origin}: {e}"))?;
        p.base = base;
        p.text = text.to_string();
        p.validate().map_err(|e| e.context(format!("in pipeline file {origin}")))?;
        Ok(p)
    }

    fn validate(&self) -> Result<()> {
        if self.name.is_empty() || self.name.contains(['/', '\\']) || self.name.starts_with('.') {
            bail_bad!("name {:?} must be a plain folder name", self.name);
        }
        match (&self.model.id, &self.model.init_config) {
            (None, None) => bail_bad!("[model] needs `id` (hub id or directory) or `init_config`"),
            (Some(_), Some(_)) => bail_bad!("[model] has both `id` and `init_config`; choose one"),
            _ => {}
        }
        let m = &self.model;
        if let Some(t) = &self.train {
            if m.init_config.is_none() {
                bail_bad!("[train] trains the model of `[model] init_config`; give init_config (the config.json)");
            }
            if !m.revisions.is_empty() || !m.steps.is_empty() || m.revision_format.is_some() {
                bail_bad!("[train] makes the series itself (its save_steps); remove [model] revisions and steps");
            }
            if !m.keep_checkpoints {
                bail_bad!("[model] keep_checkpoints = false deletes hub downloads; a trained series is never deleted");
            }
            self.train_settings(t)?;
        }
        if let Some(dir) = self.local_dir() {
            if m.revision.is_some() {
                bail_bad!("[model] revision applies to hub models; {} is a local folder", dir.display());
            }
            if !m.keep_checkpoints {
                bail_bad!(
                    "[model] keep_checkpoints = false deletes hub downloads; the local series {} is never deleted",
                    dir.display()
                );
            }
            let is_checkpoint = dir.join("config.json").is_file() || crate::model::nanogpt::is_nanogpt(&dir);
            if is_checkpoint && (!m.revisions.is_empty() || m.revision_format.is_some()) {
                bail_bad!(
                    "[model] {} is one checkpoint (it has a config.json), so it has no revisions; for a series, \
                     point id at the folder that holds the checkpoint folders",
                    dir.display()
                );
            }
            if !is_checkpoint {
                let cps = self.checkpoints();
                if cps.is_empty() {
                    bail_bad!(
                        "[model] {} has no config.json and no checkpoint folders (checkpoint-<N> or step<N>); \
                         it is neither a model nor a series",
                        dir.display()
                    );
                }
                let mut first: Option<(PathBuf, crate::model::ModelConfig)> = None;
                for c in &cps {
                    let sub = dir.join(c.revision.as_deref().unwrap_or(""));
                    if !sub.join("config.json").is_file() && !crate::model::nanogpt::is_nanogpt(&sub) {
                        bail_bad!("[model] series checkpoint {} has no config.json", sub.display());
                    }
                    // One architecture along the series, checked before anything is measured.
                    let cfg = crate::model::dir_config(&sub)?;
                    match &first {
                        None => first = Some((sub, cfg)),
                        Some((d0, c0)) if *c0 != cfg => {
                            let (a, b) = (serde_json::to_value(&cfg)?, serde_json::to_value(c0)?);
                            let differ: Vec<String> = a
                                .as_object()
                                .into_iter()
                                .flatten()
                                .filter(|(k, v)| b.get(k.as_str()) != Some(v))
                                .map(|(k, v)| {
                                    format!("{k} {v} vs {}", b.get(k.as_str()).unwrap_or(&serde_json::Value::Null))
                                })
                                .collect();
                            bail_bad!(
                                "[model] series checkpoint {} has another config than {} ({}); a series is one model \
                                 along training",
                                sub.display(),
                                d0.display(),
                                if differ.is_empty() { "another architecture".to_string() } else { differ.join(", ") }
                            )
                        }
                        Some(_) => {}
                    }
                }
            }
        }
        if self.is_series() {
            let cps = self.checkpoints();
            // The steps that are known (a revision such as `main` may have none) in the order given.
            let steps: Vec<(u64, &str)> =
                cps.iter().filter_map(|c| Some((c.step?, c.revision.as_deref().unwrap_or("")))).collect();
            if let Some(w) = steps.windows(2).find(|w| w[1].0 <= w[0].0) {
                bail_bad!(
                    "[model] the series' steps must increase; step {} ({}) follows step {} ({}) (give the revisions \
                     in training order, or `steps`; two folders of one step: keep one)",
                    w[1].0,
                    w[1].1,
                    w[0].0,
                    w[0].1
                );
            }
        }
        if !m.revisions.is_empty() || !m.steps.is_empty() || m.revision_format.is_some() {
            if m.id.is_none() {
                bail_bad!("[model] a checkpoint series (revisions, steps) needs `id`, a hub repository");
            }
            if m.revision.is_some() {
                bail_bad!("[model] has both `revision` and a checkpoint series; give `revisions` (or `steps`) only");
            }
            match (&m.revision_format, m.revisions.is_empty()) {
                (Some(_), false) => bail_bad!("[model] give `revisions` or `revision_format` with `steps`, not both"),
                (Some(f), true) => {
                    if m.steps.is_empty() || !f.contains("{step}") {
                        bail_bad!("[model] revision_format {f:?} needs `steps` and a {{step}} placeholder");
                    }
                }
                (None, true) => bail_bad!("[model] `steps` needs `revisions` of equal length or a `revision_format`"),
                (None, false) => {
                    if !m.steps.is_empty() && m.steps.len() != m.revisions.len() {
                        bail_bad!(
                            "[model] steps has {} entries but revisions has {}; give one step per revision",
                            m.steps.len(),
                            m.revisions.len()
                        );
                    }
                }
            }
            let revs: Vec<Option<String>> = self.checkpoints().into_iter().map(|c| c.revision).collect();
            if let Some(d) = revs.iter().enumerate().find(|(i, r)| revs[..*i].contains(r)) {
                bail_bad!("[model] revision {:?} appears twice in the series", d.1.as_deref().unwrap_or(""));
            }
        }
        if !m.keep_checkpoints && !self.is_series() {
            bail_bad!("[model] keep_checkpoints = false applies to a checkpoint series (`revisions` or `steps`)");
        }
        if self.corpus.sources.is_empty() {
            bail_bad!("[corpus] sources is empty");
        }
        if self.corpus.seq_len == 0 {
            bail_bad!("[corpus] seq_len must be positive");
        }
        if self.measure.estimator == Estimator::Sketch && self.measure.probes == 0 {
            bail_bad!("[measure] probes must be at least 1 for the sketch estimator");
        }
        if self.measure.weights.is_empty() {
            bail_bad!("[measure] weights is empty");
        }
        if let Some(w) = self
            .measure
            .weights
            .iter()
            .enumerate()
            .find_map(|(i, w)| self.measure.weights[..i].contains(w).then_some(w))
        {
            bail_bad!("[measure] weights lists {w} twice");
        }
        if self.measure.groups == 0 {
            bail_bad!("[measure] groups must be at least 1 (1: no error bars)");
        }
        if self.measure.init_seeds == 0 {
            bail_bad!("[measure] init_seeds must be at least 1 (the number of random inits of the control)");
        }
        if self.measure.seed.checked_add(u64::from(self.measure.init_seeds)).is_none() {
            bail_bad!("[measure] seed + init_seeds overflows");
        }
        // init_config (and [train]'s step 0) draws the "pretrained" weights with init_seed, the
        // control with seed, seed + 1, …: one seed in both would put the measured weights
        // themselves into the control.
        let controls = self.measure.seed..self.measure.seed + u64::from(self.measure.init_seeds);
        if m.init_config.is_some()
            && self.measure.weights.contains(&WeightsKind::RandomInit)
            && controls.contains(&m.init_seed)
        {
            bail_bad!(
                "[model] init_seed {} is one of the control's seeds ([measure] seed {} with init_seeds {}): the \
                 random-init control would include the measured weights themselves; give [measure] a seed outside \
                 (e.g. seed = {})",
                m.init_seed,
                self.measure.seed,
                self.measure.init_seeds,
                m.init_seed + 1
            );
        }
        crate::model::device::device_spec(&self.measure.device).map_err(|e| crate::bad!("[measure] device: {e}"))?;
        if self.measure.batch == 0 {
            bail_bad!("[measure] batch must be at least 1");
        }
        if let Some(o) = self.slurm.sbatch.iter().find(|o| !o.starts_with("--") || o.contains('\n')) {
            bail_bad!("[slurm] sbatch entries are sbatch options such as \"--qos=normal\" (one line each), got {o:?}");
        }
        // Options agop writes itself: one given again here would turn the reduce job into an
        // array, send the logs elsewhere, or fight over the resources.
        // (sbatch also takes a prefix of an option, `--arr` for `--array`; `--mem-per-cpu` and
        // `--mem-per-gpu` cannot stand beside `--mem`, nor `--gpus` beside `--gres`.)
        const OWN: [&str; 13] = [
            "--array",
            "--output",
            "--job-name",
            "--dependency",
            "--time",
            "--cpus-per-task",
            "--mem",
            "--mem-per-cpu",
            "--mem-per-gpu",
            "--partition",
            "--account",
            "--gres",
            "--gpus",
        ];
        let own = |o: &&String| {
            let name = o.split(['=', ' ']).next().unwrap_or("");
            name.len() > 2 && OWN.iter().any(|k| k.starts_with(name))
        };
        if let Some(o) = self.slurm.sbatch.iter().find(own) {
            bail_bad!(
                "[slurm] sbatch {o:?}: agop sets this option itself (--array, --output and --job-name in the \
                 scripts, --dependency when it submits them; --time, --cpus-per-task, --mem, --partition and --account from \
                 [slurm] time, cpus, mem, partition and account or `agop slurm`'s flags of those names; --gres from \
                 --gpus), or cannot stand beside what it sets (--mem-per-cpu, --mem-per-gpu, --gpus); sbatch also \
                 reads a prefix of an option as the option: set it there instead"
            );
        }
        if let Some(l) = self.slurm.setup.iter().find(|l| l.contains('\n')) {
            bail_bad!("[slurm] setup entries are single shell lines, got {l:?}");
        }
        if self.correlate.powers.is_empty() {
            bail_bad!("[correlate] powers is empty; give at least one power (e.g. [0.5, 1.0])");
        }
        if let Some(p) = self.correlate.powers.iter().find(|p| !p.is_finite() || **p <= 0.0) {
            bail_bad!("[correlate] powers must be positive numbers, got {p}");
        }
        if let Some(p) = crate::correlate::repeated(&self.correlate.powers) {
            bail_bad!("[correlate] powers lists {p} twice");
        }
        if self.features.top == 0 || self.features.tokens == 0 {
            bail_bad!("[features] top and tokens must be at least 1");
        }
        Ok(())
    }

    /// How many measurements of `weights` the pipeline makes: one per checkpoint for the
    /// pretrained weights, one per init seed for the random-init control.
    pub fn measurement_count(&self, weights: WeightsKind) -> usize {
        match weights {
            WeightsKind::Pretrained => self.checkpoints().len(),
            WeightsKind::RandomInit => self.measure.init_seeds as usize,
        }
    }

    /// The seed of measurement `k` of `weights`: `[measure] seed` for the pretrained weights,
    /// `seed + k` for the k-th random init.
    pub fn measurement_seed(&self, weights: WeightsKind, k: usize) -> u64 {
        match weights {
            WeightsKind::Pretrained => self.measure.seed,
            WeightsKind::RandomInit => self.measure.seed + k as u64,
        }
    }

    /// Is `[model]` a checkpoint series (hub revisions, a local folder of checkpoints, or the
    /// checkpoints of `[train]`)?
    pub fn is_series(&self) -> bool {
        !self.model.revisions.is_empty()
            || self.model.revision_format.is_some()
            || self.train.is_some()
            || self.local_series().is_some()
    }

    /// `[model] id` as a local folder (absolute, links resolved), when it is one.
    pub fn local_dir(&self) -> Option<PathBuf> {
        let id = self.model.id.as_ref()?;
        std::fs::canonicalize(self.resolve_path(id)).ok().filter(|d| d.is_dir())
    }

    /// A local folder of checkpoint folders (no config.json of its own): the series' folder.
    pub fn local_series(&self) -> Option<PathBuf> {
        self.local_dir().filter(|d| !d.join("config.json").is_file() && !crate::model::nanogpt::is_nanogpt(d))
    }

    /// The folder of checkpoint `c` of a local series or a `[train]` run (`out` is the
    /// pipeline's output folder); `None` for hub checkpoints.
    pub fn local_checkpoint(&self, out: &Path, c: &Checkpoint) -> Option<PathBuf> {
        let rev = c.revision.as_deref()?;
        if self.train.is_some() {
            return Some(out.join("train").join(rev));
        }
        self.local_series().map(|d| d.join(rev))
    }

    /// The `agop train` settings of `[train]` (config read from `[model] init_config`).
    pub fn train_settings(&self, t: &TrainSpec) -> Result<crate::train::TrainSettings> {
        let cfg = self.model.init_config.as_deref().unwrap_or_default();
        let path = self.resolve_path(cfg);
        let config = std::fs::read_to_string(&path).map_err(|e| bad!("[model] init_config {}: {e}", path.display()))?;
        let sources = match &t.sources {
            Some(s) => s.iter().map(|x| self.resolve_source(x)).collect(),
            None => self.sources(),
        };
        crate::train::TrainSettings {
            config,
            sources,
            text_column: self.corpus.text_column.clone(),
            seq_len: t.seq_len.unwrap_or(self.corpus.seq_len),
            steps: t.steps,
            batch: t.batch,
            lr: t.lr,
            weight_decay: t.weight_decay,
            warmup: t.warmup.unwrap_or((t.steps / 10).min(100)),
            grad_clip: t.grad_clip,
            seed: self.model.init_seed,
            save_steps: t.save_steps.clone().unwrap_or_else(|| crate::train::default_save_steps(t.steps)),
            eval_windows: t.eval_windows,
        }
        .validate()
        .map_err(|e| e.context("[train]"))
    }

    /// The checkpoints of the pretrained weights, in order: the series, or the one `revision`.
    pub fn checkpoints(&self) -> Vec<Checkpoint> {
        let m = &self.model;
        if let Some(t) = &self.train {
            let save = self.train_settings(t).map(|s| s.save_steps).unwrap_or_default();
            return save
                .into_iter()
                .map(|s| Checkpoint { revision: Some(format!("checkpoint-{s}")), step: Some(s) })
                .collect();
        }
        if let (Some(dir), true) = (self.local_series(), m.revisions.is_empty() && m.revision_format.is_none()) {
            // Subfolders named checkpoint-<N> (HF's Trainer) or step<N> (Pythia), by step.
            let mut found: Vec<Checkpoint> = std::fs::read_dir(&dir)
                .into_iter()
                .flatten()
                .flatten()
                .filter(|e| e.path().is_dir())
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().to_string();
                    let digits = name.strip_prefix("checkpoint-").or_else(|| name.strip_prefix("step"))?;
                    let step: u64 = digits.parse().ok()?;
                    Some(Checkpoint { revision: Some(name), step: Some(step) })
                })
                .collect();
            found.sort_by_key(|c| c.step);
            return found;
        }
        if let Some(f) = &m.revision_format {
            return m
                .steps
                .iter()
                .map(|&s| Checkpoint { revision: Some(f.replace("{step}", &s.to_string())), step: Some(s) })
                .collect();
        }
        if !m.revisions.is_empty() {
            return m
                .revisions
                .iter()
                .enumerate()
                .map(|(i, r)| Checkpoint {
                    revision: Some(r.clone()),
                    step: m.steps.get(i).copied().or_else(|| trailing_step(r)),
                })
                .collect();
        }
        vec![Checkpoint { revision: m.revision.clone(), step: None }]
    }

    /// A path from the file, made relative to the file's folder when it is relative.
    pub fn resolve_path(&self, p: &str) -> PathBuf {
        let path = Path::new(p);
        if path.is_absolute() || p.starts_with("hf://") {
            path.to_path_buf()
        } else {
            self.base.join(path)
        }
    }

    /// A model id: a directory relative to the file if one exists there, else a hub id.
    pub fn model_spec(&self) -> Option<String> {
        let id = self.model.id.as_ref()?;
        Some(self.local_dir().map_or_else(|| id.clone(), |d| d.display().to_string()))
    }

    /// Corpus sources, local paths made absolute ([`canonical_source`]): the same sources
    /// whether the pipeline file was named by a relative or an absolute path.
    pub fn sources(&self) -> Vec<String> {
        self.corpus.sources.iter().map(|s| self.resolve_source(s)).collect()
    }

    /// Corpus sources spelled as agop before 2026-12-03 recorded them (relative to the folder of
    /// the pipeline file as it was named), to recognise tokens those versions wrote.
    pub fn sources_as_named(&self) -> Vec<String> {
        self.corpus.sources.iter().map(|s| self.source_as_named(s)).collect()
    }

    /// One corpus source with a relative path resolved.
    fn resolve_source(&self, s: &str) -> String {
        canonical_source(&self.source_as_named(s))
    }

    /// One corpus source, a relative path joined to the pipeline file's folder as named.
    fn source_as_named(&self, s: &str) -> String {
        if s.starts_with("hf://") || s.starts_with("builtin:") {
            s.to_string()
        } else {
            self.resolve_path(s).display().to_string()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every pipeline file shipped in pipelines/ parses and validates (a typo in a built-in
    /// pipeline is found here, not by a user an hour into a run).
    #[test]
    fn every_built_in_pipeline_is_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines");
        let mut n = 0;
        for e in std::fs::read_dir(&dir).unwrap() {
            let path = e.unwrap().path();
            if path.extension().is_some_and(|x| x == "toml") {
                Pipeline::from_file(&path).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
                n += 1;
            }
        }
        assert!(n >= 10, "found only {n} pipelines");
        let p = Pipeline::from_file(&dir.join("pythia-70m-deduped.toml")).unwrap();
        let revs: Vec<String> = p.checkpoints().into_iter().filter_map(|c| c.revision).collect();
        assert_eq!(revs.first().map(String::as_str), Some("step0"));
        assert_eq!(revs.last().map(String::as_str), Some("step143000"));
        assert_eq!(revs.len(), 8);
    }

    fn parse(model: &str) -> Result<Pipeline> {
        let text = format!("name = \"s\"\n[model]\n{model}\n[corpus]\nsources = [\"x.txt\"]\nseq_len = 8\n");
        Pipeline::from_str(&text, PathBuf::new(), "test")
    }

    #[test]
    fn checkpoint_series_forms_and_errors() {
        let c = |r: &str, s: Option<u64>| Checkpoint { revision: Some(r.to_string()), step: s };
        let p = parse("id = \"o/n\"\nrevisions = [\"checkpoint-50\", \"final\"]").unwrap();
        assert_eq!(p.checkpoints(), [c("checkpoint-50", Some(50)), c("final", None)]);
        let p = parse("id = \"o/n\"\nrevisions = [\"a\", \"b\"]\nsteps = [3, 7]").unwrap();
        assert_eq!(p.checkpoints(), [c("a", Some(3)), c("b", Some(7))]);
        let p = parse("id = \"o/n\"\nsteps = [0, 100]\nrevision_format = \"checkpoint-{step}\"").unwrap();
        assert_eq!(p.checkpoints(), [c("checkpoint-0", Some(0)), c("checkpoint-100", Some(100))]);
        let p = parse("id = \"o/n\"\nrevision = \"abc\"").unwrap();
        assert!(!p.is_series());
        assert_eq!(p.checkpoints(), [c("abc", None)]);
        for (bad, says) in [
            ("id = \"o/n\"\nrevisions = [\"a\"]\nsteps = [1, 2]", "one step per revision"),
            ("id = \"o/n\"\nsteps = [1]", "needs `revisions`"),
            ("id = \"o/n\"\nsteps = [1]\nrevision_format = \"ckpt\"", "placeholder"),
            ("id = \"o/n\"\nrevision = \"x\"\nrevisions = [\"a\"]", "both `revision`"),
            ("id = \"o/n\"\nrevisions = [\"a\", \"a\"]", "appears twice"),
            ("init_config = \"c.json\"\nrevisions = [\"a\"]", "needs `id`"),
        ] {
            let e = format!("{:#}", parse(bad).unwrap_err());
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    /// Refused when the file is read (before, `weights` twice failed at reduce, after measuring,
    /// and `[slurm] sbatch = ["--array=0-99"]` made the reduce job an array of 100).
    #[test]
    fn repeated_weights_and_agops_own_sbatch_options_are_refused() {
        let with = |extra: &str| {
            let text =
                format!("name = \"s\"\n[model]\nid = \"o/n\"\n[corpus]\nsources = [\"x.txt\"]\nseq_len = 8\n{extra}");
            Pipeline::from_str(&text, PathBuf::new(), "test")
        };
        for (bad, says) in [
            ("[measure]\nweights = [\"pretrained\", \"random-init\", \"pretrained\"]", "lists pretrained twice"),
            ("[slurm]\nsbatch = [\"--array=0-99\"]", "\"--array=0-99\": agop sets this option itself"),
            ("[slurm]\nsbatch = [\"--output=x.log\"]", "agop sets this option itself"),
            ("[slurm]\nsbatch = [\"--time=1:00:00\"]", "[slurm] time"),
            ("[slurm]\nsbatch = [\"--mem 4G\"]", "agop sets this option itself"),
            ("[slurm]\nsbatch = [\"--arr=0-99\"]", "\"--arr=0-99\""),
            ("[slurm]\nsbatch = [\"--mem-per-cpu=2G\"]", "cannot stand beside"),
            ("[slurm]\nsbatch = [\"--gpus=2\"]", "agop sets this option itself"),
        ] {
            let e = format!("{:#}", with(bad).unwrap_err());
            assert!(e.contains(says), "{bad}: {e}");
        }
        // Options agop leaves to the site, and names that only begin alike, are kept.
        let p = with("[slurm]\nsbatch = [\"--qos=normal\", \"--time-min=30\", \"--error=e.log\", \"--gres-flags=enforce-binding\"]")
            .unwrap();
        assert_eq!(p.slurm.sbatch.len(), 4);
    }
}
