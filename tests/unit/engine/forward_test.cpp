// CPU forward pass: the QAT round trips and RoPE against hand-computed values;
// chunked prefill equals token-by-token decode; several sequences in one batch equal
// separate runs; truncate() rolls back and re-decodes identically; bad batches are
// rejected without advancing any sequence.
#include <doctest/doctest.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <memory>
#include <mutex>
#include <set>
#include <thread>
#include <string>
#include <vector>

#include "cpu/cpu_backend.h"
#include "cpu/qat.h"
#include "cpu/rope.h"
#include "model/model.h"
#include "runtime/backend.h"
#include "runtime/thread_pool.h"

namespace {

std::string data_path(const std::string& rel) { return std::string(DS4_TEST_DATA) + "/" + rel; }

std::unique_ptr<ds4::Model> load(const std::string& fixture) {
  auto model = ds4::Model::Load(data_path(fixture + "/model.gguf"));
  REQUIRE_MESSAGE(model.ok(), model.status().message());
  return std::move(model.value());
}

std::unique_ptr<ds4::Backend> cpu_backend(const ds4::Model& model, bool qat = true) {
  ds4::BackendOptions o;
  o.qat = qat;
  auto b = ds4::make_backend(model, ds4::BackendKind::kCpu, o);
  REQUIRE_MESSAGE(b.ok(), b.status().message());
  return std::move(b.value());
}

// Deterministic pseudo-random token ids in [3, vocab).
std::vector<int32_t> tokens(int n, int32_t vocab, uint32_t seed = 7) {
  std::vector<int32_t> t(n);
  for (int i = 0; i < n; ++i) {
    seed = seed * 1103515245u + 12345u;
    t[i] = 3 + static_cast<int32_t>((seed >> 8) % static_cast<uint32_t>(vocab - 3));
  }
  return t;
}

// Feeds ids[from, to) to `seq` in chunks of `chunk`, returning every position's logits.
std::vector<float> feed(ds4::Backend& b, ds4::SeqId seq, const std::vector<int32_t>& ids, int from, int to,
                        int chunk) {
  std::vector<float> all;
  ds4::ForwardOutput out;
  for (int start = from; start < to; start += chunk) {
    std::vector<ds4::BatchToken> batch;
    for (int p = start; p < std::min(to, start + chunk); ++p) batch.push_back({ids[p], seq, p, true, false});
    ds4::Status s = b.forward(batch, &out);
    REQUIRE_MESSAGE(s.ok(), s.message());
    all.insert(all.end(), out.logits.begin(), out.logits.end());
  }
  return all;
}

double max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  REQUIRE(a.size() == b.size());
  double m = 0;
  for (size_t i = 0; i < a.size(); ++i) m = std::max(m, std::fabs(double(a[i]) - b[i]));
  return m;
}

}  // namespace

TEST_CASE("E4M3 rounding: grid points, ties to even, subnormals, saturation") {
  using ds4::cpu::round_to_e4m3;
  CHECK(round_to_e4m3(1.0f) == 1.0f);
  CHECK(round_to_e4m3(1.0625f) == 1.0f);    // halfway between 1 and 1.125: even mantissa (1.0)
  CHECK(round_to_e4m3(1.1875f) == 1.25f);   // halfway between 1.125 and 1.25: even mantissa (1.25)
  CHECK(round_to_e4m3(-3.3f) == -3.25f);
  CHECK(round_to_e4m3(448.0f) == 448.0f);
  CHECK(round_to_e4m3(500.0f) == 448.0f);
  CHECK(round_to_e4m3(std::ldexp(1.0f, -9)) == std::ldexp(1.0f, -9));          // smallest subnormal
  CHECK(round_to_e4m3(std::ldexp(1.4f, -9)) == std::ldexp(1.0f, -9));
  CHECK(round_to_e4m3(std::ldexp(1.0f, -10)) == 0.0f);                         // tie to zero (even)
  CHECK(round_to_e4m3(std::ldexp(3.0f, -10)) == std::ldexp(2.0f, -9));         // 1.5 quanta -> 2 (even)
}

