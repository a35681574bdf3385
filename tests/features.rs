//! `agop features` and the `subspace-<k>` rows against dense f64 references on the fixture:
//! eigenvectors (up to sign) and principal-angle agreement from faer's own eigendecomposition of
//! the dense matrices, read-out scores recomputed token by token, and a planted feature (an
//! AGOP made rank one along one token's normalised embedding lists that token first).

mod common;

use std::path::{Path, PathBuf};

use agop::correlate::{self, gram, Source};
use agop::features::{self, FeatureOptions};
use agop::fetch::ResolvedModel;
use agop::measure::{self, Estimator, Gop, GopMeta, MeasureOptions, Output, Settings};
use agop::model::{self, all_modules, Gpt2, Module, Role, WeightsKind};
use common::*;
use faer::{Mat, Side};
use polars::prelude::DataFrame;

fn fixture() -> Gpt2 {
    model::load_dir(&fixture_model(), WeightsKind::Pretrained, 0).unwrap()
}

/// An exact logits GOP of the fixture on the golden windows, saved with the fixture's sha.
fn exact_gop(m: &Gpt2, path: &Path) -> Gop {
    let settings = Settings { output: Output::Logits, estimator: Estimator::Exact, probes: 0, seed: 0, fact: false };
    let opts = MeasureOptions::new(WeightsKind::Pretrained, settings, 2);
    let meta = GopMeta {
        estimator: Estimator::Exact,
        output: Output::Logits,
        probes: 0,
        seq_len: 8,
        ..GopMeta::for_config(m.cfg.clone().into())
    };
    let mut gop = measure::measure_model(m, &golden_windows(), Gop::zeros(meta), &opts, None).unwrap();
    gop.meta.model_sha256 = ResolvedModel::local(&fixture_model()).unwrap().weights_sha256().unwrap().to_string();
    gop.save(path).unwrap();
    gop
}

/// Eigenvalues (descending) and eigenvectors of a dense symmetric matrix, straight from faer.
fn dense_eigen(a: &Mat<f64>) -> (Vec<f64>, Mat<f64>) {
    let evd = a.self_adjoint_eigen(Side::Lower).unwrap();
    let n = a.nrows();
    let vals: Vec<f64> = evd.S().column_vector().iter().rev().copied().collect();
    let u = evd.U();
    (vals, Mat::from_fn(n, n, |i, j| u[(i, n - 1 - j)]))
}

/// tr(P_U P_V) / k with P the orthogonal projections onto the top-k eigenvectors.
fn projection_agreement(u: &Mat<f64>, v: &Mat<f64>, k: usize) -> f64 {
    let pu = u.subcols(0, k) * u.subcols(0, k).transpose();
    let pv = v.subcols(0, k) * v.subcols(0, k).transpose();
    let prod = &pu * &pv;
    (0..prod.nrows()).map(|i| prod[(i, i)]).sum::<f64>() / k as f64
}

fn dense_nfm_agop(m: &Gpt2, gop: &Gop, md: &Module) -> (Mat<f64>, Mat<f64>) {
    let w = gram::weight(m, md).unwrap();
    let agop = gram::agop_mean(gop.get(md).unwrap(), gop.meta.n_tokens, md, &w).dense();
    (gram::nfm(&w), agop)
}

#[test]
fn subspace_rows_equal_principal_angles_of_the_dense_matrices() {
    let tmp = tempfile::tempdir().unwrap();
    let m = fixture();
    let gop = exact_gop(&m, &tmp.path().join("g.safetensors"));
    let mut checked = 0;
    for md in all_modules(&m.cfg) {
        let rows = correlate::correlate_module(&m, &md, gop.get(&md).unwrap(), gop.meta.n_tokens, &[1.0]).unwrap();
        let (x, a) = dense_nfm_agop(&m, &gop, &md);
        let ((xv, xu), (av, au)) = (dense_eigen(&x), dense_eigen(&a));
        let rank = md.d_in.min(md.d_out);
        let subspace: Vec<_> = rows.iter().filter(|r| r.metric.starts_with("subspace-")).collect();
        let want_ks: Vec<usize> = [1, 4, 16, 64].into_iter().filter(|&k| k < rank).collect();
        assert_eq!(subspace.len(), want_ks.len(), "{}: subspace rows", md.name());
        for (r, k) in subspace.iter().zip(want_ks) {
            assert_eq!(r.metric, format!("subspace-{k}"));
            assert_eq!(r.power, 1.0);
            // Only where both top-k spaces are well defined (a gap after the k-th eigenvalue).
            let gap = |v: &[f64]| (v[k - 1] - v[k]) / v[0];
            if gap(&xv) < 1e-6 || gap(&av) < 1e-6 {
                continue;
            }
            let want = projection_agreement(&xu, &au, k);
            let got = r.value.unwrap();
            assert!((got - want).abs() < 1e-9, "{} k={k}: {got} vs dense {want}", md.name());
            assert!((0.0..=1.0 + 1e-12).contains(&got));
            checked += 1;
        }
    }
    assert!(checked >= 20, "only {checked} subspace rows checked");
}

