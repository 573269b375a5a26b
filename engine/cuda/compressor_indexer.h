// KV compressors and the lightning indexer on the GPU (spec/MODEL.md §2.5.3, §2.5.4).
//
// Compressor state is kept per POSITION, not per window slot: token p writes its
// (k, z + ape) into slot p mod `state_slots` (state_slots = coff*ratio + rollback
// margin), so a rolled-back sequence keeps every value it still needs. Row c is
// emitted when (p + 1) mod ratio == 0, pooled per channel over its candidates, then
// RMSNorm (learned weight), RoPE at c*ratio, and the QAT round trip.
//
// Thread-safety: launches on the caller's stream; no host state.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "common/status.h"
#include "cuda/row_ops.h"

namespace ds4 {

struct CompressorLaunch {
  const float* k = nullptr;        // w values: compressor_kv . n
  const float* z = nullptr;        // w values: compressor_gate . n (ape not yet added)
  const float* ape = nullptr;      // device f32 [ratio][w]
  const float* norm_weight = nullptr;  // d values
  float* state_k = nullptr;        // [state_slots][w]
  float* state_z = nullptr;        // [state_slots][w]
  int state_slots = 0;
  float* rows = nullptr;           // emitted rows [max_rows][d]
  int64_t max_rows = 0;
  int ratio = 0;
  int d = 0;                       // row length; w = d * (ratio == 4 ? 2 : 1)
  float eps = 1e-6f;
  int rope_dim = 0;
  const float* rope_freqs = nullptr;
  RowQat qat = RowQat::kNone;
  const int32_t* pos = nullptr;    // device
  // Optional: also writes *gate_flag = (floor((*pos + 1) / 4) > gate_topk), the
  // indexer's gate (saves a launch in ratio-4 layers).
  int32_t* gate_flag = nullptr;
  int gate_topk = 0;
};

// Stores token *pos's (k, z) and emits a row when its window completes.
Status launch_compressor_update(const CompressorLaunch& launch, cudaStream_t stream);

// Writes *flag = (floor((*pos + 1) / ratio) > topk): whether the indexer must select.
Status launch_indexer_gate(const int32_t* pos, int ratio, int topk, int32_t* flag,
                           cudaStream_t stream);

struct IndexerLaunch {
  const float* q = nullptr;        // heads x head_dim, post-processed (RoPE, QAT)
  const float* weights = nullptr;  // heads: indexer.proj . n (unscaled)
  const float* rows = nullptr;     // index rows [max_rows][head_dim]
  int64_t max_rows = 0;
  int heads = 0;
  int head_dim = 0;
  int ratio = 4;
  int topk = 0;
  const int32_t* pos = nullptr;    // device
  const int32_t* active = nullptr; // device flag from launch_indexer_gate
  float* scores = nullptr;         // workspace [max_rows]
  int32_t* selected = nullptr;     // out: topk row indices in increasing order
  // Tests and benchmarks: the earlier kernels (every scoring block loads the query even
  // past the visible rows; top-k by a serial bin search and a chunked two-scan output)
  // instead of the current ones. Same scores and selections.
  bool baseline_kernels = false;
  // Tests and benchmarks: the previous kernels (a warp per row over every head, the query
  // loaded into each scoring block's shared memory; the radix select reading the scores
  // from global memory on every pass) instead of the current ones. Same scores and
  // selections. The environment variable DS4_CUDA_INDEXER_KERNELS=previous (read once)
  // makes every launch use them.
  bool previous_kernels = false;
  // Tests and benchmarks: the previous select (scores from global memory on every pass)
  // after the current scoring.
  bool previous_select = false;
};

// True when launch_indexer_select runs the current kernels for `launch` (the head-split
// scoring needs a multiple of 8 heads up to 64 and 128-dim rows; the shared-memory select
// needs max_rows scores within the device's shared memory per block); otherwise the
// previous kernels run.
bool indexer_current_scoring_applies(const IndexerLaunch& launch);
bool indexer_shared_select_applies(const IndexerLaunch& launch);

// score_c = sum_h w_h / sqrt(head_dim * heads) * relu(q_h . row_c) for every visible
// row, then the topk largest (ties to the lower index). Does nothing when !*active.
// Scoring: the visible rows are spread evenly over a fixed grid (read on the device, so
// graph-safe); in a block each warp holds the query slices of eight heads in registers
// and takes every row of the block, the relu'd dot products meet in shared memory and
// each row's score is summed over the heads in head order (the previous kernels' sums,
// bit for bit). The selection is a radix select on the scores' order-preserving bit
// patterns held in shared memory (8 bits a pass, stopping once the boundary bin is taken
// whole), then one ordered pass over contiguous chunks that writes the selected indices
// in increasing order.
Status launch_indexer_select(const IndexerLaunch& launch, cudaStream_t stream);

// Raises the scoring kernel's shared-memory limit (call once before recording graphs).
Status indexer_init();

}  // namespace ds4
