// ThreadPool: a fixed set of worker threads that run one data-parallel loop at a time
// (parallel_for). The calling thread takes part, so a pool of N threads uses N cores
// with N-1 workers. Used by the CPU backend to split matrix rows, tokens, heads and
// experts across cores.
//
// Thread-safety: parallel_for may be called by one thread at a time (the backend's
// owner); the body runs concurrently on all threads and must only write disjoint data.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace ds4 {

class ThreadPool {
 public:
  // `threads` <= 0 means one per hardware thread.
  explicit ThreadPool(int threads = 0);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return static_cast<int>(workers_.size()) + 1; }

  // Calls body(begin, end) over [0, n) in chunks of at most `grain` items, spread
  // across all threads; returns when every chunk is done.
  void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& body);

 private:
  void worker_loop();
  void run_chunks();

  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::condition_variable wake_;
  std::condition_variable done_;
  const std::function<void(int64_t, int64_t)>* body_ = nullptr;
  int64_t n_ = 0;
  int64_t grain_ = 1;
  std::atomic<int64_t> next_{0};
  int active_ = 0;        // workers still inside the current job
  uint64_t generation_ = 0;
  bool stop_ = false;
};

}  // namespace ds4
