// GGUF reader: the fixture files (metadata, tensor table, types), a byte-exact
// re-serialization of a real fixture, and one named test per malformed case, each
// built in memory from a real fixture's bytes.
#include "format/gguf.h"

#include <doctest/doctest.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <map>
#include <string>
#include <unistd.h>
#include <vector>

namespace ds4 {
namespace {

std::string DataPath(const std::string& rel) { return std::string(DS4_TEST_DATA) + "/" + rel; }

std::vector<uint8_t> ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  REQUIRE_MESSAGE(in.good(), "cannot read " << path);
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(in), {});
}

bool Contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

// ---- A GGUF writer that records where each field landed ------------------------------

struct TensorDesc {
  std::string name;
  std::vector<uint64_t> ne;
  uint32_t type;
  uint64_t offset;
};

struct Layout {
  std::vector<size_t> kv_key;    // offset of each key's length field
  std::vector<size_t> kv_type;   // offset of each value-type field
  std::vector<size_t> kv_value;  // offset of each value
  std::vector<size_t> tensor_ndims, tensor_type, tensor_offset;
  size_t data_start = 0;
};

class Writer {
 public:
  template <typename T>
  size_t put(T v) {
    size_t at = out.size();
    const uint8_t* p = reinterpret_cast<const uint8_t*>(&v);
    out.insert(out.end(), p, p + sizeof(T));
    return at;
  }
  size_t put_string(const std::string& s) {
    size_t at = put<uint64_t>(s.size());
    out.insert(out.end(), s.begin(), s.end());
    return at;
  }
  void put_value(const GgufValue& v) {
    switch (v.type) {
      case GgufValueType::UINT8: case GgufValueType::INT8: case GgufValueType::BOOL:
        put<uint8_t>(static_cast<uint8_t>(v.u)); break;
      case GgufValueType::UINT16: case GgufValueType::INT16: put<uint16_t>(static_cast<uint16_t>(v.u)); break;
      case GgufValueType::UINT32: case GgufValueType::INT32: put<uint32_t>(static_cast<uint32_t>(v.u)); break;
      case GgufValueType::UINT64: case GgufValueType::INT64: put<uint64_t>(v.u); break;
      case GgufValueType::FLOAT32: put<float>(static_cast<float>(v.f)); break;
      case GgufValueType::FLOAT64: put<double>(v.f); break;
      case GgufValueType::STRING: put_string(v.str); break;
      case GgufValueType::ARRAY:
        put<uint32_t>(static_cast<uint32_t>(v.array_type));
        put<uint64_t>(v.array.size());
        for (const GgufValue& item : v.array) put_value(item);
        break;
    }
  }
  std::vector<uint8_t> out;
};

struct Built {
  std::vector<uint8_t> bytes;
  Layout layout;
  std::span<const uint8_t> span() const { return bytes; }
};

Built Build(const std::vector<std::pair<std::string, GgufValue>>& kv,
            const std::vector<TensorDesc>& tensors, std::span<const uint8_t> data,
            uint64_t alignment = 32) {
  Writer w;
  Built b;
  w.put<uint32_t>(0x46554747);
  w.put<uint32_t>(3);
  w.put<uint64_t>(tensors.size());
  w.put<uint64_t>(kv.size());
  for (const auto& [key, value] : kv) {
    b.layout.kv_key.push_back(w.put_string(key));
    b.layout.kv_type.push_back(w.put<uint32_t>(static_cast<uint32_t>(value.type)));
    b.layout.kv_value.push_back(w.out.size());
    w.put_value(value);
  }
  for (const TensorDesc& t : tensors) {
    w.put_string(t.name);
    b.layout.tensor_ndims.push_back(w.put<uint32_t>(static_cast<uint32_t>(t.ne.size())));
    for (uint64_t d : t.ne) w.put<uint64_t>(d);
    b.layout.tensor_type.push_back(w.put<uint32_t>(t.type));
    b.layout.tensor_offset.push_back(w.put<uint64_t>(t.offset));
  }
  while (w.out.size() % alignment != 0) w.out.push_back(0);
  b.layout.data_start = w.out.size();
  w.out.insert(w.out.end(), data.begin(), data.end());
  b.bytes = std::move(w.out);
  return b;
}

