// Sampler (spec §7) and stop strings (§8): greedy, the xorshift64* stream, min_p,
// top_k, top_p, temperature, determinism per seed, and the streaming stop matcher.
#include <doctest/doctest.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "runtime/sampler.h"
#include "text/stop_matcher.h"
#include "text/utf8.h"

namespace {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();

std::vector<int> histogram(ds4::SamplerParams params, const std::vector<float>& logits, int draws) {
  ds4::Sampler sampler(params);
  std::vector<int> counts(logits.size(), 0);
  for (int i = 0; i < draws; ++i) counts.at(sampler.sample(logits))++;
  return counts;
}

ds4::SamplerParams params(float temperature, float top_p, float min_p, int top_k, uint64_t seed) {
  ds4::SamplerParams p;
  p.temperature = temperature;
  p.top_p = top_p;
  p.min_p = min_p;
  p.top_k = top_k;
  p.seed = seed;
  return p;
}

// Logits whose softmax at temperature 1 is exactly `probs`.
std::vector<float> logits_of(const std::vector<double>& probs) {
  std::vector<float> out;
  for (double p : probs) out.push_back(static_cast<float>(std::log(p)));
  return out;
}

}  // namespace

TEST_CASE("defaults are the spec's") {
  const ds4::SamplerParams p;
  CHECK(p.temperature == 1.0f);
  CHECK(p.top_p == 1.0f);
  CHECK(p.min_p == doctest::Approx(0.05));
  CHECK(p.top_k == 0);
}

TEST_CASE("xorshift64* stream matches the spec's recurrence") {
  ds4::SamplerRng zero(0);  // state 0 starts from 0x9E3779B97F4A7C15
  CHECK(zero.next_u64() == 0x0d83b3e29a21487aull);
  CHECK(zero.next_u64() == 0x54c44c79f1fe9d67ull);
  CHECK(zero.next_u64() == 0xa845f342007a0e78ull);
  ds4::SamplerRng seeded(42);
  CHECK(seeded.next_u64() == 0x56ce4ab7719ba3a0ull);
  ds4::SamplerRng uniform(42);
  CHECK(uniform.next_uniform() == doctest::Approx(0.3390852212905884).epsilon(1e-12));
  CHECK(uniform.next_uniform() == doctest::Approx(0.7822558283805847).epsilon(1e-12));
}

TEST_CASE("greedy: argmax, ties to the lowest id, non-finite logits skipped") {
  CHECK(ds4::Sampler::greedy(std::vector<float>{1, 3, 3, 2}) == 1);
  CHECK(ds4::Sampler::greedy(std::vector<float>{kNaN, kInf, 0.5f, -1}) == 2);
  CHECK(ds4::Sampler::greedy(std::vector<float>{kNaN, kNaN}) == 0);
  ds4::Sampler cold(params(0.0f, 1.0f, 0.05f, 0, 7));
  for (int i = 0; i < 10; ++i) CHECK(cold.sample(std::vector<float>{0.1f, 0.2f, 5.0f, 0.3f}) == 2);
  // No finite logit at all: greedy's fallback even when sampling.
  ds4::Sampler warm(params(1.0f, 1.0f, 0.0f, 0, 7));
  CHECK(warm.sample(std::vector<float>{kNaN, -kInf}) == 0);
}

TEST_CASE("default path draws in proportion to the probabilities") {
  const std::vector<double> probs = {0.5, 0.3, 0.2};
  const auto counts = histogram(params(1.0f, 1.0f, 0.0f, 0, 1234), logits_of(probs), 40000);
  for (size_t i = 0; i < probs.size(); ++i) {
    CHECK(counts[i] / 40000.0 == doctest::Approx(probs[i]).epsilon(0.05));
  }
}

