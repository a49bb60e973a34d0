"""Who receives alerts: Telegram chats in homelab_ops.notify_chats.

A chat that sends /start becomes `pending`; only the owner approves it (CLI). An
approved chat receives alerts at or above its minimum severity unless it muted itself
(/mute 8h, /unmute). Nothing is sent to a chat that is not approved, not even a reply.
Parsing the bot's updates is pure; the table is read and written at the edges.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING

import psycopg

from homelab_ops import units
from homelab_ops.notify.alert import SEVERITIES, at_least

if TYPE_CHECKING:
    from homelab_ops.settings import PostgresSettings, StateSettings

DEFAULT_MUTE = timedelta(hours=8)
MAX_MUTE = timedelta(days=30)


@dataclass(frozen=True)
class Chat:
    chat_id: int
    title: str = ""
    status: str = "approved"  # pending, approved
    min_severity: str = "warn"
    muted_until: datetime | None = None

    def to_json(self) -> dict:
        return {"chat_id": self.chat_id, "title": self.title, "status": self.status,
                "min_severity": self.min_severity,
                "muted_until": self.muted_until.isoformat() if self.muted_until else None}

    @classmethod
    def from_json(cls, d: dict) -> Chat:
        mu = d.get("muted_until")
        return cls(int(d["chat_id"]), d.get("title", ""), d.get("status", "approved"), d.get("min_severity", "warn"),
                   datetime.fromisoformat(mu) if mu else None)


def receives(chat: Chat, severity: str, now: datetime) -> bool:
    """Approved, severe enough for this chat, and not muted."""
    if chat.status != "approved" or not at_least(severity, chat.min_severity):
        return False
    return chat.muted_until is None or chat.muted_until <= now


def parse_mute(arg: str) -> timedelta | None:
    """`8h`, `30m`, `2d`, `1w` (the one duration syntax, units.duration_seconds), or a bare number of
    hours (`/mute 8` typed on a phone); None when it is none of these."""
    arg = arg.strip().lower()
    if not arg:
        return DEFAULT_MUTE
    if re.fullmatch(r"\d+(?:\.\d+)?", arg):
        arg += "h"
    try:
        seconds = units.duration_seconds(arg)
    except ValueError:
        return None
    return min(timedelta(seconds=seconds), MAX_MUTE)


@dataclass(frozen=True)
class Command:
    update_id: int
    chat_id: int
    kind: str  # start, mute, unmute, bad_mute
    title: str
    at: datetime
    until: datetime | None = None


def _title(chat: dict, sender: dict) -> str:
    if chat.get("title"):
        return str(chat["title"])
    if chat.get("username") or sender.get("username"):
        return "@" + str(chat.get("username") or sender.get("username"))
    return " ".join(str(x) for x in (chat.get("first_name"), chat.get("last_name")) if x)


def commands(updates: list[dict]) -> tuple[list[Command], int | None]:
    """The commands in getUpdates' answer, and the offset that confirms all of them."""
    out: list[Command] = []
    last = None
    for u in updates:
        uid = u.get("update_id")
        if isinstance(uid, int):
            last = uid if last is None else max(last, uid)
        msg = u.get("message") or {}
        text = (msg.get("text") or "").strip()
        chat = msg.get("chat") or {}
        if not text.startswith("/") or not isinstance(chat.get("id"), int):
            continue
        word, _, arg = text.partition(" ")
        name = word[1:].split("@", 1)[0].lower()
        at = datetime.fromtimestamp(msg.get("date") or 0, timezone.utc)
        base = dict(update_id=uid or 0, chat_id=chat["id"], title=_title(chat, msg.get("from") or {}), at=at)
        if name == "start":
            out.append(Command(kind="start", **base))
        elif name == "mute":
            span = parse_mute(arg)
            out.append(Command(kind="mute", until=at + span, **base) if span else Command(kind="bad_mute", **base))
        elif name == "unmute":
            out.append(Command(kind="unmute", **base))
    return out, (last + 1 if last is not None else None)


# --------------------------------------------------------------------------- the table

_migrated: set[str] = set()
_migrated_lock = threading.Lock()


def state_connection(state: StateSettings, postgres: PostgresSettings) -> psycopg.Connection:
    """An autocommit connection to the state database, migrated once per process."""
    from homelab_ops.state import connect, open_state

    dsn = state.dsn.get_secret_value()
    with _migrated_lock:
        fresh = dsn not in _migrated
    if fresh:
        conn = open_state(state, postgres)
        with _migrated_lock:
            _migrated.add(dsn)
    else:
        conn = connect(dsn, connect_timeout=5)
    conn.autocommit = True
    return conn


_COLS = "chat_id, title, status, min_severity, muted_until"


