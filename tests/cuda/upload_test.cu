// Weight upload (cuda/device_model.h upload_matrix / upload_model, cuda/repack.h):
//  1. Random valid Q8_0, IQ2_XXS, Q2_K, Q4_K, F16 and F32 matrices (odd row counts,
//     three stacked matrices) uploaded with the GPU-repack path (default pieces, and
//     small odd-sized pieces on 3 threads) and with the host-repack path, read back
//     and compared byte for byte with the device layout written out here from its
//     rule (device_matrix.h): data and scales.
//  2. Inputs the kernels cannot read give an error naming the type and the columns.
//  3. The tiny-real fixture model through upload_model both ways: the two device
//     arenas are identical, byte for byte.
//  4. Page-cache dropping: a file written, cached, mapped and uploaded from its mapping
//     with dropping on: the bytes arrive, the mapping still reads the file's bytes,
//     and (mincore) the tensor's pages have left the page cache; the resident pages
//     are printed after each stage (with their runs, to show folios left whole).
//  5. Throughput (printed, not asserted): >= 4 GiB of Q8_0 and of IQ2_XXS blocks from
//     host memory with the GPU-repack path and the host-repack path; then Q8_0 from a
//     file in the page cache (mmap), and about 1 GiB of it from the disk after the
//     file's cache is dropped. Every large upload is also checked byte for byte.
#include <cuda_runtime.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/statvfs.h>
#include <sys/utsname.h>
#include <sys/vfs.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "common/page_cache.h"
#include "cuda/device_model.h"
#include "cuda/repack.h"
#include "cuda_test_util.h"
#include "model/model.h"

using namespace ds4;
using namespace ds4::test;

namespace {

constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;

// The device layout of `src` (count*rows rows of `cols`), written from the rule in
// device_matrix.h without the library's code: split types put each block's payload
// in `data` and its f16 scale in `scales`; other types keep the file's bytes.
void expected_layout(GgmlType type, const uint8_t* src, size_t src_bytes, std::vector<uint8_t>* data,
                     std::vector<uint8_t>* scales) {
  size_t block = 0, payload = 0;
  if (type == GgmlType::Q8_0) block = 34, payload = 32;
  if (type == GgmlType::IQ2_XXS) block = 66, payload = 64;
  if (!block) {
    data->assign(src, src + src_bytes);
    scales->clear();
    return;
  }
  const size_t blocks = src_bytes / block;
  data->resize(blocks * payload);
  scales->resize(blocks * 2);
  for (size_t g = 0; g < blocks; ++g) {
    (*scales)[2 * g] = src[g * block];
    (*scales)[2 * g + 1] = src[g * block + 1];
    for (size_t i = 0; i < payload; ++i) (*data)[g * payload + i] = src[g * block + 2 + i];
  }
}

// Byte-for-byte comparison; on a difference prints the count and the first few.
void compare_bytes(const std::string& name, const std::vector<uint8_t>& got,
                   const std::vector<uint8_t>& want) {
  if (got.size() != want.size()) {
    check(false, name + ": size " + std::to_string(got.size()) + " != expected " + std::to_string(want.size()));
    return;
  }
  size_t bad = 0, first = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    if (got[i] != want[i]) {
      if (!bad) first = i;
      if (bad < 3) {
        std::printf("  %s: byte %zu: got 0x%02x expected 0x%02x\n", name.c_str(), i, got[i], want[i]);
      }
      ++bad;
    }
  }
  check(bad == 0, name + ": " + std::to_string(bad) + " of " + std::to_string(got.size()) +
                      " bytes differ (first at " + std::to_string(first) + ")");
}

void read_back(const DeviceMatrix& m, std::vector<uint8_t>* data, std::vector<uint8_t>* scales) {
  data->resize(m.data_bytes());
  scales->resize(m.scale_bytes());
  check(cudaMemcpy(data->data(), m.data, data->size(), cudaMemcpyDeviceToHost) == cudaSuccess,
        "read back data");
  if (!scales->empty()) {
    check(cudaMemcpy(scales->data(), m.scales, scales->size(), cudaMemcpyDeviceToHost) == cudaSuccess,
          "read back scales");
  }
}