#[test]
fn eigenvectors_equal_the_dense_ones_up_to_sign() {
    let tmp = tempfile::tempdir().unwrap();
    let m = fixture();
    let path = tmp.path().join("g.safetensors");
    let gop = exact_gop(&m, &path);
    let run = &correlate::RunSums::open_all(std::slice::from_ref(&path)).unwrap()[0];
    for md in all_modules(&m.cfg) {
        let [agop, nfm] = features::module_eigen(&m, run, &md, 4).unwrap();
        let (x, a) = dense_nfm_agop(&m, &gop, &md);
        for (fast, dense) in [(agop, dense_eigen(&a)), (nfm, dense_eigen(&x))] {
            let (vals, u) = dense;
            for (i, l) in fast.values.iter().take(8).enumerate() {
                assert!((l - vals[i]).abs() <= 1e-9 * vals[0], "{}: eigenvalue {i}: {l} vs {}", md.name(), vals[i]);
            }
            for j in 0..fast.vectors.ncols() {
                let separated =
                    (j == 0 || vals[j - 1] - vals[j] > 1e-6 * vals[0]) && vals[j] - vals[j + 1] > 1e-6 * vals[0];
                if !separated {
                    continue;
                }
                let dot: f64 = (0..u.nrows()).map(|i| u[(i, j)] * fast.vectors[(i, j)]).sum();
                assert!((dot.abs() - 1.0).abs() < 1e-8, "{} vector {j}: |cos| = {}", md.name(), dot.abs());
            }
        }
    }
}

/// features.parquet's rows as structs.
#[derive(Debug, Clone)]
struct Row {
    layer: u32,
    module: String,
    role: String,
    head: Option<u32>,
    source: String,
    rank: u32,
    share: f64,
    effective_rank: f64,
    readout: Option<String>,
    sign: Option<String>,
    position: Option<u32>,
    token: Option<u32>,
    score: Option<f64>,
}

fn rows_of(df: &DataFrame) -> Vec<Row> {
    let u = |n: &str| df.column(n).unwrap().u32().unwrap().iter().collect::<Vec<_>>();
    let f = |n: &str| df.column(n).unwrap().f64().unwrap().iter().collect::<Vec<_>>();
    let s = |n: &str| df.column(n).unwrap().str().unwrap().iter().map(|x| x.map(String::from)).collect::<Vec<_>>();
    let (layer, head, rank, position, token) = (u("layer"), u("head"), u("rank"), u("position"), u("token"));
    let (share, eff, score) = (f("share"), f("effective_rank"), f("score"));
    let (module, role, source, readout, sign) = (s("module"), s("role"), s("source"), s("readout"), s("sign"));
    (0..df.height())
        .map(|i| Row {
            layer: layer[i].unwrap(),
            module: module[i].clone().unwrap(),
            role: role[i].clone().unwrap(),
            head: head[i],
            source: source[i].clone().unwrap(),
            rank: rank[i].unwrap(),
            share: share[i].unwrap(),
            effective_rank: eff[i].unwrap(),
            readout: readout[i].clone(),
            sign: sign[i].clone(),
            position: position[i],
            token: token[i],
            score: score[i],
        })
        .collect()
}

fn run_features(gops: &[PathBuf], out: &Path) -> DataFrame {
    let model = ResolvedModel::local(&fixture_model()).unwrap();
    let sources: Vec<Source> =
        gops.iter().map(|g| Source { model: model.clone(), gop: g.clone(), step: None }).collect();
    features::features_sources(&sources, out, &FeatureOptions::default(), &correlate::RunContext::default()).unwrap()
}

/// LN(x) by hand.
fn layer_norm(x: &[f64], g: &[f64], b: &[f64], eps: f64) -> Vec<f64> {
    let n = x.len() as f64;
    let mean = x.iter().sum::<f64>() / n;
    let var = x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
    x.iter().zip(g).zip(b).map(|((v, g), b)| (v - mean) / (var + eps).sqrt() * g + b).collect()
}

