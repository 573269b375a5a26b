#include "cpu/sequence_state.h"

#include <algorithm>
#include <cmath>

namespace ds4::cpu {

void CompressorRing::init(int32_t r, int32_t row_d, int32_t rollback) {
  ratio = r;
  d = row_d;
  width = ModelConfig::compressor_coff(r) * row_d;
  cap = ModelConfig::compressor_coff(r) * r + rollback;
  k.assign(static_cast<size_t>(cap) * width, 0.0f);
  z.assign(static_cast<size_t>(cap) * width, -INFINITY);
}

void RowStore::init(int64_t rows, int32_t row_d) {
  d = row_d;
  max_rows = rows;
  data.clear();
}

float* RowStore::row_for_write(int64_t c) {
  const size_t need = static_cast<size_t>(c + 1) * d;
  if (data.size() < need) {
    const size_t cap = static_cast<size_t>(max_rows) * d;
    data.resize(std::min(cap, std::max(need, 2 * data.size())));
  }
  return row(c);
}

void LayerState::write_raw(int64_t pos, const float* row) {
  std::copy(row, row + head_dim_, raw_at(pos));
  raw_pos[pos % raw_cap] = static_cast<int32_t>(pos);
}

void LayerState::forget_from(int64_t n) {
  for (int32_t& p : raw_pos) {
    if (p >= n) p = -1;
  }
}

void SequenceState::init(const ModelConfig& c, const std::vector<int32_t>& ratios, int32_t ctx,
                         int32_t rollback) {
  in_use = true;
  max_ctx = ctx;
  length = 0;
  layers.assign(ratios.size(), LayerState{});
  for (size_t l = 0; l < ratios.size(); ++l) {
    LayerState& s = layers[l];
    s.ratio = ratios[l];
    s.head_dim_ = c.head_dim;
    s.raw_cap = c.window + rollback;
    s.raw.assign(static_cast<size_t>(s.raw_cap) * c.head_dim, 0.0f);
    s.raw_pos.assign(s.raw_cap, -1);
    if (s.ratio != 0) {
      s.comp.init(s.ratio, c.head_dim, rollback);
      s.comp_rows.init(ctx / s.ratio + 1, c.head_dim);
    }
    if (s.ratio == 4) {
      s.index_comp.init(4, c.index_head_dim, rollback);
      s.index_rows.init(ctx / 4 + 1, c.index_head_dim);
    }
  }
}

}  // namespace ds4::cpu
