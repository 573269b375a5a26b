#include "pipeline.h"

#include <sys/stat.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>

#include "doctor.h"
#include "fetch.h"
#include "host_probe.h"
#include "lock.h"
// Stages of the second half (build, smoke, service).
#include "build_stage.h"
#include "service_stage.h"
#include "smoke_stage.h"

namespace ds4setup {
namespace {

Status Fail(Context& context, int code, const std::string& message) {
  context.exit_code = code;
  return Status::Error(message);
}

std::string Seconds(double s) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.1f s", s);
  return buf;
}

// HF_TOKEN, else the token file huggingface-cli login writes.
std::string HubToken() {
  if (const char* token = std::getenv("HF_TOKEN"); token && *token) return token;
  std::string path;
  if (const char* home = std::getenv("HF_HOME"); home && *home)
    path = std::string(home) + "/token";
  else if (const char* user = std::getenv("HOME"); user && *user)
    path = std::string(user) + "/.cache/huggingface/token";
  std::ifstream in(path);
  std::string token;
  std::getline(in, token);
  while (!token.empty() && (token.back() == '\r' || token.back() == ' ')) token.pop_back();
  return token;
}

uint64_t BytesStillNeeded(const Context& context) {
  uint64_t total = 0;
  for (size_t i = 0; i < context.artifacts.size(); ++i)
    total += InspectFile(context.artifacts[i], ModelsDir(context.options),
                         i == 0 ? context.options.adopt_path : "")
                 .remaining_bytes;
  return total;
}

int ExitCodeFor(FetchFailure failure) {
  switch (failure) {
    case FetchFailure::kNone: return kExitOk;
    case FetchFailure::kNetwork: return kExitDownload;
    case FetchFailure::kChecksum: return kExitChecksum;
    case FetchFailure::kDiskSpace: return kExitDiskSpace;
    case FetchFailure::kLocal: return kExitFailure;
  }
  return kExitFailure;
}

}  // namespace

Status LoadManifests(Context& context) {
  Options& options = context.options;
  if (options.demo) {
    options.model = "demo";
    if (options.host_profile.empty()) options.host_profile = "demo";
  }
  Result<ModelManifest> models = LoadModelManifest(options.manifests_dir + "/models.yaml");
  if (!models.ok()) return Fail(context, kExitFailure, models.status().message());
  Result<HostProfiles> hosts = LoadHostProfiles(options.manifests_dir + "/hosts.yaml");
  if (!hosts.ok()) return Fail(context, kExitFailure, hosts.status().message());
  context.models = *models;
  context.hosts = *hosts;
  Result<std::vector<ModelArtifact>> artifacts =
      SelectArtifacts(context.models, options.model, options.with_mtp);
  if (!artifacts.ok()) return Fail(context, kExitUsage, artifacts.status().message());
  context.artifacts = *artifacts;
  return Status::Ok();
}

Status ProbeStage(Context& context) {
  context.facts = ProbeHost(ModelsDir(context.options));
  Result<HostProfile> profile =
      ChooseProfile(context.facts, context.hosts, context.options.host_profile);
  if (!profile.ok()) return Fail(context, kExitHostCheck, profile.status().message());
  context.profile = *profile;
  std::vector<CheckRow> rows = EvaluateHost(context.facts, context.profile, BytesStillNeeded(context));
  context.ui->Log("host checks (profile " + context.profile.name + "):\n" + FormatCheckTable(rows));
  if (AllRequiredPass(rows)) return Status::Ok();
  context.ui->Plain(FormatCheckTable(rows));
  bool only_disk = true;
  std::string failed;
  for (const auto& row : rows) {
    if (row.passed) continue;
    if (row.name != "disk") only_disk = false;
    failed += (failed.empty() ? "" : "; ") + row.fix;
  }
  std::string message = "host checks failed for profile " + context.profile.name + ": " + failed;
  if (context.options.dry_run) {
    context.ui->Warning("host checks failed for profile " + context.profile.name +
                        " (fixes above); dry run: showing the plan anyway, a real install stops here");
    return Status::Ok();
  }
  return Fail(context, only_disk ? kExitDiskSpace : kExitHostCheck, message);
}

