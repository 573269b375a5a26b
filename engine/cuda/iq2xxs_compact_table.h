// The compact IQ2_XXS selector table of cuda/dequant_chunk.cuh (Iq2xxsCompact), built
// on the host from the codebook (format/iq2xxs_grid.h) for the kernels that upload it.
//
// Thread-safety: a pure function.
#pragma once

#include <cstdint>

#include "common/status.h"

namespace ds4 {

// Fills table[0 .. cuda_detail::kIq2xxsCompactWords): per codebook entry the magnitude
// level (0, 1, 2 for 8, 25, 43) of each element in its nibble; per sign index, 4 in the
// nibble of each negated element. Errors when the codebook holds another magnitude.
Status build_iq2xxs_compact_table(uint32_t* table);

}  // namespace ds4
