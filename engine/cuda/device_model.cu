#include "cuda/device_model.h"

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <mutex>
#include <thread>
#include <utility>

#include "common/page_cache.h"
#include "cpu/rope.h"
#include "cuda/cuda_check.h"
#include "cuda/repack.h"
#include "format/quant.h"
#include "format/quant_blocks.h"
#include "model/model.h"

namespace ds4 {

namespace {

enum class SlotKind { kMatrix, kF32, kI32 };
enum class Fill { kRandom, kOnes, kZeros, kSmall, kExpertIds };

// One tensor to place in the arena: its shape, where its device pointers go, and
// where its bytes come from (host file bytes, or a synthetic fill rule).
struct Slot {
  std::string name;
  SlotKind kind = SlotKind::kMatrix;
  GgmlType type = GgmlType::F32;    // source type (vectors: F32 or F16; I32)
  int64_t cols = 0, rows = 1, count = 1;
  const uint8_t* host = nullptr;
  DeviceMatrix* matrix = nullptr;
  float** f32 = nullptr;
  int32_t** i32 = nullptr;
  Fill fill = Fill::kRandom;
  int32_t fill_limit = 0;           // kExpertIds: ids in [0, fill_limit)
  size_t data_off = 0, scale_off = 0;
  int64_t file_offset = -1;         // file offset of host[0]; -1: not a file mapping

  int64_t total_rows() const { return rows * count; }
  int64_t elements() const { return cols * rows * count; }
  size_t source_row_bytes() const { return ggml_row_bytes(type, cols); }
};

constexpr size_t kAlign = 256;
size_t align_up(size_t v) { return (v + kAlign - 1) / kAlign * kAlign; }

}  // namespace

class DeviceModelBuilder {
 public:
  explicit DeviceModelBuilder(const ModelConfig& config) : model_(new DeviceModel()) {
    model_->config_ = config;
    model_->layers_.resize(config.n_layers);
  }

  DeviceModel& model() { return *model_; }
  DeviceMatrix* token_embd() { return &model_->token_embd_; }
  DeviceMatrix* output() { return &model_->output_; }
  DeviceMatrix* output_hc_fn() { return &model_->output_hc_fn_; }
  float** output_norm() { return &model_->output_norm_; }
  float** output_hc_scale() { return &model_->output_hc_scale_; }
  float** output_hc_base() { return &model_->output_hc_base_; }
  DeviceLayer* layer(int l) { return &model_->layers_[l]; }
  // Adds the MTP block as layer n_layers (its tensors are planned by the caller).
  void enable_mtp() {
    model_->has_mtp_ = true;
    model_->layers_.resize(model_->config_.n_layers + 1);
  }
  DeviceMtp* mtp() { return &model_->mtp_; }
  std::unique_ptr<DeviceModel> release() { return std::move(model_); }

  void add_matrix(const std::string& name, GgmlType type, int64_t cols, int64_t rows,
                  int64_t count, const uint8_t* host, DeviceMatrix* out) {
    Slot s;
    s.name = name;
    s.kind = SlotKind::kMatrix;
    s.type = type;
    s.cols = cols;
    s.rows = rows;
    s.count = count;
    s.host = host;
    s.matrix = out;
    out->type = type;
    out->cols = cols;
    out->rows = rows;
    out->count = count;
    slots_.push_back(s);
  }
  void add_f32(const std::string& name, GgmlType type, int64_t n, const uint8_t* host, Fill fill,
               float** out) {
    Slot s;
    s.name = name;
    s.kind = SlotKind::kF32;
    s.type = type;
    s.cols = n;
    s.host = host;
    s.f32 = out;
    s.fill = fill;
    slots_.push_back(s);
  }
  void add_i32(const std::string& name, int64_t n, const uint8_t* host, int32_t limit,
               int32_t** out) {
    Slot s;
    s.name = name;
    s.kind = SlotKind::kI32;
    s.type = GgmlType::I32;
    s.cols = n;
    s.host = host;
    s.i32 = out;
    s.fill = Fill::kExpertIds;
    s.fill_limit = limit;
    slots_.push_back(s);
  }

  Status check_types() const {
    for (const Slot& s : slots_) {
      if (s.kind == SlotKind::kMatrix && !device_matrix_supported(s.type, s.cols)) {
        return Status::Error("CUDA backend: tensor " + s.name + " has type " +
                             std::string(ggml_type_name(s.type)) + " with " +
                             std::to_string(s.cols) + " columns, which the GPU kernels do not read");
      }
      if (s.kind == SlotKind::kF32 && s.type != GgmlType::F32 && s.type != GgmlType::F16) {
        return Status::Error("CUDA backend: tensor " + s.name + " must be F32 or F16");
      }
    }
    return Status::Ok();
  }

