// EngineWorker: the one thread that drives the Engine. HTTP threads submit
// GenerationJobs; the worker runs them one at a time, in arrival order, on a kept
// Session (a prompt that extends the previous one reuses its KV state), and
// publishes each job's chunks and result on the job's channel.
//
// This is the boundary batched serving will replace: everything engine-side of a
// request happens here, the HTTP layer only sees jobs and events.
//
// Thread-safety: submit(), queued() and shutdown() may be called from any thread;
// the Engine is used only by the worker thread (after start()).
#pragma once

#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <thread>

#include "common/status.h"
#include "runtime/engine.h"
#include "server/generation_job.h"

namespace ds4::server {

class EngineWorker {
 public:
  explicit EngineWorker(Engine* engine);  // the engine must outlive the worker
  ~EngineWorker();                        // shutdown()
  EngineWorker(const EngineWorker&) = delete;
  EngineWorker& operator=(const EngineWorker&) = delete;

  // Creates the session and starts the thread.
  Status start();
  // Queues `job`; false when shutting down (the job gets nothing).
  bool submit(std::shared_ptr<GenerationJob> job);
  size_t queued() const;
  // Fails queued jobs (503, shutting down), cancels the running one and joins.
  void shutdown();

 private:
  void run();
  void run_job(GenerationJob& job);

  Engine* engine_;
  std::unique_ptr<Session> session_;
  mutable std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<std::shared_ptr<GenerationJob>> queue_;
  std::shared_ptr<GenerationJob> running_;
  bool stopping_ = false;
  std::thread thread_;
};

}  // namespace ds4::server
