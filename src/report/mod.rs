//! `agop report DIR`: a terminal table and PNG plots from a finished run's correlations.parquet.

pub mod features;
pub mod plots;
pub mod table;

use std::path::{Path, PathBuf};

use anyhow::Result;
use polars::prelude::*;

use crate::{bad, bail_bad};

/// One row of correlations.parquet, as the report needs it.
#[derive(Debug, Clone)]
pub struct Row {
    pub weights: String,
    pub layer: u32,
    pub module: String,
    pub head: Option<u32>,
    pub power: f64,
    pub metric: String,
    pub value: f64,
    /// The 95% interval (ci_low, ci_high), when the table has one for this row.
    pub ci: Option<(f64, f64)>,
    /// The training step of a checkpoint in a series (then `weights` reads `pretrained@<step>`).
    pub step: Option<u64>,
    /// `nfa` or `fact` (docs/reference.md §8); a FACT row has `power` 1.
    pub ansatz: String,
}

/// What `agop report PATH` reads: a run folder (its `correlations.parquet`) or a correlations
/// table itself (any name, as `agop correlate --out` writes it); the table and the folder the
/// plots go to.
pub fn locate(path: &Path) -> Result<(PathBuf, PathBuf)> {
    if path.is_file() {
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        return Ok((path.to_path_buf(), dir.to_path_buf()));
    }
    let table = path.join("correlations.parquet");
    if !table.is_file() {
        bail_bad!(
            "{}: no correlations.parquet here (give a run folder or a correlations table; run `agop run` or `agop \
             correlate` first)",
            path.display()
        );
    }
    Ok((table, path.to_path_buf()))
}

/// Where the plots of a correlations table go: `plots/` beside a run's `correlations.parquet`,
/// `<name>.plots/` beside a table of another name (so that two tables in one folder, or a
/// folder's own `plots/`, are not written over).
pub fn plots_dir(table: &Path) -> PathBuf {
    if table.file_name().is_some_and(|n| n == "correlations.parquet") {
        table.with_file_name("plots")
    } else {
        table.with_extension("plots")
    }
}

/// Read the rows of a correlations table ([`locate`]).
pub fn read_rows(path: &Path) -> Result<(Vec<Row>, DataFrame)> {
    read_table(&locate(path)?.0, true)
}

/// Read the rows of the contrasts table beside the correlations table `table`, if there is one
/// (weights = "pretrained − random-init"), with the number of random inits its control rests
/// on (`init_seeds`; 1 in tables written before that column). It must be a contrasts table (no
/// `weights` column) of the same model, revision and tokens as `corr`, the correlations table.
pub fn read_contrasts(table: &Path, corr: &DataFrame) -> Result<Option<(Vec<Row>, u32)>> {
    let path = crate::correlate::contrasts_path(table);
    if !path.is_file() {
        return Ok(None);
    }
    let (rows, df) = read_table(&path, false)?;
    if df.column("weights").is_ok() {
        bail_bad!(
            "{}: has a `weights` column, so it is a correlations table, not the contrasts table of {} (agop correlate \
             writes both; move it away or correlate again)",
            path.display(),
            table.display()
        );
    }
    // Written by one correlate command (tables from before the `measured` key: not checked).
    let measured = |p: &Path| {
        crate::util::parquet::parquet_metadata(p).ok()?.into_iter().find(|(k, _)| k == "measured").map(|(_, v)| v)
    };
    if let (Some(a), Some(b)) = (measured(table), measured(&path)) {
        if a != b {
            bail_bad!(
                "{}: measured from other GOP files than {}: the contrasts of another run (correlate again to write \
                 both)",
                path.display(),
                table.display()
            );
        }
    }
    // Every model, revision and token count of the contrasts is one of the correlations table's.
    let values = |df: &DataFrame, c: &str| -> Option<std::collections::BTreeSet<String>> {
        let col = df.column(c).ok()?.as_materialized_series().cast(&DataType::String).ok()?;
        Some(col.str().ok()?.iter().map(|v| v.unwrap_or_default().to_string()).collect())
    };
    for c in ["model", "revision", "n_tokens"] {
        let (Some(ours), Some(theirs)) = (values(corr, c), values(&df, c)) else { continue };
        if let Some(v) = theirs.iter().find(|v| !ours.contains(*v)) {
            bail_bad!(
                "{}: its `{c}` {v} is not in {}: the contrasts of another run (correlate again to write both)",
                path.display(),
                table.display()
            );
        }
    }
    let seeds = match df.column("init_seeds") {
        Ok(c) => c.u32().map_err(|_| bad!("{}: column `init_seeds` should be UInt32", path.display()))?.get(0),
        Err(_) => None,
    };
    Ok(Some((rows, seeds.unwrap_or(1))))
}

