#include "cuda/hyper_connections.h"

#include <cuda_fp16.h>

#include "cuda/cuda_check.h"
#include "cuda/device_math.cuh"

namespace ds4 {
namespace {

using namespace cuda_detail;

constexpr int kMaxMult = 8;

__global__ void embed_kernel(const void* embd, int is_f16, const int32_t* token, HcShape s,
                             float* x) {
  const int64_t t = *token;
  for (int d = blockIdx.x * blockDim.x + threadIdx.x; d < s.dim; d += gridDim.x * blockDim.x) {
    float v = is_f16 ? __half2float(reinterpret_cast<const __half*>(embd)[t * s.dim + d])
                     : reinterpret_cast<const float*>(embd)[t * s.dim + d];
    for (int h = 0; h < s.mult; ++h) x[h * s.dim + d] = v;
  }
}

__device__ float sigmoidf_(float z) { return 1.0f / (1.0f + expf(-z)); }

// RMS factor 1/sqrt(mean(X^2) + eps) over all streams.
__device__ float hc_rms_factor(const float* x, const HcShape& s, float* scratch) {
  const int n = s.dim * s.mult;
  float ss = 0.0f;
  for (int i = threadIdx.x; i < n; i += blockDim.x) ss += x[i] * x[i];
  ss = block_sum(ss, scratch);
  return rsqrtf(ss / static_cast<float>(n) + s.norm_eps);
}

// out = rmsw(sum_h wts[h] X_h, norm_weight), with y staged in `ys` (dim floats).
__device__ void weighted_stream_norm(const float* x, const float* wts, const float* norm_weight,
                                     const HcShape& s, float* ys, float* scratch, float* out) {
  float ss = 0.0f;
  for (int d = threadIdx.x; d < s.dim; d += blockDim.x) {
    float y = 0.0f;
    for (int h = 0; h < s.mult; ++h) y += wts[h] * x[h * s.dim + d];
    ys[d] = y;
    ss += y * y;
  }
  ss = block_sum(ss, scratch);
  const float f = rsqrtf(ss / static_cast<float>(s.dim) + s.norm_eps);
  for (int d = threadIdx.x; d < s.dim; d += blockDim.x) {
    out[d] = ys[d] * f * (norm_weight ? norm_weight[d] : 1.0f);
  }
}

__global__ void hc_pre_kernel(const float* x, const float* mix_raw, const float* scale,
                              const float* base, const float* norm_weight, HcShape s, float* post,
                              float* comb, float* out) {
  extern __shared__ float ys[];
  __shared__ float scratch[32];
  __shared__ float pre[kMaxMult];
  const float factor = hc_rms_factor(x, s, scratch);
  const int m = s.mult;
  if (threadIdx.x == 0) {
    float c[kMaxMult][kMaxMult];
    for (int h = 0; h < m; ++h) {
      pre[h] = sigmoidf_(mix_raw[h] * factor * scale[0] + base[h]) + s.hc_eps;
      post[h] = 2.0f * sigmoidf_(mix_raw[m + h] * factor * scale[1] + base[m + h]);
    }
    for (int i = 0; i < m; ++i) {
      float mx = -INFINITY;
      for (int k = 0; k < m; ++k) {
        c[i][k] = mix_raw[2 * m + i * m + k] * factor * scale[2] + base[2 * m + i * m + k];
        mx = fmaxf(mx, c[i][k]);
      }
      float sum = 0.0f;
      for (int k = 0; k < m; ++k) {
        c[i][k] = expf(c[i][k] - mx);
        sum += c[i][k];
      }
      for (int k = 0; k < m; ++k) c[i][k] = c[i][k] / sum + s.hc_eps;
    }
    for (int iter = 0; iter < s.sinkhorn_iters; ++iter) {
      if (iter > 0) {
        for (int i = 0; i < m; ++i) {
          float sum = 0.0f;
          for (int k = 0; k < m; ++k) sum += c[i][k];
          for (int k = 0; k < m; ++k) c[i][k] /= (sum + s.hc_eps);
        }
      }
      for (int k = 0; k < m; ++k) {
        float sum = 0.0f;
        for (int i = 0; i < m; ++i) sum += c[i][k];
        for (int i = 0; i < m; ++i) c[i][k] /= (sum + s.hc_eps);
      }
    }
    for (int i = 0; i < m; ++i)
      for (int k = 0; k < m; ++k) comb[i * m + k] = c[i][k];
  }
  __syncthreads();
  weighted_stream_norm(x, pre, norm_weight, s, ys, scratch, out);
}

__global__ void hc_post_kernel(const float* x_in, const float* f, const float* post,
                               const float* comb, HcShape s, float* x_out) {
  const int n = s.dim * s.mult;
  for (int idx = blockIdx.x * blockDim.x + threadIdx.x; idx < n; idx += gridDim.x * blockDim.x) {
    const int k = idx / s.dim;
    const int d = idx - k * s.dim;
    float v = post[k] * f[d];
    for (int i = 0; i < s.mult; ++i) v += comb[i * s.mult + k] * x_in[i * s.dim + d];
    x_out[idx] = v;
  }
}

__global__ void hc_head_kernel(const float* x, const float* mix_raw, const float* scale,
                               const float* base, const float* norm_weight, HcShape s,
                               float* out) {
  extern __shared__ float ys[];
  __shared__ float scratch[32];
  __shared__ float w[kMaxMult];
  const float factor = hc_rms_factor(x, s, scratch);
  if (threadIdx.x < s.mult) {
    w[threadIdx.x] = sigmoidf_(mix_raw[threadIdx.x] * factor * scale[0] + base[threadIdx.x]) + s.hc_eps;
  }
  __syncthreads();
  weighted_stream_norm(x, w, norm_weight, s, ys, scratch, out);
}

Status check_shape(const HcShape& s) {
  if (s.mult <= 0 || s.mult > kMaxMult) return Status::Error("hyper-connections: stream count out of range");
  return Status::Ok();
}

}  // namespace

Status launch_hc_embed(const void* embd, GgmlType type, const int32_t* token, const HcShape& s,
                       float* x, cudaStream_t stream) {
  DS4_RETURN_IF_ERROR(check_shape(s));
  if (type != GgmlType::F16 && type != GgmlType::F32) {
    return Status::Error("hc_embed: token_embd must be F16 or F32");
  }
  embed_kernel<<<(s.dim + 255) / 256, 256, 0, stream>>>(embd, type == GgmlType::F16, token, s, x);
  return cuda_status(cudaGetLastError(), "hc_embed launch");
}

Status launch_hc_pre(const float* x, const float* mix_raw, const float* scale, const float* base,
                     const float* norm_weight, const HcShape& s, float* post, float* comb,
                     float* out, cudaStream_t stream) {
  DS4_RETURN_IF_ERROR(check_shape(s));
  hc_pre_kernel<<<1, 1024, s.dim * sizeof(float), stream>>>(x, mix_raw, scale, base, norm_weight,
                                                             s, post, comb, out);
  return cuda_status(cudaGetLastError(), "hc_pre launch");
}

Status launch_hc_post(const float* x_in, const float* f, const float* post, const float* comb,
                      const HcShape& s, float* x_out, cudaStream_t stream) {
  DS4_RETURN_IF_ERROR(check_shape(s));
  const int n = s.dim * s.mult;
  hc_post_kernel<<<(n + 255) / 256, 256, 0, stream>>>(x_in, f, post, comb, s, x_out);
  return cuda_status(cudaGetLastError(), "hc_post launch");
}

Status launch_hc_head(const float* x, const float* mix_raw, const float* scale, const float* base,
                      const float* norm_weight, const HcShape& s, float* out, cudaStream_t stream) {
  DS4_RETURN_IF_ERROR(check_shape(s));
  hc_head_kernel<<<1, 1024, s.dim * sizeof(float), stream>>>(x, mix_raw, scale, base, norm_weight,
                                                              s, out);
  return cuda_status(cudaGetLastError(), "hc_head launch");
}

}  // namespace ds4
