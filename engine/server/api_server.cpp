#include "server/api_server.h"

#include <httplib.h>
#include <sys/socket.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <ctime>

#include "runtime/engine.h"
#include "server/api_error.h"
#include "server/engine_worker.h"
#include "server/generation_job.h"
#include "server/prompt.h"
#include "server/request.h"
#include "server/response.h"

namespace ds4::server {
namespace {

constexpr const char* kJson = "application/json";
constexpr auto kPollInterval = std::chrono::milliseconds(200);

void send_error(httplib::Response& res, const ApiError& error) {
  res.status = error.http_status;
  res.set_content(error.to_json(), kJson);
}

int64_t unix_now() {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// Waits for a non-streamed job's final event.
JobEvent wait_for_result(GenerationJob& job) {
  for (;;) {
    std::optional<JobEvent> event = job.next(kPollInterval);
    if (event && event->kind != JobEvent::Kind::kToken) return std::move(*event);
  }
}

// Writes one SSE payload; false when the client is gone.
bool write_sse(httplib::DataSink& sink, const std::string& text) {
  return sink.write(text.data(), text.size());
}

}  // namespace

// cpp-httplib's Server with a deeper listen backlog: its built-in backlog of 5 makes
// bursts of simultaneous connections wait for SYN retransmits.
class ApiServer::HttpServer : public httplib::Server {
 public:
  bool deepen_backlog(int backlog) { return ::listen(svr_sock_, backlog) == 0; }
};

ApiServer::ApiServer(ServerOptions options)
    : options_(std::move(options)), http_(std::make_unique<HttpServer>()), created_(unix_now()) {
  const size_t threads = static_cast<size_t>(std::max(options_.http_threads, 8));
  http_->new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
  http_->set_payload_max_length(options_.max_body_bytes);
  http_->set_tcp_nodelay(true);
  // SO_REUSEADDR only: cpp-httplib's default also sets SO_REUSEPORT, which would let
  // a second server bind a port that is already in use instead of failing.
  http_->set_socket_options([](socket_t sock) {
    int yes = 1;
    ::setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
  });
  http_->set_keep_alive_timeout(2);
  http_->set_read_timeout(30);
  http_->set_write_timeout(30);
  install_routes();
}

ApiServer::~ApiServer() { stop(); }

Status ApiServer::bind() {
  errno = 0;
  int port = options_.port;
  bool bound;
  if (port == 0) {
    port = http_->bind_to_any_port(options_.host);
    bound = port > 0;
  } else {
    bound = http_->bind_to_port(options_.host, port);
  }
  if (!bound) {
    std::string reason = errno != 0 ? std::strerror(errno) : "address unavailable";
    return Status::Error("cannot listen on " + options_.host + ":" +
                         std::to_string(options_.port) + ": " + reason +
                         " (is another server already using this port?)");
  }
  bound_port_ = port;
  if (!http_->deepen_backlog(options_.listen_backlog)) {
    return Status::Error("listen backlog on " + options_.host + ":" + std::to_string(port) + ": " +
                         std::strerror(errno));
  }
  return Status::Ok();
}

Status ApiServer::start() {
  if (bound_port_ == 0) return Status::Error("ApiServer::start() called before bind()");
  listener_ = std::thread([this] { http_->listen_after_bind(); });
  return Status::Ok();
}

void ApiServer::set_ready(Engine* engine, EngineWorker* worker) {
  std::lock_guard<std::mutex> lock(state_mutex_);
  engine_ = engine;
  worker_ = worker;
}

void ApiServer::begin_shutdown() {
  std::lock_guard<std::mutex> lock(state_mutex_);
  shutting_down_ = true;
}

void ApiServer::stop() {
  begin_shutdown();
  if (http_) http_->stop();
  if (listener_.joinable()) listener_.join();
}

void ApiServer::install_routes() {
  http_->Get("/v1/models", [this](const httplib::Request&, httplib::Response& res) {
    handle_models(res);
  });
  // The body is read through a ContentReader: cpp-httplib's own reading caps bodies
  // sent as application/x-www-form-urlencoded (curl -d) at 8 KiB.
  for (auto [path, endpoint] : {std::pair{"/v1/chat/completions", Endpoint::kChatCompletions},
                                std::pair{"/v1/completions", Endpoint::kCompletions}}) {
    http_->Post(path, [this, endpoint = endpoint](const httplib::Request& req,
                                                  httplib::Response& res,
                                                  const httplib::ContentReader& reader) {
      std::string body;
      bool too_large = false;
      const size_t limit = options_.max_body_bytes;
      const bool complete = reader([&](const char* data, size_t length) {
        if (body.size() + length > limit) {
          too_large = true;
          return false;
        }
        body.append(data, length);
        return true;
      });
      // cpp-httplib sets 413 itself when Content-Length is over the limit.
      if (too_large || res.status == 413) return send_error(res, body_too_large(limit));
      if (!complete) return send_error(res, bad_request("could not read the whole request body"));
      handle_completion(body, res, endpoint);
    });
  }
  if (!options_.cors_origin.empty()) {
    http_->set_default_headers({{"Access-Control-Allow-Origin", options_.cors_origin},
                                {"Access-Control-Allow-Headers", "Authorization, Content-Type"},
                                {"Access-Control-Allow-Methods", "GET, POST, OPTIONS"}});
    http_->Options(".*", [](const httplib::Request&, httplib::Response& res) { res.status = 204; });
  }
  // Statuses set by cpp-httplib itself (unknown route, body too large, bad request
  // line) and handler exceptions get an OpenAI error body too.
  const size_t body_limit = options_.max_body_bytes;
  httplib::Server::HandlerWithResponse error_handler = [body_limit](const httplib::Request& req,
                                                                   httplib::Response& res) {
    if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
    ApiError error;
    if (res.status == 404) {
      error = route_not_found(req.method, req.path);
    } else if (res.status == 413) {
      error = body_too_large(body_limit);
    } else {
      error = ApiError{res.status, "invalid_request_error",
                       "HTTP " + std::to_string(res.status) + " for " + req.method + " " + req.path,
                       "", ""};
    }
    send_error(res, error);
    return httplib::Server::HandlerResponse::Handled;
  };
  http_->set_error_handler(std::move(error_handler));
  http_->set_exception_handler(
      [](const httplib::Request&, httplib::Response& res, std::exception_ptr error) {
        std::string what = "unexpected failure";
        try {
          if (error) std::rethrow_exception(error);
        } catch (const std::exception& e) {
          what = e.what();
        } catch (...) {
        }
        send_error(res, engine_failure("internal error: " + what));
      });
  http_->set_logger([](const httplib::Request& req, const httplib::Response& res) {
    std::fprintf(stderr, "ds4-server: %s %s -> %d\n", req.method.c_str(), req.path.c_str(),
                 res.status);
  });
}

void ApiServer::handle_models(httplib::Response& res) {
  std::lock_guard<std::mutex> lock(state_mutex_);
  if (shutting_down_) return send_error(res, not_ready("server is shutting down"));
  if (engine_ == nullptr) return send_error(res, not_ready("model is loading"));
  res.set_content(models_json(created_, engine_->ctx_size()), kJson);
}

void ApiServer::handle_completion(const std::string& body, httplib::Response& res,
                                  Endpoint endpoint) {
  Engine* engine;
  EngineWorker* worker;
  {
    std::lock_guard<std::mutex> lock(state_mutex_);
    if (shutting_down_) return send_error(res, not_ready("server is shutting down"));
    if (engine_ == nullptr) return send_error(res, not_ready("model is loading"));
    engine = engine_;
    worker = worker_;
  }
  auto parsed = parse_request(body, endpoint);
  if (auto* error = std::get_if<ApiError>(&parsed)) return send_error(res, *error);
  const CompletionRequest& request = std::get<CompletionRequest>(parsed);
  auto prepared = prepare_request(request, engine->tokenizer(), engine->ctx_size());
  if (auto* error = std::get_if<ApiError>(&prepared)) return send_error(res, *error);

  auto job = std::make_shared<GenerationJob>(std::move(std::get<PreparedRequest>(prepared)),
                                             request.stream);
  if (!worker->submit(job)) return send_error(res, not_ready("server is shutting down"));

  const std::string id = new_response_id(endpoint);
  const std::string model = request.model.empty() ? kModelId : request.model;
  const int64_t created = unix_now();
  if (!request.stream) {
    JobEvent event = wait_for_result(*job);
    if (event.kind == JobEvent::Kind::kFailed) return send_error(res, event.error);
    res.set_content(endpoint == Endpoint::kChatCompletions
                        ? chat_completion_json(id, model, created, event.completion,
                                               request.return_token_ids)
                        : text_completion_json(id, model, created, event.completion,
                                               request.return_token_ids),
                    kJson);
    return;
  }

  res.set_header("Cache-Control", "no-cache");
  res.set_header("X-Accel-Buffering", "no");
  auto chunks = std::make_shared<StreamChunks>(endpoint, id, model, created,
                                               request.return_token_ids);
  const bool include_usage = request.include_usage;
  res.set_chunked_content_provider(
      "text/event-stream",
      [job, chunks, include_usage](size_t, httplib::DataSink& sink) {
        for (;;) {
          std::optional<JobEvent> event = job->next(kPollInterval);
          if (!event) {
            // Queued or prefilling: notice a client that left before its first token.
            if (!sink.is_writable()) {
              job->cancel = true;
              return false;
            }
            continue;
          }
          if (event->kind == JobEvent::Kind::kToken) {
            if (!write_sse(sink, sse_data(chunks->token_chunk(event->delta, event->token_ids)))) {
              job->cancel = true;
              return false;
            }
            continue;
          }
          bool ok;
          if (event->kind == JobEvent::Kind::kFailed) {
            ok = write_sse(sink, sse_data(event->error.to_json()));
          } else {
            ok = write_sse(sink, sse_data(chunks->finish_chunk(event->completion.finish_reason)));
            if (ok && include_usage) {
              ok = write_sse(sink, sse_data(chunks->usage_chunk(event->completion.usage)));
            }
          }
          if (ok) ok = write_sse(sink, sse_done());
          if (ok) sink.done();
          return ok;
        }
      },
      // Called when the response ends; success is false when the client went away.
      [job](bool success) {
        if (!success) job->cancel = true;
      });
}

}  // namespace ds4::server