TEST_CASE("E2M1 rounding follows the spec's tie list") {
  using ds4::cpu::round_to_e2m1;
  const float in[] = {0.25f, 0.75f, 1.25f, 1.75f, 2.5f, 3.5f, 5.0f, 7.0f, -0.3f, -2.9f};
  const float want[] = {0.0f, 1.0f, 1.0f, 2.0f, 2.0f, 4.0f, 4.0f, 6.0f, -0.5f, -3.0f};
  for (size_t i = 0; i < std::size(in); ++i) CHECK_MESSAGE(round_to_e2m1(in[i]) == want[i], "input " << in[i]);
}

TEST_CASE("FP8 block round trip uses a power-of-two scale from the block maximum") {
  std::vector<float> x(64, 0.0f);
  x[0] = 896.0f;  // amax/448 = 2 -> scale 2: 896 -> 448 * 2 exactly
  x[1] = 3.3f;    // 1.65 on the grid -> 1.625 -> 3.25
  ds4::cpu::fp8_roundtrip(x.data(), 64);
  CHECK(x[0] == 896.0f);
  CHECK(x[1] == 3.25f);
  CHECK(x[2] == 0.0f);
}

TEST_CASE("Hadamard transform is orthonormal and natural-order") {
  std::vector<float> x(128, 0.0f);
  x[0] = 1.0f;
  ds4::cpu::hadamard(x.data(), 128);
  for (float v : x) CHECK(v == doctest::Approx(1.0 / std::sqrt(128.0)));
  std::vector<float> y(128, 0.0f);
  y[1] = 1.0f;  // row 1 of the Sylvester matrix alternates signs
  ds4::cpu::hadamard(y.data(), 128);
  CHECK(y[0] > 0);
  CHECK(y[1] < 0);
  CHECK(y[2] > 0);
  ds4::cpu::hadamard(y.data(), 128);  // H is its own inverse when normalised
  CHECK(y[1] == doctest::Approx(1.0f));
  CHECK(std::fabs(y[0]) < 1e-6);
}

TEST_CASE("RoPE: YaRN keeps low pairs, divides high pairs by the factor; inverse undoes it") {
  auto model = load("tiny-fast");
  const ds4::ModelConfig& c = model->config();
  ds4::cpu::Rope yarn(c, true);
  REQUIRE(yarn.dim() == 64);
  // low = 15, high = 25 for 64 dims, base 160000, original context 65536.
  for (int j = 0; j <= 15; ++j) CHECK(yarn.freqs()[j] == doctest::Approx(std::pow(160000.0, -2.0 * j / 64)));
  for (int j = 25; j < 32; ++j) CHECK(yarn.freqs()[j] == doctest::Approx(std::pow(160000.0, -2.0 * j / 64) / 16));
  ds4::cpu::Rope plain(c, false);
  CHECK(plain.freqs()[1] == doctest::Approx(std::pow(10000.0, -2.0 / 64)));
  std::vector<float> v(64), orig;
  for (int i = 0; i < 64; ++i) v[i] = std::sin(0.37f * i) + 0.1f;
  orig = v;
  yarn.rotate(v.data(), 1234);
  CHECK(max_abs_diff(v, orig) > 0.1);
  // Pair (0, 1) rotates by angle p * 1 at j = 0.
  CHECK(v[0] == doctest::Approx(orig[0] * std::cos(1234.0) - orig[1] * std::sin(1234.0)).epsilon(1e-4));
  yarn.rotate(v.data(), 1234, /*inverse=*/true);
  CHECK(max_abs_diff(v, orig) < 1e-5);
}

TEST_CASE("chunked prefill equals token-by-token decode (tiny-fast, past the window and the indexer top-k)") {
  auto model = load("tiny-fast");
  const auto ids = tokens(70, model->config().vocab);
  for (bool qat : {true, false}) {
    auto b = cpu_backend(*model, qat);
    auto s1 = b->new_sequence(128);
    auto s2 = b->new_sequence(128);
    auto s3 = b->new_sequence(128);
    REQUIRE(s1.ok());
    const auto full = feed(*b, *s1, ids, 0, 70, 70);
    const auto by_token = feed(*b, *s2, ids, 0, 70, 1);
    const auto chunks = feed(*b, *s3, ids, 0, 70, 9);
    CHECK(max_abs_diff(full, by_token) < 1e-5);
    CHECK(max_abs_diff(full, chunks) < 1e-5);
    CHECK(b->sequence_length(*s1) == 70);
  }
}

