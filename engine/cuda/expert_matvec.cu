#include "cuda/expert_matvec.h"

#include <algorithm>
#include <cstdint>
#include <mutex>
#include <string>

#include "cuda/cuda_check.h"
#include "cuda/dequant_chunk.cuh"
#include "cuda/device_math.cuh"
#include "cuda/device_limits.h"
#include "cuda/int8_digits.cuh"
#include "cuda/iq2xxs_compact_table.h"
#include "cuda/kernel_residency.h"
#include "cuda/launch.h"
#include "cuda/mma.cuh"
#include "cuda/relaxed_capture.h"
#include "cuda/router_select.cuh"

namespace ds4 {
namespace {

using cuda_detail::mma_s8;
using cuda_detail::mma_s8_zero;

using cuda_detail::Chunk;
using cuda_detail::kReduceScatterShift;
using cuda_detail::swiglu;
using cuda_detail::warp_reduce_scatter;
using cuda_detail::Iq2xxsCompact;
using cuda_detail::PackedChunk;
using Iq2Chunk = Chunk<GgmlType::IQ2_XXS>;
using Q2kChunk = Chunk<GgmlType::Q2_K>;

constexpr int kTableWords = cuda_detail::kIq2xxsCompactWords;
constexpr int kLaneTableBytes = kTableWords * 32 * static_cast<int>(sizeof(uint32_t));
constexpr int kMaxThreads = 512;       // gate+up threads per block (the register budget: 128 per thread)
constexpr int kDownMaxThreads = 384;   // down: 12 warps (6 experts x 2048 columns), 170 registers per thread
constexpr int kMaxUsed = 32;
constexpr int kMaxRowsets = 8;         // named barriers 1..8 (0 is __syncthreads)
constexpr int kColsPerWarp = 1024;     // 32 lanes x one 32-column chunk each
constexpr int kMaxGateUpGroups = 8;    // gate+up cols <= 8192
constexpr int kMaxPartialBytes = 2 * (kMaxThreads / 32) * 16 * static_cast<int>(sizeof(float));

// The compact IQ2_XXS selector table of cuda/dequant_chunk.cuh (Iq2xxsCompact).
__device__ uint32_t g_selectors[kTableWords];


// Element k of 32 consecutive f32 values (16-byte aligned) into registers.
__device__ __forceinline__ void load_x_chunk(const float* src, float (&x)[32]) {
  const float4* p = reinterpret_cast<const float4*>(src);
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    const float4 v = p[i];
    x[4 * i] = v.x;
    x[4 * i + 1] = v.y;
    x[4 * i + 2] = v.z;
    x[4 * i + 3] = v.w;
  }
}

// One IQ2_XXS chunk's product with the lane's x: the decoder's weights against x in
// order, times the chunk's factor.
__device__ __forceinline__ float iq2_chunk_dot(const Iq2Chunk::Raw& r, const uint32_t* sel, int stride,
                                               const float (&x)[32]) {
  float w[32];
  const float factor = Iq2xxsCompact::dequant(r, sel, stride, w);
  float d = 0.0f;
#pragma unroll
  for (int k = 0; k < 32; ++k) d = fmaf(w[k], x[k], d);
  return d * factor;
}

// One Q2_K chunk's product: sum_k (a q_k - m) x_k per 16-element half, formed as
// a * sum(q_k x_k) - m * sum(x_k) with the halves' x sums computed once per lane.
__device__ __forceinline__ float q2k_chunk_dot(const Q2kChunk::Raw& r, const float (&x)[32], float x_lo,
                                               float x_hi) {
  PackedChunk pk;
  Q2kChunk::pack(r, nullptr, &pk);
  float s[2] = {0.0f, 0.0f};
#pragma unroll
  for (int i = 0; i < 8; ++i) {
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      s[i >> 2] = fmaf(cuda_detail::byte_to_float(static_cast<uint32_t>(pk.w[i]), j), x[4 * i + j], s[i >> 2]);
    }
  }
  return fmaf(pk.a0, s[0], pk.a1 * s[1]) - fmaf(pk.m0, x_lo, pk.m1 * x_hi);
}

// Barrier of one row set (named barrier rowset + 1; barrier 0 is __syncthreads): row sets
// do not wait for each other, so their load phases overlap.
__device__ __forceinline__ void rowset_barrier(int rowset, int threads) {
  asm volatile("bar.sync %0, %1;" ::"r"(rowset + 1), "r"(threads) : "memory");
}

// Gate+up. Block: `rowsets` sets of `groups` warps; warp `group` of a set owns column
// chunks [32 group, 32 group + 32), lane L chunk 32 group + L. A set takes batches of R
// consecutive output rows (one slot: rows is a multiple of R) and every lane computes
// its chunk's gate and up products for them; per batch the set's warps write their sums
// to shared memory (double-buffered: one barrier of the set per batch) and the set's
// first warp adds the groups in order and applies the SwiGLU. PREFETCH: the next batch's
// weights are loaded before this batch's products.
struct GateUpParams {
  const uint8_t* g_data;
  const uint16_t* g_scales;
  const uint8_t* u_data;
  const uint16_t* u_scales;
  int64_t row_bytes;
  int64_t scales_per_row;
  int rows;       // per expert
  const float* x;
  const int32_t* ids;
  const float* weights;
  int n_used;
  float limit;
  float* y;
  int groups;
  int rowsets;
  int batches;    // n_used * rows / R
  int iters;      // batches per row set
  int partial_offset;  // bytes into dynamic shared memory
};

template <int R>
struct GateUpBatch {
  Iq2Chunk::Raw g[R], u[R];
  int slot, r0;
};

template <int R, bool LANE_TABLES, bool PREFETCH>
__global__ void __launch_bounds__(kMaxThreads) expert_gate_up_kernel(GateUpParams p) {
  constexpr int P = 2 * R;
  extern __shared__ float4 dynamic4[];
  uint8_t* dynamic = reinterpret_cast<uint8_t*>(dynamic4);
  __shared__ uint32_t compact[LANE_TABLES ? 1 : kTableWords];
  __shared__ int32_t s_ids[kMaxUsed];
  __shared__ float s_weights[kMaxUsed];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int n_warps = blockDim.x >> 5;
  const int group = warp % p.groups, rowset = warp / p.groups;

  const uint32_t* sel;
  int stride;
  if constexpr (LANE_TABLES) {
    uint32_t* copies = reinterpret_cast<uint32_t*>(dynamic);
    for (int e = warp; e < kTableWords; e += n_warps) copies[e * 32 + lane] = g_selectors[e];
    sel = copies + lane;
    stride = 32;
  } else {
    for (int i = threadIdx.x; i < kTableWords; i += blockDim.x) compact[i] = g_selectors[i];
    sel = compact;
    stride = 1;
  }
  pdl_wait();  // the table is immutable; ids, weights and x come from earlier kernels
  for (int i = threadIdx.x; i < p.n_used; i += blockDim.x) {
    s_ids[i] = p.ids[i];
    s_weights[i] = p.weights ? p.weights[i] : 1.0f;
  }
  float* partial = reinterpret_cast<float*>(dynamic + p.partial_offset);  // [2][rowsets][groups][P]
  const int chunk = group * 32 + lane;
  float x[32];
  load_x_chunk(p.x + chunk * 32, x);
  __syncthreads();

  const int workers = gridDim.x * p.rowsets;
  const int worker = blockIdx.x * p.rowsets + rowset;
  const auto fetch = [&](int batch, GateUpBatch<R>* b) {
    if (batch >= p.batches) return;
    const int q0 = batch * R;
    b->slot = q0 / p.rows;
    b->r0 = q0 - b->slot * p.rows;
    const int64_t grow0 = static_cast<int64_t>(s_ids[b->slot]) * p.rows + b->r0;
#pragma unroll
    for (int j = 0; j < R; ++j) {
      const int64_t grow = grow0 + j;
      b->g[j] = Iq2Chunk::load(p.g_data + grow * p.row_bytes, p.g_scales + grow * p.scales_per_row, chunk);
      b->u[j] = Iq2Chunk::load(p.u_data + grow * p.row_bytes, p.u_scales + grow * p.scales_per_row, chunk);
    }
  };
  GateUpBatch<R> ahead;  // PREFETCH: the next batch's loads in flight
  if constexpr (PREFETCH) fetch(worker, &ahead);
  for (int it = 0; it < p.iters; ++it) {
    const int batch = worker + it * workers;
    const bool active = batch < p.batches;
    GateUpBatch<R> cur;
    if constexpr (PREFETCH) {
      cur = ahead;
      fetch(batch + workers, &ahead);
    } else {
      fetch(batch, &cur);
    }
    float acc[P];
    if (active) {
#pragma unroll
      for (int j = 0; j < R; ++j) {
        acc[j] = iq2_chunk_dot(cur.g[j], sel, stride, x);
        acc[R + j] = iq2_chunk_dot(cur.u[j], sel, stride, x);
      }
    } else {
#pragma unroll
      for (int j = 0; j < P; ++j) acc[j] = 0.0f;
    }
    const float sum = warp_reduce_scatter<P>(acc, lane);
    const int buf = it & 1;
    float* sets = partial + buf * p.rowsets * p.groups * P;
    if ((lane & ((32 / P) - 1)) == 0) sets[(rowset * p.groups + group) * P + (lane >> kReduceScatterShift<P>)] = sum;
    rowset_barrier(rowset, p.groups * 32);
    if (group == 0 && lane < R && active) {
      const float* mine = sets + rowset * p.groups * P;
      float gv = 0.0f, uv = 0.0f;
      for (int w = 0; w < p.groups; ++w) {
        gv += mine[w * P + lane];
        uv += mine[w * P + R + lane];
      }
      p.y[static_cast<int64_t>(cur.slot) * p.rows + cur.r0 + lane] = swiglu(gv, uv, p.limit) * s_weights[cur.slot];
    }
  }
}

// Down. Block: `rowsets` sets of n_used * groups warps; warp w of a set reads slot
// w / groups, column chunks [32 (w % groups), +32) of that slot's x, lane L chunk
// 32 (w % groups) + L. A set takes batches of R consecutive rows; per batch the warps'
// sums go to shared memory and the set's first warp adds them in warp order (slot-major)
// into y. PREFETCH as for gate+up.
struct DownParams {
  const uint8_t* data;
  int64_t row_bytes;
  int rows;
  int64_t x_slot_stride;
  const float* x;
  const int32_t* ids;
  float* y;
  int accumulate;
  int groups;     // warps per slot (cols / 1024)
  int warps;      // per row set: n_used * groups
  int rowsets;
  int batches;    // rows / R
  int iters;
};

template <int R, bool PREFETCH>
__global__ void __launch_bounds__(kDownMaxThreads) expert_down_kernel(DownParams p) {
  extern __shared__ float4 dynamic4[];
  float* partial = reinterpret_cast<float*>(dynamic4);  // [2][rowsets][warps][R]
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int w = warp % p.warps, rowset = warp / p.warps;
  const int slot = w / p.groups;
  const int chunk = (w - slot * p.groups) * 32 + lane;
  pdl_wait();
  float x[32];
  load_x_chunk(p.x + slot * p.x_slot_stride + chunk * 32, x);
  float x_lo = 0.0f, x_hi = 0.0f;
#pragma unroll
  for (int k = 0; k < 16; ++k) {
    x_lo += x[k];
    x_hi += x[16 + k];
  }
  const uint8_t* matrix = p.data + static_cast<int64_t>(p.ids[slot]) * p.rows * p.row_bytes;

  const int workers = gridDim.x * p.rowsets;
  const int worker = blockIdx.x * p.rowsets + rowset;
  const auto fetch = [&](int batch, Q2kChunk::Raw* raw) {
    if (batch >= p.batches) return;
#pragma unroll
    for (int j = 0; j < R; ++j) {
      raw[j] = Q2kChunk::load(matrix + static_cast<int64_t>(batch * R + j) * p.row_bytes, nullptr, chunk);
    }
  };
  Q2kChunk::Raw ahead[PREFETCH ? R : 1];  // PREFETCH: the next batch's loads in flight
  if constexpr (PREFETCH) fetch(worker, ahead);
  for (int it = 0; it < p.iters; ++it) {
    const int batch = worker + it * workers;
    const bool active = batch < p.batches;
    Q2kChunk::Raw cur[R];
    if constexpr (PREFETCH) {
#pragma unroll
      for (int j = 0; j < R; ++j) cur[j] = ahead[j];
      fetch(batch + workers, ahead);
    } else {
      fetch(batch, cur);
    }
    float acc[R];
    if (active) {
#pragma unroll
      for (int j = 0; j < R; ++j) acc[j] = q2k_chunk_dot(cur[j], x, x_lo, x_hi);
    } else {
#pragma unroll
      for (int j = 0; j < R; ++j) acc[j] = 0.0f;
    }
    const float sum = warp_reduce_scatter<R>(acc, lane);
    const int buf = it & 1;
    float* sets = partial + buf * p.rowsets * p.warps * R;
    if ((lane & ((32 / R) - 1)) == 0) sets[(rowset * p.warps + w) * R + (lane >> kReduceScatterShift<R>)] = sum;
    rowset_barrier(rowset, p.warps * 32);
    if (w == 0 && lane < R && active) {
      const float* mine = sets + rowset * p.warps * R;
      float v = 0.0f;
      for (int k = 0; k < p.warps; ++k) v += mine[k * R + lane];
      float* out = p.y + batch * R + lane;
      *out = p.accumulate ? *out + v : v;
    }
  }
}

