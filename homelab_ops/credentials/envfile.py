"""Render a `.env` for docker compose from a template that names credentials, never values.

The template is Jinja2 (StrictUndefined), one line at a time: a line
`TELEGRAM_BOT_TOKEN={{ cred("telegram_bot") }}` becomes the current value, quoted so
compose reads it literally; `{{ cred("name", "field") }}` picks another field (`username`,
`htpasswd`, `access_key_id`). `cred(...)` with quoted names is the only form: anything else
between `{{ }}` (another name, a filter, a variable argument, `{% %}`, `{# #}`) is an error
naming the line, and so is the old `{{ cred "name" }}` form, before any value is read.
Comment lines and lines without `{{` are copied as they are. The file is written atomically
with mode 0600.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import jinja2
from jinja2 import nodes

from homelab_ops.credentials.errors import CredentialError
from homelab_ops.files import write_atomic

_ENV = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False)
FORM = '{{ cred("name") }} or {{ cred("name", "field") }}'
_OLD = re.compile(r'\{\{\s*cred\s+"([^"]+)"(?:\s+"([^"]+)")?\s*\}\}')  # before #15
_ASSIGN = re.compile(r"^(\s*(?:export\s+)?[A-Za-z_][A-Za-z0-9_]*=)(.*?)\s*$")
_SAFE = re.compile(r"[A-Za-z0-9_\-.:/@+,=%^~?]*")
_NOT_OURS = {"block_begin": "{% %}", "comment_begin": "{# #}", "raw_begin": "{% raw %}",
             "linestatement_begin": "line statements", "linecomment_begin": "line comments"}

Lookup = Callable[[str, str], str]


@dataclass(frozen=True)
class _Line:
    number: int
    text: str
    creds: tuple[tuple[str, str], ...]  # (credential, field) in order; empty: the line is copied as is
    prefix: str = ""  # `KEY=` of an assignment line
    value: str = ""  # what follows it, trailing blanks dropped
    whole: bool = False  # the value is one placeholder: it is quoted for compose

    @property
    def key(self) -> str:
        return self.prefix.strip().removeprefix("export").strip().rstrip("=")


def _replacement(m: re.Match) -> str:
    args = ", ".join(f'"{a}"' for a in m.groups() if a is not None)
    return "{{ cred(" + args + ") }}"


def _expressions(number: int, text: str) -> list[str]:
    """The `{{ ... }}` blocks of one line as written; `{% %}` and `{# #}` are refused."""
    try:
        tokens = list(_ENV.lex(text))
    except jinja2.TemplateSyntaxError as e:
        raise CredentialError(f"template line {number}: {e.message}; placeholders are {FORM}") from None
    out: list[str] = []
    current: list[str] | None = None
    for _, kind, value in tokens:
        if kind in _NOT_OURS:
            raise CredentialError(f"template line {number}: {_NOT_OURS[kind]} is not used in an env template; "
                                  f"placeholders are {FORM}")
        if kind == "variable_begin":
            current = []
        if current is not None:
            current.append(value)
        if kind == "variable_end" and current is not None:
            out.append("".join(current))
            current = None
    if current is not None:
        raise CredentialError(f"template line {number}: {''.join(current).rstrip()} is not closed with }}}}; "
                              f"placeholders are {FORM}")
    return out


def _cred_call(number: int, expression: str) -> tuple[str, str]:
    """(credential, field) of one `{{ cred("name"[, "field"]) }}`; any other form is an error."""
    try:
        body = _ENV.parse(expression).body
    except jinja2.TemplateSyntaxError:
        body = []
    node = body[0].nodes[0] if len(body) == 1 and isinstance(body[0], nodes.Output) and len(body[0].nodes) == 1 \
        else None
    if (isinstance(node, nodes.Call) and isinstance(node.node, nodes.Name) and node.node.name == "cred"
            and 1 <= len(node.args) <= 2 and not node.kwargs and node.dyn_args is None and node.dyn_kwargs is None
            and all(isinstance(a, nodes.Const) and isinstance(a.value, str) and a.value for a in node.args)):
        name, field = (node.args[0].value, node.args[1].value if len(node.args) == 2 else "value")
        return name, field
    raise CredentialError(f"template line {number}: {expression} is not a {FORM} placeholder "
                          "(quoted names only: no other names, filters or expressions)")


def _parse(template: str) -> list[_Line]:
    """Every line, checked: an error names the line before any value is read."""
    raw = template.splitlines()
    old = [f"line {n}: write {_replacement(m)} instead of {m.group(0)}"
           for n, text in enumerate(raw, 1) if not text.lstrip().startswith("#")
           for m in _OLD.finditer(text)]
    if old:
        raise CredentialError("the env template uses the old placeholder form: " + "; ".join(old))
    lines = []
    for number, text in enumerate(raw, 1):
        if text.lstrip().startswith("#") or "{{" not in text:
            lines.append(_Line(number, text, ()))
            continue
        creds = tuple(dict.fromkeys(_cred_call(number, e) for e in _expressions(number, text)))
        a = _ASSIGN.match(text)
        if a is None:
            lines.append(_Line(number, text, creds))
            continue
        value = a.group(2)
        kinds = [kind for _, kind, _ in _ENV.lex(value)]
        whole = kinds[:1] == ["variable_begin"] and kinds[-1:] == ["variable_end"] and kinds.count("variable_begin") == 1
        lines.append(_Line(number, text, creds, a.group(1), value, whole))
    return lines


def placeholders(template: str) -> list[tuple[str, str]]:
    """(credential, field) for every placeholder outside comments, in order, without duplicates."""
    return list(dict.fromkeys(c for line in _parse(template) for c in line.creds))


def quote(key: str, value: str) -> str:
    """Quote for compose's .env parser: single quotes make `$` and `#` literal."""
    if _SAFE.fullmatch(value):
        return value
    if "'" in value or "\n" in value or "\r" in value:
        raise CredentialError(f"{key}: the value contains a quote or a line break and cannot be written to a "
                              ".env file safely")
    return f"'{value}'"


