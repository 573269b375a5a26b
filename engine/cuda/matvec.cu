#include "cuda/matvec.h"

#include <algorithm>
#include <cmath>
#include <mutex>
#include <string>

#include "cuda/cuda_check.h"
#include "cuda/dequant_chunk.cuh"
#include "cuda/iq2xxs_compact_table.h"
#include "cuda/kernel_residency.h"
#include "cuda/launch.h"
#include "cuda/device_math.cuh"

namespace ds4 {
namespace {

using cuda_detail::Chunk;
using cuda_detail::PackedChunk;
using cuda_detail::swiglu;

// MatvecLaunch::int8_activations: IQ2_XXS, Q2_K and Q4_K weights meet activations
// quantized to int8 per 32 values (f32 scale, round to nearest) in dp4a dot products,
// about a third of the instructions per weight of the f32 path. Opt-in (the default
// stays f32): fixtures/README.md §4 keeps 8-bit activation paths opt-in until they are
// measured against the goldens.
template <GgmlType T, bool INT8>
constexpr bool kInt8Activations = INT8 && cuda_detail::kPacksInt8<T>;
// Shared bytes per x vector per 32-element chunk: f32 values, or int8 values and a
// float4 (scale, scaled sums of the two halves, unused).
constexpr int kF32ChunkBytes = 128;
constexpr int kInt8ChunkBytes = 48;

constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;
// Chunks whose loads are issued before any is used, per format (a deeper queue for
// IQ2_XXS measured slower on the H200: its dequantization, not the loads, limits it).
template <GgmlType T>
constexpr int unroll_for() { return 4; }
constexpr int kUnroll = 4;  // host-side planning (lanes per row)
constexpr int kMaxSharedBytes = 96 * 1024;
constexpr int kMaxSplit = 32;
constexpr int kMaxSharedSlots = 32;  // summed slots whose matrices are staged in shared memory

// IQ2_XXS codebook and sign selectors in the compact form of cuda/dequant_chunk.cuh.
__device__ uint32_t g_iq2xxs_sel[cuda_detail::kIq2xxsCompactWords];

// One chunk's weights as floats (the return value is the chunk's factor) or packed int8;
// `sel` is the compact IQ2_XXS table in shared memory (unused by the other types).
// `stride`: see cuda_detail::Iq2xxsCompact (1, or 32 for the per-lane copies).
template <GgmlType T>
__device__ __forceinline__ float dequant_chunk(const typename Chunk<T>::Raw& r, const uint32_t* sel, int stride,
                                               float* w) {
  if constexpr (T == GgmlType::IQ2_XXS) {
    return cuda_detail::Iq2xxsCompact::dequant(r, sel, stride, w);
  } else {
    return Chunk<T>::dequant(r, nullptr, w);
  }
}

template <GgmlType T>
__device__ __forceinline__ void pack_chunk(const typename Chunk<T>::Raw& r, const uint32_t* sel, int stride,
                                           PackedChunk* out) {
  if constexpr (T == GgmlType::IQ2_XXS) {
    cuda_detail::Iq2xxsCompact::pack(r, sel, stride, out);
  } else {
    Chunk<T>::pack(r, nullptr, out);
  }
}

struct MatvecParams {
  const uint8_t* w_data;
  const uint16_t* w_scales;
  const uint8_t* u_data;
  const uint16_t* u_scales;
  int64_t row_bytes;
  int64_t scales_per_row;
  int64_t matrix_rows;
  int64_t cols;
  int64_t n_rows;
  int64_t slot_row_stride;
  const float* x;
  int64_t x_tok_stride;
  int64_t x_slot_stride;
  float* y;
  int64_t y_tok_stride;
  int64_t y_slot_stride;
  int n_tokens;
  int n_slots;
  const int32_t* slot_matrix;
  int fixed_matrix;
  const float* slot_weight;
  float swiglu_limit;
  int sum_slots;
  int accumulate;
  int vectors;          // x vectors per token held in shared memory
  int warps_per_row;    // 1 or kWarps
  int lanes_per_row;    // warps_per_row == 1: lanes sharing one row (power of two)
  int rows_per_warp;    // rows each warp walks, in steps of 32 / lanes_per_row
  int split;            // >1: chunk ranges over blocks, partial sums to `partial`
  int split_chunks;     // chunks per split
  float* partial;       // [split][n_rows]
  const int32_t* enable;
  const float* x_norm_weight;
  float x_norm_eps;
  int x_vec4;           // x (and x_norm_weight) 16-byte aligned with strides of 4 floats
  int sel_lane_offset;  // >= 0: IQ2_XXS selectors copied per bank at this dynamic shared byte offset
  int prefetch;         // Q2_K unpaired: each iteration issues the next one's loads first
};


template <int NT>
__device__ __forceinline__ void dot_chunk(const float* w, float factor, const float* xs, int ns,
                                          int c, int64_t vec_stride, float* acc) {
#pragma unroll
  for (int t = 0; t < NT; ++t) {
    const float4* xv = reinterpret_cast<const float4*>(xs + t * vec_stride) + c;
    float d = 0.0f;
#pragma unroll
    for (int k4 = 0; k4 < 8; ++k4) {
      const float4 xx = xv[k4 * ns];
      d = fmaf(w[4 * k4], xx.x, d);
      d = fmaf(w[4 * k4 + 1], xx.y, d);
      d = fmaf(w[4 * k4 + 2], xx.z, d);
      d = fmaf(w[4 * k4 + 3], xx.w, d);
    }
    acc[t] = fmaf(d, factor, acc[t]);
  }
}

// Gate and up chunks against the same x: each x value is read from shared memory once.
template <int NT>
__device__ __forceinline__ void dot_chunk_paired(const float* w, float factor, const float* wu, float factor_up,
                                                 const float* xs, int ns, int c, int64_t vec_stride, float* acc,
                                                 float* acc_up) {
#pragma unroll
  for (int t = 0; t < NT; ++t) {
    const float4* xv = reinterpret_cast<const float4*>(xs + t * vec_stride) + c;
    float d = 0.0f, du = 0.0f;
#pragma unroll
    for (int k4 = 0; k4 < 8; ++k4) {
      const float4 xx = xv[k4 * ns];
      d = fmaf(w[4 * k4], xx.x, d);
      d = fmaf(w[4 * k4 + 1], xx.y, d);
      d = fmaf(w[4 * k4 + 2], xx.z, d);
      d = fmaf(w[4 * k4 + 3], xx.w, d);
      du = fmaf(wu[4 * k4], xx.x, du);
      du = fmaf(wu[4 * k4 + 1], xx.y, du);
      du = fmaf(wu[4 * k4 + 2], xx.z, du);
      du = fmaf(wu[4 * k4 + 3], xx.w, du);
    }
    acc[t] = fmaf(d, factor, acc[t]);
    acc_up[t] = fmaf(du, factor_up, acc_up[t]);
  }
}

// Int8 layout of one x vector of ns chunks (bytes): [half 0..1][ns][16] quants, then
// [ns] float4 {dx, dx * sum(q_0..15), dx * sum(q_16..31), 0}; lane c reading chunk c
// touches consecutive 16-byte words (no bank conflicts).
template <int NT>
__device__ __forceinline__ void dot_chunk_int8(const PackedChunk& w, const uint8_t* xb, int ns, int c,
                                               int tok_stride_bytes, float* acc) {
#pragma unroll
  for (int t = 0; t < NT; ++t) {
    const uint8_t* b = xb + t * tok_stride_bytes;
    const int4 lo = *reinterpret_cast<const int4*>(b + c * 16);
    const int4 hi = *reinterpret_cast<const int4*>(b + (ns + c) * 16);
    const float4 m = *reinterpret_cast<const float4*>(b + (2 * ns + c) * 16);
    int s0 = __dp4a(w.w[0], lo.x, 0);
    s0 = __dp4a(w.w[1], lo.y, s0);
    s0 = __dp4a(w.w[2], lo.z, s0);
    s0 = __dp4a(w.w[3], lo.w, s0);
    int s1 = __dp4a(w.w[4], hi.x, 0);
    s1 = __dp4a(w.w[5], hi.y, s1);
    s1 = __dp4a(w.w[6], hi.z, s1);
    s1 = __dp4a(w.w[7], hi.w, s1);
    const float v = m.x * (w.a0 * static_cast<float>(s0) + w.a1 * static_cast<float>(s1)) -
                    (w.m0 * m.y + w.m1 * m.z);
    acc[t] += v;
  }
}

// Gate and up packed chunks against the same int8 x (read from shared memory once);
// each sum is formed exactly as dot_chunk_int8 forms it.
template <int NT>
__device__ __forceinline__ void dot_chunk_int8_paired(const PackedChunk& w, const PackedChunk& wu,
                                                      const uint8_t* xb, int ns, int c, int tok_stride_bytes,
                                                      float* acc, float* acc_up) {
#pragma unroll
  for (int t = 0; t < NT; ++t) {
    const uint8_t* b = xb + t * tok_stride_bytes;
    const int4 lo = *reinterpret_cast<const int4*>(b + c * 16);
    const int4 hi = *reinterpret_cast<const int4*>(b + (ns + c) * 16);
    const float4 m = *reinterpret_cast<const float4*>(b + (2 * ns + c) * 16);
    int s0 = __dp4a(w.w[0], lo.x, 0);
    s0 = __dp4a(w.w[1], lo.y, s0);
    s0 = __dp4a(w.w[2], lo.z, s0);
    s0 = __dp4a(w.w[3], lo.w, s0);
    int s1 = __dp4a(w.w[4], hi.x, 0);
    s1 = __dp4a(w.w[5], hi.y, s1);
    s1 = __dp4a(w.w[6], hi.z, s1);
    s1 = __dp4a(w.w[7], hi.w, s1);
    int u0 = __dp4a(wu.w[0], lo.x, 0);
    u0 = __dp4a(wu.w[1], lo.y, u0);
    u0 = __dp4a(wu.w[2], lo.z, u0);
    u0 = __dp4a(wu.w[3], lo.w, u0);
    int u1 = __dp4a(wu.w[4], hi.x, 0);
    u1 = __dp4a(wu.w[5], hi.y, u1);
    u1 = __dp4a(wu.w[6], hi.z, u1);
    u1 = __dp4a(wu.w[7], hi.w, u1);
    acc[t] += m.x * (w.a0 * static_cast<float>(s0) + w.a1 * static_cast<float>(s1)) - (w.m0 * m.y + w.m1 * m.z);
    acc_up[t] +=
        m.x * (wu.a0 * static_cast<float>(u0) + wu.a1 * static_cast<float>(u1)) - (wu.m0 * m.y + wu.m1 * m.z);
  }
}

// Quantizes x chunk c of one vector into the int8 layout above: one warp, one element
// per lane. dx = amax / 127, q = round-to-nearest-even(x * (127 / amax)), in IEEE
// single precision whatever the compiler flags (matvec_round_activations mirrors it).
__device__ __forceinline__ void stage_chunk_int8(float v, int lane, int ns, int c, uint8_t* xb) {
  float amax = fabsf(v);
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, off));
  const float dx = __fdiv_rn(amax, 127.0f);
  const float inv = amax > 0.0f ? __fdiv_rn(127.0f, amax) : 0.0f;
  const int q = __float2int_rn(__fmul_rn(v, inv));
  xb[((lane >> 4) * ns + c) * 16 + (lane & 15)] = static_cast<uint8_t>(static_cast<int8_t>(q));
  int sum = q;
#pragma unroll
  for (int off = 8; off > 0; off >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, off);
  const int sum_hi = __shfl_sync(0xffffffffu, sum, 16);
  if (lane == 0) {
    *reinterpret_cast<float4*>(xb + (2 * ns + c) * 16) =
        make_float4(dx, dx * static_cast<float>(sum), dx * static_cast<float>(sum_hi), 0.0f);
  }
}

