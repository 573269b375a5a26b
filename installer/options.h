// Options: every setting of one ds4-setup run, as parsed from the command line
// (see DESIGN.md, "Contracts"). main.cpp fills one Options; every stage reads it.
//
//   ds4-setup [install] [--with-mtp] [--start] [--model NAME] [--models-dir DIR]
//             [--prefix DIR] [--dry-run] [--yes] [--demo] ...
//   ds4-setup doctor | download | status | uninstall
//
// Thread-safety: a plain value; copy it freely, mutate it only from one thread.
#pragma once

#include <cstdint>
#include <string>

namespace ds4setup {

enum class Command { kInstall, kDoctor, kDownload, kStatus, kUninstall };

struct Options {
  Command command = Command::kInstall;

  // What to install.
  std::string model = "q2-imatrix";  // manifest entry name (manifests/models.yaml)
  bool with_mtp = false;             // also fetch the MTP draft model
  std::string revision;              // overrides the manifest's pinned revision when set
  std::string adopt_path;            // an already downloaded file to verify and reuse
  bool demo = false;                 // host profile "demo" + model "demo" (tiny, CPU)

  // Where.
  std::string models_dir;            // default: <prefix>/models
  std::string prefix = "/opt/ds4";   // install root (binaries, config)
  std::string manifests_dir;         // default: <source_dir>/manifests
  std::string source_dir;            // default: found from the executable or DS4_SOURCE_DIR
  std::string log_path;              // default: <prefix>/logs/ds4-setup.log (or a temp dir)

  // Host checks.
  std::string host_profile;          // forces a profile from manifests/hosts.yaml

  // The service.
  bool start = false;                // start the systemd service after installing
  std::string host = "127.0.0.1";    // address the server binds
  int port = 8000;
  int ctx = 0;                       // context length for the server; 0 = engine default

  // Behaviour.
  bool dry_run = false;              // print the plan, change nothing
  bool yes = false;                  // answer yes to every question
  bool json = false;                 // machine-readable output (doctor)
  bool purge_models = false;         // uninstall: also delete the downloaded models
};

// The models directory to use: options.models_dir if set, else <prefix>/models.
inline std::string ModelsDir(const Options& options) {
  if (!options.models_dir.empty()) return options.models_dir;
  return options.prefix + "/models";
}

}  // namespace ds4setup
