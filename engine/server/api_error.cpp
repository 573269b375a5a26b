#include "server/api_error.h"

#include <nlohmann/json.hpp>

namespace ds4::server {

std::string ApiError::to_json() const {
  nlohmann::json error = {
      {"message", message},
      {"type", type},
      {"param", param.empty() ? nlohmann::json(nullptr) : nlohmann::json(param)},
      {"code", code.empty() ? nlohmann::json(nullptr) : nlohmann::json(code)},
  };
  return nlohmann::json{{"error", error}}.dump(-1, ' ', false,
                                              nlohmann::json::error_handler_t::replace);
}

ApiError bad_request(std::string message, std::string param) {
  return ApiError{400, "invalid_request_error", std::move(message), std::move(param), ""};
}

ApiError context_overflow(int prompt_tokens, int max_tokens, int ctx_size, std::string param) {
  std::string message = "This model's maximum context length is " + std::to_string(ctx_size) +
                        " tokens. However, you requested " +
                        std::to_string(prompt_tokens + max_tokens) + " tokens (" +
                        std::to_string(prompt_tokens) + " in the prompt, " +
                        std::to_string(max_tokens) +
                        " for the completion). Please reduce the prompt or max_tokens.";
  return ApiError{400, "invalid_request_error", std::move(message), std::move(param),
                  "context_length_exceeded"};
}

ApiError body_too_large(size_t limit_bytes) {
  return ApiError{413, "invalid_request_error",
                  "request body is larger than the server's limit of " +
                      std::to_string(limit_bytes) + " bytes",
                  "", "request_too_large"};
}

ApiError route_not_found(const std::string& method, const std::string& path) {
  return ApiError{404, "not_found_error", "no route for " + method + " " + path, "",
                  "unknown_url"};
}

ApiError not_ready(std::string message) {
  return ApiError{503, "server_error", std::move(message), "", "service_unavailable"};
}

ApiError engine_failure(std::string message) {
  return ApiError{500, "server_error", std::move(message), "", "engine_error"};
}

}  // namespace ds4::server