// Chunk groups (one chunk; four for Q2_K) whose weight lines each thread asks L2 for
// before pdl_wait(), so that DRAM streams the first rows while the previous kernel
// drains (programmatic dependent launch, cuda/launch.h).
constexpr int kPdlPrefetchGroups = 8;

// L2 prefetch of the first weight lines thread `threadIdx.x` loads, in the chunk order
// of matvec_kernel (its first row steps). Only launches whose matrices are known
// before the wait: a slot's matrix id (slot_matrix) may be written by the previous
// kernel. Reads nothing from device memory; weights are immutable.
template <GgmlType T, bool PAIRED>
__device__ __forceinline__ void prefetch_first_weights(const MatvecParams& p) {
  if (p.slot_matrix || p.sum_slots) return;
  constexpr bool kGroup4 = T == GgmlType::Q2_K;
  const int split_index = p.split > 1 ? static_cast<int>(blockIdx.x % p.split) : 0;
  const int tile = p.split > 1 ? static_cast<int>(blockIdx.x / p.split) : static_cast<int>(blockIdx.x);
  const int ns_all = static_cast<int>(p.cols >> 5);
  const int chunk0 = split_index * p.split_chunks;
  const int ns = min(ns_all - chunk0, p.split_chunks);
  const int warp = threadIdx.x >> 5;
  const int lane = threadIdx.x & 31;
  const int lpr = p.warps_per_row == 1 ? p.lanes_per_row : 32;
  const int sub = lane & (lpr - 1);
  const int chunk_start = (p.warps_per_row == 1 ? sub : lane + 32 * warp) * (kGroup4 ? 4 : 1);
  const int chunk_step = p.warps_per_row == 1 ? lpr : 32 * p.warps_per_row;
  const int group_step = kGroup4 ? unroll_for<T>() * chunk_step : chunk_step;
  const int rows_per_step = 32 / lpr;
  const int steps = p.warps_per_row == 1 ? p.rows_per_warp : 1;
  const int slot = blockIdx.y;
  int budget = kPdlPrefetchGroups;
  for (int st = 0; st < steps && budget > 0; ++st) {
    const int64_t r = p.warps_per_row == 1
                          ? ((static_cast<int64_t>(tile) * steps + st) * kWarps + warp) * rows_per_step + lane / lpr
                          : tile;
    if (r >= p.n_rows) return;
    const int64_t grow = static_cast<int64_t>(p.fixed_matrix) * p.matrix_rows + slot * p.slot_row_stride + r;
    for (int c = chunk_start; c < ns && budget > 0; c += group_step, --budget) {
      const int64_t chunk = chunk0 + c;
      const int64_t offset = chunk * p.row_bytes / ns_all;
      prefetch_l2(p.w_data + grow * p.row_bytes + offset);
      if constexpr (PAIRED) prefetch_l2(p.u_data + grow * p.row_bytes + offset);
      if (p.w_scales) {
        const int64_t s = grow * p.scales_per_row + chunk * p.scales_per_row / ns_all;
        prefetch_l2(p.w_scales + s);
        if constexpr (PAIRED) prefetch_l2(p.u_scales + s);
      }
    }
  }
}

// Blocks per multiprocessor the compiler must leave registers for (85 registers a
// thread for 3): the single-token decode kernels whose loads need more warps in
// flight and that fit without spilling (checked with ptxas -v).
template <GgmlType T, int NT, bool PAIRED>
constexpr int kMinBlocks =
    NT == 1 && (T == GgmlType::IQ2_XXS || (!PAIRED && (T == GgmlType::Q2_K || T == GgmlType::Q8_0))) ? 3 : 1;