/// The random-init seeds of a correlations table, sorted (one per init of `[measure]
/// init_seeds`; empty without random-init rows or `seed` column).
pub fn random_init_seeds(df: &DataFrame) -> Vec<u64> {
    let (Ok(w), Ok(s)) = (df.column("weights"), df.column("seed")) else { return vec![] };
    let (Ok(w), Ok(s)) = (w.str(), s.u64()) else { return vec![] };
    let mut seeds: Vec<u64> =
        w.iter().zip(s.iter()).filter(|(w, _)| *w == Some("random-init")).filter_map(|(_, s)| s).collect();
    seeds.sort_unstable();
    seeds.dedup();
    seeds
}

/// The NFA and FACT rows of the weight Gram (`nfm` gram; every row of a table written before
/// those columns is an NFA row) of a correlations or contrasts table. The caller keeps the two
/// ansätze apart: a FACT row has `power` 1, like an NFA row at α = 1.
fn read_table(path: &Path, has_weights: bool) -> Result<(Vec<Row>, DataFrame)> {
    let df = crate::util::parquet::read_parquet(path)?;
    // Every column read is checked, so a table of another schema is bad input naming the file.
    let column = |n: &str| {
        df.column(n).map_err(|_| bad!("{}: no column `{n}` (not an agop correlations table?)", path.display()))
    };
    let wrong = |n: &str, want: &str| {
        bad!("{}: column `{n}` should be {want} (not an agop correlations table?)", path.display())
    };
    let s = |n: &str| -> Result<Vec<String>> {
        Ok(column(n)?.str().map_err(|_| wrong(n, "a string"))?.iter().map(|x| x.unwrap_or("").to_string()).collect())
    };
    let weights = if has_weights { s("weights")? } else { vec!["pretrained − random-init".to_string(); df.height()] };
    let (module, metric) = (s("module")?, s("metric")?);
    // Columns added later (docs/reference.md §8) are optional.
    let optional = |n: &str, default: &str| -> Result<Vec<String>> {
        if df.column(n).is_ok() {
            s(n)
        } else {
            Ok(vec![default.to_string(); df.height()])
        }
    };
    let (ansatz, nfm) = (optional("ansatz", "nfa")?, optional("nfm", "gram")?);
    let layer: Vec<u32> =
        column("layer")?.u32().map_err(|_| wrong("layer", "UInt32"))?.iter().map(|x| x.unwrap_or(0)).collect();
    let head: Vec<Option<u32>> = column("head")?.u32().map_err(|_| wrong("head", "UInt32"))?.iter().collect();
    let f64s = |n: &str| -> Result<Vec<f64>> {
        Ok(column(n)?.f64().map_err(|_| wrong(n, "Float64"))?.iter().map(|x| x.unwrap_or(f64::NAN)).collect())
    };
    let (power, value) = (f64s("power")?, f64s("value")?);
    let (low, high) = if df.column("ci_low").is_ok() {
        (f64s("ci_low")?, f64s("ci_high")?)
    } else {
        (vec![f64::NAN; df.height()], vec![f64::NAN; df.height()])
    };
    let step: Vec<Option<u64>> = match df.column("step") {
        Ok(c) => c.u64().map_err(|_| wrong("step", "UInt64"))?.iter().collect(),
        Err(_) => vec![None; df.height()],
    };
    // With several random inits (`init_seeds`) the tables and plots show the first one's rows
    // (the contrasts use them all).
    let first_init = random_init_seeds(&df).first().copied();
    let seed: Vec<Option<u64>> = match df.column("seed") {
        Ok(c) => c.u64().map_err(|_| wrong("seed", "UInt64"))?.iter().collect(),
        Err(_) => vec![None; df.height()],
    };
    let rows = (0..df.height())
        .filter(|&i| (ansatz[i] == "nfa" || ansatz[i] == "fact") && nfm[i] == "gram")
        .filter(|&i| !has_weights || weights[i] != "random-init" || seed[i] == first_init)
        .map(|i| Row {
            weights: match step[i] {
                Some(s) => format!("{}@{s}", weights[i]),
                None => weights[i].clone(),
            },
            step: step[i],
            layer: layer[i],
            module: module[i].clone(),
            head: head[i],
            power: power[i],
            metric: metric[i].clone(),
            value: value[i],
            ci: (low[i].is_finite() && high[i].is_finite()).then_some((low[i], high[i])),
            ansatz: ansatz[i].clone(),
        })
        .collect();
    Ok((rows, df))
}

