#include "cuda/kernel_residency.h"

#include <cuda_runtime.h>

#include <mutex>
#include <string>
#include <vector>

#include "cuda/cuda_check.h"

namespace ds4 {

Result<KernelResidency> kernel_residency(const void* kernel, int threads, size_t shared) {
  struct Entry {
    int device;
    const void* kernel;
    int threads;
    size_t shared;
    KernelResidency value;
  };
  static std::mutex mutex;
  static std::vector<Entry> cache;
  int device = 0;
  DS4_CUDA_TRY(cudaGetDevice(&device));
  {
    std::lock_guard<std::mutex> lock(mutex);
    for (const Entry& e : cache) {
      if (e.device == device && e.kernel == kernel && e.threads == threads && e.shared == shared) return e.value;
    }
  }
  KernelResidency r;
  DS4_CUDA_TRY(cudaDeviceGetAttribute(&r.multiprocessors, cudaDevAttrMultiProcessorCount, device));
  DS4_CUDA_TRY(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&r.blocks_per_sm, kernel, threads, shared));
  if (r.blocks_per_sm < 1) {
    return Status::Error("a block of " + std::to_string(threads) + " threads with " + std::to_string(shared) +
                         " bytes of dynamic shared memory does not fit on a multiprocessor");
  }
  std::lock_guard<std::mutex> lock(mutex);
  cache.push_back({device, kernel, threads, shared, r});
  return r;
}

}  // namespace ds4
