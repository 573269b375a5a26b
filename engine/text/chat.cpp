#include "text/chat.h"

#include <algorithm>
#include <array>
#include <unordered_map>

#include "text/py_json.h"
#include "text/tokenizer.h"

namespace ds4 {
namespace {

constexpr std::string_view kLatestReminder = "<\xEF\xBD\x9Clatest_reminder\xEF\xBD\x9C>";

constexpr std::string_view kThinkMaxPrefix =
    "Reasoning Effort: Absolute maximum with no shortcuts permitted.\n"
    "You MUST be very thorough in your thinking and comprehensively decompose the problem to "
    "resolve the root cause, rigorously stress-testing your logic against all potential paths, "
    "edge cases, and adversarial scenarios.\n"
    "Explicitly write out your entire deliberation process, documenting every intermediate step, "
    "considered alternative, and rejected hypothesis to ensure absolutely no assumption is left "
    "unchecked.\n\n";

// The official tools block; "｜DSML｜" written out, schemas appended in between.
constexpr std::string_view kToolsHead =
    "## Tools\n\n"
    "You have access to a set of tools to help answer the user's question. You can invoke tools "
    "by writing a \"<\xEF\xBD\x9C" "DSML\xEF\xBD\x9Ctool_calls>\" block like the following:\n\n"
    "<\xEF\xBD\x9C" "DSML\xEF\xBD\x9Ctool_calls>\n"
    "<\xEF\xBD\x9C" "DSML\xEF\xBD\x9Cinvoke name=\"$TOOL_NAME\">\n"
    "<\xEF\xBD\x9C" "DSML\xEF\xBD\x9Cparameter name=\"$PARAMETER_NAME\" string=\"true|false\">"
    "$PARAMETER_VALUE</\xEF\xBD\x9C" "DSML\xEF\xBD\x9Cparameter>\n"
    "...\n"
    "</\xEF\xBD\x9C" "DSML\xEF\xBD\x9Cinvoke>\n"
    "<\xEF\xBD\x9C" "DSML\xEF\xBD\x9Cinvoke name=\"$TOOL_NAME2\">\n"
    "...\n"
    "</\xEF\xBD\x9C" "DSML\xEF\xBD\x9Cinvoke>\n"
    "</\xEF\xBD\x9C" "DSML\xEF\xBD\x9Ctool_calls>\n\n"
    "String parameters should be specified as is and set `string=\"true\"`. For all other types "
    "(numbers, booleans, arrays, objects), pass the value in JSON format and set "
    "`string=\"false\"`.\n\n"
    "If thinking_mode is enabled (triggered by <think>), you MUST output your complete reasoning "
    "inside <think>...</think> BEFORE any tool calls or final response.\n\n"
    "Otherwise, output directly after </think> with tool calls or final response.\n\n"
    "### Available Tool Schemas\n\n";
constexpr std::string_view kToolsTail =
    "\n\nYou MUST strictly follow the above defined tool name and parameter schemas to invoke "
    "tool calls.\n";

constexpr std::string_view kResponseFormatHead =
    "## Response Format:\n\nYou MUST strictly adhere to the following schema to reply:\n";

struct Task {
  std::string_view name;
  std::string_view token;
};
constexpr std::array<Task, 6> kTasks = {{
    {"action", "<\xEF\xBD\x9C" "action\xEF\xBD\x9C>"},
    {"query", "<\xEF\xBD\x9Cquery\xEF\xBD\x9C>"},
    {"authority", "<\xEF\xBD\x9C" "authority\xEF\xBD\x9C>"},
    {"domain", "<\xEF\xBD\x9C" "domain\xEF\xBD\x9C>"},
    {"title", "<\xEF\xBD\x9Ctitle\xEF\xBD\x9C>"},
    {"read_url", "<\xEF\xBD\x9Cread_url\xEF\xBD\x9C>"},
}};

// A user turn after tool results have been merged in: text and tool-result blocks.
struct Block {
  bool tool_result = false;
  std::string text;
  std::string tool_use_id;
};

// One message of the preprocessed conversation.
struct Item {
  Message m;
  bool has_blocks = false;
  std::vector<Block> blocks;
};

std::string where(size_t index, const std::string& role) {
  return "message " + std::to_string(index) + " (" + role + ")";
}

// Official merge_tool_messages(): tool results become tool_result blocks of a user
// turn; consecutive user turns (without a task) are merged into one.
std::vector<Item> merge_tool_messages(const std::vector<Message>& messages) {
  std::vector<Item> merged;
  for (const Message& msg : messages) {
    const bool merge_into_last = !merged.empty() && merged.back().m.role == "user" &&
                                 merged.back().has_blocks;
    if (msg.role == "tool" || msg.role == "function") {
      Block block{true, msg.content, msg.tool_call_id};
      if (merge_into_last) {
        merged.back().blocks.push_back(std::move(block));
      } else {
        Item item;
        item.m.role = "user";
        item.has_blocks = true;
        item.blocks.push_back(std::move(block));
        merged.push_back(std::move(item));
      }
    } else if (msg.role == "user") {
      Block block{false, msg.content, ""};
      if (merge_into_last && merged.back().m.task.empty()) {
        merged.back().blocks.push_back(std::move(block));
      } else {
        Item item;
        item.m = msg;
        item.has_blocks = true;
        item.blocks.push_back(std::move(block));
        merged.push_back(std::move(item));
      }
    } else {
      merged.push_back(Item{msg, false, {}});
    }
  }
  return merged;
}

// Official sort_tool_results_by_call_order(): tool results follow the order of the
// calls of the latest assistant message with tool calls.
void sort_tool_results(std::vector<Item>* items) {
  std::unordered_map<std::string, size_t> order;
  for (Item& item : *items) {
    if (item.m.role == "assistant" && !item.m.tool_calls.empty()) {
      order.clear();
      for (size_t i = 0; i < item.m.tool_calls.size(); ++i) {
        if (!item.m.tool_calls[i].id.empty()) order.emplace(item.m.tool_calls[i].id, i);
      }
    } else if (item.m.role == "user" && item.has_blocks) {
      std::vector<Block> results;
      for (const Block& b : item.blocks) {
        if (b.tool_result) results.push_back(b);
      }
      if (results.size() < 2 || order.empty()) continue;
      auto rank = [&](const Block& b) {
        auto it = order.find(b.tool_use_id);
        return it == order.end() ? size_t{0} : it->second;
      };
      std::stable_sort(results.begin(), results.end(),
                       [&](const Block& a, const Block& b) { return rank(a) < rank(b); });
      size_t next = 0;
      for (Block& b : item.blocks) {
        if (b.tool_result) b = results[next++];
      }
    }
  }
}

int last_user_index(const std::vector<Item>& items) {
  for (int i = static_cast<int>(items.size()) - 1; i >= 0; --i) {
    if (items[i].m.role == "user" || items[i].m.role == "developer") return i;
  }
  return -1;
}

// Official _drop_thinking_messages(): reasoning of assistant turns before the last
// user turn is removed; developer (and other) turns before it are dropped.
std::vector<Item> drop_thinking(std::vector<Item> items) {
  const int last_user = last_user_index(items);
  std::vector<Item> kept;
  for (int i = 0; i < static_cast<int>(items.size()); ++i) {
    Item& item = items[i];
    const std::string& role = item.m.role;
    if (role == "user" || role == "system" || role == "tool" || role == "latest_reminder" ||
        i >= last_user) {
      kept.push_back(std::move(item));
    } else if (role == "assistant") {
      item.m.reasoning_content.clear();
      kept.push_back(std::move(item));
    }
  }
  return kept;
}

Result<std::string> render_tools_of(const Item& item, size_t index) {
  Result<std::string> block = render_tools_block(item.m.tools);
  if (!block.ok()) return block.status().wrap(where(index, item.m.role));
  return block;
}

Result<std::string> render_response_format(const Item& item, size_t index) {
  Result<OrderedJson> schema = parse_ordered_json(item.m.response_format, "response_format");
  if (!schema.ok()) return schema.status().wrap(where(index, item.m.role));
  return std::string(kResponseFormatHead) + python_json_dumps(*schema);
}

// The system-region extras of a system or developer message.
Status append_tools_and_format(const Item& item, size_t index, std::string* out) {
  if (!item.m.tools.empty()) {
    Result<std::string> tools = render_tools_of(item, index);
    if (!tools.ok()) return tools.status();
    *out += "\n\n" + *tools;
  }
  if (!item.m.response_format.empty()) {
    Result<std::string> format = render_response_format(item, index);
    if (!format.ok()) return format.status();
    *out += "\n\n" + *format;
  }
  return Status::Ok();
}

std::string render_user(const Item& item) {
  std::string out(kUserText);
  if (!item.has_blocks) return out + item.m.content;
  for (size_t i = 0; i < item.blocks.size(); ++i) {
    if (i > 0) out += "\n\n";
    const Block& b = item.blocks[i];
    out += b.tool_result ? "<tool_result>" + b.text + "</tool_result>" : b.text;
  }
  return out;
}

struct RenderContext {
  const std::vector<Item>& items;
  bool thinking;
  bool drop;
  bool think_max;
  int last_user;
};

Result<std::string> render_message(const RenderContext& ctx, size_t index) {
  const Item& item = ctx.items[index];
  const std::string& role = item.m.role;
  std::string out;
  if (index == 0 && ctx.thinking && ctx.think_max) out += kThinkMaxPrefix;

  if (role == "system") {
    out += item.m.content;
    DS4_RETURN_IF_ERROR(append_tools_and_format(item, index, &out));
  } else if (role == "developer") {
    out += std::string(kUserText) + item.m.content;
    DS4_RETURN_IF_ERROR(append_tools_and_format(item, index, &out));
  } else if (role == "user") {
    out += render_user(item);
  } else if (role == "latest_reminder") {
    out += std::string(kLatestReminder) + item.m.content;
  } else if (role == "assistant") {
    const bool prev_has_task = index > 0 && !ctx.items[index - 1].m.task.empty();
    if (ctx.thinking && !prev_has_task &&
        (!ctx.drop || static_cast<int>(index) > ctx.last_user)) {
      out += item.m.reasoning_content + std::string(kThinkEndText);
    }
    out += item.m.content;
    out += render_tool_calls(item.m.tool_calls);
    if (!item.m.without_eos) out += kEosText;
  } else {
    return Status::Error(where(index, role) + ": unknown role");
  }

  // Transition into the next turn.
  if (index + 1 < ctx.items.size()) {
    const std::string& next = ctx.items[index + 1].m.role;
    if (next != "assistant" && next != "latest_reminder") return out;
  }
  const std::string open_answer =
      std::string(kAssistantText) +
      std::string(ctx.thinking ? kThinkBeginText : kThinkEndText);
  if (!item.m.task.empty()) {
    auto task = std::find_if(kTasks.begin(), kTasks.end(),
                             [&](const Task& t) { return t.name == item.m.task; });
    if (task == kTasks.end()) {
      return Status::Error(where(index, role) + ": unknown task \"" + item.m.task + "\"");
    }
    if (task->name == "action") out += open_answer;
    out += task->token;
  } else if (role == "user" || role == "developer") {
    const bool think = ctx.thinking && (!ctx.drop || static_cast<int>(index) >= ctx.last_user);
    out += std::string(kAssistantText) + std::string(think ? kThinkBeginText : kThinkEndText);
  }
  return out;
}

std::string json_text_of_content(const OrderedJson& content, std::string* error) {
  if (content.is_null()) return "";
  if (content.is_string()) return content.get<std::string>();
  if (!content.is_array()) {
    *error = "content must be a string, null or an array of parts";
    return "";
  }
  std::string out;
  bool first = true;
  for (const OrderedJson& part : content) {
    if (part.is_string()) {
      if (!first) out += "\n\n";
      out += part.get<std::string>();
    } else if (part.is_object() && part.contains("text") && part["text"].is_string()) {
      if (!first) out += "\n\n";
      out += part["text"].get<std::string>();
    } else {
      const std::string type = part.is_object() && part.contains("type") && part["type"].is_string()
                                   ? part["type"].get<std::string>()
                                   : std::string("unknown");
      *error = "content part of type \"" + type + "\" is not supported (text only)";
      return "";
    }
    first = false;
  }
  return out;
}

Status string_field(const OrderedJson& obj, const char* key, std::string* out,
                    const std::string& context) {
  if (!obj.contains(key) || obj[key].is_null()) return Status::Ok();
  if (!obj[key].is_string()) return Status::Error(context + ": \"" + key + "\" must be a string");
  *out = obj[key].get<std::string>();
  return Status::Ok();
}

Status parse_tool_calls_json(const OrderedJson& calls, Message* m, const std::string& context) {
  if (calls.is_null()) return Status::Ok();
  if (!calls.is_array()) return Status::Error(context + ": \"tool_calls\" must be an array");
  for (size_t i = 0; i < calls.size(); ++i) {
    const std::string at = context + ": tool_calls[" + std::to_string(i) + "]";
    const OrderedJson& call = calls[i];
    if (!call.is_object()) return Status::Error(at + " must be an object");
    const OrderedJson& fn = call.contains("function") ? call["function"] : call;
    if (!fn.is_object()) return Status::Error(at + ": \"function\" must be an object");
    ToolCall tc;
    DS4_RETURN_IF_ERROR(string_field(call, "id", &tc.id, at));
    DS4_RETURN_IF_ERROR(string_field(fn, "name", &tc.name, at));
    if (tc.name.empty()) return Status::Error(at + ": missing function name");
    if (fn.contains("arguments") && !fn["arguments"].is_null()) {
      const OrderedJson& args = fn["arguments"];
      tc.arguments = args.is_string() ? args.get<std::string>()
                                      : args.dump(-1, ' ', false, OrderedJson::error_handler_t::replace);
    }
    m->tool_calls.push_back(std::move(tc));
  }
  return Status::Ok();
}

Result<Message> message_from_json(const OrderedJson& obj, size_t index) {
  const std::string context = "messages[" + std::to_string(index) + "]";
  if (!obj.is_object()) return Status::Error(context + ": must be an object");
  Message m;
  DS4_RETURN_IF_ERROR(string_field(obj, "role", &m.role, context));
  if (m.role.empty()) return Status::Error(context + ": missing \"role\"");
  if (obj.contains("content")) {
    std::string error;
    m.content = json_text_of_content(obj["content"], &error);
    if (!error.empty()) return Status::Error(context + ": " + error);
  }
  DS4_RETURN_IF_ERROR(string_field(obj, "reasoning", &m.reasoning_content, context));
  DS4_RETURN_IF_ERROR(string_field(obj, "reasoning_content", &m.reasoning_content, context));
  DS4_RETURN_IF_ERROR(string_field(obj, "tool_call_id", &m.tool_call_id, context));
  DS4_RETURN_IF_ERROR(string_field(obj, "task", &m.task, context));
  if (obj.contains("tool_calls")) {
    DS4_RETURN_IF_ERROR(parse_tool_calls_json(obj["tool_calls"], &m, context));
  }
  if (obj.contains("tools") && !obj["tools"].is_null()) {
    if (!obj["tools"].is_array()) return Status::Error(context + ": \"tools\" must be an array");
    for (const OrderedJson& t : obj["tools"]) {
      m.tools.push_back(t.dump(-1, ' ', false, OrderedJson::error_handler_t::replace));
    }
  }
  if (obj.contains("response_format") && !obj["response_format"].is_null()) {
    m.response_format = obj["response_format"].dump(-1, ' ', false, OrderedJson::error_handler_t::replace);
  }
  if (obj.contains("wo_eos")) {
    if (!obj["wo_eos"].is_boolean()) return Status::Error(context + ": \"wo_eos\" must be a boolean");
    m.without_eos = obj["wo_eos"].get<bool>();
  }
  return m;
}

}  // namespace

std::string_view think_max_prefix() { return kThinkMaxPrefix; }

Result<std::string> render_tools_block(const std::vector<std::string>& tools) {
  std::string out(kToolsHead);
  for (size_t i = 0; i < tools.size(); ++i) {
    const std::string what = "tools[" + std::to_string(i) + "]";
    Result<OrderedJson> tool = parse_ordered_json(tools[i], what);
    if (!tool.ok()) return tool.status();
    const OrderedJson* function = &*tool;
    if (tool->is_object() && tool->contains("function")) function = &(*tool)["function"];
    if (!function->is_object() || !function->contains("name")) {
      return Status::Error(what + ": not a function tool (no \"function\" object with a \"name\")");
    }
    if (i > 0) out += "\n";
    out += python_json_dumps(*function);
  }
  out += kToolsTail;
  return out;
}

Result<std::string> render_chat(const std::vector<Message>& messages, const ChatOptions& options) {
  std::vector<Item> items = merge_tool_messages(messages);
  sort_tool_results(&items);
  const bool thinking = options.thinking != ThinkingMode::kNone;
  const bool any_tools = std::any_of(items.begin(), items.end(),
                                     [](const Item& i) { return !i.m.tools.empty(); });
  const bool drop = options.drop_thinking && !any_tools;
  if (thinking && drop) items = drop_thinking(std::move(items));
  const RenderContext ctx{items, thinking, drop, options.thinking == ThinkingMode::kMax,
                          last_user_index(items)};
  std::string out = options.add_bos ? std::string(kBosText) : std::string();
  for (size_t i = 0; i < items.size(); ++i) {
    Result<std::string> part = render_message(ctx, i);
    if (!part.ok()) return part.status();
    out += *part;
  }
  return out;
}

Result<std::string> render_chat(std::vector<Message> messages,
                                const std::vector<std::string>& tools,
                                const ChatOptions& options) {
  if (!tools.empty()) {
    auto system = std::find_if(messages.begin(), messages.end(),
                               [](const Message& m) { return m.role == "system"; });
    if (system == messages.end()) {
      Message empty_system;
      empty_system.role = "system";
      system = messages.insert(messages.begin(), std::move(empty_system));
    }
    system->tools.insert(system->tools.end(), tools.begin(), tools.end());
  }
  return render_chat(messages, options);
}

Result<std::vector<Message>> messages_from_json(std::string_view json_text) {
  Result<OrderedJson> parsed = parse_ordered_json(json_text, "messages");
  if (!parsed.ok()) return parsed.status();
  if (!parsed->is_array()) return Status::Error("messages: must be a JSON array");
  std::vector<Message> messages;
  for (size_t i = 0; i < parsed->size(); ++i) {
    Result<Message> m = message_from_json((*parsed)[i], i);
    if (!m.ok()) return m.status();
    messages.push_back(std::move(*m));
  }
  return messages;
}

Result<std::vector<std::string>> tools_from_json(std::string_view json_text) {
  Result<OrderedJson> parsed = parse_ordered_json(json_text, "tools");
  if (!parsed.ok()) return parsed.status();
  if (!parsed->is_array()) return Status::Error("tools: must be a JSON array");
  std::vector<std::string> tools;
  for (const OrderedJson& t : *parsed) {
    tools.push_back(t.dump(-1, ' ', false, OrderedJson::error_handler_t::replace));
  }
  return tools;
}

}  // namespace ds4
