#include "cuda_arch.h"

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <regex>
#include <set>
#include <sstream>

#include "proc.h"

namespace ds4setup {
namespace {

constexpr uint32_t kFatbinMagic = 0xBA55ED50u;
constexpr uint16_t kEntryPtx = 1;
constexpr uint16_t kEntryElf = 2;

template <typename T>
bool ReadAt(const std::string& bytes, uint64_t offset, T* value) {
  if (offset > bytes.size() || bytes.size() - offset < sizeof(T)) return false;
  std::memcpy(value, bytes.data() + offset, sizeof(T));
  return true;
}

std::string Hex(uint64_t value) {
  std::ostringstream text;
  text << "0x" << std::hex << value;
  return text.str();
}

bool AllZero(const std::string& bytes, uint64_t from) {
  return std::all_of(bytes.begin() + static_cast<std::ptrdiff_t>(from), bytes.end(),
                     [](char c) { return c == 0; });
}

std::string ListNames(const std::vector<CudaCode>& codes) {
  std::set<std::string> names;
  for (const CudaCode& code : codes) names.insert(code.Name());
  std::string joined;
  for (const std::string& name : names) joined += (joined.empty() ? "" : ", ") + name;
  return joined.empty() ? "none" : joined;
}

}  // namespace

Result<std::vector<CudaCode>> ParseFatbinSection(const std::string& bytes,
                                                 const std::string& origin) {
  std::vector<CudaCode> codes;
  uint64_t offset = 0;
  while (offset + 16 <= bytes.size()) {
    uint32_t magic = 0;
    ReadAt(bytes, offset, &magic);
    if (magic != kFatbinMagic) {
      if (AllZero(bytes, offset)) break;  // alignment padding at the end
      // Fatbinaries are 8-byte aligned; skip padding between them.
      uint64_t next = offset + 8;
      while (next + 4 <= bytes.size()) {
        ReadAt(bytes, next, &magic);
        if (magic == kFatbinMagic) break;
        next += 8;
      }
      if (magic != kFatbinMagic) {
        return Status::Error(origin + ": no fatbinary header (magic 0xba55ed50) at offset " +
                             Hex(offset));
      }
      offset = next;
      continue;
    }
    uint16_t header_size = 0;
    uint64_t fat_size = 0;
    ReadAt(bytes, offset + 6, &header_size);
    ReadAt(bytes, offset + 8, &fat_size);
    if (header_size < 16 || fat_size > bytes.size() - offset - header_size) {
      return Status::Error(origin + ": fatbinary at offset " + Hex(offset) + " claims " +
                           std::to_string(fat_size) + " bytes, more than the section holds");
    }
    uint64_t entry = offset + header_size;
    uint64_t end = entry + fat_size;
    while (entry < end) {
      uint16_t kind = 0;
      uint32_t entry_header_size = 0;
      uint64_t payload_size = 0;
      uint32_t arch = 0;
      if (!ReadAt(bytes, entry, &kind) || !ReadAt(bytes, entry + 4, &entry_header_size) ||
          !ReadAt(bytes, entry + 8, &payload_size) || !ReadAt(bytes, entry + 28, &arch) ||
          entry_header_size < 32 || entry_header_size > end - entry ||
          payload_size > end - entry - entry_header_size) {
        return Status::Error(origin + ": truncated or malformed fatbinary entry at offset " +
                             Hex(entry));
      }
      if (kind == kEntryPtx || kind == kEntryElf) {
        codes.push_back(CudaCode{kind == kEntryElf, static_cast<int>(arch)});
      }
      entry += entry_header_size + payload_size;
    }
    offset = end;
  }
  return codes;
}

Result<std::vector<CudaCode>> ReadEmbeddedCudaCode(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  if (!file) return Status::Error("cannot read " + path);
  std::stringstream buffer;
  buffer << file.rdbuf();
  const std::string bytes = buffer.str();

  if (bytes.size() < 64 || bytes.compare(0, 4, "\x7f" "ELF") != 0) {
    return Status::Error(path + " is not an ELF file");
  }
  if (bytes[4] != 2 || bytes[5] != 1) {
    return Status::Error(path + " is not a 64-bit little-endian ELF file");
  }
  uint64_t section_offset = 0;
  uint16_t section_size = 0, section_count = 0, names_index = 0;
  ReadAt(bytes, 0x28, &section_offset);
  ReadAt(bytes, 0x3A, &section_size);
  ReadAt(bytes, 0x3C, &section_count);
  ReadAt(bytes, 0x3E, &names_index);
  if (section_size < 64 || names_index >= section_count ||
      section_offset + uint64_t{section_count} * section_size > bytes.size()) {
    return Status::Error(path + ": ELF section table is outside the file");
  }
  struct Section {
    uint32_t name;
    uint32_t type;
    uint64_t offset;
    uint64_t size;
  };
  auto section_at = [&](uint16_t index) {
    Section s{};
    uint64_t base = section_offset + uint64_t{index} * section_size;
    ReadAt(bytes, base + 0, &s.name);
    ReadAt(bytes, base + 4, &s.type);
    ReadAt(bytes, base + 24, &s.offset);
    ReadAt(bytes, base + 32, &s.size);
    return s;
  };
  Section names = section_at(names_index);
  if (names.offset + names.size > bytes.size()) {
    return Status::Error(path + ": ELF section name table is outside the file");
  }
  std::vector<CudaCode> codes;
  for (uint16_t i = 0; i < section_count; ++i) {
    Section s = section_at(i);
    if (s.name >= names.size) continue;
    std::string name(bytes.c_str() + names.offset + s.name);
    if (name != ".nv_fatbin" && name != "__nv_relfatbin") continue;
    if (s.type == 8 /* SHT_NOBITS */) continue;
    if (s.offset + s.size > bytes.size()) {
      return Status::Error(path + ": section " + name + " is outside the file");
    }
    Result<std::vector<CudaCode>> found =
        ParseFatbinSection(bytes.substr(s.offset, s.size), path + " section " + name);
    if (!found.ok()) return found.status();
    codes.insert(codes.end(), found->begin(), found->end());
  }
  return codes;
}

std::vector<int> ParseCuobjdumpListElf(const std::string& output) {
  std::vector<int> sms;
  static const std::regex kElfLine(R"(ELF file\s+\d+:.*\.sm_(\d+)[a-z]?\.cubin)");
  std::istringstream lines(output);
  for (std::string line; std::getline(lines, line);) {
    std::smatch match;
    if (std::regex_search(line, match, kElfLine)) sms.push_back(std::stoi(match[1].str()));
  }
  return sms;
}

int ParseSmArch(const std::string& text) {
  static const std::regex kArch(R"(^(?:sm_|compute_)?(\d+)(?:\.(\d+))?[a-z]?$)");
  std::smatch match;
  if (!std::regex_match(text, match, kArch)) return 0;
  if (match[2].matched) return std::stoi(match[1].str()) * 10 + std::stoi(match[2].str());
  return std::stoi(match[1].str());
}

std::string FindCuobjdump() {
  std::vector<std::string> dirs;
  if (const char* cuda_home = std::getenv("CUDA_HOME")) dirs.push_back(std::string(cuda_home) + "/bin");
  dirs.push_back("/usr/local/cuda/bin");
  return FindProgram("cuobjdump", dirs);
}

Status VerifyCudaArch(const std::string& binary, int wanted, const std::string& cuobjdump_path,
                      std::string* tool_used) {
  const std::string wanted_name = "sm_" + std::to_string(wanted);
  std::vector<CudaCode> codes;
  if (!cuobjdump_path.empty()) {
    if (tool_used != nullptr) *tool_used = cuobjdump_path + " --list-elf";
    ProcOptions options;
    options.timeout_seconds = 120;
    Result<ProcResult> run = RunProcess({cuobjdump_path, "--list-elf", binary}, options);
    if (!run.ok()) return run.status();
    // cuobjdump exits non-zero on a file without device code: that is "none found".
    for (int sm : ParseCuobjdumpListElf(run->out)) codes.push_back(CudaCode{true, sm});
    if (!run->ok() && codes.empty() && run->err.find("does not contain device code") ==
                                           std::string::npos) {
      return Status::Error("cannot list the GPU code in " + binary + ": " + run->Describe());
    }
  } else {
    if (tool_used != nullptr) *tool_used = "the embedded fatbinary reader (cuobjdump not found)";
    Result<std::vector<CudaCode>> read = ReadEmbeddedCudaCode(binary);
    if (!read.ok()) return read.status();
    codes = *read;
  }
  for (const CudaCode& code : codes) {
    if (code.is_sass && code.sm == wanted) return Status::Ok();
  }
  return Status::Error("wrong GPU architecture: " + binary + " carries no " + wanted_name +
                       " machine code (found: " + ListNames(codes) +
                       "). A build for the wrong architecture gives garbage output; rebuild "
                       "with -DCMAKE_CUDA_ARCHITECTURES=" + std::to_string(wanted));
}

}  // namespace ds4setup