template <typename T>
void Patch(std::vector<uint8_t>& bytes, size_t at, T v) {
  REQUIRE(at + sizeof(T) <= bytes.size());
  std::memcpy(bytes.data() + at, &v, sizeof(T));
}

// The parts of a real fixture, ready to be re-serialized with changes.
struct Parts {
  std::vector<uint8_t> original;
  std::vector<std::pair<std::string, GgufValue>> kv;
  std::vector<TensorDesc> tensors;
  std::vector<uint8_t> data;

  size_t kv_index(const std::string& key) const {
    for (size_t i = 0; i < kv.size(); ++i) if (kv[i].first == key) return i;
    FAIL("no key " << key);
    return 0;
  }
  Built build() const { return Build(kv, tensors, data); }
};

Parts LoadParts(const std::string& rel) {
  Parts p;
  p.original = ReadAll(DataPath(rel));
  auto file = GgufFile::FromMemory(p.original, rel);
  REQUIRE_MESSAGE(file.ok(), file.status().message());
  p.kv = (*file)->metadata();
  for (const GgufTensor& t : (*file)->tensors()) {
    p.tensors.push_back({t.name, std::vector<uint64_t>(t.ne.begin(), t.ne.end()),
                         static_cast<uint32_t>(t.type), t.offset});
  }
  p.data.assign(p.original.begin() + static_cast<long>((*file)->data_offset()), p.original.end());
  return p;
}

const Parts& FastModel() {
  static const Parts parts = LoadParts("tiny-fast/model.gguf");
  return parts;
}

// Parses `bytes` and returns the error message; fails the test if parsing succeeds.
std::string ParseError(std::span<const uint8_t> bytes) {
  auto file = GgufFile::FromMemory(bytes, "bad.gguf");
  REQUIRE_FALSE_MESSAGE(file.ok(), "the malformed file was accepted");
  const std::string& msg = file.status().message();
  CHECK_MESSAGE(msg.rfind("bad.gguf: ", 0) == 0, "error does not name the file: " << msg);
  return msg;
}

void ExpectError(std::span<const uint8_t> bytes, std::initializer_list<std::string> needles) {
  const std::string msg = ParseError(bytes);
  for (const std::string& needle : needles) {
    CHECK_MESSAGE(Contains(msg, needle), "error '" << msg << "' lacks '" << needle << "'");
  }
}

std::map<GgmlType, int> TypeCounts(const GgufFile& f) {
  std::map<GgmlType, int> counts;
  for (const GgufTensor& t : f.tensors()) counts[t.type]++;
  return counts;
}

}  // namespace

// ---- The fixture files ------------------------------------------------------------------

