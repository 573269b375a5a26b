#!/usr/bin/env bash
# End-to-end check of ds4-bench on the tiny-real fixture (CPU): a table on stdout,
# a CSV with one row per depth and positive speeds; --synthetic full without the
# CUDA backend is refused with a message saying why.
set -uo pipefail

bin=${DS4_BIN_DIR:?DS4_BIN_DIR is not set}/ds4-bench
data=${DS4_TEST_DATA:?DS4_TEST_DATA is not set}
[[ -x $bin ]] || { echo "FAIL: $bin was not built"; exit 1; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
failures=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }
pass() { echo "ok: $*"; }

if "$bin" -m "$data/tiny-real/model.gguf" --backend cpu --pp 64 --tg 8 --depth 0,160 \
    --csv "$tmp/bench.csv" >"$tmp/out" 2>"$tmp/err"; then
  cat "$tmp/out"
  grep -q "pp64+tg8 @ d0" "$tmp/out" && grep -q "pp64+tg8 @ d160" "$tmp/out" \
    && pass "table has one row per depth" || fail "table: $(cat "$tmp/out")"
  python3 - "$tmp/bench.csv" <<'PY' && pass "CSV rows are complete and speeds positive" || fail "CSV check"
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
assert [r["depth"] for r in rows] == ["0", "160"], rows
for r in rows:
    assert r["model"] == "model.gguf" and r["backend"] == "cpu", r
    assert r["pp"] == "64" and r["tg"] == "8" and r["runs"] == "1", r
    for key in ("pp_tps", "tg_tps", "ttft_ms", "pp_cpu_util", "tg_cpu_util"):
        assert float(r[key]) > 0, (key, r)
    # ttft is the prefill of pp tokens: pp / pp_tps in milliseconds.
    assert abs(float(r["ttft_ms"]) - 64 / float(r["pp_tps"]) * 1e3) < 0.05 * float(r["ttft_ms"]) + 0.01, r
print(open(sys.argv[1]).read())
PY
else
  fail "ds4-bench exited with $? ($(cat "$tmp/err"))"
fi

# --synthetic full: only with the CUDA backend.
if "$bin" --synthetic full --backend cpu >"$tmp/out" 2>"$tmp/err"; then
  fail "--synthetic full on the CPU exited 0"
else
  grep -qi "cuda" "$tmp/err" && pass "--synthetic full on the CPU is refused: $(cat "$tmp/err")" \
    || fail "--synthetic full message: $(cat "$tmp/err")"
fi

# Bad arguments are refused.
if "$bin" -m "$data/tiny-real/model.gguf" --pp 0 >"$tmp/out" 2>"$tmp/err"; then
  fail "--pp 0 accepted"
else
  pass "--pp 0 refused"
fi

if [[ $failures -ne 0 ]]; then
  echo "$failures check(s) failed"
  exit 1
fi
echo "all ds4-bench checks passed"
