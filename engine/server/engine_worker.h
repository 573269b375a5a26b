// EngineWorker: the one thread that drives the Engine. HTTP threads submit
// GenerationJobs; they wait in arrival order until the batch scheduler
// (runtime/batch_scheduler.h) has room, then up to `parallel` of them run together,
// each on its own Session of the scheduler's pool (a prompt that extends a kept
// session's tokens reuses its KV state), with their decode tokens batched. The
// worker publishes each job's chunks and result on the job's channel. With
// parallel = 1 the jobs run one at a time, as a single kept session would.
//
// This is the boundary of batched serving: everything engine-side of a request
// happens here, the HTTP layer only sees jobs and events.
//
// Thread-safety: submit(), queued() and shutdown() may be called from any thread;
// the Engine is used only by the worker thread (after start()).
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "common/status.h"
#include "runtime/batch_scheduler.h"
#include "runtime/engine.h"
#include "server/generation_job.h"

namespace ds4::server {

class EngineWorker {
 public:
  // The engine must outlive the worker. `parallel`: jobs generated at once (>= 1).
  explicit EngineWorker(Engine* engine, int32_t parallel = 1);
  ~EngineWorker();  // shutdown()
  EngineWorker(const EngineWorker&) = delete;
  EngineWorker& operator=(const EngineWorker&) = delete;

  // Creates the session pool and starts the thread.
  Status start();
  // Queues `job`; false when shutting down (the job gets nothing).
  bool submit(std::shared_ptr<GenerationJob> job);
  size_t queued() const;
  int32_t parallel() const { return parallel_; }
  // Fails queued jobs (503, shutting down), cancels the running ones and joins.
  void shutdown();

 private:
  struct Running;
  void run();
  void admit(const std::shared_ptr<GenerationJob>& job);
  Status start_job(const std::shared_ptr<GenerationJob>& job);
  void step();
  void complete(Running& running, Result<GenerateResult> generated);
  void forget_running(const GenerationJob* job, bool* stopping);

  Engine* engine_;
  const int32_t parallel_;
  std::unique_ptr<BatchScheduler> scheduler_;  // used by the worker thread only
  mutable std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<std::shared_ptr<GenerationJob>> queue_;
  std::vector<std::shared_ptr<GenerationJob>> running_;  // admitted, not yet ended
  bool stopping_ = false;
  std::thread thread_;
};

}  // namespace ds4::server
