"""Take secrets out of any text before it leaves the process: alerts, their records, logs.

Known values (the settings' secrets, the bot token, the webhook's URL and token, every
value in the credential store) are replaced wherever they occur, also percent-encoded;
patterns catch what no list knows: a password inside a URL, a `password=` in a
connection string, something shaped like a Telegram bot token.
"""

from __future__ import annotations

import logging
import re
import threading
import urllib.parse
from collections.abc import Iterable

log = logging.getLogger(__name__)

MASK = "[REDACTED]"
_SHORT = 4  # shorter values are replaced only as whole words: "a" must not blank every "a"

_PATTERNS = [
    # scheme://user:password@host -> scheme://user:[REDACTED]@host
    (re.compile(r"(?P<keep>\b[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]+:)[^@\s/]+(?=@)"), r"\g<keep>" + MASK),
    # password=..., password: ..., "password": "..."
    (re.compile(r"(?P<keep>(?i:\b(?:password|passwd|pwd|secret|token|api[_-]?key)\b)[\"']?\s*[:=]\s*[\"']?)"
                r"[^\s\"',;&]+"), r"\g<keep>" + MASK),
    # Telegram bot tokens: 123456789:AA... (35 characters after the colon)
    (re.compile(r"\b\d{6,12}:[A-Za-z0-9_-]{30,}\b"), MASK),
    # Authorization headers
    (re.compile(r"(?P<keep>(?i:\bbearer\s+))[A-Za-z0-9._~+/=-]{8,}"), r"\g<keep>" + MASK),
]


class Redactor:
    """Replaces a fixed set of secret values, longest first, plus the patterns above."""

    def __init__(self, secrets: Iterable[str] = ()):
        values: set[str] = set()
        for s in secrets:
            if not s:
                continue
            s = str(s)
            values.add(s)
            for variant in (urllib.parse.quote(s, safe=""), urllib.parse.quote_plus(s)):
                if variant != s:
                    values.add(variant)
        ordered = sorted(values, key=len, reverse=True)
        long_ = [re.escape(v) for v in ordered if len(v) >= _SHORT]
        short = [re.escape(v) for v in ordered if len(v) < _SHORT]
        parts = long_ + [rf"(?<![A-Za-z0-9]){v}(?![A-Za-z0-9])" for v in short]
        self._known = re.compile("|".join(parts)) if parts else None
        self.count = len(values)

    def __call__(self, text: str | None) -> str:
        if not text:
            return text or ""
        if self._known is not None:
            text = self._known.sub(MASK, text)
        for pattern, repl in _PATTERNS:
            text = pattern.sub(repl, text)
        return text


def settings_secrets(settings) -> list[str]:
    """Settings.secrets() plus what only notification settings hold."""
    out = list(settings.secrets())
    n = settings.notify
    for s in (n.telegram.bot_token, n.webhook_url, n.webhook_token):
        if s is not None:
            out.append(s.get_secret_value())
    if n.webhook_url is not None:
        url = urllib.parse.urlsplit(n.webhook_url.get_secret_value())
        out += [v for _, v in urllib.parse.parse_qsl(url.query)]
        if url.password:
            out.append(url.password)
    for entry in settings.credentials.managed.values():
        dsn = getattr(entry, "dsn", None)
        if dsn is not None:
            out.append(dsn.get_secret_value())
            m = re.search(r"://[^:/@]+:([^@]+)@", dsn.get_secret_value())
            if m:
                out.append(m.group(1))
    return [v for v in out if v]


# Fields of a credential's payload that name something rather than hide it.
_NOT_SECRET_FIELDS = frozenset({"username", "user"})
_cache_lock = threading.Lock()
_cache: dict[str, tuple[tuple, list[str]]] = {}


def credential_values(settings) -> list[str]:
    """Every stored credential value (current, pending, previous), read once per change.

    Reading a value writes an audit row, so the values are re-read only when the
    versions table changes (a cheap query without the master key). Without a master
    key or a store, there is nothing to read and an empty list comes back.
    """
    try:
        import psycopg

        from homelab_ops.credentials.store import open_store
        from homelab_ops.state import connect
    except ImportError:
        return []
    dsn = settings.state.dsn.get_secret_value()
    try:
        with connect(dsn, connect_timeout=5) as conn:
            if conn.execute("SELECT to_regclass('homelab_ops.credential_version')").fetchone()[0] is None:
                return []
            signature = tuple(conn.execute(
                "SELECT count(*), max(created_at), max(promoted_at), max(retired_at)"
                " FROM homelab_ops.credential_version").fetchone())
    except psycopg.Error:
        with _cache_lock:
            return list(_cache.get(dsn, ((), []))[1])
    with _cache_lock:
        cached = _cache.get(dsn)
        if cached and cached[0] == signature:
            return list(cached[1])
    values: list[str] = []
    try:
        with open_store(settings, "homelab-ops:alert-redaction") as store:
            for d in store.definitions():
                for stage in ("current", "pending", "previous"):
                    try:
                        _, payload = store.read(d.name, stage, purpose="redacting alerts")
                    except Exception:  # no version at that stage
                        continue
                    values += [str(v) for k, v in payload.items() if k not in _NOT_SECRET_FIELDS and v]
    except Exception as e:  # no master key, store not initialised: nothing to redact from it
        log.info("credential store values not loaded for redaction (%s)", type(e).__name__)
        return []
    with _cache_lock:
        _cache[dsn] = (signature, values)
    return list(values)


def redactor_for(settings, *extra: str, with_credentials: bool = True) -> Redactor:
    """The redactor every alert passes through."""
    values = settings_secrets(settings) + [e for e in extra if e]
    if with_credentials:
        values += credential_values(settings)
    return Redactor(values)
