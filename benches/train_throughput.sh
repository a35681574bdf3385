#!/usr/bin/env bash
# Training throughput: `agop train` against benches/train_baseline.py (a plain PyTorch +
# transformers AdamW loop) on the same config, the same machine and the same thread count,
# alternating rounds, for each batch size.
#
#   bash benches/train_throughput.sh            # batches 8 and 16, 3 rounds, 2 threads
#   BATCHES="16" ROUNDS=5 PYTHON=.venv/bin/python bash benches/train_throughput.sh
#
# The PyTorch side needs torch, transformers and polars (`bash benches/throughput.sh --install`
# makes .venv with torch and transformers; add polars with `.venv/bin/pip install polars`).
# agop's figure is what `agop train` prints: every update, plus the eval loss and the checkpoint
# written at the last step, over wall-clock time; PyTorch's is its timed updates only (after
# three untimed ones), so the comparison does not favour agop.
set -euo pipefail
cd "$(dirname "$0")/.."
BATCHES=${BATCHES:-"8 16"}; ROUNDS=${ROUNDS:-3}; STEPS=${STEPS:-40}; TORCH_STEPS=${TORCH_STEPS:-30}
THREADS=${THREADS:-2}; SEQ=${SEQ:-64}; CONFIG=${CONFIG:-pipelines/shakespeare-train/config.json}
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
work=${BENCH_DIR:-bench-out}/train
mkdir -p "$work"
if [ -z "${AGOP:-}" ]; then
  cargo build --release -q --bin agop
  AGOP=${CARGO_TARGET_DIR:-target}/release/agop
fi
export RAYON_NUM_THREADS=$THREADS OMP_NUM_THREADS=$THREADS
: > "$work/rounds.txt"
for b in $BATCHES; do
  for round in $(seq 1 "$ROUNDS"); do
    rm -rf "$work/run"
    "$AGOP" train --config "$CONFIG" --corpus builtin:shakespeare --seq-len "$SEQ" --steps "$STEPS" --batch "$b" \
      --save-steps "0,$STEPS" --out "$work/run" > "$work/agop.out" 2>&1
    a=$(awk '/training tokens\/s/ {print $1}' "$work/agop.out")
    "$PYTHON" benches/train_baseline.py --config "$CONFIG" --tokens "$work/run/eval-tokens.parquet" --batch "$b" \
      --steps "$TORCH_STEPS" --threads "$THREADS" > "$work/torch.out" 2> /dev/null
    t=$(tail -n 1 "$work/torch.out" | python3 -c 'import json, sys; print(json.load(sys.stdin)["tokens_per_s"])')
    echo "$b $a $t" >> "$work/rounds.txt"
    echo "batch $b, round $round of $ROUNDS done" >&2
  done
done
torch_version=$("$PYTHON" -c "import torch, transformers; print(f'torch {torch.__version__}, transformers {transformers.__version__}')")
echo "$(date -u +%Y-%m-%d), $(lscpu | awk -F: '/Model name/ {gsub(/^ +/, "", $2); print $2}'), $(nproc) cores; $torch_version"
echo "config $CONFIG, seq $SEQ, $THREADS threads; agop $STEPS updates, torch $TORCH_STEPS timed updates per round"
python3 - "$work/rounds.txt" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
for b in dict.fromkeys(r[0] for r in rows):
    mine = [(float(a), float(t)) for bb, a, t in rows if bb == b]
    rounds = " · ".join(f"{a:,.0f}/{t:,.0f}" for a, t in mine)
    am, tm = statistics.median(a for a, _ in mine), statistics.median(t for _, t in mine)
    print(f"batch {b}: agop/torch tokens/s by round {rounds}; medians {am:,.0f} vs {tm:,.0f}, ratio {am / tm:.2f}x")
PY
