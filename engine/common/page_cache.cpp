#include "common/page_cache.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <vector>

namespace ds4 {

namespace {

uint64_t page_size() { return static_cast<uint64_t>(sysconf(_SC_PAGESIZE)); }

// mincore over the pages that [p, p + n) touches; vec[i] & 1: page i is resident.
Status page_residency(const void* p, size_t n, std::vector<unsigned char>* vec) {
  const uint64_t page = page_size();
  const uintptr_t a0 = reinterpret_cast<uintptr_t>(p) / page * page;
  const uint64_t pages = (reinterpret_cast<uintptr_t>(p) + n - a0 + page - 1) / page;
  vec->assign(pages, 0);
  if (pages && mincore(reinterpret_cast<void*>(a0), pages * page, vec->data()) != 0) {
    return Status::Error(std::string("mincore over ") + std::to_string(pages) + " pages: " + std::strerror(errno));
  }
  return Status::Ok();
}

}  // namespace

Result<std::unique_ptr<PageCacheDropper>> PageCacheDropper::Open(const std::string& path,
                                                                 const uint8_t* mapping) {
  const uint64_t page = page_size();
  if (reinterpret_cast<uintptr_t>(mapping) % page != 0) {
    return Status::Error("page-cache drop of " + path + ": the mapping of the file is not page-aligned");
  }
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    return Status::Error("page-cache drop: cannot open " + path + ": " + std::strerror(errno));
  }
  return std::unique_ptr<PageCacheDropper>(new PageCacheDropper(fd, mapping, page));
}

PageCacheDropper::PageCacheDropper(int fd, const uint8_t* mapping, uint64_t page)
    : fd_(fd), mapping_(mapping), page_(page) {}

PageCacheDropper::~PageCacheDropper() { ::close(fd_); }

void PageCacheDropper::release(uint64_t offset, uint64_t n) {
  if (n == 0) return;
  const uint64_t p0 = offset / page_, p1 = (offset + n + page_ - 1) / page_;
  uint64_t d0 = 0, d1 = 0;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    // Merge [p0, p1) with every run it overlaps or touches.
    uint64_t r0 = p0, r1 = p1;
    auto it = runs_.upper_bound(p0);
    if (it != runs_.begin() && std::prev(it)->second >= p0) --it;
    while (it != runs_.end() && it->first <= r1) {
      r0 = std::min(r0, it->first);
      r1 = std::max(r1, it->second);
      it = runs_.erase(it);
    }
    runs_[r0] = r1;
    // Reach out to the aligned bounds of the largest folio, inside the released run.
    d0 = std::max(r0, p0 / kReachPages * kReachPages);
    d1 = std::min(r1, (p1 + kReachPages - 1) / kReachPages * kReachPages);
  }
  drop_pages(d0, d1);
}

void PageCacheDropper::finish() {
  for (const auto& [first, end] : released_runs()) drop_pages(first, end);
}

std::map<uint64_t, uint64_t> PageCacheDropper::released_runs() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return runs_;
}

// Best effort: an error (an old kernel, a file system without fadvise) leaves the
// pages cached and changes nothing else.
void PageCacheDropper::drop_pages(uint64_t first, uint64_t end) const {
  if (end <= first) return;
  const uint64_t off = first * page_, len = (end - first) * page_;
  if (mapping_) madvise(const_cast<uint8_t*>(mapping_) + off, len, MADV_DONTNEED);
  posix_fadvise(fd_, static_cast<off_t>(off), static_cast<off_t>(len), POSIX_FADV_DONTNEED);
}

Result<ResidentPages> count_resident_pages(const void* p, size_t n) {
  std::vector<unsigned char> vec;
  DS4_RETURN_IF_ERROR(page_residency(p, n, &vec));
  ResidentPages r;
  r.total = vec.size();
  for (unsigned char v : vec) r.resident += v & 1;
  return r;
}

Result<std::string> describe_resident_pages(const void* p, size_t n, int max_runs) {
  std::vector<unsigned char> vec;
  DS4_RETURN_IF_ERROR(page_residency(p, n, &vec));
  std::string out;
  int runs = 0;
  for (size_t i = 0; i < vec.size();) {
    if (!(vec[i] & 1)) {
      ++i;
      continue;
    }
    size_t j = i;
    while (j < vec.size() && (vec[j] & 1)) ++j;
    if (runs == max_runs) {
      out += out.empty() ? "..." : " ...";
      break;
    }
    if (!out.empty()) out += ' ';
    out += std::to_string(i) + "-" + std::to_string(j - 1);
    ++runs;
    i = j;
  }
  return out.empty() ? std::string("none") : out;
}

}  // namespace ds4
