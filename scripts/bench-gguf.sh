#!/usr/bin/env bash
# GGUF export per type: wall time of `feinschliff export gguf`, file size, and llama.cpp's
# perplexity of the file (scripts/gguf_perplexity.py) on the first RECORDS records of the
# bundled law corpus's valid.jsonl, cut to MAX_LEN tokens. One line per type; the f32 line is
# the reference for the relative perplexity change.
#
# Usage: scripts/bench-gguf.sh [MODEL_DIR]   (default checkpoints/base/smollm2-135m-instruct)
# Environment: FEINSCHLIFF (the binary), LLAMACPP_VENV (scripts/setup-llamacpp.sh's venv),
# RECORDS (default 40), MAX_LEN (default 512), TYPES (default "f32 f16 bf16 q8_0 q4_0 q4_k q4_k_m").
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
MODEL="${1:-checkpoints/base/smollm2-135m-instruct}"
BIN="${FEINSCHLIFF:-${CARGO_TARGET_DIR:-$ROOT/target}/release/feinschliff}"
LLAMA_PY="$(scripts/setup-llamacpp.sh "${LLAMACPP_VENV:-$HOME/.cache/feinschliff/llamacpp-venv}" | tail -n 1)"
read -r -a TYPES <<<"${TYPES:-f32 f16 bf16 q8_0 q4_0 q4_k q4_k_m}"
TMP="$(mktemp -d "${TMPDIR:-/tmp}/bench-gguf.XXXXXX")"
trap 'rm -rf "$TMP"' EXIT

echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), $(nproc) cores"
base=""
for type in "${TYPES[@]}"; do
    out="$TMP/$type.gguf"
    start=$(date +%s.%N)
    "$BIN" export gguf --model "$MODEL" --out "$out" --type "$type" >"$TMP/$type.log"
    seconds=$(echo "$(date +%s.%N) - $start" | bc)
    mib=$(echo "scale=1; $(stat -c %s "$out") / 1048576" | bc)
    ppl=$("$LLAMA_PY" scripts/gguf_perplexity.py --data data/corpora/de-admin/valid.jsonl \
        --limit "${RECORDS:-40}" --max-len "${MAX_LEN:-512}" "$out" |
        "$LLAMA_PY" -c 'import json,sys; print(json.load(sys.stdin)["perplexity"])')
    base="${base:-$ppl}"
    change=$(echo "scale=6; ($ppl / $base - 1) * 100" | bc)
    printf '%-7s export %6.1f s  %7.1f MiB  perplexity %.4f (%+.2f %% vs %s)  types: %s\n' \
        "$type" "$seconds" "$mib" "$ppl" "$change" "${TYPES[0]}" "$(grep '^tensors:' "$TMP/$type.log" | cut -d' ' -f2-)"
done
