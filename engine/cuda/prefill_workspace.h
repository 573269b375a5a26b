// CudaForward::PrefillWorkspace: the device buffers of a batched prefill (one row
// per token of the chunk for every intermediate of a layer), allocated once for
// CudaForward::kMaxPrefill tokens by the first prefill().
//
// Thread-safety: owned by one CudaForward.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/forward.h"

namespace ds4 {

struct CudaForward::PrefillWorkspace {
  void* arena = nullptr;
  ~PrefillWorkspace() {
    if (arena) cudaFree(arena);
  }
};

}  // namespace ds4
