// Tokenizer: the fixtures' golden ids (tokenizer_golden.json, golden.json prompts,
// tiny-chat prompts), the official pre-tokenizer's pieces, special-token lookup by
// string, token -> bytes, the streaming UTF-8 decoder, and load errors.
#include <doctest/doctest.h>

#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "format/gguf.h"
#include "text/pretokenizer.h"
#include "text/tokenizer.h"
#include "text/utf8.h"

namespace {

using nlohmann::json;

json load_json(const std::string& path) {
  std::ifstream in(path);
  REQUIRE_MESSAGE(in.good(), "cannot open " << path);
  return json::parse(in);
}

std::string data_path(const std::string& rel) { return std::string(DS4_TEST_DATA) + "/" + rel; }

ds4::Tokenizer load_tokenizer(const std::string& fixture) {
  auto gguf = ds4::GgufFile::Open(data_path(fixture + "/model.gguf"));
  REQUIRE_MESSAGE(gguf.ok(), gguf.status().message());
  auto tok = ds4::Tokenizer::FromGguf(**gguf);
  REQUIRE_MESSAGE(tok.ok(), tok.status().message());
  return std::move(tok.value());
}

bool has_special(const std::string& text) {
  for (std::string_view s : {ds4::kBosText, ds4::kEosText, ds4::kUserText, ds4::kAssistantText,
                             ds4::kThinkBeginText, ds4::kThinkEndText, ds4::kDsmlText}) {
    if (text.find(s) != std::string::npos) return true;
  }
  return false;
}

void check_tokenizer_golden(const std::string& fixture) {
  const ds4::Tokenizer tok = load_tokenizer(fixture);
  const json golden = load_json(data_path(fixture + "/tokenizer_golden.json"));
  REQUIRE(golden["cases"].size() >= 40);
  int checked = 0;
  for (const json& c : golden["cases"]) {
    const std::string text = c["text"];
    const std::vector<int32_t> expected = c["ids"];
    CAPTURE(text);
    CHECK(tok.encode_with_specials(text) == expected);
    if (!has_special(text)) {
      CHECK(tok.encode(text) == expected);
      std::vector<std::string> pieces;
      for (std::string_view p : ds4::pretokenize(text)) pieces.emplace_back(p);
      CHECK(pieces == c["reference_pieces"].get<std::vector<std::string>>());
    }
    CHECK(tok.decode(expected) == text);
    ++checked;
  }
  CHECK(checked == static_cast<int>(golden["cases"].size()));

  const json model_golden = load_json(data_path(fixture + "/golden.json"));
  const std::string prompt = model_golden["prompt"]["text"];
  const std::vector<int32_t> prompt_ids = model_golden["prompt"]["ids"];
  CHECK(tok.encode_with_specials(prompt) == prompt_ids);
  CHECK(prompt_ids.size() == model_golden["prompt"]["n_tokens"].get<size_t>());
}

}  // namespace

TEST_CASE("tiny-fast: tokenizer_golden.json and the golden prompt, id for id") {
  check_tokenizer_golden("tiny-fast");
}

TEST_CASE("tiny-real: tokenizer_golden.json and the 2089-token golden prompt, id for id") {
  check_tokenizer_golden("tiny-real");
}

TEST_CASE("tiny-chat: every golden prompt string encodes to its prompt_ids") {
  const ds4::Tokenizer tok = load_tokenizer("tiny-chat");
  const json golden = load_json(data_path("tiny-chat/golden.json"));
  REQUIRE(golden["cases"].size() == 28);
  for (const json& c : golden["cases"]) {
    CAPTURE(c["id"].get<std::string>());
    const std::vector<int32_t> ids = c["prompt_ids"];
    CHECK(tok.encode_with_specials(c["prompt"].get<std::string>()) == ids);
    // The expected output decodes to the expected text (EOS is the last id).
    std::vector<int32_t> out = c["output_ids"];
    if (c["ends_with_eos"].get<bool>()) {
      REQUIRE(!out.empty());
      CHECK(out.back() == tok.eos());
      out.pop_back();
    }
    CHECK(tok.decode(out) == c["output_text"].get<std::string>());
  }
}

