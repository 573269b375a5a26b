// BatchScheduler: several generations at once on one Engine.
//  * With a scripted backend (the next token is a function of the sequence's whole
//    history, so a token fed to the wrong sequence or position changes the output):
//    batch composition (one decode token per decoding generation per forward call,
//    at most one prefill chunk per step, interleaved with decode), session choice
//    (longest reusable prefix, else least recently used), cancellation freeing the
//    session within one step, per-generation failures, MTP when alone.
//  * With the tiny trained chat model on the CPU backend: the backend computes each
//    token of a batch exactly as alone (bit for bit), and concurrent generations
//    (greedy and seeded sampling) give token for token what each gives alone.
#include <doctest/doctest.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "format/gguf.h"
#include "model/model.h"
#include "runtime/batch_scheduler.h"
#include "runtime/engine.h"
#include "runtime/generator.h"
#include "text/tokenizer.h"
#include "scripted_backend.h"

namespace {

using ds4::BatchScheduler;
using ds4::BatchToken;
using ds4::ForwardOutput;
using ds4::GenerateRequest;
using ds4::GenerateResult;
using ds4::SeqId;

using ds4::test::data_path;
using ds4::test::hash_script;
using ds4::test::load_tokenizer;
using ds4::test::ScriptedBackend;

struct Scripted {
  explicit Scripted(int32_t chunk = 512, int32_t ctx = 256, int32_t mtp_draft = 0) {
    auto tok = load_tokenizer();
    auto b = std::make_unique<ScriptedBackend>(tok->vocab_size());
    backend = b.get();
    backend->mtp_enabled = mtp_draft > 0;
    ds4::EngineOptions options;
    options.ctx = ctx;
    options.prefill_chunk = chunk;
    options.mtp_draft = mtp_draft;
    engine = ds4::Engine::FromParts(options, nullptr, std::move(tok), std::move(b));
  }
  std::unique_ptr<ds4::Engine> engine;
  ScriptedBackend* backend = nullptr;
};

GenerateRequest greedy(std::vector<int32_t> prompt, int32_t max_tokens) {
  GenerateRequest r;
  r.prompt = std::move(prompt);
  r.sampling.temperature = 0.0f;
  r.max_tokens = max_tokens;
  return r;
}

std::vector<int32_t> iota_prompt(int32_t n, int32_t first) {
  std::vector<int32_t> p;
  for (int32_t i = 0; i < n; ++i) p.push_back(first + (i * 7) % 500);
  return p;
}

// What one submitted request got back.
struct Outcome {
  std::optional<ds4::Result<GenerateResult>> result;
  std::string streamed;
  std::vector<int32_t> streamed_ids;
  bool done() const { return result.has_value(); }
  const GenerateResult& ok() const {
    REQUIRE(result.has_value());
    REQUIRE_MESSAGE(result->ok(), result->status().message());
    return result->value();
  }
};

void submit(BatchScheduler& scheduler, GenerateRequest request, Outcome* outcome) {
  ds4::Status s = scheduler.submit(
      std::move(request),
      [outcome](const ds4::TokenDelta& d) {
        outcome->streamed += d.text;
        outcome->streamed_ids.insert(outcome->streamed_ids.end(), d.token_ids.begin(), d.token_ids.end());
        return true;
      },
      [outcome](ds4::Result<GenerateResult> r) {
        REQUIRE_FALSE(outcome->done());  // done is called once
        outcome->result = std::move(r);
      });
  REQUIRE_MESSAGE(s.ok(), s.message());
}

// Steps until nothing is active (bounded); returns the step reports.
std::vector<ds4::SchedulerStep> run_to_end(BatchScheduler& scheduler, int max_steps = 10000) {
  std::vector<ds4::SchedulerStep> steps;
  while (scheduler.active() > 0 && static_cast<int>(steps.size()) < max_steps) steps.push_back(scheduler.step());
  REQUIRE(scheduler.active() == 0);
  return steps;
}

// generate() alone on a fresh engine of the same kind.
GenerateResult alone(Scripted& fresh, const GenerateRequest& request, std::string* streamed = nullptr) {
  auto session = fresh.engine->new_session();
  REQUIRE(session.ok());
  auto r = fresh.engine->generate(**session, request, [&](const ds4::TokenDelta& d) {
    if (streamed) *streamed += d.text;
    return true;
  });
  REQUIRE_MESSAGE(r.ok(), r.status().message());
  return std::move(*r);
}

std::set<SeqId> seqs_of(const std::vector<BatchToken>& batch) {
  std::set<SeqId> s;
  for (const BatchToken& t : batch) s.insert(t.seq);
  return s;
}

std::unique_ptr<BatchScheduler> make_scheduler(ds4::Engine& engine, int32_t parallel) {
  auto s = BatchScheduler::Create(&engine, parallel);
  REQUIRE_MESSAGE(s.ok(), s.status().message());
  return std::move(*s);
}

}  // namespace

