// DirLock: an exclusive advisory lock (flock) on <dir>/.ds4-setup.lock, so two ds4-setup
// runs never write into one models directory at once. The lock is released when the
// DirLock is destroyed or the process dies (the kernel drops flock locks), so a killed
// run never leaves a stale lock behind.
//
// Thread-safety: one owner; not shared between threads.
#pragma once

#include <memory>
#include <string>

#include "status.h"

namespace ds4setup {

class DirLock {
 public:
  ~DirLock();
  DirLock(const DirLock&) = delete;
  DirLock& operator=(const DirLock&) = delete;

  // Creates `dir` if needed and takes the lock without waiting. When another process
  // holds it, the error names the directory and that process's pid.
  static Result<std::unique_ptr<DirLock>> Acquire(const std::string& dir);

  const std::string& path() const { return path_; }

 private:
  DirLock(int fd, std::string path) : fd_(fd), path_(std::move(path)) {}
  int fd_;
  std::string path_;
};

// True when `status` came from DirLock::Acquire finding the lock held.
bool IsLockHeld(const Status& status);

}  // namespace ds4setup
