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
#   2. in a temporary directory: a 20-step LoRA run on the tiny fixture (configs/tiny.toml,
#      no intermediate saves or evals), `export adapter` and `export merged --dtype f32`;
#   3. scripts/interop_check.py with those paths: one JSON line per check, then
#      "interop: N passed, N failed". The exit status is non-zero on any mismatch.
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
BASE=tests/fixtures/llama/tied_gqa
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

# --- a run and its exports ----------------------------------------------------------------
TMP="$(mktemp -d "${TMPDIR:-/tmp}/interop.XXXXXX")"
if [[ "${INTEROP_KEEP:-0}" == 1 ]]; then
    echo "interop: keeping $TMP" >&2
else
    trap 'rm -rf "$TMP"' EXIT
fi

"$BIN" train --config configs/tiny.toml --set output.run_dir="$TMP/run" \
    --set train.max_steps=20 --set train.save_every=0 --set train.eval_every=0 \
    >"$TMP/train.json" 2>"$TMP/train.log" || { cat "$TMP/train.log" >&2; summary_fail "train"; }
"$BIN" export adapter --run "$TMP/run" --checkpoint last --out "$TMP/adapter" >&2 \
    || summary_fail "export adapter"
"$BIN" export merged --run "$TMP/run" --checkpoint last --out "$TMP/merged" --dtype f32 >&2 \
    || summary_fail "export merged"

# --- the checks ---------------------------------------------------------------------------
rc=0
"$VENV/bin/python" scripts/interop_check.py --bin "$BIN" --base "$BASE" --data "$DATA" \
    --ours-adapter "$TMP/adapter" --ours-merged "$TMP/merged" --work "$TMP/peft" \
    --max-len 16 || rc=$?
if [[ $rc -gt 1 ]]; then  # crashed before its own summary line
    echo "interop: interop_check.py exited with $rc" >&2
    echo "interop: 0 passed, 1 failed"
fi
exit "$rc"
