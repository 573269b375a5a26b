// MoE routing on the GPU (spec/MODEL.md §2.6): scores sqrt(softplus(logit)), expert
// choice by token id (hash layers, tid2eid) or by the top-k of score + bias (ties to
// the lower expert index), weights = route_scale * score / sum(selected scores).
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
};

Status launch_router(const RouterLaunch& launch, cudaStream_t stream);
// The same for n_tokens tokens at once (one block each): logits are n_tokens rows of
// n_experts, token n_tokens ids, ids / weights n_tokens rows of n_used.
Status launch_router(const RouterLaunch& launch, int n_tokens, cudaStream_t stream);

// The router's logits (gate . x) and the selection of launch_router in one launch:
// the logits are formed as launch_matvec's column-tile kernel forms them with one
// chunk per lane (cuda/column_tile.cuh) and the tiles' reduction in tile order, so the
// ids and weights carry the same bits as launch_matvec then launch_router wherever that
// matvec chooses one chunk per lane (it does for the model's router, 256 x 4096, and
// for every matrix below 2^17 chunks of 32 weights). Every block writes
// its tiles' partial sums; the block that finishes last (a device counter, which it
// resets to 0) adds them in the fixed order and routes. Deterministic; graph-safe.
// Launches sharing one counter must not run at the same time.
struct RouterFusedLaunch {
  RouterLaunch route;                // everything but route.logits (ignored)
  const DeviceMatrix* gate = nullptr;  // n_experts x dim: F32, F16 or Q8_0 (its first matrix)
  const float* x = nullptr;          // dim (the normalised sublayer input)
  float* partial = nullptr;          // workspace for the column tiles' partial sums
  int64_t partial_floats = 0;
  unsigned int* counter = nullptr;   // device; 0 before the first launch, left 0 by every launch
  float* logits = nullptr;           // optional out: the n_experts logits
};

Status launch_router_fused(const RouterFusedLaunch& launch, cudaStream_t stream);

// Ok when launch_router_fused would take `launch` (host checks only, no launch), else
// the error it would return: lets a caller fall back to launch_matvec + launch_router.
Status router_fused_supported(const RouterFusedLaunch& launch);

}  // namespace ds4
