// Chat encoding: DeepSeek's official encoder fixtures byte for byte, the tiny-chat
// golden prompts (string and ids), and the rules of spec §5 one by one.
#include <doctest/doctest.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "format/gguf.h"
#include "text/chat.h"
#include "text/tokenizer.h"

namespace {

using nlohmann::ordered_json;

std::string data_path(const std::string& rel) { return std::string(DS4_TEST_DATA) + "/" + rel; }

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  REQUIRE_MESSAGE(in.good(), "cannot open " << path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Loads official test_input_N.json: a message list, or {"tools", "messages"} where the
// tools attach to the first message (as the official test does).
std::vector<ds4::Message> official_messages(int n) {
  const ordered_json input = ordered_json::parse(read_file(data_path(
      "official-encoding/test_input_" + std::to_string(n) + ".json")));
  const ordered_json messages = input.is_object() ? input["messages"] : input;
  auto parsed = ds4::messages_from_json(messages.dump());
  REQUIRE_MESSAGE(parsed.ok(), parsed.status().message());
  std::vector<ds4::Message> out = parsed.value();
  if (input.is_object() && input.contains("tools")) {
    auto tools = ds4::tools_from_json(input["tools"].dump());
    REQUIRE(tools.ok());
    REQUIRE(!out.empty());
    out[0].tools = tools.value();
  }
  return out;
}

std::string render(const std::vector<ds4::Message>& messages, ds4::ThinkingMode mode) {
  ds4::ChatOptions options;
  options.thinking = mode;
  auto text = ds4::render_chat(messages, options);
  REQUIRE_MESSAGE(text.ok(), text.status().message());
  return text.value();
}

ds4::Message msg(std::string role, std::string content) {
  ds4::Message m;
  m.role = std::move(role);
  m.content = std::move(content);
  return m;
}

const std::string BOS(ds4::kBosText), EOS(ds4::kEosText), USER(ds4::kUserText),
    ASST(ds4::kAssistantText);

}  // namespace

TEST_CASE("official encoder fixtures render byte for byte") {
  const ds4::ThinkingMode modes[] = {ds4::ThinkingMode::kHigh, ds4::ThinkingMode::kHigh,
                                     ds4::ThinkingMode::kHigh, ds4::ThinkingMode::kNone};
  for (int n = 1; n <= 4; ++n) {
    CAPTURE(n);
    const std::string expected =
        read_file(data_path("official-encoding/test_output_" + std::to_string(n) + ".txt"));
    CHECK(render(official_messages(n), modes[n - 1]) == expected);
  }
}

TEST_CASE("tiny-chat golden prompts: rendered string and token ids") {
  auto gguf = ds4::GgufFile::Open(data_path("tiny-chat/model.gguf"));
  REQUIRE_MESSAGE(gguf.ok(), gguf.status().message());
  auto tok = ds4::Tokenizer::FromGguf(**gguf);
  REQUIRE_MESSAGE(tok.ok(), tok.status().message());
  const ordered_json golden = ordered_json::parse(read_file(data_path("tiny-chat/golden.json")));
  REQUIRE(golden["cases"].size() == 28);
  for (const ordered_json& c : golden["cases"]) {
    const std::string id = c["id"];
    CAPTURE(id);
    const std::string prompt = c["prompt"];
    std::vector<ds4::Message> messages;
    if (c["system"].is_string()) messages.push_back(msg("system", c["system"]));
    std::string user = c["question"];
    if (c["rendering"] == "long") {
      // The long prompt's user text is unrelated prose, a blank line, then the question.
      const size_t begin = prompt.find(USER) + USER.size();
      user = prompt.substr(begin, prompt.rfind(ASST) - begin);
      CHECK(user.ends_with("\n\n" + c["question"].get<std::string>()));
    }
    messages.push_back(msg("user", user));
    const auto mode = c["mode"] == "think" ? ds4::ThinkingMode::kHigh : ds4::ThinkingMode::kNone;
    const std::string rendered = render(messages, mode);
    CHECK(rendered == prompt);
    CHECK(tok->encode_with_specials(rendered) == c["prompt_ids"].get<std::vector<int32_t>>());
  }
}

TEST_CASE("spec 5.2 examples") {
  CHECK(render({msg("user", "Hello")}, ds4::ThinkingMode::kNone) ==
        BOS + USER + "Hello" + ASST + "</think>");
  CHECK(render({msg("system", "You are terse."), msg("user", "Hello")}, ds4::ThinkingMode::kMax) ==
        BOS + std::string(ds4::think_max_prefix()) + "You are terse." + USER + "Hello" + ASST +
            "<think>");
  ds4::Message old_answer = msg("assistant", "first answer");
  old_answer.reasoning_content = "old hidden reasoning";
  CHECK(render({msg("user", "first"), old_answer, msg("user", "second")},
               ds4::ThinkingMode::kHigh) ==
        BOS + USER + "first" + ASST + "</think>first answer" + EOS + USER + "second" + ASST +
            "<think>");
  // Non-thinking mode never shows reasoning.
  CHECK(render({msg("user", "first"), old_answer}, ds4::ThinkingMode::kNone) ==
        BOS + USER + "first" + ASST + "</think>first answer" + EOS);
}

TEST_CASE("Think-Max prefix is the official three lines and a blank line") {
  const std::string_view p = ds4::think_max_prefix();
  CHECK(p.starts_with("Reasoning Effort: Absolute maximum with no shortcuts permitted.\n"));
  CHECK(p.ends_with("no assumption is left unchecked.\n\n"));
  CHECK(std::count(p.begin(), p.end(), '\n') == 4);
  // Only thinking modes get it.
  CHECK(render({msg("user", "x")}, ds4::ThinkingMode::kNone) == BOS + USER + "x" + ASST + "</think>");
}

TEST_CASE("tool results: merged into one user turn, joined by blank lines, in call order") {
  ds4::Message call = msg("assistant", "");
  call.tool_calls = {{"c1", "a", "{\"x\": 1}"}, {"c2", "b", "{\"s\": \"t\"}"}};
  ds4::Message r2 = msg("tool", "second");
  r2.tool_call_id = "c2";
  ds4::Message r1 = msg("tool", "first </tool_result> raw & <kept>");
  r1.tool_call_id = "c1";
  const std::string text = render({msg("user", "go"), call, r2, r1}, ds4::ThinkingMode::kNone);
  const std::string dsml(ds4::kDsmlText);
  CHECK(text == BOS + USER + "go" + ASST + "</think>" + "\n\n<" + dsml + "tool_calls>\n<" + dsml +
                    "invoke name=\"a\">\n<" + dsml + "parameter name=\"x\" string=\"false\">1</" +
                    dsml + "parameter>\n</" + dsml + "invoke>\n<" + dsml +
                    "invoke name=\"b\">\n<" + dsml + "parameter name=\"s\" string=\"true\">t</" +
                    dsml + "parameter>\n</" + dsml + "invoke>\n</" + dsml + "tool_calls>" + EOS +
                    USER + "<tool_result>first </tool_result> raw & <kept></tool_result>\n\n" +
                    "<tool_result>second</tool_result>" + ASST + "</think>");
}

TEST_CASE("tools keep reasoning of earlier turns; server form attaches tools to the system") {
  ds4::Message answer = msg("assistant", "A");
  answer.reasoning_content = "R";
  const std::string tool = R"({"type":"function","function":{"name":"f","parameters":{"type":"object"}}})";
  auto with_system = ds4::render_chat({msg("system", "S"), msg("user", "q1"), answer, msg("user", "q2")},
                                      {tool}, ds4::ChatOptions{});
  REQUIRE(with_system.ok());
  auto block = ds4::render_tools_block({tool});
  REQUIRE(block.ok());
  CHECK(block->ends_with("{\"name\": \"f\", \"parameters\": {\"type\": \"object\"}}\n\n"
                         "You MUST strictly follow the above defined tool name and parameter "
                         "schemas to invoke tool calls.\n"));
  CHECK(*with_system == BOS + "S\n\n" + *block + USER + "q1" + ASST + "<think>R</think>A" + EOS +
                            USER + "q2" + ASST + "<think>");
  auto no_system = ds4::render_chat({msg("user", "q")}, {tool}, ds4::ChatOptions{});
  REQUIRE(no_system.ok());
  CHECK(*no_system == BOS + "\n\n" + *block + USER + "q" + ASST + "<think>");
}

TEST_CASE("developer turns, latest reminders and task tokens") {
  ds4::Message action = msg("user", "classify");
  action.task = "action";
  CHECK(render({msg("user", "hi"), msg("assistant", "yo"), action, msg("assistant", "Search")},
               ds4::ThinkingMode::kHigh) ==
        BOS + USER + "hi" + ASST + "</think>yo" + EOS + USER + "classify" + ASST + "<think>" +
            "<\xEF\xBD\x9C" "action\xEF\xBD\x9C>Search" + EOS);
  ds4::Message title = msg("user", "name it");
  title.task = "title";
  CHECK(render({title}, ds4::ThinkingMode::kNone) ==
        BOS + USER + "name it<\xEF\xBD\x9Ctitle\xEF\xBD\x9C>");
  CHECK(render({msg("latest_reminder", "today"), msg("developer", "do it")},
               ds4::ThinkingMode::kHigh) ==
        BOS + "<\xEF\xBD\x9Clatest_reminder\xEF\xBD\x9C>today" + USER + "do it" + ASST + "<think>");
}

TEST_CASE("consecutive user messages become one turn") {
  CHECK(render({msg("user", "a"), msg("user", "b")}, ds4::ThinkingMode::kNone) ==
        BOS + USER + "a\n\nb" + ASST + "</think>");
}

TEST_CASE("bad input gets an error naming the message") {
  ds4::Message odd = msg("narrator", "x");
  auto r = ds4::render_chat({msg("user", "a"), odd}, ds4::ChatOptions{});
  REQUIRE_FALSE(r.ok());
  CHECK(r.status().message().find("message 1 (narrator)") != std::string::npos);

  ds4::Message bad_task = msg("user", "a");
  bad_task.task = "dance";
  r = ds4::render_chat({bad_task}, ds4::ChatOptions{});
  REQUIRE_FALSE(r.ok());
  CHECK(r.status().message().find("unknown task \"dance\"") != std::string::npos);

  ds4::Message sys = msg("system", "s");
  sys.tools = {"{not json"};
  r = ds4::render_chat({sys, msg("user", "a")}, ds4::ChatOptions{});
  REQUIRE_FALSE(r.ok());
  CHECK(r.status().message().find("tools[0]") != std::string::npos);

  auto m = ds4::messages_from_json(R"([{"role":"user","content":"ok"},{"content":"no role"}])");
  REQUIRE_FALSE(m.ok());
  CHECK(m.status().message().find("messages[1]") != std::string::npos);
  m = ds4::messages_from_json(R"([{"role":"user","content":[{"type":"image_url"}]}])");
  REQUIRE_FALSE(m.ok());
  CHECK(m.status().message().find("image_url") != std::string::npos);
  CHECK_FALSE(ds4::messages_from_json("{\"role\":\"user\"}").ok());
  CHECK_FALSE(ds4::messages_from_json("[").ok());
}

TEST_CASE("messages_from_json reads OpenAI shapes") {
  auto m = ds4::messages_from_json(R"([
    {"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]},
    {"role":"assistant","content":null,"reasoning":"r",
     "tool_calls":[{"id":"x","type":"function","function":{"name":"f","arguments":{"k":[1,2]}}}]},
    {"role":"tool","tool_call_id":"x","content":"out"}])");
  REQUIRE_MESSAGE(m.ok(), m.status().message());
  REQUIRE(m->size() == 3);
  CHECK((*m)[0].content == "a\n\nb");
  CHECK((*m)[1].content.empty());
  CHECK((*m)[1].reasoning_content == "r");
  REQUIRE((*m)[1].tool_calls.size() == 1);
  CHECK((*m)[1].tool_calls[0].id == "x");
  CHECK((*m)[1].tool_calls[0].name == "f");
  CHECK((*m)[1].tool_calls[0].arguments == "{\"k\":[1,2]}");
  CHECK((*m)[2].tool_call_id == "x");
}
