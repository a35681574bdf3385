//! The features part of the report (docs/features.md): the subspace agreement of NFM and AGOP
//! by layer, the leading AGOP eigenvector of each layer's attention and MLP input read out as
//! tokens, and the spectrum plots, from features.parquet and the `subspace-<k>` rows.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Result;

use super::plots::{spectrum_plot, SpectrumLine, SUBSPACE_SHOWN};
use super::table::{wrap, TEXT_WIDTH};
use super::{cell_ci, distinct, module_names, Row};
use crate::bad;

/// One row of features.parquet, as the report needs it.
#[derive(Debug, Clone)]
pub struct FeatureRow {
    /// `pretrained`, `pretrained@<step>` or `random-init` (the first init seed only).
    pub weights: String,
    pub step: Option<u64>,
    pub layer: u32,
    pub module: String,
    pub role: String,
    pub head: Option<u32>,
    pub source: String,
    pub rank: u32,
    pub share: f64,
    pub readout: Option<String>,
    pub sign: Option<String>,
    pub text: Option<String>,
    pub token: Option<u32>,
}

/// The rows of `features.parquet` (None when the run has none).
pub fn read_features(path: &Path) -> Result<Option<Vec<FeatureRow>>> {
    if !path.is_file() {
        return Ok(None);
    }
    let df = crate::util::parquet::read_parquet(path)?;
    let column =
        |n: &str| df.column(n).map_err(|_| bad!("{}: no column `{n}` (not an agop features table?)", path.display()));
    let wrong = |n: &str| bad!("{}: column `{n}` has the wrong type (not an agop features table?)", path.display());
    let s = |n: &str| -> Result<Vec<Option<String>>> {
        Ok(column(n)?.str().map_err(|_| wrong(n))?.iter().map(|x| x.map(String::from)).collect())
    };
    let u32s = |n: &str| -> Result<Vec<Option<u32>>> { Ok(column(n)?.u32().map_err(|_| wrong(n))?.iter().collect()) };
    let (weights, module, role, source, readout, sign, text) =
        (s("weights")?, s("module")?, s("role")?, s("source")?, s("readout")?, s("sign")?, s("text")?);
    let (layer, head, rank, token) = (u32s("layer")?, u32s("head")?, u32s("rank")?, u32s("token")?);
    let step: Vec<Option<u64>> = column("step")?.u64().map_err(|_| wrong("step"))?.iter().collect();
    let seed: Vec<Option<u64>> = column("seed")?.u64().map_err(|_| wrong("seed"))?.iter().collect();
    let share: Vec<Option<f64>> = column("share")?.f64().map_err(|_| wrong("share"))?.iter().collect();
    let first_init =
        (0..df.height()).filter(|&i| weights[i].as_deref() == Some("random-init")).filter_map(|i| seed[i]).min();
    let rows = (0..df.height())
        .filter(|&i| weights[i].as_deref() != Some("random-init") || seed[i] == first_init)
        .map(|i| {
            let w = weights[i].clone().unwrap_or_default();
            FeatureRow {
                weights: match step[i] {
                    Some(s) => format!("{w}@{s}"),
                    None => w,
                },
                step: step[i],
                layer: layer[i].unwrap_or(0),
                module: module[i].clone().unwrap_or_default(),
                role: role[i].clone().unwrap_or_default(),
                head: head[i],
                source: source[i].clone().unwrap_or_default(),
                rank: rank[i].unwrap_or(0),
                share: share[i].unwrap_or(f64::NAN),
                readout: readout[i].clone(),
                sign: sign[i].clone(),
                text: text[i].clone(),
                token: token[i],
            }
        })
        .collect();
    Ok(Some(rows))
}

/// The pretrained weights label the report describes: the last step of a series.
fn last_pretrained(rows: &[FeatureRow]) -> Option<String> {
    let mut p: Vec<&FeatureRow> = rows.iter().filter(|r| r.weights.starts_with("pretrained")).collect();
    p.sort_by_key(|r| r.step);
    p.last().map(|r| r.weights.clone())
}

/// A token as the report prints it: its text quoted (spaces visible), or its id.
fn token_text(r: &FeatureRow) -> String {
    match (&r.text, r.token) {
        (Some(t), _) => format!("{t:?}"),
        (None, Some(t)) => format!("#{t}"),
        _ => "?".into(),
    }
}

