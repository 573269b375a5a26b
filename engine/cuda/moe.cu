#include "cuda/moe.h"

#include <cfloat>
#include <climits>

#include "cuda/cuda_check.h"

namespace ds4 {
namespace {

constexpr int kMaxExperts = 1024;
constexpr int kMaxUsed = 16;

__device__ float softplus_(float z) { return z > 20.0f ? z : log1pf(expf(z)); }

// One warp: scores, selection (lane 0 keeps the chosen set), weights.
__global__ void router_kernel(RouterLaunch p) {
  __shared__ float score[kMaxExperts];
  __shared__ float key[kMaxExperts];
  __shared__ int chosen[kMaxUsed];
  const int lane = threadIdx.x;
  for (int e = lane; e < p.n_experts; e += 32) {
    const float s = sqrtf(softplus_(p.logits[e]));
    score[e] = s;
    float k = s + (p.bias ? p.bias[e] : 0.0f);
    key[e] = isnan(k) ? -INFINITY : k;
  }
  __syncwarp();
  if (p.tid2eid) {
    if (lane < p.n_used) {
      int e = p.tid2eid[static_cast<int64_t>(*p.token) * p.n_used + lane];
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
      p.ids[k] = chosen[k];
      p.weights[k] = p.route_norm ? p.route_scale * (s / sum) : p.route_scale * s;
    }
  }
}

}  // namespace

Status launch_router(const RouterLaunch& p, cudaStream_t stream) {
  if (p.n_experts <= 0 || p.n_experts > kMaxExperts || p.n_used <= 0 || p.n_used > kMaxUsed ||
      p.n_used > p.n_experts) {
    return Status::Error("router: expert counts out of range");
  }
  router_kernel<<<1, 32, 0, stream>>>(p);
  return cuda_status(cudaGetLastError(), "router launch");
}

}  // namespace ds4
