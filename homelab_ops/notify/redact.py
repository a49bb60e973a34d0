"""Take secrets out of any text before it leaves the process: alerts, their records, logs.

Known values (every secret in the settings, found by walking the model; the bot token; every
value in the credential store) are replaced wherever they occur, also percent-encoded;
patterns catch what no list knows: a password inside a URL, a `password=` in a
connection string, something shaped like a Telegram bot token.

`install(settings.secrets())` applies the one redactor to the whole process (the code location and its
run workers, the CLI): every log record (any logger: homelab_ops, dagster, botocore...), every
Dagster event before it is stored (step failures, exceptions, metadata, check results), and
everything written to stdout/stderr (compute logs, the console, CLI output).
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import re
import sys
import threading
import urllib.parse
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from homelab_ops.credentials.config import CredentialsConfig

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
            # percent-encoded (in URLs), JSON-escaped (in Dagster's stored events)
            for variant in (urllib.parse.quote(s, safe=""), urllib.parse.quote_plus(s), json.dumps(s)[1:-1]):
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

    def known(self, text: str) -> str:
        """Only the known values, no patterns: safe inside serialized data (JSON stays JSON)."""
        return self._known.sub(MASK, text) if self._known is not None and text else text


def embedded_secrets(text: str, *, whole_is_secret: bool) -> list[str]:
    """Secrets inside one settings value: a URL's password (as written and percent-decoded), a
    `password=` in a key=value DSN, and for a secret URL its query values (ntfy ?token=, Gotify)."""
    out: list[str] = []
    try:
        url = urllib.parse.urlsplit(text.strip())
    except ValueError:
        url = None
    if url is not None and url.scheme and url.netloc:
        if "@" in url.netloc:
            userinfo = url.netloc.rsplit("@", 1)[0]
            if ":" in userinfo:
                raw = userinfo.split(":", 1)[1]
                out += [raw, urllib.parse.unquote(raw)]
        if whole_is_secret:
            out += [v for _, v in urllib.parse.parse_qsl(url.query)]
    for m in re.finditer(r"(?i)(?:^|\s)password\s*=\s*('(?:[^'\\]|\\.)*'|[^\s']+)", text):
        v = m.group(1)
        out.append(v[1:-1].replace("\\'", "'").replace("\\\\", "\\") if v.startswith("'") else v)
    return [v for v in out if v]


def _is_dsn(text: str) -> bool:
    """A PostgreSQL connection string, URL or key=value form."""
    t = text.strip()
    return t.startswith(("postgresql://", "postgres://")) or bool(re.match(r"[a-z_]+\s*=", t))


def settings_secrets(settings) -> list[str]:
    """Every secret the settings hold, found by walking the model (nothing kept by hand): each
    SecretStr's value and what is inside it, and the password in any URL or DSN in any other
    field (`backups.s3[].endpoint_url: http://user:pass@host`)."""
    from pydantic import BaseModel, SecretStr

    out: list[str] = []

    def walk(v) -> None:
        if isinstance(v, SecretStr):
            text = v.get_secret_value()
            if not _is_dsn(text):  # a DSN's secret is its password; host and user stay readable
                out.append(text)
            out.extend(embedded_secrets(text, whole_is_secret=True))
        elif isinstance(v, BaseModel):
            for name in type(v).model_fields:
                walk(getattr(v, name))
        elif isinstance(v, dict):
            for item in v.values():
                walk(item)
        elif isinstance(v, (list, tuple, set, frozenset)):
            for item in v:
                walk(item)
        elif isinstance(v, str):
            out.extend(embedded_secrets(v, whole_is_secret=False))

    walk(settings)
    return list(dict.fromkeys(v for v in out if v))


# Fields of a credential's payload that name something rather than hide it.
_NOT_SECRET_FIELDS = frozenset({"username", "user"})
_cache_lock = threading.Lock()
_cache: dict[str, tuple[tuple, list[str]]] = {}


def credential_values(config: CredentialsConfig) -> list[str]:
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
    dsn = config.state.dsn.get_secret_value()
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
        with open_store(config, "homelab-ops:alert-redaction") as store:
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


def redactor_for(secrets: Iterable[str], *extra: str, credentials: CredentialsConfig | None = None) -> Redactor:
    """The one way a domain config builds its redactor: the settings' `secrets` (a config's, from
    `settings_secrets`), `extra` (what a step placed or read), and with `credentials` every value
    in the credential store."""
    values = [*secrets, *(e for e in extra if e)]
    if credentials is not None:
        values += credential_values(credentials)
    return Redactor(values)


# ------------------------------------------------------------------ the whole process

_active: Redactor | None = None
_EVENT = "dagster_event"  # dagster._core.log_manager.LOG_RECORD_EVENT_ATTR
_REDACTED_EVENT = "_homelab_ops_redacted_event"


def _redact_strings(value, r: Redactor):
    if isinstance(value, str):
        return r.known(value)
    if isinstance(value, list):
        return [_redact_strings(v, r) for v in value]
    if isinstance(value, dict):
        return {k: _redact_strings(v, r) for k, v in value.items()}
    return value


def _redact_event(event):
    """A Dagster event with every known secret replaced in every string it holds (the error of a
    failed step with its message, stack and causes; metadata; descriptions), through its
    serialized form, so no field is missed and the event keeps its shape."""
    from dagster._serdes import deserialize_value, serialize_value

    r = _active
    if r is None or event is None:
        return event
    text = serialize_value(event)
    if r.known(text) == text:
        return event
    return deserialize_value(json.dumps(_redact_strings(json.loads(text), r)))


class _RedactedRecord(logging.LogRecord):
    """A log record whose message is redacted when it is made, and whose Dagster event (attached
    by DagsterLogManager as `extra` after the record is made) is redacted when Dagster reads it."""

    def __getattribute__(self, name):
        if name != _EVENT:
            return super().__getattribute__(name)
        d = super().__getattribute__("__dict__")
        if _EVENT not in d:
            raise AttributeError(name)
        if _REDACTED_EVENT not in d:
            d[_REDACTED_EVENT] = _redact_event(d[_EVENT])
        return d[_REDACTED_EVENT]


def _redact_record(record: logging.LogRecord) -> logging.LogRecord:
    r = _active
    if r is None:
        return record
    try:
        message = record.getMessage()
    except Exception:  # a bad format string: logging reports it itself later
        return record
    clean = r(message)
    if clean != message:
        record.msg, record.args = clean, None
    if record.exc_info and not record.exc_text:
        record.exc_text = r(logging.Formatter().formatException(record.exc_info))
    if record.stack_info:
        record.stack_info = r(record.stack_info)
    return record


_disclosing: contextvars.ContextVar[bool] = contextvars.ContextVar("homelab_ops_disclosing", default=False)


@contextlib.contextmanager
def disclosing():
    """Output inside this block is not redacted: for the one command whose job is to print a
    secret (`homelab-ops creds get`, an audited read). Log records stay redacted."""
    token = _disclosing.set(True)
    try:
        yield
    finally:
        _disclosing.reset(token)


class RedactingStream:
    """stdout/stderr, redacted as written. The file descriptor stays the same, so Dagster's
    compute-log capture (fd redirection) and click see an ordinary stream."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text):
        r = _active
        if r is not None and isinstance(text, str) and not _disclosing.get():
            text_out = r(text)
        else:
            text_out = text
        self._stream.write(text_out)
        return len(text)

    def writelines(self, lines):
        for line in lines:
            self.write(line)

    def __getattr__(self, name):
        return getattr(self._stream, name)


