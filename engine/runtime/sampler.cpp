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
  const double inv_t = 1.0 / params_.temperature;
  std::vector<double> weight(logits.size(), 0.0);
  double total = 0.0;
  for (size_t i = 0; i < logits.size(); ++i) {
    if (!std::isfinite(logits[i])) continue;
    const double w = std::exp((static_cast<double>(logits[i]) - max_logit) * inv_t);
    if (w < params_.min_p) continue;
    weight[i] = w;
    total += w;
  }
  double r = rng_.next_uniform() * total;
  for (size_t i = 0; i < logits.size(); ++i) {
    if (weight[i] == 0.0) continue;
    r -= weight[i];
    if (r <= 0.0) return static_cast<int32_t>(i);
  }
  return argmax_finite(logits);
}

// top_k and/or top_p: candidates sorted by logit (ties: lower id), min_p relative to
// the first, cut once the kept mass reaches top_p, then a walk in sorted order.
int32_t Sampler::sample_sorted(std::span<const float> logits, float max_logit) {
  const double inv_t = 1.0 / params_.temperature;
  auto weight_of = [&](int32_t i) {
    return std::exp((static_cast<double>(logits[i]) - max_logit) * inv_t);
  };
  auto before = [&](int32_t a, int32_t b) {
    return logits[a] != logits[b] ? logits[a] > logits[b] : a < b;
  };
  std::vector<int32_t> order;
  order.reserve(logits.size());
  for (size_t i = 0; i < logits.size(); ++i) {
    if (std::isfinite(logits[i])) order.push_back(static_cast<int32_t>(i));
  }
  double total = 0.0;
  if (params_.top_k > 0 && static_cast<size_t>(params_.top_k) < order.size()) {
    std::partial_sort(order.begin(), order.begin() + params_.top_k, order.end(), before);
    order.resize(params_.top_k);
    for (int32_t i : order) total += weight_of(i);
  } else {
    for (int32_t i : order) total += weight_of(i);
    // Only tokens above the min_p threshold can be kept: sort just those.
    const double floor = params_.min_p;  // relative to the top weight, which is 1
    auto end = std::partition(order.begin(), order.end(),
                              [&](int32_t i) { return weight_of(i) >= floor; });
    order.erase(end, order.end());
    std::sort(order.begin(), order.end(), before);
  }
  const double first = weight_of(order.front());
  std::vector<double> kept;
  double mass = 0.0;
  for (int32_t i : order) {
    const double w = weight_of(i);
    if (!kept.empty() && w / total < (first / total) * params_.min_p) break;
    kept.push_back(w);
    mass += w;
    if (mass >= params_.top_p * total) break;
  }
  double r = rng_.next_uniform() * mass;
  for (size_t k = 0; k < kept.size(); ++k) {
    r -= kept[k];
    if (r <= 0.0) return order[k];
  }
  return order.front();
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
