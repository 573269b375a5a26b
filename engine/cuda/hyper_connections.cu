#include "cuda/hyper_connections.h"

#include <cooperative_groups.h>
#include <cuda_fp16.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <tuple>

#include "cuda/column_tile.cuh"
#include "cuda/cuda_check.h"
#include "cuda/matvec.h"
#include "cuda/launch.h"
#include "cuda/device_math.cuh"

namespace ds4 {
namespace {

using namespace cuda_detail;

constexpr int kMaxMult = 8;

__global__ void embed_kernel(const void* embd, int is_f16, const int32_t* token, HcShape s,
                             float* x) {
  pdl_wait();  // PDL: everything below reads earlier kernels' results or writes
  pdl_launch_dependents();
  const int64_t t = *token;
  for (int d = blockIdx.x * blockDim.x + threadIdx.x; d < s.dim; d += gridDim.x * blockDim.x) {
    float v = is_f16 ? __half2float(reinterpret_cast<const __half*>(embd)[t * s.dim + d])
                     : reinterpret_cast<const float*>(embd)[t * s.dim + d];
    for (int h = 0; h < s.mult; ++h) x[h * s.dim + d] = v;
  }
}

__device__ float sigmoidf_(float z) { return 1.0f / (1.0f + expf(-z)); }

// The 4 x 4 Sinkhorn of spec/MODEL.md §2.3 on one warp, in the CPU reference's order
// (cpu::hc_split_sinkhorn): lane e (e < 16) holds entry (src i = e / 4, dst k = e % 4)
// of the logits C0 and gets the final comb entry; lanes 16..31 mirror 0..15. Every
// lane of the warp calls it. Row (over k) and column (over i) sums add the four
// entries in index order, as the reference.
__device__ float sinkhorn4_shuffle(float c, int lane, int iters, float eps) {
  const int k = lane & 3;
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
  c = expf(c - row_max(c));
  c = c / row_sum(c) + eps;
  for (int iter = 0; iter < iters; ++iter) {
    if (iter > 0) c = c / (row_sum(c) + eps);
    c = c / (col_sum(c) + eps);
  }
  return c;
}

// sinkhorn4_shuffle with all 16 entries in the registers of the calling thread (c[i * 4
// + k], the logits in, the comb out): the same operations in the same order, without
// shuffles, each division done by every lane that calls it.
__device__ void sinkhorn4_registers(float (&c)[16], int iters, float eps) {
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    float* r = c + 4 * i;
    const float mx = fmaxf(fmaxf(fmaxf(r[0], r[1]), r[2]), r[3]);
#pragma unroll
    for (int k = 0; k < 4; ++k) r[k] = expf(r[k] - mx);
    const float sum = r[0] + r[1] + r[2] + r[3];
#pragma unroll
    for (int k = 0; k < 4; ++k) r[k] = r[k] / sum + eps;
  }
  for (int iter = 0; iter < iters; ++iter) {
    if (iter > 0) {
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const float d = c[4 * i] + c[4 * i + 1] + c[4 * i + 2] + c[4 * i + 3] + eps;
#pragma unroll
        for (int k = 0; k < 4; ++k) c[4 * i + k] = c[4 * i + k] / d;
      }
    }
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const float d = c[k] + c[4 + k] + c[8 + k] + c[12 + k] + eps;
#pragma unroll
      for (int i = 0; i < 4; ++i) c[4 * i + k] = c[4 * i + k] / d;
    }
  }
}

