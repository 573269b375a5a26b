#include "server/response.h"

#include <atomic>
#include <chrono>
#include <nlohmann/json.hpp>
#include <random>

namespace ds4::server {
namespace {

using Json = nlohmann::ordered_json;

// Generated text may end a stream inside a character only if the engine failed to
// hold it back; replace rather than throw.
std::string dump(const Json& json) {
  return json.dump(-1, ' ', false, Json::error_handler_t::replace);
}

Json usage_object(const Usage& usage) {
  return Json{{"prompt_tokens", usage.prompt_tokens},
              {"completion_tokens", usage.completion_tokens},
              {"total_tokens", usage.prompt_tokens + usage.completion_tokens},
              {"prompt_tokens_details", {{"cached_tokens", usage.cached_tokens}}}};
}

// llama.cpp-style server timings; llama-benchy reads timings.decode_ms / predicted_ms.
std::optional<Json> timings_object(const Usage& usage) {
  if (!usage.prompt_ms && !usage.decode_ms) return std::nullopt;
  Json timings = Json::object();
  timings["prompt_n"] = usage.prompt_tokens - usage.cached_tokens;
  if (usage.prompt_ms) timings["prompt_ms"] = *usage.prompt_ms;
  timings["predicted_n"] = usage.completion_tokens;
  if (usage.decode_ms) {
    timings["predicted_ms"] = *usage.decode_ms;
    timings["decode_ms"] = *usage.decode_ms;
  }
  return timings;
}

Json tool_calls_array(const std::vector<ToolCallOut>& calls) {
  Json array = Json::array();
  for (const ToolCallOut& call : calls) {
    array.push_back(Json{{"id", call.id},
                         {"type", "function"},
                         {"function", {{"name", call.name}, {"arguments", call.arguments}}}});
  }
  return array;
}

Json tool_call_deltas(const std::vector<ToolCallDelta>& deltas) {
  Json array = Json::array();
  for (const ToolCallDelta& delta : deltas) {
    Json item = {{"index", delta.index}};
    Json function = Json::object();
    if (!delta.id.empty()) {
      item["id"] = delta.id;
      item["type"] = "function";
    }
    if (!delta.name.empty()) function["name"] = delta.name;
    function["arguments"] = delta.arguments;
    item["function"] = function;
    array.push_back(item);
  }
  return array;
}

const char* chunk_object(Endpoint endpoint) {
  return endpoint == Endpoint::kChatCompletions ? "chat.completion.chunk" : "text_completion";
}

std::string chunk_with_choice(Endpoint endpoint, const std::string& id, const std::string& model,
                              int64_t created, Json choice) {
  Json envelope = {{"id", id},
                   {"object", chunk_object(endpoint)},
                   {"created", created},
                   {"model", model},
                   {"choices", Json::array({std::move(choice)})}};
  return dump(envelope);
}

// A non-streamed response: the one choice, usage and (when known) timings.
std::string response_with_choice(const char* object, const std::string& id,
                                 const std::string& model, int64_t created, Json choice,
                                 const Usage& usage) {
  Json response = {{"id", id},
                   {"object", object},
                   {"created", created},
                   {"model", model},
                   {"choices", Json::array({std::move(choice)})},
                   {"usage", usage_object(usage)}};
  if (auto timings = timings_object(usage)) response["timings"] = *timings;
  return dump(response);
}

std::string random_hex(size_t digits) {
  static std::atomic<uint64_t> counter{0};
  thread_local std::mt19937_64 rng(std::random_device{}() ^
                                   (counter.fetch_add(1) * 0x9E3779B97F4A7C15ull));
  static const char* kHex = "0123456789abcdef";
  std::string out;
  out.reserve(digits);
  for (size_t i = 0; i < digits; ++i) out.push_back(kHex[rng() & 15]);
  return out;
}

}  // namespace

StreamChunks::StreamChunks(Endpoint endpoint, std::string id, std::string model, int64_t created,
                           bool return_token_ids)
    : endpoint_(endpoint),
      id_(std::move(id)),
      model_(std::move(model)),
      created_(created),
      return_token_ids_(return_token_ids) {}

std::string StreamChunks::token_chunk(const Delta& delta, std::span<const int32_t> token_ids) {
  Json choice = {{"index", 0}};
  if (endpoint_ == Endpoint::kChatCompletions) {
    Json delta_json = Json::object();
    if (!sent_role_) delta_json["role"] = "assistant";
    sent_role_ = true;
    if (!delta.reasoning.empty()) delta_json["reasoning_content"] = delta.reasoning;
    // content is always present (possibly "") unless this token only carries
    // reasoning or tool-call text, so every chunk has a well-formed delta.
    if (!delta.content.empty() || (delta.reasoning.empty() && delta.tool_calls.empty())) {
      delta_json["content"] = delta.content;
    }
    if (!delta.tool_calls.empty()) delta_json["tool_calls"] = tool_call_deltas(delta.tool_calls);
    choice["delta"] = delta_json;
  } else {
    choice["text"] = delta.content;
    if (!delta.reasoning.empty()) choice["reasoning_content"] = delta.reasoning;
  }
  choice["logprobs"] = nullptr;
  choice["finish_reason"] = nullptr;
  if (return_token_ids_) choice["token_ids"] = Json(std::vector<int32_t>(token_ids.begin(), token_ids.end()));
  return chunk_with_choice(endpoint_, id_, model_, created_, std::move(choice));
}

std::string StreamChunks::finish_chunk(const std::string& finish_reason) const {
  Json choice = {{"index", 0}};
  if (endpoint_ == Endpoint::kChatCompletions) {
    choice["delta"] = Json::object();
  } else {
    choice["text"] = "";
  }
  choice["logprobs"] = nullptr;
  choice["finish_reason"] = finish_reason;
  return chunk_with_choice(endpoint_, id_, model_, created_, std::move(choice));
}

std::string StreamChunks::usage_chunk(const Usage& usage) const {
  Json envelope = {{"id", id_},
                   {"object", chunk_object(endpoint_)},
                   {"created", created_},
                   {"model", model_},
                   {"choices", Json::array()},
                   {"usage", usage_object(usage)}};
  if (auto timings = timings_object(usage)) envelope["timings"] = *timings;
  return dump(envelope);
}

std::string chat_completion_json(const std::string& id, const std::string& model,
                                 int64_t created, const Completion& completion,
                                 bool return_token_ids) {
  Json message = {{"role", "assistant"}};
  if (completion.content.empty() && !completion.tool_calls.empty()) {
    message["content"] = nullptr;
  } else {
    message["content"] = completion.content;
  }
  if (!completion.reasoning.empty()) message["reasoning_content"] = completion.reasoning;
  if (!completion.tool_calls.empty()) message["tool_calls"] = tool_calls_array(completion.tool_calls);
  Json choice = {{"index", 0},
                 {"message", message},
                 {"logprobs", nullptr},
                 {"finish_reason", completion.finish_reason}};
  if (return_token_ids) choice["token_ids"] = completion.token_ids;
  return response_with_choice("chat.completion", id, model, created, std::move(choice),
                              completion.usage);
}

std::string text_completion_json(const std::string& id, const std::string& model,
                                 int64_t created, const Completion& completion,
                                 bool return_token_ids) {
  Json choice = {{"index", 0},
                 {"text", completion.content},
                 {"logprobs", nullptr},
                 {"finish_reason", completion.finish_reason}};
  if (!completion.reasoning.empty()) choice["reasoning_content"] = completion.reasoning;
  if (return_token_ids) choice["token_ids"] = completion.token_ids;
  return response_with_choice("text_completion", id, model, created, std::move(choice),
                              completion.usage);
}

std::string models_json(int64_t created, int ctx_size) {
  Json model = {{"id", kModelId},
                {"object", "model"},
                {"created", created},
                {"owned_by", "ds4-spark"},
                {"max_model_len", ctx_size}};
  return dump(Json{{"object", "list"}, {"data", Json::array({model})}});
}

std::string sse_data(const std::string& payload) { return "data: " + payload + "\n\n"; }
std::string sse_done() { return "data: [DONE]\n\n"; }

std::string new_response_id(Endpoint endpoint) {
  return (endpoint == Endpoint::kChatCompletions ? "chatcmpl-" : "cmpl-") + random_hex(24);
}

std::string new_tool_call_id() { return "call_" + random_hex(24); }

}  // namespace ds4::server
