// The official DeepSeek V4 pre-tokenizer (spec/TOKENIZER_AND_CHAT.md §3.1): three
// isolated regex splits applied in sequence,
//   1. \p{N}{1,3}
//   2. [一-龥぀-ゟ゠-ヿ]+
//   3. [!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+|
//      ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
// implemented as hand-written matchers with exactly the regexes' semantics
// (leftmost-first alternation, greedy quantifiers with backtracking where it
// matters) over real Unicode general categories (unicode_tables.h).
//
// Invalid UTF-8 bytes are treated as single characters of category "other" (Cn),
// so no input byte is ever lost.
//
// Thread-safety: pure function.
#pragma once

#include <string_view>
#include <vector>

namespace ds4 {

// Splits `text` into pieces whose concatenation is `text`. The views point into it.
std::vector<std::string_view> pretokenize(std::string_view text);

}  // namespace ds4
