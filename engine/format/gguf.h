// GgufFile: a read-only, memory-mapped GGUF v3 file (spec/GGUF.md §2).
//
// Opening parses the header, the metadata table and the tensor table and checks
// every bound (GGUF.md §2.6, §7): a malformed file yields a Status naming the key or
// tensor at fault, never a crash. Tensor bytes are not copied: a tensor's `data`
// points into the mapping, which lives as long as the GgufFile.
//
// Thread-safety: immutable after Open; const methods may be called concurrently.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "common/status.h"
#include "format/ggml_type.h"

namespace ds4 {

enum class GgufValueType : uint32_t {
  UINT8 = 0, INT8 = 1, UINT16 = 2, INT16 = 3, UINT32 = 4, INT32 = 5, FLOAT32 = 6,
  BOOL = 7, STRING = 8, ARRAY = 9, UINT64 = 10, INT64 = 11, FLOAT64 = 12,
};
std::string_view gguf_value_type_name(GgufValueType t);

// One metadata value. Scalars are widened into `i` (signed and unsigned integers,
// bools), `u` (unsigned view of the same bits) or `f` (floats); strings in `str`;
// arrays in `array` (items of `array_type`).
struct GgufValue {
  GgufValueType type = GgufValueType::UINT8;
  int64_t i = 0;
  uint64_t u = 0;
  double f = 0.0;
  std::string str;
  GgufValueType array_type = GgufValueType::UINT8;
  std::vector<GgufValue> array;
};

struct GgufTensor {
  std::string name;
  GgmlType type = GgmlType::F32;
  std::vector<int64_t> ne;      // ggml order: ne[0] is the contiguous (input) dimension
  uint64_t offset = 0;          // relative to the data section
  uint64_t nbytes = 0;
  const uint8_t* data = nullptr;  // into the mapping

  int64_t n_elements() const;
  int64_t n_rows() const { return ne.empty() || ne[0] == 0 ? 0 : n_elements() / ne[0]; }
  size_t row_bytes() const;     // bytes of one ne[0]-long row
  const uint8_t* row(int64_t r) const { return data + r * row_bytes(); }
};

class GgufFile {
 public:
  // Maps and parses `path`.
  static Result<std::unique_ptr<GgufFile>> Open(const std::string& path);
  // Parses a caller-owned buffer (tests, fuzzing); `bytes` must outlive the file.
  static Result<std::unique_ptr<GgufFile>> FromMemory(std::span<const uint8_t> bytes,
                                                      std::string label = "<memory>");
  ~GgufFile();
  GgufFile(const GgufFile&) = delete;
  GgufFile& operator=(const GgufFile&) = delete;

  const std::string& path() const { return path_; }
  uint32_t version() const { return version_; }
  uint64_t alignment() const { return alignment_; }
  uint64_t data_offset() const { return data_offset_; }
  uint64_t file_size() const { return size_; }

  // Metadata, in file order; find() returns nullptr when the key is absent.
  const std::vector<std::pair<std::string, GgufValue>>& metadata() const { return kv_; }
  const GgufValue* find(std::string_view key) const;

  // Typed getters: a missing key or a value of an incompatible type is an error
  // that names the key and both types. Integer getters accept any integer type
  // whose value fits; get_f32 accepts FLOAT32/FLOAT64 and, as ds4 does for its float
  // keys (GGUF.md §4.1), integer values. Array getters: get_i64_array takes arrays of
  // any integer type, get_f32_array arrays of floats or integers.
  Status get_u32(std::string_view key, uint32_t* out) const;
  Status get_u64(std::string_view key, uint64_t* out) const;
  Status get_i64(std::string_view key, int64_t* out) const;
  Status get_f32(std::string_view key, float* out) const;
  Status get_bool(std::string_view key, bool* out) const;
  Status get_string(std::string_view key, std::string* out) const;
  Status get_i64_array(std::string_view key, std::vector<int64_t>* out) const;
  Status get_f32_array(std::string_view key, std::vector<float>* out) const;
  Status get_string_array(std::string_view key, std::vector<std::string>* out) const;

  // Tensors, in file order; tensor() returns nullptr when absent.
  const std::vector<GgufTensor>& tensors() const { return tensors_; }
  const GgufTensor* tensor(std::string_view name) const;
  // Finds `name` and checks its type and shape; the error names the tensor and
  // what was expected versus found.
  Result<const GgufTensor*> expect_tensor(std::string_view name, GgmlType type,
                                          std::vector<int64_t> ne) const;

 private:
  GgufFile() = default;
  Status parse(std::span<const uint8_t> bytes);

  std::string path_;
  void* map_ = nullptr;
  uint64_t size_ = 0;
  uint32_t version_ = 0;
  uint64_t alignment_ = 32;
  uint64_t data_offset_ = 0;
  std::vector<std::pair<std::string, GgufValue>> kv_;
  std::unordered_map<std::string, size_t> kv_index_;
  std::vector<GgufTensor> tensors_;
  std::unordered_map<std::string, size_t> tensor_index_;
};

}  // namespace ds4
