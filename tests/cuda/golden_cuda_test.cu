// The whole forward pass on the GPU against the golden fixtures (tiny-fast and
// tiny-real; shared/fixtures/README.md §4 rules, both QAT variants, full prefill,
// chunked prefill and token-by-token modes), through the same checker as
// `ds4 --golden DIR --backend cuda`.
//
// Rules: the strict f32 rule (|Δlogit| <= 1e-3·std + 2·noise, top-1 identical where
// the golden gap is clear) everywhere except tiny-real with QAT, where the test asserts
// the README's rule for fast paths (|Δlogit| <= 2e-2·std + 2·noise, same top-1
// requirement). Reason: past position 2051 the indexer selects 512 of more rows, and
// its inputs go through the Hadamard + FP4 round trip, a step function; whenever the
// GPU's f32 sums run in another order than the CPU's, a last-bit difference can move a
// value across an FP4 step and change the selection near its (small) margins. Which
// values land on a step depends on the kernels' summation order: on the H200 the
// token-by-token mode missed the strict rule at 35 of 1280 positions with the first
// session's kernels and meets it with today's (docs/perf.md), so the strict result is
// printed but only the fast-path rule is asserted there.
#include <cstdio>
#include <cstdlib>
#include <string>

#include "runtime/golden.h"
#include "cuda_test_util.h"

using namespace ds4;
using namespace ds4::test;

int main() {
  if (!gpu_present()) return 77;
  const char* env = std::getenv("DS4_TEST_DATA");
  const std::string data = env ? env : "tests/data";
  for (const std::string fixture : {"tiny-fast", "tiny-real"}) {
    // 1. The strict rule, wherever the GPU is expected to meet it.
    GoldenOptions o;
    o.fixture_dir = data + "/" + fixture;
    o.backend = BackendKind::kCuda;
    o.rel_tolerance = GoldenOptions::kStrictTolerance;
    Result<GoldenReport> r = run_golden(o);
    check(r.ok(), fixture + ": " + (r.ok() ? "" : r.status().message()));
    if (!r.ok()) continue;
    for (const std::string& line : r->details) std::printf("  %s\n", line.c_str());
    std::printf("%s\n", r->summary().c_str());
    check(r->tokenizer_ok, fixture + ": tokenizer");
    for (const GoldenRun& run : r->runs) {
      if (fixture == "tiny-real" && run.variant == "qat") continue;  // fast-path rule, below
      std::printf("%s %s %s: strict rule -> %s\n", fixture.c_str(), run.variant.c_str(), run.mode_name().c_str(),
                  run.passed() ? "PASS" : "FAIL");
      check(run.passed(), fixture + " " + run.variant + " " + run.mode_name() + " (strict)");
    }
    // 2. The rule `ds4 --golden DIR --backend cuda` applies: every run of both variants.
    o.rel_tolerance = default_golden_tolerance(BackendKind::kCuda);
    Result<GoldenReport> fast = run_golden(o);
    check(fast.ok(), fixture + ": " + (fast.ok() ? "" : fast.status().message()));
    if (!fast.ok()) continue;
    std::printf("%s\n", fast->summary().c_str());
    check(fast->passed(), fixture + " (fast-path rule, every run)");
  }
  return finish("golden_cuda_test");
}
