// Mixture-of-experts routing (spec/MODEL.md §2.6): router logits -> sqrt(softplus)
// scores; hash layers take their experts from tid2eid[token], the others the top-k
// of score + selection bias (ties to the lower expert index); weights are the
// UNBIASED scores of the chosen experts, renormalised (expert_weights_norm) and
// multiplied by the route scale. Also the clamped SwiGLU of every expert.
//
// Thread-safety: pure functions over caller memory.
#pragma once

#include <cstdint>

#include "model/model.h"

namespace ds4::cpu {

// logits: n_experts router outputs of one token. Writes n_experts_used experts and
// weights (hash layers: tid2eid order; others: descending biased score).
void route_token(const ModelConfig& c, const LayerWeights& w, const float* logits, int32_t token,
                 int32_t* experts, float* weights);

// h[i] = silu(min(g, limit)) * clamp(u, -limit, limit) (no clamp when limit <= 0).
void clamped_swiglu(const float* gate, const float* up, int64_t n, float limit, float* h);

}  // namespace ds4::cpu
