//! The `agop` binary: parse the command line, run a stage, map errors to exit codes
//! (0 success, 2 bad input, 1 other failures).

mod cli;

use std::path::PathBuf;
use std::process::ExitCode;

use agop::data::corpus::CorpusOptions;
use agop::pipeline::{run, slurm, Pipeline};

use agop::agop::Settings;
use agop::stages;
use clap::Parser;
use cli::{Cli, Command, Stage};

/// The pipeline `agop run` runs without a file.
const DEFAULT_PIPELINE: &str = include_str!("../pipelines/gpt2-shakespeare.toml");

fn main() -> ExitCode {
    agop::tune_allocator();
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(agop::error::exit_code(&e) as u8)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run { pipeline, out, stage, weights, shard, shards } => {
            let p = match pipeline {
                Some(path) => Pipeline::from_file(&path)?,
                None => {
                    Pipeline::from_str(DEFAULT_PIPELINE, PathBuf::from("pipelines"), "the built-in default pipeline")?
                }
            };
            let dir = run::out_dir(&p, out.as_deref());
            match stage {
                None => {
                    run::run(&p, Some(&dir), false)?;
                }
                Some(Stage::Prepare) => {
                    run::prepare(&p, &dir, false)?;
                }
                Some(Stage::Measure) => {
                    let prep = run::prepare(&p, &dir, true)?;
                    let ws = match weights {
                        Some(w) => vec![w],
                        None => p.measure.weights.clone(),
                    };
                    for w in ws {
                        run::measure(&p, &prep, w, shard, false)?;
                    }
                }
                Some(Stage::Reduce) => {
                    let prep = run::prepare(&p, &dir, true)?;
                    run::reduce(&p, &prep, shards, false)?;
                }
            }
            eprintln!("done: {}", dir.display());
        }
        Command::Slurm { pipeline, shards, out, submit, partition, time, cpus, mem, gpus } => {
            let p = Pipeline::from_file(&pipeline)?;
            let dir = run::out_dir(&p, out.as_deref());
            let o = slurm::SlurmOptions { shards, partition, time, cpus, mem, gpus };
            let scripts = slurm::write_scripts(&pipeline, &p, &dir, &o)?;
            eprintln!("sbatch scripts in {}", scripts.prepare.parent().unwrap().display());
            if submit {
                for (name, id) in slurm::submit(&scripts)? {
                    println!("{name} {id}");
                }
            }
        }
        Command::Fetch { model, revision } => {
            let m = stages::resolve_model(&model, revision.as_deref())?;
            println!("{}", m.dir.display());
            eprintln!("{} @ {}", m.id, m.revision);
        }
        Command::Tokenize(a) => {
            let opts = stages::TokenizeOptions {
                sources: a.corpus,
                seq_len: a.seq_len,
                max_tokens: a.max_tokens,
                corpus: CorpusOptions { text_column: a.text_column, skip_invalid_utf8: a.skip_invalid_utf8 },
                progress: true,
                inputs: String::new(),
            };
            let n = stages::tokenize(&a.model, a.revision.as_deref(), &opts, &a.out)?;
            eprintln!("{n} windows of {} tokens → {}", a.seq_len, a.out.display());
        }
        Command::Report { dir } => {
            println!("{}", agop::report::report(&dir)?);
        }
        Command::Measure(a) => {
            let opts = stages::MeasureOptions {
                weights: a.weights,
                settings: Settings { output: a.output, estimator: a.estimator, probes: a.probes, seed: a.seed },
                batch: a.batch,
                shard: a.shard,
                progress: true,
                checkpoint_windows: a.checkpoint_windows,
                checkpoint_secs: a.checkpoint_secs,
            };
            let (gop, secs) = stages::measure_timed(&a.model, a.revision.as_deref(), &a.tokens, &a.out, &opts)?;
            let done = gop.meta.n_tokens as f64;
            eprintln!(
                "measured {} windows ({} tokens) → {}; {secs:.1} s in passes, {:.1} tokens/s",
                gop.meta.n_windows,
                gop.meta.n_tokens,
                a.out.display(),
                done / secs.max(1e-9)
            );
        }
        Command::Merge { parts, out } => {
            let gop = stages::merge(&parts, &out)?;
            eprintln!(
                "merged {} files: {} windows ({} tokens) → {}",
                parts.len(),
                gop.meta.n_windows,
                gop.meta.n_tokens,
                out.display()
            );
        }
        Command::Correlate(a) => {
            let ctx = stages::RunContext::default();
            let df = stages::correlate(
                &a.model,
                a.revision.as_deref(),
                &a.gop,
                &a.out,
                &a.powers,
                a.agop_out.as_deref(),
                &ctx,
            )?;
            eprintln!("{} correlations → {}", df.height(), a.out.display());
        }
        Command::InitModel { config, seed, out } => {
            stages::init_model(&config, seed, &out)?;
            eprintln!("random-init checkpoint (seed {seed}) → {}", out.display());
        }
    }
    Ok(())
}