TEST_CASE("the default-path walk picks the first id whose cumulative weight reaches u*S") {
  const std::vector<float> logits = {0.0f, std::log(2.0f), kNaN, std::log(3.0f)};
  for (uint64_t seed = 1; seed <= 50; ++seed) {
    ds4::SamplerRng rng(seed);
    const double u = rng.next_uniform();
    // Weights relative to the top (3): 1/3, 2/3, 1; S = 2.
    const double r = u * 2.0;
    const int32_t expected = r <= 1.0 / 3 ? 0 : r <= 1.0 ? 1 : 3;
    ds4::Sampler sampler(params(1.0f, 1.0f, 0.0f, 0, seed));
    CHECK(sampler.sample(logits) == expected);
  }
}

TEST_CASE("min_p removes tokens less likely than min_p times the top token") {
  // p = 0.6, 0.37, 0.02, 0.01 -> with min_p 0.05 the last two are below 0.03.
  const auto counts =
      histogram(params(1.0f, 1.0f, 0.05f, 0, 99), logits_of({0.6, 0.37, 0.02, 0.01}), 20000);
  CHECK(counts[0] > 0);
  CHECK(counts[1] > 0);
  CHECK(counts[2] == 0);
  CHECK(counts[3] == 0);
  // Without min_p they do appear.
  const auto all = histogram(params(1.0f, 1.0f, 0.0f, 0, 99), logits_of({0.6, 0.37, 0.02, 0.01}), 20000);
  CHECK(all[2] > 0);
  CHECK(all[3] > 0);
}

TEST_CASE("top_k keeps the k best logits, ties to the lower id") {
  const std::vector<float> logits = {1.0f, 3.0f, 2.0f, 3.0f, 0.5f};
  const auto one = histogram(params(1.0f, 1.0f, 0.0f, 1, 5), logits, 200);
  CHECK(one[1] == 200);
  const auto two = histogram(params(1.0f, 1.0f, 0.0f, 2, 5), logits, 4000);
  CHECK(two[1] > 1500);
  CHECK(two[3] > 1500);
  CHECK(two[0] + two[2] + two[4] == 0);
  ds4::SamplerParams big = params(1.0f, 1.0f, 0.0f, 5000, 5);
  CHECK(ds4::Sampler(big).params().top_k == ds4::SamplerParams::kMaxTopK);
}

TEST_CASE("top_p stops after the token that reaches the mass") {
  // 0.5 < 0.6, 0.5 + 0.3 >= 0.6: tokens 0 and 1 only, renormalized 5:3.
  const auto counts = histogram(params(1.0f, 0.6f, 0.0f, 0, 11), logits_of({0.5, 0.3, 0.2}), 16000);
  CHECK(counts[2] == 0);
  CHECK(counts[0] / 16000.0 == doctest::Approx(0.625).epsilon(0.05));
  // top_p <= 0 or > 1 means disabled.
  CHECK(ds4::Sampler(params(1.0f, 0.0f, 0.05f, 0, 1)).params().top_p == 1.0f);
  CHECK(ds4::Sampler(params(1.0f, 1.5f, 0.05f, 0, 1)).params().top_p == 1.0f);
  CHECK(ds4::Sampler(params(1.0f, 1.0f, -1.0f, 0, 1)).params().min_p == 0.0f);
  CHECK(ds4::Sampler(params(1.0f, 1.0f, 3.0f, 0, 1)).params().min_p == 1.0f);
  // min_p 1 keeps only the top token on every path.
  for (float top_p : {1.0f, 0.5f}) {
    const auto only_top = histogram(params(1.0f, top_p, 3.0f, 0, 2), logits_of({0.3, 0.7}), 100);
    CHECK(only_top[1] == 100);
  }
}

