// Decode attention on the GPU (spec/MODEL.md §2.5.5): for every head, a softmax with
// the head's sink logit over the raw window rows and the visible (or indexer-selected)
// compressed rows, K = V = the stored row, scale 1/sqrt(head_dim), then the inverse
// RoPE of the output tail at the query position. Counts come from the position in
// device memory, so the launch is graph-safe.
//
// Rows are split over `splits` blocks; each block reads its rows once for a group of
// heads (up to kAttentionGroupHeads), so a row is read heads / group times in all. The
// partial softmax sums are combined per head in split order (deterministic): by a second
// launch, or (fold_combine) by the last block of the head group to finish, found with a
// completion counter; the counter only decides which block combines, never the order.
//
// With q_norm_rope the q row post (spec/MODEL.md §2.5.1: per-head RMSNorm without weight,
// RoPE of the last rope_dim values at the position) runs inside the attention kernel, on
// the heads each block loads, with the arithmetic of cuda/row_ops.h's warp kernel, so the
// result is the same bits as launch_row_post followed by the attention launch.
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
  // q holds the q_b product (heads x head_dim, 16-byte aligned); each block normalises
  // (RMSNorm without weight, eps q_norm_eps, the sum of squares in double) and rotates
  // (RoPE of the last rope_dim values at *pos) the heads it uses. Needs
  // attention_folds_q_post(); the fused head-group kernel runs.
  bool q_norm_rope = false;
  float q_norm_eps = 1e-6f;
  // With q_norm_rope, optional: the normalised, rotated q is also written here (heads x
  // head_dim, 16-byte aligned; by the blocks of split 0), for readers other than attention.
  float* q_out = nullptr;
  // The split combine runs in the partial kernel: the last block of each head group to
  // finish combines the splits in split order. Uses the completion counters at the start
  // of the workspace (attention_workspace_floats counts them): zero before the first such
  // launch, left zero by every launch. Needs attention_fused_applies().
  bool fold_combine = false;
  // A split holds up to ceil(max_visible / splits) rows and only the splits that hold
  // rows run (the same bits as a launch with that many splits), so short contexts take
  // one split, computed in a single pass without the workspace (the combine launch, when
  // fold_combine is off, then returns at once). Needs attention_fused_applies().
  bool fit_splits = false;
  // The staged form of the fused kernel (same flags, same arithmetic, so the same bits as
  // the fused kernel and the separate launches with the same splits): each block first
  // copies its split's rows into shared memory with asynchronous 16-byte copies, all in
  // flight at once, while the q row post runs; both passes (scores, output sums) then
  // read the rows from there, the scores with the group's q held in registers. Needs
  // attention_staged_applies(); attention_decode_plan() says when and with which shape.
  bool staged = false;
};

// The launch shape of decode attention for a layer: what the forward pass puts in
// AttentionLaunch::splits, head_group and staged.
struct AttentionPlan {
  int splits = 1;
  int head_group = 2;
  bool staged = false;
};

// The plan for a layer whose launches see at most `max_visible` rows (raw window plus
// compressed or selected rows; the rows present at a position are counted on the device
// and only the splits that hold rows run, so one plan serves every position), `ratio`
// the layer's compression ratio (0, 4 or 128), with a workspace for `max_splits` splits.
// With the environment variable DS4_CUDA_STAGED_ATTENTION=1 (read once), staged where the
// rows of a split fit the device's shared memory; otherwise (the default: faster in the
// whole decode on the H200) the fused kernel with max_visible / 64 splits and two heads
// per block.
AttentionPlan attention_decode_plan(int heads, int head_dim, int max_visible, int ratio, int max_splits);

// The plan for a split of at most `rows_per_split` rows and `head_group` heads per block
// (tests and benchmarks: the shapes the plan chooses between).
AttentionPlan attention_staged_plan(int max_visible, int rows_per_split, int head_group, int max_splits);

// The most heads one block of the head-group kernel computes over its rows.
inline constexpr int kAttentionGroupHeads = 8;

// True when launch_attention_decode runs the head-group kernel for `launch` (false:
// per_head_blocks was asked for, head_dim is odd, the row bases are not 8-byte aligned,
// or its shared memory would exceed the limit; the per-head kernel runs then).
bool attention_uses_head_groups(const AttentionLaunch& launch);

// Heads per block launch_attention_decode uses for `launch` (1: the per-head kernel).
int attention_head_group(const AttentionLaunch& launch);

// Floats at the start of the workspace that hold the fold_combine completion counters
// (one int32 per head group, rounded up to 16 bytes); the split partials follow them.
inline int64_t attention_counter_floats(int heads) { return (static_cast<int64_t>(heads) + 3) / 4 * 4; }

// Workspace floats needed by launch_attention_decode: the counters, then heads x splits
// partial sums of head_dim + 2 floats.
inline int64_t attention_workspace_floats(int heads, int splits, int head_dim) {
  return attention_counter_floats(heads) + static_cast<int64_t>(heads) * splits * (head_dim + 2);
}

// True when the fused head-group kernel (q_norm_rope, fold_combine, fit_splits) can run
// `launch` (the head-group kernel applies, rope_dim is even and at most 512, out is 8-byte
// aligned, and its shared memory fits); for a staged launch, attention_staged_applies().
bool attention_fused_applies(const AttentionLaunch& launch);

// True when the staged kernel can run `launch` (whatever its `staged` flag): head_dim a
// multiple of 128 up to 512, head_group 2, 4 or 8, the row bases 16-byte aligned, the
// output 8-byte aligned, an even rope_dim up to head_dim, and the split's rows with the
// group's q and scores within the device's shared memory per block.
bool attention_staged_applies(const AttentionLaunch& launch);

// True when attention_fused_applies() and the q row post can be folded in: head_dim a
// multiple of 4 up to 1024, q (and q_out when set) 16-byte aligned.
bool attention_folds_q_post(const AttentionLaunch& launch);

// Splits the fused kernel computes for `rows` visible rows (fit_splits: those that hold
// rows; else `splits`). Host-side mirror of the kernel's choice, for tests.
int attention_splits_in_use(const AttentionLaunch& launch, int rows);

Status launch_attention_decode(const AttentionLaunch& launch, cudaStream_t stream);

// Blocks per SM the device keeps resident for the staged kernel of `launch` (its
// registers and shared memory; 0 when it cannot run it): for tests and benchmarks.
int attention_staged_blocks_per_sm(const AttentionLaunch& launch);

// Whether the decode forward pass asks for the fused kernel (q_norm_rope, fold_combine,
// fit_splits): yes unless the environment variable DS4_CUDA_FUSED_ATTENTION is 0 (read
// once; for measurements and tests, the results are the same bits either way).
bool attention_fusion_enabled();

// Raises the kernel's shared-memory limit (call once before recording graphs).
Status attention_init();

}  // namespace ds4
