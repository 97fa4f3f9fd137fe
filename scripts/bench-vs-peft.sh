#!/usr/bin/env bash
# Side-by-side training speed and memory: feinschliff against PyTorch + PEFT
# (scripts/peft_reference.py) on the same machine, model, data and setup
# (SmolLM2-135M-Instruct, LoRA r16 alpha 32 dropout 0.05 on all 7 projections, AdamW lr 2e-4,
# micro-batch 4 x 512 tokens of de-admin law text), against PEFT's best setting on this machine:
# every round runs each of our configurations and each PEFT mode once, alternating; "PEFT best"
# is the PEFT mode with the highest median tokens/s, and every ratio is taken against it.
# Prints the CPU model with its bf16 flags, every run, the medians and the ratios.
#
# Usage: scripts/bench-vs-peft.sh [--model-bf16 DIR] [OURS ...]   (default: flex, and tch-cpu
#   when FEINSCHLIFF_TCH is set)
#   OURS = DEVICE[/BASE_DTYPE[/MATMUL_DTYPE]], e.g. flex, tch-cpu/bf16/bf16 (BASE_DTYPE sets
#   model.base_dtype, MATMUL_DTYPE model.matmul_dtype: auto, the default, f32 or bf16)
#   --model-bf16 DIR: the bf16 copy PEFT's bf16 mode loads (default $PEFT_MODEL_BF16, else
#   checkpoints/base/smollm2-135m-instruct-bf16; `scripts/fetch-smollm2.sh DIR --dtype bf16`
#   makes it when missing)
# Environment: ROUNDS (3), STEPS (measured steps per run, 4), WARMUP (1 for us; PEFT's own 2),
#   PEFT_MODES ("fp32 autocast_bf16 bf16"),
#   FEINSCHLIFF (flex build, target/release/feinschliff), FEINSCHLIFF_TCH (the --features tch
#   build, for tch-* devices), PEFT_VENV (~/.cache/peft-bench/venv),
#   PEFT_MODEL (the f32 model PEFT trains, checkpoints/base/smollm2-135m-instruct: the same
#   directory as ours), OUT (a directory for the logs).
# Needs: scripts/fetch-smollm2.sh done (the model of both sides), scripts/setup-venv.sh done
# (PyTorch + PEFT), and for tch devices scripts/setup-libtorch.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
STEPS=${STEPS:-4}
WARMUP=${WARMUP:-1}
TARGET=${CARGO_TARGET_DIR:-target}
FEINSCHLIFF=${FEINSCHLIFF:-$TARGET/release/feinschliff}
FEINSCHLIFF_TCH=${FEINSCHLIFF_TCH:-}
PEFT_VENV=${PEFT_VENV:-$HOME/.cache/peft-bench/venv}
PEFT_MODEL=${PEFT_MODEL:-checkpoints/base/smollm2-135m-instruct}
PEFT_MODEL_BF16=${PEFT_MODEL_BF16:-checkpoints/base/smollm2-135m-instruct-bf16}
OUT=${OUT:-$(mktemp -d)}
read -r -a PEFT_MODES <<<"${PEFT_MODES:-fp32 autocast_bf16 bf16}"
OURS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --model-bf16) PEFT_MODEL_BF16=${2:?--model-bf16 needs a directory}; shift 2 ;;
    --model-bf16=*) PEFT_MODEL_BF16=${1#*=}; shift ;;
    *) OURS+=("$1"); shift ;;
  esac
done
if [ ${#OURS[@]} -eq 0 ]; then
  OURS=(flex)
  [ -z "$FEINSCHLIFF_TCH" ] || OURS+=(tch-cpu)
fi
mkdir -p "$OUT"

complete_model() { [ -f "$1/config.json" ] && [ -f "$1/model.safetensors" ] && [ -f "$1/tokenizer.json" ]; }
for mode in "${PEFT_MODES[@]}"; do
  if [ "$mode" = bf16 ] && ! complete_model "$PEFT_MODEL_BF16"; then
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

tokens_per_second() { # OURS_JSON | THEIRS_JSONL -> "tok_s rss_gb"
  python3 - "$1" <<'PY'
import json, sys
path = sys.argv[1]
if path.endswith(".json"):
    r = json.load(open(path))
    print(r["tokens_per_second"], r["peak_rss_bytes"] / 1e9)
else:
    r = [json.loads(l) for l in open(path) if '"summary"' in l][-1]
    print(r["median_tok_per_s"], r["peak_rss_mb_train"] * 1024 * 1024 / 1e9)
PY
}

flags=$(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -E '^(avx512f|avx512_bf16|amx_bf16|avx512_fp16)$' | xargs)
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs) [${flags:-no avx512}]; $(date -u +%F)"
echo "logs: $OUT"
RESULTS="$OUT/results.tsv"
: >"$RESULTS"
for round in $(seq 1 "$ROUNDS"); do
  for config in "${OURS[@]}"; do
    IFS=/ read -r device base_dtype matmul_dtype <<<"$config"
    log="$OUT/ours-${config//\//-}-$round.json"
    ours "$device" "${base_dtype:-auto}" "${matmul_dtype:-auto}" "$log"
    read -r tok rss < <(tokens_per_second "$log")
    printf 'round %d  feinschliff %-20s %7.1f tok/s  peak RSS %.2f GB\n' "$round" "$config" "$tok" "$rss"
    printf 'feinschliff %s\t%s\t%s\n' "$config" "$tok" "$rss" >>"$RESULTS"
  done
  for mode in "${PEFT_MODES[@]}"; do
    log="$OUT/peft-$mode-$round.jsonl"
    theirs "$mode" "$log"
    read -r tok rss < <(tokens_per_second "$log")
    printf 'round %d  PEFT        %-20s %7.1f tok/s  peak RSS %.2f GB\n' "$round" "$mode" "$tok" "$rss"
    printf 'PEFT %s\t%s\t%s\n' "$mode" "$tok" "$rss" >>"$RESULTS"
  done
done
python3 - "$RESULTS" <<'PY'
import collections, statistics, sys
runs = collections.defaultdict(list)
for line in open(sys.argv[1]):
    name, tok, rss = line.rstrip("\n").split("\t")
    runs[name].append((float(tok), float(rss)))
median = {n: (statistics.median(t for t, _ in r), max(m for _, m in r)) for n, r in runs.items()}
peft = {n: v for n, v in median.items() if n.startswith("PEFT ")}
best = max(peft, key=lambda n: peft[n][0])
best_tok, best_rss = peft[best]
rounds = len(next(iter(runs.values())))
print(f"medians over {rounds} rounds; PEFT best = {best[5:]} ({best_tok:.1f} tok/s)")
for name, (tok, rss) in sorted(median.items(), key=lambda kv: -kv[1][0]):
    print(f"  {name:<34} {tok:7.1f} tok/s  {tok / best_tok:5.2f}x PEFT best  "
          f"peak RSS {rss:.2f} GB ({rss / best_rss:.0%} of PEFT best's)")
PY
