#!/usr/bin/env bash
# Builds candle-check and runs it against the committed fixture: a merged export of the tiny
# model (fixture/config.json, fixture/model.safetensors) and transformers' logits for fixed ids
# (fixture/expected.safetensors, which also holds the ids). Needs only cargo: no Python.
#
# Usage: interop/candle-check/run.sh [MODEL_DIR EXPECTED.safetensors]
#   (without arguments: the fixture; make EXPECTED for another model with make_expected.py)
#
# Builds in CANDLE_CHECK_TARGET_DIR (default ~/.cache/feinschliff/candle-target), apart from the
# root workspace's target directory. Ends with `candle-check: 1 passed, 0 failed` on success.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

model="${1:-$here/fixture}"
expected="${2:-$here/fixture/expected.safetensors}"

export CARGO_TARGET_DIR="${CANDLE_CHECK_TARGET_DIR:-$HOME/.cache/feinschliff/candle-target}"
mkdir -p "$CARGO_TARGET_DIR"
cargo build --release --locked --manifest-path "$here/Cargo.toml"

if "$CARGO_TARGET_DIR/release/candle-check" --model "$model" --expected "$expected"; then
    echo "candle-check: 1 passed, 0 failed"
else
    echo "candle-check: 0 passed, 1 failed"
    exit 1
fi
