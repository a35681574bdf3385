//! Window groups: contiguous blocks of windows (in global window order) whose sums are kept
//! apart, so that the correlate stage can put a delete-one-group jackknife interval on every
//! correlation (`measure --groups G`).
//!
//! Layout on disk: a GOP file `x.safetensors` measured with G > 1 groups has its group files in
//! `x.groups/group-<g>-of-<G>.safetensors`, each an ordinary GOP file whose metadata names the
//! group ([`GroupPart`]). The measure loop runs group by group and adds each finished group into
//! the total in group order, so the total is exactly the sum of its group files. A shard writes
//! the pieces of the groups it touches (a shard boundary may cut a group); `merge` adds the
//! pieces of each group back together.
//!
//! Groups are cut as shards are: group g holds positions ⌊g·N/G⌋ .. ⌊(g+1)·N/G⌋ of the N windows of
//! the whole tokens file sorted by index. With G shards and G groups the two cuts coincide, which
//! is why `correlate --gop part0 … partN` (the parts used as groups) equals `--groups G`.

use std::path::{Path, PathBuf};

use anyhow::Result;

use super::gop::{differences, format_ranges, normalize_ranges, GopFile, GroupPart};
use crate::bail_bad;
use crate::tokenize::Window;

/// Where the groups of a measurement begin: the first window index and the window count of each.
#[derive(Debug, Clone)]
pub struct GroupPlan {
    /// (first window index, number of windows) of each group, in order.
    bounds: Vec<(u64, u64)>,
}

impl GroupPlan {
    /// `groups` groups over all windows of a tokens file, given their indices sorted.
    pub fn new(sorted_indices: &[u64], groups: u32) -> Result<Self> {
        let n = sorted_indices.len();
        if groups == 0 {
            bail_bad!("--groups must be at least 1");
        }
        if groups as usize > n {
            bail_bad!(
                "--groups {groups} (in a pipeline: [measure] groups) is more than the {n} windows of the tokens file; \
                 each group needs a window"
            );
        }
        let g = groups as usize;
        let bounds = (0..g)
            .map(|i| {
                let (s, e) = (i * n / g, (i + 1) * n / g);
                (sorted_indices[s], (e - s) as u64)
            })
            .collect();
        Ok(Self { bounds })
    }

    pub fn len(&self) -> u32 {
        self.bounds.len() as u32
    }

    pub fn is_empty(&self) -> bool {
        self.bounds.is_empty()
    }

    /// The group window `index` belongs to.
    pub fn group_of(&self, index: u64) -> u32 {
        (self.bounds.partition_point(|&(first, _)| first <= index).max(1) - 1) as u32
    }

    /// What a file of group `g` records about it.
    pub fn part(&self, g: u32) -> GroupPart {
        GroupPart { index: g, windows: self.bounds[g as usize].1 }
    }

    /// Windows (sorted by index) split into the groups they belong to, in group order; groups
    /// with none of these windows are left out.
    pub fn split(&self, windows: Vec<Window>) -> Vec<(u32, Vec<Window>)> {
        let mut out: Vec<(u32, Vec<Window>)> = Vec::new();
        for w in windows {
            let g = self.group_of(w.index);
            match out.last_mut() {
                Some((last, ws)) if *last == g => ws.push(w),
                _ => out.push((g, vec![w])),
            }
        }
        out
    }
}

/// The folder of the group files of GOP file `gop`: `x.safetensors` → `x.groups`.
pub fn groups_dir(gop: &Path) -> PathBuf {
    // From the whole file name, so that `run.pretrained` and `run.random` get folders of their
    // own (`run.pretrained.groups`), and `x.groups` is never its own folder; only the
    // `.safetensors` extension is replaced (`gop-pretrained.groups`, as always).
    let name = gop.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    let base = name.strip_suffix(".safetensors").unwrap_or(&name);
    gop.with_file_name(format!("{base}.groups"))
}

