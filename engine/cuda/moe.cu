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

// True when expert (ka, a) comes before (kb, b) in the selection order: higher key
// first, the lower index on equal keys (keys are never NaN here).
__device__ __forceinline__ bool ranks_before(float ka, int a, float kb, int b) {
  return ka > kb || (ka == kb && a < b);
}

// Block t routes token t, thread e owning expert e (blockDim: n_experts rounded up to a
// warp). Selection in two rank counts: each expert's rank within its warp (the experts
// of rank < n_used are the warp's candidates: every expert of the top n_used is one),
// then each candidate's rank among all candidates, which is its rank among all experts.
// The order is total, so the ranks are distinct and the result is the one warp argmax
// loop's (route_token_warp), in the same order; the weights use the same expressions.
__global__ void router_rank_kernel(RouterLaunch p) {
  __shared__ float score[kMaxExperts];
  __shared__ float key[kMaxExperts];
  __shared__ float cand_key[kMaxExperts / 32 * kMaxUsed];
  __shared__ int cand_expert[kMaxExperts / 32 * kMaxUsed];
  __shared__ int chosen[kMaxUsed];
  const int e = threadIdx.x, warp = e >> 5;
  const int64_t t = blockIdx.x;
  const bool valid = e < p.n_experts;
  // The selection bias is a weight (immutable): read before waiting for the logits.
  const float bias = valid && p.bias ? p.bias[e] : 0.0f;
  pdl_wait();  // PDL: everything below reads earlier kernels' results or writes
  pdl_launch_dependents();
  float k = -INFINITY;
  if (valid) {
    const float s = sqrtf(softplus_(p.logits[t * p.n_experts + e]));
    score[e] = s;
    const float biased = s + bias;
    k = isnan(biased) ? -INFINITY : biased;
  }
  key[e] = k;
  __syncthreads();
  if (p.tid2eid) {
    if (e < p.n_used) {
      const int c = p.tid2eid[static_cast<int64_t>(p.token[t]) * p.n_used + e];
      chosen[e] = (c >= 0 && c < p.n_experts) ? c : 0;
    }
  } else {
    int rank = 0;
    const float* wk = key + warp * 32;
#pragma unroll 8
    for (int i = 0; i < 32; ++i) rank += ranks_before(wk[i], warp * 32 + i, k, e);
    if (valid && rank < p.n_used) {
      cand_key[warp * p.n_used + rank] = k;
      cand_expert[warp * p.n_used + rank] = e;
    }
    __syncthreads();
    // Candidate c = warp w's rank-s expert; warp w has min(n_used, its experts) of them.
    const int nwarps = blockDim.x >> 5;
    const int c = e, w = c / p.n_used, s = c % p.n_used;
    if (w < nwarps && s < min(p.n_used, p.n_experts - 32 * w)) {
      const float ck = cand_key[c];
      const int ce = cand_expert[c];
      int global_rank = 0;
      for (int ow = 0; ow < nwarps; ++ow) {
        const int filled = min(p.n_used, p.n_experts - 32 * ow);
        for (int os = 0; os < filled; ++os) {
          const int oc = ow * p.n_used + os;
          global_rank += ranks_before(cand_key[oc], cand_expert[oc], ck, ce);
        }
      }
      if (global_rank < p.n_used) chosen[global_rank] = ce;
    }
  }
  __syncthreads();
  if (e < p.n_used) {
    float sum = 0.0f;
    for (int i = 0; i < p.n_used; ++i) sum += score[chosen[i]];
    sum = fmaxf(sum, 6.103515625e-5f);
    const float s = score[chosen[e]];
    p.ids[t * p.n_used + e] = chosen[e];
    p.weights[t * p.n_used + e] = p.route_norm ? p.route_scale * (s / sum) : p.route_scale * s;
  }
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
