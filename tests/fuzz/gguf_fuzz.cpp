// libFuzzer target for the GGUF reader: parses arbitrary bytes with
// GgufFile::FromMemory; on success checks the reader's invariants (every tensor
// inside the buffer, aligned, findable by name, consistent with expect_tensor),
// calls every typed getter on every key and runs the quant routines on each
// tensor's first row. Any crash, sanitizer report or broken invariant aborts.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <span>
#include <string>
#include <vector>

#include "format/gguf.h"
#include "format/quant.h"

namespace {

#define FUZZ_ASSERT(cond)                                                     \
  do {                                                                        \
    if (!(cond)) {                                                            \
      std::fprintf(stderr, "gguf_fuzz: invariant failed: %s (%s:%d)\n", #cond, \
                   __FILE__, __LINE__);                                       \
      std::abort();                                                           \
    }                                                                         \
  } while (0)

constexpr int64_t kMaxRowElems = 1 << 16;

void Explained(const ds4::Status& s) { FUZZ_ASSERT(s.ok() || !s.message().empty()); }

void TouchMetadata(const ds4::GgufFile& file) {
  for (const auto& entry : file.metadata()) {
    const std::string& key = entry.first;
    // A duplicated key resolves to its first occurrence (GGUF.md §2), so the getters
    // are checked against what find() returns, not against this entry.
    const ds4::GgufValue* found = file.find(key);
    FUZZ_ASSERT(found != nullptr);
    const ds4::GgufValue& value = *found;
    uint32_t u32;
    uint64_t u64;
    int64_t i64;
    float f32;
    bool b;
    std::string s;
    std::vector<int64_t> ints;
    std::vector<float> floats;
    std::vector<std::string> strings;
    // Each getter either succeeds or explains itself; none may crash.
    Explained(file.get_u32(key, &u32));
    Explained(file.get_u64(key, &u64));
    Explained(file.get_i64(key, &i64));
    Explained(file.get_f32(key, &f32));
    Explained(file.get_bool(key, &b));
    Explained(file.get_string(key, &s));
    if (file.get_i64_array(key, &ints).ok()) FUZZ_ASSERT(ints.size() == value.array.size());
    if (file.get_f32_array(key, &floats).ok()) FUZZ_ASSERT(floats.size() == value.array.size());
    if (file.get_string_array(key, &strings).ok()) FUZZ_ASSERT(strings.size() == value.array.size());
  }
}

void TouchTensor(const ds4::GgufFile& file, const ds4::GgufTensor& t,
                 std::span<const uint8_t> bytes) {
  FUZZ_ASSERT(file.tensor(t.name) == &t);
  FUZZ_ASSERT(!t.ne.empty() && t.ne.size() <= 8);
  FUZZ_ASSERT(t.offset % file.alignment() == 0);
  FUZZ_ASSERT(t.data >= bytes.data());
  FUZZ_ASSERT(static_cast<uint64_t>(t.data - bytes.data()) + t.nbytes <= bytes.size());
  FUZZ_ASSERT(static_cast<uint64_t>(t.n_rows()) * t.row_bytes() == t.nbytes);
  auto same = file.expect_tensor(t.name, t.type, t.ne);
  FUZZ_ASSERT(same.ok() && *same == &t);

  // Read every byte of the tensor once (a sanitizer catches any out-of-bounds view).
  uint8_t sum = 0;
  for (uint64_t i = 0; i < t.nbytes; ++i) sum ^= t.data[i];
  volatile uint8_t sink = sum;
  (void)sink;

  if (!ds4::quant_supported(t.type) || t.ne[0] > kMaxRowElems) return;
  std::vector<float> row(static_cast<size_t>(t.ne[0]));
  std::vector<float> x(static_cast<size_t>(t.ne[0]), 0.5f);
  ds4::dequantize_row(t.type, t.row(0), row.data(), t.ne[0]);
  (void)ds4::dot_row(t.type, t.row(t.n_rows() - 1), x.data(), t.ne[0]);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::span<const uint8_t> bytes(data, size);
  auto file = ds4::GgufFile::FromMemory(bytes, "fuzz");
  if (!file.ok()) {
    FUZZ_ASSERT(!file.status().message().empty());
    return 0;
  }
  const ds4::GgufFile& f = **file;
  FUZZ_ASSERT(f.version() == 3);
  FUZZ_ASSERT(f.alignment() != 0);
  FUZZ_ASSERT(f.tensors().empty() || f.data_offset() <= size);
  TouchMetadata(f);
  for (const ds4::GgufTensor& t : f.tensors()) TouchTensor(f, t, bytes);
  return 0;
}