fn vec1(t: &candle_core::Tensor) -> Vec<f64> {
    t.to_dtype(candle_core::DType::F64).unwrap().to_vec1().unwrap()
}

#[test]
fn embedding_readout_scores_are_cosines_with_the_normalised_embeddings() {
    let tmp = tempfile::tempdir().unwrap();
    let m = fixture();
    let path = tmp.path().join("g.safetensors");
    let gop = exact_gop(&m, &path);
    let df = run_features(std::slice::from_ref(&path), &tmp.path().join("features.parquet"));
    let wte = agop::math::linalg::from_tensor(&m.params.wte).unwrap();
    let eps = m.cfg.layer_norm_epsilon;
    for md in all_modules(&m.cfg).iter().filter(|md| matches!(md.role, Role::Qkv | Role::MlpIn)) {
        let ln = if md.role == Role::Qkv { &m.params.blocks[md.layer].ln_1 } else { &m.params.blocks[md.layer].ln_2 };
        let (g, b) = (vec1(&ln.weight), vec1(&ln.bias));
        let (_, a) = dense_nfm_agop(&m, &gop, md);
        let (_, u) = dense_eigen(&a);
        // Every token's cosine with the leading AGOP eigenvector, by hand.
        let cos: Vec<f64> = (0..wte.nrows())
            .map(|t| {
                let h = layer_norm(&(0..wte.ncols()).map(|j| wte[(t, j)]).collect::<Vec<_>>(), &g, &b, eps);
                let dot: f64 = h.iter().enumerate().map(|(j, x)| x * u[(j, 0)]).sum();
                dot / h.iter().map(|x| x * x).sum::<f64>().sqrt()
            })
            .collect();
        // Oriented so that the largest |cosine| is positive.
        let best = cos.iter().fold(0.0f64, |a, &x| if x.abs() > a.abs() { x } else { a });
        let mut want: Vec<(u32, f64)> =
            cos.iter().map(|c| c * best.signum()).enumerate().map(|(t, c)| (t as u32, c)).collect();
        want.sort_by(|x, y| y.1.total_cmp(&x.1));
        let mut got: Vec<Row> = rows_of(&df)
            .into_iter()
            .filter(|r| {
                r.layer == md.layer as u32
                    && r.module == md.short
                    && r.source == "agop"
                    && r.rank == 1
                    && r.readout.as_deref() == Some("embedding")
            })
            .collect();
        got.sort_by_key(|r| (r.sign.clone(), r.position));
        let tokens: Vec<u32> = got.iter().map(|r| r.token.unwrap()).collect();
        let scores: Vec<f64> = got.iter().map(|r| r.score.unwrap()).collect();
        let signs: Vec<&str> = got.iter().map(|r| r.sign.as_deref().unwrap()).collect();
        assert_eq!(tokens.len(), 10, "{}: 5 tokens per sign", md.name());
        // The logit lens of the same (oriented) vector: g = γ_f ⊙ (u ⊘ γ), unit length, scored
        // against every row of the tied unembedding.
        let gf = vec1(&m.params.ln_f.weight);
        let mut g: Vec<f64> = (0..u.nrows()).map(|j| best.signum() * u[(j, 0)] / g[j] * gf[j]).collect();
        let len = g.iter().map(|x| x * x).sum::<f64>().sqrt();
        g.iter_mut().for_each(|x| *x /= len);
        let mut lens: Vec<(u32, f64)> =
            (0..wte.nrows()).map(|t| (t as u32, (0..wte.ncols()).map(|j| wte[(t, j)] * g[j]).sum::<f64>())).collect();
        lens.sort_by(|x, y| y.1.total_cmp(&x.1));
        let mut lens_rows: Vec<Row> = rows_of(&df)
            .into_iter()
            .filter(|r| {
                r.layer == md.layer as u32
                    && r.module == md.short
                    && r.source == "agop"
                    && r.rank == 1
                    && r.readout.as_deref() == Some("logit-lens")
            })
            .collect();
        lens_rows.sort_by_key(|r| (r.sign.clone(), r.position));
        assert_eq!(lens_rows.len(), 10);
        for (i, r) in lens_rows.iter().enumerate() {
            let (wt, ws) = if i < 5 { lens[i] } else { lens[lens.len() - 1 - (i - 5)] };
            assert_eq!(r.token, Some(wt), "{} logit lens #{i}", md.name());
            assert!((r.score.unwrap() - ws).abs() < 1e-9, "{} logit lens #{i}: {:?} vs {ws}", md.name(), r.score);
        }
        for (i, ((t, s), sign)) in tokens.iter().zip(&scores).zip(&signs).enumerate() {
            let (wt, ws) = if *sign == "+" { want[i] } else { want[want.len() - 1 - (i - 5)] };
            assert_eq!(*t, wt, "{} {sign} #{}: token", md.name(), i % 5 + 1);
            assert!((s - ws).abs() < 1e-9, "{}: score {s} vs {ws}", md.name());
        }
    }
}

