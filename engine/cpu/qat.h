// The quantization round trips the model was trained with (spec/MODEL.md §2.1.3,
// §2.1.4), reproduced bit-faithfully in f32:
//   * FP8 E4M3FN round trip of the no-rope part of every KV row (blocks of 64,
//     power-of-two scale 2^ceil(log2(amax/448)), amax floored at 1e-4);
//   * Walsh-Hadamard transform (natural order, scaled by 1/sqrt(n)) followed by an
//     FP4 E2M1 round trip (blocks of 32, scale 2^ceil(log2(amax/6))) for the
//     indexer query heads and indexer rows.
// Rounding is to nearest, ties to the even code.
//
// Thread-safety: pure functions over caller memory.
#pragma once

#include <cstdint>

namespace ds4::cpu {

constexpr int kFp8Block = 64;
constexpr int kFp4Block = 32;

// One value onto the E4M3FN grid (|v| <= 448 expected; larger values saturate).
float round_to_e4m3(float v);
// One value onto the E2M1 grid {0, 0.5, 1, 1.5, 2, 3, 4, 6} (with sign).
float round_to_e2m1(float v);

// In place over x[0..n), n a multiple of the block size.
void fp8_roundtrip(float* x, int64_t n);
void fp4_roundtrip(float* x, int64_t n);
// In-place Walsh-Hadamard transform of length n (a power of two), times 1/sqrt(n).
void hadamard(float* x, int64_t n);

}  // namespace ds4::cpu