// RMS factor 1/sqrt(mean(X^2) + eps) over all streams.
__device__ float hc_rms_factor(const float* x, const HcShape& s, float*) {
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
__device__ void weighted_stream_norm(const float* x, const float* wts, const float* norm_weight,
                                     const HcShape& s, float* ys, float* scratch, float* out) {
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

// MatvecLaunch::tile_partials_only: mix value i is the sum of partial[i * tiles + k] over
// k, formed as the matvec's own tile reduction forms it (lane l adds tiles l, l + 32, ...
// in order, then a fixed shuffle tree), so the fused path gives the same bits. Writes
// the n values to `mix` (shared memory) and returns it; without partials, mix_raw.
__device__ const float* gather_mix(const float* mix_raw, const float* partial, int tiles, int n, float* mix) {
  if (!partial) return mix_raw;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  for (int i = warp; i < n; i += blockDim.x >> 5) {
    const float* src = partial + static_cast<int64_t>(i) * tiles;
    float v = 0.0f;
    for (int k = lane; k < tiles; k += 32) v += src[k];
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
    if (lane == 0) mix[i] = v;
  }
  __syncthreads();
  return mix;
}

__global__ void hc_pre_kernel(const float* x, const float* mix_raw, const float* scale,
                              const float* base, const float* norm_weight, HcShape s, float* post,
                              float* comb, float* out, const float* mix_partial, int mix_tiles,
                              int comb_logits_only) {
  pdl_wait();  // PDL: everything below reads earlier kernels' results or writes
  pdl_launch_dependents();
  extern __shared__ float ys[];
  __shared__ float mix_shared[2 * kMaxMult + kMaxMult * kMaxMult];
  mix_raw = gather_mix(mix_raw, mix_partial, mix_tiles, 2 * s.mult + s.mult * s.mult, mix_shared);
  __shared__ float scratch[32];
  __shared__ float pre[kMaxMult];
  const float factor = hc_rms_factor(x, s, scratch);
  const int m = s.mult;
  if (m == 4 && threadIdx.x < 32) {
    // One lane per comb entry (src i = lane/4, dst k = lane%4); lanes 16..31 mirror.
    const int lane = threadIdx.x;
    const int e = lane & 15;
    if (lane < 4) {
      pre[lane] = sigmoidf_(__fadd_rn(__fmul_rn(__fmul_rn(mix_raw[lane], factor), scale[0]), base[lane])) + s.hc_eps;
      post[lane] = 2.0f * sigmoidf_(__fadd_rn(__fmul_rn(__fmul_rn(mix_raw[4 + lane], factor), scale[1]), base[4 + lane]));
    }
    const float c0 = __fadd_rn(__fmul_rn(__fmul_rn(mix_raw[8 + e], factor), scale[2]), base[8 + e]);
    const float c = comb_logits_only ? c0 : sinkhorn4_shuffle(c0, lane, s.sinkhorn_iters, s.hc_eps);
    if (lane < 16) comb[e] = c;
  } else if (threadIdx.x == 0) {
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
                               const float* comb, HcShape s, float* x_out, const float* f_add) {
  pdl_wait();  // PDL: everything below reads earlier kernels' results or writes
  pdl_launch_dependents();
  const int n = s.dim * s.mult;
  for (int idx = blockIdx.x * blockDim.x + threadIdx.x; idx < n; idx += gridDim.x * blockDim.x) {
    const int k = idx / s.dim;
    const int d = idx - k * s.dim;
    const float fd = f_add ? __fadd_rn(f[d], f_add[d]) : f[d];
    float v = post[k] * fd;
    for (int i = 0; i < s.mult; ++i) v += comb[i * s.mult + k] * x_in[i * s.dim + d];
    x_out[idx] = v;
  }
}

__global__ void hc_head_kernel(const float* x, const float* mix_raw, const float* scale,
                               const float* base, const float* norm_weight, HcShape s,
                               float* out, const float* mix_partial, int mix_tiles) {
  pdl_wait();  // PDL: everything below reads earlier kernels' results or writes
  pdl_launch_dependents();
  extern __shared__ float ys[];
  __shared__ float mix_shared[kMaxMult];
  mix_raw = gather_mix(mix_raw, mix_partial, mix_tiles, s.mult, mix_shared);
  __shared__ float scratch[32];
  __shared__ float w[kMaxMult];
  const float factor = hc_rms_factor(x, s, scratch);
  if (threadIdx.x < s.mult) {
    w[threadIdx.x] = sigmoidf_(mix_raw[threadIdx.x] * factor * scale[0] + base[threadIdx.x]) + s.hc_eps;
  }
  __syncthreads();
  weighted_stream_norm(x, w, norm_weight, s, ys, scratch, out);
}

// The cluster form of hc_pre (kHead false) and hc_head (kHead true) for 4 streams; see
// the header. One cluster of C blocks; block r owns columns [r * dim / C, +dim / C) of
// the sublayer input, 4 per thread (a float4 of each stream in registers).
constexpr int kClusterMult = 4;

struct HcClusterParams {
  const float* x;
  const float* mix_raw;      // the mixing values, or nullptr with mix_partial
  const float* mix_partial;  // column-tile partial sums (launch_hc_pre_partials)
  int mix_tiles;
  const float* scale;
  const float* base;
  const float* norm_weight;
  HcShape s;
  float* post;
  float* comb;
  float* out;
  int comb_logits_only;  // comb receives the Sinkhorn's input (launch_hc_sinkhorn finishes it)
};

// barrier.cluster in two halves: arrive (release: this thread's shared-memory writes
// become visible to the cluster) and wait (acquire). Called by whole warps.
__device__ __forceinline__ void cluster_arrive() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  __syncwarp();
  asm volatile("barrier.cluster.arrive.release.aligned;" ::: "memory");
#endif
}

__device__ __forceinline__ void cluster_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  __syncwarp();
  asm volatile("barrier.cluster.wait.acquire.aligned;" ::: "memory");
#endif
}

// The value at `local` (this block's shared memory) in block `rank` of the cluster.
template <typename T>
__device__ __forceinline__ T cluster_load(const T* local, int rank) {
  return *cooperative_groups::this_cluster().map_shared_rank(const_cast<T*>(local), rank);
}

// The sum of the cluster's per-warp partials (slots[w] in each block, `warps` per
// block), added in one fixed order: lane l takes slots l, l + 32, ... (block-major),
// then the warp's shuffle tree. Every warp of every block gets the same bits.
template <int C>
__device__ __forceinline__ double cluster_sum(const double* slots, int warps, int lane) {
  double v = 0.0;
  for (int j = lane; j < C * warps; j += 32) v += cluster_load(slots + j % warps, j / warps);
  return warp_sum_double(v);
}

__device__ __forceinline__ double sum_squares(const float4& v) {
  return static_cast<double>(v.x) * v.x + static_cast<double>(v.y) * v.y + static_cast<double>(v.z) * v.z +
         static_cast<double>(v.w) * v.w;
}

// y = sum_h w[h] X_h for one column, in hc_pre_kernel's order and roundings.
__device__ __forceinline__ float weighted_column(const float (&w)[kClusterMult], float x0, float x1, float x2,
                                                 float x3) {
  float y = 0.0f;
  y = __fadd_rn(y, __fmul_rn(w[0], x0));
  y = __fadd_rn(y, __fmul_rn(w[1], x1));
  y = __fadd_rn(y, __fmul_rn(w[2], x2));
  return __fadd_rn(y, __fmul_rn(w[3], x3));
}

// post from the mixing values `mixv` (lane l holds value l, lanes 4..7 write) and the
// RMS factor, as hc_pre_kernel computes it.
__device__ __forceinline__ void cluster_post(const HcClusterParams& p, float mixv, float base_l, float factor,
                                             float scale1, int lane) {
  constexpr int M = kClusterMult;
  if (lane >= M && lane < 2 * M) {
    p.post[lane - M] = 2.0f * sigmoidf_(__fadd_rn(__fmul_rn(__fmul_rn(mixv, factor), scale1), base_l));
  }
}

// Block 0's Sinkhorn warp: comb from the mixing values (as cluster_post), as
// hc_pre_kernel computes it.
template <HcSinkhorn K>
__device__ void cluster_comb(const HcClusterParams& p, float mixv, float base_l, float factor, float scale2,
                             int lane) {
  constexpr int M = kClusterMult;
  if constexpr (K == HcSinkhorn::kShuffle) {
    const int e = lane & 15;
    const float m = __shfl_sync(0xffffffffu, mixv, 2 * M + e);
    const float b = __shfl_sync(0xffffffffu, base_l, 2 * M + e);
    const float c = sinkhorn4_shuffle(__fadd_rn(__fmul_rn(__fmul_rn(m, factor), scale2), b), lane,
                                      p.s.sinkhorn_iters, p.s.hc_eps);
    if (lane < 16) p.comb[e] = c;
  } else {
    float c[16];
#pragma unroll
    for (int e = 0; e < 16; ++e) {
      const float m = __shfl_sync(0xffffffffu, mixv, 2 * M + e);
      const float b = __shfl_sync(0xffffffffu, base_l, 2 * M + e);
      c[e] = __fadd_rn(__fmul_rn(__fmul_rn(m, factor), scale2), b);
    }
    sinkhorn4_registers(c, p.s.sinkhorn_iters, p.s.hc_eps);
#pragma unroll
    for (int e = 0; e < 16; ++e) {
      if (lane == e) p.comb[e] = c[e];
    }
  }
}

// hc_pre's Sinkhorn warp (the last warp of every block; it owns no columns): in block
// 0 it computes comb as soon as the RMS factor is known, having signalled the second
// barrier first (it adds no sum of squares of y), so the rest of the cluster does not
// wait for it until the last barrier. In other blocks it only keeps the barrier count.
template <int C, HcSinkhorn K>
__device__ void cluster_sinkhorn_warp(const HcClusterParams& p, const float* mix_home, const double* ss_x,
                                      int col_warps, float base_l, float scale2, int rank, int lane) {
  cluster_arrive();
  cluster_wait();
  cluster_arrive();
  if (rank == 0) {
    const float mixv = lane < 2 * kClusterMult + kClusterMult * kClusterMult
                           ? (p.mix_partial ? cluster_load(mix_home + lane, (lane % (C * col_warps)) / col_warps)
                                            : p.mix_raw[lane])
                           : 0.0f;
    const float factor = rms_scale(cluster_sum<C>(ss_x, col_warps, lane), static_cast<int64_t>(kClusterMult) * p.s.dim,
                                   p.s.norm_eps);
    if (p.comb_logits_only) {
      const float m = __shfl_sync(0xffffffffu, mixv, 2 * kClusterMult + (lane & 15));
      const float b = __shfl_sync(0xffffffffu, base_l, 2 * kClusterMult + (lane & 15));
      if (lane < 16) p.comb[lane] = __fadd_rn(__fmul_rn(__fmul_rn(m, factor), scale2), b);
    } else {
      cluster_comb<K>(p, mixv, base_l, factor, scale2, lane);
    }
  }
  cluster_wait();
  cluster_arrive();
  cluster_wait();
}

template <int C, bool kHead, HcSinkhorn K>
__global__ void hc_pre_cluster_kernel(HcClusterParams p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  constexpr int M = kClusterMult;
  constexpr int kMix = kHead ? M : (2 + M) * M;
  __shared__ double ss_x[32], ss_y[32];  // per-warp partial sums of squares (column warps)
  __shared__ float mix_home[kMix];       // the mixing values this block's warps gathered
  const int rank = static_cast<int>(cooperative_groups::this_cluster().block_rank());
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int col_warps = (blockDim.x >> 5) - (kHead ? 0 : 1);  // hc_pre: the last warp runs the Sinkhorn
  const int dim = p.s.dim;
  const int cols = dim / C;
  const int col = rank * cols + 4 * threadIdx.x;
  const bool have = 4 * static_cast<int>(threadIdx.x) < cols;
  // Weights (immutable): before the wait.
  float4 nw = make_float4(1.0f, 1.0f, 1.0f, 1.0f);
  if (have && p.norm_weight) nw = *reinterpret_cast<const float4*>(p.norm_weight + col);
  const float scale0 = p.scale[0];
  const float scale1 = kHead ? 0.0f : p.scale[1];
  const float scale2 = kHead ? 0.0f : p.scale[2];
  const float base_l = lane < kMix ? p.base[lane] : 0.0f;
  pdl_wait();  // PDL: everything below reads earlier kernels' results or writes
  pdl_launch_dependents();
  if (!kHead && warp == col_warps) {
    cluster_sinkhorn_warp<C, K>(p, mix_home, ss_x, col_warps, base_l, scale2, rank, lane);
    return;
  }
  float4 xv[M];
#pragma unroll
  for (int h = 0; h < M; ++h) {
    xv[h] = have ? *reinterpret_cast<const float4*>(p.x + static_cast<int64_t>(h) * dim + col)
                 : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
  }
  // Mixing values from the partial sums: row i by column warp i mod (C * col_warps) of
  // the cluster, in the matvec's reduction order (the same bits as launch_matvec).
  if (p.mix_partial) {
    for (int i = rank * col_warps + warp; i < kMix; i += C * col_warps) {
      const float v = tile_reduce_warp(p.mix_partial + static_cast<int64_t>(i) * p.mix_tiles, p.mix_tiles, lane);
      if (lane == 0) mix_home[i] = v;
    }
  }
  double sx = 0.0;
#pragma unroll
  for (int h = 0; h < M; ++h) sx += sum_squares(xv[h]);
  sx = warp_sum_double(sx);
  if (lane == 0) ss_x[warp] = sx;
  cluster_arrive();
  cluster_wait();
  // Lane l < kMix holds mixing value l.
  float mixv = 0.0f;
  if (lane < kMix) {
    mixv = p.mix_partial ? cluster_load(mix_home + lane, (lane % (C * col_warps)) / col_warps) : p.mix_raw[lane];
  }
  const float factor = rms_scale(cluster_sum<C>(ss_x, col_warps, lane), static_cast<int64_t>(M) * dim, p.s.norm_eps);
  // The stream weights (pre, or the head's w) in lanes 0..3, then in every lane.
  float wl;
  if constexpr (kHead) {
    wl = sigmoidf_(mixv * factor * scale0 + base_l) + p.s.hc_eps;
  } else {
    wl = sigmoidf_(__fadd_rn(__fmul_rn(__fmul_rn(mixv, factor), scale0), base_l)) + p.s.hc_eps;
  }
  float w[M];
#pragma unroll
  for (int h = 0; h < M; ++h) w[h] = __shfl_sync(0xffffffffu, wl, h);
  float4 y;
  y.x = weighted_column(w, xv[0].x, xv[1].x, xv[2].x, xv[3].x);
  y.y = weighted_column(w, xv[0].y, xv[1].y, xv[2].y, xv[3].y);
  y.z = weighted_column(w, xv[0].z, xv[1].z, xv[2].z, xv[3].z);
  y.w = weighted_column(w, xv[0].w, xv[1].w, xv[2].w, xv[3].w);
  double sy = have ? sum_squares(y) : 0.0;
  sy = warp_sum_double(sy);
  if (lane == 0) ss_y[warp] = sy;
  cluster_arrive();
  if (!kHead && rank == 0 && warp == 0) cluster_post(p, mixv, base_l, factor, scale1, lane);
  cluster_wait();
  const float f = rms_scale(cluster_sum<C>(ss_y, col_warps, lane), dim, p.s.norm_eps);
  cluster_arrive();  // done reading other blocks' shared memory
  if (have) {
    float4 o;
    o.x = y.x * f * nw.x;
    o.y = y.y * f * nw.y;
    o.z = y.z * f * nw.z;
    o.w = y.w * f * nw.w;
    *reinterpret_cast<float4*>(p.out + col) = o;
  }
  cluster_wait();  // no block leaves while another may still read its shared memory
#endif
}

// launch_hc_sinkhorn: one warp turns the logits in comb into the Sinkhorn's result, in place.
template <HcSinkhorn K>
__global__ void hc_sinkhorn_kernel(float* comb, HcShape s) {
  pdl_wait();  // PDL: everything below reads earlier kernels' results or writes
  pdl_launch_dependents();
  const int lane = threadIdx.x;
  if constexpr (K == HcSinkhorn::kShuffle) {
    const float c = sinkhorn4_shuffle(comb[lane & 15], lane, s.sinkhorn_iters, s.hc_eps);
    __syncwarp();
    if (lane < 16) comb[lane] = c;
  } else {
    float c[16];
#pragma unroll
    for (int e = 0; e < 16; ++e) c[e] = comb[e];
    sinkhorn4_registers(c, s.sinkhorn_iters, s.hc_eps);
    __syncwarp();
#pragma unroll
    for (int e = 0; e < 16; ++e) {
      if (lane == e) comb[e] = c[e];
    }
  }
}

// Host: the cluster kernel of one (size, head, Sinkhorn) choice.
using ClusterKernel = void (*)(HcClusterParams);

template <bool kHead, HcSinkhorn K>
ClusterKernel cluster_kernel_for(int cluster) {
  switch (cluster) {
    case 4: return hc_pre_cluster_kernel<4, kHead, K>;
    case 8: return hc_pre_cluster_kernel<8, kHead, K>;
    case 16: return hc_pre_cluster_kernel<16, kHead, K>;
    default: return nullptr;
  }
}

ClusterKernel cluster_kernel_for(int cluster, bool head, HcSinkhorn sinkhorn) {
  if (head) return cluster_kernel_for<true, HcSinkhorn::kShuffle>(cluster);
  return sinkhorn == HcSinkhorn::kRegisters ? cluster_kernel_for<false, HcSinkhorn::kRegisters>(cluster)
                                            : cluster_kernel_for<false, HcSinkhorn::kShuffle>(cluster);
}

// Threads per block of the cluster kernel for `dim` over `cluster` blocks: the column
// warps, and for hc_pre the Sinkhorn warp (0: the kernel does not apply).
int cluster_threads(int dim, int cluster, bool head) {
  if (cluster <= 0 || dim <= 0 || dim % (4 * cluster) != 0) return 0;
  const int threads = (dim / cluster / 4 + 31) / 32 * 32 + (head ? 0 : 32);
  return threads <= 1024 ? threads : 0;
}

// DS4_CUDA_HC_PRE_CLUSTER: 0, 4, 8 or 16; anything else (or unset): 8.
int default_cluster() {
  static const int value = [] {
    const char* v = std::getenv("DS4_CUDA_HC_PRE_CLUSTER");
    if (v == nullptr) return 8;
    for (int c : {0, 4, 8, 16}) {
      if (std::strcmp(v, std::to_string(c).c_str()) == 0) return c;
    }
    return 8;
  }();
  return value;
}

// Whether the current device runs `kernel` as clusters of `cluster` blocks of `threads`
// (sm_90 or newer, cluster launch, and at least one such cluster resident at a time;
// 16 blocks only where non-portable cluster sizes are allowed). Cached per device.
// refuse: records that a launch of it failed (false from then on).
bool cluster_fits(ClusterKernel kernel, int cluster, int threads, bool refuse = false) {
  static std::mutex mu;
  static std::map<std::tuple<int, uintptr_t, int>, bool> cache;
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess) return false;
  const auto key = std::make_tuple(device, reinterpret_cast<uintptr_t>(kernel), threads);
  std::lock_guard<std::mutex> lock(mu);
  if (refuse) {
    cache[key] = false;
    return false;
  }
  if (auto it = cache.find(key); it != cache.end()) return it->second;
  bool ok = false;
  int major = 0, cluster_launch = 0;
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) == cudaSuccess && major >= 9 &&
      cudaDeviceGetAttribute(&cluster_launch, cudaDevAttrClusterLaunch, device) == cudaSuccess && cluster_launch) {
    bool allowed = true;
    if (cluster > 8) {
      allowed = cudaFuncSetAttribute(kernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1) == cudaSuccess;
    }
    cudaLaunchAttribute attribute[1];
    attribute[0].id = cudaLaunchAttributeClusterDimension;
    attribute[0].val.clusterDim.x = static_cast<unsigned>(cluster);
    attribute[0].val.clusterDim.y = 1;
    attribute[0].val.clusterDim.z = 1;
    cudaLaunchConfig_t config = {};
    config.gridDim = dim3(static_cast<unsigned>(cluster));
    config.blockDim = dim3(static_cast<unsigned>(threads));
    config.attrs = attribute;
    config.numAttrs = 1;
    int clusters = 0;
    const cudaError_t query = allowed ? cudaOccupancyMaxActiveClusters(&clusters, kernel, &config) : cudaSuccess;
    ok = allowed && query == cudaSuccess && clusters > 0;
    if (!allowed || query != cudaSuccess) cudaGetLastError();  // a refused query leaves no error for later launches
  }
  cache.emplace(key, ok);
  return ok;
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

