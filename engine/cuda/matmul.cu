#include "cuda/matmul.h"

#include <cuda_fp16.h>

#include <algorithm>
#include <mutex>
#include <string>

#include "cuda/async_copy.cuh"
#include "cuda/cuda_check.h"
#include "cuda/dequant_chunk.cuh"
#include "cuda/group_tiles.cuh"
#include "cuda/device_math.cuh"
#include "cuda/device_limits.h"
#include "format/iq2xxs_grid.h"

namespace ds4 {
namespace {

using cuda_detail::cp_async_commit;
using cuda_detail::cp_async_wait;
using cuda_detail::smem_addr;

using cuda_detail::Chunk;
using cuda_detail::find_group_tile;
using cuda_detail::swiglu;

// Block tile: kBlockRows weight rows x BN tokens (assignments), kBlockK columns per
// step; 8 warps. Each thread dequantizes one 32-column chunk of one row per step.
constexpr int kThreads = 256;
constexpr int kBlockRows = 128;
constexpr int kBlockK = 64;
constexpr int kLds = kBlockK + 8;  // f16 per shared row (padding: conflict-free ldmatrix)

__device__ uint64_t g_mm_iq2xxs_grid[384];  // codebook, then sign masks as bytes

struct MatmulParams {
  const uint8_t* w_data;
  const uint16_t* w_scales;
  const uint8_t* u_data;
  const uint16_t* u_scales;
  int64_t row_bytes;
  int64_t scales_per_row;
  int64_t matrix_rows;
  int64_t row_begin;
  int cols;
  int n_rows;
  int matrix;
  const float* x;
  int64_t x_stride;
  float* y;
  int64_t y_stride;
  int n_tokens;
  float swiglu_limit;
  int accumulate;
  const int32_t* group_offsets;
  int n_groups;
  const int32_t* x_rows;
  const float* row_scale;
  const void* x_split;  // staged kernels: the split activations (hi rows, then lo rows)
};

__device__ __forceinline__ void ldmatrix_x4(uint32_t* r, const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}

// d += a (16x16, row) * b (16x8, col); f16 operands, f32 accumulators.
__device__ __forceinline__ void mma_16816(float* d, const uint32_t* a, const uint32_t* b) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

template <GgmlType T>
__device__ __forceinline__ void store_weights(half* dst, const typename Chunk<T>::Raw& raw, const uint64_t* grid) {
  int4* d4 = reinterpret_cast<int4*>(dst);
  float w[32];
  const float f = Chunk<T>::dequant(raw, grid, w);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    __half2 h[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) h[j] = __floats2half2_rn(w[8 * i + 2 * j] * f, w[8 * i + 2 * j + 1] * f);
    d4[i] = *reinterpret_cast<int4*>(h);
  }
}

// Formats whose affine form w = A * q + B has B != 0 (the k-quants' minimums).
template <GgmlType T>
constexpr bool kHasOffset = T == GgmlType::Q2_K || T == GgmlType::Q4_K;

// Exact mode: four integer bytes of `word` (unsigned, or int8 + 128 when kBiased) as
// two half2 (bytes 0-1, bytes 2-3), exactly: each byte is placed under the f16
// exponent of 1024 (0x6400 | b = 1024 + b, exact for b < 1024), then 1024 (1152 for
// the biased form) is subtracted in f16, exact because the result is a small integer.
template <bool kBiased>
__device__ __forceinline__ int2 bytes_to_half2x2(uint32_t word) {
  const __half2 bias = __half2half2(__ushort_as_half(kBiased ? 0x6480 : 0x6400));  // 1152 : 1024
  const uint32_t lo = __byte_perm(word, 0x64u, 0x4140), hi = __byte_perm(word, 0x64u, 0x4342);
  const __half2 l = __hsub2(*reinterpret_cast<const __half2*>(&lo), bias);
  const __half2 h = __hsub2(*reinterpret_cast<const __half2*>(&hi), bias);
  return make_int2(*reinterpret_cast<const int*>(&l), *reinterpret_cast<const int*>(&h));
}

// Eight words of four integer bytes each (word i = elements 4i..4i+3) to 32 f16 at dst.
template <bool kBiased>
__device__ __forceinline__ void store_integer_bytes(half* dst, const uint32_t* words) {
  int4* d4 = reinterpret_cast<int4*>(dst);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int2 a = bytes_to_half2x2<kBiased>(words[2 * i]);
    const int2 b = bytes_to_half2x2<kBiased>(words[2 * i + 1]);
    d4[i] = make_int4(a.x, a.y, b.x, b.y);
  }
}

// Exact mode: the chunk's 32 small integers q (exact in f16) to dst, and A (and B for
// kHasOffset) of its two 16-column halves to a[0..1] (b[0..1]). The integers reach f16
// without passing through f32 (same values as the CPU dequantization's integers).
// All-zero raw bytes (a chunk outside the matrix) give A = B = 0 (every format's
// scales are then zero), so such a chunk adds nothing; no branch, so the compiler can
// interleave this work with the tensor-core products of the previous step.
//
// SCALED_Q2K (Q2_K only, for the kernels applying A per 32 columns): the levels are
// stored multiplied by their 16-column scale sc (0..3 x 0..15 <= 45, exact in f16)
// and A = d for both halves, so one A serves the chunk; B stays per 16 (-dmin * m).
template <GgmlType T, bool SCALED_Q2K = false>
__device__ __forceinline__ void store_exact_weights(half* dst, float* a, float* b, const typename Chunk<T>::Raw& raw,
                                                    const uint64_t* grid) {
  int4* d4 = reinterpret_cast<int4*>(dst);
  if constexpr (T == GgmlType::Q2_K && SCALED_Q2K) {
    // Q2_K chunk (see Chunk<Q2_K>): levels are 2-bit fields of q at shift 2 * jj; the
    // scale byte's low nibble is sc, its high nibble m, one byte per 16 columns.
    const uint32_t sc0 = raw.sc & 0xF, sc1 = (raw.sc >> 8) & 0xF;
    const int shift = 2 * raw.jj;
    uint32_t words[8];
#pragma unroll
    for (int i = 0; i < 8; ++i) words[i] = ((raw.q[i] >> shift) & 0x03030303u) * (i < 4 ? sc0 : sc1);  // bytes <= 45: no carry
    store_integer_bytes<false>(dst, words);
    const float d = cuda_detail::half_bits_to_float(static_cast<uint16_t>(raw.dd & 0xFFFF));
    const float dmin = cuda_detail::half_bits_to_float(static_cast<uint16_t>(raw.dd >> 16));
    a[0] = a[1] = d;
    b[0] = -(dmin * static_cast<float>((raw.sc >> 4) & 0xF));
    b[1] = -(dmin * static_cast<float>((raw.sc >> 12) & 0xF));
  } else if constexpr (T == GgmlType::F16) {
    // The weights themselves (A = 1, B = 0).
#pragma unroll
    for (int i = 0; i < 4; ++i) d4[i] = raw.v[i];
    a[0] = a[1] = 1.0f;
  } else if constexpr (T == GgmlType::Q8_0) {
    // int8 values, A = d.
    const uint32_t words[8] = {static_cast<uint32_t>(raw.a.x) ^ 0x80808080u, static_cast<uint32_t>(raw.a.y) ^ 0x80808080u,
                               static_cast<uint32_t>(raw.a.z) ^ 0x80808080u, static_cast<uint32_t>(raw.a.w) ^ 0x80808080u,
                               static_cast<uint32_t>(raw.b.x) ^ 0x80808080u, static_cast<uint32_t>(raw.b.y) ^ 0x80808080u,
                               static_cast<uint32_t>(raw.b.z) ^ 0x80808080u, static_cast<uint32_t>(raw.b.w) ^ 0x80808080u};
    store_integer_bytes<true>(dst, words);
    a[0] = a[1] = cuda_detail::half_bits_to_float(raw.d);
  } else {
    // IQ2_XXS: signed grid values as int8, A = d * (0.5 + s) / 4. Q2_K, Q4_K: unsigned
    // levels, A = d * sc, B = -dmin * m.
    cuda_detail::PackedChunk pc;
    Chunk<T>::pack(raw, grid, &pc);
    constexpr bool kSigned = T == GgmlType::IQ2_XXS;
    uint32_t words[8];
#pragma unroll
    for (int i = 0; i < 8; ++i) words[i] = static_cast<uint32_t>(pc.w[i]) ^ (kSigned ? 0x80808080u : 0u);
    store_integer_bytes<kSigned>(dst, words);
    a[0] = pc.a0;
    a[1] = pc.a1;
    if constexpr (kHasOffset<T>) {
      b[0] = -pc.m0;
      b[1] = -pc.m1;
    }
  }
}

// 2^11: the low part of a split activation is stored scaled by it (far from the f16
// subnormals; |x - hi| * 2^11 <= |x|, so it overflows no sooner than hi), and its
// products are scaled back by kLoUnscale (exact powers of two).
constexpr float kLoScale = 2048.0f;
constexpr float kLoUnscale = 1.0f / 2048.0f;

// Shared-memory layout of one block (dynamic part), in bytes; the kernel and the
// launcher both use it.
struct SmemLayout {
  int w, u, x, xl, aw, bw, au, bu, sx, mq, dmin, sxh, sxl, total;
};

// f16 per shared row of the Q2_K minimums' tiles (16 sub-blocks, no padding).
constexpr int kMLds = 16;

// Index of element j (0..15) of row `row` in such a tile: the two 8-element halves
// swap places in rows 4..7 of every 8, so the eight 16-byte rows an ldmatrix phase
// reads (8 consecutive rows, one half) hit distinct banks.
__device__ __forceinline__ int mq_index(int row, int j) {
  return row * kMLds + (((j >> 3) ^ (row >> 2)) & 1) * 8 + (j & 7);
}

// split: exact with the activations' lo part (kExact); false for kF16Activations.
// offset: B applied per chunk in f32 (the k-quants' minimums); offset_mma: the Q2_K
// minimums on tensor cores instead (tiles mq, dmin, sxh, sxl; see matmul_kernel).
__host__ __device__ constexpr SmemLayout smem_layout(int bn, bool paired, bool exact, bool offset, bool split = true,
                                                     bool offset_mma = false) {
  SmemLayout l{};
  const int wbytes = 2 * kBlockRows * kLds * 2;  // [2][kBlockRows][kLds] f16
  const int xbytes = 2 * bn * kLds * 2;          // [2][bn][kLds] f16
  const int abytes = 2 * kBlockRows * 4 * 4;     // [2][kBlockRows][4] f32 (per 16 columns)
  l.w = 0;
  l.u = l.w + wbytes;
  l.x = l.u + (paired ? wbytes : 0);
  l.xl = l.x + xbytes;
  l.aw = l.xl + (exact && split ? xbytes : 0);
  l.bw = l.aw + (exact ? abytes : 0);
  l.au = l.bw + (exact && offset ? abytes : 0);
  l.bu = l.au + (exact && paired ? abytes : 0);
  l.sx = l.bu + (exact && paired && offset ? abytes : 0);
  l.mq = l.sx + (exact && offset ? 2 * bn * 4 * 4 : 0);  // [2][bn][4] f32
  l.dmin = l.mq + (offset_mma ? 2 * kBlockRows * kMLds * 2 : 0);  // [2][kBlockRows][kMLds] f16
  l.sxh = l.dmin + (offset_mma ? 2 * kBlockRows * 4 : 0);         // [2][kBlockRows] f32
  l.sxl = l.sxh + (offset_mma ? 2 * bn * kMLds * 2 : 0);          // [2][bn][kMLds] f16
  l.total = l.sxl + (offset_mma ? 2 * bn * kMLds * 2 : 0);        // [2][bn][kMLds] f16
  return l;
}

