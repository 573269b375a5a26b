// Engine / generation-loop behaviour with a scripted backend: the next token is a
// function of the sequence's whole history, so any mistake in KV reuse, truncation
// or positions changes the output. Covers KV reuse, chunked prefill, EOS, max_tokens,
// stop strings, UTF-8-complete deltas, cancellation and context overflow. The real
// forward pass is exercised in generation_test.cpp and paris_test.cpp.
#include <doctest/doctest.h>

#include <algorithm>
#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "format/gguf.h"
#include "model/model.h"
#include "runtime/bench.h"
#include "runtime/engine.h"
#include "text/tokenizer.h"
#include "scripted_backend.h"

namespace {

using ds4::BatchToken;
using ds4::ForwardOutput;
using ds4::SeqId;

using ds4::test::hash_script;
using ds4::test::load_tokenizer;
using ds4::test::Script;
using ds4::test::ScriptedBackend;

struct Fixture {
  explicit Fixture(Script script = hash_script, int32_t ctx = 256, int32_t chunk = 512,
                   int32_t mtp_draft = 0) {
    auto tok = load_tokenizer();
    vocab = tok->vocab_size();
    eos = tok->eos();
    auto b = std::make_unique<ScriptedBackend>(vocab, std::move(script));
    backend = b.get();
    ds4::EngineOptions options;
    options.ctx = ctx;
    options.prefill_chunk = chunk;
    options.mtp_draft = mtp_draft;
    backend->mtp_enabled = mtp_draft > 0;
    engine = ds4::Engine::FromParts(options, nullptr, std::move(tok), std::move(b));
  }
  std::unique_ptr<ds4::Session> session() {
    auto s = engine->new_session();
    REQUIRE(s.ok());
    return std::move(*s);
  }
  std::unique_ptr<ds4::Engine> engine;
  ScriptedBackend* backend = nullptr;
  int32_t vocab = 0, eos = 1;
};

ds4::GenerateRequest greedy(std::vector<int32_t> prompt, int32_t max_tokens) {
  ds4::GenerateRequest r;
  r.prompt = std::move(prompt);
  r.sampling.temperature = 0.0f;
  r.max_tokens = max_tokens;
  return r;
}

std::vector<int32_t> iota_prompt(int32_t n, int32_t first = 200) {
  std::vector<int32_t> p;
  for (int32_t i = 0; i < n; ++i) p.push_back(first + (i * 7) % 500);
  return p;
}

ds4::GenerateResult run(Fixture& f, ds4::Session& s, const ds4::GenerateRequest& r,
                        std::vector<std::vector<int32_t>>* id_groups = nullptr,
                        std::string* streamed = nullptr) {
  auto res = f.engine->generate(s, r, [&](const ds4::TokenDelta& d) {
    if (id_groups) id_groups->emplace_back(d.token_ids.begin(), d.token_ids.end());
    if (streamed) *streamed += d.text;
    return true;
  });
  REQUIRE_MESSAGE(res.ok(), res.status().message());
  return std::move(*res);
}

}  // namespace

TEST_CASE("greedy generation follows the script and stops at max_tokens") {
  Fixture f;
  auto s = f.session();
  const auto prompt = iota_prompt(20);
  auto r = run(f, *s, greedy(prompt, 8));
  CHECK(r.finish_reason == ds4::FinishReason::kLength);
  CHECK(r.completion_tokens == 8);
  REQUIRE(r.output_ids.size() == 8);
  std::vector<int32_t> h = prompt;
  for (int32_t id : r.output_ids) {
    CHECK(id == hash_script(h));
    h.push_back(id);
  }
  // The last sampled token is not fed; everything else is.
  CHECK(s->size() == 20 + 7);
  CHECK(f.backend->tokens_fed == 27);
  CHECK(r.prompt_tokens == 20);
  CHECK(r.reused_tokens == 0);
}

