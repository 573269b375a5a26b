#include "service_stage.h"

#include <grp.h>
#include <pwd.h>
#include <unistd.h>

#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "build_stage.h"
#include "confirm.h"
#include "http_check.h"
#include "install_state.h"
#include "proc.h"
#include "smoke_stage.h"

namespace fs = std::filesystem;

namespace ds4setup {
namespace {

constexpr double kSystemctlTimeoutSeconds = 120;

std::string ReadFile(const std::string& path) {
  std::ifstream file(path);
  std::stringstream text;
  text << file.rdbuf();
  return text.str();
}

Status WriteFile(const std::string& path, const std::string& text) {
  std::error_code ec;
  fs::create_directories(fs::path(path).parent_path(), ec);
  const std::string temp = path + ".tmp";
  {
    std::ofstream file(temp, std::ios::trunc);
    file << text;
    if (!file.good()) return Status::Error("cannot write " + temp);
  }
  fs::rename(temp, path, ec);
  if (ec) return Status::Error("cannot replace " + path + ": " + ec.message());
  return Status::Ok();
}

Status Fail(Context& context, const std::string& message) {
  context.exit_code = kExitService;
  return Status::Error(message);
}

Status Systemctl(const std::vector<std::string>& args) {
  std::vector<std::string> argv = {"systemctl"};
  argv.insert(argv.end(), args.begin(), args.end());
  ProcOptions options;
  options.timeout_seconds = kSystemctlTimeoutSeconds;
  Result<ProcResult> run = RunProcess(argv, options);
  if (!run.ok()) return run.status();
  if (!run->ok()) return Status::Error(run->Describe());
  return Status::Ok();
}

bool SystemdUnitActive() {
  ProcOptions options;
  options.timeout_seconds = 30;
  Result<ProcResult> run = RunProcess({"systemctl", "is-active", "--quiet", kServiceName}, options);
  return run.ok() && run->exit_code == 0;
}

// Creates the ds4 system user when missing; sets *created.
Status EnsureServiceUser(Context& context, const std::string& user, const std::string& home,
                         const std::vector<std::string>& groups, bool* created) {
  *created = false;
  if (getpwnam(user.c_str()) != nullptr) return Status::Ok();
  std::vector<std::string> argv = {"useradd", "--system", "--user-group", "--no-create-home",
                                   "--home-dir", home, "--shell", "/usr/sbin/nologin",
                                   "--comment", "ds4 inference server"};
  if (!groups.empty()) {
    std::string list;
    for (const std::string& g : groups) list += (list.empty() ? "" : ",") + g;
    argv.push_back("--groups");
    argv.push_back(list);
  }
  argv.push_back(user);
  ProcOptions options;
  options.timeout_seconds = 60;
  Result<ProcResult> run = RunProcess(argv, options);
  if (!run.ok()) return run.status();
  if (!run->ok()) return Status::Error("cannot create the service user " + user + ": " + run->Describe());
  context.ui->Info("created system user " + user);
  *created = true;
  return Status::Ok();
}

Status ChownTo(const std::string& path, const std::string& user) {
  struct passwd* pw = getpwnam(user.c_str());
  if (pw == nullptr) return Status::Error("user " + user + " does not exist");
  if (chown(path.c_str(), pw->pw_uid, pw->pw_gid) != 0) {
    return Status::Error("cannot give " + path + " to " + user);
  }
  return Status::Ok();
}

Status WaitAndCheck(Context& context, const SmokeSpec& spec, pid_t pid, const std::string& log) {
  const std::string base = BaseUrl(context.options.host, context.options.port);
  context.ui->Info("waiting for " + base + "/v1/models (the model is loading)");
  Status ready = WaitForServer(context.options.host, context.options.port, spec.timeout_seconds, pid, log);
  if (!ready.ok()) return Fail(context, ready.message());
  context.ui->Info("the server answers on " + base);
  return RunHttpChecks(context, spec, base);
}

Status InstallWithSystemd(Context& context, InstallState& state, const UnitConfig& config,
                          const std::string& unit_text, const std::string& fingerprint,
                          const SmokeSpec& spec) {
  const bool unit_changed = ReadFile(kSystemUnitPath) != unit_text;
  const bool active = SystemdUnitActive();
  if (!active) {
    Status port = CheckPortFree(context.options.host, context.options.port);
    if (!port.ok()) return Fail(context, port.message());
  }
  if (unit_changed) {
    if (!Confirm(*context.ui, "install the systemd service ds4 (" + std::string(kSystemUnitPath) +
                                  ", user " + config.user + ", ds4-server on " + config.host + ":" +
                                  std::to_string(config.port) + ")?",
                 context.options.yes)) {
      return Fail(context, "not installing the service: declined");
    }
    bool created = false;
    DS4_RETURN_IF_ERROR(EnsureServiceUser(context, config.user, config.kv_dir, config.gpu_groups, &created));
    if (created) state.user_created = true;
    DS4_RETURN_IF_ERROR(ChownTo(config.kv_dir, config.user));
    DS4_RETURN_IF_ERROR(WriteFile(kSystemUnitPath, unit_text));
    DS4_RETURN_IF_ERROR(Systemctl({"daemon-reload"}));
    DS4_RETURN_IF_ERROR(Systemctl({"enable", kServiceName}));
    context.ui->Info("installed " + std::string(kSystemUnitPath) + " (enabled)");
  } else {
    context.ui->Info(std::string(kSystemUnitPath) + " is up to date");
  }
  state.service_mode = "systemd";
  state.unit_path = kSystemUnitPath;
  state.service_user = config.user;
  if (!context.options.start) {
    context.ui->Info("start it with: systemctl start ds4");
    return Status::Ok();
  }
  if (active && state.service_fingerprint == fingerprint && !unit_changed) {
    context.ui->Info("service ds4 already runs this engine and model");
  } else {
    Status started = Systemctl({active ? "restart" : "start", kServiceName});
    if (!started.ok()) return Fail(context, "systemctl could not start ds4: " + started.message());
    state.service_fingerprint = fingerprint;
  }
  return WaitAndCheck(context, spec, 0, "");
}

Status StartDetachedServer(Context& context, InstallState& state, const UnitConfig& config,
                           const std::string& fingerprint, const SmokeSpec& spec,
                           const std::string& why) {
  const std::string prefix = context.options.prefix;
  const std::string pid_file = ServerPidFile(prefix);
  const std::string log = ServerLogFile(prefix);
  state.pid_file = pid_file;
  state.server_log = log;
  if (!context.options.start) {
    state.service_mode = "";
    context.ui->Info(why + ": no service installed; --start would run ds4-server detached "
                     "(the unit is rendered in " + state.rendered_unit + ")");
    return Status::Ok();
  }
  pid_t running = LivePidFromFile(pid_file);
  if (running > 0 && state.service_fingerprint == fingerprint) {
    context.ui->Info("ds4-server already runs this engine and model (pid " + std::to_string(running) + ")");
    state.service_mode = "detached";
    return WaitAndCheck(context, spec, running, log);
  }
  if (running > 0) {
    context.ui->Info("stopping the previous ds4-server (pid " + std::to_string(running) + ")");
    Status stopped = StopProcess(running, 30);
    if (!stopped.ok()) return Fail(context, stopped.message());
  }
  Status port = CheckPortFree(context.options.host, context.options.port);
  if (!port.ok()) return Fail(context, port.message());
  if (!Confirm(*context.ui, "start ds4-server on " + config.host + ":" + std::to_string(config.port) + "?",
               context.options.yes)) {
    return Fail(context, "not starting the server: declined");
  }
  std::error_code ec;
  fs::create_directories(fs::path(pid_file).parent_path(), ec);
  fs::create_directories(fs::path(log).parent_path(), ec);
  std::vector<std::string> argv = {config.server_binary, "-m", config.model_path};
  if (!config.mtp_path.empty()) {
    argv.push_back("--mtp");
    argv.push_back(config.mtp_path);
  }
  argv.insert(argv.end(), {"--host", config.host, "--port", std::to_string(config.port)});
  if (config.ctx > 0) argv.insert(argv.end(), {"--ctx", std::to_string(config.ctx)});
  Result<pid_t> pid = StartDetached(argv, log, pid_file, {"DS4_KV_DIR=" + config.kv_dir});
  if (!pid.ok()) return Fail(context, pid.status().message());
  state.service_mode = "detached";
  state.service_fingerprint = fingerprint;
  context.ui->Info(why + ": started ds4-server detached instead of a systemd service (pid " +
                   std::to_string(*pid) + ", pid file " + pid_file + ", log " + log + ")");
  // Record it now: a failing check below must still leave uninstall able to stop it.
  DS4_RETURN_IF_ERROR(SaveInstallState(state));
  return WaitAndCheck(context, spec, *pid, log);
}

}  // namespace

bool SystemdRunning() {
  const char* disabled = std::getenv("DS4_NO_SYSTEMD");
  if (disabled != nullptr && *disabled != '\0' && *disabled != '0') return false;
  std::error_code ec;
  return fs::is_directory("/run/systemd/system", ec);
}

std::vector<std::string> ExistingGpuGroups() {
  std::vector<std::string> groups;
  for (const char* name : {"video", "render"}) {
    if (getgrnam(name) != nullptr) groups.push_back(name);
  }
  return groups;
}

std::string ServerPidFile(const std::string& prefix) { return prefix + "/run/ds4-server.pid"; }
std::string ServerLogFile(const std::string& prefix) { return prefix + "/logs/ds4-server.log"; }
std::string KvDir(const std::string& prefix) { return prefix + "/kv"; }

UnitConfig UnitConfigFor(const Context& context) {
  const std::string prefix = fs::absolute(context.options.prefix).lexically_normal().string();
  UnitConfig config;
  config.server_binary = CurrentBinDir(prefix) + "/ds4-server";
  config.model_path = fs::absolute(context.model_path).lexically_normal().string();
  if (!context.mtp_path.empty()) config.mtp_path = fs::absolute(context.mtp_path).lexically_normal().string();
  config.host = context.options.host;
  config.port = context.options.port;
  config.ctx = context.options.ctx;
  config.gpu_groups = ExistingGpuGroups();
  config.kv_dir = KvDir(prefix);
  std::error_code ec;
  fs::path doc = fs::path(context.options.source_dir) / "docs" / "install.md";
  if (fs::exists(doc, ec)) config.doc_path = fs::absolute(doc).lexically_normal().string();
  return config;
}

Status ServiceStage(Context& context) {
  const std::string prefix = context.options.prefix;
  Result<InstallState> loaded = LoadInstallState(prefix);
  InstallState state = loaded.ok() ? *loaded : InstallState{};
  state.prefix = prefix;

  Result<SmokeSpec> spec = SmokeSpecFor(context);
  if (!spec.ok()) return Fail(context, spec.status().message());

  UnitConfig config = UnitConfigFor(context);
  std::error_code ec;
  fs::create_directories(config.kv_dir, ec);
  if (ec) return Fail(context, "cannot create the KV directory " + config.kv_dir + ": " + ec.message());
  const std::string template_path = context.options.source_dir + "/systemd/ds4.service";
  Result<std::string> unit = RenderUnitFile(template_path, config);
  if (!unit.ok()) return Fail(context, unit.status().message());
  state.rendered_unit = prefix + "/etc/ds4.service";
  DS4_RETURN_IF_ERROR(WriteFile(state.rendered_unit, *unit));

  state.installed_at = UtcTimestampNow();
#ifdef DS4_VERSION
  state.setup_version = DS4_VERSION;
#endif
  state.model_name = context.options.model;
  state.model_path = config.model_path;
  state.mtp_path = config.mtp_path;
  state.mtp_sha256.clear();
  for (const ModelArtifact& artifact : context.artifacts) {
    if (artifact.kind == "draft") {
      state.mtp_sha256 = artifact.sha256;
    } else {
      state.model_sha256 = artifact.sha256;
    }
  }
  state.models_dir = fs::absolute(ModelsDir(context.options)).lexically_normal().string();

  const std::string fingerprint = ExecStartLine(config) + " @" + CurrentEngineVersion(prefix);
  state.host = config.host;
  state.port = config.port;
  state.ctx = config.ctx;
  state.kv_dir = config.kv_dir;

  Status result;
  if (SystemdRunning() && geteuid() == 0) {
    result = InstallWithSystemd(context, state, config, *unit, fingerprint, *spec);
  } else {
    const std::string why = SystemdRunning() ? "not running as root (systemd units need root)"
                                             : "systemd is not running here (no /run/systemd/system)";
    result = StartDetachedServer(context, state, config, fingerprint, *spec, why);
  }
  Status saved = SaveInstallState(state);
  if (!result.ok()) return result;
  if (!saved.ok()) return Fail(context, saved.message());
  if (context.options.start) {
    context.ui->Info("ready: curl " + BaseUrl(config.host, config.port) +
                     "/v1/chat/completions -H 'Content-Type: application/json' -d "
                     "'{\"messages\":[{\"role\":\"user\",\"content\":\"Hello\"}]}'");
  }
  return Status::Ok();
}

int RunUnitCommand(Context& context) {
  Status probed = ProbeStage(context);
  if (!probed.ok()) {
    context.ui->Error(probed.message());
    return context.exit_code;
  }
  const std::string models_dir = ModelsDir(context.options);
  for (const ModelArtifact& artifact : context.artifacts) {
    const std::string path = (fs::path(models_dir) / artifact.file).string();
    if (artifact.kind == "draft") {
      context.mtp_path = path;
    } else {
      context.model_path = path;
    }
  }
  Result<std::string> unit =
      RenderUnitFile(context.options.source_dir + "/systemd/ds4.service", UnitConfigFor(context));
  if (!unit.ok()) {
    context.ui->Error(unit.status().message());
    return kExitService;
  }
  context.ui->Plain("# Rendered by `ds4-setup unit` for host profile " + context.profile.name + "\n" + *unit);
  return kExitOk;
}

}  // namespace ds4setup
