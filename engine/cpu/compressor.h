// The KV compressor (spec/MODEL.md §2.5.3): every token stores its projections
// (k, z + ape[pos mod R]); when (pos + 1) mod R == 0 a row is emitted by a per-channel
// softmax pooling over the window (for R = 4 with overlap: the previous window through
// the first half of the projection, the current window through the second half),
// then RMSNorm with the compressor's weight, RoPE at the window's first position, and
// the QAT round trip (FP8 of the no-rope dims for attention rows, Hadamard + FP4 for
// indexer rows).
//
// Thread-safety: pure functions over caller memory.
#pragma once

#include <cstdint>

#include "cpu/rope.h"
#include "cpu/sequence_state.h"
#include "model/model.h"

namespace ds4::cpu {

enum class CompressedRowKind { kAttention, kIndexer };

// Stores token `pos`'s projections: k (width) and z (width, ape not yet added).
void compressor_store(const CompressorWeights& w, CompressorRing& ring, int64_t pos, const float* k,
                      const float* z);

// True when `pos` closes a window; then writes the finished row (ring.d values).
bool compressor_emit(const ModelConfig& c, const CompressorWeights& w, const CompressorRing& ring,
                     int64_t pos, const Rope& rope, CompressedRowKind kind, bool qat, float* row);

}  // namespace ds4::cpu