template <GgmlType T, int NT, bool PAIRED, bool INT8>
__global__ void __launch_bounds__(kThreads, (kMinBlocks<T, NT, PAIRED>)) matvec_kernel(MatvecParams p) {
  using C = Chunk<T>;
  constexpr int kUnroll = unroll_for<T>();
  extern __shared__ float4 shared_x4[];
  float* xs = reinterpret_cast<float*>(shared_x4);
  __shared__ uint32_t grid[T == GgmlType::IQ2_XXS ? cuda_detail::kIq2xxsCompactWords : 1];
  // Before pdl_wait() (programmatic dependent launch): only immutable data is read
  // (the IQ2_XXS table, weights) and only shared memory written.
  // IQ2_XXS selectors: the compact table, or one copy per bank (each warp copies
  // entries, lane L writing word 32 e + L; the entry loads are uniform).
  const uint32_t* sel = grid;
  int sel_stride = 1;
  if constexpr (T == GgmlType::IQ2_XXS) {
    if (p.sel_lane_offset >= 0) {
      uint32_t* copies = reinterpret_cast<uint32_t*>(reinterpret_cast<uint8_t*>(shared_x4) + p.sel_lane_offset);
      const int ln = threadIdx.x & 31;
#pragma unroll 8
      for (int e = threadIdx.x >> 5; e < cuda_detail::kIq2xxsCompactWords; e += kWarps) {
        copies[e * 32 + ln] = g_iq2xxs_sel[e];
      }
      sel = copies + ln;
      sel_stride = 32;
    } else {
      for (int i = threadIdx.x; i < cuda_detail::kIq2xxsCompactWords; i += kThreads) grid[i] = g_iq2xxs_sel[i];
    }
  }
  prefetch_first_weights<T, PAIRED>(p);
  pdl_wait();  // PDL: everything below reads earlier kernels' results or writes
  pdl_launch_dependents();
  if (p.enable && *p.enable == 0) return;
  __shared__ float partial[kWarps][2 * NT];

  const int split_index = p.split > 1 ? static_cast<int>(blockIdx.x % p.split) : 0;
  const int tile = p.split > 1 ? static_cast<int>(blockIdx.x / p.split) : static_cast<int>(blockIdx.x);
  const int ns_all = static_cast<int>(p.cols >> 5);
  const int chunk0 = split_index * p.split_chunks;
  const int ns = min(ns_all - chunk0, p.split_chunks);   // chunks held in shared memory
  // Q2_K: each lane takes four consecutive chunks (one load of their shared quant bytes,
  // Chunk::load_group), so chunk c of x is stored at position (c % 4) * ns / 4 + c / 4:
  // the lanes of a warp then read consecutive positions. Other types: position c.
  constexpr bool kGroup4 = T == GgmlType::Q2_K;
  const auto x_position = [ns](int c) { return kGroup4 ? (c & 3) * (ns >> 2) + (c >> 2) : c; };
  const int64_t cols_here = static_cast<int64_t>(ns) * 32;
  const int tok0 = blockIdx.z * NT;
  const int slot = p.sum_slots ? 0 : blockIdx.y;
  const int per_token = p.vectors * static_cast<int>(cols_here);

  float x_scale = 1.0f;
  if (p.x_norm_weight) {  // one token, one vector, whole row (checked on the host)
    __shared__ double red[32];
    double ss = 0.0;
    for (int i = threadIdx.x; i < p.cols; i += kThreads) ss += static_cast<double>(p.x[i]) * p.x[i];
    ss = cuda_detail::block_sum_double(ss, red);
    x_scale = cuda_detail::rms_scale(ss, p.cols, p.x_norm_eps);
  }
  constexpr bool kInt8 = kInt8Activations<T, INT8>;
  uint8_t* xq = reinterpret_cast<uint8_t*>(shared_x4);
  const int vec_bytes = ns * kInt8ChunkBytes;
  if constexpr (kInt8) {
    // Each warp quantizes chunks; the loads of kStageBatch chunks are issued before
    // any is used (one round trip per batch instead of one per chunk).
    constexpr int kStageBatch = 16;
    const int w_id = threadIdx.x >> 5, ln = threadIdx.x & 31;
    const int tasks = NT * p.vectors * ns;
    for (int base = w_id; base < tasks; base += kStageBatch * kWarps) {
      float val[kStageBatch];
#pragma unroll
      for (int j = 0; j < kStageBatch; ++j) {
        const int task = base + j * kWarps;
        val[j] = 0.0f;
        if (task < tasks) {
          const int tv = task / ns, c = task - tv * ns;
          const int t = tv / p.vectors, v = tv - t * p.vectors;
          const int tok = tok0 + t;
          const int x_slot = p.sum_slots ? v : slot;
          const int col = (chunk0 + c) * 32 + ln;
          if (tok < p.n_tokens) val[j] = p.x[tok * p.x_tok_stride + x_slot * p.x_slot_stride + col];
          if (p.x_norm_weight) val[j] = val[j] * x_scale * p.x_norm_weight[col];
        }
      }
#pragma unroll
      for (int j = 0; j < kStageBatch; ++j) {
        const int task = base + j * kWarps;  // warp-uniform: the shuffles see the whole warp
        if (task < tasks) {
          const int tv = task / ns, c = task - tv * ns;
          stage_chunk_int8(val[j], ln, ns, x_position(c), xq + tv * vec_bytes);
        }
      }
    }
  } else {
    if (p.x_vec4) {
      // 16-byte loads, kStageBatch of them issued per thread before any store.
      // Element i = 32 s + k of a vector goes to float4 slot (k / 4) * ns + s, so the
      // four elements of one load land in one slot.
      constexpr int kStageBatch = 8;
      const int ch = static_cast<int>(cols_here);
      const int n4 = ch >> 2;
      const int total4 = NT * p.vectors * n4;
      for (int base = threadIdx.x; base < total4; base += kStageBatch * kThreads) {
        float4 val[kStageBatch];
#pragma unroll
        for (int j = 0; j < kStageBatch; ++j) {
          const int q = base + j * kThreads;
          val[j] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
          if (q < total4) {
            const int tv = q / n4, i = 4 * (q - tv * n4);
            const int t = tv / p.vectors, v = tv - t * p.vectors;
            const int tok = tok0 + t;
            const int x_slot = p.sum_slots ? v : slot;
            if (tok < p.n_tokens) {
              val[j] = *reinterpret_cast<const float4*>(p.x + tok * p.x_tok_stride + x_slot * p.x_slot_stride +
                                                        chunk0 * 32 + i);
            }
            if (p.x_norm_weight) {
              const float4 g = *reinterpret_cast<const float4*>(p.x_norm_weight + i);
              val[j].x = val[j].x * x_scale * g.x;
              val[j].y = val[j].y * x_scale * g.y;
              val[j].z = val[j].z * x_scale * g.z;
              val[j].w = val[j].w * x_scale * g.w;
            }
          }
        }
#pragma unroll
        for (int j = 0; j < kStageBatch; ++j) {
          const int q = base + j * kThreads;
          if (q < total4) {
            const int tv = q / n4, i = 4 * (q - tv * n4);
            const int s = i >> 5, k = i & 31;
            shared_x4[tv * (ch >> 2) + (k >> 2) * ns + x_position(s)] = val[j];
          }
        }
      }
    } else {
      // 32-bit index math: this prologue runs in every block.
      const int ch = static_cast<int>(cols_here);
      for (int t = 0; t < NT; ++t) {
        const int tok = tok0 + t;
        for (int v = 0; v < p.vectors; ++v) {
          const int x_slot = p.sum_slots ? v : slot;
          float* dst = xs + (t * p.vectors + v) * ch;
          const float* src = tok < p.n_tokens ? p.x + tok * p.x_tok_stride + x_slot * p.x_slot_stride + chunk0 * 32
                                              : nullptr;
          for (int i = threadIdx.x; i < ch; i += kThreads) {
            const int s = i >> 5, k = i & 31;
            float v = src ? src[i] : 0.0f;
            if (p.x_norm_weight) v = v * x_scale * p.x_norm_weight[i];
            dst[(((k >> 2) * ns + x_position(s)) << 2) + (k & 3)] = v;
          }
        }
      }
    }
  }
  // Summed slots: the slots' matrices in shared memory, so the chunk loop's weight
  // addresses do not wait on a global load.
  __shared__ int32_t slot_matrices[kMaxSharedSlots];
  const bool slots_shared = p.sum_slots && p.slot_matrix && p.n_slots <= kMaxSharedSlots;
  if (slots_shared) {
    for (int i = threadIdx.x; i < p.n_slots; i += kThreads) slot_matrices[i] = p.slot_matrix[i];
  }
  __syncthreads();

  const int warp = threadIdx.x >> 5;
  const int lane = threadIdx.x & 31;
  const int lpr = p.warps_per_row == 1 ? p.lanes_per_row : 32;
  const int sub = lane & (lpr - 1);
  const int chunk_start = (p.warps_per_row == 1 ? sub : lane + 32 * warp) * (kGroup4 ? 4 : 1);
  const int chunk_step = p.warps_per_row == 1 ? lpr : 32 * p.warps_per_row;
  const int rows_per_step = 32 / lpr;
  const int slots_here = p.sum_slots ? p.n_slots : 1;
  const int steps = p.warps_per_row == 1 ? p.rows_per_warp : 1;
  const int items = slots_here * ns;  // (slot, chunk) pairs of one row
  const int ns_shift = (ns & (ns - 1)) == 0 ? __ffs(ns) - 1 : -1;  // item -> slot without a division

  for (int st = 0; st < steps; ++st) {
    int64_t r;
    if (p.warps_per_row == 1) {
      r = ((static_cast<int64_t>(tile) * steps + st) * kWarps + warp) * rows_per_step + lane / lpr;
    } else {
      r = tile;
    }
    const bool row_ok = r < p.n_rows;
    float acc[NT];
    float acc_up[NT];
#pragma unroll
    for (int t = 0; t < NT; ++t) acc[t] = acc_up[t] = 0.0f;

    if (row_ok) {
      // One slot per block (every launch but sum_slots): the row's pointers once, so
      // the chunk loop does no division or 64-bit index math.
      const uint8_t* w_row = nullptr;
      const uint16_t* w_sc = nullptr;
      const uint8_t* u_row = nullptr;
      const uint16_t* u_sc = nullptr;
      if (!p.sum_slots) {
        const int matrix = p.slot_matrix ? p.slot_matrix[slot] : p.fixed_matrix;
        const int64_t grow = matrix * p.matrix_rows + slot * p.slot_row_stride + r;
        w_row = p.w_data + grow * p.row_bytes;
        w_sc = p.w_scales ? p.w_scales + grow * p.scales_per_row : nullptr;
        if constexpr (PAIRED) {
          u_row = p.u_data + grow * p.row_bytes;
          u_sc = p.u_scales ? p.u_scales + grow * p.scales_per_row : nullptr;
        }
      }
      // Loads of the items it0, it0 + chunk_step, ... (or it0..it0+3 for Q2_K) into
      // registers, then their products; cc[u] < 0: no item.
      const auto load_items = [&](int it0, typename C::Raw* raw, typename C::Raw* raw_up, int* vsel, int* cc) {
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
          const int it = it0 + u * chunk_step;
          cc[u] = -1;
          if constexpr (kGroup4) {
            continue;  // loaded below, four consecutive chunks at once
          }
          if (it < items && !p.sum_slots) {
            raw[u] = C::load(w_row, w_sc, chunk0 + it);
            if constexpr (PAIRED) raw_up[u] = C::load(u_row, u_sc, chunk0 + it);
            vsel[u] = 0;
            cc[u] = it;
          } else if (it < items) {
            const int si = ns_shift >= 0 ? it >> ns_shift : it / ns;
            const int c = it - si * ns;
            const int s = p.sum_slots ? si : slot;
            const int matrix = slots_shared ? slot_matrices[s] : p.slot_matrix ? p.slot_matrix[s] : p.fixed_matrix;
            const int64_t grow = matrix * p.matrix_rows + s * p.slot_row_stride + r;
            const uint16_t* wsc = p.w_scales ? p.w_scales + grow * p.scales_per_row : nullptr;
            raw[u] = C::load(p.w_data + grow * p.row_bytes, wsc, chunk0 + c);
            if constexpr (PAIRED) {
              const uint16_t* usc = p.u_scales ? p.u_scales + grow * p.scales_per_row : nullptr;
              raw_up[u] = C::load(p.u_data + grow * p.row_bytes, usc, chunk0 + c);
            }
            vsel[u] = p.sum_slots && p.x_slot_stride ? si : 0;
            cc[u] = c;
          }
        }
        if constexpr (kGroup4) {
          // Items it0..it0+3 (it0 a multiple of 4; a row's chunks per slot are a
          // multiple of 8, so the four share a slot and a block half).
          if (it0 < items) {
            int c = it0, vs = 0;
            const uint8_t* wr = w_row;
            const uint8_t* ur = u_row;
            if (p.sum_slots) {
              const int si = ns_shift >= 0 ? it0 >> ns_shift : it0 / ns;
              c = it0 - si * ns;
              const int matrix = slots_shared ? slot_matrices[si] : p.slot_matrix ? p.slot_matrix[si] : p.fixed_matrix;
              const int64_t grow = matrix * p.matrix_rows + si * p.slot_row_stride + r;
              wr = p.w_data + grow * p.row_bytes;
              if constexpr (PAIRED) ur = p.u_data + grow * p.row_bytes;
              vs = p.x_slot_stride ? si : 0;
            }
            C::load_group(wr, chunk0 + c, raw);
            if constexpr (PAIRED) C::load_group(ur, chunk0 + c, raw_up);
#pragma unroll
            for (int u = 0; u < kUnroll; ++u) {
              vsel[u] = vs;
              cc[u] = c + u;
            }
          }
        }
      };
      const auto use_items = [&](const typename C::Raw* raw, const typename C::Raw* raw_up, const int* vsel,
                                 const int* cc) {
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
          if (cc[u] < 0) continue;
          if constexpr (kInt8) {
            const uint8_t* xb = xq + vsel[u] * vec_bytes;
            const int tok_stride = p.vectors * vec_bytes;
            PackedChunk pk;
            pack_chunk<T>(raw[u], sel, sel_stride, &pk);
            if constexpr (PAIRED) {
              PackedChunk pu;
              pack_chunk<T>(raw_up[u], sel, sel_stride, &pu);
              dot_chunk_int8_paired<NT>(pk, pu, xb, ns, x_position(cc[u]), tok_stride, acc, acc_up);
            } else {
              dot_chunk_int8<NT>(pk, xb, ns, x_position(cc[u]), tok_stride, acc);
            }
          } else {
            const float* xv = xs + vsel[u] * cols_here;
            float w[32];
            const float f = dequant_chunk<T>(raw[u], sel, sel_stride, w);
            if constexpr (PAIRED) {
              float wu[32];
              const float fu = dequant_chunk<T>(raw_up[u], sel, sel_stride, wu);
              dot_chunk_paired<NT>(w, f, wu, fu, xv, ns, x_position(cc[u]), per_token, acc, acc_up);
            } else {
              dot_chunk<NT>(w, f, xv, ns, x_position(cc[u]), per_token, acc);
            }
          }
        }
      };
      bool done = false;
      if constexpr (kGroup4 && !PAIRED) {
        if (p.prefetch) {
          // The next items' loads are issued before this iteration's products. Carried
          // from one iteration to the next: one half block (quants, d/dmin, the four
          // chunks' scales), not four copies of it.
          struct Group {
            uint32_t q[8];
            uint32_t dd;
            uint32_t sc[kUnroll];
            int vsel, c;  // c < 0: no items
          };
          const auto load_group = [&](int it0, Group* g) {
            typename C::Raw raw[kUnroll];
            int vsel[kUnroll], cc[kUnroll];
            load_items(it0, raw, nullptr, vsel, cc);
#pragma unroll
            for (int i = 0; i < 8; ++i) g->q[i] = raw[0].q[i];
            g->dd = raw[0].dd;
#pragma unroll
            for (int u = 0; u < kUnroll; ++u) g->sc[u] = raw[u].sc;
            g->vsel = vsel[0];
            g->c = cc[0];
          };
          Group cur, next;
          load_group(chunk_start, &cur);
          for (int it0 = chunk_start; it0 < items; it0 += kUnroll * chunk_step) {
            load_group(it0 + kUnroll * chunk_step, &next);
            typename C::Raw raw[kUnroll];
            int vsel[kUnroll], cc[kUnroll];
#pragma unroll
            for (int u = 0; u < kUnroll; ++u) {
#pragma unroll
              for (int i = 0; i < 8; ++i) raw[u].q[i] = cur.q[i];
              raw[u].dd = cur.dd;
              raw[u].sc = cur.sc[u];
              raw[u].jj = u;
              vsel[u] = cur.vsel;
              cc[u] = cur.c < 0 ? -1 : cur.c + u;
            }
            use_items(raw, nullptr, vsel, cc);
            cur = next;
          }
          done = true;
        }
      }
      if (!done) {
        for (int it0 = chunk_start; it0 < items; it0 += kUnroll * chunk_step) {
          typename C::Raw raw[kUnroll];
          typename C::Raw raw_up[PAIRED ? kUnroll : 1];
          int vsel[kUnroll];  // x vector of each item
          int cc[kUnroll];
          load_items(it0, raw, raw_up, vsel, cc);
          use_items(raw, raw_up, vsel, cc);
        }
      }
    }
