#include "cuda/row_ops.h"

#include <cstdint>
#include <string>

#include "cuda/cuda_check.h"
#include "cuda/launch.h"
#include "cuda/row_post.cuh"

namespace ds4 {
namespace {

using namespace cuda_detail;

__global__ void row_post_kernel(RowPostLaunch p) {
  pdl_wait();  // PDL: everything below reads earlier kernels' results or writes
  pdl_launch_dependents();
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

// The same for rows without a QAT round trip, one warp per row (kRowsPerBlock rows per
// block): lane l holds the float4s l, l + 32, ... of the row in registers. Same
// element-wise arithmetic as post_process_row (the RMS sum in double, then the same
// float expressions), so only the order of the exact double sum differs.
constexpr int kRowsPerBlock = 4;
constexpr int kMaxVecPerLane = 8;  // rows of up to 8 * 32 * 4 = 1024 values

__device__ int64_t row_post_out_row(const RowPostLaunch& p, int row, int32_t row_pos) {
  if (p.ring <= 0) return row;
  return p.rows_per_pos > 0 ? static_cast<int64_t>(row_pos % p.ring) * p.rows_per_pos + row % p.rows_per_pos
                            : (*p.pos % p.ring) + row;
}

__global__ void row_post_warp_kernel(RowPostLaunch p) {
  pdl_wait();  // PDL: everything below reads earlier kernels' results or writes
  pdl_launch_dependents();
  const int lane = threadIdx.x & 31;
  const int row = blockIdx.x * kRowsPerBlock + (threadIdx.x >> 5);
  if (row >= p.n_rows) return;
  const int nvec = p.d / 4;
  const float4* in = reinterpret_cast<const float4*>(p.in + static_cast<int64_t>(row) * p.in_stride);
  float4 v[kMaxVecPerLane];
#pragma unroll
  for (int j = 0; j < kMaxVecPerLane; ++j) {
    const int i = lane + 32 * j;
    if (i < nvec) v[j] = in[i];
  }
  if (p.norm) {
    double ss = 0.0;
#pragma unroll
    for (int j = 0; j < kMaxVecPerLane; ++j) {
      if (lane + 32 * j < nvec) {
        ss += static_cast<double>(v[j].x) * v[j].x + static_cast<double>(v[j].y) * v[j].y +
              static_cast<double>(v[j].z) * v[j].z + static_cast<double>(v[j].w) * v[j].w;
      }
    }
    ss = warp_sum_double(ss);
    const float f = rms_scale(ss, p.d, p.eps);
    const float4* w4 = reinterpret_cast<const float4*>(p.norm_weight);
#pragma unroll
    for (int j = 0; j < kMaxVecPerLane; ++j) {
      const int i = lane + 32 * j;
      if (i < nvec) {
        const float4 w = w4 ? w4[i] : make_float4(1.0f, 1.0f, 1.0f, 1.0f);
        v[j].x = v[j].x * f * w.x;
        v[j].y = v[j].y * f * w.y;
        v[j].z = v[j].z * f * w.z;
        v[j].w = v[j].w * f * w.w;
      }
    }
  }
  const int32_t base_pos = p.pos ? *p.pos : 0;
  const int32_t row_pos = p.rows_per_pos > 0 ? base_pos + row / p.rows_per_pos : base_pos;
  if (p.rope_dim > 0) {
    const float pos = p.pos ? static_cast<float>(row_pos) : 0.0f;
    const int tail = p.d - p.rope_dim;  // even: the pairs lie inside one float4
#pragma unroll
    for (int j = 0; j < kMaxVecPerLane; ++j) {
      const int i = lane + 32 * j;
      if (i < nvec && 4 * i + 3 >= tail) {
        const int e = 4 * i;
        if (e >= tail) rope_pair(&v[j].x, &v[j].y, pos, p.rope_freqs[(e - tail) / 2], p.inverse);
        rope_pair(&v[j].z, &v[j].w, pos, p.rope_freqs[(e + 2 - tail) / 2], p.inverse);
      }
    }
  }
  float4* out = reinterpret_cast<float4*>(p.out + row_post_out_row(p, row, row_pos) * p.out_stride);
#pragma unroll
  for (int j = 0; j < kMaxVecPerLane; ++j) {
    const int i = lane + 32 * j;
    if (i < nvec) out[i] = v[j];
  }
}

// True when the launch can take row_post_warp_kernel: no QAT, whole float4s everywhere.
bool warp_rows_apply(const RowPostLaunch& p) {
  auto aligned = [](const void* ptr) { return (reinterpret_cast<uintptr_t>(ptr) & 15u) == 0; };
  return p.qat == RowQat::kNone && p.d % 4 == 0 && p.d <= 32 * 4 * kMaxVecPerLane && p.rope_dim % 2 == 0 &&
         (p.d - p.rope_dim) % 2 == 0 && p.in_stride % 4 == 0 && p.out_stride % 4 == 0 && aligned(p.in) &&
         aligned(p.out) && (p.norm_weight == nullptr || aligned(p.norm_weight));
}

__global__ void rms_norm_kernel(const float* x, const float* w, int n, float eps, float* out) {
  pdl_wait();  // PDL: everything below reads earlier kernels' results or writes
  pdl_launch_dependents();
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
  if (p.n_rows <= 0) return Status::Ok();
  if (warp_rows_apply(p)) {
    const int blocks = (p.n_rows + kRowsPerBlock - 1) / kRowsPerBlock;
    launch_kernel(row_post_warp_kernel, blocks, 32 * kRowsPerBlock, 0, stream, p);
    return cuda_status(cudaGetLastError(), "row_post launch");
  }
  const size_t shared = sizeof(float) * (p.d + 32 + p.d / 32 + 1);
  launch_kernel(row_post_kernel, p.n_rows, threads_for(p.d), shared, stream, p);
  return cuda_status(cudaGetLastError(), "row_post launch");
}

Status launch_rms_norm(const float* x, const float* weight, int n, float eps, float* out,
                       cudaStream_t stream) {
  launch_kernel(rms_norm_kernel, 1, 1024, 0, stream, x, weight, n, eps, out);
  return cuda_status(cudaGetLastError(), "rms_norm launch");
}

}  // namespace ds4
