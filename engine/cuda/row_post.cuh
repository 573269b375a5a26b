// Device routine behind row_ops.h, also used inside the compressor kernel: one
// block post-processes one row held in shared memory.
#pragma once

#include "cuda/device_math.cuh"

namespace ds4 {
namespace cuda_detail {

// v: shared memory, d values. scratch: shared memory, >= 32 + d/64 + 1 floats.
// Every thread of the block must call this.
__device__ inline void post_process_row(float* v, int d, bool norm, const float* weight, float eps,
                                        int rope_dim, const float* freqs, float rope_pos,
                                        bool inverse, int qat, float* scratch) {
  const int tid = threadIdx.x;
  const int nt = blockDim.x;
  if (norm) {
    __shared__ double dscratch[32];
    double ss = 0.0;
    for (int i = tid; i < d; i += nt) ss += static_cast<double>(v[i]) * v[i];
    ss = block_sum_double(ss, dscratch);
    const float f = rms_scale(ss, d, eps);
    __syncthreads();
    for (int i = tid; i < d; i += nt) v[i] = v[i] * f * (weight ? weight[i] : 1.0f);
    __syncthreads();
  }
  if (rope_dim > 0) {
    float* tail = v + d - rope_dim;
    for (int j = tid; j < rope_dim / 2; j += nt) {
      rope_pair(&tail[2 * j], &tail[2 * j + 1], rope_pos, freqs[j], inverse);
    }
    __syncthreads();
  }
  if (qat == 1) {
    // FP8 on the no-rope part, blocks of 64: block b's max |x| via one warp per half-block.
    const int nope = d - rope_dim;
    float* amax = scratch + 32;
    for (int b = tid; b < nope / 64; b += nt) amax[b] = 0.0f;
    __syncthreads();
    for (int i = tid; i < nope; i += nt) {
      atomicMax(reinterpret_cast<int*>(&amax[i / 64]), __float_as_int(fabsf(v[i])));
    }
    __syncthreads();
    for (int i = tid; i < nope; i += nt) v[i] = fp8_roundtrip_value(v[i], amax[i / 64]);
    __syncthreads();
  } else if (qat == 2) {
    // Walsh-Hadamard (natural order) over the whole row, then FP4 in blocks of 32.
    for (int h = 1; h < d; h <<= 1) {
      for (int k = tid; k < d / 2; k += nt) {
        const int i = (k / h) * 2 * h + (k % h);
        const float a = v[i], b = v[i + h];
        v[i] = a + b;
        v[i + h] = a - b;
      }
      __syncthreads();
    }
    const float hs = static_cast<float>(1.0 / sqrt(static_cast<double>(d)));
    float* amax = scratch + 32;
    for (int b = tid; b < d / 32; b += nt) amax[b] = 0.0f;
    __syncthreads();
    for (int i = tid; i < d; i += nt) {
      v[i] *= hs;
      atomicMax(reinterpret_cast<int*>(&amax[i / 32]), __float_as_int(fabsf(v[i])));
    }
    __syncthreads();
    for (int i = tid; i < d; i += nt) v[i] = fp4_roundtrip_value(v[i], amax[i / 32]);
    __syncthreads();
  }
}

}  // namespace cuda_detail
}  // namespace ds4
