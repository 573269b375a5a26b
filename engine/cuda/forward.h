// CudaForward: one token of the DeepSeek V4 Flash forward pass (spec/MODEL.md §2.8)
// on the GPU, for one sequence, recorded once per sequence as a CUDA graph and
// replayed for every token. The token id and position live in device memory (the
// sequence's `step` block); every kernel reads them there, so the same graph serves
// every position. The graph ends with the greedy argmax and, when asked, advances
// the step block itself (next token = argmax, pos + 1) for host-free decode loops.
//
// Sequence state is indexed by absolute position (raw ring, compressor state,
// compressed and indexer rows), so truncating a sequence only moves its length.
//
// Thread-safety: one thread at a time.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "common/status.h"
#include "cuda/device_model.h"

namespace ds4 {

struct DeviceSequence;

class CudaForward {
 public:
  // `model` must outlive the forward. `qat`: simulate the FP8 / FP4 round trips.
  static Result<std::unique_ptr<CudaForward>> Create(const DeviceModel& model, bool qat);
  ~CudaForward();

  // Rollback margin kept by the position-indexed state (Backend::kMaxRollback).
  static constexpr int kRollback = 16;

  Result<int> new_sequence(int32_t max_ctx);
  void free_sequence(int id);
  bool valid(int id) const;
  int32_t max_ctx(int id) const;

  // Runs `n` tokens of sequence `id` at positions pos0 .. pos0+n-1 layer by layer
  // (spec/MODEL.md §2.9): every projection is one tensor-core product over the n
  // tokens. Token i's logits go to logits + k*vocab when logit_rows[k] == i, its final
  // HC state to hidden + k*hc_dim when hidden_rows[k] == i (host memory).
  Status prefill(int id, const int32_t* tokens, int n, int32_t pos0, std::span<const int> logit_rows,
                 float* logits, std::span<const int> hidden_rows, float* hidden);
  // The most tokens one prefill() call takes (larger prompts are split by the caller).
  static constexpr int kMaxPrefill = 2048;
  // Chunks of at most this many tokens use f32 matrix-vector products (one weight read
  // serves them all); longer ones tensor-core products.
  static constexpr int kF32PrefillTokens = 4;
  // With `on`, every chunk uses the f32 products (a reference mode for tests: it
  // matches the token-by-token decode path to f32 rounding).
  void set_f32_prefill(bool on) { f32_prefill_ = on; }
  // With `on` (the default), decode runs the routed experts through the one-token
  // expert kernels (cuda/expert_matvec.h) where they apply; off, through the generic
  // matrix-vector kernel (benchmarks compare). Takes effect for graphs recorded later.
  void set_expert_kernels(bool on) { expert_kernels_ = on; }
  // With `on` (the default), each sublayer's hc_post also computes the next mixing
  // projection's partial sums in the same launch (cuda/hyper_connections.h,
  // launch_hc_post_mix); off, separate launches. Takes effect for graphs recorded later.
  void set_fused_hc(bool on) { fused_hc_ = on; }
  // Which weights a side branch of the decode graph asks into L2 ahead of their
  // kernels (cuda/l2_prefetch.h): q_b at the start of each layer (during hc_pre and
  // q_a), out_a and out_b once q_b is done (during attention), the selected experts'
  // gate and up and/or down once the router has chosen them. Results do not change.
  // The experts' items need the router kernel's ids: with set_router_fold(true) they are
  // ignored. Off by default (on the H200 only q_b gained, 0.9 %); the default comes from
  // DS4_CUDA_L2_PREFETCH (a comma list of q_b, out_a, out_b, gate_up, down; "none";
  // "all"). Takes effect for graphs recorded later.
  struct L2Prefetch {
    bool q_b = false, out_a = false, out_b = false, gate_up = false, down = false;
  };
  void set_l2_prefetch(const L2Prefetch& plan) { l2_prefetch_ = plan; }
  const L2Prefetch& l2_prefetch() const { return l2_prefetch_; }
  // How a decode layer's launches are spread over streams (results are the same bits):
  //   kBranches:  the kv row, the compressors and the indexer on side branches beside the
  //               q path; the shared expert beside the router and routed experts, into a
  //               buffer of its own that hc_post adds to the routed sum; each sublayer's
  //               Sinkhorn on a branch of its own;
  //   kSharedFirst: the same, but the shared expert's output stored first and the routed
  //               down projection adding to it (it waits for the shared branch);
  //   kMoeSerial: the shared expert on the main stream after the router (stored first); the
  //               Sinkhorn first on the kv branch (attention) and alone on a side branch
  //               (MoE);
  //   kSerial:    everything on the main stream, one chain of programmatic dependent
  //               launches without joins, the Sinkhorn inside hc_pre.
  // The dense kernels fill every multiprocessor, so side branches mostly wait for room
  // rather than run beside them. Default from DS4_CUDA_DECODE_SCHEDULE (branches,
  // shared_first, moe_serial, serial). Takes effect for graphs recorded later.
  enum class DecodeSchedule { kBranches, kSharedFirst, kMoeSerial, kSerial };
  void set_decode_schedule(DecodeSchedule s) { schedule_ = s; }
  // With `on` (DS4_CUDA_ROUTER_FOLD=1; off by default: on the H200 the whole decode
  // measured 2-3 % slower with it) the decode's routed gate+up selects the experts itself
  // instead of after a router kernel (the same ids and weights). Takes effect for graphs
  // recorded later.
  void set_router_fold(bool on) { router_fold_ = on; }