TEST_CASE("several sequences in one batch equal separate runs") {
  auto model = load("tiny-fast");
  const int32_t vocab = model->config().vocab;
  const auto a = tokens(40, vocab, 1), c = tokens(40, vocab, 2);
  auto b = cpu_backend(*model);
  auto sa = b->new_sequence(64), sc = b->new_sequence(64), ra = b->new_sequence(64), rc = b->new_sequence(64);
  const auto ref_a = feed(*b, *ra, a, 0, 40, 40);
  const auto ref_c = feed(*b, *rc, c, 0, 40, 40);
  // Interleave: 25 tokens of a and 30 of c in one batch, then the rest one token each per step.
  std::vector<ds4::BatchToken> batch;
  for (int p = 0; p < 30; ++p) {
    if (p < 25) batch.push_back({a[p], *sa, p, true, false});
    batch.push_back({c[p], *sc, p, true, false});
  }
  ds4::ForwardOutput out;
  REQUIRE(b->forward(batch, &out).ok());
  const size_t V = vocab;
  std::vector<float> got_a, got_c;
  size_t row = 0;
  for (const auto& t : batch) {
    auto& dst = t.seq == *sa ? got_a : got_c;
    dst.insert(dst.end(), out.logits.begin() + row * V, out.logits.begin() + (row + 1) * V);
    ++row;
  }
  for (int step = 0; step < 15; ++step) {
    std::vector<ds4::BatchToken> b2;
    if (25 + step < 40) b2.push_back({a[25 + step], *sa, 25 + step, true, false});
    if (30 + step < 40) b2.push_back({c[30 + step], *sc, 30 + step, true, false});
    REQUIRE(b->forward(b2, &out).ok());
    for (size_t i = 0; i < b2.size(); ++i) {
      auto& dst = b2[i].seq == *sa ? got_a : got_c;
      dst.insert(dst.end(), out.logits.begin() + i * V, out.logits.begin() + (i + 1) * V);
    }
  }
  CHECK(max_abs_diff(got_a, ref_a) < 1e-5);
  CHECK(max_abs_diff(got_c, ref_c) < 1e-5);
}

TEST_CASE("truncate rolls back up to kMaxRollback tokens and re-decodes identically") {
  auto model = load("tiny-fast");
  const auto ids = tokens(90, model->config().vocab, 3);
  const auto other = tokens(90, model->config().vocab, 4);
  auto b = cpu_backend(*model);
  auto seq = b->new_sequence(128);
  REQUIRE(seq.ok());
  const int k = ds4::Backend::kMaxRollback;
  // Prefill 60, decode 16 "draft" tokens that will be rejected, across compression
  // boundaries (ratios 4 and 16) and past the window of 16.
  feed(*b, *seq, ids, 0, 60, 60);
  std::vector<int32_t> drafted = ids;
  for (int p = 60; p < 60 + k; ++p) drafted[p] = other[p];
  const auto rejected = feed(*b, *seq, drafted, 60, 60 + k, 1);
  REQUIRE(b->truncate(*seq, 60).ok());
  CHECK(b->sequence_length(*seq) == 60);
  const auto after = feed(*b, *seq, ids, 60, 90, 1);

  auto ref_backend = cpu_backend(*model);
  auto ref = ref_backend->new_sequence(128);
  const auto reference = feed(*ref_backend, *ref, ids, 0, 90, 1);
  const std::vector<float> tail(reference.end() - static_cast<long>(after.size()), reference.end());
  CHECK(max_abs_diff(after, tail) < 1e-5);
  CHECK(max_abs_diff(rejected, std::vector<float>(tail.begin(), tail.begin() + rejected.size())) > 1e-3);

  // Rolling back further than kMaxRollback is refused; truncating to 0 restarts.
  ds4::Status too_far = b->truncate(*seq, 90 - k - 1);
  CHECK_FALSE(too_far.ok());
  CHECK(too_far.message().find("rolled back") != std::string::npos);
  REQUIRE(b->truncate(*seq, 0).ok());
  const auto again = feed(*b, *seq, ids, 0, 90, 13);
  CHECK(max_abs_diff(again, reference) < 1e-5);
}