// The arithmetic form of a kernel, shared by the kernel and the launcher.
template <GgmlType T, int BN, bool PAIRED, bool EXACT, bool K32, bool F16X>
struct KernelForm {
  static constexpr bool kSplit = EXACT && !F16X;  // activations as hi + lo
  // Q2_K, unpaired, per-32 scale: the minimums' term on tensor cores once per super-block.
  static constexpr bool kOffsetMma = EXACT && K32 && T == GgmlType::Q2_K && !PAIRED;
  // The other k-quant kernels: B applied per chunk (per 16 columns for Q2_K) in f32.
  static constexpr bool kOffset = EXACT && kHasOffset<T> && !kOffsetMma;
  static constexpr SmemLayout kLayout = smem_layout(BN, PAIRED, EXACT, kOffset, kSplit, kOffsetMma);
};

// MIN_BLOCKS: resident blocks per SM the compiler must allow (2 caps registers at 128).
// K32 (exact): scale applied once per 32 columns (Q2_K: its 16-column scales folded
// into the integer levels, its offsets kept per 16) instead of per 16.
// F16X (exact weights, K32 only): kF16Activations, the activations' hi part alone.
//
// Q2_K unpaired K32 kernels (kOffsetMma) apply the minimums once per super-block of
// 256 columns (4 steps): -dmin * sum_j m_j S_j over its 16 sub-blocks j (m_j the 4-bit
// minimum, S_j the f32 sum of x over the sub-block) is one k16 product of the integers
// m_j (exact in f16) with S_j / 16 split as hi + lo * 2^-11 (the 1/16 keeps hi within
// the f16 range wherever x is), then acc += (-16 dmin) * that product: two mma and
// four f32 operations per 16x8 fragment per super-block instead of 64 f32 operations.
// Tiles per super-block parity (the store of step s + 1, during step s, may begin the
// next super-block while step s ends this one).
template <GgmlType T, int BN, bool PAIRED, bool EXACT, int MIN_BLOCKS = 1, bool K32 = false, bool F16X = false>
__global__ void __launch_bounds__(kThreads, MIN_BLOCKS) matmul_kernel(MatmulParams p) {
  using C = Chunk<T>;
  static_assert(!K32 || EXACT, "K32 is a kExact form");
  static_assert(!F16X || K32, "F16X is a K32 form");
  using KF = KernelForm<T, BN, PAIRED, EXACT, K32, F16X>;
  constexpr bool kSplit = KF::kSplit;
  constexpr bool kOffsetMma = KF::kOffsetMma;
  constexpr bool kOffset = KF::kOffset;
  constexpr bool kOffset16 = kOffset && K32 && T == GgmlType::Q2_K;  // K32 with B per 16 columns
  constexpr int kWarpsM = BN == 128 ? 2 : 4;
  constexpr int kWarpsN = 8 / kWarpsM;
  constexpr int kWarpRows = kBlockRows / kWarpsM;
  constexpr int kWarpCols = BN / kWarpsN;
  constexpr int MT = kWarpRows / 16;
  constexpr int NT = kWarpCols / 8;
  constexpr int kXVec = BN * (kBlockK / 4) / kThreads;  // float4 of x per thread per step
  constexpr SmemLayout kL = KF::kLayout;
  static_assert(NT % 2 == 0, "B fragments are loaded two n-tiles at a time");

  extern __shared__ int4 smem4[];
  char* smem = reinterpret_cast<char*>(smem4);
  half* s_w = reinterpret_cast<half*>(smem + kL.w);    // [2][kBlockRows][kLds]
  half* s_u = reinterpret_cast<half*>(smem + kL.u);    // [2][kBlockRows][kLds] (paired)
  half* s_x = reinterpret_cast<half*>(smem + kL.x);    // [2][BN][kLds] (exact: hi)
  half* s_xl = reinterpret_cast<half*>(smem + kL.xl);  // [2][BN][kLds] (kSplit: lo * 2^11)
  float* s_aw = reinterpret_cast<float*>(smem + kL.aw);  // [2][kBlockRows][4] (exact)
  float* s_bw = reinterpret_cast<float*>(smem + kL.bw);
  float* s_au = reinterpret_cast<float*>(smem + kL.au);
  float* s_bu = reinterpret_cast<float*>(smem + kL.bu);
  float* s_sx = reinterpret_cast<float*>(smem + kL.sx);  // [2][BN][4]: sum of x per 16 columns
  half* s_mq = reinterpret_cast<half*>(smem + kL.mq);      // kOffsetMma: [2][kBlockRows][kMLds] m_j
  float* s_dmin = reinterpret_cast<float*>(smem + kL.dmin);  // kOffsetMma: [2][kBlockRows] -16 dmin
  half* s_sxh = reinterpret_cast<half*>(smem + kL.sxh);    // kOffsetMma: [2][BN][kMLds] hi of S_j / 16
  half* s_sxl = reinterpret_cast<half*>(smem + kL.sxl);    // kOffsetMma: [2][BN][kMLds] lo * 2^11
  __shared__ uint64_t grid[T == GgmlType::IQ2_XXS ? 384 : 1];
  __shared__ const float* s_xrow[BN];
  __shared__ int s_out[BN];
  __shared__ int s_scan[kThreads];
  __shared__ int s_group, s_tile;

  const int tid = threadIdx.x;
  int matrix = p.matrix;
  int a_begin, a_end;
  if (p.group_offsets) {
    find_group_tile<kThreads, BN>(p, blockIdx.x, s_scan, &s_group, &s_tile);
    if (s_group < 0) return;
    matrix = s_group;
    a_begin = p.group_offsets[s_group] + s_tile * BN;
    a_end = min(a_begin + BN, p.group_offsets[s_group + 1]);
  } else {
    a_begin = blockIdx.x * BN;
    a_end = min(a_begin + BN, p.n_tokens);
  }
  if (a_begin >= a_end) return;
  for (int i = tid; i < BN; i += kThreads) {
    const int a = a_begin + i;
    const bool ok = a < a_end;
    s_out[i] = ok ? a : -1;
    s_xrow[i] = ok ? p.x + static_cast<int64_t>(p.x_rows ? p.x_rows[a] : a) * p.x_stride : nullptr;
  }
  if constexpr (T == GgmlType::IQ2_XXS) {
    for (int i = tid; i < 384; i += kThreads) grid[i] = g_mm_iq2xxs_grid[i];
  }
  __syncthreads();

  // This thread's weight chunk: row tid/2, chunk 2*step + tid%2.
  const int row_tile0 = blockIdx.y * kBlockRows;
  const int my_row = tid >> 1, my_half = tid & 1;
  const bool row_ok = row_tile0 + my_row < p.n_rows;
  const int64_t grow = static_cast<int64_t>(matrix) * p.matrix_rows + p.row_begin + row_tile0 + my_row;
  const uint8_t* w_row = p.w_data + (row_ok ? grow * p.row_bytes : 0);
  const uint16_t* w_sc = p.w_scales ? p.w_scales + (row_ok ? grow * p.scales_per_row : 0) : nullptr;
  const uint8_t* u_row = PAIRED ? p.u_data + (row_ok ? grow * p.row_bytes : 0) : nullptr;
  const uint16_t* u_sc = PAIRED && p.u_scales ? p.u_scales + (row_ok ? grow * p.scales_per_row : 0) : nullptr;
  const int n_chunks = p.cols >> 5;
  const int steps = (n_chunks + 1) >> 1;

  // Chunks outside the matrix (rows past n_rows, chunks past the last) are loaded
  // from a valid address and replaced by all-zero raw bytes (zero weights and scales).
  typename C::Raw raw_w, raw_u;
  float4 xr[kXVec];
  auto load = [&](int step) {
    const int c = 2 * step + my_half;
    const bool ok = row_ok && c < n_chunks;
    const int cc = min(c, n_chunks - 1);
    const typename C::Raw zero{};
    const typename C::Raw lw = C::load(w_row, w_sc, cc);
    raw_w = ok ? lw : zero;
    if constexpr (PAIRED) {
      const typename C::Raw lu = C::load(u_row, u_sc, cc);
      raw_u = ok ? lu : zero;
    }
#pragma unroll
    for (int i = 0; i < kXVec; ++i) {
      const int idx = tid + kThreads * i;
      const int tok = idx >> 4, col = step * kBlockK + (idx & 15) * 4;
      const float* src = s_xrow[tok];
      xr[i] = src && col < p.cols ? __ldg(reinterpret_cast<const float4*>(src + col)) : make_float4(0, 0, 0, 0);
    }
  };
  // Writes the tiles of step `st` (loaded by load(st)) into buffer st & 1.
  auto store = [&](int st) {
    const int buf = st & 1;
    const int off = (buf * kBlockRows + my_row) * kLds + my_half * 32;
    if constexpr (kOffsetMma) {
      // This chunk's two minimums m_j (sub-blocks 4 (st % 4) + 2 my_half + {0, 1} of
      // the super-block) and the super-block's -16 dmin. Zero raw bytes give zeros.
      const int sb = (st >> 2) & 1;
      const __half2 m = __floats2half2_rn(static_cast<float>((raw_w.sc >> 4) & 0xF), static_cast<float>((raw_w.sc >> 12) & 0xF));
      *reinterpret_cast<__half2*>(s_mq + mq_index(sb * kBlockRows + my_row, (st & 3) * 4 + my_half * 2)) = m;
      if ((st & 3) == 0 && my_half == 0) {
        s_dmin[sb * kBlockRows + my_row] = -16.0f * cuda_detail::half_bits_to_float(static_cast<uint16_t>(raw_w.dd >> 16));
      }
    }
    if constexpr (EXACT) {
      const int aoff = (buf * kBlockRows + my_row) * 4 + my_half * 2;
      float unused_b[2];
      store_exact_weights<T, K32>(s_w + off, s_aw + aoff, kOffset ? s_bw + aoff : unused_b, raw_w, grid);
      if constexpr (PAIRED) store_exact_weights<T, K32>(s_u + off, s_au + aoff, s_bu + aoff, raw_u, grid);
    } else {
      store_weights<T>(s_w + off, raw_w, grid);
      if constexpr (PAIRED) store_weights<T>(s_u + off, raw_u, grid);
    }
#pragma unroll
    for (int i = 0; i < kXVec; ++i) {
      const int idx = tid + kThreads * i;
      const int tok = idx >> 4, k = (idx & 15) * 4;
      const float4 v = xr[i];
      __half2 h[2] = {__floats2half2_rn(v.x, v.y), __floats2half2_rn(v.z, v.w)};
      *reinterpret_cast<uint2*>(s_x + (buf * BN + tok) * kLds + k) = *reinterpret_cast<uint2*>(h);
      if constexpr (kSplit) {
        const float2 h0 = __half22float2(h[0]), h1 = __half22float2(h[1]);
        __half2 l[2] = {__floats2half2_rn((v.x - h0.x) * kLoScale, (v.y - h0.y) * kLoScale),
                        __floats2half2_rn((v.z - h1.x) * kLoScale, (v.w - h1.y) * kLoScale)};
        *reinterpret_cast<uint2*>(s_xl + (buf * BN + tok) * kLds + k) = *reinterpret_cast<uint2*>(l);
      }
      if constexpr (kOffset || kOffsetMma) {
        // Sum of the 16 columns of a sub-block: four consecutive lanes hold its float4s.
        float s4 = (v.x + v.y) + (v.z + v.w);
        s4 += __shfl_xor_sync(0xFFFFFFFFu, s4, 1);
        s4 += __shfl_xor_sync(0xFFFFFFFFu, s4, 2);
        if constexpr (kOffsetMma) {
          if ((idx & 3) == 0) {
            const float s16 = s4 * 0.0625f;  // exact
            const half hi = __float2half_rn(s16);
            const half lo = __float2half_rn((s16 - __half2float(hi)) * kLoScale);
            const int at = mq_index(((st >> 2) & 1) * BN + tok, (st & 3) * 4 + ((idx & 15) >> 2));
            s_sxh[at] = hi;
            s_sxl[at] = lo;
          }
        } else {
          if ((idx & 3) == 0) s_sx[(buf * BN + tok) * 4 + ((idx & 15) >> 2)] = s4;
        }
      }
    }
  };

  const int warp = tid >> 5, lane = tid & 31;
  const int wm0 = (warp % kWarpsM) * kWarpRows;
  const int wn0 = (warp / kWarpsM) * kWarpCols;
  const int g = lane >> 2, q = lane & 3;
  float acc[MT][NT][4];
  float acc_u[PAIRED ? MT : 1][PAIRED ? NT : 1][4];
  // kSuperA (Q2_K kOffsetMma kernels where the registers allow it: all but the kExact
  // 64-token two-block one): A = d is the same for the super-block's 8 chunks, so the
  // products of a super-block sum in `sup` (q . hi, plus q . lo * 2^-11 added once per
  // chunk) and acc += d * sup once per super-block, beside the minimums.
  constexpr bool kSuperA = kOffsetMma && (MIN_BLOCKS == 1 || BN == 32 || F16X);
  float sup[kSuperA ? MT : 1][kSuperA ? NT : 1][4];
#pragma unroll
  for (int m = 0; m < MT; ++m)
#pragma unroll
    for (int n = 0; n < NT; ++n)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        acc[m][n][i] = 0.0f;
        if constexpr (PAIRED) acc_u[m][n][i] = 0.0f;
        if constexpr (kSuperA) sup[m][n][i] = 0.0f;
      }

  // Exact mode, one 16x8 fragment: t = q . lo * 2^-11 + q . hi over 16 columns, then
  // acc += A_row * t (+ B_row * sum x_tok).
  auto exact_update = [&](float* a, const uint32_t* af, const uint32_t* lo, const uint32_t* hi, const float* am,
                          const float* bm, const float* sxn) {
    float t[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    mma_16816(t, af, lo);
#pragma unroll
    for (int i = 0; i < 4; ++i) t[i] *= kLoUnscale;
    mma_16816(t, af, hi);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      a[i] = fmaf(am[i >> 1], t[i], a[i]);
      if constexpr (kOffset) a[i] = fmaf(bm[i >> 1], sxn[i & 1], a[i]);
    }
  };

  // Pipeline: the registers hold the raw chunk and x of step + 1 while step runs; each
  // step first dequantizes them into the other buffer (free since the barrier ending
  // the previous step), then issues the loads of step + 2, then multiplies. The three
  // are independent and in one basic block, so the dequantization overlaps the
  // products. The store in the last step writes a buffer nobody reads.
  load(0);
  store(0);
  load(1);
  __syncthreads();
  for (int step = 0; step < steps; ++step) {
    const int buf = step & 1;
    store(step + 1);
    load(step + 2);
    const half* bw = s_w + buf * kBlockRows * kLds;
    const half* bu = s_u + buf * kBlockRows * kLds;
    const half* bx = s_x + buf * BN * kLds;
    const half* bxl = s_xl + buf * BN * kLds;
    if constexpr (K32) {
      // Formats with one scale per 32 columns: the temporary spans both k16 steps of
      // a chunk, so the scale is applied once per 32 columns.
#pragma unroll
      for (int kh = 0; kh < kBlockK; kh += 32) {
        uint32_t bf[2][NT][2], bl[kSplit ? 2 : 1][kSplit ? NT : 1][2];
#pragma unroll
        for (int h = 0; h < 2; ++h) {
#pragma unroll
          for (int n2 = 0; n2 < NT / 2; ++n2) {
            uint32_t r[4];
            const int tok = wn0 + n2 * 16 + (lane & 7) + ((lane >> 4) << 3);
            const int xo = tok * kLds + kh + 16 * h + ((lane >> 3) & 1) * 8;
            ldmatrix_x4(r, bx + xo);
            bf[h][2 * n2][0] = r[0];
            bf[h][2 * n2][1] = r[1];
            bf[h][2 * n2 + 1][0] = r[2];
            bf[h][2 * n2 + 1][1] = r[3];
            if constexpr (kSplit) {
              ldmatrix_x4(r, bxl + xo);
              bl[h][2 * n2][0] = r[0];
              bl[h][2 * n2][1] = r[1];
              bl[h][2 * n2 + 1][0] = r[2];
              bl[h][2 * n2 + 1][1] = r[3];
            }
          }
        }
        const int ks = kh >> 4;  // first of the chunk's two k16 steps (same A, B)
        // Sums of x: per 32 columns, or per 16 where B is per 16 (Q2_K).
        float sx[kOffset ? NT : 1][2][kOffset16 ? 2 : 1];
        if constexpr (kOffset) {
#pragma unroll
          for (int n = 0; n < NT; ++n)
#pragma unroll
            for (int j = 0; j < 2; ++j) {
              const float* sp = s_sx + (buf * BN + wn0 + n * 8 + 2 * q + j) * 4 + ks;
              if constexpr (kOffset16) {
                sx[n][j][0] = sp[0];
                sx[n][j][kOffset16 ? 1 : 0] = sp[1];
              } else {
                sx[n][j][0] = sp[0] + sp[1];
              }
            }
        }
        // bm[r][h]: B of C row g (r = 0) or g + 8 (r = 1), of the chunk (h = 0) or of
        // its 16-column halves (h = 0, 1) where B is per 16.
        auto chunk_update = [&](float* a, const uint32_t (*af)[4], int n, const float* am, const float (*bm)[2]) {
          float t[4] = {0.0f, 0.0f, 0.0f, 0.0f};
          if constexpr (kSplit) {
            mma_16816(t, af[0], bl[0][n]);
            mma_16816(t, af[1], bl[1][n]);
#pragma unroll
            for (int i = 0; i < 4; ++i) t[i] *= kLoUnscale;
          }
          mma_16816(t, af[0], bf[0][n]);
          mma_16816(t, af[1], bf[1][n]);
#pragma unroll
          for (int i = 0; i < 4; ++i) {
            a[i] = fmaf(am[i >> 1], t[i], a[i]);
            if constexpr (kOffset) {
              a[i] = fmaf(bm[i >> 1][0], sx[n][i & 1][0], a[i]);
              if constexpr (kOffset16) a[i] = fmaf(bm[i >> 1][1], sx[n][i & 1][kOffset16 ? 1 : 0], a[i]);
            }
          }
        };
#pragma unroll
        for (int m = 0; m < MT; ++m) {
          const int row = wm0 + m * 16 + (lane & 15);
          const int r0 = buf * kBlockRows + wm0 + m * 16 + g;  // C rows g and g + 8
          uint32_t af[2][4];
          ldmatrix_x4(af[0], bw + row * kLds + kh + (lane >> 4) * 8);
          ldmatrix_x4(af[1], bw + row * kLds + kh + 16 + (lane >> 4) * 8);
          {
            const float am[2] = {s_aw[r0 * 4 + ks], s_aw[(r0 + 8) * 4 + ks]};
            float bm[2][2] = {{0.0f, 0.0f}, {0.0f, 0.0f}};
            if constexpr (kOffset) {
#pragma unroll
              for (int h = 0; h < (kOffset16 ? 2 : 1); ++h) {
                bm[0][h] = s_bw[r0 * 4 + ks + h];
                bm[1][h] = s_bw[(r0 + 8) * 4 + ks + h];
              }
            }
            if constexpr (kSuperA) {
#pragma unroll
              for (int n = 0; n < NT; ++n) {
                float* t = sup[m][n];
                if constexpr (kSplit) {
                  float lo[4] = {0.0f, 0.0f, 0.0f, 0.0f};
                  mma_16816(lo, af[0], bl[0][n]);
                  mma_16816(lo, af[1], bl[1][n]);
#pragma unroll
                  for (int i = 0; i < 4; ++i) t[i] = fmaf(lo[i], kLoUnscale, t[i]);
                }
                mma_16816(t, af[0], bf[0][n]);
                mma_16816(t, af[1], bf[1][n]);
              }
            } else {
#pragma unroll
              for (int n = 0; n < NT; ++n) chunk_update(acc[m][n], af, n, am, bm);
            }
          }
          if constexpr (PAIRED) {
            ldmatrix_x4(af[0], bu + row * kLds + kh + (lane >> 4) * 8);
            ldmatrix_x4(af[1], bu + row * kLds + kh + 16 + (lane >> 4) * 8);
            const float am[2] = {s_au[r0 * 4 + ks], s_au[(r0 + 8) * 4 + ks]};
            float bm[2][2] = {{0.0f, 0.0f}, {0.0f, 0.0f}};
            if constexpr (kOffset) {
#pragma unroll
              for (int h = 0; h < (kOffset16 ? 2 : 1); ++h) {
                bm[0][h] = s_bu[r0 * 4 + ks + h];
                bm[1][h] = s_bu[(r0 + 8) * 4 + ks + h];
              }
            }
#pragma unroll
            for (int n = 0; n < NT; ++n) chunk_update(acc_u[m][n], af, n, am, bm);
          }
        }
      }
    } else {
#pragma unroll
    for (int kk = 0; kk < kBlockK; kk += 16) {
      const int ks = kk >> 4;
      uint32_t bf[NT][2];
      uint32_t bl[EXACT ? NT : 1][2];
#pragma unroll
      for (int n2 = 0; n2 < NT / 2; ++n2) {
        uint32_t r[4];
        const int tok = wn0 + n2 * 16 + (lane & 7) + ((lane >> 4) << 3);
        const int xo = tok * kLds + kk + ((lane >> 3) & 1) * 8;
        ldmatrix_x4(r, bx + xo);
        bf[2 * n2][0] = r[0];
        bf[2 * n2][1] = r[1];
        bf[2 * n2 + 1][0] = r[2];
        bf[2 * n2 + 1][1] = r[3];
        if constexpr (EXACT) {
          ldmatrix_x4(r, bxl + xo);
          bl[2 * n2][0] = r[0];
          bl[2 * n2][1] = r[1];
          bl[2 * n2 + 1][0] = r[2];
          bl[2 * n2 + 1][1] = r[3];
        }
      }
      float sx[kOffset ? NT : 1][2];
      if constexpr (kOffset) {
#pragma unroll
        for (int n = 0; n < NT; ++n)
#pragma unroll
          for (int j = 0; j < 2; ++j) sx[n][j] = s_sx[(buf * BN + wn0 + n * 8 + 2 * q + j) * 4 + ks];
      }
#pragma unroll
      for (int m = 0; m < MT; ++m) {
        uint32_t af[4];
        const int row = wm0 + m * 16 + (lane & 15);
        ldmatrix_x4(af, bw + row * kLds + kk + (lane >> 4) * 8);
        if constexpr (EXACT) {
          const int r0 = buf * kBlockRows + wm0 + m * 16 + g;  // C rows g and g + 8
          const float am[2] = {s_aw[r0 * 4 + ks], s_aw[(r0 + 8) * 4 + ks]};
          float bm[2] = {0.0f, 0.0f};
          if constexpr (kOffset) {
            bm[0] = s_bw[r0 * 4 + ks];
            bm[1] = s_bw[(r0 + 8) * 4 + ks];
          }
#pragma unroll
          for (int n = 0; n < NT; ++n) exact_update(acc[m][n], af, bl[n], bf[n], am, bm, sx[kOffset ? n : 0]);
        } else {
#pragma unroll
          for (int n = 0; n < NT; ++n) mma_16816(acc[m][n], af, bf[n]);
        }
        if constexpr (PAIRED) {
          ldmatrix_x4(af, bu + row * kLds + kk + (lane >> 4) * 8);
          if constexpr (EXACT) {
            const int r0 = buf * kBlockRows + wm0 + m * 16 + g;
            const float am[2] = {s_au[r0 * 4 + ks], s_au[(r0 + 8) * 4 + ks]};
            float bm[2] = {0.0f, 0.0f};
            if constexpr (kOffset) {
              bm[0] = s_bu[r0 * 4 + ks];
              bm[1] = s_bu[(r0 + 8) * 4 + ks];
            }
#pragma unroll
            for (int n = 0; n < NT; ++n) exact_update(acc_u[m][n], af, bl[n], bf[n], am, bm, sx[kOffset ? n : 0]);
          } else {
#pragma unroll
            for (int n = 0; n < NT; ++n) mma_16816(acc_u[m][n], af, bf[n]);
          }
        }
      }
    }
    }  // K32
    if constexpr (kOffsetMma) {
      if ((step & 3) == 3) {
        // The super-block's minimums: acc += (-16 dmin) * (m . S/16), S/16 = hi + lo * 2^-11.
        const int sb = (step >> 2) & 1;
        const half* bq = s_mq + sb * kBlockRows * kMLds;
        uint32_t sh[NT][2], sl[NT][2];
#pragma unroll
        for (int n2 = 0; n2 < NT / 2; ++n2) {
          uint32_t r[4];
          const int tok = wn0 + n2 * 16 + (lane & 7) + ((lane >> 4) << 3);
          const int xo = mq_index(sb * BN + tok, ((lane >> 3) & 1) * 8);
          ldmatrix_x4(r, s_sxh + xo);
          sh[2 * n2][0] = r[0];
          sh[2 * n2][1] = r[1];
          sh[2 * n2 + 1][0] = r[2];
          sh[2 * n2 + 1][1] = r[3];
          ldmatrix_x4(r, s_sxl + xo);
          sl[2 * n2][0] = r[0];
          sl[2 * n2][1] = r[1];
          sl[2 * n2 + 1][0] = r[2];
          sl[2 * n2 + 1][1] = r[3];
        }
#pragma unroll
        for (int m = 0; m < MT; ++m) {
          uint32_t af[4];
          ldmatrix_x4(af, bq + mq_index(wm0 + m * 16 + (lane & 15), (lane >> 4) * 8));
          const int r0 = sb * kBlockRows + wm0 + m * 16 + g;  // C rows g and g + 8
          const float dm[2] = {s_dmin[r0], s_dmin[r0 + 8]};
          // kSuperA: d of the super-block (A of every chunk; this step's tile holds it).
          const int ra = buf * kBlockRows + wm0 + m * 16 + g;
          const float d[2] = {kSuperA ? s_aw[ra * 4] : 0.0f, kSuperA ? s_aw[(ra + 8) * 4] : 0.0f};
#pragma unroll
          for (int n = 0; n < NT; ++n) {
            float t[4] = {0.0f, 0.0f, 0.0f, 0.0f};
            mma_16816(t, af, sl[n]);
#pragma unroll
            for (int i = 0; i < 4; ++i) t[i] *= kLoUnscale;
            mma_16816(t, af, sh[n]);
#pragma unroll
            for (int i = 0; i < 4; ++i) {
              if constexpr (kSuperA) {
                acc[m][n][i] = fmaf(d[i >> 1], sup[m][n][i], acc[m][n][i]);
                sup[m][n][i] = 0.0f;
              }
              acc[m][n][i] = fmaf(dm[i >> 1], t[i], acc[m][n][i]);
            }
          }
        }
      }
    }
    __syncthreads();
  }

