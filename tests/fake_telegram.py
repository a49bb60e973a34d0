"""A Telegram Bot API on loopback (sendMessage, getUpdates, getMe) and a webhook receiver.

Strict where Telegram is strict: a wrong token is 401, a message over 4096 UTF-16 units
is 400, and HTML that Telegram would not parse (an unknown or unclosed tag, a bare <, >
or &, a named entity other than lt/gt/amp/quot) is 400 "can't parse entities". Failures
are scripted per method: `fail_next("sendMessage", 429, retry_after=1)` or a 5xx.
"""

from __future__ import annotations

import html
import itertools
import json
import threading
import time
from collections import defaultdict, deque
from html.parser import HTMLParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

TOKEN = "123456789:AAHfakeTokenForTestsOnly_abcdefghijkl"
ALLOWED_TAGS = {"b", "strong", "i", "em", "u", "ins", "s", "strike", "del", "span", "tg-spoiler", "a", "code",
                "pre", "blockquote", "tg-emoji"}


class _TelegramHTML(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=False)
        self.stack: list[str] = []
        self.text: list[str] = []
        self.errors: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag not in ALLOWED_TAGS:
            self.errors.append(f"unsupported start tag \"{tag}\"")
        if tag == "a" and not dict(attrs).get("href"):
            self.errors.append("a without href")
        self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"unexpected end tag \"{tag}\"")
        else:
            self.stack.pop()

    def handle_data(self, data):
        for ch in "<>&":
            if ch in data:
                self.errors.append(f"unescaped {ch!r}")
        self.text.append(data)

    def handle_entityref(self, name):
        if name not in ("lt", "gt", "amp", "quot"):
            self.errors.append(f"unsupported entity &{name};")
        self.text.append(html.unescape(f"&{name};"))

    def handle_charref(self, name):
        self.text.append(html.unescape(f"&#{name};"))


def parse_html(text: str) -> tuple[str, list[str]]:
    """(plain text, problems) as Telegram's HTML parse mode would see them."""
    p = _TelegramHTML()
    p.feed(text)
    p.close()
    if p.stack:
        p.errors.append(f"unclosed {p.stack}")
    rest = p.rawdata if hasattr(p, "rawdata") else ""
    if rest:
        p.errors.append("trailing markup")
    return "".join(p.text), p.errors


class _Server:
    def __init__(self):
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _reply(self, status: int, body: dict, headers: dict | None = None):
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    payload = json.loads(raw) if raw else {}
                except ValueError:
                    payload = dict(parse_qsl(raw.decode()))
                outer.handle(self, urlsplit(self.path).path, payload)

            def do_GET(self):
                url = urlsplit(self.path)
                outer.handle(self, url.path, dict(parse_qsl(url.query)))

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.lock = threading.Lock()
        self.failures: dict[str, deque] = defaultdict(deque)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def start(self):
        self.thread.start()
        return self

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()

    def fail_next(self, method: str, status: int, times: int = 1, retry_after: float | None = None):
        with self.lock:
            for _ in range(times):
                self.failures[method].append((status, retry_after))

    def _scripted(self, method: str):
        with self.lock:
            return self.failures[method].popleft() if self.failures[method] else None


