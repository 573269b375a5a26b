#!/usr/bin/env bash
# Builds the engine with CUDA for this machine's GPU and runs the GPU tests and the
# full-size benchmark, one log per program. Used on the lent GPU machine:
#   tests/cuda/run_gpu_suite.sh OUTDIR [test names...]   (default: every GPU test)
# e.g. tests/cuda/run_gpu_suite.sh "$OUT" matmul_test prefill_test synthetic_full_test
set -u
out=${1:?usage: run_gpu_suite.sh OUTDIR [test...]}
shift
mkdir -p "$out"
export PATH=/usr/local/cuda/bin:$PATH
arch=${DS4_CUDA_ARCH:-90}
build=${DS4_BUILD_DIR:-build-gpu}
tests=("$@")
if [ ${#tests[@]} -eq 0 ]; then
  for f in tests/cuda/*_test.cu; do tests+=("$(basename "$f" .cu)"); done
fi
start=$(date +%s)
{
  cmake -S . -B "$build" -DDS4_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="$arch" -DCMAKE_BUILD_TYPE=Release &&
  cmake --build "$build" -j"$(nproc)" --target ds4 ds4-bench $(printf 'cuda_%s ' "${tests[@]}")
} > "$out/build.log" 2>&1 || { tail -50 "$out/build.log"; echo "BUILD FAILED"; exit 1; }
echo "build: $(( $(date +%s) - start )) s"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader
status=0
for t in "${tests[@]}"; do
  t0=$(date +%s)
  DS4_TEST_DATA=tests/data timeout 300 "$build/tests/cuda_$t" > "$out/$t.log" 2>&1
  rc=$?
  [ $rc -ne 0 ] && status=1
  echo "== $t: exit $rc, $(( $(date +%s) - t0 )) s"
  grep -E "FAIL|PASS|SKIP|t/s|TFLOP|GB/s|GiB/s|max \|d\||us\b" "$out/$t.log" | head -60
done
exit $status