_factory_lock = threading.Lock()
_factory_installed = False


class RedactingFilter(logging.Filter):
    """The same redaction as a logging.Filter, for handlers made outside this process's factory."""

    def filter(self, record: logging.LogRecord) -> bool:
        _redact_record(record)
        return True


def install(secrets: Iterable[str], *extra: str) -> Redactor:
    """Redact this process: log records of every logger, Dagster's events, stdout and stderr.

    Built from the settings' secrets alone (`Settings.secrets()`; not the credential store: reading
    it needs the master key and writes audit rows on every load); alerts add the store's values
    (`NotifyConfig.redactor`). Idempotent: a second call (settings reloaded) replaces the values.
    """
    global _active, _factory_installed
    _active = Redactor([*secrets, *extra])
    with _factory_lock:
        if not _factory_installed:
            previous = logging.getLogRecordFactory()
            if previous is logging.LogRecord:
                logging.setLogRecordFactory(lambda *a, **kw: _redact_record(_RedactedRecord(*a, **kw)))
            else:  # someone else's factory: their record class, our message redaction
                logging.setLogRecordFactory(lambda *a, **kw: _redact_record(previous(*a, **kw)))
            for name in ("dagster", "homelab_ops"):
                logging.getLogger(name).addFilter(RedactingFilter())
            _factory_installed = True
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is not None and not isinstance(stream, RedactingStream):
            setattr(sys, name, RedactingStream(stream))
    return _active
