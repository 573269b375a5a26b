#include "plan.h"

#include <sys/stat.h>

#include <cstdlib>

#include "doctor.h"

namespace ds4setup {
namespace {

bool FileSize(const std::string& path, uint64_t* size) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) return false;
  *size = static_cast<uint64_t>(st.st_size);
  return true;
}

std::string SourceDirFor(const Options& options) {
  if (!options.source_dir.empty()) return options.source_dir;
  if (const char* env = std::getenv("DS4_SOURCE_DIR")) return env;
  return ".";
}

}  // namespace

const char* FileStateName(FileState state) {
  switch (state) {
    case FileState::kMissing: return "download";
    case FileState::kPartial: return "resume";
    case FileState::kOverlong: return "restart (over-long .part set aside)";
    case FileState::kPresent: return "verify and reuse";
    case FileState::kWrongSize: return "restart (wrong-size file set aside)";
    case FileState::kAdopt: return "adopt";
  }
  return "?";
}

std::string HubEndpoint() {
  std::string endpoint = "https://huggingface.co";
  if (const char* env = std::getenv("HF_ENDPOINT"); env && *env) endpoint = env;
  while (!endpoint.empty() && endpoint.back() == '/') endpoint.pop_back();
  return endpoint;
}

PlannedFile InspectFile(const ModelArtifact& artifact, const std::string& models_dir,
                        const std::string& adopt_from) {
  PlannedFile file;
  file.artifact = artifact;
  file.dest = models_dir + "/" + artifact.file;
  uint64_t size = 0;
  if (!adopt_from.empty()) {
    file.state = FileState::kAdopt;
    file.adopt_from = adopt_from;
  } else if (FileSize(file.dest, &size)) {
    file.state = size == artifact.bytes ? FileState::kPresent : FileState::kWrongSize;
    file.have_bytes = size == artifact.bytes ? size : 0;
  } else if (FileSize(file.dest + ".part", &size)) {
    file.state = size <= artifact.bytes ? FileState::kPartial : FileState::kOverlong;
    file.have_bytes = size <= artifact.bytes ? size : 0;
  }
  file.remaining_bytes = file.state == FileState::kAdopt ? 0 : artifact.bytes - file.have_bytes;
  return file;
}

Result<Plan> MakePlan(const Options& options, const std::vector<ModelArtifact>& artifacts,
                      const HostProfile& profile) {
  Plan plan;
  plan.profile = profile.name;
  plan.models_dir = ModelsDir(options);
  plan.prefix = options.prefix;
  plan.endpoint = HubEndpoint();
  plan.cuda_architectures = profile.cuda_architectures;
  for (size_t i = 0; i < artifacts.size(); ++i) {
    // --adopt names the base model's file (the first artifact).
    PlannedFile file = InspectFile(artifacts[i], plan.models_dir, i == 0 ? options.adopt_path : "");
    file.url = ArtifactUrl(artifacts[i], plan.endpoint, options.revision, SourceDirFor(options));
    plan.remaining_bytes += file.remaining_bytes;
    plan.files.push_back(std::move(file));
  }
  return plan;
}

std::string FormatPlan(const Plan& plan, const Options& options) {
  std::string out = "Plan (host profile " + plan.profile + "):\n";
  out += "  models dir   " + plan.models_dir + "\n";
  for (const auto& f : plan.files) {
    out += "  " + f.artifact.name + ": " + FileStateName(f.state) + "  " + f.dest + "\n";
    out += "      from     " + f.url + "\n";
    out += "      size     " + HumanBytes(f.artifact.bytes) + " (" + std::to_string(f.artifact.bytes) +
           " bytes), sha256 " + f.artifact.sha256 + "\n";
    if (f.state == FileState::kAdopt)
      out += "      adopt    " + f.adopt_from + " (verified, then linked or copied)\n";
    else
      out += "      on disk  " + HumanBytes(f.have_bytes) + ", to download " + HumanBytes(f.remaining_bytes) +
             "\n";
  }
  out += "  download     " + HumanBytes(plan.remaining_bytes) + " (" + std::to_string(plan.remaining_bytes) +
         " bytes) in total\n";
  if (options.command != Command::kInstall) return out;
  out += "  build        ds4 engine (" +
         (plan.cuda_architectures.empty() ? std::string("CPU only") : "CUDA sm_" + plan.cuda_architectures) +
         ") into " + plan.prefix + "/current/bin\n";
  out += "  smoke test   \"What is the capital of France?\" must answer Paris\n";
  out += "  service      ds4.service serving http://" + options.host + ":" + std::to_string(options.port) +
         "/v1" + (options.start ? " (started)" : " (installed, not started; --start to start it)") + "\n";
  return out;
}

}  // namespace ds4setup
