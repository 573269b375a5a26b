#include "runtime/engine.h"

#include <algorithm>
#include <chrono>
#include <optional>
#include <string>
#include <utility>

#include "model/model.h"
#include "runtime/generator.h"
#include "runtime/sampler.h"
#include "runtime/speculative.h"
#include "text/tokenizer.h"

namespace ds4 {

namespace {

using Clock = std::chrono::steady_clock;

double seconds_between(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

bool is_cancelled(const std::atomic<bool>* cancel) {
  return cancel != nullptr && cancel->load(std::memory_order_relaxed);
}

size_t common_prefix(const std::vector<int32_t>& a, const std::vector<int32_t>& b) {
  const size_t n = std::min(a.size(), b.size());
  size_t i = 0;
  while (i < n && a[i] == b[i]) ++i;
  return i;
}

// Records sampled tokens into the result, streams their text to the sink and
// decides when the generation ends (setting the finish reason).
class Emitter {
 public:
  Emitter(GenerateResult* result, const Tokenizer& tokenizer, const GenerateRequest& request,
          const TokenSink& sink, int32_t max_tokens)
      : result_(result),
        output_(tokenizer, request.stop),
        eos_(tokenizer.eos()),
        cancel_(request.cancel),
        sink_(sink),
        max_tokens_(max_tokens) {}

  // Tokens that may still be sampled.
  int32_t remaining() const { return max_tokens_ - static_cast<int32_t>(result_->output_ids.size()); }

  // Records one sampled token; false when the generation must end.
  bool emit(int32_t token) {
    last_time_ = Clock::now();
    if (result_->output_ids.empty()) first_time_ = last_time_;
    result_->output_ids.push_back(token);
    if (token == eos_) return end(FinishReason::kStop);
    ++result_->completion_tokens;
    deliver(output_.push(token));
    if (output_.stopped()) return end(FinishReason::kStop);
    if (!sink_open_) return end(FinishReason::kCancelled);
    if (remaining() <= 0) return end(FinishReason::kLength);
    return true;
  }

  // True (and the finish reason set) when the request was cancelled.
  bool cancelled() {
    if (!is_cancelled(cancel_)) return false;
    end(FinishReason::kCancelled);
    return true;
  }

  // Flushes held text and fills in the timings.
  void finish(Clock::time_point start) {
    deliver(output_.finish());
    if (!result_->output_ids.empty()) {
      result_->ttft_seconds = seconds_between(start, first_time_);
      result_->decode_seconds = seconds_between(first_time_, last_time_);
    }
  }

 private:
  bool end(FinishReason reason) {
    result_->finish_reason = reason;
    return false;
  }
  void deliver(OutputStream::Piece piece) {
    if (piece.empty()) return;
    result_->text += piece.text;
    if (sink_open_ && sink_) {
      if (!sink_(TokenDelta{piece.token_ids, piece.text})) sink_open_ = false;
    }
  }

  GenerateResult* result_;
  OutputStream output_;
  int32_t eos_;
  const std::atomic<bool>* cancel_;
  const TokenSink& sink_;
  int32_t max_tokens_;
  bool sink_open_ = true;
  Clock::time_point first_time_{}, last_time_{};
};

}  // namespace

BackendKind default_backend_kind() {
  return cuda_available() ? BackendKind::kCuda : BackendKind::kCpu;
}

std::string_view finish_reason_name(FinishReason reason) {
  switch (reason) {
    case FinishReason::kStop: return "stop";
    case FinishReason::kLength: return "length";
    case FinishReason::kCancelled: return "cancelled";
  }
  return "unknown";
}

double GenerateResult::prefill_tokens_per_second() const {
  const int32_t prefilled = prompt_tokens - reused_tokens;
  return prefill_seconds > 0 && prefilled > 0 ? prefilled / prefill_seconds : 0.0;
}

double GenerateResult::mean_decode_batch() const {
  return decode_steps > 0 ? static_cast<double>(decode_step_sequences) / decode_steps : 0.0;
}

double GenerateResult::decode_tokens_per_second() const {
  const size_t n = output_ids.size();
  return decode_seconds > 0 && n > 1 ? static_cast<double>(n - 1) / decode_seconds : 0.0;
}

// ---------------------------------------------------------------------------------
// Session

Session::~Session() {
  if (backend_ != nullptr) backend_->free_sequence(seq_);
}

Status Session::reset() {
  tokens_.clear();
  return backend_->truncate(seq_, 0).wrap("session reset");
}

// ---------------------------------------------------------------------------------
// Engine

Engine::Engine(EngineOptions options, std::unique_ptr<Model> model,
               std::unique_ptr<Tokenizer> tokenizer, std::unique_ptr<Backend> backend)
    : options_(std::move(options)),
      model_(std::move(model)),
      tokenizer_(std::move(tokenizer)),
      backend_(std::move(backend)) {}

Engine::~Engine() = default;

const Tokenizer& Engine::tokenizer() const { return *tokenizer_; }
const ModelConfig& Engine::config() const { return model_->config(); }

Result<std::unique_ptr<Engine>> Engine::Load(const EngineOptions& options) {
  if (options.ctx <= 0) {
    return Status::Error("engine: context size must be positive, got " + std::to_string(options.ctx));
  }
  if (options.prefill_chunk <= 0) {
    return Status::Error("engine: prefill chunk must be positive, got " +
                         std::to_string(options.prefill_chunk));
  }
  if (options.mtp_draft < 0) {
    return Status::Error("engine: MTP draft count must be >= 0, got " + std::to_string(options.mtp_draft));
  }
  if (options.mtp_draft > 0 && options.mtp_path.empty()) {
    return Status::Error("engine: " + std::to_string(options.mtp_draft) +
                         " MTP draft tokens requested but no MTP file was given");
  }
  auto model = Model::Load(options.model_path);
  if (!model.ok()) return model.status();
  if (!options.mtp_path.empty()) {
    DS4_RETURN_IF_ERROR((*model)->load_mtp(options.mtp_path));
  }
  auto tokenizer = Tokenizer::FromGguf((*model)->gguf());
  if (!tokenizer.ok()) return tokenizer.status().wrap(options.model_path);

  BackendOptions backend_options;
  backend_options.threads = options.threads;
  backend_options.qat = options.qat;
  backend_options.max_batch = options.prefill_chunk;
  auto backend = make_backend(**model, options.backend, backend_options);
  if (!backend.ok()) return backend.status();

  return std::unique_ptr<Engine>(
      new Engine(options, std::move(*model),
                 std::make_unique<Tokenizer>(std::move(*tokenizer)), std::move(*backend)));
}

std::unique_ptr<Engine> Engine::FromParts(EngineOptions options, std::unique_ptr<Model> model,
                                          std::unique_ptr<Tokenizer> tokenizer,
                                          std::unique_ptr<Backend> backend) {
  return std::unique_ptr<Engine>(
      new Engine(std::move(options), std::move(model), std::move(tokenizer), std::move(backend)));
}

bool Engine::speculative_enabled() const {
  return options_.mtp_draft > 0 && backend_->has_mtp();
}

Result<std::unique_ptr<Session>> Engine::new_session() {
  auto seq = backend_->new_sequence(options_.ctx);
  if (!seq.ok()) return seq.status();
  return std::unique_ptr<Session>(new Session(backend_.get(), *seq));
}

int32_t Engine::reusable_prefix(const std::vector<int32_t>& held, const std::vector<int32_t>& prompt) {
  size_t keep = common_prefix(held, prompt);
  if (!prompt.empty() && keep == prompt.size()) keep = prompt.size() - 1;
  if (keep == held.size()) return static_cast<int32_t>(keep);
  const size_t rollback_limit =
      held.size() > static_cast<size_t>(Backend::kMaxRollback) ? held.size() - Backend::kMaxRollback : 0;
  return static_cast<int32_t>(keep < rollback_limit ? 0 : keep);
}

// Checks a request against the engine's limits (nothing is touched); returns its
// token budget.
static Result<int32_t> checked_max_tokens(const GenerateRequest& request, int32_t vocab, int32_t ctx) {
  const int32_t n_prompt = static_cast<int32_t>(request.prompt.size());
  if (n_prompt == 0) return Status::Error("generate: the prompt is empty");
  for (int32_t i = 0; i < n_prompt; ++i) {
    if (request.prompt[i] < 0 || request.prompt[i] >= vocab) {
      return Status::Error("generate: prompt token " + std::to_string(i) + " has id " +
                           std::to_string(request.prompt[i]) + ", outside the vocabulary [0, " +
                           std::to_string(vocab) + ")");
    }
  }
  const int32_t max_tokens = request.max_tokens < 0 ? ctx - n_prompt : request.max_tokens;
  if (n_prompt + static_cast<int64_t>(max_tokens) > ctx) {
    return Status::Error("context overflow: prompt of " + std::to_string(n_prompt) +
                         " tokens + max_tokens " + std::to_string(max_tokens) + " = " +
                         std::to_string(n_prompt + static_cast<int64_t>(max_tokens)) +
                         " exceeds the context size of " + std::to_string(ctx) + " tokens");
  }
  return max_tokens;
}

Result<GenerateResult> Engine::generate(Session& session, const GenerateRequest& request,
                                        const TokenSink& sink) {
  auto generation = begin_generation(session, request, sink);
  if (!generation.ok()) return generation.status();
  Generation& g = **generation;
  while (g.phase() == Generation::Phase::kPrefill) DS4_RETURN_IF_ERROR(g.prefill_step());
  while (g.phase() == Generation::Phase::kDecode) {
    DS4_RETURN_IF_ERROR(g.speculative() ? g.speculative_step() : g.decode_step());
  }
  return g.finish();
}

// ---------------------------------------------------------------------------------
// Generation

struct Generation::State {
  State(Engine& engine, Session& session, GenerateRequest request, TokenSink sink, int32_t max_tokens)
      : backend(engine.backend()),
        tokenizer(engine.tokenizer()),
        session(session),
        request(std::move(request)),
        sink(std::move(sink)),
        max_tokens(max_tokens),
        prefill_chunk(engine.options().prefill_chunk),
        speculative(engine.speculative_enabled() && this->request.sampling.temperature <= 0),
        max_drafts(engine.options().mtp_draft),
        sampler(this->request.sampling) {}

