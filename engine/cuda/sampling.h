// Sampling on the GPU: greedy argmax over the logits (ties to the lower token id),
// written to device memory so greedy decode needs no vocabulary-sized copy.
//
// Thread-safety: launches on the caller's stream; no host state.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "common/status.h"

namespace ds4 {

Status launch_argmax(const float* logits, int n, int32_t* out_index, cudaStream_t stream);

}  // namespace ds4
