#include "host_probe.h"

#include <sys/statvfs.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "doctor.h"

namespace ds4setup {
namespace {

std::string Trim(const std::string& s) {
  size_t b = s.find_first_not_of(" \t\r\n");
  if (b == std::string::npos) return "";
  size_t e = s.find_last_not_of(" \t\r\n");
  return s.substr(b, e - b + 1);
}

std::string Env(const char* name) {
  const char* value = std::getenv(name);
  return value ? value : "";
}

// Runs `command` through /bin/sh, returning its stdout; false when it cannot run or fails.
bool RunCapture(const std::string& command, std::string* output) {
  std::FILE* pipe = ::popen((command + " 2>/dev/null").c_str(), "r");
  if (!pipe) return false;
  char buffer[4096];
  output->clear();
  size_t n;
  while ((n = std::fread(buffer, 1, sizeof(buffer), pipe)) > 0) output->append(buffer, n);
  int status = ::pclose(pipe);
  return status != -1 && WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

std::string ShellQuote(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

bool IsExecutable(const std::string& path) { return ::access(path.c_str(), X_OK) == 0; }

std::vector<std::string> Split(const std::string& s, char separator) {
  std::vector<std::string> parts;
  std::stringstream in(s);
  std::string part;
  while (std::getline(in, part, separator))
    if (!part.empty()) parts.push_back(part);
  return parts;
}

std::string FindOnPath(const std::string& program) {
  for (const auto& dir : Split(Env("PATH"), ':')) {
    std::string candidate = dir + "/" + program;
    if (IsExecutable(candidate)) return candidate;
  }
  return "";
}

// nvcc on PATH first, then the usual toolkit locations (newest cuda-* last wins).
std::string FindNvcc() {
  std::string on_path = FindOnPath("nvcc");
  if (!on_path.empty()) return on_path;
  std::vector<std::string> dirs;
  if (const char* hook = std::getenv("DS4_NVCC_DIRS")) {
    dirs = Split(hook, ':');
  } else {
    if (!Env("CUDA_HOME").empty()) dirs.push_back(Env("CUDA_HOME") + "/bin");
    dirs.push_back("/usr/local/cuda/bin");
    std::vector<std::string> versioned;
    std::error_code ec;
    for (const auto& entry : std::filesystem::directory_iterator("/usr/local", ec)) {
      std::string name = entry.path().filename().string();
      if (name.rfind("cuda-", 0) == 0) versioned.push_back(entry.path().string() + "/bin");
    }
    std::sort(versioned.begin(), versioned.end(), [](const std::string& a, const std::string& b) {
      return CompareVersions(a.substr(a.find("cuda-") + 5), b.substr(b.find("cuda-") + 5)) > 0;
    });
    dirs.insert(dirs.end(), versioned.begin(), versioned.end());
  }
  for (const auto& dir : dirs)
    if (IsExecutable(dir + "/nvcc")) return dir + "/nvcc";
  return "";
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

}  // namespace

std::vector<GpuInfo> ParseNvidiaSmiCsv(const std::string& csv) {
  // name, compute_cap, memory.total [MiB], driver_version
  std::vector<GpuInfo> gpus;
  for (const auto& line : Split(csv, '\n')) {
    std::vector<std::string> fields;
    std::stringstream in(line);
    std::string field;
    while (std::getline(in, field, ',')) fields.push_back(Trim(field));
    if (fields.size() < 4 || fields[0].empty()) continue;
    GpuInfo gpu;
    gpu.name = fields[0];
    gpu.compute_capability = fields[1];
    char* end = nullptr;
    double mib = std::strtod(fields[2].c_str(), &end);
    if (end != fields[2].c_str() && mib > 0) gpu.memory_bytes = static_cast<uint64_t>(mib * 1048576.0);
    gpu.driver_version = fields[3];
    gpus.push_back(gpu);
  }
  return gpus;
}

std::string ParseNvccVersion(const std::string& output) {
  // "Cuda compilation tools, release 13.0, V13.0.48"
  size_t at = output.find("release ");
  if (at == std::string::npos) return "";
  at += 8;
  size_t end = output.find_first_not_of("0123456789.", at);
  return output.substr(at, end == std::string::npos ? std::string::npos : end - at);
}

uint64_t ParseMemTotalBytes(const std::string& meminfo) {
  std::stringstream in(meminfo);
  std::string line;
  while (std::getline(in, line)) {
    unsigned long long kib = 0;
    if (std::sscanf(line.c_str(), "MemTotal: %llu kB", &kib) == 1) return kib * 1024ull;
  }
  return 0;
}

Result<uint64_t> FreeDiskBytes(const std::string& path, std::string* measured_at) {
  std::error_code ec;
  std::filesystem::path p = std::filesystem::absolute(path.empty() ? "." : path, ec);
  if (ec) return Status::Error("cannot resolve path " + path + ": " + ec.message());
  while (!std::filesystem::exists(p, ec) && p.has_parent_path() && p != p.parent_path())
    p = p.parent_path();
  if (measured_at) *measured_at = p.string();
  std::string fake = Env("DS4_FAKE_FREE_BYTES");
  if (!fake.empty()) return static_cast<uint64_t>(std::strtoull(fake.c_str(), nullptr, 10));
  struct statvfs st;
  if (::statvfs(p.c_str(), &st) != 0)
    return Status::Error("cannot measure free space of " + p.string());
  return static_cast<uint64_t>(st.f_bavail) * static_cast<uint64_t>(st.f_frsize);
}

HostFacts ProbeHost(const std::string& models_dir) {
  HostFacts facts;
  struct utsname names;
  if (::uname(&names) == 0) {
    facts.os = names.sysname;
    facts.arch = names.machine;
  }
  if (!Env("DS4_FAKE_ARCH").empty()) facts.arch = Env("DS4_FAKE_ARCH");

  std::string smi = FindOnPath("nvidia-smi");
  if (smi.empty()) {
    facts.nvidia_smi_error = "nvidia-smi not found on PATH (no NVIDIA driver?)";
  } else {
    facts.nvidia_smi_found = true;
    std::string csv;
    if (!RunCapture(ShellQuote(smi) + " --query-gpu=name,compute_cap,memory.total,driver_version"
                                      " --format=csv,noheader,nounits", &csv)) {
      facts.nvidia_smi_error = "nvidia-smi failed (is the NVIDIA driver loaded?)";
    } else {
      facts.gpus = ParseNvidiaSmiCsv(csv);
      if (facts.gpus.empty()) facts.nvidia_smi_error = "nvidia-smi lists no GPU";
    }
  }

  facts.nvcc_path = FindNvcc();
  if (!facts.nvcc_path.empty()) {
    std::string version;
    if (RunCapture(ShellQuote(facts.nvcc_path) + " --version", &version))
      facts.cuda_version = ParseNvccVersion(version);
  }

  std::string meminfo_path = Env("DS4_PROC_MEMINFO");
  facts.ram_bytes = ParseMemTotalBytes(ReadFile(meminfo_path.empty() ? "/proc/meminfo" : meminfo_path));

  Result<uint64_t> free_bytes = FreeDiskBytes(models_dir, &facts.disk_path);
  if (free_bytes.ok())
    facts.disk_free_bytes = *free_bytes;
  else
    facts.disk_error = free_bytes.status().message();
  return facts;
}

namespace {

bool GpuMatches(const GpuInfo& gpu, const HostProfile& profile) {
  bool name_ok = std::any_of(profile.gpu_names.begin(), profile.gpu_names.end(),
                             [&](const std::string& n) { return gpu.name.find(n) != std::string::npos; });
  return name_ok && gpu.compute_capability == profile.compute_capability;
}

}  // namespace

Result<HostProfile> ChooseProfile(const HostFacts& facts, const HostProfiles& profiles,
                                  const std::string& forced) {
  if (!forced.empty()) {
    const HostProfile* profile = profiles.Find(forced);
    if (!profile)
      return Status::Error("unknown host profile '" + forced + "'; known profiles: " + profiles.Names());
    return *profile;
  }
  for (const auto& profile : profiles.profiles) {
    if (!profile.needs_gpu) continue;  // the arch is a check, not a selector
    for (const auto& gpu : facts.gpus)
      if (GpuMatches(gpu, profile)) return profile;
  }
  std::string seen = facts.arch;
  for (const auto& gpu : facts.gpus) seen += ", " + gpu.name + " (compute " + gpu.compute_capability + ")";
  if (facts.gpus.empty()) seen += ", no NVIDIA GPU found";
  std::string list;
  for (const auto& p : profiles.profiles) list += "\n  " + p.name + ": " + p.description;
  return Status::Error("this host (" + seen + ") matches no host profile. Known profiles:" + list +
                       "\nForce one with --host-profile NAME (checks still apply), or try "
                       "the CPU demo with --demo");
}

}  // namespace ds4setup
