#!/usr/bin/env bash
# The systemd unit ds4-setup renders for a GB10 host (fake nvidia-smi / nvcc, aarch64,
# 128 GB RAM: the test hooks of host_probe.h), printed by `ds4-setup unit`, which changes
# nothing: with --with-mtp it runs ds4-server with --mtp on 127.0.0.1:8000, --host/--port/
# --ctx change ExecStart, the hardening is there, and `systemd-analyze verify` accepts it.
set -euo pipefail
source "${DS4_SOURCE_DIR:?}/tests/fakehub/lib.sh"

fakebin="$SOURCE_DIR/tests/fakebin"
export PATH="$fakebin:$PATH" DS4_NVCC_DIRS=/nonexistent
export DS4_FAKE_ARCH=aarch64 DS4_PROC_MEMINFO="$fakebin/meminfo-128g"
export DS4_FAKE_FREE_BYTES=$((200 << 30))
unset FAKE_GPU_NAME FAKE_GPU_CC FAKE_GPU_MEM_MIB FAKE_CUDA_VERSION FAKE_SMI_FAIL || true

PREFIX="$WORK/opt/ds4"
MODELS="$PREFIX/models"
render() {  # render OUT ARGS...: ds4-setup unit ARGS > OUT
  local out=$1; shift
  "$SETUP" unit --prefix "$PREFIX" "$@" >"$out" 2>"$out.err" || fail "ds4-setup unit $* failed: $(cat "$out.err")"
}
setting() { grep -E "^$1=" "$2" | head -1 | cut -d= -f2-; }

render "$WORK/mtp.service" --with-mtp
exec_start=$(setting ExecStart "$WORK/mtp.service")
echo "ExecStart=$exec_start"
base="$MODELS/DeepSeek-V4-Flash-IQ2XXS-w2Q2K-AProjQ8-SExpQ8-OutQ8-chat-v2-imatrix.gguf"
mtp="$MODELS/DeepSeek-V4-Flash-MTP-Q4K-Q8_0-F32.gguf"
[ "$exec_start" = "$PREFIX/current/bin/ds4-server -m $base --mtp $mtp --host 127.0.0.1 --port 8000" ] ||
  fail "GB10 --with-mtp ExecStart is '$exec_start'"
[ ! -e "$PREFIX" ] || fail "ds4-setup unit created $PREFIX"
grep -qx "# Rendered by \`ds4-setup unit\` for host profile gb10" "$WORK/mtp.service" ||
  fail "the fake GB10 host was not taken for the gb10 profile: $(head -1 "$WORK/mtp.service")"
pass "GB10 profile, --with-mtp: ExecStart has --mtp and binds 127.0.0.1:8000; nothing created"

for key_value in User=ds4 Restart=on-failure NoNewPrivileges=yes ProtectSystem=strict ProtectHome=yes \
  PrivateTmp=yes "ReadWritePaths=$PREFIX/kv"; do
  grep -qxF "$key_value" "$WORK/mtp.service" || fail "unit lacks $key_value"
done
grep -qE '^StartLimitBurst=[0-9]+$' "$WORK/mtp.service" || fail "unit lacks a start limit"
grep -q '^PrivateDevices' "$WORK/mtp.service" && fail "PrivateDevices would hide the GPU"
pass "dedicated user, restart with a start limit, hardening, KV dir the only writable path"

render "$WORK/plain.service" --host 0.0.0.0 --port 9000 --ctx 32768
exec_start=$(setting ExecStart "$WORK/plain.service")
[ "$exec_start" = "$PREFIX/current/bin/ds4-server -m $base --host 0.0.0.0 --port 9000 --ctx 32768" ] ||
  fail "--host/--port/--ctx ExecStart is '$exec_start'"
pass "without --with-mtp no --mtp; --host/--port/--ctx reach ExecStart"

set +e
"$SETUP" unit --prefix "$PREFIX" --with-mtp --model q2-0731 >"$WORK/0731.out" 2>&1
rc=$?
set -e
[ "$rc" -ne 0 ] && grep -q "q2-0731" "$WORK/0731.out" || fail "--with-mtp with q2-0731 was not refused"
pass "--with-mtp with the 0731 checkpoint is refused: $(grep -m1 -i error "$WORK/0731.out")"

if ! command -v systemd-analyze >/dev/null 2>&1; then
  echo "SKIP: systemd-analyze is not installed: the unit could not be verified"
  exit 77
fi
# verify needs ExecStart's program to exist: a stand-in at the rendered path.
mkdir -p "$PREFIX/current/bin" "$PREFIX/kv"
printf '#!/bin/sh\nexit 0\n' >"$PREFIX/current/bin/ds4-server"
chmod +x "$PREFIX/current/bin/ds4-server"
mkdir -p "$WORK/units"
cp "$WORK/mtp.service" "$WORK/units/ds4.service"
set +e
SYSTEMD_LOG_LEVEL=notice systemd-analyze verify "$WORK/units/ds4.service" >"$WORK/verify.out" 2>&1
rc=$?
set -e
cat "$WORK/verify.out"
[ "$rc" -eq 0 ] || fail "systemd-analyze verify exited with $rc"
grep -q "ds4.service:" "$WORK/verify.out" && fail "systemd-analyze reported problems in ds4.service"
pass "systemd-analyze verify accepts the rendered unit"
