#include "cuda/prefill_ops.h"

#include <cooperative_groups.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cfloat>
#include <climits>
#include <string>

#include "cuda/cuda_check.h"
#include "cuda/device_limits.h"
#include "cuda/device_math.cuh"

// The per-token bodies below repeat the arithmetic of hyper_connections.cu and moe.cu
// expression for expression (same float operations in the same order; element-wise
// kernels also come in float4 forms, and hc_pre uses smaller blocks, see kHcPreThreads),
// so that a batched launch gives the single-token launches' results bit for bit; the GPU
// test (tests/cuda/prefill_ops_test.cu) checks exactly that.

namespace ds4 {
namespace {

using namespace cuda_detail;
namespace cg = cooperative_groups;

constexpr int kMaxMult = 8;
constexpr int kMaxExperts = 1024;
constexpr int kMaxGridY = 65535;
// launch_hc_pre uses 1024 threads; 256 here lets several tokens share an SM, so one
// token's Sinkhorn (one warp) overlaps other tokens' loads. Only the order of the exact
// double sums of squares changes: the float RMS factors are the same unless a double sum
// rounds across a float rounding boundary (about 1e-9 per token); the test checks bits.
constexpr int kHcPreThreads = 256;
constexpr int kElementThreads = 256;

// ---------------------------------------------------------------- hyper-connections

// grid (ceil(dim / 256), n): token blockIdx.y.
__global__ void embed_tokens_kernel(const void* embd, int is_f16, const int32_t* tokens, HcShape s,
                                    float* x_all) {
  const int tok = blockIdx.y;
  const int64_t t = tokens[tok];
  float* x = x_all + static_cast<int64_t>(tok) * s.mult * s.dim;
  for (int d = blockIdx.x * blockDim.x + threadIdx.x; d < s.dim; d += gridDim.x * blockDim.x) {
    float v = is_f16 ? __half2float(reinterpret_cast<const __half*>(embd)[t * s.dim + d])
                     : reinterpret_cast<const float*>(embd)[t * s.dim + d];
    for (int h = 0; h < s.mult; ++h) x[h * s.dim + d] = v;
  }
}

__device__ float sigmoid_value(float z) { return 1.0f / (1.0f + expf(-z)); }

// RMS factor 1/sqrt(mean(X^2) + eps) over all streams of one token.
__device__ float token_rms_factor(const float* x, const HcShape& s) {
  __shared__ double dscratch[32];
  const int n = s.dim * s.mult;
  double s0 = 0.0, s1 = 0.0;
  const float4* x4 = reinterpret_cast<const float4*>(x);
  for (int i = threadIdx.x; i < n / 4; i += blockDim.x) {
    const float4 v = x4[i];
    s0 += static_cast<double>(v.x) * v.x + static_cast<double>(v.y) * v.y;
    s1 += static_cast<double>(v.z) * v.z + static_cast<double>(v.w) * v.w;
  }
  const double ss = block_sum_double(s0 + s1, dscratch);
  return rms_scale(ss, n, s.norm_eps);
}

// out = rmsw(sum_h wts[h] X_h, norm_weight), with y staged in `ys` (dim floats).
__device__ void token_weighted_stream_norm(const float* x, const float* wts, const float* norm_weight,
                                           const HcShape& s, float* ys, float* out) {
  __shared__ double dscratch[32];
  double ss = 0.0;
  for (int d = threadIdx.x; d < s.dim; d += blockDim.x) {
    float y = 0.0f;
    for (int h = 0; h < s.mult; ++h) y = __fadd_rn(y, __fmul_rn(wts[h], x[h * s.dim + d]));
    ys[d] = y;
    ss += static_cast<double>(y) * y;
  }
  ss = block_sum_double(ss, dscratch);
  const float f = rms_scale(ss, s.dim, s.norm_eps);
  for (int d = threadIdx.x; d < s.dim; d += blockDim.x) {
    out[d] = ys[d] * f * (norm_weight ? norm_weight[d] : 1.0f);
  }
}

// pre / post / Sinkhorn comb for mult == 4: one warp, one lane per comb entry
// (src i = lane/4, dst k = lane%4); lanes 16..31 mirror 0..15.
__device__ void split_sinkhorn_mult4(const float* mix_raw, const float* scale, const float* base,
                                     float factor, const HcShape& s, float* pre, float* post,
                                     float* comb) {
  const int lane = threadIdx.x;
  const int e = lane & 15;
  if (lane < 4) {
    pre[lane] = sigmoid_value(__fadd_rn(__fmul_rn(__fmul_rn(mix_raw[lane], factor), scale[0]), base[lane])) + s.hc_eps;
    post[lane] = 2.0f * sigmoid_value(__fadd_rn(__fmul_rn(__fmul_rn(mix_raw[4 + lane], factor), scale[1]), base[4 + lane]));
  }
  const int k = e & 3;
  auto row_sum = [&](float v) {
    float a = __shfl_sync(0xffffffffu, v, (lane & ~3) + 0);
    a += __shfl_sync(0xffffffffu, v, (lane & ~3) + 1);
    a += __shfl_sync(0xffffffffu, v, (lane & ~3) + 2);
    return a + __shfl_sync(0xffffffffu, v, (lane & ~3) + 3);
  };
  auto row_max = [&](float v) {
    float a = __shfl_sync(0xffffffffu, v, (lane & ~3) + 0);
    a = fmaxf(a, __shfl_sync(0xffffffffu, v, (lane & ~3) + 1));
    a = fmaxf(a, __shfl_sync(0xffffffffu, v, (lane & ~3) + 2));
    return fmaxf(a, __shfl_sync(0xffffffffu, v, (lane & ~3) + 3));
  };
  auto col_sum = [&](float v) {
    float a = __shfl_sync(0xffffffffu, v, (lane & 16) + k);
    a += __shfl_sync(0xffffffffu, v, (lane & 16) + 4 + k);
    a += __shfl_sync(0xffffffffu, v, (lane & 16) + 8 + k);
    return a + __shfl_sync(0xffffffffu, v, (lane & 16) + 12 + k);
  };
  float c = __fadd_rn(__fmul_rn(__fmul_rn(mix_raw[8 + e], factor), scale[2]), base[8 + e]);
  c = expf(c - row_max(c));
  c = c / row_sum(c) + s.hc_eps;
  for (int iter = 0; iter < s.sinkhorn_iters; ++iter) {
    if (iter > 0) c = c / (row_sum(c) + s.hc_eps);
    c = c / (col_sum(c) + s.hc_eps);
  }
  if (lane < 16) comb[e] = c;
}

// The same for any mult <= kMaxMult, on one thread.
__device__ void split_sinkhorn_serial(const float* mix_raw, const float* scale, const float* base,
                                      float factor, const HcShape& s, float* pre, float* post,
                                      float* comb) {
  const int m = s.mult;
  float c[kMaxMult][kMaxMult];
  for (int h = 0; h < m; ++h) {
    pre[h] = sigmoid_value(mix_raw[h] * factor * scale[0] + base[h]) + s.hc_eps;
    post[h] = 2.0f * sigmoid_value(mix_raw[m + h] * factor * scale[1] + base[m + h]);
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

// grid n, kHcPreThreads threads: block t handles token t.
__global__ void hc_pre_tokens_kernel(const float* x_all, const float* mix_all, const float* scale,
                                     const float* base, const float* norm_weight, HcShape s,
                                     float* post_all, float* comb_all, float* out_all) {
  extern __shared__ float ys[];
  __shared__ float pre[kMaxMult];
  const int64_t t = blockIdx.x;
  const int m = s.mult;
  const float* x = x_all + t * m * s.dim;
  const float* mix_raw = mix_all + t * (2 + m) * m;
  float* post = post_all + t * m;
  float* comb = comb_all + t * m * m;
  float* out = out_all + t * s.dim;
  const float factor = token_rms_factor(x, s);
  if (m == 4 && threadIdx.x < 32) {
    split_sinkhorn_mult4(mix_raw, scale, base, factor, s, pre, post, comb);
  } else if (m != 4 && threadIdx.x == 0) {
    split_sinkhorn_serial(mix_raw, scale, base, factor, s, pre, post, comb);
  }
  __syncthreads();
  token_weighted_stream_norm(x, pre, norm_weight, s, ys, out);
}

// grid (ceil(mult*dim / 256), n): token blockIdx.y.
__global__ void hc_post_tokens_kernel(const float* x_in_all, const float* f_all, const float* post_all,
                                      const float* comb_all, HcShape s, float* x_out_all) {
  const int64_t t = blockIdx.y;
  const int n = s.dim * s.mult;
  const float* x_in = x_in_all + t * n;
  const float* f = f_all + t * s.dim;
  const float* post = post_all + t * s.mult;
  const float* comb = comb_all + t * s.mult * s.mult;
  float* x_out = x_out_all + t * n;
  for (int idx = blockIdx.x * blockDim.x + threadIdx.x; idx < n; idx += gridDim.x * blockDim.x) {
    const int k = idx / s.dim;
    const int d = idx - k * s.dim;
    float v = post[k] * f[d];
    for (int i = 0; i < s.mult; ++i) v += comb[i * s.mult + k] * x_in[i * s.dim + d];
    x_out[idx] = v;
  }
}

// The same four kernels' float4 forms (dim a multiple of 4, 16-byte aligned rows): one
// thread per 4 consecutive values of a row, the same arithmetic per value.

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

// grid (ceil(dim / 4 / 256), n).
__global__ void embed_tokens_vec_kernel(const void* embd, int is_f16, const int32_t* tokens, HcShape s,
                                        float* x_all) {
  const int tok = blockIdx.y;
  const int q = blockIdx.x * blockDim.x + threadIdx.x;
  const int nq = s.dim / 4;
  if (q >= nq) return;
  const int64_t t = tokens[tok];
  float4 v;
  if (is_f16) {
    const uint2 raw = __ldg(reinterpret_cast<const uint2*>(embd) + t * nq + q);
    const __half2 a = *reinterpret_cast<const __half2*>(&raw.x);
    const __half2 b = *reinterpret_cast<const __half2*>(&raw.y);
    v = make_float4(__low2float(a), __high2float(a), __low2float(b), __high2float(b));
  } else {
    v = __ldg(reinterpret_cast<const float4*>(embd) + t * nq + q);
  }
  float4* x = reinterpret_cast<float4*>(x_all + static_cast<int64_t>(tok) * s.mult * s.dim);
  for (int h = 0; h < s.mult; ++h) x[h * nq + q] = v;
}

// grid (ceil(dim / 4 / 256), n); mult == kMult.
template <int kMult>
__global__ void hc_post_tokens_vec_kernel(const float* x_in_all, const float* f_all, const float* post_all,
                                          const float* comb_all, HcShape s, float* x_out_all) {
  const int64_t t = blockIdx.y;
  const int q = blockIdx.x * blockDim.x + threadIdx.x;
  const int nq = s.dim / 4;
  if (q >= nq) return;
  const float4* x_in = reinterpret_cast<const float4*>(x_in_all + t * kMult * s.dim);
  const float4 f = __ldg(reinterpret_cast<const float4*>(f_all + t * s.dim) + q);
  const float* post = post_all + t * kMult;
  const float* comb = comb_all + t * kMult * kMult;
  float4 xi[kMult];
#pragma unroll
  for (int i = 0; i < kMult; ++i) xi[i] = __ldg(x_in + i * nq + q);
  float4* x_out = reinterpret_cast<float4*>(x_out_all + t * kMult * s.dim);
#pragma unroll
  for (int k = 0; k < kMult; ++k) {
    const float pk = __ldg(post + k);
    float4 v;
    // As hc_post_kernel compiles: the product post*f rounded, then one fused
    // multiply-add per stream (spelled out so the contraction cannot differ).
    v.x = __fmul_rn(pk, f.x);
    v.y = __fmul_rn(pk, f.y);
    v.z = __fmul_rn(pk, f.z);
    v.w = __fmul_rn(pk, f.w);
#pragma unroll
    for (int i = 0; i < kMult; ++i) {
      const float c = __ldg(comb + i * kMult + k);
      v.x = __fmaf_rn(c, xi[i].x, v.x);
      v.y = __fmaf_rn(c, xi[i].y, v.y);
      v.z = __fmaf_rn(c, xi[i].z, v.z);
      v.w = __fmaf_rn(c, xi[i].w, v.w);
    }
    x_out[k * nq + q] = v;
  }
}

Status check_hc_shape(const HcShape& s, int n, const char* what) {
  if (s.mult <= 0 || s.mult > kMaxMult) {
    return Status::Error(std::string(what) + ": stream count " + std::to_string(s.mult) + " out of range 1.." +
                         std::to_string(kMaxMult));
  }
  if (s.dim <= 0) return Status::Error(std::string(what) + ": dim must be positive");
  if (n < 0 || n > kMaxGridY) {
    return Status::Error(std::string(what) + ": token count " + std::to_string(n) + " out of range 0.." +
                         std::to_string(kMaxGridY));
  }
  return Status::Ok();
}

// ---------------------------------------------------------------- MoE grouping

// Exclusive prefix sum of `v` over the threads of the block, in thread order (integers:
// exact). `warp_totals`: 32 ints of shared memory. Every thread must call this.
__device__ int32_t block_exclusive_scan(int32_t v, int32_t* warp_totals) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  int32_t inclusive = v;
  for (int off = 1; off < 32; off <<= 1) {
    const int32_t other = __shfl_up_sync(0xffffffffu, inclusive, off);
    if (lane >= off) inclusive += other;
  }
  if (lane == 31) warp_totals[warp] = inclusive;
  __syncthreads();
  if (warp == 0) {
    const int nw = blockDim.x >> 5;
    int32_t t = lane < nw ? warp_totals[lane] : 0;
    for (int off = 1; off < 32; off <<= 1) {
      const int32_t other = __shfl_up_sync(0xffffffffu, t, off);
      if (lane >= off) t += other;
    }
    warp_totals[lane] = t;  // inclusive over warps
  }
  __syncthreads();
  return (warp > 0 ? warp_totals[warp - 1] : 0) + inclusive - v;
}

// One block of `segments` warps; the n*k assignments are cut into `segments` contiguous
// pieces, warp w owning piece w. Shared memory: table[segments][n_experts] (the count,
// then the write cursor, of each expert in each piece) and expert_total[n_experts].
// No atomics: within a warp, the lanes holding one expert find each other with
// __match_any_sync and the lowest of them updates the table.
__global__ void moe_group_kernel(MoeGroupLaunch p, int segments) {
  extern __shared__ int32_t shared_i32[];
  const int ne = p.n_experts;
  int32_t* table = shared_i32;                                   // [segments][ne]
  int32_t* expert_total = shared_i32 + static_cast<int64_t>(segments) * ne;  // [ne]
  __shared__ int32_t warp_totals[32];
  const int total = p.n * p.k;
  const int piece = (total + segments - 1) / segments;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const unsigned lanes_below = (1u << lane) - 1u;
  const int begin = min(total, warp * piece), end = min(total, begin + piece);
  auto expert_of = [&](int a) {
    const int e = p.ids[a];
    return (e >= 0 && e < ne) ? e : 0;
  };

  for (int i = threadIdx.x; i < segments * ne; i += blockDim.x) table[i] = 0;
  __syncthreads();
  // 1. Per-piece counts.
  int32_t* row = table + static_cast<int64_t>(warp) * ne;
  for (int base = begin; base < end; base += 32) {
    const int a = base + lane;
    const int e = a < end ? expert_of(a) : -1;
    const unsigned same = __match_any_sync(0xffffffffu, e);
    if (e >= 0 && (same & lanes_below) == 0) row[e] += __popc(same);
    __syncwarp();
  }
  __syncthreads();
  // 2. Each expert's cursor per piece (exclusive over pieces), and its total.
  for (int e = threadIdx.x; e < ne; e += blockDim.x) {
    int32_t running = 0;
    for (int w = 0; w < segments; ++w) {
      const int32_t c = table[w * ne + e];
      table[w * ne + e] = running;
      running += c;
    }
    expert_total[e] = running;
  }
  __syncthreads();
  // 3. Exclusive scan of the totals over experts: thread i owns experts [i*per, (i+1)*per).
  const int per = (ne + blockDim.x - 1) / blockDim.x;
  const int e0 = min(ne, static_cast<int>(threadIdx.x) * per), e1 = min(ne, e0 + per);
  int32_t mine = 0;
  for (int e = e0; e < e1; ++e) mine += expert_total[e];
  int32_t start = block_exclusive_scan(mine, warp_totals);
  for (int e = e0; e < e1; ++e) {
    const int32_t c = expert_total[e];
    p.offsets[e] = start;
    for (int w = 0; w < segments; ++w) table[w * ne + e] += start;
    start += c;
  }
  if (threadIdx.x == 0) p.offsets[ne] = total;
  __syncthreads();
  // 4. Scatter, each piece in order.
  for (int base = begin; base < end; base += 32) {
    const int a = base + lane;
    const int e = a < end ? expert_of(a) : -1;
    const unsigned same = __match_any_sync(0xffffffffu, e);
    if (e >= 0) {
      const int32_t dst = row[e] + __popc(same & lanes_below);
      p.x_rows[dst] = a / p.k;
      if (p.row_scale) p.row_scale[dst] = p.weights[a];
      p.slot_of[a] = dst;
    }
    __syncwarp();
    if (e >= 0 && (same & lanes_below) == 0) row[e] += __popc(same);
    __syncwarp();
  }
}

// grid (ceil(dim / 256), n): token blockIdx.y.
__global__ void moe_combine_kernel(const float* y, const int32_t* slot_of, int k, int dim, int accumulate,
                                   float* out_all) {
  const int64_t t = blockIdx.y;
  const int d = blockIdx.x * blockDim.x + threadIdx.x;
  if (d >= dim) return;
  const int32_t* slots = slot_of + t * k;
  float sum = y[static_cast<int64_t>(slots[0]) * dim + d];
  for (int j = 1; j < k; ++j) sum = __fadd_rn(sum, y[static_cast<int64_t>(slots[j]) * dim + d]);
  float* out = out_all + t * dim + d;
  *out = accumulate ? __fadd_rn(*out, sum) : sum;
}


// grid (ceil(dim / 4 / 256), n): float4 form of moe_combine_kernel.
__global__ void moe_combine_vec_kernel(const float* y, const int32_t* slot_of, int k, int dim, int accumulate,
                                       float* out_all) {
  const int64_t t = blockIdx.y;
  const int q = blockIdx.x * blockDim.x + threadIdx.x;
  const int nq = dim / 4;
  if (q >= nq) return;
  const int32_t* slots = slot_of + t * k;
  const float4* y4 = reinterpret_cast<const float4*>(y);
  float4 sum = __ldg(y4 + static_cast<int64_t>(__ldg(slots)) * nq + q);
  for (int j = 1; j < k; ++j) {
    const float4 v = __ldg(y4 + static_cast<int64_t>(__ldg(slots + j)) * nq + q);
    sum.x = __fadd_rn(sum.x, v.x);
    sum.y = __fadd_rn(sum.y, v.y);
    sum.z = __fadd_rn(sum.z, v.z);
    sum.w = __fadd_rn(sum.w, v.w);
  }
  float4* out = reinterpret_cast<float4*>(out_all + t * dim) + q;
  if (accumulate) {
    const float4 o = *out;
    sum.x = __fadd_rn(o.x, sum.x);
    sum.y = __fadd_rn(o.y, sum.y);
    sum.z = __fadd_rn(o.z, sum.z);
    sum.w = __fadd_rn(o.w, sum.w);
  }
  *out = sum;
}

// ---------------------------------------------------------------- small matmul

constexpr int kSmallWarps = 4;          // warps per block; all share the block's rows of w
constexpr int kSmallChunkIters = 8;     // float4 steps summed before joining the running sum

template <bool kF16>
__device__ __forceinline__ float4 load_weight4(const uint8_t* data, int64_t index) {
  if constexpr (kF16) {
    const uint2 raw = __ldg(reinterpret_cast<const uint2*>(data) + index);
    const float2 a = __half22float2(*reinterpret_cast<const __half2*>(&raw.x));
    const float2 b = __half22float2(*reinterpret_cast<const __half2*>(&raw.y));
    return make_float4(a.x, a.y, b.x, b.y);
  } else {
    return __ldg(reinterpret_cast<const float4*>(data) + index);
  }
}

// grid (ceil(rows / kRows), ceil(n / (kSmallWarps * kTokens))). Warp w of a block takes
// kTokens tokens and the block's kRows rows; lane l reads the float4s l, l + 32, ... of
// every row and token, so each product w[r][c] * x[t][c] is formed in f32 by one lane.
template <bool kF16, int kTokens, int kRows, int kAhead>
__global__ void small_matmul_tokens_kernel(const uint8_t* w, int rows, int cols, const float* x, int64_t x_stride,
                                           float* y, int64_t y_stride, int n) {
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int r0 = blockIdx.x * kRows;
  const int t0 = (blockIdx.y * kSmallWarps + warp) * kTokens;
  if (t0 >= n) return;
  const int nvec = cols / 4;
  const float4* xr[kTokens];
#pragma unroll
  for (int t = 0; t < kTokens; ++t) {
    xr[t] = reinterpret_cast<const float4*>(x + static_cast<int64_t>(min(t0 + t, n - 1)) * x_stride);
  }
  float total[kTokens][kRows];
#pragma unroll
  for (int t = 0; t < kTokens; ++t)
#pragma unroll
    for (int r = 0; r < kRows; ++r) total[t][r] = 0.0f;
  for (int chunk = 0; chunk < nvec; chunk += 32 * kSmallChunkIters) {
    float part[kTokens][kRows];
#pragma unroll
    for (int t = 0; t < kTokens; ++t)
#pragma unroll
      for (int r = 0; r < kRows; ++r) part[t][r] = 0.0f;
    // x for kAhead steps is loaded before any of it is used, so that many loads are in
    // flight per warp (the x stream is most of the bytes).
#pragma unroll
    for (int g = 0; g < kSmallChunkIters; g += kAhead) {
      float4 xv[kAhead][kTokens];
#pragma unroll
      for (int a = 0; a < kAhead; ++a) {
        const int v = chunk + (g + a) * 32 + lane;
#pragma unroll
        for (int t = 0; t < kTokens; ++t) xv[a][t] = v < nvec ? __ldg(xr[t] + v) : make_float4(0.f, 0.f, 0.f, 0.f);
      }
#pragma unroll
      for (int a = 0; a < kAhead; ++a) {
        const int v = chunk + (g + a) * 32 + lane;
        if (v >= nvec) continue;
#pragma unroll
        for (int r = 0; r < kRows; ++r) {
          if (r0 + r < rows) {
            const float4 wv = load_weight4<kF16>(w, static_cast<int64_t>(r0 + r) * nvec + v);
#pragma unroll
            for (int t = 0; t < kTokens; ++t) {
              float s = __fmul_rn(wv.x, xv[a][t].x);
              s = __fmaf_rn(wv.y, xv[a][t].y, s);
              s = __fmaf_rn(wv.z, xv[a][t].z, s);
              s = __fmaf_rn(wv.w, xv[a][t].w, s);
              part[t][r] = __fadd_rn(part[t][r], s);
            }
          }
        }
      }
    }
#pragma unroll
    for (int t = 0; t < kTokens; ++t)
#pragma unroll
      for (int r = 0; r < kRows; ++r) total[t][r] = __fadd_rn(total[t][r], part[t][r]);
  }
  // Butterfly over the lanes: both partners add the same two values, so every lane ends
  // with the same sum; lane (t*kRows + r) % 32 stores output (t, r).
#pragma unroll
  for (int t = 0; t < kTokens; ++t) {
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      float v = total[t][r];
      for (int off = 16; off > 0; off >>= 1) v = __fadd_rn(v, __shfl_xor_sync(0xffffffffu, v, off));
      if (lane == (t * kRows + r) % 32 && t0 + t < n && r0 + r < rows) {
        y[static_cast<int64_t>(t0 + t) * y_stride + r0 + r] = v;
      }
    }
  }
}

template <bool kF16, int kTokens, int kRows, int kAhead>
void launch_small_matmul_variant(const DeviceMatrix& w, const float* x, int64_t x_stride, float* y,
                                 int64_t y_stride, int n, cudaStream_t stream) {
  const int rows = static_cast<int>(w.rows);
  const int tokens_per_block = kSmallWarps * kTokens;
  const dim3 grid((rows + kRows - 1) / kRows, (n + tokens_per_block - 1) / tokens_per_block);
  small_matmul_tokens_kernel<kF16, kTokens, kRows, kAhead><<<grid, 32 * kSmallWarps, 0, stream>>>(
      w.data, rows, static_cast<int>(w.cols), x, x_stride, y, y_stride, n);
}

// Tiles by row count: few rows take many tokens per warp (the x stream dominates), many
// rows take 16 rows x 4 tokens (64 sums per lane).
template <bool kF16>
void launch_small_matmul_for_rows(const DeviceMatrix& w, const float* x, int64_t x_stride, float* y,
                                  int64_t y_stride, int n, cudaStream_t stream) {
  if (w.rows <= 4) {
    launch_small_matmul_variant<kF16, 8, 4, 2>(w, x, x_stride, y, y_stride, n, stream);
  } else if (w.rows <= 8) {
    launch_small_matmul_variant<kF16, 4, 8, 4>(w, x, x_stride, y, y_stride, n, stream);
  } else if (w.rows <= 24) {
    launch_small_matmul_variant<kF16, 2, 24, 8>(w, x, x_stride, y, y_stride, n, stream);
  } else {
    launch_small_matmul_variant<kF16, 4, 16, 2>(w, x, x_stride, y, y_stride, n, stream);
  }
}


// The requirements shared by launch_small_matmul_tokens and launch_tiled_matmul_tokens.
Status check_small_matmul(const DeviceMatrix& w, const float* x, int64_t x_stride, const float* y, int64_t y_stride,
                          int n, const std::string& what) {
  if (w.type != GgmlType::F16 && w.type != GgmlType::F32) {
    return Status::Error(what + ": weight type " + std::to_string(static_cast<int>(w.type)) + " is not F16 or F32");
  }
  if (w.empty() || w.rows <= 0 || w.cols <= 0 || w.cols % 4 != 0 || w.rows > INT_MAX || w.cols > INT_MAX / 2) {
    return Status::Error(what + ": matrix of " + std::to_string(w.rows) + " x " + std::to_string(w.cols) +
                         " (columns must be a positive multiple of 4)");
  }
  auto aligned = [](const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; };
  if (x_stride < w.cols || x_stride % 4 != 0 || y_stride < w.rows || !aligned(x) || !aligned(w.data) || !y) {
    return Status::Error(what + ": x stride " + std::to_string(x_stride) + " / y stride " + std::to_string(y_stride) +
                         " / alignment do not fit a " + std::to_string(w.rows) + " x " + std::to_string(w.cols) +
                         " matrix (x rows need 16-byte alignment)");
  }
  if (n < 0 || n > 4 * kMaxGridY) return Status::Error(what + ": token count " + std::to_string(n) + " out of range");
  return Status::Ok();
}

// ---------------------------------------------------------------- tiled matmul

// Register-tiled f32 GEMM over a chunk: y[t][r] = sum_c w[r][c] x[t][c]. A block owns a
// tile of BM tokens x BN rows and one contiguous column range (split s of gridDim.z);
// tiles of kTileK columns of x and w stream through shared memory in `stages` slots by
// cp.async (16-byte copies of x, 8-byte copies of F16 w; out-of-range chunks are
// zero-filled). The block's threads form KG groups; thread (g, tg, rg) sums columns
// [g*kTileK/KG, (g+1)*kTileK/KG) of every column tile for tokens tg + i*BM/TM and rows
// rg + j*BN/TN (strided, so that the float4 shared loads of a warp hit distinct banks);
// the groups' sums are then added in group order.

constexpr int kTileK = 32;               // columns per stage
constexpr int kTilePitch = kTileK + 4;   // floats per shared row of x / f32 w (bank offset)
constexpr int kTileHalfPitch = kTileK + 8;  // halves per shared row of raw F16 w
constexpr int kTileChunks = kTileK / 4;  // 4-column chunks per row and stage
constexpr int kMaxTileSplits = 8;        // portable cluster size
constexpr int kTileMaxStages = 4;

struct TiledParams {
  const uint8_t* w;
  int rows;
  int cols;
  const float* x;
  int64_t x_stride;
  float* y;
  int64_t y_stride;
  int n;
  int split_cols;    // columns per split (a multiple of kTileK)
  int splits;
  int stages;
  int region_bytes;  // stage slots (and the partial tile), before the f32 w tile
};

__device__ __forceinline__ void cp_async16(void* smem, const void* global, bool valid) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(global), "r"(valid ? 16 : 0));
}

