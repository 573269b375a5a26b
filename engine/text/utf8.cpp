#include "text/utf8.h"

namespace ds4 {
namespace {

// Expected length of a sequence from its lead byte; 0 for bytes that cannot lead.
size_t sequence_length(unsigned char lead) {
  if (lead < 0x80) return 1;
  if (lead >= 0xC2 && lead <= 0xDF) return 2;
  if (lead >= 0xE0 && lead <= 0xEF) return 3;
  if (lead >= 0xF0 && lead <= 0xF4) return 4;
  return 0;
}

bool is_continuation(unsigned char c) { return (c & 0xC0) == 0x80; }

// Whether s[pos..pos+k) is a valid prefix of a sequence led by s[pos] (k >= 2), per
// the well-formed byte ranges of Unicode Table 3-7 (no overlongs, no surrogates).
bool valid_second_byte(unsigned char lead, unsigned char second) {
  if (lead == 0xE0) return second >= 0xA0 && second <= 0xBF;
  if (lead == 0xED) return second >= 0x80 && second <= 0x9F;
  if (lead == 0xF0) return second >= 0x90 && second <= 0xBF;
  if (lead == 0xF4) return second >= 0x80 && second <= 0x8F;
  return is_continuation(second);
}

// Number of bytes from `pos` that form a valid (possibly incomplete) prefix of one
// sequence; equals the full length when complete. Returns 0 if s[pos] is invalid.
size_t valid_prefix(std::string_view s, size_t pos, size_t* expected) {
  const auto lead = static_cast<unsigned char>(s[pos]);
  *expected = sequence_length(lead);
  if (*expected == 0) return 0;
  size_t k = 1;
  while (k < *expected && pos + k < s.size()) {
    const auto c = static_cast<unsigned char>(s[pos + k]);
    if (k == 1 ? !valid_second_byte(lead, c) : !is_continuation(c)) break;
    ++k;
  }
  return k;
}

void append_replacement(std::string* out) { out->append("\xEF\xBF\xBD"); }

}  // namespace

uint32_t utf8_decode(std::string_view s, size_t pos, size_t* len) {
  size_t expected = 0;
  const size_t k = valid_prefix(s, pos, &expected);
  if (k == 0 || k < expected) {
    *len = 1;
    return kInvalidCodePoint;
  }
  *len = k;
  const auto b = [&](size_t i) { return static_cast<uint32_t>(static_cast<unsigned char>(s[pos + i])); };
  switch (k) {
    case 1: return b(0);
    case 2: return ((b(0) & 0x1F) << 6) | (b(1) & 0x3F);
    case 3: return ((b(0) & 0x0F) << 12) | ((b(1) & 0x3F) << 6) | (b(2) & 0x3F);
    default: return ((b(0) & 0x07) << 18) | ((b(1) & 0x3F) << 12) | ((b(2) & 0x3F) << 6) | (b(3) & 0x3F);
  }
}

void utf8_append(uint32_t cp, std::string* out) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

size_t utf8_complete_prefix(std::string_view s) {
  // Walk back over at most 3 continuation bytes to a lead byte.
  size_t i = s.size();
  size_t back = 0;
  while (i > 0 && back < 4 && is_continuation(static_cast<unsigned char>(s[i - 1]))) {
    --i;
    ++back;
  }
  if (i == 0) return s.size();
  const size_t lead = i - 1;
  size_t expected = 0;
  const size_t k = valid_prefix(s, lead, &expected);
  if (k == 0) return s.size();                     // not a lead byte: nothing to wait for
  if (lead + k == s.size() && k < expected) return lead;  // incomplete but still possible
  return s.size();
}

bool utf8_is_valid(std::string_view s) {
  for (size_t pos = 0; pos < s.size();) {
    size_t len = 0;
    if (utf8_decode(s, pos, &len) == kInvalidCodePoint) return false;
    pos += len;
  }
  return true;
}

std::string Utf8StreamDecoder::push(std::string_view bytes) {
  held_.append(bytes);
  const size_t ready = utf8_complete_prefix(held_);
  std::string out;
  out.reserve(ready);
  for (size_t pos = 0; pos < ready;) {
    size_t len = 0;
    if (utf8_decode(held_, pos, &len) == kInvalidCodePoint) {
      append_replacement(&out);
    } else {
      out.append(held_, pos, len);
    }
    pos += len;
  }
  held_.erase(0, ready);
  return out;
}

std::string Utf8StreamDecoder::finish() {
  std::string out;
  if (!held_.empty()) append_replacement(&out);
  held_.clear();
  return out;
}

}  // namespace ds4