#pragma unroll
    for (int t = 0; t < NT; ++t) {
      for (int off = lpr >> 1; off > 0; off >>= 1) {
        acc[t] += __shfl_xor_sync(0xffffffffu, acc[t], off);
        if constexpr (PAIRED) acc_up[t] += __shfl_xor_sync(0xffffffffu, acc_up[t], off);
      }
    }
    bool writer = sub == 0;
    if (p.warps_per_row != 1) {
      if (lane == 0) {
#pragma unroll
        for (int t = 0; t < NT; ++t) {
          partial[warp][t] = acc[t];
          partial[warp][NT + t] = acc_up[t];
        }
      }
      __syncthreads();
#pragma unroll
      for (int t = 0; t < NT; ++t) {
        float a = 0.0f, b = 0.0f;
        for (int wi = 0; wi < kWarps; ++wi) {
          a += partial[wi][t];
          b += partial[wi][NT + t];
        }
        acc[t] = a;
        acc_up[t] = b;
      }
      writer = threadIdx.x == 0;
    }
    if (writer && row_ok) {
      if (p.split > 1) {
        p.partial[split_index * p.n_rows + r] = acc[0];
        continue;
      }
#pragma unroll
      for (int t = 0; t < NT; ++t) {
        const int tok = tok0 + t;
        if (tok >= p.n_tokens) break;
        float v = acc[t];
        if constexpr (PAIRED) {
          const float weight = p.slot_weight ? p.slot_weight[slot] : 1.0f;
          v = swiglu(acc[t], acc_up[t], p.swiglu_limit) * weight;
        }
        float* out = p.y + tok * p.y_tok_stride + (p.sum_slots ? 0 : slot * p.y_slot_stride) + r;
        *out = p.accumulate ? *out + v : v;
      }
    }
  }
}