TEST_CASE("tiny-fast model.gguf: header, metadata and tensor table") {
  auto r = GgufFile::Open(DataPath("tiny-fast/model.gguf"));
  REQUIRE_MESSAGE(r.ok(), r.status().message());
  const GgufFile& f = **r;
  CHECK(f.version() == 3);
  CHECK(f.alignment() == 32);
  CHECK(f.data_offset() % 32 == 0);
  CHECK(f.file_size() == 8046688);
  CHECK(f.metadata().size() == 51);
  CHECK(f.tensors().size() == 178);

  std::string arch;
  REQUIRE(f.get_string("general.architecture", &arch).ok());
  CHECK(arch == "deepseek4");
  uint32_t u = 0;
  REQUIRE(f.get_u32("deepseek4.block_count", &u).ok());
  CHECK(u == 6);
  REQUIRE(f.get_u32("deepseek4.embedding_length", &u).ok());
  CHECK(u == 256);
  REQUIRE(f.get_u32("deepseek4.vocab_size", &u).ok());
  CHECK(u == 1000);
  REQUIRE(f.get_u32("deepseek4.attention.sliding_window", &u).ok());
  CHECK(u == 16);
  REQUIRE(f.get_u32("deepseek4.attention.indexer.top_k", &u).ok());
  CHECK(u == 8);
  uint64_t u64 = 0;
  REQUIRE(f.get_u64("deepseek4.context_length", &u64).ok());  // stored as UINT32
  CHECK(u64 == 1048576);
  float eps = 0;
  REQUIRE(f.get_f32("deepseek4.attention.layer_norm_rms_epsilon", &eps).ok());
  CHECK(eps == 1e-6f);
  float scale = 0;
  REQUIRE(f.get_f32("deepseek4.expert_weights_scale", &scale).ok());
  CHECK(scale == 1.5f);
  bool norm = false;
  REQUIRE(f.get_bool("deepseek4.expert_weights_norm", &norm).ok());
  CHECK(norm);
  std::vector<int64_t> ratios;
  REQUIRE(f.get_i64_array("deepseek4.attention.compress_ratios", &ratios).ok());
  CHECK(ratios == std::vector<int64_t>{0, 0, 4, 16, 4, 16, 0});
  std::vector<float> clamp;
  REQUIRE(f.get_f32_array("deepseek4.swiglu_clamp_exp", &clamp).ok());
  CHECK(clamp == std::vector<float>(6, 10.0f));
  std::vector<std::string> tokens, merges;
  REQUIRE(f.get_string_array("tokenizer.ggml.tokens", &tokens).ok());
  CHECK(tokens.size() == 1000);
  REQUIRE(f.get_string_array("tokenizer.ggml.merges", &merges).ok());
  CHECK(merges.size() == 725);
  CHECK(f.find("general.alignment") == nullptr);

  // Types: the real Q2 recipe (fixtures/README.md §1, GGUF.md §5.7).
  auto counts = TypeCounts(f);
  CHECK(counts[GgmlType::F16] == 42);
  CHECK(counts[GgmlType::F32] == 66);
  CHECK(counts[GgmlType::Q8_0] == 49);
  CHECK(counts[GgmlType::IQ2_XXS] == 12);
  CHECK(counts[GgmlType::Q2_K] == 6);
  CHECK(counts[GgmlType::I32] == 3);

  auto embd = f.expect_tensor("token_embd.weight", GgmlType::F16, {256, 1000});
  REQUIRE_MESSAGE(embd.ok(), embd.status().message());
  CHECK((*embd)->n_elements() == 256000);
  CHECK((*embd)->n_rows() == 1000);
  CHECK((*embd)->row_bytes() == 512);
  CHECK((*embd)->nbytes == 512000);
  CHECK((*embd)->row(3) == (*embd)->data + 3 * 512);
  auto gate = f.expect_tensor("blk.0.ffn_gate_exps.weight", GgmlType::IQ2_XXS, {256, 256, 8});
  CHECK_MESSAGE(gate.ok(), gate.status().message());
  CHECK(f.expect_tensor("blk.5.ffn_down_exps.weight", GgmlType::Q2_K, {256, 256, 8}).ok());
  CHECK(f.expect_tensor("blk.2.ffn_gate_tid2eid.weight", GgmlType::I32, {6, 1000}).ok());

  // Every tensor lies inside the mapping, at data_start + offset.
  const uint8_t* base = f.tensors().front().data - f.tensors().front().offset - f.data_offset();
  for (const GgufTensor& t : f.tensors()) {
    CAPTURE(t.name);
    CHECK(t.data == base + f.data_offset() + t.offset);
    CHECK(t.offset % 32 == 0);
    CHECK(f.data_offset() + t.offset + t.nbytes <= f.file_size());
    CHECK(f.tensor(t.name) == &t);
  }
  CHECK(f.tensor("no.such.tensor") == nullptr);
}