Status PlanStage(Context& context) {
  HostProfile profile = context.profile;
  if (profile.name.empty()) profile.name = "none (download only)";
  Result<Plan> plan = MakePlan(context.options, context.artifacts, profile);
  if (!plan.ok()) return Fail(context, kExitFailure, plan.status().message());
  context.plan = *plan;
  std::string text = FormatPlan(context.plan, context.options);
  if (context.options.dry_run) {
    context.ui->Plain(text);
    context.ui->Info("Dry run: nothing was downloaded, built or installed");
    context.stop = true;
  } else {
    context.ui->Log(text);
    std::string names;
    for (const auto& file : context.plan.files) names += (names.empty() ? "" : " + ") + file.artifact.name;
    context.ui->Info("Models: " + names + " in " + context.plan.models_dir + ", " +
                     HumanBytes(context.plan.remaining_bytes) + " to download");
  }
  return Status::Ok();
}

Status FetchStage(Context& context) {
  const std::string dir = context.plan.models_dir;
  Result<std::unique_ptr<DirLock>> lock = DirLock::Acquire(dir);
  if (!lock.ok())
    return Fail(context, IsLockHeld(lock.status()) ? kExitLocked : kExitFailure, lock.status().message());
  context.models_lock = std::move(lock.value());

  uint64_t remaining = 0;
  for (const auto& file : context.plan.files) remaining += InspectFile(file.artifact, dir, file.adopt_from).remaining_bytes;
  std::string measured_at;
  Result<uint64_t> free_bytes = FreeDiskBytes(dir, &measured_at);
  if (free_bytes.ok() && *free_bytes < remaining)
    return Fail(context, kExitDiskSpace,
                "not enough free space in " + measured_at + ": " + HumanBytes(remaining) +
                    " still to download, " + HumanBytes(*free_bytes) +
                    " free; free some space or choose another --models-dir");

  std::string token = HubToken();
  context.ui->AddSecret(token);
  for (const auto& file : context.plan.files) {
    FetchRequest request;
    request.url = file.url;
    request.dest = file.dest;
    request.expected_bytes = file.artifact.bytes;
    request.expected_sha256 = file.artifact.sha256;
    request.token = token;
    request.label = file.artifact.name;
    request.chunk_bytes = ChunkBytesFromEnv();
    request.retry = RetryPolicyFromEnv();
    FetchOutcome outcome = file.state == FileState::kAdopt ? AdoptFile(file.adopt_from, request, context.ui)
                                                           : FetchFile(request, context.ui);
    context.ui->Log(file.artifact.name + ": received " + std::to_string(outcome.stats.bytes_received) +
                    " bytes, reused " + std::to_string(outcome.stats.bytes_reused) + ", retries " +
                    std::to_string(outcome.stats.retries) + ", re-resolves " +
                    std::to_string(outcome.stats.reresolves));
    if (!outcome.status.ok())
      return Fail(context, ExitCodeFor(outcome.failure), outcome.status.message());
  }
  return Status::Ok();
}

Status VerifyStage(Context& context) {
  for (const auto& file : context.plan.files) {
    struct stat st;
    if (::stat(file.dest.c_str(), &st) != 0 || static_cast<uint64_t>(st.st_size) != file.artifact.bytes)
      return Fail(context, kExitChecksum, file.dest + " is missing or has the wrong size after the download");
    context.ui->Info(file.artifact.name + ": " + file.dest + " (sha256 " + file.artifact.sha256.substr(0, 16) +
                     "... verified)");
    if (file.artifact.kind == "draft")
      context.mtp_path = file.dest;
    else
      context.model_path = file.dest;
  }
  return Status::Ok();
}

std::vector<Stage> InstallStages() {
  return {
      {"probe", ProbeStage},
      {"plan", PlanStage},
      {"fetch", FetchStage},
      {"verify", VerifyStage},
      // The second half: build the engine, smoke-test it, install the service.
      {"build", BuildStage},
      {"smoke", SmokeStage},
      {"service", ServiceStage},
  };
}

int RunStages(const std::vector<Stage>& stages, Context& context) {
  Ui* ui = context.ui;
  if (!ui->log_path().empty()) ui->Info("Log: " + ui->log_path());
  using Clock = std::chrono::steady_clock;
  for (const auto& stage : stages) {
    Clock::time_point began = Clock::now();
    ui->Log("stage " + stage.name + ": start");
    Status status = stage.run(context);
    double took = std::chrono::duration<double>(Clock::now() - began).count();
    if (!status.ok()) {
      ui->Error(stage.name + " failed after " + Seconds(took) + ": " + status.message());
      if (!ui->log_path().empty()) ui->Error("see the log: " + ui->log_path());
      return context.exit_code == kExitOk ? kExitFailure : context.exit_code;
    }
    ui->Info(stage.name + ": ok (" + Seconds(took) + ")");
    if (context.stop) break;
  }
  return kExitOk;
}

}  // namespace ds4setup
