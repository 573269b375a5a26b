#include "runtime/engine.h"

#include <algorithm>
#include <chrono>
#include <string>
#include <utility>

#include "model/model.h"
#include "runtime/generator.h"
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

// One token per forward pass. `held` is the session's token list (what the backend
// sequence holds); `logits` are those of its last token.
Status decode_plain(Backend& backend, SeqId seq, std::vector<int32_t>* held, Sampler& sampler,
                    std::vector<float> logits, Emitter& emitter) {
  int32_t token = sampler.sample(logits);
  if (sampler.params().temperature <= 0) {
    // Greedy: the backend returns the token alone (no logits copied per token).
    while (emitter.emit(token) && !emitter.cancelled()) {
      BatchToken t;
      t.token = token;
      t.seq = seq;
      t.pos = static_cast<int32_t>(held->size());
      Result<int32_t> next = backend.forward_greedy(t);
      if (!next.ok()) return next.status().wrap("decode at position " + std::to_string(t.pos));
      held->push_back(token);
      token = *next;
    }
    return Status::Ok();
  }
  while (emitter.emit(token) && !emitter.cancelled()) {
    DS4_RETURN_IF_ERROR(decode_token(backend, seq, token, static_cast<int32_t>(held->size()), &logits));
    held->push_back(token);
    token = sampler.sample(logits);
  }
  return Status::Ok();
}

// Greedy decoding with MTP drafts (runtime/speculative.h): identical tokens, fewer
// forward passes when drafts are accepted. `hidden` is the HC state of the last held
// token.
Status decode_speculative(Backend& backend, SeqId seq, std::vector<int32_t>* held,
                          const std::vector<float>& logits, std::vector<float> hidden,
                          int32_t max_drafts, Emitter& emitter, GenerateResult* result) {
  int32_t token = Sampler::greedy(logits);
  std::vector<int32_t> drafts;
  Verification verified;
  // Draft length adapts: it shrinks to one past the accepted run after a rejection
  // (wrong drafts cost an MTP pass and a wider verification each) and grows back by
  // one after a round whose drafts were all accepted.
  int32_t draft_len = std::min(max_drafts, Backend::kMaxRollback);
  while (emitter.emit(token) && !emitter.cancelled()) {
    const int32_t pos = static_cast<int32_t>(held->size());
    // Drafts beyond the token budget could never be emitted.
    const int32_t n_drafts = std::min(draft_len, emitter.remaining() - 1);
    drafts.clear();
    if (n_drafts > 0) {
      DS4_RETURN_IF_ERROR(draft_with_mtp(backend, seq, hidden, pos - 1, token, n_drafts, &drafts));
    }
    DS4_RETURN_IF_ERROR(verify_drafts(backend, seq, token, pos, drafts, &verified));
    result->draft_tokens += static_cast<int32_t>(drafts.size());
    result->accepted_draft_tokens += verified.accepted;
    draft_len = verified.accepted == n_drafts
                    ? std::min({draft_len + 1, max_drafts, Backend::kMaxRollback})
                    : verified.accepted + 1;
    held->push_back(token);
    held->insert(held->end(), drafts.begin(), drafts.begin() + verified.accepted);
    // Emit the accepted drafts; the main model's own next token is emitted by the loop.
    for (int32_t i = 0; i < verified.accepted; ++i) {
      if (!emitter.emit(verified.tokens[i])) {
        // verified.tokens[i] ends the generation: keep only what precedes it.
        const int32_t keep = pos + 1 + i;
        DS4_RETURN_IF_ERROR(backend.truncate(seq, keep).wrap("speculative stop"));
        held->resize(keep);
        return Status::Ok();
      }
    }
    token = verified.tokens.back();
    hidden = std::move(verified.hidden);
  }
  return Status::Ok();
}

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

