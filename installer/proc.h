// Proc: runs a program (no shell) and collects what it printed, with a time limit;
// or starts one detached from ds4-setup (own session, output to a log file, pid in a
// pid file) for the server when systemd is not running.
//
//   ProcOptions opts;
//   opts.timeout_seconds = 600;
//   Result<ProcResult> r = RunProcess({"cmake", "--build", dir}, opts);
//   if (!r.ok()) ...                       // could not start, or timed out
//   if (r->exit_code != 0) ... r->Describe() ...
//
// Thread-safety: each call is independent; RunProcess may be called from several
// threads (it does not change the working directory or environment of ds4-setup).
#pragma once

#include <functional>
#include <string>
#include <sys/types.h>
#include <vector>

#include "status.h"

namespace ds4setup {

struct ProcOptions {
  double timeout_seconds = 0;             // 0 = no limit; past it the child is killed
  std::string working_dir;                // empty = inherit
  std::vector<std::string> env;           // "NAME=value" entries added to the environment
  std::string stdin_text;                 // written to the child's stdin, then closed
  // Called with every chunk of output as it arrives (stdout and stderr alike), e.g. to
  // copy a build's output into the log file. May be empty.
  std::function<void(const std::string& chunk)> on_output;
};

struct ProcResult {
  std::string command;      // the argv joined with spaces, for messages
  int exit_code = -1;       // the exit status, or 128 + signal when killed by one
  bool timed_out = false;   // killed because timeout_seconds passed
  double seconds = 0;       // wall time
  std::string out;          // everything printed on stdout
  std::string err;          // everything printed on stderr

  bool ok() const { return exit_code == 0 && !timed_out; }
  // "'cmake --build x' exited with status 2: <last lines of stderr>" and the like.
  std::string Describe(size_t tail_lines = 15) const;
};

// Runs argv[0] (looked up on PATH when it has no '/'). An error Status only when the
// program could not be started; a non-zero exit or a timeout is reported in ProcResult.
Result<ProcResult> RunProcess(const std::vector<std::string>& argv,
                              const ProcOptions& options = {});

// Starts argv detached: a new session, stdin from /dev/null, stdout and stderr appended
// to `log_path`, and its pid written to `pid_path`. Returns the pid. The program keeps
// running after ds4-setup exits.
Result<pid_t> StartDetached(const std::vector<std::string>& argv, const std::string& log_path,
                            const std::string& pid_path,
                            const std::vector<std::string>& env = {});

// The pid recorded in `pid_path` if that process is still alive, else 0.
pid_t LivePidFromFile(const std::string& pid_path);

// Sends SIGTERM, waits up to `grace_seconds` for the process to exit, then SIGKILL.
// OK when the process is gone (or was already).
Status StopProcess(pid_t pid, double grace_seconds = 10);

// The first executable named `name` found on PATH and then in `extra_dirs`, or "".
std::string FindProgram(const std::string& name, const std::vector<std::string>& extra_dirs = {});

// Quotes one argument for showing a command to a person (shell-style, only if needed).
std::string ShellQuote(const std::string& arg);

}  // namespace ds4setup
