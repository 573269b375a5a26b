// HttpCheck: the few HTTP calls ds4-setup makes to the ds4 server it installed (wait for
// GET /v1/models, POST /v1/chat/completions for the smoke check), and local port checks.
// Plain libcurl; only for local endpoints (no proxy, no redirects).
//
// Thread-safety: every function is independent; safe from any thread once
// curl_global_init has run (HttpRequest calls it once).
#pragma once

#include <string>
#include <sys/types.h>

#include "status.h"

namespace ds4setup {

struct HttpReply {
  long code = 0;     // HTTP status
  std::string body;
};

// One request; an error Status when no HTTP answer came (refused, timed out).
Result<HttpReply> HttpRequest(const std::string& method, const std::string& url,
                              const std::string& json_body, double timeout_seconds);

// "http://127.0.0.1:8000" for the address a server binds: a wildcard bind (0.0.0.0, ::)
// is reached through loopback; IPv6 literals get brackets.
std::string BaseUrl(const std::string& host, int port);

// Polls GET /v1/models until it answers 200 (503 means "still loading"). Fails after
// `timeout_seconds`, or as soon as process `pid` (when > 0) has exited, quoting the last
// lines of `log_path` (when set).
Status WaitForServer(const std::string& host, int port, double timeout_seconds, pid_t pid = 0,
                     const std::string& log_path = "");

// OK when nothing listens on host:port (it can be bound); else an error naming the
// port and the flag that changes it.
Status CheckPortFree(const std::string& host, int port);

// A TCP port on 127.0.0.1 that was free a moment ago.
Result<int> PickFreePort();

// The last `count` lines of a text file ("" when unreadable).
std::string TailOfFile(const std::string& path, size_t count);

}  // namespace ds4setup