/// Write the plots into `dir/plots/` and return the table text.
/// `path`: a run folder or a correlations table ([`locate`]).
pub fn report(path: &Path) -> Result<String> {
    let (table_path, dir) = locate(path)?;
    let dir = dir.as_path();
    let (all, df) = read_table(&table_path, true)?;
    let (fact_all, all): (Vec<Row>, Vec<Row>) = all.into_iter().partition(|r| r.ansatz == "fact");
    // A checkpoint series: the table and the by-layer plots show the first, a middle and the
    // last step (and the controls); the by-step plots show every step.
    let steps: Vec<u64> = {
        let mut s: Vec<u64> = all.iter().filter_map(|r| r.step).collect();
        s.sort_unstable();
        s.dedup();
        s
    };
    let shown: Vec<u64> = if steps.is_empty() {
        vec![]
    } else {
        let mut v = vec![steps[0], steps[steps.len() / 2], steps[steps.len() - 1]];
        v.dedup();
        v
    };
    let keep = |rows: &[Row]| -> Vec<Row> {
        rows.iter().filter(|r| r.step.is_none_or(|s| shown.contains(&s))).cloned().collect()
    };
    let (rows, fact) = (keep(&all), keep(&fact_all));
    let mut text = provenance(&table_path);
    text.push_str(&table::render(&rows, &fact, &df)?);
    let seeds = random_init_seeds(&df);
    if seeds.len() > 1 {
        text.push_str(&table::wrap(
            &format!(
            "random-init: the init of seed {} is shown; the control was measured on {} random inits (seeds {}), and \
             the contrasts use them all\n",
            seeds[0],
            seeds.len(),
            seeds.iter().map(u64::to_string).collect::<Vec<_>>().join(", ")
        ),
            table::TEXT_WIDTH,
        ));
    }
    text.push_str(&table::heads_summary(&rows, 5)?);
    let mut contrast_nfa = Vec::new();
    if let Some((c, init_seeds)) = read_contrasts(&table_path, &df)? {
        let (cfact, cnfa): (Vec<Row>, Vec<Row>) = keep(&c).into_iter().partition(|r| r.ansatz == "fact");
        text.push_str(&table::render_contrasts(&cnfa, &cfact, init_seeds)?);
        contrast_nfa = cnfa;
    }
    let feats = features::read_features(&dir.join("features.parquet"))?;
    text.push_str(&features::features_text(&rows, feats.as_deref())?);
    text.push_str(&features::overlap_text(&dir.join("feature-overlap.parquet"))?);
    let plots_dir = plots_dir(&table_path);
    let mut written = plots::write_all(&rows, &fact, &contrast_nfa, &plots_dir)?;
    if let Some(f) = &feats {
        written.extend(features::spectrum_plots(f, &plots_dir)?);
    }
    if steps.len() > 1 {
        written.extend(plots::by_step(&all, &plots_dir)?);
        let eval = crate::train::eval_losses(&dir.join("train")).unwrap_or_default();
        written.push(plots::trajectory(&all, &fact_all, &eval, &plots_dir)?);
    }
    remove_stale_plots(&plots_dir, &written)?;
    text.push_str(&format!("\nplots: {} files in {}\n", written.len(), plots_dir.display()));
    Ok(text)
}

/// What the "pretrained" weights of a pipeline run are, when they are not a published
/// checkpoint: trained here (`[train]`: steps and the eval loss of every saved step), or a random
/// init (`init_config` alone), which a reader must not take for a trained model. From the
/// pipeline text recorded in correlations.parquet; empty for other runs.
pub fn provenance(table: &Path) -> String {
    let meta = crate::util::parquet::parquet_metadata(table).unwrap_or_default();
    let mut out = String::new();
    if let Some((_, w)) = meta.iter().find(|(k, _)| k == "warnings") {
        for line in w.lines() {
            out.push_str(&table::wrap(&format!("WARNING: {line}"), table::TEXT_WIDTH));
        }
        out.push('\n');
    }
    out + &trained_or_random(table, &meta)
}

/// The provenance lines of [`provenance`] for `[train]` and `init_config` runs.
fn trained_or_random(table: &Path, meta: &[(String, String)]) -> String {
    let dir = table.parent().unwrap_or(Path::new("."));
    let Some(text) = meta.iter().find(|(k, _)| k == "pipeline").map(|(_, v)| v.clone()) else {
        return String::new();
    };
    let Ok(p) = text.parse::<toml::Table>() else { return String::new() };
    let model = p.get("model").and_then(|m| m.as_table());
    let init = model.and_then(|m| m.get("init_config")).is_some();
    let seed = model.and_then(|m| m.get("init_seed")).and_then(|s| s.as_integer()).unwrap_or(0);
    if let Some(steps) = p.get("train").and_then(|t| t.get("steps")).and_then(|s| s.as_integer()) {
        let mut out = format!(
            "Weights trained here: `agop train` for {steps} steps from a random init (seed {seed}), checkpoints in \
             {}.\n",
            dir.join("train").display()
        );
        if let Ok(losses) = crate::train::eval_losses(&dir.join("train")) {
            let parts: Vec<String> = losses.iter().map(|(s, e)| format!("step {s}: {e:.3}")).collect();
            out.push_str(&format!("Eval loss (held-out windows, nats/token): {}.\n", parts.join(", ")));
        }
        return out + "\n";
    }
    if init {
        return format!(
            "NOTE: the \"pretrained\" weights of this run are a random init (init_config, seed {seed}), not a \
             trained model:\npretrained vs random-init compares two random draws, so no difference below is \
             evidence of learned features.\n\n"
        );
    }
    String::new()
}

