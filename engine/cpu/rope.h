// Rotary position embedding on the tail of a head (spec/MODEL.md §2.1.2): the last
// rope_dim values of a vector rotate in interleaved pairs (2j, 2j+1). Plain RoPE
// (theta = rope.freq_base) in ratio-0 layers and the MTP block; theta =
// compress_rope_freq_base with YaRN frequency blending (no magnitude scaling) for
// everything inside a compressed layer. Angles are computed in f32 as p * f_j.
//
// Thread-safety: immutable after construction.
#pragma once

#include <cstdint>
#include <vector>

#include "model/config.h"

namespace ds4::cpu {

class Rope {
 public:
  Rope() = default;
  // `yarn` selects the compressed-layer variant.
  Rope(const ModelConfig& config, bool yarn);

  // Rotates tail[0..rope_dim) in place by position `pos` (inverse: by -pos).
  void rotate(float* tail, int64_t pos, bool inverse = false) const;

  int32_t dim() const { return static_cast<int32_t>(freq_.size() * 2); }
  const std::vector<float>& freqs() const { return freq_; }

 private:
  std::vector<float> freq_;  // f_j per pair
};

}  // namespace ds4::cpu
