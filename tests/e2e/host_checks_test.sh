#!/usr/bin/env bash
# Host checks (`ds4-setup doctor`) with fake nvidia-smi / nvcc on PATH and the test hooks
# DS4_FAKE_ARCH, DS4_PROC_MEMINFO, DS4_NVCC_DIRS: a GB10 passes; a wrong arch, a wrong
# GPU, an old CUDA, too little RAM and too little disk each fail with their own message
# and only their own check. Low disk is a real 8 MiB tmpfs where mounting is allowed.
set -euo pipefail
source "${DS4_SOURCE_DIR:?}/tests/fakehub/lib.sh"

fakebin="$SOURCE_DIR/tests/fakebin"
export PATH="$fakebin:$PATH" DS4_NVCC_DIRS=/nonexistent
export DS4_FAKE_ARCH=aarch64 DS4_PROC_MEMINFO="$fakebin/meminfo-128g"
export DS4_FAKE_FREE_BYTES=$((200 << 30))   # a Spark's free disk (the low-disk case below is real)
unset FAKE_GPU_NAME FAKE_GPU_CC FAKE_GPU_MEM_MIB FAKE_CUDA_VERSION FAKE_SMI_FAIL || true

doctor() {  # doctor ARGS...: text run then JSON run; $RC, $WORK/out.txt, $WORK/out.json
  set +e
  "$SETUP" doctor --models-dir "${MODELS:-$WORK/models}" "$@" >"$WORK/out.txt" 2>&1
  RC=$?
  "$SETUP" doctor --json --models-dir "${MODELS:-$WORK/models}" "$@" >"$WORK/out.json" 2>/dev/null
  set -e
  cat "$WORK/out.txt"
}
failed_checks() {  # the names of the failed checks, comma-separated, from the JSON run
  python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(",".join(c["name"] for c in d["checks"] if not c["passed"]))' "$WORK/out.json"
}
expect_only() {  # expect_only CASE CHECK MESSAGE
  [ "$RC" -eq 3 ] || fail "$1: exit status $RC, expected 3"
  [ "$(failed_checks)" = "$2" ] || fail "$1: failed checks '$(failed_checks)', expected '$2'"
  grep -qF "$3" "$WORK/out.txt" || fail "$1: message '$3' missing"
  pass "$1 fails on '$2' alone: $3"
}

doctor
[ "$RC" -eq 0 ] || fail "GB10: exit status $RC"
grep -q "Host profile gb10" "$WORK/out.txt" || fail "GB10: profile not detected"
grep -q "All checks passed" "$WORK/out.txt" || fail "GB10: not all passed"
python3 - "$WORK/out.json" <<'PY' || fail "GB10: JSON report wrong"
import json, sys
d = json.load(open(sys.argv[1]))
assert d["ok"] is True and d["profile"] == "gb10", d
assert d["host"]["gpus"][0]["memory_bytes"] == 0, "GB10 memory is N/A"
assert d["host"]["ram_bytes"] == 125388392 * 1024, "RAM comes from meminfo"
assert d["host"]["cuda_version"] == "13.0"
PY
pass "GB10 host (memory N/A, RAM from meminfo) passes; --json agrees"

DS4_FAKE_ARCH=x86_64 doctor
expect_only "wrong arch" arch "wrong architecture: profile gb10 needs aarch64, this host is x86_64"

FAKE_GPU_NAME="NVIDIA GeForce RTX 4090" FAKE_GPU_CC=8.9 doctor
[ "$RC" -eq 3 ] || fail "unknown GPU: exit $RC"
for want in "matches no host profile" "gb10:" "sm90:" "sm120:" "demo:" "--host-profile NAME"; do
  grep -qF -- "$want" "$WORK/out.txt" || fail "unknown GPU: '$want' missing"
done
pass "unknown host lists the profiles and how to force one"
FAKE_GPU_NAME="NVIDIA GeForce RTX 4090" FAKE_GPU_CC=8.9 doctor --host-profile gb10
expect_only "wrong GPU" "gpu,compute capability" "wrong GPU: profile gb10 needs an NVIDIA GB10"

FAKE_CUDA_VERSION=12.8 doctor
expect_only "old CUDA" "cuda toolkit" "CUDA toolkit too old: 12.8 found, 13.0 or newer needed"

DS4_PROC_MEMINFO="$fakebin/meminfo-64g" doctor
expect_only "low RAM" ram "not enough memory: 62.5 GiB found"

FAKE_SMI_FAIL=1 doctor --host-profile gb10
[ "$RC" -eq 3 ] && grep -q "nvidia-smi failed" "$WORK/out.txt" || fail "driver: exit $RC"
pass "nvidia-smi failing is reported as a driver problem"

# nvcc off PATH but in a CUDA install dir (as on DGX OS: /usr/local/cuda/bin).
mkdir -p "$WORK/bin" "$WORK/cuda/bin"
ln -s "$fakebin/nvidia-smi" "$WORK/bin/nvidia-smi"
ln -s "$fakebin/nvcc" "$WORK/cuda/bin/nvcc"
PATH="$WORK/bin:/usr/bin:/bin" DS4_NVCC_DIRS="$WORK/cuda/bin" doctor
[ "$RC" -eq 0 ] && grep -q "13.0 ($WORK/cuda/bin/nvcc)" "$WORK/out.txt" || fail "nvcc off PATH: not found"
pass "nvcc found outside PATH"

# Low disk: a real 8 MiB filesystem under the models directory.
mkdir -p "$WORK/small"
if unshare -m sh -c "mount -t tmpfs -o size=8m tmpfs '$WORK/small'" 2>/dev/null; then
  set +e
  env -u DS4_FAKE_FREE_BYTES unshare -m sh -c 'mount -t tmpfs -o size=8m tmpfs "$0" && exec "$@"' \
    "$WORK/small" "$SETUP" doctor --models-dir "$WORK/small/models" >"$WORK/out.txt" 2>&1
  RC=$?
  env -u DS4_FAKE_FREE_BYTES unshare -m sh -c 'mount -t tmpfs -o size=8m tmpfs "$0" && exec "$@"' \
    "$WORK/small" "$SETUP" doctor --json --models-dir "$WORK/small/models" >"$WORK/out.json" 2>/dev/null
  set -e
  how="real 8 MiB tmpfs"
else
  MODELS="$WORK/small/models" DS4_FAKE_FREE_BYTES=$((8 << 20)) doctor
  how="DS4_FAKE_FREE_BYTES hook (mounting not permitted here)"
fi
cat "$WORK/out.txt"
expect_only "low disk ($how)" disk "not enough disk space in $WORK/small"

# An H200 box is recognised as sm90 and passes with its own requirements.
DS4_FAKE_ARCH=x86_64 FAKE_GPU_NAME="NVIDIA H200" FAKE_GPU_CC=9.0 FAKE_GPU_MEM_MIB=143771 doctor
[ "$RC" -eq 0 ] && grep -q "Host profile sm90" "$WORK/out.txt" || fail "H200: exit $RC"
pass "H200 recognised as sm90"
echo "PASS host_checks"
