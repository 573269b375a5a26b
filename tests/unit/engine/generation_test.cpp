// Generation on the real forward pass (CPU backend, tiny trained chat model): KV
// reuse across turns gives the same tokens as a fresh session while prefilling only
// the new suffix, chunked prefill gives the same answer as one-shot prefill,
// cancellation leaves a usable session, context overflow is reported with its
// numbers, and seeded sampling is reproducible.
#include <doctest/doctest.h>

#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "model/model.h"
#include "runtime/engine.h"
#include "text/chat.h"
#include "text/tokenizer.h"

namespace {

std::string data_path(const std::string& rel) { return std::string(DS4_TEST_DATA) + "/" + rel; }

std::unique_ptr<ds4::Engine> load_engine(int32_t chunk = 512, int32_t ctx = 1024) {
  ds4::EngineOptions options;
  options.model_path = data_path("tiny-chat/model.gguf");
  options.backend = ds4::BackendKind::kCpu;
  options.ctx = ctx;
  options.prefill_chunk = chunk;
  auto engine = ds4::Engine::Load(options);
  REQUIRE_MESSAGE(engine.ok(), engine.status().message());
  return std::move(*engine);
}

std::unique_ptr<ds4::Session> new_session(ds4::Engine& engine) {
  auto s = engine.new_session();
  REQUIRE_MESSAGE(s.ok(), s.status().message());
  return std::move(*s);
}

// BOS User question Assistant </think> (server rendering, non-thinking).
std::vector<int32_t> question(const ds4::Tokenizer& tok, const std::string& text) {
  ds4::Message user;
  user.role = "user";
  user.content = text;
  ds4::ChatOptions options;
  options.thinking = ds4::ThinkingMode::kNone;
  auto rendered = ds4::render_chat({user}, options);
  REQUIRE(rendered.ok());
  return tok.encode_with_specials(*rendered);
}

ds4::GenerateRequest greedy(std::vector<int32_t> prompt, int32_t max_tokens = 64) {
  ds4::GenerateRequest req;
  req.prompt = std::move(prompt);
  req.sampling.temperature = 0.0f;
  req.max_tokens = max_tokens;
  return req;
}

ds4::GenerateResult run(ds4::Engine& engine, ds4::Session& session, const ds4::GenerateRequest& req) {
  auto r = engine.generate(session, req, nullptr);
  REQUIRE_MESSAGE(r.ok(), r.status().message());
  return std::move(*r);
}

}  // namespace

TEST_CASE("a second turn reuses the first turn's state and decodes like a fresh session") {
  auto engine = load_engine();
  const ds4::Tokenizer& tok = engine->tokenizer();
  auto session = new_session(*engine);
  const std::vector<int32_t> turn1 = question(tok, "What is the capital of France?");
  const auto r1 = run(*engine, *session, greedy(turn1));
  REQUIRE(r1.finish_reason == ds4::FinishReason::kStop);
  CHECK(r1.text.find("Paris") != std::string::npos);

  // Transcript: turn 1, its reply (EOS included), then a second question.
  std::vector<int32_t> turn2 = turn1;
  turn2.insert(turn2.end(), r1.output_ids.begin(), r1.output_ids.end());
  turn2.push_back(tok.user());
  for (int32_t id : tok.encode("What is the capital of Germany?")) turn2.push_back(id);
  turn2.push_back(tok.assistant());
  turn2.push_back(tok.think_end());

  const int32_t held = session->size();
  CHECK(held == static_cast<int32_t>(turn1.size() + r1.output_ids.size()) - 1);
  const auto r2 = run(*engine, *session, greedy(turn2));
  CHECK(r2.reused_tokens == held);
  CHECK(r2.prompt_tokens == static_cast<int32_t>(turn2.size()));

  auto fresh = new_session(*engine);
  const auto r3 = run(*engine, *fresh, greedy(turn2));
  CHECK(r3.reused_tokens == 0);
  CHECK(r2.output_ids == r3.output_ids);
  CHECK(r2.text == r3.text);
  CHECK_FALSE(r2.output_ids.empty());
}

TEST_CASE("chunked prefill gives the same answer as a one-shot prefill") {
  auto whole = load_engine(512);
  auto chunked = load_engine(37);  // not a multiple of the compression ratios
  const std::vector<int32_t> prompt = question(whole->tokenizer(), "Who wrote Hamlet?");
  auto s1 = new_session(*whole);
  auto s2 = new_session(*chunked);
  const auto a = run(*whole, *s1, greedy(prompt));
  const auto b = run(*chunked, *s2, greedy(prompt));
  CHECK(a.output_ids == b.output_ids);
  CHECK(a.text.find("Shakespeare") != std::string::npos);
}

