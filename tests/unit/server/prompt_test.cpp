// Request -> prompt ids, thinking mode, sampler settings and token budget, checked
// against the tiny-chat fixture's exact rendered prompts and ids.
#include <doctest/doctest.h>

#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <variant>

#include "format/gguf.h"
#include "server/prompt.h"
#include "server/request.h"
#include "text/tokenizer.h"

namespace {

using nlohmann::json;
using ds4::server::ApiError;
using ds4::server::CompletionRequest;
using ds4::server::Endpoint;
using ds4::server::PreparedRequest;

const std::string kChatDir = std::string(DS4_TEST_DATA) + "/tiny-chat";

const ds4::Tokenizer& tiny_chat_tokenizer() {
  static std::unique_ptr<ds4::Tokenizer> tokenizer = [] {
    auto gguf = ds4::GgufFile::Open(kChatDir + "/model.gguf");
    REQUIRE_MESSAGE(gguf.ok(), gguf.status().message());
    auto loaded = ds4::Tokenizer::FromGguf(*gguf.value());
    REQUIRE_MESSAGE(loaded.ok(), loaded.status().message());
    return std::make_unique<ds4::Tokenizer>(std::move(loaded.value()));
  }();
  return *tokenizer;
}

json golden() {
  std::ifstream in(kChatDir + "/golden.json");
  REQUIRE(in.good());
  return json::parse(in);
}

CompletionRequest parse(const std::string& body, Endpoint endpoint = Endpoint::kChatCompletions) {
  auto parsed = ds4::server::parse_request(body, endpoint);
  REQUIRE(std::holds_alternative<CompletionRequest>(parsed));
  return std::get<CompletionRequest>(parsed);
}

std::variant<PreparedRequest, ApiError> prepare(const std::string& body, int32_t ctx = 4096,
                                                Endpoint endpoint = Endpoint::kChatCompletions) {
  return ds4::server::prepare_request(parse(body, endpoint), tiny_chat_tokenizer(), ctx);
}

}  // namespace

TEST_CASE("server-rendered golden prompts give the fixture's exact ids") {
  int checked = 0;
  const json cases = golden()["cases"];
  for (const json& c : cases) {
    if (c["rendering"] != "server") continue;
    json body = {{"messages", json::array({{{"role", "user"}, {"content", c["question"]}}})}};
    if (c["mode"] == "nothink") body["thinking"] = {{"type", "disabled"}};
    CompletionRequest request = parse(body.dump());
    const auto thinking = ds4::server::effective_thinking(request.thinking, 4096);
    auto rendered = ds4::server::render_prompt(request, thinking);
    REQUIRE(rendered.ok());
    CHECK_MESSAGE(rendered.value() == c["prompt"].get<std::string>(), c["id"]);
    auto prepared = ds4::server::prepare_request(request, tiny_chat_tokenizer(), 4096);
    REQUIRE(std::holds_alternative<PreparedRequest>(prepared));
    CHECK_MESSAGE(std::get<PreparedRequest>(prepared).generate.prompt ==
                      c["prompt_ids"].get<std::vector<int32_t>>(),
                  c["id"]);
    ++checked;
  }
  CHECK(checked == 24);
}

TEST_CASE("/v1/completions renders the default system prompt (the CLI golden cases)") {
  int checked = 0;
  const json cases = golden()["cases"];
  for (const json& c : cases) {
    if (c["rendering"] != "cli") continue;
    json body = {{"prompt", c["question"]}};
    if (c["mode"] == "nothink") body["reasoning_effort"] = "none";
    auto prepared = prepare(body.dump(), 4096, Endpoint::kCompletions);
    REQUIRE(std::holds_alternative<PreparedRequest>(prepared));
    CHECK_MESSAGE(std::get<PreparedRequest>(prepared).generate.prompt ==
                      c["prompt_ids"].get<std::vector<int32_t>>(),
                  c["id"]);
    ++checked;
  }
  CHECK(checked == 2);
}

