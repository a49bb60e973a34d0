"""Build a throwaway n8n database that looks like a real homelab instance.

Why: the n8n backup, reporting and security-scan code needs something to
run against that has n8n's *real* tables and columns (taken from the schema
that n8n 1.123.0's own migrations create) and realistic rows, without
touching the production n8n database on the Pi.

Everything here is deterministic for a given ``seed`` and ``now`` so tests
and screenshots are reproducible. No CLI lives here; a click command wraps
:func:`create_demo_database` elsewhere.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import math
import random
import re
import string
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from homelab_ops.n8n.executions import EXECUTION_STATUSES

__all__ = [
    "DEMO_DATABASE",
    "DEMO_MARKER",
    "EXECUTION_STATUSES",
    "N8N_VERSION",
    "SCHEMA_FILE",
    "SECRET_BOT_TOKEN",
    "SECRET_CHAT_ID",
    "SECRET_WORKFLOW_NAME",
    "DemoDatabaseExistsError",
    "SchemaLoadError",
    "create_demo_database",
    "load_schema",
    "read_schema_sql",
    "seed_demo",
    "split_sql_script",
]

N8N_VERSION = "1.123.0"
SCHEMA_FILE = f"n8n-{N8N_VERSION}-postgresql-schema.sql"


# The deliberately leaked values: the owner's real exported workflow had a
# hard-coded chat id and bot token, so the demo keeps the same *shape* (fake
# values) for the security scanner to find.
SECRET_WORKFLOW_NAME = "Gmail to Telegram"
SECRET_CHAT_ID = "-1001234567890"
SECRET_BOT_TOKEN = "123456789:AAE-demoDemoDemoDemoDemoDemoDemoDemo12"
SECRET_URL = f"https://api.telegram.org/bot{SECRET_BOT_TOKEN}/sendMessage"

# n8n parks "resume on webhook" Wait nodes at this instant (WAIT_INDEFINITELY).
_WAIT_INDEFINITELY = datetime(3000, 1, 1, tzinfo=timezone.utc)
_VAR_CHAT_ID = "-1009876543210"  # value of the $vars.TELEGRAM_CHAT_ID variable
_ID_ALPHABET = string.ascii_letters + string.digits


class SchemaLoadError(RuntimeError):
    """The shipped schema could not be applied (wrong target or a failing statement)."""


class DemoDatabaseExistsError(RuntimeError):
    """Raised instead of silently clobbering an existing database."""


# --------------------------------------------------------------------------
# Schema loading
# --------------------------------------------------------------------------

def read_schema_sql() -> str:
    """Return the n8n schema dump kept beside this module."""
    return (Path(__file__).parent / "n8n_schema" / SCHEMA_FILE).read_text(encoding="utf-8")


_DOLLAR_TAG = re.compile(r"\$(?:[A-Za-z_][A-Za-z_0-9]*)?\$")


def _quote_end(text: str, i: int, escapes: bool) -> int:
    """Index of the quote closing the one at `i` ('...' or "..."); a doubled quote is part of
    the text, and in an E'' string so is any character after a backslash."""
    q, j, n = text[i], i + 1, len(text)
    while j < n:
        if escapes and text[j] == "\\":
            j += 2
            continue
        if text[j] == q:
            if j + 1 < n and text[j + 1] == q:
                j += 2
                continue
            break
        j += 1
    return j


def split_sql_script(text: str) -> list[str]:
    """Split a pg_dump script into single statements for psycopg.

    psycopg speaks the wire protocol, not psql, so psql meta-commands
    (``\\restrict`` and friends, which pg_dump >= 15.14 emits) must go and the
    rest must be split on ``;`` without being fooled by semicolons inside
    quotes, dollar-quoted function bodies or comments. Comments are dropped;
    meta-commands are only recognised at the start of a statement, as in psql.
    """
    statements: list[str] = []
    buf: list[str] = []
    at_start = True  # nothing but whitespace/comments since the last ';'
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "-" and text.startswith("--", i):
            j = text.find("\n", i)
            i = n if j == -1 else j
            continue
        if c == "/" and text.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if text.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif text.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            buf.append(" ")
            i = j
            continue
        if at_start and c == "\\":
            j = text.find("\n", i)
            i = n if j == -1 else j
            continue
        if c.isspace():
            buf.append(c)
            i += 1
            continue
        at_start = False
        if c in "'\"":
            prev = text[i - 1] if i else ""
            before = text[i - 2] if i > 1 else ""
            escapes = c == "'" and prev in "eE" and not (before.isalnum() or before == "_")  # E'...\'...'
            j = _quote_end(text, i, escapes)
            buf.append(text[i : j + 1])
            i = j + 1
            continue
        if c == "$":
            m = _DOLLAR_TAG.match(text, i)
            prev = text[i - 1] if i else ""
            if m and not (prev.isalnum() or prev == "_"):
                end = text.find(m.group(0), m.end())
                if end == -1:
                    raise SchemaLoadError(f"unterminated dollar quote {m.group(0)} at offset {i}")
                end += len(m.group(0))
                buf.append(text[i:end])
                i = end
                continue
        if c == ";":
            stmt = "".join(buf).strip()
            if stmt:
                statements.append(stmt)
            buf.clear()
            at_start = True
            i += 1
            continue
        buf.append(c)
        i += 1
    tail = "".join(buf).strip()
    if tail:
        statements.append(tail)
    return statements


_SET_RE = re.compile(r"SET\s+(?!LOCAL\b|SESSION\b)([A-Za-z_][\w.]*)\s*(?:=|\bTO\b)", re.IGNORECASE)
_SET_CONFIG_RE = re.compile(
    r"SELECT\s+pg_catalog\.set_config\(\s*'([\w.]+)'\s*,\s*('(?:[^']|'')*')\s*,\s*false\s*\)\s*\Z",
    re.IGNORECASE,
)


def load_schema(conn: psycopg.Connection) -> None:
    """Apply the shipped n8n 1.123.0 schema to an empty database, atomically.

    The pg_dump preamble (``SET ...`` and ``set_config('search_path', '',
    false)``) is honoured but made transaction-local, and every setting it
    touched is put back before returning, so the caller's session keeps its
    normal ``search_path`` even when it has its own transaction open. psql
    meta-commands are stripped (see :func:`split_sql_script`).
    """
    statements = split_sql_script(read_schema_sql())
    with conn.transaction():
        if conn.execute("SELECT to_regclass('public.workflow_entity')").fetchone()[0] is not None:
            raise SchemaLoadError("public.workflow_entity already exists: load_schema needs an empty database")
        saved: dict[str, str] = {}

        def remember(name: str) -> None:
            if name not in saved:
                saved[name] = conn.execute("SELECT pg_catalog.current_setting(%s)", [name]).fetchone()[0]

        for number, stmt in enumerate(statements, 1):
            try:
                if m := _SET_RE.match(stmt):
                    remember(m.group(1).lower())
                    conn.execute("SET LOCAL " + stmt[3:].lstrip())
                elif m := _SET_CONFIG_RE.match(stmt):
                    remember(m.group(1).lower())
                    conn.execute(f"SELECT pg_catalog.set_config('{m.group(1)}', {m.group(2)}, true)")
                else:
                    conn.execute(stmt)
            except psycopg.Error as exc:
                snippet = " ".join(stmt.split())[:160]
                raise SchemaLoadError(f"schema statement #{number} failed: {exc}\n  {snippet}") from exc
        for name, value in reversed(saved.items()):
            conn.execute("SELECT pg_catalog.set_config(%s, %s, true)", [name, value])


# --------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------

_enc_str = json.encoder.encode_basestring  # C-accelerated, same as json.dumps(ensure_ascii=False)


def _flatted(value: Any) -> str:
    """Serialise like the JS ``flatted`` package, which n8n uses for execution_data.data.

    Every object/array/string goes into a flat list and is referenced by its
    index (as a string); strings are de-duplicated by value, containers by
    identity. Numbers, booleans and null stay inline. Hand-rolled rather than
    json.dumps per item because this runs for tens of thousands of rows.
    """
    strings: dict[str, str] = {}
    objects: dict[int, str] = {}
    items: list[Any] = []

    def ref(v: Any) -> str:
        t = type(v)
        if t is str:
            found = strings.get(v)
            if found is None:
                found = strings[v] = f'"{len(items)}"'
                items.append(v)
            return found
        if t is dict or t is list:
            found = objects.get(id(v))
            if found is None:
                found = objects[id(v)] = f'"{len(items)}"'
                items.append(v)
            return found
        if v is None:
            return "null"
        if t is bool:
            return "true" if v else "false"
        if t is int:
            return str(v)
        return json.dumps(v)

    ref(value)
    out: list[str] = []
    k = 0
    while k < len(items):
        v = items[k]
        if type(v) is dict:
            out.append("{" + ",".join(_enc_str(key) + ":" + ref(x) for key, x in v.items()) + "}")
        elif type(v) is list:
            out.append("[" + ",".join(ref(x) for x in v) + "]")
        else:
            out.append(_enc_str(v))
        k += 1
    return "[" + ",".join(out) + "]"


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _ms(dt: datetime) -> int:
    return int(dt.timestamp() * 1000)


def _iso(dt: datetime) -> str:
    return dt.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _trunc_ms(dt: datetime) -> datetime:
    """Match Postgres timestamp(3) so values round-trip exactly."""
    return dt.replace(microsecond=dt.microsecond // 1000 * 1000)


class _Ids:
    """Deterministic n8n-style identifiers (16-char nanoids and uuid4s) from one RNG."""

    def __init__(self, rng: random.Random):
        self.rng = rng

    def nano(self, size: int = 16) -> str:
        return "".join(self.rng.choices(_ID_ALPHABET, k=size))

    def uuid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))


# --------------------------------------------------------------------------
# Workflow templates
# --------------------------------------------------------------------------

_CREDENTIAL_NAMES = {
    "gmailOAuth2": "Gmail account",
    "telegramApi": "Homelab alerts bot",
    "sshPrivateKey": "pi5 (SSH key)",
    "openWeatherMapApi": "OpenWeatherMap account",
    "postgres": "Homelab Postgres",
    "smtp": "Mailbox SMTP",
    "googleSheetsOAuth2Api": "Google Sheets account",
    "httpQueryAuth": "Pi-hole API token",
    "githubApi": "GitHub account",
    "aws": "Backblaze B2 (S3)",
}

# Triggers n8n counts in workflow_entity.triggerCount when the workflow is active.
_COUNTED_TRIGGERS = {
    "n8n-nodes-base.scheduleTrigger",
    "n8n-nodes-base.gmailTrigger",
    "n8n-nodes-base.webhook",
    "n8n-nodes-base.telegramTrigger",
}
_BRANCHING = {"n8n-nodes-base.if"}


class _Builder:
    """Collects nodes/edges for one workflow and lays them out like the n8n canvas."""

    def __init__(self, ids: _Ids, credential: Callable[[str], dict]):
        self.ids = ids
        self.credential = credential
        self.nodes: list[dict] = []
        self.edges: list[tuple[str, str, int]] = []

    def add(self, name: str, type_: str, version: float, parameters: dict, *,
            creds: str | None = None, webhook: bool = False) -> str:
        node: dict[str, Any] = {
            "parameters": parameters,
            "id": self.ids.uuid(),
            "name": name,
            "type": type_,
            "typeVersion": version,
            "position": [0, 0],
        }
        if webhook:
            node["webhookId"] = self.ids.uuid()
        if creds:
            node["credentials"] = {creds: self.credential(creds)}
        self.nodes.append(node)
        return name

    def link(self, src: str, dst: str, output: int = 0) -> None:
        self.edges.append((src, dst, output))

    def finish(self) -> tuple[list[dict], dict]:
        """Return (nodes, connections) with positions laid out left to right."""
        depth: dict[str, int] = {n["name"]: 0 for n in self.nodes}
        for _ in self.nodes:  # longest-path layering; graphs are tiny DAGs
            for src, dst, _out in self.edges:
                depth[dst] = max(depth[dst], depth[src] + 1)
        rows: Counter[int] = Counter()
        for node in self.nodes:
            d = depth[node["name"]]
            node["position"] = [d * 220, rows[d] * 200]
            rows[d] += 1
        connections: dict[str, dict] = {}
        for src, dst, out in self.edges:
            outputs = connections.setdefault(src, {"main": []})["main"]
            while len(outputs) <= out:
                outputs.append([])
            outputs[out].append({"node": dst, "type": "main", "index": 0})
        return self.nodes, connections


def _condition(ids: _Ids, left: str, op_type: str, operation: str, right: Any = None) -> dict:
    cond: dict[str, Any] = {"id": ids.uuid(), "leftValue": left, "operator": {"type": op_type, "operation": operation}}
    if right is not None:
        cond["rightValue"] = right
    return {
        "conditions": {
            "options": {"caseSensitive": True, "leftValue": "", "typeValidation": "strict", "version": 2},
            "conditions": [cond],
            "combinator": "and",
        },
        "options": {},
    }


def _schedule(rule: dict) -> dict:
    return {"rule": {"interval": [rule]}}


def _telegram(chat_id: str, text: str) -> dict:
    return {"chatId": chat_id, "text": text, "additionalFields": {"appendAttribution": False, "parse_mode": "HTML"}}


_VAR_CHAT = "={{ $vars.TELEGRAM_CHAT_ID }}"
_TG = "n8n-nodes-base.telegram"


def _tpl_gmail_to_telegram(b: _Builder) -> None:
    # Mirrors the owner's real export, hard-coded chat id and bot token included.
    b.add("Gmail Trigger", "n8n-nodes-base.gmailTrigger", 1.2, {
        "pollTimes": {"item": [{"mode": "everyMinute"}]},
        "simple": True,
        "filters": {"labelIds": ["INBOX"], "readStatus": "unread"},
        "options": {},
    }, creds="gmailOAuth2")
    b.add("Only important", "n8n-nodes-base.filter", 2.2,
          _condition(b.ids, "={{ $json.labelIds }}", "array", "contains", "IMPORTANT"))
    b.add("Telegram", _TG, 1.2, _telegram(
        SECRET_CHAT_ID, "=📧 <b>{{ $json.From }}</b>\n{{ $json.Subject }}\n\n{{ $json.snippet }}"),
        creds="telegramApi", webhook=True)
    b.add("Send via Bot API", "n8n-nodes-base.httpRequest", 4.2, {
        "method": "POST",
        "url": SECRET_URL,
        "sendBody": True,
        "bodyParameters": {"parameters": [
            {"name": "chat_id", "value": SECRET_CHAT_ID},
            {"name": "text", "value": "={{ $json.Subject }}"},
            {"name": "disable_notification", "value": "true"},
        ]},
        "options": {},
    })
    b.link("Gmail Trigger", "Only important")
    b.link("Only important", "Telegram")
    b.link("Only important", "Send via Bot API")


def _tpl_uptime(b: _Builder) -> None:
    b.add("Every 5 minutes", "n8n-nodes-base.scheduleTrigger", 1.2, _schedule({"field": "minutes", "minutesInterval": 5}))
    b.add("Check Nextcloud", "n8n-nodes-base.httpRequest", 4.2, {
        "url": "https://cloud.homelab.lan/status.php",
        "options": {"timeout": 10000, "response": {"response": {"fullResponse": True, "neverError": True}}},
    })
    b.add("Is down?", "n8n-nodes-base.if", 2.2, _condition(b.ids, "={{ $json.statusCode }}", "number", "notEquals", 200))
    b.add("Alert", _TG, 1.2, _telegram(_VAR_CHAT, "=🔴 Nextcloud is down ({{ $json.statusCode }})"),
          creds="telegramApi", webhook=True)
    b.link("Every 5 minutes", "Check Nextcloud")
    b.link("Check Nextcloud", "Is down?")
    b.link("Is down?", "Alert", 0)


def _tpl_backup_report(b: _Builder) -> None:
    b.add("Every day at 06:30", "n8n-nodes-base.scheduleTrigger", 1.2,
          _schedule({"field": "cronExpression", "expression": "30 6 * * *"}))
    b.add("Restic snapshots", "n8n-nodes-base.executeCommand", 1,
          {"command": "restic -r /mnt/backup/restic snapshots --latest 1 --json"})
    b.add("Summarise", "n8n-nodes-base.code", 2, {"jsCode": (
        "const snaps = JSON.parse($input.first().json.stdout);\n"
        "const last = snaps[snaps.length - 1];\n"
        "return [{ json: { text: `Backup ${last.short_id} at ${last.time}` } }];")})
    b.add("Telegram", _TG, 1.2, _telegram(_VAR_CHAT, "={{ $json.text }}"), creds="telegramApi", webhook=True)
    b.link("Every day at 06:30", "Restic snapshots")
    b.link("Restic snapshots", "Summarise")
    b.link("Summarise", "Telegram")


def _tpl_rss_digest(b: _Builder) -> None:
    b.add("Every 6 hours", "n8n-nodes-base.scheduleTrigger", 1.2, _schedule({"field": "hours", "hoursInterval": 6}))
    b.add("Read Hacker News", "n8n-nodes-base.rssFeedRead", 1.1,
          {"url": "https://hnrss.org/frontpage?points=200", "options": {}})
    b.add("Remove Duplicates", "n8n-nodes-base.removeDuplicates", 2, {
        "operation": "removeItemsRepeatedInPreviousExecutions", "dedupeValue": "={{ $json.link }}", "options": {}})
    b.add("Limit", "n8n-nodes-base.limit", 1, {"maxItems": 10})
    b.add("Aggregate", "n8n-nodes-base.aggregate", 1, {"fieldsToAggregate": {"fieldToAggregate": [
        {"fieldToAggregate": "title"}, {"fieldToAggregate": "link"}]}, "options": {}})
    b.add("Telegram", _TG, 1.2, _telegram(_VAR_CHAT, "=📰 RSS digest\n{{ $json.title.join('\\n') }}"),
          creds="telegramApi", webhook=True)
    for src, dst in [("Every 6 hours", "Read Hacker News"), ("Read Hacker News", "Remove Duplicates"),
                     ("Remove Duplicates", "Limit"), ("Limit", "Aggregate"), ("Aggregate", "Telegram")]:
        b.link(src, dst)


def _tpl_error_notifier(b: _Builder) -> None:
    b.add("Error Trigger", "n8n-nodes-base.errorTrigger", 1, {})
    b.add("Telegram", _TG, 1.2, _telegram(
        _VAR_CHAT, "=❌ {{ $json.workflow.name }} failed: {{ $json.execution.error.message }}\n{{ $json.execution.url }}"),
        creds="telegramApi", webhook=True)
    b.link("Error Trigger", "Telegram")


def _tpl_disk_alert(b: _Builder) -> None:
    b.add("Every hour", "n8n-nodes-base.scheduleTrigger", 1.2, _schedule({"field": "hours"}))
    b.add("df on pi5", "n8n-nodes-base.ssh", 1, {
        "authentication": "privateKey",
        "command": "df -h --output=pcent,target / /mnt/backup | tail -n +2", "cwd": "/"}, creds="sshPrivateKey")
    b.add("Parse usage", "n8n-nodes-base.code", 2, {"jsCode": (
        "return $input.first().json.stdout.trim().split('\\n').map(l => {\n"
        "  const [pct, mount] = l.trim().split(/\\s+/);\n"
        "  return { json: { mount, used: parseInt(pct, 10) } };\n});")})
    b.add("Above 85%?", "n8n-nodes-base.if", 2.2, _condition(b.ids, "={{ $json.used }}", "number", "gt", 85))
    b.add("Alert", _TG, 1.2, _telegram(_VAR_CHAT, "=💾 {{ $json.mount }} is {{ $json.used }}% full"),
          creds="telegramApi", webhook=True)
    for src, dst in [("Every hour", "df on pi5"), ("df on pi5", "Parse usage"), ("Parse usage", "Above 85%?")]:
        b.link(src, dst)
    b.link("Above 85%?", "Alert", 0)


def _tpl_door_alert(b: _Builder) -> None:
    b.add("Webhook", "n8n-nodes-base.webhook", 2, {"httpMethod": "POST", "path": "ha-door-events", "options": {}},
          webhook=True)
    b.add("Opened at night?", "n8n-nodes-base.if", 2.2,
          _condition(b.ids, "={{ $json.body.state === 'open' && $now.hour < 6 }}", "boolean", "true"))
    b.add("Telegram", _TG, 1.2, _telegram(_VAR_CHAT, "=🚪 {{ $json.body.entity_id }} opened at {{ $now.toFormat('HH:mm') }}"),
          creds="telegramApi", webhook=True)
    b.link("Webhook", "Opened at night?")
    b.link("Opened at night?", "Telegram", 0)


def _tpl_approve_updates(b: _Builder) -> None:
    b.add("Every Sunday", "n8n-nodes-base.scheduleTrigger", 1.2,
          _schedule({"field": "weeks", "triggerAtDay": [0], "triggerAtHour": 10}))
    b.add("List outdated images", "n8n-nodes-base.ssh", 1, {
        "authentication": "privateKey", "command": "cd /opt/stacks && docker compose pull --dry-run 2>&1 | grep -c Pulling",
        "cwd": "/opt/stacks"}, creds="sshPrivateKey")
    b.add("Ask for approval", _TG, 1.2, {
        "chatId": _VAR_CHAT, "operation": "sendAndWait", "message": "=🐳 {{ $json.stdout }} images can be updated. Approve?",
        "approvalOptions": {"values": {"approvalType": "double"}}, "options": {}}, creds="telegramApi", webhook=True)
    b.add("Wait", "n8n-nodes-base.wait", 1.1, {"resume": "webhook", "options": {}}, webhook=True)
    b.add("Pull and restart", "n8n-nodes-base.ssh", 1, {
        "authentication": "privateKey", "command": "cd /opt/stacks && docker compose pull && docker compose up -d",
        "cwd": "/opt/stacks"}, creds="sshPrivateKey")
    for src, dst in [("Every Sunday", "List outdated images"), ("List outdated images", "Ask for approval"),
                     ("Ask for approval", "Wait"), ("Wait", "Pull and restart")]:
        b.link(src, dst)


def _tpl_weather(b: _Builder) -> None:
    b.add("Every day at 07:00", "n8n-nodes-base.scheduleTrigger", 1.2,
          _schedule({"field": "cronExpression", "expression": "0 7 * * *"}))
    b.add("OpenWeatherMap", "n8n-nodes-base.openWeatherMap", 1, {"cityName": "Berlin", "language": "en"},
          creds="openWeatherMapApi")
    b.add("Format", "n8n-nodes-base.set", 3.4, {"assignments": {"assignments": [{
        "id": b.ids.uuid(), "name": "text", "type": "string",
        "value": "=☀️ {{ $json.weather[0].description }}, {{ Math.round($json.main.temp) }}°C"}]}, "options": {}})
    b.add("Telegram", _TG, 1.2, _telegram(_VAR_CHAT, "={{ $json.text }}"), creds="telegramApi", webhook=True)
    for src, dst in [("Every day at 07:00", "OpenWeatherMap"), ("OpenWeatherMap", "Format"), ("Format", "Telegram")]:
        b.link(src, dst)


def _tpl_expense_bot(b: _Builder) -> None:
    b.add("Telegram Trigger", "n8n-nodes-base.telegramTrigger", 1.2, {"updates": ["message"], "additionalFields": {}},
          creds="telegramApi", webhook=True)
    b.add("Parse amount", "n8n-nodes-base.code", 2, {"jsCode": (
        "const [amount, ...what] = $input.first().json.message.text.split(' ');\n"
        "return [{ json: { date: $now.toISODate(), amount: parseFloat(amount), what: what.join(' ') } }];")})
    b.add("Append row", "n8n-nodes-base.googleSheets", 4.7, {
        "operation": "append",
        "documentId": {"__rl": True, "value": "1Xq9demoSheetIdExpenses2025", "mode": "list", "cachedResultName": "Expenses 2025"},
        "sheetName": {"__rl": True, "value": "gid=0", "mode": "list", "cachedResultName": "Sheet1"},
        "columns": {"mappingMode": "autoMapInputData", "value": {}, "matchingColumns": [], "schema": []},
        "options": {}}, creds="googleSheetsOAuth2Api")
    b.add("Confirm", _TG, 1.2, _telegram("={{ $('Telegram Trigger').item.json.message.chat.id }}", "=✅ Saved {{ $json.amount }} €"),
          creds="telegramApi", webhook=True)
    for src, dst in [("Telegram Trigger", "Parse amount"), ("Parse amount", "Append row"), ("Append row", "Confirm")]:
        b.link(src, dst)


def _tpl_docker_check(b: _Builder) -> None:
    b.add("When clicking ‘Execute workflow’", "n8n-nodes-base.manualTrigger", 1, {})
    b.add("docker compose pull", "n8n-nodes-base.ssh", 1, {
        "authentication": "privateKey", "command": "cd /opt/stacks && docker compose pull --dry-run", "cwd": "/opt/stacks"},
        creds="sshPrivateKey")
    b.link("When clicking ‘Execute workflow’", "docker compose pull")


def _tpl_paperless(b: _Builder) -> None:
    b.add("Paperless webhook", "n8n-nodes-base.webhook", 2, {"httpMethod": "POST", "path": "paperless-consumed", "options": {}},
          webhook=True)
    b.add("Telegram", _TG, 1.2, _telegram(_VAR_CHAT, "=📄 New document: {{ $json.body.title }}"),
          creds="telegramApi", webhook=True)
    b.link("Paperless webhook", "Telegram")


def _tpl_pihole(b: _Builder) -> None:
    b.add("Every 15 minutes", "n8n-nodes-base.scheduleTrigger", 1.2, _schedule({"field": "minutes", "minutesInterval": 15}))
    b.add("Pi-hole summary", "n8n-nodes-base.httpRequest", 4.2, {
        "url": "http://pihole.homelab.lan/admin/api.php?summaryRaw", "authentication": "genericCredentialType",
        "genericAuthType": "httpQueryAuth", "options": {}}, creds="httpQueryAuth")
    b.add("Insert stats", "n8n-nodes-base.postgres", 2.6, {
        "schema": {"__rl": True, "mode": "list", "value": "public"},
        "table": {"__rl": True, "value": "pihole_stats", "mode": "list", "cachedResultName": "pihole_stats"},
        "columns": {"mappingMode": "autoMapInputData", "value": {}, "matchingColumns": [], "schema": []},
        "options": {}}, creds="postgres")
    b.link("Every 15 minutes", "Pi-hole summary")
    b.link("Pi-hole summary", "Insert stats")


def _tpl_github_releases(b: _Builder) -> None:
    b.add("Every 12 hours", "n8n-nodes-base.scheduleTrigger", 1.2, _schedule({"field": "hours", "hoursInterval": 12}))
    b.add("Latest n8n release", "n8n-nodes-base.httpRequest", 4.2, {
        "url": "https://api.github.com/repos/n8n-io/n8n/releases/latest", "authentication": "predefinedCredentialType",
        "nodeCredentialType": "githubApi", "sendHeaders": True,
        "headerParameters": {"parameters": [{"name": "Accept", "value": "application/vnd.github+json"}]}, "options": {}},
        creds="githubApi")
    b.add("New version?", "n8n-nodes-base.removeDuplicates", 2, {
        "operation": "removeItemsRepeatedInPreviousExecutions", "dedupeValue": "={{ $json.tag_name }}", "options": {}})
    b.add("Telegram", _TG, 1.2, _telegram(_VAR_CHAT, "=🚀 n8n {{ $json.tag_name }} released"), creds="telegramApi", webhook=True)
    for src, dst in [("Every 12 hours", "Latest n8n release"), ("Latest n8n release", "New version?"), ("New version?", "Telegram")]:
        b.link(src, dst)


def _tpl_pg_backup(b: _Builder) -> None:
    b.add("Every day at 03:00", "n8n-nodes-base.scheduleTrigger", 1.2,
          _schedule({"field": "cronExpression", "expression": "0 3 * * *"}))
    b.add("pg_dump", "n8n-nodes-base.ssh", 1, {
        "authentication": "privateKey",
        "command": "pg_dump -Fc -U n8n n8n | zstd -q > /tmp/n8n-$(date +%F).dump.zst && echo /tmp/n8n-$(date +%F).dump.zst",
        "cwd": "/tmp"}, creds="sshPrivateKey")
    b.add("Upload to B2", "n8n-nodes-base.awsS3", 2, {
        "operation": "upload", "bucketName": "homelab-backups", "fileName": "={{ $json.stdout.split('/').pop() }}",
        "additionalFields": {"storageClass": "standard"}}, creds="aws")
    b.add("Telegram", _TG, 1.2, _telegram(_VAR_CHAT, "=🗄️ Postgres backup uploaded"), creds="telegramApi", webhook=True)
    for src, dst in [("Every day at 03:00", "pg_dump"), ("pg_dump", "Upload to B2"), ("Upload to B2", "Telegram")]:
        b.link(src, dst)


def _tpl_cert_expiry(b: _Builder) -> None:
    b.add("Every day at 08:00", "n8n-nodes-base.scheduleTrigger", 1.2,
          _schedule({"field": "cronExpression", "expression": "0 8 * * *"}))
    b.add("Check certificates", "n8n-nodes-base.executeCommand", 1, {"command": (
        "for h in cloud.homelab.lan n8n.homelab.lan grafana.homelab.lan; do echo | openssl s_client -servername $h "
        "-connect $h:443 2>/dev/null | openssl x509 -noout -enddate | sed \"s/^/$h /\"; done")})
    b.add("Expiring soon?", "n8n-nodes-base.if", 2.2, _condition(b.ids, "={{ $json.daysLeft }}", "number", "lt", 14))
    b.add("Send email", "n8n-nodes-base.emailSend", 2.1, {
        "fromEmail": "n8n@homelab.lan", "toEmail": "owner@homelab.lan", "subject": "=TLS certificate expiring soon",
        "emailFormat": "text", "text": "={{ $json.host }} expires in {{ $json.daysLeft }} days", "options": {}},
        creds="smtp", webhook=True)
    for src, dst in [("Every day at 08:00", "Check certificates"), ("Check certificates", "Expiring soon?")]:
        b.link(src, dst)
    b.link("Expiring soon?", "Send email", 0)


@dataclass(frozen=True)
class _Template:
    name: str
    build: Callable[[_Builder], None]
    tags: tuple[str, ...]
    weight: float  # relative share of executions
    median_ms: int  # typical run time
    error_rate: float
    mode: str = "trigger"  # execution_entity.mode for production runs
    active: bool = True
    archived: bool = False
    folder: str | None = None
    description: str | None = None


# Order matters: the first `workflows` templates are used (then they repeat),
# so the default 12 already cover every trigger kind, a Wait node, an error
# workflow, an inactive and an archived workflow.
_TEMPLATES: tuple[_Template, ...] = (
    _Template(SECRET_WORKFLOW_NAME, _tpl_gmail_to_telegram, ("email", "notifications", "telegram"), 6, 1400, 0.04,
              description="Forward important mail to the family Telegram group"),
    _Template("Uptime monitor", _tpl_uptime, ("monitoring", "telegram"), 30, 420, 0.03, folder="Monitoring"),
    _Template("Daily backup report", _tpl_backup_report, ("backup", "telegram"), 1, 9000, 0.06),
    _Template("RSS digest", _tpl_rss_digest, ("notifications", "telegram"), 4, 3500, 0.05),
    _Template("Error notifier", _tpl_error_notifier, ("monitoring", "telegram"), 2, 800, 0.01, mode="error",
              active=False, description="Error workflow for every other workflow"),
    _Template("Disk space alert", _tpl_disk_alert, ("monitoring", "homelab"), 8, 1900, 0.04, folder="Monitoring"),
    _Template("Home Assistant door alert", _tpl_door_alert, ("home-assistant", "telegram"), 5, 650, 0.02, mode="webhook"),
    _Template("Approve container updates", _tpl_approve_updates, ("homelab", "docker"), 1, 5200, 0.08),
    _Template("Morning weather briefing", _tpl_weather, ("notifications", "telegram"), 1, 1100, 0.03),
    _Template("Expense tracker bot", _tpl_expense_bot, ("finance", "telegram"), 3, 2100, 0.05, mode="webhook"),
    _Template("Docker image update check", _tpl_docker_check, ("homelab", "docker"), 0.5, 25000, 0.15, mode="manual",
              active=False),
    _Template("Paperless inbox to Telegram", _tpl_paperless, ("notifications",), 1, 500, 0.02, mode="webhook",
              active=False, archived=True),
    _Template("Pi-hole stats to Postgres", _tpl_pihole, ("monitoring", "homelab"), 12, 700, 0.02),
    _Template("GitHub release watcher", _tpl_github_releases, ("notifications", "telegram"), 2, 900, 0.03),
    _Template("Backup Postgres to B2", _tpl_pg_backup, ("backup",), 1, 60000, 0.08),
    _Template("Certificate expiry check", _tpl_cert_expiry, ("monitoring",), 1, 2600, 0.03),
)

_ERRORS_BY_TYPE: dict[str, list[tuple[str, str, str | None]]] = {
    "n8n-nodes-base.httpRequest": [
        ("NodeApiError", "The connection cannot be established, this usually occurs due to an incorrect host (domain) value", None),
        ("NodeApiError", "The service is receiving too many requests from you", "429"),
        ("NodeApiError", "The service was not able to process your request", "502"),
        ("NodeApiError", "timeout of 10000ms exceeded", None),
    ],
    _TG: [
        ("NodeApiError", "Bad Request: chat not found", "400"),
        ("NodeApiError", "Too Many Requests: retry after 17", "429"),
    ],
    "n8n-nodes-base.gmailTrigger": [("NodeApiError", "The provided authorization grant is invalid, expired, or revoked", "400")],
    "n8n-nodes-base.ssh": [
        ("NodeOperationError", "All configured authentication methods failed", None),
        ("NodeOperationError", "connect ECONNREFUSED 192.168.1.20:22", None),
    ],
    "n8n-nodes-base.executeCommand": [("NodeOperationError", "Command failed: Fatal: unable to open repository at /mnt/backup/restic", None)],
    "n8n-nodes-base.code": [("NodeOperationError", "Cannot read properties of undefined (reading 'json') [line 2]", None)],
    "n8n-nodes-base.postgres": [("NodeOperationError", 'duplicate key value violates unique constraint "pihole_stats_pkey"', None)],
    "n8n-nodes-base.rssFeedRead": [("NodeOperationError", "Invalid character in entity name", None)],
    "n8n-nodes-base.awsS3": [("NodeApiError", "Forbidden - perhaps check your credentials?", "403")],
}
_GENERIC_ERROR = ("NodeOperationError", "Request failed with status code 500", "500")

_SUBJECTS = ["Your order has shipped", "Invoice 2025-1142", "Security alert: new sign-in", "Re: weekend plans",
             "Your monthly statement is ready", "Package delivery attempt", "Renewal reminder"]
_SENDERS = ["Bank <noreply@bank.example>", "DHL <noreply@dhl.example>", "Anna <anna@family.example>",
            "GitHub <noreply@github.com>", "Hetzner <billing@hetzner.example>"]


# --------------------------------------------------------------------------
# Seeding
# --------------------------------------------------------------------------

@dataclass(eq=False)  # identity semantics: compared/hashed a lot while generating
class _Workflow:
    id: str
    tpl: _Template
    name: str
    nodes: list[dict]
    connections: dict
    version_id: str
    created: datetime
    updated: datetime
    active: bool
    archived: bool
    settings: dict = field(default_factory=dict)
    snapshot: str = ""  # execution_data.workflowData JSON, built once


@dataclass(eq=False)
class _Execution:
    wf: _Workflow
    status: str
    mode: str
    created: datetime
    started: datetime | None
    stopped: datetime | None
    wait_till: datetime | None = None
    deleted: datetime | None = None
    retry_of: _Execution | None = None
    retry_success: _Execution | None = None
    id: int = 0
    with_data: bool = False


_ROLES = [
    # slug, displayName, roleType
    ("global:owner", "Owner", "global"),
    ("global:admin", "Admin", "global"),
    ("global:member", "Member", "global"),
    ("project:personalOwner", "Project Owner", "project"),
    ("project:admin", "Project Admin", "project"),
    ("project:editor", "Project Editor", "project"),
    ("project:viewer", "Project Viewer", "project"),
    ("workflow:owner", "Workflow Owner", "workflow"),
    ("workflow:editor", "Workflow Editor", "workflow"),
    ("credential:owner", "Credential Owner", "credential"),
    ("credential:user", "Credential User", "credential"),
]


def _ensure_owner(conn: psycopg.Connection, ids: _Ids, now: datetime) -> tuple[str, str, str, int, int]:
    """Return (user_id, project_id, author, users_created, projects_created).

    Reuses an existing owner and personal project so seeding also works on a
    database n8n itself already initialised; otherwise creates the rows (and
    the system roles their foreign keys need) the way n8n's setup would.
    """
    conn.cursor().executemany(
        'INSERT INTO public.role (slug, "displayName", description, "roleType", "systemRole", "createdAt", "updatedAt")'
        " VALUES (%s, %s, %s, %s, true, %s, %s) ON CONFLICT DO NOTHING",
        [(slug, display, f"{display} (system role)", kind, now, now) for slug, display, kind in _ROLES],
    )
    created_users = created_projects = 0
    row = conn.execute(
        'SELECT id::text, coalesce("firstName" || \' \' || "lastName", email) FROM public."user"'
        ' WHERE "roleSlug" = \'global:owner\' ORDER BY "createdAt" LIMIT 1').fetchone()
    since = now - timedelta(days=400)
    if row:
        user_id, author = row
    else:
        user_id, author = ids.uuid(), "Homelab Owner"
        conn.execute(
            'INSERT INTO public."user" (id, email, "firstName", "lastName", password, settings, "createdAt",'
            ' "updatedAt", "lastActiveAt", "roleSlug") VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)',
            [user_id, "owner@homelab.lan", "Homelab", "Owner", _fake_bcrypt(ids.rng),
             _dumps({"userActivated": True, "userActivatedAt": _ms(since), "easyAIWorkflowOnboarded": True}),
             since, now, now.date(), "global:owner"])
        conn.execute(
            "INSERT INTO public.settings (key, value, \"loadOnStartup\") VALUES"
            " ('userManagement.isInstanceOwnerSetUp', 'true', true) ON CONFLICT (key) DO NOTHING")
        created_users = 1
    row = conn.execute(
        "SELECT p.id FROM public.project p JOIN public.project_relation r ON r.\"projectId\" = p.id"
        " WHERE r.\"userId\" = %s AND p.type = 'personal' LIMIT 1", [user_id]).fetchone()
    if row:
        project_id = row[0]
    else:
        project_id = ids.nano()
        conn.execute('INSERT INTO public.project (id, name, type, "createdAt", "updatedAt") VALUES (%s, %s, %s, %s, %s)',
                     [project_id, f"{author} <owner@homelab.lan>", "personal", since, since])
        conn.execute('INSERT INTO public.project_relation ("projectId", "userId", role, "createdAt", "updatedAt")'
                     " VALUES (%s, %s, 'project:personalOwner', %s, %s)", [project_id, user_id, since, since])
        created_projects = 1
    return user_id, project_id, author, created_users, created_projects


def _fake_bcrypt(rng: random.Random) -> str:
    """A well-formed bcrypt hash nobody knows the password for (no login into the demo)."""
    alphabet = "./" + string.ascii_uppercase + string.ascii_lowercase + string.digits
    return "$2a$10$" + "".join(rng.choices(alphabet, k=53))


def _fake_ciphertext(rng: random.Random) -> str:
    """Shape of n8n's CryptoJS AES credential blob ("Salted__" + salt + ciphertext, base64)."""
    return base64.b64encode(b"Salted__" + rng.randbytes(8 + 16 * rng.randint(3, 8))).decode()


