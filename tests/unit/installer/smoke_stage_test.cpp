// Tests for installer/smoke_stage: the smoke manifest, the CLI and chat API checks, and
// the stage's pass / fail / skip behaviour. Stand-in programs play ds4 and ds4-server
// (a shell script and a small Python HTTP server), so the stage's own logic is tested
// here; tests/e2e/install_demo_test.sh runs it against the real engine.
#include <doctest/doctest.h>

#include <stdlib.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "install_state.h"
#include "proc.h"
#include "smoke_stage.h"
#include "test_files.h"

namespace fs = std::filesystem;
using namespace ds4setup;
using namespace ds4setup::testing;

namespace {

const std::string kSmokeManifest = std::string(DS4_SOURCE_DIR) + "/manifests/smoke.yaml";

// A stand-in ds4: records its arguments (one per line) and prints $FAKE_ANSWER.
void WriteFakeDs4(const fs::path& bin_dir, const std::string& answer, int exit_code = 0) {
  Write(bin_dir / "ds4",
        "#!/bin/sh\n"
        "for a in \"$@\"; do printf '%s\\n' \"$a\"; done > \"$(dirname \"$0\")/ds4.args\"\n"
        "echo 'prefill 12 tokens' >&2\n"
        "echo '" + answer + "'\n"
        "exit " + std::to_string(exit_code) + "\n",
        true);
}

// A stand-in ds4-server: /v1/models answers 200, chat completions answer $answer and
// record the request body in <bin_dir>/request.json.
void WriteFakeServer(const fs::path& bin_dir, const std::string& answer) {
  Write(bin_dir / "ds4-server",
        "#!/usr/bin/env python3\n"
        "import json, os, sys, http.server\n"
        "args = sys.argv[1:]\n"
        "host, port = args[args.index('--host') + 1], int(args[args.index('--port') + 1])\n"
        "here = os.path.dirname(os.path.abspath(__file__))\n"
        "class Handler(http.server.BaseHTTPRequestHandler):\n"
        "    def reply(self, code, body):\n"
        "        data = json.dumps(body).encode()\n"
        "        self.send_response(code)\n"
        "        self.send_header('Content-Type', 'application/json')\n"
        "        self.send_header('Content-Length', str(len(data)))\n"
        "        self.end_headers()\n"
        "        self.wfile.write(data)\n"
        "    def do_GET(self):\n"
        "        self.reply(200, {'object': 'list', 'data': [{'id': 'fake'}]})\n"
        "    def do_POST(self):\n"
        "        body = self.rfile.read(int(self.headers['Content-Length']))\n"
        "        open(os.path.join(here, 'request.json'), 'wb').write(body)\n"
        "        self.reply(200, {'choices': [{'message': {'role': 'assistant', 'content': '" +
            answer + "'}}]})\n"
        "    def log_message(self, *a):\n"
        "        pass\n"
        "http.server.ThreadingHTTPServer((host, port), Handler).serve_forever()\n",
        true);
}

const char* kTwoChecks =
    "models:\n"
    "  demo:\n"
    "    timeout_seconds: 60\n"
    "    checks:\n"
    "      - {name: france, via: cli, question: 'What is the capital of France?', expect: Paris, max_tokens: 16}\n"
    "      - {name: chat-api, via: http, question: 'What is the capital of France?', expect: Paris}\n";

// A context for the smoke stage over a temp prefix, manifests dir and bin dir.
struct SmokeFixture {
  TempDir dir{"smoke-test"};
  std::FILE* out = std::tmpfile();
  Ui ui{out, out};
  Context context;
  SmokeFixture() {
    context.ui = &ui;
    context.options.prefix = (dir.path / "prefix").string();
    context.options.manifests_dir = (dir.path / "manifests").string();
    context.options.model = "demo";
    context.bin_dir = (dir.path / "bin").string();
    context.model_path = (dir.path / "model.gguf").string();
    ModelArtifact artifact;
    artifact.name = "demo";
    artifact.sha256 = std::string(64, 'a');
    context.artifacts = {artifact};
    Write(dir.path / "model.gguf", "GGUF");
    Write(dir.path / "manifests" / "smoke.yaml", kTwoChecks);
  }
  ~SmokeFixture() { std::fclose(out); }
  std::string Output() { return ReadAll(out); }
};

}  // namespace