#pragma unroll
  for (int m = 0; m < MT; ++m) {
#pragma unroll
    for (int n = 0; n < NT; ++n) {
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int r = row_tile0 + wm0 + m * 16 + g + (i >= 2 ? 8 : 0);
        const int a = s_out[wn0 + n * 8 + 2 * q + (i & 1)];
        if (r >= p.n_rows || a < 0) continue;
        float v = acc[m][n][i];
        if constexpr (PAIRED) {
          v = swiglu(v, acc_u[m][n][i], p.swiglu_limit);
          if (p.row_scale) v *= p.row_scale[a];
        }
        float* out = p.y + static_cast<int64_t>(a) * p.y_stride + r;
        *out = p.accumulate ? *out + v : v;
      }
    }
  }
}

// ---------------------------------------------------------------------------------
// Staged kExact kernels (MatmulLaunch::split_workspace): IQ2_XXS and Q8_0 weights,
// 64-token tiles, the arithmetic of the default kExact kernel (scale per 32 columns,
// split activations) in the same order, so the outputs match it bit for bit.
//
// The activations are split once per launch (split_rows_kernel) into f16 hi and lo
// rows. Per 64-column step the block needs the raw weight bytes of 128 rows (16 bytes
// per row for IQ2_XXS, 64 for Q8_0; the per-row scales are read through registers one
// step ahead) and the hi and lo tiles of its 64 tokens: cp.async copies them into a
// ring of kStages stages (stage s % kStages), kStages - 1 steps ahead. Iteration s:
//   issue the copies of step s + kStages - 1 (one commit group per step, empty past
//   the end), dequantize step s + 1 from its raw stage into f16 buffer (s + 1) & 1,
//   run the products of step s (buffer s & 1, x stage s), wait until the copies of
//   step s + 2 have landed (cp.async.wait_group kStages - 3), barrier.
// Hazards: the copies issued in iteration s overwrite stage (s - 1) % kStages, whose
// raw bytes were read in iteration s - 2 and x tiles in iteration s - 1, both before
// the barrier ending iteration s - 1; buffer (s + 1) & 1 was last read by the products
// of iteration s - 1.
// ---------------------------------------------------------------------------------

