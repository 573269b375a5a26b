// The block-wide expert selection of one token (spec/MODEL.md §2.6), as a device function
// for the router kernel (cuda/moe.cu) and for kernels that route for themselves (the
// staged routed-expert gate+up, cuda/expert_matvec.cu): the same arithmetic, so the same
// ids in the same order and the same weights, bit for bit.
//
// Thread e owns expert e. Selection in two rank counts: each expert's rank within its
// warp (the experts of rank < n_used are the warp's candidates: every expert of the top
// n_used is one), then each candidate's rank among all candidates, which is its rank
// among all experts. Keys are score + bias with NaN as -infinity; higher keys first, the
// lower index on equal keys; hash layers take tid2eid's row of the token instead.
// Weights: route_scale * score / sum(selected scores) (the sum in selection order, at
// least 2^-14), or route_scale * score without route_norm.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/moe.h"

namespace ds4 {
namespace cuda_detail {

constexpr int kRouteMaxUsed = 16;

template <int MAX_EXPERTS>
struct RouteScratch {
  float score[MAX_EXPERTS];
  float key[MAX_EXPERTS];
  float cand_key[MAX_EXPERTS / 32 * kRouteMaxUsed];
  int cand_expert[MAX_EXPERTS / 32 * kRouteMaxUsed];
  int chosen[kRouteMaxUsed];
};

__device__ __forceinline__ float route_softplus(float z) { return z > 20.0f ? z : log1pf(expf(z)); }

// True when expert (ka, a) comes before (kb, b) in the selection order.
__device__ __forceinline__ bool route_ranks_before(float ka, int a, float kb, int b) {
  return ka > kb || (ka == kb && a < b);
}

// Selects token t's experts. Every thread of the block calls it (it has barriers); the
// threads below 32 * ceil(n_experts / 32) take part, so the block needs at least that
// many (n_experts <= MAX_EXPERTS, n_used <= kRouteMaxUsed). `bias` is thread e's
// selection bias (0 without; read by the caller, before its dependency wait if it likes).
// Thread i < n_used writes ids[i] and weights[i]; the caller synchronises before others
// read them.
template <int MAX_EXPERTS>
__device__ __forceinline__ void route_select_block(const RouterLaunch& p, int64_t t, float bias,
                                                   RouteScratch<MAX_EXPERTS>& s, int32_t* ids, float* weights) {
  const int e = threadIdx.x, warp = e >> 5;
  const int nwarps = (p.n_experts + 31) >> 5;
  const bool member = warp < nwarps;
  const bool valid = e < p.n_experts;
  float k = -INFINITY;
  if (valid) {
    const float sc = sqrtf(route_softplus(p.logits[t * p.n_experts + e]));
    s.score[e] = sc;
    const float biased = sc + bias;
    k = isnan(biased) ? -INFINITY : biased;
  }
  if (member) s.key[e] = k;
  __syncthreads();
  if (p.tid2eid) {
    if (e < p.n_used) {
      const int c = p.tid2eid[static_cast<int64_t>(p.token[t]) * p.n_used + e];
      s.chosen[e] = (c >= 0 && c < p.n_experts) ? c : 0;
    }
  } else {
    if (member) {
      int rank = 0;
      const float* wk = s.key + warp * 32;
#pragma unroll 8
      for (int i = 0; i < 32; ++i) rank += route_ranks_before(wk[i], warp * 32 + i, k, e);
      if (valid && rank < p.n_used) {
        s.cand_key[warp * p.n_used + rank] = k;
        s.cand_expert[warp * p.n_used + rank] = e;
      }
    }
    __syncthreads();
    // Candidate c = warp w's rank-r expert; warp w has min(n_used, its experts) of them.
    const int c = e, w = c / p.n_used, r = c % p.n_used;
    if (w < nwarps && r < min(p.n_used, p.n_experts - 32 * w)) {
      const float ck = s.cand_key[c];
      const int ce = s.cand_expert[c];
      int global_rank = 0;
      for (int ow = 0; ow < nwarps; ++ow) {
        const int filled = min(p.n_used, p.n_experts - 32 * ow);
        for (int os = 0; os < filled; ++os) {
          const int oc = ow * p.n_used + os;
          global_rank += route_ranks_before(s.cand_key[oc], s.cand_expert[oc], ck, ce);
        }
      }
      if (global_rank < p.n_used) s.chosen[global_rank] = ce;
    }
  }
  __syncthreads();
  if (e < p.n_used) {
    float sum = 0.0f;
    for (int i = 0; i < p.n_used; ++i) sum += s.score[s.chosen[i]];
    sum = fmaxf(sum, 6.103515625e-5f);
    const float sc = s.score[s.chosen[e]];
    ids[e] = s.chosen[e];
    weights[e] = p.route_norm ? p.route_scale * (sc / sum) : p.route_scale * sc;
  }
}

}  // namespace cuda_detail
}  // namespace ds4