TEST_CASE("scripted: each decode forward carries one token of every decoding generation") {
  Scripted f;
  auto scheduler = make_scheduler(*f.engine, 3);
  std::vector<GenerateRequest> requests = {greedy(iota_prompt(12, 200), 9), greedy(iota_prompt(5, 300), 14),
                                           greedy(iota_prompt(20, 400), 6)};
  std::vector<Outcome> outcomes(requests.size());
  for (size_t i = 0; i < requests.size(); ++i) submit(*scheduler, requests[i], &outcomes[i]);
  CHECK_FALSE(scheduler->has_room());

  int batched_steps = 0, max_sequences = 0;
  while (scheduler->active() > 0) {
    const size_t calls_before = f.backend->calls.size();
    const ds4::SchedulerStep step = scheduler->step();
    const std::vector<std::vector<BatchToken>> calls(f.backend->calls.begin() + calls_before, f.backend->calls.end());
    INFO("step " << batched_steps << ": prefill " << step.prefill_tokens << " tokens, decode "
                 << step.decode_sequences << " sequences, " << calls.size() << " forward calls");
    REQUIRE(calls.size() <= 2);  // at most one prefill chunk + one decode call
    size_t next = 0;
    if (step.prefill_tokens > 0) {
      const auto& chunk = calls[next++];
      CHECK(static_cast<int32_t>(chunk.size()) == step.prefill_tokens);
      CHECK(seqs_of(chunk).size() == 1);  // one generation's chunk
      for (size_t i = 0; i + 1 < chunk.size(); ++i) CHECK_FALSE(chunk[i].want_logits);
    }
    if (step.decode_sequences > 0) {
      REQUIRE(next < calls.size());
      const auto& decode = calls[next++];
      CHECK(static_cast<int32_t>(decode.size()) == step.decode_sequences);
      CHECK(seqs_of(decode).size() == decode.size());  // one token per sequence
      for (const BatchToken& t : decode) CHECK(t.want_logits);
      max_sequences = std::max(max_sequences, step.decode_sequences);
      if (step.decode_sequences > 1) ++batched_steps;
    }
    CHECK(next == calls.size());
    REQUIRE(batched_steps < 1000);
  }
  CHECK(max_sequences == 3);
  CHECK(batched_steps >= 4);

  // Each equals generate() alone: tokens, text, counts.
  for (size_t i = 0; i < requests.size(); ++i) {
    Scripted fresh;
    std::string streamed;
    const GenerateResult expected = alone(fresh, requests[i], &streamed);
    const GenerateResult& got = outcomes[i].ok();
    INFO("request " << i);
    CHECK(got.output_ids == expected.output_ids);
    CHECK(got.text == expected.text);
    CHECK(outcomes[i].streamed == streamed);
    CHECK(got.completion_tokens == expected.completion_tokens);
    CHECK(got.prompt_tokens == expected.prompt_tokens);
    CHECK(got.finish_reason == ds4::FinishReason::kLength);
    CHECK(got.decode_steps == static_cast<int32_t>(got.output_ids.size()) - 1);
    CHECK(got.mean_decode_batch() > 1.0);
  }
}

