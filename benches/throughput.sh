#!/usr/bin/env bash
# Throughput of `agop measure` against the PyTorch + transformers baseline, side by side on this
# machine: GPT-2-small dimensions (12 layers, 768 wide, vocab 50257), seq_len 256, one Gaussian
# probe over all logits, float32, 2 threads. Prints tokens/s, the ratio, max RSS of each, and
# agop's GFLOP/s against a measured GEMM peak.
#
#   bash benches/throughput.sh             # uses $PYTHON, or .venv/bin/python if it exists
#   bash benches/throughput.sh --install   # first creates .venv with torch and transformers
#
# Environment: BATCH (4), WINDOWS (agop windows to measure, 48), STEPS (baseline steps, 3),
# THREADS (2).
set -euo pipefail
cd "$(dirname "$0")/.."
BATCH=${BATCH:-4}; WINDOWS=${WINDOWS:-48}; STEPS=${STEPS:-3}; THREADS=${THREADS:-2}
if [ "${1:-}" = "--install" ]; then
  python3 -m venv .venv
  .venv/bin/pip install -q torch transformers
fi
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
work=${BENCH_DIR:-bench-out}
mkdir -p "$work"
cargo build --release -q --bin agop --example gemm_peak
agop=${CARGO_TARGET_DIR:-target}/release/agop
gemm_peak=${CARGO_TARGET_DIR:-target}/release/examples/gemm_peak


cat > "$work/config.json" <<JSON
{"model_type":"gpt2","n_layer":12,"n_head":12,"n_embd":768,"n_positions":1024,"vocab_size":50257}
JSON
[ -f "$work/model/model.safetensors" ] || $agop init-model --config "$work/config.json" --seed 0 --out "$work/model"
[ -f "$work/tokens.parquet" ] || $agop tokenize --model "$work/model" --corpus builtin:shakespeare \
  --seq-len 256 --max-tokens $((WINDOWS * 256)) --out "$work/tokens.parquet"

rss() { awk '/Maximum resident set size/ {print $6}' "$1"; }

export RAYON_NUM_THREADS=$THREADS OMP_NUM_THREADS=$THREADS
peak=$($gemm_peak 1024 | awk '{print $2}')

/usr/bin/time -v $agop measure --model "$work/model" --tokens "$work/tokens.parquet" --out "$work/gop.safetensors" \
  --batch "$BATCH" --probes 1 --checkpoint-secs 1e9 2> "$work/agop.time" | tee "$work/agop.out"
grep -h "tokens/s" "$work/agop.time" | tail -n 1 | tee -a "$work/agop.out"
agop_tps=$(grep -ho "[0-9.]* tokens/s" "$work/agop.time" | tail -n 1 | awk '{print $1}')
agop_rss=$(rss "$work/agop.time")

/usr/bin/time -v "$PYTHON" benches/torch_baseline.py --batch "$BATCH" --steps "$STEPS" --threads "$THREADS" \
  > "$work/torch.out" 2> "$work/torch.time"
torch_tps=$(awk '/tokens\/s/ {print $2}' "$work/torch.out")
torch_rss=$(rss "$work/torch.time")

# FLOPs per token of agop's work (forward, input-gradient backward, probe, outer products), T = 256.
python3 - "$agop_tps" "$torch_tps" "$agop_rss" "$torch_rss" "$peak" "$BATCH" "$THREADS" <<'PY'
import sys
agop, torch, arss, trss, peak, batch, threads = map(float, sys.argv[1:])
L, C, H, T = 12, 768, 12, 256
hs = C // H
layer = 2 * 12 * C * C + 4 * T * C          # forward: 12C² weights, QKᵀ and PV over T×T
layer += 2 * 12 * C * C + 8 * T * C         # backward to inputs only
layer += 4 * 2 * C * C + 3 * H * 2 * hs * hs  # outer products: 4 C×C per token, 3H hs×hs
flops = L * layer + 2 * C * C               # + probe L·z
print(f"batch {int(batch)}, {int(threads)} threads")
print(f"agop   {agop:8.1f} tokens/s   max RSS {arss/1024:7.0f} MiB   {agop*flops/1e9:5.1f} GFLOP/s of {peak:.1f} GEMM peak")
print(f"torch  {torch:8.1f} tokens/s   max RSS {trss/1024:7.0f} MiB")
print(f"ratio  {agop/torch:8.2f}x")
PY
