#!/usr/bin/env bash
# The project's reference Python venv: PyTorch, transformers, PEFT and TRL at the pinned versions
# the reference scripts (scripts/peft_reference.py, scripts/interop.sh, scripts/reference_eval.py,
# the fixture generators; TRL and datasets for scripts/make_dpo_fixture.py) and the LibTorch build
# (scripts/setup-libtorch.sh) use.
#
# Usage: scripts/setup-venv.sh [VENV_DIR]     (default: ~/.cache/peft-bench/venv)
#
# Idempotent: a venv whose packages already satisfy the pins is left alone (no network).
# Otherwise the venv is created with `python3 -m venv` (when missing) and the packages are
# installed from PyPI. PyPI's torch 2.9.0 for Linux x86_64 is the CUDA 12.8 build, about 7 GB
# with its nvidia-* wheels; it runs on the CPU as well.
# Environment: PYTHON (the interpreter that creates the venv; default python3).
set -euo pipefail
if [ $# -gt 1 ] || [[ ${1:-} == -h || ${1:-} == --help ]]; then
  sed -n 2,13p "$0" >&2
  exit 2
fi
VENV=${1:-$HOME/.cache/peft-bench/venv}
PY="$VENV/bin/python"
PINS=(torch==2.9.0 transformers==5.23.0 peft==0.21.2 trl==1.16.0 datasets==5.2.0 bitsandbytes==0.50.2
  safetensors gguf accelerate sentencepiece)

# Exit status 0 when every package of PINS is installed (at its pinned version, local build
# tags like +cu128 ignored).
satisfied() {
  [ -x "$PY" ] || return 1
  "$PY" - "${PINS[@]}" 2>/dev/null <<'PYEOF'
import sys
from importlib.metadata import PackageNotFoundError, version

for spec in sys.argv[1:]:
    name, _, pin = spec.partition("==")
    try:
        installed = version(name)
    except PackageNotFoundError:
        sys.exit(1)
    if pin and installed.split("+")[0] != pin:
        sys.exit(1)
PYEOF
}

if satisfied; then
  echo "$VENV: ready (${PINS[*]})" >&2
  exit 0
fi
if [ ! -x "$PY" ]; then
  echo "creating $VENV" >&2
  mkdir -p "$(dirname "$VENV")"
  "${PYTHON:-python3}" -m venv "$VENV"
fi
echo "installing into $VENV: ${PINS[*]} (torch is a ~7 GB download)" >&2
"$PY" -m pip install --disable-pip-version-check --quiet --upgrade pip >&2
"$PY" -m pip install --disable-pip-version-check --quiet "${PINS[@]}" >&2
if ! satisfied; then
  echo "$0: $VENV still lacks some of: ${PINS[*]}" >&2
  exit 1
fi
echo "$VENV: ready (${PINS[*]})" >&2
