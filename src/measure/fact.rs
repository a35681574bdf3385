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

/// Tiles of this many rows × columns of G are the parallel tasks of [`add_window_cross`]: small
/// enough that a tile's f64 sum stays in cache while the batch's windows are added to it, and
/// that even a 768 × 768 module gives 2 × 6 × 3 tasks.
const TILE_ROWS: usize = 128;
const TILE_COLS: usize = 256;

/// acc (d_out × d_in, f64) += δ_bᵀ h_b for every window b of δ (B, T, d_out) and h (B, T, d_in),
/// in batch order. Each window's product is formed tile by tile in the inputs' precision (one
/// single-threaded GEMM over the window's T positions per tile) and added to the tile's f64 sum
/// at once: what a window adds does not depend on its batch or the thread count, no (B, d_out,
/// d_in) product is ever held, and the tile's sum stays in cache across the batch's windows.
pub fn add_window_cross<T: Copy + Default + From<f32> + Into<f64> + Send + Sync + 'static>(
    acc: &mut [f64],
    delta: &[T],
    h: &[T],
    b: usize,
    t: usize,
    dout: usize,
    din: usize,
) {
    assert_eq!(acc.len(), dout * din, "FACT sum of the wrong size");
    let tiles: Vec<(usize, usize)> = (0..dout.div_ceil(TILE_ROWS))
        .flat_map(|i| (0..din.div_ceil(TILE_COLS)).map(move |j| (i * TILE_ROWS, j * TILE_COLS)))
        .collect();
    let dst = SyncPtr(acc.as_mut_ptr());
    let one = T::from(1.0);
    tiles.into_par_iter().for_each(|(r0, c0)| {
        let (rows, cols) = (TILE_ROWS.min(dout - r0), TILE_COLS.min(din - c0));
        let mut tile = vec![T::default(); rows * cols];
        for w in 0..b {
            let d = &delta[w * t * dout..(w + 1) * t * dout];
            let x = &h[w * t * din..(w + 1) * t * din];
            let a = View::new(d[r0..].as_ptr(), 1, dout); // (rows × T): columns r0.. of δ, transposed
            let bv = View::new(x[c0..].as_ptr(), din, 1); // (T × cols): columns c0.. of h

            // SAFETY: the views address T rows of window w; `tile` is rows × cols.
            unsafe { gemm_into(rows, cols, t, tile.as_mut_ptr(), cols, a, bv, one) };
            for (r, src) in tile.chunks_exact(cols).enumerate() {
                // SAFETY: task (r0, c0) alone touches rows r0.. × columns c0.. of acc.
                let row = unsafe { std::slice::from_raw_parts_mut(dst.at((r0 + r) * din + c0), cols) };
                row.iter_mut().zip(src).for_each(|(a, &v)| *a += v.into());
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tiled, window-by-window sums against a direct f64 sum, for sizes that are not multiples of
    /// the tile; and the head rows of c_attn.
    #[test]
    fn window_cross_matches_direct_sums() {
        let (b, t, dout, din) = (3, 5, TILE_ROWS + 37, TILE_COLS + 19);
        let d: Vec<f64> = (0..b * t * dout).map(|i| ((i * 7919 % 1013) as f64 / 1013.0) - 0.5).collect();
        let h: Vec<f64> = (0..b * t * din).map(|i| ((i * 31 % 97) as f64 / 97.0) - 0.5).collect();
        let start: Vec<f64> = (0..dout * din).map(|i| i as f64 * 1e-3).collect();
        let mut g = start.clone();
        add_window_cross(&mut g, &d, &h, b, t, dout, din);
        for i in 0..dout {
            for j in 0..din {
                let want: f64 = start[i * din + j] + (0..b * t).map(|s| d[s * dout + i] * h[s * din + j]).sum::<f64>();
                let got = g[i * din + j];
                assert!((got - want).abs() < 1e-12, "({i}, {j}): {got} vs {want}");
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
