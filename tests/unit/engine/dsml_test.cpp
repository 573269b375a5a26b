// DSML: parsing the official fixtures' completions back (README of
// official-encoding), render -> parse round trips, the streaming parser fed byte by
// byte, tolerated block variants and malformed blocks.
#include <doctest/doctest.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "text/dsml.h"
#include "text/tokenizer.h"

namespace {

using nlohmann::json;

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  REQUIRE_MESSAGE(in.good(), "cannot open " << path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string official_output(int n) {
  return read_file(std::string(DS4_TEST_DATA) + "/official-encoding/test_output_" +
                   std::to_string(n) + ".txt");
}

const std::string ASST(ds4::kAssistantText), EOS(ds4::kEosText), DSML(ds4::kDsmlText);

// The assistant completions of a rendered conversation: the text after each
// "<｜Assistant｜>" + opener, up to and including the end-of-sentence string.
std::vector<std::string> completions(const std::string& rendered, const std::string& opener) {
  std::vector<std::string> out;
  size_t at = 0;
  while ((at = rendered.find(ASST + opener, at)) != std::string::npos) {
    const size_t begin = at + ASST.size() + opener.size();
    const size_t end = rendered.find(EOS, begin);
    REQUIRE(end != std::string::npos);
    out.push_back(rendered.substr(begin, end + EOS.size() - begin));
    at = end;
  }
  return out;
}

ds4::ParsedCompletion parse(const std::string& text, bool thinking) {
  auto parsed = ds4::parse_completion(text, thinking);
  REQUIRE_MESSAGE(parsed.ok(), parsed.status().message());
  return parsed.value();
}

// Feeds `text` to a stream parser one byte at a time and rebuilds the completion.
ds4::ParsedCompletion parse_streaming(const std::string& text, bool thinking) {
  ds4::DsmlStreamParser parser(thinking);
  std::vector<ds4::DsmlEvent> events;
  for (char c : text) {
    auto e = parser.push(std::string_view(&c, 1));
    events.insert(events.end(), e.begin(), e.end());
  }
  auto tail = parser.finish();
  REQUIRE_MESSAGE(tail.ok(), tail.status().message());
  events.insert(events.end(), tail->begin(), tail->end());
  ds4::ParsedCompletion p;
  int open_call = -1;
  for (const auto& e : events) {
    switch (e.kind) {
      case ds4::DsmlEvent::Kind::kReasoning: p.reasoning += e.text; break;
      case ds4::DsmlEvent::Kind::kContent: p.content += e.text; break;
      case ds4::DsmlEvent::Kind::kToolCallBegin:
        CHECK(e.index == static_cast<int>(p.tool_calls.size()));
        p.tool_calls.push_back({"", e.name, ""});
        open_call = e.index;
        break;
      case ds4::DsmlEvent::Kind::kToolCallArguments:
        CHECK(e.index == open_call);
        p.tool_calls.back().arguments += e.text;
        break;
      case ds4::DsmlEvent::Kind::kToolCallEnd:
        CHECK(e.index == open_call);
        open_call = -1;
        break;
    }
  }
  CHECK(open_call == -1);
  return p;
}

void check_same(const ds4::ParsedCompletion& a, const ds4::ParsedCompletion& b) {
  CHECK(a.reasoning == b.reasoning);
  CHECK(a.content == b.content);
  REQUIRE(a.tool_calls.size() == b.tool_calls.size());
  for (size_t i = 0; i < a.tool_calls.size(); ++i) {
    CHECK(a.tool_calls[i].name == b.tool_calls[i].name);
    CHECK(a.tool_calls[i].arguments == b.tool_calls[i].arguments);
  }
}

}  // namespace

TEST_CASE("official fixture 1: completions parse back to reasoning, content and calls") {
  const auto turns = completions(official_output(1), "<think>");
  REQUIRE(turns.size() == 2);
  const auto first = parse(turns[0], true);
  CHECK(first.reasoning ==
        "The user wants to know the weather in Beijing. I should use the get_weather tool.");
  CHECK(first.content.empty());
  REQUIRE(first.tool_calls.size() == 1);
  CHECK(first.tool_calls[0].name == "get_weather");
  CHECK(first.tool_calls[0].arguments == R"({"location": "Beijing", "unit": "celsius"})");
  check_same(first, parse_streaming(turns[0], true));

  const auto last = parse(turns[1], true);
  CHECK(last.reasoning == "Got the weather data. Let me format a nice response.");
  CHECK(last.content.find("22\xC2\xB0" "C") != std::string::npos);
  CHECK(last.tool_calls.empty());
  CHECK(last.reasoning_closed);
  check_same(last, parse_streaming(turns[1], true));
}

TEST_CASE("official fixtures 2 and 3: last turns and the search call") {
  const auto turns2 = completions(official_output(2), "<think>");
  REQUIRE(turns2.size() == 1);
  const auto p2 = parse(turns2[0], true);
  CHECK(p2.reasoning == "The user asks about the capital of France. It is Paris.");
  CHECK(p2.content == "The capital of France is Paris.");
  CHECK(p2.tool_calls.empty());

  const auto turns3 = completions(official_output(3), "<think>");
  REQUIRE(turns3.size() == 2);
  const auto call = parse(turns3[0], true);
  REQUIRE(call.tool_calls.size() == 1);
  CHECK(call.tool_calls[0].name == "search");
  CHECK(json::parse(call.tool_calls[0].arguments) ==
        json{{"queries", "\xE5\xB0\x8F\xE6\x9F\xB4\xE8\x83\xA1\xE5\x86\xB2\xE5\x89\x82 "
                         "\xE5\xB8\x83\xE6\xB4\x9B\xE8\x8A\xAC "
                         "\xE7\x9B\xB8\xE4\xBA\x92\xE4\xBD\x9C\xE7\x94\xA8 "
                         "\xE4\xB8\x80\xE8\xB5\xB7\xE5\x90\x83"}});
  check_same(call, parse_streaming(turns3[0], true));
  const auto answer = parse(turns3[1], true);
  CHECK(answer.content == "\xE8\xAF\xB7\xE5\x8F\x8A\xE6\x97\xB6\xE5\xB0\xB1\xE5\x8C\xBB\xE3\x80\x82");

  // Fixture 4 is non-thinking: the completion after "</think>" is plain content.
  const auto turns4 = completions(official_output(4), "</think>");
  REQUIRE(turns4.size() == 2);
  CHECK(parse(turns4[1], false).content == "<\xEF\xBD\x9C" "action\xEF\xBD\x9C>Search");
}

TEST_CASE("render -> parse round trip keeps every argument type") {
  const json args = {{"path", "a/b.txt"},
                     {"code", "if (a && b) { x = \"<y>\"; }\n"},
                     {"count", 3},
                     {"ratio", 0.25},
                     {"flag", false},
                     {"nothing", nullptr},
                     {"list", {1, "two", {{"three", 3}}}},
                     {"unicode", "\xE6\xAF\x95 \xF0\x9F\x98\x80"}};
  std::vector<ds4::ToolCall> calls = {{"", "edit", args.dump()}, {"", "noargs", ""}};
  const std::string text = "Let me do that." + ds4::render_tool_calls(calls) + EOS;
  for (bool streaming : {false, true}) {
    CAPTURE(streaming);
    const auto p = streaming ? parse_streaming(text, false) : parse(text, false);
    CHECK(p.content == "Let me do that.");
    REQUIRE(p.tool_calls.size() == 2);
    CHECK(p.tool_calls[0].name == "edit");
    CHECK(json::parse(p.tool_calls[0].arguments) == args);
    CHECK(p.tool_calls[1].name == "noargs");
    CHECK(p.tool_calls[1].arguments == "{}");
  }
  // Arguments that are not a JSON object travel as one raw string parameter.
  const std::string raw = ds4::render_tool_calls({{"", "f", "not json"}});
  CHECK(raw.find("<" + DSML + "parameter name=\"arguments\" string=\"true\">not json</" + DSML +
                 "parameter>") != std::string::npos);
  CHECK(ds4::render_tool_calls({}).empty());
}

TEST_CASE("tolerated block variants") {
  const std::string plain =
      "ok\n\n<tool_calls>\n<invoke name=\"f\">\n<parameter name=\"x\" string=\"false\">[1]"
      "</parameter>\n<parameter name=\"y\">v</parameter>\n</invoke>\n</tool_calls>";
  auto p = parse(plain, false);
  CHECK(p.content == "ok");
  REQUIRE(p.tool_calls.size() == 1);
  CHECK(p.tool_calls[0].arguments == R"({"x": [1], "y": "v"})");
  const std::string half = "<DSML\xEF\xBD\x9Ctool_calls>\n<DSML\xEF\xBD\x9Cinvoke name=\"g\">\n"
                           "</DSML\xEF\xBD\x9Cinvoke>\n</DSML\xEF\xBD\x9Ctool_calls>";
  p = parse(half, false);
  REQUIRE(p.tool_calls.size() == 1);
  CHECK(p.tool_calls[0].name == "g");
  // A string="false" value that is not JSON is kept as a string.
  p = parse("<" + DSML + "tool_calls><" + DSML + "invoke name=\"h\"><" + DSML +
                "parameter name=\"q\" string=\"false\">not json</" + DSML + "parameter></" + DSML +
                "invoke></" + DSML + "tool_calls>",
            false);
  REQUIRE(p.tool_calls.size() == 1);
  CHECK(p.tool_calls[0].arguments == R"({"q": "not json"})");
}

TEST_CASE("thinking: DSML inside reasoning is not a call; no </think> means all reasoning") {
  const std::string inside = "<" + DSML + "tool_calls> maybe</think>answer";
  auto p = parse(inside, true);
  CHECK(p.reasoning == "<" + DSML + "tool_calls> maybe");
  CHECK(p.content == "answer");
  CHECK(p.tool_calls.empty());
  p = parse("<think>still thinking", true);
  CHECK(p.reasoning == "still thinking");
  CHECK_FALSE(p.reasoning_closed);
  CHECK(p.content.empty());
  check_same(p, parse_streaming("<think>still thinking", true));
}

TEST_CASE("malformed or unterminated blocks are errors that say what is wrong") {
  auto r = ds4::parse_completion("x<" + DSML + "tool_calls>\n<" + DSML + "invoke name=\"f\">\n", false);
  REQUIRE_FALSE(r.ok());
  CHECK(r.status().message().find("unterminated invoke") != std::string::npos);
  r = ds4::parse_completion("<" + DSML + "tool_calls>\n<" + DSML + "invoke>\n", false);
  REQUIRE_FALSE(r.ok());
  CHECK(r.status().message().find("name=") != std::string::npos);
  r = ds4::parse_completion("<" + DSML + "tool_calls>\nrandom words", false);
  REQUIRE_FALSE(r.ok());
  CHECK(r.status().message().find("unexpected text") != std::string::npos);
  r = ds4::parse_completion("<" + DSML + "tool_calls><" + DSML + "invoke name=\"f\"><" + DSML +
                                "parameter name=\"a\" string=\"true\">open value",
                            false);
  REQUIRE_FALSE(r.ok());
  CHECK(r.status().message().find("unterminated parameter \"a\"") != std::string::npos);
}

TEST_CASE("stream parser holds back only what could start a marker") {
  ds4::DsmlStreamParser parser(false);
  auto e = parser.push("Hello <");
  REQUIRE(e.size() == 1);
  CHECK(e[0].text == "Hello");
  e = parser.push("b> and");
  REQUIRE(e.size() == 1);
  CHECK(e[0].text == " <b> and");
  e = parser.push("\n\n");
  CHECK(e.empty());  // trailing whitespace might precede a block
  e = parser.push("<" + DSML + "tool_calls>\n<" + DSML + "invoke name=\"f\">\n<" + DSML +
                  "parameter name=\"s\" string=\"true\">va");
  REQUIRE(e.size() == 1);
  CHECK(e[0].kind == ds4::DsmlEvent::Kind::kToolCallBegin);
  CHECK(e[0].name == "f");
  CHECK(parser.in_tool_calls());
  CHECK_FALSE(parser.in_structure());  // inside a string value
  e = parser.push("lue</" + DSML + "parameter>\n");
  REQUIRE(e.size() == 1);
  CHECK(e[0].text == R"({"s": "value")");
  CHECK(parser.in_structure());
  e = parser.push("</" + DSML + "invoke>\n</" + DSML + "tool_calls>");
  REQUIRE(e.size() == 2);
  CHECK(e[0].text == "}");
  CHECK(e[1].kind == ds4::DsmlEvent::Kind::kToolCallEnd);
  CHECK(parser.tool_calls_done());
  CHECK(parser.push("ignored after the block").empty());
  auto tail = parser.finish();
  REQUIRE(tail.ok());
  CHECK(tail->empty());

  // Without a block, held whitespace is flushed at the end.
  ds4::DsmlStreamParser plain(false);
  CHECK(plain.push("a  ").size() == 1);
  auto rest = plain.finish();
  REQUIRE(rest.ok());
  REQUIRE(rest->size() == 1);
  CHECK((*rest)[0].text == "  ");
}

TEST_CASE("stream parser gives the same result for any chunking") {
  std::vector<std::string> texts = completions(official_output(1), "<think>");
  const auto more = completions(official_output(3), "<think>");
  texts.insert(texts.end(), more.begin(), more.end());
  uint64_t state = 42;
  for (const std::string& text : texts) {
    const auto whole = parse(text, true);
    for (int round = 0; round < 20; ++round) {
      ds4::DsmlStreamParser parser(true);
      ds4::ParsedCompletion p;
      auto apply = [&](const std::vector<ds4::DsmlEvent>& events) {
        for (const auto& e : events) {
          if (e.kind == ds4::DsmlEvent::Kind::kReasoning) p.reasoning += e.text;
          if (e.kind == ds4::DsmlEvent::Kind::kContent) p.content += e.text;
          if (e.kind == ds4::DsmlEvent::Kind::kToolCallBegin) p.tool_calls.push_back({"", e.name, ""});
          if (e.kind == ds4::DsmlEvent::Kind::kToolCallArguments) p.tool_calls.back().arguments += e.text;
        }
      };
      for (size_t at = 0; at < text.size();) {
        state = state * 6364136223846793005ull + 1442695040888963407ull;
        const size_t n = 1 + (state >> 33) % 12;
        apply(parser.push(std::string_view(text).substr(at, n)));
        at += n;
      }
      auto tail = parser.finish();
      REQUIRE(tail.ok());
      apply(*tail);
      check_same(whole, p);
    }
  }
}