TEST_CASE("prefill runs in chunks and asks logits only for the last prompt token") {
  Fixture f(hash_script, 256, 7);
  auto s = f.session();
  auto r = run(f, *s, greedy(iota_prompt(30), 1));
  CHECK(r.completion_tokens == 1);
  CHECK(f.backend->forward_calls == 5);  // 7 + 7 + 7 + 7 + 2
  CHECK(f.backend->max_batch_seen == 7);
  CHECK(f.backend->logits_requested == 1);
  // The same answer as a single-chunk prefill.
  Fixture g(hash_script, 256, 512);
  auto s2 = g.session();
  auto r2 = run(g, *s2, greedy(iota_prompt(30), 1));
  CHECK(r.output_ids == r2.output_ids);
  CHECK(g.backend->forward_calls == 1);
}

TEST_CASE("a prompt extending the session reuses its state and prefills only the suffix") {
  Fixture f;
  auto s = f.session();
  const auto p1 = iota_prompt(40);
  auto r1 = run(f, *s, greedy(p1, 6));
  std::vector<int32_t> p2 = p1;
  p2.insert(p2.end(), r1.output_ids.begin(), r1.output_ids.end());
  for (int32_t t : iota_prompt(12, 700)) p2.push_back(t);
  const int32_t held = s->size();
  CHECK(held == 40 + 5);
  const int64_t fed_before = f.backend->tokens_fed;
  auto r2 = run(f, *s, greedy(p2, 6));
  CHECK(r2.reused_tokens == held);
  CHECK(r2.prompt_tokens == static_cast<int32_t>(p2.size()));
  // Only the suffix (the unfed last reply token + 12 new) plus 5 decode steps.
  CHECK(f.backend->tokens_fed - fed_before == (static_cast<int64_t>(p2.size()) - held) + 5);

  Fixture fresh;
  auto s2 = fresh.session();
  auto r3 = run(fresh, *s2, greedy(p2, 6));
  CHECK(r3.reused_tokens == 0);
  CHECK(r3.output_ids == r2.output_ids);
}

TEST_CASE("a repeated prompt re-feeds only its last token") {
  Fixture f;
  auto s = f.session();
  const auto p = iota_prompt(25);
  auto r1 = run(f, *s, greedy(p, 1));  // holds exactly the prompt afterwards
  CHECK(s->size() == 25);
  const int64_t fed_before = f.backend->tokens_fed;
  auto r2 = run(f, *s, greedy(p, 1));
  CHECK(r2.reused_tokens == 24);
  CHECK(f.backend->tokens_fed - fed_before == 1);
  CHECK(r1.output_ids == r2.output_ids);
}

TEST_CASE("a diverging prompt rolls back to the common prefix or resets") {
  SUBCASE("close divergence: truncate to the common prefix") {
    Fixture f;
    auto s = f.session();
    const auto p = iota_prompt(30);
    run(f, *s, greedy(p, 1));
    auto p2 = p;
    p2[27] = 999;  // diverges 3 tokens before the end: within the rollback limit
    auto r = run(f, *s, greedy(p2, 3));
    CHECK(r.reused_tokens == 27);
    Fixture fresh;
    auto s2 = fresh.session();
    CHECK(run(fresh, *s2, greedy(p2, 3)).output_ids == r.output_ids);
  }
  SUBCASE("far divergence: reset and prefill from token zero") {
    Fixture f;
    auto s = f.session();
    const auto p = iota_prompt(60);
    run(f, *s, greedy(p, 1));
    auto p2 = p;
    p2[5] = 999;
    auto r = run(f, *s, greedy(p2, 3));
    CHECK(r.reused_tokens == 0);
    Fixture fresh;
    auto s2 = fresh.session();
    CHECK(run(fresh, *s2, greedy(p2, 3)).output_ids == r.output_ids);
  }
}

TEST_CASE("EOS ends the generation, is reported in output_ids and never streamed") {
  Fixture probe;
  const int32_t eos = probe.eos;
  // Three text tokens, then EOS.
  Fixture f([eos](const std::vector<int32_t>& h) { return h.size() >= 13 ? eos : 300 + static_cast<int32_t>(h.size()); });
  auto s = f.session();
  std::vector<std::vector<int32_t>> groups;
  auto r = run(f, *s, greedy(iota_prompt(10), 50), &groups);
  CHECK(r.finish_reason == ds4::FinishReason::kStop);
  CHECK(r.completion_tokens == 3);
  REQUIRE(r.output_ids.size() == 4);
  CHECK(r.output_ids.back() == eos);
  std::vector<int32_t> streamed;
  for (auto& g : groups) streamed.insert(streamed.end(), g.begin(), g.end());
  CHECK(streamed == std::vector<int32_t>(r.output_ids.begin(), r.output_ids.end() - 1));
}