  Status allocate() {
    DS4_RETURN_IF_ERROR(check_types());
    // Alignment padding (and the RoPE tables, written below) are zeroed, so the
    // arena's bytes are a function of the weights alone.
    std::vector<std::pair<size_t, size_t>> zero;  // [begin, end)
    size_t off = 0;
    auto place = [&](size_t bytes) {
      const size_t at = off;
      off = align_up(off + bytes);
      if (off > at + bytes) {
        if (!zero.empty() && zero.back().second == at + bytes) {
          zero.back().second = off;
        } else {
          zero.push_back({at + bytes, off});
        }
      }
      return at;
    };
    for (Slot& s : slots_) {
      if (s.kind == SlotKind::kMatrix) {
        s.data_off = place(s.matrix->data_bytes());
        s.scale_off = place(s.matrix->scale_bytes());
      } else {
        s.data_off = place(4 * static_cast<size_t>(s.cols));
      }
    }
    const int rope_pairs = std::max(1, model_->config_.rope_dim / 2);
    const size_t rope_off = off;
    off = align_up(off + 2 * sizeof(float) * rope_pairs);
    zero.push_back({rope_off, off});
    void* base = nullptr;
    DS4_RETURN_IF_ERROR(cuda_status(cudaMalloc(&base, off),
                                    ("allocating " + std::to_string(off >> 20) + " MiB of weights").c_str()));
    model_->arena_ = base;
    model_->arena_bytes_ = off;
    uint8_t* b = static_cast<uint8_t*>(base);
    for (Slot& s : slots_) {
      if (s.kind == SlotKind::kMatrix) {
        s.matrix->data = b + s.data_off;
        s.matrix->scales = s.matrix->scale_bytes() ? reinterpret_cast<uint16_t*>(b + s.scale_off) : nullptr;
      } else if (s.kind == SlotKind::kF32) {
        *s.f32 = reinterpret_cast<float*>(b + s.data_off);
      } else {
        *s.i32 = reinterpret_cast<int32_t*>(b + s.data_off);
      }
    }
    for (const auto& [begin, end] : zero) {
      DS4_CUDA_TRY(cudaMemset(b + begin, 0, end - begin));
    }
    DS4_CUDA_TRY(cudaDeviceSynchronize());
    model_->rope_plain_ = reinterpret_cast<float*>(b + rope_off);
    model_->rope_yarn_ = model_->rope_plain_ + rope_pairs;
    const ModelConfig& c = model_->config_;
    if (c.rope_dim > 0) {
      const cpu::Rope plain(c, false), yarn(c, true);
      DS4_CUDA_TRY(cudaMemcpy(model_->rope_plain_, plain.freqs().data(),
                              sizeof(float) * plain.freqs().size(), cudaMemcpyHostToDevice));
      DS4_CUDA_TRY(cudaMemcpy(model_->rope_yarn_, yarn.freqs().data(),
                              sizeof(float) * yarn.freqs().size(), cudaMemcpyHostToDevice));
    }
    return Status::Ok();
  }

  // `file_path`: the file that the slots' file offsets refer to (empty: none).
  Status upload(const UploadOptions& options, const std::string& file_path, UploadStats* stats);
  void set_file_offset_of_last(int64_t offset) { slots_.back().file_offset = offset; }
  Status fill_synthetic(uint64_t seed);

 private:
  std::unique_ptr<DeviceModel> model_;
  std::vector<Slot> slots_;
};

DeviceModel::~DeviceModel() {
  if (arena_) cudaFree(arena_);
}

// ---------------------------------------------------------------------------
// Upload: each tensor is cut into pieces of at most `chunk` source bytes. A worker
// thread (one CUDA stream, two pinned staging buffers, two device scratch buffers)
// copies a piece's file bytes unchanged into staging and sends them on: plain types
// straight to their place, Q8_0 / IQ2_XXS into its scratch buffer and from there
// through the split repack kernel into their place. Device memory beyond the arena is
// bounded by threads x 2 x chunk, whatever the model's size.

namespace {

constexpr size_t kDefaultChunkBytes = 32u << 20;
constexpr int kDefaultThreads = 8;

// A piece of one tensor: source bytes [src0, src1) of the slot.
struct Unit {
  const Slot* slot;
  size_t src0, src1;
};

size_t source_bytes(const Slot& s) {
  if (s.kind == SlotKind::kMatrix) return s.source_row_bytes() * static_cast<size_t>(s.total_rows());
  return (s.type == GgmlType::F16 ? 2 : 4) * static_cast<size_t>(s.cols);
}

// Piece boundaries fall on whole blocks (split types) or whole elements (vectors),
// and a piece's staged form fits in `chunk` bytes (F16 vectors grow to f32).
size_t piece_bytes(const Slot& s, size_t chunk) {
  size_t quantum = 256, limit = chunk;
  if (s.kind == SlotKind::kMatrix && has_split_layout(s.type)) {
    quantum = split_block_bytes(s.type);
  } else if (s.kind != SlotKind::kMatrix) {
    quantum = s.type == GgmlType::F16 ? 2 : 4;
    if (s.type == GgmlType::F16) limit = chunk / 2;
  }
  return std::max(quantum, limit / quantum * quantum);
}

// Best effort: starts reading the source range from the file (if it is a file
// mapping) and maps it in one call instead of one page fault per few pages. Errors
// (an old kernel without MADV_POPULATE_READ, anonymous memory) are harmless: the
// memcpy that follows faults the pages in anyway. With page-cache dropping on, the
// first page may be one an earlier piece shared and dropped (read again: one page),
// and the fault read-around may bring back a few dropped pages nearby; the dropper
// drops those again as this piece is released and once more at the end.
void prefetch_source(const uint8_t* p, size_t n) {
  const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  const uintptr_t a0 = reinterpret_cast<uintptr_t>(p) / page * page;
  const uintptr_t a1 = reinterpret_cast<uintptr_t>(p) + n;
  void* addr = reinterpret_cast<void*>(a0);
  madvise(addr, a1 - a0, MADV_WILLNEED);
#ifdef MADV_POPULATE_READ
  madvise(addr, a1 - a0, MADV_POPULATE_READ);
#endif
}

// The dropper for the upload's file (common/page_cache.h says what it does and does
// not guarantee). The slots' mapping (host - file offset: where offset 0 of the file
// lies) has its page-table entries removed as pieces are staged, when every file
// slot shares one page-aligned mapping (as the Model's mmap of its file); otherwise
// only pages that nobody maps can go. Null when the file cannot be opened (nothing
// is dropped then; the upload itself does not need the descriptor).
std::unique_ptr<PageCacheDropper> open_dropper(const std::string& path, const std::vector<Slot>& slots) {
  uintptr_t mapping = 0;
  bool shared = true;
  for (const Slot& s : slots) {
    if (s.file_offset < 0 || !s.host) continue;
    const uintptr_t base = reinterpret_cast<uintptr_t>(s.host) - static_cast<uintptr_t>(s.file_offset);
    if (!mapping) mapping = base;
    shared = shared && base == mapping;
  }
  const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  if (!shared || mapping % page != 0) mapping = 0;
  Result<std::unique_ptr<PageCacheDropper>> dropper =
      PageCacheDropper::Open(path, reinterpret_cast<const uint8_t*>(mapping));
  if (!dropper.ok()) return nullptr;
  return std::move(*dropper);
}

// True when the GPU shares its memory with the CPU.
bool device_shares_host_memory(int device) {
  int integrated = 0;
  if (cudaDeviceGetAttribute(&integrated, cudaDevAttrIntegrated, device) != cudaSuccess) return false;
  return integrated != 0;
}

// Everything one worker thread owns; freed by its destructor (after its stream drains).
struct WorkerBuffers {
  cudaStream_t stream = nullptr;
  uint8_t* staging[2] = {nullptr, nullptr};
  uint8_t* scratch[2] = {nullptr, nullptr};  // device; null when nothing is repacked
  cudaEvent_t done[2] = {nullptr, nullptr};

