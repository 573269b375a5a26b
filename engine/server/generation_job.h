// GenerationJob: one request handed from an HTTP thread to the engine worker, and
// the channel its results come back on. The HTTP thread creates it, submits it to
// the EngineWorker and reads events with next(); the worker publishes a kToken
// event per streamed chunk (streaming requests only), then exactly one kDone or
// kFailed event. Setting `cancel` (client gone) stops the generation within a token.
//
// Thread-safety: publish() and next() may be called from different threads;
// `cancel` may be set from any thread; `prepared` is read-only once submitted.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <optional>
#include <vector>

#include "server/api_error.h"
#include "server/prompt.h"
#include "server/response.h"

namespace ds4::server {

struct JobEvent {
  enum class Kind { kToken, kDone, kFailed };
  Kind kind = Kind::kToken;
  Delta delta;                     // kToken
  std::vector<int32_t> token_ids;  // kToken: the sampled ids this chunk carries
  Completion completion;           // kDone: totals, finish reason, usage
  ApiError error;                  // kFailed
};

class GenerationJob {
 public:
  GenerationJob(PreparedRequest prepared, bool streaming)
      : prepared(std::move(prepared)), streaming(streaming) {}

  const PreparedRequest prepared;
  const bool streaming;  // publish kToken events (non-streamed requests only get kDone)
  std::atomic<bool> cancel{false};

  void publish(JobEvent event);
  // The next event, or nullopt when none arrived within `timeout`.
  std::optional<JobEvent> next(std::chrono::milliseconds timeout);

 private:
  std::mutex mutex_;
  std::condition_variable ready_;
  std::deque<JobEvent> events_;
};

}  // namespace ds4::server
