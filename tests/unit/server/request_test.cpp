// Request parsing and validation for /v1/chat/completions and /v1/completions:
// every malformed body is a 400 naming the field at fault; unknown fields are
// ignored; the thinking switches of TOKENIZER_AND_CHAT.md §5.2 are honoured.
#include <doctest/doctest.h>

#include <string>
#include <variant>

#include "server/request.h"

namespace {

using ds4::server::ApiError;
using ds4::server::CompletionRequest;
using ds4::server::Endpoint;
using ds4::server::ThinkingRequest;

CompletionRequest parse_ok(const std::string& body, Endpoint endpoint = Endpoint::kChatCompletions) {
  auto parsed = ds4::server::parse_request(body, endpoint);
  if (auto* error = std::get_if<ApiError>(&parsed)) {
    FAIL("unexpected error: " << error->message);
  }
  return std::get<CompletionRequest>(parsed);
}

ApiError parse_error(const std::string& body, Endpoint endpoint = Endpoint::kChatCompletions) {
  auto parsed = ds4::server::parse_request(body, endpoint);
  REQUIRE(std::holds_alternative<ApiError>(parsed));
  return std::get<ApiError>(parsed);
}

const std::string kUser = R"("messages":[{"role":"user","content":"What is the capital of France?"}])";

std::string chat(const std::string& extra) {
  return "{" + kUser + (extra.empty() ? "" : "," + extra) + "}";
}

}  // namespace

TEST_CASE("a minimal chat request parses with the defaults") {
  CompletionRequest request = parse_ok(chat(""));
  REQUIRE(request.messages.size() == 1);
  CHECK(request.messages[0].role == "user");
  CHECK(request.messages[0].content == "What is the capital of France?");
  CHECK(request.thinking == ThinkingRequest::kDefault);
  CHECK_FALSE(request.stream);
  CHECK_FALSE(request.include_usage);
  CHECK_FALSE(request.return_token_ids);
  CHECK_FALSE(request.max_tokens.has_value());
  CHECK_FALSE(request.sampling.temperature.has_value());
  CHECK(request.stop.empty());
}

TEST_CASE("unknown fields are ignored (llama-benchy sends extras)") {
  CompletionRequest request = parse_ok(
      chat(R"("cache_prompt":false,"ignore_eos":true,"min_tokens":4,"x":{"deep":[1,2]})"));
  CHECK(request.messages.size() == 1);
}

TEST_CASE("an empty user message is accepted") {
  CompletionRequest request = parse_ok(R"({"messages":[{"role":"user","content":""}]})");
  REQUIRE(request.messages.size() == 1);
  CHECK(request.messages[0].content.empty());
}

TEST_CASE("content given as text parts is accepted, parts in order") {
  CompletionRequest request = parse_ok(
      R"({"messages":[{"role":"user","content":[{"type":"text","text":"Hello "},{"type":"text","text":"there"}]}]})");
  REQUIRE(request.messages.size() == 1);
  const std::string& content = request.messages[0].content;
  CHECK(content.rfind("Hello ", 0) == 0);  // the separator is the chat encoding's choice
  CHECK(content.size() >= 11);
  CHECK(content.substr(content.size() - 5) == "there");
}

TEST_CASE("streaming, usage and token-id switches") {
  CompletionRequest request = parse_ok(
      chat(R"("stream":true,"stream_options":{"include_usage":true},"return_token_ids":true)"));
  CHECK(request.stream);
  CHECK(request.include_usage);
  CHECK(request.return_token_ids);
}

