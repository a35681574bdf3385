//! Command-line interface of docs/reference.md §6 (clap): what the user typed. `commands.rs` turns it into
//! the library's settings.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use agop::measure::{Estimator, Output};
use agop::model::WeightsKind;

#[derive(Parser, Debug)]
#[command(name = "agop", version, about = "Neural Feature Ansatz measurements on GPT-2-family models")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run every stage of a pipeline file (no file: the built-in GPT-2 small / Shakespeare pipeline).
    Run {
        /// Pipeline file (pipelines/*.toml).
        pipeline: Option<PathBuf>,
        /// Output folder (default outputs/<pipeline name>).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Run one stage only (as cluster jobs do): prepare, measure or reduce.
        #[arg(long, value_enum)]
        stage: Option<Stage>,
        /// With --stage measure: which weights.
        #[arg(long, value_enum)]
        weights: Option<WeightsKind>,
        /// With --stage measure: the shard I/N.
        #[arg(long, value_parser = parse_shard)]
        shard: Option<(usize, usize)>,
        /// With --stage reduce: merge this many shard files per weights setting first.
        #[arg(long)]
        shards: Option<usize>,
        /// With --stage measure: only measurement K (0-based): checkpoint K of a series for the
        /// pretrained weights, the random init of seed `seed + K` (`[measure] init_seeds`).
        #[arg(long)]
        checkpoint: Option<usize>,
        /// Measure on this device instead of the pipeline's `[measure] device` (cpu, cuda, cuda:N).
        #[arg(long)]
        device: Option<String>,
    },
    /// Write sbatch scripts for a pipeline (prepare, measure arrays, reduce); --submit submits them.
    Slurm {
        /// The pipeline file.
        pipeline: PathBuf,
        /// Cut every measurement into this many shards, one array task each.
        #[arg(long)]
        shards: usize,
        /// The run folder (default outputs/<name>); the scripts go to <out>/slurm/, with a copy
        /// of this agop binary that the jobs run.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Submit the scripts with sbatch (prepare, the measure arrays after it, reduce after
        /// them) and print the job ids.
        #[arg(long)]
        submit: bool,
        /// Run the prepare stage here, now (model download, tokens, training), instead of as a
        /// job: for clusters whose compute nodes have no internet. Run it on a login node.
        #[arg(long)]
        prepare_here: bool,
        /// sbatch --partition (else `[slurm] partition`, else the cluster's default).
        #[arg(long)]
        partition: Option<String>,
        /// sbatch --account (else `[slurm] account`).
        #[arg(long)]
        account: Option<String>,
        /// sbatch --time of every job (else `[slurm] time`, else 12:00:00).
        #[arg(long)]
        time: Option<String>,
        /// CPUs per task (else `[slurm] cpus`, else 4); also RAYON_NUM_THREADS in the jobs.
        #[arg(long)]
        cpus: Option<u32>,
        /// sbatch --mem of every job (else `[slurm] mem`, else 16G).
        #[arg(long)]
        mem: Option<String>,
        /// GPUs per measure task (--gres=gpu:N; the tasks measure with --device cuda, which
        /// needs an agop built with `--features cuda`).
        #[arg(long)]
        gpus: Option<u32>,
    },
    /// Resolve or download a model's files and print the local folder.
    Fetch(ModelArgs),
    /// Tokenize corpus sources into fixed windows (tokens.parquet).
    Tokenize(TokenizeArgs),
    /// Measure per-module gradient outer products (GOP sums) over a tokens file.
    Measure(MeasureArgs),
    /// Add GOP shard files into one.
    Merge {
        /// GOP files to add.
        #[arg(required = true)]
        parts: Vec<PathBuf>,
        #[arg(long)]
        out: PathBuf,
    },
    /// Correlate each module's weight Gram matrix (NFM) with AGOP^power.
    Correlate(CorrelateArgs),
    /// Read out each module's AGOP and NFM eigenvectors as tokens, with their spectra
    /// (features.parquet; a checkpoint series also gets feature-overlap.parquet).
    Features(FeaturesArgs),
    /// Print the table and write the plots of a finished run: a run folder, or a correlations
    /// table (`correlations.parquet` or any `agop correlate --out` file; the contrasts table
    /// beside it is read too; the plots go to `plots/` beside correlations.parquet, to
    /// `NAME.plots/` beside a table NAME.parquet).
    Report {
        /// A run folder or a correlations table.
        dir: PathBuf,
    },
    /// Train a GPT-2 from a config.json on corpus sources into checkpoint-<step>/ folders (a
    /// series to measure); re-running the same command resumes from the newest checkpoint.
    Train(TrainArgs),
    /// Write a random-init checkpoint in HF layout from a config.json.
    InitModel {
        #[arg(long)]
        config: PathBuf,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long)]
        out: PathBuf,
    },
}

