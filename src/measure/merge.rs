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

/// Add GOP parts (shards). Refuses parts whose model, weights, output, estimator, probes, seed
/// or seq_len differ, or whose window ranges overlap. The sum is exact f64 addition in the
/// order given.
pub fn merge(parts: &[(String, Gop)]) -> Result<Gop> {
    let Some((first_name, first)) = parts.first() else { bail_bad!("merge: no input files") };
    let mut out = first.clone();
    let key = |m: &GopMeta| {
        (
            m.model.clone(),
            m.revision.clone(),
            m.model_sha256.clone(),
            m.weights,
            m.output,
            m.estimator,
            m.probes,
            m.seed,
            m.seq_len,
            m.tokens_sha256.clone(),
            m.total_windows,
            m.config.clone(),
        )
    };
    let mut all: Vec<(u64, u64, String)> =
        first.meta.windows.iter().map(|&(s, e)| (s, e, first_name.clone())).collect();
    for (name, g) in &parts[1..] {
        if key(&g.meta) != key(&first.meta) {
            let (a, b) = (&first.meta, &g.meta);
            bail_bad!(
                "merge: {name} conflicts with {first_name}: model {}@{} vs {}@{}, weights {} vs {}, output {} vs {}, \
                 estimator {} vs {}, probes {} vs {}, seed {} vs {}, seq_len {} vs {}, tokens {} vs {}",
                b.model,
                b.revision,
                a.model,
                a.revision,
                b.weights,
                a.weights,
                b.output,
                a.output,
                b.estimator,
                a.estimator,
                b.probes,
                a.probes,
                b.seed,
                a.seed,
                b.seq_len,
                a.seq_len,
                short(&b.tokens_sha256),
                short(&a.tokens_sha256)
            );
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
