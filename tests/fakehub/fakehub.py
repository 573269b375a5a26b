#!/usr/bin/env python3
"""A fake Hugging Face hub for the ds4-setup end-to-end tests (python3 stdlib only).

It behaves like the real hub where ds4-setup depends on it:
  GET|HEAD /<org>/<repo>/resolve/<revision>/<file>
      -> 302 to a signed CDN URL /cdn/<generation>/<file>?expires=...&signature=...,
         with X-Linked-Size, X-Linked-Etag ("<sha256>") and X-Repo-Commit on that
         un-redirected answer.
  GET /cdn/<generation>/<file>   (on a second port: the CDN is another origin)
      -> 206 with the requested closed byte range (Content-Range), 403 once the signed
         URL has expired (the client must resolve again).
  GET /_stats            -> JSON counters (bytes served, requests by kind and status,
                            ranges, Authorization headers seen). ?reset=1 zeroes them.

Faults come from a JSON config file, re-read whenever it changes (the fault queues start
over on each change), so a test can change the server's behaviour between runs:
  {
    "files": {"<file>": "/path/to/local/file", ...},   # served for any repo
    "revision": "abc",          # only this revision exists (others: 404); optional
    "etag": {"<file>": "<sha256>"},  # X-Linked-Etag override (default: real sha256)
    "size": {"<file>": 123},         # X-Linked-Size override
    "require_token": "secret",  # resolve answers 401 without "Bearer secret"
    "require_closed_range": true,    # CDN answers 400 to a request without a closed Range
    "rate": 1048576,            # CDN bytes per second (slow mode for kill tests); 0 = unlimited
    "corrupt_always": false,    # flip a byte in every CDN answer
    "cdn_faults": ["drop:65536", "503", "429:2", "expire", "corrupt", "ok", ...],
    "resolve_faults": ["503", "429:1", ...]
  }
cdn_faults / resolve_faults are consumed one per request, in order; afterwards "ok".
  drop:N   send the headers and N body bytes, then cut the connection
  stall:N  send the headers and N body bytes, then hang (60 s) without closing
  503      answer 503 Service Unavailable
  429:S    answer 429 Too Many Requests with Retry-After: S
  expire   the signed URL expires now: this and later requests with it get 403
  corrupt  serve the range with one byte flipped

Usage: fakehub.py --config CONFIG.json --port-file PORT_FILE [--port 0]
"""
import argparse
import hashlib
import http.server
import json
import os
import socket
import sys
import threading
import time
import urllib.parse


class Hub:
    def __init__(self, config_path):
        self.config_path = config_path
        self.lock = threading.Lock()
        self.config = {}
        self.config_mtime = None
        self.cdn_queue = []
        self.resolve_queue = []
        self.generation = 0
        self.expired = set()
        self.sha_cache = {}
        self.cdn_port = 0
        self.reset_stats()

    def reset_stats(self):
        self.stats = {
            "bytes_served": 0,
            "resolve_requests": 0,
            "cdn_requests": 0,
            "status": {},
            "ranges": [],
            "resolve_auth": [],
            "cdn_auth": [],
            "faults_applied": [],
        }

    def reload(self):
        try:
            mtime = os.stat(self.config_path).st_mtime_ns
        except OSError:
            return
        if mtime == self.config_mtime:
            return
        with open(self.config_path) as f:
            self.config = json.load(f)
        self.config_mtime = mtime
        self.cdn_queue = list(self.config.get("cdn_faults", []))
        self.resolve_queue = list(self.config.get("resolve_faults", []))

    def next_fault(self, queue):
        return queue.pop(0) if queue else "ok"

    def sha256(self, path):
        key = (path, os.stat(path).st_mtime_ns)
        if key not in self.sha_cache:
            h = hashlib.sha256()
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
            self.sha_cache[key] = h.hexdigest()
        return self.sha_cache[key]

    def count_status(self, code):
        key = str(code)
        self.stats["status"][key] = self.stats["status"].get(key, 0) + 1