def _fill(line: _Line, source: str, cred: Callable[..., str]) -> str:
    """One line's template rendered with `cred`; an error names the line, never a value."""
    try:
        return _ENV.from_string(source).render(cred=cred)
    except (CredentialError, jinja2.TemplateError) as e:
        message = (e.message or type(e).__name__) if isinstance(e, jinja2.TemplateError) else str(e)
        raise CredentialError(f"template line {line.number}: {message}") from None


def _checked(lookup: Lookup) -> Lookup:
    def value(name: str, field: str) -> str:
        v = lookup(name, field)
        if not isinstance(v, str):
            raise CredentialError(f"{name}: field {field!r} is not text")
        return v
    return value


def render(template: str, lookup: Lookup) -> str:
    """Every placeholder with its value; the whole template is checked before `lookup` is called."""
    lines, lookup = _parse(template), _checked(lookup)
    out = []
    for line in lines:
        if not line.creds:
            out.append(line.text)
        elif line.whole:
            out.append(line.prefix + _fill(line, line.value,
                                           lambda name, field="value": quote(line.key, lookup(name, field))))
        else:
            out.append(_fill(line, line.text, lambda name, field="value": lookup(name, field)))
    return "\n".join(out) + "\n"


def environment_for(template: str, name: str, lookup: Lookup) -> dict[str, str]:
    """The variables whose template line names credential `name`, with their raw values (what a
    container's environment holds, no compose quoting): what a consumer must be given after `name`
    rotates."""
    lines, lookup = _parse(template), _checked(lookup)
    out = {}
    for line in lines:
        if line.prefix and any(n == name for n, _ in line.creds):
            out[line.key] = _fill(line, line.value, lambda n, field="value": lookup(n, field))
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


def checked_template(template_path: str | os.PathLike) -> tuple[str, list[tuple[str, str]]]:
    """The template's text and its placeholders; an error names the file (and the line), before any
    value is read. What `render-env`, a rotation and doctor each check first."""
    template = read_template(template_path)
    try:
        return template, placeholders(template)
    except CredentialError as e:
        raise CredentialError(f"{template_path}: {e}") from None


def render_env_file(store, template_path: str | os.PathLike, out_path: str | os.PathLike) -> list[str]:
    """Render the template with the store's current values; returns the credential names used."""
    template, wanted = checked_template(template_path)
    values = {(n, f): store.value(n, f, purpose=f"render-env {Path(out_path).name}") for n, f in wanted}
    write_env_file(out_path, render(template, lambda n, f: values[(n, f)]))
    return sorted({n for n, _ in wanted})
