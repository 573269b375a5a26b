// Sha256: a streaming SHA-256 (OpenSSL EVP) fed as bytes arrive, so an 81 GiB download
// is verified without a second pass; HashFilePrefix() hashes an existing file (or the
// first bytes of a partial download) once, in bounded memory.
//
// Thread-safety: one Sha256 per thread; distinct objects are independent.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>

#include "status.h"

namespace ds4setup {

class Sha256 {
 public:
  Sha256();
  ~Sha256();
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;

  void Update(const void* data, size_t size);
  // The digest as 64 lower-case hex digits. The object must not be updated afterwards.
  std::string FinalHex();
  uint64_t bytes() const { return bytes_; }

 private:
  struct Impl;
  Impl* impl_;
  uint64_t bytes_ = 0;
};

// Feeds the first `bytes` of `path` into `hash` (all of it when bytes == UINT64_MAX),
// calling `progress(done)` now and then. Fails if the file is shorter than `bytes`.
Status HashFilePrefix(const std::string& path, uint64_t bytes, Sha256* hash,
                      const std::function<void(uint64_t)>& progress = nullptr);

// SHA-256 of a whole file, as hex.
Result<std::string> Sha256File(const std::string& path);

}  // namespace ds4setup