  Status create(size_t chunk, uint8_t* scratch_base) {
    DS4_CUDA_TRY(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    for (int i = 0; i < 2; ++i) {
      DS4_RETURN_IF_ERROR(cuda_status(cudaMallocHost(&staging[i], chunk),
                                      ("allocating " + std::to_string(chunk >> 20) +
                                       " MiB of pinned staging memory").c_str()));
      DS4_CUDA_TRY(cudaEventCreateWithFlags(&done[i], cudaEventDisableTiming));
      DS4_CUDA_TRY(cudaEventRecord(done[i], stream));
      if (scratch_base) scratch[i] = scratch_base + i * chunk;
    }
    return Status::Ok();
  }
  ~WorkerBuffers() {
    if (stream) cudaStreamSynchronize(stream);
    for (int i = 0; i < 2; ++i) {
      if (staging[i]) cudaFreeHost(staging[i]);
      if (done[i]) cudaEventDestroy(done[i]);
    }
    if (stream) cudaStreamDestroy(stream);
  }
};

// Where the piece's bytes go, and how; returns the bytes written to the device.
Result<uint64_t> send_unit(const Unit& u, const UploadOptions& options, WorkerBuffers& w, int which) {
  const Slot& s = *u.slot;
  const size_t n = u.src1 - u.src0;
  const uint8_t* src = s.host + u.src0;
  uint8_t* staging = w.staging[which];
  cudaStream_t stream = w.stream;
  const std::string what = "upload of tensor " + s.name;
  prefetch_source(src, n);
  if (s.kind != SlotKind::kMatrix) {
    void* base = s.kind == SlotKind::kF32 ? static_cast<void*>(*s.f32) : static_cast<void*>(*s.i32);
    size_t dst_off = u.src0, bytes = n;
    if (s.kind == SlotKind::kF32 && s.type == GgmlType::F16) {
      const uint16_t* h = reinterpret_cast<const uint16_t*>(src);
      float* f = reinterpret_cast<float*>(staging);
      for (size_t i = 0; i < n / 2; ++i) f[i] = fp16_to_f32(h[i]);
      dst_off = 2 * u.src0;
      bytes = 2 * n;
    } else {
      std::memcpy(staging, src, n);
    }
    DS4_RETURN_IF_ERROR(cuda_status(cudaMemcpyAsync(static_cast<uint8_t*>(base) + dst_off, staging, bytes,
                                                    cudaMemcpyHostToDevice, stream),
                                    what.c_str()));
    return static_cast<uint64_t>(bytes);
  }
  const DeviceMatrix& m = *s.matrix;
  if (!has_split_layout(s.type)) {  // the device layout is the file layout
    std::memcpy(staging, src, n);
    DS4_RETURN_IF_ERROR(cuda_status(
        cudaMemcpyAsync(m.data + u.src0, staging, n, cudaMemcpyHostToDevice, stream), what.c_str()));
    return static_cast<uint64_t>(n);
  }
  const size_t block = split_block_bytes(s.type), payload = split_payload_bytes(s.type);
  const int64_t g0 = static_cast<int64_t>(u.src0 / block), blocks = static_cast<int64_t>(n / block);
  uint8_t* data = m.data + g0 * payload;
  uint16_t* scales = m.scales + g0;
  if (options.host_repack) {
    split_repack_host(s.type, src, blocks, staging, reinterpret_cast<uint16_t*>(staging + blocks * payload));
    DS4_RETURN_IF_ERROR(cuda_status(cudaMemcpyAsync(data, staging, blocks * payload,
                                                    cudaMemcpyHostToDevice, stream), what.c_str()));
    DS4_RETURN_IF_ERROR(cuda_status(cudaMemcpyAsync(scales, staging + blocks * payload, blocks * 2,
                                                    cudaMemcpyHostToDevice, stream), what.c_str()));
    return static_cast<uint64_t>(n);
  }
  std::memcpy(staging, src, n);
  DS4_RETURN_IF_ERROR(cuda_status(
      cudaMemcpyAsync(w.scratch[which], staging, n, cudaMemcpyHostToDevice, stream), what.c_str()));
  Status st = launch_split_repack(s.type, w.scratch[which], blocks, data, scales, stream);
  if (!st.ok()) return Status::Error(what + ": " + st.message());
  return static_cast<uint64_t>(n);
}

}  // namespace

Status DeviceModelBuilder::upload(const UploadOptions& options, const std::string& file_path,
                                  UploadStats* stats) {
  // Whole multiples of 256 bytes keep every scratch buffer aligned for the repack.
  const size_t chunk = options.chunk_bytes ? std::max<size_t>((options.chunk_bytes + 255) / 256 * 256, 4096)
                                           : kDefaultChunkBytes;
  const int threads = options.threads > 0 ? options.threads : kDefaultThreads;
  std::vector<Unit> units;
  bool any_split = false;
  for (const Slot& s : slots_) {
    const size_t total = source_bytes(s), step = piece_bytes(s, chunk);
    if (s.kind == SlotKind::kMatrix && has_split_layout(s.type)) any_split = true;
    for (size_t off = 0; off < total; off += step) units.push_back({&s, off, std::min(total, off + step)});
  }
  // Biggest first, so threads finish together.
  std::stable_sort(units.begin(), units.end(),
                   [](const Unit& a, const Unit& b) { return a.src1 - a.src0 > b.src1 - b.src0; });
  int device = 0;
  DS4_CUDA_TRY(cudaGetDevice(&device));

  // Page-cache dropping needs the file itself (posix_fadvise works on a descriptor).
  const bool want_drop = options.drop_page_cache == PageCacheDrop::kAlways ||
                         (options.drop_page_cache == PageCacheDrop::kAuto && device_shares_host_memory(device));
  std::unique_ptr<PageCacheDropper> dropper;
  if (want_drop && !file_path.empty()) dropper = open_dropper(file_path, slots_);

  const auto t0 = std::chrono::steady_clock::now();
  uint8_t* scratch = nullptr;
  const size_t scratch_bytes = any_split && !options.host_repack ? 2 * chunk * threads : 0;
  if (scratch_bytes) {
    Status st = cuda_status(cudaMalloc(&scratch, scratch_bytes),
                            ("allocating " + std::to_string(scratch_bytes >> 20) +
                             " MiB of device scratch for repacking").c_str());
    if (!st.ok()) return st;
  }
  std::atomic<size_t> next{0};
  std::atomic<uint64_t> bytes{0};
  std::mutex error_mutex;
  Status first_error;
  std::atomic<bool> failed{false};
  auto fail = [&](Status s) {
    std::lock_guard<std::mutex> lock(error_mutex);
    if (first_error.ok()) first_error = s;
    failed = true;
  };
  auto worker = [&](int index) {
    Status st = cuda_status(cudaSetDevice(device), "cudaSetDevice in an upload thread");
    if (!st.ok()) return fail(st);
    WorkerBuffers w;
    st = w.create(chunk, scratch ? scratch + 2 * chunk * index : nullptr);
    if (!st.ok()) return fail(st);
    int which = 0;
    while (!failed) {
      const size_t i = next.fetch_add(1);
      if (i >= units.size()) break;
      const Unit& u = units[i];
      st = cuda_status(cudaEventSynchronize(w.done[which]), ("upload of tensor " + u.slot->name).c_str());
      if (!st.ok()) return fail(st);
      Result<uint64_t> sent = send_unit(u, options, w, which);
      if (!sent.ok()) return fail(sent.status());
      bytes += *sent;
      if (dropper && u.slot->file_offset >= 0) {  // the piece's bytes are in staging now
        dropper->release(static_cast<uint64_t>(u.slot->file_offset) + u.src0, u.src1 - u.src0);
      }
      st = cuda_status(cudaEventRecord(w.done[which], w.stream), "recording an upload event");
      if (!st.ok()) return fail(st);
      which ^= 1;
    }
    st = cuda_status(cudaStreamSynchronize(w.stream), "finishing the upload stream");
    if (!st.ok()) fail(st);
  };
  std::vector<std::thread> pool;
  for (int i = 0; i < threads; ++i) pool.emplace_back(worker, i);
  for (auto& t : pool) t.join();
  if (scratch) cudaFree(scratch);
  // Faults and read-around in later pieces may have brought back pages of earlier
  // ones: every released run is dropped once more.
  if (dropper) dropper->finish();
  DS4_RETURN_IF_ERROR(first_error);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (stats) {
    stats->bytes = bytes.load();
    stats->seconds = secs;
    stats->scratch_bytes = scratch_bytes;
    stats->page_cache_dropped = dropper != nullptr;
  }
  return Status::Ok();
}

// ---------------------------------------------------------------------------
// Synthetic fill: random bytes, then every scale field set to a finite value sized
// so activations keep an RMS near 1 through the layers.

namespace {

__device__ __forceinline__ uint32_t mix32(uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdull;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ull;
  x ^= x >> 33;
  return static_cast<uint32_t>(x);
}

__global__ void fill_bytes_kernel(uint32_t* out, int64_t words, uint64_t seed) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < words;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    out[i] = mix32(seed * 0x9e3779b97f4a7c15ull + i);
  }
}

__device__ __forceinline__ float unit_random(uint64_t seed, int64_t i) {
  return (mix32(seed * 0x9e3779b97f4a7c15ull + i) >> 8) * (1.0f / 16777216.0f);  // [0, 1)
}

__global__ void fill_f16_kernel(__half* out, int64_t n, uint64_t seed, float lo, float hi,
                                int signed_values) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float u = unit_random(seed, i);
    float v = lo + (hi - lo) * u;
    if (signed_values && (mix32(seed + 7 * i + 1) & 1)) v = -v;
    out[i] = __float2half(v);
  }
}

