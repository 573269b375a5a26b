// Tests for installer/fetch, sha256 and lock over file:// URLs (the network paths are
// covered end to end against the fake hub in tests/e2e/download_*_test.sh).
#include "fetch.h"

#include <doctest/doctest.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>

#include "lock.h"
#include "sha256.h"
#include "ui.h"

using namespace ds4setup;
namespace fs = std::filesystem;

namespace {

// A scratch directory removed at the end of each test.
struct Scratch {
  fs::path dir;
  Scratch() {
    char tmpl[] = "/tmp/ds4-fetch-test.XXXXXX";
    dir = mkdtemp(tmpl);
  }
  ~Scratch() { fs::remove_all(dir); }
  std::string operator/(const std::string& name) const { return (dir / name).string(); }
};

std::string RandomBytes(size_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::string s(n, '\0');
  for (auto& c : s) c = static_cast<char>(rng());
  return s;
}

void WriteFile(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary) << bytes;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

std::string HexOf(const std::string& bytes) {
  Sha256 h;
  h.Update(bytes.data(), bytes.size());
  return h.FinalHex();
}

// A request for `source` (served via file://) into `dest`, in 64 KiB chunks.
FetchRequest RequestFor(const std::string& source, const std::string& dest, const std::string& bytes) {
  FetchRequest r;
  r.url = "file://" + source;
  r.dest = dest;
  r.expected_bytes = bytes.size();
  r.expected_sha256 = HexOf(bytes);
  r.label = "test";
  r.chunk_bytes = 64 << 10;
  r.retry.initial_backoff_seconds = 0.001;
  r.retry.max_attempts = 2;
  return r;
}

struct QuietUi {
  std::FILE* sink = std::fopen("/dev/null", "w");
  Ui ui{sink, sink};
  ~QuietUi() { std::fclose(sink); }
};

}  // namespace

