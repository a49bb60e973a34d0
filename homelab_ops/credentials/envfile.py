"""Render a `.env` for docker compose from a template that names credentials, never values.

A template line `TELEGRAM_BOT_TOKEN={{ cred "telegram_bot" }}` becomes the
current value, quoted so compose reads it literally; `{{ cred "name" "field" }}`
picks another field (`username`, `htpasswd`, `access_key_id`). Comment lines
are copied as they are. The file is written atomically with mode 0600.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Callable

from homelab_ops.credentials.errors import CredentialError
from homelab_ops.files import write_atomic

PLACEHOLDER = re.compile(r'\{\{\s*cred\s+"([^"]+)"(?:\s+"([^"]+)")?\s*\}\}')
_ANY = re.compile(r"\{\{.*?\}\}")
_ASSIGN = re.compile(r"^(\s*(?:export\s+)?[A-Za-z_][A-Za-z0-9_]*=)(.*?)\s*$")
_SAFE = re.compile(r"[A-Za-z0-9_\-.:/@+,=%^~?]*")


def placeholders(template: str) -> list[tuple[str, str]]:
    """(credential, field) for every placeholder outside comments, in order, without duplicates."""
    seen: dict[tuple[str, str], None] = {}
    for line in template.splitlines():
        if line.lstrip().startswith("#"):
            continue
        for m in PLACEHOLDER.finditer(line):
            seen[(m.group(1), m.group(2) or "value")] = None
    return list(seen)


def quote(key: str, value: str) -> str:
    """Quote for compose's .env parser: single quotes make `$` and `#` literal."""
    if _SAFE.fullmatch(value):
        return value
    if "'" in value or "\n" in value or "\r" in value:
        raise CredentialError(f"{key}: the value contains a quote or a line break and cannot be written to a "
                              ".env file safely")
    return f"'{value}'"


def render(template: str, lookup: Callable[[str, str], str]) -> str:
    """Substitute every placeholder; unknown `{{ ... }}` forms are an error, not left for compose to mangle."""
    out = []
    for number, line in enumerate(template.splitlines(), 1):
        if line.lstrip().startswith("#") or "{{" not in line:
            out.append(line)
            continue
        for m in _ANY.finditer(line):
            if not PLACEHOLDER.fullmatch(m.group(0)):
                raise CredentialError(f"template line {number}: {m.group(0)!r} is not a "
                                      '{{ cred "name" }} placeholder')
        a = _ASSIGN.match(line)
        whole = a and PLACEHOLDER.fullmatch(a.group(2))
        if whole:
            key = a.group(1).strip().removeprefix("export").strip().rstrip("=")
            out.append(a.group(1) + quote(key, lookup(whole.group(1), whole.group(2) or "value")))
        else:
            out.append(PLACEHOLDER.sub(lambda m: lookup(m.group(1), m.group(2) or "value"), line))
    return "\n".join(out) + "\n"


def environment_for(template: str, name: str, lookup: Callable[[str, str], str]) -> dict[str, str]:
    """The variables whose template line names credential `name`, with their raw values (what a
    container's environment holds, no compose quoting): what a consumer must be given after `name`
    rotates."""
    out = {}
    for line in template.splitlines():
        a = _ASSIGN.match(line)
        if line.lstrip().startswith("#") or not a:
            continue
        if any(m.group(1) == name for m in PLACEHOLDER.finditer(a.group(2))):
            key = a.group(1).strip().removeprefix("export").strip().rstrip("=")
            out[key] = PLACEHOLDER.sub(lambda m: lookup(m.group(1), m.group(2) or "value"), a.group(2))
    return out


def write_env_file(path: str | os.PathLike, text: str) -> None:
    """Atomic replace; the file is 0600 from its first byte."""
    write_atomic(path, text.encode(), mode=0o600)


def read_template(template_path: str | os.PathLike) -> str:
    """The env template's text; a file that cannot be read is named with the reason."""
    try:
        return Path(template_path).read_text()
    except OSError as e:
        raise CredentialError(f"{template_path}: cannot read the env template: {e.strerror}") from None


def render_env_file(store, template_path: str | os.PathLike, out_path: str | os.PathLike) -> list[str]:
    """Render the template with the store's current values; returns the credential names used."""
    template = read_template(template_path)
    wanted = placeholders(template)
    values = {(n, f): store.value(n, f, purpose=f"render-env {Path(out_path).name}") for n, f in wanted}
    write_env_file(out_path, render(template, lambda n, f: values[(n, f)]))
    return sorted({n for n, _ in wanted})
