#include "cuda/expert_matmul.h"

#include <cuda_fp16.h>

#include <algorithm>
#include <cstdlib>
#include <mutex>
#include <string>

#include "cuda/async_copy.cuh"
#include "cuda/cuda_check.h"
#include "cuda/dequant_chunk.cuh"
#include "cuda/device_limits.h"
#include "cuda/device_math.cuh"
#include "cuda/group_tiles.cuh"
#include "cuda/int8_digits.cuh"
#include "cuda/iq2xxs_compact_table.h"
#include "cuda/mma.cuh"
#include "cuda/relaxed_capture.h"

namespace ds4 {
namespace {

using cuda_detail::mma_f16;
using cuda_detail::mma_s8;
using cuda_detail::mma_s8_zero;

using cuda_detail::smem_addr;
using cuda_detail::cp_async16;
using cuda_detail::cp_async4;
using cuda_detail::cp_async_commit;
using cuda_detail::cp_async_wait;

using cuda_detail::find_group_tile;
using cuda_detail::half_bits_to_float;
using cuda_detail::swiglu;

// Block tile: BM weight rows (128 or 256; paired: BM / 2 gate rows and the same up rows)
// x BN assignments (32, or 16 for the small tiles), one 256-column block of the weights per pipeline stage (2 to 4
// stages). 2 BM / 32 warps: warp w owns weight rows [32 (w % (BM / 32)), +32) (two 16-row
// mma tiles) and assignments [16 (w / (BM / 32)), +16) (two 8-column mma tiles).
constexpr int kDigitBytes = 1024;       // one row's digits of one 256-column block: [chunk][t][digit][8]
constexpr int kMinBytes = 64;           // one row's Q2_K minimum sums of one block: [t][4 words]
constexpr int kXRowStride = kDigitBytes + 16;  // shared memory: rows 16 bytes apart in banks
constexpr int kTableWords = cuda_detail::kIq2xxsCompactWords;
constexpr int kLaneTableBytes = kTableWords * 32 * 4;  // one copy of the table per bank

// The workspace of `rows` rows of `blocks` 256-column blocks: digits, then the scales s_b
// (f32), then the minimum sums (f16 hi / lo pairs).
struct WorkspaceLayout {
  int64_t digits = 0, scales = 0, mins = 0, end = 0;
};

WorkspaceLayout workspace_layout(int64_t blocks, int64_t rows) {
  WorkspaceLayout l;
  const int64_t n = blocks * rows;
  l.digits = 0;
  l.scales = n * kDigitBytes;
  l.mins = l.scales + ((n * 4 + 15) & ~int64_t{15});
  l.end = l.mins + n * kMinBytes;
  return l;
}

// Shared memory of one stage, per weight format and block rows.
template <GgmlType T, int BM, int BN>
struct StageLayout {
  static constexpr int kWStride = T == GgmlType::IQ2_XXS ? 80 : 88;  // bytes per weight row (bank-spread)
  static constexpr int kW = 0;
  static constexpr int kX = BM * kWStride;
  static constexpr int kXScales = kX + BN * kXRowStride;
  static constexpr int kXMins = kXScales + 32 * 4;
  static constexpr int kBytes = kXMins + (T == GgmlType::Q2_K ? BN * kMinBytes : 0);
  static constexpr int total(int stages) { return stages * kBytes; }
  static_assert(kX % 16 == 0 && kXScales % 16 == 0 && kXMins % 16 == 0 && kBytes % 16 == 0, "16-byte alignment");
  static_assert(BM * (BN + 1) * 4 <= 2 * kBytes, "the output tile reuses the stages");
};

// The compact IQ2_XXS selector table of cuda/dequant_chunk.cuh (Iq2xxsCompact).
__device__ uint32_t g_em_selectors[kTableWords];

struct Params {
  const uint8_t* w_data;
  const uint16_t* w_scales;
  const uint8_t* u_data;
  const uint16_t* u_scales;
  int64_t row_bytes;  // data bytes per weight row
  int rows;           // per matrix
  int blocks;         // cols / 256
  const uint8_t* digits;
  const float* xscales;
  const uint8_t* xmins;
  float* y;
  int64_t y_stride;
  float limit;
  int accumulate;
  const int32_t* group_offsets;
  int n_groups;
  const int32_t* x_rows;
  const float* row_scale;
};

__device__ __forceinline__ uint32_t prmt(uint32_t a, uint32_t b, uint32_t selector) {
  uint32_t r;
  asm("prmt.b32 %0, %1, %2, %3;" : "=r"(r) : "r"(a), "r"(b), "r"(selector));
  return r;
}

// The exact sum of a block's four digit sums: sum_L acc[L] 256^L.
__device__ __forceinline__ long long combine_digits(int a0, int a1, int a2, int a3) {
  return ((static_cast<long long>(a3) * 256 + a2) * 256 + a1) * 256 + a0;
}

// ---- pre-pass: x rows into digits ----------------------------------------------------

// One warp per (row, 256-column block); lane L holds columns 8L..8L+7 of the block, i.e.
// columns 8t..8t+7 of chunk L / 4 (t = L % 4), and writes their four digits at bytes
// 32 L + 8 digit of the row's block (the B fragment order of the product kernel). With
// SUMS, the 16-column sums X_G, scaled by 2^-E and split into f16 hi + lo, are written as
// four words per t = 0..3: hi(2t, 2t+1), hi(2t+8, 2t+9), lo(2t, 2t+1), lo(2t+8, 2t+9).
template <bool SUMS>
__global__ void __launch_bounds__(256) split_rows_kernel(const float* __restrict__ x, int64_t x_stride,
                                                         int64_t pool_rows, const int32_t* count, int blocks,
                                                         uint8_t* __restrict__ digits, float* __restrict__ scales,
                                                         uint8_t* __restrict__ mins) {
  const int lane = threadIdx.x & 31;
  const int64_t unit = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  int64_t rows = pool_rows;
  if (count) rows = min(rows, static_cast<int64_t>(*count));
  if (unit >= rows * blocks) return;
  const int64_t row = unit / blocks;
  const int b = static_cast<int>(unit - row * blocks);
  const float4* src = reinterpret_cast<const float4*>(x + row * x_stride + b * 256 + lane * 8);
  const float4 v0 = src[0], v1 = src[1];
  const float v[8] = {v0.x, v0.y, v0.z, v0.w, v1.x, v1.y, v1.z, v1.w};
  const cuda_detail::DigitBlock d = cuda_detail::split_block_digits(v);
  const int64_t at = row * blocks + b;
  uint4* out = reinterpret_cast<uint4*>(digits + at * kDigitBytes + lane * 32);
  out[0] = make_uint4(d.lo[0], d.hi[0], d.lo[1], d.hi[1]);
  out[1] = make_uint4(d.lo[2], d.hi[2], d.lo[3], d.hi[3]);
  if (lane == 0) scales[at] = d.scale();
  if constexpr (SUMS) {
    float s = 0.0f;
#pragma unroll
    for (int i = 0; i < 8; ++i) s += v[i];
    s += __shfl_xor_sync(0xffffffffu, s, 1);  // X_G of lanes 2G, 2G + 1
    const float scaled = ldexpf(s, -d.e);      // |X_G| < 16 2^e: exact, |scaled| < 16
    const __half h = __float2half_rn(scaled);
    const __half l = __float2half_rn((scaled - __half2float(h)) * 2048.0f);
    const uint32_t pair =
        static_cast<uint32_t>(__half_as_ushort(h)) | (static_cast<uint32_t>(__half_as_ushort(l)) << 16);
    const int t = lane & 3;
    const uint32_t p0 = __shfl_sync(0xffffffffu, pair, 4 * t);       // X_{2t}
    const uint32_t p1 = __shfl_sync(0xffffffffu, pair, 4 * t + 2);   // X_{2t+1}
    const uint32_t p2 = __shfl_sync(0xffffffffu, pair, 4 * t + 16);  // X_{2t+8}
    const uint32_t p3 = __shfl_sync(0xffffffffu, pair, 4 * t + 18);  // X_{2t+9}
    if (lane < 4) {
      const uint4 words = make_uint4((p0 & 0xFFFFu) | (p1 << 16), (p2 & 0xFFFFu) | (p3 << 16),
                                     (p0 >> 16) | (p1 & 0xFFFF0000u), (p2 >> 16) | (p3 & 0xFFFF0000u));
      *reinterpret_cast<uint4*>(mins + at * kMinBytes + lane * 16) = words;
    }
  }
}

// ---- the product kernel --------------------------------------------------------------

// A fragment registers of one IQ2_XXS row and chunk: `lo` = weights 8t..8t+3, `hi` =
// 8t+4..8t+7 as int8 (compact selector table in shared memory); returns 2S + 1.
// STRIDE: 1 for the table itself, 32 for a lane's copy among per-bank copies.
template <int STRIDE>
__device__ __forceinline__ int iq2_row_fragment(uint2 q, const uint32_t* table, uint32_t grid_byte, int sign_shift,
                                                uint32_t* lo, uint32_t* hi) {
  const uint32_t gi = prmt(q.x, 0, grid_byte);
  const uint32_t si = (q.y >> sign_shift) & 127u;
  const uint32_t s = table[gi * STRIDE] | table[(256 + si) * STRIDE];
  *lo = prmt(cuda_detail::kIq2xxsPositive, cuda_detail::kIq2xxsNegative, s);
  *hi = prmt(cuda_detail::kIq2xxsPositive, cuda_detail::kIq2xxsNegative, s >> 16);
  return static_cast<int>((q.y >> 27) | 1u);
}

// The scaled-digit form of the IQ2_XXS weights: w (2S + 1), |w (2S + 1)| <= 43 * 31 = 1333,
// as two int8 digits lo + 256 hi (lo in [-128, 128), hi in [-5, 5]). Entry S holds the
// bytes of lo and of hi for the magnitudes 8, 25, 43 (bytes 0..2; byte 3 zero), positive
// then negative: the byte order the compact table's selector nibbles pick from (level, or
// 4 + level when negated), as kIq2xxsPositive / kIq2xxsNegative.
__device__ __forceinline__ uint4 scaled_digit_entry(int S) {
  const int s2 = 2 * S + 1;
  const int magnitudes[3] = {8, 25, 43};
  uint32_t words[4] = {0, 0, 0, 0};  // lo positive, lo negative, hi positive, hi negative
#pragma unroll
  for (int k = 0; k < 3; ++k) {
#pragma unroll
    for (int neg = 0; neg < 2; ++neg) {
      const int v = (neg ? -magnitudes[k] : magnitudes[k]) * s2;
      const int lo = static_cast<int>(static_cast<int8_t>(v & 0xFF));
      const int hi = (v - lo) / 256;  // exact
      words[neg] |= (static_cast<uint32_t>(lo) & 0xFFu) << (8 * k);
      words[2 + neg] |= (static_cast<uint32_t>(hi) & 0xFFu) << (8 * k);
    }
  }
  return make_uint4(words[0], words[1], words[2], words[3]);
}

// A fragment registers of one IQ2_XXS row and chunk in the scaled-digit form: `lo0`, `hi0`
// for weights 8t..8t+3, `lo1`, `hi1` for 8t+4..8t+7 (the same slots as iq2_row_fragment).
template <int STRIDE>
__device__ __forceinline__ void iq2_row_scaled_fragment(uint2 q, const uint32_t* table, const uint4* entries,
                                                        uint32_t grid_byte, int sign_shift, uint32_t* lo0,
                                                        uint32_t* lo1, uint32_t* hi0, uint32_t* hi1) {
  const uint32_t gi = prmt(q.x, 0, grid_byte);
  const uint32_t si = (q.y >> sign_shift) & 127u;
  const uint32_t s = table[gi * STRIDE] | table[(256 + si) * STRIDE];
  const uint4 e = entries[q.y >> 28];
  *lo0 = prmt(e.x, e.y, s);
  *lo1 = prmt(e.x, e.y, s >> 16);
  *hi0 = prmt(e.z, e.w, s);
  *hi1 = prmt(e.z, e.w, s >> 16);
}

// The exact sum of a block's five scaled-digit sums: sum_k acc[k] 256^k. Over a block
// (256 columns, |lo| <= 128, |hi| <= 5, |x digit| <= 128, the top one <= 64): |a0| <= 2^22,
// |a1|, |a2| <= 2^22 + 163840, |a3| <= 2^21 + 163840, |a4| <= 81920, so a0 + 256 a1 and
// a2 + 256 a3 (below 1.12e9) are exact in int32.
__device__ __forceinline__ long long combine_scaled(int a0, int a1, int a2, int a3, int a4) {
  const int low = a0 + a1 * 256;
  const int mid = a2 + a3 * 256;
  return (static_cast<long long>(a4) << 32) + static_cast<long long>(mid) * 65536 + low;
}

// The weight row `r` (0..BM) of the block's tile: matrix `group`; paired, rows 0..BM/2-1
// from the gate stack and BM/2..BM-1 from the up stack (the same output rows).
template <bool PAIRED, int BM>
__device__ __forceinline__ int64_t tile_row(const Params& p, int group, int row0, int r) {
  return static_cast<int64_t>(group) * p.rows + row0 + (PAIRED ? (r & (BM / 2 - 1)) : r);
}

// LANE_TABLES: the IQ2_XXS selector table one copy per bank at the start of dynamic shared
// memory (conflict-free lookups), else one compact copy in static shared memory.
// STAGES: 256-column blocks in the cp.async ring (copies run STAGES - 1 blocks ahead).
// MIN_BLOCKS: resident blocks per multiprocessor the kernel is compiled for (2 x 256 or
// 1 x 512 threads: at most 128 registers, the chunk loop partly unrolled; 1 x 256: up to
// 255 registers, unrolled; 3 x 256, the small tiles: at most 85 registers).
// MR: 16-row mma tiles per warp (2; 1 for the small tiles, BN = 16). Warps: BM / (16 MR)
// along the rows times BN / 16 along the assignments.
// SCALED (IQ2_XXS): the scaled-digit form (iq2_row_scaled_fragment): per digit L of x two
// mma, lo into sum k = L and hi into k = L + 1, accumulated by the tensor cores over the
// block's 8 chunks (no integer multiply per product); the five sums of a block give the
// same exact integer as the four digit sums of the plain form, hence the same outputs.
template <GgmlType T, bool PAIRED, bool LANE_TABLES, int MIN_BLOCKS, int STAGES, int BM, int BN, int MR,
          bool SCALED = false>
__global__ void __launch_bounds__(32 * (BM / (16 * MR)) * (BN / 16), MIN_BLOCKS) expert_matmul_kernel(Params p) {
  constexpr int kRowWarps = BM / (16 * MR);
  constexpr int kThreads = 32 * kRowWarps * (BN / 16);
  constexpr int kWarpRows = 16 * MR;
  constexpr bool kUnrolled = MIN_BLOCKS == 1 && kThreads == 256;
  using S = StageLayout<T, BM, BN>;
  constexpr bool kIq2 = T == GgmlType::IQ2_XXS;
  static_assert(!SCALED || kIq2, "the scaled-digit form is IQ2_XXS's");
  constexpr int kSums = SCALED ? 5 : 4;  // integer sums per output and block
  constexpr int kStride = LANE_TABLES ? 32 : 1;
  extern __shared__ float4 smem4[];
  uint8_t* smem = reinterpret_cast<uint8_t*>(smem4) + (LANE_TABLES ? kLaneTableBytes : 0);
  __shared__ uint32_t s_compact[kIq2 && !LANE_TABLES ? kTableWords : 1];
  __shared__ int s_scan[kThreads];
  __shared__ int s_group, s_tile;
  __shared__ int s_xrow[BN];
  __shared__ uint4 s_scaled[SCALED ? 16 : 1];

  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int g = lane >> 2, t = lane & 3;
  const int wm = warp % kRowWarps, wn = warp / kRowWarps;
  find_group_tile<kThreads, BN>(p, blockIdx.y, s_scan, &s_group, &s_tile);
  const int group = s_group;
  if (group < 0) return;
  const int a_begin = p.group_offsets[group] + s_tile * BN;
  const int a_end = min(a_begin + BN, p.group_offsets[group + 1]);
  const int row0 = blockIdx.x * (PAIRED ? BM / 2 : BM);
  // This warp's 8-assignment tiles that hold an assignment (0..2; warp-uniform): the
  // products of the others are skipped (a group's last tile is often partly empty).
  const int warp_tiles = min(max((a_end - a_begin - wn * 16 + 7) >> 3, 0), 2);
  if (tid < BN) {
    const int a = a_begin + tid;
    s_xrow[tid] = a < a_end ? (p.x_rows ? p.x_rows[a] : a) : -1;
  }
  const uint32_t* table = s_compact;
  if constexpr (kIq2 && LANE_TABLES) {
    uint32_t* copies = reinterpret_cast<uint32_t*>(smem4);
    for (int e = warp; e < kTableWords; e += kThreads / 32) copies[e * 32 + lane] = g_em_selectors[e];
    table = copies + lane;
  } else if constexpr (kIq2) {
    for (int i = tid; i < kTableWords; i += kThreads) s_compact[i] = g_em_selectors[i];
  }
  if constexpr (SCALED) {
    if (tid < 16) s_scaled[tid] = scaled_digit_entry(tid);
  }
  __syncthreads();

  // Copies of stage `b` (256-column block b) into buffer `buf`.
  const auto load_stage = [&](int b, int buf) {
    uint8_t* st = smem + buf * S::kBytes;
    if constexpr (kIq2) {
      for (int i = tid; i < BM * 4; i += kThreads) {
        const int r = i >> 2, q = i & 3;
        const uint8_t* base = PAIRED && r >= BM / 2 ? p.u_data : p.w_data;
        cp_async16(st + S::kW + r * S::kWStride + q * 16,
                   base + tile_row<PAIRED, BM>(p, group, row0, r) * p.row_bytes + b * 64 + q * 16);
      }
    } else {
      for (int i = tid; i < BM * 21; i += kThreads) {
        const int r = i / 21, q = i - r * 21;
        cp_async4(st + S::kW + r * S::kWStride + q * 4,
                  p.w_data + tile_row<PAIRED, BM>(p, group, row0, r) * p.row_bytes + b * 84 + q * 4);
      }
    }
    for (int i = tid; i < BN * (kDigitBytes / 16); i += kThreads) {
      const int n = i >> 6, q = i & 63;
      const int xr = s_xrow[n];
      if (xr >= 0) {
        cp_async16(st + S::kX + n * kXRowStride + q * 16,
                   p.digits + (static_cast<int64_t>(xr) * p.blocks + b) * kDigitBytes + q * 16);
      }
    }
    if (tid < BN) {
      const int xr = s_xrow[tid];
      if (xr >= 0) cp_async4(st + S::kXScales + tid * 4, p.xscales + static_cast<int64_t>(xr) * p.blocks + b);
    }
    if constexpr (!kIq2) {
      if (tid < BN * 4) {
        const int n = tid >> 2, q = tid & 3;
        const int xr = s_xrow[n];
        if (xr >= 0) {
          cp_async16(st + S::kXMins + n * kMinBytes + q * 16,
                     p.xmins + (static_cast<int64_t>(xr) * p.blocks + b) * kMinBytes + q * 16);
        }
      }
    }
  };

  // This lane's outputs: weight rows wm * kWarpRows + 16 m + g + 8 (i >> 1), assignments
  // wn * 16 + 8 nt + 2t + (i & 1) of the tile.
  float sum[MR][2][4];
#pragma unroll
  for (int m = 0; m < MR; ++m) {
#pragma unroll
    for (int nt = 0; nt < 2; ++nt) {
#pragma unroll
      for (int i = 0; i < 4; ++i) sum[m][nt][i] = 0.0f;
    }
  }
  const uint32_t grid_byte = 0x4440u | static_cast<uint32_t>(t);
  const int sign_shift = 7 * t;

#pragma unroll
  for (int k = 0; k < STAGES - 1; ++k) {
    if (k < p.blocks) load_stage(k, k);
    cp_async_commit();
  }
  for (int b = 0; b < p.blocks; ++b) {
    if (b + STAGES - 1 < p.blocks) load_stage(b + STAGES - 1, (b + STAGES - 1) % STAGES);
    cp_async_commit();
    // IQ2_XXS: the rows' f16 d of this block (read while the copies land).
    float d_row[MR][2];
    if constexpr (kIq2) {
#pragma unroll
      for (int m = 0; m < MR; ++m) {
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          const int tr = wm * kWarpRows + 16 * m + g + 8 * r;
          const uint16_t* sc = PAIRED && tr >= BM / 2 ? p.u_scales : p.w_scales;
          d_row[m][r] =
              half_bits_to_float(__ldg(sc + tile_row<PAIRED, BM>(p, group, row0, tr) * p.blocks + b)) * 0.125f;
        }
      }
    }
    cp_async_wait<STAGES - 1>();
    __syncthreads();
    const uint8_t* st = smem + (b % STAGES) * S::kBytes;
    const uint8_t* wrow = st + S::kW + (wm * kWarpRows + g) * S::kWStride;  // row g of the warp's first tile
    const uint8_t* xrow = st + S::kX + (wn * 16 + g) * kXRowStride + t * 32;  // assignment g of the first n tile
    int acc[MR][2][kSums][4];
    if (warp_tiles > 0) {
#pragma unroll
      for (int m = 0; m < MR; ++m) {
#pragma unroll
        for (int nt = 0; nt < 2; ++nt) {
#pragma unroll
          for (int L = 0; L < kSums; ++L) {
#pragma unroll
            for (int i = 0; i < 4; ++i) acc[m][nt][L][i] = 0;
          }
        }
      }
#pragma unroll(kUnrolled ? 8 : kIq2 ? 1 : 2)
      for (int c = 0; c < 8; ++c) {
        uint32_t a[MR][4];  // [m] the A fragment: lo(g), lo(g + 8), hi(g), hi(g + 8)
        [[maybe_unused]] int s2[MR][2];  // IQ2_XXS: 2S + 1 of rows g, g + 8
        // SCALED: a holds the low digits lo of w (2S + 1), ah the high ones hi (same slots).
        [[maybe_unused]] uint32_t ah[SCALED ? MR : 1][4];
#pragma unroll
        for (int m = 0; m < MR; ++m) {
#pragma unroll
          for (int r = 0; r < 2; ++r) {
            const uint8_t* row = wrow + (16 * m + 8 * r) * S::kWStride;
            if constexpr (SCALED) {
              const uint2 q = *reinterpret_cast<const uint2*>(row + c * 8);
              iq2_row_scaled_fragment<kStride>(q, table, s_scaled, grid_byte, sign_shift, &a[m][r], &a[m][2 + r],
                                               &ah[m][r], &ah[m][2 + r]);
            } else if constexpr (kIq2) {
              const uint2 q = *reinterpret_cast<const uint2*>(row + c * 8);
              s2[m][r] = iq2_row_fragment<kStride>(q, table, grid_byte, sign_shift, &a[m][r], &a[m][2 + r]);
            } else {
              const int hh = c >> 2, j = c & 3;
              const uint2 q = *reinterpret_cast<const uint2*>(row + 16 + 32 * hh + 8 * t);
              const uint32_t sc = row[8 * hh + 2 * j + (t >> 1)] & 0xFu;
              a[m][r] = ((q.x >> (2 * j)) & 0x03030303u) * sc;  // level * sc <= 45: no carries
              a[m][2 + r] = ((q.y >> (2 * j)) & 0x03030303u) * sc;
            }
          }
        }
#pragma unroll
        for (int nt = 0; nt < 2; ++nt) {
          if (nt >= warp_tiles) break;
          const uint8_t* xb = xrow + nt * 8 * kXRowStride + c * 128;
          const uint4 d01 = *reinterpret_cast<const uint4*>(xb);
          const uint4 d23 = *reinterpret_cast<const uint4*>(xb + 16);
          const uint32_t bf[4][2] = {{d01.x, d01.y}, {d01.z, d01.w}, {d23.x, d23.y}, {d23.z, d23.w}};
          if constexpr (SCALED) {
            // The low digits first, then the high ones: an accumulator's two products are
            // 4 MR mma apart.
#pragma unroll
            for (int L = 0; L < 4; ++L) {
#pragma unroll
              for (int m = 0; m < MR; ++m) {
                mma_s8(acc[m][nt][L], a[m][0], a[m][1], a[m][2], a[m][3], bf[L][0], bf[L][1]);
              }
            }
#pragma unroll
            for (int L = 0; L < 4; ++L) {
#pragma unroll
              for (int m = 0; m < MR; ++m) {
                mma_s8(acc[m][nt][L + 1], ah[m][0], ah[m][1], ah[m][2], ah[m][3], bf[L][0], bf[L][1]);
              }
            }
          } else {
#pragma unroll
            for (int L = 0; L < 4; ++L) {
#pragma unroll
              for (int m = 0; m < MR; ++m) {
                if constexpr (kIq2) {
                  int d[4];
                  mma_s8_zero(d, a[m][0], a[m][1], a[m][2], a[m][3], bf[L][0], bf[L][1]);
                  acc[m][nt][L][0] += s2[m][0] * d[0];
                  acc[m][nt][L][1] += s2[m][0] * d[1];
                  acc[m][nt][L][2] += s2[m][1] * d[2];
                  acc[m][nt][L][3] += s2[m][1] * d[3];
                } else {
                  mma_s8(acc[m][nt][L], a[m][0], a[m][1], a[m][2], a[m][3], bf[L][0], bf[L][1]);
                }
              }
            }
          }
        }
      }
      // The block's exact sums, converted once and scaled.
      const float* xs = reinterpret_cast<const float*>(st + S::kXScales) + wn * 16 + 2 * t;
#pragma unroll
      for (int nt = 0; nt < 2; ++nt) {
        if (nt >= warp_tiles) break;
        const float sb[2] = {xs[8 * nt], xs[8 * nt + 1]};
#pragma unroll
        for (int m = 0; m < MR; ++m) {
          if constexpr (SCALED) {
#pragma unroll
            for (int i = 0; i < 4; ++i) {
              const long long total = combine_scaled(acc[m][nt][0][i], acc[m][nt][1][i], acc[m][nt][2][i],
                                                     acc[m][nt][3][i], acc[m][nt][kSums - 1][i]);
              sum[m][nt][i] += __ll2float_rn(total) * (d_row[m][i >> 1] * sb[i & 1]);
            }
          } else if constexpr (kIq2) {
#pragma unroll
            for (int i = 0; i < 4; ++i) {
              const long long total = combine_digits(acc[m][nt][0][i], acc[m][nt][1][i], acc[m][nt][2][i],
                                                     acc[m][nt][3][i]);
              sum[m][nt][i] += __ll2float_rn(total) * (d_row[m][i >> 1] * sb[i & 1]);
            }
          } else {
            // Minimums: sum_G m_G X'_G on f16 tensor cores (X' = hi + lo 2^-11).
            const uint8_t* r0 = wrow + 16 * m * S::kWStride;
            const uint8_t* r1 = r0 + 8 * S::kWStride;
            const auto mins_h2 = [](uint32_t two_bytes) {
              const uint32_t bits = 0x64006400u | ((two_bytes >> 4) & 0xFu) | (((two_bytes >> 12) & 0xFu) << 16);
              const __half2 v =
                  __hsub2(*reinterpret_cast<const __half2*>(&bits), __half2half2(__ushort_as_half(0x6400)));
              return *reinterpret_cast<const uint32_t*>(&v);
            };
            const uint32_t ma0 = mins_h2(*reinterpret_cast<const uint16_t*>(r0 + 2 * t));
            const uint32_t ma1 = mins_h2(*reinterpret_cast<const uint16_t*>(r1 + 2 * t));
            const uint32_t ma2 = mins_h2(*reinterpret_cast<const uint16_t*>(r0 + 8 + 2 * t));
            const uint32_t ma3 = mins_h2(*reinterpret_cast<const uint16_t*>(r1 + 8 + 2 * t));
            const uint4 xm =
                *reinterpret_cast<const uint4*>(st + S::kXMins + (wn * 16 + 8 * nt + g) * kMinBytes + 16 * t);
            float dm[4] = {0.0f, 0.0f, 0.0f, 0.0f};
            mma_f16(dm, ma0, ma1, ma2, ma3, xm.z, xm.w);
#pragma unroll
            for (int i = 0; i < 4; ++i) dm[i] *= 1.0f / 2048.0f;
            mma_f16(dm, ma0, ma1, ma2, ma3, xm.x, xm.y);
            const float dd[2] = {half_bits_to_float(*reinterpret_cast<const uint16_t*>(r0 + 80)),
                                 half_bits_to_float(*reinterpret_cast<const uint16_t*>(r1 + 80))};
            const float dmin[2] = {half_bits_to_float(*reinterpret_cast<const uint16_t*>(r0 + 82)),
                                   half_bits_to_float(*reinterpret_cast<const uint16_t*>(r1 + 82))};
#pragma unroll
            for (int i = 0; i < 4; ++i) {
              const long long total = combine_digits(acc[m][nt][0][i], acc[m][nt][1][i], acc[m][nt][2][i],
                                                     acc[m][nt][3][i]);
              const float s = sb[i & 1];
              sum[m][nt][i] += fmaf(__ll2float_rn(total), dd[i >> 1] * s,
                                    -(dmin[i >> 1] * (s * 1073741824.0f) * dm[i]));
            }
          }
        }
      }
    }  // warp_tiles > 0
    __syncthreads();
  }
  cp_async_wait<0>();
  __syncthreads();

