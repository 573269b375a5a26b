#include "runtime/batch_scheduler.h"

#include <string>
#include <utility>

namespace ds4 {

// One session of the pool and the generation running on it (none when idle).
struct BatchScheduler::Slot {
  std::unique_ptr<Session> session;
  std::unique_ptr<Generation> generation;  // destroyed before the session it uses
  Done done;
  uint64_t admitted = 0;   // submit order of the running generation
  uint64_t last_used = 0;  // when the slot last started or ended a generation
  bool busy() const { return generation != nullptr; }
};

BatchScheduler::BatchScheduler(Engine* engine) : engine_(engine) {}
BatchScheduler::~BatchScheduler() = default;

Result<std::unique_ptr<BatchScheduler>> BatchScheduler::Create(Engine* engine, int32_t parallel) {
  if (parallel < 1) {
    return Status::Error("batch scheduler: the number of parallel generations must be >= 1, got " +
                         std::to_string(parallel));
  }
  std::unique_ptr<BatchScheduler> scheduler(new BatchScheduler(engine));
  for (int32_t i = 0; i < parallel; ++i) {
    auto session = engine->new_session();
    if (!session.ok()) {
      return session.status().wrap("batch scheduler: creating session " + std::to_string(i + 1) + " of " +
                                   std::to_string(parallel));
    }
    auto slot = std::make_unique<Slot>();
    slot->session = std::move(session.value());
    scheduler->slots_.push_back(std::move(slot));
  }
  return scheduler;
}

int32_t BatchScheduler::active() const {
  int32_t n = 0;
  for (const auto& slot : slots_) n += slot->busy() ? 1 : 0;
  return n;
}

// The idle slot that keeps the most of `prompt`; among equals the least recently used.
BatchScheduler::Slot* BatchScheduler::pick_slot(const std::vector<int32_t>& prompt) {
  Slot* best = nullptr;
  int32_t best_reuse = -1;
  for (const auto& slot : slots_) {
    if (slot->busy()) continue;
    const int32_t reuse = Engine::reusable_prefix(slot->session->tokens(), prompt);
    if (reuse > best_reuse || (reuse == best_reuse && slot->last_used < best->last_used)) {
      best = slot.get();
      best_reuse = reuse;
    }
  }
  return best;
}

Status BatchScheduler::submit(GenerateRequest request, TokenSink sink, Done done) {
  Slot* slot = pick_slot(request.prompt);
  if (slot == nullptr) {
    return Status::Error("batch scheduler: all " + std::to_string(parallel()) + " sessions are busy");
  }
  auto generation = engine_->begin_generation(*slot->session, std::move(request), std::move(sink));
  if (!generation.ok()) return generation.status();
  slot->generation = std::move(generation.value());
  slot->done = std::move(done);
  slot->admitted = ++clock_;
  slot->last_used = slot->admitted;
  return Status::Ok();
}

void BatchScheduler::finish(Slot& slot, SchedulerStep* report) {
  GenerateResult result = slot.generation->finish();
  Done done = std::move(slot.done);
  slot.generation.reset();
  slot.done = nullptr;
  slot.last_used = ++clock_;
  ++report->finished;
  if (done) done(std::move(result));
}

void BatchScheduler::fail(Slot& slot, const Status& error, SchedulerStep* report) {
  Done done = std::move(slot.done);
  slot.generation.reset();
  slot.done = nullptr;
  slot.last_used = ++clock_;
  ++report->finished;
  if (done) done(error);
}

SchedulerStep BatchScheduler::step() {
  SchedulerStep report;
  for (const auto& slot : slots_) {
    if (slot->busy() && slot->generation->check_cancel()) finish(*slot, &report);
  }
  prefill_one(&report);
  decode_all(&report);
  return report;
}

void BatchScheduler::prefill_one(SchedulerStep* report) {
  Slot* oldest = nullptr;
  for (const auto& slot : slots_) {
    if (!slot->busy() || slot->generation->phase() != Generation::Phase::kPrefill) continue;
    if (oldest == nullptr || slot->admitted < oldest->admitted) oldest = slot.get();
  }
  if (oldest == nullptr) return;
  Generation& generation = *oldest->generation;
  const int32_t session_before = generation.session().size();
  if (Status status = generation.prefill_step(); !status.ok()) return fail(*oldest, status, report);
  report->prefill_tokens += generation.session().size() - session_before;
  if (generation.phase() == Generation::Phase::kDone) finish(*oldest, report);
}

void BatchScheduler::decode_all(SchedulerStep* report) {
  std::vector<Slot*> decoding;
  for (const auto& slot : slots_) {
    if (slot->busy() && slot->generation->phase() == Generation::Phase::kDecode) decoding.push_back(slot.get());
  }
  if (decoding.empty()) return;
  if (decoding.size() > 1) return decode_batched(decoding, report);

  Slot& slot = *decoding.front();
  Generation& generation = *slot.generation;
  // Alone: speculative rounds only while no other generation is admitted (a
  // prefilling one would wait behind several forward passes per round).
  const bool speculate = generation.speculative() && active() == 1;
  Status status = speculate ? generation.speculative_step() : generation.decode_step();
  report->decode_sequences += 1;
  if (!status.ok()) return fail(slot, status, report);
  if (generation.phase() == Generation::Phase::kDone) finish(slot, report);
}

void BatchScheduler::decode_batched(const std::vector<Slot*>& decoding, SchedulerStep* report) {
  const int32_t n = static_cast<int32_t>(decoding.size());
  std::vector<BatchToken> batch;
  batch.reserve(decoding.size());
  for (Slot* slot : decoding) batch.push_back(slot->generation->decode_input());
  ForwardOutput out;
  Status status = engine_->backend().forward(batch, &out);
  if (status.ok() && (out.logits.empty() || out.logits.size() % batch.size() != 0)) {
    status = Status::Error("batched decode: the backend returned " + std::to_string(out.logits.size()) +
                           " logits for " + std::to_string(n) + " tokens");
  }
  if (!status.ok()) {
    // Nothing advanced: each generation runs its step alone, so only the one at
    // fault ends with the error.
    for (Slot* slot : decoding) {
      Status alone = slot->generation->decode_step();
      report->decode_sequences += 1;
      if (!alone.ok()) {
        fail(*slot, alone, report);
      } else if (slot->generation->phase() == Generation::Phase::kDone) {
        finish(*slot, report);
      }
    }
    return;
  }
  const size_t vocab = out.logits.size() / batch.size();
  report->decode_sequences += n;
  for (size_t i = 0; i < decoding.size(); ++i) {
    Slot& slot = *decoding[i];
    const std::span<const float> row(out.logits.data() + i * vocab, vocab);
    if (Status accepted = slot.generation->decode_accept(row, n); !accepted.ok()) {
      fail(slot, accepted, report);
    } else if (slot.generation->phase() == Generation::Phase::kDone) {
      finish(slot, report);
    }
  }
}

void BatchScheduler::abandon_all() {
  for (const auto& slot : slots_) {
    if (!slot->busy()) continue;
    slot->generation.reset();
    slot->done = nullptr;
    slot->last_used = ++clock_;
    (void)slot->session->reset();  // its state may be mid-step; start it afresh
  }
}

}  // namespace ds4
