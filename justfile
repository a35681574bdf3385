# Recipes for full reproductions. `just --list` shows them.

# Run the tests (what CI runs, after `lint`).
test:
    cargo test --locked

# Formatting and lints, as CI checks them.
lint:
    cargo fmt --check
    cargo clippy --locked --all-targets -- -D warnings

# The built-in default: GPT-2 small (pinned revision) on the built-in Shakespeare corpus.
reproduce:
    cargo run --release -- run

# The GPT-2 family on WikiText-103 (test split), each at a pinned revision.
reproduce-family:
    for p in gpt2 gpt2-medium gpt2-large gpt2-xl distilgpt2; do cargo run --release -- run pipelines/$p-wikitext.toml; done

# Pythia-70m-deduped (GPT-NeoX) across 8 training checkpoints from the hub; `just pythia 160m-deduped` for the larger.
pythia size="70m-deduped":
    cargo run --release -- run pipelines/pythia-{{size}}.toml

# The offline demo: train a small GPT-2 on the built-in Shakespeare, measure the NFA along training.
demo:
    cargo run --release -- run pipelines/shakespeare-train.toml

# A small offline run of every stage (a random 2-layer GPT-2-vocabulary model), under a minute.
tiny:
    cargo run --release -- run pipelines/tiny.toml

# Throughput against the PyTorch + transformers baseline on this machine.
bench:
    bash benches/throughput.sh

# `agop train` against a PyTorch AdamW loop on the demo's config (the venv needs polars too).
bench-train:
    bash benches/train_throughput.sh

# Build the GPU binary (`--device cuda`); without a system CUDA toolkit, lay one out from wheels.
build-cuda:
    cargo fetch
    if command -v nvcc >/dev/null; then CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90} cargo build --release --features cuda; else eval "$(bash scripts/cuda-toolkit.sh)" && cargo build --release --features cuda; fi

# agop against the PyTorch baseline on this machine's GPU, every precision and gpt2-xl dimensions,
# each at its best batch; ends with the summary line of ratios (after build-cuda; benches/gpu.sh).
bench-gpu:
    AGOP=target/release/agop bash benches/gpu.sh