// ---------------------------------------------------------------------------------------
// Integer tensor-core kernels (see the header for the arithmetic and its precision).
//
// A warp owns 16-row tiles (rows g and g + 8 in lane quad g = lane / 4, lane t = lane % 4 of
// the quad holding 8 of a chunk's 32 columns) and a fixed range of CB 256-column blocks of
// x. mma.sync m16n8k32 (s8 x s8 -> s32) fragment layout, per lane (g, t):
//   A (16 x 32, row): a0 = A[g][4t..4t+3], a1 = A[g+8][4t..], a2 = A[g][16+4t..], a3 = A[g+8][16+4t..]
//   B (32 x 8, col):  b0 = B[4t..4t+3][g], b1 = B[16+4t..16+4t+3][g]
//   C (16 x 8):       c0 = C[g][2t], c1 = C[g][2t+1], c2 = C[g+8][2t], c3 = C[g+8][2t+1]
// The k order is free as long as A and B agree: here k = 4t + i holds chunk column 8t + i and
// k = 16 + 4t + i holds chunk column 8t + 4 + i (i < 4), so a lane expands 8 consecutive
// weights of each of its two rows. B column j holds digit 3 - (j & 3) of x's integers (columns
// 4..7 repeat 0..3 and are not used). Lane t = 0 of a quad ends with the top two digits' sums,
// t = 1 with the lower two; their int64 combinations are added across the pair (lanes t = 2, 3
// hold the repeated columns and combine only with each other).
constexpr int kTcMaxWarps = 16;        // warps per row set (one row set: all of a tile's columns)
constexpr int kTcMaxThreads = 512;
constexpr int kTcDownMaxWarps = 12;    // down: 384 threads, two blocks per multiprocessor (85 registers)
constexpr int kTcPlanePad = 32;        // bytes after each digit plane: planes start 8 banks apart
constexpr int kTcMaxGateUpBlocks = 32; // gate+up cols <= 8192
constexpr int kTcMaxDownBlocks = 64;   // down: n_used * cols / 256

// prmt.b32 in its default mode (selector nibbles 0..7; the table's nibbles never set bit 3,
// so the masking __byte_perm adds is not needed).
__device__ __forceinline__ uint32_t prmt(uint32_t a, uint32_t b, uint32_t selector) {
  uint32_t r;
  asm("prmt.b32 %0, %1, %2, %3;" : "=r"(r) : "r"(a), "r"(b), "r"(selector));
  return r;
}

// Where a kernel's quantized x lives in dynamic shared memory: four digit planes (plane L
// holds digit L of every a_e as a byte, `stride` bytes apart), the scale s_b per 256-column
// block, and (down) the f32 sums of x over each 16 columns.
struct TcXLayout {
  int planes = 0;   // byte offsets into dynamic shared memory
  int scales = 0;
  int sums = -1;    // -1: none
  int stride = 0;   // bytes between planes
  int end = 0;
};

TcXLayout tc_x_layout(int offset, int64_t values, bool sums) {
  TcXLayout l;
  l.planes = offset;
  l.stride = static_cast<int>(values) + kTcPlanePad;
  const int blocks = static_cast<int>(values / 256);
  l.scales = l.planes + 4 * l.stride;
  l.end = l.scales + ((blocks * 4 + 15) & ~15);
  if (sums) {
    l.sums = l.end;
    l.end += blocks * 16 * 4;
  }
  return l;
}

// Quantizes block b of x (as tc_quantize_x below): this lane's 8 values v0, v1 (x[256 b +
// 8 lane ..]) into the layout.
__device__ __forceinline__ void tc_quantize_block(float4 v0, float4 v1, int b, uint8_t* shared, const TcXLayout& l,
                                                  int lane) {
  uint8_t* planes = shared + l.planes;
  float* scales = reinterpret_cast<float*>(shared + l.scales);
  float* sums = l.sums >= 0 ? reinterpret_cast<float*>(shared + l.sums) : nullptr;
  {
    const float v[8] = {v0.x, v0.y, v0.z, v0.w, v1.x, v1.y, v1.z, v1.w};
    const cuda_detail::DigitBlock d = cuda_detail::split_block_digits(v);
#pragma unroll
    for (int L = 0; L < 4; ++L) {
      *reinterpret_cast<uint2*>(planes + L * l.stride + b * 256 + lane * 8) = make_uint2(d.lo[L], d.hi[L]);
    }
    if (lane == 0) scales[b] = d.scale();
    if (sums) {
      float s = 0.0f;
#pragma unroll
      for (int i = 0; i < 8; ++i) s += v[i];
      s += __shfl_xor_sync(0xffffffffu, s, 1);  // the 16 columns of lanes 2G, 2G + 1
      if ((lane & 1) == 0) sums[b * 16 + (lane >> 1)] = s;
    }
  }
}

// This lane's 8 values of block b of x.
__device__ __forceinline__ void tc_load_x_block(const float* x, int b, int lane, float4* v0, float4* v1) {
  const float4* src = reinterpret_cast<const float4*>(x + b * 256 + lane * 8);
  *v0 = src[0];
  *v1 = src[1];
}

// x (blocks * 256 values, 16-byte aligned) into the layout above; one warp per block of x.
// s_b = 2^(E - 30) with max|x| < 2^E (E at least -96, so s_b stays a normal float), a_e =
// round(x_e / s_b) (x_e / s_b is an exact power-of-two scaling), digits d_L in [-128, 127]
// with a_e = sum_L d_L 256^L (|a_e| < 2^30 leaves the top digit within [-65, 65]).
__device__ void tc_quantize_x(const float* x, int blocks, uint8_t* shared, const TcXLayout& l, int warp,
                              int n_warps, int lane) {
  for (int b = warp; b < blocks; b += n_warps) {
    float4 v0, v1;
    tc_load_x_block(x, b, lane, &v0, &v1);
    tc_quantize_block(v0, v1, b, shared, l, lane);
  }
}

// The B fragment of chunk `chunk` of x for this lane: digit 3 - (g & 3) of columns 8t..8t+7.
// `base` = planes + (3 - (g & 3)) * stride + 8t.
__device__ __forceinline__ uint2 tc_b_fragment(const uint8_t* base, int chunk) {
  return *reinterpret_cast<const uint2*>(base + chunk * 32);
}

// The exact sum of products of a row (int32 digit sums of this lane in c0, c1) as an int64
// combined over the lane pair t = 0, 1: t = 0 has digits 3, 2, t = 1 digits 1, 0 (lanes t = 2,
// 3 give the same from the repeated columns).
__device__ __forceinline__ long long tc_row_total(int hi_digit, int lo_digit, int t) {
  long long p = static_cast<long long>(hi_digit) * 256 + lo_digit;
  p <<= (t & 1) ? 0 : 16;
  return p + __shfl_xor_sync(0xffffffffu, p, 1);
}

// ---- gate+up (IQ2_XXS) ----------------------------------------------------------------

struct TcGateUpParams {
  const uint8_t* g_data;
  const uint16_t* g_scales;
  const uint8_t* u_data;
  const uint16_t* u_scales;
  int64_t row_bytes;
  int blocks;     // 256-column blocks per row (= f16 scales per row)
  int rows;       // per expert
  const float* x;
  const int32_t* ids;
  const float* weights;
  int n_used;
  float limit;
  float* y;
  int warps;      // per row set: blocks / CB
  int rowsets;
  int tiles;      // n_used * rows / 16
  int iters;      // tiles per row set
  TcXLayout xl;
  int partial_offset;  // bytes into dynamic shared memory
};

// One unit of a warp's work: half of a 256-column block (4 chunks) of a tile, both matrices.
struct Iq2Unit {
  int4 q[2][2][2];    // [gate, up][row g, g + 8][chunks 0-1, 2-3 of the half]
  uint16_t d[2][2];   // [gate, up][row g, g + 8]
};

// A fragment registers of one row and chunk: `lo` = weights 8t..8t+3, `hi` = 8t+4..8t+7, as
// int8 (the compact selector table of cuda/dequant_chunk.cuh, entry e at byte
// table + (e << SHIFT): SHIFT 2 for the table itself, 7 for the lane's copy of per-bank
// copies); returns 2S + 1.
template <int SHIFT>
__device__ __forceinline__ int iq2_row_fragment(uint32_t qx, uint32_t qy, const uint8_t* table, uint32_t grid_byte,
                                                int sign_shift, uint32_t* lo, uint32_t* hi) {
  const uint32_t gi = prmt(qx, 0, grid_byte);
  const uint32_t si = (qy >> sign_shift) & 127u;
  const uint32_t s = *reinterpret_cast<const uint32_t*>(table + (gi << SHIFT)) |
                     *reinterpret_cast<const uint32_t*>(table + ((256u + si) << SHIFT));
  *lo = prmt(cuda_detail::kIq2xxsPositive, cuda_detail::kIq2xxsNegative, s);
  *hi = prmt(cuda_detail::kIq2xxsPositive, cuda_detail::kIq2xxsNegative, s >> 16);
  return static_cast<int>((qy >> 27) | 1u);
}

