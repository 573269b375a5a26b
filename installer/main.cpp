// ds4-setup: installs DeepSeek V4 Flash with the ds4 engine (see DESIGN.md).
//   ds4-setup [install] [--with-mtp] [--start] [--model NAME] [--models-dir DIR] ...
//   ds4-setup doctor [--json] | download | status | uninstall
// Exit codes: see ExitCode in pipeline.h and docs/installer.md.
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>
#include <cstdlib>
#include <filesystem>
#include <string>

#include "doctor.h"
#include "host_probe.h"
#include "options.h"
#include "pipeline.h"
#include "service_stage.h"
#include "status_cmd.h"
#include "uninstall_cmd.h"
#include "ui.h"

#ifndef DS4_VERSION
#define DS4_VERSION "dev"
#endif

namespace ds4setup {
namespace {

namespace fs = std::filesystem;

bool HasManifests(const fs::path& dir) { return fs::exists(dir / "models.yaml"); }

// --source-dir, $DS4_SOURCE_DIR, an ancestor of the executable holding manifests/, or the
// tree this binary was built from.
std::string FindSourceDir(const std::string& flag) {
  if (!flag.empty()) return flag;
  if (const char* env = std::getenv("DS4_SOURCE_DIR"); env && *env) return env;
  std::error_code ec;
  fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  for (fs::path dir = exe.parent_path(); !ec && !dir.empty() && dir != dir.parent_path();
       dir = dir.parent_path()) {
    if (HasManifests(dir / "manifests")) return dir.string();
    if (HasManifests(dir / "share" / "ds4" / "manifests")) return (dir / "share" / "ds4").string();
  }
  return DS4_SOURCE_DIR;
}

// PREFIX/logs when it can be written; read-only runs (doctor, --dry-run) never create it.
std::string DefaultLogPath(const Options& options) {
  std::string fallback = "/tmp/ds4-setup-" + std::to_string(::getuid()) + ".log";
  if (options.dry_run || options.command == Command::kDoctor) return fallback;
  std::error_code ec;
  fs::path logs = fs::path(options.prefix) / "logs";
  fs::create_directories(logs, ec);
  if (!ec && ::access(logs.c_str(), W_OK) == 0) return (logs / "ds4-setup.log").string();
  return fallback;
}

void AddSharedFlags(CLI::App& app, Options& o) {
  app.add_flag("--with-mtp", o.with_mtp, "Also install the MTP draft model (speculative decoding)");
  app.add_flag("--start", o.start, "Start the service after installing");
  app.add_option("--model", o.model, "Model to install (manifests/models.yaml)")->capture_default_str();
  app.add_option("--models-dir", o.models_dir, "Where model files go (default: PREFIX/models)");
  app.add_option("--prefix", o.prefix, "Install root")->capture_default_str();
  app.add_option("--revision", o.revision, "Hugging Face revision instead of the pinned one");
  app.add_option("--adopt", o.adopt_path, "Use this already downloaded model file (verified first)");
  app.add_flag("--dry-run", o.dry_run, "Print the plan and change nothing");
  app.add_flag("-y,--yes", o.yes, "Answer yes to every question");
  app.add_flag("--demo", o.demo, "Tiny bundled model on the CPU: the whole pipeline on any Linux box");
  app.add_flag("--json", o.json, "Machine-readable output (doctor)");
  app.add_option("--host-profile", o.host_profile, "Force a host profile (manifests/hosts.yaml)");
  app.add_option("--host", o.host, "Address the server binds")->capture_default_str();
  app.add_option("--port", o.port, "Port the server listens on")->capture_default_str();
  app.add_option("--ctx", o.ctx, "Context length of the server (0 = engine default)");
  app.add_flag("--purge-models", o.purge_models, "uninstall: also delete the downloaded models");
  app.add_option("--log", o.log_path, "Log file (default: PREFIX/logs/ds4-setup.log)");
  app.add_option("--manifests", o.manifests_dir, "Manifests directory (default: SOURCE/manifests)");
  app.add_option("--source-dir", o.source_dir, "ds4-spark source tree (default: found automatically)");
}

int RunDoctor(Context& context) {
  Ui& ui = *context.ui;
  context.facts = ProbeHost(ModelsDir(context.options));
  Result<HostProfile> profile = ChooseProfile(context.facts, context.hosts, context.options.host_profile);
  if (!profile.ok()) {
    if (context.options.json)
      ui.Plain(nlohmann::json({{"ok", false}, {"error", profile.status().message()}}).dump(2) + "\n");
    else
      ui.Error(profile.status().message());
    return kExitHostCheck;
  }
  uint64_t needed = 0;
  for (size_t i = 0; i < context.artifacts.size(); ++i)
    needed += InspectFile(context.artifacts[i], ModelsDir(context.options),
                          i == 0 ? context.options.adopt_path : "").remaining_bytes;
  std::vector<CheckRow> rows = EvaluateHost(context.facts, *profile, needed);
  bool ok = AllRequiredPass(rows);
  if (context.options.json) {
    ui.Plain(FormatCheckJson(rows, profile->name, context.facts));
  } else {
    ui.Info("Host profile " + profile->name + " (" + profile->description + ")");
    ui.Plain(FormatCheckTable(rows));
    if (ok)
      ui.Info("All checks passed");
    else
      ui.Error("some checks failed; see the fixes above");
  }
  return ok ? kExitOk : kExitHostCheck;
}

int RunDownload(Context& context) {
  std::vector<Stage> stages = {{"plan", PlanStage}, {"fetch", FetchStage}, {"verify", VerifyStage}};
  int code = RunStages(stages, context);
  if (code == kExitOk && !context.options.dry_run) {
    context.ui->Info("Model ready: " + context.model_path);
    if (!context.mtp_path.empty()) context.ui->Info("MTP draft ready: " + context.mtp_path);
  }
  return code;
}

int Main(int argc, char** argv) {
  Options options;
  CLI::App app{"ds4-setup " DS4_VERSION ": DeepSeek V4 Flash on a DGX Spark, installed and verified"};
  app.fallthrough();
  app.require_subcommand(0, 1);
  AddSharedFlags(app, options);
  CLI::App* install = app.add_subcommand("install", "Check, download, build, smoke-test and install (default)");
  CLI::App* doctor = app.add_subcommand("doctor", "Check this host (read-only)");
  CLI::App* download = app.add_subcommand("download", "Download and verify the model files only");
  CLI::App* status = app.add_subcommand("status", "Show what is installed and whether the service runs");
  CLI::App* uninstall = app.add_subcommand("uninstall", "Remove the service and installed files");
  CLI::App* unit = app.add_subcommand("unit", "Print the systemd unit install would write (changes nothing)");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int code = app.exit(e);
    return code == 0 ? kExitOk : kExitUsage;
  }
  if (*doctor) options.command = Command::kDoctor;
  if (*download) options.command = Command::kDownload;
  if (*status) options.command = Command::kStatus;
  if (*uninstall) options.command = Command::kUninstall;
  (void)install;

