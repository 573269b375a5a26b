#include "cuda/sampling.h"

#include <climits>

#include "cuda/cuda_check.h"
#include "cuda/launch.h"

namespace ds4 {
namespace {

__device__ __forceinline__ bool better(float v, int i, float bv, int bi) {
  if (isnan(v)) return false;
  return v > bv || (v == bv && i < bi);
}

__global__ void argmax_kernel(const float* logits, int n, int32_t* out) {
  pdl_wait();  // PDL: everything below reads earlier kernels' results or writes
  pdl_launch_dependents();
  __shared__ float sv[32];
  __shared__ int si[32];
  float best = -INFINITY;
  int best_i = INT_MAX;
  for (int i = threadIdx.x; i < n; i += blockDim.x) {
    if (better(logits[i], i, best, best_i)) {
      best = logits[i];
      best_i = i;
    }
  }
  for (int off = 16; off > 0; off >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, best, off);
    const int oi = __shfl_xor_sync(0xffffffffu, best_i, off);
    if (better(ov, oi, best, best_i)) {
      best = ov;
      best_i = oi;
    }
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) {
    sv[warp] = best;
    si[warp] = best_i;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < static_cast<int>(blockDim.x >> 5); ++w) {
      if (better(sv[w], si[w], best, best_i)) {
        best = sv[w];
        best_i = si[w];
      }
    }
    *out = best_i == INT_MAX ? 0 : best_i;
  }
}

}  // namespace

Status launch_argmax(const float* logits, int n, int32_t* out_index, cudaStream_t stream) {
  if (n <= 0) return Status::Error("argmax: empty logits");
  launch_kernel(argmax_kernel, 1, 1024, 0, stream, logits, n, out_index);
  return cuda_status(cudaGetLastError(), "argmax launch");
}

}  // namespace ds4
