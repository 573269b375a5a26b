// Tests for installer/build_stage: versioning by source hash, skip when unchanged,
// previous build kept for rollback, pruning, and clear errors. The "engine" here is a
// tiny CMake project (no compiler needed) that installs stand-in ds4 / ds4-server scripts,
// so the real cmake configure / build / install steps run in a second or two.
#include <doctest/doctest.h>

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "build_stage.h"
#include "proc.h"
#include "test_files.h"

namespace fs = std::filesystem;
using namespace ds4setup;
using namespace ds4setup::testing;

namespace {

// A source tree shaped like ds4-spark's: CMakeLists.txt + engine/, installing programs.
void MakeFakeEngineTree(const fs::path& root, const std::string& programs = "ds4 ds4-server") {
  Write(root / "CMakeLists.txt",
        "cmake_minimum_required(VERSION 3.16)\n"
        "project(fake_engine LANGUAGES NONE)\n"
        "foreach(p " + programs + ")\n"
        "  install(PROGRAMS ${CMAKE_SOURCE_DIR}/engine/tools/stub.sh DESTINATION bin RENAME ${p})\n"
        "endforeach()\n");
  Write(root / "engine" / "tools" / "stub.sh", "#!/bin/sh\necho stub\n");
  fs::permissions(root / "engine" / "tools" / "stub.sh", fs::perms::owner_all);
  Write(root / "engine" / "model" / "model.cpp", "// version 1\n");
}

BuildRequest RequestFor(const TempDir& dir) {
  BuildRequest request;
  request.source_dir = (dir.path / "src").string();
  request.prefix = (dir.path / "prefix").string();
  request.jobs = 1;
  return request;
}

std::string CurrentTarget(const BuildRequest& request) {
  return fs::read_symlink(fs::path(request.prefix) / "current").string();
}

void NoLog(const std::string&) {}

}  // namespace

TEST_CASE("the engine version follows the sources and the build options") {
  TempDir dir("build-test");
  MakeFakeEngineTree(dir.path / "src");
  BuildRequest request = RequestFor(dir);
  Result<std::string> v1 = EngineVersion(request);
  REQUIRE_MESSAGE(v1.ok(), v1.status().message());
  CHECK(v1->size() == 16);
  CHECK(*EngineVersion(request) == *v1);

  Write(dir.path / "src" / "engine" / "model" / "model.cpp", "// version 2\n");
  Result<std::string> v2 = EngineVersion(request);
  CHECK(*v2 != *v1);

  request.cuda_architectures = "121";
  Result<std::string> v2_cuda = EngineVersion(request);
  CHECK(*v2_cuda != *v2);

  // Files outside engine/ and the root CMake files do not change the version.
  request.cuda_architectures.clear();
  Write(dir.path / "src" / "docs" / "notes.md", "unrelated\n");
  CHECK(*EngineVersion(request) == *v2);
}

TEST_CASE("a tree without engine sources is refused with the path") {
  TempDir dir("build-test");
  fs::create_directories(dir.path / "src");
  Result<std::string> version = EngineVersion(RequestFor(dir));
  REQUIRE_FALSE(version.ok());
  CHECK(version.status().message().find((dir.path / "src").string()) != std::string::npos);
  CHECK(version.status().message().find("expected CMakeLists.txt and engine/") != std::string::npos);
}

