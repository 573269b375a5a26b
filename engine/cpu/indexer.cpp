#include "cpu/indexer.h"

#include <algorithm>
#include <numeric>

#include "cpu/vector_ops.h"

namespace ds4::cpu {

void indexer_scores(const float* q, const float* w, int heads, int head_dim, const float* rows, int64_t n_rows,
                    float* scores) {
  for (int64_t c = 0; c < n_rows; ++c) {
    const float* row = rows + c * head_dim;
    float acc = 0;
    for (int h = 0; h < heads; ++h) {
      const float s = dot(q + static_cast<int64_t>(h) * head_dim, row, head_dim);
      acc += std::max(s, 0.0f) * w[h];
    }
    scores[c] = acc;
  }
}

void select_top_k(const float* scores, int64_t n, int64_t top_k, std::vector<int32_t>* selected) {
  selected->resize(n);
  std::iota(selected->begin(), selected->end(), 0);
  if (top_k < n) {
    auto better = [scores](int32_t a, int32_t b) {
      return scores[a] > scores[b] || (scores[a] == scores[b] && a < b);
    };
    std::nth_element(selected->begin(), selected->begin() + top_k, selected->end(), better);
    selected->resize(top_k);
    std::sort(selected->begin(), selected->end());
  }
}

}  // namespace ds4::cpu