TEST_CASE("tiny-real and tiny-chat model.gguf parse with their own sizes") {
  auto real = GgufFile::Open(DataPath("tiny-real/model.gguf"));
  REQUIRE_MESSAGE(real.ok(), real.status().message());
  CHECK((*real)->tensors().size() == 178);
  std::vector<int64_t> ratios;
  REQUIRE((*real)->get_i64_array("deepseek4.attention.compress_ratios", &ratios).ok());
  CHECK(ratios == std::vector<int64_t>{0, 0, 4, 128, 4, 128, 0});
  uint32_t topk = 0;
  REQUIRE((*real)->get_u32("deepseek4.attention.indexer.top_k", &topk).ok());
  CHECK(topk == 512);

  auto chat = GgufFile::Open(DataPath("tiny-chat/model.gguf"));
  REQUIRE_MESSAGE(chat.ok(), chat.status().message());
  const GgufFile& c = **chat;
  CHECK(c.file_size() == 16117856);
  CHECK(c.tensors().size() == 178);
  CHECK(c.metadata().size() == 52);
  uint32_t vocab = 0, experts = 0;
  REQUIRE(c.get_u32("deepseek4.vocab_size", &vocab).ok());
  CHECK(vocab == 2048);
  REQUIRE(c.get_u32("deepseek4.expert_count", &experts).ok());
  CHECK(experts == 16);
  std::vector<std::string> tokens, merges;
  REQUIRE(c.get_string_array("tokenizer.ggml.tokens", &tokens).ok());
  REQUIRE(c.get_string_array("tokenizer.ggml.merges", &merges).ok());
  CHECK(tokens.size() == 2048);
  CHECK(merges.size() == 1776);
  auto counts = TypeCounts(c);  // tiny-chat/README.md: F16 42, F32 66, Q8_0 49, IQ2_XXS 12, Q2_K 6, I32 3
  CHECK(counts[GgmlType::F16] == 42);
  CHECK(counts[GgmlType::F32] == 66);
  CHECK(counts[GgmlType::Q8_0] == 49);
  CHECK(counts[GgmlType::IQ2_XXS] == 12);
  CHECK(counts[GgmlType::Q2_K] == 6);
  CHECK(counts[GgmlType::I32] == 3);
}

TEST_CASE("mtp.gguf files: 32 mtp.0 tensors, Q4_K experts, no tokenizer") {
  for (const char* rel : {"tiny-fast/mtp.gguf", "tiny-real/mtp.gguf"}) {
    CAPTURE(rel);
    auto r = GgufFile::Open(DataPath(rel));
    REQUIRE_MESSAGE(r.ok(), r.status().message());
    const GgufFile& f = **r;
    CHECK(f.tensors().size() == 32);
    std::string arch;
    REQUIRE(f.get_string("general.architecture", &arch).ok());
    CHECK(arch == "deepseek4_mtp_support");
    CHECK(f.find("tokenizer.ggml.tokens") == nullptr);
    for (const GgufTensor& t : f.tensors()) CHECK(t.name.rfind("mtp.0.", 0) == 0);
    CHECK(f.expect_tensor("mtp.0.ffn_gate_exps.weight", GgmlType::Q4_K, {256, 256, 8}).ok());
    CHECK(f.expect_tensor("mtp.0.ffn_down_exps.weight", GgmlType::Q4_K, {256, 256, 8}).ok());
    CHECK(f.expect_tensor("mtp.0.hc_head_fn.weight", GgmlType::F32, {1024, 4}).ok());
    CHECK(f.expect_tensor("mtp.0.e_proj.weight", GgmlType::Q8_0, {256, 256}).ok());
  }
}

TEST_CASE("Open and FromMemory agree, and a re-serialized fixture is byte-identical") {
  const Parts& p = FastModel();
  const Built rebuilt = p.build();
  CHECK(rebuilt.bytes.size() == p.original.size());
  CHECK(rebuilt.bytes == p.original);

  auto opened = GgufFile::Open(DataPath("tiny-fast/model.gguf"));
  auto mem = GgufFile::FromMemory(p.original, "tiny-fast");
  REQUIRE(opened.ok());
  REQUIRE(mem.ok());
  CHECK((*mem)->path() == "tiny-fast");
  CHECK((*opened)->data_offset() == (*mem)->data_offset());
  REQUIRE((*opened)->tensors().size() == (*mem)->tensors().size());
  for (size_t i = 0; i < (*mem)->tensors().size(); ++i) {
    const GgufTensor& a = (*opened)->tensors()[i];
    const GgufTensor& b = (*mem)->tensors()[i];
    CHECK(a.name == b.name);
    CHECK(std::memcmp(a.data, b.data, a.nbytes) == 0);
  }
}

// ---- Getters and expect_tensor -------------------------------------------------------------