def list_chats(conn: psycopg.Connection) -> list[Chat]:
    return [Chat(*r) for r in conn.execute(f"SELECT {_COLS} FROM homelab_ops.notify_chats ORDER BY status, chat_id")]


def get_chat(conn: psycopg.Connection, chat_id: int) -> Chat | None:
    r = conn.execute(f"SELECT {_COLS} FROM homelab_ops.notify_chats WHERE chat_id = %s", (chat_id,)).fetchone()
    return Chat(*r) if r else None


def _severity(value: str | None) -> str | None:
    if value is not None and value not in SEVERITIES:
        raise ValueError(f"{value!r} is not a severity: use one of {', '.join(SEVERITIES)}")
    return value


def approve(conn: psycopg.Connection, chat_id: int, min_severity: str | None = None) -> Chat | None:
    """A pending (or already approved) chat becomes approved; None when the bot never heard of it."""
    _severity(min_severity)
    r = conn.execute(
        "UPDATE homelab_ops.notify_chats SET status = 'approved', approved_at = coalesce(approved_at, now()),"
        " min_severity = coalesce(%s, min_severity) WHERE chat_id = %s"
        f" RETURNING {_COLS}", (min_severity, chat_id)).fetchone()
    return Chat(*r) if r else None


def add(conn: psycopg.Connection, chat_id: int, title: str = "", min_severity: str = "warn") -> Chat:
    """Approve a chat directly (its id known from elsewhere)."""
    _severity(min_severity)
    r = conn.execute(
        "INSERT INTO homelab_ops.notify_chats (chat_id, title, status, min_severity, approved_at)"
        " VALUES (%s, %s, 'approved', %s, now())"
        " ON CONFLICT (chat_id) DO UPDATE SET status = 'approved', min_severity = excluded.min_severity,"
        " title = CASE WHEN excluded.title <> '' THEN excluded.title ELSE notify_chats.title END,"
        " approved_at = coalesce(notify_chats.approved_at, now())"
        f" RETURNING {_COLS}", (chat_id, title, min_severity)).fetchone()
    return Chat(*r)


def remove(conn: psycopg.Connection, chat_id: int) -> bool:
    return conn.execute("DELETE FROM homelab_ops.notify_chats WHERE chat_id = %s", (chat_id,)).rowcount > 0


def sync_static(conn: psycopg.Connection, chat_ids: list[int]) -> None:
    """Chats listed in the settings file are approved (and stay so while they are listed there)."""
    for chat_id in chat_ids:
        conn.execute(
            "INSERT INTO homelab_ops.notify_chats (chat_id, status, approved_at) VALUES (%s, 'approved', now())"
            " ON CONFLICT (chat_id) DO UPDATE SET status = 'approved',"
            " approved_at = coalesce(notify_chats.approved_at, now())", (chat_id,))


def apply_commands(conn: psycopg.Connection, cmds: list[Command], tz) -> list[tuple[int, str]]:
    """Record /start as pending, /mute and /unmute for approved chats; the replies, to approved chats only."""
    replies: list[tuple[int, str]] = []
    for cmd in cmds:
        if cmd.kind == "start":
            conn.execute(
                "INSERT INTO homelab_ops.notify_chats (chat_id, title, status, requested_at)"
                " VALUES (%s, %s, 'pending', %s) ON CONFLICT (chat_id) DO UPDATE SET"
                " title = CASE WHEN notify_chats.status = 'pending' THEN excluded.title ELSE notify_chats.title END",
                (cmd.chat_id, cmd.title, cmd.at))
            chat = get_chat(conn, cmd.chat_id)
            if chat and chat.status == "approved":
                replies.append((cmd.chat_id, f"This chat receives homelab alerts of severity {chat.min_severity} "
                                             "and above. /mute 8h silences them for a while."))
            continue
        chat = get_chat(conn, cmd.chat_id)
        if chat is None or chat.status != "approved":
            continue
        if cmd.kind == "mute":
            conn.execute("UPDATE homelab_ops.notify_chats SET muted_until = %s WHERE chat_id = %s",
                         (cmd.until, cmd.chat_id))
            replies.append((cmd.chat_id, f"Muted until {cmd.until.astimezone(tz):%a %H:%M %Z}. /unmute ends it."))
        elif cmd.kind == "unmute":
            conn.execute("UPDATE homelab_ops.notify_chats SET muted_until = NULL WHERE chat_id = %s", (cmd.chat_id,))
            replies.append((cmd.chat_id, "Alerts resumed."))
        elif cmd.kind == "bad_mute":
            replies.append((cmd.chat_id, "Use /mute 8h (minutes m, hours h, days d; at most 30 days)."))
    return replies
