#include "cuda/l2_prefetch.h"

#include <algorithm>

#include "cuda/cuda_check.h"
#include "cuda/launch.h"

namespace ds4 {

namespace {

constexpr int kThreads = 128;
constexpr int kMaxBlocks = 64;
constexpr int kMaxAll = L2PrefetchLaunch::kMaxRanges + 2 * L2PrefetchLaunch::kMaxIds * L2PrefetchLaunch::kMaxExpertMatrices;

// One stacked expert matrix: matrix e's data at data + e * data_stride (data_bytes
// long), its scales at scales + e * scales_stride (scales_bytes long; 0 without).
struct ExpertSlices {
  uintptr_t data = 0, scales = 0;
  int64_t data_stride = 0, data_bytes = 0, scales_stride = 0, scales_bytes = 0;
  int64_t count = 0;
};

struct Params {
  uintptr_t begin[L2PrefetchLaunch::kMaxRanges];
  int64_t bytes[L2PrefetchLaunch::kMaxRanges];
  int n_ranges;
  ExpertSlices experts[L2PrefetchLaunch::kMaxExpertMatrices];
  int n_experts;
  const int32_t* ids;
  int n_ids;
  int chunk;
};

__device__ __forceinline__ void bulk_prefetch_l2(uintptr_t p, uint32_t bytes) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(p), "r"(bytes) : "memory");
#endif
}

// Every thread of the grid takes every (blocks x threads)-th chunk of each range.
__global__ void __launch_bounds__(kThreads) l2_prefetch_kernel(Params p) {
  __shared__ uintptr_t begin[kMaxAll];
  __shared__ int64_t bytes[kMaxAll];
  __shared__ int n;
  pdl_wait();  // the expert ids come from an earlier kernel
  if (threadIdx.x == 0) {
    int k = 0;
    for (int r = 0; r < p.n_ranges; ++r) {
      begin[k] = p.begin[r];
      bytes[k++] = p.bytes[r];
    }
    for (int i = 0; i < p.n_ids; ++i) {
      const int32_t e = p.ids[i];
      for (int m = 0; m < p.n_experts; ++m) {
        const ExpertSlices& s = p.experts[m];
        if (e < 0 || e >= s.count) continue;
        begin[k] = s.data + static_cast<uintptr_t>(e * s.data_stride);
        bytes[k++] = s.data_bytes;
        if (s.scales_bytes > 0) {
          begin[k] = s.scales + static_cast<uintptr_t>(e * s.scales_stride);
          bytes[k++] = s.scales_bytes;
        }
      }
    }
    n = k;
  }
  __syncthreads();
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  const int64_t me = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  for (int r = 0; r < n; ++r) {
    // Whole 16-byte units around the range (allocations are at least 256-byte aligned
    // and sized, so the rounding stays inside the allocation).
    const uintptr_t lo = begin[r] & ~uintptr_t{15};
    const uintptr_t hi = (begin[r] + static_cast<uintptr_t>(bytes[r]) + 15) & ~uintptr_t{15};
    const int64_t chunks = (static_cast<int64_t>(hi - lo) + p.chunk - 1) / p.chunk;
    for (int64_t c = me; c < chunks; c += stride) {
      const uintptr_t a = lo + static_cast<uintptr_t>(c * p.chunk);
      bulk_prefetch_l2(a, static_cast<uint32_t>(std::min<uintptr_t>(p.chunk, hi - a)));
    }
  }
}

}  // namespace

void L2PrefetchLaunch::add_matrix(const DeviceMatrix& m) {
  if (m.empty() || n_ranges + 2 > kMaxRanges) {
    n_ranges = kMaxRanges + 1;  // refused by the launch
    return;
  }
  ranges[n_ranges++] = {m.data, static_cast<int64_t>(m.data_bytes())};
  if (m.scales != nullptr && m.scale_bytes() > 0) ranges[n_ranges++] = {m.scales, static_cast<int64_t>(m.scale_bytes())};
}

bool l2_prefetch_supported() {
  static const bool supported = [] {
    int device = 0, major = 0;
    if (cudaGetDevice(&device) != cudaSuccess) return false;
    if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess) return false;
    return major >= 9;
  }();
  return supported;
}

Status launch_l2_prefetch(const L2PrefetchLaunch& l, cudaStream_t stream) {
  if (l.n_ranges < 0 || l.n_ranges > L2PrefetchLaunch::kMaxRanges) {
    return Status::Error("L2 prefetch: more than " + std::to_string(L2PrefetchLaunch::kMaxRanges) + " ranges");
  }
  if (l.n_ids < 0 || l.n_ids > L2PrefetchLaunch::kMaxIds || l.n_experts < 0 ||
      l.n_experts > L2PrefetchLaunch::kMaxExpertMatrices || (l.n_ids > 0 && l.ids == nullptr)) {
    return Status::Error("L2 prefetch: " + std::to_string(l.n_ids) + " expert ids over " +
                         std::to_string(l.n_experts) + " matrices (at most " +
                         std::to_string(L2PrefetchLaunch::kMaxIds) + " and " +
                         std::to_string(L2PrefetchLaunch::kMaxExpertMatrices) + ", ids on the device)");
  }
  if (l.chunk_bytes <= 0 || l.chunk_bytes % 16 != 0) {
    return Status::Error("L2 prefetch: chunk of " + std::to_string(l.chunk_bytes) + " bytes (a positive multiple of 16)");
  }
  if (!l2_prefetch_supported()) return Status::Ok();
  Params p = {};
  int64_t total = 0;
  for (int r = 0; r < l.n_ranges; ++r) {
    if (l.ranges[r].p == nullptr || l.ranges[r].bytes <= 0) continue;
    p.begin[p.n_ranges] = reinterpret_cast<uintptr_t>(l.ranges[r].p);
    p.bytes[p.n_ranges++] = l.ranges[r].bytes;
    total += l.ranges[r].bytes;
  }
  if (l.n_ids > 0) {
    for (int m = 0; m < l.n_experts; ++m) {
      const DeviceMatrix& d = *l.experts[m];
      if (d.empty()) continue;
      ExpertSlices& s = p.experts[p.n_experts++];
      s.count = d.count;
      s.data = reinterpret_cast<uintptr_t>(d.data);
      s.data_bytes = static_cast<int64_t>(d.data_row_bytes()) * d.rows;
      s.data_stride = s.data_bytes;
      if (d.scales != nullptr && d.scales_per_row() > 0) {
        s.scales = reinterpret_cast<uintptr_t>(d.scales);
        s.scales_bytes = 2 * d.scales_per_row() * d.rows;
        s.scales_stride = s.scales_bytes;
      }
      total += l.n_ids * (s.data_bytes + s.scales_bytes);
    }
    p.ids = l.ids;
    p.n_ids = l.n_ids;
  }
  if (p.n_ranges == 0 && p.n_experts == 0) return Status::Ok();
  p.chunk = l.chunk_bytes;
  const int64_t chunks = (total + p.chunk - 1) / p.chunk;
  const int blocks = static_cast<int>(std::clamp<int64_t>((chunks + kThreads - 1) / kThreads, 1, kMaxBlocks));
  l2_prefetch_kernel<<<blocks, kThreads, 0, stream>>>(p);
  return cuda_status(cudaGetLastError(), "launching the L2 prefetch");
}

}  // namespace ds4
