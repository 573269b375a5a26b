// Doctor: turns measured host facts and a host profile into check rows (name, passed,
// what was measured, what is required, a one-line fix), shown as a table or JSON.
// `ds4-setup doctor` is read-only; it exits 0 only when every required check passes.
//
// Thread-safety: pure functions over values.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "host_probe.h"
#include "manifest.h"

namespace ds4setup {

struct CheckRow {
  std::string name;      // "arch", "gpu", "compute capability", "cuda", "ram", "disk", ...
  bool required = true;
  bool passed = false;
  std::string measured;  // what was found, e.g. "aarch64", "NVIDIA GB10", "13.0"
  std::string expected;  // what the profile needs
  std::string fix;       // one line, shown when the check fails
};

// `bytes_needed`: bytes of model files still to download into the models directory
// (the disk check adds the profile's margin to it).
std::vector<CheckRow> EvaluateHost(const HostFacts& facts, const HostProfile& profile,
                                   uint64_t bytes_needed);

bool AllRequiredPass(const std::vector<CheckRow>& rows);
std::string FormatCheckTable(const std::vector<CheckRow>& rows);
std::string FormatCheckJson(const std::vector<CheckRow>& rows, const std::string& profile,
                            const HostFacts& facts);

// "12.3 GiB" / "512.0 MiB" / "10 B".
std::string HumanBytes(uint64_t bytes);

}  // namespace ds4setup