TEST_CASE("manifests/smoke.yaml: three checks per model, a long preamble, no Paris leak for real models") {
  for (const char* model : {"demo", "q2-imatrix", "q2", "q2-0731"}) {
    Result<SmokeSpec> spec = LoadSmokeSpec(kSmokeManifest, model);
    REQUIRE_MESSAGE(spec.ok(), spec.status().message());
    REQUIRE(spec->checks.size() == 3);
    CHECK(spec->checks[0].via == "cli");
    CHECK(spec->checks[0].Prompt() == "What is the capital of France?");
    CHECK(spec->checks[1].via == "cli");
    CHECK(spec->checks[1].preamble.size() > 1000);  // several hundred tokens
    CHECK(spec->checks[1].Prompt() == spec->checks[1].preamble + "\n\nWhat is the capital of France?");
    CHECK(spec->checks[2].via == "http");
    for (const SmokeCheck& check : spec->checks) CHECK(check.expect == "Paris");
    if (std::string(model) != "demo") CHECK_FALSE(Contains(spec->checks[1].preamble, "Paris"));
  }
  CHECK(LoadSmokeSpec(kSmokeManifest, "demo")->fingerprint !=
        LoadSmokeSpec(kSmokeManifest, "q2-imatrix")->fingerprint);
}

TEST_CASE("smoke manifest errors name the file, model and field") {
  Result<SmokeSpec> unknown = ParseSmokeSpec(kTwoChecks, "s.yaml", "nope");
  REQUIRE_FALSE(unknown.ok());
  CHECK(unknown.status().message() == "s.yaml: no smoke checks for model 'nope'");

  Result<SmokeSpec> no_expect = ParseSmokeSpec(
      "models:\n  demo:\n    checks:\n      - {name: a, question: q}\n", "s.yaml", "demo");
  REQUIRE_FALSE(no_expect.ok());
  CHECK(no_expect.status().message() == "s.yaml: models.demo.checks[0]: missing 'expect'");

  Result<SmokeSpec> bad_via = ParseSmokeSpec(
      "models:\n  demo:\n    checks:\n      - {name: a, question: q, expect: x, via: grpc}\n", "s.yaml", "demo");
  REQUIRE_FALSE(bad_via.ok());
  CHECK(Contains(bad_via.status().message(), "'via' must be cli or http, not 'grpc'"));

  Result<SmokeSpec> not_yaml = ParseSmokeSpec("models: [", "s.yaml", "demo");
  REQUIRE_FALSE(not_yaml.ok());
  CHECK(Contains(not_yaml.status().message(), "s.yaml: not valid YAML"));
}

TEST_CASE("the CLI check runs ds4 non-thinking, greedy, and reads the answer from stdout") {
  TempDir dir("smoke-test");
  WriteFakeDs4(dir.path, "The capital of France is Paris.");
  SmokeCheck check;
  check.name = "long";
  check.preamble = "Some text.";
  check.question = "What is the capital of France?";
  check.expect = "Paris";
  check.max_tokens = 32;
  Result<SmokeAnswer> answer =
      RunCliCheck((dir.path / "ds4").string(), "/models/m.gguf", "cpu", check, 30);
  REQUIRE_MESSAGE(answer.ok(), answer.status().message());
  CHECK(answer->passed);
  CHECK(answer->answer == "The capital of France is Paris.");  // stderr (stats) is not the answer
  CHECK(Read(dir.path / "ds4.args") ==
        "-m\n/models/m.gguf\n-p\nSome text.\n\nWhat is the capital of France?\n--nothink\n--temp\n0\n"
        "-n\n32\n--backend\ncpu\n");

  WriteFakeDs4(dir.path, "The capital of France is Lyon.");
  Result<SmokeAnswer> wrong = RunCliCheck((dir.path / "ds4").string(), "/m.gguf", "cpu", check, 30);
  REQUIRE(wrong.ok());
  CHECK_FALSE(wrong->passed);

  WriteFakeDs4(dir.path, "", 3);
  Result<SmokeAnswer> crashed = RunCliCheck((dir.path / "ds4").string(), "/m.gguf", "cpu", check, 30);
  REQUIRE_FALSE(crashed.ok());
  CHECK(Contains(crashed.status().message(), "exited with status 3"));
  CHECK(Contains(crashed.status().message(), "prefill 12 tokens"));  // its stderr is quoted
}