  // The tile's sums through shared memory: out[weight row][assignment].
  float* out = reinterpret_cast<float*>(smem);
#pragma unroll
  for (int m = 0; m < MR; ++m) {
#pragma unroll
    for (int nt = 0; nt < 2; ++nt) {
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int r = wm * kWarpRows + 16 * m + g + 8 * (i >> 1);
        const int n = wn * 16 + 8 * nt + 2 * t + (i & 1);
        out[r * (BN + 1) + n] = sum[m][nt][i];
      }
    }
  }
  __syncthreads();
  constexpr int kOutRows = PAIRED ? BM / 2 : BM;
  for (int i = tid; i < kOutRows * BN; i += kThreads) {
    const int r = i % kOutRows, n = i / kOutRows;
    const int a = a_begin + n;
    if (a >= a_end) continue;
    float* dst = p.y + static_cast<int64_t>(a) * p.y_stride + row0 + r;
    if constexpr (PAIRED) {
      const float v = swiglu(out[r * (BN + 1) + n], out[(r + BM / 2) * (BN + 1) + n], p.limit);
      *dst = p.row_scale ? v * p.row_scale[a] : v;
    } else {
      const float v = out[r * (BN + 1) + n];
      *dst = p.accumulate ? *dst + v : v;
    }
  }
}

