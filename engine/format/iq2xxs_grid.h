// IQ2_XXS lookup tables (spec/GGUF.md §6.5, spec/iq2xxs_tables.txt), shared by the
// CPU routines and, copied to the device, by the CUDA kernels.
//
// kIq2xxsGrid[g]: eight magnitudes (8, 25 or 43), byte i = element i of a group of 8.
// iq2xxs_sign_mask(s): the 7-bit stored sign index expanded to 8 sign bits (bit i set =>
// element i negated); the 8th bit is the parity of the 7 stored ones.
//
// Thread-safety: constant data.
#pragma once

#include <cstdint>

namespace ds4 {

extern const uint64_t kIq2xxsGrid[256];

constexpr uint8_t iq2xxs_sign_mask(uint32_t sign_index) {
  const uint32_t s = sign_index & 0x7F;
  uint32_t parity = 0;
  for (uint32_t bits = s; bits != 0; bits >>= 1) parity ^= bits & 1u;
  return static_cast<uint8_t>(s | (parity << 7));
}

}  // namespace ds4
