// Tests for installer/unit_file: rendering systemd/ds4.service.
#include <doctest/doctest.h>

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "proc.h"
#include "unit_file.h"
#include "test_files.h"

namespace fs = std::filesystem;
using namespace ds4setup;
using namespace ds4setup::testing;

namespace {

const std::string kTemplate = std::string(DS4_SOURCE_DIR) + "/systemd/ds4.service";

UnitConfig Gb10Config() {
  UnitConfig config;
  config.server_binary = "/opt/ds4/current/bin/ds4-server";
  config.model_path = "/opt/ds4/models/DeepSeek-V4-Flash-IQ2XXS-w2Q2K-AProjQ8-SExpQ8-OutQ8-chat-v2-imatrix.gguf";
  config.mtp_path = "/opt/ds4/models/DeepSeek-V4-Flash-MTP-Q4K-Q8_0-F32.gguf";
  config.kv_dir = "/opt/ds4/kv";
  config.gpu_groups = {"video", "render"};
  config.doc_path = "/opt/ds4/src/docs/install.md";
  return config;
}

// The value of the first "Key=" line, or "<missing>".
std::string Setting(const std::string& unit, const std::string& key) {
  std::istringstream lines(unit);
  for (std::string line; std::getline(lines, line);) {
    if (line.rfind(key + "=", 0) == 0) return line.substr(key.size() + 1);
  }
  return "<missing>";
}

}  // namespace

TEST_CASE("GB10 unit with --with-mtp runs ds4-server with --mtp bound to 127.0.0.1:8000") {
  Result<std::string> unit = RenderUnitFile(kTemplate, Gb10Config());
  REQUIRE_MESSAGE(unit.ok(), unit.status().message());
  const std::string exec = Setting(*unit, "ExecStart");
  CHECK(exec ==
        "/opt/ds4/current/bin/ds4-server -m /opt/ds4/models/DeepSeek-V4-Flash-IQ2XXS-w2Q2K-AProjQ8-"
        "SExpQ8-OutQ8-chat-v2-imatrix.gguf --mtp /opt/ds4/models/DeepSeek-V4-Flash-MTP-Q4K-Q8_0-F32.gguf"
        " --host 127.0.0.1 --port 8000");
  CHECK(Setting(*unit, "User") == "ds4");
  CHECK(Setting(*unit, "SupplementaryGroups") == "video render");
  CHECK(Setting(*unit, "Restart") == "on-failure");
  CHECK(Setting(*unit, "StartLimitBurst") != "<missing>");
  CHECK(Setting(*unit, "StartLimitIntervalSec") != "<missing>");
  CHECK(Setting(*unit, "NoNewPrivileges") == "yes");
  CHECK(Setting(*unit, "ProtectSystem") == "strict");
  CHECK(Setting(*unit, "ProtectHome") == "yes");
  CHECK(Setting(*unit, "PrivateTmp") == "yes");
  CHECK(Setting(*unit, "ReadWritePaths") == "/opt/ds4/kv");
  CHECK(Setting(*unit, "PrivateDevices") == "<missing>");  // the GPU nodes must stay visible
  std::istringstream lines(*unit);
  for (std::string line; std::getline(lines, line);) {
    if (line.empty() || line[0] == '#') continue;
    INFO(line);
    CHECK_FALSE(Contains(line, "{{"));
  }
}

TEST_CASE("without MTP, with --host/--port/--ctx, the flags follow") {
  UnitConfig config = Gb10Config();
  config.mtp_path.clear();
  config.host = "0.0.0.0";
  config.port = 8123;
  config.ctx = 65536;
  Result<std::string> unit = RenderUnitFile(kTemplate, config);
  REQUIRE(unit.ok());
  const std::string exec = Setting(*unit, "ExecStart");
  CHECK_FALSE(Contains(exec, "--mtp"));
  CHECK(Contains(exec, " --host 0.0.0.0 --port 8123 --ctx 65536"));
  CHECK(Contains(Setting(*unit, "Description"), "0.0.0.0:8123"));
}

TEST_CASE("a host without video/render groups gets no SupplementaryGroups line") {
  UnitConfig config = Gb10Config();
  config.gpu_groups.clear();
  Result<std::string> unit = RenderUnitFile(kTemplate, config);
  REQUIRE(unit.ok());
  CHECK(Setting(*unit, "SupplementaryGroups") == "<missing>");
}