__device__ __forceinline__ void cp_async8(void* smem, const void* global, bool valid) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 8, %2;\n" ::"r"(s), "l"(global), "r"(valid ? 8 : 0));
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }

// Waits until at most stages - 2 groups are pending (the oldest slot has landed).
__device__ __forceinline__ void cp_async_wait_oldest(int stages) {
  if (stages >= 4) {
    asm volatile("cp.async.wait_group 2;\n" ::);
  } else if (stages == 3) {
    asm volatile("cp.async.wait_group 1;\n" ::);
  } else {
    asm volatile("cp.async.wait_group 0;\n" ::);
  }
}

template <bool kF16>
__host__ __device__ constexpr int tile_w_bytes(int bn) {
  return kF16 ? bn * kTileHalfPitch * 2 : bn * kTilePitch * 4;
}

template <bool kF16, int BM, int BN>
__host__ __device__ constexpr int tile_stage_bytes() {
  return BM * kTilePitch * 4 + tile_w_bytes<kF16>(BN);
}

// Issues the copies of the column tile [k0, k0 + kTileK) into one slot.
template <bool kF16, int BM, int BN, int kThreads>
__device__ __forceinline__ void tile_load_stage(const TiledParams& p, int t0, int r0, int k0, int kend,
                                                unsigned char* slot) {
  float* xs = reinterpret_cast<float*>(slot);
  static_assert((BM * kTileChunks) % kThreads == 0, "x chunks must divide among the threads");
#pragma unroll
  for (int i = 0; i < BM * kTileChunks / kThreads; ++i) {
    const int c = threadIdx.x + i * kThreads;
    const int row = c / kTileChunks, q = c % kTileChunks;
    const int t = t0 + row, k = k0 + q * 4;
    const bool ok = t < p.n && k < kend;
    const float* src = ok ? p.x + static_cast<int64_t>(t) * p.x_stride + k : p.x;
    cp_async16(xs + row * kTilePitch + q * 4, src, ok);
  }
  unsigned char* ws = slot + BM * kTilePitch * 4;
  for (int c = threadIdx.x; c < BN * kTileChunks; c += kThreads) {
    const int row = c / kTileChunks, q = c % kTileChunks;
    const int r = r0 + row, k = k0 + q * 4;
    const bool ok = r < p.rows && k < kend;
    if constexpr (kF16) {
      const __half* base = reinterpret_cast<const __half*>(p.w);
      cp_async8(reinterpret_cast<__half*>(ws) + row * kTileHalfPitch + q * 4,
                ok ? base + static_cast<int64_t>(r) * p.cols + k : base, ok);
    } else {
      const float* base = reinterpret_cast<const float*>(p.w);
      cp_async16(reinterpret_cast<float*>(ws) + row * kTilePitch + q * 4,
                 ok ? base + static_cast<int64_t>(r) * p.cols + k : base, ok);
    }
  }
}