TEST_CASE("bad batches are rejected with the fault named and nothing advanced") {
  auto model = load("tiny-fast");
  auto b = cpu_backend(*model);
  auto seq = b->new_sequence(8);
  REQUIRE(seq.ok());
  ds4::ForwardOutput out;
  std::vector<ds4::BatchToken> gap = {{5, *seq, 0, false, false}, {6, *seq, 2, true, false}};
  ds4::Status s = b->forward(gap, &out);
  CHECK_FALSE(s.ok());
  CHECK(s.message().find("position 2") != std::string::npos);
  CHECK(b->sequence_length(*seq) == 0);
  std::vector<ds4::BatchToken> bad_token = {{100000, *seq, 0, true, false}};
  s = b->forward(bad_token, &out);
  CHECK(s.message().find("token id 100000") != std::string::npos);
  std::vector<ds4::BatchToken> bad_seq = {{5, 42, 0, true, false}};
  CHECK(b->forward(bad_seq, &out).message().find("unknown sequence 42") != std::string::npos);
  std::vector<ds4::BatchToken> too_long;
  for (int p = 0; p < 9; ++p) too_long.push_back({5, *seq, p, false, false});
  CHECK(b->forward(too_long, &out).message().find("exceeds the context") != std::string::npos);
  CHECK(b->sequence_length(*seq) == 0);
  CHECK_FALSE(b->new_sequence(0).ok());
}

TEST_CASE("want_hidden returns the HC state; make_backend names a missing CUDA backend") {
  auto model = load("tiny-fast");
  auto b = cpu_backend(*model);
  auto seq = b->new_sequence(8);
  std::vector<ds4::BatchToken> batch = {{5, *seq, 0, false, true}, {6, *seq, 1, true, true}};
  ds4::ForwardOutput out;
  REQUIRE(b->forward(batch, &out).ok());
  CHECK(out.hidden.size() == 2u * model->config().hc_dim());
  CHECK(out.logits.size() == static_cast<size_t>(model->config().vocab));
  CHECK(ds4::backend_kind_name(ds4::BackendKind::kCpu) == "cpu");
  if (!ds4::cuda_available()) {
    auto cuda = ds4::make_backend(*model, ds4::BackendKind::kCuda, ds4::BackendOptions{});
    CHECK_FALSE(cuda.ok());
    CHECK(cuda.status().message().find("cuda") != std::string::npos);
  }
}

