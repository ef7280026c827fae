#!/usr/bin/env bash
# Installs what the engine benchmark (bench/engine) and the llama.cpp golden files
# (tests/ref/make_llama_golden.py) need beyond scripts/deps.sh: llama-cpp-python, the
# peer llama.cpp, in the project's virtual environment. It builds llama.cpp from source
# for this CPU (several minutes). Idempotent and quiet when already installed.
# The version is pinned so that regenerated golden files come from the same llama.cpp
# as the checked-in ones (they record it); MLV_LLAMA_CPP_PYTHON overrides it.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${MLV_VENV:-$ROOT/.venv}"
PKG="llama-cpp-python"
VERSION="${MLV_LLAMA_CPP_PYTHON:-0.3.36}"

if [ ! -x "$VENV/bin/python" ]; then
  "$ROOT/scripts/deps.sh"
fi
if "$VENV/bin/python" -c "import llama_cpp" >/dev/null 2>&1; then
  exit 0
fi
command -v cmake >/dev/null && command -v c++ >/dev/null || {
  echo "deps-llama-cpp: cmake and a C++ compiler are needed (scripts/deps.sh installs them)" >&2
  exit 1
}
echo "deps-llama-cpp: pip installing $PKG==$VERSION (builds llama.cpp; takes a few minutes)"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check "$PKG==$VERSION"
"$VENV/bin/python" -c "import llama_cpp" || {
  echo "deps-llama-cpp: $PKG installed but does not import" >&2
  exit 1
}
