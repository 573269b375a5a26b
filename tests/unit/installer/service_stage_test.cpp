// Tests for installer/service_stage (detached mode: systemd is switched off with
// DS4_NO_SYSTEMD=1, so nothing here touches the host's services), its port checks, and
// `status` / `uninstall` over what it created. A small Python HTTP server stands in for
// ds4-server; tests/e2e/install_demo_test.sh runs the real one.
#include <doctest/doctest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "http_check.h"
#include "install_state.h"
#include "proc.h"
#include "service_stage.h"
#include "status_cmd.h"
#include "uninstall_cmd.h"
#include "test_files.h"

namespace fs = std::filesystem;
using namespace ds4setup;
using namespace ds4setup::testing;

namespace {

// Stand-in ds4-server: /v1/models 200, chat completions answer Paris; writes its argv
// to <dir>/server.args.
void WriteFakeServer(const fs::path& bin_dir) {
  Write(bin_dir / "ds4-server",
        "#!/usr/bin/env python3\n"
        "import json, os, sys, http.server\n"
        "args = sys.argv[1:]\n"
        "here = os.path.dirname(os.path.abspath(__file__))\n"
        "open(os.path.join(here, 'server.args'), 'w').write(' '.join(args))\n"
        "host, port = args[args.index('--host') + 1], int(args[args.index('--port') + 1])\n"
        "class Handler(http.server.BaseHTTPRequestHandler):\n"
        "    def reply(self, body):\n"
        "        data = json.dumps(body).encode()\n"
        "        self.send_response(200)\n"
        "        self.send_header('Content-Length', str(len(data)))\n"
        "        self.end_headers()\n"
        "        self.wfile.write(data)\n"
        "    def do_GET(self):\n"
        "        self.reply({'object': 'list', 'data': [{'id': 'deepseek-v4-flash'}]})\n"
        "    def do_POST(self):\n"
        "        self.rfile.read(int(self.headers['Content-Length']))\n"
        "        self.reply({'choices': [{'message': {'content': 'The capital of France is Paris.'}}]})\n"
        "    def log_message(self, *a):\n"
        "        pass\n"
        "http.server.ThreadingHTTPServer((host, port), Handler).serve_forever()\n",
        true);
}

// A listening socket on 127.0.0.1 (another program holding a port).
struct Listener {
  int fd = -1;
  int port = 0;
  Listener() {
    fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t length = sizeof(address);
    bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address));
    listen(fd, 4);
    getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length);
    port = ntohs(address.sin_port);
  }
  ~Listener() { close(fd); }
};

// A prefix with current/bin/ds4-server, a model file and a smoke manifest with the
// chat API check; the context has DS4_NO_SYSTEMD semantics and a free port.
struct ServiceFixture {
  TempDir dir{"service-test"};
  std::FILE* out = std::tmpfile();
  Ui ui{out, out};
  Context context;
  ServiceFixture() {
    setenv("DS4_NO_SYSTEMD", "1", 1);
    setenv("DS4_NO_TTY", "1", 1);
    const fs::path prefix = dir.path / "prefix";
    WriteFakeServer(prefix / "current" / "bin");
    Write(prefix / "models" / "model.gguf", "GGUF");
    Write(dir.path / "manifests" / "smoke.yaml",
          "models:\n  demo:\n    timeout_seconds: 30\n    checks:\n"
          "      - {name: chat-api, via: http, question: 'What is the capital of France?', expect: Paris}\n");
    context.ui = &ui;
    context.options.prefix = prefix.string();
    context.options.model = "demo";
    context.options.start = true;
    context.options.manifests_dir = (dir.path / "manifests").string();
    context.options.source_dir = DS4_SOURCE_DIR;
    context.options.port = *PickFreePort();
    context.model_path = (prefix / "models" / "model.gguf").string();
    ModelArtifact artifact;
    artifact.name = "demo";
    artifact.sha256 = std::string(64, 'b');
    context.artifacts = {artifact};
  }
  ~ServiceFixture() {
    pid_t pid = LivePidFromFile(ServerPidFile(context.options.prefix));
    if (pid > 0) StopProcess(pid, 5);
    std::fclose(out);
  }
  std::string Output() { return ReadAll(out); }
};

}  // namespace

TEST_CASE("a port another program listens on is refused, naming the port and --port") {
  Listener taken;
  Status status = CheckPortFree("127.0.0.1", taken.port);
  REQUIRE_FALSE(status.ok());
  CHECK(Contains(status.message(), "port " + std::to_string(taken.port) + " on 127.0.0.1 is not available"));
  CHECK(Contains(status.message(), "--port"));
  Result<int> free_port = PickFreePort();
  REQUIRE(free_port.ok());
  CHECK(CheckPortFree("127.0.0.1", *free_port).ok());
  CHECK_FALSE(CheckPortFree("no such host name", 80).ok());
}

TEST_CASE("server URLs, systemd detection and GPU groups") {
  CHECK(BaseUrl("127.0.0.1", 8000) == "http://127.0.0.1:8000");
  CHECK(BaseUrl("0.0.0.0", 8000) == "http://127.0.0.1:8000");
  CHECK(BaseUrl("::", 8000) == "http://[::1]:8000");
  setenv("DS4_NO_SYSTEMD", "1", 1);
  CHECK_FALSE(SystemdRunning());
  for (const std::string& group : ExistingGpuGroups()) CHECK((group == "video" || group == "render"));
}