def _lognormal_ms(rng: random.Random, median_ms: int, sigma: float = 0.6) -> int:
    return max(15, int(median_ms * math.exp(rng.gauss(0.0, sigma))))


def seed_demo(
    conn: psycopg.Connection,
    *,
    workflows: int = 12,
    executions: int = 2000,
    days: int = 30,
    now: datetime | None = None,
    seed: int = 7,
) -> dict:
    """Fill a freshly loaded n8n schema with realistic homelab data.

    Creates (if missing) the owner user, personal project and system roles,
    then credentials, tags, a folder, ``workflows`` workflows with history,
    publish history, webhooks and statistics, and ``executions`` executions
    spread over ``days`` days before ``now`` covering every status n8n uses
    (guaranteed once ``executions >= 8``), with retries, soft-deleted rows and
    flatted ``execution_data`` for a subset. Executions go in with COPY so
    hundreds of thousands take seconds.

    The output depends only on ``seed`` and ``now`` (pass ``now`` for
    byte-identical reruns; a naive ``now`` is taken as UTC). Runs in one
    transaction (a savepoint if the caller has one open). Returns row counts
    plus ``by_status`` and ``secret_workflow_id``.
    """
    if workflows < 1:
        raise ValueError("workflows must be >= 1")
    if executions < 0 or days < 1:
        raise ValueError("executions must be >= 0 and days >= 1")
    now = datetime.now(timezone.utc) if now is None else now
    now = _trunc_ms(now if now.tzinfo else now.replace(tzinfo=timezone.utc))
    rng = random.Random(seed)
    ids = _Ids(rng)
    span = timedelta(days=days)

    with conn.transaction():
        user_id, project_id, author, users_created, projects_created = _ensure_owner(conn, ids, now)
        counts: dict[str, Any] = {"users": users_created, "projects": projects_created}

        # Credentials are shared between workflows, created on first use.
        credentials: dict[str, dict] = {}

        def credential(kind: str) -> dict:
            if kind not in credentials:
                credentials[kind] = {"id": ids.nano(), "name": _CREDENTIAL_NAMES.get(kind, kind)}
            return credentials[kind]

        folders: dict[str, str] = {}
        wfs: list[_Workflow] = []
        for k in range(workflows):
            tpl = _TEMPLATES[k % len(_TEMPLATES)]
            builder = _Builder(ids, credential)
            tpl.build(builder)
            nodes, connections = builder.finish()
            copy_no = k // len(_TEMPLATES) + 1
            if copy_no > 1:  # webhook paths are a primary key, so copies need their own
                for node in nodes:
                    if node["type"] == "n8n-nodes-base.webhook":
                        node["parameters"]["path"] += f"-{copy_no}"
            created = _trunc_ms(now - span - timedelta(days=rng.uniform(5, 120)))
            if tpl.archived:
                updated = _trunc_ms(now - span * rng.uniform(0.2, 0.5))
            else:
                updated = _trunc_ms(created + (now - created) * rng.uniform(0.3, 0.95))
            name = tpl.name if copy_no == 1 else f"{tpl.name} ({copy_no})"
            if tpl.folder:
                folders.setdefault(tpl.folder, ids.nano())
            wfs.append(_Workflow(ids.nano(), tpl, name, nodes, connections, ids.uuid(), created, updated,
                                 tpl.active, tpl.archived))
        error_wf = next((w for w in wfs if w.tpl.mode == "error"), None)
        for w in wfs:
            w.settings = {"executionOrder": "v1", "saveManualExecutions": True, "callerPolicy": "workflowsFromSameOwner",
                          "timezone": "Europe/Berlin"}
            if error_wf is not None and w is not error_wf:
                w.settings["errorWorkflow"] = error_wf.id

        _insert_workflows(conn, rng, wfs, credentials, folders, project_id, user_id, author, now, counts)

        execs = _generate_executions(rng, wfs, executions, now, span)
        if execs:
            start_ids = conn.execute(
                "SELECT nextval('public.execution_entity_id_seq') FROM generate_series(1, %s)", [len(execs)]).fetchall()
            for ex, (new_id,) in zip(execs, sorted(start_ids)):
                ex.id = new_id
        _insert_executions(conn, rng, execs, now, counts)
        _insert_statistics(conn, wfs, execs, counts)

        counts["workflows"] = len(wfs)
        counts["executions"] = len(execs)
        by_status = Counter(e.status for e in execs)
        counts["by_status"] = {s: by_status[s] for s in EXECUTION_STATUSES}
        counts["secret_workflow_id"] = wfs[0].id
    return counts


