// UTF-8 helpers: decoding one code point, encoding one, and Utf8StreamDecoder, which
// turns a stream of token bytes into text that never ends inside a character
// (spec/TOKENIZER_AND_CHAT.md §4.2 rule 2).
//
// Thread-safety: free functions are pure; a Utf8StreamDecoder is used by one thread.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace ds4 {

// Decodes the code point starting at s[pos]. Sets *len to the bytes consumed (>= 1).
// An invalid or truncated sequence consumes one byte and returns kInvalidCodePoint.
inline constexpr uint32_t kInvalidCodePoint = 0xFFFFFFFFu;
uint32_t utf8_decode(std::string_view s, size_t pos, size_t* len);
// Appends the UTF-8 encoding of `cp` (cp <= 0x10FFFF) to *out.
void utf8_append(uint32_t cp, std::string* out);
// Length of the longest prefix of `s` that does not end inside a (possibly still
// incomplete) multi-byte character: what may be sent now without splitting one.
size_t utf8_complete_prefix(std::string_view s);
// True when every byte of `s` belongs to a well-formed UTF-8 sequence.
bool utf8_is_valid(std::string_view s);

// Streaming decoder: push() the bytes of each generated token and get back the
// text that is complete so far. Incomplete trailing sequences are held until the
// rest arrives; bytes that can never become valid UTF-8 are replaced by U+FFFD, so
// the output is always valid UTF-8. finish() flushes what is held (an incomplete
// tail becomes U+FFFD).
class Utf8StreamDecoder {
 public:
  std::string push(std::string_view bytes);
  std::string finish();
  // Bytes currently held back (0..3).
  size_t pending() const { return held_.size(); }

 private:
  std::string held_;
};

}  // namespace ds4
