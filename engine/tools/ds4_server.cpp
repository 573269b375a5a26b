// ds4-server: the OpenAI v1-compatible streaming API over one loaded model.
//
//   ds4-server -m MODEL.gguf [--mtp MTP.gguf] [--host 127.0.0.1] [--port 8000]
//              [--ctx N] [--cors [ORIGIN]] [--backend cpu|cuda] [--threads N]
//              [--parallel N]
//
// --parallel N: up to N requests are generated at once, each on its own session,
// their decode steps batched (runtime/batch_scheduler.h); the rest wait in order.
//
// The port is bound before the model is loaded, so a busy port fails at once;
// until the model is ready /v1/models answers 503. SIGTERM / SIGINT: new requests
// get 503, queued ones fail, the running generation is cancelled, and the
// process exits with status 0. --port 0 picks a free port (printed on stdout).
#include <CLI/CLI.hpp>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <pthread.h>
#include <string>
#include <thread>

#include "runtime/engine.h"
#include "server/api_server.h"
#include "server/engine_worker.h"
#include "server/response.h"

namespace {

struct Flags {
  std::string model;
  std::string mtp;
  std::string host = "127.0.0.1";
  int port = 8000;
  int ctx = 32768;
  std::string cors;
  std::string backend;
  int threads = 0;
  int mtp_draft = 0;
  size_t max_body_bytes = 32u << 20;
  int http_threads = 256;
  int parallel = 4;
};

int parse_flags(int argc, char** argv, Flags* flags) {
  CLI::App app{"ds4-server: OpenAI v1-compatible API for DeepSeek V4 Flash"};
  app.add_option("-m,--model", flags->model, "model GGUF")->required();
  app.add_option("--mtp", flags->mtp, "MTP draft GGUF (optional)");
  app.add_option("--mtp-draft", flags->mtp_draft, "MTP draft tokens per step (0 = off; default 2 with --mtp)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--host", flags->host, "address to listen on")->capture_default_str();
  app.add_option("--port", flags->port, "port to listen on (0 = any free port)")
      ->check(CLI::Range(0, 65535))
      ->capture_default_str();
  app.add_option("--ctx", flags->ctx, "context size in tokens (per request)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--cors", flags->cors, "send CORS headers allowing ORIGIN (default *)")
      ->expected(0, 1)
      ->default_str("*");
  app.add_option("--backend", flags->backend, "cpu or cuda (default: cuda when present)")
      ->check(CLI::IsMember({"cpu", "cuda"}));
  app.add_option("--threads", flags->threads, "CPU threads (0 = all cores)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--parallel", flags->parallel,
                 "requests generated at once (batched decode, one session each; 1 = one at a time)")
      ->check(CLI::Range(1, 256))
      ->capture_default_str();
  app.add_option("--max-body-bytes", flags->max_body_bytes, "largest request body (413 above)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--http-threads", flags->http_threads, "connections served at once")
      ->check(CLI::Range(8, 4096))
      ->capture_default_str();
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? -1 : 2;
  }
  if (app.count("--cors") > 0 && flags->cors.empty()) flags->cors = "*";
  // --mtp alone turns speculative decoding on.
  if (!flags->mtp.empty() && app.count("--mtp-draft") == 0) flags->mtp_draft = ds4::kDefaultMtpDraft;
  return 0;
}

// Blocks the stop signals in every thread (threads inherit the mask); one thread
// waits for them with sigwait().
sigset_t stop_signals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  return set;
}

}  // namespace

int main(int argc, char** argv) {
  Flags flags;
  if (int rc = parse_flags(argc, argv, &flags); rc != 0) return rc < 0 ? 0 : rc;

  std::signal(SIGPIPE, SIG_IGN);  // a client that hangs up must not kill the server
  sigset_t signals = stop_signals();
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  ds4::server::ServerOptions server_options;
  server_options.host = flags.host;
  server_options.port = flags.port;
  server_options.cors_origin = flags.cors;
  server_options.max_body_bytes = flags.max_body_bytes;
  server_options.http_threads = flags.http_threads;
  ds4::server::ApiServer server(server_options);
  if (ds4::Status bound = server.bind(); !bound.ok()) {
    std::fprintf(stderr, "ds4-server: %s\n", bound.message().c_str());
    return 1;
  }
  if (ds4::Status started = server.start(); !started.ok()) {
    std::fprintf(stderr, "ds4-server: %s\n", started.message().c_str());
    return 1;
  }
  std::printf("ds4-server: listening on http://%s:%d (loading %s)\n", flags.host.c_str(),
              server.port(), flags.model.c_str());
  std::fflush(stdout);

  // A stop signal while the model loads ends the process at once (nothing is in
  // flight); afterwards it starts the orderly shutdown below.
  std::atomic<bool> loaded{false};
  std::thread signal_waiter([&] {
    int received = 0;
    sigwait(&signals, &received);
    if (!loaded.load()) {
      std::fprintf(stderr, "ds4-server: signal %d during model load, exiting\n", received);
      server.stop();
      std::_Exit(0);
    }
  });

  ds4::EngineOptions engine_options;
  engine_options.model_path = flags.model;
  engine_options.mtp_path = flags.mtp;
  engine_options.mtp_draft = flags.mtp_draft;
  engine_options.ctx = flags.ctx;
  engine_options.threads = flags.threads;
  if (flags.backend == "cpu") engine_options.backend = ds4::BackendKind::kCpu;
  if (flags.backend == "cuda") engine_options.backend = ds4::BackendKind::kCuda;
  auto engine = ds4::Engine::Load(engine_options);
  if (!engine.ok()) {
    std::fprintf(stderr, "ds4-server: loading %s: %s\n", flags.model.c_str(),
                 engine.status().message().c_str());
    server.stop();
    std::_Exit(1);
  }
  ds4::server::EngineWorker worker(engine.value().get(), flags.parallel);
  if (ds4::Status started = worker.start(); !started.ok()) {
    std::fprintf(stderr, "ds4-server: %s\n", started.message().c_str());
    server.stop();
    std::_Exit(1);
  }
  loaded = true;
  server.set_ready(engine.value().get(), &worker);
  const std::string speculative =
      engine.value()->speculative_enabled()
          ? "MTP drafts " + std::to_string(flags.mtp_draft) + " (greedy requests running alone)"
      : flags.mtp.empty() || flags.mtp_draft == 0
          ? "MTP off"
          : "MTP off (the " + std::string(engine.value()->backend().name()) + " backend has no MTP block)";
  std::printf("ds4-server: ready: model %s, backend %s, context %d tokens, %d parallel, %s, http://%s:%d/v1\n",
              ds4::server::kModelId,
              std::string(ds4::backend_kind_name(engine_options.backend)).c_str(), flags.ctx,
              flags.parallel, speculative.c_str(), flags.host.c_str(), server.port());
  std::fflush(stdout);

  signal_waiter.join();  // returns on SIGTERM / SIGINT
  std::printf("ds4-server: stopping\n");
  std::fflush(stdout);
  server.begin_shutdown();
  worker.shutdown();
  server.stop();
  std::printf("ds4-server: stopped\n");
  return 0;
}
