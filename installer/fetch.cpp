#include "fetch.h"

#include <curl/curl.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <map>
#include <mutex>
#include <thread>
#include <vector>

#include "doctor.h"
#include "host_probe.h"
#include "progress.h"
#include "sha256.h"

#ifndef DS4_VERSION
#define DS4_VERSION "dev"
#endif

namespace ds4setup {
namespace {

constexpr int kMaxRedirects = 10;

void GlobalInit() {
  static std::once_flag once;
  std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
}

std::string Lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

std::string Trim(const std::string& s) {
  size_t b = s.find_first_not_of(" \t\r\n");
  if (b == std::string::npos) return "";
  size_t e = s.find_last_not_of(" \t\r\n");
  return s.substr(b, e - b + 1);
}

bool IsFileUrl(const std::string& url) { return url.rfind("file://", 0) == 0; }

// scheme://host[:port] of a URL, lower-cased; "" when it has none.
std::string Origin(const std::string& url) {
  size_t scheme = url.find("://");
  if (scheme == std::string::npos) return "";
  size_t end = url.find_first_of("/?#", scheme + 3);
  return Lower(url.substr(0, end));
}

// The URL without its query string (signed CDN URLs carry credentials there).
std::string ShortUrl(const std::string& url) { return url.substr(0, url.find('?')); }

std::string HumanSeconds(double s) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.1f s", s);
  return buf;
}

// Headers of the last response (reset at each status line, so redirect hops and
// interim responses do not mix).
struct Headers {
  std::map<std::string, std::string> values;  // lower-case name -> value
  std::string Get(const std::string& name) const {
    auto it = values.find(name);
    return it == values.end() ? "" : it->second;
  }
};

size_t OnHeader(char* data, size_t size, size_t count, void* user) {
  auto* headers = static_cast<Headers*>(user);
  std::string line(data, size * count);
  if (line.rfind("HTTP/", 0) == 0) {
    headers->values.clear();
  } else {
    size_t colon = line.find(':');
    if (colon != std::string::npos)
      headers->values[Lower(Trim(line.substr(0, colon)))] = Trim(line.substr(colon + 1));
  }
  return size * count;
}

// Common settings for every request.
CURL* NewHandle(const RetryPolicy& policy, Headers* headers) {
  CURL* curl = curl_easy_init();
  curl_easy_setopt(curl, CURLOPT_USERAGENT, "ds4-setup/" DS4_VERSION);
  curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT, policy.connect_timeout_seconds);
  curl_easy_setopt(curl, CURLOPT_LOW_SPEED_LIMIT, 1024L);
  curl_easy_setopt(curl, CURLOPT_LOW_SPEED_TIME, policy.stall_seconds);
  curl_easy_setopt(curl, CURLOPT_TCP_KEEPALIVE, 1L);
  curl_easy_setopt(curl, CURLOPT_HEADERFUNCTION, OnHeader);
  curl_easy_setopt(curl, CURLOPT_HEADERDATA, headers);
  curl_easy_setopt(curl, CURLOPT_PROTOCOLS_STR, "http,https,file");
  return curl;
}

struct SlistDeleter {
  void operator()(curl_slist* list) const { curl_slist_free_all(list); }
};
using HeaderList = std::unique_ptr<curl_slist, SlistDeleter>;

HeaderList AuthHeader(const std::string& token) {
  if (token.empty()) return HeaderList();
  std::string header = "Authorization: Bearer " + token;
  return HeaderList(curl_slist_append(nullptr, header.c_str()));
}

// What one request attempt ended with.
enum class Verdict { kOk, kRetry, kRateLimited, kReresolve, kFatal };

struct Attempt {
  Verdict verdict = Verdict::kOk;
  std::string error;         // what went wrong, for messages
  double retry_after = -1;   // seconds from Retry-After, when given
};

Attempt ClassifyHttp(long code, const Headers& headers, const std::string& what) {
  Attempt a;
  std::string status = "HTTP " + std::to_string(code);
  if (code == 429) {
    a.verdict = Verdict::kRateLimited;
    a.error = what + ": " + status + " (rate limited)";
    a.retry_after = ParseRetryAfter(headers.Get("retry-after"), std::time(nullptr));
  } else if (code >= 500 || code == 408) {
    a.verdict = Verdict::kRetry;
    a.error = what + ": " + status;
    a.retry_after = ParseRetryAfter(headers.Get("retry-after"), std::time(nullptr));
  } else {
    a.verdict = Verdict::kFatal;
    a.error = what + ": " + status;
  }
  return a;
}

