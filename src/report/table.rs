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

/// One column of the table: its header and where its cells come from.
struct Column<'a> {
    header: String,
    rows: &'a [Row],
    weights: String,
    power: f64,
}

/// The columns: NFA for each (power, weights), then FACT for each weights.
fn columns<'a>(nfa: &'a [Row], fact: &'a [Row], weights: &[String], mark_zero: bool) -> Vec<Column<'a>> {
    let powers = distinct(nfa.iter().map(|r| r.power.to_bits())).into_iter().map(f64::from_bits).collect::<Vec<_>>();
    let name = |w: &str, what: String| if mark_zero { what } else { format!("{w} {what}") };
    let mut out = Vec::new();
    for p in powers {
        for w in weights {
            out.push(Column { header: name(w, format!("α={p}")), rows: nfa, weights: w.clone(), power: p });
        }
    }
    if !fact.is_empty() {
        for w in weights {
            out.push(Column { header: name(w, "FACT".into()), rows: fact, weights: w.clone(), power: 1.0 });
        }
    }
    out
}

/// Rows of a layer × module table, one column per [`Column`].
fn body(out: &mut String, cols: &[Column], mark_zero: bool) -> Result<()> {
    let layers = distinct(cols.iter().flat_map(|c| c.rows.iter().map(|r| r.layer)));
    let mut header = format!("{:>5}  {:<12}", "layer", "module");
    for c in cols {
        header.push_str(&format!("  {:>W$}", c.header));
    }
    writeln!(out, "{header}")?;
    writeln!(out, "{}", "-".repeat(header.chars().count()))?;
    for &l in &layers {
        for m in module_names() {
            let mut line = format!("{l:>5}  {m:<12}");
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

/// The pretrained − random-init section (contrasts.parquet): NFA rows and FACT rows.
pub fn render_contrasts(rows: &[Row], fact: &[Row]) -> Result<String> {
    let mut out = String::new();
    writeln!(
        out,
        "\nPretrained − random-init difference of the Pearson correlation, ± half-width of its 95% interval \
         (paired over window groups; * the interval excludes 0)\n"
    )?;
    body(&mut out, &columns(rows, fact, &["pretrained − random-init".to_string()], true), true)?;
    if out.contains('→') {
        writeln!(out, "{SHIFTED}")?;
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
    let fact_text =
        if fact.is_empty() { "" } else { " (α columns) and with the FACT matrix −WᵀG, symmetric part (FACT)" };
    writeln!(out, "Pearson correlation of the NFM with AGOP^α{fact_text}{ci}; median over heads for attn.q/k/v\n")?;
    body(&mut out, &columns(rows, fact, &weights, false), false)?;
    if out.contains('→') {
        writeln!(out, "{SHIFTED}")?;
    }
    Ok(out)
}
