#include "cuda/mtp.h"

#include "cuda/cuda_check.h"

namespace ds4 {
namespace {

__global__ void add_broadcast_kernel(float* x, const float* e, int dim, int mult) {
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < dim; i += gridDim.x * blockDim.x) {
    const float v = e[i];
    for (int h = 0; h < mult; ++h) x[static_cast<int64_t>(h) * dim + i] += v;
  }
}

__global__ void mark_position_kernel(int32_t* tags, int ring, const int32_t* pos) {
  const int32_t p = *pos;
  tags[p % ring] = p;
}

__global__ void forget_from_kernel(int32_t* tags, int ring, int32_t n) {
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < ring; i += gridDim.x * blockDim.x) {
    if (tags[i] >= n) tags[i] = -1;
  }
}

}  // namespace

Status launch_mtp_add_broadcast(float* x, const float* e, int dim, int mult, cudaStream_t stream) {
  if (dim <= 0 || mult <= 0) return Status::Error("mtp add_broadcast: empty shape");
  add_broadcast_kernel<<<(dim + 255) / 256, 256, 0, stream>>>(x, e, dim, mult);
  return cuda_status(cudaGetLastError(), "mtp add_broadcast launch");
}

Status launch_mtp_mark_position(int32_t* tags, int ring, const int32_t* pos, cudaStream_t stream) {
  if (ring <= 0 || !tags || !pos) return Status::Error("mtp mark_position: no ring");
  mark_position_kernel<<<1, 1, 0, stream>>>(tags, ring, pos);
  return cuda_status(cudaGetLastError(), "mtp mark_position launch");
}

Status launch_mtp_forget_from(int32_t* tags, int ring, int32_t n, cudaStream_t stream) {
  if (ring <= 0 || !tags) return Status::Error("mtp forget_from: no ring");
  forget_from_kernel<<<(ring + 255) / 256, 256, 0, stream>>>(tags, ring, n);
  return cuda_status(cudaGetLastError(), "mtp forget_from launch");
}

}  // namespace ds4