template <bool kF16, int BM, int BN, int TM, int TN, int KG>
__global__ void __launch_bounds__((BM / TM) * (BN / TN) * KG)
    tiled_matmul_tokens_kernel(TiledParams p) {
  constexpr int kRowGroups = BN / TN;
  constexpr int kTokenGroups = BM / TM;
  constexpr int kGroupThreads = kRowGroups * kTokenGroups;
  constexpr int kThreads = kGroupThreads * KG;
  constexpr int kGroupCols = kTileK / KG;
  static_assert(kGroupCols % 4 == 0, "each group takes whole float4 steps");
  constexpr int kStage = tile_stage_bytes<kF16, BM, BN>();
  extern __shared__ __align__(16) unsigned char tile_smem[];
  float* wf = reinterpret_cast<float*>(tile_smem + p.region_bytes);  // f32 w tile (F16 only)

  const int t0 = blockIdx.x * BM, r0 = blockIdx.y * BN;
  const int kbegin = blockIdx.z * p.split_cols;
  const int kend = min(p.cols, kbegin + p.split_cols);
  const int tiles = kend > kbegin ? (kend - kbegin + kTileK - 1) / kTileK : 0;
  const int g = threadIdx.x / kGroupThreads;
  const int rg = (threadIdx.x % kGroupThreads) % kRowGroups, tg = (threadIdx.x % kGroupThreads) / kRowGroups;

  float acc[TM][TN];
#pragma unroll
  for (int i = 0; i < TM; ++i)
#pragma unroll
    for (int j = 0; j < TN; ++j) acc[i][j] = 0.0f;

  for (int s = 0; s < p.stages - 1; ++s) {
    if (s < tiles) tile_load_stage<kF16, BM, BN, kThreads>(p, t0, r0, kbegin + s * kTileK, kend, tile_smem + s * kStage);
    cp_async_commit();
  }
  for (int kt = 0; kt < tiles; ++kt) {
    cp_async_wait_oldest(p.stages);
    __syncthreads();  // tile kt landed for every thread; slot of tile kt - 1 is free
    const int next = kt + p.stages - 1;
    if (next < tiles) {
      tile_load_stage<kF16, BM, BN, kThreads>(p, t0, r0, kbegin + next * kTileK, kend,
                                              tile_smem + (next % p.stages) * kStage);
    }
    cp_async_commit();
    const unsigned char* slot = tile_smem + (kt % p.stages) * kStage;
    const float* xs = reinterpret_cast<const float*>(slot);
    const float* ws;
    if constexpr (kF16) {
      const __half* raw = reinterpret_cast<const __half*>(slot + BM * kTilePitch * 4);
      for (int c = threadIdx.x; c < BN * kTileChunks; c += kThreads) {
        const int row = c / kTileChunks, q = c % kTileChunks;
        const uint2 v = *reinterpret_cast<const uint2*>(raw + row * kTileHalfPitch + q * 4);
        const float2 a = __half22float2(*reinterpret_cast<const __half2*>(&v.x));
        const float2 b = __half22float2(*reinterpret_cast<const __half2*>(&v.y));
        *reinterpret_cast<float4*>(wf + row * kTilePitch + q * 4) = make_float4(a.x, a.y, b.x, b.y);
      }
      __syncthreads();
      ws = wf;
    } else {
      ws = reinterpret_cast<const float*>(slot + BM * kTilePitch * 4);
    }
#pragma unroll
    for (int q = 0; q < kGroupCols; q += 4) {
      const int kk = g * kGroupCols + q;
      float4 xv[TM], wv[TN];
#pragma unroll
      for (int i = 0; i < TM; ++i) xv[i] = *reinterpret_cast<const float4*>(xs + (tg + i * kTokenGroups) * kTilePitch + kk);
#pragma unroll
      for (int j = 0; j < TN; ++j) wv[j] = *reinterpret_cast<const float4*>(ws + (rg + j * kRowGroups) * kTilePitch + kk);
#pragma unroll
      for (int i = 0; i < TM; ++i) {
#pragma unroll
        for (int j = 0; j < TN; ++j) {
          acc[i][j] = __fmaf_rn(wv[j].x, xv[i].x, acc[i][j]);
          acc[i][j] = __fmaf_rn(wv[j].y, xv[i].y, acc[i][j]);
          acc[i][j] = __fmaf_rn(wv[j].z, xv[i].z, acc[i][j]);
          acc[i][j] = __fmaf_rn(wv[j].w, xv[i].w, acc[i][j]);
        }
      }
    }
  }

  constexpr int kTile = BM * BN;
  if (KG == 1 && p.splits == 1) {
#pragma unroll
    for (int i = 0; i < TM; ++i) {
      const int t = t0 + tg + i * kTokenGroups;
#pragma unroll
      for (int j = 0; j < TN; ++j) {
        const int r = r0 + rg + j * kRowGroups;
        if (t < p.n && r < p.rows) p.y[static_cast<int64_t>(t) * p.y_stride + r] = acc[i][j];
      }
    }
    return;
  }
  // The groups' sums in shared memory (over the stage slots), added in group order into
  // the first.
  asm volatile("cp.async.wait_group 0;\n" ::);
  __syncthreads();
  float* part = reinterpret_cast<float*>(tile_smem);
#pragma unroll
  for (int i = 0; i < TM; ++i)
#pragma unroll
    for (int j = 0; j < TN; ++j) part[g * kTile + (tg + i * kTokenGroups) * BN + rg + j * kRowGroups] = acc[i][j];
  if constexpr (KG > 1) {
    __syncthreads();
    for (int e = threadIdx.x; e < kTile; e += kThreads) {
      float v = part[e];
#pragma unroll
      for (int h = 1; h < KG; ++h) v = __fadd_rn(v, part[h * kTile + e]);
      part[e] = v;
      const int t = t0 + e / BN, r = r0 + e % BN;
      if (p.splits == 1 && t < p.n && r < p.rows) p.y[static_cast<int64_t>(t) * p.y_stride + r] = v;
    }
  }
  if (p.splits == 1) return;
  // Split sums: each block leaves its partial tile in its shared memory; block `rank` of
  // the cluster then adds, for its share of the tile, the partials of ranks 0, 1, ... in
  // that order (rank = the split, the cluster spanning gridDim.z). The cluster barrier
  // also orders the block's own shared-memory writes above.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
  __trap();  // clusters need sm_90; the launch never asks for splits below it
#else
  cg::cluster_group cluster = cg::this_cluster();
  cluster.sync();
  const int rank = static_cast<int>(cluster.block_rank());
  const int per = (kTile + p.splits - 1) / p.splits;
  const int begin = rank * per, end = min(kTile, begin + per);
  for (int e = begin + threadIdx.x; e < end; e += kThreads) {
    const int t = t0 + e / BN, r = r0 + e % BN;
    float v = cluster.map_shared_rank(part, 0)[e];
    for (int s = 1; s < p.splits; ++s) v = __fadd_rn(v, cluster.map_shared_rank(part, s)[e]);
    if (t < p.n && r < p.rows) p.y[static_cast<int64_t>(t) * p.y_stride + r] = v;
  }
  cluster.sync();  // the partials stay in place until every block has read them
#endif
}