/// Median of values (NaN-free input).
pub fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

/// Module names (the `module` column) in display order: the order of the table's rows (the
/// module table's, docs/reference.md §2), whatever the architecture.
pub fn module_names<'a>(rows: impl IntoIterator<Item = &'a Row>) -> Vec<String> {
    distinct(rows.into_iter().map(|r| r.module.clone()))
}

/// Names of the per-head modules (GPT-2: attn.q, attn.k, attn.v).
pub fn head_module_names<'a>(rows: impl IntoIterator<Item = &'a Row>) -> Vec<String> {
    distinct(rows.into_iter().filter(|r| r.head.is_some()).map(|r| r.module.clone()))
}

/// The value for (weights, layer, module, power, metric) — the whole-matrix value, or the median
/// over heads — with its interval: the row's (ci_low, ci_high), or for per-head modules the medians
/// over heads of both ends (None when any head has no interval).
pub fn cell_ci(
    rows: &[Row],
    weights: &str,
    layer: u32,
    module: &str,
    power: f64,
    metric: &str,
) -> Option<(f64, Option<(f64, f64)>)> {
    let sel: Vec<&Row> = rows
        .iter()
        .filter(|r| {
            r.weights == weights
                && r.layer == layer
                && r.module == module
                && r.power == power
                && r.metric == metric
                && r.value.is_finite()
        })
        .collect();
    if sel.is_empty() {
        return None;
    }
    let value = median(sel.iter().map(|r| r.value).collect());
    let ci = sel
        .iter()
        .map(|r| r.ci)
        .collect::<Option<Vec<_>>>()
        .map(|c| (median(c.iter().map(|x| x.0).collect()), median(c.iter().map(|x| x.1).collect())));
    Some((value, ci))
}

/// Distinct values in first-seen order.
pub fn distinct<T: PartialEq + Clone>(it: impl Iterator<Item = T>) -> Vec<T> {
    let mut out: Vec<T> = Vec::new();
    for x in it {
        if !out.contains(&x) {
            out.push(x);
        }
    }
    out
}

/// Is `name` one of the names agop's plots take ([`plots`], [`features`]): the fixed ones, and
/// `by-layer-power<α>.png`, `by-step-power<α>.png`, `heads-<module>-<weights>-power<α>.png`
/// with α a number?
fn is_plot_name(name: &str) -> bool {
    const FIXED: &[&str] =
        &["by-layer-fact.png", "by-layer-subspace.png", "trajectory.png", "spectrum.png", "spectrum-by-step.png"];
    let Some(stem) = name.strip_suffix(".png") else { return false };
    let power = |rest: &str| rest.parse::<f64>().is_ok();
    FIXED.contains(&name)
        || stem.strip_prefix("by-layer-power").is_some_and(power)
        || stem.strip_prefix("by-step-power").is_some_and(power)
        || stem.strip_prefix("heads-").and_then(|r| r.rsplit_once("-power")).is_some_and(|(_, a)| power(a))
}

/// Remove the plots in `dir` this report did not write: agop's names only ([`is_plot_name`]; a
/// PNG of the user's stays), so that plots of an earlier run's powers, weights or FACT are not
/// shown as this run's.
fn remove_stale_plots(dir: &Path, written: &[std::path::PathBuf]) -> Result<()> {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = e.path();
        if is_plot_name(&e.file_name().to_string_lossy()) && !written.contains(&path) {
            std::fs::remove_file(&path)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    /// agop's plot names, and names a user might give that only look like them.
    #[test]
    fn plot_names() {
        for ours in [
            "by-layer-power0.5.png",
            "by-layer-power1e-300.png",
            "heads-q-pretrained@step100-power1.png",
            "heads-attention.k-random-init-seed3-power2.png",
            "by-step-power1.png",
            "trajectory.png",
            "spectrum.png",
        ] {
            assert!(crate::report::is_plot_name(ours), "{ours}");
        }
        for theirs in [
            "heads-up-my-notes.png",
            "trajectory-of-my-thesis.png",
            "spectrum-analyzer.png",
            "by-layer-old-paper-figure.png",
            "by-layer-power0.5.svg",
            "heads-q-x-powerful.png",
        ] {
            assert!(!crate::report::is_plot_name(theirs), "{theirs}");
        }
    }
}
