// Tests for installer/host_probe and installer/doctor: parsing what nvidia-smi, nvcc and
// /proc/meminfo say, choosing a profile, and one failing row per problem.
#include "host_probe.h"

#include <doctest/doctest.h>

#include <algorithm>

#include "doctor.h"

using namespace ds4setup;

namespace {

HostProfiles Shipped() {
  Result<HostProfiles> hosts = LoadHostProfiles(std::string(DS4_SOURCE_DIR) + "/manifests/hosts.yaml");
  REQUIRE_MESSAGE(hosts.ok(), hosts.status().message());
  return *hosts;
}

HostFacts Gb10() {
  HostFacts f;
  f.os = "Linux";
  f.arch = "aarch64";
  f.nvidia_smi_found = true;
  f.gpus = ParseNvidiaSmiCsv("NVIDIA GB10, 12.1, [N/A], 580.95.05\n");
  f.nvcc_path = "/usr/local/cuda/bin/nvcc";
  f.cuda_version = "13.0";
  f.ram_bytes = 125388392ull * 1024;
  f.disk_path = "/home";
  f.disk_free_bytes = 200ull << 30;
  return f;
}

std::vector<std::string> Failed(const std::vector<CheckRow>& rows) {
  std::vector<std::string> names;
  for (const auto& r : rows)
    if (!r.passed) names.push_back(r.name);
  return names;
}

const CheckRow& Row(const std::vector<CheckRow>& rows, const std::string& name) {
  auto it = std::find_if(rows.begin(), rows.end(), [&](const CheckRow& r) { return r.name == name; });
  REQUIRE(it != rows.end());
  return *it;
}

constexpr uint64_t kQ2PlusMtp = 86720111488ull + 3807602400ull;

}  // namespace

TEST_CASE("nvidia-smi CSV: GB10 memory N/A, H200 memory in MiB") {
  std::vector<GpuInfo> gpus =
      ParseNvidiaSmiCsv("NVIDIA GB10, 12.1, [N/A], 580.95.05\nNVIDIA H200, 9.0, 143771, 570.1\n\n");
  REQUIRE(gpus.size() == 2);
  CHECK(gpus[0].name == "NVIDIA GB10");
  CHECK(gpus[0].compute_capability == "12.1");
  CHECK(gpus[0].memory_bytes == 0);
  CHECK(gpus[0].driver_version == "580.95.05");
  CHECK(gpus[1].memory_bytes == 143771ull * 1048576);
  CHECK(ParseNvidiaSmiCsv("garbage").empty());
}

TEST_CASE("nvcc --version and /proc/meminfo") {
  CHECK(ParseNvccVersion("Cuda compilation tools, release 13.0, V13.0.48\n") == "13.0");
  CHECK(ParseNvccVersion("Cuda compilation tools, release 12.8, V12.8.93") == "12.8");
  CHECK(ParseNvccVersion("no version here") == "");
  CHECK(ParseMemTotalBytes("MemFree: 1 kB\nMemTotal:       125388392 kB\n") == 125388392ull * 1024);
  CHECK(ParseMemTotalBytes("MemFree: 1 kB\n") == 0);
}

TEST_CASE("a GB10 host is picked as gb10 and passes with room for Q2 + MTP") {
  HostProfiles hosts = Shipped();
  Result<HostProfile> profile = ChooseProfile(Gb10(), hosts, "");
  REQUIRE(profile.ok());
  CHECK(profile->name == "gb10");
  std::vector<CheckRow> rows = EvaluateHost(Gb10(), *profile, kQ2PlusMtp);
  CHECK(Failed(rows).empty());
  CHECK(AllRequiredPass(rows));
}

