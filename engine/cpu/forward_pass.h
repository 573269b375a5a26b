// One forward() of the CPU backend over a validated batch: embedding, then every
// block layer-major (attention half, FFN half, each wrapped in hyper-connections),
// then the final head for the tokens that want logits (spec/MODEL.md §2.2-§2.8).
//
// Thread-safety: one ForwardPass runs at a time per backend; it uses the pool.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "cpu/cpu_backend.h"
#include "cpu/rope.h"
#include "cpu/sequence_state.h"
#include "cpu/weight_cache.h"
#include "model/model.h"
#include "runtime/thread_pool.h"

namespace ds4::cpu {

// Tokens of one sequence inside the batch: consecutive positions start .. start+n-1.
struct SequenceSlice {
  SequenceState* state = nullptr;
  int32_t start = 0;
  std::vector<int32_t> tokens;  // batch indices in position order
};

struct ForwardContext {
  const Model& model;
  ThreadPool& pool;
  bool qat = true;
  const CpuTrace* trace = nullptr;
  const Rope& rope_plain;
  const Rope& rope_yarn;
  const WeightCache& cache;
};

// Runs the batch; `slices` cover every token. States are updated (rows, rings) but
// their lengths are left to the caller.
void run_forward(const ForwardContext& ctx, std::span<const BatchToken> batch,
                 std::vector<SequenceSlice>& slices, ForwardOutput* out);

// Runs the MTP block (its state is the last entry of SequenceState::layers) over
// `batch`, whose token t reads the HC state hidden[t].
void run_mtp(const ForwardContext& ctx, std::span<const BatchToken> batch, const std::vector<const float*>& hidden,
             std::vector<SequenceSlice>& slices, ForwardOutput* out);

}  // namespace ds4::cpu
