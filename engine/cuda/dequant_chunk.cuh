// Device-side dequantization of one 32-element chunk of a weight row, per type
// (layouts in cuda/device_matrix.h). Every kernel that reads weights in registers
// uses these, so each format's bit layout lives in one place on the GPU side.
//
// deq_chunk<T>(row, scales, s, grid, w) fills w[0..32) with the row's elements
// 32*s .. 32*s+31 divided by the returned factor (the true value is w[k] * factor).
// `grid` is the IQ2_XXS codebook (shared memory) for IQ2_XXS, unused otherwise.
#pragma once

#include <cuda_fp16.h>

#include <cstdint>

#include "format/ggml_type.h"

namespace ds4 {
namespace cuda_detail {

__device__ __forceinline__ float half_bits_to_float(uint16_t bits) {
  return __half2float(__ushort_as_half(bits));
}

__device__ __forceinline__ int4 load_streaming(const void* p) {
  return __ldg(reinterpret_cast<const int4*>(p));
}

template <GgmlType T>
__device__ __forceinline__ float deq_chunk(const uint8_t* row, const uint16_t* scales, int s,
                                           const uint64_t* grid, float* w);

template <>
__device__ __forceinline__ float deq_chunk<GgmlType::F32>(const uint8_t* row, const uint16_t*,
                                                          int s, const uint64_t*, float* w) {
  const float4* p = reinterpret_cast<const float4*>(row) + s * 8;
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    const float4 v = __ldg(p + i);
    w[4 * i] = v.x; w[4 * i + 1] = v.y; w[4 * i + 2] = v.z; w[4 * i + 3] = v.w;
  }
  return 1.0f;
}

template <>
__device__ __forceinline__ float deq_chunk<GgmlType::F16>(const uint8_t* row, const uint16_t*,
                                                          int s, const uint64_t*, float* w) {
  const uint8_t* p = row + s * 64;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int4 v = load_streaming(p + 16 * i);
    const __half2* h = reinterpret_cast<const __half2*>(&v);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const float2 f = __half22float2(h[j]);
      w[8 * i + 2 * j] = f.x;
      w[8 * i + 2 * j + 1] = f.y;
    }
  }
  return 1.0f;
}

template <>
__device__ __forceinline__ float deq_chunk<GgmlType::Q8_0>(const uint8_t* row,
                                                           const uint16_t* scales, int s,
                                                           const uint64_t*, float* w) {
  const int4 a = load_streaming(row + s * 32);
  const int4 b = load_streaming(row + s * 32 + 16);
  const int v[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
#pragma unroll
  for (int i = 0; i < 8; ++i) {
#pragma unroll
    for (int j = 0; j < 4; ++j) w[4 * i + j] = static_cast<float>(static_cast<int8_t>(v[i] >> (8 * j)));
  }
  return half_bits_to_float(__ldg(scales + s));
}

template <>
__device__ __forceinline__ float deq_chunk<GgmlType::IQ2_XXS>(const uint8_t* row,
                                                              const uint16_t* scales, int s,
                                                              const uint64_t* grid, float* w) {
  const int block = s >> 3;
  const int sub = s & 7;
  const uint2 words = __ldg(reinterpret_cast<const uint2*>(row + block * 64 + sub * 8));
  const float d = half_bits_to_float(__ldg(scales + block));
  const uint32_t a = words.x;
  const uint32_t b = words.y;
  const float factor = d * (0.5f + static_cast<float>(b >> 28)) * 0.25f;
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    const uint64_t g = grid[(a >> (8 * k)) & 255];
    const uint32_t sign_index = (b >> (7 * k)) & 127;
    const uint32_t mask = sign_index | ((__popc(sign_index) & 1u) << 7);
#pragma unroll
    for (int m = 0; m < 8; ++m) {
      const float mag = static_cast<float>((g >> (8 * m)) & 255);
      w[8 * k + m] = ((mask >> m) & 1u) ? -mag : mag;
    }
  }
  return factor;
}

template <>
__device__ __forceinline__ float deq_chunk<GgmlType::Q2_K>(const uint8_t* row, const uint16_t*,
                                                           int s, const uint64_t*, float* w) {
  const uint8_t* blk = row + (s >> 3) * 84;
  const int within = s & 7;
  const int hh = within >> 2;
  const int jj = within & 3;
  const uint32_t* qs = reinterpret_cast<const uint32_t*>(blk + 16 + 32 * hh);
  const uint32_t dd = __ldg(reinterpret_cast<const uint32_t*>(blk + 80));
  const float d = half_bits_to_float(static_cast<uint16_t>(dd & 0xFFFF));
  const float dmin = half_bits_to_float(static_cast<uint16_t>(dd >> 16));
  const uint32_t sc_pair = __ldg(reinterpret_cast<const uint16_t*>(blk + 8 * hh + 2 * jj));
  const uint32_t sc0 = sc_pair & 0xFF;
  const uint32_t sc1 = sc_pair >> 8;
  const float scale0 = d * static_cast<float>(sc0 & 15), min0 = dmin * static_cast<float>(sc0 >> 4);
  const float scale1 = d * static_cast<float>(sc1 & 15), min1 = dmin * static_cast<float>(sc1 >> 4);
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    const uint32_t q = __ldg(qs + i);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int l = 4 * i + j;
      const float c = static_cast<float>((q >> (8 * j + 2 * jj)) & 3);
      w[l] = l < 16 ? scale0 * c - min0 : scale1 * c - min1;
    }
  }
  return 1.0f;
}

__device__ __forceinline__ void q4k_scale_min(int j, const uint8_t* q, uint32_t* sc, uint32_t* m) {
  if (j < 4) {
    *sc = q[j] & 63;
    *m = q[j + 4] & 63;
  } else {
    *sc = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
    *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
  }
}

template <>
__device__ __forceinline__ float deq_chunk<GgmlType::Q4_K>(const uint8_t* row, const uint16_t*,
                                                           int s, const uint64_t*, float* w) {
  const uint8_t* blk = row + (s >> 3) * 144;
  const int j = s & 7;
  const uint32_t dd = __ldg(reinterpret_cast<const uint32_t*>(blk));
  const float d = half_bits_to_float(static_cast<uint16_t>(dd & 0xFFFF));
  const float dmin = half_bits_to_float(static_cast<uint16_t>(dd >> 16));
  uint8_t scales[12];
#pragma unroll
  for (int i = 0; i < 3; ++i) {
    const uint32_t v = __ldg(reinterpret_cast<const uint32_t*>(blk + 4 + 4 * i));
    scales[4 * i] = v & 0xFF; scales[4 * i + 1] = (v >> 8) & 0xFF;
    scales[4 * i + 2] = (v >> 16) & 0xFF; scales[4 * i + 3] = v >> 24;
  }
  uint32_t sc, m;
  q4k_scale_min(j, scales, &sc, &m);
  const float scale = d * static_cast<float>(sc);
  const float min = dmin * static_cast<float>(m);
  const int shift = 4 * (j & 1);
  const int4 a = load_streaming(blk + 16 + 32 * (j >> 1));
  const int4 b = load_streaming(blk + 32 + 32 * (j >> 1));
  const int v[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
#pragma unroll
  for (int i = 0; i < 8; ++i) {
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      w[4 * i + k] = scale * static_cast<float>((v[i] >> (8 * k + shift)) & 15) - min;
    }
  }
  return 1.0f;
}

}  // namespace cuda_detail
}  // namespace ds4