TEST_CASE("cancelling a generation leaves a session that serves the next request") {
  auto engine = load_engine();
  const std::vector<int32_t> prompt = question(engine->tokenizer(), "What is the capital of Japan?");
  auto session = new_session(*engine);
  std::atomic<bool> cancel{false};
  auto req = greedy(prompt);
  req.cancel = &cancel;
  int deltas = 0;
  auto r = engine->generate(*session, req, [&](const ds4::TokenDelta&) {
    if (++deltas == 2) cancel.store(true);
    return true;
  });
  REQUIRE(r.ok());
  CHECK(r->finish_reason == ds4::FinishReason::kCancelled);
  CHECK(r->completion_tokens == 2);
  CHECK(session->size() == static_cast<int32_t>(prompt.size()) + 1);

  const auto again = run(*engine, *session, greedy(prompt));
  CHECK(again.reused_tokens == static_cast<int32_t>(prompt.size()) - 1);
  CHECK(again.text.find("Tokyo") != std::string::npos);
}

TEST_CASE("context overflow names the prompt, max_tokens and context sizes") {
  auto engine = load_engine(512, 64);
  const std::vector<int32_t> prompt = question(engine->tokenizer(), "What is the capital of Italy?");
  auto session = new_session(*engine);
  const int32_t n = static_cast<int32_t>(prompt.size());
  auto r = engine->generate(*session, greedy(prompt, 64), nullptr);
  REQUIRE_FALSE(r.ok());
  const std::string& msg = r.status().message();
  CHECK(msg.find(std::to_string(n)) != std::string::npos);
  CHECK(msg.find("64") != std::string::npos);
  CHECK(msg.find("overflow") != std::string::npos);
  // What fits still runs.
  const auto ok = run(*engine, *session, greedy(prompt, 64 - n));
  CHECK(ok.text.find("Rome") != std::string::npos);
}

TEST_CASE("seeded sampling is reproducible") {
  auto engine = load_engine();
  const std::vector<int32_t> prompt = question(engine->tokenizer(), "What color is the sky?");
  ds4::GenerateRequest req = greedy(prompt, 24);
  req.sampling.temperature = 1.5f;
  req.sampling.min_p = 0.0f;
  req.sampling.seed = 42;
  auto s1 = new_session(*engine);
  auto s2 = new_session(*engine);
  const auto a = run(*engine, *s1, req);
  const auto b = run(*engine, *s2, req);
  CHECK(a.output_ids == b.output_ids);
  CHECK_FALSE(a.output_ids.empty());
}

TEST_CASE("MTP speculative decoding on the CPU backend gives the plain greedy tokens") {
  // tiny-fast has random weights: drafts are almost always rejected, which
  // exercises the verification and rollback path on the real forward pass.
  const std::vector<int32_t> prompt = {0, 17, 250, 33, 981, 4, 77, 512, 9, 300};
  ds4::EngineOptions options;
  options.model_path = data_path("tiny-fast/model.gguf");
  options.backend = ds4::BackendKind::kCpu;
  options.ctx = 512;
  auto plain = ds4::Engine::Load(options);
  REQUIRE_MESSAGE(plain.ok(), plain.status().message());
  options.mtp_path = data_path("tiny-fast/mtp.gguf");
  options.mtp_draft = 3;
  auto spec = ds4::Engine::Load(options);
  REQUIRE_MESSAGE(spec.ok(), spec.status().message());
  REQUIRE((*spec)->speculative_enabled());
  CHECK_FALSE((*plain)->speculative_enabled());

  auto s1 = new_session(**plain);
  auto s2 = new_session(**spec);
  const auto a = run(**plain, *s1, greedy(prompt, 40));
  const auto b = run(**spec, *s2, greedy(prompt, 40));
  CHECK(a.output_ids == b.output_ids);
  CHECK(a.output_ids.size() == 40);
  CHECK(b.draft_tokens > 0);
  CHECK(s2->size() == s1->size());
  // The state kept after speculation serves a follow-up turn like the plain one.
  std::vector<int32_t> next = prompt;
  next.insert(next.end(), a.output_ids.begin(), a.output_ids.end());
  next.push_back(5);
  const auto c = run(**plain, *s1, greedy(next, 16));
  const auto d = run(**spec, *s2, greedy(next, 16));
  CHECK(c.reused_tokens == d.reused_tokens);
  CHECK(c.output_ids == d.output_ids);
}
