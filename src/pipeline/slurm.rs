//! `agop slurm`: sbatch scripts for a pipeline as Slurm jobs — prepare (model and tokens, once;
//! every checkpoint of a series fetched), one job array per weights setting measuring the shards
//! (for the pretrained weights of a series, one task per (checkpoint, shard)), and a reduce job (merge, correlate,
//! report) that waits for the arrays with `--dependency=afterok`. With `submit`, the scripts are
//! submitted in order and the job ids printed.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use super::config::Pipeline;
use crate::bail_bad;

/// Resources and scheduling options of `agop slurm`'s flags (None: the pipeline's `[slurm]`
/// value, else the default).
#[derive(Debug, Clone, Default)]
pub struct SlurmOptions {
    pub shards: usize,
    pub partition: Option<String>,
    pub account: Option<String>,
    pub time: Option<String>,
    pub cpus: Option<u32>,
    pub mem: Option<String>,
    pub gpus: Option<u32>,
    /// The prepare stage was run here (a login node with internet): no prepare job is submitted.
    pub prepared_here: bool,
}

/// Default resources of every job, when neither a flag nor `[slurm]` gives one: enough for
/// GPT-2 small on a CPU node (docs/clusters.md); a cluster's own default time limit is often an
/// hour or less, which a measure job would outlive.
pub const DEFAULT_TIME: &str = "12:00:00";
pub const DEFAULT_CPUS: u32 = 4;
pub const DEFAULT_MEM: &str = "16G";

/// What every job asks for and runs first, from the flags, `[slurm]` and the defaults.
struct Job<'a> {
    partition: Option<&'a str>,
    account: Option<&'a str>,
    time: &'a str,
    cpus: u32,
    mem: &'a str,
    gpus: Option<u32>,
    setup: &'a [String],
    sbatch: &'a [String],
}

impl<'a> Job<'a> {
    fn new(o: &'a SlurmOptions, p: &'a Pipeline) -> Self {
        let s = &p.slurm;
        Job {
            partition: o.partition.as_deref().or(s.partition.as_deref()),
            account: o.account.as_deref().or(s.account.as_deref()),
            time: o.time.as_deref().or(s.time.as_deref()).unwrap_or(DEFAULT_TIME),
            cpus: o.cpus.or(s.cpus).unwrap_or(DEFAULT_CPUS),
            mem: o.mem.as_deref().or(s.mem.as_deref()).unwrap_or(DEFAULT_MEM),
            gpus: o.gpus,
            setup: &s.setup,
            sbatch: &s.sbatch,
        }
    }
}

