// Tests for installer/cuda_arch: finding which sm_XX code a built program carries.
// With nvcc present (CI has it in /usr/local/cuda/bin) a tiny kernel is compiled for
// sm_121 and for sm_90: the check must pass for the first and fail loudly for the second.
#include <doctest/doctest.h>

#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>

#include "cuda_arch.h"
#include "proc.h"
#include "test_files.h"

namespace fs = std::filesystem;
using namespace ds4setup;
using namespace ds4setup::testing;

namespace {

template <typename T>
void Put(std::string& bytes, T value) {
  bytes.append(reinterpret_cast<const char*>(&value), sizeof(T));
}

// One fatbinary entry: kind (1 PTX, 2 ELF), a 64-byte header, `payload` bytes.
std::string Entry(uint16_t kind, uint32_t sm, const std::string& payload) {
  std::string entry;
  Put<uint16_t>(entry, kind);
  Put<uint16_t>(entry, 0x0101);
  Put<uint32_t>(entry, 64);
  Put<uint64_t>(entry, payload.size());
  Put<uint32_t>(entry, 0);
  Put<uint32_t>(entry, 0);
  Put<uint32_t>(entry, 0x10008);
  Put<uint32_t>(entry, sm);
  entry.resize(64, '\0');
  return entry + payload;
}

std::string Fatbin(const std::string& entries) {
  std::string fatbin;
  Put<uint32_t>(fatbin, 0xBA55ED50u);
  Put<uint16_t>(fatbin, 1);
  Put<uint16_t>(fatbin, 16);
  Put<uint64_t>(fatbin, entries.size());
  return fatbin + entries;
}

std::string FindNvcc() {
  std::vector<std::string> dirs = {"/usr/local/cuda/bin"};
  if (const char* home = std::getenv("CUDA_HOME")) dirs.insert(dirs.begin(), std::string(home) + "/bin");
  return FindProgram("nvcc", dirs);
}

}  // namespace

TEST_CASE("fatbinary entries are read with their kind and sm number") {
  std::string section = Fatbin(Entry(2, 90, std::string(40, 'x')) + Entry(1, 121, "ptx")) +
                        std::string(8, '\0') + Fatbin(Entry(2, 121, std::string(24, 'y'))) +
                        std::string(16, '\0');
  Result<std::vector<CudaCode>> codes = ParseFatbinSection(section, "test");
  REQUIRE_MESSAGE(codes.ok(), codes.status().message());
  REQUIRE(codes->size() == 3);
  CHECK((*codes)[0].Name() == "sm_90");
  CHECK((*codes)[1].Name() == "compute_121");
  CHECK((*codes)[2].Name() == "sm_121");
}

TEST_CASE("a truncated or garbled fatbinary is an error naming the offset") {
  std::string good = Fatbin(Entry(2, 121, std::string(40, 'x')));
  Result<std::vector<CudaCode>> truncated =
      ParseFatbinSection(good.substr(0, good.size() - 10), "cut.bin");
  REQUIRE_FALSE(truncated.ok());
  CHECK(Contains(truncated.status().message(), "cut.bin"));

  std::string bad_entry = good;
  bad_entry[16 + 4] = 8;  // entry header size 8: smaller than any real header
  Result<std::vector<CudaCode>> malformed = ParseFatbinSection(bad_entry, "bad.bin");
  REQUIRE_FALSE(malformed.ok());
  CHECK(Contains(malformed.status().message(), "malformed fatbinary entry at offset 0x10"));

  Result<std::vector<CudaCode>> noise = ParseFatbinSection(std::string(32, '\x7f'), "noise");
  REQUIRE_FALSE(noise.ok());
  CHECK(Contains(noise.status().message(), "no fatbinary header"));
}

TEST_CASE("cuobjdump --list-elf output and architecture names are understood") {
  std::vector<int> sms = ParseCuobjdumpListElf(
      "ELF file    1: ds4-server.1.sm_90.cubin\nELF file    2: ds4-server.2.sm_121a.cubin\n"
      "PTX file    1: ds4-server.1.sm_121.ptx\n");
  REQUIRE(sms.size() == 2);
  CHECK(sms[0] == 90);
  CHECK(sms[1] == 121);
  CHECK(ParseSmArch("sm_121") == 121);
  CHECK(ParseSmArch("121a") == 121);
  CHECK(ParseSmArch("12.1") == 121);
  CHECK(ParseSmArch("90") == 90);
  CHECK(ParseSmArch("gb10") == 0);
}

