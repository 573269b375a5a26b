#include "text/py_json.h"

namespace ds4 {
namespace {

void dump_into(const OrderedJson& v, std::string* out) {
  if (v.is_object()) {
    out->push_back('{');
    bool first = true;
    for (auto it = v.begin(); it != v.end(); ++it) {
      if (!first) out->append(", ");
      first = false;
      out->append(OrderedJson(it.key()).dump(-1, ' ', false, OrderedJson::error_handler_t::replace));
      out->append(": ");
      dump_into(it.value(), out);
    }
    out->push_back('}');
  } else if (v.is_array()) {
    out->push_back('[');
    bool first = true;
    for (const auto& item : v) {
      if (!first) out->append(", ");
      first = false;
      dump_into(item, out);
    }
    out->push_back(']');
  } else {
    out->append(v.dump(-1, ' ', false, OrderedJson::error_handler_t::replace));
  }
}

}  // namespace

std::string python_json_dumps(const OrderedJson& value) {
  std::string out;
  dump_into(value, &out);
  return out;
}

Result<OrderedJson> parse_ordered_json(std::string_view text, const std::string& what) {
  OrderedJson value = OrderedJson::parse(text.begin(), text.end(), nullptr, false);
  if (value.is_discarded()) return Status::Error(what + ": not valid JSON");
  return value;
}

}  // namespace ds4
