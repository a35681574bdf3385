//! Pretrained − random-init differences (docs/reference.md §8 `contrasts.parquet`), paired over window
//! groups: both weights are measured on the same windows, so the difference left out group by
//! group is the difference of the two leave-one-out values, and the jackknife of those gives
//! the difference's own interval (narrower than the two intervals combined when the windows
//! move both correlations the same way).
//!
//! With the control measured on several random inits (`[measure] init_seeds`), the difference
//! is taken against their mean and its interval also covers the spread across inits
//! ([`with_seed_spread`]): two random inits differ by more than window sampling says, so an
//! interval over windows alone stars differences that any other init would also show.
//! In a checkpoint series every checkpoint gets its rows (the `step` column tells them apart).

use std::collections::HashMap;

use anyhow::Result;

use super::jackknife::with_seed_spread;
use super::metrics::Correlation;
use super::sums::RunSums;
use super::table::RunRows;
use crate::model::WeightsKind;

/// The contrast rows: for every pretrained run, its rows minus the mean of the random-init
/// runs' rows of the same key; and the number of random-init runs (init seeds). None without a
/// pretrained and a random-init run measured on the same windows.
pub fn contrasts(sums: &[RunSums], runs: &[RunRows]) -> Result<Option<(Vec<RunRows>, u32)>> {
    let of = |w: WeightsKind| (0..runs.len()).filter(|&i| runs[i].0.weights == w).collect::<Vec<usize>>();
    let (pre, ctl) = (of(WeightsKind::Pretrained), of(WeightsKind::RandomInit));
    if pre.is_empty() || ctl.is_empty() {
        return Ok(None);
    }
    let m0 = &sums[ctl[0]].meta;
    if pre
        .iter()
        .chain(&ctl)
        .any(|&i| sums[i].meta.tokens_sha256 != m0.tokens_sha256 || sums[i].meta.windows != m0.windows)
    {
        eprintln!(
            "warning: pretrained and random-init were measured on different windows; no contrasts.parquet (a \
             difference must be paired over the same windows)"
        );
        return Ok(None);
    }
    let g = sums[ctl[0]].group_count();
    let paired = g >= 2
        && pre.iter().chain(&ctl).all(|&i| {
            sums[i].group_count() == g && (0..g).all(|j| sums[i].group_windows(j) == sums[ctl[0]].group_windows(j))
        });
    if g >= 2 && !paired {
        eprintln!(
            "warning: pretrained and random-init have different window groups; contrasts.parquet has no window \
             intervals"
        );
    }
    // Rows are paired by key: a run measured with --fact has rows the other may lack.
    let key = |c: &Correlation| (c.layer, c.module, c.head, c.power.to_bits(), c.metric, c.ansatz, c.nfm);
    let controls: Vec<HashMap<_, &Correlation>> =
        ctl.iter().map(|&r| runs[r].1.iter().map(|c| (key(c), c)).collect()).collect();
    let k = ctl.len() as f64;
    let mut out = Vec::new();
    for &p in &pre {
        let rows = runs[p]
            .1
            .iter()
            .filter_map(|a| {
                let bs: Option<Vec<&Correlation>> = controls.iter().map(|c| c.get(&key(a)).copied()).collect();
                bs.map(|bs| (a, bs))
            })
            .map(|(a, bs)| {
                let values: Option<Vec<f64>> = bs.iter().map(|b| b.value).collect();
                let value = a.value.zip(values.as_ref()).map(|(x, ys)| x - ys.iter().sum::<f64>() / k);
                let loo: Vec<f64> = if paired {
                    {
                        let at = |c: &Correlation, j: usize| c.loo.get(j).copied().unwrap_or(f64::NAN);
                        (0..g).map(|j| at(a, j) - bs.iter().map(|b| at(b, j)).sum::<f64>() / k).collect()
                    }
                } else {
                    vec![]
                };
                let interval = value.zip(values.as_ref()).and_then(|(v, ys)| with_seed_spread(v, &loo, ys));
                Correlation {
                    value,
                    note: if value.is_none() { a.note.or(bs.iter().find_map(|b| b.note)) } else { None },
                    interval,
                    groups: if paired { g as u32 } else { 1 },
                    loo,
                    ..a.clone()
                }
            })
            .collect();
        out.push((runs[p].0.clone(), rows));
    }
    Ok(Some((out, ctl.len() as u32)))
}