TEST_CASE("the smoke stage passes, records its key, and is skipped when nothing changed") {
  SmokeFixture f;
  WriteFakeDs4(f.dir.path / "bin", "The capital of France is Paris.");
  WriteFakeServer(f.dir.path / "bin", "Paris it is.");
  Status status = SmokeStage(f.context);
  std::string output = f.Output();
  INFO(output);
  REQUIRE_MESSAGE(status.ok(), status.message());
  CHECK(Contains(output, "smoke 'france' answered: The capital of France is Paris."));
  CHECK(Contains(output, "starting a temporary ds4-server"));
  CHECK(Contains(output, "smoke 'chat-api' answered: Paris it is."));
  std::string request = Read(f.dir.path / "bin" / "request.json");
  CHECK(Contains(request, "\"thinking\":{\"type\":\"disabled\"}"));
  CHECK(Contains(request, "\"temperature\":0"));
  CHECK_FALSE(fs::exists(f.dir.path / "prefix" / "run" / "smoke-server.pid"));  // stopped

  Result<InstallState> state = LoadInstallState(f.context.options.prefix);
  REQUIRE(state.ok());
  CHECK_FALSE(state->smoke_key.empty());
  CHECK_FALSE(state->smoke_passed_at.empty());

  fs::remove(f.dir.path / "bin" / "ds4.args");
  Status again = SmokeStage(f.context);
  REQUIRE(again.ok());
  CHECK(Contains(f.Output(), "for this engine build and model: skipped"));
  CHECK_FALSE(fs::exists(f.dir.path / "bin" / "ds4.args"));  // ds4 did not run

  // Other checks (a changed manifest) run again.
  Write(f.dir.path / "manifests" / "smoke.yaml",
        std::string(kTwoChecks).replace(std::string(kTwoChecks).find("max_tokens: 16"), 14, "max_tokens: 17"));
  REQUIRE(SmokeStage(f.context).ok());
  CHECK(fs::exists(f.dir.path / "bin" / "ds4.args"));
}

TEST_CASE("a wrong answer stops the stage with the answer shown and the smoke exit code") {
  SmokeFixture f;
  WriteFakeDs4(f.dir.path / "bin", "The capital of France is Lyon.");
  Status status = SmokeStage(f.context);
  REQUIRE_FALSE(status.ok());
  CHECK(status.message() ==
        "smoke check 'france' failed: the answer does not contain \"Paris\". The model answered: "
        "\"The capital of France is Lyon.\"");
  CHECK(f.context.exit_code == kExitSmoke);
  CHECK_FALSE(LoadInstallState(f.context.options.prefix).ok());  // nothing recorded as passed
}

TEST_CASE("with --start the chat API check is left to the service stage") {
  SmokeFixture f;
  f.context.options.start = true;
  WriteFakeDs4(f.dir.path / "bin", "The capital of France is Paris.");
  REQUIRE(SmokeStage(f.context).ok());
  CHECK(Contains(f.Output(), "the chat API check runs once the service has started"));
  CHECK_FALSE(fs::exists(f.dir.path / "bin" / "request.json"));
}
