#!/usr/bin/env bash
# Installs every Debian package the build, the tests and the benchmarks need, and the
# Python packages the tests use as independent references. Idempotent: when everything
# is present it does nothing (no apt-get, no pip).
set -euo pipefail

APT_PKGS=(
  build-essential cmake pkg-config git
  libsqlite3-dev libgit2-dev libssl-dev libarchive-dev libzstd-dev
  libcivetweb-dev libcurl4-openssl-dev libjansson-dev libinih-dev
  libcmocka-dev
  python3 python3-venv openssl curl
  wrk prometheus
  chromium chromium-driver fonts-liberation
)

missing=()
for p in "${APT_PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "deps: installing ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# Python references for the tests (model_signing verifies our signatures independently;
# selenium drives the system chromium through /usr/bin/chromedriver for the web UI tests).
# They live in a project-local virtual environment so the system Python is untouched.
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${MLV_VENV:-$ROOT/.venv}"
PY_PKGS=(model-signing pyopenssl numpy gguf zstandard openai selenium)
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
need_py=()
for p in "${PY_PKGS[@]}"; do
  "$VENV/bin/python" -m pip show -q "$p" >/dev/null 2>&1 || need_py+=("$p")
done
if [ ${#need_py[@]} -gt 0 ]; then
  echo "deps: pip installing ${need_py[*]}"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check "${need_py[@]}"
fi