// Uploads `src` with `options` and compares data and scales with the expected layout.
// Returns the stats (bytes 0 when the upload failed).
UploadStats upload_and_compare(const std::string& name, GgmlType type, int64_t cols, int64_t rows,
                               int64_t count, const uint8_t* src, const UploadOptions& options,
                               const std::vector<uint8_t>& want_data,
                               const std::vector<uint8_t>& want_scales) {
  UploadStats st;
  auto m = upload_matrix(type, cols, rows, count, src, options, &st);
  check(m.ok(), name + ": upload: " + (m.ok() ? std::string() : m.status().message()));
  if (!m.ok()) return UploadStats();
  check(st.bytes == want_data.size() + want_scales.size(),
        name + ": stats.bytes " + std::to_string(st.bytes) + " != " +
            std::to_string(want_data.size() + want_scales.size()));
  std::vector<uint8_t> data, scales;
  read_back((*m)->m, &data, &scales);
  compare_bytes(name + " data", data, want_data);
  compare_bytes(name + " scales", scales, want_scales);
  return st;
}

std::string path_name(const UploadOptions& o) {
  return std::string(o.host_repack ? "host-repack" : "gpu-repack") + " threads=" +
         std::to_string(o.threads) + " chunk=" + std::to_string(o.chunk_bytes);
}

void test_layouts(std::mt19937& rng) {
  struct Shape {
    GgmlType type;
    int64_t cols, rows, count;
  };
  const Shape shapes[] = {
      {GgmlType::Q8_0, 4256, 1001, 3},   {GgmlType::IQ2_XXS, 2304, 1001, 3},
      {GgmlType::Q2_K, 2304, 1001, 3},   {GgmlType::Q4_K, 2304, 1001, 3},
      {GgmlType::F16, 1056, 1001, 3},    {GgmlType::F32, 1056, 1001, 3},
      {GgmlType::Q8_0, 64, 7, 1},        {GgmlType::IQ2_XXS, 256, 1, 1},
  };
  std::vector<UploadOptions> paths(3);
  paths[0].threads = 8;                            // defaults: 32 MiB pieces
  paths[1].threads = 3;
  paths[1].chunk_bytes = (1u << 20) + 1000;        // many pieces, boundaries mid-row
  paths[2].threads = 3;
  paths[2].chunk_bytes = (1u << 20) + 1000;
  paths[2].host_repack = true;
  for (const Shape& sh : shapes) {
    const std::vector<uint8_t> src = random_blocks(sh.type, sh.rows * sh.count, sh.cols, rng);
    std::vector<uint8_t> want_data, want_scales;
    expected_layout(sh.type, src.data(), src.size(), &want_data, &want_scales);
    const std::string base = std::string(ggml_type_name(sh.type)) + " " + std::to_string(sh.count) + "x" +
                             std::to_string(sh.rows) + "x" + std::to_string(sh.cols);
    for (const UploadOptions& o : paths) {
      upload_and_compare(base + " " + path_name(o), sh.type, sh.cols, sh.rows, sh.count, src.data(), o,
                         want_data, want_scales);
    }
    std::printf("layout %s (%.2f MiB): compared on %zu paths\n", base.c_str(), src.size() / 1048576.0,
                paths.size());
  }
}

void test_direct_kernel(std::mt19937& rng) {
  // launch_split_repack on its own, against split_repack_host, and its argument errors.
  for (GgmlType type : {GgmlType::Q8_0, GgmlType::IQ2_XXS}) {
    const int64_t blocks = 100003;
    const std::vector<uint8_t> src = random_blocks(type, 1, blocks * (type == GgmlType::Q8_0 ? 32 : 256), rng);
    const size_t payload = split_payload_bytes(type);
    std::vector<uint8_t> want_data(blocks * payload), want_scales(blocks * 2);
    split_repack_host(type, src.data(), blocks, want_data.data(), reinterpret_cast<uint16_t*>(want_scales.data()));
    std::vector<uint8_t> rule_data, rule_scales;
    expected_layout(type, src.data(), src.size(), &rule_data, &rule_scales);
    const std::string name = std::string("direct ") + std::string(ggml_type_name(type));
    compare_bytes(name + " host rule data", want_data, rule_data);
    compare_bytes(name + " host rule scales", want_scales, rule_scales);
    DeviceVec<uint8_t> dsrc(src), ddata(want_data.size()), dscales(want_scales.size());
    Status s = launch_split_repack(type, dsrc.get(), blocks, ddata.get(),
                                   reinterpret_cast<uint16_t*>(dscales.get()), nullptr);
    check(s.ok(), name + ": launch: " + s.message());
    check(cudaDeviceSynchronize() == cudaSuccess, name + ": kernel failed");
    compare_bytes(name + " data", ddata.host(), want_data);
    compare_bytes(name + " scales", dscales.host(), want_scales);
    Status bad = launch_split_repack(type, dsrc.get(), blocks, ddata.get() + 8,
                                     reinterpret_cast<uint16_t*>(dscales.get()), nullptr);
    check(!bad.ok() && bad.message().find("misaligned") != std::string::npos,
          name + ": misaligned data pointer must be refused, got: " + bad.message());
  }
  Status wrong = launch_split_repack(GgmlType::Q2_K, nullptr, 1, nullptr, nullptr, nullptr);
  check(!wrong.ok() && wrong.message().find("Q2_K") != std::string::npos,
        "Q2_K has no split layout; error must name it, got: " + wrong.message());
}

