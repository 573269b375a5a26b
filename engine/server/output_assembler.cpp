#include "server/output_assembler.h"

namespace ds4::server {
namespace {

constexpr std::string_view kThinkEnd = "</think>";

// Length of the longest suffix of `text` that is a proper prefix of `marker`.
size_t partial_marker_suffix(std::string_view text, std::string_view marker) {
  size_t longest = std::min(text.size(), marker.size() - 1);
  for (size_t n = longest; n > 0; --n) {
    if (text.substr(text.size() - n) == marker.substr(0, n)) return n;
  }
  return 0;
}

}  // namespace

OutputAssembler::OutputAssembler(bool thinking, bool tools_active)
    : tools_active_(tools_active), in_reasoning_(thinking), parser_(thinking) {}

Delta OutputAssembler::push(std::string_view text) {
  Delta delta = tools_active_ ? from_events(parser_.push(text)) : split_reasoning(text, false);
  record(delta);
  return delta;
}

Result<Delta> OutputAssembler::finish() {
  Delta delta;
  if (tools_active_) {
    Result<std::vector<DsmlEvent>> events = parser_.finish();
    if (!events.ok()) return events.status();
    delta = from_events(events.value());
  } else {
    delta = split_reasoning("", true);
  }
  record(delta);
  return delta;
}

Delta OutputAssembler::split_reasoning(std::string_view text, bool final) {
  Delta delta;
  held_.append(text);
  if (in_reasoning_) {
    size_t end = held_.find(kThinkEnd);
    if (end == std::string::npos) {
      size_t keep = final ? 0 : partial_marker_suffix(held_, kThinkEnd);
      delta.reasoning = held_.substr(0, held_.size() - keep);
      held_.erase(0, held_.size() - keep);
      return delta;
    }
    delta.reasoning = held_.substr(0, end);
    held_.erase(0, end + kThinkEnd.size());
    in_reasoning_ = false;
  }
  delta.content = std::move(held_);
  held_.clear();
  return delta;
}

Delta OutputAssembler::from_events(const std::vector<DsmlEvent>& events) {
  Delta delta;
  for (const DsmlEvent& event : events) {
    switch (event.kind) {
      case DsmlEvent::Kind::kReasoning:
        delta.reasoning += event.text;
        break;
      case DsmlEvent::Kind::kContent:
        delta.content += event.text;
        break;
      case DsmlEvent::Kind::kToolCallBegin:
        tool_calls_.push_back(ToolCallOut{new_tool_call_id(), event.name, ""});
        delta.tool_calls.push_back(
            ToolCallDelta{event.index, tool_calls_.back().id, event.name, ""});
        break;
      case DsmlEvent::Kind::kToolCallArguments:
        if (!delta.tool_calls.empty() && delta.tool_calls.back().index == event.index) {
          delta.tool_calls.back().arguments += event.text;
        } else {
          delta.tool_calls.push_back(ToolCallDelta{event.index, "", "", event.text});
        }
        if (event.index >= 0 && event.index < static_cast<int>(tool_calls_.size())) {
          tool_calls_[event.index].arguments += event.text;
        }
        break;
      case DsmlEvent::Kind::kToolCallEnd:
        break;
    }
  }
  return delta;
}

void OutputAssembler::record(const Delta& delta) {
  reasoning_ += delta.reasoning;
  content_ += delta.content;
}

}  // namespace ds4::server
