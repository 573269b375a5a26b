// Tool calls through the engine worker: a scripted backend makes the model "write"
// a DSML tool-call block followed by more text; the worker must stream the content
// before the block, then tool_calls deltas (id + name, then argument fragments),
// stop the generation at the end of the block and finish with "tool_calls".
#include <doctest/doctest.h>

#include <chrono>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <variant>
#include <vector>

#include "format/gguf.h"
#include "model/model.h"
#include "runtime/engine.h"
#include "server/engine_worker.h"
#include "server/generation_job.h"
#include "server/prompt.h"
#include "server/request.h"
#include "text/tokenizer.h"

namespace {

using ds4::server::JobEvent;

// A backend whose model emits `output` after any prompt, then EOS.
class ScriptedOutputBackend : public ds4::Backend {
 public:
  ScriptedOutputBackend(int32_t vocab, int32_t eos, std::vector<int32_t> output)
      : vocab_(vocab), eos_(eos), output_(std::move(output)) {}

  void set_prompt_length(size_t n) { prompt_length_ = n; }
  int32_t generated_fed() const { return generated_fed_; }

  std::string_view name() const override { return "scripted-output"; }
  ds4::Result<ds4::SeqId> new_sequence(int32_t) override {
    seqs_[next_] = {};
    return next_++;
  }
  void free_sequence(ds4::SeqId seq) override { seqs_.erase(seq); }
  int32_t sequence_length(ds4::SeqId seq) const override {
    return static_cast<int32_t>(seqs_.at(seq).size());
  }
  ds4::Status truncate(ds4::SeqId seq, int32_t n) override {
    seqs_.at(seq).resize(n);
    return ds4::Status::Ok();
  }
  ds4::Status forward(std::span<const ds4::BatchToken> batch, ds4::ForwardOutput* out) override {
    out->logits.clear();
    out->hidden.clear();
    for (const ds4::BatchToken& t : batch) {
      auto& history = seqs_.at(t.seq);
      history.push_back(t.token);
      if (history.size() > prompt_length_) ++generated_fed_;
      if (!t.want_logits) continue;
      const size_t k = history.size() - prompt_length_;
      std::vector<float> row(vocab_, 0.0f);
      row[k < output_.size() ? output_[k] : eos_] = 10.0f;
      out->logits.insert(out->logits.end(), row.begin(), row.end());
    }
    return ds4::Status::Ok();
  }

 private:
  int32_t vocab_, eos_;
  std::vector<int32_t> output_;
  size_t prompt_length_ = 0;
  int32_t generated_fed_ = 0;
  ds4::SeqId next_ = 0;
  std::map<ds4::SeqId, std::vector<int32_t>> seqs_;
};

std::unique_ptr<ds4::Tokenizer> load_tokenizer() {
  auto gguf = ds4::GgufFile::Open(std::string(DS4_TEST_DATA) + "/tiny-chat/model.gguf");
  REQUIRE_MESSAGE(gguf.ok(), gguf.status().message());
  auto tokenizer = ds4::Tokenizer::FromGguf(*gguf.value());
  REQUIRE_MESSAGE(tokenizer.ok(), tokenizer.status().message());
  return std::make_unique<ds4::Tokenizer>(std::move(tokenizer.value()));
}

const std::string kBlock =
    "I will check.\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"get_weather\">\n"
    "<｜DSML｜parameter name=\"city\" string=\"true\">Paris</｜DSML｜parameter>\n"
    "<｜DSML｜parameter name=\"days\" string=\"false\">3</｜DSML｜parameter>\n"
    "</｜DSML｜invoke>\n</｜DSML｜tool_calls>";
const std::string kAfterBlock = " and then some text the model should never get to write";

}  // namespace

TEST_CASE("a generated DSML block becomes streamed tool calls and stops the generation") {
  auto tokenizer = load_tokenizer();
  const int32_t eos = tokenizer->eos();
  const int32_t vocab = tokenizer->vocab_size();
  std::vector<int32_t> output = tokenizer->encode_with_specials(kBlock);
  const size_t block_tokens = output.size();
  for (int32_t id : tokenizer->encode(kAfterBlock)) output.push_back(id);

  const std::string body =
      R"({"messages":[{"role":"user","content":"Weather in Paris?"}],"thinking":{"type":"disabled"},)"
      R"("temperature":0,"max_tokens":200,"tools":[{"type":"function","function":{"name":"get_weather",)"
      R"("parameters":{"type":"object","properties":{"city":{"type":"string"},"days":{"type":"integer"}}}}}]})";
  auto parsed = ds4::server::parse_request(body, ds4::server::Endpoint::kChatCompletions);
  REQUIRE(std::holds_alternative<ds4::server::CompletionRequest>(parsed));
  auto prepared = ds4::server::prepare_request(std::get<ds4::server::CompletionRequest>(parsed),
                                               *tokenizer, 4096);
  REQUIRE(std::holds_alternative<ds4::server::PreparedRequest>(prepared));
  const auto& request = std::get<ds4::server::PreparedRequest>(prepared);
  CHECK(request.tools_active);

  auto backend = std::make_unique<ScriptedOutputBackend>(vocab, eos, output);
  ScriptedOutputBackend* scripted = backend.get();
  scripted->set_prompt_length(request.generate.prompt.size());
  ds4::EngineOptions options;
  options.ctx = 4096;
  auto engine = ds4::Engine::FromParts(options, nullptr, std::move(tokenizer), std::move(backend));

  ds4::server::EngineWorker worker(engine.get());
  REQUIRE(worker.start().ok());
  auto job = std::make_shared<ds4::server::GenerationJob>(request, /*streaming=*/true);
  REQUIRE(worker.submit(job));

  std::string content, name, id, arguments;
  int token_events = 0;
  std::optional<JobEvent> done;
  for (int waited = 0; waited < 300 && !done; ++waited) {
    auto event = job->next(std::chrono::milliseconds(100));
    if (!event) continue;
    if (event->kind != JobEvent::Kind::kToken) {
      done = std::move(event);
      break;
    }
    ++token_events;
    content += event->delta.content;
    for (const auto& call : event->delta.tool_calls) {
      CHECK(call.index == 0);
      if (!call.id.empty()) {
        CHECK(id.empty());  // the id and name come once, first
        id = call.id;
        name = call.name;
      }
      arguments += call.arguments;
    }
  }
  REQUIRE(done.has_value());
  REQUIRE(done->kind == JobEvent::Kind::kDone);
  const auto& completion = done->completion;
  CHECK(completion.finish_reason == "tool_calls");
  CHECK(content == "I will check.");
  CHECK(completion.content == "I will check.");
  CHECK(name == "get_weather");
  CHECK(id.rfind("call_", 0) == 0);
  nlohmann::json args = nlohmann::json::parse(arguments);
  CHECK(args["city"] == "Paris");
  CHECK(args["days"] == 3);
  REQUIRE(completion.tool_calls.size() == 1);
  CHECK(completion.tool_calls[0].id == id);
  CHECK(completion.tool_calls[0].arguments == arguments);
  // The generation stopped at the end of the block: no text after it was sampled.
  CHECK(completion.usage.completion_tokens == static_cast<int>(block_tokens));
  CHECK(token_events == static_cast<int>(block_tokens));
  CHECK(completion.token_ids == std::vector<int32_t>(output.begin(), output.begin() + block_tokens));
}
