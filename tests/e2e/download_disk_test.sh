#!/usr/bin/env bash
# Not enough disk space: ds4-setup refuses before downloading a byte. The models
# directory is a real 8 MiB tmpfs in a private mount namespace (unshare -m, as root or
# with user namespaces); only where mounting is impossible does the test fall back to
# the DS4_FAKE_FREE_BYTES hook, and it says so.
set -euo pipefail
source "${DS4_SOURCE_DIR:?}/tests/fakehub/lib.sh"

make_payload "$WORK/payload" 16
write_manifest "$WORK/manifests" "$WORK/payload"
hub_start '{"files": {"test.gguf": "'$WORK/payload'"}}'
small="$WORK/small"; mkdir -p "$small"

# in_small_fs CMD...: runs CMD with $small on an 8 MiB filesystem.
if unshare -m sh -c "mount -t tmpfs -o size=8m tmpfs '$small'" 2>/dev/null; then
  in_small_fs() { unshare -m sh -c 'mount -t tmpfs -o size=8m tmpfs "$0" && exec "$@"' "$small" "$@"; }
  how="a real 8 MiB tmpfs (unshare -m)"
elif unshare -rm sh -c "mount -t tmpfs -o size=8m tmpfs '$small'" 2>/dev/null; then
  in_small_fs() { unshare -rm sh -c 'mount -t tmpfs -o size=8m tmpfs "$0" && exec "$@"' "$small" "$@"; }
  how="a real 8 MiB tmpfs (unshare -rm)"
else
  in_small_fs() { DS4_FAKE_FREE_BYTES=$((8 << 20)) "$@"; }
  how="the DS4_FAKE_FREE_BYTES hook (mounting a tmpfs is not permitted here)"
fi
echo "small filesystem: $how"

run_small() {
  set +e
  in_small_fs "$SETUP" "$@" --manifests "${MANIFESTS:-$WORK/manifests}" --log "$WORK/setup.log" >"$WORK/out.txt" 2>&1
  RC=$?
  set -e
  cat "$WORK/out.txt"
}

# download: 16 MiB to fetch, 8 MiB free.
hub_reset
run_small download --model test --models-dir "$small/models"
[ "$RC" -eq 7 ] || fail "download: exit status $RC, expected 7"
grep -q "not enough free space" "$WORK/out.txt" || fail "download: unclear message"
[ "$(hub_stat 's["bytes_served"] + s["resolve_requests"]')" -eq 0 ] || fail "download: the hub was asked anyway"
pass "download refused before downloading (exit 7) on $how"

# install --demo: the host check (file + margin) fails on disk alone.
MANIFESTS="$SOURCE_DIR/manifests" run_small install --demo --models-dir "$small/models" --prefix "$WORK/prefix"
[ "$RC" -eq 7 ] || fail "install: exit status $RC, expected 7"
grep -q "not enough disk space" "$WORK/out.txt" || fail "install: unclear message"
[ ! -e "$WORK/prefix/bin" ] || fail "install: went on after the disk check"
pass "install refused at the host check (exit 7)"
echo "PASS download_disk"
