#!/usr/bin/env bash
# Interop proof against the Python side: PEFT and transformers load what feinschliff writes,
# and feinschliff loads what PEFT writes, with the same eval loss (relative difference <= 1e-4).
#
# Usage: scripts/interop.sh            (from anywhere; it works in the repository root)
#
# Steps:
#   1. a Python venv with torch==2.9.0, transformers==5.23.0, peft==0.21.2, safetensors:
#      reused when $INTEROP_VENV/bin/python imports them (torch 2.9.0), otherwise made by
#      scripts/setup-venv.sh (the project's reference venv, filled from PyPI; the torch wheel
#      there is the CUDA build, ~7 GB);
#   2. for each base of BASES (the tiny Llama fixture, a Qwen2 one with q/k/v biases and a
#      sliding window, a Mistral one with a sliding window), in a temporary directory: a 20-step
#      LoRA run and a 20-step DoRA run (configs/tiny.toml with that base, no intermediate saves
#      or evals), each with `export adapter` and `export merged --dtype f32`;
#   3. scripts/interop_check.py with those paths: one JSON line per check, then
#      "interop: N passed, N failed" per base. The exit status is non-zero on any mismatch.
#
# Environment:
#   INTEROP_VENV   the venv (default ~/.cache/peft-bench/venv)
#   FEINSCHLIFF    the binary (default $ROOT/target/release/feinschliff; when that file does
#                  not exist, `cargo build --release --quiet` builds
#                  ${CARGO_TARGET_DIR:-$ROOT/target}/release/feinschliff and that is used)
#   INTEROP_KEEP   set to 1 to keep the temporary directory (its path is printed)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="${INTEROP_VENV:-$HOME/.cache/peft-bench/venv}"
BASES=(tests/fixtures/llama/tied_gqa tests/fixtures/llama/qwen2_window tests/fixtures/llama/mistral_window)
DATA=tests/fixtures/eval_sample.jsonl

summary_fail() {
    echo "interop: setup failed ($1)" >&2
    echo "interop: 0 passed, 1 failed"
    exit 1
}

# --- the binary ---------------------------------------------------------------------------
BIN="${FEINSCHLIFF:-$ROOT/target/release/feinschliff}"
if [[ ! -x "$BIN" ]]; then
    echo "interop: $BIN not found; building it" >&2
    cargo build --release --quiet || summary_fail "cargo build"
    BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/feinschliff"
fi
[[ -x "$BIN" ]] || summary_fail "no binary at $BIN"
case "$BIN" in /*) ;; *) BIN="$ROOT/$BIN" ;; esac

# --- the venv -----------------------------------------------------------------------------
venv_ok() {
    [[ -x "$VENV/bin/python" ]] && "$VENV/bin/python" - <<'EOF' 2>/dev/null
import peft, safetensors, torch, transformers
assert torch.__version__.split("+")[0] == "2.9.0", torch.__version__
EOF
}
if ! venv_ok; then
    echo "interop: setting up the venv $VENV with scripts/setup-venv.sh (torch is a ~7 GB download)" >&2
    bash scripts/setup-venv.sh "$VENV" || summary_fail "scripts/setup-venv.sh"
    venv_ok || summary_fail "the new venv does not import torch 2.9.0/transformers/peft"
fi

# --- runs, exports and checks, one base at a time ---------------------------------------------
TMP="$(mktemp -d "${TMPDIR:-/tmp}/interop.XXXXXX")"
if [[ "${INTEROP_KEEP:-0}" == 1 ]]; then
    echo "interop: keeping $TMP" >&2
else
    trap 'rm -rf "$TMP"' EXIT
fi

# One base: train, export, check; the exit status of interop_check.py (1 on a mismatch).
check_base() {
    local base=$1 work
    work="$TMP/$(basename "$base")"
    mkdir -p "$work"
    echo "interop: base $base" >&2
    "$BIN" train --config configs/tiny.toml --set model.path="$base" --set output.run_dir="$work/run" \
        --set train.max_steps=20 --set train.save_every=0 --set train.eval_every=0 \
        >"$work/train.json" 2>"$work/train.log" || { cat "$work/train.log" >&2; summary_fail "train on $base"; }
    "$BIN" export adapter --run "$work/run" --checkpoint last --out "$work/adapter" >&2 \
        || summary_fail "export adapter of $base"
    "$BIN" export merged --run "$work/run" --checkpoint last --out "$work/merged" --dtype f32 >&2 \
        || summary_fail "export merged of $base"
    "$BIN" train --config configs/tiny.toml --set model.path="$base" --set output.run_dir="$work/dora" \
        --set train.max_steps=20 --set train.save_every=0 --set train.eval_every=0 --set lora.use_dora=true \
        >"$work/dora.json" 2>"$work/dora.log" || { cat "$work/dora.log" >&2; summary_fail "DoRA train on $base"; }
    "$BIN" export adapter --run "$work/dora" --checkpoint last --out "$work/dora-adapter" >&2 \
        || summary_fail "export adapter of the DoRA run on $base"
    "$BIN" export merged --run "$work/dora" --checkpoint last --out "$work/dora-merged" --dtype f32 >&2 \
        || summary_fail "export merged of the DoRA run on $base"
    local rc=0
    "$VENV/bin/python" scripts/interop_check.py --bin "$BIN" --base "$base" --data "$DATA" \
        --ours-adapter "$work/adapter" --ours-merged "$work/merged" --work "$work/peft" \
        --ours-dora-adapter "$work/dora-adapter" --ours-dora-merged "$work/dora-merged" \
        --max-len 16 || rc=$?
    if [[ $rc -gt 1 ]]; then  # crashed before its own summary line
        echo "interop: interop_check.py exited with $rc" >&2
        echo "interop: 0 passed, 1 failed"
    fi
    return "$rc"
}

# --- the checks ---------------------------------------------------------------------------
status=0
for base in "${BASES[@]}"; do
    check_base "$base" || status=1
done
exit "$status"
