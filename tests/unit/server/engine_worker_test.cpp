// EngineWorker with the real engine on the tiny trained chat model: streamed jobs
// get one event per sampled token and a final result whose counts match; jobs
// queue behind each other; cancel and shutdown end every job with one final event.
// With parallel > 1: jobs run together and each gets the answer it gets alone, jobs
// beyond the pool wait and complete, a refused job fails alone, and shutdown ends
// running and queued jobs with 503.
#include <doctest/doctest.h>

#include <chrono>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <variant>
#include <vector>

#include "runtime/engine.h"
#include "server/engine_worker.h"
#include "server/generation_job.h"
#include "server/prompt.h"
#include "server/request.h"

namespace {

using ds4::server::EngineWorker;
using ds4::server::GenerationJob;
using ds4::server::JobEvent;

const std::string kChatDir = std::string(DS4_TEST_DATA) + "/tiny-chat";

ds4::Engine& engine() {
  static std::unique_ptr<ds4::Engine> loaded = [] {
    ds4::EngineOptions options;
    options.model_path = kChatDir + "/model.gguf";
    options.backend = ds4::BackendKind::kCpu;
    options.ctx = 1024;
    auto result = ds4::Engine::Load(options);
    REQUIRE_MESSAGE(result.ok(), result.status().message());
    return std::move(result.value());
  }();
  return *loaded;
}

std::shared_ptr<GenerationJob> make_job(const std::string& body, bool streaming) {
  auto parsed = ds4::server::parse_request(body, ds4::server::Endpoint::kChatCompletions);
  REQUIRE(std::holds_alternative<ds4::server::CompletionRequest>(parsed));
  auto prepared = ds4::server::prepare_request(std::get<ds4::server::CompletionRequest>(parsed),
                                               engine().tokenizer(), engine().ctx_size());
  REQUIRE(std::holds_alternative<ds4::server::PreparedRequest>(prepared));
  return std::make_shared<GenerationJob>(std::get<ds4::server::PreparedRequest>(prepared),
                                         streaming);
}

// Every event of a job up to and including the final one (bounded wait).
std::vector<JobEvent> drain(GenerationJob& job) {
  std::vector<JobEvent> events;
  for (int waited = 0; waited < 600; ++waited) {  // at most 60 s
    auto event = job.next(std::chrono::milliseconds(100));
    if (!event) continue;
    events.push_back(std::move(*event));
    if (events.back().kind != JobEvent::Kind::kToken) break;
  }
  REQUIRE(!events.empty());
  REQUIRE(events.back().kind != JobEvent::Kind::kToken);
  return events;
}

const std::string kFranceNoThink =
    R"({"messages":[{"role":"user","content":"What is the capital of France?"}],"thinking":{"type":"disabled"},"temperature":0})";

std::vector<int32_t> golden_output_ids(const std::string& case_id) {
  std::ifstream in(kChatDir + "/golden.json");
  nlohmann::json golden = nlohmann::json::parse(in);
  for (const auto& c : golden["cases"]) {
    if (c["id"] == case_id) {
      auto ids = c["output_ids"].get<std::vector<int32_t>>();
      ids.pop_back();  // the final EOS is sampled but never streamed
      return ids;
    }
  }
  FAIL("no golden case " << case_id);
  return {};
}

}  // namespace

TEST_CASE("a streamed job: one event per token, counts match, the golden answer") {
  EngineWorker worker(&engine());
  REQUIRE(worker.start().ok());
  auto job = make_job(kFranceNoThink, /*streaming=*/true);
  REQUIRE(worker.submit(job));
  std::vector<JobEvent> events = drain(*job);
  REQUIRE(events.back().kind == JobEvent::Kind::kDone);
  const auto& completion = events.back().completion;
  std::string streamed;
  std::vector<int32_t> streamed_ids;
  for (size_t i = 0; i + 1 < events.size(); ++i) {
    CHECK(events[i].token_ids.size() == 1);  // ASCII answer: nothing held back
    streamed += events[i].delta.content;
    streamed_ids.insert(streamed_ids.end(), events[i].token_ids.begin(), events[i].token_ids.end());
  }
  CHECK(streamed == "The capital of France is Paris.");
  CHECK(completion.content == streamed);
  CHECK(completion.reasoning.empty());
  CHECK(completion.finish_reason == "stop");
  CHECK(streamed_ids == golden_output_ids("00-server-nothink"));
  CHECK(completion.token_ids == streamed_ids);
  CHECK(completion.usage.completion_tokens == static_cast<int>(streamed_ids.size()));
  CHECK(completion.usage.prompt_tokens == static_cast<int>(job->prepared.generate.prompt.size()));
}

