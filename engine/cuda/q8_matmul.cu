#include "cuda/q8_matmul.h"

#include <algorithm>
#include <mutex>
#include <string>

#include "cuda/async_copy.cuh"
#include "cuda/cuda_check.h"
#include "cuda/dequant_chunk.cuh"
#include "cuda/device_limits.h"
#include "cuda/device_math.cuh"
#include "cuda/int8_digits.cuh"
#include "cuda/relaxed_capture.h"

namespace ds4 {
namespace {

using cuda_detail::smem_addr;
using cuda_detail::cp_async16;
using cuda_detail::cp_async8;
using cuda_detail::cp_async4;
using cuda_detail::cp_async_commit;
using cuda_detail::cp_async_wait;

using cuda_detail::half_bits_to_float;
using cuda_detail::swiglu;

// Block tile: ROWS weight rows (128 or 256; paired: ROWS / 2 gate rows and the same up
// rows) x BN tokens, 128 columns (four Q8_0 blocks, half a digit block) per pipeline
// stage. ROWS / 16 warps: ROWS / 32 along the rows (32 weight rows each: two 16-row mma
// tiles; paired, tile 0 the gate rows and tile 1 the up rows of the same 16 outputs) x 2
// along the tokens (BN / 2 each).
constexpr int kStepCols = 128;
constexpr int kDigitBlockBytes = 1024;  // one row's digits of a 256-column block: [j 8][digit 4][32]
constexpr int kStepDigitBytes = 512;    // of one step: [j 4][digit 4][32]
constexpr int kWStride = kStepCols + 16;         // shared weight row (ldmatrix rows in distinct banks)
constexpr int kXStride = kStepDigitBytes + 16;   // shared digit row
constexpr uint32_t kMagic = 0x4B400000u;         // the bits of 1.5 * 2^23
constexpr float kMagicValue = 12582912.0f;

template <int ROWS, int BN>
struct Stage {
  static constexpr int kW = 0;
  static constexpr int kScales = kW + ROWS * kWStride;        // f16 d [row][4]
  static constexpr int kX = kScales + ROWS * 8;               // digits [token][kXStride]
  static constexpr int kXScales = kX + BN * kXStride;         // f32 s_b [token]
  static constexpr int kBytes = (kXScales + BN * 4 + 15) & ~15;
  static_assert(kScales % 16 == 0 && kX % 16 == 0 && kXScales % 16 == 0, "16-byte alignment");
};

struct Params {
  const uint8_t* w_data;      // quants of W[matrix] (row 0 of the matrix)
  const uint16_t* w_scales;
  const uint8_t* u_data;      // paired: up
  const uint16_t* u_scales;
  int64_t cols;
  int64_t row_begin;
  int n_rows;
  int steps;                  // cols / 128
  const uint8_t* digits;      // [token][cols / 256][1024]
  const float* xscales;       // [token][cols / 256]
  float* y;
  int64_t y_stride;
  int n_tokens;
  float limit;
  int accumulate;
};

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}

// d = A B + magic, int8 x int8 -> int32 (A 16 x 32 row, B 32 x 8 col).
__device__ __forceinline__ void mma_s8_magic(int (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%10,%10,%10,%10};"
      : "=r"(d[0]), "=r"(d[1]), "=r"(d[2]), "=r"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1), "r"(kMagic));
}

// The digit sum D_L from an accumulator that started at the magic bits (exact).
__device__ __forceinline__ float digit_sum(int r) { return __int_as_float(r) - kMagicValue; }

// ---- pre-pass: x rows into digits ----------------------------------------------------

