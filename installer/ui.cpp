#include "ui.h"

#include <unistd.h>

#include <ctime>
#include <filesystem>

namespace ds4setup {
namespace {

const char* kBold = "\033[1m";
const char* kYellow = "\033[33m";
const char* kRed = "\033[31m";
const char* kReset = "\033[0m";

bool IsTty(std::FILE* stream) { return stream && isatty(fileno(stream)) == 1; }

std::string Timestamp() {
  std::time_t now = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&now, &tm);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

}  // namespace

Ui::Ui(std::FILE* out, std::FILE* err)
    : out_(out), err_(err), out_tty_(IsTty(out)), err_tty_(IsTty(err)) {}

Ui::~Ui() {
  if (log_) std::fclose(log_);
}

Status Ui::OpenLog(const std::string& path) {
  std::error_code ec;
  std::filesystem::path p(path);
  if (p.has_parent_path()) std::filesystem::create_directories(p.parent_path(), ec);
  std::FILE* file = std::fopen(path.c_str(), "a");
  if (!file) return Status::Error("cannot open log file " + path);
  std::lock_guard<std::mutex> lock(mu_);
  if (log_) std::fclose(log_);
  log_ = file;
  log_path_ = path;
  return Status::Ok();
}

void Ui::AddSecret(const std::string& secret) {
  if (secret.empty()) return;
  std::lock_guard<std::mutex> lock(mu_);
  secrets_.push_back(secret);
}

std::string Ui::Redact(const std::string& text) const {
  std::string out = text;
  for (const auto& secret : secrets_) {
    for (size_t at = out.find(secret); at != std::string::npos; at = out.find(secret, at + 3))
      out.replace(at, secret.size(), "***");
  }
  return out;
}

void Ui::Info(const std::string& message) { Emit(out_, out_tty_, kBold, ">>> ", message, !quiet_); }
void Ui::Warning(const std::string& message) {
  Emit(err_, err_tty_, kYellow, "WARNING: ", message, true);
}
void Ui::Error(const std::string& message) { Emit(err_, err_tty_, kRed, "ERROR: ", message, true); }

void Ui::Plain(const std::string& text) {
  std::lock_guard<std::mutex> lock(mu_);
  std::string safe = Redact(text);
  std::fputs(safe.c_str(), out_);
  std::fflush(out_);
  WriteLog("OUT", safe);
}

void Ui::Log(const std::string& message) {
  std::lock_guard<std::mutex> lock(mu_);
  WriteLog("LOG", Redact(message));
}

void Ui::Emit(std::FILE* stream, bool tty, const char* colour, const std::string& prefix,
              const std::string& message, bool show) {
  std::lock_guard<std::mutex> lock(mu_);
  std::string safe = Redact(message);
  if (show && bar_open_ && out_tty_) {
    std::fputs("\r\033[K", out_);
    std::fflush(out_);
    bar_open_ = false;
  }
  if (show) {
    if (tty)
      std::fprintf(stream, "%s%s%s%s\n", colour, prefix.c_str(), kReset, safe.c_str());
    else
      std::fprintf(stream, "%s%s\n", prefix.c_str(), safe.c_str());
    std::fflush(stream);
  }
  std::string level = prefix == ">>> " ? "INFO" : prefix == "WARNING: " ? "WARN" : "ERROR";
  WriteLog(level, safe);
}

// Callers hold mu_ and pass redacted text.
void Ui::WriteLog(const std::string& level, const std::string& message) {
  if (!log_) return;
  std::fprintf(log_, "%s %s %s%s", Timestamp().c_str(), level.c_str(), message.c_str(),
               !message.empty() && message.back() == '\n' ? "" : "\n");
  std::fflush(log_);
}

}  // namespace ds4setup
