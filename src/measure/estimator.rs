//! Output functions (`logits`, `loss`) and estimators (`exact`, `sketch`) of docs/reference.md §3: which
//! seed gradients are sent back from the ln_f output, and how their outer products are summed.
//!
//! With logits = ln_f(x)·wteᵀ, the gradient of Σ_j v_j z_{t,j} at the ln_f output is wteᵀ v_t.
//! - `sketch`/`logits`: v_t ~ N(0, I_V) gives wteᵀ v_t ~ N(0, wteᵀwte); we draw it directly in the
//!   hidden space as L z_t, z_t ~ N(0, I_C), L Lᵀ = wteᵀwte (docs/reference.md §3 allows this).
//! - `exact`/`logits`: Σ_j over the vocabulary = Σ_i over the C columns l_i of L, one backward
//!   per (position t, direction i): T·C passes per window.
//! - `loss`: ∇ℓ_t at the ln_f output is wteᵀ(p_t − e_{y_t}) for t < T−1; `sketch` weights each
//!   position by a Rademacher ε_t, `exact` sends each position back on its own.
//!
//! Probe randomness is a pure function of (seed, global window index, probe index).

use std::sync::Mutex;
use std::time::Instant;

use anyhow::Result;
use candle_core::{DType, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;
use rayon::prelude::*;

use super::gop::Gop;
use super::profile::Profile;
use super::settings::{Estimator, Output, Settings};
use crate::bail_bad;
use crate::math::linalg;
use crate::model::ops::{loss, matmul};
use crate::model::Network;
use crate::tokenize::Window;

/// Runs forward and backward passes of a [`Network`] and adds their outer products to a [`Gop`].
pub struct Measurer<'a, N: Network> {
    model: &'a N,
    settings: Settings,
    /// L (C × C), L Lᵀ = wteᵀwte; columns with zero eigenvalue are zero.
    factor: Tensor,
    /// Indices of the nonzero columns of L (the exact estimator's directions).
    directions: Vec<usize>,
    /// `--profile`'s phase timings (off unless [`Measurer::with_profile`]).
    profile: Profile,
    /// When the first batch finished, for the rate after it ([`Measurer::rate_after_first_batch`]).
    clock: Mutex<Clock>,
}

/// When the first batch finished (the device synchronized) with the tokens measured by then,
/// and the tokens measured in all.
#[derive(Default)]
struct Clock {
    first: Option<(Instant, u64)>,
    tokens: u64,
}

/// The probe RNG for (seed, window, probe): a ChaCha8 stream keyed by all three.
pub fn probe_rng(seed: u64, window: u64, probe: u32) -> ChaCha8Rng {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    key[8..16].copy_from_slice(&window.to_le_bytes());
    key[16..20].copy_from_slice(&probe.to_le_bytes());
    key[24..].copy_from_slice(b"agopprob");
    ChaCha8Rng::from_seed(key)
}

/// Exact estimator: how many seeds are sent back together in one batched pass.
const EXACT_CHUNK: usize = 64;

/// Sketch on a GPU: the most windows (batch × stacked probes) one backward pass takes when
/// probes are stacked ([`Measurer::probes_per_pass`]).
const GPU_STACK_WINDOWS: usize = 16;

impl<'a, N: Network> Measurer<'a, N> {
    pub fn new(model: &'a N, settings: Settings) -> Result<Self> {
        if settings.estimator == Estimator::Sketch && settings.probes == 0 {
            bail_bad!("--probes must be at least 1 for the sketch estimator");
        }
        // E ᵀE and its eigendecomposition computed the same way on any number of threads: every
        // probe is drawn through this factor.
        let wte = model.unembedding().to_dtype(DType::F64)?.to_device(&candle_core::Device::Cpu)?;
        let (v, c) = wte.dims2()?;
        let gram = linalg::gram_deterministic(&wte.flatten_all()?.to_vec1::<f64>()?, v, c);
        let (vals, vecs) = linalg::sym_eigen_sequential(&linalg::from_square(c, &gram, 1.0))?;
        let max = vals.iter().cloned().fold(0.0, f64::max);
        let directions: Vec<usize> = (0..c).filter(|&i| vals[i] > max * 1e-12).collect();
        let l: Vec<f32> = (0..c)
            .flat_map(|r| {
                let vecs = &vecs;
                let vals = &vals;
                (0..c).map(move |i| (vecs[(r, i)] * vals[i].max(0.0).sqrt()) as f32)
            })
            .collect();
        let factor = Tensor::from_vec(l, (c, c), model.device())?;
        let profile = Profile::new(model.device(), false);
        Ok(Self { model, settings, factor, directions, profile, clock: Mutex::default() })
    }

