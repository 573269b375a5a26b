// DeviceSequence: the GPU memory of one sequence of CudaForward (spec/MODEL.md
// §2.10): the step block (token, position) that graph-replayed kernels read, the raw
// KV ring of every layer (slot = position mod ring), the compressor and indexer
// per-position state, the emitted compressed and indexer rows, its decode graphs, and
// the MTP block's tagged raw ring (when the model has one).
// Carver: a bump allocator that lays out many device buffers in one allocation.
//
// Thread-safety: owned by one CudaForward; used by one thread at a time.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <utility>
#include <vector>

#include "common/status.h"
#include "cuda/cuda_check.h"

namespace ds4 {

// Device memory of one sequence: the step block, per-layer caches and its graphs.
struct DeviceSequence {
  int32_t max_ctx = 0;
  int32_t* step = nullptr;  // [0] token, [1] position
  void* arena = nullptr;
  float* raw = nullptr;     // [layers][ring][head_dim]
  int ring = 0;
  struct Layer {
    float* comp_rows = nullptr;
    int64_t comp_max = 0;
    float *comp_k = nullptr, *comp_z = nullptr;
    int comp_slots = 0;
    float* index_rows = nullptr;
    float *index_k = nullptr, *index_z = nullptr;
    int index_slots = 0;
    int max_visible = 0;
    const int32_t* raw_tags = nullptr;  // the MTP block: position tag per ring slot (cuda/mtp.h)
  };
  std::vector<Layer> layers;
  float* scores = nullptr;  // indexer workspace [max_ctx/4 + 1]
  cudaGraphExec_t graph = nullptr;
  cudaGraphExec_t graph_advance = nullptr;
  // With an MTP block: layers[n_layers] and the raw ring's layer n_layers are its
  // window, mtp_tags [ring] the position each slot holds (-1: none).
  int32_t* mtp_tags = nullptr;
  cudaGraphExec_t graph_mtp = nullptr;

  ~DeviceSequence() {
    if (graph_mtp) cudaGraphExecDestroy(graph_mtp);
    if (graph) cudaGraphExecDestroy(graph);
    if (graph_advance) cudaGraphExecDestroy(graph_advance);
    if (arena) cudaFree(arena);
  }
};

// Bump allocator over sizes in 4-byte units, every buffer 256-byte aligned.
class Carver {
 public:
  template <typename T>
  void take(T** out, int64_t n) {
    slots_.push_back({reinterpret_cast<void**>(out), offset_});
    offset_ += (std::max<int64_t>(n, 1) * 4 + 255) / 256 * 256;
  }
  Status allocate(void** arena, const char* what) {
    DS4_RETURN_IF_ERROR(cuda_status(cudaMalloc(arena, offset_), what));
    DS4_RETURN_IF_ERROR(cuda_status(cudaMemset(*arena, 0, offset_), what));
    for (auto& s : slots_) *s.first = static_cast<uint8_t*>(*arena) + s.second;
    return Status::Ok();
  }

 private:
  std::vector<std::pair<void**, int64_t>> slots_;
  int64_t offset_ = 0;
};


}  // namespace ds4
