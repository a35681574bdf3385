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

# A small offline run of every stage (a random 2-layer GPT-2-vocabulary model), under a minute.
tiny:
    cargo run --release -- run pipelines/tiny.toml

# Throughput against the PyTorch + transformers baseline on this machine.
bench:
    bash benches/throughput.sh
