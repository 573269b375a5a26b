#!/usr/bin/env bash
# ds4-setup download against a fake hub that misbehaves: dropped connections, 503s,
# 429 with Retry-After, an expired signed CDN URL (403 -> resolve again). Each case must
# end with the right file (SHA-256 checked by us too), and the token must reach the hub
# but never the CDN, the terminal or the log.
set -euo pipefail
source "${DS4_SOURCE_DIR:?}/tests/fakehub/lib.sh"

make_payload "$WORK/payload" 8
write_manifest "$WORK/manifests" "$WORK/payload"
files='"files": {"test.gguf": "'$WORK/payload'"}, "revision": "rev1", "require_closed_range": true'
hub_start "{$files}"
want=$(sha_of "$WORK/payload")

check_download() {  # check_download CASE DIR
  [ "$RC" -eq 0 ] || fail "$1: exit status $RC"
  [ "$(sha_of "$2/test.gguf")" = "$want" ] || fail "$1: wrong bytes"
  [ ! -e "$2/test.gguf.part" ] || fail "$1: .part left behind"
}

# 1. Six dropped connections in one download (8 chunks of 1 MiB).
hub_config "{$files, \"cdn_faults\": [\"ok\", \"drop:1000\", \"drop:300000\", \"ok\", \"drop:0\", \"drop:65536\", \"drop:5\", \"drop:700000\"]}"
hub_reset
setup download --models-dir "$WORK/m1"
check_download drops "$WORK/m1"
drops=$(hub_stat 'sum(1 for f in s["faults_applied"] if f.startswith("cdn:drop"))')
[ "$drops" -ge 5 ] || fail "drops: only $drops dropped connections were injected"
served=$(hub_stat 's["bytes_served"]')
# Bytes received before each drop are kept, so at most the dropped prefixes are re-sent.
[ "$served" -le $(( $(size_of "$WORK/payload") + 1000 + 300000 + 65536 + 5 + 700000 )) ] \
  || fail "drops: $served bytes served: partial chunks were re-downloaded"
grep -q "retrying" "$WORK/out.txt" || fail "drops: retries not reported"
pass "6 dropped connections survived, $served bytes served for an 8 MiB file"

# 2. 503s, on the resolve URL and on the CDN.
hub_config "{$files, \"resolve_faults\": [\"503\", \"503\"], \"cdn_faults\": [\"503\", \"ok\", \"503\", \"503\", \"503\"]}"
hub_reset
setup download --models-dir "$WORK/m2"
check_download 503 "$WORK/m2"
[ "$(hub_stat 's["status"].get("503", 0)')" -eq 6 ] || fail "503: expected 6 answers of 503"
grep -q "HTTP 503" "$WORK/out.txt" || fail "503: not reported"
pass "503 on resolve and CDN retried with backoff"

# 3. 429 with Retry-After: 2 is honoured (not the 0.05 s backoff).
hub_config "{$files, \"cdn_faults\": [\"ok\", \"429:2\"]}"
hub_reset
start=$(date +%s.%N)
setup download --models-dir "$WORK/m3"
elapsed=$(python3 -c "print($(date +%s.%N) - $start)")
check_download 429 "$WORK/m3"
python3 -c "import sys; sys.exit(0 if $elapsed >= 2.0 else 1)" || fail "429: finished in $elapsed s, Retry-After 2 not honoured"
grep -q "Retry-After" "$WORK/out.txt" || fail "429: wait not explained"
pass "429 Retry-After: 2 honoured (run took $elapsed s)"

# 4. The signed CDN URL expires mid-download: 403, resolve again, finish.
hub_config "{$files, \"cdn_faults\": [\"ok\", \"ok\", \"expire\", \"ok\", \"expire\"]}"
hub_reset
setup download --models-dir "$WORK/m4"
check_download 403 "$WORK/m4"
[ "$(hub_stat 's["resolve_requests"]')" -ge 3 ] || fail "403: the URL was not resolved again"
grep -q "resolving the URL again" "$WORK/out.txt" || fail "403: re-resolve not reported"
pass "expired CDN URL (403) re-resolved twice"