using ProductFn = void (*)(Params);

// The kernel variants: gate+up [256 rows][lane tables][one block per SM][stages 2, 3, 4],
// then down [256 rows][one block per SM][stages 2, 3, 4], then the small tiles (128 rows x
// 16 assignments, compact table, three blocks per SM): gate+up [stages], down [stages];
// then gate+up in the scaled-digit form (32 assignments per block): [shape: 128 rows, one
// 16-row mma tile per warp (16 warps, 128 registers); 128 rows, two tiles per warp, one
// block per SM (8 warps, up to 255 registers); the same, two blocks per SM (128
// registers); 256 rows, two tiles per warp (16 warps, 128 registers)][lane tables][stages],
// and its small tiles (128 rows x 16, two blocks per SM, 128 registers) [stages].
// The 256-row kernels (512 threads) have one register budget: their "one block per SM"
// slots hold the same kernel.
struct Variant {
  ProductFn fn;
  int dynamic_shared;  // bytes
  int threads;
  int bm;              // weight rows per block
  int bn;              // assignments per block
  int static_shared;   // bytes (read at init)
  bool usable;         // fits the device's shared memory
};

constexpr int kVariants = 69;

int variant_index(bool paired, int bm, bool lane_tables, bool one_block, int stages) {
  const int s = stages - 2, big = bm == 256 ? 1 : 0;
  return paired ? ((big * 2 + (lane_tables ? 1 : 0)) * 2 + (one_block ? 1 : 0)) * 3 + s
                : 24 + (big * 2 + (one_block ? 1 : 0)) * 3 + s;
}

