// MoE routing on the GPU (spec/MODEL.md §2.6): scores sqrt(softplus(logit)), expert
// choice by token id (hash layers, tid2eid) or by the top-k of score + bias (ties to
// the lower expert index; NaN keys count as -infinity), weights = route_scale * score /
// sum(selected scores), the sum over the chosen experts in selection order.
// The expert products themselves run through launch_matvec (paired gate/up with the
// SwiGLU clamp, then the down projection summed over the selected experts).
//
// Thread-safety: launches on the caller's stream; no host state.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "common/status.h"
#include "cuda/device_matrix.h"

namespace ds4 {

struct RouterLaunch {
  const float* logits = nullptr;   // n_experts: ffn_gate_inp . f
  int n_experts = 0;
  int n_used = 0;
  const float* bias = nullptr;     // optional selection bias
  const int32_t* tid2eid = nullptr;  // hash layers: [vocab][n_used]
  const int32_t* token = nullptr;  // device: the input token id
  float route_scale = 1.0f;
  bool route_norm = true;
  int32_t* ids = nullptr;          // out: n_used expert ids
  float* weights = nullptr;        // out: n_used weights
  // Tests and benchmarks: the earlier selection by one warp (n_used rounds of a warp
  // argmax) instead of the block-wide one (a thread per expert, ranks counted within each
  // warp, then among the warps' candidates). Both give the same ids in the same order and
  // the same weights, bit for bit.
  bool single_warp = false;
};

Status launch_router(const RouterLaunch& launch, cudaStream_t stream);
// The same for n_tokens tokens at once (one block each): logits are n_tokens rows of
// n_experts, token n_tokens ids, ids / weights n_tokens rows of n_used.
Status launch_router(const RouterLaunch& launch, int n_tokens, cudaStream_t stream);

}  // namespace ds4
