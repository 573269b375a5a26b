#!/usr/bin/env bash
# ds4-setup download killed with SIGKILL mid-download, then run again: it resumes from
# FILE.part (fewer bytes re-sent than the file size), ends with the right SHA-256, and a
# second run started while the first one holds the models directory is refused.
set -euo pipefail
source "${DS4_SOURCE_DIR:?}/tests/fakehub/lib.sh"

make_payload "$WORK/payload" 24
write_manifest "$WORK/manifests" "$WORK/payload"
size=$(size_of "$WORK/payload")
files='"files": {"test.gguf": "'$WORK/payload'"}, "require_closed_range": true'
hub_start "{$files, \"rate\": 4194304}"   # 4 MiB/s: about 6 s for the whole file
models="$WORK/models"

"$SETUP" download --model test --models-dir "$models" --manifests "$WORK/manifests" \
  --log "$WORK/first.log" >"$WORK/first.txt" 2>&1 &
first=$!
for _ in $(seq 200); do
  have=$(stat -c %s "$models/test.gguf.part" 2>/dev/null || echo 0)
  [ "$have" -ge $((6 << 20)) ] && break
  sleep 0.05
done
[ "$have" -ge $((6 << 20)) ] || fail "the first run did not get going: $(cat "$WORK/first.txt")"

# A second run on the same models directory is refused while the first one works.
setup download --models-dir "$models"
[ "$RC" -eq 6 ] || fail "concurrent run: exit status $RC, expected 6"
grep -q "already in use by another ds4-setup (pid $first)" "$WORK/out.txt" || fail "concurrent run: unclear message"
pass "a concurrent run on the same models dir is refused (exit 6)"

kill -9 "$first"
wait "$first" 2>/dev/null || true
part=$(size_of "$models/test.gguf.part")
[ "$part" -gt 0 ] && [ "$part" -lt "$size" ] || fail "after SIGKILL the .part is $part bytes"
[ ! -e "$models/test.gguf" ] || fail "a killed run left a final file"
pass "killed with SIGKILL at $part of $size bytes"

hub_config "{$files}"   # full speed for the second run
hub_reset
setup download --models-dir "$models"
[ "$RC" -eq 0 ] || fail "resume: exit status $RC"
[ "$(sha_of "$models/test.gguf")" = "$(sha_of "$WORK/payload")" ] || fail "resume: wrong bytes"
[ ! -e "$models/test.gguf.part" ] || fail "resume: .part left behind"
resent=$(hub_stat 's["bytes_served"]')
first_range=$(hub_stat 's["ranges"][0][0]')
[ "$resent" -lt "$size" ] || fail "resume: $resent bytes served again for a $size-byte file"
[ "$resent" -eq $((size - part)) ] || fail "resume: served $resent, expected exactly $((size - part))"
[ "$first_range" -eq "$part" ] || fail "resume: first range starts at $first_range, not $part"
grep -q "Resuming test" "$WORK/out.txt" || fail "resume: not reported"
pass "resumed at byte $part: $resent bytes re-sent for a $size-byte file, SHA-256 right"
echo "PASS download_resume"
