// Quantized matrix-vector products on the GPU (the decode path): weights are
// dequantized in registers, activations stay f32, sums accumulate in f32 (the
// rule of fixtures/README.md §4). One launch covers several tokens, several
// "slots" (experts, or row groups of one matrix) and an optional fused SwiGLU.
//
// For every token t < n_tokens and slot s < n_slots, with
//   W_s = rows [row_base(s), row_base(s) + n_rows) of the stacked weight,
//   row_base(s) = matrix(s) * w.rows + s * slot_row_stride,
//   matrix(s)   = slot_matrix ? slot_matrix[s] : fixed_matrix,
//   x_ts = x + t*x_tok_stride + s*x_slot_stride:
// plain:   v = W_s . x_ts
// paired:  v = silu(min(W_s . x_ts, limit)) * clamp(U_s . x_ts, -limit, limit) * slot_weight[s]
//          (U = w_up, the same shape and type as W: MoE gate/up, MODEL.md §2.1.5, §2.6)
// and the result goes to y[t*y_tok_stride + s*y_slot_stride + r] (stored, or added when
// `accumulate`); with `sum_slots` the values of all slots are summed into
// y[t*y_tok_stride + r] instead (MoE down projection over the selected experts).
//
// Thread-safety: launches on the caller's stream; no host state.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "common/status.h"
#include "cuda/device_matrix.h"

namespace ds4 {

struct MatvecLaunch {
  const DeviceMatrix* w = nullptr;
  const DeviceMatrix* w_up = nullptr;  // set: paired SwiGLU
  const float* x = nullptr;
  int64_t x_tok_stride = 0;
  int64_t x_slot_stride = 0;
  float* y = nullptr;
  int64_t y_tok_stride = 0;
  int64_t y_slot_stride = 0;
  int n_tokens = 1;
  int n_slots = 1;
  int64_t n_rows = -1;               // -1: w->rows
  int64_t slot_row_stride = 0;
  const int32_t* slot_matrix = nullptr;  // device memory, n_slots entries (needs n_tokens == 1)
  int fixed_matrix = 0;
  const float* slot_weight = nullptr;    // device memory, n_slots entries (paired only; nullptr = 1)
  float swiglu_limit = 10.0f;
  bool sum_slots = false;
  bool accumulate = false;
  // Optional device workspace for splitting long rows over several blocks (single
  // token, single slot, unpaired launches with few rows); partial sums are added in
  // a fixed order, so results do not depend on scheduling.
  float* split_workspace = nullptr;
  int64_t split_workspace_floats = 0;
  // Optional device flag: when it reads 0 the launch does nothing (the indexer's
  // projections below its activation threshold).
  const int32_t* enable = nullptr;
  // When set, x is RMS-normalised with this learned weight as it is loaded
  // (x * rsqrt(mean(x^2) + eps) * weight, the sums in double as the CPU reference):
  // the q LoRA norm folded into the projections that read it. One token, one slot.
  const float* x_norm_weight = nullptr;
  float x_norm_eps = 1e-6f;
  // Opt-in: for IQ2_XXS, Q2_K and Q4_K weights, x is quantized to int8 per 32 values
  // (dx = amax / 127, round to nearest; matvec_round_activations) and the dot products
  // run on packed int8 (dp4a). Faster, but x carries up to amax/254 of rounding per
  // value; off, every type computes with f32 x. Other types ignore it.
  bool int8_activations = false;
  // Tuning (the benchmarks compare): when set, each warp owns whole rows and this many
  // lanes share one row (a power of two, 1..32); 0 lets the launch choose. Fewer lanes
  // per row give each warp more rows at once, and lanes of a warp then read the same x
  // chunks from shared memory (broadcast) instead of 32 different ones.
  int lanes_per_row = 0;
  // Tuning (the benchmarks compare): IQ2_XXS weights look their codebook and sign
  // selectors up in one copy of the table per shared-memory bank (48 KiB more shared
  // memory per block; lookups without bank conflicts) instead of one compact copy.
  // Applied when it fits in the block's shared memory; other types ignore it.
  bool iq2xxs_lane_tables = false;
  // Tuning (the benchmarks compare): Q2_K unpaired launches issue each lane's next
  // items' loads before the current items' products (one memory round trip per lane
  // instead of one per item group). Other launches ignore it.
  bool prefetch_next = false;
  // Column-tile kernel for one-token launches of F32, F16 and Q8_0 weights (unpaired,
  // not summed over slots, lanes_per_row 0): each block owns a slice of the columns for a
  // group of rows, stages only that slice of x, and loads every weight chunk of its tile
  // at once; when a row spans several column tiles, the tiles' partial sums go to
  // split_workspace and a second launch adds them in tile order (deterministic).
  // 0: the launch chooses (small launches: up to 2^18 chunks); 1: used wherever it
  // applies; -1: never.
  int tile_kernel = 0;
  // Column tiles without their reduction: the launch writes the partial sums
  // split_workspace[(slot * n_rows + r) * tiles + tile] (tiles = matvec_tile_columns(),
  // 1 included) and not y, for a consumer that adds them itself in the reduction's order
  // (launch_hc_pre_partials). A launch that cannot use column tiles is refused.
  bool tile_partials_only = false;
  // Tuning (the benchmarks compare): weight chunks each lane of the column-tile kernel
  // loads at once (1, 2, 4 or 8; F32 at most 2, F16 at most 4); 0 lets the launch choose.
  int tile_chunks_per_lane = 0;
};

Status launch_matvec(const MatvecLaunch& launch, cudaStream_t stream);

// The column tiles per row that `launch` would use (host computation, no launch), or an
// error naming why it would not use the column-tile kernel. For tile_partials_only.
Result<int> matvec_tile_columns(const MatvecLaunch& launch);

// True for the weight types that MatvecLaunch::int8_activations applies to
// (IQ2_XXS, Q2_K, Q4_K).
bool matvec_int8_capable(GgmlType type);

// The values the int8 path computes with, on the host (tests): each 32-value chunk of
// x becomes dx * round(x * 127 / amax), dx = amax / 127. n is a multiple of 32.
void matvec_round_activations(const float* x, int64_t n, float* out);

// Uploads the IQ2_XXS codebook to the device (once per process; idempotent).
Status matvec_init();

}  // namespace ds4
