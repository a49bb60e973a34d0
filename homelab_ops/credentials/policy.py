"""Pure rules of the credential store: names, kinds and their options, periods, secret generation.

Nothing here does I/O, so the CLI, the Dagster assets and the tests share one
definition of what a valid credential is and when it is due.
"""

from __future__ import annotations

import math
import re
import secrets
import string
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Mapping

import bcrypt

from homelab_ops.credentials.errors import CredentialError

KINDS = ("postgres-role", "s3-access-key", "generated", "manual")
STAGES = ("pending", "current", "previous")
NAME_RE = re.compile(r"[a-z0-9][a-z0-9_.-]{0,62}")

# Alphabets are chosen so a value never needs escaping in a .env file, a shell or a URL.
ALPHABETS = {
    "alnum": string.ascii_letters + string.digits,
    "hex": "0123456789abcdef",
    "urlsafe": string.ascii_letters + string.digits + "-_",
    "symbols": string.ascii_letters + string.digits + "!#%+,-./:=?@^_~",
}

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def validate_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise CredentialError(
            f"{name!r} is not a credential name: use 1-63 of a-z 0-9 _ . - starting with a letter or digit")
    return name


def parse_period(text: str) -> float:
    """`30d`, `12h`, `1w`, `90m` as seconds; anything else is an error that names the text."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", str(text))
    if not m or float(m.group(1)) <= 0:
        raise CredentialError(f"period {text!r} does not parse: write a number and a unit, like 30d, 12h or 1w")
    return float(m.group(1)) * _UNITS[m.group(2)]


def age_seconds(now: datetime, since: datetime | None) -> float | None:
    return None if since is None else max(0.0, (now - since).total_seconds())


def is_overdue(now: datetime, current_since: datetime | None, period_seconds: float) -> bool:
    """Past its period, or never set: both need the owner's attention."""
    age = age_seconds(now, current_since)
    return age is None or age >= period_seconds


def is_due(now: datetime, current_since: datetime | None, period_seconds: float, has_pending: bool) -> bool:
    """A rotation is due when overdue, or when an interrupted one left a pending version to finish."""
    return has_pending or is_overdue(now, current_since, period_seconds)


def resolve_alphabet(spec: str) -> str:
    if spec in ALPHABETS:
        return ALPHABETS[spec]
    if spec.startswith("chars:"):
        chars = "".join(dict.fromkeys(spec[6:]))
        if len(chars) < 10:
            raise CredentialError("a custom alphabet (chars:...) needs at least 10 distinct characters")
        if any(c.isspace() or c in "'\"\\$`" for c in chars):
            raise CredentialError("a custom alphabet may not contain whitespace, quotes, backslash, $ or `")
        return chars
    raise CredentialError(f"unknown alphabet {spec!r}: use one of {', '.join(ALPHABETS)} or chars:<characters>")


def generate_secret(length: int, alphabet: str = "alnum") -> str:
    chars = resolve_alphabet(alphabet)
    return "".join(secrets.choice(chars) for _ in range(length))


def entropy_bits(length: int, alphabet: str) -> float:
    return length * math.log2(len(resolve_alphabet(alphabet)))


def htpasswd_line(user: str, password: str, rounds: int = 12) -> str:
    """`user:$2y$...`, the bcrypt form Apache's htpasswd -B writes and Traefik's basicauth reads."""
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=rounds)).decode()
    return f"{user}:$2y${hashed[4:]}"


def htpasswd_matches(line: str, password: str) -> bool:
    _, _, hashed = line.partition(":")
    try:
        return bcrypt.checkpw(password.encode(), hashed.encode())
    except ValueError:
        return False


def redact(text: str, values) -> str:
    """Replace every known secret value in `text`, longest first; used on any text that leaves a step."""
    for v in sorted({v for v in values if v and len(v) >= 4}, key=len, reverse=True):
        text = text.replace(v, "[REDACTED]")
    return text


# ---------------------------------------------------------------------------
# Definitions: a credential's kind and options, validated the same way for the
# settings file and `creds add`.
# ---------------------------------------------------------------------------

