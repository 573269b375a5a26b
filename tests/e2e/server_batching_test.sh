#!/usr/bin/env bash
# ds4-server --parallel 4 on the tiny trained chat model: four streaming clients with
# different prompts at once each get exactly the text (and token ids) they get alone
# (tests/clients/batching_client.mjs), and the server's request log shows decode
# steps that ran more than one sequence (mean batch above 1).
set -euo pipefail
source "$DS4_SOURCE_DIR/tests/clients/server_harness.sh"
require_server_binary
require_node

start_server --parallel 4
grep -q '^ds4-server: ready: .*4 parallel' "$SERVER_LOG" || fail "the ready line does not say 4 parallel"
timeout 300 node "$DS4_SOURCE_DIR/tests/clients/batching_client.mjs" "$BASE_URL" \
  || fail "concurrent streams differ from their lone runs"
# The per-request lines end in "batch B": the mean number of sequences per decode
# step while the request ran.
batched=$(sed -n 's/^ds4-server: request: .*, batch \([0-9.]*\)$/\1/p' "$SERVER_LOG" \
  | awk '$1 > 1.0 { n++ } END { print n + 0 }')
requests=$(grep -c '^ds4-server: request: ' "$SERVER_LOG" || true)
[ "$requests" -eq 8 ] || fail "the server log shows $requests requests, expected 8"
[ "$batched" -ge 2 ] || fail "no request ran in decode steps of more than one sequence ($batched of $requests)"
grep '^ds4-server: request: ' "$SERVER_LOG"
stop_server
echo "PASS: 4 concurrent streams equal their lone runs; $batched of $requests requests decoded in batches"