TEST_CASE("build, skip when unchanged, keep the previous build, roll back, prune") {
  if (FindProgram("cmake").empty()) {
    MESSAGE("cmake not on PATH: build steps not exercised");
    return;
  }
  TempDir dir("build-test");
  MakeFakeEngineTree(dir.path / "src");
  BuildRequest request = RequestFor(dir);
  const fs::path prefix(request.prefix);

  Result<BuildOutcome> first = BuildEngine(request, NoLog);
  REQUIRE_MESSAGE(first.ok(), first.status().message());
  CHECK_FALSE(first->skipped);
  CHECK(first->bin_dir == (prefix / "current" / "bin").string());
  CHECK(fs::exists(prefix / "current" / "bin" / "ds4"));
  CHECK(fs::exists(prefix / "current" / "bin" / "ds4-server"));
  CHECK(CurrentTarget(request) == "versions/" + first->version);
  CHECK(Read(prefix / "current" / "BUILD_INFO.json").find(first->version) != std::string::npos);
  CHECK(CurrentEngineVersion(request.prefix) == first->version);
  CHECK_FALSE(fs::exists(prefix / "previous"));

  Result<BuildOutcome> again = BuildEngine(request, NoLog);
  REQUIRE(again.ok());
  CHECK(again->skipped);
  CHECK(again->version == first->version);

  Write(dir.path / "src" / "engine" / "model" / "model.cpp", "// version 2\n");
  Result<BuildOutcome> second = BuildEngine(request, NoLog);
  REQUIRE(second.ok());
  CHECK_FALSE(second->skipped);
  CHECK(second->version != first->version);
  CHECK(CurrentTarget(request) == "versions/" + second->version);
  CHECK(fs::read_symlink(prefix / "previous").string() == "versions/" + first->version);

  Status rolled_back = RollbackEngine(request.prefix);
  REQUIRE_MESSAGE(rolled_back.ok(), rolled_back.message());
  CHECK(CurrentTarget(request) == "versions/" + first->version);
  CHECK(fs::read_symlink(prefix / "previous").string() == "versions/" + second->version);

  // Back to the newer sources: that build exists, so it becomes current without a rebuild.
  Result<BuildOutcome> forward = BuildEngine(request, NoLog);
  REQUIRE(forward.ok());
  CHECK(CurrentTarget(request) == "versions/" + second->version);

  // A third version: only current and previous stay.
  Write(dir.path / "src" / "engine" / "model" / "model.cpp", "// version 3\n");
  Result<BuildOutcome> third = BuildEngine(request, NoLog);
  REQUIRE(third.ok());
  int kept = 0;
  for (const auto& entry : fs::directory_iterator(prefix / "versions")) {
    (void)entry;
    ++kept;
  }
  CHECK(kept == 2);
  CHECK(fs::exists(prefix / "versions" / third->version));
  CHECK(fs::exists(prefix / "versions" / second->version));
  CHECK_FALSE(fs::exists(prefix / "versions" / first->version));
}

TEST_CASE("a build that lacks ds4-server, or does not configure, fails with the reason") {
  if (FindProgram("cmake").empty()) {
    MESSAGE("cmake not on PATH: build steps not exercised");
    return;
  }
  TempDir dir("build-test");
  MakeFakeEngineTree(dir.path / "src", "ds4");
  BuildRequest request = RequestFor(dir);
  Result<BuildOutcome> missing = BuildEngine(request, NoLog);
  REQUIRE_FALSE(missing.ok());
  CHECK(missing.status().message().find("the engine build produced no ds4-server") != std::string::npos);
  CHECK_FALSE(fs::exists(fs::path(request.prefix) / "current"));

  Write(dir.path / "src" / "CMakeLists.txt", "this is not cmake(\n");
  std::string logged;
  Result<BuildOutcome> broken = BuildEngine(request, [&](const std::string& chunk) { logged += chunk; });
  REQUIRE_FALSE(broken.ok());
  CHECK(broken.status().message().find("configuring the engine failed") != std::string::npos);
  CHECK(logged.find("CMakeLists.txt") != std::string::npos);  // the tool's output reached the log
  CHECK_FALSE(fs::exists(fs::path(request.prefix) / "current"));
}

TEST_CASE("rolling back without a previous build says so") {
  TempDir dir("build-test");
  Status status = RollbackEngine(dir.path.string());
  REQUIRE_FALSE(status.ok());
  CHECK(status.message().find("no previous engine build") != std::string::npos);
}

