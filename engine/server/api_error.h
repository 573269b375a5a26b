// ApiError: an error answered to an HTTP client as an OpenAI error object
//   {"error": {"message": ..., "type": ..., "param": ..., "code": ...}}
// with the HTTP status that goes with it (400 bad request, 404 unknown route,
// 413 body too large, 503 not ready / shutting down, 500 engine failure).
//
// Thread-safety: a plain value; copies may be used from any thread.
#pragma once

#include <string>

namespace ds4::server {

struct ApiError {
  int http_status = 500;
  std::string type;     // "invalid_request_error", "not_found_error", ...
  std::string message;  // names what is at fault, e.g. "'temperature' must be a number"
  std::string param;    // the offending request field, empty when none
  std::string code;     // machine-readable code, e.g. "context_length_exceeded"

  // The JSON body: {"error": {...}}; param and code are null when empty.
  std::string to_json() const;
};

ApiError bad_request(std::string message, std::string param = {});
ApiError context_overflow(int prompt_tokens, int max_tokens, int ctx_size,
                          std::string param = "messages");
ApiError body_too_large(size_t limit_bytes);
ApiError route_not_found(const std::string& method, const std::string& path);
ApiError not_ready(std::string message);
ApiError engine_failure(std::string message);

}  // namespace ds4::server
