// CpuBackend: the f32 reference implementation of Backend (runtime/backend.h), the
// executable form of spec/MODEL.md §2. A forward() call runs a batch of tokens from
// one or more sequences layer-major (every token through block 0, then block 1, ...),
// which is equivalent to running them one by one: chunked prefill and token-by-token
// decode give the same results. Matrix rows (of every expert), tokens, (token, head)
// pairs and indexer rows are spread over a thread pool. With an MTP file loaded
// before creation, forward_mtp runs the MTP block (spec/MODEL.md §2.11) with its
// own raw window per sequence.
//
// CpuTrace exposes intermediate decisions (HC state leaving each block, routing,
// indexer selections) for debugging against the fixtures' decision arrays.
//
// Thread-safety: one thread at a time (Backend contract).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "runtime/backend.h"

namespace ds4 {

class Model;

namespace cpu {

struct CpuTrace {
  // The HC state (hc_mult * dim floats) of `token` leaving block `layer`.
  std::function<void(int32_t layer, const BatchToken& token, const float* hc_state)> block_output;
  // The routed experts and their weights (n_experts_used each).
  std::function<void(int32_t layer, const BatchToken& token, const int32_t* experts, const float* weights)>
      routing;
  // The compressed rows the indexer selected (only when it had to choose).
  std::function<void(int32_t layer, const BatchToken& token, const std::vector<int32_t>& selected)> indexer;
};

class CpuBackend : public Backend {
 public:
  static Result<std::unique_ptr<CpuBackend>> Create(const Model& model, const BackendOptions& options);
  ~CpuBackend() override;

  std::string_view name() const override { return "cpu"; }
  Result<SeqId> new_sequence(int32_t max_ctx) override;
  void free_sequence(SeqId seq) override;
  int32_t sequence_length(SeqId seq) const override;
  Status truncate(SeqId seq, int32_t n) override;
  Status forward(std::span<const BatchToken> batch, ForwardOutput* out) override;
  bool has_mtp() const override;
  Status forward_mtp(std::span<const MtpToken> batch, ForwardOutput* out) override;

  void set_trace(CpuTrace trace);
  int threads() const;

 private:
  struct Impl;
  explicit CpuBackend(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace cpu
}  // namespace ds4
