"""A counting HTTP reverse proxy for an S3 endpoint (benchmark helper, 127.0.0.1 only).

Run it as its own process so its work never competes with the benchmark's GIL:

    python benchmarks/s3_counting_proxy.py --upstream http://127.0.0.1:8333 [--port 0]

It prints one line ``listening <port>`` once it accepts connections, then forwards every
request to the upstream unchanged (the client's ``Host`` header is kept, so SigV4
signatures still match), counting requests by HTTP method and by S3 operation class:

* ``put_object`` (PUT of an object or a multipart part), ``copy_object`` (PUT with
  ``x-amz-copy-source``), ``get_object`` (GET of an object, ranged or not), ``list``
  (GET of a bucket), ``head``, ``delete`` (DELETE, or POST ``?delete``), ``post`` (other
  POSTs, e.g. multipart create/complete), ``bucket`` (PUT/DELETE on a bucket itself).

Also the bytes sent in PUT bodies and received in GET bodies, the response status
codes, and PUTs by key family (the key's folder, digits folded). ``GET /__counts__``
answers the counters as JSON and ``POST /__reset__`` zeroes them (``__`` cannot start an
S3 bucket name, so these never shadow a real request). ``classify`` and ``key_family``
are importable (pure functions of the request line).

Bodies are buffered whole (segments are a few MiB), hop-by-hop headers are dropped,
``Expect: 100-continue`` is answered by the proxy itself, and both sockets set
TCP_NODELAY (without it, Nagle plus delayed ACKs add ~40 ms to every small request).
"""

from __future__ import annotations

import argparse
import http.client
import json
import re
import socket
import sys
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

__all__ = ["classify", "main"]

_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "trailers",
    "transfer-encoding",
    "upgrade",
    "expect",
    "content-length",
}


def classify(method: str, path: str, headers: dict[str, str]) -> str:
    """The S3 operation class of a request (see the module docstring)."""
    split = urlsplit(path)
    query = parse_qs(split.query, keep_blank_values=True)
    parts = [p for p in split.path.split("/") if p]
    is_bucket = len(parts) <= 1  # path-style: /bucket or /bucket/key...
    lowered = {k.lower(): v for k, v in headers.items()}
    if method == "PUT":
        if is_bucket:
            return "bucket"
        return "copy_object" if "x-amz-copy-source" in lowered else "put_object"
    if method == "GET":
        return "list" if is_bucket else "get_object"
    if method == "HEAD":
        return "head"
    if method == "DELETE":
        return "bucket" if is_bucket else "delete"
    if method == "POST":
        return "delete" if "delete" in query else "post"
    return "other"


def key_family(path: str, *, depth: int = 4) -> str:
    """The folder of an object key, digits folded to ``#``: ``rs/metadata/journal``.

    Path-style URLs only (``/bucket/key``); the bucket is dropped, at most ``depth``
    folders are kept, so one system's objects fall into a handful of families.
    """
    parts = [p for p in urlsplit(path).path.split("/") if p][1:-1]
    return "/".join(re.sub(r"\d+", "#", p) for p in parts[:depth]) or "(bucket root)"


class _Stats:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.methods: Counter[str] = Counter()
        self.classes: Counter[str] = Counter()
        self.statuses: Counter[str] = Counter()
        self.put_families: Counter[str] = Counter()
        self.put_bytes = 0
        self.get_bytes = 0

    def reset(self) -> None:
        with self.lock:
            self.methods.clear()
            self.classes.clear()
            self.statuses.clear()
            self.put_families.clear()
            self.put_bytes = 0
            self.get_bytes = 0

    def record(
        self, method: str, kind: str, status: int, sent: int, received: int, *, path: str
    ) -> None:
        with self.lock:
            self.methods[method] += 1
            self.classes[kind] += 1
            self.statuses[str(status)] += 1
            if kind == "put_object":
                self.put_bytes += sent
                if len(self.put_families) < 100:
                    self.put_families[key_family(path)] += 1
            elif kind == "get_object":
                self.get_bytes += received

    def snapshot(self) -> dict:
        with self.lock:
            return {
                "methods": dict(self.methods),
                "classes": dict(self.classes),
                "statuses": dict(self.statuses),
                "put_families": dict(self.put_families),
                "put_bytes": self.put_bytes,
                "get_bytes": self.get_bytes,
                "requests": sum(self.methods.values()),
            }


STATS = _Stats()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in separate writes
    upstream: tuple[str, int] = ("127.0.0.1", 0)

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _conn(self) -> http.client.HTTPConnection:
        conn = getattr(self, "_upstream_conn", None)
        if conn is None:
            conn = http.client.HTTPConnection(*self.upstream, timeout=300)
            conn.connect()
            conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._upstream_conn = conn
        return conn

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";", 1)[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _control(self) -> bool:
        if self.path == "/__counts__" and self.command == "GET":
            body = json.dumps(STATS.snapshot()).encode()
        elif self.path == "/__reset__" and self.command == "POST":
            STATS.reset()
            body = b"{}"
        else:
            return False
        self._read_body()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        return True

    def _forward(self) -> None:
        if self._control():
            return
        body = self._read_body()
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
        kind = classify(self.command, self.path, dict(self.headers.items()))
        for attempt in (0, 1):  # a kept-alive upstream connection may have been closed
            conn = self._conn()
            try:
                conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
                for key, value in headers.items():
                    conn.putheader(key, value)
                if body or self.command in ("PUT", "POST"):
                    conn.putheader("Content-Length", str(len(body)))
                conn.endheaders(body or None)
                resp = conn.getresponse()
                data = resp.read()
                break
            except (ConnectionError, http.client.HTTPException, OSError):
                conn.close()
                self._upstream_conn = None
                if attempt:
                    self.send_error(502, "upstream unreachable")
                    STATS.record(self.command, kind, 502, len(body), 0, path=self.path)
                    return
        STATS.record(self.command, kind, resp.status, len(body), len(data), path=self.path)
        self.send_response_only(resp.status, resp.reason)
        for key, value in resp.getheaders():
            if key.lower() not in _HOP:
                self.send_header(key, value)
        if self.command == "HEAD":
            length = resp.getheader("Content-Length")
            if length is not None:
                self.send_header("Content-Length", length)
        elif resp.status not in (204, 304):
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD" and data:
            self.wfile.write(data)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--upstream", required=True, help="http://127.0.0.1:PORT of the S3 endpoint"
    )
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: any free)")
    args = parser.parse_args()
    upstream = urlsplit(args.upstream)
    _Handler.upstream = (upstream.hostname or "127.0.0.1", upstream.port or 80)
    server = ThreadingHTTPServer(("127.0.0.1", args.port), _Handler)
    server.daemon_threads = True
    print(f"listening {server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        sys.stdout.flush()


if __name__ == "__main__":
    main()
