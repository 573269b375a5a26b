#include "sha256.h"

#include <fcntl.h>
#include <openssl/evp.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <vector>

namespace ds4setup {

struct Sha256::Impl {
  EVP_MD_CTX* ctx = nullptr;
};

Sha256::Sha256() : impl_(new Impl) {
  impl_->ctx = EVP_MD_CTX_new();
  EVP_DigestInit_ex(impl_->ctx, EVP_sha256(), nullptr);
}

Sha256::~Sha256() {
  EVP_MD_CTX_free(impl_->ctx);
  delete impl_;
}

void Sha256::Update(const void* data, size_t size) {
  EVP_DigestUpdate(impl_->ctx, data, size);
  bytes_ += size;
}

std::string Sha256::FinalHex() {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  EVP_DigestFinal_ex(impl_->ctx, digest, &length);
  static const char kHex[] = "0123456789abcdef";
  std::string hex;
  for (unsigned int i = 0; i < length; ++i) {
    hex += kHex[digest[i] >> 4];
    hex += kHex[digest[i] & 15];
  }
  return hex;
}

Status HashFilePrefix(const std::string& path, uint64_t bytes, Sha256* hash,
                      const std::function<void(uint64_t)>& progress) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return Status::Error("cannot open " + path + ": " + std::strerror(errno));
#ifdef POSIX_FADV_SEQUENTIAL
  posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
#endif
  std::vector<unsigned char> buffer(4 << 20);
  uint64_t done = 0;
  uint64_t last_report = 0;
  while (done < bytes) {
    size_t want = buffer.size();
    if (bytes - done < want) want = static_cast<size_t>(bytes - done);
    ssize_t got = ::read(fd, buffer.data(), want);
    if (got < 0 && errno == EINTR) continue;
    if (got < 0) {
      std::string why = std::strerror(errno);
      ::close(fd);
      return Status::Error("cannot read " + path + ": " + why);
    }
    if (got == 0) break;
    hash->Update(buffer.data(), static_cast<size_t>(got));
    done += static_cast<uint64_t>(got);
    if (progress && done - last_report >= (256u << 20)) {
      progress(done);
      last_report = done;
    }
  }
  ::close(fd);
  if (progress) progress(done);
  if (bytes != UINT64_MAX && done < bytes)
    return Status::Error(path + " is shorter than expected (" + std::to_string(done) + " of " +
                         std::to_string(bytes) + " bytes)");
  return Status::Ok();
}

Result<std::string> Sha256File(const std::string& path) {
  Sha256 hash;
  DS4_RETURN_IF_ERROR(HashFilePrefix(path, UINT64_MAX, &hash));
  return hash.FinalHex();
}

}  // namespace ds4setup