def _insert_workflows(conn, rng, wfs, credentials, folders, project_id, user_id, author, now, counts) -> None:
    """Workflows plus everything hanging off them: tags, sharing, history, webhooks, credentials."""
    cur = conn.cursor()
    oldest = min(w.created for w in wfs)
    cur.executemany(
        'INSERT INTO public.credentials_entity (id, name, data, type, "createdAt", "updatedAt") VALUES (%s, %s, %s, %s, %s, %s)',
        [(c["id"], c["name"], _fake_ciphertext(rng), kind, oldest, oldest) for kind, c in credentials.items()])
    cur.executemany(
        'INSERT INTO public.shared_credentials ("credentialsId", "projectId", role, "createdAt", "updatedAt")'
        " VALUES (%s, %s, 'credential:owner', %s, %s)", [(c["id"], project_id, oldest, oldest) for c in credentials.values()])
    cur.executemany(
        'INSERT INTO public.folder (id, name, "projectId", "createdAt", "updatedAt") VALUES (%s, %s, %s, %s, %s)',
        [(fid, name, project_id, oldest, oldest) for name, fid in folders.items()])
    conn.execute(
        'INSERT INTO public.variables (id, key, type, value) VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING',
        [_Ids(rng).nano(), "TELEGRAM_CHAT_ID", "string", _VAR_CHAT_ID])

    wf_rows, hist_rows, shared_rows, publish_rows, webhook_rows = [], [], [], [], []
    for w in wfs:
        static: dict | None = None
        trigger = w.nodes[0]
        if trigger["type"] == "n8n-nodes-base.gmailTrigger" and w.active:
            static = {f"node:{trigger['name']}": {"lastTimeChecked": int(now.timestamp()) - rng.randint(0, 59)}}
        elif trigger["type"] == "n8n-nodes-base.scheduleTrigger" and w.active:
            static = {f"node:{trigger['name']}": {"recurrenceRules": []}}
        trigger_count = sum(n["type"] in _COUNTED_TRIGGERS for n in w.nodes) if w.active else 0
        nodes_json, conn_json = _dumps(w.nodes), _dumps(w.connections)
        wf_rows.append((w.id, w.name, w.active, nodes_json, conn_json, w.created, w.updated, _dumps(w.settings),
                        _dumps(static) if static else None, w.version_id, trigger_count,
                        _dumps({"templateCredsSetupCompleted": True}), folders.get(w.tpl.folder or ""), w.archived,
                        w.tpl.description))
        hist_rows.append((w.version_id, w.id, author, w.updated, w.updated, nodes_json, conn_json))
        shared_rows.append((w.id, project_id, w.created, w.created))
        if w.active:
            publish_rows.append((w.id, w.version_id, user_id, w.updated))
            for node in w.nodes:
                if node["type"] == "n8n-nodes-base.webhook":
                    path = node["parameters"]["path"]
                    webhook_rows.append((path, node["parameters"]["httpMethod"], node["name"], None, None, w.id))
                elif node["type"] == "n8n-nodes-base.telegramTrigger":
                    webhook_rows.append((f"{node['webhookId']}/webhook", "POST", node["name"], None, None, w.id))
        w.snapshot = _dumps({
            "id": w.id, "name": w.name, "active": w.active, "isArchived": w.archived, "nodes": w.nodes,
            "connections": w.connections, "settings": w.settings, "staticData": static, "pinData": {},
            "versionId": w.version_id, "triggerCount": trigger_count,
            "createdAt": _iso(w.created), "updatedAt": _iso(w.updated)})

    cur.executemany(
        'INSERT INTO public.workflow_entity (id, name, active, nodes, connections, "createdAt", "updatedAt", settings,'
        ' "staticData", "versionId", "triggerCount", meta, "parentFolderId", "isArchived", description)'
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)", wf_rows)
    cur.executemany(
        'INSERT INTO public.workflow_history ("versionId", "workflowId", authors, "createdAt", "updatedAt", nodes, connections)'
        " VALUES (%s, %s, %s, %s, %s, %s, %s)", hist_rows)
    # activeVersionId needs the history row first. Setting versionCounter
    # explicitly also keeps n8n's increment trigger from bumping it.
    cur.executemany(
        'UPDATE public.workflow_entity SET "activeVersionId" = CASE WHEN active THEN "versionId" END,'
        ' "versionCounter" = %s WHERE id = %s', [(rng.randint(2, 40), w.id) for w in wfs])
    cur.executemany(
        'INSERT INTO public.shared_workflow ("workflowId", "projectId", role, "createdAt", "updatedAt")'
        " VALUES (%s, %s, 'workflow:owner', %s, %s)", shared_rows)
    cur.executemany(
        'INSERT INTO public.workflow_publish_history ("workflowId", "versionId", event, "userId", "createdAt")'
        " VALUES (%s, %s, 'activated', %s, %s)", publish_rows)
    cur.executemany(
        'INSERT INTO public.webhook_entity ("webhookPath", method, node, "webhookId", "pathLength", "workflowId")'
        " VALUES (%s, %s, %s, %s, %s, %s)", webhook_rows)

    tag_ids: dict[str, str] = {}
    link_rows = []
    for w in wfs:
        for tag in w.tpl.tags:
            if tag not in tag_ids:
                tag_ids[tag] = _Ids(rng).nano()
            link_rows.append((w.id, tag_ids[tag]))
    cur.executemany('INSERT INTO public.tag_entity (id, name, "createdAt", "updatedAt") VALUES (%s, %s, %s, %s)',
                    [(tid, name, oldest, oldest) for name, tid in tag_ids.items()])
    cur.executemany('INSERT INTO public.workflows_tags ("workflowId", "tagId") VALUES (%s, %s)', link_rows)
    counts.update(credentials=len(credentials), folders=len(folders), tags=len(tag_ids), workflow_tags=len(link_rows),
                  workflow_history=len(hist_rows), shared_workflows=len(shared_rows), webhooks=len(webhook_rows),
                  publish_history=len(publish_rows), variables=1)


