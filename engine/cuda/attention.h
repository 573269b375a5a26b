// Decode attention on the GPU (spec/MODEL.md §2.5.5): for every head, a softmax with
// the head's sink logit over the raw window rows and the visible (or indexer-selected)
// compressed rows, K = V = the stored row, scale 1/sqrt(head_dim), then the inverse
// RoPE of the output tail at the query position. Counts come from the position in
// device memory, so the launch is graph-safe.
//
// Rows are split over `splits` blocks; each block reads its rows once for a group of
// heads (up to kAttentionGroupHeads), so a row is read heads / group times in all. The partial softmax sums are combined per head in split order (deterministic).
//
// Thread-safety: launches on the caller's stream; no host state.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "common/status.h"

namespace ds4 {

struct AttentionLaunch {
  const float* q = nullptr;          // heads x head_dim
  float* out = nullptr;              // heads x head_dim
  const float* raw = nullptr;        // ring [ring][head_dim]; position t in slot t % ring
  int ring = 0;
  // Optional [ring] position tags (the MTP block's window, cuda/mtp.h): a raw row is
  // attended only when its slot's tag equals its position. nullptr: every row is.
  const int32_t* raw_tags = nullptr;
  int window = 0;
  const float* comp = nullptr;       // compressed rows [max_comp_rows][head_dim]
  int64_t max_comp_rows = 0;
  int ratio = 0;                     // 0: raw only
  int topk = 0;                      // ratio 4: indexer top-k
  const int32_t* selected = nullptr; // ratio 4: indexer selection (used when *active)
  const int32_t* active = nullptr;   // ratio 4: indexer gate flag
  const float* sinks = nullptr;      // heads
  int heads = 0;
  int head_dim = 0;
  int rope_dim = 0;
  const float* rope_freqs = nullptr;
  const int32_t* pos = nullptr;
  int max_visible = 0;               // bound on raw + compressed rows (shared memory)
  // Rows are split over `splits` blocks per head (partial softmax sums combined
  // afterwards); workspace holds heads * splits * (head_dim + 2) floats.
  int splits = 1;
  float* workspace = nullptr;
  // Tests and benchmarks: the earlier kernel (one block per head and split, every row
  // read once per head) instead of the head-group kernel.
  bool per_head_blocks = false;
  // Heads per block of the head-group kernel: 2, 4 or 8; 0 picks the most that still
  // gives the grid 64 blocks (splits x heads / group).
  int head_group = 0;
};

// The most heads one block of the head-group kernel computes over its rows.
inline constexpr int kAttentionGroupHeads = 8;

// True when launch_attention_decode runs the head-group kernel for `launch` (false:
// per_head_blocks was asked for, head_dim is odd, the row bases are not 8-byte aligned,
// or its shared memory would exceed the limit; the per-head kernel runs then).
bool attention_uses_head_groups(const AttentionLaunch& launch);

// Heads per block launch_attention_decode uses for `launch` (1: the per-head kernel).
int attention_head_group(const AttentionLaunch& launch);

// Workspace floats needed by launch_attention_decode.
inline int64_t attention_workspace_floats(int heads, int splits, int head_dim) {
  return static_cast<int64_t>(heads) * splits * (head_dim + 2);
}

Status launch_attention_decode(const AttentionLaunch& launch, cudaStream_t stream);

// Raises the kernel's shared-memory limit (call once before recording graphs).
Status attention_init();

}  // namespace ds4