// The cluster size for this launch (0: the single-block kernel).
int pick_cluster(const HcShape& s, const HcPreOptions& o, bool head, const float* x, const float* out,
                 const float* norm_weight) {
  const int cluster = o.cluster < 0 ? default_cluster() : o.cluster;
  if (s.mult != kClusterMult) return 0;
  const int threads = cluster_threads(s.dim, cluster, head);
  if (threads == 0) return 0;
  if (!aligned16(x) || !aligned16(out) || !aligned16(norm_weight)) return 0;
  const ClusterKernel kernel = cluster_kernel_for(cluster, head, o.sinkhorn);
  return kernel && cluster_fits(kernel, cluster, threads) ? cluster : 0;
}

// Launches the cluster kernel (one cluster), with the PDL attribute as launch_kernel.
// False where the launch was refused: the kernel is then marked as not fitting (the
// single-block kernel runs from then on), and stderr says so once.
bool launch_cluster(const HcClusterParams& p, int cluster, bool head, HcSinkhorn sinkhorn, cudaStream_t stream) {
  const ClusterKernel kernel = cluster_kernel_for(cluster, head, sinkhorn);
  cudaLaunchAttribute attribute[2];
  attribute[0].id = cudaLaunchAttributeClusterDimension;
  attribute[0].val.clusterDim.x = static_cast<unsigned>(cluster);
  attribute[0].val.clusterDim.y = 1;
  attribute[0].val.clusterDim.z = 1;
  attribute[1].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute[1].val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t config = {};
  config.gridDim = dim3(static_cast<unsigned>(cluster));
  config.blockDim = dim3(static_cast<unsigned>(cluster_threads(p.s.dim, cluster, head)));
  config.stream = stream;
  config.attrs = attribute;
  config.numAttrs = pdl_enabled() ? 2 : 1;
  const cudaError_t err = cudaLaunchKernelEx(&config, kernel, p);
  if (err == cudaSuccess) return true;
  (void)cudaGetLastError();
  cluster_fits(kernel, cluster, static_cast<int>(config.blockDim.x), true);
  static std::once_flag said;
  std::call_once(said, [&] {
    std::fprintf(stderr, "ds4: CUDA: the %d-block cluster form of hc_pre / hc_head was refused (%s); using the "
                 "single-block kernel\n", cluster, cudaGetErrorName(err));
  });
  return false;
}