TEST_CASE("scripted: a long prompt is prefilled one chunk per step while others keep decoding") {
  Scripted f(/*chunk=*/8);
  auto scheduler = make_scheduler(*f.engine, 2);
  Outcome running, long_prompt;
  submit(*scheduler, greedy(iota_prompt(4, 200), 40), &running);
  for (int i = 0; i < 3; ++i) scheduler->step();  // prefilled, decoding
  submit(*scheduler, greedy(iota_prompt(41, 300), 3), &long_prompt);
  const std::vector<int32_t> expected_chunks = {8, 8, 8, 8, 8, 1};
  for (size_t i = 0; i < expected_chunks.size(); ++i) {
    const ds4::SchedulerStep step = scheduler->step();
    INFO("step " << i << ": prefill " << step.prefill_tokens << ", decode " << step.decode_sequences);
    CHECK(step.prefill_tokens == expected_chunks[i]);
    // The running generation streamed a token in every one of these steps (and the
    // new one joins the decode in the step that ends its prefill).
    CHECK(step.decode_sequences == (i + 1 == expected_chunks.size() ? 2 : 1));
  }
  CHECK(running.streamed_ids.size() >= expected_chunks.size());
  run_to_end(*scheduler);
  Scripted fresh1, fresh2;
  CHECK(running.ok().output_ids == alone(fresh1, greedy(iota_prompt(4, 200), 40)).output_ids);
  CHECK(long_prompt.ok().output_ids == alone(fresh2, greedy(iota_prompt(41, 300), 3)).output_ids);
}

TEST_CASE("scripted: a cancelled generation frees its session within one step") {
  Scripted f;
  auto scheduler = make_scheduler(*f.engine, 2);
  std::atomic<bool> cancel_a{false};
  GenerateRequest a = greedy(iota_prompt(6, 200), 100);
  a.cancel = &cancel_a;
  Outcome out_a, out_b, out_c;
  submit(*scheduler, a, &out_a);
  submit(*scheduler, greedy(iota_prompt(6, 300), 100), &out_b);
  for (int i = 0; i < 5; ++i) scheduler->step();
  // A's sequence: the one its prefill used.
  const SeqId seq_a = f.backend->calls.front().front().seq;
  CHECK_FALSE(scheduler->has_room());
  cancel_a = true;
  const ds4::SchedulerStep step = scheduler->step();
  CHECK(step.finished == 1);
  REQUIRE(out_a.done());
  CHECK(out_a.ok().finish_reason == ds4::FinishReason::kCancelled);
  CHECK(out_a.ok().completion_tokens < 100);
  CHECK(scheduler->has_room());
  // The next generation runs on A's session (B's is busy).
  submit(*scheduler, greedy(iota_prompt(6, 400), 5), &out_c);
  const size_t before = f.backend->calls.size();
  scheduler->step();
  REQUIRE(f.backend->calls.size() > before);
  CHECK(f.backend->calls[before].front().seq == seq_a);
  run_to_end(*scheduler);
  CHECK(out_b.ok().completion_tokens == 100);
  Scripted fresh;
  CHECK(out_c.ok().output_ids == alone(fresh, greedy(iota_prompt(6, 400), 5)).output_ids);
}

TEST_CASE("scripted: a new request takes the session it can reuse the most of, else the least recently used") {
  Scripted f;
  auto scheduler = make_scheduler(*f.engine, 3);
  Outcome first, second, third;
  const auto p1 = iota_prompt(10, 200), p2 = iota_prompt(10, 300), p3 = iota_prompt(10, 400);
  submit(*scheduler, greedy(p1, 4), &first);
  run_to_end(*scheduler);
  const SeqId seq_1 = f.backend->calls.back().front().seq;
  submit(*scheduler, greedy(p2, 4), &second);
  run_to_end(*scheduler);
  const SeqId seq_2 = f.backend->calls.back().front().seq;
  CHECK(seq_2 != seq_1);  // nothing to reuse: the least recently used (never used) session
  submit(*scheduler, greedy(p3, 4), &third);
  run_to_end(*scheduler);
  const SeqId seq_3 = f.backend->calls.back().front().seq;
  CHECK(seq_3 != seq_1);
  CHECK(seq_3 != seq_2);

  // A follow-up turn of the first conversation: its session, only the suffix prefilled.
  std::vector<int32_t> follow = p1;
  follow.insert(follow.end(), first.ok().output_ids.begin(), first.ok().output_ids.end());
  follow.push_back(250);
  follow.push_back(251);
  Outcome fourth;
  const size_t before = f.backend->calls.size();
  submit(*scheduler, greedy(follow, 3), &fourth);
  run_to_end(*scheduler);
  CHECK(f.backend->calls[before].front().seq == seq_1);
  CHECK(fourth.ok().reused_tokens == static_cast<int32_t>(p1.size() + first.ok().output_ids.size() - 1));
  Scripted fresh;
  CHECK(fourth.ok().output_ids == alone(fresh, greedy(follow, 3)).output_ids);

  // A prompt sharing nothing: the least recently used session (the second one).
  Outcome fifth;
  const size_t before5 = f.backend->calls.size();
  submit(*scheduler, greedy(iota_prompt(10, 500), 2), &fifth);
  run_to_end(*scheduler);
  CHECK(f.backend->calls[before5].front().seq == seq_2);
}

