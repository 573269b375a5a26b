// Quantized matrix-matrix products on tensor cores (the prefill path): products run
// on mma.sync m16n8k16 (f16 x f16 -> f32) and sums accumulate in f32 in a fixed order
// (no split-K, no atomics: results do not depend on scheduling). Three precisions:
//
// MatmulPrecision::kExact (default): every weight format is affine per sub-block,
// w = A * q + B with q a small integer (exact in f16) and A, B f32 (Q8_0: d, 0 per
// 32; IQ2_XXS: q the signed grid value, A = d * (0.5 + s) / 4 per 32; Q2_K: q = sc *
// level (<= 45), A = d per 32, B = -dmin * m per 16; Q4_K: d * sc, -dmin * m per 32;
// F16: the weight itself, 1, 0).
// Activations are split x = hi + lo (hi = f16(x), lo = f16((x - hi) * 2^11), the
// scale keeping it clear of f16 subnormals), two mma per 16 columns give q . x up to
// the f32 sums (relative error ~2^-22 per activation), and acc += A * (q . x) +
// B * sum(x) (the sum in f32). The error is close to an f32 dot product (~1e-6 of
// sum |w x|). Unpaired Q2_K launches sum the B terms of a 256-column super-block on
// tensor cores (-dmin * (m . sum(x)), the integers m exact, the 16-column sums split
// as hi + lo), to the same precision. F32 weights have no exact form here: a kExact
// launch with F32 weights is refused (use kF16 or the f32 matvec).
// Every precision needs |x| < 65504 (the f16 range of hi).
//
// MatmulPrecision::kF16: weights dequantized as the CPU dequantization then rounded to
// f16, activations rounded to f16 (error ~1e-3 of sum |w x|); faster.
//
// MatmulPrecision::kF16Activations: weights exact as in kExact (integers q, f32 A and
// B per sub-block), activations rounded once to f16 (the hi part only: one mma per 16
// columns instead of two); the sum(x) of the B term stays f32. The error is that of
// the activations' rounding, |err| <= 2^-11 * sum |A q x| (plus 2^-25 * sum |A q| for
// activations below the f16 normal range, and the f32 sums; A q is the weight less
// the k-quants' minimum B). F32 weights are refused
// as in kExact. Same kernels, tiles and shared-memory fallbacks as kExact, with less
// shared memory (no lo tile) and half the tensor-core work.
//
// Dense mode: for every token t < n_tokens and output row r < n_rows,
//   v = W[matrix][row_begin + r] . x_t            (x_t = x + t * x_stride)
// paired (w_up set): v = silu(min(g, limit)) * clamp(u, -limit, limit)
// and y[t * y_stride + r] = v (or += v when `accumulate`).
//
// Grouped mode (group_offsets set, the MoE experts): assignment a (0 <= a <
// group_offsets[n_groups], read on the device) uses matrix g with group_offsets[g] <= a
// < group_offsets[g + 1], reads x row x_rows[a] (nullptr: a), writes y row a; paired,
// the SwiGLU output is multiplied by row_scale[a] (nullptr: 1). One launch covers all
// groups; its grid is sized on the host from n_tokens (an upper bound of the
// assignments) and n_groups, and blocks without work exit. No host synchronisation.
//
// Thread-safety: launches on the caller's stream; no host state besides the one-time
// setup of matmul_init(), which copies to the device: call it once before capturing a
// launch into a CUDA graph.
#pragma once

#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <string_view>

#include "common/status.h"
#include "cuda/device_matrix.h"