// launch_hc_post_mix (see the header). Block (t, y): column tile t of the flattened new
// state, rows [y * rows_per_block, +rows_per_block) of the mixing projection.
constexpr int kPostMixThreads = 256;  // the matvec column-tile kernel's block size

struct HcPostMixParams {
  const float* x_in;
  const float* f;
  const float* f_add;
  const float* post;
  const float* comb;
  HcShape s;
  float* x_out;
  TileWeights w;
  int64_t rows;
  int ns;         // 32-column chunks per mixing row
  int lanes;      // chunks per column tile (lanes per row group)
  int col_tiles;
  float* partial;
};

// The hc_post value of state element (k, d), in the order and roundings of
// hc_post_kernel (one product, then one fused multiply-add per source stream).
// With f_add the sublayer output is f + f_add (one f32 addition).
__device__ __forceinline__ float hc_post_value(const float* x_in, const float* f, const float* f_add,
                                               const float* post, const float* comb, const HcShape& s, int k,
                                               int d) {
  const float fd = f_add ? __fadd_rn(f[d], f_add[d]) : f[d];
  float v = __fmul_rn(post[k], fd);
  for (int i = 0; i < s.mult; ++i) v = __fmaf_rn(comb[i * s.mult + k], x_in[i * s.dim + d], v);
  return v;
}

