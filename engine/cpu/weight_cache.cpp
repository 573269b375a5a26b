#include "cpu/weight_cache.h"

#include "format/quant.h"

namespace ds4::cpu {

void WeightCache::build(const std::vector<const GgufFile*>& files, ThreadPool& pool, uint64_t budget) {
  std::vector<const GgufTensor*> todo;
  uint64_t total = 0;
  for (const GgufFile* f : files) {
    if (f == nullptr) continue;
    for (const GgufTensor& t : f->tensors()) {
      if (t.type == GgmlType::F32 || t.type == GgmlType::I32 || !quant_supported(t.type)) continue;
      todo.push_back(&t);
      total += static_cast<uint64_t>(t.n_elements()) * sizeof(float);
    }
  }
  if (total > budget) return;
  std::vector<std::unique_ptr<float[]>> buffers(todo.size());
  for (size_t i = 0; i < todo.size(); ++i) buffers[i].reset(new float[todo[i]->n_elements()]);
  pool.parallel_for(static_cast<int64_t>(todo.size()), 1, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const GgufTensor& t = *todo[i];
      const int64_t cols = t.ne[0];
      for (int64_t r = 0; r < t.n_rows(); ++r) dequantize_row(t.type, t.row(r), buffers[i].get() + r * cols, cols);
    }
  });
  for (size_t i = 0; i < todo.size(); ++i) index_.emplace(todo[i], std::move(buffers[i]));
  bytes_ = total;
}

const float* WeightCache::find(const GgufTensor* t) const {
  auto it = index_.find(t);
  return it == index_.end() ? nullptr : it->second.get();
}

}  // namespace ds4::cpu