// One warp per (row, 256-column block); lane l holds columns 8l..8l+7 (block j = l / 4,
// columns 8 (l % 4).. of it) and writes their four digits at bytes 128 j + 32 L + 8 (l % 4)
// of the row's block: per j and digit L the 32 digits in column order (the rows that
// ldmatrix reads as B fragments). DIGITS = 3 (Q8MatmulOptions::digits) leaves plane 3 zero
// (cuda/int8_digits.cuh).
template <int DIGITS>
__global__ void __launch_bounds__(256) q8_split_rows_kernel(const float* __restrict__ x, int64_t x_stride,
                                                            int64_t rows, int blocks, uint8_t* __restrict__ digits,
                                                            float* __restrict__ scales) {
  const int lane = threadIdx.x & 31;
  const int64_t unit = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  if (unit >= rows * blocks) return;
  const int64_t row = unit / blocks;
  const int b = static_cast<int>(unit - row * blocks);
  const float4* src = reinterpret_cast<const float4*>(x + row * x_stride + b * 256 + lane * 8);
  const float4 v0 = src[0], v1 = src[1];
  const float v[8] = {v0.x, v0.y, v0.z, v0.w, v1.x, v1.y, v1.z, v1.w};
  const cuda_detail::DigitBlock d = cuda_detail::split_block_digits<DIGITS>(v);
  const int64_t at = row * blocks + b;
  uint8_t* out = digits + at * kDigitBlockBytes + (lane >> 2) * 128 + (lane & 3) * 8;
#pragma unroll
  for (int L = 0; L < 4; ++L) *reinterpret_cast<uint2*>(out + 32 * L) = make_uint2(d.lo[L], d.hi[L]);
  if (lane == 0) scales[at] = d.scale();
}

// ---- the product kernel --------------------------------------------------------------

// Weight row of tile row r (0..127) of the block whose first output row is row0: its
// output row and whether it is an up row (paired).
template <bool PAIRED>
__device__ __forceinline__ int tile_output_row(int row0, int r, bool* up) {
  if constexpr (PAIRED) {
    *up = ((r >> 4) & 1) != 0;
    return row0 + (r >> 5) * 16 + (r & 15);  // warp r / 32: rows 16 (r / 32).. of the block's outputs
  } else {
    *up = false;
    return row0 + r;
  }
}

