#include "cuda/hyper_connections.h"

#include <cuda_fp16.h>

#include <string>

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
                              float* comb, float* out, const float* mix_partial, int mix_tiles) {
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
    const int e = lane & 15, i = e >> 2;
    if (lane < 4) {
      pre[lane] = sigmoidf_(__fadd_rn(__fmul_rn(__fmul_rn(mix_raw[lane], factor), scale[0]), base[lane])) + s.hc_eps;
      post[lane] = 2.0f * sigmoidf_(__fadd_rn(__fmul_rn(__fmul_rn(mix_raw[4 + lane], factor), scale[1]), base[4 + lane]));
    }
    const int k = e & 3;
    // Row (over k) and column (over i) reductions in the CPU reference's order.
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
    (void)i;
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
                               const float* comb, HcShape s, float* x_out) {
  pdl_wait();  // PDL: everything below reads earlier kernels' results or writes
  pdl_launch_dependents();
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

// launch_hc_post_mix (see the header). Block (t, y): column tile t of the flattened new
// state, rows [y * rows_per_block, +rows_per_block) of the mixing projection.
constexpr int kPostMixThreads = 256;  // the matvec column-tile kernel's block size

struct HcPostMixParams {
  const float* x_in;
  const float* f;
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
__device__ __forceinline__ float hc_post_value(const float* x_in, const float* f, const float* post,
                                               const float* comb, const HcShape& s, int k, int d) {
  float v = __fmul_rn(post[k], f[d]);
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
    const float v = hc_post_value(p.x_in, p.f, p.post, p.comb, p.s, k, d);
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

Status launch_hc_pre(const float* x, const float* mix_raw, const float* scale, const float* base,
                     const float* norm_weight, const HcShape& s, float* post, float* comb,
                     float* out, cudaStream_t stream) {
  DS4_RETURN_IF_ERROR(check_shape(s));
  if ((s.dim * s.mult) % 4 != 0) return Status::Error("hc_pre: state size must be a multiple of 4");
  launch_kernel(hc_pre_kernel, 1, 1024, s.dim * sizeof(float), stream, x, mix_raw, scale, base, norm_weight, s,
                post, comb, out, nullptr, 0);
  return cuda_status(cudaGetLastError(), "hc_pre launch");
}

Status launch_hc_pre_partials(const float* x, const float* mix_partial, int mix_tiles, const float* scale,
                              const float* base, const float* norm_weight, const HcShape& s, float* post,
                              float* comb, float* out, cudaStream_t stream) {
  DS4_RETURN_IF_ERROR(check_shape(s));
  if ((s.dim * s.mult) % 4 != 0) return Status::Error("hc_pre: state size must be a multiple of 4");
  if (!mix_partial || mix_tiles < 1) return Status::Error("hc_pre: partial sums missing or tile count below 1");
  launch_kernel(hc_pre_kernel, 1, 1024, s.dim * sizeof(float), stream, x, nullptr, scale, base, norm_weight, s,
                post, comb, out, mix_partial, mix_tiles);
  return cuda_status(cudaGetLastError(), "hc_pre (partial sums) launch");
}

Status launch_hc_post(const float* x_in, const float* f, const float* post, const float* comb,
                      const HcShape& s, float* x_out, cudaStream_t stream) {
  DS4_RETURN_IF_ERROR(check_shape(s));
  const int n = s.dim * s.mult;
  launch_kernel(hc_post_kernel, (n + 255) / 256, 256, 0, stream, x_in, f, post, comb, s, x_out);
  return cuda_status(cudaGetLastError(), "hc_post launch");
}

Status launch_hc_head(const float* x, const float* mix_raw, const float* scale, const float* base,
                      const float* norm_weight, const HcShape& s, float* out, cudaStream_t stream) {
  DS4_RETURN_IF_ERROR(check_shape(s));
  if ((s.dim * s.mult) % 4 != 0) return Status::Error("hc_head: state size must be a multiple of 4");
  launch_kernel(hc_head_kernel, 1, 1024, s.dim * sizeof(float), stream, x, mix_raw, scale, base, norm_weight, s,
                out, nullptr, 0);
  return cuda_status(cudaGetLastError(), "hc_head launch");
}

Status launch_hc_head_partials(const float* x, const float* mix_partial, int mix_tiles, const float* scale,
                               const float* base, const float* norm_weight, const HcShape& s, float* out,
                               cudaStream_t stream) {
  DS4_RETURN_IF_ERROR(check_shape(s));
  if ((s.dim * s.mult) % 4 != 0) return Status::Error("hc_head: state size must be a multiple of 4");
  if (!mix_partial || mix_tiles < 1) return Status::Error("hc_head: partial sums missing or tile count below 1");
  launch_kernel(hc_head_kernel, 1, 1024, s.dim * sizeof(float), stream, x, nullptr, scale, base, norm_weight, s,
                out, mix_partial, mix_tiles);
  return cuda_status(cudaGetLastError(), "hc_head (partial sums) launch");
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