template <int CB, bool LANE_TABLES, bool PREFETCH>
__global__ void __launch_bounds__(kTcMaxThreads, 1) tc_gate_up_kernel(TcGateUpParams p) {
  constexpr int kUnits = 2 * CB;  // per tile
  extern __shared__ float4 dynamic4[];
  uint8_t* dynamic = reinterpret_cast<uint8_t*>(dynamic4);
  __shared__ uint32_t compact[LANE_TABLES ? 1 : kTableWords];
  __shared__ int32_t s_ids[kMaxUsed];
  __shared__ float s_weights[kMaxUsed];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int n_warps = blockDim.x >> 5;
  const int w = warp % p.warps, rowset = warp / p.warps;
  const int g = lane >> 2, t = lane & 3;

  // The selector table is immutable: staged before the dependency wait.
  constexpr int kShift = LANE_TABLES ? 7 : 2;
  const uint8_t* table;
  if constexpr (LANE_TABLES) {
    uint32_t* copies = reinterpret_cast<uint32_t*>(dynamic);
    for (int e = warp; e < kTableWords; e += n_warps) copies[e * 32 + lane] = g_selectors[e];
    table = reinterpret_cast<const uint8_t*>(copies + lane);
  } else {
    for (int i = threadIdx.x; i < kTableWords; i += blockDim.x) compact[i] = g_selectors[i];
    table = reinterpret_cast<const uint8_t*>(compact);
  }
  pdl_wait();
  for (int i = threadIdx.x; i < p.n_used; i += blockDim.x) {
    s_ids[i] = p.ids[i];
    s_weights[i] = p.weights ? p.weights[i] : 1.0f;
  }
  __syncthreads();

  const float* xscale = reinterpret_cast<const float*>(dynamic + p.xl.scales);
  const uint8_t* bbase = dynamic + p.xl.planes + (3 - (g & 3)) * p.xl.stride + 8 * t;
  const uint32_t grid_byte = 0x4440u | static_cast<uint32_t>(t);
  const int sign_shift = 7 * t;
  float* partial = reinterpret_cast<float*>(dynamic + p.partial_offset);  // [2][rowsets][warps][32]
  const int tiles_per_slot = p.rows / 16;
  const int workers = gridDim.x * p.rowsets;
  const int worker = blockIdx.x * p.rowsets + rowset;
  const int xb0 = w * CB;

  // A tile's weights of this warp into L2 (one line per matrix row: CB * 64 bytes, aligned),
  // so that its register loads wait for L2 rather than memory.
  const auto prefetch_tile = [&](int tile) {
    if (tile >= p.tiles) return;
    const int slot = tile / tiles_per_slot;
    const int64_t row = static_cast<int64_t>(s_ids[slot]) * p.rows + (tile - slot * tiles_per_slot) * 16 + (lane & 15);
    prefetch_l2((lane < 16 ? p.g_data : p.u_data) + row * p.row_bytes + xb0 * 64);
  };

  const auto fetch = [&](int it, int j, Iq2Unit* u) {
    const int tile = worker + it * workers;
    if (it >= p.iters || tile >= p.tiles) return;
    const int slot = tile / tiles_per_slot;
    const int64_t row = static_cast<int64_t>(s_ids[slot]) * p.rows + (tile - slot * tiles_per_slot) * 16 + g;
    const int xb = xb0 + (j >> 1);
    const int64_t off = row * p.row_bytes + xb * 64 + (j & 1) * 32;
    const int64_t off8 = off + 8 * p.row_bytes;
    const uint8_t* data[2] = {p.g_data, p.u_data};
    const uint16_t* scales[2] = {p.g_scales, p.u_scales};
#pragma unroll
    for (int m = 0; m < 2; ++m) {
      u->q[m][0][0] = cuda_detail::load16(data[m] + off);
      u->q[m][0][1] = cuda_detail::load16(data[m] + off + 16);
      u->q[m][1][0] = cuda_detail::load16(data[m] + off8);
      u->q[m][1][1] = cuda_detail::load16(data[m] + off8 + 16);
      u->d[m][0] = __ldg(scales[m] + row * p.blocks + xb);
      u->d[m][1] = __ldg(scales[m] + (row + 8) * p.blocks + xb);
    }
  };

  // The first tile's loads go out before x is quantized (they need only the ids).
  Iq2Unit ahead;  // PREFETCH: the next unit's loads in flight
  if constexpr (PREFETCH) {
    prefetch_tile(worker);
    fetch(0, 0, &ahead);
  }
  tc_quantize_x(p.x, p.blocks, dynamic, p.xl, warp, n_warps, lane);
  __syncthreads();
  for (int it = 0; it < p.iters; ++it) {
    const int tile = worker + it * workers;
    const bool active = tile < p.tiles;
    if constexpr (PREFETCH) {
      if (it + 1 < p.iters) prefetch_tile(tile + workers);
    }
    float sum[2][2] = {{0.0f, 0.0f}, {0.0f, 0.0f}};  // [gate, up][row g, g + 8]
    int acc[2][4];
#pragma unroll
    for (int j = 0; j < kUnits; ++j) {
      Iq2Unit cur;
      if constexpr (PREFETCH) {
        cur = ahead;
        if (j + 1 < kUnits) {
          fetch(it, j + 1, &ahead);
        } else {
          fetch(it + 1, 0, &ahead);
        }
      } else {
        fetch(it, j, &cur);
      }
      if ((j & 1) == 0) {
#pragma unroll
        for (int m = 0; m < 2; ++m) {
#pragma unroll
          for (int i = 0; i < 4; ++i) acc[m][i] = 0;
        }
      }
      const int xb = xb0 + (j >> 1);
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        const uint2 b = tc_b_fragment(bbase, xb * 8 + (j & 1) * 4 + c);
#pragma unroll
        for (int m = 0; m < 2; ++m) {
          const int4 v0 = cur.q[m][0][c >> 1], v1 = cur.q[m][1][c >> 1];
          uint32_t lo0, hi0, lo1, hi1;
          const int s0 = iq2_row_fragment<kShift>(static_cast<uint32_t>((c & 1) ? v0.z : v0.x),
                                                  static_cast<uint32_t>((c & 1) ? v0.w : v0.y), table, grid_byte,
                                                  sign_shift, &lo0, &hi0);
          const int s1 = iq2_row_fragment<kShift>(static_cast<uint32_t>((c & 1) ? v1.z : v1.x),
                                                  static_cast<uint32_t>((c & 1) ? v1.w : v1.y), table, grid_byte,
                                                  sign_shift, &lo1, &hi1);
          int d[4];
          mma_s8_zero(d, lo0, lo1, hi0, hi1, b.x, b.y);
          acc[m][0] += s0 * d[0];
          acc[m][1] += s0 * d[1];
          acc[m][2] += s1 * d[2];
          acc[m][3] += s1 * d[3];
        }
      }
      if (j & 1) {  // the end of a 256-column block: its exact sums, scaled once
        const float xs = xscale[xb] * 0.125f;
#pragma unroll
        for (int m = 0; m < 2; ++m) {
#pragma unroll
          for (int r = 0; r < 2; ++r) {
            const long long total = tc_row_total(acc[m][2 * r], acc[m][2 * r + 1], t);
            sum[m][r] += __ll2float_rn(total) * (cuda_detail::half_bits_to_float(cur.d[m][r]) * xs);
          }
        }
      }
    }
    const int buf = it & 1;
    float* sets = partial + buf * p.rowsets * p.warps * 32;
    if (t == 0) {
      float* mine = sets + (rowset * p.warps + w) * 32;
      mine[g] = sum[0][0];
      mine[g + 8] = sum[0][1];
      mine[16 + g] = sum[1][0];
      mine[16 + g + 8] = sum[1][1];
    }
    rowset_barrier(rowset, p.warps * 32);
    if (w == 0 && lane < 16 && active) {
      const float* set = sets + rowset * p.warps * 32;
      float gv = 0.0f, uv = 0.0f;
      for (int k = 0; k < p.warps; ++k) {
        gv += set[k * 32 + lane];
        uv += set[k * 32 + 16 + lane];
      }
      const int slot = tile / tiles_per_slot;
      const int r = (tile - slot * tiles_per_slot) * 16 + lane;
      p.y[static_cast<int64_t>(slot) * p.rows + r] = swiglu(gv, uv, p.limit) * s_weights[slot];
    }
  }
}

// ---- down (Q2_K) ----------------------------------------------------------------------

struct TcDownParams {
  const uint8_t* data;
  int64_t row_bytes;
  int blocks;     // 256-column blocks per row (per slot of x)
  int rows;
  const float* x;
  const int32_t* ids;
  int n_used;
  float* y;
  int accumulate;
  int warps;      // per row set: n_used * blocks / CB
  int per_slot;   // warps per slot: blocks / CB
  int rowsets;
  int tiles;      // rows / 16
  int iters;
  TcXLayout xl;
  int partial_offset;
};

// One unit: one 256-column block of a tile, rows g and g + 8.
struct Q2kUnit {
  uint32_t qs[2][2][2];  // [row][half hh][quant bytes 32 hh + 8t.. +3, 32 hh + 8t + 4.. +7]
  uint32_t sc[2][4];     // [row] the 16 scale bytes
  uint32_t mins[2];      // [row] scale bytes 4t..4t+3 (their minimum codes)
  uint32_t dd[2];        // [row] d | dmin << 16
};

// One 256-column block xg of x against rows g and g + 8 of a tile (`cur`): the exact integer
// sum of products, scaled once, minus the minimums' term, added to sum[row] (both down kernels).
__device__ __forceinline__ void tc_down_block(const Q2kUnit& cur, const uint8_t* bbase, int xg, const float* xsums,
                                              const float* xscale, int t, int h8, float (&sum)[2]) {
  // Scale codes of this lane's sub-blocks (t / 2 selects the byte of each pair): bytes 0 and
  // 2 of scw[r][k] hold the codes of chunks jj = 2 (k & 1) and 2 (k & 1) + 1 of half hh = k / 2.
  uint32_t scw[2][4];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
#pragma unroll
    for (int k = 0; k < 4; ++k) scw[r][k] = (cur.sc[r][k] >> h8) & 0x000F000Fu;
  }
  int acc[4] = {0, 0, 0, 0};
#pragma unroll
  for (int c = 0; c < 8; ++c) {
    const int hh = c >> 2, jj = c & 3;
    const uint2 b = tc_b_fragment(bbase, xg * 8 + c);
    uint32_t a[2][2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      // Sub-block 8 hh + 2 jj + t / 2: scale byte 8 hh + 2 jj + t / 2 = word 2 hh + jj / 2,
      // byte 2 (jj & 1) + t / 2.
      const uint32_t word = scw[r][2 * hh + (jj >> 1)];
      const uint32_t sc = (jj & 1) ? (word >> 16) : (word & 0xFFFFu);
      a[r][0] = ((cur.qs[r][hh][0] >> (2 * jj)) & 0x03030303u) * sc;  // q sc <= 45: no carries
      a[r][1] = ((cur.qs[r][hh][1] >> (2 * jj)) & 0x03030303u) * sc;
    }
    mma_s8(acc, a[0][0], a[1][0], a[0][1], a[1][1], b.x, b.y);
  }
  // Minimums: sum over the 16 sub-blocks G of m_G X_G, lane t taking G = 4t..4t+3.
  const float4 xs4 = *reinterpret_cast<const float4*>(xsums + xg * 16 + 4 * t);
  const float xs = xscale[xg];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const uint32_t m = (cur.mins[r] >> 4) & 0x0F0F0F0Fu;
    float msum = cuda_detail::byte_to_float(m, 0) * xs4.x;
    msum = fmaf(cuda_detail::byte_to_float(m, 1), xs4.y, msum);
    msum = fmaf(cuda_detail::byte_to_float(m, 2), xs4.z, msum);
    msum = fmaf(cuda_detail::byte_to_float(m, 3), xs4.w, msum);
    msum += __shfl_xor_sync(0xffffffffu, msum, 1);
    msum += __shfl_xor_sync(0xffffffffu, msum, 2);
    const long long total = tc_row_total(acc[2 * r], acc[2 * r + 1], t);
    const float d = cuda_detail::half_bits_to_float(static_cast<uint16_t>(cur.dd[r] & 0xFFFFu));
    const float dmin = cuda_detail::half_bits_to_float(static_cast<uint16_t>(cur.dd[r] >> 16));
    sum[r] += fmaf(__ll2float_rn(total), d * xs, -(dmin * msum));
  }
}