# 5. HF_TOKEN: sent to the hub as a bearer token, not to the CDN, never shown or logged.
secret="hf_SeCrEt$RANDOM$RANDOM"
hub_config "{$files, \"require_token\": \"$secret\", \"cdn_faults\": [\"503\"]}"
hub_reset
HF_TOKEN=$secret setup download --models-dir "$WORK/m5"
check_download token "$WORK/m5"
[ "$(hub_stat 'all(a == "Bearer '"$secret"'" for a in s["resolve_auth"])')" = True ] || fail "token: not sent to the hub"
[ "$(hub_stat 'all(a == "" for a in s["cdn_auth"])')" = True ] || fail "token: leaked to the CDN"
! grep -q "$secret" "$WORK/out.txt" "$WORK/setup.log" || fail "token: printed or logged"
pass "HF_TOKEN sent to the hub only, never printed or logged"

# 6. Without the token the gated file fails at once with a clear message.
setup download --models-dir "$WORK/m6"
[ "$RC" -eq 4 ] || fail "no token: exit status $RC, expected 4"
grep -q "HF_TOKEN" "$WORK/out.txt" || fail "no token: the message does not mention HF_TOKEN"
pass "missing token: exit 4 naming HF_TOKEN"

# 7. The hub's X-Linked-Etag disagrees with the manifest (another revision's bytes).
hub_config "{$files, \"etag\": {\"test.gguf\": \"$(printf '%064d' 7)\"}}"
hub_reset
setup download --models-dir "$WORK/m7"
[ "$RC" -eq 5 ] || fail "etag: exit status $RC, expected 5"
grep -q "X-Linked-Etag" "$WORK/out.txt" || fail "etag: mismatch not explained"
[ "$(hub_stat 's["bytes_served"]')" -eq 0 ] || fail "etag: bytes were downloaded anyway"
pass "X-Linked-Etag mismatch refused before downloading"

# 8. The hub's X-Linked-Size disagrees with the manifest.
hub_config "{$files, \"size\": {\"test.gguf\": 12345}}"
hub_reset
setup download --models-dir "$WORK/m8"
[ "$RC" -eq 5 ] || fail "size: exit status $RC, expected 5"
grep -q "is 12345 bytes (X-Linked-Size) but the manifest pins" "$WORK/out.txt" || fail "size: mismatch not explained"
[ "$(hub_stat 's["bytes_served"]')" -eq 0 ] || fail "size: bytes were downloaded anyway"
pass "X-Linked-Size mismatch refused before downloading"
# 9. A hung connection (bytes stop, socket stays open) is abandoned after the stall
#    timeout (1 s here) and the download goes on from where it stopped.
hub_config "{$files, \"cdn_faults\": [\"ok\", \"stall:4096\"]}"
hub_reset
start=$(date +%s)
DS4_FETCH_STALL_SECONDS=1 setup download --models-dir "$WORK/m10"
check_download stall "$WORK/m10"
[ $(( $(date +%s) - start )) -lt 20 ] || fail "stall: took too long, the hung connection was not dropped"
[ "$(hub_stat 's["bytes_served"]')" -eq "$(size_of "$WORK/payload")" ] || fail "stall: bytes re-sent"
pass "hung connection dropped by the stall timeout, download resumed"

# 10. A CDN that keeps failing: the retry budget runs out, exit 4, the .part is kept.
hub_config "{$files, \"cdn_faults\": [\"ok\", \"503\", \"503\", \"503\", \"503\", \"503\"]}"
DS4_FETCH_MAX_ATTEMPTS=3 setup download --models-dir "$WORK/m9"
[ "$RC" -eq 4 ] || fail "budget: exit status $RC, expected 4"
grep -q "gave up after 3 attempts in a row without progress" "$WORK/out.txt" || fail "budget: unclear message"
[ "$(size_of "$WORK/m9/test.gguf.part")" -eq $((1 << 20)) ] || fail "budget: .part not kept"
hub_config "{$files}"
setup download --models-dir "$WORK/m9"
check_download "budget then resume" "$WORK/m9"
pass "retry budget exhausted: exit 4, .part kept, next run resumes"
echo "PASS download_faults"