TEST_CASE("sampling fields and limits") {
  CompletionRequest request = parse_ok(chat(
      R"("temperature":0,"top_p":0.9,"top_k":40,"min_p":0.1,"seed":1234,"max_tokens":17,"stop":["\n\n","END"])"));
  CHECK(*request.sampling.temperature == 0.0);
  CHECK(*request.sampling.top_p == doctest::Approx(0.9));
  CHECK(*request.sampling.top_k == 40);
  CHECK(*request.sampling.min_p == doctest::Approx(0.1));
  CHECK(*request.sampling.seed == 1234);
  CHECK(*request.max_tokens == 17);
  REQUIRE(request.stop.size() == 2);
  CHECK(request.stop[1] == "END");
  CHECK(parse_ok(chat(R"("max_completion_tokens":5)")).max_tokens == 5);
  CHECK(parse_ok(chat(R"("stop":"###")")).stop == std::vector<std::string>{"###"});
  CHECK(parse_ok(chat(R"("max_tokens":null,"temperature":null)")).max_tokens == std::nullopt);
}

TEST_CASE("thinking switches") {
  CHECK(parse_ok(chat(R"("thinking":{"type":"disabled"})")).thinking == ThinkingRequest::kDisabled);
  CHECK(parse_ok(chat(R"("thinking":{"type":"enabled"})")).thinking == ThinkingRequest::kEnabled);
  CHECK(parse_ok(chat(R"("reasoning_effort":"none")")).thinking == ThinkingRequest::kDisabled);
  CHECK(parse_ok(chat(R"("reasoning_effort":"low")")).thinking == ThinkingRequest::kEnabled);
  CHECK(parse_ok(chat(R"("reasoning_effort":"max")")).thinking == ThinkingRequest::kMax);
  CHECK(parse_ok(chat(R"("chat_template_kwargs":{"thinking":false})")).thinking ==
        ThinkingRequest::kDisabled);
  CHECK(parse_ok(chat(R"("chat_template_kwargs":{"enable_thinking":false})")).thinking ==
        ThinkingRequest::kDisabled);
  CHECK(parse_ok(chat(R"("think":false)")).thinking == ThinkingRequest::kDisabled);
  CHECK(parse_ok(chat(R"("thinking":false)")).thinking == ThinkingRequest::kDisabled);
  CHECK(parse_ok(chat(R"("model":"deepseek-chat")")).thinking == ThinkingRequest::kDisabled);
  CHECK(parse_ok(chat(R"("model":"deepseek-reasoner")")).thinking == ThinkingRequest::kEnabled);
  // An explicit switch wins over the model alias.
  CHECK(parse_ok(chat(R"("model":"deepseek-chat","thinking":{"type":"enabled"})")).thinking ==
        ThinkingRequest::kEnabled);
}

TEST_CASE("tools and tool_choice") {
  const std::string tools =
      R"("tools":[{"type":"function","function":{"name":"get_weather","parameters":{"type":"object","properties":{"city":{"type":"string"}}}}}])";
  CompletionRequest request = parse_ok(chat(tools));
  REQUIRE(request.tools.size() == 1);
  CHECK(request.tools[0].find("get_weather") != std::string::npos);
  CHECK(request.tools_active());
  CHECK_FALSE(parse_ok(chat(tools + R"(,"tool_choice":"none")")).tools_active());
  CHECK(parse_ok(chat(tools + R"(,"tool_choice":{"type":"function","function":{"name":"get_weather"}})"))
            .tool_choice == "get_weather");
  // Naming one function offers only that tool; naming an unknown one is an error.
  const std::string two_tools =
      R"("tools":[{"type":"function","function":{"name":"get_weather","parameters":{}}},)"
      R"({"type":"function","function":{"name":"get_time","parameters":{}}}])";
  CompletionRequest named = parse_ok(
      chat(two_tools + R"(,"tool_choice":{"type":"function","function":{"name":"get_time"}})"));
  REQUIRE(named.tools.size() == 1);
  CHECK(named.tools[0].find("get_time") != std::string::npos);
  CHECK(parse_ok(chat(two_tools)).tools.size() == 2);
  CHECK(parse_error(chat(two_tools + R"(,"tool_choice":{"type":"function","function":{"name":"nope"}})"))
            .param == "tool_choice");
  CHECK(parse_error(chat(tools + R"(,"tool_choice":"sometimes")")).param == "tool_choice");
}

TEST_CASE("malformed JSON is a 400 that says so") {
  ApiError error = parse_error(R"({"messages": [)");
  CHECK(error.http_status == 400);
  CHECK(error.type == "invalid_request_error");
  CHECK(error.message.find("not valid JSON") != std::string::npos);
  CHECK(parse_error("").http_status == 400);
  CHECK(parse_error("[1,2]").message.find("JSON object") != std::string::npos);
}

TEST_CASE("invalid UTF-8 is a 400 naming the offset") {
  std::string body = chat("");
  size_t at = body.find("France");
  body[at] = static_cast<char>(0xC3);  // lead byte followed by an ASCII byte
  ApiError error = parse_error(body);
  CHECK(error.http_status == 400);
  CHECK(error.message.find("UTF-8") != std::string::npos);
  CHECK(error.message.find(std::to_string(at)) != std::string::npos);
}

TEST_CASE("find_invalid_utf8 rejects overlongs, surrogates and truncation") {
  using ds4::server::find_invalid_utf8;
  CHECK_FALSE(find_invalid_utf8("plain ascii").has_value());
  CHECK_FALSE(find_invalid_utf8("caf\xC3\xA9 \xE2\x96\x81 \xF0\x9F\x98\x80").has_value());
  CHECK(find_invalid_utf8("\xC0\x80") == 0u);          // overlong NUL
  CHECK(find_invalid_utf8("ab\xED\xA0\x80") == 2u);    // UTF-16 surrogate
  CHECK(find_invalid_utf8("abc\xE2\x96") == 3u);       // truncated
  CHECK(find_invalid_utf8("\xF4\x90\x80\x80") == 0u);  // above U+10FFFF
  CHECK(find_invalid_utf8("x\xFF") == 1u);
}

TEST_CASE("wrong types are 400s naming the field") {
  CHECK(parse_error(chat(R"("temperature":"hot")")).param == "temperature");
  CHECK(parse_error(chat(R"("max_tokens":"10")")).param == "max_tokens");
  CHECK(parse_error(chat(R"("max_tokens":2.5)")).param == "max_tokens");
  CHECK(parse_error(chat(R"("max_tokens":0)")).param == "max_tokens");
  CHECK(parse_error(chat(R"("stream":"yes")")).param == "stream");
  CHECK(parse_error(chat(R"("stop":[1])")).param == "stop");
  CHECK(parse_error(chat(R"("stream_options":{"include_usage":1})")).param ==
        "stream_options.include_usage");
  CHECK(parse_error(chat(R"("top_k":"many")")).param == "top_k");
  CHECK(parse_error(chat(R"("seed":1.5)")).param == "seed");
  CHECK(parse_error(chat(R"("n":2)")).param == "n");
  CHECK(parse_error(chat(R"("temperature":-1)")).param == "temperature");
  CHECK(parse_error(chat(R"("reasoning_effort":"extreme")")).param == "reasoning_effort");
  CHECK(parse_error(chat(R"("thinking":{"type":"sometimes"})")).param == "thinking.type");
  CHECK(parse_error(R"({"messages":"hello"})").param == "messages");
  CHECK(parse_error(R"({"messages":[]})").param == "messages");
  CHECK(parse_error(R"({"model":"x"})").param == "messages");
  CHECK(parse_error(R"({"messages":[{"content":"no role"}]})").param == "messages[0].role");
  CHECK(parse_error(R"({"messages":[{"role":"user","content":42}]})").param == "messages");
  CHECK(parse_error(R"({"messages":[{"role":"user","content":[{"type":"image_url"}]}]})").param ==
        "messages");
}

TEST_CASE("completions endpoint takes a prompt") {
  CompletionRequest request =
      parse_ok(R"({"prompt":"What is the capital of France?","max_tokens":8})", Endpoint::kCompletions);
  CHECK(request.endpoint == Endpoint::kCompletions);
  CHECK(request.prompt == "What is the capital of France?");
  CHECK(parse_ok(R"({"prompt":["one string"]})", Endpoint::kCompletions).prompt == "one string");
  CHECK(parse_error(R"({"prompt":[1,2,3]})", Endpoint::kCompletions).param == "prompt");
  CHECK(parse_error(R"({"max_tokens":3})", Endpoint::kCompletions).param == "prompt");
}

TEST_CASE("error objects have the OpenAI shape") {
  ApiError error = ds4::server::context_overflow(30000, 5000, 32768);
  CHECK(error.http_status == 400);
  CHECK(error.code == "context_length_exceeded");
  CHECK(error.message.find("32768") != std::string::npos);
  CHECK(error.message.find("30000") != std::string::npos);
  CHECK(error.message.find("5000") != std::string::npos);
  std::string json = error.to_json();
  CHECK(json.find(R"("error":{)") != std::string::npos);
  CHECK(json.find(R"("code":"context_length_exceeded")") != std::string::npos);
  CHECK(ds4::server::bad_request("x").to_json().find(R"("param":null)") != std::string::npos);
  CHECK(ds4::server::body_too_large(1024).http_status == 413);
  CHECK(ds4::server::not_ready("loading").http_status == 503);
  CHECK(ds4::server::route_not_found("GET", "/v2").http_status == 404);
}
