// Engine: one loaded model (plus optional MTP block), its tokenizer and a backend,
// and the generation API the CLI, the server and the benchmark drive.
//
// A Session is one backend sequence plus the token history its state holds. A
// request whose prompt extends a session's tokens reuses that state: only the new
// suffix is prefilled. A prompt that diverges truncates the session back to the
// longest common prefix (when the backend can roll back that far) or resets it.
//
// generate() prefills the prompt in chunks, then samples one token per step until
// EOS, a stop string, max_tokens, cancellation or the sink asking to stop. Greedy
// requests use MTP speculative decoding when enabled (runtime/speculative.h). The sink
// receives text deltas that never end inside a UTF-8 character and never contain
// text that could still turn out to be part of a stop string; the ids of tokens
// whose text is held back ride with the next delta.
//
// begin_generation() hands out the same work cut into steps (a Generation): the batch
// scheduler (runtime/batch_scheduler.h) interleaves the steps of several generations,
// each on its own Session, and runs their decode tokens in one forward() call.
// generate() is a Generation driven alone to its end.
//
// Thread-safety: an Engine and its Sessions are driven by ONE worker thread (the
// backend is single-threaded). Other threads may only set a request's cancel flag.
// Several Sessions may exist at once; each holds its own backend sequence. A
// Session must not outlive the Engine that created it.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "runtime/backend.h"
#include "runtime/sampler.h"

namespace ds4 {

class Model;
class Tokenizer;
struct ModelConfig;

// CUDA when this build has it and a GPU is present, else the CPU.
BackendKind default_backend_kind();

// Draft tokens per step when an MTP file is given without an explicit draft count.
inline constexpr int32_t kDefaultMtpDraft = 2;

struct EngineOptions {
  std::string model_path;            // main GGUF
  std::string mtp_path;              // optional MTP GGUF ("" = none)
  BackendKind backend = default_backend_kind();
  int32_t ctx = 32768;               // tokens per session (prompt + generated)
  int threads = 0;                   // CPU threads; 0 = all cores
  int32_t mtp_draft = 0;             // MTP draft tokens per step (0 = off; needs mtp_path)
  bool qat = true;                   // FP8 KV / FP4 indexer round trips (the real model)
  int32_t prefill_chunk = 2048;      // prompt tokens per forward() call (the CUDA prefill's largest chunk)
};

// Why a generation ended.
enum class FinishReason {
  kStop,       // EOS sampled or a stop string matched
  kLength,     // max_tokens reached (or the context is full)
  kCancelled,  // the cancel flag was set or the sink returned false
};
std::string_view finish_reason_name(FinishReason reason);  // "stop" | "length" | "cancelled"

struct GenerateRequest {
  std::vector<int32_t> prompt;        // the whole prompt (token ids), BOS included
  SamplerParams sampling;             // temperature, top_p, top_k, min_p, seed
  int32_t max_tokens = -1;            // generated tokens at most; -1 = up to the context end
  std::vector<std::string> stop;      // stop strings (cut at the earliest match)
  const std::atomic<bool>* cancel = nullptr;  // set from any thread to stop early
};

// One streamed piece of output. `token_ids` are the sampled ids released with this
// delta (usually one; more when earlier tokens' bytes were held back, none only in
// the final flush after a stop-string cut). `text` is UTF-8 complete.
struct TokenDelta {
  std::span<const int32_t> token_ids;
  std::string_view text;
};
// Returns false to stop the generation (finish reason kCancelled).
using TokenSink = std::function<bool(const TokenDelta&)>;

struct GenerateResult {
  int32_t prompt_tokens = 0;      // the whole prompt, reused part included
  int32_t reused_tokens = 0;      // prompt tokens whose state was kept from before
  int32_t completion_tokens = 0;  // tokens delivered to the sink (EOS is not counted)
  FinishReason finish_reason = FinishReason::kStop;
  std::vector<int32_t> output_ids;  // every sampled id in order, a final EOS included
  int32_t draft_tokens = 0;       // MTP drafts checked by the main model
  int32_t accepted_draft_tokens = 0;  // of which accepted
  std::string text;               // everything delivered to the sink, concatenated
  // Decode steps that fed one of this generation's tokens, and the sum over those
  // steps of the sequences each step decoded together (1 per step when run alone;
  // a speculative round counts as one step of one sequence).
  int32_t decode_steps = 0;
  int64_t decode_step_sequences = 0;
  double prefill_seconds = 0;     // prefill of the new prompt suffix
  double ttft_seconds = 0;        // generate() start to the first sampled token
  double decode_seconds = 0;      // first sampled token to the last one
  // Prefill speed over the prefilled suffix; decode speed as llama-benchy defines it,
  // (N - 1) / (t_last - t_first) over the N sampled ids. Both 0 when undefined.
  double prefill_tokens_per_second() const;
  double decode_tokens_per_second() const;
  // Mean number of sequences per decode step while this generation ran (0 when it
  // had no decode step).
  double mean_decode_batch() const;
};

class Engine;
class Generation;

// One sequence of the backend and the tokens its state holds. Create with
// Engine::new_session(); not copyable.
class Session {
 public:
  ~Session();
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  const std::vector<int32_t>& tokens() const { return tokens_; }
  int32_t size() const { return static_cast<int32_t>(tokens_.size()); }
  // Forgets everything (the next request prefills from token zero).
  Status reset();