constexpr int kStagedBN = 64;

// f16 hi and lo * 2^11 of x (as the kExact kernels form them) for rows [0, rows):
// hi[r * cols + c], lo[(rows + r) * cols + c]; then, per 16 columns j, the sum S of x
// over them (in the order of the Q2_K kernels: float4 sums paired, then the pairs) as
// S / 16 split the same way: hi at [2 rows cols + r cols/16 + j], lo at
// [2 rows cols + rows cols/16 + r cols/16 + j]. Sixteen columns per thread.
__global__ void split_rows_kernel(const float* x, int64_t x_stride, int64_t rows, int cols, half* out) {
  const int per_row = cols / 16;
  const int64_t items = rows * per_row;
  half* sums = out + 2 * rows * cols;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < items;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / per_row;
    const int j = static_cast<int>(i % per_row);
    float s4[4];
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const int c = 16 * j + 4 * k;
      const float4 v = __ldg(reinterpret_cast<const float4*>(x + r * x_stride + c));
      __half2 h[2] = {__floats2half2_rn(v.x, v.y), __floats2half2_rn(v.z, v.w)};
      const float2 h0 = __half22float2(h[0]), h1 = __half22float2(h[1]);
      __half2 l[2] = {__floats2half2_rn((v.x - h0.x) * kLoScale, (v.y - h0.y) * kLoScale),
                      __floats2half2_rn((v.z - h1.x) * kLoScale, (v.w - h1.y) * kLoScale)};
      *reinterpret_cast<uint2*>(out + r * cols + c) = *reinterpret_cast<uint2*>(h);
      *reinterpret_cast<uint2*>(out + (rows + r) * cols + c) = *reinterpret_cast<uint2*>(l);
      s4[k] = (v.x + v.y) + (v.z + v.w);
    }
    const float s16 = ((s4[0] + s4[1]) + (s4[2] + s4[3])) * 0.0625f;  // exact scaling
    const half hi = __float2half_rn(s16);
    sums[r * per_row + j] = hi;
    sums[(rows + r) * per_row + j] = __float2half_rn((s16 - __half2float(hi)) * kLoScale);
  }
}

__device__ __forceinline__ void cp_async16_zfill(void* smem, const void* global, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(smem)), "l"(global),
               "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cp_async4_zfill(void* smem, const void* global, bool valid) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(smem_addr(smem)), "l"(global),
               "r"(valid ? 4 : 0));
}

