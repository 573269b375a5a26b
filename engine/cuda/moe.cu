#include "cuda/moe.h"

#include <cfloat>
#include <climits>
#include <string>

#include "cuda/cuda_check.h"
#include "cuda/launch.h"
#include "cuda/router_select.cuh"

namespace ds4 {
namespace {

constexpr int kMaxExperts = 1024;
constexpr int kMaxUsed = cuda_detail::kRouteMaxUsed;

__device__ float softplus_(float z) { return z > 20.0f ? z : log1pf(expf(z)); }

// Routes token t from its n_experts logits (global or shared memory) with the 32 lanes
// of one warp: scores, selection (lane 0 keeps the chosen set), weights.
__device__ void route_token_warp(const RouterLaunch& p, int64_t t, const float* logits, int lane) {
  __shared__ float score[kMaxExperts];
  __shared__ float key[kMaxExperts];
  __shared__ int chosen[kMaxUsed];
  for (int e = lane; e < p.n_experts; e += 32) {
    const float s = sqrtf(softplus_(logits[e]));
    score[e] = s;
    float k = s + (p.bias ? p.bias[e] : 0.0f);
    key[e] = isnan(k) ? -INFINITY : k;
  }
  __syncwarp();
  if (p.tid2eid) {
    if (lane < p.n_used) {
      int e = p.tid2eid[static_cast<int64_t>(p.token[t]) * p.n_used + lane];
      chosen[lane] = (e >= 0 && e < p.n_experts) ? e : 0;
    }
  } else {
    for (int k = 0; k < p.n_used; ++k) {
      float best = -INFINITY;
      int best_e = INT_MAX;
      for (int e = lane; e < p.n_experts; e += 32) {
        const float v = key[e];
        if (v > best || (v == best && e < best_e)) {
          best = v;
          best_e = e;
        }
      }
      for (int off = 16; off > 0; off >>= 1) {
        const float ov = __shfl_xor_sync(0xffffffffu, best, off);
        const int oe = __shfl_xor_sync(0xffffffffu, best_e, off);
        if (ov > best || (ov == best && oe < best_e)) {
          best = ov;
          best_e = oe;
        }
      }
      if (lane == 0) {
        chosen[k] = best_e;
        key[best_e] = NAN;  // never chosen again (NaN compares false)
      }
      __syncwarp();
    }
  }
  __syncwarp();
  if (lane == 0) {
    float sum = 0.0f;
    for (int k = 0; k < p.n_used; ++k) sum += score[chosen[k]];
    sum = fmaxf(sum, 6.103515625e-5f);
    for (int k = 0; k < p.n_used; ++k) {
      const float s = score[chosen[k]];
      p.ids[t * p.n_used + k] = chosen[k];
      p.weights[t * p.n_used + k] = p.route_norm ? p.route_scale * (s / sum) : p.route_scale * s;
    }
  }
}

// One warp per token (block t routes token t: logits, ids, weights and the token id
// advance per token).
__global__ void router_kernel(RouterLaunch p) {
  pdl_wait();  // PDL: everything below reads earlier kernels' results or writes
  pdl_launch_dependents();
  const int64_t t = blockIdx.x;
  route_token_warp(p, t, p.logits + t * p.n_experts, threadIdx.x);
}

// Block t routes token t, thread e owning expert e (blockDim: n_experts rounded up to a
// warp), with cuda/router_select.cuh's selection (the result of the one-warp argmax loop
// of route_token_warp, in the same order, with the same weight expressions).
__global__ void router_rank_kernel(RouterLaunch p) {
  __shared__ cuda_detail::RouteScratch<kMaxExperts> scratch;
  const int e = threadIdx.x;
  const int64_t t = blockIdx.x;
  // The selection bias is a weight (immutable): read before waiting for the logits.
  const float bias = e < p.n_experts && p.bias ? p.bias[e] : 0.0f;
  pdl_wait();  // PDL: everything below reads earlier kernels' results or writes
  pdl_launch_dependents();
  cuda_detail::route_select_block(p, t, bias, scratch, p.ids + t * p.n_used, p.weights + t * p.n_used);
}

}  // namespace

Status launch_router(const RouterLaunch& p, cudaStream_t stream) { return launch_router(p, 1, stream); }

Status launch_router(const RouterLaunch& p, int n_tokens, cudaStream_t stream) {
  if (p.n_experts <= 0 || p.n_experts > kMaxExperts || p.n_used <= 0 || p.n_used > kMaxUsed ||
      p.n_used > p.n_experts) {
    return Status::Error("router: expert counts out of range (n_experts " + std::to_string(p.n_experts) +
                         ", n_used " + std::to_string(p.n_used) + ")");
  }
  if (n_tokens < 0) return Status::Error("router: negative token count");
  if (p.tid2eid && !p.token) return Status::Error("router: hash routing needs the token ids");
  if (n_tokens == 0) return Status::Ok();
  if (p.single_warp) {
    launch_kernel(router_kernel, n_tokens, 32, 0, stream, p);
  } else {
    launch_kernel(router_rank_kernel, n_tokens, (p.n_experts + 31) / 32 * 32, 0, stream, p);
  }
  return cuda_status(cudaGetLastError(), "router launch");
}

}  // namespace ds4