 private:
  friend class Engine;
  friend class Generation;
  Session(Backend* backend, SeqId seq) : backend_(backend), seq_(seq) {}
  Backend* backend_;
  SeqId seq_;
  std::vector<int32_t> tokens_;   // tokens whose state the backend sequence holds
};

class Engine {
 public:
  static Result<std::unique_ptr<Engine>> Load(const EngineOptions& options);
  // Assembles an Engine from parts built elsewhere (tests with a scripted backend,
  // tools with their own backend). `backend` must have been made for `model`; a
  // scripted test backend may come with a null model (then config() and model() must
  // not be called).
  static std::unique_ptr<Engine> FromParts(EngineOptions options, std::unique_ptr<Model> model,
                                           std::unique_ptr<Tokenizer> tokenizer,
                                           std::unique_ptr<Backend> backend);
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  const Tokenizer& tokenizer() const;
  const ModelConfig& config() const;
  const Model& model() const { return *model_; }
  Backend& backend() { return *backend_; }
  const EngineOptions& options() const { return options_; }
  int32_t ctx_size() const { return options_.ctx; }
  // True when greedy requests decode speculatively with MTP drafts (mtp_draft > 0
  // and the backend runs the MTP block); the tokens are the same either way.
  bool speculative_enabled() const;

  Result<std::unique_ptr<Session>> new_session();

  // Runs one request on `session` (see the file comment). Errors: context overflow
  // (prompt + max_tokens beyond ctx_size(), with the numbers), an empty prompt, an id
  // outside the vocabulary, or a backend failure. The session always stays consistent:
  // its tokens() are exactly what the backend state holds (after an error or a
  // cancel, the part of the prompt that was fed).
  Result<GenerateResult> generate(Session& session, const GenerateRequest& request,
                                  const TokenSink& sink);

  // Starts a request on `session` to be driven step by step (see Generation). Checks
  // the request as generate() does (same errors, nothing touched on error), then
  // brings the session to the reusable prefix of the prompt. The session must
  // outlive the Generation and run no other request meanwhile.
  Result<std::unique_ptr<Generation>> begin_generation(Session& session, GenerateRequest request,
                                                       TokenSink sink);

  // How many of `prompt`'s tokens a session holding `held` keeps when it runs
  // `prompt` (the common prefix when the backend can roll back to it, else 0; at
  // least one prompt token is always prefilled).
  static int32_t reusable_prefix(const std::vector<int32_t>& held, const std::vector<int32_t>& prompt);

 private:
  Engine(EngineOptions options, std::unique_ptr<Model> model,
         std::unique_ptr<Tokenizer> tokenizer, std::unique_ptr<Backend> backend);
  EngineOptions options_;
  std::unique_ptr<Model> model_;
  std::unique_ptr<Tokenizer> tokenizer_;
  std::unique_ptr<Backend> backend_;
};

// One request in progress on one Session: generate() cut into steps, so that a
// driver (the batch scheduler) can interleave several. The phases run in order:
//   kPrefill  prefill_step() feeds the next chunk of the prompt suffix (at most
//             EngineOptions::prefill_chunk tokens, one forward() call of its own);
//             after the last chunk the first token is sampled and streamed.
//   kDecode   one token was sampled and streamed but not yet fed. Either the driver
//             feeds decode_input() in a forward() call of its choice (several
//             generations' tokens together) and passes that token's logits to
//             decode_accept(), or the generation runs a step alone: decode_step()
//             (greedy steps ask the backend for the token only) or, when
//             speculative(), speculative_step() (one MTP draft-and-verify round).
//   kDone     finish() flushes held text to the sink and returns the result.
// Every step samples, streams, applies stop strings, max_tokens, EOS and the cancel
// flag exactly as generate() does, so the tokens, the deltas and the result are
// those of generate() whatever else runs beside it. A step that fails leaves the
// session consistent (its tokens are what the backend holds); the generation is
// then over (the caller reports the error and drops it).
//
// Thread-safety: driven by the engine's worker thread only.
class Generation {
 public:
  enum class Phase { kPrefill, kDecode, kDone };

  ~Generation();
  Generation(const Generation&) = delete;
  Generation& operator=(const Generation&) = delete;

  Phase phase() const;
  Session& session() const;
  // Prompt tokens still to prefill (phase kPrefill).
  int32_t prefill_remaining() const;

  // kPrefill: feeds the next prompt chunk; ends the generation (cancelled) instead
  // when the cancel flag is set.
  Status prefill_step();

  // kDecode: the token to feed next (its sequence, position, want_logits set).
  BatchToken decode_input() const;
  // kDecode: that token was fed (in a batch of `step_sequences` sequences) and these
  // are its logits (one row of vocab floats): samples the next token and streams it.
  Status decode_accept(std::span<const float> logits, int32_t step_sequences);
  // kDecode: one decode step alone (forward_greedy when greedy).
  Status decode_step();
  // True when this generation decodes speculatively when alone: greedy and the
  // engine's speculative_enabled().
  bool speculative() const;
  // kDecode and speculative(): one MTP round alone (drafts, then one verification
  // forward). Without the HC state of the last fed token (after a batched step) the
  // round feeds the pending token alone to get it, and drafts again from the next.
  Status speculative_step();

  // Ends the generation (kCancelled) when its cancel flag is set; true when done.
  bool check_cancel();

  // Flushes held text to the sink and fills in the timings. Call once, in phase
  // kDone (or earlier, to abandon it: the result then says kCancelled).
  GenerateResult finish();

 private:
  friend class Engine;
  struct State;
  explicit Generation(std::unique_ptr<State> state);
  std::unique_ptr<State> state_;
};

}  // namespace ds4
