#include "cuda/device_matrix.h"

namespace ds4 {

size_t DeviceMatrix::data_row_bytes() const {
  switch (type) {
    case GgmlType::F32: return 4 * static_cast<size_t>(cols);
    case GgmlType::F16: return 2 * static_cast<size_t>(cols);
    case GgmlType::Q8_0: return static_cast<size_t>(cols);
    case GgmlType::IQ2_XXS: return static_cast<size_t>(cols / 256) * 64;
    case GgmlType::Q2_K: return static_cast<size_t>(cols / 256) * 84;
    case GgmlType::Q4_K: return static_cast<size_t>(cols / 256) * 144;
    default: return 0;
  }
}

int64_t DeviceMatrix::scales_per_row() const {
  switch (type) {
    case GgmlType::Q8_0: return cols / 32;
    case GgmlType::IQ2_XXS: return cols / 256;
    default: return 0;
  }
}

bool device_matrix_supported(GgmlType type, int64_t cols) {
  switch (type) {
    case GgmlType::F32:
    case GgmlType::F16:
    case GgmlType::Q8_0: return cols > 0 && cols % 32 == 0;
    case GgmlType::IQ2_XXS:
    case GgmlType::Q2_K:
    case GgmlType::Q4_K: return cols > 0 && cols % 256 == 0;
    default: return false;
  }
}

}  // namespace ds4