// ROWS: weight rows per block (128 or 256; 256 or 512 threads, 8 warps per 128 rows).
template <bool PAIRED, int ROWS, int BN, int STAGES, int MIN_BLOCKS, int DIGITS>
__global__ void __launch_bounds__(ROWS * 2, MIN_BLOCKS) q8_matmul_kernel(Params p) {
  using S = Stage<ROWS, BN>;
  constexpr int kRows = ROWS;
  constexpr int kThreads = ROWS * 2;
  constexpr int kRowWarps = ROWS / 32;
  constexpr int kNT = BN / 16;  // 8-token mma tiles per warp
  extern __shared__ float4 smem4[];
  uint8_t* smem = reinterpret_cast<uint8_t*>(smem4);
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int g = lane >> 2, t = lane & 3;
  const int wm = warp % kRowWarps, wn = warp / kRowWarps;
  const int token0 = blockIdx.x * BN;
  const int row0 = blockIdx.y * (PAIRED ? kRows / 2 : kRows);
  const int last_token = p.n_tokens - 1;
  const int last_row = p.n_rows - 1;
  const int blocks = p.steps >> 1;

  // Copies of step s into buffer buf. Rows and tokens past the end copy the last valid
  // one (their outputs are not written).
  const auto load_stage = [&](int s, int buf) {
    uint8_t* st = smem + buf * S::kBytes;
    for (int i = tid; i < kRows * (kStepCols / 16); i += kThreads) {
      const int r = i >> 3, q = i & 7;
      bool up = false;
      const int out_row = min(tile_output_row<PAIRED>(row0, r, &up), last_row);
      const uint8_t* base = up ? p.u_data : p.w_data;
      cp_async16(st + S::kW + r * kWStride + q * 16,
                 base + (p.row_begin + out_row) * p.cols + static_cast<int64_t>(s) * kStepCols + q * 16);
    }
    if (tid < kRows) {
      bool up = false;
      const int out_row = min(tile_output_row<PAIRED>(row0, tid, &up), last_row);
      const uint16_t* base = up ? p.u_scales : p.w_scales;
      cp_async8(st + S::kScales + tid * 8, base + (p.row_begin + out_row) * (p.cols / 32) + s * 4);
    }
    const int64_t block = s >> 1, half = s & 1;
    for (int i = tid; i < BN * (kStepDigitBytes / 16); i += kThreads) {
      const int n = i >> 5, q = i & 31;
      const int64_t token = min(token0 + n, last_token);
      cp_async16(st + S::kX + n * kXStride + q * 16,
                 p.digits + (token * blocks + block) * kDigitBlockBytes + half * kStepDigitBytes + q * 16);
    }
    if (tid < BN) {
      const int64_t token = min(token0 + tid, last_token);
      cp_async4(st + S::kXScales + tid * 4, p.xscales + token * blocks + block);
    }
  };

  // This lane's outputs: weight rows wm * 32 + 16 m + g + 8 (i >> 1), tokens wn * BN / 2 +
  // 8 nt + 2 t + (i & 1) of the tile.
  float acc[2][kNT][4];
#pragma unroll
  for (int m = 0; m < 2; ++m) {
#pragma unroll
    for (int nt = 0; nt < kNT; ++nt) {
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[m][nt][i] = 0.0f;
    }
  }

#pragma unroll
  for (int k = 0; k < STAGES - 1; ++k) {
    if (k < p.steps) load_stage(k, k);
    cp_async_commit();
  }
  for (int s = 0; s < p.steps; ++s) {
    if (s + STAGES - 1 < p.steps) load_stage(s + STAGES - 1, (s + STAGES - 1) % STAGES);
    cp_async_commit();
    cp_async_wait<STAGES - 1>();
    __syncthreads();
    const uint8_t* st = smem + (s % STAGES) * S::kBytes;
    const uint8_t* w_tile = st + S::kW + (wm * 32 + (lane & 15)) * kWStride + (lane >> 4) * 16;
    const uint8_t* x_tile = st + S::kX + (wn * (BN / 2) + (lane & 7)) * kXStride + (lane >> 4) * 32 +
                            ((lane >> 3) & 1) * 16;
    const uint16_t* d_tile = reinterpret_cast<const uint16_t*>(st + S::kScales) + (wm * 32 + g) * 4;
    float part[2][kNT][4];  // p of the step
#pragma unroll 1
    for (int j = 0; j < 4; ++j) {
      uint32_t a[2][4];
      float dj[2][2];
#pragma unroll
      for (int m = 0; m < 2; ++m) {
        ldmatrix_x4(a[m], w_tile + 16 * m * kWStride + 32 * j);
        dj[m][0] = half_bits_to_float(d_tile[(16 * m) * 4 + j]);
        dj[m][1] = half_bits_to_float(d_tile[(16 * m + 8) * 4 + j]);
      }
#pragma unroll
      for (int nt = 0; nt < kNT; ++nt) {
        uint32_t b01[4], b23[4];  // digits 0, 1 and 2, 3: {L k0-15, L k16-31, L+1 k0-15, L+1 k16-31}
        const uint8_t* xb = x_tile + nt * 8 * kXStride + 128 * j;
        ldmatrix_x4(b01, xb);
        ldmatrix_x4(b23, xb + 64);
#pragma unroll
        for (int m = 0; m < 2; ++m) {
          int r0[4], r1[4], r2[4], r3[4] = {0, 0, 0, 0};
          if constexpr (DIGITS == 4) mma_s8_magic(r3, a[m], b23[2], b23[3]);
          mma_s8_magic(r2, a[m], b23[0], b23[1]);
          mma_s8_magic(r1, a[m], b01[2], b01[3]);
          mma_s8_magic(r0, a[m], b01[0], b01[1]);
#pragma unroll
          for (int i = 0; i < 4; ++i) {
            float sj;
            if constexpr (DIGITS == 4) {
              sj = fmaf(digit_sum(r3[i]), 256.0f, digit_sum(r2[i]));
              sj = fmaf(sj, 256.0f, digit_sum(r1[i]));
            } else {
              sj = fmaf(digit_sum(r2[i]), 256.0f, digit_sum(r1[i]));
            }
            sj = fmaf(sj, 256.0f, digit_sum(r0[i]));
            const float d = dj[m][i >> 1];
            part[m][nt][i] = j == 0 ? d * sj : fmaf(d, sj, part[m][nt][i]);
          }
        }
      }
    }
    const float* xs = reinterpret_cast<const float*>(st + S::kXScales) + wn * (BN / 2) + 2 * t;
#pragma unroll
    for (int nt = 0; nt < kNT; ++nt) {
      const float sb[2] = {xs[8 * nt], xs[8 * nt + 1]};
#pragma unroll
      for (int m = 0; m < 2; ++m) {
#pragma unroll
        for (int i = 0; i < 4; ++i) acc[m][nt][i] = fmaf(sb[i & 1], part[m][nt][i], acc[m][nt][i]);
      }
    }
    __syncthreads();
  }
  cp_async_wait<0>();

#pragma unroll
  for (int nt = 0; nt < kNT; ++nt) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int token = token0 + wn * (BN / 2) + 8 * nt + 2 * t + (i & 1);
      if (token > last_token) continue;
      float* yt = p.y + static_cast<int64_t>(token) * p.y_stride;
      if constexpr (PAIRED) {
        const int r = row0 + wm * 16 + g + 8 * (i >> 1);
        if (r > last_row) continue;
        const float v = swiglu(acc[0][nt][i], acc[1][nt][i], p.limit);
        yt[r] = p.accumulate ? yt[r] + v : v;
      } else {
#pragma unroll
        for (int m = 0; m < 2; ++m) {
          const int r = row0 + wm * 32 + 16 * m + g + 8 * (i >> 1);
          if (r > last_row) continue;
          yt[r] = p.accumulate ? yt[r] + acc[m][nt][i] : acc[m][nt][i];
        }
      }
    }
  }
}