void test_errors() {
  std::vector<uint8_t> bytes(1 << 16, 0);
  struct Bad {
    GgmlType type;
    int64_t cols;
  };
  for (const Bad& b : {Bad{GgmlType::Q8_0, 48}, Bad{GgmlType::IQ2_XXS, 300}, Bad{GgmlType::Q4_K, 128}}) {
    auto m = upload_matrix(b.type, b.cols, 2, 1, bytes.data(), UploadOptions(), nullptr);
    const std::string type_name(ggml_type_name(b.type));
    const std::string msg = m.ok() ? std::string("(accepted)") : m.status().message();
    check(!m.ok() && msg.find(type_name) != std::string::npos &&
              msg.find(std::to_string(b.cols)) != std::string::npos && msg.find("matrix") != std::string::npos,
          type_name + " with " + std::to_string(b.cols) + " columns must be refused naming tensor, type and "
                      "columns; got: " + msg);
  }
  auto none = upload_matrix(GgmlType::F32, 32, 1, 1, nullptr, UploadOptions(), nullptr);
  check(!none.ok(), "upload_matrix without host data must fail");
}

// Copies the whole arena of `m` to the host (and frees it).
std::vector<uint8_t> take_arena(DeviceModel& m) {
  std::vector<uint8_t> out(m.device_bytes());
  void* arena = m.release_arena();
  check(cudaMemcpy(out.data(), arena, out.size(), cudaMemcpyDeviceToHost) == cudaSuccess, "read back arena");
  cudaFree(arena);
  return out;
}

void test_model(const std::string& data_dir) {
  const std::string path = data_dir + "/tiny-real/model.gguf";
  auto model = Model::Load(path);
  check(model.ok(), path + ": " + (model.ok() ? std::string() : model.status().message()));
  if (!model.ok()) return;
  UploadOptions host;
  host.host_repack = true;
  host.threads = 2;
  UploadOptions gpu;
  gpu.threads = 4;
  gpu.chunk_bytes = 64 << 10;   // small pieces: most tensors cut in several
  UploadOptions gpu_drop = gpu;
  gpu_drop.drop_page_cache = PageCacheDrop::kAlways;
  std::vector<uint8_t> ref;
  for (const UploadOptions* o : {&host, &gpu, &gpu_drop}) {
    UploadStats st;
    auto dm = upload_model(**model, *o, &st);
    const std::string name = "tiny-real " + path_name(*o) +
                             (o->drop_page_cache == PageCacheDrop::kAlways ? " drop" : "");
    check(dm.ok(), name + ": " + (dm.ok() ? std::string() : dm.status().message()));
    if (!dm.ok()) continue;
    std::printf("%s: %.2f MiB in %.3f s, page cache dropped: %s\n", name.c_str(), st.bytes / 1048576.0,
                st.seconds, st.page_cache_dropped ? "yes" : "no");
    if (o == &gpu_drop) check(st.page_cache_dropped, name + ": dropping was asked for and not done");
    std::vector<uint8_t> arena = take_arena(**dm);
    if (ref.empty()) {
      ref = std::move(arena);
    } else {
      compare_bytes(name + " arena against host-repack arena", arena, ref);
    }
  }
}

bool on_tmpfs(const std::string& path) {
  struct statfs fs;
  return statfs(path.c_str(), &fs) == 0 && static_cast<unsigned long>(fs.f_type) == 0x01021994UL;
}