TEST_CASE("MTP block: needs the MTP file; chunked MTP equals one batch; drafts recurse on its own state") {
  auto model = load("tiny-fast");
  {
    auto plain = cpu_backend(*model);
    CHECK_FALSE(plain->has_mtp());
    ds4::ForwardOutput out;
    std::vector<float> h(model->config().hc_dim(), 0.0f);
    std::vector<ds4::MtpToken> t = {{5, 0, 0, h.data(), true, false}};
    CHECK(plain->forward_mtp(t, &out).message().find("MTP") != std::string::npos);
  }
  REQUIRE(model->load_mtp(data_path("tiny-fast/mtp.gguf")).ok());
  auto b = cpu_backend(*model);
  REQUIRE(b->has_mtp());
  const int n = 40;
  const int64_t hcd = model->config().hc_dim();
  const auto ids = tokens(n, model->config().vocab, 9);
  auto seq = b->new_sequence(64);
  std::vector<ds4::BatchToken> prompt;
  for (int p = 0; p < n; ++p) prompt.push_back({ids[p], *seq, p, false, true});
  ds4::ForwardOutput out;
  REQUIRE(b->forward(prompt, &out).ok());
  const std::vector<float> hidden = out.hidden;
  REQUIRE(hidden.size() == static_cast<size_t>(n * hcd));

  auto mtp_run = [&](ds4::Backend& be, ds4::SeqId s, int chunk) {
    std::vector<float> logits;
    for (int start = 0; start < n; start += chunk) {
      std::vector<ds4::MtpToken> batch;
      for (int p = start; p < std::min(n, start + chunk); ++p) {
        batch.push_back({ids[p], s, p, hidden.data() + p * hcd, true, false});
      }
      ds4::ForwardOutput o;
      ds4::Status st = be.forward_mtp(batch, &o);
      REQUIRE_MESSAGE(st.ok(), st.message());
      logits.insert(logits.end(), o.logits.begin(), o.logits.end());
    }
    return logits;
  };
  auto s1 = b->new_sequence(64), s2 = b->new_sequence(64);
  const auto whole = mtp_run(*b, *s1, n);
  const auto chunked = mtp_run(*b, *s2, 7);
  CHECK(max_abs_diff(whole, chunked) < 1e-5);

  // A second draft reads the first draft's output state at the next position.
  std::vector<ds4::MtpToken> first = {{ids[n - 1], *s1, n, hidden.data() + (n - 1) * hcd, true, true}};
  REQUIRE(b->forward_mtp(first, &out).ok());
  REQUIRE(out.hidden.size() == static_cast<size_t>(hcd));
  const std::vector<float> state = out.hidden;
  std::vector<ds4::MtpToken> second = {{ids[0], *s1, n + 1, state.data(), true, false}};
  REQUIRE(b->forward_mtp(second, &out).ok());
  CHECK(out.logits.size() == static_cast<size_t>(model->config().vocab));
  std::vector<ds4::MtpToken> no_state = {{ids[0], *s1, n + 2, nullptr, true, false}};
  CHECK(b->forward_mtp(no_state, &out).message().find("HC state") != std::string::npos);
}

TEST_CASE("thread pool: every index runs exactly once, on more than one thread when asked") {
  ds4::ThreadPool pool(3);
  CHECK(pool.size() == 3);
  for (int64_t n : {0, 1, 5, 1000, 4097}) {
    std::vector<std::atomic<int>> hits(n);
    pool.parallel_for(n, 7, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) hits[i]++;
    });
    for (int64_t i = 0; i < n; ++i) REQUIRE(hits[i].load() == 1);
  }
  std::mutex mu;
  std::set<std::thread::id> ids;
  pool.parallel_for(64, 1, [&](int64_t, int64_t) {
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
    std::lock_guard<std::mutex> lock(mu);
    ids.insert(std::this_thread::get_id());
  });
  CHECK(ids.size() > 1);
}

TEST_CASE("forward_greedy returns the argmax of the step's logits and advances the sequence") {
  auto model = load("tiny-fast");
  auto a = cpu_backend(*model);
  auto b = cpu_backend(*model);
  auto sa = a->new_sequence(64);
  auto sb = b->new_sequence(64);
  REQUIRE(sa.ok());
  REQUIRE(sb.ok());
  int32_t token = 5;
  for (int32_t pos = 0; pos < 12; ++pos) {
    ds4::BatchToken t{token, *sa, pos, true, false};
    ds4::ForwardOutput out;
    REQUIRE(a->forward(std::span<const ds4::BatchToken>(&t, 1), &out).ok());
    int32_t want = 0;
    for (int32_t i = 1; i < model->config().vocab; ++i) {
      if (out.logits[i] > out.logits[want]) want = i;
    }
    ds4::BatchToken g{token, *sb, pos, false, false};
    auto got = b->forward_greedy(g);
    REQUIRE_MESSAGE(got.ok(), got.status().message());
    CHECK(*got == want);
    CHECK(b->sequence_length(*sb) == pos + 1);
    token = want;
  }
  // A step that does not continue the sequence is refused, as forward() refuses it.
  ds4::BatchToken bad{token, *sb, 3, false, false};
  CHECK_FALSE(b->forward_greedy(bad).ok());
}