TEST_CASE("typed getters name the key and both types on a mismatch") {
  auto r = GgufFile::Open(DataPath("tiny-fast/model.gguf"));
  REQUIRE(r.ok());
  const GgufFile& f = **r;
  uint32_t u = 0;
  Status s = f.get_u32("deepseek4.missing_key", &u);
  CHECK_FALSE(s.ok());
  CHECK(Contains(s.message(), "'deepseek4.missing_key' is missing"));
  CHECK(Contains(s.message(), "tiny-fast/model.gguf"));

  s = f.get_u32("general.architecture", &u);
  CHECK_FALSE(s.ok());
  CHECK(Contains(s.message(), "'general.architecture'"));
  CHECK(Contains(s.message(), "found STRING"));

  std::string str;
  s = f.get_string("deepseek4.block_count", &str);
  CHECK(Contains(s.message(), "expected STRING, found UINT32"));

  bool b = false;
  s = f.get_bool("deepseek4.block_count", &b);
  CHECK(Contains(s.message(), "expected BOOL, found UINT32"));

  std::vector<std::string> strs;
  s = f.get_string_array("deepseek4.attention.compress_ratios", &strs);
  CHECK(Contains(s.message(), "found ARRAY of INT32"));

  float fl = 0;
  s = f.get_f32("tokenizer.ggml.model", &fl);
  CHECK(Contains(s.message(), "found STRING"));
  // ds4 accepts integers for its float keys.
  REQUIRE(f.get_f32("deepseek4.block_count", &fl).ok());
  CHECK(fl == 6.0f);
  int64_t i64 = 0;
  REQUIRE(f.get_i64("deepseek4.block_count", &i64).ok());
  CHECK(i64 == 6);
  s = f.get_i64("deepseek4.rope.freq_base", &i64);
  CHECK(Contains(s.message(), "found FLOAT32"));
}

TEST_CASE("integer getters refuse values that do not fit") {
  Parts p;
  GgufValue neg;
  neg.type = GgufValueType::INT32;
  neg.i = -3;
  neg.u = static_cast<uint64_t>(-3);
  GgufValue big;
  big.type = GgufValueType::UINT64;
  big.u = 1ull << 40;
  big.i = static_cast<int64_t>(big.u);
  GgufValue huge;
  huge.type = GgufValueType::UINT64;
  huge.u = ~0ull;
  huge.i = -1;
  p.kv = {{"neg", neg}, {"big", big}, {"huge", huge}};
  const Built built = p.build();
  auto r = GgufFile::FromMemory(built.span(), "ints");
  REQUIRE_MESSAGE(r.ok(), r.status().message());
  uint32_t u32 = 0;
  uint64_t u64 = 0;
  int64_t i64 = 0;
  CHECK(Contains((*r)->get_u32("neg", &u32).message(), "value -3 does not fit UINT32"));
  CHECK(Contains((*r)->get_u64("neg", &u64).message(), "value -3 does not fit UINT64"));
  REQUIRE((*r)->get_i64("neg", &i64).ok());
  CHECK(i64 == -3);
  CHECK(Contains((*r)->get_u32("big", &u32).message(), "does not fit UINT32"));
  REQUIRE((*r)->get_u64("big", &u64).ok());
  CHECK(u64 == (1ull << 40));
  CHECK(Contains((*r)->get_i64("huge", &i64).message(), "does not fit INT64"));
  REQUIRE((*r)->get_u64("huge", &u64).ok());
  CHECK(u64 == ~0ull);
}

TEST_CASE("expect_tensor names the tensor, the expected and the found type and shape") {
  auto r = GgufFile::Open(DataPath("tiny-fast/model.gguf"));
  REQUIRE(r.ok());
  auto missing = (*r)->expect_tensor("blk.9.attn_norm.weight", GgmlType::F32, {256});
  REQUIRE_FALSE(missing.ok());
  CHECK(Contains(missing.status().message(), "tensor 'blk.9.attn_norm.weight' is missing"));
  auto wrong_type = (*r)->expect_tensor("token_embd.weight", GgmlType::Q8_0, {256, 1000});
  REQUIRE_FALSE(wrong_type.ok());
  CHECK(Contains(wrong_type.status().message(),
                 "tensor 'token_embd.weight': expected Q8_0 [256, 1000], found F16 [256, 1000]"));
  auto wrong_shape = (*r)->expect_tensor("token_embd.weight", GgmlType::F16, {1000, 256});
  REQUIRE_FALSE(wrong_shape.ok());
  CHECK(Contains(wrong_shape.status().message(), "expected F16 [1000, 256], found F16 [256, 1000]"));
}