TEST_CASE("stop strings cut the text at the earliest match and stop") {
  auto tok = load_tokenizer();
  const std::vector<int32_t> text_ids = tok->encode(" Paris is the capital. More text follows here.");
  REQUIRE(text_ids.size() > 4);
  const size_t base = 10;
  Fixture f([text_ids](const std::vector<int32_t>& h) {
    const size_t i = h.size() - 10;
    return i < text_ids.size() ? text_ids[i] : text_ids.back();
  });
  auto s = f.session();
  auto req = greedy(iota_prompt(base), 100);
  req.stop = {"capital", "follows"};
  std::string streamed;
  auto r = run(f, *s, req, nullptr, &streamed);
  CHECK(r.finish_reason == ds4::FinishReason::kStop);
  CHECK(streamed == " Paris is the ");
  CHECK(r.text == streamed);
  CHECK(r.completion_tokens < static_cast<int32_t>(text_ids.size()));
}

TEST_CASE("a character split over two tokens is streamed whole, its ids ride together") {
  auto tok = load_tokenizer();
  // GPT-2 byte alphabet: byte 0xC3 is "Ã" (U+00C3), byte 0xA9 is "©" (U+00A9): "é".
  auto lead = tok->find_token("\xC3\x83");
  auto cont = tok->find_token("\xC2\xA9");
  REQUIRE(lead.has_value());
  REQUIRE(cont.has_value());
  const int32_t a = *tok->find_token("a");
  const std::vector<int32_t> script_ids = {a, *lead, *cont, a};
  Fixture f([script_ids](const std::vector<int32_t>& h) {
    const size_t i = h.size() - 5;
    return script_ids[std::min(i, script_ids.size() - 1)];
  });
  auto s = f.session();
  std::vector<std::vector<int32_t>> groups;
  std::string streamed;
  auto r = run(f, *s, greedy(iota_prompt(5), 4), &groups, &streamed);
  CHECK(streamed == "a\xC3\xA9" "a");
  REQUIRE(groups.size() == 3);
  CHECK(groups[0] == std::vector<int32_t>{a});
  CHECK(groups[1] == std::vector<int32_t>{*lead, *cont});
  CHECK(groups[2] == std::vector<int32_t>{a});
  CHECK(r.completion_tokens == 4);
}

TEST_CASE("cancellation") {
  SUBCASE("the cancel flag stops decoding") {
    Fixture f;
    auto s = f.session();
    std::atomic<bool> cancel{false};
    auto req = greedy(iota_prompt(10), 100);
    req.cancel = &cancel;
    int deltas = 0;
    auto r = f.engine->generate(*s, req, [&](const ds4::TokenDelta&) {
      if (++deltas == 3) cancel.store(true);
      return true;
    });
    REQUIRE(r.ok());
    CHECK(r->finish_reason == ds4::FinishReason::kCancelled);
    CHECK(r->completion_tokens == 3);
    CHECK(s->size() == 10 + 2);
  }
  SUBCASE("the sink returning false stops decoding") {
    Fixture f;
    auto s = f.session();
    int deltas = 0;
    auto r = f.engine->generate(*s, greedy(iota_prompt(10), 100), [&](const ds4::TokenDelta&) {
      return ++deltas < 2;
    });
    REQUIRE(r.ok());
    CHECK(r->finish_reason == ds4::FinishReason::kCancelled);
    CHECK(r->completion_tokens == 2);
  }
  SUBCASE("cancel during prefill stops between chunks and keeps the session consistent") {
    Fixture f(hash_script, 256, 8);
    auto s = f.session();
    std::atomic<bool> cancel{false};
    f.backend->after_forward = [&] { cancel.store(true); };
    auto req = greedy(iota_prompt(40), 10);
    req.cancel = &cancel;
    auto r = f.engine->generate(*s, req, nullptr);
    REQUIRE(r.ok());
    CHECK(r->finish_reason == ds4::FinishReason::kCancelled);
    CHECK(r->output_ids.empty());
    CHECK(s->size() == 8);
    CHECK(f.backend->sequence_length(0) == 8);
    // The next request continues from the kept chunk.
    f.backend->after_forward = nullptr;
    auto again = run(f, *s, greedy(iota_prompt(40), 2));
    CHECK(again.reused_tokens == 8);
  }
}

