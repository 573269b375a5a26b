#!/usr/bin/env bash
# End-to-end checks of the ds4 CLI on the fixtures:
#   - one-shot on the tiny trained chat model answers Paris on stdout (only the
#     answer there; reasoning and speeds on stderr), in non-thinking and thinking mode;
#   - interactive mode answers a question read from stdin and exits at EOF;
#   - Ctrl-C stops a reply but not the program; Ctrl-C at the prompt exits;
#   - --mtp with drafts prints the same text as plain greedy decoding;
#   - --golden on tests/data/tiny-fast prints a line ending in PASS and exits 0;
#   - --golden on a copy whose golden logits were altered prints FAIL and exits != 0;
#   - a missing model file is an error naming the file.
set -uo pipefail

bin=${DS4_BIN_DIR:?DS4_BIN_DIR is not set}/ds4
data=${DS4_TEST_DATA:?DS4_TEST_DATA is not set}
[[ -x $bin ]] || { echo "FAIL: $bin was not built"; exit 1; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
failures=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }
pass() { echo "ok: $*"; }

chat=$data/tiny-chat/model.gguf

# 1. One-shot, non-thinking: stdout is exactly the answer.
if "$bin" -m "$chat" -p "What is the capital of France?" --nothink --temp 0 -n 64 --backend cpu \
    >"$tmp/out" 2>"$tmp/err"; then
  if [[ "$(cat "$tmp/out")" == "The capital of France is Paris." ]]; then
    pass "one-shot --nothink prints the answer on stdout"
  else
    fail "one-shot --nothink stdout: $(cat "$tmp/out")"
  fi
  grep -q "prefill:.*t/s.*decode:.*t/s" "$tmp/err" && pass "speeds on stderr" \
    || fail "no prefill/decode speeds on stderr: $(cat "$tmp/err")"
else
  fail "one-shot --nothink exited with $? ($(cat "$tmp/err"))"
fi

# 2. One-shot, thinking: the answer on stdout, the reasoning on stderr.
if "$bin" -m "$chat" -p "What is the capital of France?" --temp 0 -n 96 --backend cpu \
    >"$tmp/out" 2>"$tmp/err"; then
  if [[ "$(cat "$tmp/out")" == "The capital of France is Paris." ]]; then
    pass "one-shot thinking mode prints only the answer on stdout"
  else
    fail "one-shot thinking stdout: $(cat "$tmp/out")"
  fi
  grep -q "The user is asking for the capital of France" "$tmp/err" && pass "reasoning on stderr" \
    || fail "reasoning missing from stderr: $(cat "$tmp/err")"
else
  fail "one-shot thinking exited with $? ($(cat "$tmp/err"))"
fi

# 3. Interactive: two turns from stdin, then EOF ends the program with status 0.
if printf 'What is the capital of France?\nWhat is the capital of Japan?\n' |
    "$bin" -m "$chat" --nothink --temp 0 -n 64 --backend cpu >"$tmp/out" 2>"$tmp/err"; then
  grep -q "Paris" "$tmp/out" && grep -q "Tokyo" "$tmp/out" && pass "interactive chat answers two turns" \
    || fail "interactive stdout: $(cat "$tmp/out")"
  grep -q "([1-9][0-9]* reused)" "$tmp/err" && pass "second turn reused the first turn's state" \
    || fail "second turn did not reuse state: $(cat "$tmp/err")"
else
  fail "interactive mode exited with $? ($(cat "$tmp/err"))"
fi

# 3a. Ctrl-C during a reply stops that reply, not the program; Ctrl-C at the prompt exits.
#     tiny-fast has random weights: it rambles without EOS, so the reply is long enough
#     to be interrupted.
mkfifo "$tmp/in"
"$bin" -m "$data/tiny-fast/model.gguf" --nothink --temp 0 -n 30000 --ctx 32768 --backend cpu \
  <"$tmp/in" >"$tmp/ctrlc.out" 2>"$tmp/ctrlc.err" &