__global__ void fill_f32_kernel(float* out, int64_t n, uint64_t seed, float lo, float hi) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    out[i] = lo + (hi - lo) * unit_random(seed, i);
  }
}

__global__ void fill_ids_kernel(int32_t* out, int64_t n, uint64_t seed, int32_t limit, int used) {
  // Rows of `used` distinct ids in [0, limit).
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t row = i / used;
    const int k = static_cast<int>(i % used);
    const int32_t start = static_cast<int32_t>(mix32(seed + row) % limit);
    out[i] = (start + k * (limit / used)) % limit;
  }
}

// Sets d / dmin of every K-quant block (f16 at byte offsets 80/82 for Q2_K, 0/2 for Q4_K).
__global__ void fix_kquant_kernel(uint8_t* data, int64_t blocks, int block_bytes, int d_off,
                                  float d, float dmin, uint64_t seed) {
  for (int64_t b = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; b < blocks;
       b += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float j = 0.75f + 0.5f * unit_random(seed, b);
    __half* h = reinterpret_cast<__half*>(data + b * block_bytes + d_off);
    h[0] = __float2half(d * j);
    h[1] = __float2half(dmin * j);
  }
}

unsigned grid_for(int64_t n) { return static_cast<unsigned>(std::clamp<int64_t>((n + 255) / 256, 1, 4096)); }

}  // namespace

