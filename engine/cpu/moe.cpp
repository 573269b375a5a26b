#include "cpu/moe.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "cpu/vector_ops.h"

namespace ds4::cpu {

void route_token(const ModelConfig& c, const LayerWeights& w, const float* logits, int32_t token,
                 int32_t* experts, float* weights) {
  const int ne = c.n_experts, k = c.n_experts_used;
  std::vector<float> score(ne);
  for (int e = 0; e < ne; ++e) score[e] = std::sqrt(softplus(logits[e]));
  if (w.hash) {
    const int32_t* ids = w.ffn_gate_tid2eid.i32() + static_cast<int64_t>(token) * k;
    for (int i = 0; i < k; ++i) experts[i] = ids[i];  // range-checked when the model is bound
  } else {
    std::vector<float> biased(score);
    if (w.exp_probs_b.present()) {
      const float* b = w.exp_probs_b.f32();
      for (int e = 0; e < ne; ++e) biased[e] += b[e];
    }
    std::vector<int32_t> order(ne);
    std::iota(order.begin(), order.end(), 0);
    std::partial_sort(order.begin(), order.begin() + k, order.end(), [&](int32_t a, int32_t b) {
      return biased[a] > biased[b] || (biased[a] == biased[b] && a < b);
    });
    std::copy(order.begin(), order.begin() + k, experts);
  }
  float sum = 0;
  for (int i = 0; i < k; ++i) {
    weights[i] = score[experts[i]];
    sum += weights[i];
  }
  for (int i = 0; i < k; ++i) {
    if (c.route_norm) weights[i] /= sum;
    weights[i] *= c.route_scale;
  }
}

void clamped_swiglu(const float* gate, const float* up, int64_t n, float limit, float* h) {
  for (int64_t i = 0; i < n; ++i) {
    float g = gate[i], u = up[i];
    if (limit > 0) {
      g = std::min(g, limit);
      u = std::clamp(u, -limit, limit);
    }
    h[i] = silu(g) * u;
  }
}

}  // namespace ds4::cpu
