// GGUF v3 reader (spec/GGUF.md §2, §7): mmap, then a bounds-checked parse of the
// header, metadata and tensor table. Every error names the key or tensor at fault.
#include "format/gguf.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <bit>
#include <cerrno>
#include <cinttypes>
#include <cstring>
#include <limits>
#include <type_traits>

namespace ds4 {

static_assert(std::endian::native == std::endian::little,
              "GGUF files are little-endian and are read by plain memory copy");

namespace {

constexpr uint32_t kGgufMagic = 0x46554747;  // "GGUF"
constexpr uint32_t kGgufVersion = 3;
constexpr uint64_t kHeaderBytes = 24;
constexpr uint64_t kDefaultAlignment = 32;
constexpr int kMaxArrayDepth = 8;
constexpr uint32_t kMaxDims = 8;
// The smallest possible metadata record (empty key, type, one-byte value) and tensor
// record (empty name, n_dims, one ne, type, offset): used to bound counts up front.
constexpr uint64_t kMinKvBytes = 8 + 4 + 1;
constexpr uint64_t kMinTensorInfoBytes = 8 + 4 + 8 + 4 + 8;

std::string Str(uint64_t v) { return std::to_string(v); }

// Size in bytes of a fixed-size value type; 0 for STRING and ARRAY.
uint64_t ScalarBytes(GgufValueType t) {
  switch (t) {
    case GgufValueType::UINT8: case GgufValueType::INT8: case GgufValueType::BOOL: return 1;
    case GgufValueType::UINT16: case GgufValueType::INT16: return 2;
    case GgufValueType::UINT32: case GgufValueType::INT32: case GgufValueType::FLOAT32: return 4;
    case GgufValueType::UINT64: case GgufValueType::INT64: case GgufValueType::FLOAT64: return 8;
    default: return 0;
  }
}

bool KnownValueType(uint32_t t) { return t <= static_cast<uint32_t>(GgufValueType::FLOAT64); }

// Least bytes one item of type `t` can take (bounds array counts before allocating).
uint64_t MinItemBytes(GgufValueType t) {
  if (t == GgufValueType::STRING) return 8;
  if (t == GgufValueType::ARRAY) return 4 + 8;
  return ScalarBytes(t);
}

bool IsInteger(GgufValueType t) {
  switch (t) {
    case GgufValueType::UINT8: case GgufValueType::INT8: case GgufValueType::UINT16:
    case GgufValueType::INT16: case GgufValueType::UINT32: case GgufValueType::INT32:
    case GgufValueType::UINT64: case GgufValueType::INT64: return true;
    default: return false;
  }
}
bool IsUnsigned(GgufValueType t) {
  return t == GgufValueType::UINT8 || t == GgufValueType::UINT16 ||
         t == GgufValueType::UINT32 || t == GgufValueType::UINT64;
}
bool IsFloat(GgufValueType t) {
  return t == GgufValueType::FLOAT32 || t == GgufValueType::FLOAT64;
}

std::string TypeName(GgufValueType t) { return std::string(gguf_value_type_name(t)); }

std::string ShapeString(const std::vector<int64_t>& ne) {
  std::string s = "[";
  for (size_t i = 0; i < ne.size(); ++i) s += (i ? ", " : "") + std::to_string(ne[i]);
  return s + "]";
}

// A bounds-checked little-endian cursor over the file bytes.
class Cursor {
 public:
  explicit Cursor(std::span<const uint8_t> bytes) : bytes_(bytes) {}
  uint64_t pos() const { return pos_; }
  uint64_t remaining() const { return bytes_.size() - pos_; }

  template <typename T>
  Status Read(const std::string& what, T* out) {
    if (remaining() < sizeof(T)) return Truncated(what, sizeof(T));
    std::memcpy(out, bytes_.data() + pos_, sizeof(T));
    pos_ += sizeof(T);
    return Status::Ok();
  }

