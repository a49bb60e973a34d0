"""Telegram's Bot API: HTML messages that are escaped and split, sent with retries.

Only what alerting uses: sendMessage, getUpdates (the inbox of /start and /mute) and
getMe. Messages are built from parts (plain, bold, preformatted, a link), escaped per
part, and split between or inside parts so that each message stays within Telegram's
4096 characters (counted in UTF-16 code units, as Telegram counts) with every tag it
opens closed again. Errors never carry the token.
"""

from __future__ import annotations

import html
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from homelab_ops.notify.alert import Alert, Outcome
from homelab_ops.notify.http import Response, Retry, post_json, with_retries

LIMIT = 4096


def escape(text: str) -> str:
    """Text for Telegram's HTML parse mode: &, < and > (the only characters it requires escaped)."""
    return html.escape(text, quote=False)


def escape_attr(text: str) -> str:
    return html.escape(text, quote=True)


def utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


@dataclass(frozen=True)
class Part:
    text: str
    tag: str = ""  # "", b, i, code, pre, a
    href: str | None = None

    def opening(self) -> str:
        if not self.tag:
            return ""
        if self.tag == "a":
            return f'<a href="{escape_attr(self.href or "")}">'
        return f"<{self.tag}>"

    def closing(self) -> str:
        return f"</{self.tag}>" if self.tag else ""


def _take(text: str, room: int) -> tuple[str, str]:
    """The longest prefix whose escaped form fits in `room`, cut at a newline when one is near."""
    used, n = 0, 0
    for ch in text:
        cost = utf16_len(escape(ch))
        if used + cost > room:
            break
        used += cost
        n += 1
    if n >= len(text):
        return text, ""
    cut = text.rfind("\n", 0, n)
    if cut >= n // 2 and cut > 0:
        n = cut + 1
    return text[:n], text[n:]


_TAGS = re.compile(r"<[^>]+>")


def split_html(parts: list[Part], limit: int = LIMIT) -> list[str]:
    """Render parts as HTML messages of at most `limit` UTF-16 units each, tags balanced in each."""
    messages: list[str] = []
    current = ""
    for part in parts:
        if part.tag == "a" and utf16_len(part.opening()) + utf16_len(part.closing()) + 16 > limit:
            part = Part(f"{part.text}: {part.href}")  # an absurdly long link goes out as text
        opening, closing = part.opening(), part.closing()
        overhead = utf16_len(opening) + utf16_len(closing)
        rest = part.text
        while rest:
            room = limit - utf16_len(current) - overhead
            piece, remainder = _take(rest, room) if room > 0 else ("", rest)
            if not piece and not current:
                raise ValueError(f"a message limit of {limit} leaves no room for the text")
            if not piece or (remainder and current and len(piece) < 16):
                messages.append(current)  # too little room left here: start the next message
                current = ""
                continue
            current += opening + escape(piece) + closing
            rest = remainder
            if rest:
                messages.append(current)
                current = ""
    if current:
        messages.append(current)
    return [m for m in messages if html.unescape(_TAGS.sub("", m)).strip()]


def alert_parts(alert: Alert) -> list[Part]:
    parts = [Part(alert.title, "b")]
    if alert.body:
        parts.append(Part("\n" + alert.body))
    if alert.preformatted:
        parts += [Part("\n"), Part(alert.preformatted, "pre")]
    if alert.link:
        parts += [Part("\n"), Part(alert.link_text, "a", alert.link)]
    return parts


class TelegramBot:
    """One bot token; every method answers with a result, none raises for Telegram's trouble."""

    def __init__(self, token: str, api_base: str = "https://api.telegram.org", *, timeout: float = 10,
                 retry: Retry = Retry(), sleep: Callable[[float], None] = time.sleep):
        self._token = token
        self.api_base = api_base.rstrip("/")
        self.timeout = timeout
        self.retry = retry
        self.sleep = sleep

    def __repr__(self) -> str:
        return f"TelegramBot(api_base={self.api_base!r})"

    def _scrub(self, text: str) -> str:
        return text.replace(self._token, "[REDACTED]") if self._token else text

    def call(self, method: str, payload: dict, *, deadline: float | None = None,
             retry: Retry | None = None) -> tuple[Response, int]:
        url = f"{self.api_base}/bot{self._token}/{method}"
        resp, attempts = with_retries(lambda: post_json(url, payload, timeout=self.timeout), retry or self.retry,
                                      deadline=deadline, sleep=self.sleep)
        if resp.ok and not (resp.body or {}).get("ok", False):
            resp = Response(None, resp.body, f"Telegram answered ok=false: {(resp.body or {}).get('description')}")
        resp.error = self._scrub(resp.error)
        return resp, attempts

    def send_html(self, chat_id: int, text: str, *, deadline: float | None = None) -> tuple[Response, int]:
        return self.call("sendMessage", {"chat_id": chat_id, "text": text, "parse_mode": "HTML",
                                         "disable_web_page_preview": True}, deadline=deadline)

    def send_alert(self, chat_id: int, alert: Alert, *, deadline: float | None = None) -> Outcome:
        """Every piece of the alert, in order; stops at the first piece that does not arrive."""
        outcome = Outcome(f"telegram:{chat_id}", True)
        messages = split_html(alert_parts(alert))
        for i, text in enumerate(messages):
            resp, attempts = self.send_html(chat_id, text, deadline=deadline)
            outcome.attempts += attempts
            if not resp.ok and resp.status == 400 and "parse" in resp.error.lower():
                # Should not happen (escaping is tested), but a plain copy beats no alert.
                plain = html.unescape(_TAGS.sub("", text))
                resp, attempts = self.call("sendMessage", {"chat_id": chat_id, "text": plain}, deadline=deadline)
                outcome.attempts += attempts
            if not resp.ok:
                outcome.ok = False
                part = f" (part {i + 1} of {len(messages)})" if len(messages) > 1 else ""
                outcome.detail = f"{resp.error}{part}"
                return outcome
        outcome.detail = f"{len(messages)} message{'s' if len(messages) != 1 else ''}"
        return outcome

    def get_updates(self, offset: int | None, *, limit: int = 100) -> tuple[list[dict] | None, str]:
        """(updates, "") or (None, why): short polling, messages only; `offset` confirms what came before."""
        payload: dict = {"timeout": 0, "limit": limit, "allowed_updates": ["message"]}
        if offset is not None:
            payload["offset"] = offset
        resp, _ = self.call("getUpdates", payload, retry=Retry(attempts=2, backoff=1.0, max_retry_after=5))
        if not resp.ok:
            return None, resp.error
        return list((resp.body or {}).get("result") or []), ""

    def get_me(self) -> tuple[dict | None, str]:
        resp, _ = self.call("getMe", {}, retry=Retry(attempts=1))
        return ((resp.body or {}).get("result"), "") if resp.ok else (None, resp.error)