TEST_CASE("a build tree configured from another source tree is started afresh") {
  if (FindProgram("cmake").empty()) {
    MESSAGE("cmake not on PATH: build steps not exercised");
    return;
  }
  TempDir dir("build-test");
  MakeFakeEngineTree(dir.path / "src");
  BuildRequest request = RequestFor(dir);
  REQUIRE(BuildEngine(request, NoLog).ok());

  MakeFakeEngineTree(dir.path / "other");
  Write(dir.path / "other" / "engine" / "model" / "model.cpp", "// another tree\n");
  request.source_dir = (dir.path / "other").string();
  std::string logged;
  Result<BuildOutcome> moved = BuildEngine(request, [&](const std::string& chunk) { logged += chunk; });
  REQUIRE_MESSAGE(moved.ok(), moved.status().message());
  CHECK_FALSE(moved->skipped);
  CHECK(logged.find("was configured from " + (dir.path / "src").string()) != std::string::npos);
  CHECK(CurrentEngineVersion(request.prefix) == moved->version);
}

// A CUDA "engine": ds4 and ds4-server built from one tiny kernel with CMake's CUDA
// support. `forced_arch` (when set) overrides the architecture the build stage asks for,
// as a broken build script would.
static void MakeFakeCudaEngineTree(const fs::path& root, const std::string& forced_arch) {
  Write(root / "CMakeLists.txt",
        "cmake_minimum_required(VERSION 3.25)\n"
        "project(fake_cuda_engine LANGUAGES CXX CUDA)\n" +
            (forced_arch.empty() ? std::string()
                                 : "set(CMAKE_CUDA_ARCHITECTURES " + forced_arch + ")\n") +
            "foreach(p ds4 ds4-server)\n"
            "  add_executable(${p} engine/kernel.cu)\n"
            "  install(TARGETS ${p} RUNTIME DESTINATION bin)\n"
            "endforeach()\n");
  Write(root / "engine" / "kernel.cu",
        "__global__ void add_one(float* x) { x[threadIdx.x] += 1.0f; }\n"
        "int main() { float* d = nullptr; cudaMalloc(&d, 4); add_one<<<1, 1>>>(d);\n"
        "  return cudaDeviceSynchronize(); }\n");
}

TEST_CASE("CUDA builds: sm_121 code is verified; a build for another architecture is refused") {
  std::string nvcc = FindProgram("nvcc", {"/usr/local/cuda/bin"});
  if (nvcc.empty() || FindProgram("cmake").empty()) {
    MESSAGE("nvcc or cmake not found: the CUDA build check was not run");
    return;
  }
  TempDir dir("build-test");
  MakeFakeCudaEngineTree(dir.path / "src", "");
  BuildRequest request = RequestFor(dir);
  request.cuda_architectures = "121";
  request.nvcc_path = nvcc;
  request.jobs = 2;
  std::string logged;
  Result<BuildOutcome> built = BuildEngine(request, [&](const std::string& chunk) { logged += chunk; });
  INFO(logged);
  REQUIRE_MESSAGE(built.ok(), built.status().message());
  CHECK(built->arch_check.find("sm_121 code present") != std::string::npos);
  CHECK(Read(fs::path(request.prefix) / "current" / "BUILD_INFO.json").find("\"121\"") != std::string::npos);

  TempDir other("build-test");
  MakeFakeCudaEngineTree(other.path / "src", "90");
  BuildRequest wrong = RequestFor(other);
  wrong.cuda_architectures = "121";
  wrong.nvcc_path = nvcc;
  wrong.jobs = 2;
  Result<BuildOutcome> refused = BuildEngine(wrong, NoLog);
  REQUIRE_FALSE(refused.ok());
  CHECK(refused.status().message().find("wrong GPU architecture") != std::string::npos);
  CHECK(refused.status().message().find("carries no sm_121 machine code (found: ") != std::string::npos);
  CHECK(refused.status().message().find("sm_90") != std::string::npos);
  CHECK_FALSE(fs::exists(fs::path(wrong.prefix) / "current"));  // never made current
}
