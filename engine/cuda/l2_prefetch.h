// Weights asked into the L2 cache ahead of the kernels that read them (the decode path).
//
// A one-token decode alternates kernels that stream tens of MB of weights with short
// kernels that read almost nothing (norms, attention at short context, the router, the
// hyper-connection mixing). launch_l2_prefetch() lets a side branch of the decode graph
// ask the next big weights into L2 while such short kernels run, so the memory system
// works during them and the big kernel then reads from L2. It only asks: it writes
// nothing, changes no result and never waits for the data (bulk prefetches,
// cp.async.bulk.prefetch.L2, issued from a few blocks; sm_90 and newer, where the
// launch is a no-op below).
//
// Ranges are either fixed (weights known when the graph is recorded) or expert slices:
// for each of `n_ids` expert ids read on the device from `ids` (the router's
// selection), that expert's matrix in each stacked DeviceMatrix of `experts`
// (data and, for Q8_0 / IQ2_XXS, scales).
//
// Thread-safety: launches on the caller's stream; no host state.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "common/status.h"
#include "cuda/device_matrix.h"

namespace ds4 {

struct L2PrefetchLaunch {
  static constexpr int kMaxRanges = 8;
  static constexpr int kMaxExpertMatrices = 3;
  static constexpr int kMaxIds = 16;
  struct Range {
    const void* p = nullptr;
    int64_t bytes = 0;
  };
  Range ranges[kMaxRanges];
  int n_ranges = 0;
  const int32_t* ids = nullptr;  // device; n_ids expert ids (a negative id is skipped)
  int n_ids = 0;
  const DeviceMatrix* experts[kMaxExpertMatrices] = {};
  int n_experts = 0;
  int chunk_bytes = 16 << 10;  // bytes per prefetch request (a multiple of 16)

  // Adds a matrix's data and scales (every stacked matrix) as fixed ranges.
  void add_matrix(const DeviceMatrix& m);
};

// Whether this device takes bulk L2 prefetches (compute capability 9.0 or newer).
bool l2_prefetch_supported();

// Issues the prefetches (a no-op where unsupported or when there is nothing to ask).
// Errors: more ranges, ids or expert matrices than the limits, a chunk size that is not
// a positive multiple of 16, a failed launch.
Status launch_l2_prefetch(const L2PrefetchLaunch& launch, cudaStream_t stream);

}  // namespace ds4
