#include "doctor.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>

namespace ds4setup {
namespace {

constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;

std::string Join(const std::vector<std::string>& items, const std::string& separator) {
  std::string out;
  for (const auto& item : items) out += (out.empty() ? "" : separator) + item;
  return out;
}

uint64_t GiBToBytes(double gib) { return static_cast<uint64_t>(std::llround(gib * kGiB)); }

CheckRow ArchCheck(const HostFacts& facts, const HostProfile& profile) {
  CheckRow row{"arch", true, false, facts.arch.empty() ? "unknown" : facts.arch,
               profile.arch.empty() ? "any" : Join(profile.arch, " or "), ""};
  row.passed = profile.arch.empty() ||
               std::find(profile.arch.begin(), profile.arch.end(), facts.arch) != profile.arch.end();
  row.fix = "wrong architecture: profile " + profile.name + " needs " + row.expected + ", this host is " +
            row.measured + "; run on the right machine or pick another --host-profile";
  return row;
}

// The GPU checks: driver (nvidia-smi), a GPU of the right name and compute capability.
void GpuChecks(const HostFacts& facts, const HostProfile& profile, std::vector<CheckRow>* rows) {
  CheckRow driver{"nvidia driver", true, facts.nvidia_smi_found && facts.nvidia_smi_error.empty(),
                  facts.nvidia_smi_error.empty() ? "nvidia-smi ok" : facts.nvidia_smi_error,
                  "nvidia-smi lists the GPU",
                  "install the NVIDIA driver (on DGX OS: sudo apt install nvidia-driver) and reboot"};
  if (driver.passed && !facts.gpus.empty()) driver.measured = "driver " + facts.gpus[0].driver_version;
  rows->push_back(driver);

  const GpuInfo* match = nullptr;
  for (const auto& gpu : facts.gpus) {
    for (const auto& name : profile.gpu_names)
      if (gpu.name.find(name) != std::string::npos && !match) match = &gpu;
  }
  std::vector<std::string> seen;
  for (const auto& gpu : facts.gpus) seen.push_back(gpu.name + " (compute " + gpu.compute_capability + ")");
  CheckRow gpu_row{"gpu", true, match != nullptr, seen.empty() ? "none" : Join(seen, ", "),
                   Join(profile.gpu_names, " or "),
                   "wrong GPU: profile " + profile.name + " needs an NVIDIA " +
                       Join(profile.gpu_names, " or ") + "; pick the matching --host-profile"};
  rows->push_back(gpu_row);

  CheckRow cc{"compute capability", true, false, match ? match->compute_capability : "n/a",
              profile.compute_capability, ""};
  cc.passed = match && match->compute_capability == profile.compute_capability;
  cc.fix = "the GPU reports compute capability " + cc.measured + ", profile " + profile.name +
           " is built for " + profile.compute_capability + "; pick the matching --host-profile";
  rows->push_back(cc);

  if (profile.min_gpu_memory_gib > 0) {
    CheckRow memory{"gpu memory", true, false,
                    match && match->memory_bytes ? HumanBytes(match->memory_bytes) : "n/a",
                    ">= " + HumanBytes(GiBToBytes(profile.min_gpu_memory_gib)), ""};
    memory.passed = match && match->memory_bytes >= GiBToBytes(profile.min_gpu_memory_gib);
    memory.fix = "the model needs a GPU with at least " + memory.expected + " of memory";
    rows->push_back(memory);
  }
}

CheckRow CudaCheck(const HostFacts& facts, const HostProfile& profile) {
  CheckRow row{"cuda toolkit", true, false, "", ">= " + profile.min_cuda, ""};
  if (facts.nvcc_path.empty()) {
    row.measured = "nvcc not found";
    row.fix = "install CUDA toolkit " + profile.min_cuda + " or newer (nvcc is looked for on PATH and "
              "in /usr/local/cuda/bin)";
    return row;
  }
  row.measured = (facts.cuda_version.empty() ? "unknown version" : facts.cuda_version) + " (" +
                 facts.nvcc_path + ")";
  row.passed = !facts.cuda_version.empty() && CompareVersions(facts.cuda_version, profile.min_cuda) >= 0;
  row.fix = "CUDA toolkit too old: " + (facts.cuda_version.empty() ? "unknown" : facts.cuda_version) +
            " found, " + profile.min_cuda + " or newer needed; install a newer CUDA toolkit";
  return row;
}

CheckRow RamCheck(const HostFacts& facts, const HostProfile& profile) {
  uint64_t need = GiBToBytes(profile.min_ram_gib);
  CheckRow row{"ram", true, facts.ram_bytes >= need,
               facts.ram_bytes ? HumanBytes(facts.ram_bytes) : "unknown (no MemTotal in /proc/meminfo)",
               ">= " + HumanBytes(need), ""};
  row.fix = "not enough memory: " + row.measured + " found, " + row.expected + " needed";
  return row;
}

CheckRow DiskCheck(const HostFacts& facts, const HostProfile& profile, uint64_t bytes_needed) {
  uint64_t need = bytes_needed + GiBToBytes(profile.disk_margin_gib);
  CheckRow row{"disk", true, facts.disk_error.empty() && facts.disk_free_bytes >= need,
               facts.disk_error.empty() ? HumanBytes(facts.disk_free_bytes) + " free in " + facts.disk_path
                                        : facts.disk_error,
               ">= " + HumanBytes(need) + " (" + HumanBytes(bytes_needed) + " to download + " +
                   HumanBytes(GiBToBytes(profile.disk_margin_gib)) + " margin)",
               ""};
  row.fix = "not enough disk space in " + facts.disk_path + ": free " +
            HumanBytes(need > facts.disk_free_bytes ? need - facts.disk_free_bytes : 0) +
            " more, or choose another --models-dir";
  return row;
}

}  // namespace

std::string HumanBytes(uint64_t bytes) {
  static const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double value = static_cast<double>(bytes);
  int unit = 0;
  while (value >= 1024.0 && unit < 4) {
    value /= 1024.0;
    ++unit;
  }
  char buf[32];
  if (unit == 0)
    std::snprintf(buf, sizeof(buf), "%llu B", static_cast<unsigned long long>(bytes));
  else
    std::snprintf(buf, sizeof(buf), "%.1f %s", value, kUnits[unit]);
  return buf;
}

std::vector<CheckRow> EvaluateHost(const HostFacts& facts, const HostProfile& profile,
                                   uint64_t bytes_needed) {
  std::vector<CheckRow> rows;
  CheckRow os{"os", true, facts.os == "Linux", facts.os.empty() ? "unknown" : facts.os, "Linux",
              "ds4-setup runs on Linux only"};
  rows.push_back(os);
  rows.push_back(ArchCheck(facts, profile));
  if (profile.needs_gpu) {
    GpuChecks(facts, profile, &rows);
    rows.push_back(CudaCheck(facts, profile));
  }
  rows.push_back(RamCheck(facts, profile));
  rows.push_back(DiskCheck(facts, profile, bytes_needed));
  return rows;
}

bool AllRequiredPass(const std::vector<CheckRow>& rows) {
  return std::all_of(rows.begin(), rows.end(),
                     [](const CheckRow& r) { return r.passed || !r.required; });
}

std::string FormatCheckTable(const std::vector<CheckRow>& rows) {
  size_t name_width = 5, measured_width = 8;
  for (const auto& r : rows) {
    name_width = std::max(name_width, r.name.size());
    measured_width = std::max(measured_width, r.measured.size());
  }
  std::string out;
  char buf[1024];
  for (const auto& r : rows) {
    std::snprintf(buf, sizeof(buf), "  %-4s  %-*s  %-*s  needs %s\n", r.passed ? "ok" : "FAIL",
                  static_cast<int>(name_width), r.name.c_str(), static_cast<int>(measured_width),
                  r.measured.c_str(), r.expected.c_str());
    out += buf;
    if (!r.passed) out += "        fix: " + r.fix + "\n";
  }
  return out;
}

std::string FormatCheckJson(const std::vector<CheckRow>& rows, const std::string& profile,
                            const HostFacts& facts) {
  nlohmann::json checks = nlohmann::json::array();
  for (const auto& r : rows) {
    nlohmann::json row = {{"name", r.name}, {"passed", r.passed}, {"required", r.required},
                          {"measured", r.measured}, {"expected", r.expected}};
    if (!r.passed) row["fix"] = r.fix;
    checks.push_back(row);
  }
  nlohmann::json gpus = nlohmann::json::array();
  for (const auto& g : facts.gpus)
    gpus.push_back({{"name", g.name}, {"compute_capability", g.compute_capability},
                    {"memory_bytes", g.memory_bytes}, {"driver_version", g.driver_version}});
  nlohmann::json doc = {{"profile", profile},
                        {"ok", AllRequiredPass(rows)},
                        {"checks", checks},
                        {"host", {{"os", facts.os}, {"arch", facts.arch}, {"gpus", gpus},
                                  {"cuda_version", facts.cuda_version}, {"nvcc", facts.nvcc_path},
                                  {"ram_bytes", facts.ram_bytes},
                                  {"disk_path", facts.disk_path},
                                  {"disk_free_bytes", facts.disk_free_bytes}}}};
  return doc.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
}

}  // namespace ds4setup
