#!/usr/bin/env bash
# Verification paths of ds4-setup download: corrupted bytes (mismatch -> FILE.bad, exit 5),
# a truncated .part (resumed), an over-long .part (set aside, fresh download), a .part
# with wrong bytes (caught at the end), a complete file in place (verified, not
# re-downloaded) and --adopt (good file used without download, wrong file refused).
set -euo pipefail
source "${DS4_SOURCE_DIR:?}/tests/fakehub/lib.sh"

make_payload "$WORK/payload" 6
write_manifest "$WORK/manifests" "$WORK/payload"
size=$(size_of "$WORK/payload")
want=$(sha_of "$WORK/payload")
files='"files": {"test.gguf": "'$WORK/payload'"}, "require_closed_range": true'
hub_start "{$files}"

# 1. Corrupted bytes: one chunk comes with a flipped byte.
hub_config "{$files, \"cdn_faults\": [\"ok\", \"ok\", \"corrupt\"]}"
m="$WORK/m1"
setup download --models-dir "$m"
[ "$RC" -eq 5 ] || fail "corrupt: exit status $RC, expected 5"
grep -q "SHA-256 mismatch for $m/test.gguf" "$WORK/out.txt" || fail "corrupt: no clear error"
grep -q "moved to $m/test.gguf.bad" "$WORK/out.txt" || fail "corrupt: quarantine not reported"
[ -f "$m/test.gguf.bad" ] && [ ! -e "$m/test.gguf" ] && [ ! -e "$m/test.gguf.part" ] \
  || fail "corrupt: expected only test.gguf.bad, found: $(ls "$m")"
pass "corrupted bytes: exit 5, quarantined as test.gguf.bad"
# ...and the next run downloads it afresh.
hub_config "{$files}"
setup download --models-dir "$m"
[ "$RC" -eq 0 ] && [ "$(sha_of "$m/test.gguf")" = "$want" ] || fail "corrupt: re-run did not recover"
pass "re-run after quarantine downloads a good copy"

# 2. A truncated .part (a prefix of the right bytes) is resumed, not restarted.
m="$WORK/m2"; mkdir -p "$m"
head -c 2500000 "$WORK/payload" > "$m/test.gguf.part"
hub_reset
setup download --models-dir "$m"
[ "$RC" -eq 0 ] && [ "$(sha_of "$m/test.gguf")" = "$want" ] || fail "truncated part: exit $RC"
[ "$(hub_stat 's["bytes_served"]')" -eq $((size - 2500000)) ] || fail "truncated part: not resumed at its end"
pass "truncated .part resumed from byte 2500000"

# 3. An over-long .part is set aside and the file downloaded from the start.
m="$WORK/m3"; mkdir -p "$m"
cat "$WORK/payload" "$WORK/payload" > "$m/test.gguf.part"
hub_reset
setup download --models-dir "$m"
[ "$RC" -eq 0 ] && [ "$(sha_of "$m/test.gguf")" = "$want" ] || fail "over-long part: exit $RC"
grep -q "longer than" "$WORK/out.txt" || fail "over-long part: not explained"
[ -f "$m/test.gguf.part.bad" ] || fail "over-long part: not set aside"
[ "$(hub_stat 's["bytes_served"]')" -eq "$size" ] || fail "over-long part: not downloaded from 0"
pass "over-long .part set aside, fresh download"

# 4. A .part holding wrong bytes: the resumed download ends in a mismatch, exit 5.
m="$WORK/m4"; mkdir -p "$m"
head -c 1000000 /dev/zero > "$m/test.gguf.part"
setup download --models-dir "$m"
[ "$RC" -eq 5 ] && [ -f "$m/test.gguf.bad" ] || fail "bad part: exit $RC, expected 5 and test.gguf.bad"
pass "wrong bytes in .part caught by the SHA-256 (exit 5)"

# 5. A complete file already in place is verified and reused: nothing downloaded.
m="$WORK/m5"; mkdir -p "$m"
cp "$WORK/payload" "$m/test.gguf"
hub_reset
setup download --models-dir "$m"
[ "$RC" -eq 0 ] || fail "in place: exit $RC"
grep -q "complete and verified; reusing it" "$WORK/out.txt" || fail "in place: not reported"
[ "$(hub_stat 's["bytes_served"] + s["resolve_requests"]')" -eq 0 ] || fail "in place: the hub was asked"
pass "complete file in place reused without download"

# 6. --adopt a good copy: verified, linked or copied, no download; the source stays.
m="$WORK/m6"
cp "$WORK/payload" "$WORK/elsewhere.gguf"
hub_reset
setup download --models-dir "$m" --adopt "$WORK/elsewhere.gguf"
[ "$RC" -eq 0 ] && [ "$(sha_of "$m/test.gguf")" = "$want" ] || fail "adopt: exit $RC"
[ -f "$WORK/elsewhere.gguf" ] || fail "adopt: the user's file is gone"
[ "$(hub_stat 's["bytes_served"] + s["resolve_requests"]')" -eq 0 ] || fail "adopt: the hub was asked"
pass "--adopt verified the given file and used it without download"

# 7. --adopt a wrong file: refused, nothing put in place, the user's file untouched.
m="$WORK/m7"
head -c "$size" /dev/zero > "$WORK/wrong.gguf"
setup download --models-dir "$m" --adopt "$WORK/wrong.gguf"
[ "$RC" -eq 5 ] || fail "adopt wrong: exit $RC, expected 5"
grep -q "does not match" "$WORK/out.txt" || fail "adopt wrong: unclear message"
[ ! -e "$m/test.gguf" ] && [ -f "$WORK/wrong.gguf" ] || fail "adopt wrong: files changed"
pass "--adopt of a wrong file refused (exit 5)"
echo "PASS download_verify"
