#include "cpu/qat.h"

#include <algorithm>
#include <cmath>

namespace ds4::cpu {
namespace {

// 2^ceil(log2(v)) computed as the official code does: log2 and ceil in f32.
float pow2_ceil(float v) {
  return std::exp2(std::ceil(std::log2(v)));
}

}  // namespace

float round_to_e4m3(float v) {
  const float a = std::fabs(v);
  if (a == 0.0f || std::isnan(a)) return v;
  if (a >= 448.0f) return std::copysign(448.0f, v);
  int e = 0;
  std::frexp(a, &e);              // a = m * 2^e, m in [0.5, 1): floor(log2 a) = e - 1
  int exp2 = std::max(e - 1, -6); // subnormals share the quantum of the smallest binade
  const float quantum = std::ldexp(1.0f, exp2 - 3);
  const float q = std::nearbyint(a / quantum) * quantum;  // ties to even code
  return std::copysign(std::min(q, 448.0f), v);
}

float round_to_e2m1(float v) {
  static const float kGrid[8] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f};
  const float a = std::min(std::fabs(v), 6.0f);
  int best = 0;
  for (int i = 1; i < 8; ++i) {
    const float d_best = std::fabs(a - kGrid[best]);
    const float d = std::fabs(a - kGrid[i]);
    if (d < d_best || (d == d_best && (i % 2) == 0 && (best % 2) != 0)) best = i;
  }
  return std::copysign(kGrid[best], v);
}

void fp8_roundtrip(float* x, int64_t n) {
  for (int64_t b = 0; b < n; b += kFp8Block) {
    float amax = 0;
    for (int i = 0; i < kFp8Block; ++i) amax = std::max(amax, std::fabs(x[b + i]));
    const float scale = pow2_ceil(std::max(amax, 1e-4f) / 448.0f);
    for (int i = 0; i < kFp8Block; ++i) {
      const float v = std::clamp(x[b + i] / scale, -448.0f, 448.0f);
      x[b + i] = round_to_e4m3(v) * scale;
    }
  }
}

void fp4_roundtrip(float* x, int64_t n) {
  const float tiny = 6.0f * std::ldexp(1.0f, -126);
  for (int64_t b = 0; b < n; b += kFp4Block) {
    float amax = 0;
    for (int i = 0; i < kFp4Block; ++i) amax = std::max(amax, std::fabs(x[b + i]));
    const float scale = pow2_ceil(std::max(amax, tiny) / 6.0f);
    for (int i = 0; i < kFp4Block; ++i) {
      const float v = std::clamp(x[b + i] / scale, -6.0f, 6.0f);
      x[b + i] = round_to_e2m1(v) * scale;
    }
  }
}

void hadamard(float* x, int64_t n) {
  for (int64_t h = 1; h < n; h *= 2) {
    for (int64_t i = 0; i < n; i += 2 * h) {
      for (int64_t j = i; j < i + h; ++j) {
        const float a = x[j], b = x[j + h];
        x[j] = a + b;
        x[j + h] = a - b;
      }
    }
  }
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(n)));
  for (int64_t i = 0; i < n; ++i) x[i] *= scale;
}

}  // namespace ds4::cpu