int small_variant_index(bool paired, int stages) { return (paired ? 36 : 39) + stages - 2; }

// Gate+up in the scaled-digit form: `shape` as listed above (0..3).
int scaled_variant_index(int shape, bool lane_tables, int stages) {
  return 42 + (shape * 2 + (lane_tables ? 1 : 0)) * 3 + stages - 2;
}

int scaled_small_variant_index(int stages) { return 66 + stages - 2; }

template <GgmlType T, bool PAIRED, bool LANE, int MIN_BLOCKS, int BM, int BN = 32, int MR = 2, bool SCALED = false>
void add_variants(Variant* v) {
  [[maybe_unused]] constexpr int extra = LANE ? kLaneTableBytes : 0;
  [[maybe_unused]] constexpr int threads = 32 * (BM / (16 * MR)) * (BN / 16);
  using S = StageLayout<T, BM, BN>;
  v[0] = {expert_matmul_kernel<T, PAIRED, LANE, MIN_BLOCKS, 2, BM, BN, MR, SCALED>, S::total(2) + extra, threads, BM,
          BN, 0, false};
  v[1] = {expert_matmul_kernel<T, PAIRED, LANE, MIN_BLOCKS, 3, BM, BN, MR, SCALED>, S::total(3) + extra, threads, BM,
          BN, 0, false};
  v[2] = {expert_matmul_kernel<T, PAIRED, LANE, MIN_BLOCKS, 4, BM, BN, MR, SCALED>, S::total(4) + extra, threads, BM,
          BN, 0, false};
}