template <int CB, bool PREFETCH>
__global__ void __launch_bounds__(kTcDownMaxWarps * 32, 2) tc_down_kernel(TcDownParams p) {
  extern __shared__ float4 dynamic4[];
  uint8_t* dynamic = reinterpret_cast<uint8_t*>(dynamic4);
  __shared__ int32_t s_ids[kMaxUsed];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int n_warps = blockDim.x >> 5;
  const int w = warp % p.warps, rowset = warp / p.warps;
  const int g = lane >> 2, t = lane & 3;
  pdl_wait();
  for (int i = threadIdx.x; i < p.n_used; i += blockDim.x) s_ids[i] = p.ids[i];
  __syncthreads();

  const float* xscale = reinterpret_cast<const float*>(dynamic + p.xl.scales);
  const float* xsums = reinterpret_cast<const float*>(dynamic + p.xl.sums);
  const uint8_t* bbase = dynamic + p.xl.planes + (3 - (g & 3)) * p.xl.stride + 8 * t;
  const int h8 = (t >> 1) * 8;  // the byte of a scale pair for this lane's sub-block (columns 8t..8t+7)
  float* partial = reinterpret_cast<float*>(dynamic + p.partial_offset);  // [2][rowsets][warps][16]
  const int slot = w / p.per_slot;
  const int xb0 = (w - slot * p.per_slot) * CB;       // within the slot
  const int xg0 = slot * p.blocks + xb0;              // among all of x's blocks
  const uint8_t* matrix = p.data + static_cast<int64_t>(s_ids[slot]) * p.rows * p.row_bytes;
  const int workers = gridDim.x * p.rowsets;
  const int worker = blockIdx.x * p.rowsets + rowset;

  const auto fetch = [&](int it, int j, Q2kUnit* u) {
    const int tile = worker + it * workers;
    if (it >= p.iters || tile >= p.tiles) return;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const uint8_t* blk = matrix + static_cast<int64_t>(tile * 16 + g + 8 * r) * p.row_bytes + (xb0 + j) * 84;
      const uint32_t* words = reinterpret_cast<const uint32_t*>(blk);
#pragma unroll
      for (int hh = 0; hh < 2; ++hh) {
        u->qs[r][hh][0] = __ldg(words + 4 + 8 * hh + 2 * t);
        u->qs[r][hh][1] = __ldg(words + 4 + 8 * hh + 2 * t + 1);
      }
#pragma unroll
      for (int k = 0; k < 4; ++k) u->sc[r][k] = __ldg(words + k);
      u->mins[r] = __ldg(words + t);
      u->dd[r] = __ldg(words + 20);
    }
  };

  // A tile's weights of this warp into L2: lanes L and L + 16 take the even and odd 128-byte
  // lines of row L's CB blocks.
  const auto prefetch_tile = [&](int tile) {
    if (tile >= p.tiles) return;
    const uint8_t* start = matrix + static_cast<int64_t>(tile * 16 + (lane & 15)) * p.row_bytes + xb0 * 84;
    const uintptr_t end = reinterpret_cast<uintptr_t>(start) + CB * 84;
    for (uintptr_t a = (reinterpret_cast<uintptr_t>(start) & ~uintptr_t{127}) + (lane >> 4) * 128; a < end;
         a += 256) {
      prefetch_l2(reinterpret_cast<const void*>(a));
    }
  };

  // The first tile's loads go out before x is quantized (they need only the ids).
  Q2kUnit ahead;
  if constexpr (PREFETCH) {
    prefetch_tile(worker);
    fetch(0, 0, &ahead);
  }
  tc_quantize_x(p.x, p.n_used * p.blocks, dynamic, p.xl, warp, n_warps, lane);
  __syncthreads();
  for (int it = 0; it < p.iters; ++it) {
    const int tile = worker + it * workers;
    const bool active = tile < p.tiles;
    if constexpr (PREFETCH) {
      if (it + 1 < p.iters) prefetch_tile(tile + workers);
    }
    float sum[2] = {0.0f, 0.0f};
    // Without PREFETCH, one block at a time (unrolled, the loads of all CB blocks would be
    // hoisted ahead and spill).
#pragma unroll(PREFETCH ? CB : 1)
    for (int j = 0; j < CB; ++j) {
      Q2kUnit cur;
      if constexpr (PREFETCH) {
        cur = ahead;
        if (j + 1 < CB) {
          fetch(it, j + 1, &ahead);
        } else {
          fetch(it + 1, 0, &ahead);
        }
      } else {
        fetch(it, j, &cur);
      }
      tc_down_block(cur, bbase, xg0 + j, xsums, xscale, t, h8, sum);
    }
    const int buf = it & 1;
    float* sets = partial + buf * p.rowsets * p.warps * 16;
    if (t == 0) {
      float* mine = sets + (rowset * p.warps + w) * 16;
      mine[g] = sum[0];
      mine[g + 8] = sum[1];
    }
    rowset_barrier(rowset, p.warps * 32);
    if (w == 0 && lane < 16 && active) {
      const float* set = sets + rowset * p.warps * 16;
      float v = 0.0f;
      for (int k = 0; k < p.warps; ++k) v += set[k * 16 + lane];
      float* out = p.y + tile * 16 + lane;
      *out = p.accumulate ? *out + v : v;
    }
  }
}

// ---------------------------------------------------------------------------------------
// Staged kernels (ExpertMatvecOptions::staged): the tensor-core kernels' exact integer
// arithmetic, with each warp streaming its weights into its own shared-memory buffer by
// cp.async right after the expert ids are known, so that many loads are in flight per
// multiprocessor at all times and no warp waits for memory between its products.
//
// Gate+up: a warp's unit is 8 output rows of one slot, both matrices, all columns. The A
// fragment's rows g take the gate row g, its rows g + 8 the up row g (lane quad g, as in the
// tensor-core kernel), so one mma serves both matrices and the warp ends with a row's gate
// and up sums together: no reduction over warps. The unit streams through a ring of S steps
// of one 256-column block (8 rows x 64 bytes per matrix, rows padded to 80 bytes so the 8
// rows a quad column reads fall in distinct banks); the unit's f16 scales (16 bytes per row
// and 8 blocks) go in with its first step. A row's 256-column block sums are added in
// column order, starting from zero: the order of the tensor-core kernel with one
// 256-column block per warp, so the outputs are bit for bit the same.
// Down: a warp's unit is the tensor-core kernel's (16 rows, CB blocks of one slot); it copies
// the whole unit at once, one commit group per block, and starts each block's products
// when that block has landed. Its sums are added exactly as in the tensor-core kernel (same
// CB, same warp order): bit for bit the same outputs.

constexpr int kStagedMaxWarps = 16;      // gate+up: warps per block
constexpr int kStagedRowPitch = 80;      // bytes per staged row of one 256-column IQ2_XXS block
constexpr int kStagedSlotBytes = 2 * 8 * kStagedRowPitch;  // one ring step: gate and up, 8 rows
constexpr int kStagedMaxBlocks = 32;     // gate+up: 256-column blocks per row (the scale copy: 2 per lane)
constexpr int kStagedDownMaxWarps = 24;  // down: warps per block (85 registers)
constexpr int kStagedStaticBytes = 2048;  // room left for the kernels' static shared memory (at most 1792 bytes)

__device__ __forceinline__ uint32_t staged_shared_address(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// Copies BYTES (4 or 16) from global memory to shared memory, asynchronously (16-byte copies
// bypass L1).
template <int BYTES>
__device__ __forceinline__ void staged_copy(void* shared, const void* global) {
  if constexpr (BYTES == 16) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(staged_shared_address(shared)), "l"(global)
                 : "memory");
  } else {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4;" ::"r"(staged_shared_address(shared)), "l"(global)
                 : "memory");
  }
}

__device__ __forceinline__ void staged_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }

// Waits until at most `pending` of this thread's commit groups are still in flight (0..7;
// a constant wherever the callers' loops are unrolled).
__device__ __forceinline__ void staged_wait(int pending) {
  switch (pending) {
    case 0: asm volatile("cp.async.wait_group 0;" ::: "memory"); break;
    case 1: asm volatile("cp.async.wait_group 1;" ::: "memory"); break;
    case 2: asm volatile("cp.async.wait_group 2;" ::: "memory"); break;
    case 3: asm volatile("cp.async.wait_group 3;" ::: "memory"); break;
    case 4: asm volatile("cp.async.wait_group 4;" ::: "memory"); break;
    case 5: asm volatile("cp.async.wait_group 5;" ::: "memory"); break;
    case 6: asm volatile("cp.async.wait_group 6;" ::: "memory"); break;
    default: asm volatile("cp.async.wait_group 7;" ::: "memory"); break;
  }
}

// x into the layout (as tc_quantize_x) with this warp's first two blocks already in `xv`
// (xv[r] = block warp + r n_warps, where that is below `blocks`).
__device__ __forceinline__ void staged_quantize_x(const float* x, int blocks, const float4 (&xv)[2][2],
                                                  uint8_t* shared, const TcXLayout& l, int warp, int n_warps,
                                                  int lane) {
  if (warp < blocks) tc_quantize_block(xv[0][0], xv[0][1], warp, shared, l, lane);
  if (warp + n_warps < blocks) tc_quantize_block(xv[1][0], xv[1][1], warp + n_warps, shared, l, lane);
  for (int b = warp + 2 * n_warps; b < blocks; b += n_warps) {
    float4 v0, v1;
    tc_load_x_block(x, b, lane, &v0, &v1);
    tc_quantize_block(v0, v1, b, shared, l, lane);
  }
}

// ---- staged gate+up --------------------------------------------------------------------

// iq2_row_fragment with the sign index's table offset taken by one rotation: `sign_rotation`
// = (7 t - SHIFT) mod 32 brings the lane's 7 sign bits (bits 7t..7t+6 of qy) to bits
// SHIFT..SHIFT+6, which the mask keeps (the same entry, one instruction fewer).
template <int SHIFT>
__device__ __forceinline__ int iq2_row_fragment_rotated(uint32_t qx, uint32_t qy, const uint8_t* table,
                                                        uint32_t grid_byte, uint32_t sign_rotation, uint32_t* lo,
                                                        uint32_t* hi) {
  const uint32_t gi = prmt(qx, 0, grid_byte);
  const uint32_t sign_offset = __funnelshift_r(qy, qy, sign_rotation) & (127u << SHIFT);
  const uint32_t s = *reinterpret_cast<const uint32_t*>(table + (gi << SHIFT)) |
                     *reinterpret_cast<const uint32_t*>(table + (256u << SHIFT) + sign_offset);
  *lo = prmt(cuda_detail::kIq2xxsPositive, cuda_detail::kIq2xxsNegative, s);
  *hi = prmt(cuda_detail::kIq2xxsPositive, cuda_detail::kIq2xxsNegative, s >> 16);
  return static_cast<int>((qy >> 27) | 1u);
}

struct StagedGateUpParams {
  const uint8_t* g_data;
  const uint16_t* g_scales;
  const uint8_t* u_data;
  const uint16_t* u_scales;
  int64_t row_bytes;
  int blocks;       // 256-column blocks per row
  int rows;         // per expert
  const float* x;
  const int32_t* ids;
  const float* weights;
  int n_used;
  float limit;
  float* y;
  int units;        // n_used * rows / 8
  int scale_bufs;   // per warp: 1 + ceil((S - 1) / blocks) (a unit's scales outlive S - 1 steps)
  TcXLayout xl;
  int ring_offset;  // bytes into dynamic shared memory: [warps][S][kStagedSlotBytes]
  int scale_offset; // [warps][scale_bufs][gate, up][8 rows][blocks] f16
  // Routing inside the kernel (route.logits set): every block selects the experts from the
  // router logits itself (cuda/router_select.cuh, in the ring's shared memory before its
  // first copies) instead of reading ids and weights; block 0 writes them to route.ids and
  // route.weights for the down kernel.
  RouterLaunch route;
};

// Experts a staged gate+up can route for itself (its scratch lives in the ring).
constexpr int kFoldMaxExperts = 256;
using FoldScratch = cuda_detail::RouteScratch<kFoldMaxExperts>;

