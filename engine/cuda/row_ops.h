// Per-row post-processing on the GPU (spec/MODEL.md §2.1, §2.5): RMSNorm with or
// without a learned weight, RoPE on the last rope_dim values, and the QAT round
// trips (FP8 on the no-rope part of attention rows; Hadamard + FP4 on indexer
// rows). Positions are read from device memory, so these launches can live in a
// CUDA graph replayed at every token.
//
// Thread-safety: launches on the caller's stream; no host state.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "common/status.h"

namespace ds4 {

enum class RowQat : int { kNone = 0, kFp8Nope = 1, kHadamardFp4 = 2 };

struct RowPostLaunch {
  const float* in = nullptr;      // n_rows rows of d values, `in_stride` apart
  int64_t in_stride = 0;
  float* out = nullptr;           // may equal `in`
  int64_t out_stride = 0;
  int n_rows = 1;
  int d = 0;                      // row length (<= 1024)
  bool norm = false;              // RMSNorm over the row
  const float* norm_weight = nullptr;  // nullptr: no learned weight
  float eps = 1e-6f;
  int rope_dim = 0;               // 0: no rotation
  const float* rope_freqs = nullptr;   // device, rope_dim/2 frequencies
  const int32_t* pos = nullptr;   // device: rotation position
  bool inverse = false;
  RowQat qat = RowQat::kNone;
  // When set, the output row goes to out + (*pos % ring) * out_stride (raw KV ring).
  int ring = 0;
  // When > 0, row r belongs to position *pos + r / rows_per_pos: its RoPE angle and, with
  // `ring`, its ring slot, out row ((*pos + r / rows_per_pos) % ring) * rows_per_pos +
  // r % rows_per_pos. A chunk of n tokens: n*heads q rows with rows_per_pos = heads, n kv
  // rows with rows_per_pos = 1. 0: every row at *pos (the single-token path). With `ring`,
  // the rows may span at most `ring` positions (more would collide in the ring).
  int rows_per_pos = 0;
};

Status launch_row_post(const RowPostLaunch& launch, cudaStream_t stream);

// out[0..n) = x / sqrt(mean(x^2) + eps) * weight (weight may be nullptr).
Status launch_rms_norm(const float* x, const float* weight, int n, float eps, float* out,
                       cudaStream_t stream);

}  // namespace ds4
