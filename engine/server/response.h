// The JSON shapes the server answers with: OpenAI chat.completion /
// text_completion objects, their streamed chunks, /v1/models, and SSE framing.
//
// Streaming rules (llama-benchy's measurement depends on them):
//  * a chunk with "choices" is only built for a generated token (no empty
//    role-only chunk before the first token);
//  * "usage" is never null: it is absent from token chunks and present only in the
//    final usage chunk (whose "choices" is empty);
//  * choices[0].token_ids is present when the request set return_token_ids.
//
// Thread-safety: StreamChunks is used by one thread (the request's HTTP thread);
// the free functions are pure.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "server/request.h"

namespace ds4::server {

inline constexpr const char* kModelId = "deepseek-v4-flash";

struct Usage {
  int prompt_tokens = 0;
  int completion_tokens = 0;
  int cached_tokens = 0;  // prompt tokens whose KV state was reused
  // Server-side timings (milliseconds), sent as "timings" beside usage when known.
  std::optional<double> prompt_ms;
  std::optional<double> decode_ms;
};

struct ToolCallOut {
  std::string id;  // "call_..."
  std::string name;
  std::string arguments;  // JSON object text
};

// One streamed piece of a tool call (OpenAI tool_calls delta). The first delta
// of a call carries id and name; later ones append to arguments.
struct ToolCallDelta {
  int index = 0;
  std::string id;
  std::string name;
  std::string arguments;
};

// What one sampled token added to the visible output.
struct Delta {
  std::string reasoning;  // streamed as "reasoning_content"
  std::string content;
  std::vector<ToolCallDelta> tool_calls;
};

// Everything a finished (non-streamed) generation produced.
struct Completion {
  std::string reasoning;
  std::string content;
  std::vector<ToolCallOut> tool_calls;
  std::vector<int32_t> token_ids;
  std::string finish_reason;  // stop, length, tool_calls
  Usage usage;
};

// Builds the chunks of one streamed response (chat or completions endpoint).
class StreamChunks {
 public:
  StreamChunks(Endpoint endpoint, std::string id, std::string model, int64_t created,
               bool return_token_ids);

  // The chunk of one sampled token (plus ids of earlier tokens whose text was an
  // incomplete UTF-8 sequence). The first one also carries role "assistant".
  std::string token_chunk(const Delta& delta, std::span<const int32_t> token_ids);
  // The last chunk with choices: an empty delta and the finish reason.
  std::string finish_chunk(const std::string& finish_reason) const;
  // The usage chunk: "choices": [] and "usage" (stream_options.include_usage).
  std::string usage_chunk(const Usage& usage) const;

 private:
  Endpoint endpoint_;
  std::string id_;
  std::string model_;
  int64_t created_;
  bool return_token_ids_;
  bool sent_role_ = false;
};

// Non-streamed responses.
std::string chat_completion_json(const std::string& id, const std::string& model,
                                 int64_t created, const Completion& completion,
                                 bool return_token_ids);
std::string text_completion_json(const std::string& id, const std::string& model,
                                 int64_t created, const Completion& completion,
                                 bool return_token_ids);

// GET /v1/models.
std::string models_json(int64_t created, int ctx_size);

// SSE framing: "data: <payload>\n\n" and the terminating "data: [DONE]\n\n".
std::string sse_data(const std::string& payload);
std::string sse_done();

// A fresh response id ("chatcmpl-..." / "cmpl-...") and tool-call id ("call_...").
std::string new_response_id(Endpoint endpoint);
std::string new_tool_call_id();

}  // namespace ds4::server
