#!/usr/bin/env bash
# llama-benchy's measurement rules against ds4-server (tests/clients/benchy_client.mjs):
# pp / tg / depth / concurrency cases, tokens counted one per chunk and via token_ids,
# the final usage chunk; the client's counts must equal the server's usage numbers,
# and a follow-up turn must reuse the kept prompt state.
set -euo pipefail
source "$DS4_SOURCE_DIR/tests/clients/server_harness.sh"
require_server_binary
require_node

start_server
timeout 900 node "$DS4_SOURCE_DIR/tests/clients/benchy_client.mjs" --base-url "$BASE_URL" \
  || fail "the llama-benchy-rules client failed"
stop_server
echo "PASS: llama-benchy counts equal the server usage"
