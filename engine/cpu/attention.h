// Attention of one query head over its visible rows (spec/MODEL.md §2.5.5): the raw
// window and the visible (or indexer-selected) compressed rows, each row serving as
// both key and value, with a per-head sink logit in the softmax denominator.
//
// Thread-safety: pure function over caller memory.
#pragma once

#include <cstdint>

namespace ds4::cpu {

// out[0..hd) = sum_r softmax_r(q . row_r * scale | sink) * row_r. `scores` must hold
// n_rows floats.
void attend_head(const float* q, const float* const* rows, int64_t n_rows, int64_t hd, float sink,
                 float scale, float* out, float* scores);

}  // namespace ds4::cpu