  SeqId seq() const { return session.seq_; }
  // The sampled `token` was streamed: decoding goes on unless it ended the generation.
  void after_sample(int32_t token) {
    if (emitter->emit(token) && !emitter->cancelled()) {
      pending = token;
      phase = Phase::kDecode;
    } else {
      phase = Phase::kDone;
    }
  }
  void count_step(int32_t sequences) {
    ++result.decode_steps;
    result.decode_step_sequences += sequences;
  }

  Backend& backend;
  const Tokenizer& tokenizer;
  Session& session;
  const GenerateRequest request;
  const TokenSink sink;
  const int32_t max_tokens;
  const int32_t prefill_chunk;
  const bool speculative;
  const int32_t max_drafts;
  const Clock::time_point start = Clock::now();

  Phase phase = Phase::kPrefill;
  GenerateResult result;
  int32_t reused = 0;
  size_t prefill_fed = 0;         // suffix tokens fed so far
  Sampler sampler;
  std::optional<Emitter> emitter;  // from the end of the prefill
  int32_t pending = 0;            // sampled and streamed, not yet fed (kDecode)
  std::vector<float> hidden;      // HC state of the last fed token, when known
  bool hidden_valid = false;
  int32_t draft_len = 0;          // speculative: drafts of the next round
  bool finished = false;
};

Result<std::unique_ptr<Generation>> Engine::begin_generation(Session& session, GenerateRequest request,
                                                             TokenSink sink) {
  auto max_tokens = checked_max_tokens(request, tokenizer_->vocab_size(), options_.ctx);
  if (!max_tokens.ok()) return max_tokens.status();
  auto state = std::make_unique<Generation::State>(*this, session, std::move(request), std::move(sink),
                                                   *max_tokens);
  const std::vector<int32_t>& prompt = state->request.prompt;
  state->result.prompt_tokens = static_cast<int32_t>(prompt.size());
  // Bring the session's backend state to the reusable prefix.
  const int32_t keep = reusable_prefix(session.tokens_, prompt);
  if (static_cast<size_t>(keep) != session.tokens_.size()) {
    DS4_RETURN_IF_ERROR(backend_->truncate(session.seq_, keep));
    session.tokens_.resize(keep);
  }
  state->reused = keep;
  state->result.reused_tokens = keep;
  state->draft_len = std::min(state->max_drafts, Backend::kMaxRollback);
  return std::unique_ptr<Generation>(new Generation(std::move(state)));
}

Generation::Generation(std::unique_ptr<State> state) : state_(std::move(state)) {}
Generation::~Generation() = default;

Generation::Phase Generation::phase() const { return state_->phase; }
Session& Generation::session() const { return state_->session; }
bool Generation::speculative() const { return state_->speculative; }

int32_t Generation::prefill_remaining() const {
  const State& s = *state_;
  if (s.phase != Phase::kPrefill) return 0;
  return static_cast<int32_t>(s.request.prompt.size() - s.reused - s.prefill_fed);
}

bool Generation::check_cancel() {
  State& s = *state_;
  if (s.phase == Phase::kDone) return true;
  if (!is_cancelled(s.request.cancel)) return false;
  s.result.finish_reason = FinishReason::kCancelled;
  s.phase = Phase::kDone;
  return true;
}

Status Generation::prefill_step() {
  State& s = *state_;
  if (s.phase != Phase::kPrefill) return Status::Error("generation: prefill_step outside the prefill");
  if (check_cancel()) return Status::Ok();
  const std::span<const int32_t> suffix(s.request.prompt.data() + s.reused, s.request.prompt.size() - s.reused);
  const size_t n = std::min<size_t>(static_cast<size_t>(s.prefill_chunk), suffix.size() - s.prefill_fed);
  const bool last = s.prefill_fed + n == suffix.size();
  std::vector<float> logits;
  DS4_RETURN_IF_ERROR(prefill_tokens(s.backend, s.seq(), suffix.subspan(s.prefill_fed, n),
                                     s.reused + static_cast<int32_t>(s.prefill_fed), static_cast<int32_t>(n),
                                     last ? &logits : nullptr, nullptr, nullptr,
                                     last && s.speculative ? &s.hidden : nullptr));
  s.session.tokens_.insert(s.session.tokens_.end(), suffix.begin() + s.prefill_fed,
                           suffix.begin() + s.prefill_fed + n);
  s.prefill_fed += n;
  if (!last) return Status::Ok();

  s.result.prefill_seconds = seconds_between(s.start, Clock::now());
  s.hidden_valid = s.speculative;
  s.result.finish_reason = FinishReason::kLength;
  s.emitter.emplace(&s.result, s.tokenizer, s.request, s.sink, s.max_tokens);
  if (s.max_tokens <= 0) {
    s.phase = Phase::kDone;
    return Status::Ok();
  }
  s.after_sample(s.speculative ? Sampler::greedy(logits) : s.sampler.sample(logits));
  return Status::Ok();
}

BatchToken Generation::decode_input() const {
  BatchToken t;
  t.token = state_->pending;
  t.seq = state_->seq();
  t.pos = state_->session.size();
  t.want_logits = true;
  return t;
}

Status Generation::decode_accept(std::span<const float> logits, int32_t step_sequences) {
  State& s = *state_;
  if (s.phase != Phase::kDecode) return Status::Error("generation: decode_accept outside the decode");
  if (logits.empty()) return Status::Error("generation: no logits for the decode token");
  s.session.tokens_.push_back(s.pending);
  s.hidden_valid = false;
  s.count_step(step_sequences);
  s.after_sample(s.sampler.sample(logits));
  return Status::Ok();
}

Status Generation::decode_step() {
  State& s = *state_;
  if (s.phase != Phase::kDecode) return Status::Error("generation: decode_step outside the decode");
  const BatchToken t = decode_input();
  if (s.sampler.params().temperature <= 0) {
    // Greedy: the backend returns the token alone (no logits copied per token).
    Result<int32_t> next = s.backend.forward_greedy(t);
    if (!next.ok()) return next.status().wrap("decode at position " + std::to_string(t.pos));
    s.session.tokens_.push_back(s.pending);
    s.hidden_valid = false;
    s.count_step(1);
    s.after_sample(*next);
    return Status::Ok();
  }
  std::vector<float> logits;
  DS4_RETURN_IF_ERROR(decode_token(s.backend, s.seq(), t.token, t.pos, &logits));
  return decode_accept(logits, 1);
}

// Greedy decoding with MTP drafts (runtime/speculative.h): identical tokens, fewer
// forward passes when drafts are accepted. The draft length adapts: it shrinks to
// one past the accepted run after a rejection (wrong drafts cost an MTP pass and a
// wider verification each) and grows back by one after a round whose drafts were
// all accepted.
Status Generation::speculative_step() {
  State& s = *state_;
  if (s.phase != Phase::kDecode || !s.speculative) {
    return Status::Error("generation: speculative_step needs a speculative generation in its decode");
  }
  std::vector<int32_t>& held = s.session.tokens_;
  const int32_t token = s.pending;
  const int32_t pos = static_cast<int32_t>(held.size());
  // Drafts beyond the token budget could never be emitted; without the HC state of
  // the last fed token there is nothing to draft from.
  const int32_t n_drafts = s.hidden_valid ? std::min(s.draft_len, s.emitter->remaining() - 1) : 0;
  std::vector<int32_t> drafts;
  if (n_drafts > 0) {
    DS4_RETURN_IF_ERROR(draft_with_mtp(s.backend, s.seq(), s.hidden, pos - 1, token, n_drafts, &drafts));
  }
  Verification verified;
  DS4_RETURN_IF_ERROR(verify_drafts(s.backend, s.seq(), token, pos, drafts, &verified));
  s.count_step(1);
  s.result.draft_tokens += static_cast<int32_t>(drafts.size());
  s.result.accepted_draft_tokens += verified.accepted;
  if (s.hidden_valid) {
    s.draft_len = verified.accepted == n_drafts
                      ? std::min({s.draft_len + 1, s.max_drafts, Backend::kMaxRollback})
                      : verified.accepted + 1;
  }
  held.push_back(token);
  held.insert(held.end(), drafts.begin(), drafts.begin() + verified.accepted);
  // Emit the accepted drafts; the main model's own next token follows.
  for (int32_t i = 0; i < verified.accepted; ++i) {
    if (!s.emitter->emit(verified.tokens[i])) {
      // verified.tokens[i] ends the generation: keep only what precedes it.
      const int32_t keep = pos + 1 + i;
      DS4_RETURN_IF_ERROR(s.backend.truncate(s.seq(), keep).wrap("speculative stop"));
      held.resize(keep);
      s.hidden_valid = false;
      s.phase = Phase::kDone;
      return Status::Ok();
    }
  }
  s.hidden = std::move(verified.hidden);
  s.hidden_valid = true;
  s.after_sample(verified.tokens.back());
  return Status::Ok();
}

GenerateResult Generation::finish() {
  State& s = *state_;
  if (s.finished) return s.result;
  s.finished = true;
  if (s.phase != Phase::kDone) {
    s.result.finish_reason = FinishReason::kCancelled;
    s.phase = Phase::kDone;
  }
  if (s.emitter) s.emitter->finish(s.start);
  return s.result;
}

}  // namespace ds4
