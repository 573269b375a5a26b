// Sampler: picks the next token from a row of logits (spec/TOKENIZER_AND_CHAT.md §7):
// greedy when temperature <= 0, otherwise temperature + min_p (default path), or
// top_p / top_k with min_p, drawing from ds4's deterministic xorshift64* generator.
// The same seed and the same logits always give the same token.
//
// Thread-safety: a Sampler holds its RNG state; use one per sequence and thread.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

namespace ds4 {

struct SamplerParams {
  float temperature = 1.0f;  // <= 0: greedy argmax
  float top_p = 1.0f;        // <= 0 or > 1 means 1 (disabled)
  float min_p = 0.05f;       // relative to the top token's probability; clamped to [0, 1]
  int32_t top_k = 0;         // 0 = disabled; capped at kMaxTopK
  uint64_t seed = 0;         // RNG seed (0 selects the generator's fixed default state)

  static constexpr int32_t kMaxTopK = 1024;
};

// ds4's xorshift64* generator (§7.2).
class SamplerRng {
 public:
  explicit SamplerRng(uint64_t seed) : state_(seed) {}
  uint64_t next_u64();
  // Uniform in [0, 1) with 24 bits of resolution.
  double next_uniform();

 private:
  uint64_t state_;
};

class Sampler {
 public:
  explicit Sampler(SamplerParams params = {});

  // The sampled token id for `logits` (one per vocabulary entry). Non-finite logits
  // are never chosen unless every logit is non-finite (then 0).
  int32_t sample(std::span<const float> logits);
  // Argmax, ties to the lowest id; non-finite logits are skipped.
  static int32_t greedy(std::span<const float> logits);

  const SamplerParams& params() const { return params_; }

 private:
  int32_t sample_min_p(std::span<const float> logits, float max_logit);
  int32_t sample_sorted(std::span<const float> logits, float max_logit);

  SamplerParams params_;
  SamplerRng rng_;
  struct Candidate {
    float logit;
    int32_t id;
    float weight;  // exp((logit - max) / T)
  };
  std::vector<float> weights_;          // scratch of the default path
  std::vector<Candidate> candidates_;   // scratch of the sorted path
};

// A seed derived from the clock, for requests that give none.
uint64_t sampler_time_seed();

}  // namespace ds4