TEST_CASE("thinking mode: default on, off by switch, Think Max gated by context") {
  using ds4::ThinkingMode;
  using ds4::server::ThinkingRequest;
  CHECK(ds4::server::effective_thinking(ThinkingRequest::kDefault, 4096) == ThinkingMode::kHigh);
  CHECK(ds4::server::effective_thinking(ThinkingRequest::kDisabled, 4096) == ThinkingMode::kNone);
  CHECK(ds4::server::effective_thinking(ThinkingRequest::kMax, 32768) == ThinkingMode::kHigh);
  CHECK(ds4::server::effective_thinking(ThinkingRequest::kMax, 393216) == ThinkingMode::kMax);
}

TEST_CASE("sampling: request values without thinking, defaults with it") {
  ds4::server::SamplingIn in;
  in.temperature = 0.0;
  in.top_k = 5000;
  in.top_p = 0.5;
  in.min_p = 0.2;
  in.seed = 42;
  ds4::SamplerParams direct = ds4::server::effective_sampling(in, ds4::ThinkingMode::kNone);
  CHECK(direct.temperature == 0.0f);
  CHECK(direct.top_k == ds4::SamplerParams::kMaxTopK);
  CHECK(direct.top_p == 0.5f);
  CHECK(direct.min_p == doctest::Approx(0.2f));
  CHECK(direct.seed == 42u);
  ds4::SamplerParams thinking = ds4::server::effective_sampling(in, ds4::ThinkingMode::kHigh);
  const ds4::SamplerParams defaults;
  CHECK(thinking.temperature == defaults.temperature);
  CHECK(thinking.top_k == defaults.top_k);
  CHECK(thinking.min_p == defaults.min_p);
  CHECK(thinking.seed == 42u);
  in.seed = 0;  // not > 0: a time-based seed
  CHECK(ds4::server::effective_sampling(in, ds4::ThinkingMode::kNone).seed != 0u);
}

TEST_CASE("token budget: max_tokens, the rest of the context, or a 400 with the numbers") {
  const std::string question = R"({"messages":[{"role":"user","content":"What is the capital of France?"}])";
  auto with_budget = prepare(question + R"(,"max_tokens":20})");
  REQUIRE(std::holds_alternative<PreparedRequest>(with_budget));
  const auto& prepared = std::get<PreparedRequest>(with_budget);
  CHECK(prepared.generate.max_tokens == 20);
  const int32_t prompt_tokens = static_cast<int32_t>(prepared.generate.prompt.size());

  auto rest = prepare(question + "}", 100);
  REQUIRE(std::holds_alternative<PreparedRequest>(rest));
  CHECK(std::get<PreparedRequest>(rest).generate.max_tokens == 100 - prompt_tokens);

  auto overflow = prepare(question + R"(,"max_tokens":200})", 100);
  REQUIRE(std::holds_alternative<ApiError>(overflow));
  const ApiError& error = std::get<ApiError>(overflow);
  CHECK(error.http_status == 400);
  CHECK(error.code == "context_length_exceeded");
  CHECK(error.message.find("100 tokens") != std::string::npos);
  CHECK(error.message.find(std::to_string(prompt_tokens) + " in the prompt") != std::string::npos);

  auto no_room = prepare(question + "}", prompt_tokens);
  REQUIRE(std::holds_alternative<ApiError>(no_room));
  CHECK(std::get<ApiError>(no_room).code == "context_length_exceeded");
}

TEST_CASE("stop strings and tools pass through") {
  auto prepared = prepare(
      R"({"messages":[{"role":"user","content":"hi"}],"stop":["END"],"tools":[{"type":"function","function":{"name":"f","parameters":{}}}]})");
  REQUIRE(std::holds_alternative<PreparedRequest>(prepared));
  const auto& p = std::get<PreparedRequest>(prepared);
  CHECK(p.generate.stop == std::vector<std::string>{"END"});
  CHECK(p.tools_active);
  const std::string text = tiny_chat_tokenizer().decode(p.generate.prompt);
  CHECK(text.find("## Tools") != std::string::npos);
}