/// A single stage of `agop run`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Model (fetch or init-model) and tokens.
    Prepare,
    /// One weights setting, whole or one shard.
    Measure,
    /// Merge shards, correlate, report.
    Reduce,
}

impl Stage {
    /// The name on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Prepare => "prepare",
            Stage::Measure => "measure",
            Stage::Reduce => "reduce",
        }
    }
}

/// `--model` and `--revision`: which checkpoint.
#[derive(Args, Debug)]
pub struct ModelArgs {
    /// Hub id (owner/name) or local directory with config.json and model.safetensors or
    /// pytorch_model.bin (and, for
    /// tokenize, tokenizer.json or vocab.json + merges.txt).
    #[arg(long)]
    pub model: String,
    /// Branch, tag or commit (hub models).
    #[arg(long)]
    pub revision: Option<String>,
}

#[derive(Args, Debug)]
pub struct MeasureArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// tokens.parquet (docs/reference.md §5 schema).
    #[arg(long)]
    pub tokens: PathBuf,
    /// Output GOP file (.safetensors).
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, value_enum, default_value = "pretrained")]
    pub weights: WeightsKind,
    #[arg(long, value_enum, default_value = "logits")]
    pub output: Output,
    #[arg(long, value_enum, default_value = "sketch")]
    pub estimator: Estimator,
    /// Probes per window (sketch).
    #[arg(long, default_value_t = 1)]
    pub probes: u32,
    /// Seed of the probes and of the random-init weights.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Measure shard I of N (I/N, 0-based): a contiguous block of the windows.
    #[arg(long, value_parser = parse_shard)]
    pub shard: Option<(usize, usize)>,
    /// Windows per forward pass.
    #[arg(long, default_value_t = 4, value_parser = parse_positive)]
    pub batch: usize,
    /// Keep the sums of G contiguous groups of windows apart (in <out stem>.groups/), so that
    /// correlate can give every correlation a jackknife standard error and 95% interval.
    /// Each group costs one more GOP file of disk (docs/error-bars.md). 1: no groups.
    #[arg(long, default_value_t = 1)]
    pub groups: u32,
    /// Where to measure: cpu, cuda (GPU 0) or cuda:N (a build with `--features cuda`).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Also sum the FACT weight gradients G = Σ δ hᵀ of the summed next-token loss (one more
    /// backward per window; the GOP file grows by the model's weights in f64); correlate then
    /// writes `ansatz` = `fact` rows.
    #[arg(long)]
    pub fact: bool,
    /// Checkpoint partial sums to <out>.partial after this many windows (0: by time only).
    /// Re-running the same command resumes from the checkpoint.
    #[arg(long, default_value_t = 0)]
    pub checkpoint_windows: usize,
    /// Checkpoint when this many seconds have passed since the last checkpoint.
    #[arg(long, default_value_t = 60.0)]
    pub checkpoint_secs: f64,
    /// The precision of the model's own products on a GPU: f32 (TF32 off), tf32 (cuBLAS's
    /// tensor-core mode) or bf16 (bf16 operands, as PyTorch's autocast). Grams and sums stay f32
    /// products added in f64. Recorded in the GOP file; parts of different precision do not merge.
    #[arg(long, value_enum, default_value_t = agop::model::Precision::F32)]
    pub precision: agop::model::Precision,
    /// Print where the time went, phase by phase (forward, backward, Grams, FACT, ...), timing
    /// each with the device synchronized around it.
    #[arg(long)]
    pub profile: bool,
}

#[derive(Args, Debug)]
pub struct CorrelateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// GOP file from measure or merge; repeat for several (e.g. pretrained and random-init).
    #[arg(long, required = true)]
    pub gop: Vec<PathBuf>,
    /// correlations.parquet to write.
    #[arg(long)]
    pub out: PathBuf,
    /// Powers α of AGOP^α, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "0.5,1")]
    pub powers: Vec<f64>,
    /// Also write the operand-space mean AGOP of every module (F32 safetensors).
    #[arg(long)]
    pub agop_out: Option<PathBuf>,
    /// Correlate even when --model's weights are not those the GOP files were measured on
    /// (their sha256 differs). For experts: the result describes neither model.
    #[arg(long)]
    pub force: bool,
}

