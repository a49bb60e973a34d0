"""Rewrite scan findings in exported workflows to `={{ $env.NAME }}` and write the `.env.template`.

A literal parameter becomes an n8n expression; a secret inside an expression or
a Code node becomes `$env.NAME` spliced into the JavaScript; a credential id
becomes null (n8n then finds the credential by name and type on import); a
webhook id is dropped (n8n assigns a new one). The same value gets the same
name across all files. The template names a credential per variable, so
`homelab-ops creds render-env` can fill it from the store.
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from homelab_ops.n8n.workflow_scan import (
    IDENTIFIER_RULES,
    Finding,
    ScanError,
    is_workflow,
    json_files,
    load_json,
    scan_document,
    snake,
)

_BASE_NAMES = {
    "telegram-bot-token": "TELEGRAM_BOT_TOKEN",
    "telegram-chat-id": "TELEGRAM_CHAT_ID",
    "aws-access-key-id": "AWS_ACCESS_KEY_ID",
    "github-token": "GITHUB_TOKEN",
    "slack-token": "SLACK_TOKEN",
}
_CODE_KEYS = frozenset({"jsCode", "functionCode", "functionItemCode"})


@dataclass
class EnvVar:
    name: str
    rule: str
    used_at: list[str] = field(default_factory=list)

    @property
    def credential(self) -> str:
        return self.name.lower()


class Namer:
    """One environment variable per distinct secret value, named after what it is."""

    def __init__(self):
        self._by_value: dict[str, str] = {}
        self.vars: dict[str, EnvVar] = {}

    def name_for(self, f: Finding) -> str:
        where = " / ".join(p for p in (f.workflow, f.node, f.path) if p)
        if f.secret in self._by_value:
            name = self._by_value[f.secret]
        else:
            base = _BASE_NAMES.get(f.rule) or self._derived(f)
            name, n = base, 2
            while name in self.vars:
                name, n = f"{base}_{n}", n + 1
            self._by_value[f.secret] = name
            self.vars[name] = EnvVar(name, f.rule)
        self.vars[name].used_at.append(where)
        return name

    @staticmethod
    def _derived(f: Finding) -> str:
        parts = [snake(f.node or "")] if f.node else []
        if f.key and not str(f.key).isdigit():
            parts.append(snake(str(f.key)))
        name = "_".join(p for p in parts if p).upper()[:48] or "SECRET"
        return name if re.match(r"[A-Z_]", name) else f"N8N_{name}"


def _string_literal_at(code: str, start: int, end: int) -> tuple[str, int, int] | None:
    """(quote, content start, content end) of the JS string literal holding [start, end), if any."""
    i, n = 0, len(code)
    while i < n:
        c = code[i]
        if c in "'\"`":
            j = i + 1
            while j < n and code[j] != c:
                j += 2 if code[j] == "\\" else 1
            if i < start and end <= j:
                return c, i + 1, j
            i = j + 1
        elif code.startswith("//", i):
            j = code.find("\n", i)
            i = n if j == -1 else j
        else:
            i += 1
    return None


def _js_splice(code: str, start: int, end: int, name: str) -> str:
    ref = f"$env.{name}"
    lit = _string_literal_at(code, start, end)
    if lit is None:
        return code[:start] + ref + code[end:]
    q, ls, le = lit
    if (start, end) == (ls, le):
        return code[:ls - 1] + ref + code[le + 1:]
    if q == "`":
        return code[:start] + "${" + ref + "}" + code[end:]
    return code[:start] + f"{q} + {ref} + {q}" + code[end:]


def _blocks(body: str) -> list[tuple[int, int]]:
    return [(m.start() + 2, m.end() - 2) for m in re.finditer(r"\{\{.*?\}\}", body, re.S)]


def rewrite_string(value: str, spans: list[tuple[int, int, str]], *, code: bool = False) -> str:
    """Replace each (start, end, NAME) span of `value`, working from the end so offsets hold."""
    spans = sorted(spans, reverse=True)
    if code:
        for s, e, name in spans:
            value = _js_splice(value, s, e, name)
        return value
    if not value.startswith("="):
        if len(spans) == 1 and spans[0][:2] == (0, len(value)):
            return "={{ $env." + spans[0][2] + " }}"
        for s, e, name in spans:
            value = value[:s] + "{{ $env." + name + " }}" + value[e:]
        return "=" + value
    body = value[1:]
    for s, e, name in spans:
        s, e = s - 1, e - 1
        block = next(((bs, be) for bs, be in _blocks(body) if bs <= s and e <= be), None)
        if block is None:
            body = body[:s] + "{{ $env." + name + " }}" + body[e:]
        else:
            bs, be = block
            body = body[:bs] + _js_splice(body[bs:be], s - bs, e - bs, name) + body[be:]
    return "=" + body


def templatize_document(doc, findings: list[Finding], namer: Namer):
    """A copy of `doc` with every finding replaced by an environment reference."""
    doc = copy.deepcopy(doc)
    by_loc: dict[tuple, list[Finding]] = {}
    for f in findings:
        by_loc.setdefault(f.loc, []).append(f)
    for loc, fs in by_loc.items():
        parent = doc
        for part in loc[:-1]:
            parent = parent[part]
        last = loc[-1]
        if fs[0].rule in IDENTIFIER_RULES:
            if fs[0].rule == "n8n-credential-id":
                parent[last] = None
            else:
                parent.pop(last, None)
            continue
        value = parent[last]
        names = [(f, namer.name_for(f)) for f in fs]
        if not isinstance(value, str) or any(f.span is None for f in fs):
            parent[last] = "={{ $env." + names[0][1] + " }}"
            continue
        code = last in _CODE_KEYS
        parent[last] = rewrite_string(value, [(f.span[0], f.span[1], n) for f, n in names], code=code)
    return doc


@dataclass
class TemplatizeResult:
    written: list[tuple[Path, int]]  # output file, findings rewritten
    skipped: list[Path]  # inputs that hold no workflow
    env_template: Path
    vars: list[EnvVar]


def env_template_text(vars: list[EnvVar]) -> str:
    lines = [
        "# Values n8n reads with {{ $env.NAME }} (written by `homelab-ops workflows templatize`).",
        "# Store each as a credential (`homelab-ops creds add NAME --kind manual`, then `creds set NAME`)",
        "# and render this file with `homelab-ops creds render-env`. n8n must be allowed to read its",
        "# environment: N8N_BLOCK_ENV_ACCESS_IN_NODE=false.",
    ]
    for v in vars:
        lines.append("")
        lines.append(f"# {v.rule}: " + "; ".join(dict.fromkeys(v.used_at)))
        lines.append(f'{v.name}={{{{ cred("{v.credential}") }}}}')
    return "\n".join(lines) + "\n"


def templatize_files(paths, out_dir: str | Path, env_template: str | Path | None = None) -> TemplatizeResult:
    """Write a templatized copy of each workflow file into `out_dir`, plus the `.env.template`."""
    out_dir = Path(out_dir)
    files = json_files(paths)
    names = [f.name for f in files]
    if len(set(names)) != len(names):
        raise ScanError("two input files share a name; templatize them into different folders")
    for f in files:
        if (out_dir / f.name).resolve() == f.resolve():
            raise ScanError(f"{f}: the output would overwrite the input; choose another --out folder")
    namer = Namer()
    written, skipped = [], []
    docs = [(f, load_json(f)) for f in files]
    out_dir.mkdir(parents=True, exist_ok=True)
    for f, doc in docs:
        if not (is_workflow(doc) or (isinstance(doc, list) and any(is_workflow(w) for w in doc))):
            skipped.append(f)
            continue
        findings = scan_document(doc, str(f))
        new = templatize_document(doc, findings, namer)
        target = out_dir / f.name
        target.write_text(json.dumps(new, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        written.append((target, len(findings)))
    env_path = Path(env_template) if env_template else out_dir / ".env.template"
    vars = list(namer.vars.values())
    env_path.write_text(env_template_text(vars), encoding="utf-8")
    return TemplatizeResult(written, skipped, env_path, vars)
