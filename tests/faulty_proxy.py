"""An HTTP proxy on loopback that forwards to a real server but fails, slows or records requests.

It stands in for a network or S3 outage in the middle of a transfer, a slow home uplink, or a
server that lies, which a healthy moto server cannot produce on its own.
"""

from __future__ import annotations

import http.client
import select
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit


@dataclass
class Request:
    method: str
    path: str
    status: int
    headers: dict[str, str]  # the request's, lower-case names
    size: int  # request body bytes
    started: float  # time.time() when the request arrived
    ended: float  # ... and when its body had been read (at the proxy's rate)


class FaultyProxy:
    def __init__(self, upstream: str, fail: Callable[[str, str], bool] = lambda method, path: False,
                 rewrite: Callable[[str, str, str, str], str] | None = None, *, rate: float | None = None,
                 mangle: Callable[[str, str, bytes], bytes] | None = None,
                 hold: Callable[[str, str], float] | None = None):
        """`fail(method, path)` answers 500 instead of forwarding (or the S3 error it returns as
        `(status, code, message)`: a server that refuses the request); `rewrite(method, path, header,
        value)` returns the value a response header is passed on with (a server that lies);
        `rate` (bytes a second) reads request bodies no faster, like a slow uplink; `mangle(method,
        path, body)` returns the body forwarded (bytes damaged on the way); `hold(method, path)`
        seconds a request waits before it is forwarded, and is dropped if its client goes away
        meanwhile (a request still on a slow link when its sender died)."""
        self.upstream = urlsplit(upstream)
        self.fail = fail
        self.rewrite = rewrite or (lambda method, path, header, value: value)
        self.mangle = mangle or (lambda method, path, body: body)
        self.rate = rate
        self.hold = hold or (lambda method, path: 0.0)
        self.dropped: list[tuple[str, str]] = []
        self.seen: list[tuple[str, str, int]] = []
        self.requests: list[Request] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _body(self) -> bytes:
                length = int(self.headers.get("Content-Length") or 0)
                if not proxy.rate:
                    return self.rfile.read(length) if length else b""
                body, t0 = bytearray(), time.monotonic()
                while len(body) < length:
                    body += self.rfile.read(min(16384, length - len(body)))
                    time.sleep(max(0.0, t0 + len(body) / proxy.rate - time.monotonic()))
                return bytes(body)

            def _record(self, status: int, size: int, started: float) -> None:
                proxy.seen.append((self.command, self.path, status))
                proxy.requests.append(Request(self.command, self.path, status,
                                              {k.lower(): v for k, v in self.headers.items()}, size,
                                              started, time.time()))

            def _held(self) -> bool:
                """Wait `hold` seconds; False when the client closed its connection meanwhile."""
                end = time.monotonic() + proxy.hold(self.command, self.path)
                while time.monotonic() < end:
                    ready, _, _ = select.select([self.connection], [], [], min(0.05, end - time.monotonic()))
                    if ready and not self.connection.recv(1, socket.MSG_PEEK):
                        return False
                return True

            def _handle(self):
                started = time.time()
                body = self._body()
                refusal = proxy.fail(self.command, self.path)
                if refusal:
                    status, code, message = refusal if isinstance(refusal, tuple) else (500, "InternalError",
                                                                                         "injected")
                    self._record(status, len(body), started)
                    msg = f"<Error><Code>{code}</Code><Message>{message}</Message></Error>".encode()
                    self.send_response(status)
                    self.send_header("Content-Length", str(len(msg)))
                    self.end_headers()
                    self.wfile.write(msg)
                    return
                if not self._held():
                    proxy.dropped.append((self.command, self.path))
                    self.close_connection = True
                    return
                conn = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                headers["Host"] = proxy.upstream.netloc
                conn.request(self.command, self.path, body=proxy.mangle(self.command, self.path, body),
                             headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                self._record(resp.status, len(body), started)
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, proxy.rewrite(self.command, self.path, k.lower(), v))
                # A HEAD answer has no body but the length of the object it describes.
                length = resp.getheader("Content-Length", "0") if self.command == "HEAD" else len(data)
                self.send_header("Content-Length", str(length))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def copies(self) -> list[Request]:
        """CopyObject / UploadPartCopy requests: a server-side copy of an object."""
        return [r for r in self.requests if "x-amz-copy-source" in r.headers]

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
