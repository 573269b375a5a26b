#include "runtime/sampler.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <numeric>
#include <vector>

namespace ds4 {
namespace {

SamplerParams normalized(SamplerParams p) {
  if (!(p.top_p > 0.0f) || p.top_p > 1.0f) p.top_p = 1.0f;
  if (!(p.min_p > 0.0f)) p.min_p = 0.0f;
  if (p.min_p > 1.0f) p.min_p = 1.0f;
  if (p.top_k < 0) p.top_k = 0;
  p.top_k = std::min(p.top_k, SamplerParams::kMaxTopK);
  return p;
}

// Index of the largest finite logit (ties: lowest id), or -1 when none is finite.
int32_t argmax_finite(std::span<const float> logits) {
  int32_t best = -1;
  for (size_t i = 0; i < logits.size(); ++i) {
    if (!std::isfinite(logits[i])) continue;
    if (best < 0 || logits[i] > logits[best]) best = static_cast<int32_t>(i);
  }
  return best;
}

}  // namespace

uint64_t SamplerRng::next_u64() {
  if (state_ == 0) state_ = 0x9E3779B97F4A7C15ull;
  uint64_t x = state_;
  x ^= x >> 12;
  x ^= x << 25;
  x ^= x >> 27;
  state_ = x;
  return x * 0x2545F4914F6CDD1Dull;
}

double SamplerRng::next_uniform() {
  return static_cast<double>((next_u64() >> 40) & 0xFFFFFF) / 16777216.0;
}

Sampler::Sampler(SamplerParams params) : params_(normalized(params)), rng_(params.seed) {}

int32_t Sampler::greedy(std::span<const float> logits) {
  const int32_t best = argmax_finite(logits);
  return best < 0 ? 0 : best;
}

int32_t Sampler::sample(std::span<const float> logits) {
  const int32_t best = argmax_finite(logits);
  if (best < 0) return 0;
  if (!(params_.temperature > 0.0f)) return best;
  if (params_.top_k == 0 && params_.top_p >= 1.0f) return sample_min_p(logits, logits[best]);
  return sample_sorted(logits, logits[best]);
}

// Default path: weights relative to the top token, min_p cut, walk in id order.
int32_t Sampler::sample_min_p(std::span<const float> logits, float max_logit) {
  const float inv_t = 1.0f / params_.temperature;
  std::vector<float>& weight = weights_;
  weight.assign(logits.size(), 0.0f);
  double total = 0.0;
  for (size_t i = 0; i < logits.size(); ++i) {
    if (!std::isfinite(logits[i])) continue;
    const float w = std::exp((logits[i] - max_logit) * inv_t);
    if (w < params_.min_p) continue;
    weight[i] = w;
    total += w;
  }
  double r = rng_.next_uniform() * total;
  for (size_t i = 0; i < logits.size(); ++i) {
    if (weight[i] == 0.0f) continue;
    r -= weight[i];
    if (r <= 0.0) return static_cast<int32_t>(i);
  }
  return argmax_finite(logits);
}

// top_k and/or top_p: candidates sorted by logit (ties: lower id), min_p relative to
// the first, cut once the kept mass reaches top_p, then a walk in sorted order.
// Only as many candidates as the cut needs are sorted (a growing partial sort).
int32_t Sampler::sample_sorted(std::span<const float> logits, float max_logit) {
  const float inv_t = 1.0f / params_.temperature;
  auto before = [](const Candidate& a, const Candidate& b) {
    return a.logit != b.logit ? a.logit > b.logit : a.id < b.id;
  };
  std::vector<Candidate>& cands = candidates_;
  cands.clear();
  double total = 0.0;
  for (size_t i = 0; i < logits.size(); ++i) {
    if (!std::isfinite(logits[i])) continue;
    const float w = std::exp((logits[i] - max_logit) * inv_t);
    total += w;
    // Below the min_p floor (the top weight is 1) a token can never be kept;
    // with top_k every token competes for the k places first.
    if (params_.top_k > 0 || w >= params_.min_p) {
      cands.push_back({logits[i], static_cast<int32_t>(i), w});
    }
  }
  if (params_.top_k > 0 && static_cast<size_t>(params_.top_k) < cands.size()) {
    std::partial_sort(cands.begin(), cands.begin() + params_.top_k, cands.end(), before);
    cands.resize(params_.top_k);
    total = 0.0;
    for (const Candidate& c : cands) total += c.weight;
  }
  const size_t limit = cands.size();
  for (size_t sorted = std::min<size_t>(64, limit);; sorted = std::min(sorted * 4, limit)) {
    std::partial_sort(cands.begin(), cands.begin() + sorted, cands.end(), before);
    const double first = cands.front().weight;
    size_t kept = 0;
    double mass = 0.0;
    bool decided = false;
    for (; kept < sorted; ++kept) {
      const double w = cands[kept].weight;
      if (kept > 0 && w / total < (first / total) * params_.min_p) {
        decided = true;
        break;
      }
      mass += w;
      if (mass >= params_.top_p * total) {
        ++kept;
        decided = true;
        break;
      }
    }
    if (!decided && sorted < limit) continue;
    double r = rng_.next_uniform() * mass;
    for (size_t k = 0; k < kept; ++k) {
      r -= cands[k].weight;
      if (r <= 0.0) return cands[k].id;
    }
    return cands.front().id;
  }
}

uint64_t sampler_time_seed() {
  uint64_t z = static_cast<uint64_t>(
      std::chrono::high_resolution_clock::now().time_since_epoch().count());
  // splitmix64 finalizer: spreads close clock values apart.
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  return z == 0 ? 1 : z;
}

}  // namespace ds4
