#!/usr/bin/env bash
# Fuzzes the GGUF reader for a bounded time (libFuzzer + ASan/UBSan) and fails on any
# crash, sanitizer report or broken invariant. Needs clang with libFuzzer; without
# it the test is skipped (exit 77) with a message saying so.
#
# Env: DS4_SOURCE_DIR, DS4_TEST_DATA (set by ctest), DS4_GGUF_FUZZ_SECONDS (default 60),
#      DS4_GGUF_FUZZ_BUILD_DIR (default ./gguf-fuzz-build under the current directory).
set -euo pipefail

src=${DS4_SOURCE_DIR:?DS4_SOURCE_DIR must point at the source tree}
data=${DS4_TEST_DATA:-$src/tests/data}
seconds=${DS4_GGUF_FUZZ_SECONDS:-60}
build=${DS4_GGUF_FUZZ_BUILD_DIR:-$PWD/gguf-fuzz-build}

say() { echo "gguf_fuzz: $*"; }

if ! command -v clang >/dev/null || ! command -v clang++ >/dev/null; then
  say "SKIPPED: clang/clang++ not found (install clang and libclang-rt-14-dev to fuzz the GGUF reader)"
  exit 77
fi
probe_dir=$(mktemp -d)
trap 'rm -rf "$probe_dir"' EXIT
printf '#include <cstdint>\n#include <cstddef>\nextern "C" int LLVMFuzzerTestOneInput(const uint8_t*, size_t) { return 0; }\n' \
  > "$probe_dir/probe.cpp"
if ! clang++ -fsanitize=fuzzer "$probe_dir/probe.cpp" -o "$probe_dir/probe" 2>"$probe_dir/err"; then
  say "SKIPPED: clang++ cannot link libFuzzer (install libclang-rt-14-dev): $(head -c 300 "$probe_dir/err")"
  exit 77
fi

say "configuring $build"
CC=clang CXX=clang++ cmake -S "$src" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DDS4_FUZZ=ON -DDS4_ENGINE=ON -DDS4_TESTS=ON -DDS4_INSTALLER=OFF -DDS4_CUDA=OFF >"$build.log" 2>&1 \
  || { cat "$build.log"; say "FAIL: configure failed"; exit 1; }
cmake --build "$build" --target gguf_fuzz -j 2 >>"$build.log" 2>&1 \
  || { tail -50 "$build.log"; say "FAIL: building gguf_fuzz failed"; exit 1; }
fuzzer="$build/fuzz/gguf_fuzz"

# Seeds: small synthetic files (valid and malformed) plus the header and tensor
# table of each fixture model (the first 80 KiB; the tensor bytes add nothing).
corpus="$build/gguf-corpus"
artifacts="$build/gguf-artifacts"
rm -rf "$corpus" "$artifacts"
mkdir -p "$corpus" "$artifacts"
python3 "$src/tests/fuzz/gguf_seeds.py" "$corpus"
for f in "$data"/*/model.gguf "$data"/*/mtp.gguf; do
  [ -f "$f" ] || continue
  name=$(basename "$(dirname "$f")")-$(basename "$f")
  head -c 81920 "$f" >"$corpus/$name"
done
say "running for ${seconds}s on $(ls "$corpus" | wc -l) seeds"

status=0
"$fuzzer" "$corpus" -max_total_time="$seconds" -max_len=81920 -timeout=10 -rss_limit_mb=2048 \
  -artifact_prefix="$artifacts/" -print_final_stats=1 >"$build/fuzz.log" 2>&1 || status=$?
tail -20 "$build/fuzz.log"
if [ "$status" -ne 0 ] || ls "$artifacts"/* >/dev/null 2>&1; then
  for crash in "$artifacts"/*; do
    [ -f "$crash" ] || continue
    say "crashing input: $crash"
    od -A d -t x1 "$crash" | head -8
  done
  say "FAIL: the fuzzer found a crash (exit status $status); see $build/fuzz.log"
  exit 1
fi
say "PASS: no crash in ${seconds}s"
