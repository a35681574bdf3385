//! The command layer (in the manner of ripgrep's `HiArgs`): each subcommand's arguments become
//! the library's settings here, once; the model is resolved (and its weights hashed) once and
//! handed down; then the library's stage function runs and a one-line summary is printed.

use std::path::PathBuf;

use anyhow::Result;
use polars::prelude::DataFrame;

use agop::correlate::{self, RunContext};
use agop::fetch::{resolve_model, ResolvedModel};
use agop::measure::{self, MeasureOptions, Settings};
use agop::pipeline::{run, slurm, Pipeline};
use agop::tokenize::corpus::CorpusOptions;
use agop::tokenize::{self, TokenizeOptions};

use crate::cli::{Command, CorrelateArgs, FeaturesArgs, MeasureArgs, ModelArgs, Stage, TokenizeArgs, TrainArgs};

/// The pipeline `agop run` runs without a file.
const DEFAULT_PIPELINE: &str = include_str!("../pipelines/gpt2-shakespeare.toml");

impl ModelArgs {
    fn resolve(&self) -> Result<ResolvedModel> {
        resolve_model(&self.model, self.revision.as_deref())
    }
}

impl MeasureArgs {
    fn options(&self) -> Result<MeasureOptions> {
        Ok(MeasureOptions {
            shard: self.shard,
            progress: true,
            checkpoint_windows: self.checkpoint_windows,
            checkpoint_secs: self.checkpoint_secs,
            groups: self.groups,
            profile: self.profile,
            precision: self.precision,
            ..MeasureOptions::new(
                self.weights,
                Settings {
                    output: self.output,
                    estimator: self.estimator,
                    probes: self.probes,
                    seed: self.seed,
                    fact: self.fact,
                },
                self.batch,
            )
        }
        .on(agop::model::parse_device(&self.device)?))
    }
}

impl TokenizeArgs {
    fn options(&self) -> TokenizeOptions {
        TokenizeOptions {
            sources: self.corpus.clone(),
            seq_len: self.seq_len,
            max_tokens: self.max_tokens,
            corpus: CorpusOptions { text_column: self.text_column.clone(), skip_invalid_utf8: self.skip_invalid_utf8 },
            progress: true,
            inputs: String::new(),
        }
    }
}

impl TrainArgs {
    fn options(&self) -> Result<agop::train::TrainOptions> {
        // Checked here, where the file's name is known.
        agop::model::Gpt2Config::from_file(&self.config)?;
        let config = std::fs::read_to_string(&self.config)
            .map_err(|e| agop::bad!("cannot read --config {}: {e}", self.config.display()))?;
        let settings = agop::train::TrainSettings {
            config,
            sources: self.corpus.clone(),
            text_column: self.text_column.clone(),
            seq_len: self.seq_len,
            steps: self.steps,
            batch: self.batch,
            lr: self.lr,
            weight_decay: self.weight_decay,
            warmup: self.warmup.unwrap_or((self.steps / 10).min(100)),
            grad_clip: self.grad_clip,
            seed: self.seed,
            save_steps: self.save_steps.clone().unwrap_or_else(|| agop::train::default_save_steps(self.steps)),
            eval_windows: self.eval_windows,
        }
        .validate()
        .map_err(|e| e.context(format!("agop train --config {}", self.config.display())))?;
        Ok(agop::train::TrainOptions { settings, out: self.out.clone(), progress: true })
    }
}