// y[r] (+)= sum over splits of partial[k][r], in split order.
__global__ void split_reduce_kernel(const float* partial, int split, int64_t n_rows, float* y,
                                    int accumulate) {
  pdl_wait();  // PDL: everything below reads earlier kernels' results or writes
  pdl_launch_dependents();
  for (int64_t r = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; r < n_rows;
       r += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float v = 0.0f;
    for (int k = 0; k < split; ++k) v += partial[k * n_rows + r];
    y[r] = accumulate ? y[r] + v : v;
  }
}


// MatvecLaunch::tile_kernel: block (x = column tile, y = row tile, z = slot) computes
// rows [y * rows_per_block, +rows_per_block) over chunks [x * tile_chunks, +tile_chunks).
// Lane group g (p.lanes consecutive lanes) owns one row; lane i of it takes chunks
// i, i + lanes, ... (K of them, all loaded before any is used). x element k of local
// chunk c sits in float4 slot (k / 4) * tile_chunks + c: the lanes of a group read
// consecutive slots. Sums: per chunk as dot_chunk forms them, chunks in lane order,
// then a fixed shuffle tree over the group.
struct TileParams {
  const uint8_t* w_data;
  const uint16_t* w_scales;
  int64_t row_bytes;
  int64_t scales_per_row;
  int64_t matrix_rows;
  int64_t n_rows;
  int64_t slot_row_stride;
  const int32_t* slot_matrix;
  int fixed_matrix;
  const float* x;
  int64_t x_slot_stride;
  float* y;
  int64_t y_slot_stride;
  int accumulate;
  int ns;              // chunks per row
  int lanes;           // lanes per row group (power of two, 1..32)
  int tile_chunks;     // lanes * K
  int rows_per_block;  // kThreads / lanes
  int col_tiles;
  float* partial;      // col_tiles > 1 or partials_only: [slot][row][col_tile]
  int partials_only;
  const int32_t* enable;
  const float* x_norm_weight;
  float x_norm_eps;
  int64_t cols;
};

template <GgmlType T, int K>
__global__ void __launch_bounds__(kThreads) matvec_tile_kernel(TileParams p) {
  using C = Chunk<T>;
  extern __shared__ float4 shared_x4[];
  const int slot = blockIdx.z;
  const int col_tile = blockIdx.x;
  const int chunk0 = col_tile * p.tile_chunks;
  const int nc = min(p.ns - chunk0, p.tile_chunks);
  const int group = threadIdx.x / p.lanes;
  const int li = threadIdx.x & (p.lanes - 1);
  const int64_t r = static_cast<int64_t>(blockIdx.y) * p.rows_per_block + group;
  const bool row_ok = r < p.n_rows;
  typename C::Raw raw[K];
  const auto load_weights = [&](int matrix) {
    const int64_t grow = matrix * p.matrix_rows + slot * p.slot_row_stride + r;
    const uint8_t* w_row = p.w_data + grow * p.row_bytes;
    const uint16_t* w_sc = p.w_scales ? p.w_scales + grow * p.scales_per_row : nullptr;
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int c = li + k * p.lanes;
      if (c < nc) raw[k] = C::load(w_row, w_sc, chunk0 + c);
    }
  };
  // A fixed matrix's weights (immutable) are loaded before pdl_wait(): with
  // programmatic dependent launch they stream in while the previous kernel drains.
  // A slot's matrix id may come from the previous kernel: loaded after the wait.
  const bool early = row_ok && !p.slot_matrix;
  if (early) load_weights(p.fixed_matrix);
  pdl_wait();  // PDL: everything below reads earlier kernels' results or writes
  pdl_launch_dependents();
  if (p.enable && *p.enable == 0) return;
  const float* x = p.x + slot * p.x_slot_stride;
  float x_scale = 1.0f;
  if (p.x_norm_weight) {  // one slot (checked on the host)
    __shared__ double red[32];
    double ss = 0.0;
    for (int64_t i = threadIdx.x; i < p.cols; i += kThreads) ss += static_cast<double>(x[i]) * x[i];
    ss = cuda_detail::block_sum_double(ss, red);
    x_scale = cuda_detail::rms_scale(ss, p.cols, p.x_norm_eps);
  }
  for (int i = threadIdx.x; i < nc * 8; i += kThreads) {
    const int c = i >> 3, j = i & 7;
    const int col = (chunk0 + c) * 32 + 4 * j;
    float4 v = make_float4(x[col], x[col + 1], x[col + 2], x[col + 3]);
    if (p.x_norm_weight) {
      const float* g = p.x_norm_weight + col;
      v.x = v.x * x_scale * g[0];
      v.y = v.y * x_scale * g[1];
      v.z = v.z * x_scale * g[2];
      v.w = v.w * x_scale * g[3];
    }
    shared_x4[j * p.tile_chunks + c] = v;
  }
  __syncthreads();

  float acc = 0.0f;
  if (row_ok) {
    if (!early) load_weights(p.slot_matrix[slot]);
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int c = li + k * p.lanes;
      if (c < nc) {
        float w[32];
        const float factor = C::dequant(raw[k], nullptr, w);
        const float4* xv = shared_x4 + c;
        float d = 0.0f;
#pragma unroll
        for (int k4 = 0; k4 < 8; ++k4) {
          const float4 xx = xv[k4 * p.tile_chunks];
          d = fmaf(w[4 * k4], xx.x, d);
          d = fmaf(w[4 * k4 + 1], xx.y, d);
          d = fmaf(w[4 * k4 + 2], xx.z, d);
          d = fmaf(w[4 * k4 + 3], xx.w, d);
        }
        acc = fmaf(d, factor, acc);
      }
    }
  }
  for (int off = p.lanes >> 1; off > 0; off >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, off);
  if (li == 0 && r < p.n_rows) {
    if (p.col_tiles > 1 || p.partials_only) {
      p.partial[(slot * p.n_rows + r) * p.col_tiles + col_tile] = acc;
    } else {
      float* out = p.y + slot * p.y_slot_stride + r;
      *out = p.accumulate ? *out + acc : acc;
    }
  }
}

