#include "http_check.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <deque>
#include <fstream>
#include <mutex>
#include <thread>

#include <curl/curl.h>

#include "proc.h"

namespace ds4setup {
namespace {

size_t AppendBody(char* data, size_t size, size_t count, void* user) {
  static_cast<std::string*>(user)->append(data, size * count);
  return size * count;
}

bool ProcessAlive(pid_t pid) {
  if (pid <= 0) return true;
  if (waitpid(pid, nullptr, WNOHANG) == pid) return false;
  if (kill(pid, 0) != 0) return false;
  std::ifstream stat_file("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (std::getline(stat_file, line)) {
    size_t paren = line.rfind(')');
    if (paren != std::string::npos && paren + 2 < line.size() && line[paren + 2] == 'Z') return false;
  }
  return true;
}

}  // namespace

Result<HttpReply> HttpRequest(const std::string& method, const std::string& url,
                              const std::string& json_body, double timeout_seconds) {
  static std::once_flag init_once;
  std::call_once(init_once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
  CURL* curl = curl_easy_init();
  if (curl == nullptr) return Status::Error("libcurl: cannot create a handle");
  HttpReply reply;
  char error[CURL_ERROR_SIZE] = {0};
  struct curl_slist* headers = nullptr;
  curl_easy_setopt(curl, CURLOPT_URL, url.c_str());
  curl_easy_setopt(curl, CURLOPT_NOPROXY, "*");
  curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, error);
  curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, static_cast<long>(timeout_seconds * 1000));
  curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT_MS, 5000L);
  curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, AppendBody);
  curl_easy_setopt(curl, CURLOPT_WRITEDATA, &reply.body);
  if (method == "POST") {
    headers = curl_slist_append(headers, "Content-Type: application/json");
    curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(curl, CURLOPT_POSTFIELDS, json_body.c_str());
    curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE, static_cast<long>(json_body.size()));
  }
  CURLcode code = curl_easy_perform(curl);
  curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &reply.code);
  curl_slist_free_all(headers);
  curl_easy_cleanup(curl);
  if (code != CURLE_OK) {
    return Status::Error(method + " " + url + ": " + (error[0] ? error : curl_easy_strerror(code)));
  }
  return reply;
}

std::string BaseUrl(const std::string& host, int port) {
  std::string connect = host;
  if (host.empty() || host == "0.0.0.0") connect = "127.0.0.1";
  if (host == "::" || host == "[::]") connect = "::1";
  if (connect.find(':') != std::string::npos && connect.front() != '[') connect = "[" + connect + "]";
  return "http://" + connect + ":" + std::to_string(port);
}

std::string TailOfFile(const std::string& path, size_t count) {
  std::ifstream file(path);
  std::deque<std::string> lines;
  for (std::string line; std::getline(file, line);) {
    lines.push_back(line);
    if (lines.size() > count) lines.pop_front();
  }
  std::string tail;
  for (const std::string& line : lines) tail += line + "\n";
  return tail;
}

Status WaitForServer(const std::string& host, int port, double timeout_seconds, pid_t pid,
                     const std::string& log_path) {
  const std::string url = BaseUrl(host, port) + "/v1/models";
  auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_seconds);
  std::string last = "no answer yet";
  while (true) {
    Result<HttpReply> reply = HttpRequest("GET", url, "", 10);
    if (reply.ok() && reply->code == 200) return Status::Ok();
    if (reply.ok()) {
      last = "HTTP " + std::to_string(reply->code) + (reply->code == 503 ? " (still loading)" : "");
    } else {
      last = reply.status().message();
    }
    if (!ProcessAlive(pid)) {
      std::string tail = log_path.empty() ? "" : TailOfFile(log_path, 20);
      return Status::Error("the server (pid " + std::to_string(pid) + ") exited before " + url +
                           " answered" + (tail.empty() ? "" : "; last lines of " + log_path + ":\n" + tail));
    }
    if (std::chrono::steady_clock::now() >= deadline) {
      return Status::Error(url + " did not answer 200 within " +
                           std::to_string(static_cast<int>(timeout_seconds)) + " s (last: " + last + ")");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(250));
  }
}

Status CheckPortFree(const std::string& host, int port) {
  struct addrinfo hints {};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  struct addrinfo* addresses = nullptr;
  std::string bind_host = host;
  if (bind_host.size() > 2 && bind_host.front() == '[') bind_host = bind_host.substr(1, bind_host.size() - 2);
  int rc = getaddrinfo(bind_host.c_str(), std::to_string(port).c_str(), &hints, &addresses);
  if (rc != 0) return Status::Error("cannot resolve --host '" + host + "': " + gai_strerror(rc));
  Status result = Status::Ok();
  for (struct addrinfo* a = addresses; a != nullptr; a = a->ai_next) {
    int fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
    if (fd < 0) continue;
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(fd, a->ai_addr, a->ai_addrlen) != 0) {
      int error = errno;
      close(fd);
      result = Status::Error(
          "port " + std::to_string(port) + " on " + host + " is not available (" + std::strerror(error) +
          (error == EADDRINUSE ? ": another program listens there" : "") +
          "); stop that program or choose another port with --port");
      break;
    }
    close(fd);
    break;
  }
  freeaddrinfo(addresses);
  return result;
}

Result<int> PickFreePort() {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return Status::Error(std::string("socket: ") + std::strerror(errno));
  struct sockaddr_in address {};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  address.sin_port = 0;
  socklen_t length = sizeof(address);
  if (bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0 ||
      getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length) != 0) {
    int error = errno;
    close(fd);
    return Status::Error(std::string("cannot find a free port: ") + std::strerror(error));
  }
  close(fd);
  return static_cast<int>(ntohs(address.sin_port));
}

}  // namespace ds4setup