TEST_CASE("context overflow is an error carrying the numbers") {
  Fixture f(hash_script, 128);
  auto s = f.session();
  auto r = f.engine->generate(*s, greedy(iota_prompt(100), 50), nullptr);
  REQUIRE_FALSE(r.ok());
  const std::string& msg = r.status().message();
  CHECK(msg.find("100") != std::string::npos);
  CHECK(msg.find("50") != std::string::npos);
  CHECK(msg.find("128") != std::string::npos);
  CHECK(f.backend->tokens_fed == 0);
  // max_tokens -1 fills the context exactly.
  auto full = run(f, *s, greedy(iota_prompt(100), -1));
  CHECK(full.completion_tokens == 28);
  CHECK(full.finish_reason == ds4::FinishReason::kLength);
}

TEST_CASE("bad requests are rejected with a clear error") {
  Fixture f;
  auto s = f.session();
  auto empty = f.engine->generate(*s, greedy({}, 4), nullptr);
  REQUIRE_FALSE(empty.ok());
  CHECK(empty.status().message().find("empty") != std::string::npos);
  auto bad = f.engine->generate(*s, greedy({5, f.vocab + 3}, 4), nullptr);
  REQUIRE_FALSE(bad.ok());
  CHECK(bad.status().message().find(std::to_string(f.vocab + 3)) != std::string::npos);
}

TEST_CASE("a backend failure is reported and the session stays consistent") {
  Fixture f;
  auto s = f.session();
  f.backend->fail_next_forward = true;
  auto r = f.engine->generate(*s, greedy(iota_prompt(10), 4), nullptr);
  REQUIRE_FALSE(r.ok());
  CHECK(r.status().message().find("injected failure") != std::string::npos);
  CHECK(s->size() == 0);
  auto ok = run(f, *s, greedy(iota_prompt(10), 4));
  CHECK(ok.completion_tokens == 4);
}

TEST_CASE("timings and speeds are filled in") {
  Fixture f;
  auto s = f.session();
  auto r = run(f, *s, greedy(iota_prompt(10), 5));
  CHECK(r.ttft_seconds >= r.prefill_seconds);
  CHECK(r.decode_seconds >= 0.0);
  CHECK(ds4::finish_reason_name(ds4::FinishReason::kLength) == "length");
  CHECK(ds4::finish_reason_name(ds4::FinishReason::kStop) == "stop");
  CHECK(ds4::finish_reason_name(ds4::FinishReason::kCancelled) == "cancelled");
}

// --- MTP speculative decoding -------------------------------------------------------

namespace {

// Plain greedy decoding of the same request, for comparison.
ds4::GenerateResult plain_greedy(Script script, const ds4::GenerateRequest& req, std::string* text = nullptr) {
  Fixture f(std::move(script));
  auto s = f.session();
  return run(f, *s, req, nullptr, text);
}

}  // namespace

TEST_CASE("speculative decoding with perfect drafts gives the greedy tokens in fewer passes") {
  const auto req = greedy(iota_prompt(12), 40);
  const auto want = plain_greedy(hash_script, req);
  Fixture f(hash_script, 256, 512, 4);
  REQUIRE(f.engine->speculative_enabled());
  auto s = f.session();
  const int64_t calls_before = f.backend->forward_calls;
  const auto got = run(f, *s, req);
  CHECK(got.output_ids == want.output_ids);
  CHECK(got.text == want.text);
  CHECK(got.draft_tokens > 0);
  CHECK(got.accepted_draft_tokens == got.draft_tokens);
  // 1 prefill + rounds of (1 + 4 drafts accepted) tokens: 40 tokens in 8 rounds.
  CHECK(f.backend->forward_calls - calls_before == 1 + 8);
  CHECK(s->size() == 12 + 40 - 1);
  CHECK(f.backend->sequence_length(0) == s->size());
}

