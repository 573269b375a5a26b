#include "cuda/device_limits.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdlib>

namespace ds4 {

int max_shared_per_block() {
  static const int limit = [] {
    int device = 0, optin = 48 * 1024;
    if (cudaGetDevice(&device) == cudaSuccess) {
      cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
    }
    if (const char* cap = std::getenv("DS4_CUDA_MAX_SHARED_PER_BLOCK")) {
      const long v = std::strtol(cap, nullptr, 10);
      if (v > 0) optin = std::min<long>(optin, v);
    }
    return optin;
  }();
  return limit;
}

}  // namespace ds4