TEST_CASE("scripted: a failing generation ends alone; the others finish as alone") {
  Scripted f;
  auto scheduler = make_scheduler(*f.engine, 3);
  // Refused at submit: context overflow (256 tokens), nothing else touched.
  ds4::Status refused = scheduler->submit(greedy(iota_prompt(200, 200), 100), nullptr, nullptr);
  CHECK_FALSE(refused.ok());
  CHECK(refused.message().find("context overflow") != std::string::npos);
  CHECK(scheduler->active() == 0);

  Outcome a, b, c;
  submit(*scheduler, greedy(iota_prompt(6, 200), 20), &a);
  submit(*scheduler, greedy(iota_prompt(6, 300), 20), &b);
  submit(*scheduler, greedy(iota_prompt(6, 400), 20), &c);
  for (int i = 0; i < 4; ++i) scheduler->step();
  // B's sequence fails from now on (in batched steps and alone).
  SeqId seq_b = -1;
  for (const auto& call : f.backend->calls) {
    if (call.size() == 6 && call.front().token == iota_prompt(6, 300).front()) seq_b = call.front().seq;
  }
  REQUIRE(seq_b >= 0);
  f.backend->fail_seq = seq_b;
  f.backend->fail_from_pos = 0;
  run_to_end(*scheduler);
  REQUIRE(b.done());
  REQUIRE_FALSE(b.result->ok());
  CHECK(b.result->status().message().find("injected failure") != std::string::npos);
  Scripted fresh_a, fresh_c;
  CHECK(a.ok().output_ids == alone(fresh_a, greedy(iota_prompt(6, 200), 20)).output_ids);
  CHECK(c.ok().output_ids == alone(fresh_c, greedy(iota_prompt(6, 400), 20)).output_ids);
}

TEST_CASE("scripted: a greedy generation alone decodes speculatively with MTP; batched ones do not") {
  Scripted f(512, 256, /*mtp_draft=*/3);
  auto scheduler = make_scheduler(*f.engine, 2);
  Outcome solo;
  submit(*scheduler, greedy(iota_prompt(8, 200), 30), &solo);
  run_to_end(*scheduler);
  CHECK(solo.ok().draft_tokens > 0);
  CHECK(solo.ok().decode_steps < 29);  // accepted drafts: fewer steps than tokens
  Scripted fresh(512, 256, 0);
  CHECK(solo.ok().output_ids == alone(fresh, greedy(iota_prompt(8, 200), 30)).output_ids);

  // Two at once: plain batched decode (no drafts while both run); when one ends the
  // other goes on speculatively, from the HC state of a plain step.
  Outcome x, y;
  submit(*scheduler, greedy(iota_prompt(8, 300), 30), &x);
  submit(*scheduler, greedy(iota_prompt(8, 400), 6), &y);
  run_to_end(*scheduler);
  CHECK(y.ok().draft_tokens == 0);
  CHECK(x.ok().draft_tokens > 0);
  Scripted fresh_x(512, 256, 0), fresh_y(512, 256, 0);
  CHECK(x.ok().output_ids == alone(fresh_x, greedy(iota_prompt(8, 300), 30)).output_ids);
  CHECK(y.ok().output_ids == alone(fresh_y, greedy(iota_prompt(8, 400), 6)).output_ids);
}

// --- the tiny trained chat model on the CPU backend -----------------------------------

