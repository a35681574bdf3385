//! The GOP files of `correlate --gop …` read as runs: files measured the same way (weights,
//! settings, tokens) with disjoint windows are the parts (shards) of one run, added module by
//! module; every run has G window groups for the jackknife:
//!
//! - one file measured with `--groups G`: its G group files;
//! - several parts measured without groups: the parts themselves (one group each);
//! - several parts measured with the same `--groups G`: group g is the sum of the parts' pieces
//!   of group g (a shard boundary may cut a group).
//!
//! Mixing parts with and without groups (or with different G) is refused. Memory holds one
//! module's total and one group at a time.

use std::path::PathBuf;

use anyhow::Result;

use crate::bail_bad;
use crate::measure::gop::{differences, normalize_ranges, FactSum, GopFile, GopMeta};
use crate::measure::groups::GroupedFile;
use crate::model::Module;

/// One run's sums, read one module at a time.
pub struct RunSums {
    /// The first part's metadata with the windows, window and token counts of all parts.
    pub meta: GopMeta,
    pub paths: Vec<PathBuf>,
    parts: Vec<GroupedFile>,
    /// Group g: the files whose sums add up to it.
    groups: Vec<Vec<GroupSource>>,
}

#[derive(Debug, Clone, Copy)]
enum GroupSource {
    /// The whole of part i (parts used as groups).
    Part(usize),
    /// Part i's file of group g.
    Group(usize, u32),
}

/// Is `b` the same measurement as `a` apart from the windows (and the group count, checked apart)?
fn same_measurement(a: &GopMeta, b: &GopMeta) -> bool {
    differences(a, &GopMeta { groups: a.groups, ..b.clone() }).is_empty()
}

impl RunSums {
    /// Open GOP files and sort them into runs (in the order their first file was given).
    pub fn open_all(paths: &[PathBuf]) -> Result<Vec<RunSums>> {
        let mut runs: Vec<(Vec<PathBuf>, Vec<GroupedFile>)> = Vec::new();
        for p in paths {
            let f = GroupedFile::open(p)?;
            match runs.iter_mut().find(|(_, fs)| same_measurement(&fs[0].total.meta, &f.total.meta)) {
                Some((ps, fs)) => {
                    ps.push(p.clone());
                    fs.push(f);
                }
                None => runs.push((vec![p.clone()], vec![f])),
            }
        }
        runs.into_iter().map(|(paths, parts)| Self::from_parts(paths, parts)).collect()
    }

    fn from_parts(paths: Vec<PathBuf>, parts: Vec<GroupedFile>) -> Result<Self> {
        // Parts in window order, whatever order they were given in: parts used as groups are then
        // numbered alike in every run, so a pretrained and a random-init run pair group by group
        // (and the sums add in one order).
        let mut both: Vec<(PathBuf, GroupedFile)> = paths.into_iter().zip(parts).collect();
        both.sort_by_key(|(_, f)| f.total.meta.windows.first().copied());
        let (paths, parts): (Vec<PathBuf>, Vec<GroupedFile>) = both.into_iter().unzip();
        let name = |i: usize| paths[i].display().to_string();
        // Disjoint windows.
        let mut all: Vec<(u64, u64, usize)> = Vec::new();
        for (i, f) in parts.iter().enumerate() {
            all.extend(f.total.meta.windows.iter().map(|&(s, e)| (s, e, i)));
        }
        all.sort();
        for pair in all.windows(2) {
            let ((s0, e0, f0), (s1, e1, f1)) = (pair[0], pair[1]);
            if s1 < e0 {
                bail_bad!(
                    "{} and {} are the same measurement with overlapping windows ({s0}..{e0} and {s1}..{e1}); give \
                     each shard once",
                    name(f0),
                    name(f1)
                );
            }
        }
        let counts: Vec<u32> = parts.iter().map(|f| f.group_count()).collect();
        let groups: Vec<Vec<GroupSource>> = if counts.iter().all(|&c| c == 1) {
            (0..parts.len()).map(|i| vec![GroupSource::Part(i)]).collect()
        } else if counts.iter().all(|&c| c == counts[0]) {
            (0..counts[0])
                .map(|g| {
                    (0..parts.len())
                        .filter(|&i| parts[i].group(g).is_some())
                        .map(|i| GroupSource::Group(i, g))
                        .collect()
                })
                .filter(|v: &Vec<GroupSource>| !v.is_empty())
                .collect()
        } else {
            let desc: Vec<String> = (0..parts.len()).map(|i| format!("{} ({} groups)", name(i), counts[i])).collect();
            bail_bad!(
                "these GOP files are parts of one measurement but were measured with different --groups: {}; give \
                 parts measured alike (all without --groups, and the parts become the groups, or all with the same \
                 --groups)",
                desc.join(", ")
            );
        };
        let mut meta = parts[0].total.meta.clone();
        for f in &parts[1..] {
            meta.n_windows += f.total.meta.n_windows;
            meta.n_tokens += f.total.meta.n_tokens;
            meta.windows.extend(f.total.meta.windows.iter().copied());
        }
        meta.windows = normalize_ranges(meta.windows);
        Ok(Self { meta, paths, parts, groups })
    }