HUB = None


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        sys.stderr.write("fakehub: " + (fmt % args) + "\n")

    def send_plain(self, code, text, extra_headers=None):
        body = text.encode()
        self.send_response(code)
        for k, v in (extra_headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        with HUB.lock:
            HUB.count_status(code)

    def do_HEAD(self):
        self.route()

    def do_GET(self):
        self.route()

    def route(self):
        url = urllib.parse.urlsplit(self.path)
        with HUB.lock:
            HUB.reload()
        if url.path == "/_stats":
            self.stats(url)
        elif url.path.startswith("/cdn/"):
            self.cdn(url)
        elif "/resolve/" in url.path:
            self.resolve(url)
        else:
            self.send_plain(404, "not found")

    def stats(self, url):
        with HUB.lock:
            body = json.dumps(HUB.stats).encode()
            if "reset=1" in url.query:
                HUB.reset_stats()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def resolve(self, url):
        # /<org>/<repo>/resolve/<revision>/<file>
        head, _, tail = url.path.partition("/resolve/")
        revision, _, name = tail.partition("/")
        with HUB.lock:
            HUB.stats["resolve_requests"] += 1
            HUB.stats["resolve_auth"].append(self.headers.get("Authorization", ""))
            config = HUB.config
            fault = HUB.next_fault(HUB.resolve_queue)
        if fault != "ok":
            HUB.stats["faults_applied"].append("resolve:" + fault)
        if fault == "503":
            return self.send_plain(503, "unavailable")
        if fault.startswith("429"):
            return self.send_plain(429, "slow down", {"Retry-After": fault.partition(":")[2] or "1"})
        token = config.get("require_token")
        if token and self.headers.get("Authorization") != "Bearer " + token:
            return self.send_plain(401, "unauthorized")
        want_revision = config.get("revision")
        path = config.get("files", {}).get(name)
        if not path or (want_revision and revision != want_revision):
            return self.send_plain(404, "Entry not found")
        size = config.get("size", {}).get(name, os.path.getsize(path))
        etag = config.get("etag", {}).get(name) or HUB.sha256(path)
        with HUB.lock:
            HUB.generation += 1
            generation = HUB.generation
        host = "127.0.0.1:%d" % HUB.cdn_port
        expires = int(time.time()) + 3600
        location = "http://%s/cdn/%d/%s?expires=%d&signature=fake%d" % (
            host, generation, urllib.parse.quote(name), expires, generation)
        self.send_plain(302, "Found", {
            "Location": location,
            "X-Linked-Size": str(size),
            "X-Linked-Etag": '"%s"' % etag,
            "X-Repo-Commit": revision,
            "ETag": '"%s"' % etag,
        })

    def cdn(self, url):
        parts = url.path.split("/", 3)  # ['', 'cdn', generation, file]
        if len(parts) < 4:
            return self.send_plain(404, "not found")
        generation = int(parts[2])
        name = urllib.parse.unquote(parts[3])
        with HUB.lock:
            HUB.stats["cdn_requests"] += 1
            HUB.stats["cdn_auth"].append(self.headers.get("Authorization", ""))
            config = HUB.config
            if generation in HUB.expired:
                fault = "expired"
            else:
                fault = HUB.next_fault(HUB.cdn_queue)
            if fault == "expire":
                HUB.expired.add(generation)
            if fault != "ok":
                HUB.stats["faults_applied"].append("cdn:" + fault)
        path = config.get("files", {}).get(name)
        if not path:
            return self.send_plain(404, "not found")
        if fault in ("expire", "expired"):
            return self.send_plain(403, "Request has expired")
        if fault == "503":
            return self.send_plain(503, "unavailable")
        if fault.startswith("429"):
            return self.send_plain(429, "slow down", {"Retry-After": fault.partition(":")[2] or "1"})
        size = os.path.getsize(path)
        start, end = self.parse_range(self.headers.get("Range"), size)
        if start is None:
            if config.get("require_closed_range"):
                return self.send_plain(400, "closed Range required for large files")
            start, end, partial = 0, size - 1, False
        else:
            partial = True
        if start >= size or end < start:
            return self.send_plain(416, "range not satisfiable", {"Content-Range": "bytes */%d" % size})
        end = min(end, size - 1)
        length = end - start + 1
        self.send_response(206 if partial else 200)
        if partial:
            self.send_header("Content-Range", "bytes %d-%d/%d" % (start, end, size))
        self.send_header("Content-Length", str(length))
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()
        with HUB.lock:
            HUB.count_status(206 if partial else 200)
            HUB.stats["ranges"].append([start, end])
        if self.command == "HEAD":
            return
        limit = length
        if fault.startswith("drop") or fault.startswith("stall"):
            limit = min(length, int(fault.partition(":")[2] or "0"))
        corrupt = fault == "corrupt" or config.get("corrupt_always")
        self.stream(path, start, limit, corrupt, float(config.get("rate", 0) or 0))
        if limit < length and fault.startswith("stall"):
            time.sleep(60)  # a hung connection: the client must give up on it by itself
        if limit < length:
            self.close_connection = True
            try:
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def parse_range(self, header, size):
        if not header or not header.startswith("bytes="):
            return None, None
        first, _, last = header[6:].partition("-")
        if not first or not last:  # open or suffix ranges count as "not closed"
            if HUB.config.get("require_closed_range"):
                return None, None
            if not first:
                return max(0, size - int(last)), size - 1
            return int(first), size - 1
        return int(first), int(last)

    def stream(self, path, start, length, corrupt, rate):
        began = time.monotonic()
        sent = 0
        with open(path, "rb") as f:
            f.seek(start)
            while sent < length:
                block = f.read(min(256 << 10 if not rate else max(1024, int(rate / 20)), length - sent))
                if not block:
                    break
                if corrupt and sent == 0:
                    block = bytes([block[0] ^ 0xFF]) + block[1:]
                try:
                    self.wfile.write(block)
                except OSError:
                    return
                sent += len(block)
                with HUB.lock:
                    HUB.stats["bytes_served"] += len(block)
                if rate:
                    ahead = sent / rate - (time.monotonic() - began)
                    if ahead > 0:
                        time.sleep(ahead)


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def main():
    global HUB
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--port-file", required=True)
    args = parser.parse_args()
    HUB = Hub(args.config)
    HUB.reload()
    # The CDN listens on its own port: another origin, as on the real hub, so the client
    # must not send the token there.
    cdn = Server(("127.0.0.1", 0), Handler)
    HUB.cdn_port = cdn.server_address[1]
    threading.Thread(target=cdn.serve_forever, daemon=True).start()
    server = Server(("127.0.0.1", args.port), Handler)
    tmp = args.port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(server.server_address[1]))
    os.rename(tmp, args.port_file)
    server.serve_forever()


if __name__ == "__main__":
    main()