TEST_CASE("each problem fails its own check with its own fix") {
  HostProfile gb10 = *Shipped().Find("gb10");
  HostFacts f = Gb10();
  SUBCASE("wrong arch") {
    f.arch = "x86_64";
    auto rows = EvaluateHost(f, gb10, kQ2PlusMtp);
    CHECK(Failed(rows) == std::vector<std::string>{"arch"});
    CHECK(Row(rows, "arch").fix.find("wrong architecture") == 0);
  }
  SUBCASE("wrong GPU") {
    f.gpus = ParseNvidiaSmiCsv("NVIDIA GeForce RTX 4090, 8.9, 24564, 570.1");
    auto rows = EvaluateHost(f, gb10, kQ2PlusMtp);
    CHECK(Failed(rows) == std::vector<std::string>{"gpu", "compute capability"});
    CHECK(Row(rows, "gpu").fix.find("wrong GPU") == 0);
  }
  SUBCASE("old CUDA") {
    f.cuda_version = "12.9";
    auto rows = EvaluateHost(f, gb10, kQ2PlusMtp);
    CHECK(Failed(rows) == std::vector<std::string>{"cuda toolkit"});
    CHECK(Row(rows, "cuda toolkit").fix.find("CUDA toolkit too old: 12.9 found") == 0);
  }
  SUBCASE("no CUDA") {
    f.nvcc_path.clear();
    f.cuda_version.clear();
    auto rows = EvaluateHost(f, gb10, kQ2PlusMtp);
    CHECK(Failed(rows) == std::vector<std::string>{"cuda toolkit"});
    CHECK(Row(rows, "cuda toolkit").measured == "nvcc not found");
  }
  SUBCASE("low RAM") {
    f.ram_bytes = 64ull << 30;
    auto rows = EvaluateHost(f, gb10, kQ2PlusMtp);
    CHECK(Failed(rows) == std::vector<std::string>{"ram"});
  }
  SUBCASE("low disk: 110 GiB needed from scratch, 100 GiB free") {
    f.disk_free_bytes = 100ull << 30;
    auto rows = EvaluateHost(f, gb10, kQ2PlusMtp);
    CHECK(Failed(rows) == std::vector<std::string>{"disk"});
    CHECK(Row(rows, "disk").fix.find("not enough disk space in /home") == 0);
  }
  SUBCASE("disk: files already downloaded need only the margin") {
    f.disk_free_bytes = 30ull << 30;
    CHECK(Failed(EvaluateHost(f, gb10, 0)).empty());
  }
}

TEST_CASE("unknown hosts list the profiles and how to force one; forcing works") {
  HostProfiles hosts = Shipped();
  HostFacts f = Gb10();
  f.gpus = ParseNvidiaSmiCsv("NVIDIA GeForce RTX 4090, 8.9, 24564, 570.1");
  Result<HostProfile> none = ChooseProfile(f, hosts, "");
  REQUIRE_FALSE(none.ok());
  const std::string& message = none.status().message();
  for (const char* want : {"matches no host profile", "gb10:", "sm90:", "sm120:", "demo:", "--host-profile NAME"})
    CHECK_MESSAGE(message.find(want) != std::string::npos, want);
  CHECK(ChooseProfile(f, hosts, "demo")->name == "demo");
  Result<HostProfile> bad = ChooseProfile(f, hosts, "tpu");
  REQUIRE_FALSE(bad.ok());
  CHECK(bad.status().message() == "unknown host profile 'tpu'; known profiles: gb10, sm90, sm120, demo");
}

TEST_CASE("an H200 is sm90; an H100 80 GB fails the GPU memory check") {
  HostProfiles hosts = Shipped();
  HostFacts f = Gb10();
  f.arch = "x86_64";
  f.gpus = ParseNvidiaSmiCsv("NVIDIA H200, 9.0, 143771, 570.1");
  Result<HostProfile> profile = ChooseProfile(f, hosts, "");
  REQUIRE(profile.ok());
  CHECK(profile->name == "sm90");
  CHECK(Failed(EvaluateHost(f, *profile, kQ2PlusMtp)).empty());
  f.gpus = ParseNvidiaSmiCsv("NVIDIA H100 80GB HBM3, 9.0, 81559, 570.1");
  CHECK(Failed(EvaluateHost(f, *profile, kQ2PlusMtp)) == std::vector<std::string>{"gpu memory"});
}

TEST_CASE("the demo profile needs no GPU") {
  HostFacts f;
  f.os = "Linux";
  f.arch = "x86_64";
  f.ram_bytes = 8ull << 30;
  f.disk_free_bytes = 10ull << 30;
  auto rows = EvaluateHost(f, *Shipped().Find("demo"), 16117856);
  CHECK(AllRequiredPass(rows));
  CHECK(std::none_of(rows.begin(), rows.end(), [](const CheckRow& r) { return r.name == "gpu"; }));
}

TEST_CASE("doctor output: table shows fixes for failures, JSON is complete") {
  HostFacts f = Gb10();
  f.cuda_version = "12.0";
  auto rows = EvaluateHost(f, *Shipped().Find("gb10"), 0);
  std::string table = FormatCheckTable(rows);
  CHECK(table.find("FAIL  cuda toolkit") != std::string::npos);
  CHECK(table.find("fix: CUDA toolkit too old") != std::string::npos);
  std::string json = FormatCheckJson(rows, "gb10", f);
  CHECK(json.find("\"ok\": false") != std::string::npos);
  CHECK(json.find("\"profile\": \"gb10\"") != std::string::npos);
  CHECK(HumanBytes(0) == "0 B");
  CHECK(HumanBytes(1536) == "1.5 KiB");
  CHECK(HumanBytes(86720111488ull) == "80.8 GiB");
}

TEST_CASE("free disk space is measured at the nearest existing ancestor") {
  std::string at;
  Result<uint64_t> free_bytes = FreeDiskBytes("/tmp/does/not/exist/yet", &at);
  REQUIRE(free_bytes.ok());
  CHECK(at == "/tmp");
}
