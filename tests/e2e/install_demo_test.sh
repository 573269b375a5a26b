#!/usr/bin/env bash
# The whole install from a checkout, as a Spark owner would run it, in demo mode:
#   DS4_SPARK_SRC=<checkout> ./install.sh --demo --start --prefix <tmp>
# must complete with the engine's own Paris answers printed (CLI, long prompt, chat API),
# leave a server answering on its port, and a second identical run must be a no-op
# (no download, no build, no smoke re-run, no restart; both durations printed). Then a
# smoke manifest expecting a word the model does not say must stop an install with a
# clear message and a non-zero exit, `ds4-setup status` must report the install, and
# `ds4-setup uninstall` must remove what install created (file lists before and after).
#
# Nothing here touches the host's systemd (DS4_NO_SYSTEMD=1: the server runs detached)
# and nothing waits on a terminal (DS4_NO_TTY=1: as under CI, where no question is asked).
set -euo pipefail

SOURCE_DIR=${DS4_SOURCE_DIR:?DS4_SOURCE_DIR not set}
for program in engine/tools/ds4.cpp engine/tools/ds4_server.cpp; do
  if [ ! -f "$SOURCE_DIR/$program" ]; then
    echo "SKIP: $program is not in the tree yet: the engine programs cannot be built"
    exit 77
  fi
done

WORK=$(mktemp -d "${TMPDIR:-/tmp}/ds4-install-e2e.XXXXXX")
PREFIX="$WORK/prefix"
cleanup() {
  # The server must never outlive the test, whatever failed.
  for pid_file in "$PREFIX/run/ds4-server.pid" "$PREFIX/run/smoke-server.pid"; do
    if [ -f "$pid_file" ]; then kill "$(cat "$pid_file")" 2>/dev/null || true; fi
  done
  rm -rf "$WORK"
}
trap cleanup EXIT

fail() { echo "FAIL: $*" >&2; exit 1; }
pass() { echo "ok: $*"; }

# A snapshot of the tree (tracked and untracked, not ignored files), as a clean checkout
# would have it: the runs below must see the same sources, whatever changes meanwhile.
CHECKOUT="$WORK/checkout"
mkdir -p "$CHECKOUT"
if git -C "$SOURCE_DIR" rev-parse --git-dir >/dev/null 2>&1; then
  (cd "$SOURCE_DIR" && git ls-files -z -co --exclude-standard |
    tar --null --ignore-failed-read -T - -cf - 2>/dev/null) | tar -C "$CHECKOUT" -xf -
else
  (cd "$SOURCE_DIR" && tar --exclude='./build*' -cf - .) | tar -C "$CHECKOUT" -xf -
fi
[ -f "$CHECKOUT/install.sh" ] || fail "could not copy the source tree to $CHECKOUT"

export DS4_NO_SYSTEMD=1 DS4_NO_TTY=1
export HOME="$WORK/home"; mkdir -p "$HOME"
unset HF_TOKEN HF_HOME || true
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

alive() {  # alive PID: the process exists and is not a zombie waiting for its reaper
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  case "${stat##*) }" in Z*) return 1 ;; esac
}
list_prefix() {  # every file and link under the prefix, relative, sorted
  if [ -d "$PREFIX" ]; then (cd "$PREFIX" && find . -mindepth 1 \( -type f -o -type l \) | sort); fi
}
http_get_status() {  # HTTP status of GET URL, or 000
  python3 - "$1" <<'PY'
import sys, urllib.request, urllib.error
try:
    print(urllib.request.urlopen(sys.argv[1], timeout=10).status)
except urllib.error.HTTPError as e:
    print(e.code)
except Exception:
    print("000")
PY
}
chat_answer() {  # the server's answer to the France question (thinking off)
  python3 - "http://127.0.0.1:$PORT/v1/chat/completions" <<'PY'
import json, sys, urllib.request
body = {"messages": [{"role": "user", "content": "What is the capital of France?"}],
        "max_tokens": 32, "temperature": 0, "thinking": {"type": "disabled"}}
req = urllib.request.Request(sys.argv[1], data=json.dumps(body).encode(),
                             headers={"Content-Type": "application/json"})
print(json.load(urllib.request.urlopen(req, timeout=120))["choices"][0]["message"]["content"])
PY
}
install_demo() {  # install_demo LOG ARGS...: the Must-show command line; sets RC, SECONDS_TAKEN
  local log=$1; shift
  local start end
  start=$(date +%s.%N)
  set +e
  (cd "$WORK" && DS4_SPARK_SRC="$CHECKOUT" bash "$CHECKOUT/install.sh" --demo --start \
    --prefix "$PREFIX" --port "$PORT" "$@") >"$log" 2>&1
  RC=$?
  set -e
  end=$(date +%s.%N)
  SECONDS_TAKEN=$(python3 -c "print(f'{$end - $start:.1f}')")
  sed 's/^/    | /' "$log"
}

echo "== files under the prefix before install:"
before=$(list_prefix)
[ -z "$before" ] || fail "the prefix is not empty before the test"
echo "    (none: $PREFIX does not exist)"

echo "== first install"
install_demo "$WORK/first.log"
[ "$RC" -eq 0 ] || fail "first install exited with status $RC"
for check in france long-prompt chat-api; do
  grep -E "smoke '$check' answered: .*Paris" "$WORK/first.log" >/dev/null ||
    fail "no Paris answer from the '$check' smoke check"
