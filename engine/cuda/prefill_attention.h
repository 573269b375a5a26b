// Chunked compressor, lightning indexer and attention for the batched GPU prefill
// (spec/MODEL.md §2.5): one launch each handles a chunk of n tokens of ONE sequence at
// host-known positions pos0 .. pos0+n-1, and every token gets exactly what the decode
// kernels (compressor_indexer.h, attention.h) compute at its position after all earlier
// positions were decoded.
//
// Thread-safety: launches on the caller's stream; no host state.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "common/status.h"
#include "cuda/row_ops.h"

namespace ds4 {

struct CompressorChunkLaunch {
  const float* k = nullptr;        // n rows of w = coff*d floats: raw projections of the
  const float* z = nullptr;        // chunk's tokens (row t = position pos0+t); z without ape
  int64_t kz_stride = 0;           // floats between rows of k and of z
  const float* ape = nullptr;      // device f32 [ratio][w]
  const float* norm_weight = nullptr;  // d values
  float* state_k = nullptr;        // as CompressorLaunch: slot = pos % state_slots,
  float* state_z = nullptr;        // z + ape stored
  int state_slots = 0;
  float* rows = nullptr;           // emitted rows [max_rows][d]
  int64_t max_rows = 0;
  int ratio = 0;
  int d = 0;                       // row length; w = d * (ratio == 4 ? 2 : 1)
  float eps = 1e-6f;
  int rope_dim = 0;
  const float* rope_freqs = nullptr;
  RowQat qat = RowQat::kNone;
  int32_t pos0 = 0;
  int n = 0;
};

// Emits every row whose window closes inside the chunk (positions of earlier chunks come
// from the state, the chunk's own from k/z), bit-identical to launch_compressor_update,
// then leaves the state exactly as n decode updates would have (the last state_slots
// positions written).
Status launch_compressor_chunk(const CompressorChunkLaunch& launch, cudaStream_t stream);

struct IndexerChunkLaunch {
  const float* q = nullptr;        // n rows of heads*head_dim (post-processed: RoPE, QAT)
  const float* weights = nullptr;  // n rows of heads (indexer.proj . n, unscaled)
  const float* rows = nullptr;     // index rows, already emitted for the chunk
  int64_t max_rows = 0;
  int heads = 0;
  int head_dim = 0;
  int ratio = 4;
  int topk = 0;
  int32_t pos0 = 0;
  int n = 0;
  float* scores = nullptr;         // workspace, see indexer_chunk_workspace_floats
  int64_t scores_stride = 0;       // floats between tokens' score rows (>= visible rows)
  int32_t* selected = nullptr;     // n rows of topk: selection of token t (increasing row order)
  int32_t* active = nullptr;       // n flags: ((pos0+t+1)/ratio) > topk
};

// Floats of score workspace launch_indexer_chunk needs for n tokens (stride max_rows).
int64_t indexer_chunk_workspace_floats(int n, int64_t max_rows);

// For each token: active flag as launch_indexer_gate, and when active the top-k rows
// by score as launch_indexer_select (same scores, tie rule and order).
Status launch_indexer_chunk(const IndexerChunkLaunch& launch, cudaStream_t stream);

struct AttentionChunkLaunch {
  const float* q = nullptr;        // n rows of heads*head_dim
  float* out = nullptr;            // n rows of heads*head_dim
  const float* ring = nullptr;     // raw rows of positions < pos0 (slot = pos % ring_slots)
  int ring_slots = 0;
  const float* chunk_kv = nullptr; // raw rows of the chunk: row t = position pos0+t (head_dim floats)
  int window = 0;
  const float* comp = nullptr;     // compressed rows [max_comp_rows][head_dim]
  int64_t max_comp_rows = 0;
  int ratio = 0;                   // 0: raw only
  int topk = 0;
  const int32_t* selected = nullptr;  // ratio 4: n rows of topk, from launch_indexer_chunk
  const int32_t* active = nullptr;    // ratio 4: n flags
  const float* sinks = nullptr;    // heads
  int heads = 0;
  int head_dim = 0;
  int rope_dim = 0;
  const float* rope_freqs = nullptr;
  int32_t pos0 = 0;
  int n = 0;
  float* workspace = nullptr;      // optional, see attention_chunk_workspace_floats
  int heads_per_block = 0;         // tensor-core path: 0 picks (64 when heads % 64 == 0,
                                   // else 16); 16 forces the 16-head kernel (comparison)
};

// Floats of workspace launch_attention_chunk may use (0 when it needs none).
int64_t attention_chunk_workspace_floats(int n, int heads, int head_dim);

// Per token t and head: softmax with the head's sink over the raw window rows and the
// visible (or selected) compressed rows, K = V = the row, scale 1/sqrt(head_dim), then
// the inverse RoPE of the output tail at pos0+t. head_dim 512 with heads a multiple of 16
// runs on tensor cores (rows rounded to f16, queries and weights split into f16 high and
// low parts, f32 accumulation; within 1e-3 of the f32 result), one block per token and
// 64 heads when heads % 64 == 0 (each staged row serves all 64), else 16; other shapes
// in f32.
Status launch_attention_chunk(const AttentionChunkLaunch& launch, cudaStream_t stream);

}  // namespace ds4
