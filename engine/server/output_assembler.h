// OutputAssembler: turns the text deltas of one generation into what the OpenAI
// API shows: reasoning_content (thinking mode: everything before the first
// </think>), content, and tool calls (when the request's tools are active, the
// DSML block is parsed by text/dsml.h's DsmlStreamParser and streamed as
// tool_calls deltas). It also keeps the totals for the non-streamed response.
//
// Without active tools no DSML is interpreted: the text after </think> is content.
//
// Thread-safety: one instance per generation, used by one thread.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "server/response.h"
#include "text/dsml.h"

namespace ds4::server {

class OutputAssembler {
 public:
  OutputAssembler(bool thinking, bool tools_active);

  // The visible part of the next piece of generated text (may be empty while a
  // possible marker is held back).
  Delta push(std::string_view text);
  // End of generation: flushes held text. Fails on an unterminated or malformed
  // tool-call block (the message names it).
  Result<Delta> finish();

  // A complete tool-call block was generated: the generation should stop.
  bool tool_calls_done() const { return tools_active_ && parser_.tool_calls_done(); }

  const std::string& reasoning() const { return reasoning_; }
  const std::string& content() const { return content_; }
  const std::vector<ToolCallOut>& tool_calls() const { return tool_calls_; }

 private:
  Delta split_reasoning(std::string_view text, bool final);
  Delta from_events(const std::vector<DsmlEvent>& events);
  void record(const Delta& delta);

  bool tools_active_;
  bool in_reasoning_;
  std::string held_;  // text that may be the start of "</think>" (no-tools path)
  DsmlStreamParser parser_;
  std::string reasoning_;
  std::string content_;
  std::vector<ToolCallOut> tool_calls_;
};

}  // namespace ds4::server