template <int S, bool LANE_TABLES>
__global__ void __launch_bounds__(kStagedMaxWarps * 32, 1) staged_gate_up_kernel(StagedGateUpParams p) {
  extern __shared__ float4 dynamic4[];
  uint8_t* dynamic = reinterpret_cast<uint8_t*>(dynamic4);
  __shared__ uint32_t compact[LANE_TABLES ? 1 : kTableWords];
  __shared__ int32_t s_ids[kMaxUsed];
  __shared__ float s_weights[kMaxUsed];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int n_warps = blockDim.x >> 5;
  const int g = lane >> 2, t = lane & 3;

  // The selector table is immutable: staged before the dependency wait.
  constexpr int kShift = LANE_TABLES ? 7 : 2;
  const uint8_t* table;
  if constexpr (LANE_TABLES) {
    // 32 entries per warp and pass: one load each, then handed to every lane by shuffles.
    uint32_t* copies = reinterpret_cast<uint32_t*>(dynamic);
    for (int base = warp * 32; base < kTableWords; base += n_warps * 32) {
      const uint32_t v = base + lane < kTableWords ? g_selectors[base + lane] : 0u;
#pragma unroll 8
      for (int i = 0; i < 32; ++i) {
        const uint32_t e = __shfl_sync(0xffffffffu, v, i);
        if (base + i < kTableWords) copies[(base + i) * 32 + lane] = e;
      }
    }
    table = reinterpret_cast<const uint8_t*>(copies + lane);
  } else {
    for (int i = threadIdx.x; i < kTableWords; i += blockDim.x) compact[i] = g_selectors[i];
    table = reinterpret_cast<const uint8_t*>(compact);
  }
  const bool routes = p.route.logits != nullptr;
  // The selection bias is a weight (immutable): read before the wait.
  const float route_bias =
      routes && static_cast<int>(threadIdx.x) < p.route.n_experts && p.route.bias ? p.route.bias[threadIdx.x] : 0.0f;
  pdl_wait();
  pdl_launch_dependents();  // the next kernel may be scheduled once every block has come here
  // This warp's first two blocks of x are read together with the ids (the latencies overlap).
  float4 xv[2][2];
  if (warp < p.blocks) tc_load_x_block(p.x, warp, lane, &xv[0][0], &xv[0][1]);
  if (warp + n_warps < p.blocks) tc_load_x_block(p.x, warp + n_warps, lane, &xv[1][0], &xv[1][1]);
  if (routes) {
    FoldScratch& scratch = *reinterpret_cast<FoldScratch*>(dynamic + p.ring_offset);
    cuda_detail::route_select_block(p.route, 0, route_bias, scratch, s_ids, s_weights);
    __syncthreads();
    if (blockIdx.x == 0 && static_cast<int>(threadIdx.x) < p.n_used) {
      p.route.ids[threadIdx.x] = s_ids[threadIdx.x];
      p.route.weights[threadIdx.x] = s_weights[threadIdx.x];
    }
  } else {
    for (int i = threadIdx.x; i < p.n_used; i += blockDim.x) {
      s_ids[i] = p.ids[i];
      s_weights[i] = p.weights ? p.weights[i] : 1.0f;
    }
  }
  __syncthreads();

  const int units_per_slot = p.rows / 8;
  const int total_warps = gridDim.x * n_warps;
  const int first = warp * gridDim.x + blockIdx.x;  // this warp's first unit; then + total_warps
  const int my_units = first < p.units ? (p.units - first + total_warps - 1) / total_warps : 0;
  const int steps = my_units * p.blocks;
  uint8_t* ring = dynamic + p.ring_offset + warp * (S * kStagedSlotBytes);
  const int scale_buf_bytes = 32 * p.blocks;
  uint8_t* scale_bufs = dynamic + p.scale_offset + warp * (p.scale_bufs * scale_buf_bytes);

  // The copies of the next step (unit issue_k, block issue_j) into ring slot `slot`; one
  // commit group per step, empty past the last.
  int issue_k = 0, issue_j = 0, issue_buf = 0;
  int64_t issue_row = 0;  // the unit's first row among all of the stack's rows
  const int copy_row = lane >> 2, copy_part = lane & 3;
  const auto issue = [&](int slot) {
    if (issue_k < my_units) {
      if (issue_j == 0) {
        const int u = first + issue_k * total_warps;
        const int s = u / units_per_slot;
        issue_row = static_cast<int64_t>(s_ids[s]) * p.rows + (u - s * units_per_slot) * 8;
        uint8_t* sb = scale_bufs + issue_buf * scale_buf_bytes;
        for (int q = lane; q < 2 * p.blocks; q += 32) {  // 8 rows x blocks f16 per matrix: blocks x 16 bytes
          const int m = q >= p.blocks ? 1 : 0;
          const int piece = q - m * p.blocks;
          staged_copy<16>(sb + m * 16 * p.blocks + piece * 16,
                          (m ? p.u_scales : p.g_scales) + issue_row * p.blocks + piece * 8);
        }
        issue_buf = issue_buf + 1 == p.scale_bufs ? 0 : issue_buf + 1;
      }
      const int64_t off = (issue_row + copy_row) * p.row_bytes + issue_j * 64 + copy_part * 16;
      uint8_t* dst = ring + slot * kStagedSlotBytes + copy_row * kStagedRowPitch + copy_part * 16;
      staged_copy<16>(dst, p.g_data + off);
      staged_copy<16>(dst + 8 * kStagedRowPitch, p.u_data + off);
      if (++issue_j == p.blocks) {
        issue_j = 0;
        ++issue_k;
      }
    }
    staged_commit();
  };
#pragma unroll
  for (int s = 0; s < S - 1; ++s) issue(s);

  // x is quantized while the first steps are in flight.
  staged_quantize_x(p.x, p.blocks, xv, dynamic, p.xl, warp, n_warps, lane);
  __syncthreads();

  const float* xscale = reinterpret_cast<const float*>(dynamic + p.xl.scales);
  const uint8_t* bbase = dynamic + p.xl.planes + (3 - (g & 3)) * p.xl.stride + 8 * t;
  const uint32_t grid_byte = 0x4440u | static_cast<uint32_t>(t);
  const uint32_t sign_rotation = static_cast<uint32_t>(7 * t - kShift) & 31u;
  float gsum = 0.0f, usum = 0.0f;
  int k = 0, j = 0, buf = 0;  // the step being computed: unit k, block j, its scale buffer
  for (int i = 0; i < steps; ++i) {
    staged_wait(S - 2);  // step i has landed (this lane's copies) ...
    __syncwarp();        // ... and every lane's; every lane is done with step i - 1's slot
    issue((i + S - 1) % S);
    const uint8_t* st = ring + (i % S) * kStagedSlotBytes;
    int acc[4] = {0, 0, 0, 0};
#pragma unroll
    for (int c2 = 0; c2 < 4; ++c2) {
      const uint4 gq = *reinterpret_cast<const uint4*>(st + g * kStagedRowPitch + c2 * 16);
      const uint4 uq = *reinterpret_cast<const uint4*>(st + (8 + g) * kStagedRowPitch + c2 * 16);
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const uint2 b = tc_b_fragment(bbase, j * 8 + c2 * 2 + h);
        uint32_t lo0, hi0, lo1, hi1;
        const int s0 = iq2_row_fragment_rotated<kShift>(h ? gq.z : gq.x, h ? gq.w : gq.y, table, grid_byte,
                                                        sign_rotation, &lo0, &hi0);
        const int s1 = iq2_row_fragment_rotated<kShift>(h ? uq.z : uq.x, h ? uq.w : uq.y, table, grid_byte,
                                                        sign_rotation, &lo1, &hi1);
        int d[4];
        mma_s8_zero(d, lo0, lo1, hi0, hi1, b.x, b.y);
        acc[0] += s0 * d[0];
        acc[1] += s0 * d[1];
        acc[2] += s1 * d[2];
        acc[3] += s1 * d[3];
      }
    }
    // The block's exact sums, scaled once (the tensor-core kernel's operations, unfused).
    const uint16_t* sc = reinterpret_cast<const uint16_t*>(scale_bufs + buf * scale_buf_bytes);
    const float xs = __fmul_rn(xscale[j], 0.125f);
    const long long gt = tc_row_total(acc[0], acc[1], t);
    const long long ut = tc_row_total(acc[2], acc[3], t);
    const float gf = __fmul_rn(cuda_detail::half_bits_to_float(sc[g * p.blocks + j]), xs);
    const float uf = __fmul_rn(cuda_detail::half_bits_to_float(sc[(8 + g) * p.blocks + j]), xs);
    gsum = __fadd_rn(gsum, __fmul_rn(__ll2float_rn(gt), gf));
    usum = __fadd_rn(usum, __fmul_rn(__ll2float_rn(ut), uf));
    if (++j == p.blocks) {  // the unit's last block: its 8 outputs
      const int u = first + k * total_warps;
      if (t == 0) p.y[static_cast<int64_t>(u) * 8 + g] = swiglu(gsum, usum, p.limit) * s_weights[u / units_per_slot];
      gsum = usum = 0.0f;
      j = 0;
      ++k;
      buf = buf + 1 == p.scale_bufs ? 0 : buf + 1;
    }
  }
  staged_wait(0);  // only empty groups can be left; none outlives the block
}

// ---- staged down -----------------------------------------------------------------------

struct StagedDownParams {
  const uint8_t* data;
  int64_t row_bytes;
  int blocks;     // 256-column blocks per row (per slot of x)
  int rows;
  const float* x;
  const int32_t* ids;
  int n_used;
  float* y;
  int accumulate;
  int warps;      // per row set: n_used * blocks / CB
  int per_slot;   // warps per slot: blocks / CB
  int rowsets;
  int tiles;      // rows / 16
  int iters;
  TcXLayout xl;
  int partial_offset;
  int buffer_offset;  // [rowsets * warps][16 rows][CB * 84 bytes]
  int ahead;          // 256-column blocks whose copies a warp keeps in flight (1..CB)
};

// CB: 256-column blocks per warp; V: bytes per copy (16 where a row's CB blocks start and end
// 16-byte aligned, CB a multiple of 4; else 4).
template <int CB, int V>
__global__ void __launch_bounds__(kStagedDownMaxWarps * 32, 1) staged_down_kernel(StagedDownParams p) {
  constexpr int kRowBytes = CB * 84;
  constexpr int kWarpBytes = (16 * kRowBytes + 15) & ~15;
  extern __shared__ float4 dynamic4[];
  uint8_t* dynamic = reinterpret_cast<uint8_t*>(dynamic4);
  __shared__ int32_t s_ids[kMaxUsed];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int n_warps = blockDim.x >> 5;
  const int w = warp % p.warps, rowset = warp / p.warps;
  const int g = lane >> 2, t = lane & 3;
  const int x_blocks = p.n_used * p.blocks;
  pdl_wait();
  pdl_launch_dependents();
  float4 xv[2][2];  // this warp's first two blocks of x, read together with the ids
  if (warp < x_blocks) tc_load_x_block(p.x, warp, lane, &xv[0][0], &xv[0][1]);
  if (warp + n_warps < x_blocks) tc_load_x_block(p.x, warp + n_warps, lane, &xv[1][0], &xv[1][1]);
  for (int i = threadIdx.x; i < p.n_used; i += blockDim.x) s_ids[i] = p.ids[i];
  __syncthreads();

  const int slot = w / p.per_slot;
  const int xb0 = (w - slot * p.per_slot) * CB;  // within the slot
  const int xg0 = slot * p.blocks + xb0;         // among all of x's blocks
  const uint8_t* matrix = p.data + static_cast<int64_t>(s_ids[slot]) * p.rows * p.row_bytes + xb0 * 84;
  uint8_t* mine = dynamic + p.buffer_offset + warp * kWarpBytes;
  const int workers = gridDim.x * p.rowsets;
  const int worker = blockIdx.x * p.rowsets + rowset;

  // Block j of the tile's 16 rows x CB blocks of this warp as one commit group: the copies
  // that start in block j (a block needs only its own group and earlier ones).
  const int ahead = p.ahead;  // groups in flight per warp
  const auto issue = [&](int tile, int j) {
    const int q0 = (84 * j + V - 1) / V, n = (84 * (j + 1) + V - 1) / V - q0;  // the first piece starting in block j
    if (tile < p.tiles) {
      const uint8_t* src = matrix + static_cast<int64_t>(tile) * 16 * p.row_bytes;
      for (int q = lane; q < 16 * n; q += 32) {
        const int row = q / n, piece = q0 + (q - row * n);
        staged_copy<V>(mine + row * kRowBytes + piece * V, src + row * p.row_bytes + piece * V);
      }
    }
    staged_commit();
  };
#pragma unroll
  for (int j = 0; j < CB; ++j) {
    if (j < ahead) issue(worker, j);
  }
  staged_quantize_x(p.x, x_blocks, xv, dynamic, p.xl, warp, n_warps, lane);
  __syncthreads();

  const float* xscale = reinterpret_cast<const float*>(dynamic + p.xl.scales);
  const float* xsums = reinterpret_cast<const float*>(dynamic + p.xl.sums);
  const uint8_t* bbase = dynamic + p.xl.planes + (3 - (g & 3)) * p.xl.stride + 8 * t;
  const int h8 = (t >> 1) * 8;
  float* partial = reinterpret_cast<float*>(dynamic + p.partial_offset);  // [2][rowsets][warps][16]
  for (int it = 0; it < p.iters; ++it) {
    const int tile = worker + it * workers;
    const bool active = tile < p.tiles;
    if (it > 0) {
      __syncwarp();  // every lane is done with the previous tile's buffer
#pragma unroll
      for (int j = 0; j < CB; ++j) {
        if (j < ahead) issue(tile, j);
      }
    }
    float sum[2] = {0.0f, 0.0f};
#pragma unroll
    for (int j = 0; j < CB; ++j) {
      // Groups of this tile committed: min(CB, ahead + j); block j's is the (j + 1)-th.
      staged_wait(min(CB, ahead + j) - (j + 1));
      __syncwarp();
      if (j + ahead < CB) issue(tile, j + ahead);
      Q2kUnit cur;
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const uint32_t* words = reinterpret_cast<const uint32_t*>(mine + (g + 8 * r) * kRowBytes + j * 84);
#pragma unroll
        for (int hh = 0; hh < 2; ++hh) {
          cur.qs[r][hh][0] = words[4 + 8 * hh + 2 * t];
          cur.qs[r][hh][1] = words[4 + 8 * hh + 2 * t + 1];
        }
#pragma unroll
        for (int q = 0; q < 4; ++q) cur.sc[r][q] = words[q];
        cur.mins[r] = words[t];
        cur.dd[r] = words[20];
      }
      tc_down_block(cur, bbase, xg0 + j, xsums, xscale, t, h8, sum);
    }
    const int pbuf = it & 1;
    float* sets = partial + pbuf * p.rowsets * p.warps * 16;
    if (t == 0) {
      float* out = sets + (rowset * p.warps + w) * 16;
      out[g] = sum[0];
      out[g + 8] = sum[1];
    }
    rowset_barrier(rowset, p.warps * 32);
    if (w == 0 && lane < 16 && active) {
      const float* set = sets + rowset * p.warps * 16;
      float v = 0.0f;
      for (int q = 0; q < p.warps; ++q) v += set[q * 16 + lane];
      float* out = p.y + tile * 16 + lane;
      *out = p.accumulate ? *out + v : v;
    }
  }
}