TEST_CASE("paths under /home make ProtectHome read-only, and odd characters are quoted") {
  UnitConfig config = Gb10Config();
  config.model_path = "/home/me/my models/100%$.gguf";
  Result<std::string> unit = RenderUnitFile(kTemplate, config);
  REQUIRE(unit.ok());
  CHECK(Setting(*unit, "ProtectHome") == "read-only");
  CHECK(Contains(Setting(*unit, "ExecStart"), " -m \"/home/me/my models/100%%$$.gguf\" "));
  CHECK(SystemdQuote("a\"b\\c") == "\"a\\\"b\\\\c\"");
  CHECK(SystemdQuote("plain/path") == "plain/path");
}

TEST_CASE("bad values are refused with a message naming them") {
  UnitConfig config = Gb10Config();
  config.model_path = "models/x.gguf";
  Result<std::string> relative = RenderUnitFile(kTemplate, config);
  REQUIRE_FALSE(relative.ok());
  CHECK(Contains(relative.status().message(), "model file path must be absolute"));

  config = Gb10Config();
  config.port = 70000;
  Result<std::string> port = RenderUnitFile(kTemplate, config);
  REQUIRE_FALSE(port.ok());
  CHECK(Contains(port.status().message(), "port 70000"));

  Result<std::string> missing = RenderUnitFile("/nonexistent/ds4.service", Gb10Config());
  REQUIRE_FALSE(missing.ok());
  CHECK(Contains(missing.status().message(), "/nonexistent/ds4.service"));
}

TEST_CASE("template errors name the line and placeholder") {
  Result<std::string> unknown = RenderTemplate("[Unit]\nDescription={{NOPE}}\n", {}, "t.service");
  REQUIRE_FALSE(unknown.ok());
  CHECK(unknown.status().message() == "t.service:2: unknown placeholder {{NOPE}}");
  Result<std::string> open = RenderTemplate("A={{X\n", {{"X", "1"}}, "t.service");
  REQUIRE_FALSE(open.ok());
  CHECK(Contains(open.status().message(), "t.service:1: unclosed"));
  Result<std::string> fine = RenderTemplate("A={{X}}\nB={{Y}}\nC=3\n", {{"X", "1"}, {"Y", ""}}, "t");
  REQUIRE(fine.ok());
  CHECK(*fine == "A=1\nC=3\n");
}

TEST_CASE("systemd-analyze verify accepts the rendered unit") {
  std::string analyze = FindProgram("systemd-analyze");
  if (analyze.empty()) {
    MESSAGE("systemd-analyze not installed: verification not run");
    return;
  }
  TempDir dir("unit-test");
  // ExecStart must name an existing executable: a stand-in server script.
  fs::path server = dir.path / "bin" / "ds4-server";
  fs::create_directories(server.parent_path());
  std::ofstream(server) << "#!/bin/sh\nexit 0\n";
  fs::permissions(server, fs::perms::owner_all);
  fs::create_directories(dir.path / "kv");
  UnitConfig config = Gb10Config();
  config.server_binary = server.string();
  config.kv_dir = (dir.path / "kv").string();
  Result<std::string> unit = RenderUnitFile(kTemplate, config);
  REQUIRE(unit.ok());
  fs::path unit_path = dir.path / "ds4.service";
  std::ofstream(unit_path) << *unit;

  ProcOptions options;
  options.timeout_seconds = 60;
  options.env = {"SYSTEMD_LOG_LEVEL=notice"};
  Result<ProcResult> verify = RunProcess({analyze, "verify", unit_path.string()}, options);
  REQUIRE(verify.ok());
  INFO("systemd-analyze output:\n" << verify->out << verify->err);
  CHECK(verify->exit_code == 0);
  // Warnings about this unit itself would show its name; other units' noise is not ours.
  CHECK_FALSE(Contains(verify->err, "ds4.service:"));

  // And a broken unit (missing binary) is caught by the same check.
  std::string broken = *unit;
  broken.replace(broken.find(server.string()), server.string().size(), "/nonexistent/ds4-server");
  std::ofstream(unit_path, std::ios::trunc) << broken;
  Result<ProcResult> verify_broken = RunProcess({analyze, "verify", unit_path.string()}, options);
  REQUIRE(verify_broken.ok());
  CHECK(verify_broken->exit_code != 0);
}
