#include "cuda/attention.h"

#include "cuda/cuda_check.h"
#include "cuda/device_math.cuh"

namespace ds4 {
namespace {

using namespace cuda_detail;

constexpr int kThreads = 256;

__device__ __forceinline__ const float* visible_row(const AttentionLaunch& p, int pos, int nraw,
                                                    bool use_selection, int r) {
  if (r < nraw) return p.raw + static_cast<int64_t>((pos - nraw + 1 + r) % p.ring) * p.head_dim;
  const int c = use_selection ? p.selected[r - nraw] : r - nraw;
  return p.comp + static_cast<int64_t>(c) * p.head_dim;
}

__global__ void __launch_bounds__(kThreads) attention_decode_kernel(AttentionLaunch p) {
  extern __shared__ float shared[];
  float* q = shared;
  float* probs = shared + p.head_dim;
  __shared__ float scratch[32];
  const int h = blockIdx.x;
  const int pos = *p.pos;
  const int nraw = min(pos + 1, p.window);
  int ncomp = 0;
  bool use_selection = false;
  if (p.ratio == 4) {
    const int nc = (pos + 1) / 4;
    use_selection = *p.active != 0;
    ncomp = use_selection ? p.topk : nc;
  } else if (p.ratio > 0) {
    ncomp = (pos + 1) / p.ratio;
  }
  if (ncomp > p.max_comp_rows) ncomp = static_cast<int>(p.max_comp_rows);
  int n = nraw + ncomp;
  if (n > p.max_visible) n = p.max_visible;

  for (int i = threadIdx.x; i < p.head_dim; i += kThreads) q[i] = p.q[h * p.head_dim + i];
  __syncthreads();
  const float scale = static_cast<float>(1.0 / sqrt(static_cast<double>(p.head_dim)));
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int r = warp; r < n; r += kThreads / 32) {
    const float* row = visible_row(p, pos, nraw, use_selection, r);
    float d = 0.0f;
    for (int i = lane; i < p.head_dim; i += 32) d += q[i] * row[i];
    d = warp_sum(d);
    if (lane == 0) probs[r] = d * scale;
  }
  __syncthreads();
  const float sink = p.sinks[h];
  float mx = sink;
  for (int r = threadIdx.x; r < n; r += kThreads) mx = fmaxf(mx, probs[r]);
  mx = block_max(mx, scratch);
  float sum = 0.0f;
  for (int r = threadIdx.x; r < n; r += kThreads) sum += expf(probs[r] - mx);
  sum = block_sum(sum, scratch) + expf(sink - mx);
  __syncthreads();
  for (int r = threadIdx.x; r < n; r += kThreads) probs[r] = expf(probs[r] - mx) / sum;
  __syncthreads();
  float* o = q;  // q is no longer needed: reuse it for the output
  for (int i = threadIdx.x; i < p.head_dim; i += kThreads) {
    float acc = 0.0f;
    for (int r = 0; r < n; ++r) acc += probs[r] * visible_row(p, pos, nraw, use_selection, r)[i];
    o[i] = acc;
  }
  __syncthreads();
  float* tail = o + p.head_dim - p.rope_dim;
  for (int j = threadIdx.x; j < p.rope_dim / 2; j += kThreads) {
    rope_pair(&tail[2 * j], &tail[2 * j + 1], static_cast<float>(pos), p.rope_freqs[j], true);
  }
  __syncthreads();
  for (int i = threadIdx.x; i < p.head_dim; i += kThreads) p.out[h * p.head_dim + i] = o[i];
}

}  // namespace

Status attention_init() {
  static const Status status = cuda_status(
      cudaFuncSetAttribute(attention_decode_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                           96 * 1024),
      "raising the attention kernel's shared memory limit");
  return status;
}

Status launch_attention_decode(const AttentionLaunch& p, cudaStream_t stream) {
  const size_t shared = sizeof(float) * (p.head_dim + p.max_visible);
  if (shared > 96 * 1024) return Status::Error("attention: too many visible rows for shared memory");
  DS4_RETURN_IF_ERROR(attention_init());
  attention_decode_kernel<<<p.heads, kThreads, shared, stream>>>(p);
  return cuda_status(cudaGetLastError(), "attention launch");
}

}  // namespace ds4