_IN_FLIGHT = ("running", "waiting", "new")


def _generate_executions(rng: random.Random, wfs: list[_Workflow], total: int, now: datetime,
                         span: timedelta) -> list[_Execution]:
    """Decide status, mode and timing for every execution, oldest first."""
    cum_weights = list(itertools.accumulate(w.tpl.weight for w in wfs))
    can_wait = [w for w in wfs if any(n["type"] == "n8n-nodes-base.wait" for n in w.nodes)]
    execs: list[_Execution] = []

    def pick_status(w: _Workflow) -> str:
        r = rng.random()
        for status, p in (("error", w.tpl.error_rate), ("crashed", 0.006), ("canceled", 0.008), ("unknown", 0.002)):
            if r < p:
                return status
            r -= p
        return "success"

    def window_end(w: _Workflow) -> datetime:
        return w.updated if w.archived else now

    def window_start(w: _Workflow) -> datetime:
        return max(now - span, w.created + timedelta(minutes=5))

    def make(w: _Workflow, status: str) -> _Execution:
        if w.tpl.mode in ("manual", "error"):
            mode = w.tpl.mode
        else:
            mode = "manual" if rng.random() < 0.04 else w.tpl.mode
        dur = timedelta(milliseconds=_lognormal_ms(rng, w.tpl.median_ms))
        queued = timedelta(milliseconds=rng.randint(3, 400))
        if status == "new":  # queued, never started
            created = now - timedelta(seconds=rng.uniform(1, 180))
            return _Execution(w, status, mode, _trunc_ms(created), None, None)
        if status == "running":
            started = now - timedelta(seconds=rng.uniform(1, 600))
            return _Execution(w, status, mode, _trunc_ms(started - queued), _trunc_ms(started), None)
        if status == "waiting":
            started = now - span * rng.uniform(0, min(1.0, 3 / max(span.days, 1)))
            till = _WAIT_INDEFINITELY if rng.random() < 0.7 else _trunc_ms(now + timedelta(hours=rng.uniform(1, 72)))
            return _Execution(w, status, mode, _trunc_ms(started - queued), _trunc_ms(started), None, wait_till=till)
        if status == "error":
            dur *= rng.uniform(0.1, 1.0)
        elif status == "canceled":
            dur *= rng.uniform(0.5, 4.0)
        end, begin = window_end(w), window_start(w)
        started = begin + (end - begin) * rng.random()
        if started + dur > end:
            started = max(begin, end - dur - timedelta(seconds=rng.uniform(1, 60)))
        stopped: datetime | None = started + dur
        if status in ("crashed", "unknown") and rng.random() < 0.5:
            stopped = None  # the process died before writing stoppedAt
        return _Execution(w, status, mode, _trunc_ms(started - queued), _trunc_ms(started),
                          _trunc_ms(stopped) if stopped else None)

    # One of every status first so small runs still cover them all, plus a
    # few more in-flight runs: only a handful are ever open, whatever the volume.
    live = [w for w in wfs if not w.archived] or wfs
    extra = ["running"] * rng.randint(0, 3) + ["new"] * rng.randint(0, 2) + ["waiting"] * rng.randint(0, 4 if can_wait else 0)
    for status in [*EXECUTION_STATUSES, *extra][:total]:
        pool = (can_wait or live) if status == "waiting" else live if status in _IN_FLIGHT else wfs
        execs.append(make(rng.choices(pool, weights=[w.tpl.weight for w in pool])[0], status))
    while len(execs) < total:
        w = rng.choices(wfs, cum_weights=cum_weights)[0]
        ex = make(w, pick_status(w))
        execs.append(ex)
        # Failed production runs sometimes get retried from the UI a bit later.
        if (ex.status == "error" and ex.mode not in ("manual", "error") and ex.stopped is not None
                and len(execs) < total and rng.random() < 0.25):
            started = ex.stopped + timedelta(seconds=rng.uniform(30, 1800))
            dur = timedelta(milliseconds=_lognormal_ms(rng, w.tpl.median_ms))
            if started + dur < window_end(w):
                ok = rng.random() < 0.7
                retry = _Execution(w, "success" if ok else "error", "retry",
                                   _trunc_ms(started - timedelta(milliseconds=rng.randint(3, 400))),
                                   _trunc_ms(started), _trunc_ms(started + dur), retry_of=ex)
                if ok:
                    ex.retry_success = retry
                execs.append(retry)

    # Soft deletes: user-deleted or pruned runs that n8n has not hard-deleted yet.
    finished_ones = [e for e in execs if e.status not in _IN_FLIGHT]
    for e in finished_ones:
        if rng.random() < 0.03:
            e.deleted = _trunc_ms((e.stopped or e.started) + (now - (e.stopped or e.started)) * rng.random())
    if finished_ones and not any(e.deleted for e in execs):
        e = min(finished_ones, key=lambda x: x.created)
        e.deleted = _trunc_ms((e.stopped or e.started) + (now - (e.stopped or e.started)) / 2)

    # n8n keeps data for in-flight runs; keep a sample of the rest (about 10%,
    # at most ~5000 rows, so 200k executions still seed in seconds).
    share = min(0.1, 5000 / max(total, 1))
    for e in execs:
        e.with_data = e.status in ("running", "waiting") or (e.status != "new" and rng.random() < share)
    execs.sort(key=lambda e: e.created)  # ids grow with creation time, as in n8n
    return execs


