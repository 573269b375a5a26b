// Backend: runs the DeepSeek V4 Flash forward pass (spec/MODEL.md §2) over a batch
// of tokens that may belong to several sequences, and owns each sequence's state
// (raw KV window, compressor frontiers and emitted rows, indexer rows; MODEL.md §2.10).
//
// One interface, two implementations chosen at run time: the CPU reference
// (cpu/) and CUDA (cuda/). Prefill, MTP verification and batched serving are all
// one forward() call over a batch; decode is a batch of one token per sequence.
//
// Thread-safety: a Backend is used by one thread at a time (the engine worker).
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace ds4 {

class Model;

using SeqId = int32_t;

// One token of a batch. Tokens of the same sequence appear in increasing `pos`
// order and continue that sequence: the first one sits at sequence_length(seq).
struct BatchToken {
  int32_t token = 0;
  SeqId seq = 0;
  int32_t pos = 0;
  bool want_logits = false;  // return this token's logits (prediction of pos + 1)
  bool want_hidden = false;  // return the final HC state leaving the last block (MTP input)
};

// One token for the MTP draft block (spec/MODEL.md §2.11): the block reads the token
// `token` at `pos` together with `hidden`, an HC state (hc_mult * dim floats) produced
// earlier (the main model's state leaving its last block for the token at `pos`, or
// the MTP block's own output state for a further draft). Tokens of one sequence
// appear at consecutive positions; the block keeps its own raw window per sequence.
struct MtpToken {
  int32_t token = 0;
  SeqId seq = 0;
  int32_t pos = 0;
  const float* hidden = nullptr;
  bool want_logits = true;   // draft logits (prediction of pos + 1)
  bool want_hidden = false;  // the MTP block's output HC state (input of the next draft)
};

struct ForwardOutput {
  // Row i belongs to the i-th token of the batch with want_logits (batch order);
  // each row has vocab floats.
  std::vector<float> logits;
  // Row i belongs to the i-th token with want_hidden; each row has hc_mult * dim
  // floats, stream-major (MODEL.md §0).
  std::vector<float> hidden;
};

struct BackendOptions {
  int threads = 0;          // CPU worker threads; 0 = all cores
  bool qat = true;          // simulate the FP8 KV and FP4 indexer round trips (the real model)
  int32_t max_batch = 2048; // largest batch one forward() call accepts
  int device = 0;           // CUDA device ordinal
};

enum class BackendKind { kCpu, kCuda };
std::string_view backend_kind_name(BackendKind kind);

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string_view name() const = 0;

  // Creates an empty sequence able to hold `max_ctx` tokens.
  virtual Result<SeqId> new_sequence(int32_t max_ctx) = 0;
  virtual void free_sequence(SeqId seq) = 0;
  virtual int32_t sequence_length(SeqId seq) const = 0;

  // Forgets the sequence's last tokens, keeping the first `n`. Supported for
  // n >= sequence_length(seq) - kMaxRollback (rejected speculative drafts);
  // n == 0 always works (reset).
  static constexpr int32_t kMaxRollback = 16;
  virtual Status truncate(SeqId seq, int32_t n) = 0;

  // Runs the batch; on error no sequence has advanced.
  virtual Status forward(std::span<const BatchToken> batch, ForwardOutput* out) = 0;

  // One decode step whose only use is its greedy token: runs `t` (want_logits and
  // want_hidden are ignored) and returns the argmax of its logits, ties to the lower
  // token id. Backends that keep the logits on a device override it so that no
  // vocabulary-sized copy leaves the device; the default runs forward() and scans.
  virtual Result<int32_t> forward_greedy(const BatchToken& t);

  // The MTP draft block, when the backend supports it and the model has one loaded
  // (Model::load_mtp before the backend was created). truncate() also forgets the
  // MTP rows of the dropped positions.
  virtual bool has_mtp() const { return false; }
  virtual Status forward_mtp(std::span<const MtpToken> batch, ForwardOutput* out) {
    return Status::Error(std::string(name()) + " backend: the MTP block is not available");
  }
};

// Creates a backend for `model` (which must outlive it). kCuda fails with a clear
// message when the build has no CUDA or no GPU is present.
Result<std::unique_ptr<Backend>> make_backend(const Model& model, BackendKind kind,
                                              const BackendOptions& options);
bool cuda_available();

}  // namespace ds4