  options.source_dir = FindSourceDir(options.source_dir);
  if (options.manifests_dir.empty()) {
    options.manifests_dir = options.source_dir + "/manifests";
    if (!HasManifests(options.manifests_dir) && HasManifests(fs::path(options.source_dir)))
      options.manifests_dir = options.source_dir;
  }

  Ui ui;
  if (const char* token = std::getenv("HF_TOKEN")) ui.AddSecret(token);
  if (options.json) ui.set_quiet(true);
  // status, uninstall and unit must not create anything under the prefix: they log to /tmp.
  if (options.log_path.empty() &&
      (options.command == Command::kStatus || options.command == Command::kUninstall || *unit))
    options.log_path = "/tmp/ds4-setup-" + std::to_string(::getuid()) + ".log";
  if (options.log_path.empty()) options.log_path = DefaultLogPath(options);
  Status log = ui.OpenLog(options.log_path);
  if (!log.ok()) ui.Warning(log.message() + "; continuing without a log file");
  ui.Log("ds4-setup " DS4_VERSION " started");

  Context context;
  context.options = options;
  context.ui = &ui;
  // status and uninstall: the manifests only add detail (file sizes), so a failure to
  // load them does not stop either.
  if (options.command == Command::kStatus || options.command == Command::kUninstall) {
    if (!LoadManifests(context).ok()) ui.Log("manifests not loaded; status shows less detail");
    return options.command == Command::kStatus ? RunStatus(context) : RunUninstall(context);
  }
  Status loaded = LoadManifests(context);
  if (!loaded.ok()) {
    if (options.json)  // doctor --json answers in JSON even when it cannot start
      ui.Plain(nlohmann::json({{"ok", false}, {"error", loaded.message()}}).dump(2) + "\n");
    ui.Error(loaded.message());
    return context.exit_code;
  }
  if (*unit) return RunUnitCommand(context);
  switch (context.options.command) {
    case Command::kDoctor: return RunDoctor(context);
    case Command::kDownload: return RunDownload(context);
    default: break;
  }
  int code = RunStages(InstallStages(), context);
  if (code == kExitOk && !context.options.dry_run) ui.Info("Done.");
  return code;
}

}  // namespace
}  // namespace ds4setup

int main(int argc, char** argv) { return ds4setup::Main(argc, argv); }