  // Runs token `token` at position `pos` of sequence `id`. When `logits` / `hidden`
  // are non-null they receive vocab floats / hc_mult*dim floats (host memory).
  Status step(int id, int32_t token, int32_t pos, float* logits, float* hidden);

  // Benchmark helpers: set the step block, then replay `n` tokens where each feeds
  // the argmax of the previous one, with no host work between tokens.
  Status set_step(int id, int32_t token, int32_t pos);
  Status replay_greedy(int id, int n);
  // Benchmark helper: makes sequence `id` look as if `length` tokens had been
  // processed, with random finite rows in every cache (decode cost depends only on
  // the row counts), without running them.
  Status fill_context_random(int id, int32_t length, uint64_t seed);
  // Runs one token of sequence `id` without the graph, timing each stage with
  // events; returns (stage name, total milliseconds over all layers) in order.
  Result<std::vector<std::pair<std::string, double>>> profile_step(int id);
  // Runs prefill(id, tokens, n, pos0) (no outputs), timing each stage of every layer
  // with events on the main stream; returns (stage name, total milliseconds) in order.
  Result<std::vector<std::pair<std::string, double>>> profile_prefill(int id, const int32_t* tokens, int n,
                                                                      int32_t pos0);
  // The argmax of the last step's logits.
  Result<int32_t> last_argmax();

  // The MTP draft block (spec/MODEL.md §2.11), when the DeviceModel has one. Runs the
  // token `token` at `pos` of sequence `id` with `hidden` (host, hc_mult*dim floats,
  // the HC state it drafts from) through the block, with its own tagged raw window
  // (cuda/mtp.h), and the MTP head; recorded once per sequence as a CUDA graph. When
  // non-null, `logits` / `hidden_out` (host) receive the draft logits (vocab floats) /
  // the block's output HC state. The main model's state is untouched; last_argmax()
  // then reads the draft's greedy token. Uses (and overwrites) the step block.
  bool has_mtp() const { return model_.has_mtp(); }
  Status mtp_step(int id, int32_t token, int32_t pos, const float* hidden, float* logits, float* hidden_out);
  // Forgets the MTP block's rows of positions >= n (sequence truncation).
  Status forget_mtp_from(int id, int32_t n);
  cudaStream_t stream() const { return stream_; }

 private:
  CudaForward(const DeviceModel& model, bool qat);
  Status init();
  Status record(DeviceSequence& seq, bool advance);
  Status enqueue_token(DeviceSequence& seq, bool advance);
  // `next_mix`: the mixing projection applied to the layer's output next (the next
  // layer's hc_attn_fn, or the head's); see hc_post.
  Status enqueue_layer(DeviceSequence& seq, int l, const DeviceMatrix* next_mix);
  // `f_add`: a second part of the sublayer output, added to f (launch_hc_post).
  Status hc_post(const float* x_in, const float* f, float* x_out, const DeviceMatrix* next_mix, cudaStream_t st,
                 const float* f_add = nullptr);
  Status hc_head(const DeviceMatrix& fn, const float* scale, const float* base, const float* norm,
                 cudaStream_t st);
  Status enqueue_mtp(DeviceSequence& seq);
  Status join_prefetch();  // joins side_prefetch_ to stream_ when it holds launches
  Status record_mtp(DeviceSequence& seq);
  Status ensure_prefill_workspace(int64_t index_rows);
  Status prefill_layer(DeviceSequence& seq, int l, int n, int32_t pos0);
  void stage(const char* name);  // profiling mark after the launches of `name`
  // Runs `body` with stage marks on, then sums the time between marks per stage name.
  template <typename Body>
  Result<std::vector<std::pair<std::string, double>>> profile(Body body);

  std::vector<std::pair<const char*, cudaEvent_t>>* profile_ = nullptr;

  const DeviceModel& model_;
  bool qat_;
  bool f32_prefill_ = false;
  bool expert_kernels_ = true;
  bool fused_hc_ = true;
  L2Prefetch l2_prefetch_;
  DecodeSchedule schedule_;
  bool router_fold_;
  // While enqueueing: whether side_prefetch_ holds launches not yet joined to stream_.
  bool prefetch_pending_ = false;
  // While enqueueing: the column tiles of mixing partial sums the last hc_post left in
  // the workspace for the next hc_pre / hc_head (0: none).
  int pending_mix_tiles_ = 0;
  cudaStream_t stream_ = nullptr;
  // The decode graph's parallel branches (see enqueue_layer); the prefill uses side_.
  cudaStream_t side_ = nullptr, side_kv_ = nullptr, side_index_ = nullptr;
  cudaEvent_t ev_fork_ = nullptr, ev_latent_ = nullptr, ev_join_ = nullptr;
  cudaEvent_t ev_join_kv_ = nullptr, ev_join_index_ = nullptr;
  cudaStream_t side_prefetch_ = nullptr;  // L2 prefetches (joined once per token)
  cudaStream_t side_comb_ = nullptr;      // the Sinkhorn (DecodeSchedule::kBranches)
  cudaEvent_t ev_join_comb_ = nullptr;
  cudaEvent_t ev_prefetch_ = nullptr;
  struct Workspace;
  std::unique_ptr<Workspace> ws_;
  struct PrefillWorkspace;  // allocated by the first prefill()
  std::unique_ptr<PrefillWorkspace> pws_;
  std::vector<std::unique_ptr<DeviceSequence>> seqs_;
};

}  // namespace ds4