struct InitState {
  Status status;
  Variant variants[kVariants];
};

InitState& init_state() {
  static InitState s = [] {
    InitState st;
    constexpr auto kIq2 = GgmlType::IQ2_XXS;
    constexpr auto kQ2k = GgmlType::Q2_K;
    add_variants<kIq2, true, false, 2, 128>(st.variants + variant_index(true, 128, false, false, 2));
    add_variants<kIq2, true, false, 1, 128>(st.variants + variant_index(true, 128, false, true, 2));
    add_variants<kIq2, true, true, 2, 128>(st.variants + variant_index(true, 128, true, false, 2));
    add_variants<kIq2, true, true, 1, 128>(st.variants + variant_index(true, 128, true, true, 2));
    add_variants<kIq2, true, false, 1, 256>(st.variants + variant_index(true, 256, false, false, 2));
    add_variants<kIq2, true, false, 1, 256>(st.variants + variant_index(true, 256, false, true, 2));
    add_variants<kIq2, true, true, 1, 256>(st.variants + variant_index(true, 256, true, false, 2));
    add_variants<kIq2, true, true, 1, 256>(st.variants + variant_index(true, 256, true, true, 2));
    add_variants<kQ2k, false, false, 2, 128>(st.variants + variant_index(false, 128, false, false, 2));
    add_variants<kQ2k, false, false, 1, 128>(st.variants + variant_index(false, 128, false, true, 2));
    add_variants<kQ2k, false, false, 1, 256>(st.variants + variant_index(false, 256, false, false, 2));
    add_variants<kQ2k, false, false, 1, 256>(st.variants + variant_index(false, 256, false, true, 2));
    add_variants<kIq2, true, false, 3, 128, 16, 1>(st.variants + small_variant_index(true, 2));
    add_variants<kQ2k, false, false, 3, 128, 16, 1>(st.variants + small_variant_index(false, 2));
    add_variants<kIq2, true, false, 1, 128, 32, 1, true>(st.variants + scaled_variant_index(0, false, 2));
    add_variants<kIq2, true, true, 1, 128, 32, 1, true>(st.variants + scaled_variant_index(0, true, 2));
    add_variants<kIq2, true, false, 1, 128, 32, 2, true>(st.variants + scaled_variant_index(1, false, 2));
    add_variants<kIq2, true, true, 1, 128, 32, 2, true>(st.variants + scaled_variant_index(1, true, 2));
    add_variants<kIq2, true, false, 2, 128, 32, 2, true>(st.variants + scaled_variant_index(2, false, 2));
    add_variants<kIq2, true, true, 2, 128, 32, 2, true>(st.variants + scaled_variant_index(2, true, 2));
    add_variants<kIq2, true, false, 1, 256, 32, 2, true>(st.variants + scaled_variant_index(3, false, 2));
    add_variants<kIq2, true, true, 1, 256, 32, 2, true>(st.variants + scaled_variant_index(3, true, 2));
    add_variants<kIq2, true, false, 2, 128, 16, 1, true>(st.variants + scaled_small_variant_index(2));
    return st;
  }();
  return s;
}