Attempt ClassifyCurl(CURLcode rc, const char* error_buffer, const std::string& what) {
  Attempt a;
  std::string detail = error_buffer && error_buffer[0] ? error_buffer : curl_easy_strerror(rc);
  a.error = what + ": " + detail;
  switch (rc) {
    case CURLE_UNSUPPORTED_PROTOCOL:
    case CURLE_URL_MALFORMAT:
    case CURLE_FILE_COULDNT_READ_FILE:
    case CURLE_REMOTE_FILE_NOT_FOUND:
    case CURLE_TOO_MANY_REDIRECTS:
      a.verdict = Verdict::kFatal;
      break;
    default:
      a.verdict = Verdict::kRetry;  // connection refused/reset, timeouts, short reads, TLS...
  }
  return a;
}

// Where the bytes come from, learned from the un-redirected resolve answer.
struct Resolved {
  std::string data_url;
  bool send_token = false;  // data_url is on the endpoint's own host
};

// Follows the resolve URL's redirects by hand: the first answer's X-Linked-* headers are
// checked against the manifest, and the token only goes to the endpoint's host.
Attempt Resolve(const FetchRequest& request, Resolved* out, Ui* ui) {
  if (IsFileUrl(request.url)) {
    out->data_url = request.url;
    out->send_token = false;
    return Attempt();
  }
  const std::string home = Origin(request.url);
  std::string url = request.url;
  bool linked_unchecked = true;
  for (int hop = 0; hop <= kMaxRedirects; ++hop) {
    Headers headers;
    CURL* curl = NewHandle(request.retry, &headers);
    char error_buffer[CURL_ERROR_SIZE] = {0};
    curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, error_buffer);
    curl_easy_setopt(curl, CURLOPT_URL, url.c_str());
    curl_easy_setopt(curl, CURLOPT_NOBODY, 1L);
    curl_easy_setopt(curl, CURLOPT_FOLLOWLOCATION, 0L);
    bool same_host = Origin(url) == home;
    HeaderList auth = same_host ? AuthHeader(request.token) : HeaderList();
    if (auth) curl_easy_setopt(curl, CURLOPT_HTTPHEADER, auth.get());
    CURLcode rc = curl_easy_perform(curl);
    long code = 0;
    char* location = nullptr;
    curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &code);
    curl_easy_getinfo(curl, CURLINFO_REDIRECT_URL, &location);
    std::string next = location ? location : "";
    curl_easy_cleanup(curl);
    const std::string what = "resolving " + ShortUrl(url);
    if (rc != CURLE_OK) return ClassifyCurl(rc, error_buffer, what);

    std::string linked_size = headers.Get("x-linked-size");
    std::string linked_etag = headers.Get("x-linked-etag");
    if (linked_unchecked && (!linked_size.empty() || !linked_etag.empty())) {
      linked_unchecked = false;  // the un-redirected answer that carries them (HF may first move a renamed repo)
      linked_etag.erase(std::remove(linked_etag.begin(), linked_etag.end(), '"'), linked_etag.end());
      if (linked_etag.rfind("W/", 0) == 0) linked_etag = linked_etag.substr(2);
      ui->Log("resolve " + ShortUrl(url) + ": HTTP " + std::to_string(code) + " X-Linked-Size=" +
              (linked_size.empty() ? "-" : linked_size) + " X-Linked-Etag=" +
              (linked_etag.empty() ? "-" : linked_etag));
      if (!linked_size.empty() && linked_size != std::to_string(request.expected_bytes)) {
        Attempt a;
        a.verdict = Verdict::kFatal;
        a.error = "the hub says " + ShortUrl(request.url) + " is " + linked_size +
                  " bytes (X-Linked-Size) but the manifest pins " +
                  std::to_string(request.expected_bytes) +
                  " bytes: that revision holds different bytes; try another --revision";
        return a;
      }
      if (linked_etag.size() == 64 && Lower(linked_etag) != request.expected_sha256) {
        Attempt a;
        a.verdict = Verdict::kFatal;
        a.error = "the hub says " + ShortUrl(request.url) + " has SHA-256 " + linked_etag +
                  " (X-Linked-Etag) but the manifest pins " + request.expected_sha256 +
                  ": that revision holds different bytes; try another --revision";
        return a;
      }
    }
    if (code >= 300 && code < 400 && !next.empty()) {
      ui->Log("redirect " + ShortUrl(url) + " -> " + ShortUrl(next));
      if (Origin(next) != home) {  // the CDN: bytes come from there, without the token
        out->data_url = next;
        out->send_token = false;
        return Attempt();
      }
      url = next;  // a move within the hub (renamed repo, resolve cache): follow it
      continue;
    }
    if (code == 200 || code == 206) {
      out->data_url = url;
      out->send_token = Origin(url) == home;
      return Attempt();
    }
    Attempt a = ClassifyHttp(code, headers, what);
    if (code == 401 || code == 403)
      a.error += ": access denied; if the repo is gated or private, set HF_TOKEN to a token "
                 "that can read it";
    if (code == 404) a.error += ": not found; check the repo, the file name and --revision";
    return a;
  }
  Attempt a;
  a.verdict = Verdict::kFatal;
  a.error = "resolving " + ShortUrl(request.url) + ": more than " + std::to_string(kMaxRedirects) +
            " redirects";
  return a;
}

