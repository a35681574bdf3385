//! Merging GOP files: shards (contiguous blocks of windows, measured anywhere) add up exactly to
//! the whole run; `agop merge` refuses parts measured differently or overlapping.

use std::path::{Path, PathBuf};

use anyhow::Result;

pub use super::gop::{differences, format_ranges};
use super::gop::{normalize_ranges, Gop};
use super::groups::{group_path, groups_dir, remove_other_groups, GroupedFile};
use crate::bail_bad;

/// `agop merge`: add shard files, write the sum. Parts measured with groups have their group
/// files merged too, group by group (the pieces of a group that a shard boundary cut are added
/// back together); the group files are written before the merged file.
pub fn merge_files(parts: &[PathBuf], out: &Path) -> Result<Gop> {
    crate::util::fs::check_output(out, "--out", parts)?;
    let loaded = parts.iter().map(|p| Ok((p.display().to_string(), Gop::load(p)?))).collect::<Result<Vec<_>>>()?;
    let merged = merge(&loaded)?;
    drop(loaded);
    let n = merged.meta.groups;
    if n > 1 {
        let grouped = parts.iter().map(|p| GroupedFile::open(p)).collect::<Result<Vec<_>>>()?;
        let mut written = Vec::new();
        for g in 0..n {
            let pieces = grouped
                .iter()
                .filter(|f| f.group(g).is_some())
                .map(|f| {
                    let p = group_path(&f.path, g, n);
                    Ok((p.display().to_string(), Gop::load(&p)?))
                })
                .collect::<Result<Vec<_>>>()?;
            if pieces.is_empty() {
                continue;
            }
            std::fs::create_dir_all(groups_dir(out))?;
            merge(&pieces)?.save(&group_path(out, g, n))?;
            written.push(g);
        }
        remove_other_groups(out, n, &written)?;
    }
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
        if let Some(t) = out.sums.keys().find(|t| !g.sums.contains_key(*t)) {
            bail_bad!("merge: {name} has no tensor {t}");
        }
        out.add_gop(g);
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
    let mut devices: Vec<&str> = parts.iter().map(|(_, g)| g.meta.device.as_str()).filter(|d| !d.is_empty()).collect();
    devices.sort_unstable();
    devices.dedup();
    out.meta.device = devices.join("+");
    Ok(out)
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