template <GgmlType T>
__global__ void __launch_bounds__(kPostMixThreads) hc_post_mix_kernel(HcPostMixParams p) {
  __shared__ float4 xs[32 * 8];  // up to 32 chunks of 32 columns
  const int tile = blockIdx.x;
  const int chunk0 = tile * p.lanes;
  const int nc = min(p.ns - chunk0, p.lanes);
  const int group = threadIdx.x / p.lanes;
  const int li = threadIdx.x & (p.lanes - 1);
  const int64_t r = static_cast<int64_t>(blockIdx.y) * (kPostMixThreads / p.lanes) + group;
  const bool have = r < p.rows && li < nc;
  typename Chunk<T>::Raw raw{};
  if (have) tile_load_weights<T>(p.w, r, chunk0 + li, &raw);  // immutable: before the wait
  pdl_wait();  // PDL: everything below reads earlier kernels' results or writes
  pdl_launch_dependents();
  const int64_t col0 = static_cast<int64_t>(chunk0) * 32;
  for (int j = threadIdx.x; j < nc * 32; j += kPostMixThreads) {
    const int idx = static_cast<int>(col0 + j);
    const int k = idx / p.s.dim;
    const int d = idx - k * p.s.dim;
    const float v = hc_post_value(p.x_in, p.f, p.f_add, p.post, p.comb, p.s, k, d);
    tile_store_x(xs, p.lanes, j, v);
    if (blockIdx.y == 0) p.x_out[idx] = v;
  }
  __syncthreads();
  const float acc = tile_row_partial<T>(raw, have, xs, p.lanes, li);
  if (li == 0 && r < p.rows) p.partial[r * p.col_tiles + tile] = acc;
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
  launch_kernel(embed_kernel, (s.dim + 255) / 256, 256, 0, stream, embd, type == GgmlType::F16 ? 1 : 0, token, s, x);
  return cuda_status(cudaGetLastError(), "hc_embed launch");
}

