"""Pure rules of the credential store: names, periods, secret generation, the Definition.

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
from pydantic import SecretStr

from homelab_ops import units
from homelab_ops.credentials.errors import CredentialError

STAGES = ("pending", "current", "previous")
NAME_RE = re.compile(r"[a-z0-9][a-z0-9_.-]{0,62}")

# Alphabets are chosen so a value never needs escaping in a .env file, a shell or a URL.
ALPHABETS = {
    "alnum": string.ascii_letters + string.digits,
    "hex": "0123456789abcdef",
    "urlsafe": string.ascii_letters + string.digits + "-_",
    "symbols": string.ascii_letters + string.digits + "!#%+,-./:=?@^_~",
}

def validate_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise CredentialError(
            f"{name!r} is not a credential name: use 1-63 of a-z 0-9 _ . - starting with a letter or digit")
    return name


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
# Definitions: a credential's kind and options, validated by the kind's model
# (homelab_ops/credentials/kinds/) for the settings file and `creds add` alike.
# ---------------------------------------------------------------------------

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
        return units.duration_seconds(self.period)  # validated by the kind's model when made

    def option(self, key: str, default: Any = None) -> Any:
        v = self.params.get(key)
        return default if v is None else v


def make_definition(name: str, kind: str, options: Mapping[str, Any], *, source: str = "cli") -> Definition:
    """Validate `creds add`'s name, kind and options through the kind's model, as the settings file is."""
    from homelab_ops.credentials import kinds  # the kind modules import this one

    given = {k: v for k, v in options.items() if v is not None and k != "kind"}
    return definition_from_settings(name, kinds.validate(name, {**given, "kind": kind}), source=source)


def definition_from_settings(name: str, entry, *, source: str = "settings") -> Definition:
    """A validated options model (a settings file's `credentials.managed.<name>` entry) as a Definition."""
    validate_name(name)
    params = entry.model_dump(exclude_none=True, exclude={"kind", "period", "consumers", "description"})
    secret = {k: v.get_secret_value() for k, v in params.items() if isinstance(v, SecretStr)}
    params = {k: v for k, v in params.items() if k not in secret}
    return Definition(name, entry.kind, str(entry.period), tuple(entry.consumers), entry.description or "",
                      params, secret, source)
