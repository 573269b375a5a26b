#include "server/prompt.h"

#include <algorithm>

namespace ds4::server {

ThinkingMode effective_thinking(ThinkingRequest requested, int32_t ctx_size) {
  switch (requested) {
    case ThinkingRequest::kDisabled:
      return ThinkingMode::kNone;
    case ThinkingRequest::kMax:
      return ctx_size >= kThinkMaxMinContext ? ThinkingMode::kMax : ThinkingMode::kHigh;
    case ThinkingRequest::kDefault:
    case ThinkingRequest::kEnabled:
      break;
  }
  return ThinkingMode::kHigh;
}

SamplerParams effective_sampling(const SamplingIn& requested, ThinkingMode thinking) {
  SamplerParams params;
  if (thinking == ThinkingMode::kNone) {
    if (requested.temperature) params.temperature = static_cast<float>(*requested.temperature);
    if (requested.top_p) params.top_p = static_cast<float>(*requested.top_p);
    if (requested.min_p) params.min_p = static_cast<float>(*requested.min_p);
    if (requested.top_k) {
      params.top_k = std::clamp(*requested.top_k, 0, SamplerParams::kMaxTopK);
    }
  }
  params.seed = requested.seed && *requested.seed > 0 ? static_cast<uint64_t>(*requested.seed)
                                                      : sampler_time_seed();
  return params;
}

Result<std::string> render_prompt(const CompletionRequest& request, ThinkingMode thinking) {
  ChatOptions options;
  options.thinking = thinking;
  if (request.endpoint == Endpoint::kCompletions) {
    std::vector<Message> messages(2);
    messages[0].role = "system";
    messages[0].content = kCompletionsSystemPrompt;
    messages[1].role = "user";
    messages[1].content = request.prompt;
    return render_chat(messages, options);
  }
  std::vector<std::string> tools;
  if (request.tools_active()) tools = request.tools;
  return render_chat(request.messages, tools, options);
}

std::variant<PreparedRequest, ApiError> prepare_request(const CompletionRequest& request,
                                                        const Tokenizer& tokenizer,
                                                        int32_t ctx_size) {
  PreparedRequest prepared;
  prepared.thinking = effective_thinking(request.thinking, ctx_size);
  prepared.tools_active = request.endpoint == Endpoint::kChatCompletions && request.tools_active();
  Result<std::string> rendered = render_prompt(request, prepared.thinking);
  const std::string input_field =
      request.endpoint == Endpoint::kChatCompletions ? "messages" : "prompt";
  if (!rendered.ok()) return bad_request(rendered.status().message(), input_field);
  GenerateRequest& generate = prepared.generate;
  generate.prompt = tokenizer.encode_with_specials(rendered.value());
  const int32_t prompt_tokens = static_cast<int32_t>(generate.prompt.size());
  const int32_t free_tokens = ctx_size - prompt_tokens;
  if (request.max_tokens) {
    if (*request.max_tokens > free_tokens) {
      return context_overflow(prompt_tokens, *request.max_tokens, ctx_size, input_field);
    }
    generate.max_tokens = *request.max_tokens;
  } else {
    // No budget given: up to the end of the context, which must leave room for one token.
    if (free_tokens < 1) return context_overflow(prompt_tokens, 1, ctx_size, input_field);
    generate.max_tokens = free_tokens;
  }
  generate.sampling = effective_sampling(request.sampling, prepared.thinking);
  generate.stop = request.stop;
  return prepared;
}

}  // namespace ds4::server
