#include "cpu/compressor.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "cpu/qat.h"
#include "cpu/vector_ops.h"
#include "format/quant.h"

namespace ds4::cpu {

void compressor_store(const CompressorWeights& w, CompressorRing& ring, int64_t pos, const float* k,
                      const float* z) {
  const int64_t width = ring.width;
  std::copy(k, k + width, ring.k_at(pos));
  float* zs = ring.z_at(pos);
  const int64_t phase = pos % ring.ratio;
  if (w.ape.type() == GgmlType::F32) {
    const float* ape = reinterpret_cast<const float*>(w.ape.row(phase));
    for (int64_t j = 0; j < width; ++j) zs[j] = z[j] + ape[j];
  } else {
    std::vector<float> ape(width);
    dequantize_row(w.ape.type(), w.ape.row(phase), ape.data(), width);
    for (int64_t j = 0; j < width; ++j) zs[j] = z[j] + ape[j];
  }
}

bool compressor_emit(const ModelConfig& c, const CompressorWeights& w, const CompressorRing& ring, int64_t pos,
                     const Rope& rope, CompressedRowKind kind, bool qat, float* row) {
  const int64_t R = ring.ratio;
  if ((pos + 1) % R != 0) return false;
  const int64_t chunk = (pos + 1) / R - 1;  // row index c
  const int64_t first = chunk * R;         // first position of the current window
  const int64_t d = ring.d;
  const bool overlap = ring.width == 2 * ring.d;
  // Candidate (position, channel offset): previous window (first half) then current
  // window (second half with overlap, the only half otherwise).
  struct Cand { int64_t pos; int64_t off; };
  std::vector<Cand> cands;
  if (overlap && chunk > 0) {
    for (int64_t t = first - R; t < first; ++t) cands.push_back({t, 0});
  }
  for (int64_t t = first; t < first + R; ++t) cands.push_back({t, overlap ? d : 0});

  std::vector<float> weight(cands.size());
  for (int64_t j = 0; j < d; ++j) {
    float mx = -INFINITY;
    for (size_t i = 0; i < cands.size(); ++i) mx = std::max(mx, ring.z_at(cands[i].pos)[cands[i].off + j]);
    float sum = 0;
    for (size_t i = 0; i < cands.size(); ++i) {
      weight[i] = std::exp(ring.z_at(cands[i].pos)[cands[i].off + j] - mx);
      sum += weight[i];
    }
    float acc = 0;
    for (size_t i = 0; i < cands.size(); ++i) {
      acc += ring.k_at(cands[i].pos)[cands[i].off + j] * (weight[i] / sum);
    }
    row[j] = acc;
  }
  rms_norm(row, w.norm.f32(), d, c.norm_eps, row);
  rope.rotate(row + d - c.rope_dim, first);
  if (qat) {
    if (kind == CompressedRowKind::kAttention) {
      fp8_roundtrip(row, d - c.rope_dim);
    } else {
      hadamard(row, d);
      fp4_roundtrip(row, d);
    }
  }
  return true;
}

}  // namespace ds4::cpu
