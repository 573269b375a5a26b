#include "cuda/iq2xxs_compact_table.h"

#include <string>

#include "format/iq2xxs_grid.h"

namespace ds4 {

Status build_iq2xxs_compact_table(uint32_t* table) {
  for (int g = 0; g < 256; ++g) {
    uint32_t word = 0;
    for (int i = 0; i < 8; ++i) {
      const uint32_t mag = static_cast<uint32_t>(kIq2xxsGrid[g] >> (8 * i)) & 0xFF;
      const uint32_t level = mag == 8 ? 0 : mag == 25 ? 1 : mag == 43 ? 2 : 3;
      if (level == 3) {
        return Status::Error("IQ2_XXS codebook entry " + std::to_string(g) + " element " + std::to_string(i) +
                             " has magnitude " + std::to_string(mag) + " (expected 8, 25 or 43)");
      }
      word |= level << (4 * i);
    }
    table[g] = word;
  }
  for (uint32_t si = 0; si < 128; ++si) {
    const uint32_t mask = iq2xxs_sign_mask(si);
    uint32_t word = 0;
    for (int i = 0; i < 8; ++i) {
      if ((mask >> i) & 1u) word |= 4u << (4 * i);
    }
    table[256 + si] = word;
  }
  return Status::Ok();
}

}  // namespace ds4
