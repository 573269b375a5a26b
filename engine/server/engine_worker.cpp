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

// One line per request on stderr (the service journal).
void log_result(const GenerateResult& result, const std::string& finish_reason) {
  std::fprintf(stderr,
               "ds4-server: request: prompt %d tokens (%d reused), completion %d tokens, "
               "finish %s, prefill %.1f t/s, decode %.1f t/s\n",
               result.prompt_tokens, result.reused_tokens, result.completion_tokens,
               finish_reason.c_str(), result.prefill_tokens_per_second(),
               result.decode_tokens_per_second());
}

}  // namespace

EngineWorker::EngineWorker(Engine* engine) : engine_(engine) {}

EngineWorker::~EngineWorker() { shutdown(); }

Status EngineWorker::start() {
  Result<std::unique_ptr<Session>> session = engine_->new_session();
  if (!session.ok()) return session.status().wrap("engine worker: creating the session");
  session_ = std::move(session.value());
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
    if (running_) running_->cancel = true;
  }
  wake_.notify_all();
  for (auto& job : abandoned) job->publish(failure(not_ready("server is shutting down")));
  if (thread_.joinable()) thread_.join();
}

void EngineWorker::run() {
  for (;;) {
    std::shared_ptr<GenerationJob> job;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      wake_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
      if (stopping_) return;
      job = std::move(queue_.front());
      queue_.pop_front();
      running_ = job;
    }
    if (job->cancel) {
      job->publish(failure(bad_request("request cancelled before it started")));
    } else {
      // Nothing may escape the worker thread: an exception would end the process.
      try {
        run_job(*job);
      } catch (const std::exception& error) {
        std::fprintf(stderr, "ds4-server: request failed: %s\n", error.what());
        job->publish(failure(engine_failure(std::string("internal error: ") + error.what())));
      }
    }
    std::lock_guard<std::mutex> lock(mutex_);
    running_.reset();
  }
}

void EngineWorker::run_job(GenerationJob& job) {
  const PreparedRequest& prepared = job.prepared;
  OutputAssembler output(prepared.thinking != ThinkingMode::kNone, prepared.tools_active);
  std::vector<int32_t> all_ids;
  GenerateRequest request = prepared.generate;
  request.cancel = &job.cancel;

  auto sink = [&](const TokenDelta& piece) {
    Delta delta = output.push(piece.text);
    all_ids.insert(all_ids.end(), piece.token_ids.begin(), piece.token_ids.end());
    if (job.streaming && (!piece.token_ids.empty() || has_text(delta))) {
      job.publish(token_event(std::move(delta),
                              std::vector<int32_t>(piece.token_ids.begin(), piece.token_ids.end())));
    }
    return !output.tool_calls_done() && !job.cancel.load();
  };
  Result<GenerateResult> generated = engine_->generate(*session_, request, sink);
  if (!generated.ok()) {
    std::fprintf(stderr, "ds4-server: request failed: %s\n", generated.status().message().c_str());
    job.publish(failure(engine_failure(generated.status().message())));
    return;
  }
  const GenerateResult& result = generated.value();
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (stopping_ && result.finish_reason == FinishReason::kCancelled) {
      log_result(result, "cancelled (shutdown)");
      job.publish(failure(not_ready("server is shutting down; generation cancelled")));
      return;
    }
  }
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
  completion.token_ids = std::move(all_ids);
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
