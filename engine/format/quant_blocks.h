// Raw block layouts (spec/GGUF.md §6), shared by the CPU routines and the CUDA
// kernels. Plain structs, byte-for-byte the file layout; fp16 fields are raw bits.
#pragma once

#include <cstdint>

namespace ds4 {

constexpr int kQK8_0 = 32;   // elements per Q8_0 block
constexpr int kQK_K = 256;   // elements per K-quant / IQ super-block

struct BlockQ8_0 {           // 34 bytes
  uint16_t d;
  int8_t qs[kQK8_0];
};

struct BlockQ2_K {           // 84 bytes
  uint8_t scales[kQK_K / 16];  // low nibble scale, high nibble min, per 16 elements
  uint8_t qs[kQK_K / 4];       // 2-bit quants
  uint16_t d;
  uint16_t dmin;
};

struct BlockQ4_K {           // 144 bytes
  uint16_t d;
  uint16_t dmin;
  uint8_t scales[12];          // 8 six-bit scales and 8 six-bit mins, packed
  uint8_t qs[kQK_K / 2];       // 4-bit quants
};

struct BlockIQ2_XXS {        // 66 bytes
  uint16_t d;
  uint16_t qs[kQK_K / 8];
};

static_assert(sizeof(BlockQ8_0) == 34, "Q8_0 block is 34 bytes");
static_assert(sizeof(BlockQ2_K) == 84, "Q2_K block is 84 bytes");
static_assert(sizeof(BlockQ4_K) == 144, "Q4_K block is 144 bytes");
static_assert(sizeof(BlockIQ2_XXS) == 66, "IQ2_XXS block is 66 bytes");

}  // namespace ds4
