#include "proc.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <fstream>
#include <sstream>
#include <thread>

extern char** environ;

namespace ds4setup {
namespace {

using Clock = std::chrono::steady_clock;

std::string JoinCommand(const std::vector<std::string>& argv) {
  std::string joined;
  for (const std::string& arg : argv) {
    if (!joined.empty()) joined += ' ';
    joined += ShellQuote(arg);
  }
  return joined;
}

// The current environment with `extra` ("NAME=value") replacing same-named entries.
std::vector<std::string> MergedEnvironment(const std::vector<std::string>& extra) {
  std::vector<std::string> merged;
  for (char** entry = environ; entry != nullptr && *entry != nullptr; ++entry) {
    std::string item = *entry;
    std::string name = item.substr(0, item.find('='));
    bool replaced = false;
    for (const std::string& e : extra) {
      if (e.substr(0, e.find('=')) == name) replaced = true;
    }
    if (!replaced) merged.push_back(item);
  }
  merged.insert(merged.end(), extra.begin(), extra.end());
  return merged;
}

std::vector<char*> CStrings(std::vector<std::string>& strings) {
  std::vector<char*> pointers;
  for (std::string& s : strings) pointers.push_back(s.data());
  pointers.push_back(nullptr);
  return pointers;
}

std::string LastLines(const std::string& text, size_t count) {
  size_t end = text.size();
  while (end > 0 && (text[end - 1] == '\n' || text[end - 1] == '\r')) --end;
  size_t start = end;
  size_t lines = 0;
  while (start > 0) {
    if (text[start - 1] == '\n' && ++lines == count) break;
    --start;
  }
  return text.substr(start, end - start);
}

void SetCloexec(int fd) { fcntl(fd, F_SETFD, fcntl(fd, F_GETFD) | FD_CLOEXEC); }

int ExitCodeOf(int wait_status) {
  if (WIFEXITED(wait_status)) return WEXITSTATUS(wait_status);
  if (WIFSIGNALED(wait_status)) return 128 + WTERMSIG(wait_status);
  return -1;
}

}  // namespace

std::string ShellQuote(const std::string& arg) {
  if (!arg.empty() && arg.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                            "0123456789_-+=./:,@%") == std::string::npos) {
    return arg;
  }
  std::string quoted = "'";
  for (char c : arg) {
    if (c == '\'') {
      quoted += "'\\''";
    } else {
      quoted += c;
    }
  }
  return quoted + "'";
}

std::string ProcResult::Describe(size_t tail_lines) const {
  std::ostringstream text;
  text << "'" << command << "'";
  if (timed_out) {
    text << " did not finish within its time limit and was stopped";
  } else if (exit_code > 128) {
    text << " was killed by signal " << (exit_code - 128);
  } else {
    text << " exited with status " << exit_code;
  }
  std::string tail = LastLines(err.empty() ? out : err, tail_lines);
  if (!tail.empty()) text << ":\n" << tail;
  return text.str();
}

std::string FindProgram(const std::string& name, const std::vector<std::string>& extra_dirs) {
  if (name.find('/') != std::string::npos) {
    return access(name.c_str(), X_OK) == 0 ? name : "";
  }
  std::vector<std::string> dirs;
  const char* path = std::getenv("PATH");
  std::stringstream split(path != nullptr ? path : "/usr/local/bin:/usr/bin:/bin");
  for (std::string dir; std::getline(split, dir, ':');) {
    if (!dir.empty()) dirs.push_back(dir);
  }
  dirs.insert(dirs.end(), extra_dirs.begin(), extra_dirs.end());
  for (const std::string& dir : dirs) {
    std::string candidate = dir + "/" + name;
    struct stat info {};
    if (stat(candidate.c_str(), &info) == 0 && S_ISREG(info.st_mode) &&
        access(candidate.c_str(), X_OK) == 0) {
      return candidate;
    }
  }
  return "";
}

