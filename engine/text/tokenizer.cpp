#include "text/tokenizer.h"

#include <array>
#include <mutex>
#include <queue>
#include <unordered_map>
#include <utility>

#include "format/gguf.h"
#include "text/pretokenizer.h"
#include "text/utf8.h"

namespace ds4 {
namespace {

constexpr std::string_view kFullwidthBar = "\xEF\xBD\x9C";  // U+FF5C
constexpr size_t kCacheMaxPieceBytes = 256;
constexpr size_t kCacheMaxEntries = 1 << 16;

// The GPT-2 byte <-> code point map (§2).
struct ByteMap {
  std::array<uint32_t, 256> byte_to_cp{};
  std::array<int16_t, 324> cp_to_byte{};

  ByteMap() {
    cp_to_byte.fill(-1);
    uint32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174);
      byte_to_cp[b] = printable ? static_cast<uint32_t>(b) : next++;
      cp_to_byte[byte_to_cp[b]] = static_cast<int16_t>(b);
    }
  }
};

const ByteMap& byte_map() {
  static const ByteMap map;
  return map;
}

// §4.1: strings holding U+FF5C are returned as is; others are mapped back to bytes.
std::string bytes_of_token_string(const std::string& s) {
  if (s.find(kFullwidthBar) != std::string::npos) return s;
  std::string out;
  out.reserve(s.size());
  for (size_t pos = 0; pos < s.size();) {
    size_t len = 0;
    const uint32_t cp = utf8_decode(s, pos, &len);
    pos += len;
    if (cp < byte_map().cp_to_byte.size() && byte_map().cp_to_byte[cp] >= 0) {
      out.push_back(static_cast<char>(byte_map().cp_to_byte[cp]));
    }
  }
  return out;
}

uint64_t pair_key(int32_t left, int32_t right) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) | static_cast<uint32_t>(right);
}

struct Merge {
  int32_t rank;
  int32_t result;
};

// The special strings split out of rendered text, in the order ds4 tests them.
constexpr std::array<std::string_view, 7> kSpecialStrings = {
    kBosText, kEosText, kUserText, kAssistantText, kThinkBeginText, kThinkEndText, kDsmlText};

}  // namespace

struct Tokenizer::Impl {
  std::vector<std::string> tokens;
  std::vector<std::string> bytes;  // token_bytes() of each id
  std::unordered_map<std::string_view, int32_t> ids;
  std::unordered_map<uint64_t, Merge> merges;
  std::array<int32_t, 256> byte_token{};
  std::array<int32_t, 7> special{};  // ids of kSpecialStrings

  mutable std::mutex cache_mutex;
  mutable std::unordered_map<std::string, std::vector<int32_t>> cache;

  Status build(std::vector<std::string> vocab, const std::vector<std::string>& merge_list);
  void bpe(std::string_view piece, std::vector<int32_t>* out) const;
  void bpe_uncached(std::string_view piece, std::vector<int32_t>* out) const;
  void encode_plain(std::string_view text, std::vector<int32_t>* out) const;
};