int hc_pre_cluster_size(const HcShape& s, const HcPreOptions& options, const float* x, const float* out) {
  return pick_cluster(s, options, false, x, out, nullptr);
}

namespace {

// hc_pre from mix_raw or from column-tile partial sums (mix_partial, mix_tiles).
Status hc_pre_any(const float* x, const float* mix_raw, const float* mix_partial, int mix_tiles, const float* scale,
                  const float* base, const float* norm_weight, const HcShape& s, float* post, float* comb, float* out,
                  cudaStream_t stream, const HcPreOptions& options, const char* what) {
  DS4_RETURN_IF_ERROR(check_shape(s));
  if ((s.dim * s.mult) % 4 != 0) return Status::Error("hc_pre: state size must be a multiple of 4");
  const int logits_only = options.comb_logits_only ? 1 : 0;
  if (logits_only && s.mult != kClusterMult) {
    return Status::Error("hc_pre: comb_logits_only needs 4 streams, got " + std::to_string(s.mult));
  }
  if (const int cluster = pick_cluster(s, options, false, x, out, norm_weight); cluster > 0) {
    const HcClusterParams p{x, mix_raw, mix_partial, mix_tiles, scale, base, norm_weight, s, post, comb, out,
                            logits_only};
    if (launch_cluster(p, cluster, false, options.sinkhorn, stream)) return Status::Ok();
  }
  launch_kernel(hc_pre_kernel, 1, 1024, s.dim * sizeof(float), stream, x, mix_raw, scale, base, norm_weight, s,
                post, comb, out, mix_partial, mix_tiles, logits_only);
  return cuda_status(cudaGetLastError(), what);
}

}  // namespace