TEST_CASE("temperature sharpens or flattens the distribution") {
  const std::vector<float> logits = logits_of({0.6, 0.4});
  const auto cold = histogram(params(0.25f, 1.0f, 0.0f, 0, 3), logits, 10000);
  const auto hot = histogram(params(4.0f, 1.0f, 0.0f, 0, 3), logits, 10000);
  // p0 = 0.6^4 / (0.6^4 + 0.4^4) = 0.835 at T = 0.25; 0.6^.25 / (...) = 0.525 at T = 4.
  CHECK(cold[0] / 10000.0 == doctest::Approx(0.835).epsilon(0.05));
  CHECK(hot[0] / 10000.0 == doctest::Approx(0.525).epsilon(0.05));
}

TEST_CASE("the same seed gives the same tokens; another seed other tokens") {
  std::vector<float> flat(1000, 0.0f);
  for (int top_k : {0, 50}) {
    ds4::Sampler a(params(1.0f, 0.9f, 0.0f, top_k, 77)), b(params(1.0f, 0.9f, 0.0f, top_k, 77)),
        c(params(1.0f, 0.9f, 0.0f, top_k, 78));
    std::vector<int32_t> sa, sb, sc;
    for (int i = 0; i < 64; ++i) {
      sa.push_back(a.sample(flat));
      sb.push_back(b.sample(flat));
      sc.push_back(c.sample(flat));
    }
    CHECK(sa == sb);
    CHECK(sa != sc);
  }
  CHECK(ds4::sampler_time_seed() != 0);
}

TEST_CASE("stop strings: held back while they may be completing, cut at the earliest match") {
  ds4::StopMatcher m({"</answer>", "STOP"});
  CHECK(m.push("Hello </an") == "Hello ");
  CHECK(m.push("gle> ok") == "</angle> ok");
  CHECK(m.push(" ST") == " ");
  CHECK(m.push("OP and more") == "");
  CHECK(m.stopped());
  CHECK(m.matched() == "STOP");
  CHECK(m.push("anything") == "");
  CHECK(m.finish() == "");

  ds4::StopMatcher earliest({"bc", "abcd"});
  CHECK(earliest.push("xabcd") == "x");
  CHECK(earliest.matched() == "abcd");

  ds4::StopMatcher none;
  CHECK(none.push("all of it") == "all of it");
  CHECK_FALSE(none.stopped());

  ds4::StopMatcher tail({"END"});
  CHECK(tail.push("the E") == "the ");
  CHECK(tail.finish() == "E");
  CHECK_FALSE(tail.stopped());
}

TEST_CASE("stop matcher output never splits a UTF-8 character") {
  ds4::StopMatcher m({"\xE2\x82\xAC!"});
  const std::string text = "caf\xC3\xA9 \xE6\xAF\x95 costs 5\xE2\x82\xAC today";
  std::string out;
  for (char c : text) {
    const std::string part = m.push(std::string_view(&c, 1));
    CHECK(ds4::utf8_is_valid(part));
    out += part;
  }
  out += m.finish();
  CHECK(out == text);
  CHECK_FALSE(m.stopped());
}

TEST_CASE("top_p over a large flat-tailed vocabulary keeps exactly the nucleus") {
  // 1000 tokens: ten strong ones (90% of the mass together), a long weak tail.
  std::vector<double> probs(1000, 0.1 / 990);
  for (int i = 0; i < 10; ++i) probs[i * 97] = 0.09;
  const std::vector<float> logits = logits_of(probs);
  const auto counts = histogram(params(1.0f, 0.85f, 0.0f, 0, 17), logits, 20000);
  int strong = 0, weak = 0;
  for (int i = 0; i < 1000; ++i) (i % 97 == 0 && i / 97 < 10 ? strong : weak) += counts[i];
  CHECK(weak == 0);
  CHECK(strong == 20000);
  // 0.95 needs part of the tail: the tail now appears, in sorted (id) order of ties.
  const auto wider = histogram(params(1.0f, 0.95f, 0.0f, 0, 17), logits, 20000);
  int tail = 0;
  for (int i = 0; i < 1000; ++i) tail += (i % 97 == 0 && i / 97 < 10) ? 0 : wider[i];
  CHECK(tail > 0);
}
