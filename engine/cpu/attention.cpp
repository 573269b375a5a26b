#include "cpu/attention.h"

#include <algorithm>
#include <cmath>

#include "cpu/vector_ops.h"

namespace ds4::cpu {

void attend_head(const float* q, const float* const* rows, int64_t n_rows, int64_t hd, float sink, float scale,
                 float* out, float* scores) {
  float mx = sink;
  for (int64_t r = 0; r < n_rows; ++r) {
    scores[r] = dot(q, rows[r], hd) * scale;
    mx = std::max(mx, scores[r]);
  }
  float z = std::exp(sink - mx);
  for (int64_t r = 0; r < n_rows; ++r) {
    scores[r] = std::exp(scores[r] - mx);
    z += scores[r];
  }
  std::fill(out, out + hd, 0.0f);
  for (int64_t r = 0; r < n_rows; ++r) {
    const float p = scores[r] / z;
    const float* row = rows[r];
    for (int64_t i = 0; i < hd; ++i) out[i] += p * row[i];
  }
}

}  // namespace ds4::cpu
