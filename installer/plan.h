// Plan: what one ds4-setup run will do, computed before it changes anything: each file
// to fetch (URL, destination, what is already there, bytes still to download), what
// will be built and where things are installed. `install --dry-run` prints it and stops.
//
// Thread-safety: plain values; MakePlan only reads the filesystem.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "manifest.h"
#include "options.h"
#include "status.h"

namespace ds4setup {

enum class FileState {
  kMissing,   // nothing on disk: download from byte 0
  kPartial,   // FILE.part exists: resume after hashing it
  kOverlong,  // FILE.part is longer than the file: set aside, download from 0
  kPresent,   // FILE exists with the right size: verify its SHA-256 and reuse it
  kWrongSize, // FILE exists with the wrong size: set aside, download from 0
  kAdopt,     // --adopt PATH: verify that file and move/copy it into place
};

struct PlannedFile {
  ModelArtifact artifact;
  std::string url;          // resolve URL (or file:// for the demo)
  std::string dest;         // <models_dir>/<file>
  FileState state = FileState::kMissing;
  uint64_t have_bytes = 0;  // bytes already on disk that will be kept
  uint64_t remaining_bytes = 0;
  std::string adopt_from;   // for kAdopt
};

struct Plan {
  std::string profile;            // host profile name
  std::string models_dir;
  std::string prefix;
  std::string endpoint;           // HF_ENDPOINT in effect
  std::vector<PlannedFile> files;
  uint64_t remaining_bytes = 0;   // sum over files
  std::string cuda_architectures; // what the engine build targets ("" = CPU only)
};

// The Hugging Face endpoint: $HF_ENDPOINT without a trailing '/', else https://huggingface.co.
std::string HubEndpoint();

// Looks at the models directory (read-only) and works out what each artifact needs.
Result<Plan> MakePlan(const Options& options, const std::vector<ModelArtifact>& artifacts,
                      const HostProfile& profile);

// Inspects one destination: what is on disk for `artifact` under `models_dir`.
PlannedFile InspectFile(const ModelArtifact& artifact, const std::string& models_dir,
                        const std::string& adopt_from);

std::string FormatPlan(const Plan& plan, const Options& options);
const char* FileStateName(FileState state);

}  // namespace ds4setup
