"""Find secrets hard-coded in n8n workflows: bot tokens, chat ids, keys, credential and webhook ids.

Pure functions over workflow documents (n8n's export format) plus readers for
files and n8n's database. A finding names the workflow, node, parameter path
and rule and shows a redacted excerpt; the value itself stays in a field that
is never printed or serialized (templatize needs it to rewrite the document).

Rules beyond gitleaks': a Telegram token inside `api.telegram.org/bot<token>/`
is found (there is no word boundary between `bot` and the token), and chat ids
are judged by where they sit (a Telegram node's chatId, a Bot API call's
chat_id), since a bare number is not a secret anywhere else.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

RULES = {
    "telegram-bot-token": "Telegram bot token, also inside api.telegram.org/bot<token>/ URLs",
    "telegram-chat-id": "chat id hard-coded in a Telegram node or a Bot API call",
    "aws-access-key-id": "AWS access key id",
    "github-token": "GitHub token",
    "slack-token": "Slack token",
    "private-key": "PEM private key",
    "jwt": "JSON Web Token",
    "url-credentials": "password inside a URL (scheme://user:password@host)",
    "hardcoded-secret": "literal value under a secret-like key (password, token, apiKey, Authorization...)",
    "n8n-credential-id": "n8n credential id: ties the export to one instance (n8n finds credentials by name "
                         "when the id is null)",
    "n8n-webhook-id": "n8n webhook id: part of the production webhook URL",
}
IDENTIFIER_RULES = frozenset({"n8n-credential-id", "n8n-webhook-id"})

_TOKENS = [
    ("telegram-bot-token",
     re.compile(r"(?:(?<=/bot)|(?<![A-Za-z0-9_:-]))(\d{6,12}:[A-Za-z0-9_-]{30,50})(?![A-Za-z0-9_-])")),
    ("aws-access-key-id", re.compile(r"(?<![A-Z0-9])((?:AKIA|ASIA)[A-Z0-9]{16})(?![A-Z0-9])")),
    ("github-token", re.compile(r"(?<![A-Za-z0-9_])(gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{22,255})")),
    ("slack-token", re.compile(r"(?<![A-Za-z0-9])(xox[abposr]-[A-Za-z0-9-]{10,})")),
    ("private-key", re.compile(r"(-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?(?:-----END [A-Z ]*PRIVATE KEY-----|\Z))")),
    ("jwt", re.compile(r"(?<![A-Za-z0-9_-])(eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,})")),
    ("url-credentials", re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*://[^/\s:@{}'\"]+:([^/\s@{}'\"$]+)@")),
]
_CHAT_IN_TEXT = re.compile(r"""(?:chat_id|chatId)["']?\s*[:=]\s*["']?(-?\d{5,20}|@[A-Za-z][A-Za-z0-9_]{3,})""")
_CHAT_VALUE = re.compile(r"\s*(-?\d{5,20}|@[A-Za-z][A-Za-z0-9_]{3,})\s*")
_PASSWORD_KEY = re.compile(r"(?:^|_)(?:password|passwd|pwd|pass)$")
_SECRET_KEY = re.compile(
    r"(?:^|_)(?:password|passwd|pwd|pass|secret|token|api_?key|apikey|access_?key|secret_?key|private_?key|"
    r"client_?secret|auth_?token|access_?token|refresh_?token|bearer|authorization|x_?api_?key|signature|"
    r"webhook_?secret|signing_?secret)$")
_SCHEME_PREFIX = re.compile(r"^(?:Bearer|Basic|Token|token|Bot)\s+")
_PLACEHOLDER = re.compile(
    r"(?i)^(?:<[^>]*>|\$\{[^}]*\}|\$[A-Z_][A-Z0-9_]*|\*+|x+|\.+|-+|changeme|change_me|change-me|your[_ -].*|"
    r"example.*|placeholder|todo|none|null|redacted|\[redacted\]|secret|password|token|test|dummy)$")


@dataclass(frozen=True)
class Finding:
    """One hard-coded secret. `secret` is kept for templatize only and never shown."""

    source: str
    workflow_id: str | None
    workflow: str
    node: str | None
    path: str
    rule: str
    excerpt: str
    loc: tuple = field(repr=False, compare=False)
    span: tuple[int, int] | None = field(default=None, repr=False, compare=False)
    key: str | None = field(default=None, repr=False, compare=False)
    secret: str = field(default="", repr=False, compare=False)

    def as_dict(self) -> dict:
        return {"source": self.source, "workflow_id": self.workflow_id, "workflow": self.workflow,
                "node": self.node, "path": self.path, "rule": self.rule, "excerpt": self.excerpt}

    def __str__(self) -> str:
        where = " / ".join(p for p in (self.workflow, self.node, self.path) if p)
        return f"{self.source}: {where}: {self.rule}: {self.excerpt}"


class ScanError(ValueError):
    """A file that should hold workflows but cannot be read as JSON."""


# --------------------------------------------------------------------------- helpers


def snake(key: str) -> str:
    key = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", key)
    return re.sub(r"[^A-Za-z0-9]+", "_", key).strip("_").lower()


def shannon(s: str) -> float:
    if not s:
        return 0.0
    counts = Counter(s)
    return -sum(c / len(s) * math.log2(c / len(s)) for c in counts.values())


def _classes(s: str) -> int:
    return sum(bool(re.search(p, s)) for p in (r"[a-z]", r"[A-Z]", r"[0-9]", r"[^A-Za-z0-9]"))


def _looks_secret(value: str, password_key: bool) -> bool:
    v = value.strip()
    if not v or _PLACEHOLDER.fullmatch(v):
        return False
    if password_key:
        return len(v) >= 4
    return (len(v) >= 16 and not re.search(r"\s", v) and shannon(v) >= 3.0 and _classes(v) >= 2
            and not re.fullmatch(r"[A-Za-z]+", v) and not v.startswith(("http://", "https://")))


def _loc_text(loc: tuple) -> str:
    out = ""
    for p in loc:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def _walk(obj: Any, loc: tuple, key: str | None = None) -> Iterator[tuple[tuple, str | None, Any]]:
    """(location, the key the value answers to, scalar) for every string/number; n8n's
    `{"name": "chat_id", "value": ...}` pairs answer to their name."""
    if isinstance(obj, dict):
        pair = obj.get("name") if isinstance(obj.get("name"), str) and "value" in obj else None
        for k, v in obj.items():
            yield from _walk(v, loc + (k,), pair if (k == "value" and pair) else k)
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _walk(v, loc + (i,), key)
    elif isinstance(obj, (str, int)) and not isinstance(obj, bool):
        yield loc, key, obj


def _spans(value: str, key: str | None, telegramish: bool) -> list[tuple[str, int, int]]:
    """(rule, start, end) of every secret in one string, overlaps resolved in favour of the first rule."""
    found: list[tuple[str, int, int]] = []
    for rule, pattern in _TOKENS:
        for m in pattern.finditer(value):
            if rule == "url-credentials" and m.group(1).startswith(("{{", "$")):
                continue
            found.append((rule, m.start(1), m.end(1)))
    nkey = snake(key) if isinstance(key, str) else ""
    expression = value.startswith("=")
    literal = value[1:] if expression and "{{" not in value else (None if expression else value)
    offset = 1 if expression else 0
    if telegramish:
        if nkey == "chat_id" and literal is not None and (m := _CHAT_VALUE.fullmatch(literal)):
            found.append(("telegram-chat-id", m.start(1) + offset, m.end(1) + offset))
        for m in _CHAT_IN_TEXT.finditer(value):
            found.append(("telegram-chat-id", m.start(1), m.end(1)))
    if literal is not None and _SECRET_KEY.search(nkey):
        m = _SCHEME_PREFIX.match(literal)
        start = m.end() if m else 0
        if _looks_secret(literal[start:], bool(_PASSWORD_KEY.search(nkey))):
            found.append(("hardcoded-secret", start + offset, len(literal) + offset))
    order = {r: i for i, r in enumerate(RULES)}
    kept: list[tuple[str, int, int]] = []
    for rule, s, e in sorted(found, key=lambda f: (order[f[0]], f[1])):
        if all(e <= ks or s >= ke for _, ks, ke in kept):
            kept.append((rule, s, e))
    return sorted(kept, key=lambda f: f[1])


def _excerpt(value: str, spans: list[tuple[str, int, int]], start: int, end: int, width: int = 24) -> str:
    """The text around one finding with every secret in the string masked."""
    out, pos = [], 0
    marks = []
    for _, s, e in spans:
        out.append(value[pos:s])
        marks.append((sum(len(x) for x in out), s == start and e == end))
        out.append("[REDACTED]")
        pos = e
    out.append(value[pos:])
    masked = "".join(out)
    at = next(p for p, this in marks if this)
    lo, hi = max(0, at - width), min(len(masked), at + len("[REDACTED]") + width)
    text = ("…" if lo else "") + masked[lo:hi] + ("…" if hi < len(masked) else "")
    return text.replace("\n", "\\n")


# --------------------------------------------------------------------------- scanning


def scan_workflow(wf: dict, source: str, *, identifiers: bool = True, loc: tuple = ()) -> list[Finding]:
    """Findings in one workflow document; `identifiers` adds credential and webhook ids (exports)."""
    out: list[Finding] = []
    wid = wf.get("id")
    wname = str(wf.get("name") or wid or "?")

    def emit(node_name, rel: tuple, rule, excerpt, full: tuple, span=None, key=None, secret=""):
        out.append(Finding(source, str(wid) if wid is not None else None, wname, node_name, _loc_text(rel), rule,
                           excerpt, full, span, key, secret))

    def strings(obj, base: tuple, rel_base: tuple, node_name, telegramish):
        for full, key, value in _walk(obj, base):
            rel = rel_base + full[len(base):]
            if isinstance(value, int):
                if telegramish and snake(str(key)) == "chat_id" and _CHAT_VALUE.fullmatch(str(value)):
                    emit(node_name, rel, "telegram-chat-id", "[REDACTED]", full, None, key, str(value))
                continue
            spans = _spans(value, key if isinstance(key, str) else None, telegramish)
            for rule, s, e in spans:
                emit(node_name, rel, rule, _excerpt(value, spans, s, e), full, (s, e), key, value[s:e])

    for i, node in enumerate(wf.get("nodes") or []):
        if not isinstance(node, dict):
            continue
        base = loc + ("nodes", i)
        name = str(node.get("name") or f"node {i}")
        params = node.get("parameters") or {}
        telegramish = ("telegram" in str(node.get("type", "")).lower()
                       or "api.telegram.org" in json.dumps(params, ensure_ascii=False))
        strings(params, base + ("parameters",), ("parameters",), name, telegramish)
        if identifiers:
            for ctype, ref in (node.get("credentials") or {}).items():
                if isinstance(ref, dict) and ref.get("id") not in (None, ""):
                    emit(name, ("credentials", ctype, "id"), "n8n-credential-id",
                         f"{ctype}: id [REDACTED] ({ref.get('name', '?')})", base + ("credentials", ctype, "id"),
                         key="id", secret=str(ref["id"]))
            if node.get("webhookId"):
                emit(name, ("webhookId",), "n8n-webhook-id", "webhookId [REDACTED]", base + ("webhookId",),
                     key="webhookId", secret=str(node["webhookId"]))
    for top in ("pinData", "staticData"):
        if wf.get(top):
            strings(wf[top], loc + (top,), (top,), None, False)
    return out


def is_workflow(doc: Any) -> bool:
    return isinstance(doc, dict) and isinstance(doc.get("nodes"), list)


def scan_document(doc: Any, source: str, *, identifiers: bool = True) -> list[Finding]:
    """A file's content: one workflow, or a list of them (`n8n export:workflow --all`)."""
    if is_workflow(doc):
        return scan_workflow(doc, source, identifiers=identifiers)
    if isinstance(doc, list):
        return [f for i, wf in enumerate(doc) if is_workflow(wf)
                for f in scan_workflow(wf, source, identifiers=identifiers, loc=(i,))]
    return []


def load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ScanError(f"{path}: not readable as JSON: {e}") from None


def json_files(paths) -> list[Path]:
    """Files as given, folders expanded to their *.json files (sorted, hidden ones skipped)."""
    out = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(f for f in p.rglob("*.json") if not any(part.startswith(".") for part in f.parts[len(p.parts):]))
        else:
            out.append(p)
    return out


def scan_paths(paths, *, identifiers: bool = True) -> list[Finding]:
    return [f for p in json_files(paths) for f in scan_document(load_json(p), str(p), identifiers=identifiers)]


def scan_database(dsn: str, *, source: str = "n8n database", schema: str = "public",
                  prefix: str = "") -> tuple[list[Finding], int]:
    """Live workflows and earlier saved versions (n8n keeps them in workflow_history, secrets included).

    Credential and webhook ids are part of how a live instance works, so they
    are only reported for exports. Returns (findings, workflows scanned).
    """
    import psycopg

    from homelab_ops.n8n.workflows import export_workflows, use_schema

    with psycopg.connect(dsn, connect_timeout=10, application_name="homelab-ops secrets scan") as conn:
        conn.read_only = True
        use_schema(conn, schema)
        workflows = export_workflows(conn, prefix)
        history = []
        if conn.execute("SELECT to_regclass(%s)", (f'"{prefix}workflow_history"',)).fetchone()[0] is not None:
            history = conn.execute(
                f'SELECT h."workflowId", h."versionId", h.nodes FROM "{prefix}workflow_history" h'
                f' JOIN "{prefix}workflow_entity" w ON w.id = h."workflowId"'
                ' WHERE h."versionId" IS DISTINCT FROM w."versionId" ORDER BY h."createdAt"').fetchall()
    findings = [f for wf in workflows for f in scan_workflow(wf, source, identifiers=False)]
    names = {wf["id"]: wf["name"] for wf in workflows}
    for wid, version, nodes in history:
        doc = {"id": wid, "name": f"{names.get(wid, wid)} (saved version {str(version)[:8]})",
               "nodes": nodes if isinstance(nodes, list) else json.loads(nodes)}
        findings += scan_workflow(doc, f"{source} history", identifiers=False)
    return findings, len(workflows)


def summary(findings: list[Finding]) -> dict[str, int]:
    return dict(sorted(Counter(f.rule for f in findings).items()))
