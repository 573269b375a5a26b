// How many blocks of a kernel fit on one multiprocessor at once, and how many
// multiprocessors the current device has: what one-wave grids (every block resident,
// no second mostly idle wave) are sized from. The occupancy query is a host computation
// worth skipping on every launch, so results are cached per (device, kernel, block
// threads, dynamic shared bytes).
//
// Thread-safety: safe from any thread (the cache is guarded by a mutex).
#pragma once

#include <cstddef>

#include "common/status.h"

namespace ds4 {

struct KernelResidency {
  int blocks_per_sm = 1;
  int multiprocessors = 1;
};

// Errors: a failed CUDA query, or a block that does not fit on a multiprocessor at all.
Result<KernelResidency> kernel_residency(const void* kernel, int threads, size_t shared);

}  // namespace ds4
