// The lightning indexer of ratio-4 layers (spec/MODEL.md §2.5.4): scores every
// visible compressed row c as sum_h w_h * relu(q_h . index_row_c) and keeps the
// top_k best (ties to the lower index) when more than top_k rows are visible.
//
// Thread-safety: pure functions over caller memory.
#pragma once

#include <cstdint>
#include <vector>

namespace ds4::cpu {

// q: heads x head_dim (after RoPE and QAT); w: heads weights (already scaled);
// rows: n_rows x head_dim. scores gets n_rows values.
void indexer_scores(const float* q, const float* w, int heads, int head_dim, const float* rows, int64_t n_rows,
                    float* scores);

// Indices of the top_k largest scores, ascending index order; ties keep the lower index.
void select_top_k(const float* scores, int64_t n, int64_t top_k, std::vector<int32_t>* selected);

}  // namespace ds4::cpu