bool write_file(const std::string& path, const uint8_t* p, size_t n) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return false;
  size_t done = 0;
  while (done < n) {
    const ssize_t w = ::write(fd, p + done, std::min<size_t>(n - done, 1u << 30));
    if (w <= 0) break;
    done += static_cast<size_t>(w);
  }
  const bool ok = done == n && fsync(fd) == 0;
  ::close(fd);
  return ok;
}

// A read-only private mapping of a whole file (as GgufFile maps the model).
struct Mapping {
  uint8_t* p = nullptr;
  size_t n = 0;
  explicit Mapping(const std::string& path) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return;
    n = static_cast<size_t>(lseek(fd, 0, SEEK_END));
    void* m = mmap(nullptr, n, PROT_READ, MAP_PRIVATE, fd, 0);
    ::close(fd);
    if (m != MAP_FAILED) p = static_cast<uint8_t*>(m);
  }
  ~Mapping() {
    if (p) munmap(p, n);
  }
};

// Resident pages of the tensor (mincore), printed with the runs of resident page
// indices (relative to the tensor's first page) so a failure shows which pages stay.
size_t report_resident(const char* stage, const uint8_t* p, size_t n) {
  auto r = count_resident_pages(p, n);
  auto runs = describe_resident_pages(p, n, 8);
  if (!r.ok()) {
    std::printf("page cache %s: %s\n", stage, r.status().message().c_str());
    return SIZE_MAX;
  }
  std::printf("page cache %s: %llu of %llu pages of the tensor resident (%s)\n", stage,
              static_cast<unsigned long long>(r->resident), static_cast<unsigned long long>(r->total),
              runs.ok() ? runs->c_str() : runs.status().message().c_str());
  return static_cast<size_t>(r->resident);
}

void test_page_cache_drop(const std::string& dir, std::mt19937& rng, bool integrated) {
  const std::string path = dir + "/upload_test_pagecache.bin";
  const int64_t cols = 4096, rows = 4001;
  const size_t header = 1000;  // the tensor starts mid-page, as GGUF tensors do
  std::vector<uint8_t> file(header, 0);
  const std::vector<uint8_t> blocks = random_blocks(GgmlType::Q8_0, rows, cols, rng);
  file.insert(file.end(), blocks.begin(), blocks.end());
  if (!write_file(path, file.data(), file.size())) {
    std::printf("SKIP page-cache drop: cannot write %s\n", path.c_str());
    return;
  }
  struct utsname u;
  struct statfs fs;
  uname(&u);
  const unsigned long fs_type = statfs(dir.c_str(), &fs) == 0 ? static_cast<unsigned long>(fs.f_type) : 0;
  std::printf("page cache: kernel %s, %s on file system type 0x%lx (ext4 0xef53, overlay 0x794c7630, "
              "xfs 0x58465342, tmpfs 0x1021994), page %ld bytes\n",
              u.release, path.c_str(), fs_type, sysconf(_SC_PAGESIZE));
  {
    Mapping map(path);
    check(map.p != nullptr, "mapping " + path);
    if (!map.p) return;
    const uint8_t* tensor = map.p + header;
    uint64_t sum = 0;  // read it all: the file is now in the page cache
    for (size_t i = 0; i < map.n; i += 512) sum += map.p[i];
    std::vector<uint8_t> want_data, want_scales;
    expected_layout(GgmlType::Q8_0, blocks.data(), blocks.size(), &want_data, &want_scales);

    report_resident("at start", tensor, blocks.size());
    UploadOptions o;
    o.threads = 4;
    o.chunk_bytes = (1u << 20) + 1000;
    o.drop_page_cache = PageCacheDrop::kAuto;
    o.file_path = path;
    o.file_offset = header;
    UploadStats st = upload_and_compare("page cache kAuto", GgmlType::Q8_0, cols, rows, 1, tensor, o,
                                        want_data, want_scales);
    check(st.page_cache_dropped == integrated,
          std::string("kAuto drops exactly on a GPU sharing host memory: integrated=") +
              (integrated ? "1" : "0") + " dropped=" + (st.page_cache_dropped ? "1" : "0"));
    report_resident("after the kAuto upload", tensor, blocks.size());
    for (size_t i = 0; i < map.n; i += 512) sum += map.p[i];

    o.drop_page_cache = PageCacheDrop::kAlways;
    const size_t before_drop = report_resident("before the dropping upload (file read again)", tensor,
                                               blocks.size());
    st = upload_and_compare("page cache kAlways", GgmlType::Q8_0, cols, rows, 1, tensor, o,
                            want_data, want_scales);
    check(st.page_cache_dropped, "kAlways with a file: page_cache_dropped must be set");
    const size_t after = report_resident("after the dropping upload", tensor, blocks.size());
    auto counted = count_resident_pages(tensor, blocks.size());
    const size_t total = counted.ok() ? static_cast<size_t>(counted->total) : 0;
    std::printf("page cache: checksum %llu\n", static_cast<unsigned long long>(sum));
    if (on_tmpfs(dir)) {
      std::printf("SKIP page-cache residency check: %s is on tmpfs, whose pages are the file itself\n",
                  dir.c_str());
    } else if (before_drop == SIZE_MAX || before_drop < total / 2) {
      std::printf("SKIP page-cache residency check: only %zu of %zu pages were cached before\n", before_drop,
                  total);
    } else {
      check(after != SIZE_MAX && after <= total / 20,
            "after the dropping upload at most 5% of the tensor's pages stay cached: " + std::to_string(after) +
                " of " + std::to_string(total));
      if (after != SIZE_MAX && after > total / 20) {
        // Which step holds them: one drop over the whole file range from here (no
        // upload, no other thread) tells the range logic from the kernel refusing.
        auto d = PageCacheDropper::Open(path, map.p);
        if (d.ok()) {
          (*d)->release(0, map.n);
          report_resident("diagnosis: after one madvise+fadvise over the whole file", tensor, blocks.size());
        }
      }
    }
    // The mapping still reads the file's bytes (faulted back in from the file).
    check(std::memcmp(map.p, file.data(), file.size()) == 0, "mapping reads the file's bytes after the drop");
  }
  std::remove(path.c_str());
}