Status DeviceModelBuilder::fill_synthetic(uint64_t seed) {
  uint64_t k = seed;
  for (const Slot& s : slots_) {
    ++k;
    if (s.kind == SlotKind::kF32) {
      float lo = 0, hi = 0;
      switch (s.fill) {
        case Fill::kOnes: lo = hi = 1.0f; break;
        case Fill::kZeros: lo = hi = 0.0f; break;
        case Fill::kSmall: lo = -0.1f; hi = 0.1f; break;
        default: lo = -1.0f; hi = 1.0f; break;
      }
      fill_f32_kernel<<<grid_for(s.cols), 256>>>(*s.f32, s.cols, k, lo, hi);
      continue;
    }
    if (s.kind == SlotKind::kI32) {
      const int used = std::max(1, model_->config_.n_experts_used);
      fill_ids_kernel<<<grid_for(s.cols), 256>>>(*s.i32, s.cols, k, s.fill_limit, used);
      continue;
    }
    const DeviceMatrix& m = *s.matrix;
    const float inv_sqrt = 1.0f / std::sqrt(static_cast<float>(s.cols));
    switch (s.type) {
      case GgmlType::F16:
        fill_f16_kernel<<<grid_for(s.elements()), 256>>>(reinterpret_cast<__half*>(m.data), s.elements(),
                                                          k, 0.0f, 1.7f * inv_sqrt, 1);
        break;
      case GgmlType::F32:
        fill_f32_kernel<<<grid_for(s.elements()), 256>>>(reinterpret_cast<float*>(m.data), s.elements(),
                                                          k, -1.7f * inv_sqrt, 1.7f * inv_sqrt);
        break;
      case GgmlType::Q8_0:
      case GgmlType::IQ2_XXS: {
        fill_bytes_kernel<<<grid_for(m.data_bytes() / 4), 256>>>(reinterpret_cast<uint32_t*>(m.data),
                                                                  m.data_bytes() / 4, k);
        const float typical = s.type == GgmlType::Q8_0 ? 73.0f : 2.0f * 25.0f;
        const float d = inv_sqrt / typical;
        fill_f16_kernel<<<grid_for(m.scale_bytes() / 2), 256>>>(reinterpret_cast<__half*>(m.scales),
                                                                 m.scale_bytes() / 2, k + 1000003,
                                                                 0.75f * d, 1.25f * d, 0);
        break;
      }
      case GgmlType::Q2_K:
      case GgmlType::Q4_K: {
        fill_bytes_kernel<<<grid_for(m.data_bytes() / 4), 256>>>(reinterpret_cast<uint32_t*>(m.data),
                                                                  m.data_bytes() / 4, k);
        const bool q2 = s.type == GgmlType::Q2_K;
        const int64_t blocks = s.elements() / 256;
        const float d = inv_sqrt / (q2 ? 12.0f : 60.0f);
        fix_kquant_kernel<<<grid_for(blocks), 256>>>(m.data, blocks, q2 ? 84 : 144, q2 ? 80 : 0, d,
                                                      0.5f * d, k + 77);
        break;
      }
      default:
        return Status::Error("synthetic: no fill rule for tensor " + s.name);
    }
  }
  DS4_CUDA_TRY(cudaGetLastError());
  DS4_CUDA_TRY(cudaDeviceSynchronize());
  return Status::Ok();
}

// ---------------------------------------------------------------------------
// Plans: which tensors exist, from a loaded Model or from a configuration.

namespace {

// Source of one tensor: a bound Weight (file) or a synthetic type and shape.
struct Source {
  const Weight* w = nullptr;
  GgmlType type = GgmlType::F32;
  std::vector<int64_t> ne;
};

class Planner {
 public:
  Planner(DeviceModelBuilder* b, const Model* model) : b_(b), model_(model) {}
  // Whether the tensors planned from now on come from the main file (false: the MTP
  // file, whose tensors get no file offset and are not dropped from the page cache).
  void set_main_file(bool main_file) { main_file_ = main_file; }