// Brings the session's backend state to a prefix of `prompt`, keeping as much as
// the backend can; returns how many prompt tokens are already in the state. At
// least one prompt token is always left to prefill (its logits start decoding).
static Result<int32_t> reuse_prefix(Backend& backend, SeqId seq, std::vector<int32_t>* held,
                                    const std::vector<int32_t>& prompt) {
  size_t keep = common_prefix(*held, prompt);
  if (keep == prompt.size()) keep = prompt.size() - 1;
  if (keep == held->size()) return static_cast<int32_t>(keep);
  const size_t rollback_limit =
      held->size() > static_cast<size_t>(Backend::kMaxRollback) ? held->size() - Backend::kMaxRollback : 0;
  if (keep < rollback_limit) keep = 0;
  DS4_RETURN_IF_ERROR(backend.truncate(seq, static_cast<int32_t>(keep)));
  held->resize(keep);
  return static_cast<int32_t>(keep);
}

Result<GenerateResult> Engine::generate(Session& session, const GenerateRequest& request,
                                        const TokenSink& sink) {
  const auto start = Clock::now();
  const int32_t n_prompt = static_cast<int32_t>(request.prompt.size());
  if (n_prompt == 0) return Status::Error("generate: the prompt is empty");
  const int32_t vocab = tokenizer_->vocab_size();
  for (int32_t i = 0; i < n_prompt; ++i) {
    if (request.prompt[i] < 0 || request.prompt[i] >= vocab) {
      return Status::Error("generate: prompt token " + std::to_string(i) + " has id " +
                           std::to_string(request.prompt[i]) + ", outside the vocabulary [0, " +
                           std::to_string(vocab) + ")");
    }
  }
  const int32_t ctx = options_.ctx;
  const int32_t max_tokens = request.max_tokens < 0 ? ctx - n_prompt : request.max_tokens;
  if (n_prompt + static_cast<int64_t>(max_tokens) > ctx) {
    return Status::Error("context overflow: prompt of " + std::to_string(n_prompt) +
                         " tokens + max_tokens " + std::to_string(max_tokens) + " = " +
                         std::to_string(n_prompt + static_cast<int64_t>(max_tokens)) +
                         " exceeds the context size of " + std::to_string(ctx) + " tokens");
  }

  GenerateResult result;
  result.prompt_tokens = n_prompt;
  auto reused = reuse_prefix(*backend_, session.seq_, &session.tokens_, request.prompt);
  if (!reused.ok()) return reused.status();
  result.reused_tokens = *reused;

  // Prefill the new suffix.
  const bool speculative = speculative_enabled() && request.sampling.temperature <= 0;
  std::vector<float> logits, hidden;
  const std::span<const int32_t> suffix(request.prompt.data() + *reused, n_prompt - *reused);
  size_t fed = 0;
  const Status prefill =
      prefill_tokens(*backend_, session.seq_, suffix, *reused, options_.prefill_chunk, &logits,
                     request.cancel, &fed, speculative ? &hidden : nullptr);
  session.tokens_.insert(session.tokens_.end(), suffix.begin(), suffix.begin() + fed);
  if (!prefill.ok()) return prefill;
  result.prefill_seconds = seconds_between(start, Clock::now());
  if (fed < suffix.size()) {
    result.finish_reason = FinishReason::kCancelled;
    return result;
  }

  // Decode.
  result.finish_reason = FinishReason::kLength;
  Emitter emitter(&result, *tokenizer_, request, sink, max_tokens);
  if (max_tokens > 0) {
    Status decoded;
    if (speculative) {
      decoded = decode_speculative(*backend_, session.seq_, &session.tokens_, logits,
                                   std::move(hidden), options_.mtp_draft, emitter, &result);
    } else {
      Sampler sampler(request.sampling);
      decoded = decode_plain(*backend_, session.seq_, &session.tokens_, sampler, std::move(logits),
                             emitter);
    }
    if (!decoded.ok()) return decoded;
  }
  emitter.finish(start);
  return result;
}

}  // namespace ds4