int multiprocessor_count() {
  static const int count = [] {
    int device = 0, sms = 1;
    if (cudaGetDevice(&device) == cudaSuccess) cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
    return sms > 0 ? sms : 1;
  }();
  return count;
}

// What one variant can do on this device, found once: its shared-memory size (the most
// stages that fit), resident blocks per multiprocessor and the largest cluster it forms.
struct TilePlan {
  Status status;
  int stages = 0;
  int shared = 0;
  int region = 0;
  int blocks_per_sm = 0;
  int max_splits = 1;
};

template <bool kF16, int BM, int BN, int TM, int TN, int KG>
const TilePlan& tile_plan() {
  static const TilePlan plan = [] {
    TilePlan pl;
    auto kernel = tiled_matmul_tokens_kernel<kF16, BM, BN, TM, TN, KG>;
    constexpr int kThreads = (BM / TM) * (BN / TN) * KG;
    const int limit = max_shared_per_block();
    const int wf_bytes = kF16 ? BN * kTilePitch * 4 : 0;
    for (pl.stages = kTileMaxStages; pl.stages >= 2; --pl.stages) {
      pl.region = std::max(pl.stages * tile_stage_bytes<kF16, BM, BN>(), KG * BM * BN * 4);
      pl.shared = pl.region + wf_bytes;
      if (pl.shared <= limit) break;
    }
    if (pl.stages < 2) {
      pl.status = Status::Error("tiled_matmul_tokens: " + std::to_string(pl.shared) +
                                " bytes of shared memory per block exceed the device's " + std::to_string(limit));
      return pl;
    }
    pl.status = cuda_status(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, pl.shared),
                            "tiled_matmul_tokens: raising the shared-memory limit");
    if (!pl.status.ok()) return pl;
    pl.status = cuda_status(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&pl.blocks_per_sm, kernel, kThreads, pl.shared),
                            "tiled_matmul_tokens: occupancy");
    if (!pl.status.ok()) return pl;
    int device = 0, major = 0;
    cudaGetDevice(&device);
    cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
    pl.max_splits = 1;
    if (major >= 9) {
      for (int s = kMaxTileSplits; s >= 2; --s) {
        cudaLaunchConfig_t cfg = {};
        cudaLaunchAttribute attr[1];
        attr[0].id = cudaLaunchAttributeClusterDimension;
        attr[0].val.clusterDim.x = 1;
        attr[0].val.clusterDim.y = 1;
        attr[0].val.clusterDim.z = s;
        cfg.gridDim = dim3(1, 1, s);
        cfg.blockDim = dim3(kThreads);
        cfg.dynamicSmemBytes = pl.shared;
        cfg.attrs = attr;
        cfg.numAttrs = 1;
        int clusters = 0;
        if (cudaOccupancyMaxActiveClusters(&clusters, kernel, &cfg) == cudaSuccess && clusters >= 1) {
          pl.max_splits = s;
          break;
        }
        cudaGetLastError();  // a refused size is not an error of the caller's launches
      }
    }
    return pl;
  }();
  return plan;
}