Status launch_hc_pre(const float* x, const float* mix_raw, const float* scale, const float* base,
                     const float* norm_weight, const HcShape& s, float* post, float* comb,
                     float* out, cudaStream_t stream, const HcPreOptions& options) {
  return hc_pre_any(x, mix_raw, nullptr, 0, scale, base, norm_weight, s, post, comb, out, stream, options,
                    "hc_pre launch");
}

Status launch_hc_pre_partials(const float* x, const float* mix_partial, int mix_tiles, const float* scale,
                              const float* base, const float* norm_weight, const HcShape& s, float* post,
                              float* comb, float* out, cudaStream_t stream, const HcPreOptions& options) {
  if (!mix_partial || mix_tiles < 1) return Status::Error("hc_pre: partial sums missing or tile count below 1");
  return hc_pre_any(x, nullptr, mix_partial, mix_tiles, scale, base, norm_weight, s, post, comb, out, stream,
                    options, "hc_pre (partial sums) launch");
}

Status launch_hc_sinkhorn(float* comb, const HcShape& s, cudaStream_t stream, HcSinkhorn sinkhorn) {
  DS4_RETURN_IF_ERROR(check_shape(s));
  if (s.mult != kClusterMult) return Status::Error("hc_sinkhorn: needs 4 streams, got " + std::to_string(s.mult));
  if (sinkhorn == HcSinkhorn::kRegisters) {
    launch_kernel(hc_sinkhorn_kernel<HcSinkhorn::kRegisters>, 1, 32, 0, stream, comb, s);
  } else {
    launch_kernel(hc_sinkhorn_kernel<HcSinkhorn::kShuffle>, 1, 32, 0, stream, comb, s);
  }
  return cuda_status(cudaGetLastError(), "hc_sinkhorn launch");
}

Status launch_hc_post(const float* x_in, const float* f, const float* post, const float* comb,
                      const HcShape& s, float* x_out, cudaStream_t stream, const float* f_add) {
  DS4_RETURN_IF_ERROR(check_shape(s));
  const int n = s.dim * s.mult;
  launch_kernel(hc_post_kernel, (n + 255) / 256, 256, 0, stream, x_in, f, post, comb, s, x_out, f_add);
  return cuda_status(cudaGetLastError(), "hc_post launch");
}

namespace {

// hc_head from mix_raw or from column-tile partial sums (mix_partial, mix_tiles).
Status hc_head_any(const float* x, const float* mix_raw, const float* mix_partial, int mix_tiles, const float* scale,
                   const float* base, const float* norm_weight, const HcShape& s, float* out, cudaStream_t stream,
                   const HcPreOptions& options, const char* what) {
  DS4_RETURN_IF_ERROR(check_shape(s));
  if ((s.dim * s.mult) % 4 != 0) return Status::Error("hc_head: state size must be a multiple of 4");
  if (const int cluster = pick_cluster(s, options, true, x, out, norm_weight); cluster > 0) {
    const HcClusterParams p{x, mix_raw, mix_partial, mix_tiles, scale, base, norm_weight, s, nullptr, nullptr, out, 0};
    if (launch_cluster(p, cluster, true, HcSinkhorn::kShuffle, stream)) return Status::Ok();
  }
  launch_kernel(hc_head_kernel, 1, 1024, s.dim * sizeof(float), stream, x, mix_raw, scale, base, norm_weight, s,
                out, mix_partial, mix_tiles);
  return cuda_status(cudaGetLastError(), what);
}

}  // namespace