namespace ds4 {

enum class MatmulPrecision {
  kExact,  // integer weights, split activations, f32 scales (see above)
  kF16,    // f16 weights and activations
  kF16Activations,  // integer weights and f32 scales as kExact, activations rounded to f16 (see above)
};

struct MatmulLaunch {
  const DeviceMatrix* w = nullptr;
  const DeviceMatrix* w_up = nullptr;   // set: paired SwiGLU, as MatvecLaunch (gate = w, up = w_up):
                                        // y = silu(min(g, limit)) * clamp(u, -limit, limit) [* row_scale[a]]
  int matrix = 0;                       // dense mode: which stacked matrix of w
  int64_t row_begin = 0;                // first output row of the matrix used
  int64_t n_rows = -1;                  // output rows; -1: w->rows - row_begin
  const float* x = nullptr;             // activation row t at x + t * x_stride (w->cols floats)
  int64_t x_stride = 0;
  float* y = nullptr;                   // output row t at y + t * y_stride (n_rows floats)
  int64_t y_stride = 0;
  int n_tokens = 0;                     // dense: rows of x/y; grouped: an upper bound of the assignments
  float swiglu_limit = INFINITY;
  bool accumulate = false;              // y += instead of y =
  // Grouped mode (MoE experts), when group_offsets != nullptr: output row a (an
  // "assignment", 0 <= a < group_offsets[n_groups], read on the device) uses matrix g
  // of w (and w_up) where group_offsets[g] <= a < group_offsets[g+1]; it reads
  // activation row x_rows[a] (x_rows == nullptr: row a) and, paired, multiplies the
  // SwiGLU output by row_scale[a] (nullptr: 1). All three arrays live in device memory.
  const int32_t* group_offsets = nullptr;  // [n_groups + 1], non-decreasing, [0] == 0
  int n_groups = 0;
  const int32_t* x_rows = nullptr;
  const float* row_scale = nullptr;
  // Tokens (assignments) per block tile: 0 lets the launcher choose; 64 or 128 forces
  // it (benchmarks comparing tiles; paired launches use 64). kExact (and
  // kF16Activations) chooses 64 (its 128-token tile uses more shared memory and
  // registers per block). 32 (kExact and kF16Activations, paired or not): kernels
  // compiled for two resident blocks per SM, for grouped launches whose groups are
  // small (less padding, more blocks in flight); same arithmetic as the default 64
  // (exact_two_blocks and exact_k16 do not apply).
  int token_tile = 0;
  MatmulPrecision precision = MatmulPrecision::kExact;
  // Tuning (benchmarks): kExact (and kF16Activations) unpaired launches with 64-token
  // tiles use a kernel compiled for two resident blocks per SM (registers capped at
  // 128) instead of one. Same arithmetic in the same order as without it.
  bool exact_two_blocks = false;
  // kExact launches with 64-token tiles apply A once per 32 columns (fewer f32
  // operations; Q2_K through its scaled levels, see above). This is the default now;
  // the field is kept for callers that set it and changes nothing.
  bool exact_k32 = false;
  // Tuning (benchmarks): apply A per 16 columns for every format, Q2_K with A = d * sc
  // (the former default; slightly different rounding). kExact only (kF16Activations
  // ignores it).
  bool exact_k16 = false;
  // Staged kernels (kExact, IQ2_XXS and Q8_0 weights, 64-token tiles, paired or not,
  // dense or grouped): when split_workspace is set, the launch first splits x rows
  // [0, x_pool_rows) once into f16 hi and lo rows there (the same hi, lo as the other
  // kExact kernels), then runs a kernel that copies raw weight bytes and the split
  // activation tiles into a ring of shared-memory stages with cp.async (several steps
  // ahead) and dequantizes step k + 1 while step k runs its products. Same arithmetic
  // in the same order as the default kExact kernel: bit-identical outputs. Every row of x
  // the launch reads (x_rows[a], the assignment a in grouped mode without x_rows, the
  // token in dense mode) must be below x_pool_rows (dense: x_pool_rows >= n_tokens, or
  // the launch is refused). The workspace (16-byte aligned) holds matmul_split_workspace_bytes(w->cols,
  // x_pool_rows) bytes of device memory, is written by the launch (stream-ordered) and
  // may be reused by the next launch on the same stream. Launches this does not apply
  // to (other types or precisions, token_tile set, exact_two_blocks or exact_k16 set,
  // weights not 16-byte aligned, or a device whose shared memory is too small (the
  // staged kernels need 150-185 KB per block: not the GB10): matmul_staged()
  // says) ignore it.
  void* split_workspace = nullptr;
  int64_t x_pool_rows = 0;
};

// Bytes of the split_workspace for `rows` activation rows of `cols` columns (two f16
// rows each, hi and lo).
size_t matmul_split_workspace_bytes(int64_t cols, int64_t rows);

// Whether `launch` runs a staged kernel (see MatmulLaunch::split_workspace).
bool matmul_staged(const MatmulLaunch& launch);

// A launch whose kernel needs more shared memory per block than the device allows
// (cuda/device_limits.h; the kExact paired kernels need about 120 KB with 64-token
// tiles and 104 KB with 32, over the GB10's 99 KiB) is refused with an error naming
// both sizes.
Status launch_matmul(const MatmulLaunch& launch, cudaStream_t stream);

// Whether this device can run the kernel `launch` would use (its shared memory fits
// the per-block limit: the GB10 allows about 99 KiB, less than some kExact paired
// kernels need). Callers with an alternative (e.g. gate and up as two unpaired
// products) use it to choose.
bool matmul_fits(const MatmulLaunch& launch);

// One-time setup (IQ2_XXS codebook to the device, shared-memory limits); idempotent.
Status matmul_init();

// A precision by name: "exact" (kExact), "f16act" (kF16Activations) or "f16" (kF16);
// anything else is an error naming the text and the accepted names. Host only (the
// prefill reads DS4_CUDA_PREFILL_PRECISION through it).
Result<MatmulPrecision> parse_matmul_precision(std::string_view text);

}  // namespace ds4