// Per-type facts of the staged kernels.
template <GgmlType T>
struct StagedFormat;
template <>
struct StagedFormat<GgmlType::IQ2_XXS> {
  static constexpr int kChunkBytes = 8;  // raw bytes per 32 columns (the scale apart)
  static constexpr int kStages = 4;
  // The scale of chunk c of a row (one per 256 columns).
  static __device__ __forceinline__ uint16_t scale(const uint16_t* sc, int c) { return __ldg(sc + (c >> 3)); }
  // The raw chunk 2 st + which (which = 0, 1) of a row from the row's stage bytes.
  static __device__ __forceinline__ Chunk<GgmlType::IQ2_XXS>::Raw raw(const uint8_t* bytes, int which, int, uint16_t d) {
    return {*reinterpret_cast<const uint2*>(bytes + which * kChunkBytes), d};
  }
};
template <>
struct StagedFormat<GgmlType::Q8_0> {
  static constexpr int kChunkBytes = 32;
  static constexpr int kStages = 3;
  static __device__ __forceinline__ uint16_t scale(const uint16_t* sc, int c) { return __ldg(sc + c); }
  static __device__ __forceinline__ Chunk<GgmlType::Q8_0>::Raw raw(const uint8_t* bytes, int which, int, uint16_t d) {
    const int4* v = reinterpret_cast<const int4*>(bytes + which * kChunkBytes);
    return {v[0], v[1], d};
  }
};
// Q2_K (84-byte blocks of 256 columns, rows only 4-byte aligned): per step and row ten
// words copied with 4-byte cp.async: the 32 quant bytes of the block half both chunks
// read (at different shifts), the scale bytes of the two chunks, then d and dmin.
template <>
struct StagedFormat<GgmlType::Q2_K> {
  static constexpr int kChunkBytes = 20;  // 40 bytes per row and step
  static constexpr int kStages = 4;
  static __device__ __forceinline__ uint16_t scale(const uint16_t*, int) { return 0; }  // inside the raw bytes
  // Byte offset in a row of word w (0..9) of step st.
  static __device__ __forceinline__ int word_offset(int st, int w) {
    const int blk = (st >> 2) * 84, hh = (st >> 1) & 1;
    return w < 8 ? blk + 16 + 32 * hh + 4 * w : w == 8 ? blk + 8 * hh + 4 * (st & 1) : blk + 80;
  }
  static __device__ __forceinline__ Chunk<GgmlType::Q2_K>::Raw raw(const uint8_t* bytes, int which, int st, uint16_t) {
    const uint32_t* w = reinterpret_cast<const uint32_t*>(bytes);
    Chunk<GgmlType::Q2_K>::Raw r;
#pragma unroll
    for (int i = 0; i < 8; ++i) r.q[i] = w[i];
    r.sc = (w[8] >> (16 * which)) & 0xFFFF;
    r.dd = w[9];
    r.jj = (2 * st + which) & 3;
    return r;
  }
};

template <GgmlType T>
constexpr bool kHasStaged = T == GgmlType::IQ2_XXS || T == GgmlType::Q8_0 || T == GgmlType::Q2_K;

// Shared-memory layout of a staged kernel (dynamic part), in bytes.
struct StagedLayout {
  int raw, x, w, a, mq, dmin, sxh, sxl, total;
};

// mins: the Q2_K minimums' tiles (as the default kernel's kOffsetMma ones, per
// super-block parity).
__host__ __device__ constexpr StagedLayout staged_layout(int chunk_bytes, int stages, bool paired, bool mins) {
  const int mats = paired ? 2 : 1;
  StagedLayout l{};
  l.raw = 0;                                                              // [stages][mats][kBlockRows][2 chunks]
  l.x = l.raw + stages * mats * kBlockRows * 2 * chunk_bytes;             // [stages][2: hi, lo][BN][kLds] f16
  l.w = l.x + stages * 2 * kStagedBN * kLds * 2;                          // [2][mats][kBlockRows][kLds] f16
  l.a = l.w + 2 * mats * kBlockRows * kLds * 2;                           // [2][mats][kBlockRows][4] f32
  l.mq = l.a + 2 * mats * kBlockRows * 4 * 4;
  l.dmin = l.mq + (mins ? 2 * kBlockRows * kMLds * 2 : 0);   // [2][kBlockRows][kMLds] f16 m_j
  l.sxh = l.dmin + (mins ? 2 * kBlockRows * 4 : 0);          // [2][kBlockRows] f32 -16 dmin
  l.sxl = l.sxh + (mins ? 2 * kStagedBN * kMLds * 2 : 0);    // [2][BN][kMLds] f16 hi of S_j / 16
  l.total = l.sxl + (mins ? 2 * kStagedBN * kMLds * 2 : 0);  // [2][BN][kMLds] f16 lo * 2^11
  return l;
}

template <GgmlType T, bool PAIRED>
struct StagedForm {
  static_assert(!(T == GgmlType::Q2_K && PAIRED), "the staged Q2_K kernel is unpaired");
  static constexpr bool kMins = T == GgmlType::Q2_K;
  static constexpr StagedLayout kLayout =
      staged_layout(StagedFormat<T>::kChunkBytes, StagedFormat<T>::kStages, PAIRED, kMins);
};

// p.x_split: the split rows (hi at row r, lo at row pool + r, pool = p.x_stride, the
// launch's x_pool_rows).
template <GgmlType T, bool PAIRED>
__global__ void __launch_bounds__(kThreads, 1) staged_matmul_kernel(MatmulParams p) {
  const half* xs = static_cast<const half*>(p.x_split);
  using SF = StagedFormat<T>;
  constexpr int BN = kStagedBN;
  constexpr int kStages = SF::kStages;
  constexpr int kMats = PAIRED ? 2 : 1;
  constexpr int kRowBytes = 2 * SF::kChunkBytes;  // raw bytes of one row per step
  constexpr int kPieces = kRowBytes / 16;         // 16-byte copies per row per step
  constexpr int kWarpsM = 4;
  constexpr int kWarpRows = kBlockRows / kWarpsM;  // 32
  constexpr int kWarpCols = BN / 2;                // 32
  constexpr int MT = kWarpRows / 16;
  constexpr int NT = kWarpCols / 8;
  constexpr StagedLayout kL = StagedForm<T, PAIRED>::kLayout;
  static_assert(kStages >= 3, "the wait below keeps kStages - 3 groups in flight");

  extern __shared__ int4 smem4[];
  char* smem = reinterpret_cast<char*>(smem4);
  uint8_t* s_raw = reinterpret_cast<uint8_t*>(smem + kL.raw);
  half* s_x = reinterpret_cast<half*>(smem + kL.x);
  half* s_w = reinterpret_cast<half*>(smem + kL.w);
  float* s_a = reinterpret_cast<float*>(smem + kL.a);
  constexpr bool kMins = StagedForm<T, PAIRED>::kMins;  // Q2_K: the minimums per super-block on tensor cores
  half* s_mq = reinterpret_cast<half*>(smem + kL.mq);        // kMins: [2][kBlockRows][kMLds] m_j
  float* s_dmin = reinterpret_cast<float*>(smem + kL.dmin);  // kMins: [2][kBlockRows] -16 dmin
  half* s_sxh = reinterpret_cast<half*>(smem + kL.sxh);      // kMins: [2][BN][kMLds] hi of S_j / 16
  half* s_sxl = reinterpret_cast<half*>(smem + kL.sxl);      // kMins: [2][BN][kMLds] lo * 2^11
  __shared__ uint64_t grid[T == GgmlType::IQ2_XXS ? 384 : 1];
  __shared__ const half* s_xrow[BN];
  __shared__ const half* s_srow[kMins ? BN : 1];  // kMins: the token's row of S / 16 (hi; lo at + pool * cols / 16)
  __shared__ int s_out[BN];
  __shared__ int s_scan[kThreads];
  __shared__ int s_group, s_tile;

  const int tid = threadIdx.x;
  int matrix = p.matrix;
  int a_begin, a_end;
  if (p.group_offsets) {
    find_group_tile<kThreads, BN>(p, blockIdx.x, s_scan, &s_group, &s_tile);
    if (s_group < 0) return;
    matrix = s_group;
    a_begin = p.group_offsets[s_group] + s_tile * BN;
    a_end = min(a_begin + BN, p.group_offsets[s_group + 1]);
  } else {
    a_begin = blockIdx.x * BN;
    a_end = min(a_begin + BN, p.n_tokens);
  }
  if (a_begin >= a_end) return;
  const int64_t pool = p.x_stride;
  for (int i = tid; i < BN; i += kThreads) {
    const int a = a_begin + i;
    const bool ok = a < a_end;
    s_out[i] = ok ? a : -1;
    const int64_t xr = ok ? (p.x_rows ? p.x_rows[a] : a) : 0;
    s_xrow[i] = ok ? xs + xr * p.cols : nullptr;
    if constexpr (kMins) s_srow[i] = ok ? xs + 2 * pool * p.cols + xr * (p.cols / 16) : nullptr;
  }
  if constexpr (T == GgmlType::IQ2_XXS) {
    for (int i = tid; i < 384; i += kThreads) grid[i] = g_mm_iq2xxs_grid[i];
  }
  __syncthreads();

  const int row_tile0 = blockIdx.y * kBlockRows;
  const int n_chunks = p.cols >> 5;
  const int steps = (n_chunks + 1) >> 1;
  const int64_t lo_offset = pool * p.cols;  // lo row r at hi row r + pool

  // Copies of step `st` into stage st % kStages (zero-filled past the matrix, past the
  // last chunk and for tokens without an assignment), then one commit group.
  auto issue = [&](int st) {
    if (st < steps) {
      const int stage = st % kStages;
      uint8_t* raw = s_raw + stage * kMats * kBlockRows * kRowBytes;
      if constexpr (kMins) {
        // Ten words per row (rows only 4-byte aligned).
#pragma unroll 1
        for (int i = tid; i < kBlockRows * 10; i += kThreads) {
          const int row = i / 10, word = i % 10;
          const bool ok = row_tile0 + row < p.n_rows;
          const int64_t grow = static_cast<int64_t>(matrix) * p.matrix_rows + p.row_begin + (ok ? row_tile0 + row : 0);
          const uint8_t* src = p.w_data + grow * p.row_bytes + (ok ? SF::word_offset(st, word) : 0);
          cp_async4_zfill(raw + row * kRowBytes + 4 * word, src, ok);
        }
        if ((st & 3) == 0) {
          // The super-block's sums of x (hi, lo; 16 per token) into its parity's tiles,
          // the 8-element halves placed as mq_index does.
          const int sb = (st >> 2) & 1;
          const int64_t lo_sums = pool * (p.cols / 16);
          for (int i = tid; i < BN * 4; i += kThreads) {
            const int tok = i >> 2, part = (i >> 1) & 1, piece = i & 1;
            const half* srow = s_srow[tok];
            const bool ok = srow != nullptr;
            const half* src = ok ? srow + (part ? lo_sums : 0) + (st >> 2) * 16 + piece * 8 : xs;
            half* dst = (part ? s_sxl : s_sxh) + mq_index(sb * BN + tok, piece * 8);
            cp_async16_zfill(dst, src, ok);
          }
        }
      } else {
        // 16-byte pieces of each row's two chunks (IQ2_XXS: 16 bytes per row, its
        // chunks never past the last; Q8_0: 64, the second chunk maybe past it).
#pragma unroll 1
        for (int i = tid; i < kMats * kBlockRows * kPieces; i += kThreads) {
          const int mat = i / (kBlockRows * kPieces);
          const int row = (i / kPieces) % kBlockRows;
          const int piece = i % kPieces;
          const int chunk = 2 * st + (piece * 16) / SF::kChunkBytes;
          const bool ok = row_tile0 + row < p.n_rows && chunk < n_chunks;
          const uint8_t* base = PAIRED && mat == 1 ? p.u_data : p.w_data;
          const int64_t grow = static_cast<int64_t>(matrix) * p.matrix_rows + p.row_begin + (ok ? row_tile0 + row : 0);
          const uint8_t* src = base + grow * p.row_bytes + (ok ? static_cast<int64_t>(st) * kRowBytes + piece * 16 : 0);
          cp_async16_zfill(raw + (mat * kBlockRows + row) * kRowBytes + piece * 16, src, ok);
        }
      }
      // Activations: this thread copies 16-byte segment tid % 8 of tokens tid / 8 and
      // tid / 8 + 32, hi and lo.
      static_assert(kThreads == 256 && BN == 64 && kBlockK == 64, "the activation copies assume 256 threads, 64 x 64 tiles");
      const int seg = tid & 7, col = st * kBlockK + seg * 8;
      half* xt = s_x + stage * 2 * BN * kLds + (tid >> 3) * kLds + seg * 8;
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        const half* row = s_xrow[(tid >> 3) + 32 * j];
        const bool ok = row != nullptr && col < p.cols;
        const half* src = ok ? row + col : xs;
        half* dst = xt + 32 * j * kLds;
        cp_async16_zfill(dst, src, ok);
        cp_async16_zfill(dst + BN * kLds, ok ? src + lo_offset : xs, ok);
      }
    }
    cp_async_commit();
  };

  // This thread dequantizes chunk 2 st + my_half of row my_row (gate, and up).
  const int my_row = tid >> 1, my_half = tid & 1;
  const bool row_ok = row_tile0 + my_row < p.n_rows;
  const int64_t my_grow = static_cast<int64_t>(matrix) * p.matrix_rows + p.row_begin + row_tile0 + (row_ok ? my_row : 0);
  const uint16_t* w_sc = p.w_scales + my_grow * p.scales_per_row;
  const uint16_t* u_sc = PAIRED ? p.u_scales + my_grow * p.scales_per_row : nullptr;
  // Scales through registers one step ahead (0 where the chunk is outside the matrix:
  // A = 0, as the default kernel's all-zero raw chunks).
  auto load_scales = [&](int st, uint16_t* d) {
    const int c = 2 * st + my_half;
    const bool ok = row_ok && c < n_chunks;
    const int cc = min(c, n_chunks - 1);
    d[0] = ok ? SF::scale(w_sc, cc) : uint16_t{0};
    if constexpr (PAIRED) d[1] = ok ? SF::scale(u_sc, cc) : uint16_t{0};
  };
  auto dequant = [&](int st, const uint16_t* d) {
    const int stage = st % kStages;
    const int buf = st & 1;
    const uint8_t* raw = s_raw + stage * kMats * kBlockRows * kRowBytes;
#pragma unroll
    for (int mat = 0; mat < kMats; ++mat) {
      const auto r = SF::raw(raw + (mat * kBlockRows + my_row) * kRowBytes, my_half, st, d[mat]);
      half* dst = s_w + ((buf * kMats + mat) * kBlockRows + my_row) * kLds + my_half * 32;
      float* a = s_a + ((buf * kMats + mat) * kBlockRows + my_row) * 4 + my_half * 2;
      float unused_b[2];
      store_exact_weights<T, true>(dst, a, unused_b, r, grid);
      if constexpr (kMins) {
        // As the default kernel's store: this chunk's two minimums m_j and the
        // super-block's -16 dmin (zero raw bytes give zeros).
        const int sb = (st >> 2) & 1;
        const __half2 m = __floats2half2_rn(static_cast<float>((r.sc >> 4) & 0xF), static_cast<float>((r.sc >> 12) & 0xF));
        *reinterpret_cast<__half2*>(s_mq + mq_index(sb * kBlockRows + my_row, (st & 3) * 4 + my_half * 2)) = m;
        if ((st & 3) == 0 && my_half == 0) {
          s_dmin[sb * kBlockRows + my_row] = -16.0f * cuda_detail::half_bits_to_float(static_cast<uint16_t>(r.dd >> 16));
        }
      }
    }
  };

  const int warp = tid >> 5, lane = tid & 31;
  const int wm0 = (warp % kWarpsM) * kWarpRows;
  const int wn0 = (warp / kWarpsM) * kWarpCols;
  const int g = lane >> 2, q = lane & 3;
  float acc[kMats][MT][NT][4];
  // kMins (as the default Q2_K kernel's kSuperA): A = d is the same for a super-block's
  // 8 chunks, so its products sum in `sup` (q . hi, plus q . lo * 2^-11 added once per
  // chunk) and acc += d * sup once per super-block, beside the minimums.
  float sup[kMins ? MT : 1][kMins ? NT : 1][4];