def _insert_executions(conn, rng, execs: list[_Execution], now: datetime, counts: dict) -> None:
    """COPY executions and their data; row-by-row INSERTs would be far too slow at 200k."""
    cur = conn.cursor()
    with cur.copy(
        'COPY public.execution_entity (id, finished, mode, "retryOf", "retrySuccessId", "startedAt", "stoppedAt",'
        ' "waitTill", status, "workflowId", "deletedAt", "createdAt") FROM STDIN'
    ) as copy:
        for e in execs:
            copy.write_row((
                e.id, e.status == "success", e.mode,
                str(e.retry_of.id) if e.retry_of else None,
                str(e.retry_success.id) if e.retry_success else None,
                e.started, e.stopped, e.wait_till, e.status, e.wf.id, e.deleted, e.created))
    n_data = 0
    with cur.copy('COPY public.execution_data ("executionId", "workflowData", data) FROM STDIN') as copy:
        for e in execs:
            if e.with_data:
                copy.write_row((e.id, e.wf.snapshot, _flatted(_run_data(rng, e, now))))
                n_data += 1
    counts.update(execution_data=n_data, deleted_executions=sum(1 for e in execs if e.deleted),
                  retries=sum(1 for e in execs if e.retry_of))


def _sample_output(rng: random.Random, node: dict, when: datetime) -> dict:
    """A plausible output item for a node type (kept small: it is repeated in every run)."""
    t = node["type"]
    if t == "n8n-nodes-base.gmailTrigger":
        return {"id": "%016x" % rng.getrandbits(64), "threadId": "%016x" % rng.getrandbits(64),
                "labelIds": ["INBOX", "UNREAD", "IMPORTANT"], "From": rng.choice(_SENDERS),
                "Subject": rng.choice(_SUBJECTS), "snippet": "Hello, please find the details below…",
                "To": "owner@homelab.lan"}
    if t == "n8n-nodes-base.scheduleTrigger":
        local = when.astimezone(timezone(timedelta(hours=1)))
        return {"timestamp": local.isoformat(timespec="milliseconds"), "Readable date": local.strftime("%B %d %Y, %I:%M:%S %p"),
                "Day of week": local.strftime("%A"), "Timezone": "Europe/Berlin (UTC+01:00)"}
    if t == _TG or (t == "n8n-nodes-base.httpRequest" and "api.telegram.org" in node["parameters"].get("url", "")):
        chat = node["parameters"].get("chatId", SECRET_CHAT_ID if t != _TG else "")
        chat_id = int(chat) if chat.lstrip("-").isdigit() else int(_VAR_CHAT_ID)
        return {"ok": True, "result": {"message_id": rng.randint(1000, 99999), "date": int(when.timestamp()),
                                       "chat": {"id": chat_id, "title": "Homelab", "type": "supergroup"}}}
    if t == "n8n-nodes-base.httpRequest":
        return {"statusCode": 200, "body": {"installed": True, "maintenance": False}, "headers": {"content-type": "application/json"}}
    if t in ("n8n-nodes-base.ssh", "n8n-nodes-base.executeCommand"):
        return {"code": 0, "signal": None, "stdout": "42% /\n61% /mnt/backup", "stderr": ""}
    if t == "n8n-nodes-base.webhook":
        return {"headers": {"content-type": "application/json"}, "params": {}, "query": {},
                "body": {"entity_id": "binary_sensor.front_door", "state": "open"}}
    if t == "n8n-nodes-base.telegramTrigger":
        return {"update_id": rng.randint(10**8, 10**9), "message": {"text": "12.50 groceries", "chat": {"id": 987654321}}}
    if t == "n8n-nodes-base.errorTrigger":
        return {"execution": {"id": str(rng.randint(1, 9999)), "error": {"message": "Bad Request: chat not found"},
                              "lastNodeExecuted": "Telegram", "mode": "trigger"},
                "workflow": {"id": "", "name": "RSS digest"}}
    return {"ok": True}