/// The report's text: subspace agreement (from the correlations rows) and the top features.
pub fn features_text(corr: &[Row], features: Option<&[FeatureRow]>) -> Result<String> {
    let mut out = String::new();
    let sub: Vec<&Row> = corr.iter().filter(|r| r.metric == SUBSPACE_SHOWN).collect();
    if !sub.is_empty() {
        let sub: Vec<Row> = sub.into_iter().cloned().collect();
        let weights = distinct(sub.iter().map(|r| r.weights.clone()));
        // A series' rows are those of the steps the report shows (first, middle, last).
        let shown: Vec<&String> = weights.iter().collect();
        out.push_str(&wrap(
            "\nSubspace agreement (subspace-4): how much of the NFM's top-4 eigenspace the AGOP's top-4 eigenspace \
             holds, ‖U₄ᵀV₄‖²/4 (1: the same directions; about 4/d for unrelated ones; heads: median). The 95% \
             intervals are centred on the jackknife's bias-corrected value, so near 1 they can reach past it:\n",
            TEXT_WIDTH,
        ));
        let mut header = format!("{:>5}  {:<26}", "layer", "module");
        for w in &shown {
            header.push_str(&format!("  {w:>22}"));
        }
        writeln!(out, "{header}")?;
        for l in distinct(sub.iter().map(|r| r.layer)) {
            for m in module_names(&sub) {
                let mut line = format!("{l:>5}  {m:<26}");
                for w in &shown {
                    let cell = match cell_ci(&sub, w, l, &m, 1.0, SUBSPACE_SHOWN) {
                        Some((v, Some((lo, hi)))) => format!("{v:.3} [{lo:.3}, {hi:.3}]"),
                        Some((v, None)) => format!("{v:.3}"),
                        None => "-".into(),
                    };
                    line.push_str(&format!("  {cell:>22}"));
                }
                writeln!(out, "{line}")?;
            }
        }
    }
    let Some(features) = features else { return Ok(out) };
    let Some(pre) = last_pretrained(features) else { return Ok(out) };
    out.push_str(&wrap(
        &format!(
            "\nTop features ({pre}): the AGOP's leading eigenvector of each layer's attention and MLP input, read \
             out through the token embeddings (the tokens of highest and lowest cosine; features.parquet has more \
             ranks, the NFM's eigenvectors and the logit lens):\n"
        ),
        TEXT_WIDTH,
    ));
    let pick = |r: &FeatureRow| {
        r.weights == pre
            && r.source == "agop"
            && r.rank == 1
            && r.head.is_none()
            && (r.role == "qkv" || r.role == "mlp_in")
            && r.readout.as_deref() == Some("embedding")
    };
    let chosen: Vec<&FeatureRow> = features.iter().filter(|r| pick(r)).collect();
    for l in distinct(chosen.iter().map(|r| r.layer)) {
        for m in distinct(chosen.iter().filter(|r| r.layer == l).map(|r| r.module.clone())) {
            let of = |sign: &str| {
                chosen
                    .iter()
                    .filter(|r| r.layer == l && r.module == m && r.sign.as_deref() == Some(sign))
                    .map(|r| token_text(r))
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            let share = chosen.iter().find(|r| r.layer == l && r.module == m).map_or(f64::NAN, |r| r.share);
            writeln!(out, "{l:>5}  {m:<20} share {share:.3}  + {}", of("+"))?;
            writeln!(out, "{:>5}  {:<20} {:>11}  − {}", "", "", "", of("-"))?;
        }
    }
    Ok(out)
}

/// How far the AGOP's top-4 eigenspaces move between consecutive checkpoints of a series
/// (feature-overlap.parquet beside the table; empty text without one): per pair of steps, the
/// median over the whole matrices and the one that moved most.
pub fn overlap_text(path: &Path) -> Result<String> {
    if !path.is_file() {
        return Ok(String::new());
    }
    let df = crate::util::parquet::read_parquet(path)?;
    let wrong = |n: &str| bad!("{}: no column `{n}` of the right type (not an agop overlap table?)", path.display());
    let u32s = |n: &str| -> Result<Vec<Option<u32>>> {
        Ok(df.column(n).map_err(|_| wrong(n))?.u32().map_err(|_| wrong(n))?.iter().collect())
    };
    let u64s = |n: &str| -> Result<Vec<Option<u64>>> {
        Ok(df.column(n).map_err(|_| wrong(n))?.u64().map_err(|_| wrong(n))?.iter().collect())
    };
    let strs = |n: &str| -> Result<Vec<Option<String>>> {
        Ok(df
            .column(n)
            .map_err(|_| wrong(n))?
            .str()
            .map_err(|_| wrong(n))?
            .iter()
            .map(|x| x.map(String::from))
            .collect())
    };
    let (layer, head, k) = (u32s("layer")?, u32s("head")?, u32s("k")?);
    let (from, to) = (u64s("step_from")?, u64s("step_to")?);
    let (module, source) = (strs("module")?, strs("source")?);
    let value: Vec<Option<f64>> =
        df.column("value").map_err(|_| wrong("value"))?.f64().map_err(|_| wrong("value"))?.iter().collect();
    let pick: Vec<usize> = (0..df.height())
        .filter(|&i| source[i].as_deref() == Some("agop") && k[i] == Some(4) && head[i].is_none() && value[i].is_some())
        .collect();
    if pick.is_empty() {
        return Ok(String::new());
    }
    let mut out = wrap(
        "\nFeature drift: how much of each whole matrix's AGOP top-4 eigenspace stays from one checkpoint to the \
         next (mean squared cosine of the principal angles; 1: unchanged; feature-overlap.parquet has every k, the \
         heads and the NFM):\n",
        TEXT_WIDTH,
    );
    for pair in distinct(pick.iter().map(|&i| (from[i], to[i]))) {
        let rows: Vec<usize> = pick.iter().copied().filter(|&i| (from[i], to[i]) == pair).collect();
        let median = super::median(rows.iter().map(|&i| value[i].unwrap_or(f64::NAN)).collect());
        let low = rows.iter().copied().min_by(|&a, &b| value[a].unwrap_or(1.0).total_cmp(&value[b].unwrap_or(1.0)));
        let (a, b) = (pair.0.unwrap_or(0), pair.1.unwrap_or(0));
        match low {
            Some(i) => writeln!(
                out,
                "  step {a:>7} → {b:<7} median {median:.3}, lowest {:.3} (layer {} {})",
                value[i].unwrap_or(f64::NAN),
                layer[i].unwrap_or(0),
                module[i].as_deref().unwrap_or("")
            )?,
            None => writeln!(out, "  step {a:>7} → {b:<7} median {median:.3}")?,
        }
    }
    Ok(out)
}

/// The spectrum plots: AGOP eigenvalue share against rank per layer for the whole modules,
/// pretrained (solid) against random-init (dashed); for a series, the MLP input's across steps.
pub fn spectrum_plots(features: &[FeatureRow], dir: &Path) -> Result<Vec<PathBuf>> {
    let spec: Vec<&FeatureRow> =
        features.iter().filter(|r| r.readout.is_none() && r.source == "agop" && r.head.is_none()).collect();
    let Some(pre) = last_pretrained(features) else { return Ok(vec![]) };
    let curve = |w: &str, layer: u32, module: &str| -> Vec<(f64, f64)> {
        let mut pts: Vec<(f64, f64)> = spec
            .iter()
            .filter(|r| r.weights == w && r.layer == layer && r.module == module && r.share > 0.0)
            .map(|r| (r.rank as f64, r.share))
            .collect();
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        pts
    };
    let layers = distinct(spec.iter().map(|r| r.layer));
    let modules = distinct(spec.iter().map(|r| r.module.clone()));
    let mut lines = Vec::new();
    for l in &layers {
        for (k, m) in modules.iter().enumerate() {
            for (w, dashed) in [(pre.as_str(), false), ("random-init", true)] {
                let pts = curve(w, *l, m);
                if !pts.is_empty() {
                    lines.push(SpectrumLine { layer: *l, label: m.clone(), color: k, dashed, points: pts });
                }
            }
        }
    }
    let mut written = Vec::new();
    let path = dir.join("spectrum.png");
    spectrum_plot(
        &lines,
        "AGOP spectrum: eigenvalue share against rank, by layer (solid: pretrained, dashed: random-init)",
        &path,
    )?;
    written.push(path);
    let steps: Vec<String> = {
        let mut s: Vec<&FeatureRow> = spec.iter().copied().filter(|r| r.step.is_some()).collect();
        s.sort_by_key(|r| r.step);
        distinct(s.iter().map(|r| r.weights.clone()))
    };
    let mlp_in = spec.iter().find(|r| r.role == "mlp_in").map(|r| r.module.clone());
    if let (true, Some(m)) = (steps.len() > 1, mlp_in) {
        let mut lines = Vec::new();
        for l in &layers {
            for (k, w) in steps.iter().enumerate() {
                let t = k as f64 / (steps.len() - 1) as f64;
                lines.push(SpectrumLine {
                    layer: *l,
                    label: w.clone(),
                    color: 100 + (t * 100.0) as usize,
                    dashed: false,
                    points: curve(w, *l, &m),
                });
            }
            lines.push(SpectrumLine {
                layer: *l,
                label: "random-init".into(),
                color: 4,
                dashed: true,
                points: curve("random-init", *l, &m),
            });
        }
        let path = dir.join("spectrum-by-step.png");
        spectrum_plot(
            &lines,
            &format!("{m} AGOP spectrum across training steps (dark → light: early → late; dashed: random-init)"),
            &path,
        )?;
        written.push(path);
    }
    Ok(written)
}