Status init_once(InitState* s) {
  uint32_t table[kTableWords];
  DS4_RETURN_IF_ERROR(build_iq2xxs_compact_table(table));
  // On a stream of its own (non-blocking): the legacy stream's implicit synchronisation
  // never touches a stream being captured.
  cudaStream_t stream = nullptr;
  DS4_CUDA_TRY(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  cudaError_t copied = cudaMemcpyToSymbolAsync(g_em_selectors, table, sizeof(table), 0, cudaMemcpyHostToDevice, stream);
  if (copied == cudaSuccess) copied = cudaStreamSynchronize(stream);
  cudaStreamDestroy(stream);
  DS4_RETURN_IF_ERROR(cuda_status(copied, "uploading the IQ2_XXS selector table (expert matmul)"));
  for (Variant& v : s->variants) {
    cudaFuncAttributes a{};
    DS4_CUDA_TRY(cudaFuncGetAttributes(&a, v.fn));
    v.static_shared = static_cast<int>(a.sharedSizeBytes);
    v.usable = v.dynamic_shared + v.static_shared <= max_shared_per_block();
    if (v.usable) {
      DS4_CUDA_TRY(cudaFuncSetAttribute(v.fn, cudaFuncAttributeMaxDynamicSharedMemorySize, v.dynamic_shared));
    }
  }
  return Status::Ok();
}

std::string type_name(GgmlType t) { return std::string(ggml_type_name(t)); }

// A kernel shape of ExpertMatmulOptions (the digit-scale fields, or the scaled-digit ones).
struct Shape {
  bool small_tiles;
  int rows_per_block;
  bool lane_tables;
  bool one_block_per_sm;
  int stages;
};

Status check_shape(const Shape& s, const char* what) {
  if (s.stages < 2 || s.stages > 4) {
    return Status::Error(std::string("expert matmul: ") + std::to_string(s.stages) + " " + what +
                         "pipeline stages (expected 2, 3 or 4)");
  }
  if (s.rows_per_block != 128 && s.rows_per_block != 256) {
    return Status::Error(std::string("expert matmul: ") + std::to_string(s.rows_per_block) + " " + what +
                         "rows per block (expected 128 or 256)");
  }
  return Status::Ok();
}

// The variant of shape `s` (index(bm, lane tables, one block, stages), small(stages) into
// the table) for a launch of `rows` rows per matrix, or where the device's shared memory
// cannot hold it (or the rows are not a multiple of its tile) the nearest that fits (128
// rows, the compact table, fewer stages); an error naming the shared memory when none does.
template <typename Index, typename SmallIndex>
Result<const Variant*> pick_shape(bool paired, int64_t rows, const Shape& s, Index index, SmallIndex small) {
  const Variant* all = init_state().variants;
  const auto fits = [&](const Variant& v) { return v.usable && rows % (paired ? v.bm / 2 : v.bm) == 0; };
  if (s.small_tiles) {
    for (int stages = s.stages; stages >= 2; --stages) {
      const Variant& v = all[small(stages)];
      if (fits(v)) return &v;
    }
  }
  const Variant& asked = all[index(s.rows_per_block, paired && s.lane_tables, s.one_block_per_sm, s.stages)];
  if (fits(asked)) return &asked;
  for (int bm : {s.rows_per_block, 128}) {
    for (int stages = s.stages; stages >= 2; --stages) {
      const Variant& v = all[index(bm, false, s.one_block_per_sm, stages)];
      if (fits(v)) return &v;
    }
  }
  return Status::Error("expert matmul: " + std::to_string(asked.dynamic_shared + asked.static_shared) +
                       " bytes of shared memory needed, the device allows " + std::to_string(max_shared_per_block()));
}

// DS4_CUDA_EXPERT_SCALED_DIGITS: 1 (on), 0 (off), or an error naming a bad value.
const Result<bool>& scaled_digits_switch() {
  static const Result<bool> on = []() -> Result<bool> {
    const char* v = std::getenv("DS4_CUDA_EXPERT_SCALED_DIGITS");
    if (v == nullptr || *v == '\0' || std::string(v) == "0") return false;
    if (std::string(v) == "1") return true;
    return Status::Error("DS4_CUDA_EXPERT_SCALED_DIGITS: '" + std::string(v) + "' (expected 0 or 1)");
  }();
  return on;
}

// The variant `options` select for a launch (paired: the scaled-digit form where
// o.scaled_digits); errors for options out of range.
Result<const Variant*> pick_variant(bool paired, int64_t rows, const ExpertMatmulOptions& o) {
  DS4_RETURN_IF_ERROR(expert_matmul_init());
  DS4_RETURN_IF_ERROR(scaled_digits_switch().status());
  const Shape plain{o.small_tiles, o.rows_per_block, o.lane_tables, o.one_block_per_sm, o.stages};
  DS4_RETURN_IF_ERROR(check_shape(plain, ""));
  if (paired && o.scaled_digits) {
    const Shape scaled{o.scaled_small_tiles, o.scaled_rows_per_block, o.scaled_lane_tables,
                       o.scaled_one_block_per_sm, o.scaled_stages};
    DS4_RETURN_IF_ERROR(check_shape(scaled, "scaled-digit "));
    if (o.scaled_warp_tiles != 1 && o.scaled_warp_tiles != 2) {
      return Status::Error("expert matmul: " + std::to_string(o.scaled_warp_tiles) +
                           " scaled-digit mma row tiles per warp (expected 1 or 2)");
    }
    const int warp_tiles = o.scaled_warp_tiles;
    // The fallbacks (fewer rows, the compact table, fewer stages) keep the warp tiles.
    return pick_shape(
        true, rows, scaled,
        [warp_tiles](int bm, bool lane, bool one, int stages) {
          const int shape = bm == 256 ? 3 : warp_tiles == 1 ? 0 : one ? 1 : 2;
          return scaled_variant_index(shape, lane, stages);
        },
        scaled_small_variant_index);
  }
  return pick_shape(
      paired, rows, plain,
      [paired](int bm, bool lane, bool one, int stages) { return variant_index(paired, bm, lane, one, stages); },
      [paired](int stages) { return small_variant_index(paired, stages); });
}

}  // namespace