// The open .part file with its running hash.
struct PartFile {
  int fd = -1;
  std::string path;
  uint64_t size = 0;  // bytes in the file (all of them hashed)
  Sha256 hash;
};

// State shared with the write callback for one Range request.
struct ChunkSink {
  PartFile* part;
  Progress* progress;
  CURL* curl;
  uint64_t start;          // offset requested
  uint64_t end_inclusive;  // last byte requested
  uint64_t expected_total;
  bool http;               // false for file://
  bool checked = false;    // response status validated
  long bad_code = 0;       // a non-206 answer whose body was refused
  std::string error;       // a local or protocol failure that aborted the transfer
  uint64_t received = 0;
};

bool CheckChunkStart(ChunkSink* sink, const Headers& headers) {
  if (!sink->http) return true;
  long code = 0;
  curl_easy_getinfo(sink->curl, CURLINFO_RESPONSE_CODE, &code);
  if (code == 206) {
    // Content-Range: bytes START-END/TOTAL must start where the file ends.
    std::string range = headers.Get("content-range");
    unsigned long long start = 0, end = 0, total = 0;
    if (std::sscanf(range.c_str(), "bytes %llu-%llu/%llu", &start, &end, &total) == 3) {
      if (start != sink->start) {
        sink->error = "server answered range starting at " + std::to_string(start) +
                      " for a request starting at " + std::to_string(sink->start);
        return false;
      }
      if (total != sink->expected_total) {
        sink->error = "server says the file is " + std::to_string(total) +
                      " bytes (Content-Range) but the manifest pins " +
                      std::to_string(sink->expected_total);
        return false;
      }
    }
    return true;
  }
  if (code == 200 && sink->start == 0 && sink->end_inclusive + 1 == sink->expected_total)
    return true;  // whole file in one answer: fine
  sink->bad_code = code;
  return false;
}

struct ChunkContext {
  ChunkSink sink;
  Headers headers;
};

size_t OnBody(char* data, size_t size, size_t count, void* user) {
  auto* context = static_cast<ChunkContext*>(user);
  ChunkSink* sink = &context->sink;
  size_t bytes = size * count;
  if (!sink->checked) {
    if (!CheckChunkStart(sink, context->headers)) return 0;
    sink->checked = true;
  }
  uint64_t room = sink->end_inclusive + 1 - sink->part->size;
  if (bytes > room) {
    sink->error = "server sent more bytes than the range asked for";
    return 0;
  }
  size_t written = 0;
  while (written < bytes) {
    ssize_t n = ::write(sink->part->fd, data + written, bytes - written);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      sink->error = "cannot write " + sink->part->path + ": " + std::strerror(errno);
      return 0;
    }
    written += static_cast<size_t>(n);
  }
  sink->part->hash.Update(data, bytes);
  sink->part->size += bytes;
  sink->received += bytes;
  sink->progress->Update(sink->part->size);
  return bytes;
}