  Status ReadString(const std::string& what, std::string* out) {
    uint64_t len = 0;
    if (remaining() < sizeof(len)) return Truncated(what + " length", sizeof(len));
    std::memcpy(&len, bytes_.data() + pos_, sizeof(len));
    pos_ += sizeof(len);
    if (len > remaining()) {
      return Status::Error(what + ": string length " + Str(len) + " exceeds the " +
                           Str(remaining()) + " bytes left in the file (offset " + Str(pos_) + ")");
    }
    out->assign(reinterpret_cast<const char*>(bytes_.data() + pos_), len);
    pos_ += len;
    return Status::Ok();
  }

 private:
  Status Truncated(const std::string& what, uint64_t need) const {
    return Status::Error("truncated file: " + what + " needs " + Str(need) + " bytes at offset " +
                         Str(pos_) + ", only " + Str(remaining()) + " left");
  }
  std::span<const uint8_t> bytes_;
  uint64_t pos_ = 0;
};

template <typename T>
Status ReadInteger(Cursor& c, const std::string& what, GgufValue* v) {
  T x{};
  DS4_RETURN_IF_ERROR(c.Read(what, &x));
  if constexpr (std::is_signed_v<T>) {
    v->i = x;
    v->u = static_cast<uint64_t>(v->i);
  } else {
    v->u = x;
    v->i = static_cast<int64_t>(v->u);
  }
  return Status::Ok();
}

template <typename T>
Status ReadFloat(Cursor& c, const std::string& what, GgufValue* v) {
  T x{};
  DS4_RETURN_IF_ERROR(c.Read(what, &x));
  v->f = x;
  return Status::Ok();
}

Status ReadScalar(Cursor& c, GgufValueType type, const std::string& what, GgufValue* v) {
  switch (type) {
    case GgufValueType::UINT8: return ReadInteger<uint8_t>(c, what, v);
    case GgufValueType::INT8: return ReadInteger<int8_t>(c, what, v);
    case GgufValueType::UINT16: return ReadInteger<uint16_t>(c, what, v);
    case GgufValueType::INT16: return ReadInteger<int16_t>(c, what, v);
    case GgufValueType::UINT32: return ReadInteger<uint32_t>(c, what, v);
    case GgufValueType::INT32: return ReadInteger<int32_t>(c, what, v);
    case GgufValueType::UINT64: return ReadInteger<uint64_t>(c, what, v);
    case GgufValueType::INT64: return ReadInteger<int64_t>(c, what, v);
    case GgufValueType::FLOAT32: return ReadFloat<float>(c, what, v);
    case GgufValueType::FLOAT64: return ReadFloat<double>(c, what, v);
    case GgufValueType::BOOL: {
      DS4_RETURN_IF_ERROR(ReadInteger<uint8_t>(c, what, v));
      v->u = v->i = (v->u != 0);
      return Status::Ok();
    }
    default: return Status::Error(what + ": not a scalar type");
  }
}

Status ReadValue(Cursor& c, GgufValueType type, int depth, const std::string& what, GgufValue* v);

Status ReadArray(Cursor& c, int depth, const std::string& what, GgufValue* v) {
  if (depth > kMaxArrayDepth) {
    return Status::Error(what + ": arrays nested " + std::to_string(depth) +
                         " deep, at most " + std::to_string(kMaxArrayDepth) + " allowed");
  }
  uint32_t item_type = 0;
  uint64_t count = 0;
  DS4_RETURN_IF_ERROR(c.Read(what + " array item type", &item_type));
  if (!KnownValueType(item_type)) {
    return Status::Error(what + ": unknown array item type " + std::to_string(item_type) +
                         " (valid GGUF value types are 0..12)");
  }
  DS4_RETURN_IF_ERROR(c.Read(what + " array count", &count));
  v->array_type = static_cast<GgufValueType>(item_type);
  const uint64_t min_bytes = MinItemBytes(v->array_type);
  if (count > c.remaining() / min_bytes) {
    return Status::Error(what + ": array count " + Str(count) + " of " + TypeName(v->array_type) +
                         " cannot fit in the " + Str(c.remaining()) + " bytes left in the file");
  }
  v->array.resize(count);
  for (uint64_t k = 0; k < count; ++k) {
    Status s = ReadValue(c, v->array_type, depth, what, &v->array[k]);
    if (!s.ok()) return Status::Error(s.message() + " (in array item " + Str(k) + ")");
  }
  return Status::Ok();
}

// `depth` counts the arrays enclosing this value.
Status ReadValue(Cursor& c, GgufValueType type, int depth, const std::string& what, GgufValue* v) {
  v->type = type;
  if (type == GgufValueType::STRING) return c.ReadString(what, &v->str);
  if (type == GgufValueType::ARRAY) return ReadArray(c, depth + 1, what, v);
  return ReadScalar(c, type, what, v);
}

Status ReadHeader(Cursor& c, uint32_t* version, uint64_t* tensor_count, uint64_t* kv_count) {
  if (c.remaining() < kHeaderBytes) {
    return Status::Error("truncated header: file has " + Str(c.remaining()) +
                         " bytes, a GGUF header needs " + Str(kHeaderBytes));
  }
  uint32_t magic = 0;
  DS4_RETURN_IF_ERROR(c.Read("magic", &magic));
  if (magic != kGgufMagic) {
    char found[16];
    std::snprintf(found, sizeof(found), "0x%08" PRIx32, magic);
    return Status::Error("bad magic: expected 0x46554747 ('GGUF'), found " + std::string(found) +
                         " (not a GGUF file)");
  }
  DS4_RETURN_IF_ERROR(c.Read("version", version));
  if (*version != kGgufVersion) {
    return Status::Error("unsupported GGUF version " + std::to_string(*version) +
                         " (expected version 3)");
  }
  DS4_RETURN_IF_ERROR(c.Read("tensor count", tensor_count));
  DS4_RETURN_IF_ERROR(c.Read("metadata count", kv_count));
  return Status::Ok();
}

Status ReadMetadata(Cursor& c, uint64_t count,
                    std::vector<std::pair<std::string, GgufValue>>* kv,
                    std::unordered_map<std::string, size_t>* index) {
  if (count > c.remaining() / kMinKvBytes) {
    return Status::Error("metadata count " + Str(count) + " cannot fit in the " +
                         Str(c.remaining()) + " bytes left in the file (truncated file or "
                         "corrupt count)");
  }
  kv->reserve(count);
  for (uint64_t k = 0; k < count; ++k) {
    std::string key;
    DS4_RETURN_IF_ERROR(c.ReadString("metadata entry " + Str(k) + " key", &key));
    const std::string what = "metadata key '" + key + "'";
    uint32_t type = 0;
    DS4_RETURN_IF_ERROR(c.Read(what + " value type", &type));
    if (!KnownValueType(type)) {
      return Status::Error(what + ": unknown value type " + std::to_string(type) +
                           " (valid GGUF value types are 0..12)");
    }
    GgufValue value;
    DS4_RETURN_IF_ERROR(ReadValue(c, static_cast<GgufValueType>(type), 0, what, &value));
    index->emplace(key, kv->size());  // on a duplicate key the first one wins, as in ds4
    kv->emplace_back(std::move(key), std::move(value));
  }
  return Status::Ok();
}

// general.alignment, when present, must be a non-zero UINT32 (GGUF.md §2.1).
Status ReadAlignment(const GgufValue* value, uint64_t* alignment) {
  *alignment = kDefaultAlignment;
  if (value == nullptr) return Status::Ok();
  if (value->type != GgufValueType::UINT32 || value->u == 0) {
    return Status::Error("metadata key 'general.alignment': expected a non-zero UINT32, found " +
                         TypeName(value->type) +
                         (value->type == GgufValueType::UINT32 ? " 0" : std::string()));
  }
  *alignment = value->u;
  return Status::Ok();
}

// n_dims and ne[]: 1..8 dimensions, each >= 1, element count within int64.
Status ReadShape(Cursor& c, const std::string& what, std::vector<int64_t>* ne, int64_t* elements) {
  uint32_t n_dims = 0;
  DS4_RETURN_IF_ERROR(c.Read(what + " n_dims", &n_dims));
  if (n_dims < 1 || n_dims > kMaxDims) {
    return Status::Error(what + ": n_dims is " + std::to_string(n_dims) + ", expected 1.." +
                         std::to_string(kMaxDims));
  }
  *elements = 1;
  for (uint32_t d = 0; d < n_dims; ++d) {
    uint64_t dim = 0;
    DS4_RETURN_IF_ERROR(c.Read(what + " ne[" + std::to_string(d) + "]", &dim));
    if (dim == 0 || dim > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      return Status::Error(what + ": ne[" + std::to_string(d) + "] = " + Str(dim) +
                           " is not a valid dimension (expected 1..2^63-1)");
    }
    ne->push_back(static_cast<int64_t>(dim));
    if (__builtin_mul_overflow(*elements, static_cast<int64_t>(dim), elements)) {
      return Status::Error(what + ": element count overflows (ne = " + ShapeString(*ne) + "...)");
    }
  }
  return Status::Ok();
}

Status ReadTensorInfo(Cursor& c, uint64_t k, uint64_t alignment, GgufTensor* t) {
  DS4_RETURN_IF_ERROR(c.ReadString("tensor " + Str(k) + " name", &t->name));
  const std::string what = "tensor '" + t->name + "'";
  int64_t elements = 0;
  DS4_RETURN_IF_ERROR(ReadShape(c, what, &t->ne, &elements));
  uint32_t type_id = 0;
  DS4_RETURN_IF_ERROR(c.Read(what + " type", &type_id));
  const GgmlTypeInfo* info = ggml_type_info(type_id);
  if (info == nullptr) {
    return Status::Error(what + ": unknown ggml type id " + std::to_string(type_id));
  }
  t->type = info->type;
  if (t->ne[0] % info->block_elems != 0) {
    return Status::Error(what + ": ne[0] = " + std::to_string(t->ne[0]) +
                         " is not a multiple of the " + std::string(info->name) +
                         " block size " + std::to_string(info->block_elems));
  }
  const uint64_t blocks = static_cast<uint64_t>(elements) / info->block_elems;
  if (__builtin_mul_overflow(blocks, static_cast<uint64_t>(info->block_bytes), &t->nbytes)) {
    return Status::Error(what + ": byte size overflows (ne = " + ShapeString(t->ne) + ")");
  }
  DS4_RETURN_IF_ERROR(c.Read(what + " offset", &t->offset));
  if (t->offset % alignment != 0) {
    return Status::Error(what + ": data offset " + Str(t->offset) +
                         " is misaligned (not a multiple of the alignment " + Str(alignment) + ")");
  }
  return Status::Ok();
}

Status ReadTensorInfos(Cursor& c, uint64_t count, uint64_t alignment,
                       std::vector<GgufTensor>* tensors) {
  if (count > c.remaining() / kMinTensorInfoBytes) {
    return Status::Error("tensor count " + Str(count) + " cannot fit in the " +
                         Str(c.remaining()) + " bytes left after the metadata (truncated file "
                         "or corrupt count)");
  }
  tensors->reserve(count);
  for (uint64_t k = 0; k < count; ++k) {
    GgufTensor t;
    DS4_RETURN_IF_ERROR(ReadTensorInfo(c, k, alignment, &t));
    tensors->push_back(std::move(t));
  }
  return Status::Ok();
}

// Checks every tensor's bytes lie inside the file and names are unique; sets `data`.
Status PlaceTensors(std::span<const uint8_t> bytes, uint64_t data_offset,
                    std::vector<GgufTensor>* tensors,
                    std::unordered_map<std::string, size_t>* index) {
  const uint64_t size = bytes.size();
  if (!tensors->empty() && data_offset > size) {
    return Status::Error("truncated file: the data section would start at offset " +
                         Str(data_offset) + ", past the end of the file (" + Str(size) +
                         " bytes)");
  }
  const uint64_t data_bytes = data_offset <= size ? size - data_offset : 0;
  index->reserve(tensors->size());
  for (size_t k = 0; k < tensors->size(); ++k) {
    GgufTensor& t = (*tensors)[k];
    if (t.offset > data_bytes || t.nbytes > data_bytes - t.offset) {
      return Status::Error("tensor '" + t.name + "': data [" + Str(t.offset) + ", +" +
                           Str(t.nbytes) + ") of the data section lies beyond the end of the "
                           "file (the data section holds " + Str(data_bytes) + " bytes)");
    }
    auto [it, inserted] = index->emplace(t.name, k);
    if (!inserted) {
      return Status::Error("duplicate tensor name '" + t.name + "' (tensors " +
                           Str(it->second) + " and " + Str(k) + ")");
    }
    t.data = bytes.data() + data_offset + t.offset;
  }
  return Status::Ok();
}


}  // namespace

std::string_view gguf_value_type_name(GgufValueType t) {
  switch (t) {
    case GgufValueType::UINT8: return "UINT8";
    case GgufValueType::INT8: return "INT8";
    case GgufValueType::UINT16: return "UINT16";
    case GgufValueType::INT16: return "INT16";
    case GgufValueType::UINT32: return "UINT32";
    case GgufValueType::INT32: return "INT32";
    case GgufValueType::FLOAT32: return "FLOAT32";
    case GgufValueType::BOOL: return "BOOL";
    case GgufValueType::STRING: return "STRING";
    case GgufValueType::ARRAY: return "ARRAY";
    case GgufValueType::UINT64: return "UINT64";
    case GgufValueType::INT64: return "INT64";
    case GgufValueType::FLOAT64: return "FLOAT64";
  }
  return "unknown";
}

int64_t GgufTensor::n_elements() const {
  int64_t n = 1;
  for (int64_t d : ne) n *= d;  // the reader rejected overflow
  return n;
}

size_t GgufTensor::row_bytes() const { return ne.empty() ? 0 : ggml_row_bytes(type, ne[0]); }

GgufFile::~GgufFile() {
  if (map_ != nullptr) munmap(map_, size_);
}

Result<std::unique_ptr<GgufFile>> GgufFile::Open(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return Status::Error(path + ": cannot open: " + std::strerror(errno));
  struct stat st {};
  if (fstat(fd, &st) != 0) {
    Status s = Status::Error(path + ": cannot stat: " + std::strerror(errno));
    ::close(fd);
    return s;
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return Status::Error(path + ": not a regular file");
  }
  const uint64_t size = static_cast<uint64_t>(st.st_size);
  if (size < kHeaderBytes) {
    ::close(fd);
    return Status::Error(path + ": truncated header: file has " + Str(size) +
                         " bytes, a GGUF header needs " + Str(kHeaderBytes));
  }
  void* map = mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  int map_errno = errno;
  ::close(fd);
  if (map == MAP_FAILED) return Status::Error(path + ": mmap failed: " + std::strerror(map_errno));

  std::unique_ptr<GgufFile> file(new GgufFile());
  file->path_ = path;
  file->map_ = map;
  file->size_ = size;
  Status s = file->parse({static_cast<const uint8_t*>(map), size});
  if (!s.ok()) return s.wrap(path);
  return file;
}

Result<std::unique_ptr<GgufFile>> GgufFile::FromMemory(std::span<const uint8_t> bytes,
                                                       std::string label) {
  std::unique_ptr<GgufFile> file(new GgufFile());
  file->path_ = std::move(label);
  file->size_ = bytes.size();
  Status s = file->parse(bytes);
  if (!s.ok()) return s.wrap(file->path_);
  return file;
}

Status GgufFile::parse(std::span<const uint8_t> bytes) {
  Cursor c(bytes);
  uint64_t tensor_count = 0, kv_count = 0;
  DS4_RETURN_IF_ERROR(ReadHeader(c, &version_, &tensor_count, &kv_count));
  DS4_RETURN_IF_ERROR(ReadMetadata(c, kv_count, &kv_, &kv_index_));
  DS4_RETURN_IF_ERROR(ReadAlignment(find("general.alignment"), &alignment_));
  DS4_RETURN_IF_ERROR(ReadTensorInfos(c, tensor_count, alignment_, &tensors_));
  // The data section starts at the next multiple of the alignment.
  data_offset_ = c.pos() + (alignment_ - c.pos() % alignment_) % alignment_;
  return PlaceTensors(bytes, data_offset_, &tensors_, &tensor_index_);
}

const GgufValue* GgufFile::find(std::string_view key) const {
  auto it = kv_index_.find(std::string(key));
  return it == kv_index_.end() ? nullptr : &kv_[it->second].second;
}

namespace {

Status Missing(const std::string& path, std::string_view key) {
  return Status::Error(path + ": metadata key '" + std::string(key) + "' is missing");
}

Status WrongType(const std::string& path, std::string_view key, const std::string& expected,
                 const GgufValue& v) {
  std::string found = TypeName(v.type);
  if (v.type == GgufValueType::ARRAY) found += " of " + TypeName(v.array_type);
  return Status::Error(path + ": metadata key '" + std::string(key) + "': expected " + expected +
                       ", found " + found);
}

// Converts an integer value to int64 range check helpers.
bool FitsRange(const GgufValue& v, int64_t lo, uint64_t hi) {
  if (!IsInteger(v.type)) return false;
  if (IsUnsigned(v.type)) return v.u <= hi;
  if (v.i < lo) return false;
  return v.i < 0 || static_cast<uint64_t>(v.i) <= hi;
}

std::string ValueString(const GgufValue& v) {
  return IsUnsigned(v.type) ? Str(v.u) : std::to_string(v.i);
}

bool NumberAsFloat(const GgufValue& v, double* out) {
  if (IsFloat(v.type)) { *out = v.f; return true; }
  if (IsInteger(v.type)) {
    *out = IsUnsigned(v.type) ? static_cast<double>(v.u) : static_cast<double>(v.i);
    return true;
  }
  return false;
}

}  // namespace

Status GgufFile::get_u32(std::string_view key, uint32_t* out) const {
  const GgufValue* v = find(key);
  if (v == nullptr) return Missing(path_, key);
  if (!IsInteger(v->type)) return WrongType(path_, key, "an integer (UINT32)", *v);
  if (!FitsRange(*v, 0, std::numeric_limits<uint32_t>::max())) {
    return Status::Error(path_ + ": metadata key '" + std::string(key) + "': value " +
                         ValueString(*v) + " does not fit UINT32");
  }
  *out = static_cast<uint32_t>(v->u);
  return Status::Ok();
}

Status GgufFile::get_u64(std::string_view key, uint64_t* out) const {
  const GgufValue* v = find(key);
  if (v == nullptr) return Missing(path_, key);
  if (!IsInteger(v->type)) return WrongType(path_, key, "an integer (UINT64)", *v);
  if (!FitsRange(*v, 0, std::numeric_limits<uint64_t>::max())) {
    return Status::Error(path_ + ": metadata key '" + std::string(key) + "': value " +
                         ValueString(*v) + " does not fit UINT64");
  }
  *out = v->u;
  return Status::Ok();
}

Status GgufFile::get_i64(std::string_view key, int64_t* out) const {
  const GgufValue* v = find(key);
  if (v == nullptr) return Missing(path_, key);
  if (!IsInteger(v->type)) return WrongType(path_, key, "an integer (INT64)", *v);
  if (!FitsRange(*v, std::numeric_limits<int64_t>::min(), std::numeric_limits<int64_t>::max())) {
    return Status::Error(path_ + ": metadata key '" + std::string(key) + "': value " +
                         ValueString(*v) + " does not fit INT64");
  }
  *out = v->i;
  return Status::Ok();
}

Status GgufFile::get_f32(std::string_view key, float* out) const {
  const GgufValue* v = find(key);
  if (v == nullptr) return Missing(path_, key);
  double d = 0;
  if (!NumberAsFloat(*v, &d)) return WrongType(path_, key, "a number (FLOAT32)", *v);
  *out = static_cast<float>(d);
  return Status::Ok();
}

Status GgufFile::get_bool(std::string_view key, bool* out) const {
  const GgufValue* v = find(key);
  if (v == nullptr) return Missing(path_, key);
  if (v->type != GgufValueType::BOOL) return WrongType(path_, key, "BOOL", *v);
  *out = v->u != 0;
  return Status::Ok();
}

Status GgufFile::get_string(std::string_view key, std::string* out) const {
  const GgufValue* v = find(key);
  if (v == nullptr) return Missing(path_, key);
  if (v->type != GgufValueType::STRING) return WrongType(path_, key, "STRING", *v);
  *out = v->str;
  return Status::Ok();
}

Status GgufFile::get_i64_array(std::string_view key, std::vector<int64_t>* out) const {
  const GgufValue* v = find(key);
  if (v == nullptr) return Missing(path_, key);
  if (v->type != GgufValueType::ARRAY || !IsInteger(v->array_type)) {
    return WrongType(path_, key, "an ARRAY of integers", *v);
  }
  out->clear();
  out->reserve(v->array.size());
  for (size_t k = 0; k < v->array.size(); ++k) {
    const GgufValue& item = v->array[k];
    if (IsUnsigned(item.type) && item.u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      return Status::Error(path_ + ": metadata key '" + std::string(key) + "'[" + Str(k) +
                           "]: value " + Str(item.u) + " does not fit INT64");
    }
    out->push_back(item.i);
  }
  return Status::Ok();
}

Status GgufFile::get_f32_array(std::string_view key, std::vector<float>* out) const {
  const GgufValue* v = find(key);
  if (v == nullptr) return Missing(path_, key);
  if (v->type != GgufValueType::ARRAY ||
      !(IsFloat(v->array_type) || IsInteger(v->array_type))) {
    return WrongType(path_, key, "an ARRAY of numbers (FLOAT32)", *v);
  }
  out->clear();
  out->reserve(v->array.size());
  for (const GgufValue& item : v->array) {
    double d = 0;
    NumberAsFloat(item, &d);
    out->push_back(static_cast<float>(d));
  }
  return Status::Ok();
}

Status GgufFile::get_string_array(std::string_view key, std::vector<std::string>* out) const {
  const GgufValue* v = find(key);
  if (v == nullptr) return Missing(path_, key);
  if (v->type != GgufValueType::ARRAY || v->array_type != GgufValueType::STRING) {
    return WrongType(path_, key, "an ARRAY of STRING", *v);
  }
  out->clear();
  out->reserve(v->array.size());
  for (const GgufValue& item : v->array) out->push_back(item.str);
  return Status::Ok();
}

const GgufTensor* GgufFile::tensor(std::string_view name) const {
  auto it = tensor_index_.find(std::string(name));
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

Result<const GgufTensor*> GgufFile::expect_tensor(std::string_view name, GgmlType type,
                                                  std::vector<int64_t> ne) const {
  const GgufTensor* t = tensor(name);
  if (t == nullptr) {
    return Status::Error(path_ + ": tensor '" + std::string(name) + "' is missing");
  }
  if (t->type != type || t->ne != ne) {
    return Status::Error(path_ + ": tensor '" + std::string(name) + "': expected " +
                         std::string(ggml_type_name(type)) + " " + ShapeString(ne) + ", found " +
                         std::string(ggml_type_name(t->type)) + " " + ShapeString(t->ne));
  }
  return t;
}

}  // namespace ds4
