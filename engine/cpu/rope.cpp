#include "cpu/rope.h"

#include <algorithm>
#include <cmath>

namespace ds4::cpu {
namespace {

// YaRN correction dimension for `rotations` full turns over the original context.
double correction_dim(double rotations, int dim, double base, double original_ctx) {
  return dim * std::log(original_ctx / (rotations * 2.0 * M_PI)) / (2.0 * std::log(base));
}

}  // namespace

Rope::Rope(const ModelConfig& c, bool yarn) {
  const int dim = c.rope_dim;
  const float base = yarn ? c.compress_rope_theta : c.rope_theta;
  freq_.resize(dim / 2);
  for (int j = 0; j < dim / 2; ++j) {
    float exponent = static_cast<float>(2 * j) / static_cast<float>(dim);
    freq_[j] = 1.0f / std::pow(base, exponent);
  }
  if (!yarn || c.original_ctx <= 0) return;
  double low = std::floor(correction_dim(c.beta_fast, dim, base, static_cast<double>(c.original_ctx)));
  double high = std::ceil(correction_dim(c.beta_slow, dim, base, static_cast<double>(c.original_ctx)));
  low = std::max(low, 0.0);
  high = std::min(high, static_cast<double>(dim - 1));
  if (low == high) high += 0.001;
  const float lo = static_cast<float>(low), span = static_cast<float>(high - low);
  for (int j = 0; j < dim / 2; ++j) {
    float ramp = std::clamp((static_cast<float>(j) - lo) / span, 0.0f, 1.0f);
    float smooth = 1.0f - ramp;  // 1 keeps the original frequency, 0 divides by the factor
    freq_[j] = freq_[j] / c.rope_factor * (1.0f - smooth) + freq_[j] * smooth;
  }
}

void Rope::rotate(float* tail, int64_t pos, bool inverse) const {
  const float p = static_cast<float>(pos);
  for (size_t j = 0; j < freq_.size(); ++j) {
    const float angle = p * freq_[j];
    const float c = static_cast<float>(std::cos(static_cast<double>(angle)));
    float s = static_cast<float>(std::sin(static_cast<double>(angle)));
    if (inverse) s = -s;
    const float a = tail[2 * j], b = tail[2 * j + 1];
    tail[2 * j] = a * c - b * s;
    tail[2 * j + 1] = a * s + b * c;
  }
}

}  // namespace ds4::cpu