#[test]
fn a_planted_rank_one_agop_lists_its_token_first() {
    let tmp = tempfile::tempdir().unwrap();
    let m = fixture();
    let path = tmp.path().join("g.safetensors");
    let mut gop = exact_gop(&m, &path);
    let wte = agop::math::linalg::from_tensor(&m.params.wte).unwrap();
    let eps = m.cfg.layer_norm_epsilon;
    // mlp.c_fc of layer 1 (operand side stored, 24 × 24): AGOP = n · h hᵀ with h = LN_2(e_t*).
    let target = 37u32;
    let md = all_modules(&m.cfg).into_iter().find(|md| md.layer == 1 && md.role == Role::MlpIn).unwrap();
    let ln = &m.params.blocks[1].ln_2;
    let e: Vec<f64> = (0..wte.ncols()).map(|j| wte[(target as usize, j)]).collect();
    let h = layer_norm(&e, &vec1(&ln.weight), &vec1(&ln.bias), eps);
    let n = gop.meta.n_tokens as f64;
    let name = md.gop_tensor();
    let d = h.len();
    gop.sums.insert(name, (d, (0..d * d).map(|k| n * h[k / d] * h[k % d]).collect()));
    gop.save(&path).unwrap();
    let df = run_features(std::slice::from_ref(&path), &tmp.path().join("features.parquet"));
    let first = rows_of(&df)
        .into_iter()
        .find(|r| {
            r.layer == 1
                && r.role == "mlp_in"
                && r.source == "agop"
                && r.rank == 1
                && r.readout.as_deref() == Some("embedding")
                && r.sign.as_deref() == Some("+")
                && r.position == Some(1)
        })
        .unwrap();
    assert_eq!(first.token, Some(target));
    let score = first.score.unwrap();
    assert!((score - 1.0).abs() < 1e-9, "the planted direction is the token's own: cosine {score}");
    let share = first.share;
    assert!((share - 1.0).abs() < 1e-9, "a rank-one AGOP has all its trace in rank 1: {share}");
    let eff = first.effective_rank;
    assert!((eff - 1.0).abs() < 1e-9, "participation ratio of a rank-one matrix: {eff}");
}

/// The spectrum rows: shares sum to at most 1 over the listed ranks, descend, and the effective
/// rank is the participation ratio of the eigenvalues (all of them listed for the fixture).
#[test]
fn spectrum_rows_are_the_dense_spectrum() {
    let tmp = tempfile::tempdir().unwrap();
    let m = fixture();
    let path = tmp.path().join("g.safetensors");
    let gop = exact_gop(&m, &path);
    let df = run_features(std::slice::from_ref(&path), &tmp.path().join("features.parquet"));
    let spec: Vec<Row> = rows_of(&df).into_iter().filter(|r| r.readout.is_none()).collect();
    for md in all_modules(&m.cfg) {
        let (x, a) = dense_nfm_agop(&m, &gop, &md);
        for (source, mat) in [("agop", a), ("nfm", x)] {
            let (vals, _) = dense_eigen(&mat);
            let vals: Vec<f64> = vals.into_iter().map(|v| v.max(0.0)).collect();
            let total: f64 = vals.iter().sum();
            let pr = total * total / vals.iter().map(|v| v * v).sum::<f64>();
            let mut rows: Vec<&Row> = spec
                .iter()
                .filter(|r| {
                    r.layer == md.layer as u32
                        && r.module == md.short
                        && r.source == source
                        && r.head == md.head.map(|h| h as u32)
                })
                .collect();
            rows.sort_by_key(|r| r.rank);
            // Every nonzero eigenvalue (up to 64) is listed; zeros may be.
            let nonzero = vals.iter().filter(|&&v| v > vals[0] * 1e-13).count();
            assert!(
                rows.len() >= nonzero.min(64) && rows.len() <= md.d_in.min(64),
                "{} {source}: {} spectrum rows",
                md.name(),
                rows.len()
            );
            for (i, r) in rows.iter().enumerate() {
                let want = vals[i] / total;
                assert!(
                    (r.share - want).abs() < 1e-9,
                    "{} {source} rank {}: share {} vs {want}",
                    md.name(),
                    i + 1,
                    r.share
                );
            }
            let eff = rows[0].effective_rank;
            assert!((eff - pr).abs() < 1e-6 * pr, "{} {source}: effective rank {eff} vs {pr}", md.name());
        }
    }
}

