// Pipeline: `ds4-setup install` as an ordered list of stages
//   probe -> plan -> fetch -> verify -> build -> smoke -> service
// each a function of the shared Context that returns a Status. RunStages prints one line
// per stage with its duration, logs everything to the log file (whose path it prints)
// and stops at the first failure.
//
// Thread-safety: a pipeline runs on one thread; the Context belongs to it.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "host_probe.h"
#include "manifest.h"
#include "options.h"
#include "plan.h"
#include "status.h"
#include "ui.h"

namespace ds4setup {

class DirLock;

// Process exit codes of ds4-setup (documented in docs/installer.md).
enum ExitCode : int {
  kExitOk = 0,
  kExitFailure = 1,        // anything not listed below
  kExitUsage = 2,          // bad flags or an unknown model/profile name
  kExitHostCheck = 3,      // a required host check failed (doctor, probe)
  kExitDownload = 4,       // the download failed (network, HTTP, retries exhausted)
  kExitChecksum = 5,       // a file's SHA-256 or size does not match the manifest
  kExitLocked = 6,         // another ds4-setup run holds the models directory
  kExitDiskSpace = 7,      // not enough free space for the files still needed
  kExitBuild = 8,          // building the engine failed
  kExitSmoke = 9,          // the smoke test did not answer Paris
  kExitService = 10,       // installing or starting the service failed
};

struct Context {
  Options options;
  Ui* ui = nullptr;
  ModelManifest models;
  HostProfiles hosts;
  std::vector<ModelArtifact> artifacts;  // what this run installs (base, then draft)
  HostFacts facts;                       // set by probe
  HostProfile profile;                   // set by probe
  Plan plan;                             // set by plan
  std::string model_path;                // verified base model, set by verify
  std::string mtp_path;                  // verified draft model ("" without --with-mtp)
  std::string bin_dir;                   // built engine programs, set by build
  int exit_code = kExitFailure;          // a failing stage sets the code to exit with
  bool stop = false;                     // a stage sets it to end the run early, successfully
                                         // (--dry-run after the plan)
  std::shared_ptr<DirLock> models_lock;  // held from fetch to the end of the run
};

struct Stage {
  std::string name;
  std::function<Status(Context&)> run;
};

// The stages of `ds4-setup install`, in order. With --dry-run the plan stage prints
// the plan and the later stages are not run.
std::vector<Stage> InstallStages();

// Runs `stages` in order; returns the process exit code (kExitOk when all passed or a
// stage set `stop`).
int RunStages(const std::vector<Stage>& stages, Context& context);

// Stages, exposed so that subcommands can reuse them (download = plan + fetch +
// verify, without the host checks).
Status ProbeStage(Context& context);
Status PlanStage(Context& context);
Status FetchStage(Context& context);
Status VerifyStage(Context& context);

// Loads manifests and picks the artifacts for context.options; sets exit_code on error.
Status LoadManifests(Context& context);

}  // namespace ds4setup
