//! Pretrained − random-init differences (docs/reference.md §8 `contrasts.parquet`), paired over window
//! groups: both weights are measured on the same windows, so the difference left out group by
//! group is the difference of the two leave-one-out values, and the jackknife of those gives
//! the difference's own interval (narrower than the two intervals combined when the windows
//! move both correlations the same way).

use std::collections::HashMap;

use anyhow::Result;

use super::jackknife::jackknife;
use super::metrics::Correlation;
use super::sums::RunSums;
use super::table::RunRows;
use crate::model::WeightsKind;

/// The contrast rows, keyed like the pretrained run's rows, or None without exactly one
/// pretrained and one random-init run measured on the same windows.
pub fn contrasts(sums: &[RunSums], runs: &[RunRows]) -> Result<Option<Vec<RunRows>>> {
    let find = |w: WeightsKind| {
        let idx: Vec<usize> = (0..runs.len()).filter(|&i| runs[i].0.weights == w).collect();
        (idx.len() == 1).then(|| idx[0])
    };
    let (Some(p), Some(r)) = (find(WeightsKind::Pretrained), find(WeightsKind::RandomInit)) else { return Ok(None) };
    let (mp, mr) = (&sums[p].meta, &sums[r].meta);
    if mp.tokens_sha256 != mr.tokens_sha256 || mp.windows != mr.windows {
        eprintln!(
            "warning: pretrained and random-init were measured on different windows; no contrasts.parquet (a \
             difference must be paired over the same windows)"
        );
        return Ok(None);
    }
    let g = sums[p].group_count();
    let paired =
        g >= 2 && g == sums[r].group_count() && (0..g).all(|i| sums[p].group_windows(i) == sums[r].group_windows(i));
    if g >= 2 && !paired {
        eprintln!(
            "warning: pretrained and random-init have different window groups; contrasts.parquet has no intervals"
        );
    }
    // Rows are paired by key: a run measured with --fact has rows the other may lack.
    let key = |c: &Correlation| (c.layer, c.module, c.head, c.power.to_bits(), c.metric, c.ansatz, c.nfm);
    let control: HashMap<_, &Correlation> = runs[r].1.iter().map(|c| (key(c), c)).collect();
    let rows = runs[p]
        .1
        .iter()
        .filter_map(|a| control.get(&key(a)).map(|b| (a, *b)))
        .map(|(a, b)| {
            let value = a.value.zip(b.value).map(|(x, y)| x - y);
            let loo: Vec<f64> = if paired { a.loo.iter().zip(&b.loo).map(|(x, y)| x - y).collect() } else { vec![] };
            Correlation {
                value,
                note: if value.is_none() { a.note.or(b.note) } else { None },
                interval: value.and_then(|v| jackknife(v, &loo)),
                groups: if paired { g as u32 } else { 1 },
                loo,
                ..a.clone()
            }
        })
        .collect();
    Ok(Some(vec![(runs[p].0.clone(), rows)]))
}
