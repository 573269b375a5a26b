#!/usr/bin/env bash
# The test command: configure, build everything (CUDA code too when nvcc is present),
# then run every test with ctest. GPU tests skip visibly on a machine without a GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
# nvcc often lives outside PATH; the CUDA code is compiled (not run) wherever it exists.
if ! command -v nvcc >/dev/null && [ -x /usr/local/cuda/bin/nvcc ]; then
  export PATH="/usr/local/cuda/bin:$PATH"
fi
build=${DS4_BUILD_DIR:-build}
jobs=${DS4_JOBS:-$(nproc)}
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release ${DS4_CMAKE_ARGS:-}
cmake --build "$build" -j "$jobs"
ctest --test-dir "$build" --output-on-failure -j "$jobs" ${DS4_CTEST_ARGS:-}