// ---- Files and alignment ---------------------------------------------------------------------

TEST_CASE("Open names the path of a missing or truncated file") {
  auto missing = GgufFile::Open("/nonexistent/dir/model.gguf");
  REQUIRE_FALSE(missing.ok());
  CHECK(Contains(missing.status().message(), "/nonexistent/dir/model.gguf"));
  CHECK(Contains(missing.status().message(), "cannot open"));

  const Parts& p = FastModel();
  char path[] = "/tmp/ds4_gguf_test_XXXXXX";
  int fd = mkstemp(path);
  REQUIRE(fd >= 0);
  const size_t keep = p.original.size() - 100;
  REQUIRE(write(fd, p.original.data(), keep) == static_cast<ssize_t>(keep));
  close(fd);
  auto truncated = GgufFile::Open(path);
  unlink(path);
  REQUIRE_FALSE(truncated.ok());
  CHECK(Contains(truncated.status().message(), path));
  CHECK(Contains(truncated.status().message(), "beyond the end of the file"));
}

TEST_CASE("general.alignment is honoured, and must be a non-zero UINT32") {
  GgufValue align;
  align.type = GgufValueType::UINT32;
  align.u = 64;
  std::vector<uint8_t> data(192, 7);
  std::vector<std::pair<std::string, GgufValue>> kv = {{"general.alignment", align}};
  std::vector<TensorDesc> tensors = {{"a", {16}, 0, 0}, {"b", {8}, 0, 64}};
  Built ok = Build(kv, tensors, data, 64);
  auto r = GgufFile::FromMemory(ok.span());
  REQUIRE_MESSAGE(r.ok(), r.status().message());
  CHECK((*r)->alignment() == 64);
  CHECK((*r)->data_offset() % 64 == 0);
  CHECK((*r)->tensor("b")->data == ok.bytes.data() + (*r)->data_offset() + 64);

  tensors[1].offset = 32;  // aligned to the default 32, but not to 64
  ExpectError(Build(kv, tensors, data, 64).span(), {"tensor 'b'", "misaligned", "64"});

  kv[0].second.u = 0;
  ExpectError(Build(kv, {}, {}, 32).span(), {"general.alignment", "non-zero UINT32"});
  kv[0].second.type = GgufValueType::UINT64;
  kv[0].second.u = 64;
  ExpectError(Build(kv, {}, {}, 32).span(), {"general.alignment", "found UINT64"});
}

TEST_CASE("an empty GGUF (no metadata, no tensors) is valid") {
  const Built b = Build({}, {}, {});
  CHECK(b.bytes.size() == 32);  // 24-byte header padded to the alignment
  auto r = GgufFile::FromMemory(b.span());
  REQUIRE_MESSAGE(r.ok(), r.status().message());
  CHECK(r.value()->tensors().empty());
  auto bare = GgufFile::FromMemory(std::span<const uint8_t>(b.bytes.data(), 24));
  CHECK(bare.ok());
}

// ---- Malformed files, one per case ---------------------------------------------------------

TEST_CASE("malformed: bad magic") {
  std::vector<uint8_t> bytes = FastModel().original;
  bytes[0] = 'X';
  ExpectError(bytes, {"bad magic", "0x46554758"});
}

TEST_CASE("malformed: version 2") {
  std::vector<uint8_t> bytes = FastModel().original;
  Patch<uint32_t>(bytes, 4, 2);
  ExpectError(bytes, {"unsupported GGUF version 2", "expected version 3"});
}

TEST_CASE("malformed: truncated header") {
  const std::vector<uint8_t>& bytes = FastModel().original;
  ExpectError(std::span<const uint8_t>(bytes.data(), 20), {"truncated header", "20 bytes"});
  ExpectError(std::span<const uint8_t>(bytes.data(), 0), {"truncated header"});
}