  void matrix(const std::string& name, const Weight* w, GgmlType type, std::vector<int64_t> ne,
              DeviceMatrix* out) {
    if (model_) {
      if (!w || !w->present()) return;
      b_->add_matrix(name, w->type(), w->cols(), w->rows(), w->mats(), w->data(), out);
      note_file_offset(w);
    } else {
      b_->add_matrix(name, type, ne[0], ne.size() > 1 ? ne[1] : 1, ne.size() > 2 ? ne[2] : 1,
                     nullptr, out);
    }
  }
  void vec(const std::string& name, const Weight* w, int64_t n, Fill fill, float** out) {
    if (model_) {
      if (!w || !w->present()) return;
      int64_t elems = 1;
      for (int64_t d : w->ne()) elems *= d;
      b_->add_f32(name, w->type(), elems, w->data(), fill, out);
      note_file_offset(w);
    } else {
      b_->add_f32(name, GgmlType::F32, n, nullptr, fill, out);
    }
  }
  void ids(const std::string& name, const Weight* w, int64_t n, int32_t limit, int32_t** out) {
    if (model_) {
      if (!w || !w->present()) return;
      b_->add_i32(name, w->cols() * w->rows(), w->data(), limit, out);
      note_file_offset(w);
    } else {
      b_->add_i32(name, n, nullptr, limit, out);
    }
  }

 private:
  // The tensor's bytes lie at data_offset + offset in the model's file.
  void note_file_offset(const Weight* w) {
    if (!main_file_) return;
    b_->set_file_offset_of_last(static_cast<int64_t>(model_->gguf().data_offset() + w->tensor->offset));
  }

