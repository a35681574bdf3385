//! Files written before the layout of issue 10 (typed GOP metadata, one parameter schema, the
//! `Network` seam) still load, merge and correlate, and the new code measures the same numbers.
//!
//! `tests/fixtures/legacy-v0.1/` was written by agop at commit 10ec878 (the last commit before
//! the change) from the tiny fixture model; see its README for the exact commands.

mod common;

use std::path::PathBuf;

use agop::correlate::{self, RunContext};
use agop::fetch::ResolvedModel;
use agop::measure::{self, Estimator, Gop, MeasureOptions, Output, Settings};
use agop::model::WeightsKind;
use agop::util::parquet::read_parquet;
use common::*;

fn legacy(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/legacy-v0.1").join(name)
}

fn settings() -> Settings {
    Settings { output: Output::Logits, estimator: Estimator::Sketch, probes: 2, seed: 5, fact: false }
}

#[test]
fn legacy_gop_files_load_with_typed_metadata() {
    let g = Gop::load(&legacy("gop-pretrained-0-of-2.safetensors")).unwrap();
    assert_eq!(g.meta.weights, WeightsKind::Pretrained);
    assert_eq!(g.meta.output, Output::Logits);
    assert_eq!(g.meta.estimator, Estimator::Sketch);
    assert_eq!((g.meta.probes, g.meta.seed, g.meta.n_windows, g.meta.total_windows), (2, 5, 3, 6));
    let r = Gop::load(&legacy("gop-random-init.safetensors")).unwrap();
    assert_eq!(r.meta.weights, WeightsKind::RandomInit);
    // Saved again by the new code, the metadata reads back equal.
    let tmp = tempfile::tempdir().unwrap();
    g.save(&tmp.path().join("again.safetensors")).unwrap();
    assert_eq!(Gop::load(&tmp.path().join("again.safetensors")).unwrap().meta, g.meta);
}

/// The new code measures exactly what the old code wrote (same tokens, settings, seed): the
/// sketch sums are bitwise equal, for both weights settings and for a shard.
#[test]
fn new_measurement_equals_legacy_files_bitwise() {
    let model = ResolvedModel::local(&fixture_model()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    for (file, weights, shard) in [
        ("gop-pretrained-0-of-2.safetensors", WeightsKind::Pretrained, Some((0, 2))),
        ("gop-pretrained-1-of-2.safetensors", WeightsKind::Pretrained, Some((1, 2))),
        ("gop-random-init.safetensors", WeightsKind::RandomInit, None),
    ] {
        let old = Gop::load(&legacy(file)).unwrap();
        let opts = MeasureOptions { shard, ..MeasureOptions::new(weights, settings(), 2) };
        let new = measure::measure(&model, &legacy("tokens.parquet"), &tmp.path().join(file), &opts).unwrap();
        assert_eq!(new.meta.windows, old.meta.windows, "{file}");
        assert_eq!(new.meta.model_sha256, old.meta.model_sha256, "{file}");
        assert_eq!(new.meta.tokens_sha256, old.meta.tokens_sha256, "{file}");
        assert_eq!(new.sums.keys().collect::<Vec<_>>(), old.sums.keys().collect::<Vec<_>>());
        for (k, (_, v)) in &old.sums {
            assert!(new.sums[k].1 == *v, "{file} {k}: sums differ from the legacy file");
        }
    }
}

/// Legacy shards merge with the new code, and the correlations of the merged file equal the
/// correlations.parquet the old code wrote from its own merge (to 1e-12).
#[test]
fn legacy_shards_merge_and_correlate_as_before() {
    let tmp = tempfile::tempdir().unwrap();
    let merged = tmp.path().join("gop-pretrained.safetensors");
    let parts = [legacy("gop-pretrained-0-of-2.safetensors"), legacy("gop-pretrained-1-of-2.safetensors")];
    let g = measure::merge_files(&parts, &merged).unwrap();
    assert_eq!((g.meta.n_windows, g.meta.windows.clone()), (6, vec![(0, 6)]));
    let model = ResolvedModel::local(&fixture_model()).unwrap();
    let out = tmp.path().join("correlations.parquet");
    let gops = [merged, legacy("gop-random-init.safetensors")];
    let new = correlate::correlate_files(
        &model,
        &gops,
        &out,
        &correlate::CorrelateOptions::new(&[0.5, 1.0]),
        &RunContext::default(),
    )
    .unwrap();
    // The `subspace-<k>` rows came later: without them the table is the old one.
    let keep: polars::prelude::BooleanChunked = new
        .column("metric")
        .unwrap()
        .str()
        .unwrap()
        .iter()
        .map(|m| Some(!m.unwrap().starts_with("subspace-")))
        .collect();
    let new = new.filter(&keep).unwrap();
    let old = read_parquet(&legacy("correlations.parquet")).unwrap();
    assert_eq!(new.height(), old.height());
    // The old columns, in order, then the `note` column and the docs/reference.md §8 columns added since,
    // holding their default values for files measured without groups.
    let (new_cols, old_cols) = (new.get_column_names(), old.get_column_names());
    assert_eq!(new_cols[..old_cols.len()], old_cols[..]);
    assert_eq!(
        new_cols[old_cols.len()..].iter().map(|c| c.as_str()).collect::<Vec<_>>(),
        ["note", "ansatz", "nfm", "step", "se", "ci_low", "ci_high", "groups", "seed", "role"]
    );
    // `seed`: each run's, from its GOP file.
    let seeds = new.column("seed").unwrap().u64().unwrap();
    for (i, w) in new.column("weights").unwrap().str().unwrap().iter().enumerate() {
        let gop = agop::measure::Gop::load(&gops[usize::from(w == Some("random-init"))]).unwrap();
        assert_eq!(seeds.get(i), Some(gop.meta.seed));
    }
    assert!(new.column("ansatz").unwrap().str().unwrap().iter().all(|x| x == Some("nfa")));
    assert!(new.column("nfm").unwrap().str().unwrap().iter().all(|x| x == Some("gram")));
    assert_eq!(new.column("step").unwrap().null_count(), new.height());
    for c in ["se", "ci_low", "ci_high"] {
        assert_eq!(new.column(c).unwrap().null_count(), new.height(), "{c} should be null with one group");
    }
    assert!(new.column("groups").unwrap().u32().unwrap().iter().all(|x| x == Some(1)));
    for col in ["weights", "module", "metric", "output", "estimator"] {
        assert!(new.column(col).unwrap().equals(old.column(col).unwrap()), "column {col} differs");
    }
    let (nv, ov) = (new.column("value").unwrap().f64().unwrap(), old.column("value").unwrap().f64().unwrap());
    let worst = nv.iter().zip(ov.iter()).map(|(a, b)| (a.unwrap() - b.unwrap()).abs()).fold(0.0, f64::max);
    eprintln!("legacy correlations: max abs difference {worst:.3e}");
    assert!(worst <= 1e-12, "correlations differ from the legacy file by {worst}");
}