// Downloads [part->size, end_inclusive] from `resolved`, appending to the part file.
Attempt GetChunk(const FetchRequest& request, const Resolved& resolved, uint64_t end_inclusive,
                 PartFile* part, Progress* progress, uint64_t* received) {
  ChunkContext context;
  CURL* curl = NewHandle(request.retry, &context.headers);
  context.sink = ChunkSink{part, progress, curl, part->size, end_inclusive,
                           request.expected_bytes, !IsFileUrl(resolved.data_url), false, 0, "", 0};
  char error_buffer[CURL_ERROR_SIZE] = {0};
  curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, error_buffer);
  curl_easy_setopt(curl, CURLOPT_URL, resolved.data_url.c_str());
  curl_easy_setopt(curl, CURLOPT_FOLLOWLOCATION, 1L);
  curl_easy_setopt(curl, CURLOPT_MAXREDIRS, static_cast<long>(kMaxRedirects));
  std::string range = std::to_string(part->size) + "-" + std::to_string(end_inclusive);
  curl_easy_setopt(curl, CURLOPT_RANGE, range.c_str());
  curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, OnBody);
  curl_easy_setopt(curl, CURLOPT_WRITEDATA, &context);
  HeaderList auth = resolved.send_token ? AuthHeader(request.token) : HeaderList();
  if (auth) curl_easy_setopt(curl, CURLOPT_HTTPHEADER, auth.get());
  CURLcode rc = curl_easy_perform(curl);
  long code = 0;
  curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &code);
  curl_easy_cleanup(curl);
  *received = context.sink.received;

  const std::string what = "bytes " + range + " of " + ShortUrl(resolved.data_url);
  if (!context.sink.error.empty()) {
    Attempt a;
    a.verdict = context.sink.error.rfind("cannot write", 0) == 0 ? Verdict::kFatal : Verdict::kRetry;
    a.error = what + ": " + context.sink.error;
    return a;
  }
  if (context.sink.bad_code || (rc == CURLE_OK && context.sink.http && code != 206 && code != 200)) {
    long bad = context.sink.bad_code ? context.sink.bad_code : code;
    if (bad == 403 || bad == 410) {
      Attempt a;
      a.verdict = resolved.data_url == request.url ? Verdict::kFatal : Verdict::kReresolve;
      a.error = what + ": HTTP " + std::to_string(bad) + " (signed URL expired?)";
      return a;
    }
    if (bad == 200) {
      Attempt a;
      a.verdict = Verdict::kFatal;
      a.error = what + ": the server ignored the Range request (HTTP 200)";
      return a;
    }
    return ClassifyHttp(bad, context.headers, what);
  }
  if (rc != CURLE_OK) return ClassifyCurl(rc, error_buffer, what);
  if (part->size != end_inclusive + 1) {
    Attempt a;
    a.verdict = Verdict::kRetry;
    a.error = what + ": the answer ended early at byte " + std::to_string(part->size);
    return a;
  }
  return Attempt();
}

Status SyncDirectory(const std::string& file_path) {
  std::string dir = file_path.substr(0, file_path.find_last_of('/') + 1);
  if (dir.empty()) dir = ".";
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return Status::Error("cannot open directory " + dir + ": " + std::strerror(errno));
  ::fsync(fd);
  ::close(fd);
  return Status::Ok();
}

bool FileSize(const std::string& path, uint64_t* size) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) return false;
  *size = static_cast<uint64_t>(st.st_size);
  return true;
}

FetchOutcome Fail(FetchFailure failure, const std::string& message, const FetchStats& stats) {
  FetchOutcome outcome;
  outcome.failure = failure;
  outcome.status = Status::Error(message);
  outcome.stats = stats;
  return outcome;
}

// Moves `path` aside to `bad_path` (replacing an older one). Returns a note for messages.
std::string SetAside(const std::string& path, const std::string& bad_path) {
  if (std::rename(path.c_str(), bad_path.c_str()) != 0)
    return "could not move it to " + bad_path + ": " + std::strerror(errno);
  return "moved to " + bad_path;
}

