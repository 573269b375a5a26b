// CudaArch: which GPU architectures a built program carries code for. A build for the
// wrong architecture is a known cause of garbage output past ~128 prompt tokens, so the
// build stage refuses a CUDA build without SASS for the requested sm_XX.
//
// Two readers that must agree: `cuobjdump --list-elf` when the CUDA toolkit has it,
// and our own reader of the fatbinaries embedded in the ELF file (sections .nv_fatbin
// and __nv_relfatbin: headers with magic 0xBA55ED50, then entries of kind 1 = PTX or
// 2 = ELF/SASS, each naming its sm number), used where cuobjdump is absent.
//
// Thread-safety: pure functions over files; may run on any thread.
#pragma once

#include <string>
#include <vector>

#include "status.h"

namespace ds4setup {

struct CudaCode {
  bool is_sass = false;  // true: ELF (machine code, "sm_121"); false: PTX ("compute_121")
  int sm = 0;            // 121 for sm_121
  std::string Name() const { return (is_sass ? "sm_" : "compute_") + std::to_string(sm); }
};

// Code objects in the fatbinaries of the ELF file at `path` (own reader). An empty list
// for an ELF file without CUDA code; an error for unreadable or malformed files.
Result<std::vector<CudaCode>> ReadEmbeddedCudaCode(const std::string& path);

// Parses fatbinary data (the bytes of a .nv_fatbin section). `origin` names it in errors.
Result<std::vector<CudaCode>> ParseFatbinSection(const std::string& bytes,
                                                 const std::string& origin);

// The sm numbers in `cuobjdump --list-elf` output ("ELF file    1: x.1.sm_121.cubin").
std::vector<int> ParseCuobjdumpListElf(const std::string& output);

// "sm_121", "121", "121a", "12.1" -> 121; 0 when not understood.
int ParseSmArch(const std::string& text);

// Checks that `binary` carries SASS for sm `wanted`. Uses cuobjdump when
// `cuobjdump_path` is non-empty, else the own reader. The error says which
// architectures were found instead. `*tool_used` (optional) gets the method used.
Status VerifyCudaArch(const std::string& binary, int wanted, const std::string& cuobjdump_path,
                      std::string* tool_used = nullptr);

// cuobjdump on PATH, in $CUDA_HOME/bin or /usr/local/cuda/bin; "" when absent.
std::string FindCuobjdump();

}  // namespace ds4setup