namespace {

const nlohmann::json& chat_golden() {
  static const nlohmann::json golden = [] {
    std::ifstream in(data_path("tiny-chat/golden.json"));
    REQUIRE_MESSAGE(in.good(), "cannot open tiny-chat/golden.json");
    return nlohmann::json::parse(in);
  }();
  return golden;
}

nlohmann::json golden_case(const std::string& id) {
  for (const auto& c : chat_golden()["cases"]) {
    if (c["id"] == id) return c;
  }
  FAIL("no golden case " << id);
  return {};
}

std::unique_ptr<ds4::Engine> load_chat_engine(int32_t ctx = 512) {
  ds4::EngineOptions options;
  options.model_path = data_path("tiny-chat/model.gguf");
  options.backend = ds4::BackendKind::kCpu;
  options.ctx = ctx;
  options.threads = 2;
  auto engine = ds4::Engine::Load(options);
  REQUIRE_MESSAGE(engine.ok(), engine.status().message());
  return std::move(*engine);
}

std::string describe_difference(const std::vector<int32_t>& got, const std::vector<int32_t>& expected) {
  if (got == expected) return "identical (" + std::to_string(got.size()) + " ids)";
  size_t i = 0;
  while (i < got.size() && i < expected.size() && got[i] == expected[i]) ++i;
  return "first difference at index " + std::to_string(i) + " (got " +
         (i < got.size() ? std::to_string(got[i]) : "end") + ", expected " +
         (i < expected.size() ? std::to_string(expected[i]) : "end") + "), lengths " +
         std::to_string(got.size()) + " / " + std::to_string(expected.size());
}

}  // namespace

TEST_CASE("cpu: each token of a batch gets the logits it gets alone, bit for bit") {
  auto engine = load_chat_engine();
  ds4::Backend& backend = engine->backend();
  const std::vector<std::string> ids = {"00-server-nothink", "03-server-think", "16-server-nothink"};
  std::vector<std::vector<int32_t>> prompts;
  for (const auto& id : ids) prompts.push_back(golden_case(id)["prompt_ids"].get<std::vector<int32_t>>());
  // Two sets of sequences with the same prompts: one decodes alone, one batched.
  std::vector<SeqId> single, batched;
  std::vector<int32_t> next;
  for (const auto& p : prompts) {
    for (auto* set : {&single, &batched}) {
      auto seq = backend.new_sequence(engine->ctx_size());
      REQUIRE(seq.ok());
      std::vector<float> logits;
      REQUIRE(ds4::prefill_tokens(backend, *seq, p, 0, 512, &logits).ok());
      set->push_back(*seq);
      if (set == &single) next.push_back(ds4::Sampler::greedy(logits));
    }
  }
  int mismatches = 0;
  for (int step = 0; step < 6; ++step) {
    std::vector<std::vector<float>> alone_rows(prompts.size());
    for (size_t i = 0; i < prompts.size(); ++i) {
      REQUIRE(ds4::decode_token(backend, single[i], next[i], backend.sequence_length(single[i]), &alone_rows[i]).ok());
    }
    std::vector<BatchToken> batch;
    for (size_t i = 0; i < prompts.size(); ++i) {
      BatchToken t;
      t.token = next[i];
      t.seq = batched[i];
      t.pos = backend.sequence_length(batched[i]);
      t.want_logits = true;
      batch.push_back(t);
    }
    ForwardOutput out;
    REQUIRE(backend.forward(batch, &out).ok());
    const size_t vocab = alone_rows[0].size();
    REQUIRE(out.logits.size() == vocab * prompts.size());
    for (size_t i = 0; i < prompts.size(); ++i) {
      for (size_t v = 0; v < vocab; ++v) {
        const float got = out.logits[i * vocab + v];
        if (got != alone_rows[i][v] && ++mismatches <= 10) {
          MESSAGE("step " << step << " sequence " << i << " logit " << v << ": batched " << got << ", alone "
                          << alone_rows[i][v]);
        }
      }
      next[i] = ds4::Sampler::greedy(alone_rows[i]);
    }
  }
  CHECK(mismatches == 0);
  for (SeqId s : single) backend.free_sequence(s);
  for (SeqId s : batched) backend.free_sequence(s);
}

