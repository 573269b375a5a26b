// The persistent state of one sequence in the CPU backend (spec/MODEL.md §2.10), per
// layer: the raw KV window (a ring), the compressor's per-token (k, z) history (the
// "frontier" needed to emit the next compressed row), and the emitted compressed
// attention rows and indexer rows.
//
// Rings keep Backend::kMaxRollback extra positions so that truncate() can drop up to
// that many tokens without losing rows an earlier position needs: after a rollback
// to n, every ring slot for a position < n that the next tokens read is intact, and
// slots for positions >= n are rewritten before they are read.
//
// Thread-safety: owned by the backend; not shared.
#pragma once

#include <cstdint>
#include <vector>

#include "model/config.h"

namespace ds4::cpu {

// Per-position (k, z) of one compressor; slot = pos mod cap. z already includes ape.
struct CompressorRing {
  int32_t ratio = 0;
  int32_t d = 0;       // output row width
  int32_t width = 0;   // projection width = coff * d
  int32_t cap = 0;     // positions kept
  std::vector<float> k, z;

  void init(int32_t ratio, int32_t d, int32_t rollback);
  float* k_at(int64_t pos) { return k.data() + (pos % cap) * width; }
  float* z_at(int64_t pos) { return z.data() + (pos % cap) * width; }
  const float* k_at(int64_t pos) const { return k.data() + (pos % cap) * width; }
  const float* z_at(int64_t pos) const { return z.data() + (pos % cap) * width; }
};

// Append-only rows (compressed attention rows or indexer rows); row c of a sequence
// of length n is valid for c < n / ratio. Storage grows as rows are emitted (up to
// max_rows), so a long context costs memory only once it is used.
struct RowStore {
  int32_t d = 0;
  int64_t max_rows = 0;
  std::vector<float> data;
  void init(int64_t max_rows, int32_t d);
  // Row c for writing; grows the storage (invalidating earlier row pointers).
  float* row_for_write(int64_t c);
  float* row(int64_t c) { return data.data() + c * d; }
  const float* row(int64_t c) const { return data.data() + c * d; }
};

struct LayerState {
  int32_t ratio = 0;
  int32_t raw_cap = 0;
  std::vector<float> raw;       // raw_cap x head_dim, slot = pos mod raw_cap
  std::vector<int32_t> raw_pos; // position held by each slot (-1: empty)
  CompressorRing comp;          // ratio != 0
  RowStore comp_rows;
  CompressorRing index_comp;    // ratio == 4
  RowStore index_rows;

  float* raw_at(int64_t pos) { return raw.data() + (pos % raw_cap) * static_cast<int64_t>(head_dim_); }
  const float* raw_at(int64_t pos) const { return raw.data() + (pos % raw_cap) * static_cast<int64_t>(head_dim_); }
  bool raw_holds(int64_t pos) const { return raw_pos[pos % raw_cap] == pos; }
  void write_raw(int64_t pos, const float* row);
  // Forgets the raw rows of positions >= n.
  void forget_from(int64_t n);
  int32_t head_dim_ = 0;
};

struct SequenceState {
  bool in_use = false;
  int32_t max_ctx = 0;
  int32_t length = 0;
  // One entry per main block, plus the MTP block's state last when the model has one.
  std::vector<LayerState> layers;

  // Sizes every buffer from the config; `ratios` gives each block's ratio.
  void init(const ModelConfig& c, const std::vector<int32_t>& ratios, int32_t max_ctx, int32_t rollback);
};

}  // namespace ds4::cpu