TEST_CASE("special ids are found by string and match the fixture's table") {
  const ds4::Tokenizer tok = load_tokenizer("tiny-chat");
  const json golden = load_json(data_path("tiny-chat/golden.json"));
  const json& ids = golden["special_token_ids"];
  CHECK(tok.bos() == ids[std::string(ds4::kBosText)].get<int32_t>());
  CHECK(tok.eos() == ids[std::string(ds4::kEosText)].get<int32_t>());
  CHECK(tok.user() == ids[std::string(ds4::kUserText)].get<int32_t>());
  CHECK(tok.assistant() == ids[std::string(ds4::kAssistantText)].get<int32_t>());
  CHECK(tok.think_begin() == ids["<think>"].get<int32_t>());
  CHECK(tok.think_end() == ids["</think>"].get<int32_t>());
  CHECK(tok.dsml() == ids[std::string(ds4::kDsmlText)].get<int32_t>());
  CHECK(tok.find_token("<\xEF\xBD\x9C\xE2\x96\x81pad\xE2\x96\x81\xEF\xBD\x9C>") == 2);
  CHECK_FALSE(tok.find_token("no such token string").has_value());
  CHECK(tok.vocab_size() == 2048);
}

TEST_CASE("specials stay plain text in encode(), and only the seven are split out") {
  const ds4::Tokenizer tok = load_tokenizer("tiny-chat");
  const std::vector<int32_t> plain = tok.encode(std::string(ds4::kUserText));
  CHECK(plain.size() > 1);
  CHECK(tok.decode(plain) == std::string(ds4::kUserText));
  const std::vector<int32_t> split = tok.encode_with_specials(std::string(ds4::kUserText));
  CHECK(split == std::vector<int32_t>{tok.user()});
  // <｜latest_reminder｜> is in the vocabulary but is not one of the seven.
  const std::string reminder = "<\xEF\xBD\x9Clatest_reminder\xEF\xBD\x9C>";
  REQUIRE(tok.find_token(reminder).has_value());
  const std::vector<int32_t> r = tok.encode_with_specials(reminder);
  CHECK(r.size() > 1);
  CHECK(tok.decode(r) == reminder);
}

TEST_CASE("token bytes: special strings as is, byte-level strings mapped back to bytes") {
  const ds4::Tokenizer tok = load_tokenizer("tiny-chat");
  CHECK(tok.token_bytes(tok.bos()) == std::string(ds4::kBosText));
  CHECK(tok.token_bytes(tok.think_end()) == "</think>");
  const std::vector<int32_t> nl = tok.encode("\n");
  REQUIRE(nl.size() == 1);
  CHECK(tok.token_text(nl[0]) == "\xC4\x8A");  // U+010A, the byte map's image of 0x0A
  CHECK(tok.token_bytes(nl[0]) == "\n");
  CHECK(tok.token_bytes(-1).empty());
  CHECK(tok.token_bytes(tok.vocab_size()).empty());
}

TEST_CASE("long pieces and long prompts encode and round-trip") {
  const ds4::Tokenizer tok = load_tokenizer("tiny-real");
  std::string long_word;
  for (int i = 0; i < 50000; ++i) long_word += "then";
  const std::vector<int32_t> ids = tok.encode(long_word);
  CHECK(ids.size() < long_word.size());
  CHECK(tok.decode(ids) == long_word);
  std::string prose;
  for (int i = 0; i < 2000; ++i) prose += "The clockmaker repaired " + std::to_string(i) + " watches; ";
  CHECK(tok.decode(tok.encode(prose)) == prose);
  // Invalid UTF-8 is kept byte for byte.
  const std::string bad = "ok\xFF\xC3(\x80 end\xE2\x82";
  CHECK(tok.decode(tok.encode(bad)) == bad);
}

TEST_CASE("pre-tokenizer: the worked example of the spec and regex corner cases") {
  auto pieces = [](std::string_view text) {
    std::vector<std::string> out;
    for (std::string_view p : ds4::pretokenize(text)) out.emplace_back(p);
    return out;
  };
  CHECK(pieces("Hello! \xE6\xAF\x95\xE8\x80\x81\xE5\xB8\x88\xEF\xBC\x81" "1 + 1 = 2") ==
        std::vector<std::string>{"Hello", "!", " ", "\xE6\xAF\x95\xE8\x80\x81\xE5\xB8\x88",
                                 "\xEF\xBC\x81", "1", " +", " ", "1", " =", " ", "2"});
  CHECK(pieces("    int") == std::vector<std::string>{"   ", " int"});
  CHECK(pieces(">;\n\nx") == std::vector<std::string>{">;\n\n", "x"});
  CHECK(pieces("a \n \nb") == std::vector<std::string>{"a", " \n \n", "b"});
  CHECK(pieces("trailing   ") == std::vector<std::string>{"trailing", "   "});
  CHECK(pieces("").empty());
}

