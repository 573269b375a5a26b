// Parsing and validation of the OpenAI request bodies the server accepts:
// POST /v1/chat/completions and POST /v1/completions.
//
// A body becomes a CompletionRequest, or an ApiError (HTTP 400) naming the field
// at fault and what was wrong with it. Unknown fields are ignored (clients such
// as llama-benchy send extras like "cache_prompt"); fields we read are checked
// strictly: a wrong type is an error, never silently replaced by a default.
//
// Thread-safety: pure functions on values; safe from any thread.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "server/api_error.h"
#include "text/chat.h"

namespace ds4::server {

// How the request asks for reasoning (TOKENIZER_AND_CHAT.md §5.2).
enum class ThinkingRequest {
  kDefault,   // nothing said: thinking on (high)
  kDisabled,  // thinking {"type":"disabled"}, thinking/think false, reasoning_effort "none", ...
  kEnabled,   // explicitly on (high)
  kMax,       // reasoning_effort "max" (Think Max, gated by the context size)
};

// Sampling fields as given; absent fields take the engine's defaults.
struct SamplingIn {
  std::optional<double> temperature;
  std::optional<double> top_p;
  std::optional<double> min_p;
  std::optional<int> top_k;
  std::optional<int64_t> seed;  // used when > 0 (§7.1)
};

enum class Endpoint { kChatCompletions, kCompletions };

struct CompletionRequest {
  Endpoint endpoint = Endpoint::kChatCompletions;
  std::string model;                    // echoed back; any value accepted
  std::vector<Message> messages;  // chat endpoint (parsed by text/chat.h)
  std::string prompt;             // completions endpoint
  std::vector<std::string> tools; // JSON text of each OpenAI tool object
  // "auto" (default when tools are given), "none", "required", or a function name.
  std::string tool_choice = "auto";
  ThinkingRequest thinking = ThinkingRequest::kDefault;
  SamplingIn sampling;
  std::optional<int> max_tokens;  // max_tokens / max_completion_tokens
  std::vector<std::string> stop;
  bool stream = false;
  bool include_usage = false;     // stream_options.include_usage
  bool return_token_ids = false;  // choices[0].token_ids in stream chunks / responses

  // True when tools are given and tool_choice is not "none".
  bool tools_active() const { return !tools.empty() && tool_choice != "none"; }
};

// Index of the first byte that is not part of a well-formed UTF-8 sequence, or
// nullopt when `text` is valid UTF-8 (overlongs, surrogates and > U+10FFFF are invalid).
std::optional<size_t> find_invalid_utf8(std::string_view text);

// Parses a request body for the given endpoint. Errors are HTTP 400 ApiErrors.
std::variant<CompletionRequest, ApiError> parse_request(std::string_view body,
                                                        Endpoint endpoint);

}  // namespace ds4::server