using ProductFn = void (*)(Params);

struct Variant {
  ProductFn fn;
  int rows;
  int bn;
  int stages;
  int dynamic_shared;
  bool usable;
};

// [paired][variant], in order of preference: 64 tokens with 2 stages (about 107 KB: two
// blocks per multiprocessor on the H200) and with 3 (one block), 32 tokens with 3 and
// with 2 (about 73 KB: what the GB10 runs).
constexpr int kVariants = 5;

template <bool PAIRED, int DIGITS>
void add_variants(Variant* v) {
  v[0] = {q8_matmul_kernel<PAIRED, 128, 64, 2, 2, DIGITS>, 128, 64, 2, 2 * Stage<128, 64>::kBytes, false};
  v[1] = {q8_matmul_kernel<PAIRED, 128, 64, 3, 1, DIGITS>, 128, 64, 3, 3 * Stage<128, 64>::kBytes, false};
  v[2] = {q8_matmul_kernel<PAIRED, 128, 32, 3, 1, DIGITS>, 128, 32, 3, 3 * Stage<128, 32>::kBytes, false};
  v[3] = {q8_matmul_kernel<PAIRED, 128, 32, 2, 2, DIGITS>, 128, 32, 2, 2 * Stage<128, 32>::kBytes, false};
  v[4] = {q8_matmul_kernel<PAIRED, 256, 64, 2, 1, DIGITS>, 256, 64, 2, 2 * Stage<256, 64>::kBytes, false};
}

// variants[digits == 3][paired][variant]
struct InitState {
  Status status;
  Variant variants[2][2][kVariants];
};

InitState& init_state() {
  static InitState s = [] {
    InitState st;
    add_variants<false, 4>(st.variants[0][0]);
    add_variants<true, 4>(st.variants[0][1]);
    add_variants<false, 3>(st.variants[1][0]);
    add_variants<true, 3>(st.variants[1][1]);
    return st;
  }();
  return s;
}

Status init_once(InitState* s) {
  for (auto& by_digits : s->variants) {
    for (auto& set : by_digits) {
      for (Variant& v : set) {
      cudaFuncAttributes a{};
      DS4_CUDA_TRY(cudaFuncGetAttributes(&a, v.fn));
      v.usable = v.dynamic_shared + static_cast<int>(a.sharedSizeBytes) <= max_shared_per_block();
      if (v.usable) {
        DS4_CUDA_TRY(cudaFuncSetAttribute(v.fn, cudaFuncAttributeMaxDynamicSharedMemorySize, v.dynamic_shared));
      }
      }
    }
  }
  return Status::Ok();
}

