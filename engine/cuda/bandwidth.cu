#include "cuda/bandwidth.h"

#include <cuda_runtime.h>

#include <algorithm>

#include "cuda/cuda_check.h"

namespace ds4 {
namespace {

__global__ void read_sum_kernel(const int4* data, size_t n, float* out) {
  float acc = 0.0f;
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    const int4 v = __ldcs(data + i);
    acc += __int_as_float(v.x) + __int_as_float(v.y) + __int_as_float(v.z) + __int_as_float(v.w);
  }
  if (acc == 12345.678f) *out = acc;  // keeps the loads alive
}

}  // namespace

Result<double> measure_read_bandwidth(size_t bytes, int repetitions) {
  bytes = bytes / 16 * 16;
  void* buf = nullptr;
  float* out = nullptr;
  DS4_CUDA_TRY(cudaMalloc(&buf, bytes));
  DS4_CUDA_TRY(cudaMalloc(&out, sizeof(float)));
  DS4_CUDA_TRY(cudaMemset(buf, 0, bytes));
  int sms = 0;
  DS4_CUDA_TRY(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
  cudaEvent_t a, b;
  cudaEventCreate(&a);
  cudaEventCreate(&b);
  double best = 0;
  for (int r = 0; r < repetitions + 1; ++r) {
    cudaEventRecord(a);
    read_sum_kernel<<<sms * 8, 512>>>(static_cast<const int4*>(buf), bytes / 16, out);
    cudaEventRecord(b);
    cudaEventSynchronize(b);
    float ms = 0;
    cudaEventElapsedTime(&ms, a, b);
    if (r > 0) best = std::max(best, bytes / (ms * 1e-3));
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  const cudaError_t err = cudaGetLastError();
  cudaFree(buf);
  cudaFree(out);
  DS4_RETURN_IF_ERROR(cuda_status(err, "bandwidth kernel"));
  return best;
}

}  // namespace ds4