/// The scripts written for one pipeline.
#[derive(Debug, Clone)]
pub struct Scripts {
    pub prepare: PathBuf,
    /// (weights, script) per measure array.
    pub measure: Vec<(String, PathBuf)>,
    pub reduce: PathBuf,
    /// Submit without the prepare job (it was run where `agop slurm` ran).
    pub skip_prepare: bool,
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

fn header(name: &str, logs: &Path, j: &Job, array: Option<usize>) -> String {
    let mut h = String::from("#!/bin/bash\n");
    h.push_str(&format!("#SBATCH --job-name={name}\n"));
    match array {
        Some(n) => {
            h.push_str(&format!("#SBATCH --array=0-{}\n", n - 1));
            h.push_str(&format!("#SBATCH --output={}/{name}-%A_%a.out\n", logs.display()));
        }
        None => h.push_str(&format!("#SBATCH --output={}/{name}-%j.out\n", logs.display())),
    }
    if let Some(p) = j.partition {
        h.push_str(&format!("#SBATCH --partition={p}\n"));
    }
    if let Some(a) = j.account {
        h.push_str(&format!("#SBATCH --account={a}\n"));
    }
    h.push_str(&format!("#SBATCH --time={}\n#SBATCH --cpus-per-task={}\n#SBATCH --mem={}\n", j.time, j.cpus, j.mem));
    if let (Some(g), Some(_)) = (j.gpus, array) {
        // Only the measure arrays use a GPU.
        h.push_str(&format!("#SBATCH --gres=gpu:{g}\n"));
    }
    for o in j.sbatch {
        h.push_str(&format!("#SBATCH {o}\n"));
    }
    h.push_str("set -euo pipefail\n");
    for l in j.setup {
        h.push_str(&format!("{l}\n"));
    }
    if let (Some(_), Some(_)) = (j.gpus, array) {
        // agop's CUDA build loads libcublas/libcurand at run time: from the toolkit a site's
        // `module load cuda` (in [slurm] setup) puts on the path, or from $CUDA_HOME.
        h.push_str(
            "if [ -n \"${CUDA_HOME:-}\" ]; then export LD_LIBRARY_PATH=\"$CUDA_HOME/lib64:${LD_LIBRARY_PATH:-}\"; fi\n",
        );
    }
    h.push_str(&format!("export RAYON_NUM_THREADS={}\n", j.cpus));
    h
}

/// Every value an `#SBATCH` line carries must survive sbatch's parsing of that line, which
/// splits at white space, stops at `#`, does not undo shell quoting, and ends at a line break
/// (after which a value would be a command of the script): such values are refused, as are an
/// empty value and zero CPUs or GPUs.
fn check_header_values(p: &Pipeline, j: &Job, logs: &Path) -> Result<()> {
    let logs = logs.display().to_string();
    let mut values = vec![("[pipeline] name (in the job names)", p.name.as_str()), ("--out (the log folder)", &logs)];
    values.extend([("time", j.time), ("mem", j.mem)]);
    values.extend(j.partition.map(|v| ("partition", v)));
    values.extend(j.account.map(|v| ("account", v)));
    for (what, v) in values {
        if v.is_empty() || v.chars().any(|c| c.is_whitespace() || c.is_control() || "#'\"\\".contains(c)) {
            bail_bad!(
                "{what} {v:?} cannot stand in an #SBATCH line: give a value without spaces, quotes, '#' or line \
                 breaks (sbatch would split it, cut it off, or run what follows a line break)"
            );
        }
    }
    if j.cpus == 0 || j.gpus == Some(0) {
        bail_bad!("--cpus and --gpus (or [slurm] cpus and gpus in the pipeline file) must be at least 1");
    }
    Ok(())
}

/// Write the sbatch scripts into `out/slurm/`.
pub fn write_scripts(pipeline_file: &Path, p: &Pipeline, out: &Path, o: &SlurmOptions) -> Result<Scripts> {
    if o.shards == 0 {
        bail_bad!("--shards must be at least 1");
    }
    if !p.model.keep_checkpoints {
        bail_bad!(
            "{}: [model] keep_checkpoints = false is for single-process runs (`agop run`): on a cluster the \
             prepare job fetches every checkpoint for the offline array tasks, and the reduce job reads them all",
            pipeline_file.display()
        );
    }
    if o.gpus.is_some() && !cfg!(feature = "cuda") {
        eprintln!(
            "warning: this agop was built without CUDA, and the measure jobs will run it with --device cuda: they \
             will fail. Build the GPU binary first (`just build-cuda`, or `cargo build --release --features cuda` with \
             a CUDA toolkit) and write the scripts with that binary."
        );
    }
    let job = Job::new(o, p);
    let abs = |x: &Path| -> Result<PathBuf> {
        Ok(if x.is_absolute() { x.to_path_buf() } else { std::env::current_dir()?.join(x) })
    };
    let (pipeline_file, out) = (abs(pipeline_file)?, abs(out)?);
    let dir = out.join("slurm");
    let logs = dir.join("logs");
    check_header_values(p, &job, &logs)?;
    std::fs::create_dir_all(&logs)?;
    // The jobs run a copy of this binary beside the scripts: a rebuild (or `cargo clean`) in
    // the build tree while jobs wait in the queue does not change what they run.
    let exe = dir.join("agop");
    let me = std::env::current_exe().context("locating the agop binary")?;
    crate::util::write_atomic(&exe, &std::fs::read(&me).with_context(|| format!("reading {}", me.display()))?)?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755))?;
    }
    let base = format!(
        "{} run {} --out {}",
        quote(&exe.display().to_string()),
        quote(&pipeline_file.display().to_string()),
        quote(&out.display().to_string())
    );
    let write = |name: &str, text: String| -> Result<PathBuf> {
        let path = dir.join(format!("{name}.sbatch"));
        crate::util::write_atomic(&path, text.as_bytes())?;
        Ok(path)
    };
    // Prepare fetches the model once; every later job reads the shared cache offline.
    let prepare = write(
        "prepare",
        format!("{}{base} --stage prepare\n", header(&format!("agop-{}-prepare", p.name), &logs, &job, None)),
    )?;
    let mut measure = Vec::new();
    // With --gpus the measure tasks run on the GPU (each task uses one).
    let mbase = if o.gpus.is_some() { format!("{base} --device cuda") } else { base.clone() };
    for w in &p.measure.weights {
        let name = format!("agop-{}-measure-{}", p.name, w.as_str());
        let n = p.measurement_count(*w);
        let body = if n > 1 {
            // One array task per (measurement, shard): task t is measurement t / shards (a
            // checkpoint of a series, or an init seed of random-init), shard t % shards.
            format!(
                "{}export HF_HUB_OFFLINE=1\nK=$((SLURM_ARRAY_TASK_ID / {s}))\nI=$((SLURM_ARRAY_TASK_ID % {s}))\n\
                 {mbase} --stage measure --weights {} --checkpoint \"$K\" --shard \"$I/{s}\"\n",
                header(&name, &logs, &job, Some(n * o.shards)),
                w.as_str(),
                s = o.shards
            )
        } else {
            format!(
                "{}export HF_HUB_OFFLINE=1\n{mbase} --stage measure --weights {} --shard \"${{SLURM_ARRAY_TASK_ID}}/{}\"\n",
                header(&name, &logs, &job, Some(o.shards)),
                w.as_str(),
                o.shards
            )
        };
        measure.push((w.as_str().to_string(), write(&format!("measure-{}", w.as_str()), body)?));
    }
    let reduce = write(
        "reduce",
        format!(
            "{}export HF_HUB_OFFLINE=1\n{base} --stage reduce --shards {}\n",
            header(&format!("agop-{}-reduce", p.name), &logs, &job, None),
            o.shards
        ),
    )?;
    Ok(Scripts { prepare, measure, reduce, skip_prepare: o.prepared_here })
}

