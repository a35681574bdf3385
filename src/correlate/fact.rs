//! The FACT side (`ansatz` = `fact`): per module and head, the NFM N = W Wᵀ (stored layout,
//! d_in × d_in) against the FACT matrix F = −W G, G = Σ δ hᵀ the weight gradient of the summed
//! loss ([`crate::measure::fact`]; in the nn.Linear view of docs/reference.md §2 this is F = −WᵀG).
//!
//! At a stationary point of L + (λ/2)‖W‖², G = −λWᵀ (stored layout) and F = λN: λ drops out of
//! every correlation. F is not symmetric away from one; N is, so ⟨N, F⟩ = ⟨N, F_s⟩ with
//! F_s = (F + Fᵀ)/2, and the `pearson` and `cosine` rows correlate N with F_s. The part they
//! leave out is reported: the `antisymmetry` row is ‖F_a‖/‖F‖, F_a = (F − Fᵀ)/2 (0 for a
//! symmetric F, 1 for an antisymmetric one). The `w-cosine` row is the cosine between W and −Gᵀ
//! (1 at a stationary point with weight decay). All rows have `power` = 1.
//!
//! Every number is a function of a few scalar moments ([`FactMoments`]), computed from whichever
//! side is smaller: with d_in ≤ d_out, N and F are formed (d_in × d_in); otherwise (mlp.c_proj,
//! d_in = F) from the d_out × d_out products P = WᵀW, Q = G W and R = G Gᵀ:
//! ⟨N, F⟩ = −tr(PQ), ‖N‖² = ‖P‖², ‖F‖² = tr(PR), tr(FF) = tr(QQ). The F × F matrices are never
//! formed. [`fact_moments_dense`] is the plain reference the tests compare with.

use anyhow::Result;
use faer::Mat;
use rayon::prelude::*;

use super::gram::weight;
use super::jackknife::jackknife;
use super::metrics::{Correlation, UNDEFINED_FACT};
use super::spectral::Moments;
use super::sums::RunSums;
use crate::measure::fact::{fact_modules, fact_rows};
use crate::measure::FactSum;
use crate::model::{Module, ModuleWeights};

/// The metrics of a FACT row, in row order.
pub const METRICS: [&str; 4] = ["pearson", "cosine", "antisymmetry", "w-cosine"];

/// The scalar moments of N = W Wᵀ and F = −W G (W stored d_in × d_out, G d_out × d_in).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FactMoments {
    /// d_in.
    pub dim: f64,
    /// ⟨N, F⟩, ‖N‖², ‖F‖², tr(F F) = ⟨F, Fᵀ⟩.
    pub nf: f64,
    pub nn: f64,
    pub ff: f64,
    pub ftf: f64,
    /// sum(N), sum(F).
    pub sn: f64,
    pub sf: f64,
    /// ⟨Wᵀ, −G⟩, ‖W‖², ‖G‖².
    pub wg: f64,
    pub ww: f64,
    pub gg: f64,
}

impl FactMoments {
    /// The NFM against F_s = (F + Fᵀ)/2: ‖F_s‖² = (‖F‖² + tr(FF))/2, sum(F_s) = sum(F).
    fn sym(&self) -> Moments {
        Moments {
            dot: self.nf,
            xx: self.nn,
            yy: 0.5 * (self.ff + self.ftf),
            sx: self.sn,
            sy: self.sf,
            n: self.dim * self.dim,
        }
    }

    /// The values of [`METRICS`]; NaN where undefined (a zero matrix).
    pub fn values(&self) -> [f64; 4] {
        let s = self.sym();
        let asym = (0.5 * (self.ff - self.ftf)).max(0.0);
        [s.pearson(), s.cosine(), (asym / self.ff).sqrt(), self.wg / (self.ww.sqrt() * self.gg.sqrt())]
    }
}

fn dot(a: &Mat<f64>, b: &Mat<f64>) -> f64 {
    (0..a.ncols()).map(|j| (0..a.nrows()).map(|i| a[(i, j)] * b[(i, j)]).sum::<f64>()).sum()
}

/// tr(A B) = Σ A_ij B_ji.
fn trace_prod(a: &Mat<f64>, b: &Mat<f64>) -> f64 {
    (0..a.nrows()).map(|i| (0..a.ncols()).map(|j| a[(i, j)] * b[(j, i)]).sum::<f64>()).sum()
}

fn sum(a: &Mat<f64>) -> f64 {
    (0..a.ncols()).map(|j| (0..a.nrows()).map(|i| a[(i, j)]).sum::<f64>()).sum()
}

/// What the moments need from a module's weight alone, computed once and shared by the total G
/// and every leave-one-group-out G: W (stored, d_in × d_out), its Gram on the smaller side
/// (N = W Wᵀ when d_in ≤ d_out, else P = WᵀW), Wᵀ1, ‖N‖² and ‖W‖².
pub struct WeightSide {
    w: Mat<f64>,
    gram: Mat<f64>,
    wt1: Vec<f64>,
    nn: f64,
    ww: f64,
}

impl WeightSide {
    pub fn new(w: Mat<f64>) -> Self {
        let (din, dout) = (w.nrows(), w.ncols());
        let gram = if din <= dout { &w * w.transpose() } else { w.transpose() * &w };
        let wt1 = (0..dout).map(|j| (0..din).map(|i| w[(i, j)]).sum()).collect();
        let (nn, ww) = (dot(&gram, &gram), dot(&w, &w));
        Self { w, gram, wt1, nn, ww }
    }
}