TEST_CASE("cpu: four different prompts at once give, token for token, what each gives alone") {
  auto engine = load_chat_engine();
  const std::vector<std::string> ids = {"00-server-nothink", "05-server-think", "16-server-nothink",
                                        "23-server-think"};
  // Alone first (each on a fresh session), then all four through the scheduler.
  std::vector<GenerateRequest> requests;
  std::vector<GenerateResult> expected;
  for (const auto& id : ids) {
    requests.push_back(greedy(golden_case(id)["prompt_ids"].get<std::vector<int32_t>>(), 60));
    auto session = engine->new_session();
    REQUIRE(session.ok());
    auto r = engine->generate(**session, requests.back(), nullptr);
    REQUIRE_MESSAGE(r.ok(), r.status().message());
    const auto golden_ids = golden_case(id)["output_ids"].get<std::vector<int32_t>>();
    CHECK_MESSAGE(r->output_ids == golden_ids, id << " alone: " << describe_difference(r->output_ids, golden_ids));
    expected.push_back(std::move(*r));
  }
  auto scheduler = make_scheduler(*engine, 4);
  std::vector<Outcome> outcomes(ids.size());
  for (size_t i = 0; i < ids.size(); ++i) submit(*scheduler, requests[i], &outcomes[i]);
  const auto steps = run_to_end(*scheduler);
  int max_batch = 0;
  for (const auto& s : steps) max_batch = std::max(max_batch, s.decode_sequences);
  CHECK(max_batch == 4);
  for (size_t i = 0; i < ids.size(); ++i) {
    const GenerateResult& got = outcomes[i].ok();
    INFO(ids[i] << ": " << describe_difference(got.output_ids, expected[i].output_ids));
    CHECK(got.output_ids == expected[i].output_ids);
    CHECK(got.text == expected[i].text);
    CHECK(outcomes[i].streamed == expected[i].text);
    CHECK(got.finish_reason == ds4::FinishReason::kStop);
    CHECK(got.prompt_tokens == expected[i].prompt_tokens);
    CHECK(got.completion_tokens == expected[i].completion_tokens);
    MESSAGE(ids[i] << ": " << got.completion_tokens << " tokens, mean decode batch " << got.mean_decode_batch());
  }
}

TEST_CASE("cpu: seeded sampling at once gives what each gives alone") {
  auto engine = load_chat_engine();
  const std::vector<std::string> ids = {"01-server-think", "09-server-think", "22-server-nothink"};
  std::vector<GenerateRequest> requests;
  std::vector<GenerateResult> expected;
  for (size_t i = 0; i < ids.size(); ++i) {
    GenerateRequest r;
    r.prompt = golden_case(ids[i])["prompt_ids"].get<std::vector<int32_t>>();
    r.sampling.temperature = 1.5f;
    r.sampling.min_p = 0.0f;
    r.sampling.top_k = i == 1 ? 40 : 0;
    r.sampling.seed = 1000 + i;
    r.max_tokens = 24 + static_cast<int32_t>(i) * 8;
    requests.push_back(r);
    auto session = engine->new_session();
    REQUIRE(session.ok());
    auto alone_result = engine->generate(**session, r, nullptr);
    REQUIRE_MESSAGE(alone_result.ok(), alone_result.status().message());
    expected.push_back(std::move(*alone_result));
  }
  auto scheduler = make_scheduler(*engine, 3);
  std::vector<Outcome> outcomes(ids.size());
  for (size_t i = 0; i < ids.size(); ++i) submit(*scheduler, requests[i], &outcomes[i]);
  run_to_end(*scheduler);
  for (size_t i = 0; i < ids.size(); ++i) {
    const GenerateResult& got = outcomes[i].ok();
    INFO(ids[i] << ": " << describe_difference(got.output_ids, expected[i].output_ids));
    CHECK(got.output_ids == expected[i].output_ids);
    CHECK(got.text == expected[i].text);
    CHECK(got.mean_decode_batch() > 1.0);
  }
}

TEST_CASE("cpu: a request overflowing the context fails alone while the others finish") {
  auto engine = load_chat_engine(/*ctx=*/64);
  auto scheduler = make_scheduler(*engine, 3);
  const auto france = golden_case("00-server-nothink");
  const auto germany = golden_case("02-server-nothink");
  Outcome a, b;
  submit(*scheduler, greedy(france["prompt_ids"].get<std::vector<int32_t>>(), 20), &a);
  std::vector<int32_t> long_prompt;
  for (int i = 0; i < 6; ++i) {
    const auto ids = germany["prompt_ids"].get<std::vector<int32_t>>();
    long_prompt.insert(long_prompt.end(), ids.begin(), ids.end());
  }
  ds4::Status refused = scheduler->submit(greedy(long_prompt, 10), nullptr, nullptr);
  CHECK_FALSE(refused.ok());
  CHECK_MESSAGE(refused.message().find("exceeds the context size of 64 tokens") != std::string::npos,
                refused.message());
  submit(*scheduler, greedy(germany["prompt_ids"].get<std::vector<int32_t>>(), 20), &b);
  run_to_end(*scheduler);
  CHECK(a.ok().text == france["output_text"].get<std::string>());
  CHECK(b.ok().text == germany["output_text"].get<std::string>());
}
