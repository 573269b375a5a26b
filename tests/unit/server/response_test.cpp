// The JSON shapes of responses and stream chunks (the rules llama-benchy and the
// openai SDK rely on): role only in the first chunk, no "usage" key in token
// chunks, token_ids only when asked, usage chunk with empty choices, SSE framing.
#include <doctest/doctest.h>

#include <nlohmann/json.hpp>
#include <vector>

#include "server/response.h"

namespace {

using nlohmann::json;
using ds4::server::Delta;
using ds4::server::Endpoint;
using ds4::server::StreamChunks;

Delta content(const std::string& text) {
  Delta delta;
  delta.content = text;
  return delta;
}

}  // namespace

TEST_CASE("chat token chunks: role once, one delta, token ids, no usage key") {
  StreamChunks chunks(Endpoint::kChatCompletions, "chatcmpl-1", "deepseek-v4-flash", 1700000000,
                      /*return_token_ids=*/true);
  std::vector<int32_t> first_ids = {11};
  json first = json::parse(chunks.token_chunk(content("The"), first_ids));
  CHECK(first["object"] == "chat.completion.chunk");
  CHECK(first["id"] == "chatcmpl-1");
  CHECK(first["created"] == 1700000000);
  CHECK_FALSE(first.contains("usage"));
  REQUIRE(first["choices"].size() == 1);
  CHECK(first["choices"][0]["delta"]["role"] == "assistant");
  CHECK(first["choices"][0]["delta"]["content"] == "The");
  CHECK(first["choices"][0]["finish_reason"].is_null());
  CHECK(first["choices"][0]["token_ids"] == json::array({11}));

  std::vector<int32_t> two_ids = {12, 13};  // an incomplete UTF-8 token riding along
  json second = json::parse(chunks.token_chunk(content(" caf\xC3\xA9"), two_ids));
  CHECK_FALSE(second["choices"][0]["delta"].contains("role"));
  CHECK(second["choices"][0]["token_ids"] == json::array({12, 13}));
  CHECK_FALSE(second.contains("usage"));
}

TEST_CASE("reasoning and tool-call deltas") {
  StreamChunks chunks(Endpoint::kChatCompletions, "id", "m", 1, false);
  Delta reasoning;
  reasoning.reasoning = "thinking";
  json chunk = json::parse(chunks.token_chunk(reasoning, std::vector<int32_t>{5}));
  CHECK(chunk["choices"][0]["delta"]["reasoning_content"] == "thinking");
  CHECK_FALSE(chunk["choices"][0]["delta"].contains("content"));
  CHECK_FALSE(chunk["choices"][0].contains("token_ids"));

  Delta call;
  call.tool_calls.push_back({0, "call_abc", "get_weather", ""});
  json begin = json::parse(chunks.token_chunk(call, std::vector<int32_t>{6}));
  const json& tool = begin["choices"][0]["delta"]["tool_calls"][0];
  CHECK(tool["index"] == 0);
  CHECK(tool["id"] == "call_abc");
  CHECK(tool["type"] == "function");
  CHECK(tool["function"]["name"] == "get_weather");
  CHECK(tool["function"]["arguments"] == "");

  Delta args;
  args.tool_calls.push_back({0, "", "", "{\"city\": "});
  json more = json::parse(chunks.token_chunk(args, std::vector<int32_t>{7}));
  const json& fragment = more["choices"][0]["delta"]["tool_calls"][0];
  CHECK_FALSE(fragment.contains("id"));
  CHECK_FALSE(fragment["function"].contains("name"));
  CHECK(fragment["function"]["arguments"] == "{\"city\": ");
}

TEST_CASE("an empty delta (a token with no visible text) still has content") {
  StreamChunks chunks(Endpoint::kChatCompletions, "id", "m", 1, true);
  json chunk = json::parse(chunks.token_chunk(Delta{}, std::vector<int32_t>{1}));
  CHECK(chunk["choices"][0]["delta"]["content"] == "");
  CHECK(chunk["choices"][0]["token_ids"] == json::array({1}));
}

