#include "lock.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

namespace ds4setup {
namespace {
const char kHeldMarker[] = "is already in use by another ds4-setup";
}

DirLock::~DirLock() {
  if (fd_ >= 0) {
    flock(fd_, LOCK_UN);
    ::close(fd_);
  }
}

Result<std::unique_ptr<DirLock>> DirLock::Acquire(const std::string& dir) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return Status::Error("cannot create directory " + dir + ": " + ec.message());
  std::string path = dir + "/.ds4-setup.lock";
  int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) return Status::Error("cannot open lock file " + path + ": " + std::strerror(errno));
  if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
    int error = errno;
    char pid[32] = {0};
    ssize_t n = ::pread(fd, pid, sizeof(pid) - 1, 0);
    ::close(fd);
    if (error == EWOULDBLOCK) {
      std::string holder = n > 0 ? std::string(pid, static_cast<size_t>(n)) : "unknown";
      while (!holder.empty() && (holder.back() == '\n' || holder.back() == ' ')) holder.pop_back();
      return Status::Error("models directory " + dir + " " + kHeldMarker + " (pid " + holder +
                           "); wait for it to finish, or stop it, then run again");
    }
    return Status::Error("cannot lock " + path + ": " + std::strerror(error));
  }
  std::string me = std::to_string(::getpid()) + "\n";
  if (::ftruncate(fd, 0) == 0) {
    ssize_t ignored = ::pwrite(fd, me.data(), me.size(), 0);
    (void)ignored;
  }
  return std::unique_ptr<DirLock>(new DirLock(fd, path));
}

bool IsLockHeld(const Status& status) {
  return !status.ok() && status.message().find(kHeldMarker) != std::string::npos;
}

}  // namespace ds4setup
