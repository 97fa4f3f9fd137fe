#!/usr/bin/env bash
# llama.cpp for checks only: PyPI's llama-cpp-python 0.3.36 source distribution (which vendors
# llama.cpp) built into a venv, CPU only, so that scripts/llamacpp_check.py can load our GGUF
# exports with llama.cpp itself. Nothing of it ships with feinschliff.
#
# Usage: scripts/setup-llamacpp.sh [VENV]     (default ~/.cache/feinschliff/llamacpp-venv)
#
# Cached: when VENV/bin/python already imports llama_cpp 0.3.36, nothing is done; the sdist is
# kept in ~/.cache/feinschliff/sdist/ and checked against its SHA-256 before use.
# Needs: python3 (3.9+) with venv, a C/C++ compiler; cmake and ninja come from PyPI.
# Prints the venv's python on the last line of stdout.
set -euo pipefail

VENV="${1:-$HOME/.cache/feinschliff/llamacpp-venv}"
VERSION=0.3.36
SHA256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
SDIST_DIR="$HOME/.cache/feinschliff/sdist"
SDIST="$SDIST_DIR/llama_cpp_python-$VERSION.tar.gz"

ready() {
    [[ -x "$VENV/bin/python" ]] && "$VENV/bin/python" -c \
        "import llama_cpp, gguf, numpy; assert llama_cpp.__version__ == '$VERSION'" 2>/dev/null
}
if ready; then
    echo "$VENV/bin/python"
    exit 0
fi

mkdir -p "$SDIST_DIR"
if [[ ! -f "$SDIST" ]] || ! echo "$SHA256  $SDIST" | sha256sum -c --quiet - 2>/dev/null; then
    echo "setup-llamacpp: downloading the llama-cpp-python $VERSION sdist (77 MB)" >&2
    python3 - "$VERSION" "$SDIST.part" <<'PY'
import json, sys, urllib.parse, urllib.request
version, out = sys.argv[1], sys.argv[2]
index = f"https://pypi.org/pypi/llama-cpp-python/{version}/json"
try:
    urls = json.load(urllib.request.urlopen(index, timeout=60))["urls"]
except Exception:  # some mirrors only serve the project-wide JSON
    index = "https://pypi.org/pypi/llama-cpp-python/json"
    urls = json.load(urllib.request.urlopen(index, timeout=60))["releases"][version]
sdist = next(u for u in urls if u["packagetype"] == "sdist")
url = urllib.parse.urljoin(index, sdist["url"])
with urllib.request.urlopen(url, timeout=600) as r, open(out, "wb") as f:
    while chunk := r.read(1 << 20):
        f.write(chunk)
PY
    echo "$SHA256  $SDIST.part" | sha256sum -c --quiet - || {
        echo "setup-llamacpp: the download's SHA-256 is not $SHA256" >&2
        exit 1
    }
    mv "$SDIST.part" "$SDIST"
fi

echo "setup-llamacpp: building llama.cpp into $VENV (CPU only; several minutes)" >&2
start=$(date +%s)
python3 -m venv "$VENV"
"$VENV/bin/pip" install --quiet --upgrade pip
"$VENV/bin/pip" install --quiet cmake ninja scikit-build-core numpy gguf==0.19.0
# Small and portable: no GPU back ends, no -march=native, no tests/examples/tools/server.
export CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_CUDA=OFF -DGGML_METAL=OFF -DGGML_VULKAN=OFF \
-DGGML_OPENMP=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF \
-DLLAMA_BUILD_SERVER=OFF -DLLAMA_CURL=OFF -DLLAVA_BUILD=OFF -DLLAMA_BUILD_MTMD=OFF"
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}"
"$VENV/bin/pip" install --no-build-isolation --no-deps "$SDIST"
"$VENV/bin/pip" install --quiet typing-extensions diskcache jinja2
ready || {
    echo "setup-llamacpp: $VENV does not import llama_cpp $VERSION after the build" >&2
    exit 1
}
echo "setup-llamacpp: built in $(($(date +%s) - start)) s" >&2
echo "$VENV/bin/python"
