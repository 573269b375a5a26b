#!/usr/bin/env bash
# The test command: configure, build everything (CUDA code too when nvcc is present),
# then run every test with ctest. GPU tests skip visibly on a machine without a GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${DS4_BUILD_DIR:-build}
jobs=${DS4_JOBS:-$(nproc)}
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release ${DS4_CMAKE_ARGS:-}
cmake --build "$build" -j "$jobs"
ctest --test-dir "$build" --output-on-failure -j "$jobs" ${DS4_CTEST_ARGS:-}