Status launch_hc_head(const float* x, const float* mix_raw, const float* scale, const float* base,
                      const float* norm_weight, const HcShape& s, float* out, cudaStream_t stream,
                      const HcPreOptions& options) {
  return hc_head_any(x, mix_raw, nullptr, 0, scale, base, norm_weight, s, out, stream, options, "hc_head launch");
}

Status launch_hc_head_partials(const float* x, const float* mix_partial, int mix_tiles, const float* scale,
                               const float* base, const float* norm_weight, const HcShape& s, float* out,
                               cudaStream_t stream, const HcPreOptions& options) {
  if (!mix_partial || mix_tiles < 1) return Status::Error("hc_head: partial sums missing or tile count below 1");
  return hc_head_any(x, nullptr, mix_partial, mix_tiles, scale, base, norm_weight, s, out, stream, options,
                     "hc_head (partial sums) launch");
}

Result<int> hc_post_mix_tiles(const HcPostMixLaunch& l) {
  const HcShape& s = l.shape;
  DS4_RETURN_IF_ERROR(check_shape(s));
  if (s.dim <= 0) return Status::Error("hc_post_mix: dim must be positive");
  if (!l.x_in || !l.f || !l.post || !l.comb || !l.x_out) {
    return Status::Error("hc_post_mix: a state, sublayer output, post or comb pointer is missing");
  }
  const int64_t n = static_cast<int64_t>(s.dim) * s.mult;
  if (l.x_out < l.x_in + n && l.x_in < l.x_out + n) {
    return Status::Error("hc_post_mix: x_out overlaps x_in (the update cannot run in place)");
  }
  if (!l.mix_fn || l.mix_fn->empty()) return Status::Error("hc_post_mix: no mixing matrix");
  const DeviceMatrix& fn = *l.mix_fn;
  if (fn.type != GgmlType::F32 && fn.type != GgmlType::F16 && fn.type != GgmlType::Q8_0) {
    return Status::Error("hc_post_mix: mixing matrix type " + std::string(ggml_type_name(fn.type)) +
                         " not supported (F32, F16 or Q8_0)");
  }
  if (fn.cols != n) {
    return Status::Error("hc_post_mix: mixing matrix has " + std::to_string(fn.cols) + " columns, the state " +
                         std::to_string(n) + " values");
  }
  if (fn.rows <= 0) return Status::Error("hc_post_mix: mixing matrix has no rows");
  if (!l.mix_partial) return Status::Error("hc_post_mix: no partial-sum workspace");
  MatvecLaunch ml;
  ml.w = &fn;
  ml.x = l.x_out;
  ml.split_workspace = l.mix_partial;
  ml.split_workspace_floats = l.mix_partial_floats;
  ml.tile_partials_only = true;
  ml.tile_chunks_per_lane = 1;
  Result<int> tiles = matvec_tile_columns(ml);
  if (!tiles.ok()) return Status::Error("hc_post_mix: " + tiles.status().message());
  return *tiles;
}

Status launch_hc_post_mix(const HcPostMixLaunch& l, cudaStream_t stream) {
  Result<int> tiles = hc_post_mix_tiles(l);
  if (!tiles.ok()) return tiles.status();
  const DeviceMatrix& fn = *l.mix_fn;
  const int ns = static_cast<int>(fn.cols / 32);
  const int lanes = tile_lanes_for(ns, *tiles);  // the matvec's lanes per row group
  if (lanes == 0) {
    return Status::Error("hc_post_mix: no tile width of 1..32 chunks gives the matvec's " + std::to_string(*tiles) +
                         " column tiles over " + std::to_string(ns) + " chunks");
  }
  const int64_t rows_per_block = kPostMixThreads / lanes;
  const int64_t row_tiles = (fn.rows + rows_per_block - 1) / rows_per_block;
  if (row_tiles > 65535) return Status::Error("hc_post_mix: too many mixing rows");
  HcPostMixParams p{};
  p.x_in = l.x_in;
  p.f = l.f;
  p.f_add = l.f_add;
  p.post = l.post;
  p.comb = l.comb;
  p.s = l.shape;
  p.x_out = l.x_out;
  p.w.data = fn.data;
  p.w.scales = fn.scales;
  p.w.row_bytes = static_cast<int64_t>(fn.data_row_bytes());
  p.w.scales_per_row = fn.scales_per_row();
  p.rows = fn.rows;
  p.ns = ns;
  p.lanes = lanes;
  p.col_tiles = *tiles;
  p.partial = l.mix_partial;
  const dim3 grid(static_cast<unsigned>(*tiles), static_cast<unsigned>(row_tiles));
  switch (fn.type) {
    case GgmlType::F32: launch_kernel(hc_post_mix_kernel<GgmlType::F32>, grid, kPostMixThreads, 0, stream, p); break;
    case GgmlType::F16: launch_kernel(hc_post_mix_kernel<GgmlType::F16>, grid, kPostMixThreads, 0, stream, p); break;
    default: launch_kernel(hc_post_mix_kernel<GgmlType::Q8_0>, grid, kPostMixThreads, 0, stream, p); break;
  }
  return cuda_status(cudaGetLastError(), "hc_post_mix launch");
}

}  // namespace ds4
