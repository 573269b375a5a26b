// BuildStage: configures, builds and installs the bundled engine (ds4, ds4-server,
// ds4-bench) for the host profile's CUDA architecture (CPU-only for the demo profile).
//
// Layout under the prefix:
//   <prefix>/versions/<version>/bin/...   one folder per engine build
//   <prefix>/versions/<version>/BUILD_INFO.json
//   <prefix>/current  -> versions/<version>   what the service runs
//   <prefix>/previous -> versions/<older>     kept for rollback (RollbackEngine)
//   <prefix>/build/engine-<cpu|smXX>          the CMake build tree (reused: incremental)
// <version> is a hash of the engine sources and the build options: when nothing changed
// since the last successful build the stage is skipped. A CUDA build is checked with
// `cuobjdump --list-elf` (or the embedded fatbinary reader) for SASS of each requested
// architecture before it becomes current.
//
// Thread-safety: runs programs and changes files under the prefix; one thread.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "pipeline.h"
#include "status.h"

namespace ds4setup {

struct BuildRequest {
  std::string source_dir;          // the ds4-spark checkout (holds CMakeLists.txt, engine/)
  std::string prefix;              // install root
  std::string cuda_architectures;  // "121", "90;120" ...; empty = CPU-only build
  std::string nvcc_path;           // CUDA compiler; empty = CMake finds it
  int jobs = 0;                    // parallel build jobs; 0 = number of CPUs
};

struct BuildOutcome {
  std::string version;      // hash of sources + options (16 hex digits)
  std::string version_dir;  // <prefix>/versions/<version>
  std::string bin_dir;      // <prefix>/current/bin (stable path across upgrades)
  bool skipped = false;     // the same version was already installed and current
  std::string arch_check;   // how the CUDA architecture was verified ("" for CPU)
};

// SHA-256 over the engine's sources (root CMakeLists.txt, CMakePresets.json, engine/**)
// and the build options; the first 16 hex digits.
Result<std::string> EngineVersion(const BuildRequest& request);

// Builds (or skips) and makes the result current. `log` gets the build tools' output.
Result<BuildOutcome> BuildEngine(const BuildRequest& request,
                                 const std::function<void(const std::string&)>& log);

// Points <prefix>/current back at <prefix>/previous (and previous at the old current).
Status RollbackEngine(const std::string& prefix);

// The stage: BuildEngine for context.profile; sets context.bin_dir.
Status BuildStage(Context& context);

// "<prefix>/current/bin" and the like.
std::string CurrentBinDir(const std::string& prefix);

// The version <prefix>/current points at; "" when no engine is installed there.
std::string CurrentEngineVersion(const std::string& prefix);

}  // namespace ds4setup
