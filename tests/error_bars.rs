//! Error bars (delete-one-group jackknife): agop's standard errors against an independent
//! computation from the group sums, groups from shards against `--groups`, cut groups merged
//! back, bad input, and the coverage of the 95% intervals.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use agop::correlate::{self, CorrelateOptions, RunContext};
use agop::fetch::ResolvedModel;
use agop::measure::groups::group_path;
use agop::measure::{self, Estimator, Gop, MeasureOptions, Output, Settings};
use agop::model::{self, all_modules, WeightsKind};
use agop::tokenize::{write_tokens, TokensMeta, Window};
use common::*;
use polars::prelude::DataFrame;
use rand::{Rng, SeedableRng};

const POWERS: [f64; 2] = [0.5, 1.0];

/// Windows `first..first + n` of `t` random tokens of the fixture's 50-token vocabulary (the
/// same window index always gets the same tokens).
fn windows(first: u64, n: u64, t: usize) -> Vec<Window> {
    (first..first + n)
        .map(|i| {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1000 + i);
            Window { index: i, tokens: (0..t).map(|_| rng.random_range(0..50u32)).collect() }
        })
        .collect()
}

fn write(path: &Path, w: &[Window]) -> PathBuf {
    write_tokens(path, w, &TokensMeta::default()).unwrap();
    path.to_path_buf()
}

fn opts(estimator: Estimator, probes: u32, groups: u32, shard: Option<(usize, usize)>) -> MeasureOptions {
    let settings = Settings { output: Output::Logits, estimator, probes, seed: 4, fact: false };
    MeasureOptions { groups, shard, ..MeasureOptions::new(WeightsKind::Pretrained, settings, 3) }
}

fn correlate(model: &ResolvedModel, gops: &[PathBuf], out: &Path) -> DataFrame {
    correlate::correlate_files(model, gops, out, &CorrelateOptions::new(&POWERS), &RunContext::default()).unwrap()
}

fn f64s(df: &DataFrame, c: &str) -> Vec<Option<f64>> {
    df.column(c).unwrap().f64().unwrap().iter().collect()
}

fn max_diff(a: &[Option<f64>], b: &[Option<f64>]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x.expect("value") - y.expect("value")).abs()).fold(0.0, f64::max)
}

/// The SE and interval agop writes equal those computed here from the group files by another
/// path: each leave-one-out GOP formed explicitly and correlated with the dense reference
/// (NFM and AGOP^α as full matrices), the jackknife written out by hand, t from a table.
#[test]
fn jackknife_equals_independent_leave_one_out_computation() {
    let tmp = tempfile::tempdir().unwrap();
    let tokens = write(&tmp.path().join("tokens.parquet"), &windows(0, 12, 8));
    let model = ResolvedModel::local(&fixture_model()).unwrap();
    let out = tmp.path().join("gop.safetensors");
    let g = 4u32;
    measure::measure(&model, &tokens, &out, &opts(Estimator::Exact, 1, g, None)).unwrap();
    let df = correlate(&model, std::slice::from_ref(&out), &tmp.path().join("c.parquet"));

    let total = Gop::load(&out).unwrap();
    let groups: Vec<Gop> = (0..g).map(|i| Gop::load(&group_path(&out, i, g)).unwrap()).collect();
    assert_eq!(total.meta.groups, g);
    // The total is the sum of the group files, added in group order.
    for (name, (_, v)) in &total.sums {
        let mut acc = vec![0.0; v.len()];
        for gr in &groups {
            acc.iter_mut().zip(&gr.sums[name].1).for_each(|(a, b)| *a += b);
        }
        assert_eq!(&acc, v, "{name}: total is not the sum of its groups");
    }
    let m = model::load_dir(&fixture_model(), WeightsKind::Pretrained, 0).unwrap();
    let dense = |gop: &Gop| -> Vec<f64> {
        all_modules(&m.cfg)
            .iter()
            .flat_map(|md| correlate::correlate_module_dense(&m, gop, md, &POWERS).unwrap())
            .map(|c| c.value.unwrap())
            .collect()
    };
    let full = dense(&total);
    let loo: Vec<Vec<f64>> = groups
        .iter()
        .map(|gr| {
            let mut l = total.clone();
            for (name, (_, v)) in l.sums.iter_mut() {
                v.iter_mut().zip(&gr.sums[name].1).for_each(|(a, b)| *a -= b);
            }
            l.meta.n_tokens -= gr.meta.n_tokens;
            dense(&l)
        })
        .collect();
    let t975_3 = 3.182_446_305_284_263; // Student t, 3 degrees of freedom, 0.975 quantile
    let (value, se, lo, hi) = (f64s(&df, "value"), f64s(&df, "se"), f64s(&df, "ci_low"), f64s(&df, "ci_high"));
    assert_eq!(value.len(), full.len());
    let (mut worst_se, mut worst_v) = (0f64, 0f64);
    for i in 0..full.len() {
        let xs: Vec<f64> = loo.iter().map(|l| l[i]).collect();
        let mean = xs.iter().sum::<f64>() / g as f64;
        let want = ((g as f64 - 1.0) / g as f64 * xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>()).sqrt();
        worst_se = worst_se.max((se[i].unwrap() - want).abs());
        worst_v = worst_v.max((value[i].unwrap() - full[i]).abs());
        // Centred on the bias-corrected estimate G·θ − (G−1)·mean of the leave-one-out values.
        let centre = g as f64 * full[i] - (g as f64 - 1.0) * mean;
        assert!((lo[i].unwrap() - (centre - t975_3 * want)).abs() < 1e-9, "row {i} ci_low");
        assert!((hi[i].unwrap() - (centre + t975_3 * want)).abs() < 1e-9, "row {i} ci_high");
    }
    eprintln!("jackknife vs independent: max |Δse| {worst_se:.2e}, max |Δvalue| {worst_v:.2e}");
    assert!(worst_se < 1e-9 && worst_v < 1e-9);
    assert!(df.column("groups").unwrap().u32().unwrap().iter().all(|x| x == Some(g)));
}

