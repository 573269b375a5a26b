// Tokenizer: DeepSeek V4's byte-level BPE (spec/TOKENIZER_AND_CHAT.md §1-§4).
//
// Built from the GGUF keys `tokenizer.ggml.tokens` and `tokenizer.ggml.merges`.
// encode() splits text with the official three-regex pre-tokenizer (§3.1, real
// Unicode general categories), byte-encodes each piece with the GPT-2 byte map (§2)
// and merges it by rank (§3.3). encode_with_specials() first splits out the seven
// special strings ds4 recognizes (§3.5); rendered chat prompts go through it.
// Special ids are resolved by string at load time, never hard-coded.
//
// Thread-safety: immutable after construction except for an internal piece cache
// guarded by a mutex; all const methods may be called concurrently.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace ds4 {

class GgufFile;

// The seven special strings of §1 (all use U+FF5C and U+2581, never ASCII).
inline constexpr std::string_view kBosText = "<\xEF\xBD\x9C" "begin\xE2\x96\x81of\xE2\x96\x81sentence\xEF\xBD\x9C>";
inline constexpr std::string_view kEosText = "<\xEF\xBD\x9C" "end\xE2\x96\x81of\xE2\x96\x81sentence\xEF\xBD\x9C>";
inline constexpr std::string_view kUserText = "<\xEF\xBD\x9CUser\xEF\xBD\x9C>";
inline constexpr std::string_view kAssistantText = "<\xEF\xBD\x9C" "Assistant\xEF\xBD\x9C>";
inline constexpr std::string_view kThinkBeginText = "<think>";
inline constexpr std::string_view kThinkEndText = "</think>";
inline constexpr std::string_view kDsmlText = "\xEF\xBD\x9C" "DSML\xEF\xBD\x9C";

class Tokenizer {
 public:
  Tokenizer();
  ~Tokenizer();
  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;

  // Reads tokenizer.ggml.tokens / tokenizer.ggml.merges; the error names the key
  // (or the special string) at fault.
  static Result<Tokenizer> FromGguf(const GgufFile& gguf);
  // Same, from the two arrays directly (tests, other file formats). Token id = index
  // in `tokens`; merge rank = index in `merges` ("<left> <right>").
  static Result<Tokenizer> FromVocab(std::vector<std::string> tokens,
                                     std::vector<std::string> merges);

  // Plain text -> ids. Special strings stay ordinary text here (§3.4 token level).
  std::vector<int32_t> encode(std::string_view text) const;
  // Rendered prompt -> ids, with the seven special strings split out first (§3.5).
  std::vector<int32_t> encode_with_specials(std::string_view rendered) const;

  // The raw bytes a token stands for (§4.1). May end inside a UTF-8 character.
  // An id out of range yields an empty string.
  std::string token_bytes(int32_t id) const;
  // Concatenated token_bytes() of `ids` (may be invalid UTF-8 if cut mid-character).
  std::string decode(std::span<const int32_t> ids) const;
  // The token's string as stored in the vocabulary (byte-level alphabet).
  const std::string& token_text(int32_t id) const;

  int32_t vocab_size() const;
  // The id whose vocabulary string is exactly `token_string`.
  std::optional<int32_t> find_token(std::string_view token_string) const;

  int32_t bos() const;
  int32_t eos() const;
  int32_t user() const;
  int32_t assistant() const;
  int32_t think_begin() const;
  int32_t think_end() const;
  int32_t dsml() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace ds4
