#include "status_cmd.h"

#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "build_stage.h"
#include "doctor.h"
#include "http_check.h"
#include "install_state.h"
#include "proc.h"
#include "service_stage.h"

namespace fs = std::filesystem;

namespace ds4setup {
namespace {

std::string Row(const std::string& label, const std::string& value) {
  std::string padded = label + ":";
  padded.resize(std::max<size_t>(padded.size() + 1, 11), ' ');
  return "  " + padded + value + "\n";
}

std::string EngineLine(const std::string& prefix) {
  std::string version = CurrentEngineVersion(prefix);
  if (version.empty()) return "not built";
  std::ifstream file(prefix + "/versions/" + version + "/BUILD_INFO.json");
  std::stringstream text;
  text << file.rdbuf();
  nlohmann::json info = nlohmann::json::parse(text.str(), nullptr, false);
  std::string line = version;
  if (info.is_object()) {
    std::string archs = info.value("cuda_architectures", "");
    line += archs.empty() ? " (CPU-only)" : " (CUDA sm_" + archs + ")";
    line += ", built " + info.value("built_at", std::string("?"));
  }
  line += ", in " + CurrentBinDir(prefix);
  std::error_code ec;
  if (fs::is_symlink(fs::path(prefix) / "previous", ec)) {
    line += "; previous build kept for rollback: " +
            fs::read_symlink(fs::path(prefix) / "previous", ec).filename().string();
  }
  return line;
}

std::string FileLine(const Context& context, const std::string& path, const std::string& sha256) {
  struct stat info {};
  if (stat(path.c_str(), &info) != 0) return path + ": MISSING";
  uint64_t size = static_cast<uint64_t>(info.st_size);
  std::string line = path + " (" + HumanBytes(size) + ")";
  uint64_t expected = 0;
  for (const ModelArtifact& artifact : context.models.models) {
    if (artifact.sha256 == sha256) expected = artifact.bytes;
  }
  if (expected != 0 && expected != size) {
    return line + ": WRONG SIZE, the manifest says " + std::to_string(expected) +
           " bytes; re-run ds4-setup install";
  }
  return line + ": sha256 " + sha256.substr(0, 16) + "... verified at install, size unchanged";
}

}  // namespace

int RunStatus(Context& context) {
  Ui& ui = *context.ui;
  const std::string prefix = context.options.prefix;
  Result<InstallState> loaded = LoadInstallState(prefix);
  if (!loaded.ok()) {
    std::string version = CurrentEngineVersion(prefix);
    ui.Error(loaded.status().message() +
             (version.empty() ? "" : " (an engine build " + version + " is there: the install did not finish)"));
    return kExitFailure;
  }
  const InstallState& state = *loaded;
  std::string text = "ds4 in " + prefix + "\n";
  text += Row("installed", state.installed_at.empty() ? "not finished (the service stage did not run)"
                                                      : state.installed_at + " by ds4-setup " + state.setup_version);
  text += Row("engine", EngineLine(prefix));
  if (!state.model_path.empty()) {
    text += Row("model", state.model_name + ": " + FileLine(context, state.model_path, state.model_sha256));
  }
  if (!state.mtp_path.empty()) text += Row("mtp", FileLine(context, state.mtp_path, state.mtp_sha256));
  text += Row("smoke", state.smoke_passed_at.empty() ? "not passed yet" : "passed " + state.smoke_passed_at);

  bool should_run = false;
  if (state.service_mode == "systemd") {
    ProcOptions options;
    options.timeout_seconds = 30;
    Result<ProcResult> active = RunProcess({"systemctl", "is-active", kServiceName}, options);
    Result<ProcResult> enabled = RunProcess({"systemctl", "is-enabled", kServiceName}, options);
    std::string a = active.ok() ? active->out : "unknown";
    std::string e = enabled.ok() ? enabled->out : "unknown";
    while (!a.empty() && a.back() == '\n') a.pop_back();
    while (!e.empty() && e.back() == '\n') e.pop_back();
    should_run = a == "active" || a == "activating";
    text += Row("service", "systemd unit " + state.unit_path + ": " + a + ", " + e);
  } else if (state.service_mode == "detached") {
    pid_t pid = LivePidFromFile(state.pid_file);
    should_run = pid > 0;
    text += Row("service", pid > 0 ? "ds4-server running detached, pid " + std::to_string(pid) + " (log " +
                                         state.server_log + ")"
                                   : "ds4-server (detached) is NOT running; pid file " + state.pid_file);
  } else {
    text += Row("service", "not started (re-run install with --start)");
  }

  int code = kExitOk;
  const std::string url = BaseUrl(state.host, state.port) + "/v1/models";
  Result<HttpReply> reply = HttpRequest("GET", url, "", 5);
  if (reply.ok() && reply->code == 200) {
    std::string models;
    nlohmann::json body = nlohmann::json::parse(reply->body, nullptr, false);
    if (body.is_object() && body.contains("data") && body["data"].is_array()) {
      for (const auto& m : body["data"]) {
        if (m.is_object() && m.contains("id") && m["id"].is_string()) {
          models += (models.empty() ? "" : ", ") + m["id"].get<std::string>();
        }
      }
    }
    text += Row("endpoint", url + " answers 200" + (models.empty() ? "" : " (models: " + models + ")"));
  } else {
    std::string why = reply.ok() ? "HTTP " + std::to_string(reply->code) : reply.status().message();
    text += Row("endpoint", url + " does not answer: " + why);
    if (should_run || state.service_mode == "detached") code = kExitService;
  }
  ui.Plain(text);
  return code;
}

}  // namespace ds4setup
