#!/usr/bin/env bash
# ds4-server's life cycle:
#  * the port is bound before the model loads: /v1/models and completions answer
#    503 while the model file is still being read (a FIFO nobody writes to yet);
#  * SIGTERM during the load exits at once with status 0;
#  * a second server on a busy port fails within a second, naming the port;
#  * --cors answers preflight requests;
#  * SIGTERM with a stream in flight cancels it (the client gets an error event and
#    [DONE]) and the process exits with status 0.
set -euo pipefail
source "$DS4_SOURCE_DIR/tests/clients/server_harness.sh"
require_server_binary
command -v curl >/dev/null || { echo "SKIP: curl is not installed"; exit 77; }

# 1. 503 while loading: opening a FIFO for reading blocks until a writer appears.
fifo="$HARNESS_TMP/model.fifo"
mkfifo "$fifo"
loading_log="$HARNESS_TMP/loading.log"
"$SERVER_BIN" -m "$fifo" --host 127.0.0.1 --port 0 --backend cpu >"$loading_log" 2>&1 &
loading_pid=$!
HARNESS_PIDS+=("$loading_pid")
for i in $(seq 1 100); do
  grep -q 'listening on' "$loading_log" 2>/dev/null && break
  sleep 0.1
done
port=$(sed -n 's/^ds4-server: listening on http:\/\/127\.0\.0\.1:\([0-9]*\).*/\1/p' "$loading_log")
[ -n "$port" ] || { cat "$loading_log"; fail "the loading server did not report its port"; }
response=$(curl -s --max-time 10 -w ' %{http_code}' "http://127.0.0.1:$port/v1/models")
case "$response" in
  *'model is loading'*" 503") echo "ok - /v1/models answers 503 while loading" ;;
  *) fail "/v1/models while loading: $response" ;;
esac
response=$(curl -s --max-time 10 -w ' %{http_code}' -H 'Content-Type: application/json' \
  -d '{"messages":[{"role":"user","content":"hi"}]}' "http://127.0.0.1:$port/v1/chat/completions")
case "$response" in
  *" 503") echo "ok - completions answer 503 while loading" ;;
  *) fail "completions while loading: $response" ;;
esac

# 2. A busy port fails fast with a clear message.
start=$(date +%s%N)
status=0
timeout 10 "$SERVER_BIN" -m "$CHAT_MODEL" --host 127.0.0.1 --port "$port" >"$HARNESS_TMP/busy.log" 2>&1 \
  || status=$?
elapsed_ms=$(( ($(date +%s%N) - start) / 1000000 ))
[ "$status" -ne 0 ] || fail "a second server on busy port $port did not fail"
grep -q "cannot listen on 127.0.0.1:$port" "$HARNESS_TMP/busy.log" \
  || fail "busy port message: $(cat "$HARNESS_TMP/busy.log")"
[ "$elapsed_ms" -lt 1000 ] || fail "the busy port took $elapsed_ms ms to be reported"
echo "ok - busy port reported in $elapsed_ms ms: $(head -n 1 "$HARNESS_TMP/busy.log")"

# 3. SIGTERM while loading.
kill -TERM "$loading_pid"
for i in $(seq 1 50); do kill -0 "$loading_pid" 2>/dev/null || break; sleep 0.1; done
kill -0 "$loading_pid" 2>/dev/null && fail "the loading server ignored SIGTERM"
status=0
wait "$loading_pid" || status=$?
[ "$status" -eq 0 ] || fail "SIGTERM during load: exit status $status"
echo "ok - SIGTERM during load exits with status 0"

# 4. --cors answers preflight requests and marks responses.
start_server --cors
headers=$(curl -s --max-time 10 -D - -o /dev/null -X OPTIONS \
  -H 'Origin: http://example.test' -H 'Access-Control-Request-Method: POST' \
  "$BASE_URL/chat/completions")
grep -qi '^Access-Control-Allow-Origin: \*' <<<"$headers" || fail "no CORS header on preflight: $headers"
grep -q ' 204' <<<"$(head -n 1 <<<"$headers")" || fail "preflight status: $(head -n 1 <<<"$headers")"
headers=$(curl -s --max-time 10 -D - -o /dev/null "$BASE_URL/models")
grep -qi '^Access-Control-Allow-Origin: \*' <<<"$headers" || fail "no CORS header on /v1/models"
echo "ok - --cors: preflight 204 and Access-Control-Allow-Origin"

# 5. SIGTERM with a generation in flight.
stream_body='{"messages":[{"role":"user","content":"Write a poem"}],"thinking":{"type":"disabled"},"temperature":10,"min_p":0,"seed":3,"max_tokens":3000,"stream":true}'
curl -sN --max-time 120 -H 'Content-Type: application/json' -d "$stream_body" \
  "$BASE_URL/chat/completions" >"$HARNESS_TMP/inflight" &
curl_pid=$!
HARNESS_PIDS+=("$curl_pid")
for i in $(seq 1 100); do
  grep -q '^data: {' "$HARNESS_TMP/inflight" 2>/dev/null && break
  sleep 0.1
done
grep -q '^data: {' "$HARNESS_TMP/inflight" || fail "the in-flight stream never started"
stop_server
wait "$curl_pid" || true
grep -q 'shutting down' "$HARNESS_TMP/inflight" || fail "the in-flight stream got no shutdown error event"
tail -n 2 "$HARNESS_TMP/inflight" | grep -q '^data: \[DONE\]' || fail "the in-flight stream did not end with [DONE]"
grep -q 'finish cancelled' "$SERVER_LOG" || fail "the in-flight generation was not cancelled"
echo "ok - SIGTERM cancelled the in-flight stream and exited with status 0"
echo "PASS: ds4-server life cycle"