using StagedGateUpFn = void (*)(StagedGateUpParams);
using StagedDownFn = void (*)(StagedDownParams);

StagedGateUpFn pick_staged_gate_up(int stages, bool lane_tables) {
  switch (stages) {
    case 8: return lane_tables ? staged_gate_up_kernel<8, true> : staged_gate_up_kernel<8, false>;
    case 4: return lane_tables ? staged_gate_up_kernel<4, true> : staged_gate_up_kernel<4, false>;
    default: return lane_tables ? staged_gate_up_kernel<2, true> : staged_gate_up_kernel<2, false>;
  }
}

StagedDownFn pick_staged_down(int cb, bool wide) {
  switch (cb) {
    case 8: return wide ? staged_down_kernel<8, 16> : staged_down_kernel<8, 4>;
    case 4: return wide ? staged_down_kernel<4, 16> : staged_down_kernel<4, 4>;
    case 2: return staged_down_kernel<2, 4>;
    default: return staged_down_kernel<1, 4>;
  }
}

using TcGateUpFn = void (*)(TcGateUpParams);
using TcDownFn = void (*)(TcDownParams);

template <int CB>
TcGateUpFn pick_tc_gate_up(bool lane_tables, bool prefetch) {
  if (lane_tables) return prefetch ? tc_gate_up_kernel<CB, true, true> : tc_gate_up_kernel<CB, true, false>;
  return prefetch ? tc_gate_up_kernel<CB, false, true> : tc_gate_up_kernel<CB, false, false>;
}

TcGateUpFn pick_tc_gate_up(int cb, bool lane_tables, bool prefetch) {
  return cb == 2 ? pick_tc_gate_up<2>(lane_tables, prefetch) : pick_tc_gate_up<1>(lane_tables, prefetch);
}

TcDownFn pick_tc_down(int cb, bool prefetch) {
  switch (cb) {
    case 8: return prefetch ? tc_down_kernel<8, true> : tc_down_kernel<8, false>;
    case 4: return prefetch ? tc_down_kernel<4, true> : tc_down_kernel<4, false>;
    case 2: return prefetch ? tc_down_kernel<2, true> : tc_down_kernel<2, false>;
    default: return prefetch ? tc_down_kernel<1, true> : tc_down_kernel<1, false>;
  }
}

using GateUpFn = void (*)(GateUpParams);
using DownFn = void (*)(DownParams);

template <int R>
GateUpFn pick_gate_up(bool lane_tables, bool prefetch) {
  if (lane_tables) return prefetch ? expert_gate_up_kernel<R, true, true> : expert_gate_up_kernel<R, true, false>;
  return prefetch ? expert_gate_up_kernel<R, false, true> : expert_gate_up_kernel<R, false, false>;
}

GateUpFn pick_gate_up(int r, bool lane_tables, bool prefetch) {
  return r == 8 ? pick_gate_up<8>(lane_tables, prefetch) : pick_gate_up<4>(lane_tables, prefetch);
}

DownFn pick_down(int r, bool prefetch) {
  if (r == 8) return prefetch ? expert_down_kernel<8, true> : expert_down_kernel<8, false>;
  return prefetch ? expert_down_kernel<4, true> : expert_down_kernel<4, false>;
}

// Lets `kernel` take up to `bytes` of dynamic shared memory (default: as much as the
// device allows beside the kernel's own static shared memory; a request above that
// fails with cudaErrorInvalidValue).
template <typename Kernel>
Status allow_dynamic_shared(Kernel kernel, int bytes = INT32_MAX) {
  cudaFuncAttributes attributes{};
  DS4_CUDA_TRY(cudaFuncGetAttributes(&attributes, kernel));
  const int room = max_shared_per_block() - static_cast<int>(attributes.sharedSizeBytes);
  DS4_CUDA_TRY(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, std::min(bytes, room)));
  return Status::Ok();
}