// Throughput of the two paths on >= 4 GiB of blocks; each upload is checked in full.
void check_large(const std::string& name, GgmlType type, int64_t cols, int64_t rows, const uint8_t* src,
                 const DeviceMatrix& m) {
  std::vector<uint8_t> data, scales;
  read_back(m, &data, &scales);
  const size_t block = split_block_bytes(type), payload = split_payload_bytes(type);
  const size_t blocks = static_cast<size_t>(rows) * (cols / (type == GgmlType::Q8_0 ? 32 : 256));
  size_t bad = 0, first = SIZE_MAX;
  for (size_t g = 0; g < blocks; ++g) {
    const uint8_t* b = src + g * block;
    if (std::memcmp(scales.data() + 2 * g, b, 2) != 0 || std::memcmp(data.data() + g * payload, b + 2, payload) != 0) {
      if (first == SIZE_MAX) first = g;
      ++bad;
    }
  }
  check(bad == 0, name + ": " + std::to_string(bad) + " of " + std::to_string(blocks) +
                      " blocks differ (first: block " + std::to_string(first) + ")");
}

void bench_host_memory(std::vector<uint8_t>& host) {
  struct Case {
    GgmlType type;
    int64_t cols, rows;
  };
  const Case cases[] = {{GgmlType::Q8_0, 4096, int64_t{1} << 20}, {GgmlType::IQ2_XXS, 4096, int64_t{4} << 20}};
  for (const Case& c : cases) {
    const size_t src_bytes = ggml_row_bytes(c.type, c.cols) * static_cast<size_t>(c.rows);
    if (src_bytes > host.size()) continue;
    for (int pass = 0; pass < 3; ++pass) {
      UploadOptions o;
      o.threads = 8;
      o.host_repack = pass == 1;
      UploadStats st;
      auto m = upload_matrix(c.type, c.cols, c.rows, 1, host.data(), o, &st);
      const std::string name = std::string(ggml_type_name(c.type)) + " " + path_name(o);
      check(m.ok(), name + ": " + (m.ok() ? std::string() : m.status().message()));
      if (!m.ok()) continue;
      std::printf("upload from host memory: %s: %.2f GiB in %.3f s = %.2f GiB/s (device scratch %.0f MiB)\n",
                  name.c_str(), st.bytes / kGiB, st.seconds, st.gib_per_s(), st.scratch_bytes / 1048576.0);
      if (pass != 2) check_large(name, c.type, c.cols, c.rows, host.data(), (*m)->m);
    }
  }
}