// Column tiles per split for a launch of `tiles_2d` output tiles: enough splits for one
// full wave of blocks (or `k_splits` when set), each split keeping at least 4 column
// tiles, no more than the clusters the device forms; no split left empty.
int tile_columns_per_split(const TilePlan& plan, int tiles_2d, int k_tiles, int k_splits) {
  int splits = k_splits;
  if (splits <= 0) {
    const int wave = std::max(1, plan.blocks_per_sm) * multiprocessor_count();
    splits = std::min(wave / std::max(1, tiles_2d), std::max(1, k_tiles / 4));
  }
  splits = std::max(1, std::min({splits, plan.max_splits, k_tiles}));
  return (k_tiles + splits - 1) / splits;
}

template <bool kF16, int BM, int BN, int TM, int TN, int KG>
Result<int> tiled_variant_splits(const DeviceMatrix& w, int n, int k_splits) {
  const TilePlan& plan = tile_plan<kF16, BM, BN, TM, TN, KG>();
  if (!plan.status.ok()) return plan.status;
  const int gx = (n + BM - 1) / BM, gy = static_cast<int>((w.rows + BN - 1) / BN);
  const int k_tiles = static_cast<int>((w.cols + kTileK - 1) / kTileK);
  const int per = tile_columns_per_split(plan, gx * gy, k_tiles, k_splits);
  return (k_tiles + per - 1) / per;
}