    /// The same measurer timing its phases (`--profile`) when `on`.
    pub fn with_profile(self, on: bool) -> Self {
        Self { profile: Profile::new(self.model.device(), on), ..self }
    }

    /// The phase timings (empty unless made [`Measurer::with_profile`]).
    pub fn profile(&self) -> &Profile {
        &self.profile
    }

    /// 1 / probes for the sketch, 1 for exact: the weight of one backward pass's outer products.
    pub fn scale(&self) -> f64 {
        match self.settings.estimator {
            Estimator::Exact => 1.0,
            Estimator::Sketch => 1.0 / self.settings.probes as f64,
        }
    }

    /// Tokens per second over the batches after the first one, which leave out one-time
    /// start-up (on a GPU: cuBLAS handles, compiling the fused kernels, first allocations); None
    /// until two batches were measured. Read it after the device was synchronized (the sums
    /// copied to the host).
    pub fn rate_after_first_batch(&self) -> Option<f64> {
        let c = self.clock.lock().unwrap_or_else(|e| e.into_inner());
        let (at, first) = c.first?;
        (c.tokens > first).then(|| (c.tokens - first) as f64 / at.elapsed().as_secs_f64().max(1e-9))
    }

    /// Measure a batch of windows (all of the same length) into `gop`: the AGOP sums, and with
    /// `fact` the FACT sums.
    pub fn measure_batch(&self, windows: &[Window], gop: &mut Gop) -> Result<()> {
        self.measure_batch_inner(windows, gop)?;
        let mut c = self.clock.lock().unwrap_or_else(|e| e.into_inner());
        c.tokens += windows.iter().map(|w| w.tokens.len() as u64).sum::<u64>();
        if c.first.is_none() {
            self.model.device().synchronize()?;
            c.first = Some((Instant::now(), c.tokens));
        }
        Ok(())
    }

    fn measure_batch_inner(&self, windows: &[Window], gop: &mut Gop) -> Result<()> {
        match self.settings.estimator {
            Estimator::Sketch => self.sketch(windows, gop),
            Estimator::Exact => {
                windows.iter().try_for_each(|w| self.exact(w, gop))?;
                if self.settings.fact {
                    let toks: Vec<&[u32]> = windows.iter().map(|w| w.tokens.as_slice()).collect();
                    let fwd = self.profile.time("forward", || self.model.forward(&self.ids(&toks)?))?;
                    let dirs =
                        self.profile.time("loss gradient", || self.loss_directions(self.model.hidden(&fwd), &toks))?;
                    self.fact(&fwd, &dirs, gop)?;
                }
                Ok(())
            }
        }
    }

    /// The FACT pass: the gradient of the summed loss L = Σ_t ℓ_t (`dirs`, unweighted) sent
    /// back once, every module's weight gradient Σ δ hᵀ added to the FACT sums.
    fn fact(&self, fwd: &N::Forward, dirs: &Tensor, gop: &mut Gop) -> Result<()> {
        let p = &self.profile;
        p.time("FACT backward", || {
            self.model.backward_weights(fwd, dirs, &mut |g| p.time("FACT products", || gop.add_fact(g)))
        })
    }

    fn ids(&self, windows: &[&[u32]]) -> Result<Tensor> {
        let t = windows[0].len();
        let flat: Vec<u32> = windows.iter().flat_map(|w| w.iter().copied()).collect();
        Ok(Tensor::from_vec(flat, (windows.len(), t), self.model.device())?)
    }