/// The moments of a module's weight and its gradient `g` (d_out × d_in), from the smaller side
/// (module docs).
pub fn fact_moments(side: &WeightSide, g: &Mat<f64>) -> FactMoments {
    let w = &side.w;
    let (din, dout) = (w.nrows(), w.ncols());
    // Row sums of G (d_out): sum(N) = ‖Wᵀ1‖², sum(F) = −(Wᵀ1)·(G1).
    let g1: Vec<f64> = (0..dout).map(|i| (0..din).map(|j| g[(i, j)]).sum()).collect();
    let sn = side.wt1.iter().map(|x| x * x).sum();
    let sf = -side.wt1.iter().zip(&g1).map(|(a, b)| a * b).sum::<f64>();
    let wg = -trace_prod(w, g);
    let gg = dot(g, g);
    let (nf, ff, ftf) = if din <= dout {
        let f = -(w * g);
        (dot(&side.gram, &f), dot(&f, &f), trace_prod(&f, &f))
    } else {
        let q = g * w;
        let r = g * g.transpose();
        (-trace_prod(&side.gram, &q), trace_prod(&side.gram, &r), trace_prod(&q, &q))
    };
    FactMoments { dim: din as f64, nf, nn: side.nn, ff, ftf, sn, sf, wg, ww: side.ww, gg }
}

/// The plain reference: N, F and F_s formed densely (d_in × d_in), the moments summed entry by
/// entry.
pub fn fact_moments_dense(w: &Mat<f64>, g: &Mat<f64>) -> FactMoments {
    let n = w * w.transpose();
    let f = -(w * g);
    let ft = f.transpose().to_owned();
    let wt = w.transpose().to_owned();
    FactMoments {
        dim: w.nrows() as f64,
        nf: dot(&n, &f),
        nn: dot(&n, &n),
        ff: dot(&f, &f),
        ftf: dot(&f, &ft),
        sn: sum(&n),
        sf: sum(&f),
        wg: -dot(&wt, g),
        ww: dot(w, w),
        gg: dot(g, g),
    }
}

/// Module `m`'s rows of its owner's G as a matrix (d_out × d_in).
pub fn module_gradient(m: &Module, owner: &FactSum) -> Mat<f64> {
    let rows = fact_rows(m);
    let c = owner.cols;
    Mat::from_fn(rows.len(), c, |i, j| owner.values[(rows.start + i) * c + j])
}

/// The modules whose G is (part of) whole module `owner`'s: itself, and for the fused qkv
/// module every head, in table order.
fn owned(table: &[Module], owner: &Module) -> Vec<Module> {
    let mut out = vec![*owner];
    out.extend(table.iter().filter(|m| !m.is_whole() && m.layer == owner.layer && m.owner == owner.short));
    out
}

/// The FACT rows of one module from its values (full) and leave-one-group-out values.
fn rows(m: &Module, full: [f64; 4], loo: &[[f64; 4]]) -> Vec<Correlation> {
    METRICS
        .iter()
        .enumerate()
        .map(|(k, &metric)| {
            let v = full[k];
            let (value, note) = if v.is_finite() { (Some(v), None) } else { (None, Some(UNDEFINED_FACT)) };
            let loo: Vec<f64> = loo.iter().map(|x| x[k]).collect();
            Correlation {
                layer: m.layer as u32,
                module: m.short,
                role: m.role.as_str(),
                head: m.head.map(|h| h as u32),
                dim: m.d_in as u32,
                power: 1.0,
                metric,
                value,
                note,
                ansatz: "fact",
                nfm: "gram",
                interval: value.and_then(|v| jackknife(v, &loo)),
                groups: if loo.len() >= 2 { loo.len() as u32 } else { 1 },
                loo: if loo.len() >= 2 { loo } else { vec![] },
            }
        })
        .collect()
}

/// The FACT rows of every module and head of `model` from the FACT sums of `run`, with
/// jackknife intervals when the run has window groups (each group's G read once per whole
/// module, all its heads computed from it).
pub fn correlate_fact(model: &dyn ModuleWeights, run: &RunSums) -> Result<Vec<Correlation>> {
    let mut out = Vec::new();
    let table = model.modules();
    for owner in fact_modules(&table) {
        let modules = owned(&table, &owner);
        let sides: Vec<WeightSide> =
            modules.iter().map(|m| Ok(WeightSide::new(weight(model, m)?))).collect::<Result<_>>()?;
        let values = |g: &FactSum| -> Vec<[f64; 4]> {
            modules.iter().zip(&sides).map(|(m, s)| fact_moments(s, &module_gradient(m, g)).values()).collect()
        };
        let total = run.fact_total(&owner)?;
        let full = values(&total);
        let groups = run.group_count();
        let loo: Vec<Vec<[f64; 4]>> = if groups < 2 {
            vec![]
        } else {
            (0..groups)
                .into_par_iter()
                .map(|g| {
                    let mut rest = run.fact_group(g, &owner)?;
                    rest.values.iter_mut().zip(&total.values).for_each(|(r, t)| *r = t - *r);
                    Ok(values(&rest))
                })
                .collect::<Result<_>>()?
        };
        for (i, m) in modules.iter().enumerate() {
            let l: Vec<[f64; 4]> = loo.iter().map(|v| v[i]).collect();
            out.extend(rows(m, full[i], &l));
        }
    }
    Ok(out)
}
