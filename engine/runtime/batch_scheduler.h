// BatchScheduler: runs up to `parallel` generations at once on one Engine, each on
// its own Session from a pool of `parallel` sessions, with batched decode.
//
// submit() starts a request on an idle session: the one whose tokens let it reuse
// the most of its prompt (Engine::reusable_prefix), else the least recently used
// one. Each step() then
//   1. ends the generations whose cancel flag is set (their sessions are free for
//      the next submit() right after the step),
//   2. feeds at most ONE prefill chunk, for the oldest generation still prefilling
//      (so running generations keep streaming while a long prompt is prefilled),
//   3. runs ONE decode forward() call carrying the next token of every decoding
//      generation (want_logits on each); each then samples with its own sampler,
//      seed, stop strings and budget (Generation::decode_accept).
// A generation that runs alone decodes alone: greedy steps ask the backend for the
// token only (Backend::forward_greedy), and greedy generations with MTP enabled
// keep decoding speculatively (one draft-and-verify round per step) while nothing
// else is admitted; the tokens are the same either way.
// Generations are independent: a failure (a bad request, a context overflow, a
// backend error in its prefill) ends that generation only. When a batched decode
// call fails, each of its generations is retried alone, so only the one whose token
// fails ends with the error. Since the CPU backend computes every token of a batch
// as it would alone, the output of a generation does not depend on what runs
// beside it (batch_scheduler_test checks this on the tiny chat model).
//
// Thread-safety: one thread drives a BatchScheduler (the engine's worker thread);
// only the requests' cancel flags may be set from other threads.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "common/status.h"
#include "runtime/engine.h"

namespace ds4 {

// What one step() did.
struct SchedulerStep {
  int32_t prefill_tokens = 0;    // prompt tokens fed (one chunk of one generation)
  int32_t decode_sequences = 0;  // generations whose next token was fed this step
  int32_t finished = 0;          // generations that ended (done called)
};

class BatchScheduler {
 public:
  // Called once per submitted request, from step(), when it ends: its result, or
  // the error that ended it.
  using Done = std::function<void(Result<GenerateResult>)>;

  // Creates the session pool (`parallel` sessions of engine->ctx_size() tokens).
  static Result<std::unique_ptr<BatchScheduler>> Create(Engine* engine, int32_t parallel);
  ~BatchScheduler();
  BatchScheduler(const BatchScheduler&) = delete;
  BatchScheduler& operator=(const BatchScheduler&) = delete;

  int32_t parallel() const { return static_cast<int32_t>(slots_.size()); }
  int32_t active() const;  // generations submitted and not yet ended
  bool has_room() const { return active() < parallel(); }

  // Starts `request` on an idle session (has_room() must hold). A request the
  // engine refuses (empty prompt, id outside the vocabulary, context overflow) is
  // returned as an error and `done` is never called; otherwise `done` is called
  // exactly once, from a later step(). `sink` receives the text deltas as with
  // Engine::generate().
  Status submit(GenerateRequest request, TokenSink sink, Done done);

  // Runs one scheduling step (see the file comment); a no-op when nothing is active.
  SchedulerStep step();

  // Ends every active generation without calling its `done` and resets its session
  // (for a driver that must give up its jobs, e.g. after an exception escaped a sink).
  void abandon_all();

 private:
  struct Slot;
  explicit BatchScheduler(Engine* engine);
  Slot* pick_slot(const std::vector<int32_t>& prompt);
  void finish(Slot& slot, SchedulerStep* report);
  void fail(Slot& slot, const Status& error, SchedulerStep* report);
  void prefill_one(SchedulerStep* report);
  void decode_all(SchedulerStep* report);
  void decode_batched(const std::vector<Slot*>& decoding, SchedulerStep* report);

  Engine* engine_;
  std::vector<std::unique_ptr<Slot>> slots_;
  uint64_t clock_ = 0;  // submit order (admission age and least-recent use)
};

}  // namespace ds4
