// Ui: the one voice of ds4-setup (status / warning / error lines, like ollama's
// install.sh) and its log file. Every line shown is also appended to the log with a
// timestamp; Log() writes to the log only. Secrets registered with AddSecret() (the
// HF_TOKEN) are replaced by "***" in everything shown or logged.
//
// Thread-safety: all methods may be called from any thread (one internal mutex).
#pragma once

#include <cstdio>
#include <mutex>
#include <string>
#include <vector>

#include "status.h"

namespace ds4setup {

class Ui {
 public:
  // Lines go to `out` (status) and `err` (warnings, errors). Colour only on a TTY.
  Ui(std::FILE* out = stdout, std::FILE* err = stderr);
  ~Ui();
  Ui(const Ui&) = delete;
  Ui& operator=(const Ui&) = delete;

  // Opens (appends to) the log file, creating its directory. Failure is reported,
  // and the run continues without a log.
  Status OpenLog(const std::string& path);
  const std::string& log_path() const { return log_path_; }

  void AddSecret(const std::string& secret);
  std::string Redact(const std::string& text) const;

  void Info(const std::string& message);     // ">>> message" on stdout
  void Warning(const std::string& message);  // "WARNING: message" on stderr
  void Error(const std::string& message);    // "ERROR: message" on stderr
  void Plain(const std::string& text);       // text as is on stdout (tables, JSON)
  void Log(const std::string& message);      // log file only

  // When quiet, Info lines go to the log only (e.g. under --json).
  void set_quiet(bool quiet) { quiet_ = quiet; }
  bool stdout_is_tty() const { return out_tty_; }
  // A progress bar is drawn on the terminal's current line: the next line shown clears it.
  void set_bar_open(bool open) {
    std::lock_guard<std::mutex> lock(mu_);
    bar_open_ = open;
  }
  std::FILE* out() const { return out_; }

 private:
  void Emit(std::FILE* stream, bool tty, const char* colour, const std::string& prefix,
            const std::string& message, bool show);
  void WriteLog(const std::string& level, const std::string& message);

  mutable std::mutex mu_;
  std::FILE* out_;
  std::FILE* err_;
  bool out_tty_;
  bool err_tty_;
  bool quiet_ = false;
  bool bar_open_ = false;
  std::FILE* log_ = nullptr;
  std::string log_path_;
  std::vector<std::string> secrets_;
};

}  // namespace ds4setup