// y[slot][r] (+)= sum over tiles of partial[slot][r][tile]: one warp per output, lane l
// adding tiles l, l + 32, ... in order, then a fixed shuffle tree (deterministic).
__global__ void tile_reduce_kernel(const float* partial, int col_tiles, int64_t n_rows, int n_slots, float* y,
                                   int64_t y_slot_stride, int accumulate, const int32_t* enable) {
  pdl_wait();  // PDL: everything below reads earlier kernels' results or writes
  pdl_launch_dependents();
  if (enable && *enable == 0) return;
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * (kThreads / 32) + (threadIdx.x >> 5);
  const int lane = threadIdx.x & 31;
  if (idx >= n_rows * n_slots) return;  // warp-uniform
  const float* src = partial + idx * col_tiles;
  float v = 0.0f;
  for (int k = lane; k < col_tiles; k += 32) v += src[k];
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  if (lane == 0) {
    const int64_t slot = idx / n_rows, r = idx - slot * n_rows;
    float* out = y + slot * y_slot_stride + r;
    *out = accumulate ? *out + v : v;
  }
}

using TileFn = void (*)(TileParams);

// Largest K (chunks per lane) each type's raw chunks fit in registers for.
int tile_max_k(GgmlType type) {
  return type == GgmlType::F32 ? 2 : type == GgmlType::F16 ? 4 : type == GgmlType::Q8_0 ? 8 : 0;
}

template <GgmlType T>
TileFn pick_tile(int k) {
  switch (k) {
    case 1: return matvec_tile_kernel<T, 1>;
    case 2: return matvec_tile_kernel<T, 2>;
    case 4: return matvec_tile_kernel<T, 4>;
    default: return matvec_tile_kernel<T, 8>;
  }
}

TileFn pick_tile(GgmlType type, int k) {
  switch (type) {
    case GgmlType::F32: return k <= 1 ? matvec_tile_kernel<GgmlType::F32, 1> : matvec_tile_kernel<GgmlType::F32, 2>;
    case GgmlType::F16:
      return k <= 1 ? matvec_tile_kernel<GgmlType::F16, 1>
             : k == 2 ? matvec_tile_kernel<GgmlType::F16, 2>
                      : matvec_tile_kernel<GgmlType::F16, 4>;
    case GgmlType::Q8_0: return pick_tile<GgmlType::Q8_0>(k);
    default: return nullptr;
  }
}

// The column-tile plan of a launch (MatvecLaunch::tile_kernel).
struct TilePlan {
  int k = 1;
  int lanes = 32;
  int col_tiles = 1;
  int64_t row_tiles = 1;
};

// Chunks per lane (K) from the work per thread of one full wave (2 blocks on each of 132
// multiprocessors), at most a quarter of the row; lanes per row group: of the powers of
// two from the largest whose K chunks fit in the row down to 4, the one keeping the
// most multiprocessors busy (up to all 132), the larger on ties, among those whose
// partial sums fit in the caller's workspace; K doubles while none does. False when the
// partial sums need more workspace than the caller gave even at the largest K.
// k_fixed > 0: that K only (MatvecLaunch::tile_chunks_per_lane).
bool plan_tile(GgmlType type, int64_t ns, int64_t n_rows, int n_slots, int64_t workspace_floats, int k_fixed,
               TilePlan* plan) {
  constexpr int64_t kWaveThreads = 2 * 132 * kThreads;
  constexpr int64_t kSms = 132;
  int k_max = tile_max_k(type);
  const int64_t items = ns * n_rows * n_slots;
  int k = 1;
  while (k < k_max && items >= 2 * k * kWaveThreads) k *= 2;
  while (k > 1 && 4 * k > ns) k /= 2;
  if (k_fixed > 0) k = k_max = k_fixed;
  for (; k <= k_max; k *= 2) {
    TilePlan best;
    int64_t best_busy = -1;
    int top = 1;
    while (top < 32 && 2 * top * k <= ns) top *= 2;
    for (int lanes = top; lanes >= std::min(top, 4); lanes /= 2) {
      const int64_t tile_chunks = static_cast<int64_t>(lanes) * k;
      const int64_t col_tiles = (ns + tile_chunks - 1) / tile_chunks;
      const int64_t row_tiles = (n_rows + kThreads / lanes - 1) / (kThreads / lanes);
      const int64_t busy = std::min(kSms, col_tiles * row_tiles * n_slots);
      const bool fits = col_tiles == 1 || col_tiles * n_rows * n_slots <= workspace_floats;
      if (fits && busy > best_busy) {  // ties keep the larger group (fewer partial sums)
        best_busy = busy;
        best.k = k;
        best.lanes = lanes;
        best.col_tiles = static_cast<int>(col_tiles);
        best.row_tiles = row_tiles;
      }
    }
    if (best_busy >= 0) {
      *plan = best;
      return true;
    }
  }
  return false;
}

using KernelFn = void (*)(MatvecParams);

template <GgmlType T, bool INT8>
KernelFn pick_kernel(int nt, bool paired) {
  switch (nt) {
    case 1: return paired ? matvec_kernel<T, 1, true, INT8> : matvec_kernel<T, 1, false, INT8>;
    case 2: return paired ? matvec_kernel<T, 2, true, INT8> : matvec_kernel<T, 2, false, INT8>;
    case 4: return paired ? matvec_kernel<T, 4, true, INT8> : matvec_kernel<T, 4, false, INT8>;
    default: return paired ? matvec_kernel<T, 8, true, INT8> : matvec_kernel<T, 8, false, INT8>;
  }
}

// int8: only for the types that have it (matvec_int8_capable); ignored otherwise.
KernelFn pick_kernel(GgmlType type, int nt, bool paired, bool int8) {
  switch (type) {
    case GgmlType::F32: return pick_kernel<GgmlType::F32, false>(nt, paired);
    case GgmlType::F16: return pick_kernel<GgmlType::F16, false>(nt, paired);
    case GgmlType::Q8_0: return pick_kernel<GgmlType::Q8_0, false>(nt, paired);
    case GgmlType::IQ2_XXS:
      return int8 ? pick_kernel<GgmlType::IQ2_XXS, true>(nt, paired) : pick_kernel<GgmlType::IQ2_XXS, false>(nt, paired);
    case GgmlType::Q2_K:
      return int8 ? pick_kernel<GgmlType::Q2_K, true>(nt, paired) : pick_kernel<GgmlType::Q2_K, false>(nt, paired);
    case GgmlType::Q4_K:
      return int8 ? pick_kernel<GgmlType::Q4_K, true>(nt, paired) : pick_kernel<GgmlType::Q4_K, false>(nt, paired);
    default: return nullptr;
  }
}

Status init_once() {
  uint32_t table[cuda_detail::kIq2xxsCompactWords];
  DS4_RETURN_IF_ERROR(build_iq2xxs_compact_table(table));
  DS4_CUDA_TRY(cudaMemcpyToSymbol(g_iq2xxs_sel, table, sizeof(table)));
  const GgmlType types[] = {GgmlType::F32, GgmlType::F16, GgmlType::Q8_0,
                            GgmlType::IQ2_XXS, GgmlType::Q2_K, GgmlType::Q4_K};
  for (GgmlType t : types) {
    for (int nt : {1, 2, 4, 8}) {
      for (bool paired : {false, true}) {
        for (bool int8 : {false, true}) {
          DS4_CUDA_TRY(cudaFuncSetAttribute(pick_kernel(t, nt, paired, int8),
                                            cudaFuncAttributeMaxDynamicSharedMemorySize,
                                            kMaxSharedBytes));
        }
      }
    }
  }
  return Status::Ok();
}

