// DSML tool calls (spec/TOKENIZER_AND_CHAT.md §6.2): rendering past tool calls into
// the `<｜DSML｜tool_calls>` block, parsing a completion back into reasoning, content
// and tool calls, and DsmlStreamParser, the incremental form the server uses to
// stream reasoning / content / tool-call deltas while tokens arrive.
//
// Rendering and parsing follow DeepSeek's official encoder: string parameters are
// written raw (`string="true"`), other JSON values as Python json.dumps text
// (`string="false"`); parsed arguments are the JSON object text
// `{"k": v, "k2": v2}` (", " and ": " separators, as the official decoder builds it).
// The parser also accepts ds4's tolerated variants of the block start
// (`<DSML｜tool_calls>`, plain `<tool_calls>`).
//
// Thread-safety: free functions are pure; a DsmlStreamParser is used by one thread.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace ds4 {

// One call of a tool: OpenAI `{"id", "function": {"name", "arguments"}}`.
struct ToolCall {
  std::string id;         // may be empty (the model does not produce ids)
  std::string name;
  std::string arguments;  // JSON text of the arguments object
};

// "\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=...>...</｜DSML｜tool_calls>" for the
// calls, as the official encoder writes them after an assistant message's content.
// Arguments that are not a JSON object become one raw string parameter `arguments`.
std::string render_tool_calls(const std::vector<ToolCall>& calls);

// What a completion means.
struct ParsedCompletion {
  std::string reasoning;              // thinking mode: text before the first </think>
  std::string content;                // visible answer (without the tool-call block)
  std::vector<ToolCall> tool_calls;
  bool reasoning_closed = false;      // thinking mode: a </think> was seen
};

// Parses the text generated after the prompt (in thinking mode the prompt ended with
// <think>, so the text starts inside the reasoning). Text from the first
// end-of-sentence string on is ignored. Errors name the malformed part (e.g. an unterminated tool-call block).
Result<ParsedCompletion> parse_completion(std::string_view text, bool thinking);

// One incremental piece of a completion.
struct DsmlEvent {
  enum class Kind {
    kReasoning,          // `text`: reasoning delta
    kContent,            // `text`: visible content delta
    kToolCallBegin,      // `index`, `name`: a new call
    kToolCallArguments,  // `index`, `text`: next fragment of the call's arguments JSON
    kToolCallEnd,        // `index`: the call is complete
  };
  Kind kind = Kind::kContent;
  int index = 0;
  std::string name;
  std::string text;
};

// Incremental parser: push() any fragments of the completion text (token by token)
// and get back the events that are certain. An end-of-sentence string ends the
// completion (text after it is ignored). Text that might be the start of a marker
// (`</think>`, the tool-call block start, trailing whitespace before a block) is held
// until it is decided. The concatenated argument fragments of a call equal the
// `arguments` parse_completion() returns.
class DsmlStreamParser {
 public:
  explicit DsmlStreamParser(bool thinking);

  std::vector<DsmlEvent> push(std::string_view text);
  // End of generation: flushes held text. Fails if a tool-call block was opened but
  // not closed, or is malformed.
  Result<std::vector<DsmlEvent>> finish();

  // True once a complete `</｜DSML｜tool_calls>` was seen (finish reason tool_calls).
  bool tool_calls_done() const { return state_ == State::kDone; }
  // True while inside the tool-call block (any part of it).
  bool in_tool_calls() const { return state_ == State::kToolCalls; }
  // True inside a tool-call block but outside a parameter value: the structural part
  // the server samples greedily (§6.2).
  bool in_structure() const { return state_ == State::kToolCalls && !in_value_; }
  // Set when the tool-call block is malformed; the stream stops producing events.
  const Status& error() const { return error_; }
  // Thinking mode: true once the reasoning was closed by </think>.
  bool reasoning_closed() const { return reasoning_closed_; }

 private:
  enum class State { kReasoning, kContent, kToolCalls, kDone };
  void drain(std::vector<DsmlEvent>* out);
  void parse_reasoning(std::vector<DsmlEvent>* out, bool final);
  void parse_content(std::vector<DsmlEvent>* out, bool final);
  void emit_content(std::string_view text, bool final, std::vector<DsmlEvent>* out);
  void parse_tool_calls(std::vector<DsmlEvent>* out);
  void fail(std::string message);

  State state_;
  std::string buf_;         // text not yet turned into events
  std::string pending_ws_;  // content whitespace held until we know a block does not follow
  bool ended_ = false;      // an end-of-sentence string was seen
  bool reasoning_started_ = false;
  bool reasoning_closed_ = false;
  // Tool-call block progress.
  std::string_view open_;   // tag prefix of the block's variant ("<｜DSML｜", "<DSML｜", "<")
  std::string_view close_;  // closing-tag prefix ("</｜DSML｜", "</DSML｜", "</")
  bool in_invoke_ = false;
  bool in_value_ = false;
  int call_index_ = -1;
  int params_in_call_ = 0;
  std::string param_name_;
  bool param_is_string_ = true;
  Status error_;
};

}  // namespace ds4
