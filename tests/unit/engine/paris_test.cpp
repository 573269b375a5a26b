// End-to-end answers of the tiny trained chat model (tests/data/tiny-chat): every
// golden case is rendered through the chat encoding, tokenized, run through the
// Engine on the CPU backend with greedy decoding, and must reproduce the fixture's
// prompt string, prompt ids, greedy output ids and expected answer ("Paris" for the
// France question, in non-thinking and thinking mode).
#include <doctest/doctest.h>

#include <cmath>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "model/model.h"
#include "runtime/engine.h"
#include "runtime/generator.h"
#include "text/chat.h"
#include "text/tokenizer.h"

namespace {

using nlohmann::json;

std::string data_path(const std::string& rel) { return std::string(DS4_TEST_DATA) + "/" + rel; }

json load_golden() {
  std::ifstream in(data_path("tiny-chat/golden.json"));
  REQUIRE_MESSAGE(in.good(), "cannot open tiny-chat/golden.json");
  return json::parse(in);
}

std::unique_ptr<ds4::Engine> load_engine(int32_t chunk = 512) {
  ds4::EngineOptions options;
  options.model_path = data_path("tiny-chat/model.gguf");
  options.backend = ds4::BackendKind::kCpu;
  options.ctx = 1024;
  options.prefill_chunk = chunk;
  auto engine = ds4::Engine::Load(options);
  REQUIRE_MESSAGE(engine.ok(), engine.status().message());
  return std::move(*engine);
}

// The user message of a rendered single-turn prompt: the text between the User
// and Assistant markers.
std::string user_text_of(const std::string& prompt) {
  const size_t user = prompt.find(ds4::kUserText);
  const size_t asst = prompt.rfind(ds4::kAssistantText);
  REQUIRE(user != std::string::npos);
  REQUIRE(asst != std::string::npos);
  const size_t begin = user + ds4::kUserText.size();
  return prompt.substr(begin, asst - begin);
}

std::string render_case(const json& c) {
  std::vector<ds4::Message> messages;
  if (c["system"].is_string()) {
    ds4::Message system;
    system.role = "system";
    system.content = c["system"].get<std::string>();
    messages.push_back(system);
  }
  ds4::Message user;
  user.role = "user";
  user.content = user_text_of(c["prompt"].get<std::string>());
  messages.push_back(user);
  ds4::ChatOptions options;
  options.thinking = c["mode"] == "think" ? ds4::ThinkingMode::kHigh : ds4::ThinkingMode::kNone;
  auto rendered = ds4::render_chat(messages, options);
  REQUIRE_MESSAGE(rendered.ok(), rendered.status().message());
  return *rendered;
}

ds4::GenerateResult generate_greedy(ds4::Engine& engine, const std::vector<int32_t>& prompt,
                                    int32_t max_tokens, std::string* streamed) {
  auto session = engine.new_session();
  REQUIRE(session.ok());
  ds4::GenerateRequest req;
  req.prompt = prompt;
  req.sampling.temperature = 0.0f;
  req.max_tokens = max_tokens;
  auto result = engine.generate(**session, req, [&](const ds4::TokenDelta& d) {
    *streamed += d.text;
    return true;
  });
  REQUIRE_MESSAGE(result.ok(), result.status().message());
  return std::move(*result);
}

std::vector<float> read_f32(const std::string& path, size_t count) {
  std::ifstream in(path, std::ios::binary);
  REQUIRE_MESSAGE(in.good(), "cannot open " << path);
  std::vector<float> v(count);
  in.read(reinterpret_cast<char*>(v.data()), static_cast<std::streamsize>(count * sizeof(float)));
  REQUIRE_MESSAGE(in.gcount() == static_cast<std::streamsize>(count * sizeof(float)), path << " is short");
  return v;
}

}  // namespace

