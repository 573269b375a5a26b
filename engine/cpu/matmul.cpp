#include "cpu/matmul.h"

#include <algorithm>
#include <vector>

#include "cpu/vector_ops.h"
#include "format/quant.h"

namespace ds4::cpu {
namespace {

constexpr int64_t kRowTile = 4;
// Products smaller than this many multiply-adds run on the calling thread: waking
// the pool costs more than they do.
constexpr int64_t kMinParallelWork = 1 << 18;

}  // namespace

void matmul(ThreadPool& pool, const Weight& w, const MatmulArgs& a) {
  const int64_t cols = w.cols();
  const int64_t rows = a.row_count < 0 ? w.rows() - a.row_begin : a.row_count;
  const bool plain = w.type() == GgmlType::F32 || a.dense != nullptr;
  const int64_t tiles = (rows + kRowTile - 1) / kRowTile;
  const bool small = rows * cols * std::max<int64_t>(a.n, 1) < kMinParallelWork;
  const int64_t grain = small ? tiles : std::max<int64_t>(1, tiles / (pool.size() * 8));
  pool.parallel_for(tiles, grain, [&](int64_t t0, int64_t t1) {
    std::vector<float> buf(plain ? 0 : kRowTile * cols);
    const float* wrow[kRowTile];
    for (int64_t tile = t0; tile < t1; ++tile) {
      const int64_t r0 = tile * kRowTile;
      const int64_t nr = std::min(kRowTile, rows - r0);
      for (int64_t i = 0; i < nr; ++i) {
        const uint8_t* src = w.row(a.row_begin + r0 + i, a.mat);
        if (a.dense != nullptr) {
          wrow[i] = a.dense + (a.mat * w.rows() + a.row_begin + r0 + i) * cols;
        } else if (plain) {
          wrow[i] = reinterpret_cast<const float*>(src);
        } else {
          dequantize_row(w.type(), src, buf.data() + i * cols, cols);
          wrow[i] = buf.data() + i * cols;
        }
      }
      for (int64_t t = 0; t < a.n; ++t) {
        const float* x = a.x + t * a.ldx;
        float* y = a.y + t * a.ldy + r0;
        for (int64_t i = 0; i < nr; ++i) y[i] = dot(wrow[i], x, cols);
      }
    }
  });
}

void matmul(ThreadPool& pool, const Weight& w, const float* x, int64_t n, float* y, const float* dense) {
  MatmulArgs a;
  a.dense = dense;
  a.x = x;
  a.n = n;
  a.ldx = w.cols();
  a.y = y;
  a.ldy = w.rows();
  matmul(pool, w, a);
}

}  // namespace ds4::cpu