/// The file of group `g` of `n` of GOP file `gop`.
pub fn group_path(gop: &Path, g: u32, n: u32) -> PathBuf {
    groups_dir(gop).join(format!("group-{g}-of-{n}.safetensors"))
}

/// Remove the group files of `gop` other than those of groups `keep` of `n` (left over from
/// an earlier measurement with another group count or shard).
pub fn remove_other_groups(gop: &Path, n: u32, keep: &[u32]) -> Result<()> {
    let dir = groups_dir(gop);
    let Ok(entries) = std::fs::read_dir(&dir) else { return Ok(()) };
    let wanted: Vec<PathBuf> = keep.iter().map(|&g| group_path(gop, g, n)).collect();
    for e in entries.flatten() {
        let p = e.path();
        let name = e.file_name().to_string_lossy().to_string();
        if name.starts_with("group-") && name.ends_with(".safetensors") && !wanted.contains(&p) {
            std::fs::remove_file(&p)?;
        }
    }
    // An emptied folder goes too.
    let _ = std::fs::remove_dir(&dir);
    Ok(())
}

/// A GOP file with its group files, opened for reading one module at a time.
pub struct GroupedFile {
    pub path: PathBuf,
    pub total: GopFile,
    /// The group files in group order (empty when the file was measured without groups).
    pub groups: Vec<GopFile>,
}

impl GroupedFile {
    /// Open a GOP file and, when it was measured with groups, its group files, checked to belong
    /// to it: measured the same way, and together covering exactly its windows and tokens.
    pub fn open(path: &Path) -> Result<Self> {
        let total = GopFile::open(path)?;
        let name = path.display();
        if let Some(part) = total.meta.group {
            bail_bad!(
                "{name} is the file of group {} of a measurement; give the GOP file it belongs to instead",
                part.index
            );
        }
        let n = total.meta.groups;
        if n == 0 {
            bail_bad!("{name}: metadata says 0 groups");
        }
        let mut groups = Vec::new();
        if n > 1 {
            for g in 0..n {
                let p = group_path(path, g, n);
                if p.is_file() {
                    let f = GopFile::open(&p)?;
                    let diff = differences(&f.meta, &total.meta);
                    if !diff.is_empty() {
                        bail_bad!(
                            "group file {} was measured differently from {name}: {}",
                            p.display(),
                            diff.join("; ")
                        );
                    }
                    if f.meta.group.map(|x| x.index) != Some(g) {
                        bail_bad!(
                            "group file {} does not hold group {g} (its metadata: {:?})",
                            p.display(),
                            f.meta.group
                        );
                    }
                    groups.push(f);
                }
            }
            let mut ranges: Vec<(u64, u64)> = groups.iter().flat_map(|f| f.meta.windows.iter().copied()).collect();
            ranges.sort_unstable();
            let covered = normalize_ranges(ranges.clone());
            let tokens: u64 = groups.iter().map(|f| f.meta.n_tokens).sum();
            let disjoint = ranges.windows(2).all(|p| p[1].0 >= p[0].1);
            if !disjoint || covered != total.meta.windows || tokens != total.meta.n_tokens {
                bail_bad!(
                    "{name} was measured in {n} groups, but its group files in {} cover windows {} ({tokens} tokens) \
                     instead of its windows {} ({} tokens); a group file is missing or left from another run \
                     (measure again to rewrite them)",
                    groups_dir(path).display(),
                    if covered.is_empty() { "none".to_string() } else { format_ranges(&covered) },
                    format_ranges(&total.meta.windows),
                    total.meta.n_tokens
                );
            }
        }
        Ok(Self { path: path.to_path_buf(), total, groups })
    }

    /// The group count the file was measured with (1: no groups).
    pub fn group_count(&self) -> u32 {
        self.total.meta.groups
    }

    /// The group file of group `g`, if this file holds any of its windows.
    pub fn group(&self, g: u32) -> Option<&GopFile> {
        self.groups.iter().find(|f| f.meta.group.map(|x| x.index) == Some(g))
    }
}
