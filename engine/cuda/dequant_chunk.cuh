// Device-side dequantization of 32-element chunks of a weight row, per type (layouts
// in cuda/device_matrix.h). Every kernel that reads weights in registers uses these,
// so each format's bit layout lives in one place on the GPU side.
//
// Split in two steps so kernels can issue several chunks' loads before using any:
//   Chunk<T>::Raw r = Chunk<T>::load(row, scales, s);      // global loads only
//   float f = Chunk<T>::dequant(r, grid, w);                // w[k] * f = element 32*s + k
// `grid` is the IQ2_XXS codebook (256 x 8 bytes) followed by its 128 sign masks
// expanded to bytes, in shared memory; unused by the other types.
//
// The formats with small integer weights (IQ2_XXS, Q2_K, Q4_K) can also hand a chunk
// over as packed int8 (PackedChunk, four weights per word) for dot products with int8
// activations (dp4a): the opt-in 8-bit activation path of cuda/matvec.h.
//
// Small integers become floats through the exponent trick (byte b placed under the
// exponent of 2^23, then 2^23 subtracted: exact), which runs at full rate where the
// integer-to-float conversion instruction runs at a quarter of it.
#pragma once

#include <cuda_fp16.h>

#include <cstdint>

#include "format/ggml_type.h"

namespace ds4 {
namespace cuda_detail {

__device__ __forceinline__ float half_bits_to_float(uint16_t bits) {
  return __half2float(__ushort_as_half(bits));
}

__device__ __forceinline__ int4 load16(const void* p) { return __ldg(reinterpret_cast<const int4*>(p)); }

// Byte j (0..3) of `word` as a float in [0, 255], exactly.
__device__ __forceinline__ float byte_to_float(uint32_t word, int j) {
  return __int_as_float(__byte_perm(word, 0x4B000000u, j | (4 << 4) | (5 << 8) | (7 << 12))) - 8388608.0f;
}

template <GgmlType T>
struct Chunk;

// One chunk's weights as int8, four per word (word i = elements 4i..4i+3), and the
// factors that turn int8 dot products into the chunk's contribution. With x quantized
// per chunk as x_k = dx * q_k, s_lo = dx * sum(q_0..15), s_hi = dx * sum(q_16..31):
//   sum_k w_k x_k = dx * (a0 * dot(w[0..4), q[0..16)) + a1 * dot(w[4..8), q[16..32)))
//                   - (m0 * s_lo + m1 * s_hi)
struct PackedChunk {
  int w[8];
  float a0, a1, m0, m1;
};

// True for the types whose Chunk<T> has pack().
template <GgmlType T>
constexpr bool kPacksInt8 = T == GgmlType::IQ2_XXS || T == GgmlType::Q2_K || T == GgmlType::Q4_K;

template <>
struct Chunk<GgmlType::F32> {
  struct Raw { float4 v[8]; };
  static __device__ __forceinline__ Raw load(const uint8_t* row, const uint16_t*, int s) {
    Raw r;
    const float4* p = reinterpret_cast<const float4*>(row) + s * 8;
#pragma unroll
    for (int i = 0; i < 8; ++i) r.v[i] = __ldg(p + i);
    return r;
  }
  static __device__ __forceinline__ float dequant(const Raw& r, const uint64_t*, float* w) {
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      w[4 * i] = r.v[i].x; w[4 * i + 1] = r.v[i].y; w[4 * i + 2] = r.v[i].z; w[4 * i + 3] = r.v[i].w;
    }
    return 1.0f;
  }
};

template <>
struct Chunk<GgmlType::F16> {
  struct Raw { int4 v[4]; };
  static __device__ __forceinline__ Raw load(const uint8_t* row, const uint16_t*, int s) {
    Raw r;
#pragma unroll
    for (int i = 0; i < 4; ++i) r.v[i] = load16(row + s * 64 + 16 * i);
    return r;
  }
  static __device__ __forceinline__ float dequant(const Raw& r, const uint64_t*, float* w) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const __half2* h = reinterpret_cast<const __half2*>(&r.v[i]);
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const float2 f = __half22float2(h[j]);
        w[8 * i + 2 * j] = f.x;
        w[8 * i + 2 * j + 1] = f.y;
      }
    }
    return 1.0f;
  }
};

template <>
struct Chunk<GgmlType::Q8_0> {
  struct Raw { int4 a, b; uint16_t d; };
  static __device__ __forceinline__ Raw load(const uint8_t* row, const uint16_t* scales, int s) {
    return {load16(row + s * 32), load16(row + s * 32 + 16), __ldg(scales + s)};
  }
  static __device__ __forceinline__ float dequant(const Raw& r, const uint64_t*, float* w) {
    const int v[8] = {r.a.x, r.a.y, r.a.z, r.a.w, r.b.x, r.b.y, r.b.z, r.b.w};
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const uint32_t biased = static_cast<uint32_t>(v[i]) ^ 0x80808080u;  // int8 + 128
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        w[4 * i + j] = __int_as_float(__byte_perm(biased, 0x4B000000u, j | (4 << 4) | (5 << 8) | (7 << 12))) -
                       8388736.0f;  // 2^23 + 128
      }
    }
    return half_bits_to_float(r.d);
  }
};