// A complete FILE already in place: verify it once. Returns true when it is good.
bool VerifyExisting(const FetchRequest& request, Ui* ui, FetchStats* stats) {
  uint64_t size = 0;
  if (!FileSize(request.dest, &size)) return false;
  if (size != request.expected_bytes) {
    ui->Warning(request.dest + " is " + std::to_string(size) + " bytes, expected " +
                std::to_string(request.expected_bytes) + "; " +
                SetAside(request.dest, request.dest + ".bad") + ", downloading again");
    return false;
  }
  ui->Info("Verifying " + request.dest + " (already in place)");
  Sha256 hash;
  Progress progress(ui, request.label + " verify", size, 0);
  Status read = HashFilePrefix(request.dest, size, &hash,
                               [&](uint64_t done) { progress.Update(done); });
  progress.Finish();
  if (!read.ok()) {
    ui->Warning(read.message() + "; downloading again");
    return false;
  }
  std::string digest = hash.FinalHex();
  if (digest != request.expected_sha256) {
    ui->Warning(request.dest + " has SHA-256 " + digest + ", expected " + request.expected_sha256 +
                "; " + SetAside(request.dest, request.dest + ".bad") + ", downloading again");
    return false;
  }
  stats->already_complete = true;
  stats->bytes_reused = size;
  ui->Info(request.dest + " is complete and verified; reusing it");
  return true;
}

