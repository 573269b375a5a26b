#include "cuda/row_ops.h"

#include <string>

#include "cuda/cuda_check.h"
#include "cuda/row_post.cuh"

namespace ds4 {
namespace {

using namespace cuda_detail;

__global__ void row_post_kernel(RowPostLaunch p) {
  extern __shared__ float shared[];
  float* v = shared;
  float* scratch = shared + p.d;
  const int row = blockIdx.x;
  const float* in = p.in + row * p.in_stride;
  for (int i = threadIdx.x; i < p.d; i += blockDim.x) v[i] = in[i];
  __syncthreads();
  // Single-token path: every row at *pos. Batched rows: row r at *pos + r / rows_per_pos.
  const int32_t base_pos = p.pos ? *p.pos : 0;
  const int32_t row_pos = p.rows_per_pos > 0 ? base_pos + row / p.rows_per_pos : base_pos;
  const float pos = p.pos ? static_cast<float>(row_pos) : 0.0f;
  post_process_row(v, p.d, p.norm, p.norm_weight, p.eps, p.rope_dim, p.rope_freqs, pos, p.inverse,
                   static_cast<int>(p.qat), scratch);
  int64_t out_row = row;
  if (p.ring > 0) {
    out_row = p.rows_per_pos > 0
                  ? static_cast<int64_t>(row_pos % p.ring) * p.rows_per_pos + row % p.rows_per_pos
                  : (*p.pos % p.ring) + row;
  }
  float* out = p.out + out_row * p.out_stride;
  for (int i = threadIdx.x; i < p.d; i += blockDim.x) out[i] = v[i];
}

__global__ void rms_norm_kernel(const float* x, const float* w, int n, float eps, float* out) {
  __shared__ double scratch[32];
  double ss = 0.0;
  for (int i = threadIdx.x; i < n; i += blockDim.x) ss += static_cast<double>(x[i]) * x[i];
  ss = block_sum_double(ss, scratch);
  const float f = rms_scale(ss, n, eps);
  for (int i = threadIdx.x; i < n; i += blockDim.x) out[i] = x[i] * f * (w ? w[i] : 1.0f);
}

int threads_for(int d) {
  int t = 32;
  while (t < d && t < 1024) t *= 2;
  return t;
}

}  // namespace

Status launch_row_post(const RowPostLaunch& p, cudaStream_t stream) {
  if (p.d <= 0 || p.d > 4096) return Status::Error("row_post: row length out of range");
  if (p.rope_dim > p.d) return Status::Error("row_post: rope_dim exceeds the row length");
  if (p.rows_per_pos < 0) return Status::Error("row_post: rows_per_pos must not be negative");
  if (p.rows_per_pos > 0 && (p.rope_dim > 0 || p.ring > 0) && p.pos == nullptr) {
    return Status::Error("row_post: rows_per_pos needs a device position");
  }
  if (p.rows_per_pos > 0 && p.ring > 0 && (p.n_rows + p.rows_per_pos - 1) / p.rows_per_pos > p.ring) {
    return Status::Error("row_post: " + std::to_string((p.n_rows + p.rows_per_pos - 1) / p.rows_per_pos) +
                         " positions do not fit a ring of " + std::to_string(p.ring) +
                         " slots (rows would overwrite each other)");
  }
  const size_t shared = sizeof(float) * (p.d + 32 + p.d / 32 + 1);
  row_post_kernel<<<p.n_rows, threads_for(p.d), shared, stream>>>(p);
  return cuda_status(cudaGetLastError(), "row_post launch");
}

Status launch_rms_norm(const float* x, const float* weight, int n, float eps, float* out,
                       cudaStream_t stream) {
  rms_norm_kernel<<<1, 1024, 0, stream>>>(x, weight, n, eps, out);
  return cuda_status(cudaGetLastError(), "rms_norm launch");
}

}  // namespace ds4
