#!/usr/bin/env bash
# Side-by-side training speed and memory: feinschliff against PyTorch + PEFT
# (scripts/peft_reference.py) on the same machine, model, data and setup
# (SmolLM2-135M-Instruct, LoRA r16 alpha 32 dropout 0.05 on all 7 projections, AdamW lr 2e-4,
# micro-batch 4 x 512 tokens of de-admin law text). Runs alternate (ours, theirs, ours, ...),
# so both see the same machine load; prints each pair's ratio and the median ratio.
#
# Usage: scripts/bench-vs-peft.sh [--model-bf16 DIR] [PAIR ...]   (default: flex:fp32)
#   PAIR = OUR_DEVICE[/BASE_DTYPE[/MATMUL_DTYPE]]:PEFT_MODE, e.g. flex:fp32,
#   tch-cpu/bf16/bf16:autocast_bf16 (BASE_DTYPE sets model.base_dtype, MATMUL_DTYPE
#   model.matmul_dtype: auto, the default, f32 or bf16)
#   --model-bf16 DIR: the bf16 copy PEFT's bf16 mode loads (default $PEFT_MODEL_BF16, else
#   checkpoints/base/smollm2-135m-instruct-bf16; `scripts/fetch-smollm2.sh DIR --dtype bf16`
#   makes it when a pair asks for PEFT's bf16 mode and it is missing)
# Environment: ROUNDS (2), STEPS (measured steps per run, 4), WARMUP (1 for us; PEFT's own 2),
#   FEINSCHLIFF (flex build, target/release/feinschliff), FEINSCHLIFF_TCH (the --features tch
#   build, for tch-* devices), PEFT_VENV (~/.cache/peft-bench/venv),
#   PEFT_MODEL (the f32 model PEFT trains, checkpoints/base/smollm2-135m-instruct: the same
#   directory as ours), OUT (a directory for the logs).
# Needs: scripts/fetch-smollm2.sh done (the model of both sides), scripts/setup-venv.sh done
# (PyTorch + PEFT), and for tch pairs scripts/setup-libtorch.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-2}
STEPS=${STEPS:-4}
WARMUP=${WARMUP:-1}
TARGET=${CARGO_TARGET_DIR:-target}
FEINSCHLIFF=${FEINSCHLIFF:-$TARGET/release/feinschliff}
FEINSCHLIFF_TCH=${FEINSCHLIFF_TCH:-}
PEFT_VENV=${PEFT_VENV:-$HOME/.cache/peft-bench/venv}
PEFT_MODEL=${PEFT_MODEL:-checkpoints/base/smollm2-135m-instruct}
PEFT_MODEL_BF16=${PEFT_MODEL_BF16:-checkpoints/base/smollm2-135m-instruct-bf16}
OUT=${OUT:-$(mktemp -d)}
PAIRS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --model-bf16) PEFT_MODEL_BF16=${2:?--model-bf16 needs a directory}; shift 2 ;;
    --model-bf16=*) PEFT_MODEL_BF16=${1#*=}; shift ;;
    *) PAIRS+=("$1"); shift ;;
  esac
done
[ ${#PAIRS[@]} -gt 0 ] || PAIRS=(flex:fp32)
mkdir -p "$OUT"

complete_model() { [ -f "$1/config.json" ] && [ -f "$1/model.safetensors" ] && [ -f "$1/tokenizer.json" ]; }
for pair in "${PAIRS[@]}"; do
  if [ "${pair#*:}" = bf16 ] && ! complete_model "$PEFT_MODEL_BF16"; then
    echo "making the bf16 copy for PEFT's bf16 mode: $PEFT_MODEL_BF16" >&2
    if [ -x "$FEINSCHLIFF" ]; then
      FEINSCHLIFF=$FEINSCHLIFF scripts/fetch-smollm2.sh "$PEFT_MODEL_BF16" --dtype bf16 >&2
    else
      scripts/fetch-smollm2.sh "$PEFT_MODEL_BF16" --dtype bf16 >&2
    fi
    break
  fi
done

ours() { # DEVICE BASE_DTYPE MATMUL_DTYPE LOG
  local binary=$FEINSCHLIFF env=()
  if [[ $1 == tch-* ]]; then
    [ -n "$FEINSCHLIFF_TCH" ] || { echo "FEINSCHLIFF_TCH must name a --features tch build" >&2; exit 2; }
    binary=$FEINSCHLIFF_TCH
    env=(env $(bash scripts/setup-libtorch.sh 2>/dev/null | sed -n 's/^export LD_LIBRARY_PATH="\(.*\)\${LD_LIBRARY_PATH.*$/LD_LIBRARY_PATH=\1/p'))
  fi
  "${env[@]}" "$binary" bench --config configs/de-admin-laws.toml \
    --set "model.device=\"$1\"" --set "model.base_dtype=\"$2\"" --set "model.matmul_dtype=\"$3\"" \
    --set train.micro_batch=4 --set train.grad_accum=1 \
    --set data.max_len=512 --set lora.r=16 --set lora.alpha=32.0 --set lora.dropout=0.05 \
    --set 'lora.target_modules=["all-linear"]' --set train.lr=2e-4 \
    --steps "$STEPS" --warmup "$WARMUP" --json 2>"$4.log" >"$4"
}

theirs() { # MODE LOG
  "$PEFT_VENV/bin/python" scripts/peft_reference.py --model "$PEFT_MODEL" \
    --model-bf16 "$PEFT_MODEL_BF16" --mode "$1" --batch 4 --seq 512 --steps $((STEPS + 2)) --warmup 2 --threads 2 \
    --log "$2" >"$2.out" 2>&1
}

summary() { # OURS_JSON THEIRS_JSONL -> "our_tok_s their_tok_s our_rss_gb their_rss_gb"
  python3 - "$1" "$2" <<'PY'
import json, sys
ours = json.load(open(sys.argv[1]))
theirs = [json.loads(l) for l in open(sys.argv[2]) if '"summary"' in l][-1]
print(ours["tokens_per_second"], theirs["median_tok_per_s"],
      ours["peak_rss_bytes"] / 1e9, theirs["peak_rss_mb_train"] * 1024 * 1024 / 1e9)
PY
}

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); $(date -u +%F)"
echo "logs: $OUT"
for pair in "${PAIRS[@]}"; do
  ours_side=${pair%%:*} mode=${pair#*:}
  IFS=/ read -r device base_dtype matmul_dtype <<<"$ours_side"
  base_dtype=${base_dtype:-auto} matmul_dtype=${matmul_dtype:-auto}
  tag=$device-$base_dtype-$matmul_dtype
  ratios=()
  for round in $(seq 1 "$ROUNDS"); do
    ours "$device" "$base_dtype" "$matmul_dtype" "$OUT/ours-$tag-$round.json"
    theirs "$mode" "$OUT/peft-$mode-$tag-$round.jsonl"
    read -r a b ra rb < <(summary "$OUT/ours-$tag-$round.json" "$OUT/peft-$mode-$tag-$round.jsonl")
    ratio=$(python3 -c "print(f'{$a / $b:.2f}')")
    ratios+=("$ratio")
    printf '%-8s vs PEFT %-14s round %d: %7.1f vs %7.1f tok/s = %sx; peak RSS %.2f vs %.2f GB\n' \
      "$ours_side" "$mode" "$round" "$a" "$b" "$ratio" "$ra" "$rb"
  done
  median=$(python3 -c "import statistics, sys; print(statistics.median(map(float, sys.argv[1:])))" "${ratios[@]}")
  echo "$ours_side vs PEFT $mode: median ratio ${median}x over $ROUNDS rounds"
done
