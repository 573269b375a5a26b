// Unicode character properties needed by the pre-tokenizer: the general-category
// group (L, M, N, P, S, Z, C) and the White_Space property. The data are compact
// range tables generated once from UnicodeData.txt / PropList.txt (Unicode 15.0)
// by tools/gen_unicode_tables.py into unicode_tables.cpp; the build needs nothing
// else.
//
// Thread-safety: pure functions over constant tables.
#pragma once

#include <cstdint>

namespace ds4 {

enum class UnicodeCategory : uint8_t {
  kOther = 0,   // C*: Cc, Cf, Cs, Co, Cn (unassigned)
  kLetter,      // L*: Lu, Ll, Lt, Lm, Lo
  kMark,        // M*: Mn, Mc, Me
  kNumber,      // N*: Nd, Nl, No
  kPunctuation, // P*: Pc, Pd, Ps, Pe, Pi, Pf, Po
  kSymbol,      // S*: Sm, Sc, Sk, So
  kSeparator,   // Z*: Zs, Zl, Zp
};

// The general-category group of code point `cp` (kOther beyond U+10FFFF).
UnicodeCategory unicode_category(uint32_t cp);
// Unicode White_Space property (what \s matches in a Unicode regex engine).
bool unicode_is_whitespace(uint32_t cp);

}  // namespace ds4