// Opens FILE.part for appending and hashes what it already holds (once).
Status OpenPart(const FetchRequest& request, Ui* ui, PartFile* part, FetchStats* stats) {
  part->path = request.dest + ".part";
  uint64_t size = 0;
  if (FileSize(part->path, &size) && size > request.expected_bytes) {
    ui->Warning(part->path + " is " + std::to_string(size) + " bytes, longer than the " +
                std::to_string(request.expected_bytes) + " the file should have; " +
                SetAside(part->path, part->path + ".bad") + ", starting over");
    size = 0;
  }
  part->fd = ::open(part->path.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
  if (part->fd < 0) return Status::Error("cannot open " + part->path + ": " + std::strerror(errno));
  if (size > 0) {
    ui->Info("Resuming " + request.label + " from " + HumanBytes(size) + " (" + part->path +
             "); checking the bytes already there");
    Progress progress(ui, request.label + " rehash", size, 0);
    DS4_RETURN_IF_ERROR(HashFilePrefix(part->path, size, &part->hash,
                                       [&](uint64_t done) { progress.Update(done); }));
    progress.Finish();
  }
  if (::lseek(part->fd, static_cast<off_t>(size), SEEK_SET) < 0 ||
      ::ftruncate(part->fd, static_cast<off_t>(size)) != 0)
    return Status::Error("cannot position " + part->path + ": " + std::strerror(errno));
  part->size = size;
  stats->bytes_reused = size;
  return Status::Ok();
}

// Sleeps before the next attempt and says why.
void WaitBeforeRetry(const RetryPolicy& policy, const Attempt& attempt, int failures, Ui* ui) {
  double wait = BackoffSeconds(policy, failures);
  std::string why = "backoff";
  if (attempt.retry_after >= 0) {
    wait = std::min(attempt.retry_after, policy.max_retry_after_seconds);
    why = "Retry-After";
  }
  ui->Warning(attempt.error + "; retrying in " + HumanSeconds(wait) + " (" + why + ", attempt " +
              std::to_string(failures + 1) + " of " + std::to_string(policy.max_attempts) + ")");
  std::this_thread::sleep_for(std::chrono::duration<double>(wait));
}

// Checks size and digest of the finished part file and renames it into place.
FetchOutcome Finalize(const FetchRequest& request, PartFile* part, Ui* ui, FetchStats stats) {
  if (::fsync(part->fd) != 0)
    return Fail(FetchFailure::kLocal, "cannot fsync " + part->path + ": " + std::strerror(errno), stats);
  ::close(part->fd);
  part->fd = -1;
  std::string digest = part->hash.FinalHex();
  if (digest != request.expected_sha256) {
    std::string note = SetAside(part->path, request.dest + ".bad");
    return Fail(FetchFailure::kChecksum,
                "SHA-256 mismatch for " + request.dest + ": expected " + request.expected_sha256 +
                    ", got " + digest + " (" + note +
                    "). The download was corrupted or this revision holds different bytes; "
                    "run again to download it afresh",
                stats);
  }
  if (std::rename(part->path.c_str(), request.dest.c_str()) != 0)
    return Fail(FetchFailure::kLocal, "cannot rename " + part->path + " to " + request.dest + ": " +
                                          std::strerror(errno), stats);
  Status synced = SyncDirectory(request.dest);
  if (!synced.ok()) ui->Warning(synced.message());
  FetchOutcome outcome;
  outcome.stats = stats;
  return outcome;
}

FetchOutcome Download(const FetchRequest& request, Ui* ui, PartFile* part) {
  FetchStats stats;
  Status opened = OpenPart(request, ui, part, &stats);
  if (!opened.ok()) return Fail(FetchFailure::kLocal, opened.message(), stats);

  uint64_t remaining = request.expected_bytes - part->size;
  std::string dir = request.dest.substr(0, request.dest.find_last_of('/') + 1);
  Result<uint64_t> free_bytes = FreeDiskBytes(dir.empty() ? "." : dir);
  if (free_bytes.ok() && *free_bytes < remaining) {
    return Fail(FetchFailure::kDiskSpace,
                "not enough free space for " + request.dest + ": " + HumanBytes(remaining) +
                    " still to download, " + HumanBytes(*free_bytes) + " free in " + dir +
                    "; free some space or choose another --models-dir",
                stats);
  }

  const RetryPolicy& policy = request.retry;
  Resolved resolved;
  bool have_source = false;
  int failures = 0;
  Progress progress(ui, request.label, request.expected_bytes, part->size);
  if (remaining > 0)
    ui->Info("Downloading " + request.label + ": " + HumanBytes(remaining) + " from " +
             ShortUrl(request.url));
  while (part->size < request.expected_bytes) {
    Attempt attempt;
    uint64_t received = 0;
    if (!have_source) {
      attempt = Resolve(request, &resolved, ui);
      have_source = attempt.verdict == Verdict::kOk;
    } else {
      uint64_t end = std::min(part->size + request.chunk_bytes, request.expected_bytes) - 1;
      attempt = GetChunk(request, resolved, end, part, &progress, &received);
      stats.bytes_received += received;
    }
    if (attempt.verdict == Verdict::kOk) {
      if (received > 0) ::fdatasync(part->fd);
      failures = 0;
      continue;
    }
    ui->Log(attempt.error);
    if (attempt.verdict == Verdict::kFatal) {
      progress.Finish();
      bool mismatch = attempt.error.find("manifest pins") != std::string::npos;
      return Fail(mismatch ? FetchFailure::kChecksum : FetchFailure::kNetwork, attempt.error, stats);
    }
    if (attempt.verdict == Verdict::kReresolve) {
      if (++stats.reresolves > policy.max_reresolves) {
        progress.Finish();
        return Fail(FetchFailure::kNetwork, attempt.error + "; gave up after " +
                                                std::to_string(policy.max_reresolves) + " re-resolves",
                    stats);
      }
      ui->Warning(attempt.error + "; resolving the URL again");
      have_source = false;
      continue;
    }
    if (received > 0) failures = 0;  // progress was made: the budget starts over
    if (++failures >= policy.max_attempts) {
      progress.Finish();
      return Fail(FetchFailure::kNetwork,
                  attempt.error + "; gave up after " + std::to_string(failures) +
                      " attempts in a row without progress (" + part->path +
                      " is kept: run again to resume)",
                  stats);
    }
    ++stats.retries;
    WaitBeforeRetry(policy, attempt, failures, ui);
  }
  progress.Finish();
  return Finalize(request, part, ui, stats);
}

}  // namespace

RetryPolicy RetryPolicyFromEnv() {
  RetryPolicy policy;
  auto number = [](const char* name, double fallback) {
    const char* value = std::getenv(name);
    if (!value || !*value) return fallback;
    char* end = nullptr;
    double parsed = std::strtod(value, &end);
    return (end && *end == '\0' && parsed >= 0) ? parsed : fallback;
  };
  policy.initial_backoff_seconds = number("DS4_FETCH_INITIAL_BACKOFF", policy.initial_backoff_seconds);
  policy.max_backoff_seconds = number("DS4_FETCH_MAX_BACKOFF", policy.max_backoff_seconds);
  policy.max_attempts = static_cast<int>(number("DS4_FETCH_MAX_ATTEMPTS", policy.max_attempts));
  policy.stall_seconds = static_cast<long>(number("DS4_FETCH_STALL_SECONDS", policy.stall_seconds));
  if (policy.max_attempts < 1) policy.max_attempts = 1;
  if (policy.stall_seconds < 1) policy.stall_seconds = 1;
  return policy;
}