Status init_once() {
  uint32_t table[kTableWords];
  DS4_RETURN_IF_ERROR(build_iq2xxs_compact_table(table));
  // On a stream of its own (non-blocking), so that the legacy stream's implicit
  // synchronisation never touches a stream being captured.
  cudaStream_t stream = nullptr;
  DS4_CUDA_TRY(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  cudaError_t copied = cudaMemcpyToSymbolAsync(g_selectors, table, sizeof(table), 0, cudaMemcpyHostToDevice, stream);
  if (copied == cudaSuccess) copied = cudaStreamSynchronize(stream);
  cudaStreamDestroy(stream);
  DS4_RETURN_IF_ERROR(cuda_status(copied, "uploading the IQ2_XXS selector table"));
  for (int r : {4, 8}) {
    for (bool lane : {false, true}) {
      for (bool prefetch : {false, true}) {
        DS4_RETURN_IF_ERROR(
            allow_dynamic_shared(pick_gate_up(r, lane, prefetch), (lane ? kLaneTableBytes : 0) + kMaxPartialBytes));
      }
    }
  }
  for (bool prefetch : {false, true}) {
    for (int cb : {1, 2}) {
      for (bool lane : {false, true}) DS4_RETURN_IF_ERROR(allow_dynamic_shared(pick_tc_gate_up(cb, lane, prefetch)));
    }
    for (int cb : {1, 2, 4, 8}) DS4_RETURN_IF_ERROR(allow_dynamic_shared(pick_tc_down(cb, prefetch)));
  }
  for (int stages : {2, 4, 8}) {
    for (bool lane : {false, true}) DS4_RETURN_IF_ERROR(allow_dynamic_shared(pick_staged_gate_up(stages, lane)));
  }
  for (int cb : {1, 2, 4, 8}) {
    for (bool wide : {false, true}) DS4_RETURN_IF_ERROR(allow_dynamic_shared(pick_staged_down(cb, wide)));
  }
  return Status::Ok();
}

Status check_options(const ExpertMatvecOptions& o) {
  if (o.rows_per_batch != 4 && o.rows_per_batch != 8) {
    return Status::Error("expert_matvec: rows_per_batch " + std::to_string(o.rows_per_batch) + " (expected 4 or 8)");
  }
  if (o.tc_blocks_per_warp != 0 && o.tc_blocks_per_warp != 1 && o.tc_blocks_per_warp != 2 &&
      o.tc_blocks_per_warp != 4 && o.tc_blocks_per_warp != 8) {
    return Status::Error("expert_matvec: tc_blocks_per_warp " + std::to_string(o.tc_blocks_per_warp) +
                         " (expected 0, 1, 2, 4 or 8)");
  }
  if (o.blocks_per_sm < 0) {
    return Status::Error("expert_matvec: blocks_per_sm " + std::to_string(o.blocks_per_sm) + " is negative");
  }
  return Status::Ok();
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// Blocks for `batches` batches of row sets: the resident capacity (or the option), but
// no more than there are batches for.
Result<int> grid_for(const void* fn, int threads, size_t shared, int rowsets, int batches,
                     const ExpertMatvecOptions& o) {
  auto res = kernel_residency(fn, threads, shared);
  DS4_RETURN_IF_ERROR(res.status());
  const int per_sm = o.blocks_per_sm > 0 ? std::min(o.blocks_per_sm, res->blocks_per_sm) : res->blocks_per_sm;
  const int needed = (batches + rowsets - 1) / rowsets;
  return std::max(1, std::min(per_sm * res->multiprocessors, needed));
}

// The tensor-core launches' shapes: 256-column blocks per warp (cb), warps per row set
// (all of a tile's columns), row sets per block, dynamic shared memory layout.
struct TcPlan {
  int cb = 1;
  int warps = 1;
  int rowsets = 1;
  int threads = 32;
  bool lane_tables = false;
  TcXLayout xl;
  int partial_offset = 0;
  size_t shared = 0;
};

Result<TcPlan> plan_tc_gate_up(const DeviceMatrix& g, bool lane_tables, int blocks_per_warp) {
  if (g.cols % 256 != 0 || g.cols <= 0 || g.cols / 256 > kTcMaxGateUpBlocks) {
    return Status::Error("expert gate+up (tensor cores): " + std::to_string(g.cols) +
                         " columns (expected a multiple of 256 up to " + std::to_string(256 * kTcMaxGateUpBlocks) +
                         ")");
  }
  if (g.rows % 16 != 0 || g.rows <= 0) {
    return Status::Error("expert gate+up (tensor cores): " + std::to_string(g.rows) +
                         " rows (expected a multiple of 16)");
  }
  const int blocks = static_cast<int>(g.cols / 256);
  TcPlan plan;
  plan.cb = blocks_per_warp > 0 ? blocks_per_warp : blocks <= kTcMaxWarps ? 1 : 2;
  if ((plan.cb != 1 && plan.cb != 2) || blocks % plan.cb != 0 || blocks / plan.cb > kTcMaxWarps) {
    return Status::Error("expert gate+up (tensor cores): " + std::to_string(g.cols) + " columns in blocks of " +
                         std::to_string(256 * plan.cb) + " per warp (expected 1 or 2 x 256, dividing the columns, " +
                         "at most " + std::to_string(kTcMaxWarps) + " warps)");
  }
  plan.warps = blocks / plan.cb;
  plan.rowsets = std::clamp(kTcMaxWarps / plan.warps, 1, kMaxRowsets);
  plan.threads = plan.rowsets * plan.warps * 32;
  for (bool lane : {lane_tables, false}) {
    plan.lane_tables = lane;
    plan.xl = tc_x_layout(lane ? kLaneTableBytes : 0, g.cols, false);
    plan.partial_offset = plan.xl.end;
    plan.shared = static_cast<size_t>(plan.partial_offset) + size_t{2} * plan.rowsets * plan.warps * 32 * sizeof(float);
    if (plan.shared <= static_cast<size_t>(max_shared_per_block())) return plan;
  }
  return Status::Error("expert gate+up (tensor cores): " + std::to_string(plan.shared) +
                       " bytes of shared memory needed, the device allows " + std::to_string(max_shared_per_block()));
}

Result<TcPlan> plan_tc_down(const DeviceMatrix& d, int n_used, int blocks_per_warp) {
  if (d.cols % 256 != 0 || d.cols <= 0) {
    return Status::Error("expert down (tensor cores): " + std::to_string(d.cols) +
                         " columns (expected a multiple of 256)");
  }
  if (d.rows % 16 != 0 || d.rows <= 0 || d.rows > (int64_t{1} << 30)) {
    return Status::Error("expert down (tensor cores): " + std::to_string(d.rows) +
                         " rows (expected a multiple of 16)");
  }
  const int blocks = static_cast<int>(d.cols / 256);
  const int64_t total = static_cast<int64_t>(n_used) * blocks;
  if (n_used < 1 || total > kTcMaxDownBlocks) {
    return Status::Error("expert down (tensor cores): " + std::to_string(n_used) + " experts x " +
                         std::to_string(d.cols) + " columns (at most " + std::to_string(256 * kTcMaxDownBlocks) +
                         " columns in all)");
  }
  TcPlan plan;
  plan.cb = 0;
  for (int cb : {1, 2, 4, 8}) {
    if (blocks % cb == 0 && total / cb <= kTcDownMaxWarps && (blocks_per_warp == 0 || blocks_per_warp == cb)) {
      plan.cb = cb;
      break;
    }
  }
  if (plan.cb == 0) {
    return Status::Error("expert down (tensor cores): " + std::to_string(n_used) + " experts x " +
                         std::to_string(d.cols) + " columns do not split into at most " +
                         std::to_string(kTcDownMaxWarps) + " warps" +
                         (blocks_per_warp ? " of " + std::to_string(blocks_per_warp) + " x 256 columns" : ""));
  }
  plan.warps = static_cast<int>(total / plan.cb);
  plan.rowsets = std::clamp(kTcDownMaxWarps / plan.warps, 1, kMaxRowsets);
  plan.threads = plan.rowsets * plan.warps * 32;
  plan.xl = tc_x_layout(0, total * 256, true);
  plan.partial_offset = plan.xl.end;
  plan.shared = static_cast<size_t>(plan.partial_offset) + size_t{2} * plan.rowsets * plan.warps * 16 * sizeof(float);
  if (plan.shared > static_cast<size_t>(max_shared_per_block())) {
    return Status::Error("expert down (tensor cores): " + std::to_string(plan.shared) +
                         " bytes of shared memory needed, the device allows " +
                         std::to_string(max_shared_per_block()));
  }
  return plan;
}

// The checks common to both kernels of each kind (types, counts).
Status gate_up_common(const ExpertGateUpLaunch& l) {
  if (!l.gate || !l.up) return Status::Error("expert gate+up: gate or up matrix missing");
  const DeviceMatrix& g = *l.gate;
  const DeviceMatrix& u = *l.up;
  if (g.type != GgmlType::IQ2_XXS || u.type != GgmlType::IQ2_XXS) {
    return Status::Error("expert gate+up: weights are " + std::string(ggml_type_name(g.type)) + " / " +
                         std::string(ggml_type_name(u.type)) + " (expected IQ2_XXS)");
  }
  if (g.cols != u.cols || g.rows != u.rows || g.count != u.count) {
    return Status::Error("expert gate+up: gate and up stacks differ in shape");
  }
  if (l.n_used < 1 || l.n_used > kMaxUsed || l.n_used > g.count) {
    return Status::Error("expert gate+up: " + std::to_string(l.n_used) + " experts used of " +
                         std::to_string(g.count) + " (expected 1.." + std::to_string(kMaxUsed) + ")");
  }
  if (static_cast<int64_t>(l.n_used) * g.rows > (int64_t{1} << 30)) {
    return Status::Error("expert gate+up: too many output rows");
  }
  return Status::Ok();
}

// The f32 gate+up kernel's shapes.
Status gate_up_f32_supported(const ExpertGateUpLaunch& l) {
  const DeviceMatrix& g = *l.gate;
  if (g.cols % kColsPerWarp != 0 || g.cols / kColsPerWarp > kMaxGateUpGroups || g.cols <= 0) {
    return Status::Error("expert gate+up (f32): " + std::to_string(g.cols) + " columns (expected a multiple of " +
                         std::to_string(kColsPerWarp) + " up to " +
                         std::to_string(kColsPerWarp * kMaxGateUpGroups) + ")");
  }
  if (g.rows % 8 != 0 || g.rows <= 0) {
    return Status::Error("expert gate+up (f32): " + std::to_string(g.rows) + " rows (expected a multiple of 8)");
  }
  return Status::Ok();
}

Status down_common(const ExpertDownLaunch& l) {
  if (!l.down) return Status::Error("expert down: matrix missing");
  const DeviceMatrix& d = *l.down;
  if (d.type != GgmlType::Q2_K) {
    return Status::Error("expert down: weights are " + std::string(ggml_type_name(d.type)) + " (expected Q2_K)");
  }
  if (l.n_used < 1 || l.n_used > d.count || l.n_used > kMaxUsed) {
    return Status::Error("expert down: " + std::to_string(l.n_used) + " experts used of " +
                         std::to_string(d.count));
  }
  return Status::Ok();
}

Status down_f32_supported(const ExpertDownLaunch& l) {
  const DeviceMatrix& d = *l.down;
  if (d.cols % kColsPerWarp != 0 || d.cols <= 0) {
    return Status::Error("expert down (f32): " + std::to_string(d.cols) + " columns (expected a multiple of " +
                         std::to_string(kColsPerWarp) + ")");
  }
  const int64_t warps = l.n_used * (d.cols / kColsPerWarp);
  if (warps > kDownMaxThreads / 32) {
    return Status::Error("expert down (f32): " + std::to_string(l.n_used) + " experts x " + std::to_string(d.cols) +
                         " columns need " + std::to_string(warps) + " warps per row (at most " +
                         std::to_string(kDownMaxThreads / 32) + ")");
  }
  if (d.rows % 8 != 0 || d.rows <= 0 || d.rows > (int64_t{1} << 30)) {
    return Status::Error("expert down (f32): " + std::to_string(d.rows) + " rows (expected a multiple of 8)");
  }
  return Status::Ok();
}

// The launch's inputs and outputs, as both gate+up kernels' parameters name them.
template <typename Params>
void fill_gate_up_inputs(const ExpertGateUpLaunch& l, Params* p) {
  const DeviceMatrix& g = *l.gate;
  p->g_data = g.data;
  p->g_scales = g.scales;
  p->u_data = l.up->data;
  p->u_scales = l.up->scales;
  p->row_bytes = static_cast<int64_t>(g.data_row_bytes());
  p->blocks = static_cast<int>(g.cols / 256);
  p->rows = static_cast<int>(g.rows);
  p->x = l.x;
  p->ids = l.ids;
  p->weights = l.weights;
  p->n_used = l.n_used;
  p->limit = l.swiglu_limit;
  p->y = l.y;
}

// The parameters both down kernels share (TcDownParams, StagedDownParams), from the
// launch and a plan (TcPlan or StagedPlan).
template <typename Plan, typename Params>
void fill_down_params(const ExpertDownLaunch& l, const Plan& plan, Params* p) {
  const DeviceMatrix& d = *l.down;
  p->data = d.data;
  p->row_bytes = static_cast<int64_t>(d.data_row_bytes());
  p->blocks = static_cast<int>(d.cols / 256);
  p->rows = static_cast<int>(d.rows);
  p->x = l.x;
  p->ids = l.ids;
  p->n_used = l.n_used;
  p->y = l.y;
  p->accumulate = l.accumulate ? 1 : 0;
  p->warps = plan.warps;
  p->per_slot = p->blocks / plan.cb;
  p->rowsets = plan.rowsets;
  p->tiles = p->rows / 16;
  p->xl = plan.xl;
  p->partial_offset = plan.partial_offset;
}

// Launches a tensor-core or staged down kernel, or the tensor-core gate+up kernel: a
// one-wave grid whose row sets walk the tiles.
template <typename Fn, typename Params>
Status launch_rowset_kernel(Fn fn, Params p, int threads, size_t shared, cudaStream_t stream,
                          const ExpertMatvecOptions& o, const char* what) {
  auto grid = grid_for(reinterpret_cast<const void*>(fn), threads, shared, p.rowsets, p.tiles, o);
  DS4_RETURN_IF_ERROR(grid.status());
  const int workers = *grid * p.rowsets;
  p.iters = (p.tiles + workers - 1) / workers;
  return cuda_status(launch_kernel(fn, dim3(*grid), dim3(threads), shared, stream, p), what);
}

Status launch_tc_gate_up(const ExpertGateUpLaunch& l, const TcPlan& plan, cudaStream_t stream,
                         const ExpertMatvecOptions& o) {
  TcGateUpParams p{};
  fill_gate_up_inputs(l, &p);
  p.warps = plan.warps;
  p.rowsets = plan.rowsets;
  p.tiles = l.n_used * p.rows / 16;
  p.xl = plan.xl;
  p.partial_offset = plan.partial_offset;
  return launch_rowset_kernel(pick_tc_gate_up(plan.cb, plan.lane_tables, o.prefetch), p, plan.threads, plan.shared,
                              stream, o, "expert gate+up launch (tensor cores)");
}

Status launch_tc_down(const ExpertDownLaunch& l, const TcPlan& plan, cudaStream_t stream,
                      const ExpertMatvecOptions& o) {
  TcDownParams p{};
  fill_down_params(l, plan, &p);
  return launch_rowset_kernel(pick_tc_down(plan.cb, o.prefetch), p, plan.threads, plan.shared, stream, o,
                              "expert down launch (tensor cores)");
}

// The staged launches' shapes and dynamic shared memory layout.
struct StagedPlan {
  int cb = 1;           // down: 256-column blocks per warp
  bool wide = false;    // down: 16-byte copies
  int stages = 2;       // gate+up: ring steps per warp
  bool lane_tables = false;
  int warps = 1;        // gate+up: per block; down: per row set
  int rowsets = 1;      // down
  int threads = 32;
  int scale_bufs = 1;   // gate+up
  TcXLayout xl;
  int ring_offset = 0;  // gate+up: ring; down: per-warp buffers
  int scale_offset = 0; // gate+up
  int partial_offset = 0;  // down
  size_t shared = 0;
};

int align16(int bytes) { return (bytes + 15) & ~15; }

Result<StagedPlan> plan_staged_gate_up(const ExpertGateUpLaunch& l, const ExpertMatvecOptions& o) {
  const DeviceMatrix& g = *l.gate;
  if (g.cols % 256 != 0 || g.cols <= 0 || g.cols / 256 > kStagedMaxBlocks) {
    return Status::Error("expert gate+up (staged): " + std::to_string(g.cols) +
                         " columns (expected a multiple of 256 up to " + std::to_string(256 * kStagedMaxBlocks) + ")");
  }
  if (g.rows % 8 != 0 || g.rows <= 0) {
    return Status::Error("expert gate+up (staged): " + std::to_string(g.rows) + " rows (expected a multiple of 8)");
  }
  if (!aligned16(g.data) || !aligned16(l.up->data) || !aligned16(g.scales) || !aligned16(l.up->scales)) {
    return Status::Error("expert gate+up (staged): weights or scales not 16-byte aligned");
  }
  if (o.staged_stages != 0 && o.staged_stages != 2 && o.staged_stages != 4 && o.staged_stages != 8) {
    return Status::Error("expert gate+up (staged): staged_stages " + std::to_string(o.staged_stages) +
                         " (expected 0, 2, 4 or 8)");
  }
  if (o.staged_warps < 0 || o.staged_warps > kStagedMaxWarps) {
    return Status::Error("expert gate+up (staged): staged_warps " + std::to_string(o.staged_warps) +
                         " (expected 0.." + std::to_string(kStagedMaxWarps) + ")");
  }
  auto res = kernel_residency(reinterpret_cast<const void*>(pick_staged_gate_up(2, false)), 32, 0);
  DS4_RETURN_IF_ERROR(res.status());
  const int blocks = static_cast<int>(g.cols / 256);
  const int64_t units = l.n_used * g.rows / 8;
  StagedPlan plan;
  // One unit per warp over one wave where the units allow it (the units of 8 rows spread
  // over every multiprocessor), at most kStagedMaxWarps.
  plan.warps = o.staged_warps > 0 ? o.staged_warps
                                  : static_cast<int>(std::clamp<int64_t>(
                                        (units + res->multiprocessors - 1) / res->multiprocessors, 1, kStagedMaxWarps));
  plan.threads = plan.warps * 32;
  std::string tried;
  for (int stages : {2, 4, 8}) {
    if (o.staged_stages != 0 && stages != o.staged_stages) continue;
    for (bool lane : {o.tc_lane_tables, false}) {
      plan.stages = stages;
      plan.lane_tables = lane;
      plan.scale_bufs = 1 + (stages - 1 + blocks - 1) / blocks;
      plan.xl = tc_x_layout(lane ? kLaneTableBytes : 0, g.cols, false);
      plan.ring_offset = align16(plan.xl.end);
      plan.scale_offset = plan.ring_offset + plan.warps * stages * kStagedSlotBytes;
      plan.shared = static_cast<size_t>(plan.scale_offset) + static_cast<size_t>(plan.warps) * plan.scale_bufs * 32 * blocks;
      if (plan.shared + kStagedStaticBytes <= static_cast<size_t>(max_shared_per_block())) return plan;
      tried = std::to_string(plan.shared);
    }
  }
  return Status::Error("expert gate+up (staged): " + tried + " bytes of shared memory needed, the device allows " +
                       std::to_string(max_shared_per_block()));
}

Result<StagedPlan> plan_staged_down(const ExpertDownLaunch& l, const ExpertMatvecOptions& o) {
  const DeviceMatrix& d = *l.down;
  // The tensor-core kernel's split of the columns over warps (the same sums in the same order).
  auto tc = plan_tc_down(d, l.n_used, o.tc_blocks_per_warp);
  DS4_RETURN_IF_ERROR(tc.status());
  if (o.staged_blocks_ahead < 0) {
    return Status::Error("expert down (staged): staged_blocks_ahead " + std::to_string(o.staged_blocks_ahead) +
                         " is negative");
  }
  if (o.staged_tiles < 0 || o.staged_tiles > kMaxRowsets) {
    return Status::Error("expert down (staged): staged_tiles " + std::to_string(o.staged_tiles) + " (expected 0.." +
                         std::to_string(kMaxRowsets) + ")");
  }
  StagedPlan plan;
  plan.cb = tc->cb;
  plan.wide = plan.cb % 4 == 0 && d.data_row_bytes() % 16 == 0 && aligned16(d.data);
  plan.warps = tc->warps;
  plan.xl = tc->xl;
  plan.partial_offset = plan.xl.end;
  const int warp_bytes = align16(16 * plan.cb * 84);
  int rowsets = o.staged_tiles > 0 ? o.staged_tiles : std::clamp(kStagedDownMaxWarps / plan.warps, 1, kMaxRowsets);
  for (; rowsets >= 1; --rowsets) {
    plan.rowsets = rowsets;
    plan.threads = rowsets * plan.warps * 32;
    plan.ring_offset = align16(plan.partial_offset + 2 * rowsets * plan.warps * 16 * static_cast<int>(sizeof(float)));
    plan.shared = static_cast<size_t>(plan.ring_offset) + static_cast<size_t>(rowsets) * plan.warps * warp_bytes;
    if (plan.threads <= kStagedDownMaxWarps * 32 &&
        plan.shared + kStagedStaticBytes <= static_cast<size_t>(max_shared_per_block())) {
      return plan;
    }
    if (o.staged_tiles > 0) break;
  }
  return Status::Error("expert down (staged): " + std::to_string(plan.shared) + " bytes of shared memory and " +
                       std::to_string(plan.threads) + " threads needed, the device allows " +
                       std::to_string(max_shared_per_block()) + " and " +
                       std::to_string(kStagedDownMaxWarps * 32));
}

// Whether the staged kernel of `plan` routes the launch's token itself (its block has a
// thread per expert, the scratch fits the ring, the counts are the router's).
bool staged_gate_up_routes(const ExpertGateUpLaunch& l, const StagedPlan& plan) {
  if (l.route == nullptr) return false;
  const RouterLaunch& r = *l.route;
  const int64_t ring_bytes = static_cast<int64_t>(plan.warps) * plan.stages * kStagedSlotBytes;
  return r.logits != nullptr && r.ids != nullptr && r.weights != nullptr && r.n_experts > 0 &&
         r.n_experts <= kFoldMaxExperts && r.n_used == l.n_used && r.n_used <= cuda_detail::kRouteMaxUsed &&
         r.n_used <= r.n_experts && (r.tid2eid == nullptr || r.token != nullptr) &&
         plan.threads >= (r.n_experts + 31) / 32 * 32 && ring_bytes >= static_cast<int64_t>(sizeof(FoldScratch)) &&
         plan.ring_offset % 16 == 0;
}

Status launch_staged_gate_up(const ExpertGateUpLaunch& l, const StagedPlan& plan, cudaStream_t stream,
                             const ExpertMatvecOptions& o) {
  const DeviceMatrix& g = *l.gate;
  StagedGateUpParams p{};
  fill_gate_up_inputs(l, &p);
  p.units = static_cast<int>(l.n_used * g.rows / 8);
  p.scale_bufs = plan.scale_bufs;
  p.xl = plan.xl;
  p.ring_offset = plan.ring_offset;
  p.scale_offset = plan.scale_offset;
  if (staged_gate_up_routes(l, plan)) p.route = *l.route;
  StagedGateUpFn fn = pick_staged_gate_up(plan.stages, plan.lane_tables);
  const int units_per_block = plan.warps;
  auto grid = grid_for(reinterpret_cast<const void*>(fn), plan.threads, plan.shared, units_per_block, p.units, o);
  DS4_RETURN_IF_ERROR(grid.status());
  return cuda_status(launch_kernel(fn, dim3(*grid), dim3(plan.threads), plan.shared, stream, p),
                     "expert gate+up launch (staged)");
}

Status launch_staged_down(const ExpertDownLaunch& l, const StagedPlan& plan, cudaStream_t stream,
                          const ExpertMatvecOptions& o) {
  StagedDownParams p{};
  fill_down_params(l, plan, &p);
  p.buffer_offset = plan.ring_offset;
  p.ahead = o.staged_blocks_ahead > 0 ? std::min(o.staged_blocks_ahead, plan.cb) : plan.cb;
  return launch_rowset_kernel(pick_staged_down(plan.cb, plan.wide), p, plan.threads, plan.shared, stream, o,
                              "expert down launch (staged)");
}

}  // namespace

Status expert_matvec_init() {
  static std::once_flag once;
  static Status status;
  // The first launch may come while this thread captures a graph.
  std::call_once(once, [] { status = with_relaxed_capture([] { return init_once(); }); });
  return status;
}

Status expert_gate_up_supported(const ExpertGateUpLaunch& l) {
  DS4_RETURN_IF_ERROR(gate_up_common(l));
  auto tc = plan_tc_gate_up(*l.gate, true, 0);
  if (tc.ok()) return Status::Ok();
  const Status f32 = gate_up_f32_supported(l);
  if (f32.ok()) return Status::Ok();
  return Status::Error(tc.status().message() + "; " + f32.message());
}

Status expert_down_supported(const ExpertDownLaunch& l) {
  DS4_RETURN_IF_ERROR(down_common(l));
  auto tc = plan_tc_down(*l.down, l.n_used, 0);
  if (tc.ok()) return Status::Ok();
  const Status f32 = down_f32_supported(l);
  if (f32.ok()) return Status::Ok();
  return Status::Error(tc.status().message() + "; " + f32.message());
}

// The staged plan of a launch that routes inside the staged kernel, else an error.
Result<StagedPlan> routing_plan(const ExpertGateUpLaunch& r, const ExpertMatvecOptions& o) {
  if (r.route == nullptr || !o.tensor_cores || !o.staged || o.tc_blocks_per_warp != 0 || !r.x || !r.y ||
      !aligned16(r.x)) {
    return Status::Error("expert gate+up: no routing inside the kernel");
  }
  DS4_RETURN_IF_ERROR(gate_up_common(r));
  auto plan = plan_staged_gate_up(r, o);
  DS4_RETURN_IF_ERROR(plan.status());
  if (!staged_gate_up_routes(r, *plan)) return Status::Error("expert gate+up: the staged kernel cannot route here");
  return plan;
}

// A launch that routes its token first (ExpertGateUpLaunch::route): inside the staged
// kernel where it can, else through the router kernel before the products.
Status launch_gate_up_routing(const ExpertGateUpLaunch& l, cudaStream_t stream, const ExpertMatvecOptions& o) {
  ExpertGateUpLaunch r = l;
  r.ids = l.route->ids;
  r.weights = l.route->weights;
  if (auto plan = routing_plan(r, o); plan.ok()) return launch_staged_gate_up(r, *plan, stream, o);
  DS4_RETURN_IF_ERROR(launch_router(*l.route, stream));
  r.route = nullptr;
  return launch_expert_gate_up(r, stream, o);
}

bool expert_gate_up_routes_inside(const ExpertGateUpLaunch& l, const ExpertMatvecOptions& o) {
  if (l.route == nullptr || !expert_matvec_init().ok() || !check_options(o).ok()) return false;
  ExpertGateUpLaunch r = l;
  r.ids = l.route->ids;
  r.weights = l.route->weights;
  return routing_plan(r, o).ok();
}

Status launch_expert_gate_up(const ExpertGateUpLaunch& l, cudaStream_t stream, const ExpertMatvecOptions& o) {
  DS4_RETURN_IF_ERROR(expert_matvec_init());
  DS4_RETURN_IF_ERROR(check_options(o));
  if (l.route != nullptr) return launch_gate_up_routing(l, stream, o);
  DS4_RETURN_IF_ERROR(gate_up_common(l));
  if (!l.x || !l.y || !l.ids) return Status::Error("expert gate+up: x, y or ids missing");
  if (!aligned16(l.x)) return Status::Error("expert gate+up: x is not 16-byte aligned");
  if (o.tensor_cores && o.staged && o.tc_blocks_per_warp == 0) {  // a column split asked for: the tensor-core kernel
    auto plan = plan_staged_gate_up(l, o);
    if (plan.ok()) return launch_staged_gate_up(l, *plan, stream, o);
    if (o.staged_stages != 0 || o.staged_warps != 0) return plan.status();  // asked for a shape that does not fit
  }
  if (o.tensor_cores) {
    auto plan = plan_tc_gate_up(*l.gate, o.tc_lane_tables, o.tc_blocks_per_warp);
    if (plan.ok()) return launch_tc_gate_up(l, *plan, stream, o);
    if (o.tc_blocks_per_warp != 0) return plan.status();  // asked for a shape that does not fit
  }
  DS4_RETURN_IF_ERROR(gate_up_f32_supported(l));
  const DeviceMatrix& g = *l.gate;
  const int r = o.rows_per_batch;
  GateUpParams p{};
  p.g_data = g.data;
  p.g_scales = g.scales;
  p.u_data = l.up->data;
  p.u_scales = l.up->scales;
  p.row_bytes = static_cast<int64_t>(g.data_row_bytes());
  p.scales_per_row = g.scales_per_row();
  p.rows = static_cast<int>(g.rows);
  p.x = l.x;
  p.ids = l.ids;
  p.weights = l.weights;
  p.n_used = l.n_used;
  p.limit = l.swiglu_limit;
  p.y = l.y;
  p.groups = static_cast<int>(g.cols / kColsPerWarp);
  // 16 warps a block: the lane tables are copied once per block, so fewer, larger blocks.
  p.rowsets = std::clamp((kMaxThreads / 32) / p.groups, 1, kMaxRowsets);
  p.batches = l.n_used * p.rows / r;
  const int threads = p.rowsets * p.groups * 32;
  bool lane_tables = o.lane_tables;
  const size_t partial_bytes = size_t{2} * p.rowsets * p.groups * 2 * r * sizeof(float);
  if (lane_tables && kLaneTableBytes + partial_bytes > static_cast<size_t>(max_shared_per_block())) {
    lane_tables = false;  // the compact table fits any GPU
  }
  p.partial_offset = lane_tables ? kLaneTableBytes : 0;
  const size_t shared = p.partial_offset + partial_bytes;
  GateUpFn fn = pick_gate_up(r, lane_tables, o.prefetch);
  auto grid = grid_for(reinterpret_cast<const void*>(fn), threads, shared, p.rowsets, p.batches, o);
  DS4_RETURN_IF_ERROR(grid.status());
  const int workers = *grid * p.rowsets;
  p.iters = (p.batches + workers - 1) / workers;
  return cuda_status(launch_kernel(fn, dim3(*grid), dim3(threads), shared, stream, p), "expert gate+up launch");
}

Status launch_expert_down(const ExpertDownLaunch& l, cudaStream_t stream, const ExpertMatvecOptions& o) {
  DS4_RETURN_IF_ERROR(expert_matvec_init());
  DS4_RETURN_IF_ERROR(check_options(o));
  DS4_RETURN_IF_ERROR(down_common(l));
  if (!l.x || !l.y || !l.ids) return Status::Error("expert down: x, y or ids missing");
  if (!aligned16(l.x)) return Status::Error("expert down: x is not 16-byte aligned");
  if (o.tensor_cores && o.staged) {
    auto plan = plan_staged_down(l, o);
    if (plan.ok()) return launch_staged_down(l, *plan, stream, o);
    if (o.staged_tiles != 0) return plan.status();
  }
  if (o.tensor_cores) {
    auto plan = plan_tc_down(*l.down, l.n_used, o.tc_blocks_per_warp);
    if (plan.ok()) return launch_tc_down(l, *plan, stream, o);
    if (o.tc_blocks_per_warp != 0) return plan.status();
  }
  DS4_RETURN_IF_ERROR(down_f32_supported(l));
  const DeviceMatrix& d = *l.down;
  const int r = o.rows_per_batch;
  DownParams p{};
  p.data = d.data;
  p.row_bytes = static_cast<int64_t>(d.data_row_bytes());
  p.rows = static_cast<int>(d.rows);
  p.x_slot_stride = d.cols;
  p.x = l.x;
  p.ids = l.ids;
  p.y = l.y;
  p.accumulate = l.accumulate ? 1 : 0;
  p.groups = static_cast<int>(d.cols / kColsPerWarp);
  p.warps = l.n_used * p.groups;
  p.rowsets = std::clamp((kDownMaxThreads / 32) / p.warps, 1, kMaxRowsets);
  p.batches = p.rows / r;
  const int threads = p.rowsets * p.warps * 32;
  const size_t shared = size_t{2} * p.rowsets * p.warps * r * sizeof(float);
  DownFn fn = pick_down(r, o.prefetch);
  auto grid = grid_for(reinterpret_cast<const void*>(fn), threads, shared, p.rowsets, p.batches, o);
  DS4_RETURN_IF_ERROR(grid.status());
  const int workers = *grid * p.rowsets;
  p.iters = (p.batches + workers - 1) / workers;
  return cuda_status(launch_kernel(fn, dim3(*grid), dim3(threads), shared, stream, p), "expert down launch");
}

}  // namespace ds4