TEST_CASE("speculative decoding with wrong drafts rolls back and still matches greedy") {
  const auto req = greedy(iota_prompt(12), 50);
  const auto want = plain_greedy(hash_script, req);
  for (int every : {2, 3, 5}) {
    CAPTURE(every);
    Fixture f(hash_script, 256, 512, 5);
    f.backend->mtp_wrong = [every](int32_t pos) { return pos % every == 0; };
    auto s = f.session();
    const auto got = run(f, *s, req);
    CHECK(got.output_ids == want.output_ids);
    CHECK(got.accepted_draft_tokens < got.draft_tokens);
    CHECK(got.accepted_draft_tokens > 0);
    CHECK(f.backend->truncations > 0);
    CHECK(s->size() == 12 + 50 - 1);
    CHECK(f.backend->sequence_length(0) == s->size());
    // The kept state is right: a follow-up turn decodes like a fresh session.
    auto next = req.prompt;
    next.insert(next.end(), got.output_ids.begin(), got.output_ids.end());
    for (int32_t t : iota_prompt(5, 900)) next.push_back(t);
    const auto cont = run(f, *s, greedy(next, 20));
    CHECK(cont.reused_tokens == 12 + 50 - 1);
    CHECK(cont.output_ids == plain_greedy(hash_script, greedy(next, 20)).output_ids);
  }
}

TEST_CASE("after rejected drafts the draft length shrinks to one") {
  const auto req = greedy(iota_prompt(12), 20);
  Fixture f(hash_script, 256, 512, 5);
  f.backend->mtp_wrong = [](int32_t) { return true; };
  auto s = f.session();
  const auto got = run(f, *s, req);
  CHECK(got.output_ids == plain_greedy(hash_script, req).output_ids);
  CHECK(got.accepted_draft_tokens == 0);
  // Round 1 drafts 5; the next 17 rounds draft 1 each; the last round has no budget
  // left for a draft (19 rounds after the first token).
  CHECK(got.draft_tokens == 5 + 17);
}

TEST_CASE("speculative decoding stops exactly at EOS, max_tokens and stop strings") {
  Fixture probe;
  const int32_t eos = probe.eos;
  SUBCASE("EOS inside an accepted run of drafts") {
    Script script = [eos](const std::vector<int32_t>& h) {
      return h.size() >= 20 ? eos : 300 + static_cast<int32_t>(h.size());
    };
    const auto req = greedy(iota_prompt(10), 50);
    const auto want = plain_greedy(script, req);
    Fixture f(script, 256, 512, 6);
    auto s = f.session();
    const auto got = run(f, *s, req);
    CHECK(got.output_ids == want.output_ids);
    CHECK(got.output_ids.back() == eos);
    CHECK(got.finish_reason == ds4::FinishReason::kStop);
    CHECK(s->size() == 10 + static_cast<int32_t>(got.output_ids.size()) - 1);
    CHECK(f.backend->sequence_length(0) == s->size());
  }
  SUBCASE("max_tokens inside an accepted run of drafts") {
    const auto req = greedy(iota_prompt(10), 7);
    Fixture f(hash_script, 256, 512, 4);
    auto s = f.session();
    const auto got = run(f, *s, req);
    CHECK(got.output_ids == plain_greedy(hash_script, req).output_ids);
    CHECK(got.output_ids.size() == 7);
    CHECK(got.finish_reason == ds4::FinishReason::kLength);
    CHECK(f.backend->sequence_length(0) == 10 + 6);
  }
  SUBCASE("a stop string completed by an accepted draft") {
    auto tok = load_tokenizer();
    const std::vector<int32_t> text_ids = tok->encode(" one two three four five six seven eight");
    Script script = [text_ids](const std::vector<int32_t>& h) {
      const size_t i = h.size() - 10;
      return i < text_ids.size() ? text_ids[i] : text_ids.back();
    };
    auto req = greedy(iota_prompt(10), 30);
    req.stop = {"four"};
    std::string want_text, got_text;
    const auto want = plain_greedy(script, req, &want_text);
    Fixture f(script, 256, 512, 8);
    auto s = f.session();
    const auto got = run(f, *s, req, nullptr, &got_text);
    CHECK(got_text == " one two three ");
    CHECK(got_text == want_text);
    CHECK(got.output_ids == want.output_ids);
    CHECK(f.backend->sequence_length(0) == 10 + static_cast<int32_t>(got.output_ids.size()) - 1);
  }
}

