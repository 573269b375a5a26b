// The prefill's routed-expert products for many tokens at once (spec/MODEL.md §2.6) on
// integer tensor cores, with the arithmetic of the one-token kernels of
// cuda/expert_matvec.h:
//
//   gate+up (paired, IQ2_XXS): y[a][r] = silu(min(G_g[r] . x_a, limit)) * clamp(U_g[r] . x_a,
//            -limit, limit) * row_scale[a]
//   down (unpaired, Q2_K):     y[a][r] = D_g[r] . x_a            (or y[a][r] += ..., accumulate)
//
// for every assignment a < group_offsets[n_groups] (read on the device), g the group with
// group_offsets[g] <= a < group_offsets[g + 1] (matrix g of the stack), x_a = row x_rows[a]
// of x (x_rows null: row a): the grouped-mode contract of cuda/matmul.h's MatmulLaunch.
//
// Arithmetic. A pre-pass writes each row of x that the launch reads, once, into the
// workspace: per 256-column block b, x_e ~ s_b a_e with s_b = 2^(E_b - 30), max_b |x| <
// 2^E_b (E_b at least -96), a_e = round(x_e / s_b), |a_e| < 2^30, as four signed base-256
// digits (int8); for Q2_K also X_G = the f32 sum of x over each 16 columns G, scaled by
// 2^-E_b and split into f16 hi + lo (lo = f16((X' - hi) 2^11)). The product kernel copies a
// tile of weights (128 or 256 rows x 256 columns) and of digits (32 assignments of one
// group) into shared memory with cp.async, two to four stages deep, and every weight tile
// serves all the tile's assignments (a warp skips its 8-assignment tiles that hold none).
// Weights are expanded to int8 straight into the A fragments of mma.sync
// m16n8k32 s8.s8.s32, one mma per digit (B: 8 assignments x 32 columns of one digit):
//   IQ2_XXS: the signed grid values (+-8, 25, 43); each 32-column product is exact in
//            int32 and multiplied by (2S + 1) in int32; per 256-column block the four digit
//            sums are combined exactly in int64, converted to f32 once and multiplied by
//            d s_b / 8. (Or, ExpertMatmulOptions::scaled_digits, the weights times
//            (2S + 1) as two int8 digits, two mma per digit of x accumulating five exact
//            sums over the block: the same int64 per block, the same outputs.)
//   Q2_K:    sc * level (<= 45) as int8; the digit sums of a 256-column block are exact in
//            int32, combined in int64, converted once and multiplied by d s_b; the minimums
//            -dmin sum_G m_G X_G come from one f16 mma pair per block (m_G exact in f16,
//            X' as hi + lo, f32 accumulation), times dmin 2^E_b.
// The blocks' f32 contributions are added in column order in f32. No atomics, no split-K:
// results do not depend on scheduling (bit-identical repeats).
//
// Precision: with n = cols / 256 the 256-column terms added per output and u = 2^-24,
//   |y - exact| <= sum_b (s_b / 2) sum_{e in b} |w_e|  +  (n + 24) u sum_e |w_e x_e|
//                  [Q2_K: + sum_b |dmin_b| 2^(E_b - 16) sum_G m_G]
// (Q2_K: |w_e| read as |d sc q| + |dmin m|), before the SwiGLU: the bound of
// cuda/expert_matvec.h's tensor-core kernels, plus for Q2_K the minimums' hi + lo split
// (2^-16 2^E_b <= 2^-15 max_b |x| per unit of m). A non-finite value in a 256-column
// block of x makes every product that reads the block NaN (down: the output; gate+up: the
// SwiGLU then gives what it gives NaN inputs, e.g. -inf without a limit).
//
// Launches never synchronise with the host and allocate nothing; the grid is sized on the
// host from n_tokens (an upper bound of the assignments) and n_groups, blocks without
// work exit: they can be captured in a CUDA graph (call expert_matmul_init() first).
//
// Thread-safety: launches on the caller's stream; the only host state is the one-time
// setup of expert_matmul_init() (IQ2_XXS selector table, shared-memory limits), guarded
// by std::call_once.
#pragma once

#include <cuda_runtime.h>

#include <cmath>
#include <cstddef>
#include <cstdint>

#include "common/status.h"
#include "cuda/device_matrix.h"