TEST_CASE("without systemd, --start runs the server detached; a re-run leaves it alone") {
  ServiceFixture f;
  Status status = ServiceStage(f.context);
  std::string output = f.Output();
  INFO(output);
  REQUIRE_MESSAGE(status.ok(), status.message());
  const std::string prefix = f.context.options.prefix;
  pid_t pid = LivePidFromFile(ServerPidFile(prefix));
  REQUIRE(pid > 0);
  CHECK(Contains(output, "systemd is not running here"));
  CHECK(Contains(output, "started ds4-server detached instead of a systemd service"));
  CHECK(Contains(output, "smoke 'chat-api' answered: The capital of France is Paris."));
  CHECK(fs::exists(prefix + "/etc/ds4.service"));  // the unit is rendered for reference
  CHECK(fs::is_directory(prefix + "/kv"));
  std::ifstream args_file(prefix + "/current/bin/server.args");
  std::string args;
  std::getline(args_file, args);
  CHECK(args == "-m " + f.context.model_path + " --host 127.0.0.1 --port " +
                    std::to_string(f.context.options.port));

  Result<InstallState> state = LoadInstallState(prefix);
  REQUIRE(state.ok());
  CHECK(state->service_mode == "detached");
  CHECK(state->model_path == f.context.model_path);
  CHECK(state->model_sha256 == std::string(64, 'b'));

  // Same flags: the running server is kept.
  REQUIRE(ServiceStage(f.context).ok());
  CHECK(LivePidFromFile(ServerPidFile(prefix)) == pid);
  CHECK(Contains(f.Output(), "already runs this engine and model"));

  // Other flags (--ctx): the server is restarted with them.
  f.context.options.ctx = 4096;
  REQUIRE(ServiceStage(f.context).ok());
  pid_t restarted = LivePidFromFile(ServerPidFile(prefix));
  CHECK(restarted > 0);
  CHECK(restarted != pid);
  CHECK(Contains(f.Output(), "stopping the previous ds4-server"));

  // status sees it all.
  CHECK(RunStatus(f.context) == kExitOk);
  std::string status_text = f.Output();
  CHECK(Contains(status_text, "running detached, pid " + std::to_string(restarted)));
  CHECK(Contains(status_text, "answers 200 (models: deepseek-v4-flash)"));

  // uninstall stops it and removes what install created; the model stays.
  CHECK(RunUninstall(f.context) == kExitOk);
  CHECK(LivePidFromFile(ServerPidFile(prefix)) == 0);
  CHECK_FALSE(fs::exists(prefix + "/install-state.json"));
  CHECK_FALSE(fs::exists(prefix + "/current"));
  CHECK_FALSE(fs::exists(prefix + "/kv"));
  CHECK(fs::exists(f.context.model_path));
  CHECK(RunStatus(f.context) == kExitFailure);  // nothing installed any more
}

TEST_CASE("a port taken by another program stops the service stage with the service exit code") {
  ServiceFixture f;
  Listener taken;
  f.context.options.port = taken.port;
  Status status = ServiceStage(f.context);
  REQUIRE_FALSE(status.ok());
  CHECK(Contains(status.message(), "port " + std::to_string(taken.port)));
  CHECK(f.context.exit_code == kExitService);
  CHECK(LivePidFromFile(ServerPidFile(f.context.options.prefix)) == 0);
}

TEST_CASE("without --start nothing runs, and the install says how to start it") {
  ServiceFixture f;
  f.context.options.start = false;
  REQUIRE(ServiceStage(f.context).ok());
  CHECK(LivePidFromFile(ServerPidFile(f.context.options.prefix)) == 0);
  CHECK(Contains(f.Output(), "no service installed; --start would run ds4-server detached"));
}

TEST_CASE("uninstall of an empty prefix changes nothing; --purge-models removes the models") {
  ServiceFixture f;
  TempDir empty("service-test");
  Context other = f.context;
  other.options.prefix = (empty.path / "nothing").string();
  CHECK(RunUninstall(other) == kExitOk);
  CHECK(Contains(f.Output(), "nothing to uninstall"));
  CHECK_FALSE(fs::exists(other.options.prefix));

  f.context.options.start = false;
  REQUIRE(ServiceStage(f.context).ok());
  f.context.options.purge_models = true;
  CHECK(RunUninstall(f.context) == kExitOk);
  CHECK_FALSE(fs::exists(f.context.model_path));
  CHECK_FALSE(fs::exists(f.context.options.prefix));  // nothing else was in it
}

TEST_CASE("uninstall that kept the models, then --purge-models, removes the manifest's files") {
  ServiceFixture f;
  f.context.options.start = false;
  REQUIRE(ServiceStage(f.context).ok());
  CHECK(RunUninstall(f.context) == kExitOk);
  CHECK(fs::exists(f.context.model_path));
  CHECK_FALSE(LoadInstallState(f.context.options.prefix).ok());

  ModelArtifact artifact;
  artifact.name = "demo";
  artifact.file = "model.gguf";
  f.context.models.models = {artifact};
  f.context.options.purge_models = true;
  CHECK(RunUninstall(f.context) == kExitOk);
  CHECK(Contains(f.Output(), "removed " + f.context.model_path));
  CHECK_FALSE(fs::exists(f.context.options.prefix));
}
