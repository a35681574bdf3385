#!/usr/bin/env bash
# One GPU check in one call, for a machine that has a GPU but no Rust (a lent GPU host): build
# here, carry the binaries there, run the GPU tests and the GPU benchmark there, read the logs.
#
#   bash scripts/gpu-session.sh pack           # here: build the kit into gpu-kit/
#   bash scripts/gpu-session.sh run [OUT]      # there, from the repository root: tests, then bench
#
# pack builds `agop` and the tests/device.rs test binary with `--features cuda` (a CUDA toolkit on
# the PATH, or the one scripts/cuda-toolkit.sh lays out; CUDA_COMPUTE_CAP, default 90 = H100/H200)
# in $CARGO_TARGET_DIR (default target/cuda-release) and writes them stripped and xz-compressed
# to gpu-kit/agop.xz and gpu-kit/device-tests.xz (a device call carries 64 MiB), with the paths
# they expect (the test binary finds the fixtures and agop through the absolute path of this
# checkout, recorded in gpu-kit/root) and the commit they were built from (gpu-kit/commit, with
# any modified files: compare it with HEAD before carrying an old kit).
# run unpacks them, puts the CUDA 13 libraries on LD_LIBRARY_PATH (CUDA_LIBS, default
# /usr/local/cuda-13.0/targets/x86_64-linux/lib), links the recorded checkout path to this one
# when they differ, runs the quick GPU tests (TEST_TIMEOUT seconds, 120), benches/gpu.sh
# (BENCH_TIMEOUT, 300; its environment as documented there; PYTHON defaults to python3) and the
# GPT-2-small-dimension GPU tests (SLOW_TEST_TIMEOUT, 240), and writes tests.log, bench.log,
# tests-gpt2-small.log, nvidia-smi.txt and kit-commit.txt under OUT (default $OUT, else gpu-out). With
# CPU_BENCH=1 it then runs benches/throughput.sh on the host's CPUs at 2 and at all threads
# (CPU_ROUNDS 1, CPU_BATCH 4, CPU_TIMEOUT 150 s each; cpu-bench-<threads>.log).
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
  pack)
    export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target/cuda-release}
    if ! command -v nvcc >/dev/null; then
      cargo fetch --locked
      eval "$(bash scripts/cuda-toolkit.sh)"
    fi
    export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
    cargo build --release --locked --features cuda --bin agop
    tests=$(cargo test --release --locked --features cuda --test device --no-run --message-format=json \
      | python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "device" and m.get("executable"):
        print(m["executable"])' | tail -n 1)
    # Stripped (with the release profile's debug info agop is 620 MB, 104 MB without) and
    # xz-compressed (17 MB): the pair must fit what a device call carries (64 MiB).
    mkdir -p gpu-kit
    rm -f gpu-kit/*.xz
    for pair in "$CARGO_TARGET_DIR/release/agop:agop" "$tests:device-tests"; do
      strip -o "gpu-kit/${pair##*:}" "${pair%:*}"
      xz -T2 -6 "gpu-kit/${pair##*:}"
    done
    # Where the test binary looks for agop (CARGO_BIN_EXE_agop) and the fixtures.
    echo "$PWD" > gpu-kit/root
    echo "$(realpath -m "$CARGO_TARGET_DIR")/release/agop" > gpu-kit/agop-path
    # The code the kit was built from (a later session checks it against HEAD before reusing it).
    { git rev-parse HEAD; git status --porcelain --untracked-files=no | sed 's/^/modified: /'; } > gpu-kit/commit
    ls -l gpu-kit
    [ "$(cat gpu-kit/*.xz | wc -c)" -lt $((64 * 1024 * 1024)) ] || echo "warning: gpu-kit is over 64 MiB"
    echo "carry gpu-kit (and nothing else built) to the GPU machine; there: bash scripts/gpu-session.sh run"
    ;;
  run)
    out=${2:-${OUT:-gpu-out}}
    mkdir -p "$out"
    export LD_LIBRARY_PATH=${CUDA_LIBS:-/usr/local/cuda-13.0/targets/x86_64-linux/lib}:${LD_LIBRARY_PATH:-}
    root=$(cat gpu-kit/root)
    if [ "$root" != "$PWD" ] && [ ! -e "$root" ]; then
      mkdir -p "$(dirname "$root")" && ln -s "$PWD" "$root"
    fi
    agop_path=$(cat gpu-kit/agop-path)
    kit=$PWD/gpu-kit
    mkdir -p "$(dirname "$agop_path")"
    unxz_to() {  # xz, or Python's lzma where xz is missing
      if command -v xz >/dev/null; then xz -dc "$1" > "$2"
      else python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' "$1" "$2"
      fi
      chmod +x "$2"
    }
    unxz_to gpu-kit/agop.xz "$agop_path"
    unxz_to gpu-kit/device-tests.xz gpu-kit/device-tests
    nvidia-smi > "$out/nvidia-smi.txt" 2>&1 || true
    cp gpu-kit/commit "$out/kit-commit.txt" 2>/dev/null || echo "unknown (a kit from before 2026-12-03)" > "$out/kit-commit.txt"
    # The GPU tests one at a time, printing what they measured; a failure does not stop the rest.
    # The quick ones first (kernels against their twins, the fixtures), then the benchmark, then
    # the GPT-2-small-dimension ones (CPU runs and correlations beside the GPU's: slower).
    tests() {
      local log=$1 limit=$2; shift 2
      (cd "$root" && timeout "$limit" "$kit/device-tests" --test-threads=1 --nocapture "$@") > "$log" 2>&1 \
        && echo "GPU tests $* passed" || echo "GPU tests $* FAILED or timed out (rc $?): $log"
    }
    tests "$out/tests.log" "${TEST_TIMEOUT:-120}" gpu_kernels gpu_matches_cpu_and_golden neox_on_the_gpu device_errors
    AGOP=$agop_path PYTHON=${PYTHON:-python3} BENCH_DIR=${BENCH_DIR:-/tmp/agop-bench-gpu} \
      timeout "${BENCH_TIMEOUT:-300}" bash benches/gpu.sh > "$out/bench.log" 2>&1 \
      && echo "bench done" || echo "bench FAILED or timed out (rc $?)"
    tail -n 30 "$out/bench.log"
    tests "$out/tests-gpt2-small.log" "${SLOW_TEST_TIMEOUT:-240}" gpt2_small_dimensions reduced_precisions
    # CPU_BENCH=1: also the CPU comparison on this host's cores (issue targets at 16 threads),
    # agop on the CPU against PyTorch on the CPU, at 2 and at all threads.
    if [ "${CPU_BENCH:-0}" = 1 ]; then
      for threads in 2 "$(nproc)"; do
        AGOP=$agop_path PYTHON=${PYTHON:-python3} THREADS=$threads ROUNDS=${CPU_ROUNDS:-1} FACT=0 \
          BATCH=${CPU_BATCH:-4} BENCH_DIR=/tmp/agop-bench-cpu timeout "${CPU_TIMEOUT:-150}" bash benches/throughput.sh \
          > "$out/cpu-bench-$threads.log" 2>&1 || echo "CPU bench at $threads threads FAILED or timed out"
        tail -n 4 "$out/cpu-bench-$threads.log"
      done
    fi
    ;;
  *)
    sed -n '2,20p' "$0"
    exit 2
    ;;
esac
