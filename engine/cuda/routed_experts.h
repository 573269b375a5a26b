// The routed experts of one token (spec/MODEL.md §2.6) as the decode and the short
// prefill chunks run them: gate+up with the SwiGLU clamp for the n_used selected
// experts, then their down projections summed into y. Each half goes through the
// one-token expert kernels (cuda/expert_matvec.h) where they apply and `fast` is set,
// else through the generic matrix-vector kernel (cuda/matvec.h).
//
// Thread-safety: launches on the caller's stream; no host state.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "common/status.h"
#include "cuda/device_model.h"
#include "cuda/moe.h"

namespace ds4 {

struct RoutedExpertsLaunch {
  const DeviceLayer* layer = nullptr;
  int n_used = 0;
  float swiglu_limit = 0;          // INFINITY: no clamp
  const float* x = nullptr;        // the token's normalised input (dim floats)
  const int32_t* ids = nullptr;    // device memory: n_used expert ids (the router's output)
  const float* weights = nullptr;  // device memory: n_used routing weights
  float* h = nullptr;              // n_used x expert_ffn: the gate+up output, the down input
  float* y = nullptr;              // dim floats: the down projections are added here
  bool fast = true;                // the one-token expert kernels where they apply
  // Set: gate+up routes the token first (as launch_router(*route)), writing route->ids and
  // route->weights, which must be `ids` and `weights`; with the one-token kernels the
  // staged gate+up does it inside its own launch (cuda/expert_matvec.h).
  const RouterLaunch* route = nullptr;
  bool accumulate = true;          // down: y += the sum (false: y = the sum)
};

// h[s] = silu(min(G_s x, limit)) * clamp(U_s x, -limit, limit) * weights[s] (after routing,
// when `route` is set). Errors: route's ids or weights not the launch's.
Status launch_routed_gate_up(const RoutedExpertsLaunch& launch, cudaStream_t stream);
// y += sum over s of D_s h[s] (y = ... without `accumulate`).
Status launch_routed_down(const RoutedExpertsLaunch& launch, cudaStream_t stream);

}  // namespace ds4
