// HostProbe: measures the facts the host checks need (architecture, NVIDIA GPUs via
// nvidia-smi, CUDA toolkit via nvcc, RAM via /proc/meminfo, free space on the models
// directory's filesystem) and picks the matching host profile.
//
// Test hooks (environment variables, for tests only):
//   DS4_FAKE_ARCH        replaces `uname -m`
//   DS4_PROC_MEMINFO     replaces /proc/meminfo
//   DS4_NVCC_DIRS        ':'-separated dirs searched for nvcc after PATH
//                        (default $CUDA_HOME/bin:/usr/local/cuda/bin:/usr/local/cuda-*/bin)
//   DS4_FAKE_FREE_BYTES  replaces the measured free space (only where a real small
//                        filesystem cannot be mounted)
//
// Thread-safety: ProbeHost runs programs and reads files; call it from one thread.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "manifest.h"
#include "status.h"

namespace ds4setup {

struct GpuInfo {
  std::string name;                // "NVIDIA GB10"
  std::string compute_capability;  // "12.1"
  uint64_t memory_bytes = 0;       // 0 when nvidia-smi reports N/A (GB10)
  std::string driver_version;
};

struct HostFacts {
  std::string os;                  // "Linux"
  std::string arch;                // "aarch64"
  bool nvidia_smi_found = false;
  std::string nvidia_smi_error;    // why no GPU list could be read
  std::vector<GpuInfo> gpus;
  std::string nvcc_path;           // empty when no CUDA toolkit was found
  std::string cuda_version;        // "13.0"
  uint64_t ram_bytes = 0;          // MemTotal
  std::string disk_path;           // nearest existing ancestor of the models dir
  uint64_t disk_free_bytes = 0;
  std::string disk_error;
};

HostFacts ProbeHost(const std::string& models_dir);

// Free bytes (for an unprivileged user) on the filesystem holding `path` or its nearest
// existing ancestor. Honours DS4_FAKE_FREE_BYTES.
Result<uint64_t> FreeDiskBytes(const std::string& path, std::string* measured_at = nullptr);

// Parsers, exposed for tests.
std::vector<GpuInfo> ParseNvidiaSmiCsv(const std::string& csv);
std::string ParseNvccVersion(const std::string& nvcc_output);   // "" when not found
uint64_t ParseMemTotalBytes(const std::string& meminfo);        // 0 when not found

// The profile that matches: `forced` when set (must exist), else the first profile
// whose GPU name and compute capability match (the arch is then
// checked by the doctor, so a wrong arch gets its own message) (demo is never auto-picked).
// Unknown hosts get an error listing the profiles and how to force one.
Result<HostProfile> ChooseProfile(const HostFacts& facts, const HostProfiles& profiles,
                                  const std::string& forced);

}  // namespace ds4setup