void bench_file(const std::string& dir, const std::vector<uint8_t>& host) {
  const int64_t cols = 4096, rows = int64_t{1} << 20;  // 4.25 GiB of Q8_0
  const size_t n = ggml_row_bytes(GgmlType::Q8_0, cols) * rows;
  struct statvfs vfs;
  if (statvfs(dir.c_str(), &vfs) != 0 || static_cast<double>(vfs.f_bavail) * vfs.f_frsize < 3.0 * n) {
    std::printf("SKIP file throughput: less than %.1f GiB free in %s\n", 3.0 * n / kGiB, dir.c_str());
    return;
  }
  const std::string path = dir + "/upload_test_bench.bin";
  const auto t0 = std::chrono::steady_clock::now();
  if (!write_file(path, host.data(), n)) {
    std::printf("SKIP file throughput: cannot write %s\n", path.c_str());
    std::remove(path.c_str());
    return;
  }
  std::printf("wrote %.2f GiB to %s in %.2f s (fsync included)%s\n", n / kGiB, path.c_str(),
              std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(),
              on_tmpfs(dir) ? " [tmpfs]" : "");
  for (int pass = 0; pass < 2; ++pass) {
    Mapping map(path);
    check(map.p != nullptr, "mapping " + path);
    if (!map.p) break;
    auto resident = count_resident_pages(map.p, n);  // of the whole file
    const double cached = resident.ok() ? static_cast<double>(resident->resident) : -1.0;
    const double total = resident.ok() ? static_cast<double>(resident->total) : 1.0;
    UploadOptions o;
    o.threads = 8;
    o.drop_page_cache = PageCacheDrop::kNever;
    UploadStats st;
    const int64_t part = pass == 0 ? rows : rows / 4;  // the disk pass reads about 1 GiB
    auto m = upload_matrix(GgmlType::Q8_0, cols, part, 1, map.p, o, &st);
    const std::string name = pass == 0 ? "from the page cache (mmap)" : "from the disk (cache dropped first)";
    check(m.ok(), name + ": " + (m.ok() ? std::string() : m.status().message()));
    if (m.ok()) {
      std::printf("upload %s: %.2f GiB in %.3f s = %.2f GiB/s (%.0f%% of the file cached at start)\n",
                  name.c_str(), st.bytes / kGiB, st.seconds, st.gib_per_s(), 100.0 * cached / total);
      check_large(name, GgmlType::Q8_0, cols, part, host.data(), (*m)->m);
    }
    if (pass == 0) {  // drop the whole file from the cache for the cold pass
      munmap(map.p, map.n);
      map.p = nullptr;
      const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
      if (fd >= 0) {
        posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
        ::close(fd);
      }
    }
  }
  std::remove(path.c_str());
}

}  // namespace

int main() {
  if (!gpu_present()) return 77;
  int integrated = 0, host_tables = 0;
  cudaDeviceGetAttribute(&integrated, cudaDevAttrIntegrated, 0);
  cudaDeviceGetAttribute(&host_tables, cudaDevAttrPageableMemoryAccessUsesHostPageTables, 0);
  std::printf("integrated (shares host memory): %d, pageable access uses host page tables: %d\n", integrated,
              host_tables);
  const char* env = std::getenv("DS4_TEST_DATA");
  const std::string data_dir = env ? env : "tests/data";
  const char* tmp = std::getenv("DS4_UPLOAD_TEST_DIR");
  const std::string dir = tmp ? tmp : ".";
  std::mt19937 rng(1234);

  test_layouts(rng);
  test_direct_kernel(rng);
  test_errors();
  test_model(data_dir);
  test_page_cache_drop(dir, rng, integrated != 0);

  size_t free_bytes = 0, total = 0;
  cudaMemGetInfo(&free_bytes, &total);
  if (free_bytes < (size_t{12} << 30)) {
    std::printf("SKIP throughput: %.1f GiB free on the GPU, 12 needed\n", free_bytes / kGiB);
    return finish("upload_test");
  }
  std::vector<uint8_t> host(ggml_row_bytes(GgmlType::Q8_0, 4096) * (size_t{1} << 20));
  uint64_t x = 0x9e3779b97f4a7c15ull;  // xorshift64: random bytes, fast enough for 4 GiB
  uint64_t* words = reinterpret_cast<uint64_t*>(host.data());
  for (size_t i = 0; i < host.size() / 8; ++i) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    words[i] = x;
  }
  std::printf("host buffer: %.2f GiB of random bytes\n", host.size() / kGiB);
  bench_host_memory(host);
  bench_file(dir, host);
  return finish("upload_test");
}