TEST_CASE("SHA-256 matches the standard test vectors, streamed in pieces") {
  Sha256 empty;
  CHECK(empty.FinalHex() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  Sha256 abc;
  abc.Update("a", 1);
  abc.Update("bc", 2);
  CHECK(abc.FinalHex() == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  CHECK(abc.bytes() == 3);
}

TEST_CASE("HashFilePrefix hashes exactly the prefix, and fails on a short file") {
  Scratch s;
  std::string bytes = RandomBytes(100000, 1);
  WriteFile(s / "f", bytes);
  Sha256 prefix;
  REQUIRE(HashFilePrefix(s / "f", 12345, &prefix).ok());
  CHECK(prefix.FinalHex() == HexOf(bytes.substr(0, 12345)));
  CHECK(Sha256File(s / "f").value() == HexOf(bytes));
  Sha256 too_long;
  Status status = HashFilePrefix(s / "f", 200000, &too_long);
  REQUIRE_FALSE(status.ok());
  CHECK(status.message().find("is shorter than expected (100000 of 200000 bytes)") != std::string::npos);
}

TEST_CASE("a file:// download in chunks lands verified, with no .part left") {
  Scratch s;
  QuietUi q;
  std::string bytes = RandomBytes(300000, 2);
  WriteFile(s / "src", bytes);
  FetchOutcome out = FetchFile(RequestFor(s / "src", s / "dst", bytes), &q.ui);
  REQUIRE_MESSAGE(out.status.ok(), out.status.message());
  CHECK(ReadFile(s / "dst") == bytes);
  CHECK_FALSE(fs::exists(s / "dst.part"));
  CHECK(out.stats.bytes_received == bytes.size());
}

TEST_CASE("a partial download resumes after its last byte") {
  Scratch s;
  QuietUi q;
  std::string bytes = RandomBytes(300000, 3);
  WriteFile(s / "src", bytes);
  WriteFile(s / "dst.part", bytes.substr(0, 100001));
  FetchOutcome out = FetchFile(RequestFor(s / "src", s / "dst", bytes), &q.ui);
  REQUIRE_MESSAGE(out.status.ok(), out.status.message());
  CHECK(out.stats.bytes_reused == 100001);
  CHECK(out.stats.bytes_received == 300000 - 100001);
  CHECK(ReadFile(s / "dst") == bytes);
}

TEST_CASE("wrong bytes are caught, moved to .bad, and reported as a checksum failure") {
  Scratch s;
  QuietUi q;
  std::string bytes = RandomBytes(200000, 4);
  WriteFile(s / "src", bytes);
  FetchRequest request = RequestFor(s / "src", s / "dst", bytes);
  request.expected_sha256 = HexOf("something else");
  FetchOutcome out = FetchFile(request, &q.ui);
  REQUIRE_FALSE(out.status.ok());
  CHECK(out.failure == FetchFailure::kChecksum);
  CHECK(out.status.message().find("SHA-256 mismatch for " + (s / "dst")) == 0);
  CHECK(fs::exists(s / "dst.bad"));
  CHECK_FALSE(fs::exists(s / "dst"));
  CHECK_FALSE(fs::exists(s / "dst.part"));
}

TEST_CASE("an over-long .part is set aside and the file fetched from byte 0") {
  Scratch s;
  QuietUi q;
  std::string bytes = RandomBytes(100000, 5);
  WriteFile(s / "src", bytes);
  WriteFile(s / "dst.part", bytes + "extra");
  FetchOutcome out = FetchFile(RequestFor(s / "src", s / "dst", bytes), &q.ui);
  REQUIRE_MESSAGE(out.status.ok(), out.status.message());
  CHECK(out.stats.bytes_received == bytes.size());
  CHECK(ReadFile(s / "dst.part.bad") == bytes + "extra");
}

TEST_CASE("a complete file in place is verified and reused; a wrong one is replaced") {
  Scratch s;
  QuietUi q;
  std::string bytes = RandomBytes(50000, 6);
  WriteFile(s / "src", bytes);
  WriteFile(s / "dst", bytes);
  FetchOutcome reused = FetchFile(RequestFor(s / "src", s / "dst", bytes), &q.ui);
  REQUIRE(reused.status.ok());
  CHECK(reused.stats.already_complete);
  CHECK(reused.stats.bytes_received == 0);

  std::string wrong = bytes;
  wrong[777] ^= 1;
  WriteFile(s / "dst", wrong);
  FetchOutcome replaced = FetchFile(RequestFor(s / "src", s / "dst", bytes), &q.ui);
  REQUIRE(replaced.status.ok());
  CHECK_FALSE(replaced.stats.already_complete);
  CHECK(ReadFile(s / "dst") == bytes);
  CHECK(ReadFile(s / "dst.bad") == wrong);
}

TEST_CASE("a missing source is a clear, non-retried error naming the URL") {
  Scratch s;
  QuietUi q;
  std::string bytes = RandomBytes(1000, 7);
  FetchOutcome out = FetchFile(RequestFor(s / "nope", s / "dst", bytes), &q.ui);
  REQUIRE_FALSE(out.status.ok());
  CHECK(out.failure == FetchFailure::kNetwork);
  CHECK(out.status.message().find(s / "nope") != std::string::npos);
  CHECK(out.stats.retries == 0);
}

TEST_CASE("AdoptFile verifies the given file and keeps the original") {
  Scratch s;
  QuietUi q;
  std::string bytes = RandomBytes(80000, 8);
  WriteFile(s / "mine", bytes);
  FetchOutcome ok = AdoptFile(s / "mine", RequestFor(s / "unused", s / "dst", bytes), &q.ui);
  REQUIRE_MESSAGE(ok.status.ok(), ok.status.message());
  CHECK(ReadFile(s / "dst") == bytes);
  CHECK(ReadFile(s / "mine") == bytes);

  WriteFile(s / "other", RandomBytes(80000, 9));
  FetchOutcome bad = AdoptFile(s / "other", RequestFor(s / "unused", s / "dst2", bytes), &q.ui);
  REQUIRE_FALSE(bad.status.ok());
  CHECK(bad.failure == FetchFailure::kChecksum);
  CHECK_FALSE(fs::exists(s / "dst2"));
  CHECK_FALSE(fs::exists(s / "dst2.part"));

  FetchOutcome short_file = AdoptFile(s / "mine", RequestFor(s / "unused", s / "dst3", bytes + "x"), &q.ui);
  REQUIRE_FALSE(short_file.status.ok());
  CHECK(short_file.status.message().find("it is 80000 bytes, but test is 80001 bytes") != std::string::npos);
}

TEST_CASE("adopting the file that is already the destination verifies it in place") {
  Scratch s;
  QuietUi q;
  std::string bytes = RandomBytes(30000, 10);
  WriteFile(s / "dst", bytes);
  FetchOutcome out = AdoptFile(s / "dst", RequestFor(s / "unused", s / "dst", bytes), &q.ui);
  REQUIRE_MESSAGE(out.status.ok(), out.status.message());
  CHECK(out.stats.already_complete);
  CHECK(ReadFile(s / "dst") == bytes);
  CHECK_FALSE(fs::exists(s / "dst.part"));
}

TEST_CASE("Retry-After: seconds or an HTTP date; backoff doubles up to its cap") {
  CHECK(ParseRetryAfter("7", 0) == 7);
  CHECK(ParseRetryAfter(" 120 ", 0) == 120);
  CHECK(ParseRetryAfter("", 0) == -1);
  CHECK(ParseRetryAfter("soon", 0) == -1);
  // Sun, 06 Nov 1994 08:49:37 GMT = 784111777
  CHECK(ParseRetryAfter("Sun, 06 Nov 1994 08:49:37 GMT", 784111777 - 30) == 30);
  CHECK(ParseRetryAfter("Sun, 06 Nov 1994 08:49:37 GMT", 784111777 + 30) == 0);
  RetryPolicy policy;
  policy.initial_backoff_seconds = 1;
  policy.max_backoff_seconds = 10;
  CHECK(BackoffSeconds(policy, 1) == 1);
  CHECK(BackoffSeconds(policy, 2) == 2);
  CHECK(BackoffSeconds(policy, 4) == 8);
  CHECK(BackoffSeconds(policy, 5) == 10);
  CHECK(BackoffSeconds(policy, 50) == 10);
}

TEST_CASE("the models directory lock refuses a second holder and frees on release") {
  Scratch s;
  Result<std::unique_ptr<DirLock>> first = DirLock::Acquire(s / "models");
  REQUIRE_MESSAGE(first.ok(), first.status().message());
  Result<std::unique_ptr<DirLock>> second = DirLock::Acquire(s / "models");
  REQUIRE_FALSE(second.ok());
  CHECK(IsLockHeld(second.status()));
  CHECK(second.status().message().find("(pid " + std::to_string(getpid()) + ")") != std::string::npos);
  first.value().reset();
  CHECK(DirLock::Acquire(s / "models").ok());
}
