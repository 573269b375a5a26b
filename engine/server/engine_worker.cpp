#include "server/engine_worker.h"

#include <cstdio>
#include <exception>

#include "server/output_assembler.h"

namespace ds4::server {
namespace {

JobEvent failure(ApiError error) {
  JobEvent event;
  event.kind = JobEvent::Kind::kFailed;
  event.error = std::move(error);
  return event;
}

JobEvent token_event(Delta delta, std::vector<int32_t> ids) {
  JobEvent event;
  event.kind = JobEvent::Kind::kToken;
  event.delta = std::move(delta);
  event.token_ids = std::move(ids);
  return event;
}

bool has_text(const Delta& delta) {
  return !delta.reasoning.empty() || !delta.content.empty() || !delta.tool_calls.empty();
}

Usage usage_of(const GenerateResult& result) {
  Usage usage;
  usage.prompt_tokens = result.prompt_tokens;
  usage.completion_tokens = result.completion_tokens;
  usage.cached_tokens = result.reused_tokens;
  usage.prompt_ms = result.prefill_seconds * 1000.0;
  usage.decode_ms = result.decode_seconds * 1000.0;
  return usage;
}

// One line per request on stderr (the service journal). `batch`: the mean number of
// sequences per decode step while it ran.
void log_result(const GenerateResult& result, const std::string& finish_reason) {
  std::fprintf(stderr,
               "ds4-server: request: prompt %d tokens (%d reused), completion %d tokens, "
               "finish %s, prefill %.1f t/s, decode %.1f t/s, batch %.2f\n",
               result.prompt_tokens, result.reused_tokens, result.completion_tokens,
               finish_reason.c_str(), result.prefill_tokens_per_second(),
               result.decode_tokens_per_second(), result.mean_decode_batch());
}

}  // namespace

// A job admitted to the scheduler: its output assembly and the ids streamed so far.
// Shared by the job's sink and its completion callback.
struct EngineWorker::Running {
  Running(std::shared_ptr<GenerationJob> job)
      : job(std::move(job)),
        output(this->job->prepared.thinking != ThinkingMode::kNone, this->job->prepared.tools_active) {}
  std::shared_ptr<GenerationJob> job;
  OutputAssembler output;
  std::vector<int32_t> all_ids;
};

EngineWorker::EngineWorker(Engine* engine, int32_t parallel) : engine_(engine), parallel_(parallel) {}

EngineWorker::~EngineWorker() { shutdown(); }

Status EngineWorker::start() {
  auto scheduler = BatchScheduler::Create(engine_, parallel_);
  if (!scheduler.ok()) return scheduler.status().wrap("engine worker");
  scheduler_ = std::move(scheduler.value());
  thread_ = std::thread([this] { run(); });
  return Status::Ok();
}

bool EngineWorker::submit(std::shared_ptr<GenerationJob> job) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (stopping_ || !thread_.joinable()) return false;
    queue_.push_back(std::move(job));
  }
  wake_.notify_one();
  return true;
}

size_t EngineWorker::queued() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return queue_.size();
}

void EngineWorker::shutdown() {
  std::deque<std::shared_ptr<GenerationJob>> abandoned;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
    abandoned.swap(queue_);
    for (auto& job : running_) job->cancel = true;
  }
  wake_.notify_all();
  for (auto& job : abandoned) job->publish(failure(not_ready("server is shutting down")));
  if (thread_.joinable()) thread_.join();
}

void EngineWorker::run() {
  for (;;) {
    std::vector<std::shared_ptr<GenerationJob>> admitted;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      wake_.wait(lock, [this] { return stopping_ || !queue_.empty() || !running_.empty(); });
      // Shutting down: the running jobs were cancelled; step until they have ended.
      if (stopping_ && running_.empty()) return;
      while (!stopping_ && !queue_.empty() && running_.size() < static_cast<size_t>(parallel_)) {
        admitted.push_back(std::move(queue_.front()));
        queue_.pop_front();
        running_.push_back(admitted.back());
      }
    }
    for (const auto& job : admitted) admit(job);
    step();
  }
}

void EngineWorker::forget_running(const GenerationJob* job, bool* stopping) {
  std::lock_guard<std::mutex> lock(mutex_);
  for (auto it = running_.begin(); it != running_.end(); ++it) {
    if (it->get() == job) {
      running_.erase(it);
      break;
    }
  }
  if (stopping != nullptr) *stopping = stopping_;
}

