#include "build_stage.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "cuda_arch.h"
#include "install_state.h"
#include "proc.h"
#include "sha256.h"

namespace fs = std::filesystem;

namespace ds4setup {
namespace {

constexpr double kConfigureTimeoutSeconds = 600;
constexpr double kBuildTimeoutSeconds = 4 * 3600;

std::vector<std::string> SplitArchitectures(const std::string& list) {
  std::vector<std::string> archs;
  std::string item;
  std::istringstream split(list);
  while (std::getline(split, item, ';')) {
    item.erase(std::remove_if(item.begin(), item.end(), ::isspace), item.end());
    if (!item.empty()) archs.push_back(item);
  }
  return archs;
}

std::string BuildFlavor(const BuildRequest& request) {
  if (request.cuda_architectures.empty()) return "cpu";
  std::string flavor = "sm";
  for (const std::string& arch : SplitArchitectures(request.cuda_architectures)) {
    flavor += (flavor == "sm" ? "" : "-") + arch;
  }
  return flavor;
}

std::string OptionsFingerprint(const BuildRequest& request) {
  return "ds4-engine-build v1; build_type=Release; cuda_architectures=" +
         request.cuda_architectures;
}

// Replaces `link` by a symlink to `target` atomically (rename over it).
Status PointSymlink(const fs::path& link, const fs::path& target) {
  fs::path temp = link;
  temp += ".new";
  std::error_code ec;
  fs::remove(temp, ec);
  fs::create_directory_symlink(target, temp, ec);
  if (ec) return Status::Error("cannot create symlink " + temp.string() + ": " + ec.message());
  fs::rename(temp, link, ec);
  if (ec) return Status::Error("cannot replace " + link.string() + ": " + ec.message());
  return Status::Ok();
}

// "versions/abc" for a link <prefix>/current -> versions/abc; "" when absent.
std::string LinkTarget(const fs::path& link) {
  std::error_code ec;
  if (!fs::is_symlink(link, ec)) return "";
  return fs::read_symlink(link, ec).string();
}

bool IsCompleteVersion(const fs::path& version_dir) {
  std::error_code ec;
  return fs::exists(version_dir / "BUILD_INFO.json", ec) &&
         fs::exists(version_dir / "bin" / "ds4", ec) &&
         fs::exists(version_dir / "bin" / "ds4-server", ec);
}

Status RunLogged(const std::vector<std::string>& argv, double timeout_seconds,
                 const std::function<void(const std::string&)>& log, const std::string& what) {
  if (log) log("$ " + [&] {
      std::string joined;
      for (const auto& a : argv) joined += (joined.empty() ? "" : " ") + ShellQuote(a);
      return joined;
    }() + "\n");
  ProcOptions options;
  options.timeout_seconds = timeout_seconds;
  options.on_output = log;
  Result<ProcResult> run = RunProcess(argv, options);
  if (!run.ok()) return run.status().wrap(what);
  if (!run->ok()) return Status::Error(what + " failed: " + run->Describe(25));
  return Status::Ok();
}

// Keeps current and previous; removes every other version folder.
void PruneVersions(const fs::path& prefix) {
  std::error_code ec;
  fs::path versions = prefix / "versions";
  std::string keep_current = fs::path(LinkTarget(prefix / "current")).filename().string();
  std::string keep_previous = fs::path(LinkTarget(prefix / "previous")).filename().string();
  for (const auto& entry : fs::directory_iterator(versions, ec)) {
    std::string name = entry.path().filename().string();
    if (name == keep_current || name == keep_previous) continue;
    fs::remove_all(entry.path(), ec);
  }
}

// The source tree a CMake build tree was configured from ("" when not configured).
std::string CachedSourceDir(const fs::path& build_dir) {
  std::ifstream cache(build_dir / "CMakeCache.txt");
  const std::string key = "CMAKE_HOME_DIRECTORY:INTERNAL=";
  for (std::string line; std::getline(cache, line);) {
    if (line.rfind(key, 0) == 0) return line.substr(key.size());
  }
  return "";
}

}  // namespace

std::string CurrentBinDir(const std::string& prefix) {
  return (fs::path(prefix) / "current" / "bin").string();
}

std::string CurrentEngineVersion(const std::string& prefix) {
  std::string target = LinkTarget(fs::path(prefix) / "current");
  if (target.empty() || !IsCompleteVersion(fs::path(prefix) / target)) return "";
  return fs::path(target).filename().string();
}

Result<std::string> EngineVersion(const BuildRequest& request) {
  const fs::path source(request.source_dir);
  std::error_code ec;
  if (!fs::exists(source / "CMakeLists.txt", ec) || !fs::is_directory(source / "engine", ec)) {
    return Status::Error("engine sources not found in " + request.source_dir +
                         " (expected CMakeLists.txt and engine/)");
  }
  std::vector<fs::path> files = {source / "CMakeLists.txt"};
  if (fs::exists(source / "CMakePresets.json", ec)) files.push_back(source / "CMakePresets.json");
  for (auto it = fs::recursive_directory_iterator(source / "engine", ec);
       !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
    if (it->is_regular_file(ec)) files.push_back(it->path());
  }
  if (ec) return Status::Error("cannot list " + (source / "engine").string() + ": " + ec.message());
  std::sort(files.begin(), files.end());

  Sha256 hash;
  std::string fingerprint = OptionsFingerprint(request);
  hash.Update(fingerprint.data(), fingerprint.size());
  for (const fs::path& file : files) {
    std::string name = fs::relative(file, source, ec).string();
    hash.Update(name.data(), name.size() + 1);  // with its NUL: names and bytes can't blur
    Result<std::string> digest = Sha256File(file.string());
    if (!digest.ok()) return digest.status();
    hash.Update(digest->data(), digest->size());
  }
  return hash.FinalHex().substr(0, 16);
}

Result<BuildOutcome> BuildEngine(const BuildRequest& request,
                                 const std::function<void(const std::string&)>& log) {
  Result<std::string> version = EngineVersion(request);
  if (!version.ok()) return version.status();
  const fs::path prefix = fs::absolute(request.prefix);
  const fs::path version_dir = prefix / "versions" / *version;
  const std::string version_link = "versions/" + *version;

  BuildOutcome outcome;
  outcome.version = *version;
  outcome.version_dir = version_dir.string();
  outcome.bin_dir = CurrentBinDir(prefix.string());

  std::error_code ec;
  if (IsCompleteVersion(version_dir)) {
    if (LinkTarget(prefix / "current") == version_link) {
      outcome.skipped = true;
      return outcome;
    }
    // Built before (e.g. rolled back from): make it current again without rebuilding.
    std::string old = LinkTarget(prefix / "current");
    if (!old.empty()) DS4_RETURN_IF_ERROR(PointSymlink(prefix / "previous", old));
    DS4_RETURN_IF_ERROR(PointSymlink(prefix / "current", version_link));
    return outcome;
  }

  const fs::path build_dir = prefix / "build" / ("engine-" + BuildFlavor(request));
  const fs::path staging = prefix / "versions" / (*version + ".partial");
  // A build tree configured from another source tree cannot be reused: start it afresh.
  const std::string configured_from = CachedSourceDir(build_dir);
  if (!configured_from.empty() &&
      fs::weakly_canonical(configured_from, ec) != fs::weakly_canonical(request.source_dir, ec)) {
    if (log) log("build tree " + build_dir.string() + " was configured from " + configured_from + ": removing it\n");
    fs::remove_all(build_dir, ec);
  }
  fs::create_directories(build_dir, ec);
  if (ec) return Status::Error("cannot create " + build_dir.string() + ": " + ec.message());
  fs::remove_all(staging, ec);

  std::string cmake = FindProgram("cmake");
  if (cmake.empty()) return Status::Error("cmake not found on PATH (install.sh installs it)");
  std::vector<std::string> configure = {
      cmake, "-S", request.source_dir, "-B", build_dir.string(),
      "-DCMAKE_BUILD_TYPE=Release", "-DDS4_TESTS=OFF", "-DDS4_INSTALLER=OFF",
      "-DDS4_FUZZ=OFF", "-DCMAKE_INSTALL_PREFIX=" + staging.string()};
  if (request.cuda_architectures.empty()) {
    configure.push_back("-DDS4_CUDA=OFF");
  } else {
    configure.push_back("-DDS4_CUDA=ON");
    configure.push_back("-DCMAKE_CUDA_ARCHITECTURES=" + request.cuda_architectures);
    if (!request.nvcc_path.empty()) configure.push_back("-DCMAKE_CUDA_COMPILER=" + request.nvcc_path);
  }
  DS4_RETURN_IF_ERROR(RunLogged(configure, kConfigureTimeoutSeconds, log, "configuring the engine"));

  unsigned jobs = request.jobs > 0 ? static_cast<unsigned>(request.jobs)
                                   : std::max(1u, std::thread::hardware_concurrency());
  DS4_RETURN_IF_ERROR(RunLogged({cmake, "--build", build_dir.string(), "-j", std::to_string(jobs)},
                                kBuildTimeoutSeconds, log, "building the engine"));
  DS4_RETURN_IF_ERROR(RunLogged({cmake, "--install", build_dir.string(), "--prefix", staging.string()},
                                kConfigureTimeoutSeconds, log, "installing the engine"));

  for (const char* program : {"ds4", "ds4-server"}) {
    if (!fs::exists(staging / "bin" / program, ec)) {
      return Status::Error(std::string("the engine build produced no ") + program + " in " +
                           (staging / "bin").string() + " (see the log for the build output)");
    }
  }

  if (!request.cuda_architectures.empty()) {
    std::string cuobjdump = FindCuobjdump();
    for (const std::string& arch_text : SplitArchitectures(request.cuda_architectures)) {
      int sm = ParseSmArch(arch_text);
      if (sm == 0) return Status::Error("unknown CUDA architecture '" + arch_text + "'");
      for (const char* program : {"ds4", "ds4-server"}) {
        std::string tool;
        DS4_RETURN_IF_ERROR(
            VerifyCudaArch((staging / "bin" / program).string(), sm, cuobjdump, &tool));
        outcome.arch_check = "sm_" + std::to_string(sm) + " code present (checked with " + tool + ")";
      }
    }
  }

  nlohmann::json info = {{"version", *version},
                         {"built_at", UtcTimestampNow()},
                         {"source_dir", request.source_dir},
                         {"cuda_architectures", request.cuda_architectures},
                         {"build_dir", build_dir.string()},
                         {"arch_check", outcome.arch_check}};
  {
    std::ofstream file(staging / "BUILD_INFO.json");
    file << info.dump(2) << "\n";
    if (!file.good()) return Status::Error("cannot write " + (staging / "BUILD_INFO.json").string());
  }
  fs::remove_all(version_dir, ec);
  fs::rename(staging, version_dir, ec);
  if (ec) return Status::Error("cannot move the build into " + version_dir.string() + ": " + ec.message());

  std::string old = LinkTarget(prefix / "current");
  if (!old.empty() && old != version_link) {
    DS4_RETURN_IF_ERROR(PointSymlink(prefix / "previous", old));
  }
  DS4_RETURN_IF_ERROR(PointSymlink(prefix / "current", version_link));
  PruneVersions(prefix);
  return outcome;
}

Status RollbackEngine(const std::string& prefix_text) {
  const fs::path prefix(prefix_text);
  std::string current = LinkTarget(prefix / "current");
  std::string previous = LinkTarget(prefix / "previous");
  if (previous.empty() || !IsCompleteVersion(prefix / previous)) {
    return Status::Error("no previous engine build to roll back to in " + prefix_text);
  }
  DS4_RETURN_IF_ERROR(PointSymlink(prefix / "current", previous));
  if (!current.empty()) DS4_RETURN_IF_ERROR(PointSymlink(prefix / "previous", current));
  return Status::Ok();
}

Status BuildStage(Context& context) {
  BuildRequest request;
  request.source_dir = context.options.source_dir;
#ifdef DS4_SOURCE_DIR
  if (request.source_dir.empty()) request.source_dir = DS4_SOURCE_DIR;
#endif
  request.prefix = context.options.prefix;
  request.cuda_architectures = context.profile.needs_gpu ? context.profile.cuda_architectures : "";
  request.nvcc_path = context.facts.nvcc_path;

  const std::string what = request.cuda_architectures.empty()
                               ? std::string("CPU-only")
                               : "CUDA sm_" + request.cuda_architectures;
  context.ui->Info("engine: " + what + " build from " + request.source_dir);
  Ui* ui = context.ui;
  Result<BuildOutcome> outcome = BuildEngine(request, [ui](const std::string& chunk) {
    std::string text = chunk;
    while (!text.empty() && text.back() == '\n') text.pop_back();
    if (!text.empty()) ui->Log(text);
  });
  if (!outcome.ok()) {
    context.exit_code = kExitBuild;
    return outcome.status();
  }
  context.bin_dir = outcome->bin_dir;
  if (outcome->skipped) {
    context.ui->Info("engine " + outcome->version + " unchanged since the last build: skipped");
  } else {
    context.ui->Info("engine " + outcome->version + " installed in " + outcome->version_dir);
  }
  if (!outcome->arch_check.empty()) context.ui->Info(outcome->arch_check);
  return Status::Ok();
}

}  // namespace ds4setup