_COMMON = {"period": str, "consumers": list, "description": str}
_OPTIONS: dict[str, dict[str, type]] = {
    "postgres-role": {"role": str, "host": str, "port": int, "dbname": str, "length": int,
                      "select_tables": str},
    "s3-access-key": {"user": str, "endpoint_url": str, "region": str, "bucket": str,
                      "self_managed": bool, "test_timeout": float},
    "generated": {"length": int, "alphabet": str, "htpasswd_user": str, "bcrypt_rounds": int},
    "manual": {"pattern": str},
}
_SECRET_OPTIONS = {"postgres-role": {"dsn"}}
_REQUIRED = {"postgres-role": ("role",), "s3-access-key": ("user",)}


@dataclass(frozen=True)
class Definition:
    """A credential as the store knows it: everything but its values."""

    name: str
    kind: str
    period: str
    consumers: tuple[str, ...] = ()
    description: str = ""
    params: Mapping[str, Any] = field(default_factory=dict)
    secret_params: Mapping[str, str] = field(default_factory=dict, repr=False)
    source: str = "cli"

    @property
    def period_seconds(self) -> float:
        return parse_period(self.period)

    def option(self, key: str, default: Any = None) -> Any:
        v = self.params.get(key)
        return default if v is None else v


def check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise CredentialError(f"unknown kind {kind!r}: use one of {', '.join(KINDS)}")
    return kind


def make_definition(name: str, kind: str, options: Mapping[str, Any], *, source: str = "cli") -> Definition:
    """Validate a name, kind and options (settings entry or CLI flags) into a Definition."""
    validate_name(name)
    check_kind(kind)
    allowed = {**_COMMON, **_OPTIONS[kind]}
    secret_keys = _SECRET_OPTIONS.get(kind, set())
    params: dict[str, Any] = {}
    secret: dict[str, str] = {}
    for key, value in options.items():
        if value is None or key == "kind":
            continue
        if key in secret_keys:
            secret[key] = str(value)
            continue
        if key not in allowed:
            raise CredentialError(f"{name}: option {key!r} does not apply to a {kind} credential "
                                  f"(it takes: {', '.join(sorted([*allowed, *secret_keys]))})")
        want = allowed[key]
        if want is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if want is list and isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, want) or (want is int and isinstance(value, bool)):
            raise CredentialError(f"{name}: option {key!r} must be {want.__name__}")
        params[key] = value
    for key in _REQUIRED.get(kind, ()):
        if not params.get(key):
            raise CredentialError(f"{name}: a {kind} credential needs {key!r}")
    period = params.pop("period", "30d")
    parse_period(period)
    consumers = tuple(params.pop("consumers", ()))
    for c in consumers:
        if not isinstance(c, str) or not c:
            raise CredentialError(f"{name}: consumers must be service names")
    description = params.pop("description", "")
    _check_kind_options(name, kind, params)
    return Definition(name, kind, period, consumers, description, params, secret, source)


def _check_kind_options(name: str, kind: str, p: dict) -> None:
    if kind == "postgres-role" and len(p["role"].encode()) > 63:
        raise CredentialError(f"{name}: role name is longer than PostgreSQL's 63 bytes")
    if kind in ("postgres-role", "generated"):
        length = p.get("length", 32)
        if not 12 <= length <= 512:
            raise CredentialError(f"{name}: length must be between 12 and 512")
    if kind == "generated":
        resolve_alphabet(p.get("alphabet", "alnum"))
        if not 4 <= p.get("bcrypt_rounds", 12) <= 16:
            raise CredentialError(f"{name}: bcrypt_rounds must be between 4 and 16")
        user = p.get("htpasswd_user")
        if user is not None and (not user or ":" in user or any(c.isspace() for c in user)):
            raise CredentialError(f"{name}: htpasswd_user may not be empty or contain ':' or spaces")
    if kind == "manual" and "pattern" in p:
        try:
            re.compile(p["pattern"])
        except re.error as e:
            raise CredentialError(f"{name}: pattern is not a regular expression: {e}") from None
    if kind == "s3-access-key" and p.get("test_timeout", 30.0) < 0:
        raise CredentialError(f"{name}: test_timeout must be >= 0")


def definition_from_settings(name: str, entry) -> Definition:
    """A settings file's `credentials.managed.<name>` entry (a ManagedCredential) as a Definition."""
    data = entry.model_dump(exclude_none=True)
    if entry.dsn is not None:
        data["dsn"] = entry.dsn.get_secret_value()
    return make_definition(name, data.pop("kind"), data, source="settings")
