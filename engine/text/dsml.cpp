#include "text/dsml.h"

#include <array>

#include "text/py_json.h"
#include "text/tokenizer.h"

namespace ds4 {
namespace {

constexpr std::string_view kDsml = kDsmlText;  // ｜DSML｜

std::string dsml_tag(std::string_view name) {
  std::string tag;
  tag.reserve(1 + kDsml.size() + name.size());
  tag.push_back('<');
  tag.append(kDsml);
  tag.append(name);
  return tag;
}

// One rendered parameter: raw strings, Python-JSON for everything else.
std::string render_parameter(const std::string& key, const OrderedJson& value) {
  const bool is_string = value.is_string();
  std::string out = dsml_tag("parameter name=\"") + key + "\" string=\"" +
                    (is_string ? "true" : "false") + "\">";
  out += is_string ? value.get<std::string>() : python_json_dumps(value);
  out += "</" + std::string(kDsml) + "parameter>";
  return out;
}

std::string render_arguments(const std::string& arguments) {
  if (arguments.find_first_not_of(" \t\r\n") == std::string::npos) return "";
  Result<OrderedJson> parsed = parse_ordered_json(arguments, "arguments");
  if (!parsed.ok() || !parsed->is_object()) {
    return render_parameter("arguments", OrderedJson(arguments));
  }
  std::string out;
  for (auto it = parsed->begin(); it != parsed->end(); ++it) {
    if (!out.empty()) out.push_back('\n');
    out += render_parameter(it.key(), it.value());
  }
  return out;
}

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

size_t skip_space(std::string_view s, size_t i) {
  while (i < s.size() && is_space(s[i])) ++i;
  return i;
}

std::string_view rtrim(std::string_view s) {
  size_t n = s.size();
  while (n > 0 && is_space(s[n - 1])) --n;
  return s.substr(0, n);
}

std::string_view trim(std::string_view s) {
  s = rtrim(s);
  return s.substr(skip_space(s, 0));
}

// Length of the longest suffix of `s` that is a proper prefix of `marker`.
size_t partial_suffix(std::string_view s, std::string_view marker) {
  for (size_t n = std::min(s.size(), marker.size() - 1); n > 0; --n) {
    if (s.substr(s.size() - n) == marker.substr(0, n)) return n;
  }
  return 0;
}

// The block-start variants ds4 accepts, with their tag prefixes.
struct Variant {
  std::string_view open;         // e.g. "<｜DSML｜"
  std::string_view close;        // e.g. "</｜DSML｜"
};
constexpr std::array<Variant, 3> kVariants = {{
    {"<\xEF\xBD\x9C" "DSML\xEF\xBD\x9C", "</\xEF\xBD\x9C" "DSML\xEF\xBD\x9C"},
    {"<DSML\xEF\xBD\x9C", "</DSML\xEF\xBD\x9C"},
    {"<", "</"},
}};

// Value of attribute `attr` ("name", "string") inside a tag's text; false if absent.
bool attribute(std::string_view tag, std::string_view attr, std::string* value) {
  const std::string needle = std::string(attr) + "=\"";
  size_t at = 0;
  while ((at = tag.find(needle, at)) != std::string_view::npos) {
    if (at == 0 || is_space(tag[at - 1])) break;
    at += needle.size();
  }
  if (at == std::string_view::npos) return false;
  const size_t begin = at + needle.size();
  const size_t end = tag.find('"', begin);
  if (end == std::string_view::npos) return false;
  *value = std::string(tag.substr(begin, end - begin));
  return true;
}

// JSON text of one parsed parameter value (official decoder: strings re-encoded,
// other values passed through; text that is not JSON is kept as a string).
std::string argument_value_json(std::string_view raw, bool is_string) {
  if (!is_string) {
    const std::string_view t = trim(raw);
    if (!t.empty() && OrderedJson::accept(t.begin(), t.end())) return std::string(t);
  }
  return python_json_dumps(OrderedJson(std::string(raw)));
}

}  // namespace

std::string render_tool_calls(const std::vector<ToolCall>& calls) {
  if (calls.empty()) return "";
  std::string out = "\n\n" + dsml_tag("tool_calls>") + "\n";
  for (size_t i = 0; i < calls.size(); ++i) {
    if (i > 0) out.push_back('\n');
    out += dsml_tag("invoke name=\"") + calls[i].name + "\">\n";
    out += render_arguments(calls[i].arguments);
    out += "\n</" + std::string(kDsml) + "invoke>";
  }
  out += "\n</" + std::string(kDsml) + "tool_calls>";
  return out;
}

DsmlStreamParser::DsmlStreamParser(bool thinking)
    : state_(thinking ? State::kReasoning : State::kContent) {}

void DsmlStreamParser::fail(std::string message) {
  if (error_.ok()) error_ = Status::Error("tool-call block: " + std::move(message));
}

void DsmlStreamParser::parse_reasoning(std::vector<DsmlEvent>* out, bool final) {
  if (!reasoning_started_) {
    // An optional leading <think> (prompts that end with <｜Assistant｜>).
    if (!final && buf_.size() < kThinkBeginText.size() &&
        std::string_view(kThinkBeginText).starts_with(buf_)) {
      return;
    }
    if (buf_.starts_with(kThinkBeginText)) buf_.erase(0, kThinkBeginText.size());
    reasoning_started_ = true;
  }
  const size_t end = buf_.find(kThinkEndText);
  if (end != std::string::npos) {
    if (end > 0) out->push_back({DsmlEvent::Kind::kReasoning, 0, "", buf_.substr(0, end)});
    buf_.erase(0, end + kThinkEndText.size());
    reasoning_closed_ = true;
    state_ = State::kContent;
    return;
  }
  const size_t hold =
      final ? 0 : std::max(partial_suffix(buf_, kThinkEndText), partial_suffix(buf_, kEosText));
  if (buf_.size() > hold) {
    out->push_back({DsmlEvent::Kind::kReasoning, 0, "", buf_.substr(0, buf_.size() - hold)});
    buf_.erase(0, buf_.size() - hold);
  }
}

void DsmlStreamParser::emit_content(std::string_view text, bool final,
                                    std::vector<DsmlEvent>* out) {
  const std::string_view body = final ? text : rtrim(text);
  if (body.empty()) {
    pending_ws_.append(text);
    return;
  }
  out->push_back({DsmlEvent::Kind::kContent, 0, "", pending_ws_ + std::string(body)});
  pending_ws_ = std::string(text.substr(body.size()));
}

void DsmlStreamParser::parse_content(std::vector<DsmlEvent>* out, bool final) {
  size_t best = std::string::npos;
  const Variant* variant = nullptr;
  for (const Variant& v : kVariants) {
    const size_t at = buf_.find(std::string(v.open) + "tool_calls>");
    if (at < best) {
      best = at;
      variant = &v;
    }
  }
  if (variant != nullptr) {
    // Content before the block loses its trailing whitespace.
    const std::string_view before = rtrim(std::string_view(buf_).substr(0, best));
    if (!before.empty()) {
      out->push_back({DsmlEvent::Kind::kContent, 0, "", pending_ws_ + std::string(before)});
    }
    pending_ws_.clear();
    open_ = variant->open;
    close_ = variant->close;
    buf_.erase(0, best + variant->open.size() + std::string_view("tool_calls>").size());
    state_ = State::kToolCalls;
    return;
  }
  size_t hold = 0;
  if (!final) {
    hold = partial_suffix(buf_, kEosText);
    for (const Variant& v : kVariants) {
      hold = std::max(hold, partial_suffix(buf_, std::string(v.open) + "tool_calls>"));
    }
  }
  const std::string ready = buf_.substr(0, buf_.size() - hold);
  buf_.erase(0, ready.size());
  if (final) {
    if (!pending_ws_.empty() || !ready.empty()) {
      out->push_back({DsmlEvent::Kind::kContent, 0, "", pending_ws_ + ready});
    }
    pending_ws_.clear();
  } else {
    emit_content(ready, false, out);
  }
}

// Consumes complete structural units of the block from buf_; returns when more text
// is needed, the block ends, or it is malformed.
void DsmlStreamParser::parse_tool_calls(std::vector<DsmlEvent>* out) {
  const std::string invoke_open = std::string(open_) + "invoke";
  const std::string param_open = std::string(open_) + "parameter";
  const std::string invoke_close = std::string(close_) + "invoke>";
  const std::string param_close = std::string(close_) + "parameter>";
  const std::string block_close = std::string(close_) + "tool_calls>";
  while (state_ == State::kToolCalls && error_.ok()) {
    if (in_value_) {
      const size_t end = buf_.find(param_close);
      if (end == std::string::npos) return;
      std::string fragment = params_in_call_ == 0 ? "{" : ", ";
      fragment += python_json_dumps(OrderedJson(param_name_)) + ": " +
                  argument_value_json(std::string_view(buf_).substr(0, end), param_is_string_);
      out->push_back({DsmlEvent::Kind::kToolCallArguments, call_index_, "", std::move(fragment)});
      ++params_in_call_;
      buf_.erase(0, end + param_close.size());
      in_value_ = false;
      continue;
    }
    buf_.erase(0, skip_space(buf_, 0));
    if (buf_.empty()) return;
    const std::string_view rest = buf_;
    // Which tag starts here? Wait while the text could still become one.
    const std::string& opener = in_invoke_ ? param_open : invoke_open;
    const std::string& closer = in_invoke_ ? invoke_close : block_close;
    if (rest.starts_with(closer)) {
      if (in_invoke_) {
        out->push_back({DsmlEvent::Kind::kToolCallArguments, call_index_, "",
                        params_in_call_ == 0 ? "{}" : "}"});
        out->push_back({DsmlEvent::Kind::kToolCallEnd, call_index_, "", ""});
        in_invoke_ = false;
      } else {
        state_ = State::kDone;
      }
      buf_.erase(0, closer.size());
      continue;
    }
    if (rest.starts_with(opener)) {
      const size_t gt = rest.find('>');
      if (gt == std::string_view::npos) return;
      const std::string_view tag = rest.substr(opener.size(), gt - opener.size());
      std::string name;
      if (tag.empty() || !is_space(tag[0]) || !attribute(tag, "name", &name)) {
        fail("a tag without a name=\"...\" attribute: " + std::string(rest.substr(0, gt + 1)));
        return;
      }
      if (in_invoke_) {
        std::string string_attr = "true";
        attribute(tag, "string", &string_attr);
        param_name_ = name;
        param_is_string_ = string_attr != "false";
        in_value_ = true;
      } else {
        ++call_index_;
        params_in_call_ = 0;
        in_invoke_ = true;
        out->push_back({DsmlEvent::Kind::kToolCallBegin, call_index_, name, ""});
      }
      buf_.erase(0, gt + 1);
      continue;
    }
    if (std::string_view(opener).starts_with(rest) || std::string_view(closer).starts_with(rest)) {
      return;
    }
    fail("unexpected text " + std::string(rest.substr(0, 40)) + (in_invoke_ ? " inside an invoke" : ""));
  }
}

void DsmlStreamParser::drain(std::vector<DsmlEvent>* out) {
  while (error_.ok() && state_ != State::kDone) {
    const State before = state_;
    const size_t size_before = buf_.size();
    if (state_ == State::kReasoning) parse_reasoning(out, false);
    else if (state_ == State::kContent) parse_content(out, false);
    else parse_tool_calls(out);
    if (state_ == before && buf_.size() == size_before) break;
  }
}

std::vector<DsmlEvent> DsmlStreamParser::push(std::string_view text) {
  std::vector<DsmlEvent> out;
  if (!error_.ok() || state_ == State::kDone || ended_) return out;
  buf_.append(text);
  // The end-of-sentence string ends the completion; nothing after it counts.
  const size_t eos = buf_.find(kEosText);
  if (eos != std::string::npos) {
    buf_.resize(eos);
    ended_ = true;
  }
  drain(&out);
  return out;
}

Result<std::vector<DsmlEvent>> DsmlStreamParser::finish() {
  std::vector<DsmlEvent> out;
  drain(&out);
  if (state_ == State::kReasoning) parse_reasoning(&out, true);
  if (state_ == State::kContent) parse_content(&out, true);
  if (!error_.ok()) return error_;
  if (state_ == State::kToolCalls) {
    return Status::Error(in_value_ ? "tool-call block: unterminated parameter \"" + param_name_ + "\""
                         : in_invoke_ ? "tool-call block: unterminated invoke"
                                      : "tool-call block: unterminated (no closing tool_calls tag)");
  }
  return out;
}

Result<ParsedCompletion> parse_completion(std::string_view text, bool thinking) {
  const size_t eos = text.find(kEosText);
  if (eos != std::string_view::npos) text = text.substr(0, eos);
  DsmlStreamParser parser(thinking);
  std::vector<DsmlEvent> events = parser.push(text);
  Result<std::vector<DsmlEvent>> tail = parser.finish();
  if (!tail.ok()) return tail.status();
  events.insert(events.end(), tail->begin(), tail->end());
  ParsedCompletion parsed;
  parsed.reasoning_closed = parser.reasoning_closed();
  for (DsmlEvent& e : events) {
    switch (e.kind) {
      case DsmlEvent::Kind::kReasoning: parsed.reasoning += e.text; break;
      case DsmlEvent::Kind::kContent: parsed.content += e.text; break;
      case DsmlEvent::Kind::kToolCallBegin: parsed.tool_calls.push_back({"", e.name, ""}); break;
      case DsmlEvent::Kind::kToolCallArguments: parsed.tool_calls.back().arguments += e.text; break;
      case DsmlEvent::Kind::kToolCallEnd: break;
    }
  }
  return parsed;
}

}  // namespace ds4
