// The whole forward pass on the GPU against the golden fixtures (tiny-fast and
// tiny-real; shared/fixtures/README.md §4 rules, both QAT variants, full prefill,
// chunked prefill and token-by-token modes), through the same checker as
// `ds4 --golden DIR --backend cuda`.
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
  for (const char* fixture : {"tiny-fast", "tiny-real"}) {
    GoldenOptions o;
    o.fixture_dir = data + "/" + fixture;
    o.backend = BackendKind::kCuda;
    Result<GoldenReport> r = run_golden(o);
    check(r.ok(), std::string(fixture) + ": " + (r.ok() ? "" : r.status().message()));
    if (!r.ok()) continue;
    for (const std::string& line : r->details) std::printf("  %s\n", line.c_str());
    std::printf("%s\n", r->summary().c_str());
    check(r->passed(), std::string(fixture) + ": golden check passes on the GPU");
  }
  return finish("golden_cuda_test");
}