/// G shards correlated together (the parts are the groups) give the same intervals as one run
/// with `--groups G`; shards that cut groups, merged or correlated as parts, give them too.
#[test]
fn groups_from_shards_equal_groups_and_cut_groups_merge_back() {
    let tmp = tempfile::tempdir().unwrap();
    let p = |n: &str| tmp.path().join(n);
    let tokens = write(&p("tokens.parquet"), &windows(0, 12, 8));
    let model = ResolvedModel::local(&fixture_model()).unwrap();
    let whole = p("whole.safetensors");
    measure::measure(&model, &tokens, &whole, &opts(Estimator::Sketch, 2, 4, None)).unwrap();
    let a = correlate(&model, std::slice::from_ref(&whole), &p("a.parquet"));

    // Four ungrouped shards = four groups.
    let shards: Vec<PathBuf> = (0..4)
        .map(|i| {
            let s = p(&format!("shard-{i}.safetensors"));
            measure::measure(&model, &tokens, &s, &opts(Estimator::Sketch, 2, 1, Some((i, 4)))).unwrap();
            s
        })
        .collect();
    let b = correlate(&model, &shards, &p("b.parquet"));
    // Three shards measured with --groups 4: shard boundaries (0, 4, 8, 12) cut groups (0, 3, 6, 9, 12).
    let cut: Vec<PathBuf> = (0..3)
        .map(|i| {
            let s = p(&format!("cut-{i}.safetensors"));
            measure::measure(&model, &tokens, &s, &opts(Estimator::Sketch, 2, 4, Some((i, 3)))).unwrap();
            s
        })
        .collect();
    let c = correlate(&model, &cut, &p("c.parquet"));
    let merged = p("merged.safetensors");
    measure::merge_files(&cut, &merged).unwrap();
    for g in 0..4 {
        let (x, y) = (Gop::load(&group_path(&merged, g, 4)).unwrap(), Gop::load(&group_path(&whole, g, 4)).unwrap());
        assert_eq!(x.meta.windows, y.meta.windows, "merged group {g}");
    }
    let d = correlate(&model, std::slice::from_ref(&merged), &p("d.parquet"));
    for (name, other) in [("shards as groups", &b), ("cut groups as parts", &c), ("cut groups merged", &d)] {
        let (dv, ds) =
            (max_diff(&f64s(&a, "value"), &f64s(other, "value")), max_diff(&f64s(&a, "se"), &f64s(other, "se")));
        eprintln!("{name}: max |Δvalue| {dv:.2e}, max |Δse| {ds:.2e}");
        assert!(dv < 1e-9 && ds < 1e-9, "{name}");
    }
}

