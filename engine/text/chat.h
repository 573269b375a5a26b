// Chat encoding: renders a conversation into the prompt text of DeepSeek V4
// (spec/TOKENIZER_AND_CHAT.md §5, §6), following DeepSeek's official encoder
// (`encoding_dsv4`, reproduced byte for byte on spec/official-encoding/*): system
// text after BOS, `<｜User｜>` turns, `<｜Assistant｜>` + `<think>`/`</think>`,
// reasoning of older turns dropped unless tools are in play, tool results merged into
// user turns as `<tool_result>…</tool_result>` (joined by "\n\n", sorted into
// tool-call order), developer turns, latest reminders, quick-instruction task tokens,
// the tools block, response formats and the Think-Max prefix.
//
// The result is tokenized with Tokenizer::encode_with_specials().
//
// Thread-safety: pure functions.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "text/dsml.h"

namespace ds4 {

// ds4's thinking modes: none (answer directly), high (think; the default), max
// (Think Max: the official prefix before the system text). Callers gate `max` on
// the context size (ds4 uses it only with >= 393216 tokens of context).
enum class ThinkingMode { kNone, kHigh, kMax };

struct Message {
  // "system", "developer", "user", "assistant", "tool" (or "function"),
  // "latest_reminder". Other roles are rejected by render_chat().
  std::string role;
  std::string content;
  std::string reasoning_content;     // assistant: its reasoning (may be empty)
  std::vector<ToolCall> tool_calls;  // assistant: calls it made
  std::string tool_call_id;          // tool: the call this result answers
  // system / developer: JSON text of each tool, an OpenAI tool object
  // {"type":"function","function":{...}} or the bare function object.
  std::vector<std::string> tools;
  std::string response_format;       // system / developer: JSON schema text, "" = none
  std::string task;                  // user: "action", "query", "authority", "domain", "title", "read_url"; "" = none
  bool without_eos = false;          // assistant: leave the turn open (no end-of-sentence)
};

struct ChatOptions {
  ThinkingMode thinking = ThinkingMode::kHigh;
  // Drop the reasoning of assistant turns before the last user turn (official
  // default). Ignored (nothing is dropped) when any message carries tools.
  bool drop_thinking = true;
  bool add_bos = true;
};

// Renders `messages` (official encoder semantics). If the conversation ends with a
// user / tool / developer turn, the answer is opened with `<｜Assistant｜><think>`
// (thinking) or `<｜Assistant｜></think>`. Errors name the message at fault (index
// and what is wrong: bad tool JSON, unknown role or task).
Result<std::string> render_chat(const std::vector<Message>& messages,
                                const ChatOptions& options);

// Server form: `tools` (JSON text of OpenAI tool objects; pass none when
// tool_choice is "none") are attached to the first system message, or to a new empty
// system message placed first when there is none; then as above.
Result<std::string> render_chat(std::vector<Message> messages,
                                const std::vector<std::string>& tools,
                                const ChatOptions& options);

// The tools block of the system region for `tools` (JSON text as above), ending in
// "\n". Exposed for tests and for prompt-size estimates.
Result<std::string> render_tools_block(const std::vector<std::string>& tools);

// The Think-Max prefix text (§5.1).
std::string_view think_max_prefix();

// Parses an OpenAI-style `messages` JSON array (content as a string, or a list of
// {"type":"text","text":...} parts; assistant `reasoning_content` or `reasoning`;
// `tool_calls` with `function.arguments` as a string or an object; `tools`,
// `response_format`, `task`, `wo_eos` on any message). Errors name the message index
// and field at fault.
Result<std::vector<Message>> messages_from_json(std::string_view json_text);
// Same for a JSON `tools` array: returns each element as compact JSON text.
Result<std::vector<std::string>> tools_from_json(std::string_view json_text);

}  // namespace ds4