Status Tokenizer::Impl::build(std::vector<std::string> vocab,
                              const std::vector<std::string>& merge_list) {
  if (vocab.empty()) return Status::Error("tokenizer.ggml.tokens: the vocabulary is empty");
  if (vocab.size() > INT32_MAX) return Status::Error("tokenizer.ggml.tokens: too many tokens");
  tokens = std::move(vocab);
  ids.reserve(tokens.size());
  bytes.reserve(tokens.size());
  for (size_t i = 0; i < tokens.size(); ++i) {
    ids.emplace(tokens[i], static_cast<int32_t>(i));  // first occurrence wins
    bytes.push_back(bytes_of_token_string(tokens[i]));
  }
  for (int b = 0; b < 256; ++b) {
    std::string symbol;
    utf8_append(byte_map().byte_to_cp[b], &symbol);
    auto it = ids.find(symbol);
    if (it == ids.end()) {
      return Status::Error("tokenizer.ggml.tokens: no token for byte 0x" +
                           std::string(1, "0123456789abcdef"[b >> 4]) +
                           std::string(1, "0123456789abcdef"[b & 15]) +
                           " (not a byte-level BPE vocabulary)");
    }
    byte_token[b] = it->second;
  }
  for (size_t k = 0; k < kSpecialStrings.size(); ++k) {
    auto it = ids.find(kSpecialStrings[k]);
    if (it == ids.end()) {
      return Status::Error("tokenizer.ggml.tokens: missing special token \"" +
                           std::string(kSpecialStrings[k]) + "\"");
    }
    special[k] = it->second;
  }
  merges.reserve(merge_list.size());
  for (size_t rank = 0; rank < merge_list.size(); ++rank) {
    const std::string& m = merge_list[rank];
    const size_t space = m.find(' ');
    if (space == std::string::npos || space == 0 || space + 1 >= m.size() ||
        m.find(' ', space + 1) != std::string::npos) {
      return Status::Error("tokenizer.ggml.merges[" + std::to_string(rank) + "]: \"" + m +
                           "\" is not \"<left> <right>\"");
    }
    const std::string left = m.substr(0, space);
    const std::string right = m.substr(space + 1);
    auto l = ids.find(left), r = ids.find(right), joined = ids.find(left + right);
    // A merge whose parts or result are not tokens can never apply.
    if (l == ids.end() || r == ids.end() || joined == ids.end()) continue;
    merges.emplace(pair_key(l->second, r->second),
                   Merge{static_cast<int32_t>(rank), joined->second});
  }
  return Status::Ok();
}

// Lowest-rank-first merging (ties: leftmost) with a heap of candidate pairs over a
// linked list of symbols: O(n log n) in the piece length.
void Tokenizer::Impl::bpe_uncached(std::string_view piece, std::vector<int32_t>* out) const {
  const int32_t n = static_cast<int32_t>(piece.size());
  struct Node {
    int32_t id, prev, next;
  };
  std::vector<Node> nodes(n);
  for (int32_t i = 0; i < n; ++i) {
    nodes[i] = {byte_token[static_cast<unsigned char>(piece[i])], i - 1, i + 1 < n ? i + 1 : -1};
  }
  struct Candidate {
    int32_t rank, left, left_id, right_id;
    bool operator>(const Candidate& o) const {
      return rank != o.rank ? rank > o.rank : left > o.left;
    }
  };
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<Candidate>> heap;
  auto consider = [&](int32_t left) {
    if (left < 0 || nodes[left].next < 0) return;
    const int32_t right = nodes[left].next;
    auto it = merges.find(pair_key(nodes[left].id, nodes[right].id));
    if (it != merges.end()) heap.push({it->second.rank, left, nodes[left].id, nodes[right].id});
  };
  for (int32_t i = 0; i + 1 < n; ++i) consider(i);
  while (!heap.empty()) {
    const Candidate c = heap.top();
    heap.pop();
    Node& left = nodes[c.left];
    if (left.id != c.left_id || left.next < 0) continue;
    const int32_t right_index = left.next;
    Node& right = nodes[right_index];
    if (right.id != c.right_id) continue;
    left.id = merges.at(pair_key(c.left_id, c.right_id)).result;
    left.next = right.next;
    if (right.next >= 0) nodes[right.next].prev = c.left;
    right.id = -1;
    right.next = -1;
    consider(left.prev);
    consider(c.left);
  }
  for (int32_t i = 0; i >= 0 && i < n; i = nodes[i].next) out->push_back(nodes[i].id);
}

void Tokenizer::Impl::bpe(std::string_view piece, std::vector<int32_t>* out) const {
  if (piece.size() > kCacheMaxPieceBytes) {
    bpe_uncached(piece, out);
    return;
  }
  const std::string key(piece);
  {
    std::lock_guard<std::mutex> lock(cache_mutex);
    auto it = cache.find(key);
    if (it != cache.end()) {
      out->insert(out->end(), it->second.begin(), it->second.end());
      return;
    }
  }
  std::vector<int32_t> ids_of_piece;
  bpe_uncached(piece, &ids_of_piece);
  out->insert(out->end(), ids_of_piece.begin(), ids_of_piece.end());
  std::lock_guard<std::mutex> lock(cache_mutex);
  if (cache.size() >= kCacheMaxEntries) cache.clear();
  cache.emplace(key, std::move(ids_of_piece));
}

void Tokenizer::Impl::encode_plain(std::string_view text, std::vector<int32_t>* out) const {
  for (std::string_view piece : pretokenize(text)) bpe(piece, out);
}

