// Device helpers shared by the CUDA forward-pass kernels: block reductions, the
// RoPE tail rotation, and the model's FP8 (E4M3) / FP4 (E2M1) round trips with the
// 128-point Hadamard transform (spec/MODEL.md §2.1.2-§2.1.4). Bit-exact counterparts
// of the CPU reference's routines.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace ds4 {
namespace cuda_detail {

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, off));
  return v;
}

// Sum over the whole block (blockDim.x a multiple of 32, at most 1024). Every
// thread gets the result. `scratch` holds 32 floats.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  v = warp_sum(v);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  const int nw = blockDim.x >> 5;
  float t = lane < nw ? scratch[lane] : 0.0f;
  t = warp_sum(t);
  return t;
}

__device__ __forceinline__ double warp_sum_double(double v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

// Double-precision block sum (RMSNorm sums, as the CPU reference). `scratch`: 32 doubles.
__device__ __forceinline__ double block_sum_double(double v, double* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  v = warp_sum_double(v);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  const int nw = blockDim.x >> 5;
  double t = lane < nw ? scratch[lane] : 0.0;
  return warp_sum_double(t);
}

// 1 / sqrt(sum_sq / n + eps) computed in double, rounded to float.
__device__ __forceinline__ float rms_scale(double sum_sq, int64_t n, float eps) {
  return static_cast<float>(1.0 / sqrt(sum_sq / static_cast<double>(n) + static_cast<double>(eps)));
}

__device__ __forceinline__ float block_max(float v, float* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  v = warp_max(v);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  const int nw = blockDim.x >> 5;
  float t = lane < nw ? scratch[lane] : -INFINITY;
  return warp_max(t);
}

// Rotates pair (a, b) by angle pos * freq (inverse: by the negated angle).
__device__ __forceinline__ void rope_pair(float* a, float* b, float pos, float freq, bool inverse) {
  const float angle = pos * freq;
  double sd, cd;
  sincos(static_cast<double>(angle), &sd, &cd);
  const float c = static_cast<float>(cd);
  const float s = inverse ? -static_cast<float>(sd) : static_cast<float>(sd);
  const float x = *a, y = *b;
  // Separately rounded products (no fused multiply-add), as the CPU reference.
  *a = __fsub_rn(__fmul_rn(x, c), __fmul_rn(y, s));
  *b = __fadd_rn(__fmul_rn(x, s), __fmul_rn(y, c));
}

// Nearest FP8 E4M3FN value (ties to even mantissa) of x already clamped to [-448, 448].
__device__ __forceinline__ float e4m3_round(float x) {
  const float ax = fabsf(x);
  if (ax == 0.0f) return x;
  int e;
  frexpf(ax, &e);                 // ax = m * 2^e, m in [0.5, 1)
  int exp2 = e - 1;               // ax in [2^exp2, 2^(exp2+1))
  if (exp2 < -6) exp2 = -6;       // subnormals share the 2^-6 binade spacing
  const float step = ldexpf(1.0f, exp2 - 3);
  const float q = rintf(ax / step) * step;  // rintf: ties to even
  const float r = fminf(q, 448.0f);
  return copysignf(r, x);
}

// In-place FP8 round trip of n values (n a multiple of 64), blocks of 64.
// Called by 64 consecutive threads per block of values: thread i handles v[i].
// 2^ceil(log2(x)) for x > 0, exactly.
__device__ __forceinline__ float pow2_ceil(float x) {
  int e;
  const float m = frexpf(x, &e);  // x = m * 2^e, m in [0.5, 1)
  return ldexpf(1.0f, m == 0.5f ? e - 1 : e);
}

__device__ __forceinline__ float fp8_roundtrip_value(float v, float amax) {
  const float a = fmaxf(amax, 1e-4f);
  const float s = pow2_ceil(a / 448.0f);
  const float c = fminf(fmaxf(v / s, -448.0f), 448.0f);
  return e4m3_round(c) * s;
}

// Nearest FP4 E2M1 magnitude (ties to the even code index) of |x| <= 6.
__device__ __forceinline__ float e2m1_round(float x) {
  const float ax = fabsf(x);
  float r;
  if (ax <= 0.25f) r = 0.0f;
  else if (ax < 0.75f) r = 0.5f;
  else if (ax <= 1.25f) r = 1.0f;
  else if (ax < 1.75f) r = 1.5f;
  else if (ax <= 2.5f) r = 2.0f;
  else if (ax < 3.5f) r = 3.0f;
  else if (ax <= 5.0f) r = 4.0f;
  else r = 6.0f;
  return copysignf(r, x);
}

__device__ __forceinline__ float fp4_roundtrip_value(float v, float amax) {
  const float a = fmaxf(amax, 6.0f * 1.1754943508222875e-38f);
  const float s = pow2_ceil(a / 6.0f);
  const float c = fminf(fmaxf(v / s, -6.0f), 6.0f);
  return e2m1_round(c) * s;
}

// v[0..P) per lane in; out: the warp's sum of value index (lane >> kReduceScatterShift<P>).
// Each exchange hands half of a lane's values to its partner (reduce-scatter), then lanes
// holding the same index add theirs by a butterfly. The additions follow a fixed
// pattern, so the result does not depend on scheduling. P: a power of two up to 32.
template <int P>
__device__ __forceinline__ float warp_reduce_scatter(float (&v)[P], int lane) {
  static_assert(P >= 1 && P <= 32 && (P & (P - 1)) == 0, "P: a power of two up to 32");
  constexpr int kSteps = P == 1 ? 0 : P == 2 ? 1 : P == 4 ? 2 : P == 8 ? 3 : P == 16 ? 4 : 5;
#pragma unroll
  for (int step = 0; step < kSteps; ++step) {
    const int half = P >> (step + 1);
    const int off = 16 >> step;
    const bool upper = (lane & off) != 0;
#pragma unroll
    for (int i = 0; i < P / 2; ++i) {
      if (i < half) {
        const float send = upper ? v[i] : v[i + half];
        const float keep = upper ? v[i + half] : v[i];
        v[i] = keep + __shfl_xor_sync(0xffffffffu, send, off);
      }
    }
  }
  float s = v[0];
#pragma unroll
  for (int off = 16 >> kSteps; off >= 1; off >>= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
  return s;
}

// The shift that turns a lane into the value index warp_reduce_scatter<P> leaves it.
template <int P>
constexpr int kReduceScatterShift = P == 1 ? 5 : P == 2 ? 4 : P == 4 ? 3 : P == 8 ? 2 : P == 16 ? 1 : 0;

// The MoE SwiGLU with its clamp (spec/MODEL.md §2.6): silu(min(g, limit)) *
// clamp(u, -limit, limit); limit INFINITY: no clamp.
__device__ __forceinline__ float swiglu(float g, float u, float limit) {
  g = fminf(g, limit);
  u = fminf(fmaxf(u, -limit), limit);
  return g / (1.0f + expf(-g)) * u;
}

}  // namespace cuda_detail
}  // namespace ds4
