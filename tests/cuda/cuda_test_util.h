// Shared helpers of the GPU tests (tests/cuda/*_test.cu): the visible skip when no
// GPU is present (exit code 77, which ctest reports as skipped), a failure counter,
// random valid quant blocks on the host, device buffers, and launch timing.
#pragma once

#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "format/quant.h"
#include "format/quant_blocks.h"

namespace ds4::test {

inline int g_failures = 0;
inline int g_checks = 0;

inline void check(bool ok, const std::string& what) {
  ++g_checks;
  if (!ok) {
    ++g_failures;
    if (g_failures <= 20) std::printf("FAIL: %s\n", what.c_str());
  }
}

// Microseconds per call of `launch` (kernel launches on the legacy stream): one warm-up
// call, then `reps` calls between two events.
template <typename F>
double time_us(F&& launch, int reps) {
  launch();  // warm-up
  cudaDeviceSynchronize();
  cudaEvent_t a, b;
  cudaEventCreate(&a);
  cudaEventCreate(&b);
  cudaEventRecord(a);
  for (int i = 0; i < reps; ++i) launch();
  cudaEventRecord(b);
  cudaEventSynchronize(b);
  float ms = 0;
  cudaEventElapsedTime(&ms, a, b);
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  return ms * 1000.0 / reps;
}

// Returns false (after printing why) when the test cannot run here.
inline bool gpu_present() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
    std::printf("SKIP: no CUDA GPU present (this test needs one)\n");
    return false;
  }
  cudaDeviceProp prop;
  cudaGetDeviceProperties(&prop, 0);
  std::printf("GPU: %s (sm_%d%d, %d SMs, %.1f GiB)\n", prop.name, prop.major, prop.minor,
              prop.multiProcessorCount, prop.totalGlobalMem / (1024.0 * 1024.0 * 1024.0));
  return true;
}

inline int finish(const char* name) {
  std::printf("%s: %d checks, %d failures -> %s\n", name, g_checks, g_failures,
              g_failures ? "FAIL" : "PASS");
  return g_failures ? 1 : 0;
}

// Random valid blocks of `type` for rows x cols elements (cols a multiple of the block).
inline std::vector<uint8_t> random_blocks(GgmlType type, int64_t rows, int64_t cols, std::mt19937& rng) {
  const size_t bytes = ggml_row_bytes(type, cols) * rows;
  std::vector<uint8_t> out(bytes);
  std::uniform_int_distribution<int> byte(0, 255);
  for (auto& b : out) b = static_cast<uint8_t>(byte(rng));
  std::uniform_real_distribution<float> u(0.5f, 1.5f);
  const float s = 1.0f / std::sqrt(static_cast<float>(cols));
  auto put_half = [&](uint8_t* p, float v) {
    const uint16_t h = f32_to_fp16(v);
    std::memcpy(p, &h, 2);
  };
  const int64_t elems = rows * cols;
  switch (type) {
    case GgmlType::F32: {
      std::uniform_real_distribution<float> v(-2.0f * s, 2.0f * s);
      float* f = reinterpret_cast<float*>(out.data());
      for (int64_t i = 0; i < elems; ++i) f[i] = v(rng);
      break;
    }
    case GgmlType::F16: {
      std::uniform_real_distribution<float> v(-2.0f * s, 2.0f * s);
      for (int64_t i = 0; i < elems; ++i) put_half(out.data() + 2 * i, v(rng));
      break;
    }
    case GgmlType::Q8_0:
      for (int64_t b = 0; b < elems / 32; ++b) put_half(out.data() + b * 34, u(rng) * s / 64.0f);
      break;
    case GgmlType::IQ2_XXS:
      for (int64_t b = 0; b < elems / 256; ++b) put_half(out.data() + b * 66, u(rng) * s / 50.0f);
      break;
    case GgmlType::Q2_K:
      for (int64_t b = 0; b < elems / 256; ++b) {
        put_half(out.data() + b * 84 + 80, u(rng) * s / 10.0f);
        put_half(out.data() + b * 84 + 82, u(rng) * s / 20.0f);
      }
      break;
    case GgmlType::Q4_K:
      for (int64_t b = 0; b < elems / 256; ++b) {
        put_half(out.data() + b * 144, u(rng) * s / 60.0f);
        put_half(out.data() + b * 144 + 2, u(rng) * s / 120.0f);
      }
      break;
    default:
      break;
  }
  return out;
}

inline std::vector<float> random_floats(size_t n, std::mt19937& rng, float lo = -1.0f, float hi = 1.0f) {
  std::uniform_real_distribution<float> d(lo, hi);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

// A device copy of a host vector, freed at scope exit.
template <typename T>
class DeviceVec {
 public:
  explicit DeviceVec(size_t n) : n_(n) { cudaMalloc(&p_, sizeof(T) * (n ? n : 1)); cudaMemset(p_, 0, sizeof(T) * (n ? n : 1)); }
  explicit DeviceVec(const std::vector<T>& h) : DeviceVec(h.size()) {
    cudaMemcpy(p_, h.data(), sizeof(T) * h.size(), cudaMemcpyHostToDevice);
  }
  ~DeviceVec() { cudaFree(p_); }
  DeviceVec(const DeviceVec&) = delete;
  DeviceVec& operator=(const DeviceVec&) = delete;
  T* get() const { return p_; }
  std::vector<T> host() const {
    std::vector<T> h(n_);
    cudaMemcpy(h.data(), p_, sizeof(T) * n_, cudaMemcpyDeviceToHost);
    return h;
  }

 private:
  T* p_ = nullptr;
  size_t n_;
};

}  // namespace ds4::test
