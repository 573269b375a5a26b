// The integer tensor-core kernels' activation format (cuda/expert_matvec.h,
// cuda/expert_matmul.h): one 256-column block of x, 8 values per lane of a warp, as
// x_e ~ s a_e with s = 2^(E - 30), max |x| < 2^E over the block (E at least -96), and
// a_e = round(x_e / s) split into four signed base-256 digits, the low three in
// [-128, 128) and the top one the rest. A block holding a NaN or an infinity gets all
// digits 0 and a NaN scale, so every product that reads it is NaN.
#pragma once

#include <cstdint>

#include "cuda/device_math.cuh"

namespace ds4::cuda_detail {

struct DigitBlock {
  uint32_t lo[4];  // digit plane L of values 0..3 of the lane, one byte each
  uint32_t hi[4];  // digit plane L of values 4..7
  int e;           // E
  bool bad;        // the block holds a NaN or an infinity
  __device__ float scale() const { return bad ? __int_as_float(0x7fc00000) : ldexpf(1.0f, e - 30); }
};

// Every lane of the warp calls it with its 8 values of the block. DIGITS = 3 (the
// three-digit variant of cuda/q8_matmul.h): s = 2^(E - 22), |a_e| <= 2^22, digits d0, d1
// in [-128, 128) and d2 the rest (|d2| <= 65), digit plane 3 left zero; DigitBlock::e is
// then E + 8, so that scale() still gives s.
template <int DIGITS = 4>
__device__ __forceinline__ DigitBlock split_block_digits(const float (&v)[8]) {
  static_assert(DIGITS == 3 || DIGITS == 4, "three or four digits");
  float m = 0.0f;
  bool bad = false;
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    const float a = fabsf(v[i]);
    bad |= !(a <= 3.402823466e38f);  // NaN or infinite
    m = fmaxf(m, a);
  }
  m = warp_max(m);
  DigitBlock d;
  d.bad = __any_sync(0xffffffffu, bad);
  int e = 0;
  frexpf(m, &e);  // m = f 2^e, f in [0.5, 1) (e = 0 for m = 0)
  e = max(e, -96);
  d.e = e + 8 * (4 - DIGITS);
  const float inv = ldexpf(1.0f, 8 * DIGITS - 2 - e);
#pragma unroll
  for (int L = 0; L < 4; ++L) d.lo[L] = d.hi[L] = 0;
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    int a = d.bad ? 0 : __float2int_rn(v[i] * inv);
#pragma unroll
    for (int L = 0; L < DIGITS; ++L) {
      const int digit = L < DIGITS - 1 ? (a << 24) >> 24 : a;
      if (L < DIGITS - 1) a = (a - digit) >> 8;
      const uint32_t byte = static_cast<uint32_t>(digit) & 0xFFu;
      if (i < 4) {
        d.lo[L] |= byte << (8 * i);
      } else {
        d.hi[L] |= byte << (8 * (i - 4));
      }
    }
  }
  return d;
}

}  // namespace ds4::cuda_detail