/// Resume after a kill with groups: group files and total equal an uninterrupted run bitwise.
#[test]
fn grouped_resume_after_kill_equals_uninterrupted_run() {
    let tmp = tempfile::tempdir().unwrap();
    let config = r#"{"model_type":"gpt2","n_layer":2,"n_head":4,"n_embd":64,"n_positions":128,"vocab_size":500}"#;
    let model = init_checkpoint(tmp.path(), "model", config, 3);
    let w: Vec<Window> = (0..160u64)
        .map(|i| Window { index: i, tokens: (0..64u64).map(|j| ((i * 13 + j * 7 + i * j) % 500) as u32).collect() })
        .collect();
    let tokens = write(&tmp.path().join("tokens.parquet"), &w);
    let cmd = |out: &Path| {
        let mut c = Command::new(agop_bin());
        c.args(["measure", "--model"]).arg(&model).arg("--tokens").arg(&tokens).arg("--out").arg(out);
        c.args(["--probes", "2", "--batch", "2", "--checkpoint-windows", "4", "--groups", "5"]);
        c
    };
    let reference = tmp.path().join("reference.safetensors");
    assert!(cmd(&reference).status().unwrap().success());
    let out = tmp.path().join("gop.safetensors");
    let partial = measure::run::checkpoint_path(&out);
    let mut child = cmd(&out).spawn().unwrap();
    // Kill once the second group (windows 32..64) is under way.
    let start = std::time::Instant::now();
    loop {
        if let Ok(g) = Gop::load(&partial) {
            if g.meta.group.map(|p| p.index) == Some(1) && g.meta.n_windows >= 8 {
                break;
            }
        }
        assert!(start.elapsed().as_secs() < 120, "no checkpoint of group 1 appeared");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!out.exists(), "the killed run finished before it was killed");
    let o = cmd(&out).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(!partial.exists());
    let (a, b) = (Gop::load(&reference).unwrap(), Gop::load(&out).unwrap());
    assert_eq!((&a.meta, &a.sums), (&b.meta, &b.sums), "resumed total differs");
    for g in 0..5 {
        let (x, y) = (Gop::load(&group_path(&reference, g, 5)).unwrap(), Gop::load(&group_path(&out, g, 5)).unwrap());
        assert_eq!((&x.meta, &x.sums), (&y.meta, &y.sums), "resumed group {g} differs");
    }
}

fn agop(args: &[&str]) -> (Option<i32>, String) {
    let o = Command::new(agop_bin()).args(args).output().unwrap();
    (o.status.code(), String::from_utf8_lossy(&o.stderr).to_string())
}

