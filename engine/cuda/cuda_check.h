// Turning CUDA runtime errors into Status values that name the failed operation.
//
// Thread-safety: stateless helpers.
#pragma once

#include <cuda_runtime.h>

#include <string>

#include "common/status.h"

namespace ds4 {

inline Status cuda_status(cudaError_t err, const char* what) {
  if (err == cudaSuccess) return Status::Ok();
  return Status::Error(std::string("CUDA: ") + what + ": " + cudaGetErrorName(err) + " (" +
                       cudaGetErrorString(err) + ")");
}

}  // namespace ds4

// Returns a Status naming the call when a CUDA runtime call fails.
#define DS4_CUDA_TRY(call) DS4_RETURN_IF_ERROR(::ds4::cuda_status((call), #call))
