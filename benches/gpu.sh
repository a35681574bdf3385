#!/usr/bin/env bash
# agop against the PyTorch + transformers baseline on the same GPU, in one run (`just bench-gpu`):
# random-init GPT-2-small dimensions (12 layers, 768 wide, vocab 50257) and gpt2-xl dimensions
# (48 layers, 1600 wide), seq 256, one Gaussian probe over all logits, f64 accumulation on both
# sides. Each side runs at several batch sizes and its best counts; agop's rate is the one after
# its first batch, PyTorch's after an untimed warm-up step:
#   - agop `--precision f32|tf32|bf16` against PyTorch fp32 (TF32 off) / TF32 / bf16 autocast;
#   - gpt2-xl dimensions in f32 against PyTorch fp32;
#   - agop `--fact` at agop's best f32 batch: what FACT costs (agop's rate without / with);
#   - each side's nominal TFLOP/s (rate × the FLOPs per token of the same work) beside the GPU's
#     matmul peak in that precision, measured by PyTorch in the same run.
# Then `agop measure --profile` at the best f32 batch says where agop's time goes, and the last
# line is the summary, each ratio agop over PyTorch at their best batches:
#
#   ratio_fp32 X ratio_tf32 Y ratio_bf16 Z ratio_xl_fp32 W ratio_fact V
#
# Needs: an NVIDIA GPU, agop built with `--features cuda` (`just build-cuda`; AGOP=path skips the
# build), and a Python with PyTorch (CUDA) and transformers (PYTHON, default python3).
# Environment: BATCHES (agop, "8 16 32 64"), TORCH_BATCHES ("16 32 64"), WINDOWS (agop windows per
# run, 256), STEPS (PyTorch steps per batch size, 5), XL (1; 0 skips gpt2-xl), XL_BATCHES ("4 8"),
# XL_TORCH_BATCHES ("4 8"), XL_WINDOWS (32), PRECISIONS ("f32 tf32 bf16"), NEOX (0; 1 adds GPT-NeoX
# at Pythia-160m dimensions in f32 against `torch_baseline.py --arch neox`), BENCH_DIR
# (bench-out-gpu). DEVICE=cpu with small SMALL/XL_DIMS ("layers:width:heads") and PRECISIONS=f32
# runs the same script on the CPU, to check it without a GPU (tests/bench_scripts.rs does).
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICE=${DEVICE:-cuda}
BATCHES=${BATCHES:-8 16 32 64}; TORCH_BATCHES=${TORCH_BATCHES:-16 32 64}
WINDOWS=${WINDOWS:-256}; STEPS=${STEPS:-5}; XL=${XL:-1}
XL_BATCHES=${XL_BATCHES:-4 8}; XL_TORCH_BATCHES=${XL_TORCH_BATCHES:-4 8}; XL_WINDOWS=${XL_WINDOWS:-32}
PRECISIONS=${PRECISIONS:-f32 tf32 bf16}
SMALL=${SMALL:-12:768:12}; XL_DIMS=${XL_DIMS:-48:1600:25}
PYTHON=${PYTHON:-python3}
work=${BENCH_DIR:-bench-out-gpu}
mkdir -p "$work"
if [ -z "${AGOP:-}" ]; then
  cargo build --release -q --features cuda --bin agop
  AGOP=${CARGO_TARGET_DIR:-target}/release/agop
fi
[ "$DEVICE" = cpu ] || nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PYTHON" -c "import torch, transformers; print(f'torch {torch.__version__}, transformers {transformers.__version__}')"
echo "$(date -u +%Y-%m-%d); agop $("$AGOP" --version | awk '{print $2}'); windows of 256 tokens, one probe"

# A model folder (random init) and windows for dimensions L:C:H, under $work/$1.
prepare() {
  local dir="$work/$1" n=$3 L C H
  IFS=: read -r L C H <<< "$2"
  mkdir -p "$dir"
  echo "{\"model_type\":\"gpt2\",\"n_layer\":$L,\"n_head\":$H,\"n_embd\":$C,\"n_positions\":1024,\"vocab_size\":50257}" > "$dir/config.json"
  [ -f "$dir/model/model.safetensors" ] || { "$AGOP" init-model --config "$dir/config.json" --seed 0 --out "$dir/model" > /dev/null 2> "$dir/init.err" || { cat "$dir/init.err" >&2; exit 1; }; }
  "$AGOP" tokenize --model "$dir/model" --corpus builtin:shakespeare --seq-len 256 --max-tokens $((n * 256)) \
    --out "$dir/tokens.parquet" 2> /dev/null
}