#[test]
fn bad_groups_input_is_refused_with_exit_2() {
    let tmp = tempfile::tempdir().unwrap();
    let s = |p: PathBuf| p.display().to_string();
    let tokens = s(write(&tmp.path().join("tokens.parquet"), &windows(0, 6, 8)));
    let model = s(fixture_model());
    let gop = |n: &str| s(tmp.path().join(n));
    let measure = |out: &str, extra: &[&str]| {
        let mut a = vec!["measure", "--model", &model, "--tokens", &tokens, "--out", out];
        a.extend_from_slice(extra);
        agop(&a)
    };
    let (code, err) = measure(&gop("a.safetensors"), &["--groups", "0"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--groups must be at least 1"), "{err}");
    let (code, err) = measure(&gop("a.safetensors"), &["--groups", "7"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("more than the 6 windows"), "{err}");
    assert!(!tmp.path().join("a.safetensors").exists());

    // Shards of one measurement, one with groups and one without: refused by correlate and merge.
    let (code, err) = measure(&gop("s0.safetensors"), &["--shard", "0/2", "--groups", "3"]);
    assert_eq!(code, Some(0), "{err}");
    let (code, err) = measure(&gop("s1.safetensors"), &["--shard", "1/2"]);
    assert_eq!(code, Some(0), "{err}");
    let corr = gop("c.parquet");
    let (code, err) = agop(&[
        "correlate",
        "--model",
        &model,
        "--gop",
        &gop("s0.safetensors"),
        "--gop",
        &gop("s1.safetensors"),
        "--out",
        &corr,
    ]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("different --groups") && err.contains("s1.safetensors (1 groups)"), "{err}");
    let (code, err) = agop(&["merge", &gop("s0.safetensors"), &gop("s1.safetensors"), "--out", &gop("m.safetensors")]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("groups 1 vs 3"), "{err}");
    assert!(!tmp.path().join("c.parquet").exists() && !tmp.path().join("m.safetensors").exists());

    // A group file given as a GOP file, and a grouped file whose group file is missing.
    let g1 = s(group_path(&tmp.path().join("s0.safetensors"), 1, 3));
    let (code, err) = agop(&["correlate", "--model", &model, "--gop", &g1, "--out", &corr]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("is the file of group 1"), "{err}");
    std::fs::remove_file(&g1).unwrap();
    let (code, err) = agop(&["correlate", "--model", &model, "--gop", &gop("s0.safetensors"), "--out", &corr]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("a group file is missing"), "{err}");
}

/// Coverage: disjoint sets of windows, each measured with the 1-probe sketch in 10 groups;
/// how often does a set's 95% interval contain the correlation of the exact AGOP over all
/// windows of all sets together?
#[test]
fn intervals_cover_the_all_windows_exact_value() {
    let tmp = tempfile::tempdir().unwrap();
    let (sets, per_set, t) = (12u64, 20u64, 16usize);
    let model = ResolvedModel::local(&fixture_model()).unwrap();
    let all = write(&tmp.path().join("all.parquet"), &windows(0, sets * per_set, t));
    let exact = tmp.path().join("exact.safetensors");
    measure::measure(&model, &all, &exact, &opts(Estimator::Exact, 1, 1, None)).unwrap();
    let truth = f64s(&correlate(&model, std::slice::from_ref(&exact), &tmp.path().join("truth.parquet")), "value");
    let (mut covered, mut cases, mut widths) = (0usize, 0usize, Vec::new());
    let mut by_set = Vec::new();
    for s in 0..sets {
        let tokens = write(&tmp.path().join(format!("set{s}.parquet")), &windows(s * per_set, per_set, t));
        let out = tmp.path().join(format!("set{s}.safetensors"));
        let o = MeasureOptions {
            settings: Settings { seed: s, ..opts(Estimator::Sketch, 1, 10, None).settings },
            ..opts(Estimator::Sketch, 1, 10, None)
        };
        measure::measure(&model, &tokens, &out, &o).unwrap();
        let df = correlate(&model, &[out], &tmp.path().join(format!("set{s}.parquet.out")));
        let (lo, hi) = (f64s(&df, "ci_low"), f64s(&df, "ci_high"));
        let mut c = 0;
        for i in 0..truth.len() {
            let (l, h, v) = (lo[i].unwrap(), hi[i].unwrap(), truth[i].unwrap());
            c += usize::from(l <= v && v <= h);
            widths.push(h - l);
        }
        by_set.push(c);
        covered += c;
        cases += truth.len();
    }
    let rate = covered as f64 / cases as f64;
    let median_width = agop::report::median(widths);
    eprintln!("coverage {covered}/{cases} = {rate:.3} (per set {by_set:?}), median interval width {median_width:.4}");
    assert!(rate >= 0.85, "95% intervals cover the all-windows exact value in only {rate:.3} of cases");
}

/// Measuring again into the same output with fewer groups, or none, removes the group files
/// that no longer belong to it.
#[test]
fn stale_group_files_are_removed() {
    let tmp = tempfile::tempdir().unwrap();
    let tokens = write(&tmp.path().join("tokens.parquet"), &windows(0, 6, 8));
    let model = ResolvedModel::local(&fixture_model()).unwrap();
    let out = tmp.path().join("gop.safetensors");
    let files = || -> Vec<String> {
        let dir = agop::measure::groups::groups_dir(&out);
        let mut v: Vec<String> = std::fs::read_dir(&dir)
            .map(|r| r.map(|e| e.unwrap().file_name().to_string_lossy().to_string()).collect())
            .unwrap_or_default();
        v.sort();
        v
    };
    measure::measure(&model, &tokens, &out, &opts(Estimator::Sketch, 1, 3, None)).unwrap();
    assert_eq!(files(), ["group-0-of-3.safetensors", "group-1-of-3.safetensors", "group-2-of-3.safetensors"]);
    measure::measure(&model, &tokens, &out, &opts(Estimator::Sketch, 1, 2, None)).unwrap();
    assert_eq!(files(), ["group-0-of-2.safetensors", "group-1-of-2.safetensors"]);
    measure::measure(&model, &tokens, &out, &opts(Estimator::Sketch, 1, 1, None)).unwrap();
    assert!(files().is_empty() && !agop::measure::groups::groups_dir(&out).exists());
}
