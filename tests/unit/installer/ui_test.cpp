// Tests for installer/ui, progress and plan: secrets never reach the screen or the log;
// progress lines; what the plan says about files on disk.
#include "ui.h"

#include <doctest/doctest.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>

#include "plan.h"
#include "progress.h"

using namespace ds4setup;
namespace fs = std::filesystem;

namespace {

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

struct Scratch {
  fs::path dir;
  Scratch() {
    char tmpl[] = "/tmp/ds4-ui-test.XXXXXX";
    dir = mkdtemp(tmpl);
  }
  ~Scratch() { fs::remove_all(dir); }
  std::string operator/(const std::string& name) const { return (dir / name).string(); }
};

ModelArtifact Artifact(uint64_t bytes) {
  ModelArtifact a;
  a.name = "m";
  a.file = "m.gguf";
  a.bytes = bytes;
  a.sha256 = std::string(64, 'a');
  return a;
}

}  // namespace

TEST_CASE("secrets are redacted on the screen and in the log") {
  Scratch s;
  std::FILE* out = std::fopen((s / "out").c_str(), "w");
  std::FILE* err = std::fopen((s / "err").c_str(), "w");
  {
    Ui ui(out, err);
    REQUIRE(ui.OpenLog(s / "logs/setup.log").ok());
    ui.AddSecret("hf_TopSecret");
    ui.Info("token hf_TopSecret here");
    ui.Warning("again hf_TopSecret and hf_TopSecret");
    ui.Error("error with hf_TopSecret");
    ui.Plain("plain hf_TopSecret\n");
    ui.Log("log hf_TopSecret");
  }
  std::fclose(out);
  std::fclose(err);
  std::string all = ReadFile(s / "out") + ReadFile(s / "err") + ReadFile(s / "logs/setup.log");
  CHECK(all.find("hf_TopSecret") == std::string::npos);
  CHECK(ReadFile(s / "out").find(">>> token *** here") != std::string::npos);
  CHECK(ReadFile(s / "err").find("WARNING: again *** and ***") != std::string::npos);
  CHECK(ReadFile(s / "err").find("ERROR: error with ***") != std::string::npos);
  CHECK(ReadFile(s / "logs/setup.log").find("log ***") != std::string::npos);
}

TEST_CASE("quiet mode keeps status lines in the log only") {
  Scratch s;
  std::FILE* out = std::fopen((s / "out").c_str(), "w");
  {
    Ui ui(out, out);
    REQUIRE(ui.OpenLog(s / "log").ok());
    ui.set_quiet(true);
    ui.Info("hidden");
  }
  std::fclose(out);
  CHECK(ReadFile(s / "out").empty());
  CHECK(ReadFile(s / "log").find("INFO hidden") != std::string::npos);
}

TEST_CASE("progress line: percent, bytes, rate, ETA; bar on a terminal") {
  std::string plain = Progress::Format(1ull << 30, 4ull << 30, 100.0 * (1 << 20), 0);
  CHECK(plain == " 25%  1.0 GiB / 4.0 GiB  100.0 MiB/s  ETA 0:31");
  std::string bar = Progress::Format(1, 2, 0, 10);
  CHECK(bar == "[=====>    ]  50%  1 B / 2 B  0 B/s  ETA ?");
  CHECK(Progress::Format(3, 2, 1, 0).find("100%") == 0);
}

TEST_CASE("the plan sees what is on disk") {
  Scratch s;
  ModelArtifact a = Artifact(1000);
  CHECK(InspectFile(a, s.dir.string(), "").state == FileState::kMissing);
  CHECK(InspectFile(a, s.dir.string(), "").remaining_bytes == 1000);

  std::ofstream(s / "m.gguf.part") << std::string(400, 'x');
  PlannedFile partial = InspectFile(a, s.dir.string(), "");
  CHECK(partial.state == FileState::kPartial);
  CHECK(partial.remaining_bytes == 600);

  std::ofstream(s / "m.gguf.part") << std::string(1400, 'x');
  CHECK(InspectFile(a, s.dir.string(), "").state == FileState::kOverlong);
  CHECK(InspectFile(a, s.dir.string(), "").remaining_bytes == 1000);

  std::ofstream(s / "m.gguf") << std::string(1000, 'x');
  PlannedFile present = InspectFile(a, s.dir.string(), "");
  CHECK(present.state == FileState::kPresent);
  CHECK(present.remaining_bytes == 0);

  std::ofstream(s / "m.gguf") << std::string(10, 'x');
  CHECK(InspectFile(a, s.dir.string(), "").state == FileState::kWrongSize);
  CHECK(InspectFile(a, s.dir.string(), "/elsewhere/m.gguf").state == FileState::kAdopt);
}

TEST_CASE("the printed plan names files, bytes, build and service") {
  Options options;
  options.models_dir = "/models";
  options.with_mtp = true;
  HostProfile profile;
  profile.name = "gb10";
  profile.cuda_architectures = "121";
  ModelArtifact a = Artifact(2048);
  a.repo = "org/repo";
  a.revision = "rev";
  Result<Plan> plan = MakePlan(options, {a}, profile);
  REQUIRE(plan.ok());
  CHECK(plan->remaining_bytes == 2048);
  std::string text = FormatPlan(*plan, options);
  CHECK(text.find("Plan (host profile gb10)") == 0);
  CHECK(text.find("m: download  /models/m.gguf") != std::string::npos);
  CHECK(text.find("/org/repo/resolve/rev/m.gguf") != std::string::npos);
  CHECK(text.find("2.0 KiB (2048 bytes) in total") != std::string::npos);
  CHECK(text.find("CUDA sm_121") != std::string::npos);
  CHECK(text.find("ds4.service serving http://127.0.0.1:8000/v1") != std::string::npos);
}
