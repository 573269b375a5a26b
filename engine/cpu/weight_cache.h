// WeightCache: f32 copies of a model's matrices, dequantized once when the backend is
// created, so that every forward() reads plain floats instead of decoding blocks again.
// It is used only while the whole expansion fits the budget (the small and test
// models); larger models are decoded row by row in each matrix product.
//
// Thread-safety: immutable after build(); find() may be called concurrently.
#pragma once

#include <cstdint>
#include <memory>
#include <unordered_map>
#include <vector>

#include "format/gguf.h"
#include "runtime/thread_pool.h"

namespace ds4::cpu {

class WeightCache {
 public:
  // Expansions larger than this many bytes are not cached.
  static constexpr uint64_t kDefaultBudget = 2ull << 30;

  // Dequantizes every non-F32, non-integer tensor of `files` when the total f32 size
  // is within `budget` bytes; otherwise leaves the cache empty.
  void build(const std::vector<const GgufFile*>& files, ThreadPool& pool, uint64_t budget = kDefaultBudget);

  // The f32 copy of `t` (row-major, same row order), or nullptr.
  const float* find(const GgufTensor* t) const;
  bool empty() const { return index_.empty(); }
  uint64_t bytes() const { return bytes_; }

 private:
  std::unordered_map<const GgufTensor*, std::unique_ptr<float[]>> index_;
  uint64_t bytes_ = 0;
};

}  // namespace ds4::cpu