TEST_CASE("files that are not ELF, or carry no GPU code, fail the check with a reason") {
  TempDir dir("arch-test");
  fs::path text = dir.path / "notes.txt";
  std::ofstream(text) << "not a program\n";
  Result<std::vector<CudaCode>> not_elf = ReadEmbeddedCudaCode(text.string());
  REQUIRE_FALSE(not_elf.ok());
  CHECK(Contains(not_elf.status().message(), "is not an ELF file"));

  // A host program without CUDA code (this test itself): no code objects at all.
  std::string self = fs::read_symlink("/proc/self/exe").string();
  Result<std::vector<CudaCode>> none = ReadEmbeddedCudaCode(self);
  REQUIRE_MESSAGE(none.ok(), none.status().message());
  CHECK(none->empty());
  Status verdict = VerifyCudaArch(self, 121, "");
  REQUIRE_FALSE(verdict.ok());
  CHECK(Contains(verdict.message(), "carries no sm_121 machine code (found: none)"));
}

TEST_CASE("nvcc builds: sm_121 passes the check, an sm_90-only build fails loudly") {
  std::string nvcc = FindNvcc();
  if (nvcc.empty()) {
    MESSAGE("nvcc not found (PATH, $CUDA_HOME/bin, /usr/local/cuda/bin): compile check not run");
    return;
  }
  TempDir dir("arch-test");
  fs::path source = dir.path / "add_one.cu";
  std::ofstream(source) << "__global__ void add_one(float* x) { x[threadIdx.x] += 1.0f; }\n"
                           "int main() { float* d = nullptr; cudaMalloc(&d, 4);\n"
                           "  add_one<<<1, 1>>>(d); return cudaDeviceSynchronize(); }\n";
  auto compile = [&](int sm) {
    fs::path out = dir.path / ("add_one_sm" + std::to_string(sm));
    ProcOptions options;
    options.timeout_seconds = 300;
    Result<ProcResult> run = RunProcess(
        {nvcc, "-gencode", "arch=compute_" + std::to_string(sm) + ",code=sm_" + std::to_string(sm),
         "-o", out.string(), source.string()},
        options);
    REQUIRE(run.ok());
    INFO(run->Describe());
    REQUIRE(run->ok());
    return out.string();
  };
  const std::string sm121 = compile(121);
  const std::string sm90 = compile(90);

  Result<std::vector<CudaCode>> codes = ReadEmbeddedCudaCode(sm121);
  REQUIRE_MESSAGE(codes.ok(), codes.status().message());
  REQUIRE_FALSE(codes->empty());
  for (const CudaCode& code : *codes) CHECK(code.Name() == "sm_121");

  std::string tool;
  Status pass = VerifyCudaArch(sm121, 121, "", &tool);
  CHECK_MESSAGE(pass.ok(), pass.message());
  CHECK(Contains(tool, "fatbinary reader"));

  Status fail = VerifyCudaArch(sm90, 121, "");
  REQUIRE_FALSE(fail.ok());
  CHECK(Contains(fail.message(), "wrong GPU architecture"));
  CHECK(Contains(fail.message(), "carries no sm_121 machine code (found: sm_90)"));
  CHECK(Contains(fail.message(), "-DCMAKE_CUDA_ARCHITECTURES=121"));

  // Where the toolkit ships cuobjdump, it must agree with the own reader.
  std::string cuobjdump = FindCuobjdump();
  if (cuobjdump.empty()) {
    MESSAGE("cuobjdump not installed: only the embedded fatbinary reader was checked");
  } else {
    CHECK(VerifyCudaArch(sm121, 121, cuobjdump).ok());
    Status cuobjdump_fail = VerifyCudaArch(sm90, 121, cuobjdump);
    REQUIRE_FALSE(cuobjdump_fail.ok());
    CHECK(Contains(cuobjdump_fail.message(), "(found: sm_90)"));
  }
}
