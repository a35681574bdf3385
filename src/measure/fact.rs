//! The FACT sums (Features at Convergence Theorem; Boix-Adsera, Mallinar, Simon, Belkin 2025):
//! for every whole weight matrix W (nn.Linear view, d_out × d_in) with operand h, the weight
//! gradient of the summed next-token loss over the measured windows,
//!
//!   G = Σ_windows Σ_s δ_s h_sᵀ        (d_out × d_in, f64),
//!
//! δ_s the gradient of L = Σ_t ℓ_t at W's output at position s. One backward pass per window
//! (the loss gradient as the seed, no probes: G is exact), added window by window like the GOP
//! sums, so it shards, merges, resumes and groups the same way.
//!
//! Stored in GOP files as tensor `{module}.fact` for every whole module of the module table
//! (GPT-2: c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj). A head's G (through its Q, K or V rows
//! only) is a row block of its fused module's G: rows `offset .. offset + d_out` of the table
//! (GPT-2: part·C + h·hs .. + hs, part = 0, 1, 2 for q, k, v).
//! The correlate stage forms F = −WᵀG from it ([`crate::correlate::fact`]).

use rayon::prelude::*;

use crate::math::gemm::{gemm_into, SyncPtr, View};
use crate::model::Module;

/// The whole modules of a module table, whose weight gradients are summed, block by block.
pub fn fact_modules(table: &[Module]) -> Vec<Module> {
    table.iter().filter(|m| m.is_whole()).copied().collect()
}

/// Name of the FACT tensor that holds module `m`'s G: its owner's (a head's rows are a row
/// block of its layer's fused qkv module's G).
pub fn fact_tensor(m: &Module) -> String {
    format!("{}.{}.{}.fact", m.block, m.layer, m.owner)
}

/// The rows of the owner's G that are module `m`'s (all of them for a whole module).
pub fn fact_rows(m: &Module) -> std::ops::Range<usize> {
    m.offset..m.offset + m.d_out
}

/// Row blocks of this height make up one window's product (parallel tasks).
const ROW_BLOCK: usize = 128;

/// Per-window products δ_bᵀ h_b (B, d_out, d_in) of δ (B, T, d_out) and h (B, T, d_in), in the
/// inputs' precision, window by window and row block by row block, each block one
/// single-threaded GEMM: a window's product does not depend on its batch or the thread count.
pub fn window_cross<T: Copy + Default + From<f32> + Send + Sync + 'static>(
    delta: &[T],
    h: &[T],
    b: usize,
    t: usize,
    dout: usize,
    din: usize,
) -> Vec<T> {
    let nb = dout.div_ceil(ROW_BLOCK);
    let tasks: Vec<(usize, usize)> = (0..b).flat_map(|w| (0..nb).map(move |i| (w, i))).collect();
    let mut out = vec![T::default(); b * dout * din];
    let dst = SyncPtr(out.as_mut_ptr());
    let one = T::from(1.0);
    tasks.into_par_iter().for_each(|(w, bi)| {
        let r0 = bi * ROW_BLOCK;
        let rows = ROW_BLOCK.min(dout - r0);
        let d = &delta[w * t * dout..(w + 1) * t * dout];
        let x = &h[w * t * din..(w + 1) * t * din];
        let a = View::new(d[r0..].as_ptr(), 1, dout); // (rows × T): columns r0.. of δ, transposed
        let bv = View::new(x.as_ptr(), din, 1); // (T × d_in)
                                                // SAFETY: task (w, bi) alone writes rows r0..r0+rows of window w's product.
        unsafe { gemm_into(rows, din, t, dst.at(w * dout * din + r0 * din), din, a, bv, one) };
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Row-blocked products against a direct f64 sum, for a height that is not a multiple of the
    /// block; and the head rows of c_attn.
    #[test]
    fn window_cross_matches_direct_sums() {
        let (b, t, dout, din) = (3, 5, ROW_BLOCK + 37, 19);
        let d: Vec<f64> = (0..b * t * dout).map(|i| ((i * 7919 % 1013) as f64 / 1013.0) - 0.5).collect();
        let h: Vec<f64> = (0..b * t * din).map(|i| ((i * 31 % 97) as f64 / 97.0) - 0.5).collect();
        let g = window_cross(&d, &h, b, t, dout, din);
        for w in 0..b {
            for i in 0..dout {
                for j in 0..din {
                    let want: f64 = (0..t).map(|s| d[(w * t + s) * dout + i] * h[(w * t + s) * din + j]).sum();
                    let got = g[(w * dout + i) * din + j];
                    assert!((got - want).abs() < 1e-12, "window {w} ({i}, {j}): {got} vs {want}");
                }
            }
        }
        let cfg: crate::model::Gpt2Config =
            serde_json::from_str(r#"{"n_layer": 2, "n_head": 3, "n_embd": 24, "n_positions": 32, "vocab_size": 50}"#)
                .unwrap();
        use crate::model::{gpt2_module, Kind};
        let k1 = gpt2_module(&cfg, 0, Kind::K, Some(1));
        // Head 1 of K: columns C + 1·hs = 24 + 8 of c_attn's output.
        assert_eq!(fact_rows(&k1), 32..40);
        assert_eq!(fact_tensor(&k1), "h.0.attn.c_attn.fact");
        assert_eq!(fact_rows(&gpt2_module(&cfg, 0, Kind::CFc, None)), 0..cfg.n_inner());
    }
}
