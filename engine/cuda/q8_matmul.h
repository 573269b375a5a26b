// Dense products of Q8_0 weights with many activation rows (the prefill's projections)
// on integer tensor cores. Q8_0 weights are int8 already: the kernel copies their bytes
// into shared memory as they are (cp.async) and feeds them to mma.sync m16n8k32
// s8.s8.s32 through ldmatrix; each k=32 product is exactly one Q8_0 block.
//
// Dense mode, the contract of cuda/matmul.h's MatmulLaunch: for every token t <
// n_tokens and output row r < n_rows,
//   v = W[matrix][row_begin + r] . x_t            (x_t = x + t * x_stride)
//   paired (w_up set): v = silu(min(g, limit)) * clamp(u, -limit, limit)
// and y[t * y_stride + r] = v (or += v when `accumulate`).
//
// Arithmetic. A pre-pass writes each row of x, once per launch, into the workspace: per
// 256-column block b, x_e ~ s_b a_e with s_b = 2^(E_b - 30), max_b |x| < 2^E_b (E_b at
// least -96), a_e = round(x_e / s_b), |a_e| < 2^30, as four signed base-256 digits
// d0..d3 (int8; cuda/int8_digits.cuh, the same digits as cuda/expert_matmul.h). For
// every 32-column block j of a weight row (quants q_e, f16 scale d_j) and digit L, one
// mma gives D_L = sum_e q_e d_{L,e} exactly (|D_L| <= 2^19); the mma's accumulator
// starts at the bits of 1.5 * 2^23, so the int32 result read as an f32 is 1.5 * 2^23 +
// D_L exactly and one f32 subtraction yields D_L (no integer-to-float conversion
// instruction). Then in f32:
//   S_j = ((D3 256 + D2) 256 + D1) 256 + D0       (three fused multiply-adds)
//   p   = sum over the four blocks j of a 128-column step of d_j S_j   (in order of j)
//   acc += s_b p                                  (s_b a power of two: exact)
// the steps in column order. No atomics, no split-K: results do not depend on
// scheduling (bit-identical repeats).
//
// Precision: with n = cols / 128 the steps added per output and u = 2^-24,
//   |y - exact| <= sum_b s_b sum_{e in b} |w_e|  +  (n + 24) u sum_e |w_e x_e|
// before the SwiGLU (w_e = d_j q_e). The first term is the activations' rounding to
// integers (s_b / 2 per value) plus the low digits' share in the rounding of S_j's
// partial sums; the second covers S_j's three roundings (each within u of a partial
// sum bounded by sum |q_e a_e| plus that low-digit share), the product with d_j, the
// four-term sum of a step and the sum over the steps. With max_b |x| < 2^E_b, s_b <=
// 2^-29 max_b |x|: the first term is ~2^-29 of sum_b max_b |x| sum |w_e|, below
// kExact's activation split (~2^-22 of each |x_e|) wherever the values of a block are
// within 2^7 of its largest. A non-finite value in a 256-column block of x makes every
// product that reads the block NaN.
//
// Work per 32 columns and 16 x 8 outputs: four mma (one per digit) and, per output, four
// f32 subtractions and four fused multiply-adds, about as many issue slots as the four
// mma take on the tensor cores; no weight expansion (kExact converts every weight to
// f16 and splits every activation tile into two f16 halves per block of rows).
//
// Tiles: 128 weight rows (paired: 64 gate and the same 64 up rows) x 64 or 32 tokens, 128
// columns per pipeline stage (cp.async), 8 warps of 32 rows x 32 or 16 tokens; or 256
// rows x 64 tokens with 16 warps (each digit tile serves twice the rows). Variants
// (bit-identical), in order of preference: 128 x 64 with 2 stages (about 107 KB of shared
// memory, two blocks per multiprocessor on the H200) or 3 (160 KB), 128 x 32 with 3 (109
// KB) or 2 (73 KB: what the GB10 runs), 256 x 64 with 2 (146 KB). The order is not
// measured yet.
//
// Launches never synchronise with the host and allocate nothing (graph-safe; call
// q8_matmul_init() before capturing one).
//
// Thread-safety: launches on the caller's stream; the only host state is the one-time
// setup of q8_matmul_init() (shared-memory limits), guarded by std::call_once.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <string>

#include "common/status.h"
#include "cuda/matmul.h"

namespace ds4 {

// Bytes of the workspace for `rows` rows of x of `cols` columns (digits and scales).
size_t q8_matmul_workspace_bytes(int64_t cols, int64_t rows);

// Ok when the kernel handles `launch` (dense mode; Q8_0 weights, paired gate and up of
// one shape; cols a multiple of 256; x, x_stride and the weights 16-byte aligned, the
// scales 8-byte aligned; the device's shared memory holds a variant), else an error
// naming what does not fit. MatmulLaunch's precision and tuning fields are ignored.
Status q8_matmul_supported(const MatmulLaunch& launch);

// The products above: the pre-pass over x's n_tokens rows into `workspace`
// (q8_matmul_workspace_bytes(w->cols, n_tokens) or more bytes of device memory,
// 16-byte aligned, written by the launch; stream-ordered, so reusable by the next
// launch on the same stream), then the product kernel. Errors: an unsupported launch
// (as q8_matmul_supported), missing pointers, a workspace missing or misaligned, a
// failed launch.
// Options of a launch (benchmarks and precision studies; the defaults are what the
// prefill runs).
struct Q8MatmulOptions {
  // A tuning variant, 0 <= variant < q8_matmul_variant_count(), run where the device's
  // shared memory holds it; -1 (and a variant it cannot hold): the first that fits, in the
  // order of preference. Every variant computes the same values in the same order:
  // outputs are bit-identical across variants.
  int variant = -1;
  // Activation digits: 4 (the arithmetic above) or 3: s_b = 2^(E_b - 22), |a_e| <= 2^22,
  // digits d0, d1, d2 (one mma and two f32 operations fewer per 32 columns; S_j =
  // (D2 256 + D1) 256 + D0). The bound above holds with that s_b: 2^8 times looser in its
  // first term (~2^-21 of max_b |x| per weight magnitude, about kExact's activation split
  // for the values near a block's largest, looser for the smaller ones).
  int digits = 4;
};

Status launch_q8_matmul(const MatmulLaunch& launch, void* workspace, cudaStream_t stream,
                        const Q8MatmulOptions& options = {});

// The tuning variants: how many, a name for each (token tile and pipeline stages), and
// whether this device's shared memory holds variant `variant` (paired or not).
int q8_matmul_variant_count();
std::string q8_matmul_variant_name(int variant);
bool q8_matmul_variant_usable(int variant, bool paired);

// One-time setup (shared-memory limits of the kernel variants); idempotent.
Status q8_matmul_init();

}  // namespace ds4