    fn sketch(&self, windows: &[Window], gop: &mut Gop) -> Result<()> {
        let model = self.model;
        let (b, t, c) = (windows.len(), windows[0].tokens.len(), self.factor.dim(0)?);
        let toks: Vec<&[u32]> = windows.iter().map(|w| w.tokens.as_slice()).collect();
        let p = &self.profile;
        let fwd = p.time("forward", || model.forward(&self.ids(&toks)?))?;
        // The loss gradient at the ln_f output: the seed of the loss output's probes and of the
        // FACT pass.
        let loss = if self.settings.output == Output::Loss || self.settings.fact {
            Some(p.time("loss gradient", || self.loss_directions(model.hidden(&fwd), &toks))?)
        } else {
            None
        };
        let loss_dirs = loss.as_ref().filter(|_| self.settings.output == Output::Loss);
        let scale = self.scale();
        let probes: Vec<u32> = (0..self.settings.probes).collect();
        for group in probes.chunks(self.probes_per_pass(b)) {
            // The group's probes stacked along the batch (probe-major: the order in which
            // one pass per probe adds its windows), sent back through the forward's copies.
            let seed = p.time("probes", || -> Result<Tensor> {
                let seeds: Vec<Tensor> =
                    group.iter().map(|&k| self.probe(windows, k, loss_dirs, (b, t, c))).collect::<Result<_>>()?;
                Ok(if seeds.len() == 1 { seeds[0].clone() } else { Tensor::cat(&seeds, 0)? })
            })?;
            let stacked;
            let fwd = if group.len() == 1 {
                &fwd
            } else {
                stacked = p.time("forward", || model.repeat_forward(&fwd, group.len()))?;
                &stacked
            };
            p.time("backward", || model.backward(fwd, &seed, &mut |g| p.time("Grams", || gop.add(g, scale))))?;
        }
        if let (true, Some(dirs)) = (self.settings.fact, &loss) {
            self.fact(&fwd, dirs, gop)?;
        }
        Ok(())
    }

    /// How many probes of a batch of `b` windows go back together, as one pass over the
    /// stacked batch (the backward is linear in its seed, and the forward's activations are
    /// copied, not computed again). Each copy of the forward costs its memory, so the stacked
    /// batch stays small: on a GPU up to [`GPU_STACK_WINDOWS`] windows (one pass of P·B windows
    /// keeps it busier than P passes of B), on the CPU, where every window is one thread's work,
    /// only what fills the threads a small batch leaves idle (batch 1 on 2 threads: 2 probes). A
    /// batch at least that large goes back probe by probe, as before. Either way the windows'
    /// Grams are added in the order one pass per probe adds them: on the CPU the sums are
    /// bitwise the same.
    fn probes_per_pass(&self, b: usize) -> usize {
        let all = self.settings.probes.max(1) as usize;
        let room = if self.model.device().is_cpu() { rayon::current_num_threads() } else { GPU_STACK_WINDOWS };
        (room / b.max(1)).clamp(1, all)
    }

    /// The seed of probe `p` for a batch of (B, T, C): L z with z ~ N(0, I) for the logits,
    /// Rademacher-weighted loss gradients for the loss.
    fn probe(
        &self,
        windows: &[Window],
        p: u32,
        loss_dirs: Option<&Tensor>,
        (b, t, c): (usize, usize, usize),
    ) -> Result<Tensor> {
        let dev = self.model.device();
        Ok(match loss_dirs {
            None => {
                // Each window's draws come from its own stream: drawn in parallel, laid out in order.
                let mut z = vec![0f32; b * t * c];
                z.par_chunks_mut(t * c).zip(windows).for_each(|(zw, w)| {
                    let mut rng = probe_rng(self.settings.seed, w.index, p);
                    zw.iter_mut().for_each(|x| *x = rng.sample::<f32, _>(StandardNormal));
                });
                let z = Tensor::from_vec(z, (b, t, c), dev)?;
                matmul(&z, &self.factor, false, true)?
            }
            Some(dirs) => {
                let mut eps = Vec::with_capacity(b * t);
                for w in windows {
                    let mut rng = probe_rng(self.settings.seed, w.index, p);
                    eps.extend((0..t).map(|_| if rng.random::<bool>() { 1.0f32 } else { -1.0 }));
                }
                dirs.broadcast_mul(&Tensor::from_vec(eps, (b, t, 1), dev)?)?
            }
        })
    }