/// Submit with `sbatch --parsable`; returns the job id.
fn sbatch(script: &Path, dependency: Option<&str>) -> Result<String> {
    let mut c = Command::new("timeout");
    c.args(["60", "sbatch", "--parsable"]);
    if let Some(d) = dependency {
        c.arg(format!("--dependency=afterok:{d}"));
    }
    c.arg(script);
    let o = c.output().context("running sbatch (is Slurm installed and on PATH?)")?;
    if !o.status.success() {
        bail!("sbatch {} failed: {}", script.display(), String::from_utf8_lossy(&o.stderr).trim());
    }
    let text = String::from_utf8_lossy(&o.stdout);
    let id = text.trim().split(';').next().unwrap_or("").to_string();
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_digit()) {
        bail!("sbatch {} printed no job id: {text:?}", script.display());
    }
    Ok(id)
}

/// Submit the scripts in dependency order; returns (job name, id) pairs.
pub fn submit(s: &Scripts) -> Result<Vec<(String, String)>> {
    let mut ids = Vec::new();
    let prep = if s.skip_prepare { None } else { Some(sbatch(&s.prepare, None)?) };
    if let Some(id) = &prep {
        ids.push(("prepare".to_string(), id.clone()));
    }
    let mut arrays = Vec::new();
    for (w, script) in &s.measure {
        let id = sbatch(script, prep.as_deref())?;
        ids.push((format!("measure-{w}"), id.clone()));
        arrays.push(id);
    }
    let red = sbatch(&s.reduce, Some(&arrays.join(":")))?;
    ids.push(("reduce".to_string(), red));
    Ok(ids)
}