// Variant `forced` (0 <= forced < kVariants) when the device's shared memory holds it,
// else (or with forced < 0) the first variant it holds.
Result<const Variant*> pick_variant(bool paired, int forced = -1, int digits = 4) {
  DS4_RETURN_IF_ERROR(q8_matmul_init());
  if (digits != 3 && digits != 4) {
    return Status::Error("q8 matmul: " + std::to_string(digits) + " activation digits (expected 3 or 4)");
  }
  const Variant* set = init_state().variants[digits == 3 ? 1 : 0][paired ? 1 : 0];
  if (forced >= kVariants) return Status::Error("q8 matmul: variant " + std::to_string(forced) + " does not exist");
  if (forced >= 0 && set[forced].usable) return &set[forced];
  for (int i = 0; i < kVariants; ++i) {
    if (set[i].usable) return &set[i];
  }
  const Variant& smallest = set[kVariants - 1];
  return Status::Error("q8 matmul: " + std::to_string(smallest.dynamic_shared) +
                       " bytes of shared memory needed, the device allows " + std::to_string(max_shared_per_block()));
}

int64_t rows_of(const MatmulLaunch& l) { return l.n_rows < 0 && l.w ? l.w->rows - l.row_begin : l.n_rows; }

bool aligned(const void* p, uintptr_t to) { return reinterpret_cast<uintptr_t>(p) % to == 0; }

}  // namespace

Status q8_matmul_init() {
  static std::once_flag once;
  std::call_once(once, [] { init_state().status = with_relaxed_capture([] { return init_once(&init_state()); }); });
  return init_state().status;
}

size_t q8_matmul_workspace_bytes(int64_t cols, int64_t rows) {
  const int64_t n = std::max<int64_t>(cols / 256, 0) * std::max<int64_t>(rows, 0);
  return static_cast<size_t>(n * kDigitBlockBytes + ((n * 4 + 15) & ~int64_t{15}));
}

Status q8_matmul_supported(const MatmulLaunch& l) {
  if (!l.w || l.w->empty()) return Status::Error("q8 matmul: weight matrix missing");
  const DeviceMatrix& w = *l.w;
  if (l.group_offsets) return Status::Error("q8 matmul: grouped launches are not handled (dense mode only)");
  if (w.type != GgmlType::Q8_0) {
    return Status::Error("q8 matmul: weights are " + std::string(ggml_type_name(w.type)) + " (expected Q8_0)");
  }
  if (l.w_up) {
    const DeviceMatrix& u = *l.w_up;
    if (u.type != GgmlType::Q8_0 || u.cols != w.cols || u.rows != w.rows || u.count != w.count || u.empty()) {
      return Status::Error("q8 matmul: gate and up matrices differ in type or shape");
    }
  }
  if (w.cols <= 0 || w.cols % 256 != 0 || w.cols > (int64_t{1} << 24)) {
    return Status::Error("q8 matmul: " + std::to_string(w.cols) + " columns (expected a multiple of 256)");
  }
  const int64_t n_rows = rows_of(l);
  if (l.row_begin < 0 || n_rows < 0 || l.row_begin + n_rows > w.rows || n_rows > (int64_t{1} << 30)) {
    return Status::Error("q8 matmul: rows [" + std::to_string(l.row_begin) + ", " +
                         std::to_string(l.row_begin + n_rows) + ") outside the matrix's " + std::to_string(w.rows) +
                         " rows");
  }
  if (l.matrix < 0 || l.matrix >= w.count) {
    return Status::Error("q8 matmul: matrix " + std::to_string(l.matrix) + " of " + std::to_string(w.count));
  }
  if (!aligned(l.x, 16) || l.x_stride % 4 != 0 || l.x_stride < w.cols) {
    return Status::Error("q8 matmul: x rows are not 16-byte aligned with at least " + std::to_string(w.cols) +
                         " columns (stride " + std::to_string(l.x_stride) + ")");
  }
  const auto weights_aligned = [](const DeviceMatrix* m) {
    return m == nullptr || (aligned(m->data, 16) && aligned(m->scales, 8));
  };
  if (!weights_aligned(l.w) || !weights_aligned(l.w_up)) {
    return Status::Error("q8 matmul: weight quants not 16-byte or scales not 8-byte aligned");
  }
  return pick_variant(l.w_up != nullptr).status();
}

int q8_matmul_variant_count() { return kVariants; }

std::string q8_matmul_variant_name(int variant) {
  if (variant < 0 || variant >= kVariants) return "(no such variant)";
  const Variant& v = init_state().variants[0][0][variant];
  return std::to_string(v.rows) + " rows x " + std::to_string(v.bn) + " tokens, " + std::to_string(v.stages) +
         " stages";
}

