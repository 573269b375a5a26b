#!/usr/bin/env bash
# 64 clients stream at once over loopback: all are queued and all get complete
# answers (Paris, finish chunk, usage, [DONE]); none is dropped.
set -euo pipefail
source "$DS4_SOURCE_DIR/tests/clients/server_harness.sh"
require_server_binary
require_node

start_server
timeout 600 node "$DS4_SOURCE_DIR/tests/clients/benchy_client.mjs" --base-url "$BASE_URL" --flood 64 \
  || fail "not every one of 64 concurrent clients got a complete answer"
served=$(grep -c 'finish stop' "$SERVER_LOG" || true)
[ "$served" -eq 64 ] || fail "the server log shows $served finished generations, expected 64"
stop_server
echo "PASS: 64 concurrent clients all answered"