template <>
struct Chunk<GgmlType::IQ2_XXS> {
  struct Raw { uint2 q; uint16_t d; };
  static __device__ __forceinline__ Raw load(const uint8_t* row, const uint16_t* scales, int s) {
    const int block = s >> 3, sub = s & 7;
    return {__ldg(reinterpret_cast<const uint2*>(row + block * 64 + sub * 8)), __ldg(scales + block)};
  }
  // grid[0..256): codebook; grid[256..384): sign masks as bytes (0xFF = negate)
  // for each 7-bit sign index. Signed magnitudes are formed four bytes at a time.
  static __device__ __forceinline__ float dequant(const Raw& r, const uint64_t* grid, float* w) {
    const uint32_t a = r.q.x, b = r.q.y;
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const uint64_t g = grid[(a >> (8 * k)) & 255];
      const uint64_t sg = grid[256 + ((b >> (7 * k)) & 127)];
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const uint32_t mag = static_cast<uint32_t>(g >> (32 * half));
        const uint32_t neg = static_cast<uint32_t>(sg >> (32 * half));
        // mag or -mag as int8, + 128 for the float trick: a negated byte is
        // (mag ^ 0xFF) + 1, which never carries into the next byte (mag > 0), and the
        // + 128 (^ 0x80) commutes with that + 1 here, so one 32-bit add serves four bytes.
        const uint32_t biased = (mag ^ neg ^ 0x80808080u) + (neg & 0x01010101u);
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          w[8 * k + 4 * half + j] =
              __int_as_float(__byte_perm(biased, 0x4B000000u, j | (4 << 4) | (5 << 8) | (7 << 12))) - 8388736.0f;
        }
      }
    }
    return half_bits_to_float(r.d) * (0.5f + static_cast<float>(b >> 28)) * 0.25f;
  }
  // Magnitudes 8..43 from the codebook; a negated byte is (mag ^ 0xFF) + 1, which
  // never carries into the next byte (mag > 0), so one 32-bit add serves four bytes.
  static __device__ __forceinline__ void pack(const Raw& r, const uint64_t* grid, PackedChunk* out) {
    const uint32_t a = r.q.x, b = r.q.y;
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const uint64_t g = grid[(a >> (8 * k)) & 255];
      const uint64_t sg = grid[256 + ((b >> (7 * k)) & 127)];
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const uint32_t mag = static_cast<uint32_t>(g >> (32 * half));
        const uint32_t neg = static_cast<uint32_t>(sg >> (32 * half));
        out->w[2 * k + half] = static_cast<int>((mag ^ neg) + (neg & 0x01010101u));
      }
    }
    const float f = half_bits_to_float(r.d) * (0.5f + static_cast<float>(b >> 28)) * 0.25f;
    out->a0 = out->a1 = f;
    out->m0 = out->m1 = 0.0f;
  }
};

// The IQ2_XXS tables in a compact form of 32-bit words (1.5 KiB, half the shared-memory
// traffic of the 64-bit form above, and no per-byte sign arithmetic): sel[0..256) holds,
// per codebook entry, one 4-bit byte selector per element (0, 1, 2 for the magnitudes
// 8, 25, 43); sel[256..384) holds, per 7-bit sign index, 4 in the nibble of every
// negated element. (code | sign) is then a __byte_perm selector (low 16 bits: elements
// 0..3, high 16 bits: 4..7) over two words holding the three magnitudes and their
// negations, so one byte permutation yields four signed weights.
// The table is read as sel[e * stride]: stride 1 for the table itself; stride 32 for a
// copy per shared-memory bank (entry e of lane L at word 32 e + L, sel pointing at the
// lane's copy), whose lookups never conflict.
constexpr int kIq2xxsCompactWords = 384;
// Signed magnitudes as int8 (pack) and biased by 128 (the float trick of dequant).
constexpr uint32_t kIq2xxsPositive = 0x002B1908u, kIq2xxsNegative = 0x00D5E7F8u;
constexpr uint32_t kIq2xxsPositiveBiased = 0x00AB9988u, kIq2xxsNegativeBiased = 0x00556778u;

