#!/usr/bin/env bash
# Evaluation and generation speed, side by side on this machine, alternating per round:
#   eval        `feinschliff eval` (packed rows on the host kernels) against transformers
#               (scripts/reference_eval.py: sdpa, one record per forward pass) on all of the
#               bundled valid.jsonl at max-len 512, f32, 2 threads; losses printed for both.
#   generation  greedy, the PROMPT below (32 tokens for SmolLM2), 128 new tokens:
#               `feinschliff generate` (its decode tokens/s), transformers `generate`
#               (scripts/reference_generate.py), and llama.cpp on our f32 and q8_0 GGUF
#               exports of the same model (llama-cpp-python's eval loop, decode only).
#
# Usage: scripts/bench-inference.sh [MODEL_DIR]   (default checkpoints/base/smollm2-135m-instruct)
# Environment: FEINSCHLIFF (the binary), ROUNDS (2), PEFT_VENV (the reference venv,
# ~/.cache/peft-bench/venv), LLAMACPP_VENV (scripts/setup-llamacpp.sh's venv).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
MODEL="${1:-checkpoints/base/smollm2-135m-instruct}"
BIN="${FEINSCHLIFF:-${CARGO_TARGET_DIR:-$ROOT/target}/release/feinschliff}"
VENV="${PEFT_VENV:-$HOME/.cache/peft-bench/venv}"
LLAMA_PY="$(scripts/setup-llamacpp.sh "${LLAMACPP_VENV:-$HOME/.cache/feinschliff/llamacpp-venv}" | tail -n 1)"
DATA=data/corpora/de-admin/valid.jsonl
PROMPT="Der Antrag auf Erteilung einer Baugenehmigung ist schriftlich bei der unteren Bauaufsichtsbehörde einzureichen. Dem Antrag sind alle Unterlagen beizufügen, die"
NEW=128
TMP="$(mktemp -d "${TMPDIR:-/tmp}/bench-inference.XXXXXX")"
trap 'rm -rf "$TMP"' EXIT

"$BIN" export gguf --model "$MODEL" --out "$TMP/f32.gguf" --type f32 >/dev/null
"$BIN" export gguf --model "$MODEL" --out "$TMP/q8_0.gguf" --type q8_0 >/dev/null

llama_cpp_decode() { # GGUF -> "prompt_tokens decode_tokens_per_s"
    "$LLAMA_PY" - "$1" "$PROMPT" "$NEW" <<'PY'
import sys, time
import numpy as np
from llama_cpp import Llama
path, prompt, new = sys.argv[1], sys.argv[2], int(sys.argv[3])
llm = Llama(model_path=path, n_ctx=512, n_threads=2, verbose=False)
ids = llm.tokenize(prompt.encode(), add_bos=llm._model.add_bos_token(), special=False)
llm.eval(ids)
token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
start = time.time()
for _ in range(new - 1):  # the first new token came from the prefill
    llm.eval([token])
    token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
print(len(ids), (new - 1) / (time.time() - start))
PY
}

echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | xargs), $(nproc) cores; $(date -u +%F)"
for round in $(seq 1 "${ROUNDS:-2}"); do
    ours=$("$BIN" eval --model "$MODEL" --data "$DATA" --max-len 512 --json 2>/dev/null)
    theirs=$("$VENV/bin/python" scripts/reference_eval.py --model "$MODEL" --data "$DATA" --max-len 512 --threads 2)
    python3 - "$round" "$ours" "$theirs" <<'PY'
import json, sys
r, a, b = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
print(f"round {r} eval: feinschliff {a['tokens_per_second']:.1f} tok/s (loss {a['loss']:.6f}, "
      f"{a['tokens']} tokens, peak RSS {a['peak_rss_bytes'] / 1e9:.2f} GB)  transformers "
      f"{b['tokens_per_s']:.1f} tok/s (loss {b['loss']:.6f})  = {a['tokens_per_second'] / b['tokens_per_s']:.2f}x")
PY
    ours=$("$BIN" generate --model "$MODEL" --prompt "$PROMPT" --max-new-tokens "$NEW" 2>&1 >/dev/null | grep -o 'decode: .*')
    theirs=$("$VENV/bin/python" scripts/reference_generate.py "$MODEL" "$PROMPT" --new-tokens "$NEW" --threads 2)
    read -r n f32 < <(llama_cpp_decode "$TMP/f32.gguf")
    read -r _ q8 < <(llama_cpp_decode "$TMP/q8_0.gguf")
    printf 'round %d generate (prompt %s tokens): feinschliff %s | %s | llama.cpp f32 %.1f tokens/s, q8_0 %.1f tokens/s\n' \
        "$round" "$n" "$ours" "${theirs#*; }" "$f32" "$q8"
done
