#include "uninstall_cmd.h"

#include <pwd.h>
#include <unistd.h>

#include <filesystem>

#include "confirm.h"
#include "options.h"
#include "install_state.h"
#include "proc.h"
#include "service_stage.h"

namespace fs = std::filesystem;

namespace ds4setup {
namespace {

Status RunQuiet(const std::vector<std::string>& argv) {
  ProcOptions options;
  options.timeout_seconds = 120;
  Result<ProcResult> run = RunProcess(argv, options);
  if (!run.ok()) return run.status();
  if (!run->ok()) return Status::Error(run->Describe());
  return Status::Ok();
}

// Stops whatever install started; returns what was done, for the summary.
Status StopService(Ui& ui, const InstallState& state, const std::string& prefix) {
  if (state.service_mode == "systemd" || fs::exists(kSystemUnitPath)) {
    const std::string unit = state.unit_path.empty() ? kSystemUnitPath : state.unit_path;
    if (SystemdRunning()) {
      Status disabled = RunQuiet({"systemctl", "disable", "--now", kServiceName});
      if (!disabled.ok()) ui.Warning("systemctl disable --now ds4: " + disabled.message());
    }
    std::error_code ec;
    if (fs::remove(unit, ec)) ui.Info("removed " + unit);
    if (ec) return Status::Error("cannot remove " + unit + ": " + ec.message());
    if (SystemdRunning()) {
      RunQuiet({"systemctl", "daemon-reload"});
      RunQuiet({"systemctl", "reset-failed", kServiceName});
    }
  }
  for (const std::string& pid_file : {state.pid_file.empty() ? ServerPidFile(prefix) : state.pid_file,
                                      prefix + "/run/smoke-server.pid"}) {
    pid_t pid = LivePidFromFile(pid_file);
    if (pid <= 0) continue;
    Status stopped = StopProcess(pid, 30);
    if (!stopped.ok()) return stopped;
    ui.Info("stopped ds4-server (pid " + std::to_string(pid) + ")");
  }
  return Status::Ok();
}

Status RemoveUser(Ui& ui, const InstallState& state) {
  if (!state.user_created || state.service_user.empty()) return Status::Ok();
  if (getpwnam(state.service_user.c_str()) == nullptr) return Status::Ok();
  Status removed = RunQuiet({"userdel", state.service_user});
  if (!removed.ok()) return Status::Error("cannot remove user " + state.service_user + ": " + removed.message());
  ui.Info("removed system user " + state.service_user);
  return Status::Ok();
}

// The model files --purge-models removes: those the install state records, and every
// file of the manifest in the models directory (a previous uninstall that kept the
// models also removed the state).
std::vector<std::string> ModelFiles(const Context& context, const InstallState& state,
                                    std::string* models_dir) {
  *models_dir = state.models_dir.empty() ? ModelsDir(context.options) : state.models_dir;
  std::vector<std::string> files;
  for (const std::string& path : {state.model_path, state.mtp_path}) {
    if (!path.empty()) files.push_back(path);
  }
  for (const ModelArtifact& artifact : context.models.models) {
    files.push_back((fs::path(*models_dir) / artifact.file).string());
  }
  return files;
}

bool AnyExists(const std::vector<std::string>& files) {
  std::error_code ec;
  for (const std::string& file : files) {
    if (fs::exists(file, ec) || fs::exists(file + ".part", ec)) return true;
  }
  return false;
}

Status RemoveModels(Ui& ui, const std::vector<std::string>& files, const std::string& models_dir) {
  std::error_code ec;
  for (const std::string& path : files) {
    for (const std::string& file : {path, path + ".part", path + ".bad"}) {
      if (fs::remove(file, ec)) ui.Info("removed " + file);
      if (ec) return Status::Error("cannot remove " + file + ": " + ec.message());
    }
  }
  if (fs::is_directory(models_dir, ec)) {
    fs::remove(fs::path(models_dir) / ".ds4-setup.lock", ec);
    if (fs::is_empty(models_dir, ec) && fs::remove(models_dir, ec)) {
      ui.Info("removed the empty models directory " + models_dir);
    }
  }
  return Status::Ok();
}

}  // namespace

const std::vector<std::string>& PrefixEntries() {
  static const std::vector<std::string> entries = {
      "current", "current.new", "previous", "previous.new", "versions", "build", "setup-build",
      "etc", "kv", "run", "logs", "install-state.json", "install-state.json.tmp"};
  return entries;
}

int RunUninstall(Context& context) {
  Ui& ui = *context.ui;
  const std::string prefix = context.options.prefix;
  Result<InstallState> loaded = LoadInstallState(prefix);
  InstallState state = loaded.ok() ? *loaded : InstallState{};
  state.prefix = prefix;

  std::error_code ec;
  std::vector<fs::path> present;
  for (const std::string& name : PrefixEntries()) {
    fs::path path = fs::path(prefix) / name;
    if (fs::exists(fs::symlink_status(path, ec))) present.push_back(path);
  }
  // <prefix>/src is removed only when install.sh cloned it there (it leaves a marker).
  if (fs::exists(fs::path(prefix) / "src" / ".ds4-spark-clone", ec)) present.push_back(fs::path(prefix) / "src");
  const bool has_service = state.service_mode == "systemd" || fs::exists(kSystemUnitPath, ec) ||
                           LivePidFromFile(ServerPidFile(prefix)) > 0;
  std::string models_dir;
  const std::vector<std::string> model_files = ModelFiles(context, state, &models_dir);
  const bool purge = context.options.purge_models && AnyExists(model_files);
  if (!loaded.ok() && present.empty() && !has_service && !purge) {
    ui.Info("nothing to uninstall in " + prefix);
    return kExitOk;
  }

  std::string what = "remove ds4 from " + prefix + " (service, engine builds, logs";
  if (state.user_created) what += ", user " + state.service_user;
  what += context.options.purge_models ? ", AND the model files)" : "; model files are kept)";
  if (!Confirm(ui, what + "?", context.options.yes)) {
    ui.Info("nothing removed");
    return kExitFailure;
  }

  Status status = StopService(ui, state, prefix);
  if (status.ok()) status = RemoveUser(ui, state);
  if (!status.ok()) {
    ui.Error(status.message());
    return kExitService;
  }
  for (const fs::path& path : present) {
    fs::remove_all(path, ec);
    if (ec) {
      ui.Error("cannot remove " + path.string() + ": " + ec.message());
      return kExitFailure;
    }
  }
  ui.Info("removed the engine builds, logs and state under " + prefix);
  if (context.options.purge_models) {
    Status models = RemoveModels(ui, model_files, models_dir);
    if (!models.ok()) {
      ui.Error(models.message());
      return kExitFailure;
    }
  } else if (!state.model_path.empty()) {
    ui.Info("kept the model files in " + state.models_dir + " (delete them with --purge-models)");
  }
  if (fs::is_directory(prefix, ec) && fs::is_empty(prefix, ec) && fs::remove(prefix, ec)) {
    ui.Info("removed the empty " + prefix);
  }
  ui.Info("ds4 is uninstalled");
  return kExitOk;
}

}  // namespace ds4setup
