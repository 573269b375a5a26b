#!/usr/bin/env bash
# ds4-server answers bad input with the right OpenAI error and keeps serving:
# malformed JSON, wrong types, an oversized body, invalid UTF-8, context overflow,
# an unknown route, and a client that drops mid-stream (its generation is
# cancelled). After each case a normal request must still be answered.
set -euo pipefail
source "$DS4_SOURCE_DIR/tests/clients/server_harness.sh"
command -v curl >/dev/null || { echo "SKIP: curl is not installed"; exit 77; }

start_server --max-body-bytes 65536
chat_url="$BASE_URL/chat/completions"
good='{"messages":[{"role":"user","content":"What is the capital of France?"}],"thinking":{"type":"disabled"},"temperature":0}'

# post BODY_FILE -> prints "<status> <body>"
post_file() {
  curl -s --max-time 60 -o "$HARNESS_TMP/body" -w '%{http_code}' -H 'Content-Type: application/json' \
    --data-binary @"$1" "$chat_url"
  printf ' '
  cat "$HARNESS_TMP/body"
}
post() {
  printf '%s' "$1" >"$HARNESS_TMP/request"
  post_file "$HARNESS_TMP/request"
}

expect() {  # expect NAME STATUS SUBSTRING RESPONSE
  local name=$1 status=$2 needle=$3 response=$4
  [ "${response%% *}" = "$status" ] || fail "$name: expected HTTP $status, got: $response"
  case "$response" in
    *"$needle"*) ;;
    *) fail "$name: response lacks '$needle': $response" ;;
  esac
  still_serving "$name"
  echo "ok - $name -> $status"
}

still_serving() {
  local response
  response=$(post "$good")
  case "$response" in
    "200 "*Paris*) ;;
    *) fail "after $1 the server did not answer a normal request: $response" ;;
  esac
}

still_serving "start-up"

expect "malformed JSON" 400 'is not valid JSON' "$(post '{"messages": [{"role": "user", "content": "hi"}')"
expect "wrong type (temperature)" 400 '"param":"temperature"' \
  "$(post '{"messages":[{"role":"user","content":"hi"}],"temperature":"hot"}')"
expect "wrong type (messages)" 400 '"param":"messages"' "$(post '{"messages":"hi"}')"
expect "wrong type (max_tokens)" 400 '"param":"max_tokens"' \
  "$(post '{"messages":[{"role":"user","content":"hi"}],"max_tokens":"many"}')"
expect "JSON that is not an object" 400 'JSON object' "$(post '[1,2,3]')"

printf '{"messages":[{"role":"user","content":"caf\xff\xfe"}]}' >"$HARNESS_TMP/bad_utf8"
expect "invalid UTF-8" 400 'not valid UTF-8' "$(post_file "$HARNESS_TMP/bad_utf8")"

python3 - "$HARNESS_TMP/oversized" <<'PY'
import json, sys
json.dump({"messages": [{"role": "user", "content": "x" * 100000}]}, open(sys.argv[1], "w"))
PY
expect "oversized body" 413 'request_too_large' "$(post_file "$HARNESS_TMP/oversized")"

expect "context overflow (max_tokens)" 400 'context_length_exceeded' \
  "$(post '{"messages":[{"role":"user","content":"hi"}],"max_tokens":5000}')"
response=$(post '{"messages":[{"role":"user","content":"hi"}],"max_tokens":5000}')
case "$response" in
  *"maximum context length is 4096 tokens"*"5005 tokens (5 in the prompt, 5000 for the completion)"*) ;;
  *) fail "context overflow message lacks the numbers: $response" ;;
esac
python3 - "$HARNESS_TMP/long_prompt" <<'PY'
import json, sys
json.dump({"messages": [{"role": "user", "content": "apple banana cherry " * 1500}]},
          open(sys.argv[1], "w"))
PY
expect "context overflow (prompt)" 400 'context_length_exceeded' "$(post_file "$HARNESS_TMP/long_prompt")"

response=$(curl -s --max-time 10 -w ' %{http_code}' "http://127.0.0.1:$SERVER_PORT/v2/nothing")
case "$response" in
  *'"type":"not_found_error"'*" 404") echo "ok - unknown route -> 404" ;;
  *) fail "unknown route: $response" ;;
esac

# A client that drops mid-stream: a long random generation (temperature 10, no
# min_p) is read for a few chunks, then the connection is closed. The server must
# cancel it (the request log says "finish cancelled") long before max_tokens.
drop_body='{"messages":[{"role":"user","content":"Write a poem"}],"thinking":{"type":"disabled"},"temperature":10,"min_p":0,"seed":7,"max_tokens":3000,"stream":true}'
curl -sN --max-time 60 -H 'Content-Type: application/json' -d "$drop_body" "$chat_url" \
  | head -c 1500 >"$HARNESS_TMP/dropped" || true
grep -q '^data: {' "$HARNESS_TMP/dropped" || fail "the dropped stream received no chunk"
for i in $(seq 1 100); do  # at most 10 s
  grep -q 'finish cancelled' "$SERVER_LOG" && break
  sleep 0.1
done
cancelled=$(grep 'finish cancelled' "$SERVER_LOG" | head -n 1)
[ -n "$cancelled" ] || fail "the generation of the dropped client was not cancelled"
tokens=$(sed -n 's/.*completion \([0-9]*\) tokens, finish cancelled.*/\1/p' <<<"$cancelled")
[ "$tokens" -lt 3000 ] || fail "the dropped generation ran to $tokens tokens"
echo "ok - client dropped mid-stream: generation cancelled after $tokens tokens"
still_serving "a dropped client"

# A client that leaves before its first token (during a ~3200-token prefill): the
# server notices while waiting and cancels the generation too.
python3 - "$HARNESS_TMP/long_stream" <<'PY'
import json, sys
json.dump({"messages": [{"role": "user", "content": "apple banana cherry " * 400}],
           "thinking": {"type": "disabled"}, "max_tokens": 50, "stream": True},
          open(sys.argv[1], "w"))
PY
before=$(grep -c 'finish cancelled' "$SERVER_LOG" || true)
curl -sN --max-time 1 -H 'Content-Type: application/json' --data-binary @"$HARNESS_TMP/long_stream" \
  "$chat_url" >/dev/null || true
for i in $(seq 1 300); do  # at most 30 s
  [ "$(grep -c 'finish cancelled' "$SERVER_LOG" || true)" -gt "$before" ] && break
  sleep 0.1
done
[ "$(grep -c 'finish cancelled' "$SERVER_LOG" || true)" -gt "$before" ] \
  || fail "the generation of a client gone during prefill was not cancelled"
echo "ok - client gone during prefill: $(grep 'finish cancelled' "$SERVER_LOG" | tail -n 1)"
still_serving "a client gone during prefill"

stop_server
echo "PASS: bad input answered, server kept serving"
