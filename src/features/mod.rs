//! `agop features`: what the AGOP says each module attends to (docs/features.md). For every
//! module (and head) of a finished run, from the files the run already has (weights and GOP
//! sums; nothing is re-measured): the spectra of its AGOP and its NFM (eigenvalue, share of the
//! trace, effective rank), their leading eigenvectors read out as tokens ([`readout`]), and for a
//! checkpoint series how much each top-k eigenspace moves from one checkpoint to the next.
//! The eigenpairs come from the same spectral code correlate uses
//! ([`crate::correlate::spectral`]).

pub mod readout;
pub mod table;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use faer::Mat;
use polars::prelude::DataFrame;

use self::readout::{logit_directions, normalized_embeddings, top_tokens, NormF64};
use self::table::{FeatureRow, OverlapRow, RunFeatures};
use crate::correlate::gram::weight;
use crate::correlate::spectral::{nfm_moments, subspace_agreement, subspace_ks, Eigen};
use crate::correlate::{self, RunContext, RunInfo, RunSums, Source};
use crate::math::linalg;
use crate::model::{Module, ModuleWeights, Role, WeightsKind};
use crate::tokenize::bpe::Gpt2Tokenizer;
use crate::util::parquet::{read_parquet, write_parquet};

/// What `agop features` lists.
#[derive(Debug, Clone)]
pub struct FeatureOptions {
    /// Eigenvectors read out as tokens, per matrix (ranks 1..=top).
    pub top: usize,
    /// Tokens per read-out and sign.
    pub tokens: usize,
    /// Spectrum rows (eigenvalue and share) per matrix (ranks 1..=spectrum).
    pub spectrum: usize,
    /// Use weights other than those the GOP files were measured on (as `correlate --force`).
    pub force: bool,
    /// Features tables of checkpoints handled earlier (a series whose weights were deleted once
    /// measured), appended to the output; with any, no overlap table is written.
    pub extra_tables: Vec<PathBuf>,
}

impl Default for FeatureOptions {
    fn default() -> Self {
        Self { top: 4, tokens: 5, spectrum: 64, force: false, extra_tables: vec![] }
    }
}

/// Where the overlap table of `out` goes: `feature-overlap.parquet` beside a
/// `features.parquet`, else `<stem>.overlap.parquet`.
pub fn overlap_path(out: &Path) -> PathBuf {
    if out.file_name().is_some_and(|n| n == "features.parquet") {
        out.with_file_name("feature-overlap.parquet")
    } else {
        out.with_extension("overlap.parquet")
    }
}