bool expert_matmul_scaled_digits_default() {
  const Result<bool>& on = scaled_digits_switch();
  return on.ok() && on.value();
}

Status expert_matmul_init() {
  static std::once_flag once;
  std::call_once(once, [] { init_state().status = with_relaxed_capture([] { return init_once(&init_state()); }); });
  return init_state().status;
}

size_t expert_matmul_workspace_bytes(int64_t cols, int64_t rows) {
  return static_cast<size_t>(workspace_layout(std::max<int64_t>(cols / 256, 0), std::max<int64_t>(rows, 0)).end);
}

Status expert_matmul_supported(const ExpertMatmulLaunch& l, const ExpertMatmulOptions& options) {
  if (!l.w) return Status::Error("expert matmul: weight matrix missing");
  const DeviceMatrix& w = *l.w;
  const bool paired = l.w_up != nullptr;
  if (paired) {
    const DeviceMatrix& u = *l.w_up;
    if (w.type != GgmlType::IQ2_XXS || u.type != GgmlType::IQ2_XXS) {
      return Status::Error("expert matmul: paired weights are " + type_name(w.type) + " / " + type_name(u.type) +
                           " (expected IQ2_XXS)");
    }
    if (u.cols != w.cols || u.rows != w.rows || u.count != w.count) {
      return Status::Error("expert matmul: gate and up stacks differ in shape");
    }
    if (w.rows % 64 != 0) {
      return Status::Error("expert matmul: " + std::to_string(w.rows) + " gate/up rows (expected a multiple of 64)");
    }
  } else {
    if (w.type != GgmlType::Q2_K) {
      return Status::Error("expert matmul: unpaired weights are " + type_name(w.type) + " (expected Q2_K)");
    }
    if (w.rows % 128 != 0) {
      return Status::Error("expert matmul: " + std::to_string(w.rows) + " rows (expected a multiple of 128)");
    }
  }
  if (w.cols <= 0 || w.cols % 256 != 0 || w.cols > (int64_t{1} << 20)) {
    return Status::Error("expert matmul: " + std::to_string(w.cols) + " columns (expected a multiple of 256)");
  }
  if (w.rows > (int64_t{1} << 24) || w.count * w.rows > (int64_t{1} << 30)) {
    return Status::Error("expert matmul: " + std::to_string(w.count) + " x " + std::to_string(w.rows) +
                         " rows are too many");
  }
  if (reinterpret_cast<uintptr_t>(l.x) % 16 != 0 || l.x_stride % 4 != 0 || l.x_stride < w.cols) {
    return Status::Error("expert matmul: x rows are not 16-byte aligned with at least " + std::to_string(w.cols) +
                         " columns (stride " + std::to_string(l.x_stride) + ")");
  }
  if (!l.group_offsets) return Status::Error("expert matmul: group_offsets missing (grouped mode only)");
  if (l.n_groups <= 0 || l.n_groups > w.count) {
    return Status::Error("expert matmul: " + std::to_string(l.n_groups) + " groups for " + std::to_string(w.count) +
                         " matrices");
  }
  return pick_variant(paired, w.rows, options).status();
}

