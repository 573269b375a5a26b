// ApiServer: the HTTP side of ds4-server. OpenAI v1 routes on cpp-httplib:
//   GET  /v1/models            (503 until the model is loaded)
//   POST /v1/chat/completions  (stream and non-stream)
//   POST /v1/completions       (stream and non-stream)
// Every error is an OpenAI error object (api_error.h). Requests become
// GenerationJobs run by the EngineWorker; streaming responses are SSE with one
// chunk per sampled token, and a client that disconnects cancels its generation.
//
// Life cycle: bind() (fails fast on a busy port, before any model is loaded),
// start() (serves; completions answer 503 "loading"), set_ready() once the engine
// is loaded, stop() at shutdown.
//
// Thread-safety: the methods may be called from any thread; request handlers run
// on cpp-httplib's pool (http_threads connections at once).
#pragma once

#include <atomic>
#include <cstddef>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "common/status.h"

namespace httplib {
struct Request;
struct Response;
}  // namespace httplib

namespace ds4 {
class Engine;
}

namespace ds4::server {

class EngineWorker;
enum class Endpoint;

struct ServerOptions {
  std::string host = "127.0.0.1";
  int port = 8000;                          // 0 = any free port (see ApiServer::port())
  std::string cors_origin;                  // "" = no CORS headers
  size_t max_body_bytes = 32u << 20;        // larger bodies get 413
  int http_threads = 256;                   // connections served at once (queued beyond)
  int listen_backlog = 512;
};

class ApiServer {
 public:
  explicit ApiServer(ServerOptions options);
  ~ApiServer();
  ApiServer(const ApiServer&) = delete;
  ApiServer& operator=(const ApiServer&) = delete;

  // Binds host:port. The error names the address and the reason (e.g. in use).
  Status bind();
  int port() const { return bound_port_; }
  // Starts serving on a background thread (after bind()).
  Status start();
  // The model is loaded: completions are served through `worker`, which (with the
  // engine) must outlive stop().
  void set_ready(Engine* engine, EngineWorker* worker);
  // Shutting down: new requests get 503. Call before stopping the worker.
  void begin_shutdown();
  // Stops listening and waits for the server thread (open connections finish).
  void stop();

 private:
  class HttpServer;
  void install_routes();
  void handle_models(httplib::Response& res);
  void handle_completion(const std::string& body, httplib::Response& res, Endpoint endpoint);

  ServerOptions options_;
  std::unique_ptr<HttpServer> http_;
  std::thread listener_;
  int bound_port_ = 0;
  std::mutex state_mutex_;
  Engine* engine_ = nullptr;        // set once ready
  EngineWorker* worker_ = nullptr;  // set once ready
  bool shutting_down_ = false;
  int64_t created_ = 0;
};

}  // namespace ds4::server
