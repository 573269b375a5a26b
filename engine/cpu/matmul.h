// Matrix products of a batch of f32 activations with a stored weight matrix of any
// supported ggml type: y[t][r] = W[row_begin + r] . x[t]. Weight rows are
// dequantized once per call (a small tile per thread) and reused for every token of
// the batch, so a prefill chunk reads each weight once; activations stay f32.
// Rows are spread over the thread pool.
//
// Thread-safety: concurrent calls with distinct outputs are safe; one call uses the pool.
#pragma once

#include <cstdint>

#include "model/model.h"
#include "runtime/thread_pool.h"

namespace ds4::cpu {

struct MatmulArgs {
  const float* x = nullptr;  // n tokens, row stride ldx
  int64_t n = 0;
  int64_t ldx = 0;
  float* y = nullptr;        // n tokens, row stride ldy
  int64_t ldy = 0;
  int64_t mat = 0;           // matrix index of a 3-D (expert) tensor
  int64_t row_begin = 0;     // first weight row
  int64_t row_count = -1;    // -1: all rows from row_begin
  const float* dense = nullptr;  // f32 copy of the whole tensor (WeightCache), if any
};

void matmul(ThreadPool& pool, const Weight& w, const MatmulArgs& args);

// Convenience: y[n x rows] = x[n x cols] . W^T for a whole 2-D weight.
void matmul(ThreadPool& pool, const Weight& w, const float* x, int64_t n, float* y,
            const float* dense = nullptr);

}  // namespace ds4::cpu
