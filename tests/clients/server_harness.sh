# Shared by the server end-to-end tests (source it): starts ds4-server on the tiny
# trained chat model on 127.0.0.1 with a free port, waits (bounded) until it is
# ready, and kills every server it started when the test exits.
#
#   source "$DS4_SOURCE_DIR/tests/clients/server_harness.sh"
#   start_server [extra ds4-server flags...]   # sets SERVER_PID, SERVER_PORT, SERVER_LOG, BASE_URL
#   stop_server                                # SIGTERM, waits (bounded), checks exit status 0

: "${DS4_BIN_DIR:?DS4_BIN_DIR must point at the built programs}"
: "${DS4_SOURCE_DIR:?DS4_SOURCE_DIR must point at the source tree}"
: "${DS4_TEST_DATA:=$DS4_SOURCE_DIR/tests/data}"

SERVER_BIN="$DS4_BIN_DIR/ds4-server"
CHAT_MODEL="$DS4_TEST_DATA/tiny-chat/model.gguf"
HARNESS_TMP=$(mktemp -d "${TMPDIR:-/tmp}/ds4-server-test.XXXXXX")
HARNESS_PIDS=()

harness_cleanup() {
  local pid
  for pid in "${HARNESS_PIDS[@]}"; do
    kill -KILL "$pid" 2>/dev/null || true
  done
  rm -rf "$HARNESS_TMP"
}
trap harness_cleanup EXIT

fail() {
  echo "FAIL: $*" >&2
  if [ -n "${SERVER_LOG:-}" ] && [ -f "$SERVER_LOG" ]; then
    echo "--- server log (last 30 lines) ---" >&2
    tail -n 30 "$SERVER_LOG" >&2
  fi
  exit 1
}

require_server_binary() {
  if [ ! -x "$SERVER_BIN" ]; then
    echo "SKIP: $SERVER_BIN was not built (cpp-httplib missing?)"
    exit 77
  fi
}

# start_server [flags...]: --port 0 lets the kernel pick a free port; the server
# prints it on its first line.
start_server() {
  require_server_binary
  SERVER_LOG="$HARNESS_TMP/server.$RANDOM.log"
  "$SERVER_BIN" -m "$CHAT_MODEL" --host 127.0.0.1 --port 0 --ctx 4096 --backend cpu "$@" \
    >"$SERVER_LOG" 2>&1 &
  SERVER_PID=$!
  HARNESS_PIDS+=("$SERVER_PID")
  local i
  for i in $(seq 1 600); do  # at most 60 s
    if grep -q '^ds4-server: ready' "$SERVER_LOG" 2>/dev/null; then break; fi
    kill -0 "$SERVER_PID" 2>/dev/null || fail "ds4-server exited during start-up"
    sleep 0.1
  done
  grep -q '^ds4-server: ready' "$SERVER_LOG" || fail "ds4-server not ready after 60 s"
  SERVER_PORT=$(sed -n 's/^ds4-server: listening on http:\/\/127\.0\.0\.1:\([0-9]*\).*/\1/p' \
    "$SERVER_LOG" | head -n 1)
  [ -n "$SERVER_PORT" ] || fail "could not read the port from the server log"
  BASE_URL="http://127.0.0.1:$SERVER_PORT/v1"
}

# stop_server: SIGTERM must end the process cleanly (status 0) within 20 s.
stop_server() {
  kill -TERM "$SERVER_PID"
  local i
  for i in $(seq 1 200); do
    kill -0 "$SERVER_PID" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$SERVER_PID" 2>/dev/null; then fail "ds4-server still running 20 s after SIGTERM"; fi
  local status=0
  wait "$SERVER_PID" || status=$?
  [ "$status" -eq 0 ] || fail "ds4-server exited with status $status after SIGTERM"
}

# Node.js for the client programs; the test skips visibly without it.
require_node() {
  if ! command -v node >/dev/null 2>&1; then
    echo "SKIP: node is not installed"
    exit 77
  fi
}