class FakeTelegram(_Server):
    def __init__(self, token: str = TOKEN):
        super().__init__()
        self.token = token
        self.calls: list[tuple[str, dict, float]] = []  # every request: method, payload, time
        self.sent: list[dict] = []  # accepted sendMessage: chat_id, text, plain
        self.updates: list[dict] = []
        self.offsets: list[int | None] = []
        self._ids = itertools.count(1000)
        self._message_ids = itertools.count(1)

    def handle(self, h, path: str, payload: dict):
        parts = path.strip("/").split("/")
        if len(parts) != 2 or parts[0] != f"bot{self.token}":
            return h._reply(401 if parts and parts[0].startswith("bot") else 404,
                            {"ok": False, "error_code": 401, "description": "Unauthorized"})
        method = parts[1]
        with self.lock:
            self.calls.append((method, payload, time.monotonic()))
        scripted = self._scripted(method)
        if scripted:
            status, retry_after = scripted
            body = {"ok": False, "error_code": status,
                    "description": "Too Many Requests: retry after" if status == 429 else "Internal Server Error"}
            if retry_after is not None:
                body["parameters"] = {"retry_after": retry_after}
                body["description"] += f" {retry_after}"
            return h._reply(status, body)
        if method == "getMe":
            return h._reply(200, {"ok": True, "result": {"id": 123456789, "is_bot": True, "username": "homelab_test_bot"}})
        if method == "sendMessage":
            return self._send(h, payload)
        if method == "getUpdates":
            offset = payload.get("offset")
            offset = int(offset) if offset is not None else None
            with self.lock:
                self.offsets.append(offset)
                if offset is not None:  # like Telegram: an offset confirms every earlier update
                    self.updates = [u for u in self.updates if u["update_id"] >= offset]
                result = list(self.updates)
            return h._reply(200, {"ok": True, "result": result})
        return h._reply(404, {"ok": False, "error_code": 404, "description": "Not Found"})

    def _send(self, h, payload: dict):
        text = payload.get("text") or ""
        if "chat_id" not in payload:
            return h._reply(400, {"ok": False, "error_code": 400, "description": "Bad Request: chat_id is empty"})
        if not text.strip():
            return h._reply(400, {"ok": False, "error_code": 400, "description": "Bad Request: message text is empty"})
        plain, problems = parse_html(text) if payload.get("parse_mode") == "HTML" else (text, [])
        if problems:
            return h._reply(400, {"ok": False, "error_code": 400,
                                  "description": f"Bad Request: can't parse entities: {problems[0]}"})
        if len(plain.encode("utf-16-le")) // 2 > 4096 or len(text.encode("utf-16-le")) // 2 > 4096:
            return h._reply(400, {"ok": False, "error_code": 400, "description": "Bad Request: message is too long"})
        with self.lock:
            self.sent.append({"chat_id": int(payload["chat_id"]), "text": text, "plain": plain})
        return h._reply(200, {"ok": True, "result": {"message_id": next(self._message_ids),
                                                     "chat": {"id": payload["chat_id"]}, "text": plain}})

    def push_message(self, chat_id: int, text: str, *, username: str | None = None, title: str | None = None,
                     date: int | None = None) -> int:
        """Queue a message to the bot, as getUpdates will return it."""
        uid = next(self._ids)
        chat = {"id": chat_id, "type": "group" if title else "private"}
        if title:
            chat["title"] = title
        if username:
            chat["username"] = username
        msg = {"message_id": uid, "date": date or int(time.time()), "chat": chat, "text": text,
               "from": {"id": abs(chat_id), "is_bot": False, "first_name": "Test", "username": username}}
        with self.lock:
            self.updates.append({"update_id": uid, "message": msg})
        return uid

    def texts_to(self, chat_id: int) -> list[str]:
        """Plain text of every message a chat received."""
        with self.lock:
            return [m["plain"] for m in self.sent if m["chat_id"] == chat_id]

    def method_calls(self, method: str) -> list[tuple[dict, float]]:
        with self.lock:
            return [(p, t) for m, p, t in self.calls if m == method]


class FakeWebhook(_Server):
    """Receives JSON POSTs at any path; 429 answers carry a Retry-After header."""

    def __init__(self):
        super().__init__()
        self.received: list[tuple[str, dict, dict]] = []  # path, body, headers
        self.attempts = 0

    def handle(self, h, path: str, payload: dict):
        with self.lock:
            self.attempts += 1
        scripted = self._scripted("POST")
        if scripted:
            status, retry_after = scripted
            return h._reply(status, {"error": "scripted"},
                            {"Retry-After": str(retry_after)} if retry_after is not None else None)
        with self.lock:
            self.received.append((path, payload, dict(h.headers)))
        return h._reply(200, {"id": len(self.received)})