Tokenizer::Tokenizer() : impl_(std::make_unique<Impl>()) {}
Tokenizer::~Tokenizer() = default;
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;

Result<Tokenizer> Tokenizer::FromVocab(std::vector<std::string> tokens,
                                       std::vector<std::string> merges) {
  Tokenizer t;
  DS4_RETURN_IF_ERROR(t.impl_->build(std::move(tokens), merges));
  return t;
}

Result<Tokenizer> Tokenizer::FromGguf(const GgufFile& gguf) {
  // The model kind is optional metadata; when present it must be byte-level BPE.
  if (gguf.find("tokenizer.ggml.model") != nullptr) {
    std::string model;
    Status s = gguf.get_string("tokenizer.ggml.model", &model);
    if (!s.ok()) return s.wrap(gguf.path());
    if (model != "gpt2") {
      return Status::Error(gguf.path() + ": tokenizer.ggml.model is \"" + model +
                           "\", expected \"gpt2\" (byte-level BPE)");
    }
  }
  std::vector<std::string> tokens, merges;
  Status s = gguf.get_string_array("tokenizer.ggml.tokens", &tokens);
  if (!s.ok()) return s.wrap(gguf.path());
  s = gguf.get_string_array("tokenizer.ggml.merges", &merges);
  if (!s.ok()) return s.wrap(gguf.path());
  Result<Tokenizer> t = FromVocab(std::move(tokens), std::move(merges));
  if (!t.ok()) return t.status().wrap(gguf.path());
  return t;
}

std::vector<int32_t> Tokenizer::encode(std::string_view text) const {
  std::vector<int32_t> out;
  out.reserve(text.size() / 3 + 1);
  impl_->encode_plain(text, &out);
  return out;
}

std::vector<int32_t> Tokenizer::encode_with_specials(std::string_view rendered) const {
  std::vector<int32_t> out;
  out.reserve(rendered.size() / 3 + 1);
  size_t plain_start = 0;
  for (size_t pos = 0; pos < rendered.size();) {
    const char c = rendered[pos];
    size_t hit = kSpecialStrings.size();
    if (c == '<' || c == kFullwidthBar[0]) {
      const std::string_view rest = rendered.substr(pos);
      for (size_t k = 0; k < kSpecialStrings.size(); ++k) {
        if (rest.starts_with(kSpecialStrings[k])) {
          hit = k;
          break;
        }
      }
    }
    if (hit == kSpecialStrings.size()) {
      ++pos;
      continue;
    }
    impl_->encode_plain(rendered.substr(plain_start, pos - plain_start), &out);
    out.push_back(impl_->special[hit]);
    pos += kSpecialStrings[hit].size();
    plain_start = pos;
  }
  impl_->encode_plain(rendered.substr(plain_start), &out);
  return out;
}

std::string Tokenizer::token_bytes(int32_t id) const {
  if (id < 0 || id >= vocab_size()) return {};
  return impl_->bytes[id];
}

std::string Tokenizer::decode(std::span<const int32_t> ids) const {
  std::string out;
  for (int32_t id : ids) {
    if (id >= 0 && id < vocab_size()) out += impl_->bytes[id];
  }
  return out;
}

const std::string& Tokenizer::token_text(int32_t id) const {
  static const std::string kEmpty;
  if (id < 0 || id >= vocab_size()) return kEmpty;
  return impl_->tokens[id];
}

int32_t Tokenizer::vocab_size() const { return static_cast<int32_t>(impl_->tokens.size()); }

std::optional<int32_t> Tokenizer::find_token(std::string_view token_string) const {
  auto it = impl_->ids.find(token_string);
  if (it == impl_->ids.end()) return std::nullopt;
  return it->second;
}

int32_t Tokenizer::bos() const { return impl_->special[0]; }
int32_t Tokenizer::eos() const { return impl_->special[1]; }
int32_t Tokenizer::user() const { return impl_->special[2]; }
int32_t Tokenizer::assistant() const { return impl_->special[3]; }
int32_t Tokenizer::think_begin() const { return impl_->special[4]; }
int32_t Tokenizer::think_end() const { return impl_->special[5]; }
int32_t Tokenizer::dsml() const { return impl_->special[6]; }

}  // namespace ds4