TEST_CASE("sampling with temperature does not use MTP drafts") {
  Fixture f(hash_script, 256, 512, 4);
  auto s = f.session();
  auto req = greedy(iota_prompt(10), 10);
  req.sampling.temperature = 0.7f;
  req.sampling.seed = 7;
  const auto r = run(f, *s, req);
  CHECK(r.draft_tokens == 0);
  CHECK(f.backend->mtp_calls == 0);
  CHECK(r.output_ids.size() == 10);
}

// --- ds4-bench measurement -------------------------------------------------------------

TEST_CASE("run_bench feeds depth, prompt and decode tokens as llama-benchy defines them") {
  ScriptedBackend backend(1000, hash_script);
  ds4::BenchParams p;
  p.pp = 10;
  p.tg = 5;
  p.depths = {0, 7};
  p.chunk = 4;
  p.repetitions = 2;
  p.warmup = false;
  auto rows = ds4::run_bench(backend, 1000, p);
  REQUIRE_MESSAGE(rows.ok(), rows.status().message());
  REQUIRE(rows->size() == 2);
  CHECK((*rows)[0].depth == 0);
  CHECK((*rows)[1].depth == 7);
  for (const ds4::BenchRow& r : *rows) {
    CHECK(r.pp == 10);
    CHECK(r.tg == 5);
    CHECK(r.runs == 2);
    CHECK(r.pp_tps > 0);
    CHECK(r.tg_tps > 0);
    CHECK(r.ttft_ms > 0);
  }
  // Per measurement: depth in chunks of 4, pp in chunks of 4, then tg - 1 decode steps
  // (the first generated token comes from the prefill logits).
  const int64_t per_d0 = 0 + 3 + 4, per_d7 = 2 + 3 + 4;
  CHECK(backend.forward_calls == 2 * per_d0 + 2 * per_d7);
  CHECK(backend.tokens_fed == 2 * (0 + 10 + 4) + 2 * (7 + 10 + 4));
  CHECK(backend.logits_requested == 2 * 2 * (1 + 4));
  CHECK(backend.live_sequences() == 0);

  ds4::BenchTarget target;
  target.model_name = "tiny, \"quoted\"";
  target.backend_name = "scripted";
  const std::string csv = ds4::bench_csv(target, 2, *rows);
  CHECK(csv.rfind("model,backend,threads,pp,tg,depth,runs,pp_tps,", 0) == 0);
  CHECK(csv.find("\"tiny, \"\"quoted\"\"\",scripted,2,10,5,0,2,") != std::string::npos);
  CHECK(csv.find(",10,5,7,2,") != std::string::npos);
  const std::string table = ds4::bench_table(target, *rows);
  CHECK(table.find("pp10+tg5 @ d7") != std::string::npos);
}

TEST_CASE("run_bench rejects impossible parameters and reports backend failures") {
  ScriptedBackend backend(1000, hash_script);
  ds4::BenchParams p;
  p.warmup = false;
  p.pp = 0;
  auto r = ds4::run_bench(backend, 1000, p);
  REQUIRE_FALSE(r.ok());
  CHECK(r.status().message().find("--pp") != std::string::npos);
  p.pp = 8;
  p.tg = 0;
  CHECK_FALSE(ds4::run_bench(backend, 1000, p).ok());
  p.tg = 2;
  p.depths = {-1};
  CHECK_FALSE(ds4::run_bench(backend, 1000, p).ok());
  p.depths = {3};
  backend.fail_next_forward = true;
  auto failed = ds4::run_bench(backend, 1000, p);
  REQUIRE_FALSE(failed.ok());
  CHECK(failed.status().message().find("depth 3") != std::string::npos);
  CHECK(failed.status().message().find("injected failure") != std::string::npos);
  CHECK(backend.live_sequences() == 0);
}

#if !defined(DS4_HAVE_CUDA)
// (With CUDA the hook builds full-size weights: not something for a unit test.)
TEST_CASE("--synthetic full names the CUDA backend when this build cannot provide it") {
  auto target = ds4::make_synthetic_full_target(ds4::BackendOptions{});
  REQUIRE_FALSE(target.ok());
  CHECK(target.status().message().find("CUDA") != std::string::npos);
}
#endif