/// The leading eigenvectors of one module's AGOP and NFM, kept for the overlap between
/// checkpoints.
type TopVectors = HashMap<(String, &'static str), Mat<f64>>;

/// `agop features`: features.parquet for every run of `sources` (and feature-overlap.parquet
/// for a series of at least two checkpoints).
pub fn features_sources(sources: &[Source], out: &Path, opts: &FeatureOptions, ctx: &RunContext) -> Result<DataFrame> {
    let mut inputs: Vec<PathBuf> = sources.iter().map(|s| s.gop.clone()).collect();
    inputs.extend(sources.iter().map(|s| crate::measure::groups::groups_dir(&s.gop)));
    for s in sources {
        inputs.extend(s.model.protected_files());
    }
    crate::util::fs::check_output(out, "--out", &inputs)?;
    crate::util::fs::check_output(&overlap_path(out), "--out (its overlap table)", &inputs)?;
    if opts.top == 0 || opts.tokens == 0 {
        crate::bail_bad!("features: --top and --tokens must be at least 1");
    }
    let runs = correlate::open_runs(sources)?;
    let mut tables: Vec<RunFeatures> = Vec::new();
    // Pretrained checkpoints with a step, for the overlap: (step, top vectors).
    let mut series: Vec<(u64, TopVectors)> = Vec::new();
    let mut names = String::new();
    for run in &runs {
        let source = sources.iter().find(|s| s.gop == run.paths[0]).expect("every run comes from a source");
        let files = run.paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ");
        if run.meta.n_tokens == 0 {
            crate::bail_bad!("{files}: holds no measured windows; there are no features to read");
        }
        let model = correlate::model_for_gop(&source.model, &run.meta, opts.force)
            .map_err(|e| e.context(format!("with {files}")))?;
        let tokenizer = Gpt2Tokenizer::from_dir(&source.model.dir).ok();
        let (rows, vectors) =
            run_features(&model, run, tokenizer.as_ref(), opts).with_context(|| format!("features of {files}"))?;
        names = run.meta.model.clone();
        if let (WeightsKind::Pretrained, Some(step)) = (run.meta.weights, source.step) {
            series.push((step, vectors));
        }
        let info = RunInfo::new(&run.meta, &ctx.pipeline, &ctx.corpus, source.step);
        tables.push((info, rows));
    }
    let mut df = table::features_frame(&tables)?;
    for extra in &opts.extra_tables {
        let more = read_parquet(extra)?;
        df.vstack_mut(&more)
            .map_err(|e| crate::bad!("{}: not a features table like this one: {e}", extra.display()))?;
    }
    let meta = [
        ("agop_version", env!("CARGO_PKG_VERSION").to_string()),
        ("pipeline", ctx.text.clone()),
        ("inputs", ctx.inputs.clone()),
    ];
    write_parquet(out, &mut df, &meta)?;
    let opath = overlap_path(out);
    series.sort_by_key(|(s, _)| *s);
    if series.len() >= 2 && opts.extra_tables.is_empty() {
        let modules = runs[0].meta.config.modules();
        let rows = overlap_rows(&modules, &series);
        write_parquet(&opath, &mut table::overlap_frame(&names, &rows)?, &meta)?;
    } else if opath.is_file() {
        // An overlap table from an earlier run would no longer describe these features.
        std::fs::remove_file(&opath)?;
    }
    Ok(df)
}

/// Consecutive checkpoints' top-k agreement for every module, source and k of the
/// `subspace-<k>` rows.
fn overlap_rows(modules: &[Module], series: &[(u64, TopVectors)]) -> Vec<OverlapRow> {
    let mut out = Vec::new();
    for pair in series.windows(2) {
        let ((s0, a), (s1, b)) = (&pair[0], &pair[1]);
        for m in modules {
            for source in ["agop", "nfm"] {
                let key = (m.name(), source);
                let (Some(u), Some(v)) = (a.get(&key), b.get(&key)) else { continue };
                for (k, _) in subspace_ks(m.d_in, m.d_out) {
                    let value = subspace_agreement(u, v, k);
                    out.push(OverlapRow {
                        layer: m.layer as u32,
                        module: m.short,
                        role: m.role.as_str(),
                        head: m.head.map(|h| h as u32),
                        source,
                        k: k as u32,
                        step_from: *s0,
                        step_to: *s1,
                        value: value.is_finite().then_some(value),
                    });
                }
            }
        }
    }
    out
}

/// Whether two modules read the same LayerNorm output (their read-outs share one table).
fn norm_key(m: &Module) -> Option<(usize, bool)> {
    match m.role {
        Role::Qkv | Role::Q | Role::K | Role::V => Some((m.layer, false)),
        Role::MlpIn => Some((m.layer, true)),
        Role::AttnOut | Role::MlpOut => None,
    }
}

/// The eigenpairs of one module's mean AGOP (from the run's sums) and NFM, `top` vectors each.
pub fn module_eigen(model: &dyn ModuleWeights, run: &RunSums, m: &Module, top: usize) -> Result<[Eigen; 2]> {
    let (d, sum, n) = run.total(m)?;
    let w = weight(model, m)?;
    let stored = linalg::from_square(d, &sum, 1.0 / n.max(1) as f64);
    let (_, agop) =
        nfm_moments(&w, &[], &stored, m.side(), &[], top).with_context(|| format!("AGOP of {}", m.name()))?;
    Ok([agop, Eigen::of_nfm(&w, top)?])
}

/// Flip each column of `u` (and of its embedding scores) so that the token with the largest
/// |score| scores positive; without scores, so that the largest |component| is positive.
fn orient(u: &mut Mat<f64>, mut scores: Option<&mut Mat<f64>>) {
    let largest = |m: &Mat<f64>, j: usize| {
        (0..m.nrows()).map(|i| m[(i, j)]).fold(0.0f64, |best, x| if x.abs() > best.abs() { x } else { best })
    };
    for j in 0..u.ncols() {
        let flip = match &scores {
            Some(s) => largest(s, j) < 0.0,
            None => largest(u, j) < 0.0,
        };
        if flip {
            u.col_mut(j).iter_mut().for_each(|x| *x = -*x);
            if let Some(s) = scores.as_mut() {
                s.col_mut(j).iter_mut().for_each(|x| *x = -*x);
            }
        }
    }
}

/// The rows of one run and the top vectors of every (module, source).
fn run_features(
    model: &dyn ModuleWeights,
    run: &RunSums,
    tokenizer: Option<&Gpt2Tokenizer>,
    opts: &FeatureOptions,
) -> Result<(Vec<FeatureRow>, TopVectors)> {
    let ts = model.token_space();
    let embedding = linalg::from_tensor(ts.embedding)?;
    let unembedding = linalg::from_tensor(ts.unembedding)?;
    let final_gain = NormF64::new(&ts.final_norm)?.gain;
    let text = |t: u32| tokenizer.and_then(|tk| tk.tokenizer.decode(&[t], false).ok());
    let modules = model.modules();
    let n_layer = modules.iter().map(|m| m.layer + 1).max().unwrap_or(0);
    let mut rows = Vec::new();
    let mut vectors = TopVectors::new();
    for layer in 0..n_layer {
        let in_layer: Vec<&Module> = modules.iter().filter(|m| m.layer == layer).collect();
        // Eigenpairs of the layer's modules; the subspace sizes need up to 64 vectors.
        let want = |m: &Module| opts.top.max(subspace_ks(m.d_in, m.d_out).last().map_or(0, |&(k, _)| k));
        let eigens: Vec<[Eigen; 2]> =
            in_layer.iter().map(|m| module_eigen(model, run, m, want(m))).collect::<Result<_>>()?;
        // Read-out tables, one LayerNorm at a time.
        let mut keys: Vec<Option<(usize, bool)>> = Vec::new();
        for k in in_layer.iter().map(|m| norm_key(m)) {
            if !keys.contains(&k) {
                keys.push(k);
            }
        }
        for key in keys {
            let members: Vec<usize> = (0..in_layer.len()).filter(|&i| norm_key(in_layer[i]) == key).collect();
            let norm = match key {
                Some(_) => Some(NormF64::new(&model.input_norm(in_layer[members[0]]).expect("a norm key has a norm"))?),
                None => None,
            };
            let h = norm.as_ref().map(|n| normalized_embeddings(&embedding, n));
            // One product per LayerNorm for all its modules' vectors: the columns of (member,
            // source) in order, `top` (or fewer) each.
            let ks: Vec<[usize; 2]> =
                members.iter().map(|&i| [0, 1].map(|s| opts.top.min(eigens[i][s].vectors.ncols()))).collect();
            let scores = match (&h, &norm) {
                (Some(h), Some(norm)) => {
                    let n: usize = ks.iter().flatten().sum();
                    let mut u = Mat::zeros(h.ncols(), n);
                    let mut c = 0;
                    for (j, &i) in members.iter().enumerate() {
                        for s in 0..2 {
                            for r in 0..ks[j][s] {
                                u.col_mut(c).copy_from(eigens[i][s].vectors.col(r));
                                c += 1;
                            }
                        }
                    }
                    let mut emb = h * &u; // V × n cosines
                    orient(&mut u, Some(&mut emb));
                    let logit = &unembedding * logit_directions(&u, norm, &final_gain); // V × n
                    Some((emb, logit))
                }
                _ => None,
            };
            let mut offset = 0;
            for (j, &i) in members.iter().enumerate() {
                let m = in_layer[i];
                for (source, eig) in ["agop", "nfm"].into_iter().zip(&eigens[i]) {
                    let total: f64 = eig.values.iter().sum();
                    let eff = eig.effective_rank();
                    let row = |rank: usize| FeatureRow {
                        layer: m.layer as u32,
                        module: m.short,
                        role: m.role.as_str(),
                        head: m.head.map(|h| h as u32),
                        dim: m.d_in as u32,
                        source,
                        rank: rank as u32 + 1,
                        eigenvalue: eig.values[rank],
                        share: eig.values[rank] / total,
                        effective_rank: eff,
                        readout: None,
                        sign: None,
                        position: None,
                        token: None,
                        text: None,
                        score: None,
                    };
                    for r in 0..opts.spectrum.min(eig.values.len()) {
                        rows.push(row(r));
                    }
                    vectors.insert((m.name(), source), eig.vectors.clone());
                    let Some((emb, logit)) = &scores else { continue };
                    let k = ks[j][if source == "agop" { 0 } else { 1 }];
                    let cols = offset..offset + k;
                    offset += k;
                    for (readout, scores) in [("embedding", emb), ("logit-lens", logit)] {
                        for (r, c) in cols.clone().enumerate() {
                            let col: Vec<f64> = scores.col(c).iter().copied().collect();
                            let neg: Vec<f64> = col.iter().map(|x| -x).collect();
                            for (sign, list, s) in [("+", &col, 1.0), ("-", &neg, -1.0)] {
                                for (pos, (tok, score)) in top_tokens(list, opts.tokens).into_iter().enumerate() {
                                    rows.push(FeatureRow {
                                        readout: Some(readout),
                                        sign: Some(sign),
                                        position: Some(pos as u32 + 1),
                                        token: Some(tok),
                                        text: text(tok),
                                        score: Some(s * score),
                                        ..row(r)
                                    });
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    Ok((rows, vectors))
}
