// DeviceMatrix: a weight tensor resident in GPU memory, in the layout the CUDA
// kernels read. One to several matrices of `rows` x `cols` (experts are `count`
// matrices stacked). Row r of matrix m holds the weights of output r.
//
// Layouts by type (chosen so that every thread loads aligned 8- or 16-byte words):
//   F32, F16         plain rows.
//   Q2_K, Q4_K       the file's blocks (84 / 144 bytes), rows back to back.
//   Q8_0             split: `data` = int8 quants [count*rows][cols],
//                    `scales` = f16 block scales [count*rows][cols/32].
//   IQ2_XXS          split: `data` = the 64 code bytes of each block
//                    [count*rows][cols/256][64], `scales` = f16 d [count*rows][cols/256].
// The split layouts hold exactly the file's bits (same values, same byte count).
//
// Thread-safety: a plain value; the memory it points to is owned elsewhere.
#pragma once

#include <cstddef>
#include <cstdint>

#include "format/ggml_type.h"

namespace ds4 {

struct DeviceMatrix {
  GgmlType type = GgmlType::F32;
  int64_t cols = 0;   // input elements per row (ggml ne0)
  int64_t rows = 0;   // output rows per matrix (ggml ne1)
  int64_t count = 1;  // stacked matrices (ggml ne2; experts)
  uint8_t* data = nullptr;
  uint16_t* scales = nullptr;  // Q8_0 and IQ2_XXS only

  bool empty() const { return data == nullptr; }
  // Bytes of one row in `data`.
  size_t data_row_bytes() const;
  // f16 scales per row (Q8_0, IQ2_XXS), else 0.
  int64_t scales_per_row() const;
  size_t data_bytes() const { return data_row_bytes() * static_cast<size_t>(rows * count); }
  size_t scale_bytes() const { return 2 * static_cast<size_t>(scales_per_row() * rows * count); }
};

// True when the kernels can read `type` with this many columns.
bool device_matrix_supported(GgmlType type, int64_t cols);

}  // namespace ds4
