#include "server/request.h"

#include <algorithm>
#include <cmath>
#include <nlohmann/json.hpp>

#include "text/utf8.h"

namespace ds4::server {
namespace {

using Json = nlohmann::ordered_json;

// Each field reader returns an error message (empty = fine) so parse_* can stop at
// the first problem and name the field.
using FieldError = std::optional<ApiError>;

FieldError type_error(const std::string& field, const char* expected) {
  return bad_request("'" + field + "' must be " + expected, field);
}

bool is_absent(const Json& object, const char* key) {
  auto it = object.find(key);
  return it == object.end() || it->is_null();
}

FieldError read_bool(const Json& object, const char* key, bool* out) {
  if (is_absent(object, key)) return std::nullopt;
  const Json& value = object.at(key);
  if (!value.is_boolean()) return type_error(key, "a boolean");
  *out = value.get<bool>();
  return std::nullopt;
}

FieldError read_number(const Json& object, const char* key, std::optional<double>* out) {
  if (is_absent(object, key)) return std::nullopt;
  const Json& value = object.at(key);
  if (!value.is_number()) return type_error(key, "a number");
  double number = value.get<double>();
  if (!std::isfinite(number)) return type_error(key, "a finite number");
  *out = number;
  return std::nullopt;
}

FieldError read_integer(const Json& object, const char* key, std::optional<int64_t>* out) {
  if (is_absent(object, key)) return std::nullopt;
  const Json& value = object.at(key);
  if (value.is_number_integer()) {
    *out = value.get<int64_t>();
    return std::nullopt;
  }
  if (value.is_number_float()) {
    double number = value.get<double>();
    if (std::isfinite(number) && std::floor(number) == number && std::fabs(number) < 9e15) {
      *out = static_cast<int64_t>(number);
      return std::nullopt;
    }
  }
  return type_error(key, "an integer");
}

// The messages array is parsed by the chat encoding (text/chat.h), which knows
// every role and field; here only its presence and shape are checked first.
FieldError read_messages(const Json& body, std::vector<Message>* out) {
  if (is_absent(body, "messages")) return bad_request("'messages' is required", "messages");
  const Json& messages = body.at("messages");
  if (!messages.is_array()) return type_error("messages", "an array");
  if (messages.empty()) return bad_request("'messages' must not be empty", "messages");
  for (size_t i = 0; i < messages.size(); ++i) {
    const Json& message = messages[i];
    const std::string where = "messages[" + std::to_string(i) + "]";
    if (!message.is_object()) return type_error(where, "an object");
    auto role = message.find("role");
    if (role == message.end() || !role->is_string()) return type_error(where + ".role", "a string");
  }
  Result<std::vector<Message>> parsed = messages_from_json(messages.dump());
  if (!parsed.ok()) return bad_request(parsed.status().message(), "messages");
  *out = std::move(parsed.value());
  return std::nullopt;
}

FieldError read_prompt(const Json& body, std::string* out) {
  if (is_absent(body, "prompt")) return bad_request("'prompt' is required", "prompt");
  const Json& prompt = body.at("prompt");
  if (prompt.is_string()) {
    *out = prompt.get<std::string>();
    return std::nullopt;
  }
  if (prompt.is_array() && prompt.size() == 1 && prompt[0].is_string()) {
    *out = prompt[0].get<std::string>();
    return std::nullopt;
  }
  return type_error("prompt", "a string (or an array holding one string)");
}

// The function name of one tool as tools_from_json() returns it: an OpenAI tool
// object {"type":"function","function":{...}} or a bare function object.
std::string tool_name(const std::string& tool_json) {
  Json tool = Json::parse(tool_json, nullptr, /*allow_exceptions=*/false);
  if (!tool.is_object()) return "";
  const Json& function = tool.contains("function") ? tool["function"] : tool;
  if (!function.is_object() || !function.contains("name") || !function["name"].is_string()) return "";
  return function["name"].get<std::string>();
}

// tool_choice naming a function: only that tool is offered to the model.
FieldError keep_only_tool(const std::string& name, std::vector<std::string>* tools) {
  std::vector<std::string> kept;
  for (std::string& tool : *tools) {
    if (tool_name(tool) == name) kept.push_back(std::move(tool));
  }
  if (kept.empty()) {
    return bad_request("'tool_choice' names function \"" + name + "\", which is not in 'tools'",
                       "tool_choice");
  }
  *tools = std::move(kept);
  return std::nullopt;
}

FieldError read_tools(const Json& body, CompletionRequest* request) {
  if (!is_absent(body, "tools")) {
    const Json& tools = body.at("tools");
    if (!tools.is_array()) return type_error("tools", "an array");
    Result<std::vector<std::string>> parsed = tools_from_json(tools.dump());
    if (!parsed.ok()) return bad_request(parsed.status().message(), "tools");
    request->tools = std::move(parsed.value());
  }
  if (is_absent(body, "tool_choice")) return std::nullopt;
  const Json& choice = body.at("tool_choice");
  if (choice.is_string()) {
    std::string value = choice.get<std::string>();
    if (value != "auto" && value != "none" && value != "required") {
      return bad_request("'tool_choice' must be \"auto\", \"none\", \"required\" or a function",
                         "tool_choice");
    }
    request->tool_choice = value;
    return std::nullopt;
  }
  if (choice.is_object()) {
    auto function = choice.find("function");
    if (function != choice.end() && function->is_object()) {
      auto name = function->find("name");
      if (name != function->end() && name->is_string()) {
        request->tool_choice = name->get<std::string>();
        return keep_only_tool(request->tool_choice, &request->tools);
      }
    }
  }
  return type_error("tool_choice", "a string or {\"type\":\"function\",\"function\":{\"name\":...}}");
}

// TOKENIZER_AND_CHAT.md §5.2: thinking switches, in the order DeepSeek, vLLM, ours.
FieldError read_thinking(const Json& body, CompletionRequest* request) {
  ThinkingRequest mode = ThinkingRequest::kDefault;
  if (!is_absent(body, "reasoning_effort")) {
    const Json& effort = body.at("reasoning_effort");
    if (!effort.is_string()) return type_error("reasoning_effort", "a string");
    std::string value = effort.get<std::string>();
    if (value == "none") {
      mode = ThinkingRequest::kDisabled;
    } else if (value == "max") {
      mode = ThinkingRequest::kMax;
    } else if (value == "xhigh" || value == "high" || value == "medium" || value == "low" ||
               value == "minimal") {
      mode = ThinkingRequest::kEnabled;
    } else {
      return bad_request("'reasoning_effort' must be one of none, minimal, low, medium, high, "
                         "xhigh, max",
                         "reasoning_effort");
    }
  }
  auto apply_switch = [&](bool enabled) {
    if (!enabled) {
      mode = ThinkingRequest::kDisabled;
    } else if (mode != ThinkingRequest::kMax) {
      mode = ThinkingRequest::kEnabled;
    }
  };
  if (!is_absent(body, "thinking")) {
    const Json& thinking = body.at("thinking");
    if (thinking.is_boolean()) {
      apply_switch(thinking.get<bool>());
    } else if (thinking.is_object()) {
      auto type = thinking.find("type");
      if (type == thinking.end() || !type->is_string() ||
          (*type != "enabled" && *type != "disabled")) {
        return bad_request("'thinking.type' must be \"enabled\" or \"disabled\"", "thinking.type");
      }
      apply_switch(*type == "enabled");
    } else {
      return type_error("thinking", "a boolean or {\"type\": \"enabled\"|\"disabled\"}");
    }
  }
  if (!is_absent(body, "think")) {
    if (!body.at("think").is_boolean()) return type_error("think", "a boolean");
    apply_switch(body.at("think").get<bool>());
  }
  if (!is_absent(body, "chat_template_kwargs")) {
    const Json& kwargs = body.at("chat_template_kwargs");
    if (!kwargs.is_object()) return type_error("chat_template_kwargs", "an object");
    for (const char* key : {"thinking", "enable_thinking"}) {
      if (is_absent(kwargs, key)) continue;
      if (!kwargs.at(key).is_boolean()) {
        return type_error(std::string("chat_template_kwargs.") + key, "a boolean");
      }
      apply_switch(kwargs.at(key).get<bool>());
    }
  }
  if (mode == ThinkingRequest::kDefault) {
    if (request->model == "deepseek-chat") mode = ThinkingRequest::kDisabled;
    if (request->model == "deepseek-reasoner") mode = ThinkingRequest::kEnabled;
  }
  request->thinking = mode;
  return std::nullopt;
}

FieldError read_sampling(const Json& body, SamplingIn* out) {
  if (auto error = read_number(body, "temperature", &out->temperature)) return error;
  if (auto error = read_number(body, "top_p", &out->top_p)) return error;
  if (auto error = read_number(body, "min_p", &out->min_p)) return error;
  std::optional<int64_t> top_k;
  if (auto error = read_integer(body, "top_k", &top_k)) return error;
  if (top_k) out->top_k = static_cast<int>(std::clamp<int64_t>(*top_k, -1, 1 << 30));
  if (auto error = read_integer(body, "seed", &out->seed)) return error;
  if (out->temperature && *out->temperature < 0) {
    return bad_request("'temperature' must be >= 0", "temperature");
  }
  return std::nullopt;
}

FieldError read_limits(const Json& body, CompletionRequest* request) {
  for (const char* key : {"max_tokens", "max_completion_tokens"}) {
    std::optional<int64_t> value;
    if (auto error = read_integer(body, key, &value)) return error;
    if (!value) continue;
    if (*value < 1) return bad_request(std::string("'") + key + "' must be at least 1", key);
    request->max_tokens = static_cast<int>(std::min<int64_t>(*value, 1 << 30));
  }
  std::optional<int64_t> n;
  if (auto error = read_integer(body, "n", &n)) return error;
  if (n && *n != 1) return bad_request("'n' must be 1: one choice per request", "n");
  if (is_absent(body, "stop")) return std::nullopt;
  const Json& stop = body.at("stop");
  if (stop.is_string()) {
    if (!stop.get<std::string>().empty()) request->stop.push_back(stop.get<std::string>());
    return std::nullopt;
  }
  if (!stop.is_array()) return type_error("stop", "a string or an array of strings");
  if (stop.size() > 16) return bad_request("'stop' has more than 16 strings", "stop");
  for (const Json& item : stop) {
    if (!item.is_string()) return type_error("stop", "a string or an array of strings");
    if (!item.get<std::string>().empty()) request->stop.push_back(item.get<std::string>());
  }
  return std::nullopt;
}

FieldError read_stream_options(const Json& body, CompletionRequest* request) {
  if (auto error = read_bool(body, "stream", &request->stream)) return error;
  if (auto error = read_bool(body, "return_token_ids", &request->return_token_ids)) return error;
  if (is_absent(body, "stream_options")) return std::nullopt;
  const Json& options = body.at("stream_options");
  if (!options.is_object()) return type_error("stream_options", "an object");
  if (!is_absent(options, "include_usage")) {
    if (!options.at("include_usage").is_boolean()) {
      return type_error("stream_options.include_usage", "a boolean");
    }
    request->include_usage = options.at("include_usage").get<bool>();
  }
  return std::nullopt;
}

FieldError read_body(const Json& body, CompletionRequest* request) {
  if (!is_absent(body, "model")) {
    if (!body.at("model").is_string()) return type_error("model", "a string");
    request->model = body.at("model").get<std::string>();
  }
  if (request->endpoint == Endpoint::kChatCompletions) {
    if (auto error = read_messages(body, &request->messages)) return error;
    if (auto error = read_tools(body, request)) return error;
  } else {
    if (auto error = read_prompt(body, &request->prompt)) return error;
  }
  if (auto error = read_thinking(body, request)) return error;
  if (auto error = read_sampling(body, &request->sampling)) return error;
  if (auto error = read_limits(body, request)) return error;
  return read_stream_options(body, request);
}

}  // namespace

std::optional<size_t> find_invalid_utf8(std::string_view text) {
  size_t length = 0;
  for (size_t i = 0; i < text.size(); i += length) {
    if (utf8_decode(text, i, &length) == kInvalidCodePoint) return i;
  }
  return std::nullopt;
}

std::variant<CompletionRequest, ApiError> parse_request(std::string_view body, Endpoint endpoint) {
  if (auto bad = find_invalid_utf8(body)) {
    return bad_request("request body is not valid UTF-8 (first bad byte at offset " +
                       std::to_string(*bad) + ")");
  }
  Json json = Json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (json.is_discarded()) {
    // Parse again with exceptions on, only to get the position and reason.
    std::string reason = "unknown syntax error";
    try {
      Json reparsed = Json::parse(body);
      (void)reparsed;
    } catch (const Json::parse_error& error) {
      reason = error.what();
    }
    return bad_request("request body is not valid JSON: " + reason);
  }
  if (!json.is_object()) return bad_request("request body must be a JSON object");
  CompletionRequest request;
  request.endpoint = endpoint;
  if (auto error = read_body(json, &request)) return *error;
  return request;
}

}  // namespace ds4::server