TEST_CASE("finish chunk and usage chunk") {
  StreamChunks chunks(Endpoint::kChatCompletions, "id", "m", 1, true);
  json finish = json::parse(chunks.finish_chunk("stop"));
  CHECK(finish["choices"][0]["finish_reason"] == "stop");
  CHECK(finish["choices"][0]["delta"].empty());
  CHECK_FALSE(finish.contains("usage"));

  ds4::server::Usage usage;
  usage.prompt_tokens = 12;
  usage.completion_tokens = 8;
  usage.cached_tokens = 4;
  usage.decode_ms = 70.0;
  json last = json::parse(chunks.usage_chunk(usage));
  CHECK(last["choices"].empty());
  CHECK(last["usage"]["prompt_tokens"] == 12);
  CHECK(last["usage"]["completion_tokens"] == 8);
  CHECK(last["usage"]["total_tokens"] == 20);
  CHECK(last["usage"]["prompt_tokens_details"]["cached_tokens"] == 4);
  CHECK(last["timings"]["predicted_ms"] == 70.0);
}

TEST_CASE("completions endpoint chunks carry text") {
  StreamChunks chunks(Endpoint::kCompletions, "cmpl-1", "m", 1, false);
  json chunk = json::parse(chunks.token_chunk(content("Paris"), std::vector<int32_t>{9}));
  CHECK(chunk["object"] == "text_completion");
  CHECK(chunk["choices"][0]["text"] == "Paris");
  CHECK_FALSE(chunk["choices"][0].contains("delta"));
  CHECK_FALSE(chunk["choices"][0].contains("reasoning_content"));
  Delta reasoning;
  reasoning.reasoning = "The user asks";
  json thinking = json::parse(chunks.token_chunk(reasoning, std::vector<int32_t>{10}));
  CHECK(thinking["choices"][0]["text"] == "");
  CHECK(thinking["choices"][0]["reasoning_content"] == "The user asks");
}

TEST_CASE("non-streamed responses") {
  ds4::server::Completion completion;
  completion.reasoning = "The user asks.";
  completion.content = "Paris.";
  completion.token_ids = {4, 5};
  completion.finish_reason = "stop";
  completion.usage.prompt_tokens = 10;
  completion.usage.completion_tokens = 2;
  json chat = json::parse(ds4::server::chat_completion_json("chatcmpl-x", "m", 5, completion, true));
  CHECK(chat["object"] == "chat.completion");
  CHECK(chat["choices"][0]["message"]["role"] == "assistant");
  CHECK(chat["choices"][0]["message"]["content"] == "Paris.");
  CHECK(chat["choices"][0]["message"]["reasoning_content"] == "The user asks.");
  CHECK(chat["choices"][0]["finish_reason"] == "stop");
  CHECK(chat["choices"][0]["token_ids"] == json::array({4, 5}));
  CHECK(chat["usage"]["prompt_tokens"] == 10);
  CHECK(chat["usage"]["completion_tokens"] == 2);

  completion.content.clear();
  completion.tool_calls.push_back({"call_1", "get_weather", "{\"city\": \"Paris\"}"});
  completion.finish_reason = "tool_calls";
  json tools = json::parse(ds4::server::chat_completion_json("c", "m", 5, completion, false));
  CHECK(tools["choices"][0]["message"]["content"].is_null());
  CHECK(tools["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"] ==
        "{\"city\": \"Paris\"}");
  CHECK_FALSE(tools["choices"][0].contains("token_ids"));

  json text = json::parse(ds4::server::text_completion_json("cmpl-y", "m", 5, completion, false));
  CHECK(text["object"] == "text_completion");
  CHECK(text["choices"][0]["text"] == "");
  CHECK(text["usage"]["total_tokens"] == 12);
}

TEST_CASE("models list and SSE framing") {
  json models = json::parse(ds4::server::models_json(7, 4096));
  CHECK(models["object"] == "list");
  REQUIRE(models["data"].size() == 1);
  CHECK(models["data"][0]["id"] == "deepseek-v4-flash");
  CHECK(ds4::server::sse_data("{}") == "data: {}\n\n");
  CHECK(ds4::server::sse_done() == "data: [DONE]\n\n");
  CHECK(ds4::server::new_response_id(Endpoint::kChatCompletions).rfind("chatcmpl-", 0) == 0);
  CHECK(ds4::server::new_response_id(Endpoint::kCompletions).rfind("cmpl-", 0) == 0);
  CHECK(ds4::server::new_tool_call_id() != ds4::server::new_tool_call_id());
}