struct Iq2xxsCompact {
  // Selector word for the 8 elements of group k (0..3) of a chunk.
  static __device__ __forceinline__ uint32_t selectors(uint2 q, int k, const uint32_t* sel, int stride) {
    return sel[((q.x >> (8 * k)) & 255) * stride] | sel[(256 + ((q.y >> (7 * k)) & 127)) * stride];
  }
  static __device__ __forceinline__ float dequant(const Chunk<GgmlType::IQ2_XXS>::Raw& r, const uint32_t* sel,
                                                  int stride, float* w);
  static __device__ __forceinline__ void pack(const Chunk<GgmlType::IQ2_XXS>::Raw& r, const uint32_t* sel,
                                              int stride, PackedChunk* out);
};

__device__ __forceinline__ float Iq2xxsCompact::dequant(const Chunk<GgmlType::IQ2_XXS>::Raw& r,
                                                        const uint32_t* sel, int stride, float* w) {
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    const uint32_t s = selectors(r.q, k, sel, stride);
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const uint32_t biased = __byte_perm(kIq2xxsPositiveBiased, kIq2xxsNegativeBiased, s >> (16 * half));
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        w[8 * k + 4 * half + j] =
            __int_as_float(__byte_perm(biased, 0x4B000000u, j | (4 << 4) | (5 << 8) | (7 << 12))) - 8388736.0f;
      }
    }
  }
  return half_bits_to_float(r.d) * (0.5f + static_cast<float>(r.q.y >> 28)) * 0.25f;
}

__device__ __forceinline__ void Iq2xxsCompact::pack(const Chunk<GgmlType::IQ2_XXS>::Raw& r, const uint32_t* sel,
                                                    int stride, PackedChunk* out) {
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    const uint32_t s = selectors(r.q, k, sel, stride);
    out->w[2 * k] = static_cast<int>(__byte_perm(kIq2xxsPositive, kIq2xxsNegative, s));
    out->w[2 * k + 1] = static_cast<int>(__byte_perm(kIq2xxsPositive, kIq2xxsNegative, s >> 16));
  }
  const float f = half_bits_to_float(r.d) * (0.5f + static_cast<float>(r.q.y >> 28)) * 0.25f;
  out->a0 = out->a1 = f;
  out->m0 = out->m1 = 0.0f;
}