#pragma unroll
  for (int mat = 0; mat < kMats; ++mat)
#pragma unroll
    for (int m = 0; m < MT; ++m)
#pragma unroll
      for (int n = 0; n < NT; ++n)
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          acc[mat][m][n][i] = 0.0f;
          if constexpr (kMins) sup[m][n][i] = 0.0f;
        }

  // Prologue: steps 0 .. kStages - 2 in flight; step 0 dequantized; step 1's copies
  // landed (the loop's invariant).
  uint16_t d_next[kMats];
  for (int st = 0; st < kStages - 1; ++st) issue(st);
  load_scales(0, d_next);
  cp_async_wait<kStages - 2>();
  __syncthreads();
  dequant(0, d_next);
  load_scales(1, d_next);
  cp_async_wait<kStages - 3>();
  __syncthreads();

  for (int step = 0; step < steps; ++step) {
    issue(step + kStages - 1);
    {
      // Unconditional, so that it shares a basic block with the products: in the last
      // step it reads a stage no copy is writing and fills a buffer nobody reads.
      uint16_t d[kMats];
#pragma unroll
      for (int mat = 0; mat < kMats; ++mat) d[mat] = d_next[mat];
      load_scales(step + 2, d_next);
      dequant(step + 1, d);
    }
    const int buf = step & 1;
    const half* bx = s_x + (step % kStages) * 2 * BN * kLds;
    const half* bxl = bx + BN * kLds;
#pragma unroll
    for (int kh = 0; kh < kBlockK; kh += 32) {
      uint32_t bf[2][NT][2], bl[2][NT][2];
#pragma unroll
      for (int h = 0; h < 2; ++h) {
#pragma unroll
        for (int n2 = 0; n2 < NT / 2; ++n2) {
          uint32_t r[4];
          const int tok = wn0 + n2 * 16 + (lane & 7) + ((lane >> 4) << 3);
          const int xo = tok * kLds + kh + 16 * h + ((lane >> 3) & 1) * 8;
          ldmatrix_x4(r, bx + xo);
          bf[h][2 * n2][0] = r[0];
          bf[h][2 * n2][1] = r[1];
          bf[h][2 * n2 + 1][0] = r[2];
          bf[h][2 * n2 + 1][1] = r[3];
          ldmatrix_x4(r, bxl + xo);
          bl[h][2 * n2][0] = r[0];
          bl[h][2 * n2][1] = r[1];
          bl[h][2 * n2 + 1][0] = r[2];
          bl[h][2 * n2 + 1][1] = r[3];
        }
      }
      const int ks = kh >> 4;
#pragma unroll
      for (int mat = 0; mat < kMats; ++mat) {
        const half* bw = s_w + (buf * kMats + mat) * kBlockRows * kLds;
        const float* sa = s_a + (buf * kMats + mat) * kBlockRows * 4;
#pragma unroll
        for (int m = 0; m < MT; ++m) {
          const int row = wm0 + m * 16 + (lane & 15);
          const int r0 = wm0 + m * 16 + g;  // C rows g and g + 8
          uint32_t af[2][4];
          ldmatrix_x4(af[0], bw + row * kLds + kh + (lane >> 4) * 8);
          ldmatrix_x4(af[1], bw + row * kLds + kh + 16 + (lane >> 4) * 8);
          const float am[2] = {sa[r0 * 4 + ks], sa[(r0 + 8) * 4 + ks]};
          if constexpr (kMins) {
#pragma unroll
            for (int n = 0; n < NT; ++n) {
              float* t = sup[m][n];
              float lo[4] = {0.0f, 0.0f, 0.0f, 0.0f};
              mma_16816(lo, af[0], bl[0][n]);
              mma_16816(lo, af[1], bl[1][n]);
#pragma unroll
              for (int i = 0; i < 4; ++i) t[i] = fmaf(lo[i], kLoUnscale, t[i]);
              mma_16816(t, af[0], bf[0][n]);
              mma_16816(t, af[1], bf[1][n]);
            }
          } else {
#pragma unroll
            for (int n = 0; n < NT; ++n) {
              // As the default kernel's chunk_update: lo products, unscaled, then hi.
              float t[4] = {0.0f, 0.0f, 0.0f, 0.0f};
              mma_16816(t, af[0], bl[0][n]);
              mma_16816(t, af[1], bl[1][n]);
#pragma unroll
              for (int i = 0; i < 4; ++i) t[i] *= kLoUnscale;
              mma_16816(t, af[0], bf[0][n]);
              mma_16816(t, af[1], bf[1][n]);
#pragma unroll
              for (int i = 0; i < 4; ++i) acc[mat][m][n][i] = fmaf(am[i >> 1], t[i], acc[mat][m][n][i]);
            }
          }
        }
      }
    }
    if constexpr (kMins) {
      if ((step & 3) == 3) {
        // The super-block's minimums: acc += d * sup + (-16 dmin) * (m . S/16), S/16 = hi
        // + lo * 2^-11, in the default kernel's order.
        const int sb = (step >> 2) & 1;
        const half* bq = s_mq + sb * kBlockRows * kMLds;
        uint32_t sh[NT][2], sl[NT][2];
#pragma unroll
        for (int n2 = 0; n2 < NT / 2; ++n2) {
          uint32_t r[4];
          const int tok = wn0 + n2 * 16 + (lane & 7) + ((lane >> 4) << 3);
          const int xo = mq_index(sb * BN + tok, ((lane >> 3) & 1) * 8);
          ldmatrix_x4(r, s_sxh + xo);
          sh[2 * n2][0] = r[0];
          sh[2 * n2][1] = r[1];
          sh[2 * n2 + 1][0] = r[2];
          sh[2 * n2 + 1][1] = r[3];
          ldmatrix_x4(r, s_sxl + xo);
          sl[2 * n2][0] = r[0];
          sl[2 * n2][1] = r[1];
          sl[2 * n2 + 1][0] = r[2];
          sl[2 * n2 + 1][1] = r[3];
        }
#pragma unroll
        for (int m = 0; m < MT; ++m) {
          uint32_t af[4];
          ldmatrix_x4(af, bq + mq_index(wm0 + m * 16 + (lane & 15), (lane >> 4) * 8));
          const int r0 = sb * kBlockRows + wm0 + m * 16 + g;  // C rows g and g + 8
          const float dm[2] = {s_dmin[r0], s_dmin[r0 + 8]};
          const float* sa = s_a + (step & 1) * kBlockRows * 4;  // this step's A = d of the super-block
          const int ra = wm0 + m * 16 + g;
          const float d[2] = {sa[ra * 4], sa[(ra + 8) * 4]};
#pragma unroll
          for (int n = 0; n < NT; ++n) {
            float t[4] = {0.0f, 0.0f, 0.0f, 0.0f};
            mma_16816(t, af, sl[n]);
#pragma unroll
            for (int i = 0; i < 4; ++i) t[i] *= kLoUnscale;
            mma_16816(t, af, sh[n]);
#pragma unroll
            for (int i = 0; i < 4; ++i) {
              acc[0][m][n][i] = fmaf(d[i >> 1], sup[m][n][i], acc[0][m][n][i]);
              sup[m][n][i] = 0.0f;
              acc[0][m][n][i] = fmaf(dm[i >> 1], t[i], acc[0][m][n][i]);
            }
          }
        }
      }
    }
    cp_async_wait<kStages - 3>();
    __syncthreads();
  }
  cp_async_wait<0>();

