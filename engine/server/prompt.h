// From a parsed OpenAI request to what the engine runs: the rendered prompt's
// token ids (TOKENIZER_AND_CHAT.md §5.2 for chat, §5.3 for /v1/completions), the
// effective thinking mode, the sampler settings (§7.1 server overrides) and the
// token budget, checked against the context size.
//
// Thread-safety: pure functions; the Tokenizer is only read.
#pragma once

#include <variant>

#include "runtime/engine.h"
#include "server/api_error.h"
#include "server/request.h"
#include "text/chat.h"
#include "text/tokenizer.h"

namespace ds4::server {

// Think Max is used only with at least this much context (§5.1); below it, high.
inline constexpr int32_t kThinkMaxMinContext = 393216;

// The system prompt /v1/completions renders before the user's prompt (§5.3).
inline constexpr const char* kCompletionsSystemPrompt = "You are a helpful assistant";

struct PreparedRequest {
  GenerateRequest generate;  // prompt ids, sampler, max_tokens, stop (cancel set by the caller)
  ThinkingMode thinking = ThinkingMode::kHigh;
  bool tools_active = false;
};

ThinkingMode effective_thinking(ThinkingRequest requested, int32_t ctx_size);

// Sampler settings: in thinking modes the request's temperature / top_p / top_k /
// min_p are ignored and the defaults used (§7.1); seed when > 0, else time-based.
SamplerParams effective_sampling(const SamplingIn& requested, ThinkingMode thinking);

// The rendered prompt text (before tokenization).
Result<std::string> render_prompt(const CompletionRequest& request, ThinkingMode thinking);

// Renders, tokenizes and budgets `request`. Errors: 400 for a conversation the chat
// encoding rejects, 400 context_length_exceeded when the prompt (plus max_tokens,
// when given) does not fit in ctx_size.
std::variant<PreparedRequest, ApiError> prepare_request(const CompletionRequest& request,
                                                        const Tokenizer& tokenizer,
                                                        int32_t ctx_size);

}  // namespace ds4::server