TEST_CASE("malformed: truncated metadata") {
  const Parts& p = FastModel();
  const Built b = p.build();
  const size_t at = b.layout.kv_value[p.kv_index("tokenizer.ggml.eos_token_id")];
  ExpectError(std::span<const uint8_t>(b.bytes.data(), at + 2),
              {"truncated file", "metadata key 'tokenizer.ggml.eos_token_id'", "needs 4 bytes"});
  // So short that the declared number of entries cannot fit.
  ExpectError(std::span<const uint8_t>(b.bytes.data(), 200),
              {"metadata count 51 cannot fit", "truncated file"});
  // Cut inside the token strings.
  const size_t tokens = b.layout.kv_value[p.kv_index("tokenizer.ggml.tokens")];
  ExpectError(std::span<const uint8_t>(b.bytes.data(), tokens + 200),
              {"metadata key 'tokenizer.ggml.tokens'"});
  // Cut inside a key.
  ExpectError(std::span<const uint8_t>(b.bytes.data(), b.layout.kv_key[45] + 10),
              {"metadata entry 45 key", "exceeds"});
}

TEST_CASE("malformed: bad value type") {
  const Parts& p = FastModel();
  Built b = p.build();
  Patch<uint32_t>(b.bytes, b.layout.kv_type[p.kv_index("general.name")], 13);
  ExpectError(b.bytes, {"metadata key 'general.name'", "unknown value type 13"});
  // An array whose items have an unknown type.
  b = p.build();
  Patch<uint32_t>(b.bytes, b.layout.kv_value[p.kv_index("deepseek4.swiglu_clamp_exp")], 99);
  ExpectError(b.bytes, {"deepseek4.swiglu_clamp_exp", "unknown array item type 99"});
}

TEST_CASE("malformed: nested array too deep") {
  auto nest = [](int levels) {
    GgufValue v;
    v.type = GgufValueType::UINT8;
    v.u = 5;
    for (int i = 0; i < levels; ++i) {
      GgufValue outer;
      outer.type = GgufValueType::ARRAY;
      outer.array_type = v.type;
      outer.array = {v};
      v = outer;
    }
    return v;
  };
  Parts p;
  p.kv = {{"nested", nest(8)}};
  auto ok = GgufFile::FromMemory(p.build().span());
  REQUIRE_MESSAGE(ok.ok(), ok.status().message());  // depth 8 is allowed
  p.kv = {{"nested", nest(9)}};
  ExpectError(p.build().span(), {"metadata key 'nested'", "nested 9 deep", "at most 8"});
}

TEST_CASE("malformed: huge string length") {
  const Parts& p = FastModel();
  Built b = p.build();
  Patch<uint64_t>(b.bytes, b.layout.kv_value[p.kv_index("general.name")], 1ull << 62);
  ExpectError(b.bytes, {"metadata key 'general.name'", "string length 4611686018427387904",
                        "exceeds"});
  b = p.build();
  Patch<uint64_t>(b.bytes, b.layout.kv_key[0], ~0ull);  // a key's length
  ExpectError(b.bytes, {"metadata entry 0 key", "exceeds"});
}

TEST_CASE("malformed: huge array count") {
  const Parts& p = FastModel();
  Built b = p.build();
  Patch<uint64_t>(b.bytes, b.layout.kv_value[p.kv_index("tokenizer.ggml.tokens")] + 4, 1ull << 60);
  ExpectError(b.bytes, {"metadata key 'tokenizer.ggml.tokens'", "array count 1152921504606846976",
                        "cannot fit"});
  b = p.build();
  Patch<uint64_t>(b.bytes, 16, ~0ull);  // the metadata count itself
  ExpectError(b.bytes, {"metadata count", "cannot fit"});
  b = p.build();
  Patch<uint64_t>(b.bytes, 8, 1ull << 40);  // the tensor count
  ExpectError(b.bytes, {"tensor count", "cannot fit"});
}