    /// Every seed of window `w` sent back on its own (as a row of a batch of up to
    /// [`EXACT_CHUNK`] seeds). The window's forward pass is computed once and copied into each
    /// batch ([`Network::repeat_forward`]): the same values as a forward of the repeated window.
    fn exact(&self, w: &Window, gop: &mut Gop) -> Result<()> {
        let model = self.model;
        let p = &self.profile;
        let (t, c) = (w.tokens.len(), self.factor.dim(0)?);
        let fwd = p.time("forward", || model.forward(&self.ids(&[&w.tokens])?))?;
        // (position, seed vector) pairs, each sent back on its own.
        let mut seeds: Vec<(usize, Vec<f32>)> = Vec::new();
        match self.settings.output {
            Output::Logits => {
                let l = self.factor.t()?.to_vec2::<f32>()?; // rows = columns of L
                for pos in 0..t {
                    for &i in &self.directions {
                        seeds.push((pos, l[i].clone()));
                    }
                }
            }
            Output::Loss => {
                let dirs = self.loss_directions(model.hidden(&fwd), &[&w.tokens])?.get(0)?.to_vec2::<f32>()?;
                for (pos, d) in dirs.into_iter().enumerate().take(t.saturating_sub(1)) {
                    seeds.push((pos, d));
                }
            }
        }
        for chunk in seeds.chunks(EXACT_CHUNK) {
            let n = chunk.len();
            let repeated = p.time("forward", || model.repeat_forward(&fwd, n))?;
            let mut s = vec![0f32; n * t * c];
            for (k, (pos, v)) in chunk.iter().enumerate() {
                s[(k * t + pos) * c..(k * t + pos + 1) * c].copy_from_slice(v);
            }
            let seed = Tensor::from_vec(s, (n, t, c), model.device())?;
            p.time("backward", || model.backward(&repeated, &seed, &mut |g| p.time("Grams", || gop.add(g, 1.0))))?;
        }
        Ok(())
    }

    /// ∇ℓ_t at the ln_f output, wteᵀ(softmax(z_t) − e_{y_t}), for t < T−1; zero at t = T−1. (B, T, C).
    /// On the CPU without holding the (B, T, V) logits ([`loss::loss_directions`]).
    fn loss_directions(&self, hidden: &Tensor, toks: &[&[u32]]) -> Result<Tensor> {
        let e = self.model.unembedding();
        let (b, t, c) = hidden.dims3()?;
        let v = e.dim(0)?;
        let targets: Vec<Option<u32>> =
            toks.iter().flat_map(|w| (0..t).map(move |pos| w.get(pos + 1).copied().filter(|_| pos + 1 < t))).collect();
        if !hidden.device().is_cpu() {
            return Ok(loss::loss_directions_plain(hidden, e, &targets)?);
        }
        use candle_core::{CpuStorage, Storage};
        let (hidden, e) = (hidden.contiguous()?, e.contiguous()?);
        let (sh, lh) = hidden.storage_and_layout();
        let (se, le) = e.storage_and_layout();
        let (Some((h0, h1)), Some((e0, e1))) = (lh.contiguous_offsets(), le.contiguous_offsets()) else {
            unreachable!("made contiguous above")
        };
        let dev = hidden.device();
        Ok(match (&*sh, &*se) {
            (Storage::Cpu(CpuStorage::F32(h)), Storage::Cpu(CpuStorage::F32(e))) => {
                Tensor::from_vec(loss::loss_directions(&h[h0..h1], &e[e0..e1], &targets, t, c, v), (b, t, c), dev)?
            }
            (Storage::Cpu(CpuStorage::F64(h)), Storage::Cpu(CpuStorage::F64(e))) => {
                Tensor::from_vec(loss::loss_directions(&h[h0..h1], &e[e0..e1], &targets, t, c, v), (b, t, c), dev)?
            }
            _ => anyhow::bail!("loss directions: hidden {:?} and unembedding {:?} differ", hidden.dtype(), e.dtype()),
        })
    }
}