TEST_CASE("tiny-chat: every golden case renders, tokenizes and decodes like the fixture") {
  const json golden = load_golden();
  auto engine = load_engine();
  const ds4::Tokenizer& tok = engine->tokenizer();
  const int32_t max_new = 96;  // golden.json -> decode: at most 96 new tokens
  int checked = 0;
  for (const json& c : golden["cases"]) {
    const std::string id = c["id"].get<std::string>();
    CAPTURE(id);
    const std::string rendered = render_case(c);
    CHECK(rendered == c["prompt"].get<std::string>());
    const std::vector<int32_t> prompt_ids = tok.encode_with_specials(rendered);
    CHECK(prompt_ids == c["prompt_ids"].get<std::vector<int32_t>>());

    std::string streamed;
    const ds4::GenerateResult r = generate_greedy(*engine, prompt_ids, max_new, &streamed);
    const auto expected_ids = c["output_ids"].get<std::vector<int32_t>>();
    CHECK(r.output_ids == expected_ids);
    CHECK(r.finish_reason == (c["ends_with_eos"].get<bool>() ? ds4::FinishReason::kStop
                                                            : ds4::FinishReason::kLength));
    CHECK(streamed == c["output_text"].get<std::string>());
    CHECK(streamed.find(c["expect_substring"].get<std::string>()) != std::string::npos);
    ++checked;
  }
  CHECK(checked == 28);
}

TEST_CASE("tiny-chat: the France question answers Paris in both modes") {
  auto engine = load_engine();
  const ds4::Tokenizer& tok = engine->tokenizer();
  for (const auto mode : {ds4::ThinkingMode::kNone, ds4::ThinkingMode::kHigh}) {
    CAPTURE(static_cast<int>(mode));
    ds4::Message user;
    user.role = "user";
    user.content = "What is the capital of France?";
    ds4::ChatOptions options;
    options.thinking = mode;
    auto rendered = ds4::render_chat({user}, options);
    REQUIRE(rendered.ok());
    std::string streamed;
    const auto r = generate_greedy(*engine, tok.encode_with_specials(*rendered), 96, &streamed);
    CHECK(r.finish_reason == ds4::FinishReason::kStop);
    const size_t think_end = streamed.find(ds4::kThinkEndText);
    if (mode == ds4::ThinkingMode::kHigh) {
      // Reasoning, then "</think>", then the answer.
      REQUIRE(think_end != std::string::npos);
      CHECK(streamed.substr(think_end + ds4::kThinkEndText.size()).find("Paris") != std::string::npos);
    } else {
      CHECK(think_end == std::string::npos);
      CHECK(streamed.find("Paris") != std::string::npos);
    }
  }
}

TEST_CASE("tiny-chat: last prompt logits of the France question match the official model") {
  const json golden = load_golden();
  auto engine = load_engine();
  const ds4::Tokenizer& tok = engine->tokenizer();
  for (const std::string mode : {"nothink", "think"}) {
    CAPTURE(mode);
    const json& info = golden["logits"][mode];
    const std::string case_id = info["case"].get<std::string>();
    std::vector<int32_t> prompt_ids;
    for (const json& c : golden["cases"]) {
      if (c["id"] == case_id) prompt_ids = c["prompt_ids"].get<std::vector<int32_t>>();
    }
    REQUIRE(!prompt_ids.empty());
    const size_t vocab = info["count"].get<size_t>();
    REQUIRE(static_cast<size_t>(tok.vocab_size()) == vocab);
    const std::vector<float> want = read_f32(data_path("tiny-chat/" + info["qat_on"].get<std::string>()), vocab);

    ds4::Backend& backend = engine->backend();
    auto seq = backend.new_sequence(1024);
    REQUIRE(seq.ok());
    std::vector<float> got;
    REQUIRE(ds4::prefill_tokens(backend, *seq, prompt_ids, 0, 512, &got).ok());
    backend.free_sequence(*seq);
    REQUIRE(got.size() == vocab);
    float max_diff = 0;
    size_t argmax = 0;
    for (size_t i = 0; i < vocab; ++i) {
      max_diff = std::max(max_diff, std::fabs(got[i] - want[i]));
      if (got[i] > got[argmax]) argmax = i;
    }
    // The README: routing near-ties may move logits by a few hundredths (std ~2).
    CHECK(max_diff < 0.1f);
    CHECK(argmax == info["argmax"].get<size_t>());
  }
}