TEST_CASE("malformed: n_dims 0 and 9") {
  Parts p = FastModel();
  p.tensors[5].ne = {};
  ExpectError(p.build().span(), {"tensor 'blk.0.attn_q_a.weight'", "n_dims is 0", "expected 1..8"});
  p = FastModel();
  p.tensors[5].ne = {256, 64, 1, 1, 1, 1, 1, 1, 1};
  ExpectError(p.build().span(), {"tensor 'blk.0.attn_q_a.weight'", "n_dims is 9"});
  p.tensors[5].ne = {256, 64, 1, 1, 1, 1, 1, 1};  // 8 is allowed
  auto ok = GgufFile::FromMemory(p.build().span());
  CHECK_MESSAGE(ok.ok(), ok.status().message());
}

TEST_CASE("malformed: unknown ggml type") {
  const Parts& p = FastModel();
  Built b = p.build();
  Patch<uint32_t>(b.bytes, b.layout.tensor_type[7], 31);
  ExpectError(b.bytes, {"tensor 'blk.0.attn_q_b.weight'", "unknown ggml type id 31"});
  b = p.build();
  Patch<uint32_t>(b.bytes, b.layout.tensor_type[0], 0xFFFFFFFFu);
  ExpectError(b.bytes, {"tensor 'token_embd.weight'", "unknown ggml type id 4294967295"});
}

TEST_CASE("malformed: tensor beyond end of file") {
  Parts p = FastModel();
  p.tensors.back().offset += 1ull << 20;
  ExpectError(p.build().span(), {"tensor '" + p.tensors.back().name + "'",
                                 "beyond the end of the file"});
  p = FastModel();
  p.tensors[3].offset = ~0ull - 31;  // aligned, but offset + size wraps around
  ExpectError(p.build().span(), {"beyond the end of the file"});
  const std::vector<uint8_t>& bytes = FastModel().original;
  ExpectError(std::span<const uint8_t>(bytes.data(), bytes.size() - 1), {"beyond the end"});
}

TEST_CASE("malformed: element count overflow") {
  Parts p = FastModel();
  p.tensors[4].ne = {1ull << 32, 1ull << 32, 1ull << 32};
  ExpectError(p.build().span(), {"tensor 'blk.0.attn_norm.weight'", "element count overflows"});
  p.tensors[4].ne = {1ull << 63};
  ExpectError(p.build().span(), {"tensor 'blk.0.attn_norm.weight'", "not a valid dimension"});
  p.tensors[4].ne = {1ull << 62};  // fits int64, but its byte size (x4) does not
  ExpectError(p.build().span(), {"tensor 'blk.0.attn_norm.weight'", "overflows"});
}

TEST_CASE("malformed: zero dimension and partial block") {
  Parts p = FastModel();
  p.tensors[4].ne = {256, 0};
  ExpectError(p.build().span(), {"tensor 'blk.0.attn_norm.weight'", "ne[1] = 0"});
  p = FastModel();
  p.tensors[5].ne = {250, 64};  // Q8_0 rows must be whole 32-element blocks
  ExpectError(p.build().span(), {"tensor 'blk.0.attn_q_a.weight'", "not a multiple", "Q8_0"});
}

TEST_CASE("malformed: duplicate tensor") {
  Parts p = FastModel();
  p.tensors[9].name = p.tensors[2].name;
  ExpectError(p.build().span(), {"duplicate tensor name 'blk.0.hc_attn_scale.weight'"});
}

TEST_CASE("malformed: misaligned data offset") {
  Parts p = FastModel();
  p.tensors[6].offset += 4;
  ExpectError(p.build().span(), {"tensor 'blk.0.attn_q_a_norm.weight'", "misaligned",
                                 "alignment 32"});
}

TEST_CASE("malformed: truncated tensor table") {
  const Parts& p = FastModel();
  const Built b = p.build();
  ExpectError(std::span<const uint8_t>(b.bytes.data(), b.layout.tensor_type[150] + 1),
              {"truncated file", "tensor '" + p.tensors[150].name + "' type"});
  ExpectError(std::span<const uint8_t>(b.bytes.data(), b.layout.tensor_type[10] + 1),
              {"tensor count 178 cannot fit", "truncated file"});
}

}  // namespace ds4
