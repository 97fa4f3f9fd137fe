#!/usr/bin/env bash
# Makes (or reuses) a Python venv with torch==2.9.0 from PyPI, the LibTorch that burn-tch 0.22.1
# builds and links against, and prints the environment a `--features tch` build and its binary
# need. By default it reuses the project's reference venv (same torch pin); when that venv lacks
# torch 2.9, scripts/setup-venv.sh makes (or completes) it.
#
# Usage:  eval "$(scripts/setup-libtorch.sh [VENV_DIR])"
#         cargo build --release --features tch
#         target/release/feinschliff train --config ... --set model.device='"tch-cpu"'
#
# PyPI's torch 2.9.0 for Linux x86_64 is the CUDA 12.8 build (about 7 GB with its nvidia-*
# wheels); it runs on CPU too. On a GPU machine without network, point VENV_DIR at a venv (or a
# site-packages' parent) whose torch is 2.9.x.
set -euo pipefail
VENV=${1:-${LIBTORCH_VENV:-$HOME/.cache/peft-bench/venv}}
PY="$VENV/bin/python"
have_torch() {
  "$PY" -c 'import torch, sys; sys.exit(0 if torch.__version__.split("+")[0].startswith("2.9.") else 1)' 2>/dev/null
}
if ! have_torch; then
  echo "setting up $VENV with scripts/setup-venv.sh (torch==2.9.0 from PyPI; about 7 GB)" >&2
  bash "$(dirname "${BASH_SOURCE[0]}")/setup-venv.sh" "$VENV" >&2
  have_torch || { echo "$0: $VENV has no torch 2.9.x after scripts/setup-venv.sh" >&2; exit 1; }
fi
LIB=$("$PY" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
VERSION=$("$PY" -c 'import torch; print(torch.__version__)')
echo "# torch $VERSION in $VENV" >&2
echo "export VIRTUAL_ENV=\"$VENV\""
echo "export PATH=\"$VENV/bin:\$PATH\""
echo "export LIBTORCH_USE_PYTORCH=1"
echo "export LD_LIBRARY_PATH=\"$LIB\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}\""