template <bool kF16, int BM, int BN, int TM, int TN, int KG>
Status launch_tiled_variant(const DeviceMatrix& w, const float* x, int64_t x_stride, float* y, int64_t y_stride,
                            int n, int k_splits, cudaStream_t stream) {
  const TilePlan& plan = tile_plan<kF16, BM, BN, TM, TN, KG>();
  DS4_RETURN_IF_ERROR(plan.status);
  constexpr int kThreads = (BM / TM) * (BN / TN) * KG;
  const int rows = static_cast<int>(w.rows), cols = static_cast<int>(w.cols);
  const int gx = (n + BM - 1) / BM, gy = (rows + BN - 1) / BN;
  if (gy > kMaxGridY) return Status::Error("tiled_matmul_tokens: " + std::to_string(rows) + " rows are too many");
  const int k_tiles = (cols + kTileK - 1) / kTileK;
  const int tiles_per_split = tile_columns_per_split(plan, gx * gy, k_tiles, k_splits);
  const int splits = (k_tiles + tiles_per_split - 1) / tiles_per_split;
  TiledParams p;
  p.w = w.data;
  p.rows = rows;
  p.cols = cols;
  p.x = x;
  p.x_stride = x_stride;
  p.y = y;
  p.y_stride = y_stride;
  p.n = n;
  p.split_cols = tiles_per_split * kTileK;
  p.splits = splits;
  p.stages = plan.stages;
  p.region_bytes = plan.region;
  cudaLaunchConfig_t cfg = {};
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeClusterDimension;
  attr[0].val.clusterDim.x = 1;
  attr[0].val.clusterDim.y = 1;
  attr[0].val.clusterDim.z = splits;
  cfg.gridDim = dim3(gx, gy, splits);
  cfg.blockDim = dim3(kThreads);
  cfg.dynamicSmemBytes = plan.shared;
  cfg.stream = stream;
  cfg.attrs = attr;
  cfg.numAttrs = splits > 1 ? 1 : 0;
  return cuda_status(cudaLaunchKernelEx(&cfg, tiled_matmul_tokens_kernel<kF16, BM, BN, TM, TN, KG>, p),
                     "tiled_matmul_tokens launch");
}