    /// The number of groups the jackknife runs over (0 or 1: no interval).
    pub fn group_count(&self) -> usize {
        self.groups.len()
    }

    fn file(&self, s: GroupSource) -> &GopFile {
        match s {
            GroupSource::Part(i) => &self.parts[i].total,
            GroupSource::Group(i, g) => self.parts[i].group(g).expect("group sources point at existing files"),
        }
    }

    /// The summed stored matrix of module `m` over `files`, and their tokens.
    fn add(files: &[&GopFile], m: &Module) -> Result<(usize, Vec<f64>, u64)> {
        let (d, mut acc) = files[0].sum(m)?;
        for f in &files[1..] {
            let (_, v) = f.sum(m)?;
            acc.iter_mut().zip(&v).for_each(|(a, b)| *a += b);
        }
        Ok((d, acc, files.iter().map(|f| f.meta.n_tokens).sum()))
    }

    /// Module `m`'s sum over all parts: (dim, values, tokens). With group files, the total is
    /// checked to be their sum (a total edited or left from another run is refused).
    pub fn total(&self, m: &Module) -> Result<(usize, Vec<f64>, u64)> {
        let total = Self::add(&self.parts.iter().map(|f| &f.total).collect::<Vec<_>>(), m)?;
        if self.groups.iter().flatten().any(|s| matches!(s, GroupSource::Group(..))) {
            let mut sum = vec![0f64; total.1.len()];
            for g in 0..self.groups.len() {
                self.group(g, m)?.1.iter().zip(sum.iter_mut()).for_each(|(v, a)| *a += v);
            }
            let diff: f64 = sum.iter().zip(&total.1).map(|(a, b)| (a - b) * (a - b)).sum::<f64>().sqrt();
            let norm: f64 = total.1.iter().map(|b| b * b).sum::<f64>().sqrt();
            if diff.is_nan() || diff > 1e-9 * norm.max(f64::MIN_POSITIVE) {
                bail_bad!(
                    "{}: the sum of {} is not the sum of its group files in {} (relative difference {:.2e}); the \
                     file or its groups were changed or left from another run: measure again",
                    self.paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "),
                    m.name(),
                    self.paths
                        .iter()
                        .map(|p| crate::measure::groups::groups_dir(p).display().to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                    diff / norm.max(f64::MIN_POSITIVE)
                );
            }
        }
        Ok(total)
    }

    /// Module `m`'s sum over group `g`: (dim, values, tokens).
    pub fn group(&self, g: usize, m: &Module) -> Result<(usize, Vec<f64>, u64)> {
        Self::add(&self.groups[g].iter().map(|&s| self.file(s)).collect::<Vec<_>>(), m)
    }

    /// The FACT sum G of whole module `owner` over `files`.
    fn add_fact(files: &[&GopFile], owner: &Module) -> Result<FactSum> {
        let mut acc = files[0].fact(owner)?;
        for f in &files[1..] {
            acc.values.iter_mut().zip(&f.fact(owner)?.values).for_each(|(a, b)| *a += b);
        }
        Ok(acc)
    }

    /// Whole module `owner`'s FACT sum over all parts.
    pub fn fact_total(&self, owner: &Module) -> Result<FactSum> {
        Self::add_fact(&self.parts.iter().map(|f| &f.total).collect::<Vec<_>>(), owner)
    }

    /// Whole module `owner`'s FACT sum over group `g`.
    pub fn fact_group(&self, g: usize, owner: &Module) -> Result<FactSum> {
        Self::add_fact(&self.groups[g].iter().map(|&s| self.file(s)).collect::<Vec<_>>(), owner)
    }

    /// The windows of group `g` (for pairing the groups of two runs).
    pub fn group_windows(&self, g: usize) -> Vec<(u64, u64)> {
        normalize_ranges(self.groups[g].iter().flat_map(|&s| self.file(s).meta.windows.iter().copied()).collect())
    }
}