pid=$!
exec 3>"$tmp/in"
echo "abc" >&3  # greedy: 1634 tokens before EOS
wait_for() {  # wait_for SECONDS COMMAND...: polls until COMMAND succeeds
  local deadline=$((SECONDS + $1)); shift
  until "$@"; do
    ((SECONDS < deadline)) || return 1
    sleep 0.2
  done
}
if wait_for 60 test -s "$tmp/ctrlc.out"; then
  kill -INT "$pid"
  if wait_for 30 grep -q "finish: cancelled" "$tmp/ctrlc.err" && kill -0 "$pid" 2>/dev/null; then
    pass "Ctrl-C stopped the reply and the program kept running"
    kill -INT "$pid"
    if wait_for 10 bash -c "! kill -0 $pid 2>/dev/null"; then
      wait "$pid"
      status=$?
      [[ $status -eq 0 ]] && pass "Ctrl-C at the prompt exits with status 0" \
        || fail "Ctrl-C at the prompt: exit status $status"
    else
      fail "Ctrl-C at the prompt did not exit"
      kill "$pid"
    fi
  else
    fail "Ctrl-C during a reply: $(tail -c 300 "$tmp/ctrlc.err")"
    kill "$pid" 2>/dev/null
  fi
else
  fail "interactive generation produced no output: $(cat "$tmp/ctrlc.err")"
  kill "$pid" 2>/dev/null
fi
exec 3>&-
wait "$pid" 2>/dev/null

# 3b. MTP speculative decoding prints the same text as plain greedy decoding.
fastm=$data/tiny-fast
"$bin" -m "$fastm/model.gguf" -p "hello there" --nothink --temp 0 -n 32 --backend cpu \
  >"$tmp/plain" 2>/dev/null
if "$bin" -m "$fastm/model.gguf" --mtp "$fastm/mtp.gguf" --mtp-draft 3 -p "hello there" --nothink \
    --temp 0 -n 32 --backend cpu >"$tmp/spec" 2>"$tmp/err"; then
  cmp -s "$tmp/plain" "$tmp/spec" && grep -q "^mtp: [0-9]* of [1-9][0-9]* drafts accepted" "$tmp/err" \
    && pass "--mtp --mtp-draft 3 prints the plain greedy text" \
    || fail "--mtp output differs or no draft stats: $(cat "$tmp/err")"
else
  fail "--mtp run exited with $? ($(cat "$tmp/err"))"
fi

# 4. --golden on the real fixture passes.
fast=$data/tiny-fast
"$bin" -m "$fast/model.gguf" --golden "$fast" --backend cpu >"$tmp/golden" 2>"$tmp/err"
status=$?
line=$(tail -n 1 "$tmp/golden")
if [[ $status -eq 0 && $line == *PASS ]]; then
  pass "--golden tiny-fast: $line"
else
  fail "--golden tiny-fast exited $status: $line $(cat "$tmp/err")"
fi

# 5. --golden on an altered copy fails: row 0 of the prefill logits shifted by 1.0.
bad=$tmp/tiny-fast-altered
mkdir -p "$bad"
for f in "$fast"/*; do ln -s "$f" "$bad/$(basename "$f")"; done
for v in qat off; do
  rm "$bad/prefill_logits_$v.f32"
  python3 - "$fast/prefill_logits_$v.f32" "$bad/prefill_logits_$v.f32" <<'PY'
import struct, sys
data = bytearray(open(sys.argv[1], 'rb').read())
for i in range(0, 1000 * 4, 4):  # the first row (vocab 1000)
    (x,) = struct.unpack_from('<f', data, i)
    struct.pack_into('<f', data, i, x + 1.0)
open(sys.argv[2], 'wb').write(data)
PY
done
"$bin" -m "$bad/model.gguf" --golden "$bad" --backend cpu >"$tmp/golden" 2>"$tmp/err"
status=$?
line=$(tail -n 1 "$tmp/golden")
if [[ $status -ne 0 && $line == *FAIL ]]; then
  pass "--golden on altered logits: $line"
else
  fail "--golden on altered logits exited $status: $line"
fi

# 6. A missing model is reported by name.
if "$bin" -m "$tmp/no-such-model.gguf" -p "hi" --backend cpu >"$tmp/out" 2>"$tmp/err"; then
  fail "a missing model file exited 0"
else
  grep -q "no-such-model.gguf" "$tmp/err" && pass "missing model named in the error" \
    || fail "missing model error does not name the file: $(cat "$tmp/err")"
fi

if [[ $failures -ne 0 ]]; then
  echo "$failures check(s) failed"
  exit 1
fi
echo "all ds4 CLI checks passed"
