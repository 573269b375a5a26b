// OutputAssembler: generated text -> reasoning_content / content / tool_calls deltas.
#include <doctest/doctest.h>

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "server/output_assembler.h"

namespace {

using ds4::server::Delta;
using ds4::server::OutputAssembler;

struct Collected {
  std::string reasoning, content;
};

// Pushes `pieces` one by one and concatenates what comes out (finish included).
Collected run(OutputAssembler& out, const std::vector<std::string>& pieces) {
  Collected all;
  for (const std::string& piece : pieces) {
    Delta delta = out.push(piece);
    all.reasoning += delta.reasoning;
    all.content += delta.content;
  }
  auto tail = out.finish();
  REQUIRE(tail.ok());
  all.reasoning += tail.value().reasoning;
  all.content += tail.value().content;
  return all;
}

}  // namespace

TEST_CASE("non-thinking output is all content") {
  OutputAssembler out(/*thinking=*/false, /*tools_active=*/false);
  Collected got = run(out, {"The", " capital", " of France is Paris."});
  CHECK(got.reasoning.empty());
  CHECK(got.content == "The capital of France is Paris.");
  CHECK(out.content() == got.content);
}

TEST_CASE("thinking output splits at the first </think>") {
  OutputAssembler out(true, false);
  Collected got = run(out, {"The user asks", ".", "</think>", "Paris", "."});
  CHECK(got.reasoning == "The user asks.");
  CHECK(got.content == "Paris.");
  CHECK(out.reasoning() == "The user asks.");
}

TEST_CASE("a </think> split across pieces is held, not leaked") {
  OutputAssembler out(true, false);
  Delta a = out.push("reason</th");
  CHECK(a.reasoning == "reason");
  CHECK(a.content.empty());
  Delta b = out.push("ink>answer");
  CHECK(b.reasoning.empty());
  CHECK(b.content == "answer");
  // A near-miss is flushed as reasoning.
  OutputAssembler miss(true, false);
  Collected got = run(miss, {"a </thi", "s is not a marker"});
  CHECK(got.reasoning == "a </this is not a marker");
  CHECK(got.content.empty());
}

TEST_CASE("later </think> strings are ordinary content") {
  OutputAssembler out(true, false);
  Collected got = run(out, {"r</think>x</think>y"});
  CHECK(got.reasoning == "r");
  CHECK(got.content == "x</think>y");
}

TEST_CASE("with tools active a DSML block becomes tool calls") {
  OutputAssembler out(/*thinking=*/false, /*tools_active=*/true);
  const std::string block =
      "Let me check.\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"get_weather\">\n"
      "<｜DSML｜parameter name=\"city\" string=\"true\">Paris</｜DSML｜parameter>\n"
      "</｜DSML｜invoke>\n</｜DSML｜tool_calls>";
  std::string content, arguments, name, id;
  // Feed a few bytes at a time, as tokens would arrive (never splitting a character:
  // the engine's deltas are UTF-8 complete).
  size_t i = 0;
  while (i < block.size()) {
    size_t n = std::min<size_t>(5, block.size() - i);
    while (i + n < block.size() && (static_cast<unsigned char>(block[i + n]) & 0xC0) == 0x80) ++n;
    Delta delta = out.push(std::string_view(block).substr(i, n));
    i += n;
    content += delta.content;
    for (const auto& call : delta.tool_calls) {
      CHECK(call.index == 0);
      if (!call.name.empty()) name = call.name;
      if (!call.id.empty()) id = call.id;
      arguments += call.arguments;
    }
  }
  CHECK(out.tool_calls_done());
  auto tail = out.finish();
  REQUIRE(tail.ok());
  content += tail.value().content;
  CHECK(content == "Let me check.");
  CHECK(name == "get_weather");
  CHECK(id.rfind("call_", 0) == 0);
  nlohmann::json args = nlohmann::json::parse(arguments);
  CHECK(args["city"] == "Paris");
  REQUIRE(out.tool_calls().size() == 1);
  CHECK(out.tool_calls()[0].arguments == arguments);
  CHECK(out.tool_calls()[0].id == id);
}

TEST_CASE("an unterminated tool-call block is an error at the end") {
  OutputAssembler out(false, true);
  out.push("<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"f\">\n");
  CHECK_FALSE(out.finish().ok());
}

TEST_CASE("without active tools DSML text stays content") {
  OutputAssembler out(false, false);
  Collected got = run(out, {"<｜DSML｜tool_calls>x"});
  CHECK(got.content == "<｜DSML｜tool_calls>x");
}