TEST_CASE("load errors name what is wrong") {
  std::vector<std::string> vocab;
  int next = 256;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174);
    std::string s;
    ds4::utf8_append(printable ? b : next++, &s);
    vocab.push_back(s);
  }
  auto missing = ds4::Tokenizer::FromVocab(vocab, {});
  REQUIRE_FALSE(missing.ok());
  CHECK(missing.status().message().find("missing special token") != std::string::npos);
  for (std::string_view s : {ds4::kBosText, ds4::kEosText, ds4::kUserText, ds4::kAssistantText,
                             ds4::kThinkBeginText, ds4::kThinkEndText, ds4::kDsmlText}) {
    vocab.emplace_back(s);
  }
  auto bad_merge = ds4::Tokenizer::FromVocab(vocab, {"a b", "nospace"});
  REQUIRE_FALSE(bad_merge.ok());
  CHECK(bad_merge.status().message().find("merges[1]") != std::string::npos);
  // Byte b is token b here; "ab" is added as the last token, reachable by merge 0.
  auto no_result = ds4::Tokenizer::FromVocab(vocab, {"a b"});
  REQUIRE(no_result.ok());
  CHECK(no_result->encode("ab") == std::vector<int32_t>{'a', 'b'});
  vocab.push_back("ab");
  auto ok = ds4::Tokenizer::FromVocab(vocab, {"a b"});
  REQUIRE(ok.ok());
  CHECK(ok->encode("abab a") == std::vector<int32_t>{static_cast<int32_t>(vocab.size() - 1),
                                                     static_cast<int32_t>(vocab.size() - 1), ' ', 'a'});
  auto empty = ds4::Tokenizer::FromVocab({}, {});
  CHECK_FALSE(empty.ok());
}

TEST_CASE("streaming UTF-8 decoder never emits a broken character") {
  const std::string text = "caf\xC3\xA9 \xE6\xAF\x95 \xF0\x9F\x98\x80!";
  ds4::Utf8StreamDecoder dec;
  std::string out;
  for (char c : text) {
    const std::string part = dec.push(std::string_view(&c, 1));
    CHECK(ds4::utf8_is_valid(part));
    out += part;
  }
  out += dec.finish();
  CHECK(out == text);

  ds4::Utf8StreamDecoder held;
  CHECK(held.push("a\xE6\xAF") == "a");
  CHECK(held.pending() == 2);
  CHECK(held.push("\x95") == "\xE6\xAF\x95");
  // Bytes that can never be valid become U+FFFD; an unfinished tail too, at the end.
  CHECK(held.push("\xFFx") == "\xEF\xBF\xBDx");
  CHECK(held.push("\xF0\x9F") == "");
  CHECK(held.finish() == "\xEF\xBF\xBD");
  CHECK(ds4::utf8_complete_prefix("ab\xE2\x82") == 2);
  CHECK(ds4::utf8_complete_prefix("ab\xE2\x82\xAC") == 5);
}

TEST_CASE("random text: pieces cover the input and ids decode back to it, byte for byte") {
  const ds4::Tokenizer tok = load_tokenizer("tiny-chat");
  // A deterministic generator over an alphabet of tricky characters and raw bytes.
  const std::vector<std::string> alphabet = {
      "a", "Z", "\xC3\xA9", "e\xCC\x81", " ", "\t", "\n", "\r", "\xC2\xA0", "\xE3\x80\x80", ",",
      ".", "!", "'", "\"", "<", ">", "{", "_", "0", "7", "\xD9\xA2", "\xEF\xBC\x93",
      "\xE6\xAF\x95", "\xE3\x81\xAE", "\xED\x95\x9C", "\xF0\x9F\x98\x80", "\xE2\x80\x8D",
      "\xE2\x80\xA6", "\xE2\x80\x9C", "\x01", "\x7F", "\xFF", "\xC3", "\xE2\x82",
      std::string(ds4::kUserText), std::string(ds4::kThinkEndText)};
  uint64_t state = 0x1234567;
  auto next = [&](uint64_t n) {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    return (state >> 33) % n;
  };
  for (int i = 0; i < 3000; ++i) {
    std::string text;
    const uint64_t len = 1 + next(30);
    for (uint64_t k = 0; k < len; ++k) text += alphabet[next(alphabet.size())];
    CAPTURE(text);
    std::string joined;
    for (std::string_view p : ds4::pretokenize(text)) {
      CHECK_FALSE(p.empty());
      joined += p;
    }
    CHECK(joined == text);
    CHECK(tok.decode(tok.encode(text)) == text);
    CHECK(tok.decode(tok.encode_with_specials(text)) == text);
  }
}

TEST_CASE("a GGUF without tokenizer keys is refused with the key and file named") {
  auto mtp = ds4::GgufFile::Open(data_path("tiny-fast/mtp.gguf"));
  REQUIRE_MESSAGE(mtp.ok(), mtp.status().message());
  auto tok = ds4::Tokenizer::FromGguf(**mtp);
  REQUIRE_FALSE(tok.ok());
  CHECK(tok.status().message().find("tokenizer.ggml.tokens") != std::string::npos);
  CHECK(tok.status().message().find("mtp.gguf") != std::string::npos);
}
