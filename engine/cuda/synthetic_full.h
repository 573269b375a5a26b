// `ds4-bench --synthetic full`: the CUDA backend over weights of the real DeepSeek V4
// Flash shapes and tensor types (spec/MODEL.md §1.4, about 81 GiB) filled on the GPU
// with random valid blocks; no file is read.
//
// Thread-safety: the returned target is used by one thread at a time.
#pragma once

#include "common/status.h"
#include "runtime/backend.h"
#include "runtime/bench.h"

namespace ds4 {

Result<BenchTarget> make_cuda_synthetic_full_target(const BackendOptions& options);

}  // namespace ds4
