// Small f32 vector primitives of the forward pass (spec/MODEL.md §0, §2.1.1): dot
// products, RMSNorm with and without a learned weight, sigmoid/silu/softplus.
//
// Thread-safety: pure functions over caller memory.
#pragma once

#include <cmath>
#include <cstdint>

namespace ds4::cpu {

// sum_i a[i] * b[i], in f32 with eight partial sums (vectorizes; order is fixed).
float dot(const float* a, const float* b, int64_t n);

// out = x / sqrt(mean(x^2) + eps) (* weight when weight != nullptr). In-place allowed.
void rms_norm(const float* x, const float* weight, int64_t n, float eps, float* out);

inline float sigmoid(float z) { return 1.0f / (1.0f + std::exp(-z)); }
inline float silu(float z) { return z / (1.0f + std::exp(-z)); }
// log(1 + exp(z)), returning z above the threshold 20 (torch's softplus).
inline float softplus(float z) { return z > 20.0f ? z : std::log1p(std::exp(z)); }

}  // namespace ds4::cpu
