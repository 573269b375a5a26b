// One-time setup that may first be reached while the calling thread captures a CUDA graph
// (a decode graph recorded on the first token): with_relaxed_capture() runs it with the
// thread's stream-capture mode relaxed, so that its uploads and attribute calls are
// allowed, and restores the mode afterwards.
//
// Thread-safety: the capture mode is per thread; the caller serialises the setup itself
// (std::call_once).
#pragma once

#include <cuda_runtime.h>

#include <utility>

namespace ds4 {

template <typename Body>
auto with_relaxed_capture(Body&& body) {
  cudaStreamCaptureMode mode = cudaStreamCaptureModeRelaxed;
  const bool exchanged = cudaThreadExchangeStreamCaptureMode(&mode) == cudaSuccess;
  auto result = std::forward<Body>(body)();
  if (exchanged) cudaThreadExchangeStreamCaptureMode(&mode);
  return result;
}

}  // namespace ds4