Result<ProcResult> RunProcess(const std::vector<std::string>& argv, const ProcOptions& options) {
  if (argv.empty()) return Status::Error("RunProcess: empty command");
  ProcResult result;
  result.command = JoinCommand(argv);
  std::string program = FindProgram(argv[0]);
  if (program.empty()) {
    return Status::Error("cannot run '" + argv[0] + "': program not found" +
                         (argv[0].find('/') == std::string::npos ? " on PATH" : ""));
  }

  // Everything the child needs is prepared before fork (only exec after it).
  std::vector<std::string> args = argv;
  std::vector<std::string> env = MergedEnvironment(options.env);
  std::vector<char*> c_args = CStrings(args);
  std::vector<char*> c_env = CStrings(env);

  int out_pipe[2], err_pipe[2], in_pipe[2];
  if (pipe(out_pipe) != 0 || pipe(err_pipe) != 0 || pipe(in_pipe) != 0) {
    return Status::Error("cannot run '" + argv[0] + "': pipe: " + std::strerror(errno));
  }
  for (int fd : {out_pipe[0], err_pipe[0], in_pipe[1]}) SetCloexec(fd);

  auto start = Clock::now();
  pid_t pid = fork();
  if (pid < 0) return Status::Error("cannot run '" + argv[0] + "': fork: " + std::strerror(errno));
  if (pid == 0) {
    dup2(in_pipe[0], 0);
    dup2(out_pipe[1], 1);
    dup2(err_pipe[1], 2);
    // Own process group, so that a timeout kills the program and its children.
    setpgid(0, 0);
    if (!options.working_dir.empty() && chdir(options.working_dir.c_str()) != 0) _exit(126);
    execve(program.c_str(), c_args.data(), c_env.data());
    _exit(127);
  }
  setpgid(pid, pid);
  close(out_pipe[1]);
  close(err_pipe[1]);
  close(in_pipe[0]);
  if (!options.stdin_text.empty()) {
    signal(SIGPIPE, SIG_IGN);
    size_t written = 0;
    while (written < options.stdin_text.size()) {
      ssize_t n = write(in_pipe[1], options.stdin_text.data() + written,
                        options.stdin_text.size() - written);
      if (n <= 0) break;
      written += static_cast<size_t>(n);
    }
  }
  close(in_pipe[1]);

  struct pollfd fds[2] = {{out_pipe[0], POLLIN, 0}, {err_pipe[0], POLLIN, 0}};
  std::string* sinks[2] = {&result.out, &result.err};
  int open_count = 2;
  char buffer[65536];
  while (open_count > 0) {
    int wait_ms = -1;
    if (options.timeout_seconds > 0) {
      double left = options.timeout_seconds -
                    std::chrono::duration<double>(Clock::now() - start).count();
      if (left <= 0) {
        result.timed_out = true;
        kill(-pid, SIGKILL);
        break;
      }
      wait_ms = static_cast<int>(left * 1000) + 1;
    }
    int ready = poll(fds, 2, wait_ms);
    if (ready < 0 && errno != EINTR) break;
    for (int i = 0; i < 2; ++i) {
      if (fds[i].fd < 0 || (fds[i].revents & (POLLIN | POLLHUP | POLLERR)) == 0) continue;
      ssize_t n = read(fds[i].fd, buffer, sizeof(buffer));
      if (n > 0) {
        std::string chunk(buffer, static_cast<size_t>(n));
        sinks[i]->append(chunk);
        if (options.on_output) options.on_output(chunk);
      } else if (n == 0 || errno != EINTR) {
        close(fds[i].fd);
        fds[i].fd = -1;
        --open_count;
      }
    }
  }
  for (auto& fd : fds) {
    if (fd.fd >= 0) close(fd.fd);
  }
  int wait_status = 0;
  while (waitpid(pid, &wait_status, 0) < 0 && errno == EINTR) {
  }
  result.exit_code = ExitCodeOf(wait_status);
  if (result.exit_code == 127 && result.err.empty()) {
    result.err = "could not execute " + program;
  }
  result.seconds = std::chrono::duration<double>(Clock::now() - start).count();
  return result;
}

