// PageCacheDropper: drops a file's pages from the page cache as a reader finishes
// with regions of it. The weight upload uses it on a GPU that shares host memory,
// where the page cache and the device copy would otherwise hold the model twice.
//
// What it does, and why (Linux):
//  - posix_fadvise(POSIX_FADV_DONTNEED) leaves every page that a process still maps.
//    So when the caller reads the file through a mapping, that mapping's page-table
//    entries over the range go first (madvise(MADV_DONTNEED); for a read-only file
//    mapping this discards nothing: a later access faults the bytes back in from the
//    file), then the fadvise drops the now unmapped clean pages.
//  - The page cache holds large folios (on ext4, xfs and others: up to 2 MiB with
//    4 KiB pages, more with 64 KiB pages), and the kernel drops a folio only when the
//    fadvise range covers all of it. A region dropped on its own keeps every folio
//    that reaches into a neighbouring region. So each drop reaches out (up to
//    kReachPages pages, aligned) into neighbouring regions that were already
//    released, never into one that was not: a folio goes with the last of its
//    regions to be released.
//  - Faults and read-ahead in a later region can bring back pages of an earlier one;
//    the reach drops those near it again, and finish() drops every released run once
//    more.
// What is not guaranteed: pages another process maps, dirty or locked pages and pages
// under writeback stay cached, and so do pages being faulted in by a reader at that
// moment; tmpfs and shmem keep their pages (they are the file's only copy). It never
// changes what a mapping reads.
//
// Thread-safety: release() and finish() may be called from several threads at once.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "common/status.h"

namespace ds4 {

class PageCacheDropper {
 public:
  // Largest folio the reach covers, in pages (the kernel's page-cache folios are
  // naturally aligned and of order 11 at most).
  static constexpr uint64_t kReachPages = 2048;

  // `path`: the file. `mapping`: where offset 0 of the file lies in a read-only
  // mapping of it (MAP_PRIVATE or MAP_SHARED, not written) whose pages should leave
  // too; it must be page-aligned. nullptr: the caller maps none of the file (pages
  // that someone maps then stay). Fails when the file cannot be opened or `mapping`
  // is not page-aligned.
  static Result<std::unique_ptr<PageCacheDropper>> Open(const std::string& path, const uint8_t* mapping);
  ~PageCacheDropper();
  PageCacheDropper(const PageCacheDropper&) = delete;
  PageCacheDropper& operator=(const PageCacheDropper&) = delete;

  // File bytes [offset, offset + n) are no longer needed (the whole pages they touch
  // are dropped, so a page shared with a region still being read may have to be
  // faulted in again by its reader: one page, read again).
  void release(uint64_t offset, uint64_t n);
  // Drops every released run of pages once more (after the last release()).
  void finish();

  // Page-index runs [first, end) released so far, merged (tests, diagnostics).
  std::map<uint64_t, uint64_t> released_runs() const;

 private:
  PageCacheDropper(int fd, const uint8_t* mapping, uint64_t page);
  void drop_pages(uint64_t first, uint64_t end) const;  // [first, end), in pages

  const int fd_;
  const uint8_t* const mapping_;
  const uint64_t page_;
  mutable std::mutex mutex_;
  std::map<uint64_t, uint64_t> runs_;  // first page -> end page; disjoint, not touching
};

// Pages of [p, p + n) that are resident (mincore; for a file mapping: in the page
// cache, mapped or not), and the number of pages the range touches.
struct ResidentPages {
  uint64_t resident = 0;
  uint64_t total = 0;
};
Result<ResidentPages> count_resident_pages(const void* p, size_t n);

// The resident pages of [p, p + n) as runs of page indices relative to the first
// page, e.g. "0-511 1024-1151" (at most `max_runs` runs, then "..."); for printing.
Result<std::string> describe_resident_pages(const void* p, size_t n, int max_runs);

}  // namespace ds4