namespace ds4 {

struct ExpertMatmulLaunch {
  const DeviceMatrix* w = nullptr;      // IQ2_XXS gate (paired) or Q2_K down (unpaired)
  const DeviceMatrix* w_up = nullptr;   // IQ2_XXS up: paired SwiGLU; nullptr: unpaired
  const float* x = nullptr;             // activation row i at x + i * x_stride (w->cols floats)
  int64_t x_stride = 0;                 // floats; x and x_stride 16-byte aligned
  float* y = nullptr;                   // output row a at y + a * y_stride (w->rows floats)
  int64_t y_stride = 0;
  int n_tokens = 0;                     // an upper bound of the assignments
  float swiglu_limit = INFINITY;        // paired: INFINITY, no clamp
  bool accumulate = false;              // unpaired: y += instead of y =
  const int32_t* group_offsets = nullptr;  // [n_groups + 1], non-decreasing, [0] == 0 (device)
  int n_groups = 0;                     // at most w->count
  const int32_t* x_rows = nullptr;      // [assignments] (device); nullptr: row a
  const float* row_scale = nullptr;     // paired: [assignments] (device); nullptr: 1
  // Device memory of expert_matmul_workspace_bytes(w->cols, x_pool_rows) bytes (16-byte
  // aligned), written by the launch (stream-ordered; reusable by the next launch on the
  // same stream). Every row the launch reads (x_rows[a], or a without x_rows) must be
  // below x_pool_rows; without x_rows, x_pool_rows >= n_tokens.
  void* workspace = nullptr;
  int64_t x_pool_rows = 0;
};

// The default of ExpertMatmulOptions::scaled_digits: DS4_CUDA_EXPERT_SCALED_DIGITS "1"
// on, unset, empty or "0" off (read once). Any other value: off, and every launch fails
// with an error naming the variable.
bool expert_matmul_scaled_digits_default();

// Tuning variants (the benchmarks of tests/cuda/expert_matmul_test.cu compare them; the
// defaults are the expected fastest). Every variant computes the same values in the same
// order: outputs are bit-identical across variants. Where the device's shared memory
// cannot hold the variant asked for, the launch runs the nearest one that fits (the
// compact table, then fewer stages).
struct ExpertMatmulOptions {
  // Measured on the H200 (2048 tokens x 6 of 256 experts, tests/cuda/expert_matmul_test.cu):
  // down: 256 rows, 3 stages fastest (2.64 ms against 2.86 for 128 rows, 2 stages); gate+up:
  // the small tiles with 2 stages (6.47 ms; these defaults 6.63, 128 rows 2 stages 6.76).
  // The tensor cores' own s8 rate there is 1160 TOPS (290 effective with four digits): the
  // kernels reach about a quarter of it. On the GB10 the defaults fall back to 128 rows, 2
  // stages, compact table (what its shared memory holds).
  // gate+up: the IQ2_XXS selector table one copy per shared-memory bank (48 KiB more per
  // block, conflict-free lookups) instead of one compact 1.5 KiB copy.
  bool lane_tables = true;
  // Kernels compiled for one resident block per multiprocessor (up to 255 registers, the
  // chunk loop unrolled) instead of two (128 registers). 128 rows only.
  bool one_block_per_sm = false;
  // 256-column blocks in the shared-memory ring of copies: 2, 3 or 4 (copies run stages - 1
  // blocks ahead; about 44-53 KB each: more than 2 fit the H200, not the GB10).
  int stages = 3;
  // Weight rows per block: 128 (8 warps) or 256 (16 warps; each assignment tile's digits
  // copied half as often; about 53 KB per stage, so the H200, not the GB10).
  int rows_per_block = 256;
  // Small tiles: 128 rows x 16 assignments per block, one 16-row mma tile per warp, at
  // most 85 registers: three blocks per multiprocessor (more warps in flight, the weights
  // copied twice as often). Compact table; rows_per_block, lane_tables and
  // one_block_per_sm do not apply.
  bool small_tiles = false;

  // gate+up in the scaled-digit form: each weight times its 32-column scale, w (2S + 1)
  // (|.| <= 1333), as two int8 digits lo + 256 hi; per digit L of x one mma of lo into sum
  // L and one of hi into sum L + 1, accumulated by the tensor cores over the 256-column
  // block (twice the mma, none of the four integer multiply-adds per mma of the form
  // above). The five exact sums give the same integer per block as the four above: the
  // same outputs, bit for bit. down (Q2_K) has no such multiply: not affected.
  bool scaled_digits = expert_matmul_scaled_digits_default();
  // The scaled-digit kernels' own shape (the fields above, which callers set for the
  // digit-scale kernels, do not apply to them); 32 assignments per block:
  //   rows_per_block 128, warp_tiles 1: 16 warps of one 16-row mma tile (128 registers);
  //   rows_per_block 128, warp_tiles 2: 8 warps of two tiles; one_block_per_sm: up to 255
  //     registers, else 128 (the five sums then partly spill);
  //   rows_per_block 256 (two tiles per warp, 16 warps, 128 registers, partly spilling).
  // small_tiles: 128 rows x 16 assignments, 8 warps of one tile, two blocks per
  // multiprocessor (128 registers); the fields but stages do not apply. lane_tables,
  // stages: as above. These defaults (not measured yet; the expected fastest: no spills,
  // 20 independent sums per warp, conflict-free table lookups) need about 180 KB of
  // shared memory; the GB10 falls back to the compact table and 2 stages (about 90 KB).
  bool scaled_small_tiles = false;
  int scaled_rows_per_block = 128;
  int scaled_warp_tiles = 2;
  bool scaled_one_block_per_sm = true;
  bool scaled_lane_tables = true;
  int scaled_stages = 3;
};

// Bytes of the workspace for `rows` rows of x of `cols` columns.
size_t expert_matmul_workspace_bytes(int64_t cols, int64_t rows);

// Ok when these kernels handle the launch's types and shapes (paired IQ2_XXS gate and up
// of one shape, or unpaired Q2_K; cols a multiple of 256; rows a multiple of 64 paired,
// 128 unpaired; grouped mode; x and x_stride 16-byte aligned; the device's shared memory
// holds the kernel), else an error naming what does not fit. Callers fall back to cuda/matmul.h where it is not Ok.
Status expert_matmul_supported(const ExpertMatmulLaunch& launch, const ExpertMatmulOptions& options = {});

// The products above: the pre-pass over x's rows, then the product kernel. Errors: an
// unsupported launch (as expert_matmul_supported), missing or misaligned pointers, a
// workspace missing, a failed launch.
Status launch_expert_matmul(const ExpertMatmulLaunch& launch, cudaStream_t stream,
                            const ExpertMatmulOptions& options = {});

// One-time setup (IQ2_XXS selector table to the device, shared-memory limits); idempotent.
Status expert_matmul_init();

}  // namespace ds4
