// The batched GPU prefill (CudaForward::prefill through Backend::forward) against the
// GPU decode path run token by token on the tiny-real fixture (the real model's
// layout and quant types): the logits of every prompt position, then greedy decode
// continuing from the state each path left behind. A prompt of 2200 tokens split into
// chunks at positions that are not multiples of the compression ratios crosses
// position 2051, where the indexer starts selecting, and runs longer than the window.
//
// Tolerance: the prefill's projections use f16 tensor-core operands (f32 sums), the
// decode path f32 activations, so logits may differ by a few 1e-3 of their spread;
// the check is |Δ| <= 2e-2 · std(reference row) (fixtures/README.md §4, fast paths)
// and the same greedy token wherever the reference's top-2 gap exceeds that bound.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "model/model.h"
#include "runtime/backend.h"
#include "cuda_test_util.h"

using namespace ds4;
using namespace ds4::test;

namespace {

struct RowStats {
  double max_rel = 0;  // max |Δ| / std over rows
  int top1_mismatch = 0;
};

double row_std(const float* r, int v) {
  double m = 0, s = 0;
  for (int i = 0; i < v; ++i) m += r[i];
  m /= v;
  for (int i = 0; i < v; ++i) s += (r[i] - m) * (r[i] - m);
  return std::sqrt(s / v);
}

void compare_rows(const float* ref, const float* got, int rows, int v, const std::string& what, RowStats* st) {
  for (int r = 0; r < rows; ++r) {
    const float* a = ref + static_cast<int64_t>(r) * v;
    const float* b = got + static_cast<int64_t>(r) * v;
    const double sd = row_std(a, v);
    double md = 0;
    for (int i = 0; i < v; ++i) md = std::max(md, std::fabs(static_cast<double>(a[i]) - b[i]));
    st->max_rel = std::max(st->max_rel, md / sd);
    check(md <= 2e-2 * sd, what + " row " + std::to_string(r) + ": max |d| " + std::to_string(md) + " > 2e-2 * std " +
                               std::to_string(sd));
    const int ia = static_cast<int>(std::max_element(a, a + v) - a);
    const int ib = static_cast<int>(std::max_element(b, b + v) - b);
    float second = -INFINITY;
    for (int i = 0; i < v; ++i)
      if (i != ia) second = std::max(second, a[i]);
    if (ia != ib && a[ia] - second > 2e-2 * sd) {
      ++st->top1_mismatch;
      check(false, what + " row " + std::to_string(r) + ": greedy token " + std::to_string(ib) + " instead of " +
                       std::to_string(ia));
    }
  }
}

// Runs `tokens` on a fresh sequence in chunks (sizes in `chunks`; 1 = token by token),
// returning every position's logits, then `extra` greedy tokens' logits.
std::vector<float> run(Backend& b, const std::vector<int32_t>& tokens, const std::vector<int>& chunks, int extra,
                       int vocab, std::vector<int32_t>* greedy) {
  std::vector<float> all;
  Result<SeqId> seq = b.new_sequence(4096);
  check(seq.ok(), "new sequence");
  if (!seq.ok()) return all;
  size_t at = 0;
  size_t ci = 0;
  while (at < tokens.size()) {
    const size_t n = std::min<size_t>(chunks[std::min(ci, chunks.size() - 1)], tokens.size() - at);
    ++ci;
    std::vector<BatchToken> batch(n);
    for (size_t i = 0; i < n; ++i) batch[i] = {tokens[at + i], *seq, static_cast<int32_t>(at + i), true, false};
    ForwardOutput out;
    Status s = b.forward(batch, &out);
    check(s.ok(), "forward: " + s.message());
    if (!s.ok()) return all;
    all.insert(all.end(), out.logits.begin(), out.logits.end());
    at += n;
  }
  int32_t next = static_cast<int32_t>(std::max_element(all.end() - vocab, all.end()) - (all.end() - vocab));
  for (int i = 0; i < extra; ++i) {
    greedy->push_back(next);
    BatchToken t{next, *seq, static_cast<int32_t>(tokens.size() + i), true, false};
    ForwardOutput out;
    Status s = b.forward({&t, 1}, &out);
    check(s.ok(), "decode: " + s.message());
    if (!s.ok()) break;
    all.insert(all.end(), out.logits.begin(), out.logits.end());
    next = static_cast<int32_t>(std::max_element(out.logits.begin(), out.logits.end()) - out.logits.begin());
  }
  b.free_sequence(*seq);
  return all;
}

}  // namespace

int main() {
  if (!gpu_present()) return 77;
  const char* env = std::getenv("DS4_TEST_DATA");
  const std::string data = env ? env : "tests/data";
  Result<std::unique_ptr<Model>> model = Model::Load(data + "/tiny-real/model.gguf");
  check(model.ok(), "load tiny-real: " + (model.ok() ? std::string() : model.status().message()));
  if (!model.ok()) return finish("prefill_test");
  BackendOptions opt;
  Result<std::unique_ptr<Backend>> b = make_backend(**model, BackendKind::kCuda, opt);
  check(b.ok(), "cuda backend: " + (b.ok() ? std::string() : b.status().message()));
  if (!b.ok()) return finish("prefill_test");
  const int vocab = (*model)->config().vocab;

  std::vector<int32_t> tokens(2200);
  uint64_t x = 12345;
  for (auto& t : tokens) {
    x = x * 6364136223846793005ull + 1442695040888963407ull;
    t = static_cast<int32_t>((x >> 33) % vocab);
  }
  const int extra = 24;
  std::vector<int32_t> g_ref, g_one, g_chunk;
  const std::vector<float> ref = run(**b, tokens, {1}, extra, vocab, &g_ref);
  const std::vector<float> one = run(**b, std::vector<int32_t>(tokens.begin(), tokens.begin() + 2048), {2048}, 0,
                                     vocab, &g_one);
  // The same tokens as the reference (its greedy continuation included): chunks, then
  // decode steps after the prefilled state.
  std::vector<int32_t> continued = tokens;
  continued.insert(continued.end(), g_ref.begin(), g_ref.end());
  const std::vector<float> chunked = run(**b, continued, {37, 1000, 163, 1000, 1}, 0, vocab, &g_chunk);
  if (ref.size() != (tokens.size() + extra) * static_cast<size_t>(vocab) || one.size() != 2048u * vocab ||
      chunked.size() != ref.size()) {
    check(false, "logit row counts");
    return finish("prefill_test");
  }
  RowStats s1, s2;
  compare_rows(ref.data(), one.data(), 2048, vocab, "one chunk of 2048", &s1);
  compare_rows(ref.data(), chunked.data(), static_cast<int>(tokens.size() + extra), vocab,
               "chunks 37+1000+163+1000, then decode", &s2);
  std::printf("one chunk of 2048: max |d|/std %.2e, greedy mismatches %d\n", s1.max_rel, s1.top1_mismatch);
  std::printf("chunks 37+1000+163+1000, then %d decode steps: max |d|/std %.2e, greedy mismatches %d\n", extra,
              s2.max_rel, s2.top1_mismatch);
  return finish("prefill_test");
}
