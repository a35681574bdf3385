//! Merging GOP files: shards (contiguous blocks of windows, measured anywhere) add up exactly to
//! the whole run; `agop merge` refuses parts measured differently or overlapping.

use std::path::{Path, PathBuf};

use anyhow::Result;

use super::gop::{normalize_ranges, Gop, GopMeta};
use crate::{bad, bail_bad};

/// `agop merge`: add shard files, write the sum.
pub fn merge_files(parts: &[PathBuf], out: &Path) -> Result<Gop> {
    let loaded = parts.iter().map(|p| Ok((p.display().to_string(), Gop::load(p)?))).collect::<Result<Vec<_>>>()?;
    let merged = merge(&loaded)?;
    let missing = missing_ranges(&merged.meta.windows, merged.meta.total_windows);
    if !missing.is_empty() {
        eprintln!(
            "warning: the merged files cover {} of {} windows; missing windows {}",
            merged.meta.n_windows,
            merged.meta.total_windows,
            format_ranges(&missing)
        );
    }
    merged.save(out)?;
    Ok(merged)
}

/// Add GOP parts (shards). Refuses parts measured differently (weights sha256, weights kind,
/// output, estimator, probes, seed, seq_len, tokens, config: what the numbers depend on, not
/// how the model was named: `./m` and `m` merge), or whose window ranges overlap. The sum is
/// exact f64 addition in the order given.
pub fn merge(parts: &[(String, Gop)]) -> Result<Gop> {
    let Some((first_name, first)) = parts.first() else { bail_bad!("merge: no input files") };
    let mut out = first.clone();
    let mut all: Vec<(u64, u64, String)> =
        first.meta.windows.iter().map(|&(s, e)| (s, e, first_name.clone())).collect();
    for (name, g) in &parts[1..] {
        let diff = differences(&g.meta, &first.meta);
        if !diff.is_empty() {
            bail_bad!("merge: {name} was measured differently from {first_name}: {}", diff.join("; "));
        }
        all.extend(g.meta.windows.iter().map(|&(s, e)| (s, e, name.clone())));
        for (t, (_, v)) in out.sums.iter_mut() {
            let (_, w) = g.sums.get(t).ok_or_else(|| bad!("merge: {name} has no tensor {t}"))?;
            for (a, b) in v.iter_mut().zip(w) {
                *a += b;
            }
        }
        out.meta.n_windows += g.meta.n_windows;
        out.meta.n_tokens += g.meta.n_tokens;
    }
    all.sort();
    for pair in all.windows(2) {
        let ((s0, e0, f0), (s1, e1, f1)) = (&pair[0], &pair[1]);
        if s1 < e0 {
            bail_bad!("merge: window ranges overlap: {f0} has {s0}..{e0}, {f1} has {s1}..{e1}");
        }
    }
    out.meta.windows = normalize_ranges(all.iter().map(|(s, e, _)| (*s, *e)).collect());
    out.meta.shard = String::new();
    Ok(out)
}

/// The settings two GOP files differ in, as `field: a vs b` (empty when they can be merged).
pub fn differences(a: &GopMeta, b: &GopMeta) -> Vec<String> {
    let mut out = Vec::new();
    if a.model_sha256 != b.model_sha256 {
        out.push(format!(
            "weights sha256 {} ({}@{}) vs {} ({}@{})",
            short(&a.model_sha256),
            a.model,
            a.revision,
            short(&b.model_sha256),
            b.model,
            b.revision
        ));
    }
    let mut field = |name: &str, x: String, y: String| {
        if x != y {
            out.push(format!("{name} {x} vs {y}"));
        }
    };
    field("weights", a.weights.to_string(), b.weights.to_string());
    field("output", a.output.to_string(), b.output.to_string());
    field("estimator", a.estimator.to_string(), b.estimator.to_string());
    field("probes", a.probes.to_string(), b.probes.to_string());
    field("seed", a.seed.to_string(), b.seed.to_string());
    field("seq_len", a.seq_len.to_string(), b.seq_len.to_string());
    field("tokens sha256", short(&a.tokens_sha256).into(), short(&b.tokens_sha256).into());
    field("total windows", a.total_windows.to_string(), b.total_windows.to_string());
    if a.config != b.config {
        out.push("model config differs".into());
    }
    out
}

fn short(sha: &str) -> &str {
    &sha[..sha.len().min(12)]
}

/// Ranges of [0, total) not covered by `have` (sorted, non-overlapping).
pub fn missing_ranges(have: &[(u64, u64)], total: u64) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut next = 0;
    for &(s, e) in have {
        if s > next {
            out.push((next, s.min(total)));
        }
        next = next.max(e);
    }
    if next < total {
        out.push((next, total));
    }
    out
}

/// `0..10, 20..25` style text for ranges.
pub fn format_ranges(r: &[(u64, u64)]) -> String {
    r.iter().map(|(s, e)| format!("{s}..{e}")).collect::<Vec<_>>().join(", ")
}