#pragma unroll
  for (int m = 0; m < MT; ++m) {
#pragma unroll
    for (int n = 0; n < NT; ++n) {
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int r = row_tile0 + wm0 + m * 16 + g + (i >= 2 ? 8 : 0);
        const int a = s_out[wn0 + n * 8 + 2 * q + (i & 1)];
        if (r >= p.n_rows || a < 0) continue;
        float v = acc[0][m][n][i];
        if constexpr (PAIRED) {
          v = swiglu(v, acc[kMats - 1][m][n][i], p.swiglu_limit);
          if (p.row_scale) v *= p.row_scale[a];
        }
        float* out = p.y + static_cast<int64_t>(a) * p.y_stride + r;
        *out = p.accumulate ? *out + v : v;
      }
    }
  }
}

using KernelFn = void (*)(MatmulParams);

// The kernel families: kF16 (f16 weights), kExact (integer weights, split
// activations), kF16Activations (integer weights, f16 activations).
enum class Form { kF16, kExact, kF16X };

Form form_of(MatmulPrecision p) {
  return p == MatmulPrecision::kExact ? Form::kExact : p == MatmulPrecision::kF16Activations ? Form::kF16X : Form::kF16;
}

const char* form_name(Form f) { return f == Form::kExact ? "kExact" : f == Form::kF16X ? "kF16Activations" : "kF16"; }

// A kernel and the dynamic shared memory it needs.
struct KernelChoice {
  KernelFn fn = nullptr;
  size_t smem = 0;
};

template <GgmlType T, int BN, bool PAIRED, bool EXACT, int MIN_BLOCKS = 1, bool K32 = false, bool F16X = false>
KernelChoice choice() {
  return {matmul_kernel<T, BN, PAIRED, EXACT, MIN_BLOCKS, K32, F16X>,
          static_cast<size_t>(KernelForm<T, BN, PAIRED, EXACT, K32, F16X>::kLayout.total)};
}

// k16: kExact per-16 scale kernels even where the format has one scale per 32.
// bn 32 (kExact, kF16X): 32-token tiles, per-32 scale, two blocks per SM.
// kF16X: always the per-32 scale form (k16 does not apply); two_blocks as kExact.
template <GgmlType T, Form F>
KernelChoice pick_typed_kernel(int bn, bool paired, bool two_blocks, bool k16) {
  constexpr bool EXACT = F != Form::kF16;
  if constexpr (F == Form::kF16X) {
    if (bn == 32) {
      return paired ? choice<T, 32, true, true, 2, true, true>() : choice<T, 32, false, true, 2, true, true>();
    }
    if (paired) return choice<T, 64, true, true, 1, true, true>();
    if (bn == 128) return choice<T, 128, false, true, 1, true, true>();
    return two_blocks ? choice<T, 64, false, true, 2, true, true>() : choice<T, 64, false, true, 1, true, true>();
  } else {
    if constexpr (EXACT) {
      if (bn == 32) return paired ? choice<T, 32, true, true, 2, true>() : choice<T, 32, false, true, 2, true>();
    }
    if constexpr (!EXACT) {
      if (bn == 32) return {};
    }
    if constexpr (EXACT) {
      if (two_blocks && !paired && bn == 64) return k16 ? choice<T, 64, false, true, 2>() : choice<T, 64, false, true, 2, true>();
    }
    if constexpr (EXACT) {
      if (!k16 && paired) return choice<T, 64, true, true, 1, true>();
      if (!k16 && bn == 64) return choice<T, 64, false, true, 1, true>();
    }
    if (paired) return choice<T, 64, true, EXACT>();
    return bn == 128 ? choice<T, 128, false, EXACT>() : choice<T, 64, false, EXACT>();
  }
}

template <Form F>
KernelChoice pick_form_kernel(GgmlType type, int bn, bool paired, bool two_blocks, bool k16) {
  switch (type) {
    case GgmlType::F32: return F != Form::kF16 ? KernelChoice{} : pick_typed_kernel<GgmlType::F32, Form::kF16>(bn, paired, two_blocks, k16);
    case GgmlType::F16: return pick_typed_kernel<GgmlType::F16, F>(bn, paired, two_blocks, k16);
    case GgmlType::Q8_0: return pick_typed_kernel<GgmlType::Q8_0, F>(bn, paired, two_blocks, k16);
    case GgmlType::IQ2_XXS: return pick_typed_kernel<GgmlType::IQ2_XXS, F>(bn, paired, two_blocks, k16);
    case GgmlType::Q2_K: return pick_typed_kernel<GgmlType::Q2_K, F>(bn, paired, two_blocks, k16);
    case GgmlType::Q4_K: return pick_typed_kernel<GgmlType::Q4_K, F>(bn, paired, two_blocks, k16);
    default: return {};
  }
}

// two_blocks, k16: kExact tuning variants (see MatmulLaunch); ignored where they do not apply.
KernelChoice pick_kernel(GgmlType type, int bn, bool paired, Form form, bool two_blocks = false, bool k16 = false) {
  switch (form) {
    case Form::kExact: return pick_form_kernel<Form::kExact>(type, bn, paired, two_blocks, k16);
    case Form::kF16X: return pick_form_kernel<Form::kF16X>(type, bn, paired, two_blocks, k16);
    default: return pick_form_kernel<Form::kF16>(type, bn, paired, two_blocks, k16);
  }
}

// Whether kernel fn with `dynamic` bytes of dynamic shared memory fits the device's
// per-block limit (the GB10 allows about 99 KiB; see cuda/device_limits.h). Queries
// the kernel's static shared memory only when the answer is not obvious.
bool fits_shared_memory(KernelFn fn, size_t dynamic) {
  const size_t limit = static_cast<size_t>(max_shared_per_block());
  constexpr size_t kStaticBound = 8 * 1024;  // above any matmul kernel's static shared memory
  if (dynamic + kStaticBound <= limit) return true;
  cudaFuncAttributes attr{};
  if (cudaFuncGetAttributes(&attr, fn) != cudaSuccess) return false;
  return dynamic + attr.sharedSizeBytes <= limit;
}

template <GgmlType T, bool PAIRED>
KernelChoice staged_choice_typed() {
  return {staged_matmul_kernel<T, PAIRED>,
          static_cast<size_t>(StagedForm<T, PAIRED>::kLayout.total)};
}

// The staged kernel for a weight type (none: fn == nullptr).
KernelChoice staged_choice(GgmlType type, bool paired) {
  switch (type) {
    case GgmlType::IQ2_XXS:
      return paired ? staged_choice_typed<GgmlType::IQ2_XXS, true>() : staged_choice_typed<GgmlType::IQ2_XXS, false>();
    case GgmlType::Q8_0:
      return paired ? staged_choice_typed<GgmlType::Q8_0, true>() : staged_choice_typed<GgmlType::Q8_0, false>();
    case GgmlType::Q2_K: return paired ? KernelChoice{} : staged_choice_typed<GgmlType::Q2_K, false>();
    default: return {};
  }
}