# agop's tokens/s on model $1 at batch $2 with extra arguments; also kept in $work/runs.txt.
agop_rate() {
  local name=$1 b=$2; shift 2
  local err="$work/$name/agop.err"
  if ! "$AGOP" measure --model "$work/$name/model" --tokens "$work/$name/tokens.parquet" --out "$work/$name/gop.safetensors" \
    --device "$DEVICE" --batch "$b" --probes 1 --checkpoint-secs 1e9 "$@" 2> "$err" > /dev/null; then
    grep -q "out of GPU memory" "$err" && { echo 0; return; }
    cat "$err" >&2; exit 1
  fi
  # The rate after the first batch (which pays cuBLAS set-up and compiling the fused kernels,
  # as the baseline's untimed warm-up step does), else the whole run's.
  local r
  r=$(grep -ho "after the first batch [0-9.]* tokens/s" "$err" | tail -n 1 | awk '{print $5}')
  [ -n "$r" ] || r=$(grep -ho "passes, [0-9.]* tokens/s" "$err" | tail -n 1 | awk '{print $2}')
  echo "$name agop batch $b $* : $r tokens/s" >> "$work/runs.txt"
  echo "$r"
}

# The best of agop's rates over batches $3 for model $1 with extra arguments; prints "rate batch".
agop_best() {
  local name=$1 batches=$2; shift 2
  local best=0 at=0 r
  for b in $batches; do
    r=$(agop_rate "$name" "$b" "$@")
    if awk -v r="$r" -v best="$best" 'BEGIN {exit !(r > best)}'; then best=$r; at=$b; fi
  done
  echo "$best $at"
}

# The best PyTorch rate over batches $4 for dimensions $2 in precision $3 (more arguments go to
# the baseline); prints "rate batch".
torch_best() {
  local name=$1 L C H prec=$3 batches=$4
  IFS=: read -r L C H <<< "$2"
  shift 4
  "$PYTHON" benches/torch_baseline.py --device "$DEVICE" --precision "$prec" --layers "$L" --embd "$C" --heads "$H" \
    --batches "$(echo "$batches" | tr ' ' ',')" --steps "$STEPS" --threads "$(nproc)" "$@" > "$work/$name/torch-$prec.out"
  sed "s/^/$name torch $prec /" "$work/$name/torch-$prec.out" >> "$work/runs.txt"
  awk '/^tokens\/s/ && $2 > best {best = $2; at = $4} END {print best + 0, at + 0}' "$work/$name/torch-$prec.out"
}

ratio() { awk -v a="$1" -v b="$2" 'BEGIN {if (a > 0 && b > 0) printf "%.2f", a / b; else print "n/a"}'; }

# Nominal FLOPs per token of the measurement for dimensions L:C:H at T = 256, as
# benches/throughput.sh counts them (forward, input-gradient backward, the outer products, the
# probe): the same work on both sides, so rate × this is each side's achieved FLOP/s.
flop_per_token() {
  local L C H
  IFS=: read -r L C H <<< "$1"
  awk -v L="$L" -v C="$C" -v H="$H" 'BEGIN {T = 256; hs = C / H
    layer = 2 * 12 * C * C + 4 * T * C + 2 * 12 * C * C + 8 * T * C + 4 * 2 * C * C + 3 * H * 2 * hs * hs
    print L * layer + 2 * C * C}'
}
tflops() { awk -v r="$1" -v f="$2" 'BEGIN {printf "%.1f", r * f / 1e12}'; }

