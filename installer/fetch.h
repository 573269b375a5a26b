// Fetch: downloads one pinned file (size + SHA-256 known in advance) from a Hugging
// Face style URL with libcurl, resumable and verified:
//   - the resolve URL <endpoint>/<repo>/resolve/<revision>/<file> is asked first without
//     following redirects; X-Linked-Size / X-Linked-Etag of that un-redirected answer are
//     checked against the manifest, and its Location (the CDN) is where bytes come from;
//   - HF_TOKEN goes as a bearer token to the endpoint's host only (never to the CDN,
//     never printed or logged);
//   - bytes go to FILE.part in closed Range chunks; a run resumes from FILE.part after
//     hashing it once; SHA-256 is computed as bytes arrive (no second pass);
//   - network errors and 5xx are retried with capped exponential backoff, 429 waits for
//     Retry-After, 403/410 from the CDN (expired signed URL) re-resolves the URL;
//   - success is fsync + atomic rename to FILE; a SHA-256 mismatch moves the file to
//     FILE.bad and fails; a complete FILE already in place is verified once and reused.
// file:// URLs (the demo model) go through the same code path, without the resolve step.
//
// Test hooks (environment): DS4_FETCH_CHUNK_BYTES, DS4_FETCH_INITIAL_BACKOFF,
// DS4_FETCH_MAX_BACKOFF, DS4_FETCH_MAX_ATTEMPTS, DS4_FETCH_STALL_SECONDS (see
// RetryPolicyFromEnv).
//
// Thread-safety: FetchFile may run on several threads for different destinations.
#pragma once

#include <cstdint>
#include <string>

#include "status.h"
#include "ui.h"

namespace ds4setup {

struct RetryPolicy {
  int max_attempts = 10;                  // consecutive failures without progress
  double initial_backoff_seconds = 1.0;   // doubles after each failure...
  double max_backoff_seconds = 60.0;      // ...up to this
  double max_retry_after_seconds = 900.0; // longest Retry-After honoured as is
  int max_reresolves = 50;                // 403/410 answers that trigger a new resolve
  long stall_seconds = 60;                // a request slower than 1 KiB/s this long is retried
  long connect_timeout_seconds = 30;
};

// Defaults, overridden by the DS4_FETCH_* environment variables when set.
RetryPolicy RetryPolicyFromEnv();
uint64_t ChunkBytesFromEnv();  // default 128 MiB

struct FetchRequest {
  std::string url;              // resolve URL (https://...) or file:// URL
  std::string dest;             // final path; FILE.part and FILE.bad live beside it
  uint64_t expected_bytes = 0;
  std::string expected_sha256;  // lower-case hex
  std::string token;            // bearer token for the endpoint host ("" = none)
  std::string label;            // shown with progress, e.g. the model name
  uint64_t chunk_bytes = 128ull << 20;
  RetryPolicy retry;
};

enum class FetchFailure {
  kNone,
  kNetwork,    // retries exhausted, or the server refused for good (401/404/...)
  kChecksum,   // the bytes (or the hub's X-Linked-*) do not match the manifest
  kDiskSpace,  // not enough free space for what is left to download
  kLocal,      // the local filesystem failed (cannot write, rename, ...)
};

struct FetchStats {
  uint64_t bytes_received = 0;   // body bytes received over the network in this run
  uint64_t bytes_reused = 0;     // bytes already on disk that were kept
  int retries = 0;
  int reresolves = 0;
  bool already_complete = false; // FILE was in place and verified
};

struct FetchOutcome {
  Status status;
  FetchFailure failure = FetchFailure::kNone;
  FetchStats stats;
};

FetchOutcome FetchFile(const FetchRequest& request, Ui* ui);

// Verifies `source` (size, then SHA-256) and puts it at `dest`: a hard link when both
// are on one filesystem, else a copy hashed while it is written. The source is left as is.
FetchOutcome AdoptFile(const std::string& source, const FetchRequest& request, Ui* ui);

// Parses a Retry-After value (delta-seconds or an HTTP date); -1 when unusable.
double ParseRetryAfter(const std::string& value, long long now_epoch_seconds);

// Backoff before attempt `failures` (1-based): initial * 2^(failures-1), capped.
double BackoffSeconds(const RetryPolicy& policy, int failures);

}  // namespace ds4setup