template <>
struct Chunk<GgmlType::Q2_K> {
  struct Raw { uint32_t q[8]; uint32_t dd; uint32_t sc; int jj; };
  static __device__ __forceinline__ Raw load(const uint8_t* row, const uint16_t*, int s) {
    const uint8_t* blk = row + (s >> 3) * 84;
    const int within = s & 7, hh = within >> 2, jj = within & 3;
    Raw r;
    const uint32_t* qs = reinterpret_cast<const uint32_t*>(blk + 16 + 32 * hh);
#pragma unroll
    for (int i = 0; i < 8; ++i) r.q[i] = __ldg(qs + i);
    r.dd = __ldg(reinterpret_cast<const uint32_t*>(blk + 80));
    r.sc = __ldg(reinterpret_cast<const uint16_t*>(blk + 8 * hh + 2 * jj));
    r.jj = jj;
    return r;
  }
  // The four chunks s..s+3 (s a multiple of 4): one half of a block, whose 32 quant
  // bytes all four read at different shifts. 11 loads instead of 4 x 10.
  static __device__ __forceinline__ void load_group(const uint8_t* row, int s, Raw* r) {
    const uint8_t* blk = row + (s >> 3) * 84;
    const int hh = (s >> 2) & 1;
    const uint32_t* qs = reinterpret_cast<const uint32_t*>(blk + 16 + 32 * hh);
    const uint32_t* sc = reinterpret_cast<const uint32_t*>(blk + 8 * hh);
    uint32_t q[8];
#pragma unroll
    for (int i = 0; i < 8; ++i) q[i] = __ldg(qs + i);
    const uint32_t sc01 = __ldg(sc), sc23 = __ldg(sc + 1);
    const uint32_t dd = __ldg(reinterpret_cast<const uint32_t*>(blk + 80));
#pragma unroll
    for (int u = 0; u < 4; ++u) {
#pragma unroll
      for (int i = 0; i < 8; ++i) r[u].q[i] = q[i];
      r[u].dd = dd;
      r[u].sc = ((u < 2 ? sc01 : sc23) >> (16 * (u & 1))) & 0xFFFF;
      r[u].jj = u;
    }
  }
  static __device__ __forceinline__ float dequant(const Raw& r, const uint64_t*, float* w) {
    const float d = half_bits_to_float(static_cast<uint16_t>(r.dd & 0xFFFF));
    const float dmin = half_bits_to_float(static_cast<uint16_t>(r.dd >> 16));
    const uint32_t sc0 = r.sc & 0xFF, sc1 = r.sc >> 8;
    const float scale0 = d * static_cast<float>(sc0 & 15), min0 = dmin * static_cast<float>(sc0 >> 4);
    const float scale1 = d * static_cast<float>(sc1 & 15), min1 = dmin * static_cast<float>(sc1 >> 4);
    const int shift = 2 * r.jj;
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const uint32_t q = (r.q[i] >> shift) & 0x03030303u;
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int l = 4 * i + j;
        const float c = byte_to_float(q, j);
        w[l] = l < 16 ? fmaf(scale0, c, -min0) : fmaf(scale1, c, -min1);
      }
    }
    return 1.0f;
  }
  static __device__ __forceinline__ void pack(const Raw& r, const uint64_t*, PackedChunk* out) {
    const float d = half_bits_to_float(static_cast<uint16_t>(r.dd & 0xFFFF));
    const float dmin = half_bits_to_float(static_cast<uint16_t>(r.dd >> 16));
    const uint32_t sc0 = r.sc & 0xFF, sc1 = r.sc >> 8;
    const int shift = 2 * r.jj;
#pragma unroll
    for (int i = 0; i < 8; ++i) out->w[i] = static_cast<int>((r.q[i] >> shift) & 0x03030303u);
    out->a0 = d * static_cast<float>(sc0 & 15);
    out->a1 = d * static_cast<float>(sc1 & 15);
    out->m0 = dmin * static_cast<float>(sc0 >> 4);
    out->m1 = dmin * static_cast<float>(sc1 >> 4);
  }
};

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
struct Chunk<GgmlType::Q4_K> {
  struct Raw { int4 a, b; uint32_t dd; uint32_t sc[3]; int j; };
  static __device__ __forceinline__ Raw load(const uint8_t* row, const uint16_t*, int s) {
    const uint8_t* blk = row + (s >> 3) * 144;
    const int j = s & 7;
    Raw r;
    r.dd = __ldg(reinterpret_cast<const uint32_t*>(blk));
#pragma unroll
    for (int i = 0; i < 3; ++i) r.sc[i] = __ldg(reinterpret_cast<const uint32_t*>(blk + 4 + 4 * i));
    r.a = load16(blk + 16 + 32 * (j >> 1));
    r.b = load16(blk + 32 + 32 * (j >> 1));
    r.j = j;
    return r;
  }
  static __device__ __forceinline__ float dequant(const Raw& r, const uint64_t*, float* w) {
    const float d = half_bits_to_float(static_cast<uint16_t>(r.dd & 0xFFFF));
    const float dmin = half_bits_to_float(static_cast<uint16_t>(r.dd >> 16));
    uint8_t scales[12];
#pragma unroll
    for (int i = 0; i < 3; ++i) {
      scales[4 * i] = r.sc[i] & 0xFF; scales[4 * i + 1] = (r.sc[i] >> 8) & 0xFF;
      scales[4 * i + 2] = (r.sc[i] >> 16) & 0xFF; scales[4 * i + 3] = r.sc[i] >> 24;
    }
    uint32_t sc, m;
    q4k_scale_min(r.j, scales, &sc, &m);
    const float scale = d * static_cast<float>(sc);
    const float min = dmin * static_cast<float>(m);
    const int shift = 4 * (r.j & 1);
    const int v[8] = {r.a.x, r.a.y, r.a.z, r.a.w, r.b.x, r.b.y, r.b.z, r.b.w};
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const uint32_t q = (static_cast<uint32_t>(v[i]) >> shift) & 0x0F0F0F0Fu;
#pragma unroll
      for (int k = 0; k < 4; ++k) w[4 * i + k] = scale * byte_to_float(q, k) - min;
    }
    return 1.0f;
  }
  static __device__ __forceinline__ void pack(const Raw& r, const uint64_t*, PackedChunk* out) {
    const float d = half_bits_to_float(static_cast<uint16_t>(r.dd & 0xFFFF));
    const float dmin = half_bits_to_float(static_cast<uint16_t>(r.dd >> 16));
    uint8_t scales[12];
#pragma unroll
    for (int i = 0; i < 3; ++i) {
      scales[4 * i] = r.sc[i] & 0xFF; scales[4 * i + 1] = (r.sc[i] >> 8) & 0xFF;
      scales[4 * i + 2] = (r.sc[i] >> 16) & 0xFF; scales[4 * i + 3] = r.sc[i] >> 24;
    }
    uint32_t sc, m;
    q4k_scale_min(r.j, scales, &sc, &m);
    const int shift = 4 * (r.j & 1);
    const int v[8] = {r.a.x, r.a.y, r.a.z, r.a.w, r.b.x, r.b.y, r.b.z, r.b.w};
#pragma unroll
    for (int i = 0; i < 8; ++i) out->w[i] = static_cast<int>((static_cast<uint32_t>(v[i]) >> shift) & 0x0F0F0F0Fu);
    out->a0 = out->a1 = d * static_cast<float>(sc);
    out->m0 = out->m1 = dmin * static_cast<float>(m);
  }
};

}  // namespace cuda_detail
}  // namespace ds4
