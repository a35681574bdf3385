//! The terminal table: per layer and module, Pearson correlation for each weights setting and
//! power (median over heads for attn.q/k/v).

use std::fmt::Write;

use anyhow::Result;
use polars::prelude::DataFrame;

use super::{cell_ci, distinct, module_names, Row};

/// Column width of one value (± half-width).
const W: usize = 26;

/// `0.8123 ± 0.0123`: the value and half the width of its 95% interval; or, when the interval's
/// centre (the jackknife bias-corrected estimate) is more than a fifth of the half-width from the
/// value, `0.8123 → 0.8301 ± 0.0123` (value → centre ± half-width); the value alone without an
/// interval.
fn value_text(v: f64, ci: Option<(f64, f64)>) -> String {
    match ci {
        Some((lo, hi)) => {
            let (half, centre) = (0.5 * (hi - lo), 0.5 * (hi + lo));
            if (centre - v).abs() > 0.2 * half {
                format!("{v:.4} → {centre:.4} ± {half:.4}")
            } else {
                format!("{v:.4} ± {half:.4}")
            }
        }
        None => format!("{v:.4}"),
    }
}

/// The footnote of `→`.
const SHIFTED: &str = "a → b ± h: the 95% interval is b ± h, centred on the jackknife bias-corrected estimate b, \
                       not on the value a; a correlation of a noisy AGOP (few tokens, few probes) is biased \
                       towards 0, and a large a → b shift says the measurement needs more tokens or probes";

