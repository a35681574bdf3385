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
# THREADS (2), ROUNDS (3), FACT (1: each round also runs `agop measure --fact` and prints what
# FACT costs; 0 skips it), ARCH (gpt2; neox: GPT-NeoX at Pythia-160m dimensions against
# `benches/torch_baseline.py --arch neox`, the model written by that script). Each round runs agop and
# then the baseline, so both see the same machine state; the summary gives the median over
# rounds (shared machines are noisy). AGOP=path uses that agop binary instead of building one (then
# no GEMM peak is measured).
#
# The GPU comparison is benches/gpu.sh (`just bench-gpu`).
set -euo pipefail
cd "$(dirname "$0")/.."
BATCH=${BATCH:-4}; WINDOWS=${WINDOWS:-48}; STEPS=${STEPS:-3}; THREADS=${THREADS:-2}; ROUNDS=${ROUNDS:-3}
if [ "${1:-}" = "--install" ]; then
  python3 -m venv .venv
  .venv/bin/pip install -q torch transformers
fi
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
work=${BENCH_DIR:-bench-out}
mkdir -p "$work"
if [ -n "${AGOP:-}" ]; then
  # A prebuilt agop (a machine without Rust, e.g. a GPU host: scripts/gpu-session.sh); no GEMM peak.
  agop=$AGOP; gemm_peak=""
else
  cargo build --release -q --bin agop --example gemm_peak
  agop=${CARGO_TARGET_DIR:-target}/release/agop
  gemm_peak=${CARGO_TARGET_DIR:-target}/release/examples/gemm_peak
fi


cat > "$work/config.json" <<JSON
{"model_type":"gpt2","n_layer":12,"n_head":12,"n_embd":768,"n_positions":1024,"vocab_size":50257}
JSON
[ -f "$work/model/model.safetensors" ] || $agop init-model --config "$work/config.json" --seed 0 --out "$work/model"
[ -f "$work/tokens.parquet" ] || $agop tokenize --model "$work/model" --corpus builtin:shakespeare \
  --seq-len 256 --max-tokens $((WINDOWS * 256)) --out "$work/tokens.parquet"

# ARCH=neox: the same comparison for GPT-NeoX at Pythia-160m dimensions (rotary 0.25, parallel
# residual), the model written by the PyTorch baseline itself; the windows are the same tokens.
model="$work/model"; arch=${ARCH:-gpt2}
if [ "$arch" = neox ]; then
  model="$work/neox-model"
  [ -f "$model/model.safetensors" ] || "$PYTHON" benches/torch_baseline.py --arch neox --steps 1 --save "$model" > /dev/null 2>&1
fi

rss() { awk '/Maximum resident set size/ {print $6}' "$1"; }

export RAYON_NUM_THREADS=$THREADS OMP_NUM_THREADS=$THREADS
: > "$work/rounds.txt"
for round in $(seq 1 "$ROUNDS"); do
  peak=0; [ -z "$gemm_peak" ] || peak=$($gemm_peak 1024 | awk '{print $2}')
  /usr/bin/time -v $agop measure --model "$model" --tokens "$work/tokens.parquet" --out "$work/gop.safetensors" \
    --batch "$BATCH" --probes 1 --checkpoint-secs 1e9 2> "$work/agop.time" > "$work/agop.out"
  agop_tps=$(grep -ho "passes, [0-9.]* tokens/s" "$work/agop.time" | tail -n 1 | awk '{print $2}')
  fact_tps=0
  if [ "${FACT:-1}" = 1 ]; then
    $agop measure --model "$model" --tokens "$work/tokens.parquet" --out "$work/gop-fact.safetensors" \
      --batch "$BATCH" --probes 1 --checkpoint-secs 1e9 --fact 2> "$work/fact.time" > /dev/null
    fact_tps=$(grep -ho "passes, [0-9.]* tokens/s" "$work/fact.time" | tail -n 1 | awk '{print $2}')
  fi
  /usr/bin/time -v "$PYTHON" benches/torch_baseline.py --arch "$arch" --batch "$BATCH" --steps "$STEPS" --threads "$THREADS" \
    > "$work/torch.out" 2> "$work/torch.time"
  torch_tps=$(awk '/tokens\/s/ {print $2}' "$work/torch.out")
  echo "$agop_tps $torch_tps $(rss "$work/agop.time") $(rss "$work/torch.time") $peak $fact_tps" >> "$work/rounds.txt"; echo "round $round of $ROUNDS done" >&2
done

# Nominal FLOPs per token (T = 256), as the baseline computes them: forward, input-gradient
# backward, full outer products and full T × T attention products. agop skips the blocks above
# the diagonal (causal attention, symmetric Grams), so its own count is lower.
torch_version=$("$PYTHON" -c "import torch, transformers; print(f'torch {torch.__version__}, transformers {transformers.__version__}')")
echo "$(date -u +%Y-%m-%d), $(lscpu | awk -F: '/Model name/ {gsub(/^ +/, "", $2); print $2}'), $(nproc) cores; $torch_version"
python3 - "$work/rounds.txt" "$BATCH" "$THREADS" "${ARCH:-gpt2}" <<'PY'
import statistics, sys
rows = [list(map(float, l.split())) for l in open(sys.argv[1]) if l.strip()]
batch, threads, arch = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
L, C, H, T = 12, 768, 12, 256
hs = C // H
layer = 2 * 12 * C * C + 4 * T * C          # forward: 12C² weights, QKᵀ and PV over T×T
layer += 2 * 12 * C * C + 8 * T * C         # backward to inputs only
layer += 4 * 2 * C * C + 3 * H * 2 * hs * hs  # outer products: 4 C×C per token, 3H hs×hs
flops = L * layer + 2 * C * C               # + probe L·z
print(f"{arch}: batch {batch}, {threads} threads, {len(rows)} rounds (agop, then torch, in each)")
for i, (a, t, ar, tr, peak, f) in enumerate(rows, 1):
    fact = f"; --fact {f:6.1f} tokens/s, cost {a/f:4.2f}x" if f > 0 else ""
    print(f"round {i}: agop {a:6.1f} tokens/s, torch {t:6.1f} tokens/s, ratio {a/t:4.2f}x; "
          f"agop {a*flops/1e9:5.1f} nominal GFLOP/s, GEMM peak {peak:5.1f}{fact}")
med = lambda i: statistics.median(r[i] for r in rows)
ratio = statistics.median(r[0] / r[1] for r in rows)
print(f"agop   {med(0):8.1f} tokens/s   max RSS {max(r[2] for r in rows)/1024:7.0f} MiB   "
      f"{med(0)*flops/1e9:5.1f} nominal GFLOP/s of {med(4):.1f} GEMM peak (medians)")
print(f"torch  {med(1):8.1f} tokens/s   max RSS {max(r[3] for r in rows)/1024:7.0f} MiB")
print(f"ratio  {ratio:8.2f}x (median of per-round ratios; min {min(r[0] / r[1] for r in rows):.2f}, max {max(r[0] / r[1] for r in rows):.2f})")
if all(r[5] > 0 for r in rows):
    cost = statistics.median(r[0] / r[5] for r in rows)
    print(f"--fact {med(5):8.1f} tokens/s   costs {cost:.2f}x a run without it (median of per-round ratios)")
PY
