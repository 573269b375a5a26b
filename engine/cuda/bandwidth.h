// Measures the GPU's memory read bandwidth in the same run as a benchmark, so that
// speeds can be stated as a fraction of their limit (shared/PERF.md): a sum over a
// buffer several times larger than the L2 cache, best of several repetitions.
//
// Thread-safety: uses its own stream and allocation; call from one thread.
#pragma once

#include <cstddef>

#include "common/status.h"

namespace ds4 {

// Bytes read per second (decimal GB/s = result / 1e9).
Result<double> measure_read_bandwidth(size_t bytes, int repetitions);

}  // namespace ds4