done
grep -q "started ds4-server detached" "$WORK/first.log" || fail "the server was not started detached"
FIRST=$SECONDS_TAKEN
pass "first install completed in $FIRST s; the engine answered Paris in all three smoke checks"

[ "$(http_get_status "http://127.0.0.1:$PORT/v1/models")" = 200 ] || fail "GET /v1/models on port $PORT is not 200"
answer=$(chat_answer)
case "$answer" in *Paris*) ;; *) fail "the running server answered: $answer" ;; esac
pass "the server answers on port $PORT: \"$answer\""

# A copy of the ds4-setup install.sh built: uninstall removes the original.
cp "$PREFIX/setup-build/bin/ds4-setup" "$WORK/ds4-setup"
SETUP="$WORK/ds4-setup"
"$SETUP" status --prefix "$PREFIX" --source-dir "$CHECKOUT" >"$WORK/status.txt" || fail "status exited non-zero: $(cat "$WORK/status.txt")"
sed 's/^/    | /' "$WORK/status.txt"
grep -q "answers 200" "$WORK/status.txt" || fail "status does not show the endpoint answering"
grep -q "running detached" "$WORK/status.txt" || fail "status does not show the detached server"
grep -q "verified at install" "$WORK/status.txt" || fail "status does not show the model's verification"
pass "status reports the install, the running server and the endpoint"

echo "== second install (must be a no-op)"
pid_before=$(cat "$PREFIX/run/ds4-server.pid")
install_demo "$WORK/second.log"
[ "$RC" -eq 0 ] || fail "second install exited with status $RC"
SECOND=$SECONDS_TAKEN
grep -q "unchanged since the last build: skipped" "$WORK/second.log" || fail "the second run rebuilt the engine"
grep -q "smoke checks passed on .* skipped" "$WORK/second.log" || fail "the second run re-ran the CLI smoke checks"
grep -q "already runs this engine and model" "$WORK/second.log" || fail "the second run restarted the server"
grep -q "Downloading" "$WORK/second.log" && fail "the second run downloaded again"
[ "$(cat "$PREFIX/run/ds4-server.pid")" = "$pid_before" ] || fail "the server pid changed"
grep -E "smoke 'chat-api' answered: .*Paris" "$WORK/second.log" >/dev/null || fail "second run: no chat API check"
pass "second run is a no-op: first run $FIRST s, second run $SECOND s"

echo "== install with a smoke manifest expecting a word the model does not say"
cp -r "$CHECKOUT/manifests" "$WORK/manifests-wrong"
sed -i 's/expect: Paris/expect: Berlin/' "$WORK/manifests-wrong/smoke.yaml"
set +e
"$SETUP" install --demo --prefix "$PREFIX" --port "$PORT" --source-dir "$CHECKOUT" \
  --manifests "$WORK/manifests-wrong" \
  >"$WORK/wrong.log" 2>&1
RC=$?
set -e
sed 's/^/    | /' "$WORK/wrong.log"
[ "$RC" -ne 0 ] || fail "an install whose smoke check fails exited with status 0"
grep -q "smoke check 'france' failed: the answer does not contain \"Berlin\". The model answered: \".*Paris" \
  "$WORK/wrong.log" || fail "the failing smoke message does not show the expectation and the answer"
grep -q "service:" "$WORK/wrong.log" && fail "the service stage ran after a failing smoke check"
pass "a failing smoke check stops the install (exit status $RC) and shows the model's answer"

echo "== uninstall (models kept)"
during=$(list_prefix)
echo "files under the prefix after install: $(echo "$during" | wc -l) in all; outside the CMake build trees:"
echo "$during" | grep -v -E '^\./(build|setup-build)/' | sed 's/^/    /'
echo "    ... and $(echo "$during" | grep -c -E '^\./build/') files in build/, $(echo "$during" | grep -c -E '^\./setup-build/') in setup-build/"
"$SETUP" uninstall --prefix "$PREFIX" --source-dir "$CHECKOUT" >"$WORK/uninstall.log" 2>&1 || fail "uninstall failed: $(cat "$WORK/uninstall.log")"
sed 's/^/    | /' "$WORK/uninstall.log"
after=$(list_prefix)
echo "files under the prefix after uninstall:"
echo "${after:-    (none)}" | sed 's/^/    /'
[ "$(http_get_status "http://127.0.0.1:$PORT/v1/models")" = 000 ] || fail "the server still answers after uninstall"
if alive "$pid_before"; then fail "the server process $pid_before still runs"; fi
echo "$after" | grep -v -E '^\./models/' | grep . && fail "uninstall left files outside models/"
echo "$after" | grep -q '^\./models/ds4-tiny-chat.gguf$' || fail "uninstall removed the model without --purge-models"
pass "uninstall stopped the server and removed everything but the model file"

echo "== uninstall --purge-models"
"$SETUP" uninstall --prefix "$PREFIX" --source-dir "$CHECKOUT" --purge-models >"$WORK/purge.log" 2>&1 || fail "purge failed: $(cat "$WORK/purge.log")"
sed 's/^/    | /' "$WORK/purge.log"
[ ! -e "$PREFIX" ] || fail "the prefix still exists: $(list_prefix)"
pass "uninstall --purge-models removed the prefix entirely (nothing is left of the install)"

echo "2 installs timed: first $FIRST s, second (no-op) $SECOND s"