// Tiles by row count, 128 tokens a tile: 8 rows (4 tokens x 2 rows a thread) or 24 rows
// (4 x 6: the HC mixing's 24 in one tile), each with two column groups (256 threads, so
// that the few output tiles still give each multiprocessor 8 warps), or 64 rows (8 x 8,
// 128 threads).
template <bool kF16>
Status launch_tiled_for_rows(const DeviceMatrix& w, const float* x, int64_t x_stride, float* y, int64_t y_stride,
                             int n, int k_splits, cudaStream_t stream) {
  if (w.rows <= 8) return launch_tiled_variant<kF16, 128, 8, 4, 2, 2>(w, x, x_stride, y, y_stride, n, k_splits, stream);
  if (w.rows <= 24) {
    return launch_tiled_variant<kF16, 128, 24, 4, 6, 2>(w, x, x_stride, y, y_stride, n, k_splits, stream);
  }
  return launch_tiled_variant<kF16, 128, 64, 8, 8, 1>(w, x, x_stride, y, y_stride, n, k_splits, stream);
}

template <bool kF16>
Result<int> tiled_splits_for_rows(const DeviceMatrix& w, int n, int k_splits) {
  if (w.rows <= 8) return tiled_variant_splits<kF16, 128, 8, 4, 2, 2>(w, n, k_splits);
  if (w.rows <= 24) return tiled_variant_splits<kF16, 128, 24, 4, 6, 2>(w, n, k_splits);
  return tiled_variant_splits<kF16, 128, 64, 8, 8, 1>(w, n, k_splits);
}

}  // namespace

Status launch_hc_embed_tokens(const void* embd, GgmlType type, const int32_t* tokens, int n,
                              const HcShape& s, float* x, cudaStream_t stream) {
  DS4_RETURN_IF_ERROR(check_hc_shape(s, n, "hc_embed_tokens"));
  if (type != GgmlType::F16 && type != GgmlType::F32) {
    return Status::Error("hc_embed_tokens: token_embd must be F16 or F32");
  }
  if (n == 0) return Status::Ok();
  if (s.dim % 4 == 0 && aligned16(x) && (reinterpret_cast<uintptr_t>(embd) & 7u) == 0 &&
      (type == GgmlType::F16 || aligned16(embd))) {
    const dim3 vgrid((s.dim / 4 + kElementThreads - 1) / kElementThreads, n);
    embed_tokens_vec_kernel<<<vgrid, kElementThreads, 0, stream>>>(embd, type == GgmlType::F16, tokens, s, x);
    return cuda_status(cudaGetLastError(), "hc_embed_tokens launch");
  }
  const dim3 grid((s.dim + kElementThreads - 1) / kElementThreads, n);
  embed_tokens_kernel<<<grid, kElementThreads, 0, stream>>>(embd, type == GgmlType::F16, tokens, s, x);
  return cuda_status(cudaGetLastError(), "hc_embed_tokens launch");
}

