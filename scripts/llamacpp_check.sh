#!/usr/bin/env bash
# llama.cpp loads and runs our GGUF exports with the same results: for each base of BASES, in
# a temporary directory, two 20-step LoRA runs (plain and rsLoRA) on configs/tiny.toml, then
# `export gguf` (base and merged in f32, the base also in q8_0, q4_0, q4_k, q4_k_m),
# `export gguf-adapter` (f32), `export merged --dtype f32` and `export adapter`, and
# scripts/llamacpp_check.py on them (see its docstring). Besides the committed fixtures, a
# random-weight model of hidden size 256 (scripts/make_random_llama.py) puts whole k-quant
# super-blocks in the quantizer check, and tiny_spm.gguf imported checks a SentencePiece-style
# vocabulary.
#
# Usage: scripts/llamacpp_check.sh
# Environment: FEINSCHLIFF (the binary; built when absent), INTEROP_VENV (the reference venv,
# default ~/.cache/peft-bench/venv), LLAMACPP_VENV (default ~/.cache/feinschliff/llamacpp-venv,
# made by scripts/setup-llamacpp.sh when missing), LLAMACPP_BASES (the models to check, see
# below), LLAMACPP_KEEP=1 keeps the work directory.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="${INTEROP_VENV:-$HOME/.cache/peft-bench/venv}"
# LLAMACPP_BASES (space-separated model directories) replaces the fixtures, e.g. with
# checkpoints/base/smollm2-135m-instruct for the check on the real model.
BIN="${FEINSCHLIFF:-${CARGO_TARGET_DIR:-$ROOT/target}/release/feinschliff}"
if [[ ! -x "$BIN" ]]; then
    cargo build --release --quiet
fi
TMP="$(mktemp -d "${TMPDIR:-/tmp}/llamacpp.XXXXXX")"
if [[ "${LLAMACPP_KEEP:-0}" == 1 ]]; then echo "llamacpp: keeping $TMP" >&2; else trap 'rm -rf "$TMP"' EXIT; fi
if [[ -z "${LLAMACPP_BASES:-}" ]]; then
    "$VENV/bin/python" scripts/make_random_llama.py --out "$TMP/models/wide256" --untied \
        --tokenizer-from tests/fixtures/llama/tied_gqa --hidden 256 --intermediate 512 \
        --layers 3 --heads 4 --kv-heads 2 >/dev/null
    "$BIN" import-gguf tests/fixtures/gguf/tiny_spm.gguf "$TMP/models/tiny_spm" >/dev/null
fi
read -r -a BASES <<<"${LLAMACPP_BASES:-tests/fixtures/llama/tied_gqa tests/fixtures/llama/qwen2_tied tests/fixtures/llama/qwen3 tests/fixtures/llama/llama3_rope $TMP/models/wide256 $TMP/models/tiny_spm}"

LLAMA_PY="$(scripts/setup-llamacpp.sh "${LLAMACPP_VENV:-$HOME/.cache/feinschliff/llamacpp-venv}" | tail -n 1)"
SITE="$("$LLAMA_PY" -c 'import llama_cpp, os; print(os.path.dirname(os.path.dirname(llama_cpp.__file__)))')"

status=0
for base in "${BASES[@]}"; do
    w="$TMP/$(basename "$base")"
    mkdir -p "$w"
    echo "llamacpp: base $base" >&2
    for kind in lora rslora; do
        rs=false; [[ $kind == rslora ]] && rs=true
        "$BIN" train --config configs/tiny.toml --set model.path="$base" --set output.run_dir="$w/$kind" \
            --set train.max_steps=20 --set train.save_every=0 --set train.eval_every=0 \
            --set lora.use_rslora=$rs >"$w/$kind.train.log" 2>&1
        "$BIN" export gguf-adapter --run "$w/$kind" --out "$w/$kind.gguf" --type f32 >/dev/null
        "$BIN" export adapter --run "$w/$kind" --out "$w/$kind.adapter" >/dev/null
    done
    "$BIN" export gguf --model "$base" --out "$w/base.gguf" --type f32 >/dev/null
    "$BIN" export gguf --run "$w/lora" --out "$w/merged.gguf" --type f32 >/dev/null
    quantized=()
    for type in q8_0 q4_0 q4_k q4_k_m; do
        "$BIN" export gguf --model "$base" --out "$w/base-$type.gguf" --type "$type" >/dev/null
        quantized+=(--quantized "$type=$w/base-$type.gguf")
    done
    "$BIN" export merged --run "$w/lora" --out "$w/merged" --dtype f32 >/dev/null
    "$VENV/bin/python" scripts/llamacpp_check.py --bin "$BIN" --base "$base" --base-gguf "$w/base.gguf" \
        --merged-gguf "$w/merged.gguf" --merged-dir "$w/merged" --adapter-gguf "$w/lora.gguf" \
        --adapter-dir "$w/lora.adapter" --rslora-gguf "$w/rslora.gguf" --rslora-dir "$w/rslora.adapter" \
        --work "$w" --llama-site "$SITE" "${quantized[@]}" || status=1
done
exit "$status"