int pow2_at_least(int64_t v, int cap) {
  int p = 1;
  while (p < v && p < cap) p *= 2;
  return p;
}

// Whether launch `l` runs the column-tile kernel, and its plan.
bool tile_plan_for(const MatvecLaunch& l, TilePlan* plan) {
  constexpr int64_t kTileAutoItems = int64_t{1} << 18;
  const DeviceMatrix& w = *l.w;
  const bool applies = l.tile_kernel >= 0 && tile_max_k(w.type) > 0 && l.n_tokens == 1 && !l.w_up && !l.sum_slots &&
                       l.lanes_per_row == 0 && l.n_slots >= 1 && l.n_slots <= 65535;
  const int64_t n_rows = l.n_rows < 0 ? w.rows : l.n_rows;
  const int64_t ns = w.cols / 32;
  const int64_t items = n_rows * ns * l.n_slots;
  if (!applies || n_rows <= 0 || (l.tile_kernel == 0 && !l.tile_partials_only && items > kTileAutoItems)) return false;
  const int64_t workspace = l.split_workspace ? l.split_workspace_floats : 0;
  const int k_fixed = l.tile_chunks_per_lane;
  if (k_fixed != 0 && (k_fixed < 0 || k_fixed > tile_max_k(w.type) || (k_fixed & (k_fixed - 1)) != 0)) return false;
  if (!plan_tile(w.type, ns, n_rows, l.n_slots, workspace, k_fixed, plan) || plan->row_tiles > 65535) return false;
  if (l.tile_partials_only && int64_t{plan->col_tiles} * n_rows * l.n_slots > workspace) return false;
  return true;
}

Status launch_tile(const MatvecLaunch& l, const MatvecParams& p, const TilePlan& plan, cudaStream_t stream) {
  TileParams t{};
  t.w_data = p.w_data;
  t.w_scales = p.w_scales;
  t.row_bytes = p.row_bytes;
  t.scales_per_row = p.scales_per_row;
  t.matrix_rows = p.matrix_rows;
  t.n_rows = p.n_rows;
  t.slot_row_stride = p.slot_row_stride;
  t.slot_matrix = p.slot_matrix;
  t.fixed_matrix = p.fixed_matrix;
  t.x = p.x;
  t.x_slot_stride = p.x_slot_stride;
  t.y = p.y;
  t.y_slot_stride = p.y_slot_stride;
  t.accumulate = p.accumulate;
  t.ns = static_cast<int>(p.cols / 32);
  t.lanes = plan.lanes;
  t.tile_chunks = plan.lanes * plan.k;
  t.rows_per_block = kThreads / plan.lanes;
  t.col_tiles = plan.col_tiles;
  t.partials_only = l.tile_partials_only ? 1 : 0;
  t.partial = plan.col_tiles > 1 || t.partials_only ? l.split_workspace : nullptr;
  t.enable = p.enable;
  t.x_norm_weight = p.x_norm_weight;
  t.x_norm_eps = p.x_norm_eps;
  t.cols = p.cols;
  const size_t shared = static_cast<size_t>(t.tile_chunks) * kF32ChunkBytes;
  const dim3 grid(static_cast<unsigned>(plan.col_tiles), static_cast<unsigned>(plan.row_tiles),
                  static_cast<unsigned>(p.n_slots));
  launch_kernel(pick_tile(l.w->type, plan.k), grid, kThreads, shared, stream, t);
  DS4_RETURN_IF_ERROR(cuda_status(cudaGetLastError(), "matvec column-tile launch"));
  if (plan.col_tiles > 1 && !t.partials_only) {
    const int64_t outputs = p.n_rows * p.n_slots;
    const int64_t warps_per_block = kThreads / 32;
    const unsigned blocks = static_cast<unsigned>((outputs + warps_per_block - 1) / warps_per_block);
    launch_kernel(tile_reduce_kernel, blocks, kThreads, 0, stream, t.partial, plan.col_tiles, p.n_rows, p.n_slots,
                  p.y, p.y_slot_stride, p.accumulate, p.enable);
    DS4_RETURN_IF_ERROR(cuda_status(cudaGetLastError(), "matvec column-tile reduce launch"));
  }
  return Status::Ok();
}

}  // namespace

Status matvec_init() {
  static std::once_flag once;
  static Status status;
  std::call_once(once, [] { status = init_once(); });
  return status;
}

Result<int> matvec_tile_columns(const MatvecLaunch& l) {
  if (!l.w) return Status::Error("matvec_tile_columns: no weight matrix");
  TilePlan plan;
  if (!tile_plan_for(l, &plan)) {
    return Status::Error("matvec_tile_columns: the launch cannot use column tiles (" +
                         std::string(ggml_type_name(l.w->type)) + ", " + std::to_string(l.n_tokens) +
                         " tokens, workspace " + std::to_string(l.split_workspace_floats) + " floats)");
  }
  return plan.col_tiles;
}

bool matvec_int8_capable(GgmlType type) {
  return type == GgmlType::IQ2_XXS || type == GgmlType::Q2_K || type == GgmlType::Q4_K;
}

void matvec_round_activations(const float* x, int64_t n, float* out) {
  for (int64_t c = 0; c + 32 <= n; c += 32) {
    float amax = 0.0f;
    for (int k = 0; k < 32; ++k) amax = std::max(amax, std::fabs(x[c + k]));
    const float dx = amax / 127.0f;
    const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
    for (int k = 0; k < 32; ++k) {
      const volatile float scaled = x[c + k] * inv;  // one rounding, as on the GPU
      out[c + k] = dx * std::nearbyint(scaled);
    }
  }
}