/// Run one command.
pub fn run(command: Command) -> Result<()> {
    match command {
        Command::Run { pipeline, out, stage, weights, shard, shards, checkpoint, device } => {
            let mut p = match pipeline {
                Some(path) => Pipeline::from_file(&path)?,
                None => {
                    Pipeline::from_str(DEFAULT_PIPELINE, PathBuf::from("pipelines"), "the built-in default pipeline")?
                }
            };
            if let Some(d) = device {
                agop::model::parse_device(&d)?;
                p.measure.device = d;
            }
            let dir = run::out_dir(&p, out.as_deref());
            // A flag of another stage would be silently ignored: refused instead.
            let given = [
                ("--weights", weights.is_some(), Some(Stage::Measure)),
                ("--shard", shard.is_some(), Some(Stage::Measure)),
                ("--checkpoint", checkpoint.is_some(), Some(Stage::Measure)),
                ("--shards", shards.is_some(), Some(Stage::Reduce)),
            ];
            if let Some((flag, _, needs)) = given.iter().find(|(_, set, needs)| *set && stage != *needs) {
                agop::bail_bad!(
                    "{flag} is a flag of --stage {}; it does nothing {}",
                    needs.map(|s| s.as_str()).unwrap_or_default(),
                    match stage {
                        Some(s) => format!("in --stage {}", s.as_str()),
                        None => "without --stage".to_string(),
                    }
                );
            }
            match stage {
                None => {
                    run::run(&p, Some(&dir), false)?;
                }
                Some(Stage::Prepare) => {
                    run::prepare(&p, &dir, false)?;
                    // Cluster jobs read every checkpoint of a series offline.
                    if p.is_series() {
                        run::fetch_checkpoints(&p, false)?;
                    }
                }
                Some(Stage::Measure) => {
                    let prep = run::prepared(&p, &dir)?;
                    let ws = weights.map(|w| vec![w]).unwrap_or_else(|| p.measure.weights.clone());
                    for w in ws {
                        let n = p.measurement_count(w);
                        if let Some(k) = checkpoint.filter(|&k| k >= n) {
                            agop::bail_bad!(
                                "--checkpoint {k}: the pipeline makes {n} {w} measurement(s) (checkpoints, or init \
                                 seeds), numbered from 0"
                            );
                        }
                        match checkpoint {
                            Some(k) => {
                                run::measure_checkpoint(&p, &prep, w, k, shard, false)?;
                            }
                            None => {
                                run::measure(&p, &prep, w, shard, false)?;
                            }
                        }
                    }
                }
                Some(Stage::Reduce) => {
                    let prep = run::prepared(&p, &dir)?;
                    run::reduce(&p, &prep, shards, false)?;
                }
            }
            eprintln!("done: {}", dir.display());
        }
        Command::Slurm { pipeline, shards, out, submit, prepare_here, partition, account, time, cpus, mem, gpus } => {
            let p = Pipeline::from_file(&pipeline)?;
            let dir = run::out_dir(&p, out.as_deref());
            if prepare_here {
                run::prepare(&p, &dir, false)?;
                run::fetch_checkpoints(&p, false)?;
            }
            let o =
                slurm::SlurmOptions { shards, partition, account, time, cpus, mem, gpus, prepared_here: prepare_here };
            let scripts = slurm::write_scripts(&pipeline, &p, &dir, &o)?;
            eprintln!("sbatch scripts in {}", scripts.prepare.parent().unwrap().display());
            if submit {
                for (name, id) in slurm::submit(&scripts)? {
                    println!("{name} {id}");
                }
            }
        }
        Command::Fetch(m) => {
            let m = m.resolve()?;
            println!("{}", m.dir.display());
            eprintln!("{} @ {}", m.id, m.revision);
        }
        Command::Tokenize(a) => {
            let n = tokenize::tokenize(&a.model.resolve()?, &a.options(), &a.out)?;
            eprintln!("{n} windows of {} tokens → {}", a.seq_len, a.out.display());
        }
        Command::Report { dir } => {
            agop::util::print_stdout(&agop::report::report(&dir)?)?;
        }
        Command::Measure(a) => {
            let (gop, timing) = measure::run::measure_timed(&a.model.resolve()?, &a.tokens, &a.out, &a.options()?)?;
            let steady = timing
                .after_first_batch
                .map(|r| format!("; after the first batch {r:.1} tokens/s"))
                .unwrap_or_default();
            eprintln!(
                "measured {} windows ({} tokens) → {}; {:.1} s in passes, {:.1} tokens/s{steady}",
                gop.meta.n_windows,
                gop.meta.n_tokens,
                a.out.display(),
                timing.secs,
                gop.meta.n_tokens as f64 / timing.secs.max(1e-9)
            );
        }
        Command::Merge { parts, out } => {
            let gop = measure::merge_files(&parts, &out)?;
            eprintln!(
                "merged {} files: {} windows ({} tokens) → {}",
                parts.len(),
                gop.meta.n_windows,
                gop.meta.n_tokens,
                out.display()
            );
        }
        Command::Correlate(a) => {
            let df = correlate_command(&a)?;
            eprintln!("{} correlations → {}", df.height(), a.out.display());
        }
        Command::Features(a) => {
            let df = features_command(&a)?;
            eprintln!("{} feature rows → {}", df.height(), a.out.display());
        }
        Command::Train(a) => {
            let opts = a.options()?;
            let r = agop::train::train(&opts)?;
            if let Some(k) = r.resumed_from {
                eprintln!("resumed from checkpoint-{k}");
            }
            let last = r.rows.last().and_then(|row| row.eval_loss.map(|e| (row.step, e)));
            let first = r.rows.first().and_then(|row| row.eval_loss);
            if let (Some(f), Some((step, e))) = (first, last) {
                eprintln!("eval loss {f:.3} (step 0) → {e:.3} (step {step})");
            }
            if let Some(tps) = r.tokens_per_sec {
                eprintln!("{tps:.0} training tokens/s");
            }
            eprintln!("{} checkpoints → {}", r.checkpoints.len(), a.out.display());
        }
        Command::InitModel { config, seed, out } => {
            agop::model::init_model(&config, seed, &out)?;
            eprintln!("random-init checkpoint (seed {seed}) → {}", out.display());
        }
    }
    Ok(())
}

fn correlate_command(a: &CorrelateArgs) -> Result<DataFrame> {
    let model = a.model.resolve()?;
    let opts = correlate::CorrelateOptions {
        agop_out: a.agop_out.clone(),
        force: a.force,
        ..correlate::CorrelateOptions::new(&a.powers)
    };
    correlate::correlate_files(&model, &a.gop, &a.out, &opts, &RunContext::default())
}

fn features_command(a: &FeaturesArgs) -> Result<DataFrame> {
    let model = a.model.resolve()?;
    let sources: Vec<correlate::Source> =
        a.gop.iter().map(|p| correlate::Source { model: model.clone(), gop: p.clone(), step: None }).collect();
    let opts = agop::features::FeatureOptions {
        top: a.top,
        tokens: a.tokens,
        spectrum: a.spectrum,
        force: a.force,
        extra_tables: vec![],
    };
    agop::features::features_sources(&sources, &a.out, &opts, &RunContext::default())
}