uint64_t ChunkBytesFromEnv() {
  const char* value = std::getenv("DS4_FETCH_CHUNK_BYTES");
  if (value && *value) {
    unsigned long long parsed = std::strtoull(value, nullptr, 10);
    if (parsed > 0) return parsed;
  }
  return 128ull << 20;
}

double ParseRetryAfter(const std::string& value, long long now_epoch_seconds) {
  std::string v = Trim(value);
  if (v.empty()) return -1;
  if (std::all_of(v.begin(), v.end(), [](char c) { return std::isdigit(static_cast<unsigned char>(c)); }))
    return std::strtod(v.c_str(), nullptr);
  time_t when = curl_getdate(v.c_str(), nullptr);
  if (when < 0) return -1;
  return std::max(0.0, static_cast<double>(when - now_epoch_seconds));
}

double BackoffSeconds(const RetryPolicy& policy, int failures) {
  double wait = policy.initial_backoff_seconds * std::pow(2.0, std::max(0, failures - 1));
  return std::min(wait, policy.max_backoff_seconds);
}

FetchOutcome FetchFile(const FetchRequest& request, Ui* ui) {
  GlobalInit();
  ui->AddSecret(request.token);
  FetchStats stats;
  if (request.expected_bytes == 0 || request.expected_sha256.size() != 64)
    return Fail(FetchFailure::kLocal, "fetch " + request.dest + ": no pinned size and SHA-256", stats);
  if (VerifyExisting(request, ui, &stats)) {
    FetchOutcome outcome;
    outcome.stats = stats;
    return outcome;
  }
  PartFile part;
  FetchOutcome outcome = Download(request, ui, &part);
  if (part.fd >= 0) ::close(part.fd);
  return outcome;
}

FetchOutcome AdoptFile(const std::string& source, const FetchRequest& request, Ui* ui) {
  FetchStats stats;
  uint64_t size = 0;
  if (!FileSize(source, &size))
    return Fail(FetchFailure::kLocal, "--adopt " + source + ": not a readable regular file", stats);
  if (size != request.expected_bytes)
    return Fail(FetchFailure::kChecksum,
                "--adopt " + source + ": it is " + std::to_string(size) + " bytes, but " +
                    request.label + " is " + std::to_string(request.expected_bytes) + " bytes",
                stats);
  std::error_code same_ec;
  if (std::filesystem::equivalent(source, request.dest, same_ec))  // already in place
    return FetchFile(request, ui);
  std::string part_path = request.dest + ".part";
  std::remove(part_path.c_str());
  bool linked = ::link(source.c_str(), part_path.c_str()) == 0;
  ui->Info("Adopting " + source + (linked ? " (hard link)" : " (copy)") + ": verifying");
  Sha256 hash;
  Progress progress(ui, request.label + " verify", size, 0);
  if (linked) {
    Status read = HashFilePrefix(part_path, size, &hash, [&](uint64_t d) { progress.Update(d); });
    if (!read.ok()) {
      std::remove(part_path.c_str());
      return Fail(FetchFailure::kLocal, read.message(), stats);
    }
    progress.Finish();
    std::string digest = hash.FinalHex();
    if (digest != request.expected_sha256) {
      std::remove(part_path.c_str());  // only our link; the user's file stays where it was
      return Fail(FetchFailure::kChecksum,
                  "--adopt " + source + ": SHA-256 " + digest + " does not match " +
                      request.label + "'s " + request.expected_sha256 + "; the file was not used",
                  stats);
    }
    if (std::rename(part_path.c_str(), request.dest.c_str()) != 0)
      return Fail(FetchFailure::kLocal, "cannot rename " + part_path + " to " + request.dest, stats);
    SyncDirectory(request.dest);
    stats.bytes_reused = size;
    FetchOutcome outcome;
    outcome.stats = stats;
    return outcome;
  }
  // Another filesystem: copy through the same .part + hash + rename path as a download.
  FetchRequest copy = request;
  std::error_code ec;
  copy.url = "file://" + std::filesystem::absolute(source, ec).string();
  PartFile part;
  FetchOutcome outcome = Download(copy, ui, &part);
  if (part.fd >= 0) ::close(part.fd);
  return outcome;
}

}  // namespace ds4setup
