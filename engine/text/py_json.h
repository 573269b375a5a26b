// JSON text written the way DeepSeek's official encoder writes it: Python's
// json.dumps(value, ensure_ascii=False), i.e. ", " between items, ": " after keys,
// keys in their original order, non-ASCII characters kept. Used for tool schemas,
// response formats and non-string tool arguments in rendered prompts.
//
// Thread-safety: pure functions.
#pragma once

#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "common/status.h"

namespace ds4 {

using OrderedJson = nlohmann::ordered_json;

// `value` as Python json.dumps(ensure_ascii=False) text.
std::string python_json_dumps(const OrderedJson& value);
// Parses JSON text, keeping object key order; the error names `what`.
Result<OrderedJson> parse_ordered_json(std::string_view text, const std::string& what);

}  // namespace ds4