# The GPU's measured matmul peak in TFLOP/s for a precision (PyTorch, 8192³, best of 5).
peak() {
  [ "$DEVICE" = cpu ] && { echo n/a; return; }
  "$PYTHON" - "$1" <<'PY'
import sys, time, torch
p = sys.argv[1]
torch.backends.cuda.matmul.allow_tf32 = p == "tf32"
dt = torch.bfloat16 if p == "bf16" else torch.float32
a = torch.randn(8192, 8192, device="cuda", dtype=dt); b = torch.randn(8192, 8192, device="cuda", dtype=dt)
best = 0.0
for _ in range(6):
    torch.cuda.synchronize(); t = time.perf_counter(); a @ b; torch.cuda.synchronize()
    best = max(best, 2 * 8192**3 / (time.perf_counter() - t) / 1e12)
print(f"{best:.1f}")
PY
}
torch_precision() { case $1 in f32) echo fp32 ;; *) echo "$1" ;; esac; }

: > "$work/runs.txt"
prepare small "$SMALL" "$WINDOWS"
declare -A R
for p in f32 tf32 bf16; do R[$p]=n/a; done
for p in $PRECISIONS; do
  read -r a ab <<< "$(agop_best small "$BATCHES" --precision "$p")"
  read -r t tb <<< "$(torch_best small "$SMALL" "$(torch_precision "$p")" "$TORCH_BATCHES")"
  R[$p]=$(ratio "$a" "$t")
  f=$(flop_per_token "$SMALL")
  echo "GPT-2 small, $p: agop $a tokens/s (batch $ab), PyTorch $(torch_precision "$p") $t tokens/s (batch $tb): ${R[$p]}x;" \
    "nominal TFLOP/s agop $(tflops "$a" "$f"), PyTorch $(tflops "$t" "$f"), GPU matmul peak $(peak "$p")"
  [ "$p" = f32 ] && best_f32=$a && best_b=$ab
done
ratio_fact=n/a
if [ -n "${best_f32:-}" ]; then
  f=$(agop_rate small "$best_b" --fact)
  ratio_fact=$(ratio "$best_f32" "$f")
  echo "GPT-2 small, f32 --fact at batch $best_b: $f tokens/s, FACT costs ${ratio_fact}x"
  "$AGOP" measure --model "$work/small/model" --tokens "$work/small/tokens.parquet" --out "$work/small/gop.safetensors" \
    --device "$DEVICE" --batch "$best_b" --probes 1 --checkpoint-secs 1e9 --fact --profile 2>&1 >/dev/null \
    | sed -n '/^profile/,/other/p'
fi
ratio_xl=n/a
if [ "$XL" = 1 ]; then
  prepare xl "$XL_DIMS" "$XL_WINDOWS"
  read -r a ab <<< "$(agop_best xl "$XL_BATCHES")"
  read -r t tb <<< "$(torch_best xl "$XL_DIMS" fp32 "$XL_TORCH_BATCHES")"
  ratio_xl=$(ratio "$a" "$t")
  f=$(flop_per_token "$XL_DIMS")
  echo "gpt2-xl dimensions, f32: agop $a tokens/s (batch $ab), PyTorch fp32 $t tokens/s (batch $tb): ${ratio_xl}x;" \
    "nominal TFLOP/s agop $(tflops "$a" "$f"), PyTorch $(tflops "$t" "$f")"
fi
if [ "${NEOX:-0}" = 1 ]; then
  # GPT-NeoX at Pythia-160m dimensions, the model the baseline writes, the same windows.
  mkdir -p "$work/neox"
  [ -f "$work/neox/model/model.safetensors" ] || "$PYTHON" benches/torch_baseline.py --arch neox --steps 1 --batch 1 \
    --seq 16 --save "$work/neox/model" > /dev/null
  cp "$work/small/tokens.parquet" "$work/neox/tokens.parquet"
  read -r a ab <<< "$(agop_best neox "$BATCHES")"
  read -r t tb <<< "$(torch_best neox 12:768:12 fp32 "$TORCH_BATCHES" --arch neox)"
  echo "GPT-NeoX (Pythia-160m dimensions), f32: agop $a tokens/s (batch $ab), PyTorch fp32 $t tokens/s (batch $tb): $(ratio "$a" "$t")x"
fi
echo "(every run: $work/runs.txt)"
echo "ratio_fp32 ${R[f32]} ratio_tf32 ${R[tf32]} ratio_bf16 ${R[bf16]} ratio_xl_fp32 $ratio_xl ratio_fact $ratio_fact"