  DeviceModelBuilder* b_;
  const Model* model_;
  bool main_file_ = true;
};

void plan_compressor(Planner& p, const std::string& prefix, const CompressorWeights* w,
                     const ModelConfig& c, int ratio, int d, DeviceCompressor* out) {
  const int64_t width = static_cast<int64_t>(ModelConfig::compressor_coff(ratio)) * d;
  p.vec(prefix + "compressor_ape", w ? &w->ape : nullptr, width * ratio, Fill::kZeros, &out->ape);
  p.matrix(prefix + "compressor_kv", w ? &w->kv : nullptr, GgmlType::F16, {c.dim, width}, &out->kv);
  p.matrix(prefix + "compressor_gate", w ? &w->gate : nullptr, GgmlType::F16, {c.dim, width},
           &out->gate);
  p.vec(prefix + "compressor_norm", w ? &w->norm : nullptr, d, Fill::kOnes, &out->norm);
}

void plan_model(DeviceModelBuilder& b, const Model* model) {
  const ModelConfig& c = b.model().config();
  Planner p(&b, model);
  const Model* M = model;
  p.matrix("token_embd", M ? &M->token_embd() : nullptr, GgmlType::F16, {c.dim, c.vocab},
           b.token_embd());
  p.matrix("output", M ? &M->output() : nullptr, GgmlType::Q8_0, {c.dim, c.vocab},
           b.output());
  p.matrix("output_hc_fn", M ? &M->output_hc_fn() : nullptr, GgmlType::F16,
           {static_cast<int64_t>(c.hc_dim()), c.hc_mult}, b.output_hc_fn());
  p.vec("output_norm", M ? &M->output_norm() : nullptr, c.dim, Fill::kOnes,
        b.output_norm());
  p.vec("output_hc_scale", M ? &M->output_hc_scale() : nullptr, 1, Fill::kSmall,
        b.output_hc_scale());
  p.vec("output_hc_base", M ? &M->output_hc_base() : nullptr, c.hc_mult, Fill::kSmall,
        b.output_hc_base());
  // The MTP block (when loaded) is one more layer after the main ones.
  const bool mtp = M && M->has_mtp();
  if (mtp) {
    b.enable_mtp();
    p.set_main_file(false);
    const MtpWeights& mw = M->mtp();
    DeviceMtp& dm = *b.mtp();
    const std::string pre = "mtp.0.";
    p.matrix(pre + "e_proj", &mw.e_proj, GgmlType::Q8_0, {c.dim, c.dim}, &dm.e_proj);
    p.matrix(pre + "h_proj", &mw.h_proj, GgmlType::Q8_0, {c.dim, c.dim}, &dm.h_proj);
    p.matrix(pre + "hc_head_fn", &mw.hc_head_fn, GgmlType::F16, {static_cast<int64_t>(c.hc_dim()), c.hc_mult},
             &dm.hc_head_fn);
    p.vec(pre + "enorm", &mw.enorm, c.dim, Fill::kOnes, &dm.enorm);
    p.vec(pre + "hnorm", &mw.hnorm, c.dim, Fill::kOnes, &dm.hnorm);
    p.vec(pre + "norm", &mw.norm, c.dim, Fill::kOnes, &dm.norm);
    p.vec(pre + "hc_head_scale", &mw.hc_head_scale, 1, Fill::kSmall, &dm.hc_head_scale);
    p.vec(pre + "hc_head_base", &mw.hc_head_base, c.hc_mult, Fill::kSmall, &dm.hc_head_base);
  }
  const int n_blocks = c.n_layers + (mtp ? 1 : 0);
  for (int l = 0; l < n_blocks; ++l) {
    const bool is_mtp = l == c.n_layers;
    p.set_main_file(!is_mtp);
    const LayerWeights* w = M ? (is_mtp ? &M->mtp().block : &M->layer(l)) : nullptr;
    DeviceLayer& d = *b.layer(l);
    const std::string pre = is_mtp ? std::string("mtp.0.") : "blk." + std::to_string(l) + ".";
    d.ratio = is_mtp ? c.mtp_compress_ratio : c.ratio(l);
    d.hash = !is_mtp && c.is_hash_layer(l);
    d.swiglu_limit = is_mtp ? w->swiglu_limit
                            : l < static_cast<int>(c.swiglu_limit.size()) ? c.swiglu_limit[l] : 0.0f;
    const int64_t mix = c.hc_mix();
    p.matrix(pre + "hc_attn_fn", w ? &w->hc_attn_fn : nullptr, GgmlType::F16, {c.hc_dim(), mix}, &d.hc_attn_fn);
    p.matrix(pre + "hc_ffn_fn", w ? &w->hc_ffn_fn : nullptr, GgmlType::F16, {c.hc_dim(), mix}, &d.hc_ffn_fn);
    p.vec(pre + "hc_attn_scale", w ? &w->hc_attn_scale : nullptr, 3, Fill::kSmall, &d.hc_attn_scale);
    p.vec(pre + "hc_attn_base", w ? &w->hc_attn_base : nullptr, mix, Fill::kSmall, &d.hc_attn_base);
    p.vec(pre + "hc_ffn_scale", w ? &w->hc_ffn_scale : nullptr, 3, Fill::kSmall, &d.hc_ffn_scale);
    p.vec(pre + "hc_ffn_base", w ? &w->hc_ffn_base : nullptr, mix, Fill::kSmall, &d.hc_ffn_base);
    p.vec(pre + "attn_norm", w ? &w->attn_norm : nullptr, c.dim, Fill::kOnes, &d.attn_norm);
    p.matrix(pre + "attn_q_a", w ? &w->attn_q_a : nullptr, GgmlType::Q8_0, {c.dim, c.q_lora}, &d.q_a);
    p.vec(pre + "attn_q_a_norm", w ? &w->attn_q_a_norm : nullptr, c.q_lora, Fill::kOnes, &d.q_a_norm);
    p.matrix(pre + "attn_q_b", w ? &w->attn_q_b : nullptr, GgmlType::Q8_0,
             {c.q_lora, static_cast<int64_t>(c.n_heads) * c.head_dim}, &d.q_b);
    p.matrix(pre + "attn_kv", w ? &w->attn_kv : nullptr, GgmlType::Q8_0, {c.dim, c.head_dim}, &d.kv);
    p.vec(pre + "attn_kv_a_norm", w ? &w->attn_kv_a_norm : nullptr, c.head_dim, Fill::kOnes, &d.kv_a_norm);
    p.vec(pre + "attn_sinks", w ? &w->attn_sinks : nullptr, c.n_heads, Fill::kSmall, &d.sinks);
    p.matrix(pre + "attn_output_a", w ? &w->attn_output_a : nullptr, GgmlType::Q8_0,
             {static_cast<int64_t>(c.heads_per_group()) * c.head_dim,
              static_cast<int64_t>(c.out_groups) * c.out_lora}, &d.out_a);
    p.matrix(pre + "attn_output_b", w ? &w->attn_output_b : nullptr, GgmlType::Q8_0,
             {static_cast<int64_t>(c.out_groups) * c.out_lora, c.dim}, &d.out_b);
    if (d.ratio != 0) {
      plan_compressor(p, pre + "attn_", w ? &w->compressor : nullptr, c, d.ratio, c.head_dim, &d.compressor);
    }
    if (d.ratio == 4) {
      p.matrix(pre + "indexer.attn_q_b", w ? &w->indexer.q_b : nullptr, GgmlType::F16,
               {c.q_lora, static_cast<int64_t>(c.index_heads) * c.index_head_dim}, &d.index_q_b);
      p.matrix(pre + "indexer.proj", w ? &w->indexer.proj : nullptr, GgmlType::F16,
               {c.dim, c.index_heads}, &d.index_proj);
      plan_compressor(p, pre + "indexer_", w ? &w->indexer.compressor : nullptr, c, 4, c.index_head_dim,
                      &d.index_compressor);
    }
    p.vec(pre + "ffn_norm", w ? &w->ffn_norm : nullptr, c.dim, Fill::kOnes, &d.ffn_norm);
    p.matrix(pre + "ffn_gate_inp", w ? &w->ffn_gate_inp : nullptr, GgmlType::F16, {c.dim, c.n_experts},
             &d.gate_inp);
    if (!d.hash) {
      p.vec(pre + "exp_probs_b", w ? &w->exp_probs_b : nullptr, c.n_experts, Fill::kSmall, &d.exp_probs_b);
    } else {
      p.ids(pre + "ffn_gate_tid2eid", w ? &w->ffn_gate_tid2eid : nullptr,
            static_cast<int64_t>(c.n_experts_used) * c.vocab, c.n_experts, &d.tid2eid);
    }
    p.matrix(pre + "ffn_gate_exps", w ? &w->ffn_gate_exps : nullptr, GgmlType::IQ2_XXS,
             {c.dim, c.expert_ffn, c.n_experts}, &d.gate_exps);
    p.matrix(pre + "ffn_up_exps", w ? &w->ffn_up_exps : nullptr, GgmlType::IQ2_XXS,
             {c.dim, c.expert_ffn, c.n_experts}, &d.up_exps);
    p.matrix(pre + "ffn_down_exps", w ? &w->ffn_down_exps : nullptr, GgmlType::Q2_K,
             {c.expert_ffn, c.dim, c.n_experts}, &d.down_exps);
    p.matrix(pre + "ffn_gate_shexp", w ? &w->ffn_gate_shexp : nullptr, GgmlType::Q8_0,
             {c.dim, c.expert_ffn}, &d.gate_shexp);
    p.matrix(pre + "ffn_up_shexp", w ? &w->ffn_up_shexp : nullptr, GgmlType::Q8_0,
             {c.dim, c.expert_ffn}, &d.up_shexp);
    p.matrix(pre + "ffn_down_shexp", w ? &w->ffn_down_shexp : nullptr, GgmlType::Q8_0,
             {c.expert_ffn, c.dim}, &d.down_shexp);
  }
}

}  // namespace