bool q8_matmul_variant_usable(int variant, bool paired) {
  if (variant < 0 || variant >= kVariants || !q8_matmul_init().ok()) return false;
  return init_state().variants[0][paired ? 1 : 0][variant].usable;
}

Status launch_q8_matmul(const MatmulLaunch& l, void* workspace, cudaStream_t stream, const Q8MatmulOptions& options) {
  DS4_RETURN_IF_ERROR(q8_matmul_supported(l));
  const DeviceMatrix& w = *l.w;
  const bool paired = l.w_up != nullptr;
  const int64_t n_rows = rows_of(l);
  if (!l.x || !l.y) return Status::Error("q8 matmul: x or y missing");
  if (l.n_tokens < 0) return Status::Error("q8 matmul: negative n_tokens");
  if (l.n_tokens > 0 && l.y_stride < n_rows) {
    return Status::Error("q8 matmul: y stride " + std::to_string(l.y_stride) + " is below the " +
                         std::to_string(n_rows) + " output rows");
  }
  if (!workspace || !aligned(workspace, 16)) return Status::Error("q8 matmul: workspace missing or not 16-byte aligned");
  if (n_rows == 0 || l.n_tokens == 0) return Status::Ok();
  auto chosen = pick_variant(paired, options.variant, options.digits);
  DS4_RETURN_IF_ERROR(chosen.status());
  const Variant& kernel = **chosen;
  const int64_t blocks = w.cols / 256;
  const int64_t units = static_cast<int64_t>(l.n_tokens) * blocks;
  uint8_t* digits = static_cast<uint8_t*>(workspace);
  float* scales = reinterpret_cast<float*>(digits + units * kDigitBlockBytes);
  const int64_t split_blocks = (units * 32 + 255) / 256;
  if (split_blocks > INT32_MAX) return Status::Error("q8 matmul: too many rows of x for the pre-pass");
  if (options.digits == 3) {
    q8_split_rows_kernel<3><<<static_cast<unsigned>(split_blocks), 256, 0, stream>>>(
        l.x, l.x_stride, l.n_tokens, static_cast<int>(blocks), digits, scales);
  } else {
    q8_split_rows_kernel<4><<<static_cast<unsigned>(split_blocks), 256, 0, stream>>>(
        l.x, l.x_stride, l.n_tokens, static_cast<int>(blocks), digits, scales);
  }
  DS4_RETURN_IF_ERROR(cuda_status(cudaGetLastError(), "q8 matmul: launching the digit split"));

  const int64_t matrix_offset = static_cast<int64_t>(l.matrix) * w.rows;
  Params p{};
  p.w_data = w.data + matrix_offset * w.cols;
  p.w_scales = w.scales + matrix_offset * (w.cols / 32);
  p.u_data = paired ? l.w_up->data + matrix_offset * w.cols : nullptr;
  p.u_scales = paired ? l.w_up->scales + matrix_offset * (w.cols / 32) : nullptr;
  p.cols = w.cols;
  p.row_begin = l.row_begin;
  p.n_rows = static_cast<int>(n_rows);
  p.steps = static_cast<int>(w.cols / kStepCols);
  p.digits = digits;
  p.xscales = scales;
  p.y = l.y;
  p.y_stride = l.y_stride;
  p.n_tokens = l.n_tokens;
  p.limit = l.swiglu_limit;
  p.accumulate = l.accumulate ? 1 : 0;
  const int bn = kernel.bn;
  const int64_t token_tiles = (static_cast<int64_t>(l.n_tokens) + bn - 1) / bn;
  const int64_t tile_rows = paired ? kernel.rows / 2 : kernel.rows;
  const int64_t row_tiles = (n_rows + tile_rows - 1) / tile_rows;
  if (row_tiles > 65535 || token_tiles > INT32_MAX) return Status::Error("q8 matmul: grid too large");
  // Token tiles vary fastest: the blocks sharing a weight tile run together and read it
  // from L2 after the first.
  const dim3 grid(static_cast<unsigned>(token_tiles), static_cast<unsigned>(row_tiles));
  kernel.fn<<<grid, kernel.rows * 2, kernel.dynamic_shared, stream>>>(p);
  return cuda_status(cudaGetLastError(), paired ? "q8 matmul: paired launch" : "q8 matmul: launch");
}

}  // namespace ds4