Status init_once() {
  uint64_t table[384];
  for (int g = 0; g < 256; ++g) table[g] = kIq2xxsGrid[g];
  for (uint32_t si = 0; si < 128; ++si) {
    const uint32_t mask = iq2xxs_sign_mask(si);
    uint64_t bytes = 0;
    for (int m = 0; m < 8; ++m) {
      if ((mask >> m) & 1u) bytes |= uint64_t{0xFF} << (8 * m);
    }
    table[256 + si] = bytes;
  }
  DS4_CUDA_TRY(cudaMemcpyToSymbol(g_mm_iq2xxs_grid, table, sizeof(table)));
  const GgmlType types[] = {GgmlType::F32, GgmlType::F16, GgmlType::Q8_0,
                            GgmlType::IQ2_XXS, GgmlType::Q2_K, GgmlType::Q4_K};
  for (GgmlType t : types) {
    for (Form form : {Form::kF16, Form::kExact, Form::kF16X}) {
      const bool exact = form != Form::kF16;
      for (int bn : {32, 64, 128}) {
        for (bool paired : {false, true}) {
          for (int variant = 0; variant < 4; ++variant) {  // two blocks (bit 0), k16 (bit 1)
            const KernelChoice k = pick_kernel(t, bn, paired, form, (variant & 1) != 0, (variant & 2) != 0);
            KernelFn fn = k.fn;
            if (fn == nullptr) continue;
            const size_t bytes = k.smem;
            if (!fits_shared_memory(fn, bytes)) continue;  // refused at launch on this device
            DS4_CUDA_TRY(cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
            if (exact && (bn == 32 || ((variant & 1) != 0 && !paired && bn == 64))) {
              // Kernels compiled for two blocks per SM: ask for the largest shared-memory
              // carveout so that two blocks' tiles fit.
              DS4_CUDA_TRY(cudaFuncSetAttribute(fn, cudaFuncAttributePreferredSharedMemoryCarveout,
                                                static_cast<int>(cudaSharedmemCarveoutMaxShared)));
            }
          }
        }
      }
    }
  }
  for (GgmlType t : {GgmlType::IQ2_XXS, GgmlType::Q8_0, GgmlType::Q2_K}) {
    for (bool paired : {false, true}) {
      const KernelChoice k = staged_choice(t, paired);
      if (k.fn == nullptr || !fits_shared_memory(k.fn, k.smem)) continue;  // not used on this device
      DS4_CUDA_TRY(cudaFuncSetAttribute(k.fn, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(k.smem)));
    }
  }
  return Status::Ok();
}

// Whether launch l runs a staged kernel: its fields ask for one (split_workspace set,
// kExact, no forced tile or tuning variant), one exists for the weight type and the
// device's shared memory fits it.
bool staged_applies(const MatmulLaunch& l) {
  if (l.split_workspace == nullptr || l.w == nullptr || l.precision != MatmulPrecision::kExact || l.token_tile != 0 ||
      l.exact_two_blocks || l.exact_k16) {
    return false;
  }
  // cp.async copies 16-byte pieces of the weight rows.
  const auto aligned = [](const DeviceMatrix* m) {
    return m == nullptr || reinterpret_cast<uintptr_t>(m->data) % 16 == 0;
  };
  if (!aligned(l.w) || !aligned(l.w_up)) return false;
  const KernelChoice k = staged_choice(l.w->type, l.w_up != nullptr);
  return k.fn != nullptr && fits_shared_memory(k.fn, k.smem);
}

// The staged launch: the activations' split, then the kernel (p as launch_matmul
// filled it).
Status launch_staged(const MatmulLaunch& l, MatmulParams p, int64_t n_rows, cudaStream_t stream) {
  const bool grouped = l.group_offsets != nullptr;
  if (l.x_pool_rows < 0 || (!grouped && l.x_pool_rows < l.n_tokens)) {
    return Status::Error("matmul: split_workspace with x_pool_rows " + std::to_string(l.x_pool_rows) +
                         (grouped ? "" : " for " + std::to_string(l.n_tokens) + " tokens (dense: at least n_tokens)"));
  }
  if (reinterpret_cast<uintptr_t>(l.split_workspace) % 16 != 0) {
    return Status::Error("matmul: split_workspace must be 16-byte aligned");
  }
  const int64_t items = l.x_pool_rows * (p.cols / 16);
  if (items > 0) {
    const int64_t split_blocks = std::min<int64_t>((items + 255) / 256, 4096);
    split_rows_kernel<<<static_cast<unsigned>(split_blocks), 256, 0, stream>>>(
        l.x, l.x_stride, l.x_pool_rows, p.cols, static_cast<half*>(l.split_workspace));
    DS4_RETURN_IF_ERROR(cuda_status(cudaGetLastError(), "matmul split launch"));
  }
  p.x_split = l.split_workspace;
  p.x_stride = l.x_pool_rows;
  const int64_t token_tiles = (l.n_tokens + kStagedBN - 1) / kStagedBN + (grouped ? l.n_groups : 0);
  const int64_t row_tiles = (n_rows + kBlockRows - 1) / kBlockRows;
  if (row_tiles > 65535 || token_tiles > (int64_t{1} << 31) - 1) {
    return Status::Error("matmul: grid too large (" + std::to_string(row_tiles) + " row tiles)");
  }
  const KernelChoice k = staged_choice(l.w->type, l.w_up != nullptr);
  k.fn<<<dim3(static_cast<unsigned>(token_tiles), static_cast<unsigned>(row_tiles)), kThreads, k.smem, stream>>>(p);
  return cuda_status(cudaGetLastError(), "matmul staged launch");
}

Status check_launch(const MatmulLaunch& l, int64_t n_rows) {
  if (!l.w || l.w->empty()) return Status::Error("matmul: no weight matrix");
  const DeviceMatrix& w = *l.w;
  const std::string type(ggml_type_name(w.type));
  if (l.precision != MatmulPrecision::kExact && l.precision != MatmulPrecision::kF16 &&
      l.precision != MatmulPrecision::kF16Activations) {
    return Status::Error("matmul: unknown precision " + std::to_string(static_cast<int>(l.precision)));
  }
  if (!device_matrix_supported(w.type, w.cols) || pick_kernel(w.type, 64, false, Form::kF16).fn == nullptr) {
    return Status::Error("matmul: unsupported weight type " + type + " with " + std::to_string(w.cols) +
                         " columns");
  }
  if (w.cols % 32 != 0 || w.cols > (1 << 30)) {
    return Status::Error("matmul: " + std::to_string(w.cols) + " columns (need a multiple of 32)");
  }
  const Form form = form_of(l.precision);
  if (form != Form::kF16 && pick_kernel(w.type, 64, false, form).fn == nullptr) {
    return Status::Error("matmul: no exact (integer-weight) form for " + type + " weights (" + form_name(form) +
                         "); use MatmulPrecision::kF16 or the f32 matvec");
  }
  if (l.w_up && (l.w_up->type != w.type || l.w_up->cols != w.cols || l.w_up->rows != w.rows ||
                 l.w_up->count != w.count || l.w_up->empty())) {
    return Status::Error("matmul: gate and up matrices differ in type or shape");
  }
  if (l.row_begin < 0 || n_rows < 0 || l.row_begin + n_rows > w.rows || n_rows > (1 << 30)) {
    return Status::Error("matmul: rows [" + std::to_string(l.row_begin) + ", " +
                         std::to_string(l.row_begin + n_rows) + ") outside the matrix's " +
                         std::to_string(w.rows) + " rows");
  }
  if (l.n_tokens < 0) return Status::Error("matmul: negative n_tokens");
  if (l.group_offsets) {
    if (l.n_groups <= 0 || l.n_groups > w.count) {
      return Status::Error("matmul: " + std::to_string(l.n_groups) + " groups for " + std::to_string(w.count) +
                           " stacked matrices");
    }
  } else if (l.matrix < 0 || l.matrix >= w.count) {
    return Status::Error("matmul: matrix " + std::to_string(l.matrix) + " of " + std::to_string(w.count));
  }
  if (!l.x || !l.y) return Status::Error("matmul: x or y is null");
  if (reinterpret_cast<uintptr_t>(l.x) % 16 != 0 || l.x_stride % 4 != 0) {
    return Status::Error("matmul: x must be 16-byte aligned with a stride that is a multiple of 4 floats (stride " +
                         std::to_string(l.x_stride) + ")");
  }
  return Status::Ok();
}

// The token tile a launch uses.
int token_tile_of(const MatmulLaunch& l) {
  const bool paired = l.w_up != nullptr;
  const bool grouped = l.group_offsets != nullptr;
  const bool exact = l.precision != MatmulPrecision::kF16;  // kExact, kF16Activations
  return l.token_tile == 32 ? 32
         : paired          ? 64
         : l.token_tile    ? l.token_tile
         : !exact && !grouped && l.n_tokens >= 128 ? 128
                                                    : 64;
}

}  // namespace

Status matmul_init() {
  static std::once_flag once;
  static Status status;
  std::call_once(once, [] { status = init_once(); });
  return status;
}

Result<MatmulPrecision> parse_matmul_precision(std::string_view text) {
  if (text == "exact") return MatmulPrecision::kExact;
  if (text == "f16act") return MatmulPrecision::kF16Activations;
  if (text == "f16") return MatmulPrecision::kF16;
  return Status::Error("matmul precision \"" + std::string(text) + "\" (exact, f16act or f16)");
}

size_t matmul_split_workspace_bytes(int64_t cols, int64_t rows) {
  // hi and lo rows, then hi and lo of the 16-column sums (the Q2_K minimums).
  return (static_cast<size_t>(cols) + static_cast<size_t>(cols) / 16) * static_cast<size_t>(rows) * 2 * sizeof(uint16_t);
}

bool matmul_staged(const MatmulLaunch& l) { return matmul_init().ok() && staged_applies(l); }

bool matmul_fits(const MatmulLaunch& l) {
  if (l.w == nullptr || !matmul_init().ok()) return false;
  if (staged_applies(l)) return true;
  const bool paired = l.w_up != nullptr;
  const Form form = form_of(l.precision);
  const int bn = token_tile_of(l);
  const KernelChoice k = pick_kernel(l.w->type, bn, paired, form, l.exact_two_blocks, l.exact_k16);
  return k.fn != nullptr && fits_shared_memory(k.fn, k.smem);
}

Status launch_matmul(const MatmulLaunch& l, cudaStream_t stream) {
  DS4_RETURN_IF_ERROR(matmul_init());
  const int64_t n_rows = l.n_rows < 0 && l.w ? l.w->rows - l.row_begin : l.n_rows;
  DS4_RETURN_IF_ERROR(check_launch(l, n_rows));
  if (n_rows == 0 || l.n_tokens == 0) return Status::Ok();
  const DeviceMatrix& w = *l.w;
  const bool paired = l.w_up != nullptr;
  const bool grouped = l.group_offsets != nullptr;
  const Form form = form_of(l.precision);
  const bool exact = form != Form::kF16;  // integer weights (kExact, kF16Activations)
  if (l.token_tile != 0 && l.token_tile != 32 && l.token_tile != 64 && l.token_tile != 128) {
    return Status::Error("matmul: token tile " + std::to_string(l.token_tile) + " (0, 32, 64 or 128)");
  }
  if (l.token_tile == 32 && !exact) return Status::Error("matmul: token tile 32 is a kExact / kF16Activations form");
  const int bn = token_tile_of(l);

  MatmulParams p{};
  p.w_data = w.data;
  p.w_scales = w.scales;
  p.u_data = paired ? l.w_up->data : nullptr;
  p.u_scales = paired ? l.w_up->scales : nullptr;
  p.row_bytes = static_cast<int64_t>(w.data_row_bytes());
  p.scales_per_row = w.scales_per_row();
  p.matrix_rows = w.rows;
  p.row_begin = l.row_begin;
  p.cols = static_cast<int>(w.cols);
  p.n_rows = static_cast<int>(n_rows);
  p.matrix = l.matrix;
  p.x = l.x;
  p.x_stride = l.x_stride;
  p.y = l.y;
  p.y_stride = l.y_stride;
  p.n_tokens = l.n_tokens;
  p.swiglu_limit = l.swiglu_limit;
  p.accumulate = l.accumulate ? 1 : 0;
  p.group_offsets = l.group_offsets;
  p.n_groups = grouped ? l.n_groups : 0;
  p.x_rows = l.x_rows;
  p.row_scale = l.row_scale;

  // Token (assignment) tiles vary fastest so that blocks sharing a weight tile run
  // together (its bytes come from L2 after the first). Grouped: at most
  // ceil(n_tokens / bn) + n_groups tiles in all; the blocks past the last exit.
  const int64_t token_tiles = (l.n_tokens + bn - 1) / bn + (grouped ? l.n_groups : 0);
  const int64_t row_tiles = (n_rows + kBlockRows - 1) / kBlockRows;
  if (row_tiles > 65535 || token_tiles > (int64_t{1} << 31) - 1) {
    return Status::Error("matmul: grid too large (" + std::to_string(row_tiles) + " row tiles)");
  }
  if (staged_applies(l)) return launch_staged(l, p, n_rows, stream);
  const KernelChoice k = pick_kernel(w.type, bn, paired, form, l.exact_two_blocks, l.exact_k16);
  KernelFn fn = k.fn;
  const size_t smem = k.smem;
  if (!fits_shared_memory(fn, smem)) {
    return Status::Error("matmul: the " + std::string(form_name(form)) + (paired ? " paired " : " ") +
                         std::string(ggml_type_name(w.type)) + " kernel with " + std::to_string(bn) + "-token tiles needs " +
                         std::to_string(smem) + " bytes of dynamic shared memory per block; this GPU allows " +
                         std::to_string(max_shared_per_block()) + " in all");
  }
  fn<<<dim3(static_cast<unsigned>(token_tiles), static_cast<unsigned>(row_tiles)), kThreads, smem, stream>>>(p);
  return cuda_status(cudaGetLastError(), "matmul launch");
}

}  // namespace ds4