Result<pid_t> StartDetached(const std::vector<std::string>& argv, const std::string& log_path,
                            const std::string& pid_path, const std::vector<std::string>& env) {
  if (argv.empty()) return Status::Error("StartDetached: empty command");
  std::string program = FindProgram(argv[0]);
  if (program.empty()) return Status::Error("cannot start '" + argv[0] + "': program not found");
  int log_fd = open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (log_fd < 0) {
    return Status::Error("cannot open log file " + log_path + ": " + std::strerror(errno));
  }
  std::vector<std::string> args = argv;
  std::vector<std::string> full_env = MergedEnvironment(env);
  std::vector<char*> c_args = CStrings(args);
  std::vector<char*> c_env = CStrings(full_env);

  // The child reports its exec failure (errno) through a close-on-exec pipe.
  int report[2];
  if (pipe2(report, O_CLOEXEC) != 0) {
    close(log_fd);
    return Status::Error(std::string("pipe: ") + std::strerror(errno));
  }
  pid_t pid = fork();
  if (pid < 0) {
    close(log_fd);
    return Status::Error(std::string("fork: ") + std::strerror(errno));
  }
  if (pid == 0) {
    setsid();
    int null_fd = open("/dev/null", O_RDONLY);
    dup2(null_fd, 0);
    dup2(log_fd, 1);
    dup2(log_fd, 2);
    // The server outlives ds4-setup: it must not keep ds4-setup's files (its log) open.
    for (int fd = 3; fd < 1024; ++fd) {
      if (fd != report[1]) close(fd);
    }
    signal(SIGHUP, SIG_IGN);
    execve(program.c_str(), c_args.data(), c_env.data());
    int error = errno;
    ssize_t ignored = write(report[1], &error, sizeof(error));
    (void)ignored;
    _exit(127);
  }
  close(log_fd);
  close(report[1]);
  int child_errno = 0;
  ssize_t n = read(report[0], &child_errno, sizeof(child_errno));
  close(report[0]);
  if (n == static_cast<ssize_t>(sizeof(child_errno))) {
    waitpid(pid, nullptr, 0);
    return Status::Error("cannot start " + program + ": " + std::strerror(child_errno));
  }
  std::ofstream pid_file(pid_path, std::ios::trunc);
  pid_file << pid << "\n";
  if (!pid_file.good()) {
    kill(pid, SIGTERM);
    return Status::Error("cannot write pid file " + pid_path);
  }
  return pid;
}

pid_t LivePidFromFile(const std::string& pid_path) {
  std::ifstream file(pid_path);
  long pid = 0;
  if (!(file >> pid) || pid <= 1) return 0;
  // Reap it if it is our own child that already exited.
  waitpid(static_cast<pid_t>(pid), nullptr, WNOHANG);
  if (kill(static_cast<pid_t>(pid), 0) != 0 && errno == ESRCH) return 0;
  // A zombie is not alive.
  std::ifstream stat_file("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (std::getline(stat_file, line)) {
    size_t paren = line.rfind(')');
    if (paren != std::string::npos && paren + 2 < line.size() && line[paren + 2] == 'Z') return 0;
  }
  return static_cast<pid_t>(pid);
}

Status StopProcess(pid_t pid, double grace_seconds) {
  if (pid <= 1) return Status::Error("refusing to signal pid " + std::to_string(pid));
  auto alive = [pid] {
    waitpid(pid, nullptr, WNOHANG);
    if (kill(pid, 0) != 0) return false;
    std::ifstream stat_file("/proc/" + std::to_string(pid) + "/stat");
    std::string line;
    if (std::getline(stat_file, line)) {
      size_t paren = line.rfind(')');
      if (paren != std::string::npos && paren + 2 < line.size() && line[paren + 2] == 'Z') {
        return false;
      }
    }
    return true;
  };
  if (!alive()) return Status::Ok();
  kill(pid, SIGTERM);
  auto deadline = Clock::now() + std::chrono::duration<double>(grace_seconds);
  while (Clock::now() < deadline) {
    if (!alive()) return Status::Ok();
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  kill(pid, SIGKILL);
  for (int i = 0; i < 100; ++i) {
    if (!alive()) return Status::Ok();
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return Status::Error("process " + std::to_string(pid) + " did not exit after SIGKILL");
}

}  // namespace ds4setup