TEST_CASE("a non-streamed thinking job gets only its result, reasoning split off") {
  EngineWorker worker(&engine());
  REQUIRE(worker.start().ok());
  auto job = make_job(R"({"messages":[{"role":"user","content":"What is the capital of France?"}]})",
                      /*streaming=*/false);
  REQUIRE(worker.submit(job));
  std::vector<JobEvent> events = drain(*job);
  REQUIRE(events.size() == 1);
  REQUIRE(events[0].kind == JobEvent::Kind::kDone);
  const auto& completion = events[0].completion;
  CHECK(completion.reasoning ==
        "The user is asking for the capital of France. France is a country in Europe, and its "
        "capital city is Paris.");
  CHECK(completion.content == "The capital of France is Paris.");
  CHECK(completion.token_ids == golden_output_ids("01-server-think"));
}

TEST_CASE("queued jobs run one after another; a follow-up reuses the kept prompt") {
  EngineWorker worker(&engine());
  REQUIRE(worker.start().ok());
  std::vector<std::shared_ptr<GenerationJob>> jobs;
  for (int i = 0; i < 3; ++i) {
    jobs.push_back(make_job(kFranceNoThink, true));
    REQUIRE(worker.submit(jobs.back()));
  }
  for (auto& job : jobs) {
    std::vector<JobEvent> events = drain(*job);
    REQUIRE(events.back().kind == JobEvent::Kind::kDone);
    CHECK(events.back().completion.content == "The capital of France is Paris.");
  }
  // The same prompt again: all but the last prompt token is reused.
  auto again = make_job(kFranceNoThink, false);
  REQUIRE(worker.submit(again));
  std::vector<JobEvent> events = drain(*again);
  REQUIRE(events.back().kind == JobEvent::Kind::kDone);
  CHECK(events.back().completion.usage.cached_tokens > 0);
}

TEST_CASE("a job cancelled while queued fails without running") {
  EngineWorker worker(&engine());
  REQUIRE(worker.start().ok());
  auto job = make_job(kFranceNoThink, true);
  job->cancel = true;
  REQUIRE(worker.submit(job));
  std::vector<JobEvent> events = drain(*job);
  REQUIRE(events.size() == 1);
  CHECK(events[0].kind == JobEvent::Kind::kFailed);
}

TEST_CASE("cancelling a running job stops its generation") {
  EngineWorker worker(&engine());
  REQUIRE(worker.start().ok());
  // Near-uniform sampling: a long generation unless cancelled.
  auto job = make_job(
      R"({"messages":[{"role":"user","content":"Write a poem"}],"thinking":{"type":"disabled"},"temperature":10,"min_p":0,"seed":5,"max_tokens":900})",
      true);
  REQUIRE(worker.submit(job));
  auto first = job->next(std::chrono::seconds(60));
  REQUIRE(first.has_value());
  REQUIRE(first->kind == JobEvent::Kind::kToken);
  job->cancel = true;
  std::vector<JobEvent> events = drain(*job);
  REQUIRE(events.back().kind == JobEvent::Kind::kDone);
  CHECK(events.back().completion.finish_reason == "cancelled");
  CHECK(events.back().completion.usage.completion_tokens < 900);
}

TEST_CASE("shutdown fails queued jobs with 503 and refuses new ones") {
  EngineWorker worker(&engine());
  REQUIRE(worker.start().ok());
  std::vector<std::shared_ptr<GenerationJob>> jobs;
  for (int i = 0; i < 4; ++i) {
    jobs.push_back(make_job(kFranceNoThink, true));
    REQUIRE(worker.submit(jobs.back()));
  }
  worker.shutdown();
  int failed = 0;
  for (auto& job : jobs) {
    std::vector<JobEvent> events = drain(*job);  // every job ends with one final event
    if (events.back().kind == JobEvent::Kind::kFailed) {
      CHECK(events.back().error.http_status == 503);
      ++failed;
    }
  }
  CHECK(failed >= 3);  // at most the one already running may have finished
  CHECK_FALSE(worker.submit(make_job(kFranceNoThink, true)));
}

// --- several jobs at once (parallel > 1) -------------------------------------------

namespace {

std::string nothink_question(const std::string& question) {
  return R"({"messages":[{"role":"user","content":")" + question +
         R"("}],"thinking":{"type":"disabled"},"temperature":0})";
}

// Streamed ids and text of a finished streamed job.
struct Streamed {
  std::vector<int32_t> ids;
  std::string content;
};
Streamed streamed_of(const std::vector<JobEvent>& events) {
  Streamed s;
  for (size_t i = 0; i + 1 < events.size(); ++i) {
    s.ids.insert(s.ids.end(), events[i].token_ids.begin(), events[i].token_ids.end());
    s.content += events[i].delta.content;
  }
  return s;
}

}  // namespace