Status launch_expert_matmul(const ExpertMatmulLaunch& l, cudaStream_t stream, const ExpertMatmulOptions& options) {
  DS4_RETURN_IF_ERROR(expert_matmul_supported(l, options));
  const DeviceMatrix& w = *l.w;
  const bool paired = l.w_up != nullptr;
  if (!l.x || !l.y) return Status::Error("expert matmul: x or y missing");
  if (l.y_stride < w.rows) {
    return Status::Error("expert matmul: y stride " + std::to_string(l.y_stride) + " is below the " +
                         std::to_string(w.rows) + " output rows");
  }
  if (!l.workspace || reinterpret_cast<uintptr_t>(l.workspace) % 16 != 0) {
    return Status::Error("expert matmul: workspace missing or not 16-byte aligned");
  }
  if (l.n_tokens < 0 || l.x_pool_rows < 0 || (!l.x_rows && l.x_pool_rows < l.n_tokens)) {
    return Status::Error("expert matmul: " + std::to_string(l.x_pool_rows) + " workspace rows for " +
                         std::to_string(l.n_tokens) + " assignments (without x_rows: at least n_tokens)");
  }
  if (l.n_tokens == 0 || l.x_pool_rows == 0) return Status::Ok();
  auto variant = pick_variant(paired, w.rows, options);
  DS4_RETURN_IF_ERROR(variant.status());
  const int64_t blocks = w.cols / 256;
  const WorkspaceLayout wl = workspace_layout(blocks, l.x_pool_rows);
  uint8_t* ws = static_cast<uint8_t*>(l.workspace);

  // The pre-pass: every pool row (with x_rows), or the assignments present (without).
  const int64_t units = l.x_pool_rows * blocks;
  const int64_t split_blocks = (units * 32 + 255) / 256;
  if (split_blocks > INT32_MAX) return Status::Error("expert matmul: too many rows of x for the pre-pass");
  const int32_t* count = l.x_rows ? nullptr : l.group_offsets + l.n_groups;
  uint8_t* digits = ws + wl.digits;
  float* scales = reinterpret_cast<float*>(ws + wl.scales);
  uint8_t* mins = ws + wl.mins;
  if (paired) {
    split_rows_kernel<false><<<static_cast<unsigned>(split_blocks), 256, 0, stream>>>(
        l.x, l.x_stride, l.x_pool_rows, count, static_cast<int>(blocks), digits, scales, mins);
  } else {
    split_rows_kernel<true><<<static_cast<unsigned>(split_blocks), 256, 0, stream>>>(
        l.x, l.x_stride, l.x_pool_rows, count, static_cast<int>(blocks), digits, scales, mins);
  }
  DS4_RETURN_IF_ERROR(cuda_status(cudaGetLastError(), "expert matmul: launching the digit split"));

  Params p{};
  p.w_data = w.data;
  p.w_scales = w.scales;
  p.u_data = paired ? l.w_up->data : nullptr;
  p.u_scales = paired ? l.w_up->scales : nullptr;
  p.row_bytes = static_cast<int64_t>(w.data_row_bytes());
  p.rows = static_cast<int>(w.rows);
  p.blocks = static_cast<int>(blocks);
  p.digits = digits;
  p.xscales = scales;
  p.xmins = mins;
  p.y = l.y;
  p.y_stride = l.y_stride;
  p.limit = l.swiglu_limit;
  p.accumulate = l.accumulate ? 1 : 0;
  p.group_offsets = l.group_offsets;
  p.n_groups = l.n_groups;
  p.x_rows = l.x_rows;
  p.row_scale = paired ? l.row_scale : nullptr;
  // ceil(n_tokens / bn) + n_groups tiles at most; the blocks past the last exit.
  const int bn = (*variant)->bn;
  const int64_t token_tiles = (static_cast<int64_t>(l.n_tokens) + bn - 1) / bn + l.n_groups;
  const int bm = (*variant)->bm;
  const int64_t row_tiles = w.rows / (paired ? bm / 2 : bm);
  if (token_tiles > 65535 || row_tiles > INT32_MAX) return Status::Error("expert matmul: grid too large");
  // Row tiles vary fastest: the blocks of one assignment tile run together and read its
  // digits from L2 (the down products' digits, ~100 MB at the real shapes, exceed it).
  const dim3 grid(static_cast<unsigned>(row_tiles), static_cast<unsigned>(token_tiles));
  (*variant)->fn<<<grid, (*variant)->threads, (*variant)->dynamic_shared, stream>>>(p);
  return cuda_status(cudaGetLastError(), paired ? "expert matmul: gate+up launch" : "expert matmul: down launch");
}

}  // namespace ds4