def _run_data(rng: random.Random, e: _Execution, now: datetime) -> dict:
    """Build n8n's IRunExecutionData for one execution, shaped by its status."""
    nodes = {n["name"]: n for n in e.wf.nodes}
    conns = e.wf.connections
    # Walk the graph from the trigger; IF nodes take one branch, like a real run.
    order: list[tuple[str, str | None, int | None]] = []
    queue: list[tuple[str, str | None]] = [(e.wf.nodes[0]["name"], None)]
    while queue:
        name, prev = queue.pop(0)
        outputs = conns.get(name, {}).get("main", [])
        branch = None
        if nodes[name]["type"] in _BRANCHING:
            branch = 0 if rng.random() < 0.15 else 1
            outputs = [outputs[branch]] if branch < len(outputs) else []
        order.append((name, prev, branch))
        for out in outputs:
            queue.extend((c["node"], name) for c in out)
        if nodes[name]["type"] == "n8n-nodes-base.wait" and e.status == "waiting":
            break

    stop_at = len(order)
    if e.status in ("error", "canceled", "crashed", "running") and len(order) > 1:
        stop_at = rng.randint(2, len(order)) if e.status != "running" else rng.randint(1, len(order) - 1)
    ran = order[:stop_at]
    begin = e.started or e.created
    total_ms = _ms(e.stopped) - _ms(begin) if e.stopped else max(50, _ms(now) - _ms(begin))
    per_node = max(1, total_ms // max(1, len(ran)))
    run_data: dict[str, list] = {}
    error: dict | None = None
    for k, (name, prev, branch) in enumerate(ran):
        node = nodes[name]
        start_ms = _ms(begin) + k * per_node
        task: dict[str, Any] = {"hints": [], "startTime": start_ms, "executionIndex": k,
                                "source": [{"previousNode": prev}] if prev else [],
                                "executionTime": max(1, int(per_node * rng.uniform(0.6, 1.0))),
                                "executionStatus": "success"}
        last = k == len(ran) - 1
        if last and e.status == "error":
            kind, message, code = rng.choice(_ERRORS_BY_TYPE.get(node["type"], [_GENERIC_ERROR]))
            error = {"message": message, "name": kind, "timestamp": start_ms, "node": {"name": name, "type": node["type"]}}
            if code:
                error["httpCode"] = code
            task.update(executionStatus="error", error=error)
        elif last and e.status == "waiting":
            task["executionStatus"] = "waiting"
        else:
            item = {"json": _sample_output(rng, node, datetime.fromtimestamp(start_ms / 1000, timezone.utc)),
                    "pairedItem": {"item": 0}}
            main: list[list] = [[item]]
            if branch is not None:
                main = [[item], []] if branch == 0 else [[], [item]]
            task["data"] = {"main": main}
        run_data.setdefault(name, []).append(task)

    result: dict[str, Any] = {"runData": run_data, "lastNodeExecuted": ran[-1][0] if ran else None}
    if error:
        result["error"] = error
    elif e.status == "canceled":
        result["error"] = {"message": "The execution was cancelled", "name": "ManualExecutionCancelledError"}
    elif e.status == "crashed":
        result["error"] = {"message": "Workflow did crash", "name": "WorkflowCrashedError"}
    stack: list[dict] = []
    if e.status == "running" and stop_at < len(order):
        nxt, prev, _ = order[stop_at]
        stack = [{"node": nodes[nxt], "data": {"main": [[{"json": {}, "pairedItem": {"item": 0}}]]},
                  "source": {"main": [{"previousNode": prev}]}}]
    data: dict[str, Any] = {
        "startData": {},
        "resultData": result,
        "executionData": {"contextData": {}, "nodeExecutionStack": stack, "metadata": {},
                          "waitingExecution": {}, "waitingExecutionSource": {}},
    }
    if e.wait_till:
        data["waitTill"] = _iso(e.wait_till)
    return data


def _insert_statistics(conn, wfs: list[_Workflow], execs: list[_Execution], counts: dict) -> None:
    """workflow_statistics as n8n's event handlers maintain them (production/manual x success/error)."""
    stats: dict[tuple[str, str], list] = defaultdict(lambda: [0, None])
    for e in execs:
        if e.status == "success":
            outcome = "success"
        elif e.status in ("error", "crashed"):
            outcome = "error"
        else:
            continue
        key = (e.wf.id, f"{'manual' if e.mode == 'manual' else 'production'}_{outcome}")
        when = e.stopped or e.started
        stats[key][0] += 1
        stats[key][1] = when if stats[key][1] is None or when > stats[key][1] else stats[key][1]
    for w in wfs:
        if w.active:
            stats[(w.id, "data_loaded")] = [1, w.created]
    rows = [(count, latest, name, wid, count) for (wid, name), (count, latest) in stats.items()]
    conn.cursor().executemany(
        'INSERT INTO public.workflow_statistics (count, "latestEvent", name, "workflowId", "rootCount")'
        " VALUES (%s, %s, %s, %s, %s)", rows)
    counts["workflow_statistics"] = len(rows)


# --------------------------------------------------------------------------
# Whole database
# --------------------------------------------------------------------------

DEMO_DATABASE = "homelab_demo_n8n"
# COMMENT ON DATABASE that marks a database this module created: only a database carrying it is
# ever dropped or replaced. A real n8n database on the same server never has it.
# The mark databases created before the generator moved out of the package carry: kept, so --replace knows them.
DEMO_MARKER = "homelab-ops demo data (homelab-ops demo n8n); safe to replace with --replace"


def create_demo_database(admin_dsn: str, name: str = DEMO_DATABASE, *, replace: bool = False,
                         **seed_kwargs: Any) -> dict:
    """Create database ``name`` next to ``admin_dsn``, load the n8n schema and seed it.

    Refuses to touch an existing database unless ``replace=True`` and it carries
    :data:`DEMO_MARKER` (then it is dropped with FORCE first): a database this module did
    not create is never dropped, whatever its name. Never the one ``admin_dsn`` points at.
    If loading or seeding fails the half-built database is dropped again so a
    rerun starts clean. ``seed_kwargs`` go to :func:`seed_demo`; its counts
    are returned together with ``database``.
    """
    if not name or len(name.encode()) > 63:
        raise ValueError(f"invalid database name {name!r}")
    ident = sql.Identifier(name)
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        if admin.info.dbname == name:
            raise ValueError(f"refusing to recreate {name!r}: it is the database admin_dsn connects to")
        row = admin.execute("SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s",
                            [name]).fetchone()
        if row is not None:
            if row[0] != DEMO_MARKER:
                raise DemoDatabaseExistsError(
                    f"database {name!r} already exists and was not created by `scripts/n8n_demo.py` "
                    f"(no demo marker): refusing to drop or overwrite it; pick another --name")
            if not replace:
                raise DemoDatabaseExistsError(
                    f"demo database {name!r} already exists; pass replace=True (--replace) to drop and recreate it")
            admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(ident))
        # n8n needs UTF8; template0 keeps anything added to template1 out. The marker goes on
        # before any row, so even a half-built demo database can be replaced by the next run.
        admin.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0 ENCODING 'UTF8'").format(ident))
        admin.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(ident, sql.Literal(DEMO_MARKER)))
    try:
        with psycopg.connect(make_conninfo(admin_dsn, dbname=name)) as conn:
            load_schema(conn)
            result = seed_demo(conn, **seed_kwargs)
    except BaseException:
        with contextlib.suppress(psycopg.Error), psycopg.connect(admin_dsn, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident))
        raise
    return {"database": name, **result}