TEST_CASE("parallel 4: four different streamed jobs run together, each gets its own answer") {
  EngineWorker worker(&engine(), 4);
  REQUIRE(worker.start().ok());
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"France", "00-server-nothink"}, {"Germany", "02-server-nothink"},
      {"Japan", "04-server-nothink"}, {"Italy", "06-server-nothink"}};
  std::vector<std::shared_ptr<GenerationJob>> jobs;
  for (const auto& c : cases) {
    jobs.push_back(make_job(nothink_question("What is the capital of " + c.first + "?"), true));
    REQUIRE(worker.submit(jobs.back()));
  }
  for (size_t i = 0; i < jobs.size(); ++i) {
    std::vector<JobEvent> events = drain(*jobs[i]);
    REQUIRE(events.back().kind == JobEvent::Kind::kDone);
    const Streamed streamed = streamed_of(events);
    INFO(cases[i].first);
    CHECK(streamed.ids == golden_output_ids(cases[i].second));
    CHECK(events.back().completion.content == streamed.content);
    CHECK(streamed.content.find("is") != std::string::npos);
    CHECK(events.back().completion.finish_reason == "stop");
  }
}

TEST_CASE("parallel 3: twelve queued jobs all complete") {
  EngineWorker worker(&engine(), 3);
  REQUIRE(worker.start().ok());
  std::vector<std::shared_ptr<GenerationJob>> jobs;
  for (int i = 0; i < 12; ++i) {
    jobs.push_back(make_job(kFranceNoThink, i % 2 == 0));
    REQUIRE(worker.submit(jobs.back()));
  }
  for (size_t i = 0; i < jobs.size(); ++i) {
    std::vector<JobEvent> events = drain(*jobs[i]);
    INFO("job " << i);
    REQUIRE(events.back().kind == JobEvent::Kind::kDone);
    CHECK(events.back().completion.content == "The capital of France is Paris.");
  }
}

TEST_CASE("parallel 2: a job the engine refuses fails alone while the others finish") {
  EngineWorker worker(&engine(), 2);
  REQUIRE(worker.start().ok());
  // Prepared for a larger context than the engine's 1024 tokens: the engine refuses it.
  auto parsed = ds4::server::parse_request(
      R"({"messages":[{"role":"user","content":"Hi"}],"max_tokens":5000,"thinking":{"type":"disabled"}})",
      ds4::server::Endpoint::kChatCompletions);
  REQUIRE(std::holds_alternative<ds4::server::CompletionRequest>(parsed));
  auto prepared = ds4::server::prepare_request(std::get<ds4::server::CompletionRequest>(parsed),
                                               engine().tokenizer(), 100000);
  REQUIRE(std::holds_alternative<ds4::server::PreparedRequest>(prepared));
  auto too_long = std::make_shared<GenerationJob>(std::get<ds4::server::PreparedRequest>(prepared), true);
  auto before = make_job(kFranceNoThink, true);
  auto after = make_job(nothink_question("What is the capital of Germany?"), true);
  REQUIRE(worker.submit(before));
  REQUIRE(worker.submit(too_long));
  REQUIRE(worker.submit(after));
  std::vector<JobEvent> failed = drain(*too_long);
  REQUIRE(failed.size() == 1);
  CHECK(failed[0].kind == JobEvent::Kind::kFailed);
  CHECK_MESSAGE(failed[0].error.message.find("context overflow") != std::string::npos, failed[0].error.message);
  std::vector<JobEvent> a = drain(*before), b = drain(*after);
  REQUIRE(a.back().kind == JobEvent::Kind::kDone);
  REQUIRE(b.back().kind == JobEvent::Kind::kDone);
  CHECK(a.back().completion.content == "The capital of France is Paris.");
  CHECK(streamed_of(b).ids == golden_output_ids("02-server-nothink"));
}

TEST_CASE("parallel 2: shutdown fails queued jobs and cancels the running ones, all with 503") {
  EngineWorker worker(&engine(), 2);
  REQUIRE(worker.start().ok());
  std::vector<std::shared_ptr<GenerationJob>> jobs;
  for (int i = 0; i < 6; ++i) {
    // Long random generations: still running at shutdown.
    jobs.push_back(make_job(
        R"({"messages":[{"role":"user","content":"Write a poem"}],"thinking":{"type":"disabled"},"temperature":10,"min_p":0,"seed":)" +
            std::to_string(11 + i) + R"(,"max_tokens":900})",
        true));
    REQUIRE(worker.submit(jobs.back()));
  }
  // Both running jobs have streamed something before the shutdown.
  for (int i = 0; i < 2; ++i) {
    auto first = jobs[i]->next(std::chrono::seconds(60));
    REQUIRE(first.has_value());
    REQUIRE(first->kind == JobEvent::Kind::kToken);
  }
  worker.shutdown();
  int cancelled_running = 0;
  for (size_t i = 0; i < jobs.size(); ++i) {
    std::vector<JobEvent> events = drain(*jobs[i]);
    INFO("job " << i);
    if (i < 2 && events.back().kind == JobEvent::Kind::kDone) continue;  // ended (EOS) before the shutdown
    REQUIRE(events.back().kind == JobEvent::Kind::kFailed);
    CHECK(events.back().error.http_status == 503);
    if (i < 2) ++cancelled_running;
  }
  CHECK(cancelled_running >= 1);  // both ending by EOS within a few tokens is all but impossible
  CHECK_FALSE(worker.submit(make_job(kFranceNoThink, true)));
}
