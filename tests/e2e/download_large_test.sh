#!/usr/bin/env bash
# A file much larger than ds4-setup's memory goes through the same download path in
# bounded memory: 128 MiB over loopback in 32 MiB Range chunks, peak RSS measured with
# getrusage, asserted far below the file size. (The 4 GiB measurement is in
# docs/installer.md.)
set -euo pipefail
source "${DS4_SOURCE_DIR:?}/tests/fakehub/lib.sh"

mib=${DS4_LARGE_TEST_MIB:-128}
make_payload "$WORK/payload" "$mib"
write_manifest "$WORK/manifests" "$WORK/payload"
hub_start '{"files": {"test.gguf": "'$WORK/payload'"}, "require_closed_range": true}'
export DS4_FETCH_CHUNK_BYTES=$((32 << 20))

start=$(date +%s.%N)
set +e
python3 "$SOURCE_DIR/tests/fakehub/maxrss.py" "$WORK/rss" "$SETUP" download --model test \
  --models-dir "$WORK/models" --manifests "$WORK/manifests" --log "$WORK/setup.log" >"$WORK/out.txt" 2>&1
RC=$?
set -e
seconds=$(python3 -c "print(round($(date +%s.%N) - $start, 2))")
cat "$WORK/out.txt"
[ "$RC" -eq 0 ] || fail "exit $RC"
[ "$(sha_of "$WORK/models/test.gguf")" = "$(sha_of "$WORK/payload")" ] || fail "wrong bytes"
rss_kib=$(cat "$WORK/rss")
echo "$mib MiB in $seconds s ($(python3 -c "print(round($mib / $seconds, 1))") MiB/s), peak RSS $((rss_kib / 1024)) MiB"
[ "$rss_kib" -lt $((48 * 1024)) ] || fail "peak RSS $rss_kib KiB: the file is being held in memory"
[ "$rss_kib" -lt $((mib * 1024 / 2)) ] || fail "peak RSS $rss_kib KiB is not far below the $mib MiB file"
pass "peak RSS $((rss_kib / 1024)) MiB for a $mib MiB file"
echo "PASS download_large"