// Hands `job` to the scheduler (which has room: running_ counts it already).
void EngineWorker::admit(const std::shared_ptr<GenerationJob>& job) {
  if (job->cancel) {
    bool stopping = false;
    forget_running(job.get(), &stopping);
    job->publish(failure(stopping ? not_ready("server is shutting down")
                                  : bad_request("request cancelled before it started")));
    return;
  }
  Status submitted;
  // Nothing may escape the worker thread: an exception would end the process.
  try {
    submitted = start_job(job);
  } catch (const std::exception& error) {
    submitted = Status::Error(std::string("internal error: ") + error.what());
  }
  if (!submitted.ok()) {
    forget_running(job.get(), nullptr);
    std::fprintf(stderr, "ds4-server: request failed: %s\n", submitted.message().c_str());
    job->publish(failure(engine_failure(submitted.message())));
  }
}

// Submits `job` to the scheduler with a sink that assembles and publishes its
// output and a callback that completes it.
Status EngineWorker::start_job(const std::shared_ptr<GenerationJob>& job) {
  auto running = std::make_shared<Running>(job);
  GenerateRequest request = job->prepared.generate;
  request.cancel = &job->cancel;
  auto sink = [running](const TokenDelta& piece) {
    Delta delta = running->output.push(piece.text);
    running->all_ids.insert(running->all_ids.end(), piece.token_ids.begin(), piece.token_ids.end());
    GenerationJob& job = *running->job;
    if (job.streaming && (!piece.token_ids.empty() || has_text(delta))) {
      job.publish(token_event(std::move(delta),
                              std::vector<int32_t>(piece.token_ids.begin(), piece.token_ids.end())));
    }
    return !running->output.tool_calls_done() && !job.cancel.load();
  };
  auto done = [this, running](Result<GenerateResult> generated) { complete(*running, std::move(generated)); };
  return scheduler_->submit(std::move(request), std::move(sink), std::move(done));
}

// One scheduler step. An exception from a job's output handling ends every running
// job with an internal error (their state is unknown) and leaves the worker serving.
void EngineWorker::step() {
  try {
    scheduler_->step();
  } catch (const std::exception& error) {
    std::fprintf(stderr, "ds4-server: request failed: %s\n", error.what());
    scheduler_->abandon_all();
    std::vector<std::shared_ptr<GenerationJob>> failed;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      failed.swap(running_);
    }
    for (auto& job : failed) {
      job->publish(failure(engine_failure(std::string("internal error: ") + error.what())));
    }
  }
}

void EngineWorker::complete(Running& running, Result<GenerateResult> generated) {
  GenerationJob& job = *running.job;
  bool stopping = false;
  forget_running(&job, &stopping);
  if (!generated.ok()) {
    std::fprintf(stderr, "ds4-server: request failed: %s\n", generated.status().message().c_str());
    job.publish(failure(engine_failure(generated.status().message())));
    return;
  }
  const GenerateResult& result = generated.value();
  if (stopping && result.finish_reason == FinishReason::kCancelled) {
    log_result(result, "cancelled (shutdown)");
    job.publish(failure(not_ready("server is shutting down; generation cancelled")));
    return;
  }
  OutputAssembler& output = running.output;
  Result<Delta> tail = output.finish();
  if (!tail.ok()) {
    log_result(result, "error (" + tail.status().message() + ")");
    job.publish(failure(engine_failure("generated output is malformed: " + tail.status().message())));
    return;
  }
  if (job.streaming && has_text(tail.value())) job.publish(token_event(tail.value(), {}));

  JobEvent done;
  done.kind = JobEvent::Kind::kDone;
  Completion& completion = done.completion;
  completion.reasoning = output.reasoning();
  completion.content = output.content();
  completion.tool_calls = output.tool_calls();
  completion.token_ids = std::move(running.all_ids);
  completion.usage = usage_of(result);
  if (output.tool_calls_done()) {
    completion.finish_reason = "tool_calls";
  } else if (result.finish_reason == FinishReason::kLength) {
    completion.finish_reason = "length";
  } else if (result.finish_reason == FinishReason::kCancelled) {
    completion.finish_reason = "cancelled";  // the client is gone; nobody reads it
  } else {
    completion.finish_reason = "stop";
  }
  log_result(result, completion.finish_reason);
  job.publish(std::move(done));
}

}  // namespace ds4::server
