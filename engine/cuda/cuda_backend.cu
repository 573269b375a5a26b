#include "cuda/cuda_backend.h"

#include <cuda_runtime.h>

namespace ds4 {

bool cuda_device_present() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) return false;
  return count > 0;
}

Result<std::unique_ptr<Backend>> make_cuda_backend(const Model& model,
                                                   const BackendOptions& options) {
  (void)model;
  if (!cuda_device_present()) {
    return Status::Error("CUDA backend: no CUDA device is present");
  }
  return Status::Error("CUDA backend: incomplete (forward pass not yet available on the GPU)");
}

}  // namespace ds4