Status launch_hc_pre_tokens(const float* x, const float* mix, const float* scale, const float* base,
                            const float* norm_weight, const HcShape& s, int n, float* post,
                            float* comb, float* out, cudaStream_t stream) {
  DS4_RETURN_IF_ERROR(check_hc_shape(s, n, "hc_pre_tokens"));
  if ((s.dim * s.mult) % 4 != 0) return Status::Error("hc_pre_tokens: state size must be a multiple of 4");
  if (n == 0) return Status::Ok();
  hc_pre_tokens_kernel<<<n, kHcPreThreads, s.dim * sizeof(float), stream>>>(x, mix, scale, base, norm_weight, s,
                                                                            post, comb, out);
  return cuda_status(cudaGetLastError(), "hc_pre_tokens launch");
}

Status launch_hc_post_tokens(const float* x_in, const float* f, const float* post,
                             const float* comb, const HcShape& s, int n, float* x_out,
                             cudaStream_t stream) {
  DS4_RETURN_IF_ERROR(check_hc_shape(s, n, "hc_post_tokens"));
  if (n == 0) return Status::Ok();
  if (s.mult == 4 && s.dim % 4 == 0 && aligned16(x_in) && aligned16(f) && aligned16(x_out)) {
    const dim3 vgrid((s.dim / 4 + kElementThreads - 1) / kElementThreads, n);
    hc_post_tokens_vec_kernel<4><<<vgrid, kElementThreads, 0, stream>>>(x_in, f, post, comb, s, x_out);
    return cuda_status(cudaGetLastError(), "hc_post_tokens launch");
  }
  const dim3 grid((s.dim * s.mult + kElementThreads - 1) / kElementThreads, n);
  hc_post_tokens_kernel<<<grid, kElementThreads, 0, stream>>>(x_in, f, post, comb, s, x_out);
  return cuda_status(cudaGetLastError(), "hc_post_tokens launch");
}

Status launch_router_tokens(const RouterTokensLaunch& launch, cudaStream_t stream) {
  return launch_router(launch.base, launch.n, stream);
}

Status launch_moe_group(const MoeGroupLaunch& p, cudaStream_t stream) {
  if (p.n_experts <= 0 || p.n_experts > kMaxExperts) {
    return Status::Error("moe_group: expert count " + std::to_string(p.n_experts) + " out of range 1.." +
                         std::to_string(kMaxExperts));
  }
  if (p.n < 0 || p.k <= 0 || static_cast<int64_t>(p.n) * p.k > INT_MAX / 2) {
    return Status::Error("moe_group: bad assignment count (n " + std::to_string(p.n) + ", k " +
                         std::to_string(p.k) + ")");
  }
  if (!p.ids || !p.offsets || !p.x_rows || !p.slot_of || (p.row_scale && !p.weights)) {
    return Status::Error("moe_group: a required buffer is missing");
  }
  // As many pieces (one warp each) as the shared table allows, at most 32.
  constexpr int kSharedBytes = 48 * 1024 - 32 * 4;  // less the static warp_totals
  const int per_piece = p.n_experts * static_cast<int>(sizeof(int32_t));
  const int segments = std::min(32, (kSharedBytes - per_piece) / per_piece);
  if (segments < 1) return Status::Error("moe_group: too many experts for the shared table");
  const size_t shared = static_cast<size_t>(segments + 1) * per_piece;
  moe_group_kernel<<<1, segments * 32, shared, stream>>>(p, segments);
  return cuda_status(cudaGetLastError(), "moe_group launch");
}

Status launch_moe_combine(const float* y, const int32_t* slot_of, int n, int k, int dim,
                          bool accumulate, float* out, cudaStream_t stream) {
  if (n < 0 || n > kMaxGridY) return Status::Error("moe_combine: token count out of range");
  if (k <= 0 || dim <= 0) return Status::Error("moe_combine: k and dim must be positive");
  if (n == 0) return Status::Ok();
  if (dim % 4 == 0 && aligned16(y) && aligned16(out)) {
    const dim3 vgrid((dim / 4 + kElementThreads - 1) / kElementThreads, n);
    moe_combine_vec_kernel<<<vgrid, kElementThreads, 0, stream>>>(y, slot_of, k, dim, accumulate ? 1 : 0, out);
    return cuda_status(cudaGetLastError(), "moe_combine launch");
  }
  const dim3 grid((dim + kElementThreads - 1) / kElementThreads, n);
  moe_combine_kernel<<<grid, kElementThreads, 0, stream>>>(y, slot_of, k, dim, accumulate ? 1 : 0, out);
  return cuda_status(cudaGetLastError(), "moe_combine launch");
}

Status launch_small_matmul_tokens(const DeviceMatrix& w, const float* x, int64_t x_stride, float* y,
                                  int64_t y_stride, int n, cudaStream_t stream) {
  DS4_RETURN_IF_ERROR(check_small_matmul(w, x, x_stride, y, y_stride, n, "small_matmul_tokens"));
  if (n == 0) return Status::Ok();
  if (w.type == GgmlType::F16) {
    launch_small_matmul_for_rows<true>(w, x, x_stride, y, y_stride, n, stream);
  } else {
    launch_small_matmul_for_rows<false>(w, x, x_stride, y, y_stride, n, stream);
  }
  return cuda_status(cudaGetLastError(), "small_matmul_tokens launch");
}

Status launch_tiled_matmul_tokens(const DeviceMatrix& w, const float* x, int64_t x_stride, float* y,
                                  int64_t y_stride, int n, cudaStream_t stream, int k_splits) {
  DS4_RETURN_IF_ERROR(check_small_matmul(w, x, x_stride, y, y_stride, n, "tiled_matmul_tokens"));
  if (k_splits < 0 || k_splits > kMaxTileSplits) {
    return Status::Error("tiled_matmul_tokens: split count " + std::to_string(k_splits) + " out of range 0.." +
                         std::to_string(kMaxTileSplits));
  }
  if (n == 0) return Status::Ok();
  if (w.type == GgmlType::F16) return launch_tiled_for_rows<true>(w, x, x_stride, y, y_stride, n, k_splits, stream);
  return launch_tiled_for_rows<false>(w, x, x_stride, y, y_stride, n, k_splits, stream);
}

Result<int> tiled_matmul_tokens_splits(const DeviceMatrix& w, int n, int k_splits) {
  if (w.type != GgmlType::F16 && w.type != GgmlType::F32) {
    return Status::Error("tiled_matmul_tokens_splits: weight type is not F16 or F32");
  }
  if (w.rows <= 0 || w.cols <= 0 || n <= 0 || k_splits < 0 || k_splits > kMaxTileSplits) {
    return Status::Error("tiled_matmul_tokens_splits: bad shape, token count or split count");
  }
  if (w.type == GgmlType::F16) return tiled_splits_for_rows<true>(w, n, k_splits);
  return tiled_splits_for_rows<false>(w, n, k_splits);
}

}  // namespace ds4