/// `text` broken into lines of at most `width` characters at spaces (a word longer than that
/// stays whole), each line ending in a newline.
pub fn wrap(text: &str, width: usize) -> String {
    let mut out = String::new();
    let mut line = String::new();
    for word in text.split(' ').filter(|w| !w.is_empty()) {
        if !line.is_empty() && line.chars().count() + 1 + word.chars().count() > width {
            out.push_str(&line);
            out.push('\n');
            line.clear();
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// The width prose is wrapped to.
pub const TEXT_WIDTH: usize = 100;

/// What a reader should look for, printed above the tables.
const HOW_TO_READ: &str = "How to read: the NFA says a trained layer's weight Gram WᵀW (the NFM) is proportional to a \
    power of its AGOP, which would make their Pearson correlation 1. Random weights already correlate highly (the \
    random-init column), so the NFA is supported where a pretrained value is above its random-init control: a \
    positive pretrained − random-init difference whose interval excludes 0 (a * in the contrast table).";

/// The highest and lowest per-head correlations of the pretrained weights (the last step shown
/// of a series) at α = 1 (else the first power), with each head's random-init value.
pub fn heads_summary(rows: &[Row], n: usize) -> Result<String> {
    // Pearson rows only: the subspace rows carry power 1 whatever powers the run measured.
    let pre: Vec<&Row> = rows
        .iter()
        .filter(|r| r.weights.starts_with("pretrained") && r.head.is_some() && r.metric == "pearson")
        .collect();
    let Some(last) = pre
        .iter()
        .filter_map(|r| r.step)
        .max()
        .map(|s| format!("pretrained@{s}"))
        .or_else(|| pre.first().map(|r| r.weights.clone()))
    else {
        return Ok(String::new());
    };
    let power = if pre.iter().any(|r| r.power == 1.0) { 1.0 } else { pre[0].power };
    let mut heads: Vec<&&Row> = pre
        .iter()
        .filter(|r| r.weights == last && r.power == power && r.metric == "pearson" && r.value.is_finite())
        .collect();
    if heads.len() < 2 {
        return Ok(String::new());
    }
    heads.sort_by(|a, b| b.value.total_cmp(&a.value));
    let control = |r: &Row| {
        rows.iter()
            .find(|c| {
                c.weights == "random-init"
                    && (c.layer, &c.module, c.head, c.power, &c.metric)
                        == (r.layer, &r.module, r.head, r.power, &r.metric)
            })
            .map(|c| format!("{:.4}", c.value))
            .unwrap_or_else(|| "–".into())
    };
    let line = |out: &mut String, r: &Row| -> Result<()> {
        let name = format!("layer {} {} head {}", r.layer, r.module, r.head.unwrap_or(0));
        writeln!(out, "  {name:<26} {:>26}   random-init {}", value_text(r.value, r.ci), control(r))?;
        Ok(())
    };
    let n = n.min(heads.len() / 2).max(1);
    let mut out = format!(
        "\nHeads with the highest and lowest Pearson correlation ({last}, α = {}):\n",
        super::plots::power_label(power)
    );
    for r in &heads[..n] {
        line(&mut out, r)?;
    }
    writeln!(out, "  ...")?;
    for r in &heads[heads.len() - n..] {
        line(&mut out, r)?;
    }
    Ok(out)
}

/// One column of the table: its header and where its cells come from.
struct Column<'a> {
    header: String,
    rows: &'a [Row],
    weights: String,
    power: f64,
}

/// The table's blocks, one beside the other would be too wide for a terminal: one block per
/// power of the NFA, then one for FACT, each with a column per weights setting (for contrasts:
/// per step of a series).
fn blocks<'a>(nfa: &'a [Row], fact: &'a [Row], weights: &[String], mark_zero: bool) -> Vec<(String, Vec<Column<'a>>)> {
    // The measured powers, from the Pearson rows (the subspace rows carry power 1 regardless).
    let powers = distinct(nfa.iter().filter(|r| r.metric == "pearson").map(|r| r.power.to_bits()))
        .into_iter()
        .map(f64::from_bits)
        .collect::<Vec<_>>();
    let header = |w: &str| match (mark_zero, w.rsplit_once('@')) {
        (true, Some((_, step))) => format!("step {step}"),
        (true, None) => "pretrained − random-init".to_string(),
        (false, _) => w.to_string(),
    };
    let cols = |rows: &'a [Row], power: f64| -> Vec<Column<'a>> {
        weights.iter().map(|w| Column { header: header(w), rows, weights: w.clone(), power }).collect()
    };
    let mut out: Vec<(String, Vec<Column>)> = powers
        .iter()
        .map(|&p| {
            let a = super::plots::power_label(p);
            (format!("NFA: NFM vs AGOP^{a} (α = {a})"), cols(nfa, p))
        })
        .collect();
    if !fact.is_empty() {
        out.push(("FACT: NFM vs the symmetric part of −WᵀG".to_string(), cols(fact, 1.0)));
    }
    out
}

/// Rows of a layer × module table, one column per [`Column`].
fn body(out: &mut String, cols: &[Column], mark_zero: bool) -> Result<()> {
    let layers = distinct(cols.iter().flat_map(|c| c.rows.iter().map(|r| r.layer)));
    let modules = module_names(cols.iter().flat_map(|c| c.rows.iter()));
    // As wide as the longest module name (GPT-NeoX's attention.query_key_value is 25).
    let mw = modules.iter().map(|m| m.chars().count()).max().unwrap_or(0).max(12);
    let mut header = format!("{:>5}  {:<mw$}", "layer", "module");
    for c in cols {
        header.push_str(&format!("  {:>W$}", c.header));
    }
    writeln!(out, "{header}")?;
    writeln!(out, "{}", "-".repeat(header.chars().count()))?;
    for &l in &layers {
        for m in &modules {
            let m = m.as_str();
            let mut line = format!("{l:>5}  {m:<mw$}");
            let mut any = false;
            for c in cols {
                match cell_ci(c.rows, &c.weights, l, m, c.power, "pearson") {
                    Some((v, ci)) => {
                        any = true;
                        let mut t = value_text(v, ci);
                        // A difference whose interval excludes 0.
                        if mark_zero {
                            t.push(if ci.is_some_and(|(lo, hi)| lo > 0.0 || hi < 0.0) { '*' } else { ' ' });
                        }
                        line.push_str(&format!("  {t:>W$}"));
                    }
                    None => line.push_str(&format!("  {:>W$}", "–")),
                }
            }
            if any {
                writeln!(out, "{line}")?;
            }
        }
    }
    Ok(())
}

/// The pretrained − random-init section (contrasts.parquet): NFA rows and FACT rows, and what
/// the intervals cover (window groups; the spread across `init_seeds` random inits).
pub fn render_contrasts(rows: &[Row], fact: &[Row], init_seeds: u32) -> Result<String> {
    let mut out = String::new();
    let covers = if init_seeds > 1 {
        format!(
            "the interval covers window sampling (paired over window groups) and the spread across the {init_seeds} \
             random inits of the control (pretrained is compared with their mean)"
        )
    } else {
        "the interval covers window sampling only (paired over window groups), not how much two random inits \
         differ: set [measure] init_seeds (e.g. 5) before reading a * as evidence"
            .to_string()
    };
    out.push('\n');
    out.push_str(&wrap(
        &format!(
            "Pretrained − random-init difference of the Pearson correlation, ± half-width of its 95% interval; \
             {covers}; * the interval excludes 0."
        ),
        TEXT_WIDTH,
    ));
    writeln!(out)?;
    let weights = distinct(rows.iter().chain(fact).map(|r| r.weights.clone()));
    for (title, cols) in blocks(rows, fact, &weights, true) {
        writeln!(out, "{title}")?;
        body(&mut out, &cols, true)?;
        writeln!(out)?;
    }
    if out.contains('→') {
        out.push_str(&wrap(SHIFTED, TEXT_WIDTH));
    }
    Ok(out)
}

/// The table of NFA rows (`rows`) and, when the run measured FACT, FACT rows (`fact`) beside them.
pub fn render(rows: &[Row], fact: &[Row], df: &DataFrame) -> Result<String> {
    let first = |c: &str| -> String {
        let Ok(col) = df.column(c) else { return String::new() };
        if let Ok(s) = col.str() {
            return s.get(0).unwrap_or("").to_string();
        }
        if let Ok(s) = col.u64() {
            return s.get(0).map(|v| v.to_string()).unwrap_or_default();
        }
        if let Ok(s) = col.u32() {
            return s.get(0).map(|v| v.to_string()).unwrap_or_default();
        }
        String::new()
    };
    let weights = distinct(rows.iter().map(|r| r.weights.clone()));
    let mut out = String::new();
    writeln!(
        out,
        "NFA correlations — pipeline {}, model {} @ {}, {} tokens, output {}, estimator {} ({} probes)",
        first("pipeline"),
        first("model"),
        first("revision"),
        first("n_tokens"),
        first("output"),
        first("estimator"),
        first("probes"),
    )?;
    let groups = first("groups");
    let ci = if rows.iter().any(|r| r.ci.is_some()) {
        format!(" ± half-width of the 95% jackknife interval over {groups} window groups")
    } else {
        String::new()
    };
    let fact_text = if fact.is_empty() { "" } else { " and with the FACT matrix −WᵀG, symmetric part (FACT)" };
    out.push_str(&wrap(
        &format!("Pearson correlation of the NFM with AGOP^α{fact_text}{ci}; median over heads for attn.q/k/v."),
        TEXT_WIDTH,
    ));
    out.push_str(&wrap(HOW_TO_READ, TEXT_WIDTH));
    writeln!(out)?;
    for (title, cols) in blocks(rows, fact, &weights, false) {
        writeln!(out, "{title}")?;
        body(&mut out, &cols, false)?;
        writeln!(out)?;
    }
    if out.contains('→') {
        out.push_str(&wrap(SHIFTED, TEXT_WIDTH));
    }
    Ok(out)
}
