// Kernel launches with programmatic dependent launch (PDL) on the decode path.
//
// launch_kernel() launches a kernel like <<<grid, block, shared, stream>>>, adding the
// programmatic-stream-serialization attribute when PDL is enabled: the kernel may then
// start while the kernel before it in the stream (or graph) is still draining. Every
// kernel launched this way must call pdl_wait() before it reads anything an earlier
// kernel wrote and before its first global write, on every path of every thread that
// reads or writes (a thread that returns first must wait first: the completion of a
// grid whose threads all waited implies the completion of the grids before it, which is
// what lets the next kernel rely on a single wait). Before the wait a kernel may read
// immutable data (weights, tables), compute addresses and prefetch its weights.
// pdl_launch_dependents() lets the next kernel's blocks be scheduled early; it is safe
// anywhere, since those blocks still wait in pdl_wait() for this grid's completion and
// memory flush. Both are no-ops on devices below sm_90 and in kernels launched plainly.
//
// The switch is process-wide: on by default where the current device is sm_90 or newer,
// off with the environment variable DS4_CUDA_PDL=0 or set_pdl_enabled(false). Graphs
// keep the launch attributes they were captured with (a CUDA graph records PDL edges
// as programmatic dependencies), so a change applies to graphs recorded afterwards.
// Results do not depend on the switch: only when kernels start changes.
//
// Thread-safety: the switch is an atomic; launches follow the CUDA runtime's rules.
#pragma once

#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <utility>

namespace ds4 {

namespace pdl_detail {
// -1: not decided yet; 0: off; 1: on.
inline std::atomic<int> g_pdl_state{-1};

inline bool device_supports_pdl() {
  int device = 0;
  int major = 0;
  if (cudaGetDevice(&device) != cudaSuccess) return false;
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess) return false;
  return major >= 9;
}

inline bool env_disables_pdl() {
  const char* v = std::getenv("DS4_CUDA_PDL");
  return v != nullptr && (std::strcmp(v, "0") == 0 || std::strcmp(v, "off") == 0 || std::strcmp(v, "false") == 0);
}
}  // namespace pdl_detail

// Whether the current device can take PDL launches (compute capability 9.0 or newer).
inline bool pdl_supported() { return pdl_detail::device_supports_pdl(); }

// Whether launch_kernel() adds the PDL attribute now.
inline bool pdl_enabled() {
  int s = pdl_detail::g_pdl_state.load(std::memory_order_acquire);
  if (s < 0) {
    s = (!pdl_detail::env_disables_pdl() && pdl_detail::device_supports_pdl()) ? 1 : 0;
    int expected = -1;
    if (!pdl_detail::g_pdl_state.compare_exchange_strong(expected, s)) s = expected;
  }
  return s == 1;
}

// Turns PDL launches on (only where the device supports them) or off for the process.
// Returns the state now in force.
inline bool set_pdl_enabled(bool on) {
  const int s = (on && pdl_detail::device_supports_pdl()) ? 1 : 0;
  pdl_detail::g_pdl_state.store(s, std::memory_order_release);
  return s == 1;
}

// Launches `kernel` on `stream` with the PDL attribute when pdl_enabled(), else plainly.
// Errors are returned and, as for any runtime call, also left for cudaGetLastError().
template <typename... KernelArgs, typename... Args>
cudaError_t launch_kernel(void (*kernel)(KernelArgs...), dim3 grid, dim3 block, size_t shared_bytes,
                          cudaStream_t stream, Args&&... args) {
  cudaLaunchAttribute attribute[1];
  attribute[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute[0].val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t config = {};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = shared_bytes;
  config.stream = stream;
  config.attrs = attribute;
  config.numAttrs = pdl_enabled() ? 1 : 0;
  return cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...);
}

#ifdef __CUDACC__
// Waits until every grid this one depends on has completed and its writes are visible.
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

// Lets the grids that depend on this one be scheduled (they still wait in pdl_wait()).
__device__ __forceinline__ void pdl_launch_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// Asks for the 128-byte line holding `p` to be brought into L2 (a hint; no result).
// For immutable data only (weights) when used before pdl_wait().
__device__ __forceinline__ void prefetch_l2(const void* p) {
  asm volatile("prefetch.global.L2 [%0];" ::"l"(p));
}

// Prefetches [p, p + bytes) into L2 with the threads of a block (thread `tid` of
// `threads`), one request per 128-byte line, at most `max_lines` lines in all.
__device__ __forceinline__ void prefetch_l2_range(const void* p, int64_t bytes, int tid, int threads,
                                                  int max_lines) {
  const uintptr_t begin = reinterpret_cast<uintptr_t>(p) & ~uintptr_t{127};
  const uintptr_t end = reinterpret_cast<uintptr_t>(p) + static_cast<uintptr_t>(bytes > 0 ? bytes : 0);
  int64_t lines = static_cast<int64_t>((end - begin + 127) >> 7);
  if (lines > max_lines) lines = max_lines;
  for (int64_t i = tid; i < lines; i += threads) prefetch_l2(reinterpret_cast<const void*>(begin + (i << 7)));
}
#endif  // __CUDACC__

}  // namespace ds4
