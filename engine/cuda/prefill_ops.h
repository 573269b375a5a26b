// Batched small ops for the GPU prefill: each launch runs one op over all n tokens
// of a chunk (row t of every buffer belongs to token t), with exactly the arithmetic
// of the single-token op applied token by token (hyper_connections.h, moe.h), plus
// the MoE grouping that sorts a chunk's (token, slot) assignments by expert so the
// expert products can run one expert at a time, and the combine that sums them back.
//
// Buffers: x holds n rows of mult*dim floats (row t at x + t*mult*dim), and so on as
// each function says. All pointers are device memory; nothing reads back to the host.
//
// Thread-safety: launches on the caller's stream; no host state.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "common/status.h"
#include "cuda/device_matrix.h"
#include "cuda/hyper_connections.h"
#include "cuda/moe.h"
#include "format/ggml_type.h"

namespace ds4 {

// x row t (mult*dim floats) = embedding row tokens[t] repeated for every stream.
// `embd` is F16 or F32.
Status launch_hc_embed_tokens(const void* embd, GgmlType type, const int32_t* tokens, int n,
                              const HcShape& s, float* x, cudaStream_t stream);

// As launch_hc_pre for each token. mix: n rows of mix_n = (2 + mult) * mult floats
// (fn . X for each token). post: n rows of mult, comb: n rows of mult*mult,
// out: n rows of dim.
Status launch_hc_pre_tokens(const float* x, const float* mix, const float* scale, const float* base,
                            const float* norm_weight, const HcShape& s, int n, float* post,
                            float* comb, float* out, cudaStream_t stream);

// x_out row t = post_t * f_t + comb_t^T x_in_t (as launch_hc_post, per token).
// f: n rows of dim.
Status launch_hc_post_tokens(const float* x_in, const float* f, const float* post,
                             const float* comb, const HcShape& s, int n, float* x_out,
                             cudaStream_t stream);

// As launch_router for n tokens: base.logits holds n rows of n_experts; base.token is a
// device array of n token ids (read by hash layers only); base.ids / base.weights
// receive n rows of n_used.
struct RouterTokensLaunch {
  RouterLaunch base;
  int n = 0;
};
Status launch_router_tokens(const RouterTokensLaunch& launch, cudaStream_t stream);

// MoE grouping: the n*k (token, slot) pairs of `ids` (n rows of k expert ids) sorted by
// expert, stable in (token, slot) order. Writes offsets[n_experts + 1] (offsets[e] = the
// first assignment of expert e, offsets[n_experts] = n*k), and for every assignment a:
// x_rows[a] = its token, row_scale[a] = weights[token*k + slot], and
// slot_of[token*k + slot] = a. An id outside [0, n_experts) counts as expert 0 (as the
// router clamps hash-table entries). Deterministic; no host sync.
struct MoeGroupLaunch {
  const int32_t* ids = nullptr;
  const float* weights = nullptr;  // n rows of k routing weights (needed with row_scale)
  int n = 0;
  int k = 0;
  int n_experts = 0;  // at most 1024
  int32_t* offsets = nullptr;      // n_experts + 1
  int32_t* x_rows = nullptr;       // n*k
  float* row_scale = nullptr;      // n*k; optional (nullptr: not written)
  int32_t* slot_of = nullptr;      // n*k
};
Status launch_moe_group(const MoeGroupLaunch& launch, cudaStream_t stream);

// out row t (dim floats) = sum over j = 0..k-1, in that order, of y[slot_of[t*k + j]]
// (y: assignment rows of dim floats); added to what out holds when `accumulate`
// (out + (((y0 + y1) + ...) ), the sum formed first).
Status launch_moe_combine(const float* y, const int32_t* slot_of, int n, int k, int dim,
                          bool accumulate, float* out, cudaStream_t stream);

// y[t*y_stride + r] = sum over c of w[r][c] * x[t*x_stride + c], for every token t < n and
// row r < w.rows (the first matrix of w): the small projections that feed decisions
// (hyper-connection mixing, router logits, indexer weights) over a chunk of tokens.
// w is F16 or F32 with cols a multiple of 4; x, x_stride and y_stride as for float4
// loads (16-byte aligned rows). f32 products and f32 sums: each lane sums its columns in
// chunks of 32 products, then the 32 lanes in a fixed butterfly, so results do not
// depend on scheduling and stay within a few f32 roundings of the exact sum. Each block
// reads its slice of w once through L1 for many tokens.
Status launch_small_matmul_tokens(const DeviceMatrix& w, const float* x, int64_t x_stride, float* y,
                                  int64_t y_stride, int n, cudaStream_t stream);

// The same products as launch_small_matmul_tokens (same arguments and requirements: w F16
// or F32 with cols a multiple of 4, 16-byte aligned x rows), as a register-tiled GEMM for
// chunks of many tokens: each block stages a tile of 128 tokens and up to 64 rows of w in
// shared memory (asynchronous copies, several stages deep; F16 converted exactly to f32),
// each thread sums several tokens x several rows. Summation order, fixed: the columns are
// cut into `splits` contiguous ranges; within a range each output is an f32 fused
// multiply-add chain over k ascending (matrices of up to 24 rows: two such chains, over
// the first and second 16 columns of every 32, added in that order); the ranges' sums
// are then added in range order (the blocks of one output tile form a thread-block
// cluster and add through distributed shared memory; no atomics), so results do not
// depend on scheduling. `k_splits` 0 lets the launch choose
// (enough blocks to fill the GPU, at most 8); 1..8 forces a count (tests). Needs sm_90 or
// newer for splits > 1; where clusters cannot be formed the launch uses fewer splits.
Status launch_tiled_matmul_tokens(const DeviceMatrix& w, const float* x, int64_t x_stride, float* y,
                                  int64_t y_stride, int n, cudaStream_t stream, int k_splits = 0);

// The column splits launch_tiled_matmul_tokens would use for `w` over n tokens (host
// computation from the device's limits, no launch): for benchmarks and tests.
Result<int> tiled_matmul_tokens_splits(const DeviceMatrix& w, int n, int k_splits = 0);

}  // namespace ds4
