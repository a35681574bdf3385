//! The terminal table: per layer and module, Pearson correlation for each weights setting and
//! power (median over heads for attn.q/k/v).

use std::fmt::Write;

use anyhow::Result;
use polars::prelude::DataFrame;

use super::{cell, distinct, module_names, Row};

pub fn render(rows: &[Row], df: &DataFrame) -> Result<String> {
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
    let powers = distinct(rows.iter().map(|r| r.power.to_bits())).into_iter().map(f64::from_bits).collect::<Vec<_>>();
    let layers = distinct(rows.iter().map(|r| r.layer));
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
    writeln!(out, "Pearson correlation of NFM and AGOP^α (median over heads for attn.q/k/v)\n")?;
    let mut header = format!("{:>5}  {:<12}", "layer", "module");
    for p in &powers {
        for w in &weights {
            header.push_str(&format!("  {:>16}", format!("{w} α={p}")));
        }
    }
    writeln!(out, "{header}")?;
    writeln!(out, "{}", "-".repeat(header.chars().count()))?;
    for &l in &layers {
        for m in module_names() {
            let mut line = format!("{l:>5}  {m:<12}");
            let mut any = false;
            for &p in &powers {
                for w in &weights {
                    match cell(rows, w, l, m, p, "pearson") {
                        Some(v) => {
                            any = true;
                            line.push_str(&format!("  {v:>16.4}"));
                        }
                        None => line.push_str(&format!("  {:>16}", "–")),
                    }
                }
            }
            if any {
                writeln!(out, "{line}")?;
            }
        }
    }
    Ok(out)
}