/// A two-checkpoint "series" (the fixture's exact GOP at step 0, the same with layer 1's MLP-input
/// AGOP planted rank one at step 10): feature-overlap.parquet's k = 1 row of that module is the
/// squared cosine between the two leading eigenvectors, computed densely; every other module,
/// unchanged, overlaps 1.
#[test]
fn overlap_between_checkpoints_is_the_squared_cosine_of_their_eigenvectors() {
    let tmp = tempfile::tempdir().unwrap();
    let m = fixture();
    let (p0, p1) = (tmp.path().join("g0.safetensors"), tmp.path().join("g1.safetensors"));
    let gop = exact_gop(&m, &p0);
    let md = all_modules(&m.cfg).into_iter().find(|md| md.layer == 1 && md.role == Role::MlpIn).unwrap();
    let wte = agop::math::linalg::from_tensor(&m.params.wte).unwrap();
    let ln = &m.params.blocks[1].ln_2;
    let e: Vec<f64> = (0..wte.ncols()).map(|j| wte[(5, j)]).collect();
    let h = layer_norm(&e, &vec1(&ln.weight), &vec1(&ln.bias), m.cfg.layer_norm_epsilon);
    let d = h.len();
    let mut planted = gop.clone();
    planted.sums.insert(md.gop_tensor(), (d, (0..d * d).map(|k| h[k / d] * h[k % d]).collect()));
    planted.save(&p1).unwrap();
    let model = ResolvedModel::local(&fixture_model()).unwrap();
    let sources =
        vec![Source { model: model.clone(), gop: p0, step: Some(0) }, Source { model, gop: p1, step: Some(10) }];
    let out = tmp.path().join("features.parquet");
    features::features_sources(&sources, &out, &FeatureOptions::default(), &correlate::RunContext::default()).unwrap();
    let o = agop::util::parquet::read_parquet(&features::overlap_path(&out)).unwrap();
    let (_, a) = dense_nfm_agop(&m, &gop, &md);
    let (_, u) = dense_eigen(&a);
    let hn = h.iter().map(|x| x * x).sum::<f64>().sqrt();
    let cos: f64 = (0..d).map(|j| u[(j, 0)] * h[j] / hn).sum();
    let col_u = |n: &str| o.column(n).unwrap().u32().unwrap().iter().collect::<Vec<_>>();
    let col_s =
        |n: &str| o.column(n).unwrap().str().unwrap().iter().map(|x| x.unwrap().to_string()).collect::<Vec<_>>();
    let (layer, k, head) = (col_u("layer"), col_u("k"), col_u("head"));
    let (module, source) = (col_s("module"), col_s("source"));
    let value: Vec<Option<f64>> = o.column("value").unwrap().f64().unwrap().iter().collect();
    let steps: Vec<Option<u64>> = o.column("step_to").unwrap().u64().unwrap().iter().collect();
    assert!(steps.iter().all(|s| *s == Some(10)));
    let mut found = false;
    for i in 0..o.height() {
        let planted_row = layer[i] == Some(1) && module[i] == md.short && head[i].is_none();
        if planted_row && source[i] == "agop" && k[i] == Some(1) {
            let v = value[i].unwrap();
            assert!((v - cos * cos).abs() < 1e-9, "overlap {v} vs squared cosine {}", cos * cos);
            found = true;
        } else if !(planted_row && source[i] == "agop") {
            // Unchanged matrices: the same eigenspaces (where they are determined).
            if let Some(v) = value[i] {
                assert!((0.0..=1.0 + 1e-9).contains(&v));
            }
        }
    }
    assert!(found, "no overlap row for the planted module");
    // The NFM is the same weights at both steps: its overlap is 1 for every module and k.
    for i in 0..o.height() {
        if source[i] == "nfm" {
            let v = value[i].unwrap();
            assert!((v - 1.0).abs() < 1e-9, "NFM overlap {v} at row {i}");
        }
    }
}