Status launch_matvec(const MatvecLaunch& l, cudaStream_t stream) {
  DS4_RETURN_IF_ERROR(matvec_init());
  const DeviceMatrix& w = *l.w;
  if (!device_matrix_supported(w.type, w.cols)) {
    return Status::Error("matvec: unsupported weight type " + std::string(ggml_type_name(w.type)) +
                         " with " + std::to_string(w.cols) + " columns");
  }
  if (l.w_up && (l.w_up->type != w.type || l.w_up->cols != w.cols || l.w_up->rows != w.rows)) {
    return Status::Error("matvec: gate and up matrices differ in type or shape");
  }
  if (l.slot_matrix && l.n_tokens != 1) {
    return Status::Error("matvec: per-slot matrices need exactly one token");
  }
  const int64_t n_rows = l.n_rows < 0 ? w.rows : l.n_rows;
  if (n_rows == 0 || l.n_tokens == 0) return Status::Ok();
  const int vectors = l.sum_slots && l.x_slot_stride ? l.n_slots : 1;
  const int64_t ns = w.cols / 32;
  const int grid_y = l.sum_slots ? 1 : l.n_slots;
  constexpr int64_t kTargetCtas = 2 * 132;

  MatvecParams p{};
  p.w_data = w.data;
  p.w_scales = w.scales;
  p.u_data = l.w_up ? l.w_up->data : nullptr;
  p.u_scales = l.w_up ? l.w_up->scales : nullptr;
  p.row_bytes = static_cast<int64_t>(w.data_row_bytes());
  p.scales_per_row = w.scales_per_row();
  p.matrix_rows = w.rows;
  p.cols = w.cols;
  p.n_rows = n_rows;
  p.slot_row_stride = l.slot_row_stride;
  p.x = l.x;
  p.x_tok_stride = l.x_tok_stride;
  p.x_slot_stride = l.x_slot_stride;
  p.y = l.y;
  p.y_tok_stride = l.y_tok_stride;
  p.y_slot_stride = l.y_slot_stride;
  p.n_tokens = l.n_tokens;
  p.n_slots = l.n_slots;
  p.slot_matrix = l.slot_matrix;
  p.fixed_matrix = l.fixed_matrix;
  p.slot_weight = l.slot_weight;
  p.swiglu_limit = l.swiglu_limit;
  p.sum_slots = l.sum_slots ? 1 : 0;
  p.accumulate = l.accumulate ? 1 : 0;
  p.vectors = vectors;
  p.enable = l.enable;
  p.x_norm_weight = l.x_norm_weight;
  p.x_norm_eps = l.x_norm_eps;
  const auto aligned16 = [](const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; };
  p.x_vec4 = aligned16(l.x) && l.x_tok_stride % 4 == 0 && l.x_slot_stride % 4 == 0 &&
             (!l.x_norm_weight || aligned16(l.x_norm_weight));
  if (l.x_norm_weight && (l.n_tokens != 1 || l.n_slots != 1 || l.sum_slots)) {
    return Status::Error("matvec: normalising x on load needs one token and one slot");
  }

  // Column tiles (MatvecLaunch::tile_kernel) for one-token launches of the plain types.
  if (l.tile_chunks_per_lane != 0 && tile_max_k(w.type) > 0 &&
      (l.tile_chunks_per_lane < 0 || l.tile_chunks_per_lane > tile_max_k(w.type) ||
       (l.tile_chunks_per_lane & (l.tile_chunks_per_lane - 1)) != 0)) {
    return Status::Error("matvec: tile_chunks_per_lane " + std::to_string(l.tile_chunks_per_lane) +
                         " is not a power of two from 1 to " + std::to_string(tile_max_k(w.type)) + " for " +
                         std::string(ggml_type_name(w.type)));
  }
  TilePlan plan;
  if (tile_plan_for(l, &plan)) return launch_tile(l, p, plan, stream);
  if (l.tile_partials_only) {
    return Status::Error("matvec: tile_partials_only set, but the launch cannot use column tiles (" +
                         std::string(ggml_type_name(w.type)) + ", " + std::to_string(l.n_tokens) +
                         " tokens, or workspace of " + std::to_string(l.split_workspace_floats) +
                         " floats too small)");
  }

  // Row mapping: a whole block per row when rows are few and long; otherwise warps
  // (or groups of lanes, for short rows) per row.
  const int64_t items = (l.sum_slots ? l.n_slots : 1) * ns;
  if (l.lanes_per_row != 0) {
    if (l.lanes_per_row < 1 || l.lanes_per_row > 32 || (l.lanes_per_row & (l.lanes_per_row - 1)) != 0) {
      return Status::Error("matvec: lanes_per_row " + std::to_string(l.lanes_per_row) +
                           " is not a power of two from 1 to 32");
    }
    p.warps_per_row = 1;
    p.lanes_per_row = l.lanes_per_row;
  } else if (n_rows * grid_y < 132 && items >= 256) {
    p.warps_per_row = kWarps;
    p.lanes_per_row = 32;
  } else {
    p.warps_per_row = 1;
    p.lanes_per_row = pow2_at_least((items + kUnroll - 1) / kUnroll, 32);
  }
  // Split long rows over blocks when there are too few blocks (one token, plain launch).
  p.split = 1;
  p.split_chunks = static_cast<int>(ns);
  const int64_t rows_per_cta_min =
      p.warps_per_row == 1 ? static_cast<int64_t>(kWarps) * (32 / p.lanes_per_row) : 1;
  const int64_t tiles_min = (n_rows + rows_per_cta_min - 1) / rows_per_cta_min;
  // Only launches that would leave at least half of the multiprocessors idle split: the
  // reduction launch costs more than it gains above that (F16 1024x4096, 128 blocks:
  // 16 % of read bandwidth split three ways against 29 % unsplit on the H200).
  constexpr int64_t kSplitBelowCtas = 132 / 2;
  if (l.split_workspace && !l.x_norm_weight && l.n_tokens == 1 && l.n_slots == 1 && !l.w_up && !l.sum_slots &&
      tiles_min <= kSplitBelowCtas) {
    const int64_t lanes = p.warps_per_row == 1 ? p.lanes_per_row : 32 * kWarps;
    // At least one chunk per lane in every split (a block's fixed costs, staging x and
    // one round trip, shrink with its share of the row).
    const int64_t max_split = std::max<int64_t>(1, ns / lanes);
    int64_t split = std::min<int64_t>({(kTargetCtas + tiles_min - 1) / tiles_min, max_split, kMaxSplit});
    while (split > 1 && split * n_rows > l.split_workspace_floats) --split;
    if (split > 1) {
      p.split = static_cast<int>(split);
      // A multiple of 4 chunks per split (Q2_K lanes take chunks in fours).
      p.split_chunks = static_cast<int>((ns + split - 1) / split + 3) / 4 * 4;
      p.split = static_cast<int>((ns + p.split_chunks - 1) / p.split_chunks);
      p.partial = l.split_workspace;
    }
  }
  const bool int8 = l.int8_activations && matvec_int8_capable(w.type);
  const int64_t chunk_bytes = int8 ? kInt8ChunkBytes : kF32ChunkBytes;
  const int64_t bytes_per_token = static_cast<int64_t>(vectors) * p.split_chunks * chunk_bytes;
  if (bytes_per_token > kMaxSharedBytes) {
    return Status::Error("matvec: " + std::to_string(w.cols) + " columns x " +
                         std::to_string(vectors) + " vectors do not fit in shared memory");
  }
  int nt = 8;
  while (nt > 1 && (nt > l.n_tokens * 2 - 1 || nt * bytes_per_token > kMaxSharedBytes)) nt /= 2;
  if (nt > l.n_tokens) nt = std::max(1, nt / 2);
  const int grid_z = (l.n_tokens + nt - 1) / nt;
  KernelFn fn = pick_kernel(w.type, nt, l.w_up != nullptr, int8);
  size_t shared = static_cast<size_t>(nt * bytes_per_token);
  p.sel_lane_offset = -1;
  p.prefetch = l.prefetch_next && !l.w_up ? 1 : 0;
  if (l.iq2xxs_lane_tables && w.type == GgmlType::IQ2_XXS) {
    constexpr size_t kLaneTableBytes = size_t{cuda_detail::kIq2xxsCompactWords} * 32 * sizeof(uint32_t);
    const size_t offset = (shared + 15) / 16 * 16;
    if (offset + kLaneTableBytes <= static_cast<size_t>(kMaxSharedBytes)) {
      p.sel_lane_offset = static_cast<int>(offset);
      shared = offset + kLaneTableBytes;
    }
  }
  int64_t tiles;
  if (p.warps_per_row == 1) {
    // As many blocks as fit on the GPU at once (one wave: no second, mostly idle wave),
    // each walking an equal number of row steps; every block stages x once.
    auto res = kernel_residency(reinterpret_cast<const void*>(fn), kThreads, shared);
    DS4_RETURN_IF_ERROR(res.status());
    const int64_t capacity = static_cast<int64_t>(res->blocks_per_sm) * res->multiprocessors;
    const int64_t rows_per_pass = rows_per_cta_min;
    const int64_t tiles_one = (n_rows + rows_per_pass - 1) / rows_per_pass;
    const int64_t blocks_x = std::max<int64_t>(1, capacity / (static_cast<int64_t>(grid_y) * grid_z));
    p.rows_per_warp = static_cast<int>(std::clamp<int64_t>((tiles_one + blocks_x - 1) / blocks_x, 1, 64));
    tiles = (n_rows + rows_per_pass * p.rows_per_warp - 1) / (rows_per_pass * p.rows_per_warp);
  } else {
    p.rows_per_warp = 1;
    tiles = n_rows;
  }
  launch_kernel(fn, dim3(static_cast<unsigned>(tiles * p.split), grid_y, grid_z), kThreads, shared, stream, p);
  DS4_RETURN_IF_ERROR(cuda_status(cudaGetLastError(), "matvec launch"));
  if (p.split > 1) {
    const unsigned blocks = static_cast<unsigned>(std::min<int64_t>((n_rows + 255) / 256, 1024));
    launch_kernel(split_reduce_kernel, blocks, 256, 0, stream, p.partial, p.split, n_rows, l.y, l.accumulate ? 1 : 0);
    DS4_RETURN_IF_ERROR(cuda_status(cudaGetLastError(), "matvec split reduce launch"));
  }
  return Status::Ok();
}

}  // namespace ds4