#[derive(Args, Debug)]
pub struct FeaturesArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// GOP file from measure or merge; repeat for several (e.g. pretrained and random-init).
    #[arg(long, required = true)]
    pub gop: Vec<PathBuf>,
    /// features.parquet to write.
    #[arg(long)]
    pub out: PathBuf,
    /// Eigenvectors per matrix read out as tokens (ranks 1..=top).
    #[arg(long, default_value_t = 4)]
    pub top: usize,
    /// Tokens listed per read-out and sign.
    #[arg(long, default_value_t = 5)]
    pub tokens: usize,
    /// Eigenvalues per matrix in the spectrum rows.
    #[arg(long, default_value_t = 64)]
    pub spectrum: usize,
    /// Use --model's weights even when they are not those the GOP files were measured on.
    #[arg(long)]
    pub force: bool,
}

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// The model's config.json (GPT-2; vocab_size at least 50257, the GPT-2 tokenizer's).
    #[arg(long)]
    pub config: PathBuf,
    /// .txt, .jsonl, .parquet, folder, builtin:shakespeare or hf://datasets/... sources.
    #[arg(long, required = true, num_args = 1..)]
    pub corpus: Vec<String>,
    /// Tokens per training window.
    #[arg(long)]
    pub seq_len: usize,
    /// Optimizer updates.
    #[arg(long)]
    pub steps: u64,
    /// Output folder: checkpoint-<step>/, train.parquet, eval-tokens.parquet.
    #[arg(long)]
    pub out: PathBuf,
    /// Windows per update.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Peak learning rate (AdamW, β = (0.9, 0.95)).
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    /// Decoupled weight decay on the 2-D weights.
    #[arg(long, default_value_t = 0.1)]
    pub weight_decay: f64,
    /// Linear warm-up updates (default: a tenth of --steps, at most 100).
    #[arg(long)]
    pub warmup: Option<u64>,
    /// Clip the global gradient norm to this.
    #[arg(long, default_value_t = 1.0)]
    pub grad_clip: f64,
    /// Seed of the initial weights, the held-out windows and the batches.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Steps to save, comma-separated (0 and --steps are always saved; default: quarters).
    #[arg(long, value_delimiter = ',')]
    pub save_steps: Option<Vec<u64>>,
    /// Held-out windows for the eval loss (never trained on).
    #[arg(long, default_value_t = 32)]
    pub eval_windows: usize,
    /// JSONL field / Parquet column holding the text.
    #[arg(long, default_value = "text")]
    pub text_column: String,
}

#[derive(Args, Debug)]
pub struct TokenizeArgs {
    /// The model whose tokenizer to use.
    #[command(flatten)]
    pub model: ModelArgs,
    /// .txt, .jsonl, .parquet, folder, builtin:shakespeare or hf://datasets/... sources, in order.
    #[arg(long, required = true, num_args = 1..)]
    pub corpus: Vec<String>,
    /// Tokens per window: the documents are joined (an end-of-text token after each) and cut
    /// into windows of this length; a last partial window is dropped.
    #[arg(long)]
    pub seq_len: usize,
    /// Keep only the first ⌊max_tokens / seq_len⌋ windows (default: all).
    #[arg(long)]
    pub max_tokens: Option<u64>,
    /// JSONL field / Parquet column holding the text.
    #[arg(long, default_value = "text")]
    pub text_column: String,
    /// Skip documents that are not valid UTF-8 instead of stopping.
    #[arg(long)]
    pub skip_invalid_utf8: bool,
    /// The tokens file to write (Parquet: one row per window, `window` and `tokens`).
    #[arg(long)]
    pub out: PathBuf,
}

fn parse_shard(s: &str) -> Result<(usize, usize), String> {
    let (i, n) = s.split_once('/').ok_or_else(|| format!("expected I/N, got {s:?}"))?;
    let i: usize = i.trim().parse().map_err(|_| format!("bad shard index in {s:?}"))?;
    let n: usize = n.trim().parse().map_err(|_| format!("bad shard count in {s:?}"))?;
    if n == 0 || i >= n {
        return Err(format!("shard {s:?}: need 0 ≤ I < N"));
    }
    Ok((i, n))
}

fn parse_positive(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("expected a positive integer, got {s:?}")),
    }
}
