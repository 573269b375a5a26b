// CudaForward::PrefillWorkspace: the device buffers of a batched prefill, one row per
// token of the chunk for every intermediate of a layer, allocated once for
// CudaForward::kMaxPrefill tokens by the first prefill(). The indexer's score rows
// depend on the longest sequence seen, so they grow on demand.
//
// Thread-safety: owned by one CudaForward.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/forward.h"

namespace ds4 {

struct CudaForward::PrefillWorkspace {
  void* arena = nullptr;
  int32_t* tokens = nullptr;   // [T] token ids
  int32_t* pos0 = nullptr;     // [1] first position of the chunk (read by row_post)
  float *x = nullptr, *xb = nullptr;          // [T][hc_dim] HC state before / after attention
  float *mix = nullptr, *post = nullptr, *comb = nullptr;  // hc_pre outputs per token
  float* n = nullptr;          // [T][dim] sublayer input (normalised)
  float *a = nullptr, *an = nullptr;          // [T][q_lora] q LoRA latent, and normalised
  float* qf = nullptr;         // [T][heads*head_dim]
  float *kv_raw = nullptr, *kv = nullptr;     // [T][head_dim] projection, post-processed row
  float *ck = nullptr, *cz = nullptr;         // [T][2*head_dim] compressor projections
  float* iq = nullptr;         // [T][index_heads*index_head_dim]
  float* iw = nullptr;         // [T][index_heads]
  int32_t* selected = nullptr; // [T][index_topk]
  int32_t* active = nullptr;   // [T]
  float* heads = nullptr;      // [T][heads*head_dim] attention output
  float* u = nullptr;          // [T][out_groups*out_lora]
  float* out = nullptr;        // [T][dim] sublayer output (attention, then MoE)
  float* router = nullptr;     // [T][n_experts]
  int32_t* route_ids = nullptr;  // [T][n_used]
  float* route_w = nullptr;      // [T][n_used]
  int32_t* group_offsets = nullptr;  // [n_experts + 1]
  int32_t* x_rows = nullptr;   // [T*n_used]
  float* row_scale = nullptr;  // [T*n_used]
  int32_t* slot_of = nullptr;  // [T*n_used]
  float* h = nullptr;          // [T*n_used][expert_ffn]
  float* h_up = nullptr;       // [T*n_used][expert_ffn] up rows where gate/up run unpaired
  float* hs = nullptr;         // [T][expert_ffn] shared expert
  float* hs_up = nullptr;      // [T][expert_ffn] its up rows where gate/up run unpaired
  float* ya = nullptr;         // [T*n_used][dim] routed expert outputs per assignment
  float* split = nullptr;      // the routed expert products' activation workspace, sized for the
                               // larger of gate/up's and down's: the integer kernels' digits
                               // (cuda/expert_matmul.h) and/or the staged kExact kernels' split
                               // activations (cuda/matmul.h split_workspace); null when neither runs
  float* dense = nullptr;       // the integer dense Q8_0 products' digits (cuda/q8_matmul.h) of the
  float* dense_side = nullptr;  // main and of the side stream, which run at the same time; null
                                // when those products run the kExact kernels
  float* attention = nullptr;  // attention_chunk_workspace_floats
  float* head_mix = nullptr;   // [kHeadRows][hc_mult]
  float* head = nullptr;       // [kHeadRows][dim]
  float* logits = nullptr;     // [kHeadRows][vocab]
  // Indexer scores, sized for the longest sequence seen.
  float* scores = nullptr;
  int64_t scores_floats = 0;

  static constexpr int kHeadRows = 64;  // logits computed per group of wanted rows

  ~PrefillWorkspace() {
    if (arena) cudaFree(arena);
    if (scores) cudaFree(scores);
  }
};

}  // namespace ds4