Result<std::unique_ptr<DeviceModel>> upload_model(const Model& model, const UploadOptions& options,
                                                  UploadStats* stats) {
  if (model.has_mtp() && model.config().mtp_compress_ratio != 0) {
    return Status::Error("CUDA backend: the MTP block has compression ratio " +
                         std::to_string(model.config().mtp_compress_ratio) +
                         "; the GPU path runs an MTP block of ratio 0 (raw window only)");
  }
  DeviceModelBuilder b(model.config());
  plan_model(b, &model);
  DS4_RETURN_IF_ERROR(b.allocate());
  DS4_RETURN_IF_ERROR(b.upload(options, model.path(), stats));
  return b.release();
}

Result<std::unique_ptr<DeviceModel>> upload_model(const Model& model, int threads,
                                                  UploadStats* stats) {
  UploadOptions options;
  options.threads = threads;
  return upload_model(model, options, stats);
}

Result<std::unique_ptr<DeviceModel>> make_synthetic_model(const ModelConfig& config, uint64_t seed) {
  DeviceModelBuilder b(config);
  plan_model(b, nullptr);
  DS4_RETURN_IF_ERROR(b.allocate());
  DS4_RETURN_IF_ERROR(b.fill_synthetic(seed));
  return b.release();
}

OwnedDeviceMatrix::~OwnedDeviceMatrix() {
  if (memory) cudaFree(memory);
}

namespace {

Result<std::unique_ptr<OwnedDeviceMatrix>> single_matrix(GgmlType type, int64_t cols, int64_t rows,
                                                         int64_t count, const uint8_t* host,
                                                         uint64_t seed, const UploadOptions& options,
                                                         UploadStats* stats) {
  ModelConfig none;
  DeviceModelBuilder b(none);
  auto owned = std::make_unique<OwnedDeviceMatrix>();
  b.add_matrix("matrix", type, cols, rows, count, host, &owned->m);
  if (host && !options.file_path.empty()) b.set_file_offset_of_last(static_cast<int64_t>(options.file_offset));
  DS4_RETURN_IF_ERROR(b.allocate());
  DS4_RETURN_IF_ERROR(host ? b.upload(options, options.file_path, stats) : b.fill_synthetic(seed));
  std::unique_ptr<DeviceModel> model = b.release();
  owned->memory = model->release_arena();
  return std::move(owned);
}

}  // namespace

Result<std::unique_ptr<OwnedDeviceMatrix>> upload_matrix(GgmlType type, int64_t cols, int64_t rows,
                                                         int64_t count, const uint8_t* host,
                                                         int threads, UploadStats* stats) {
  UploadOptions options;
  options.threads = threads;
  return upload_matrix(type, cols, rows, count, host, options, stats);
}

Result<std::unique_ptr<OwnedDeviceMatrix>> upload_matrix(GgmlType type, int64_t cols, int64_t rows,
                                                         int64_t count, const uint8_t* host,
                                                         const UploadOptions& options,
                                                         UploadStats* stats) {
  if (!host) return Status::Error("upload_matrix: no host data");
  return single_matrix(type, cols, rows, count, host, 0, options, stats);
}

Result<std::unique_ptr<OwnedDeviceMatrix>> random_matrix(GgmlType type, int64_t cols, int64_t rows,
                                                         int64_t count, uint64_t seed) {
  return single_matrix(type, cols, rows, count, nullptr, seed, UploadOptions(), nullptr);
}

ModelConfig deepseek_v4_flash_config() {
  ModelConfig c;
  c.n_layers = 43;
  c.dim = 4096;
  c.vocab = 129280;
  c.n_heads = 64;
  c.head_dim = 512;
  c.rope_dim = 64;
  c.q_lora = 1024;
  c.out_groups = 8;
  c.out_lora = 1024;
  c.window = 128;
  for (int l = 0; l < c.n_layers; ++l) c.compress_ratios.push_back(l < 2 ? 0 : (l % 2 == 0 ? 4 : 128));
  c.mtp_compress_ratio = 0;
  c.index_heads = 64;
  c.index_head_dim = 128;
  c.index_topk = 512;
  c.n_experts = 256;
  c.n_experts_used = 6;
  c.n_shared_experts = 1;
  c.expert_ffn = 2048;
  c.n_hash_layers = 3;
  c.route_scale = 1.5f;
  c.route_norm = true;
  c.swiglu_limit.assign(c.n_layers, 10.0f);
  c.rope_theta = 10000.0f;
  c.compress_rope_theta = 160000.0f;
  c.rope_factor = 16.0f;
  c.beta_fast = 32.0f;
  c.beta_slow = 1.0f;
  c.original_ctx = 65536;
  c.norm_eps = 1e-6f;
  c.hc_mult = 4;
  c.hc_sinkhorn_iters = 20;
  c.hc_eps = 1e-6f;
  c.context_length = 1048576;
  return c;
}

}  // namespace ds4
