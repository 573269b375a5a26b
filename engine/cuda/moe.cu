#include "cuda/moe.h"

#include <cfloat>
#include <climits>
#include <string>

#include "cuda/cuda_check.h"
#include "cuda/launch.h"

namespace ds4 {
namespace {

constexpr int kMaxExperts = 1024;
constexpr int kMaxUsed = 16;

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
  launch_kernel(router_kernel, n_tokens, 32, 0, stream, p);
  return cuda_status(cudaGetLastError(), "router launch");
}

}  // namespace ds4
