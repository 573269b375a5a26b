#include "text/pretokenizer.h"

#include <cstdint>

#include "text/unicode_tables.h"
#include "text/utf8.h"

namespace ds4 {
namespace {

// One decoded character of the input with the classes the regexes ask about.
struct Char {
  uint32_t offset = 0;  // byte offset in the text
  uint32_t cp = kInvalidCodePoint;
  UnicodeCategory category = UnicodeCategory::kOther;
  bool space = false;   // \s (Unicode White_Space)
};

bool is_ascii_punct(uint32_t cp) {
  return (cp >= 0x21 && cp <= 0x2F) || (cp >= 0x3A && cp <= 0x40) ||
         (cp >= 0x5B && cp <= 0x60) || (cp >= 0x7B && cp <= 0x7E);
}
bool is_ascii_letter(uint32_t cp) { return (cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z'); }
bool is_cjk(uint32_t cp) {
  return (cp >= 0x4E00 && cp <= 0x9FA5) || (cp >= 0x3040 && cp <= 0x309F) ||
         (cp >= 0x30A0 && cp <= 0x30FF);
}

bool is_newline(const Char& c) { return c.cp == '\r' || c.cp == '\n'; }
bool is_space(const Char& c) { return c.space; }
bool is_number(const Char& c) { return c.category == UnicodeCategory::kNumber; }
bool is_letter(const Char& c) { return c.category == UnicodeCategory::kLetter; }
bool is_letter_or_mark(const Char& c) {
  return c.category == UnicodeCategory::kLetter || c.category == UnicodeCategory::kMark;
}
bool is_punct_or_symbol(const Char& c) {
  return c.category == UnicodeCategory::kPunctuation || c.category == UnicodeCategory::kSymbol;
}

std::vector<Char> decode(std::string_view text) {
  std::vector<Char> chars;
  chars.reserve(text.size());
  for (size_t pos = 0; pos < text.size();) {
    size_t len = 0;
    Char c;
    c.offset = static_cast<uint32_t>(pos);
    c.cp = utf8_decode(text, pos, &len);
    if (c.cp != kInvalidCodePoint) {
      c.category = unicode_category(c.cp);
      c.space = unicode_is_whitespace(c.cp);
    }
    chars.push_back(c);
    pos += len;
  }
  return chars;
}

using Chars = std::vector<Char>;

size_t run(const Chars& c, size_t i, size_t end, bool (*pred)(const Char&)) {
  while (i < end && pred(c[i])) ++i;
  return i;
}

// A matcher returns the end of the match starting at `i` inside [.., end), or `i`
// when nothing matches there (every branch of these regexes consumes >= 1 char).

// Regex 1: \p{N}{1,3}
size_t match_numbers(const Chars& c, size_t i, size_t end) {
  size_t j = i;
  while (j < end && j - i < 3 && is_number(c[j])) ++j;
  return j;
}

// Regex 2: [一-龥぀-ゟ゠-ヿ]+
size_t match_cjk(const Chars& c, size_t i, size_t end) {
  return run(c, i, end, [](const Char& x) { return is_cjk(x.cp); });
}

// Regex 3, branch (a): [ASCII punct][A-Za-z]+
size_t branch_punct_word(const Chars& c, size_t i, size_t end) {
  if (!is_ascii_punct(c[i].cp) || i + 1 >= end || !is_ascii_letter(c[i + 1].cp)) return i;
  return run(c, i + 1, end, [](const Char& x) { return is_ascii_letter(x.cp); });
}

// Branch (b): [^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+
size_t branch_word(const Chars& c, size_t i, size_t end) {
  const bool optional_ok = !is_newline(c[i]) && !is_letter(c[i]) && !is_punct_or_symbol(c[i]);
  if (optional_ok && i + 1 < end && is_letter_or_mark(c[i + 1])) {
    return run(c, i + 1, end, is_letter_or_mark);
  }
  return run(c, i, end, is_letter_or_mark);
}

// Branch (c): ` ?[\p{P}\p{S}]+[\r\n]*` (the optional char is U+0020 only)
size_t branch_punct(const Chars& c, size_t i, size_t end) {
  size_t j = i;
  if (c[j].cp == ' ' && j + 1 < end && is_punct_or_symbol(c[j + 1])) ++j;
  if (!is_punct_or_symbol(c[j])) return i;
  j = run(c, j, end, is_punct_or_symbol);
  return run(c, j, end, is_newline);
}

// Branch (d): \s*[\r\n]+ — the whitespace run up to and including its last CR/LF.
size_t branch_space_newline(const Chars& c, size_t i, size_t end) {
  const size_t space_end = run(c, i, end, is_space);
  for (size_t j = space_end; j > i; --j) {
    if (is_newline(c[j - 1])) return j;
  }
  return i;
}

// Branch (e): \s+(?!\S) — the whitespace run, minus its last char when a non-space
// follows (needs at least one char left).
size_t branch_space_not_before_word(const Chars& c, size_t i, size_t end) {
  const size_t space_end = run(c, i, end, is_space);
  if (space_end == i) return i;
  if (space_end == end) return space_end;
  return space_end - 1 > i ? space_end - 1 : i;
}

// Branch (f): \s+
size_t branch_space(const Chars& c, size_t i, size_t end) { return run(c, i, end, is_space); }

size_t match_main(const Chars& c, size_t i, size_t end) {
  using Branch = size_t (*)(const Chars&, size_t, size_t);
  static constexpr Branch kBranches[] = {branch_punct_word, branch_word, branch_punct,
                                         branch_space_newline, branch_space_not_before_word,
                                         branch_space};
  for (Branch branch : kBranches) {
    const size_t j = branch(c, i, end);
    if (j > i) return j;
  }
  return i;
}

struct Span {
  size_t begin;
  size_t end;
};

using Matcher = size_t (*)(const Chars&, size_t, size_t);

// "Isolated" split of every span: each match and each unmatched stretch between
// matches becomes its own span.
std::vector<Span> split(const Chars& c, const std::vector<Span>& spans, Matcher matcher) {
  std::vector<Span> out;
  out.reserve(spans.size() * 2);
  for (const Span& s : spans) {
    size_t gap = s.begin;
    size_t i = s.begin;
    while (i < s.end) {
      const size_t j = matcher(c, i, s.end);
      if (j == i) {
        ++i;
        continue;
      }
      if (gap < i) out.push_back({gap, i});
      out.push_back({i, j});
      i = gap = j;
    }
    if (gap < s.end) out.push_back({gap, s.end});
  }
  return out;
}

}  // namespace

std::vector<std::string_view> pretokenize(std::string_view text) {
  const Chars chars = decode(text);
  std::vector<Span> spans{{0, chars.size()}};
  if (chars.empty()) return {};
  spans = split(chars, spans, match_numbers);
  spans = split(chars, spans, match_cjk);
  spans = split(chars, spans, match_main);
  std::vector<std::string_view> pieces;
  pieces.reserve(spans.size());
  for (const Span& s : spans) {
    const size_t from = chars[s.begin].offset;
    const size_t to = s.end < chars.size() ? chars[s.end].offset : text.size();
    pieces.push_back(text.substr(from, to - from));
  }
  return pieces;
}

}  // namespace ds4
