#!/usr/bin/env bash
# From a clean checkout: `ds4-setup download --model demo` fetches the bundled tiny model
# through the download code path (file:// URL into the source tree) and verifies it;
# `ds4-setup install --dry-run` prints the plan and creates nothing; manifest rules
# (--with-mtp with q2-0731, unknown model, --revision) give clear answers.
set -euo pipefail
source "${DS4_SOURCE_DIR:?}/tests/fakehub/lib.sh"

demo_sha=845508dc773d398da30855f7d0296410b8faab2c6520a8fdbef4431c04c10b5c

run() {  # run ARGS...: the real manifests, found from the executable's location
  set +e
  env -u DS4_SOURCE_DIR "$SETUP" "$@" --log "$WORK/setup.log" >"$WORK/out.txt" 2>&1
  RC=$?
  set -e
  cat "$WORK/out.txt"
}

run download --model demo --models-dir "$WORK/models"
[ "$RC" -eq 0 ] || fail "demo download: exit $RC"
[ "$(sha_of "$WORK/models/ds4-tiny-chat.gguf")" = "$demo_sha" ] || fail "demo download: wrong bytes"
grep -q "Model ready: $WORK/models/ds4-tiny-chat.gguf" "$WORK/out.txt" || fail "demo download: path not printed"
pass "download --model demo"

run download --model demo --models-dir "$WORK/models"
[ "$RC" -eq 0 ] && grep -q "reusing it" "$WORK/out.txt" || fail "demo again: not reused"
pass "second demo download reuses the verified file"

run install --dry-run --with-mtp --host-profile gb10 --prefix "$WORK/prefix" --models-dir "$WORK/gb10-models"
[ "$RC" -eq 0 ] || fail "dry run: exit $RC"
for want in "Plan (host profile gb10)" "DeepSeek-V4-Flash-IQ2XXS-w2Q2K-AProjQ8-SExpQ8-OutQ8-chat-v2-imatrix.gguf" \
            "DeepSeek-V4-Flash-MTP-Q4K-Q8_0-F32.gguf" "84.3 GiB (90527713888 bytes) in total" \
            "CUDA sm_121" "Dry run: nothing was downloaded"; do
  grep -qF "$want" "$WORK/out.txt" || fail "dry run: plan lacks '$want'"
done
[ ! -e "$WORK/prefix" ] && [ ! -e "$WORK/gb10-models" ] || fail "dry run: created files"
pass "install --dry-run prints the plan and changes nothing"

run install --dry-run --model q2 --revision 0123abc --host-profile gb10 --models-dir "$WORK/x"
grep -qF "/antirez/deepseek-v4-gguf/resolve/0123abc/DeepSeek-V4-Flash-IQ2XXS-w2Q2K-AProjQ8-SExpQ8-OutQ8-chat-v2.gguf" \
  "$WORK/out.txt" || fail "--revision not used in the URL"
pass "--revision overrides the pinned revision"

run download --model q2-0731 --with-mtp --models-dir "$WORK/x"
[ "$RC" -eq 2 ] && grep -q "cannot be used with model 'q2-0731'" "$WORK/out.txt" || fail "q2-0731 + mtp: exit $RC"
run download --model nonesuch --models-dir "$WORK/x"
[ "$RC" -eq 2 ] && grep -q "known models: q2-imatrix, q2, q2-0731, demo" "$WORK/out.txt" || fail "unknown model: exit $RC"
[ ! -e "$WORK/x" ] || fail "refused runs created files"
pass "q2-0731 with --with-mtp and unknown models refused (exit 2)"
echo "PASS download_demo"
