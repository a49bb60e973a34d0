"""Deliver alerts: redact, pick recipients, send on every channel, record the outcome.

Nothing here raises for a channel or the state database being down: each alert's
outcome per recipient is recorded in homelab_ops.alerts (when the database answers) and
logged. When the database does not answer, alerts go to the chats known from before
(the caller's cache) and those listed in the settings file, so "PostgreSQL is down"
still reaches a phone.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone

import psycopg
from psycopg.types.json import Jsonb

from homelab_ops.notify import chats as chats_mod
from homelab_ops.notify.alert import Alert, Delivered, Outcome, at_least
from homelab_ops.notify.channels import Channel, build as build_channel
from homelab_ops.notify.chats import Chat
from homelab_ops.notify.config import NotifyConfig
from homelab_ops.notify.http import Retry
from homelab_ops.notify.redact import Redactor
from homelab_ops.notify.telegram import TelegramBot

log = logging.getLogger(__name__)

TOKEN_ENV = "TELEGRAM_BOT_TOKEN"
_TOKEN_TTL = 900.0
_token_cache: dict[str, tuple[float, str]] = {}
_token_lock = threading.Lock()


def bot_token(config: NotifyConfig, env_token: str | None = None) -> str | None:
    """notify.telegram.bot_token, else the credential named by bot_token_credential, else $TELEGRAM_BOT_TOKEN."""
    tg = config.notify.telegram
    if tg.bot_token is not None and tg.bot_token.get_secret_value():
        return tg.bot_token.get_secret_value()
    if tg.bot_token_credential:
        name = tg.bot_token_credential
        with _token_lock:
            hit = _token_cache.get(name)
        if hit and time.monotonic() - hit[0] < _TOKEN_TTL:
            return hit[1]
        try:
            from homelab_ops.credentials.store import open_store

            with open_store(config.credentials, "homelab-ops:notify") as store:
                value = store.value(name, purpose="sending alerts")
            with _token_lock:
                _token_cache[name] = (time.monotonic(), value)
            return value
        except Exception as e:  # no master key, store down: fall through to the environment
            log.warning("bot token credential %s not readable (%s)", name, type(e).__name__)
            if hit:
                return hit[1]
    return env_token or os.environ.get(TOKEN_ENV) or None


def record(conn: psycopg.Connection, d: Delivered) -> None:
    a = d.alert
    conn.execute(
        "INSERT INTO homelab_ops.alerts (source, subject, run_id, kind, severity, text, recipients, delivery,"
        " delivered) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
        (a.source, a.subject, a.run_id, a.kind, a.severity, a.plain(), Jsonb([o.to for o in d.outcomes]),
         Jsonb([o.to_json() for o in d.outcomes]), d.ok))


class Dispatcher:
    def __init__(self, config: NotifyConfig, *, telegram: TelegramBot | None, channels: list[tuple[Channel, str]],
                 redact: Redactor,
                 deadline_s: float = 30.0, clock: Callable[[], float] = time.monotonic,
                 logger: logging.Logger | None = None):
        self.config = config
        self.telegram = telegram
        self.channels = channels  # (sender, min_severity), one per notify.channels entry
        self.redact = redact
        self.deadline_s = deadline_s
        self.clock = clock
        self.log = logger or log

    def _chats(self, conn) -> list[Chat] | None:
        chats_mod.sync_static(conn, self.config.notify.telegram.chats)
        return chats_mod.list_chats(conn)

    def deliver(self, alerts: list[Alert], *, known_chats: list[Chat] = ()) -> tuple[list[Delivered], list[Chat] | None]:
        """Send and record every alert; returns the outcomes and the chats read from the table (None: not read)."""
        if not alerts:
            return [], None
        deadline = self.clock() + self.deadline_s
        conn = None
        chats: list[Chat] | None = None
        try:
            conn = chats_mod.state_connection(self.config.state, self.config.postgres)
            chats = self._chats(conn)
        except (psycopg.Error, OSError) as e:
            self.log.warning("state database not reachable (%s): alerts go to the chats known before and "
                             "are not recorded", self.redact(type(e).__name__))
            if conn is not None:
                conn.close()
                conn = None
        static = [Chat(i) for i in self.config.notify.telegram.chats]
        known = chats if chats is not None else list(known_chats) + [
            s for s in static if s.chat_id not in {k.chat_id for k in known_chats}]
        now = datetime.now(timezone.utc)
        out: list[Delivered] = []
        try:
            for alert in alerts:
                d = self._deliver_one(alert.redacted(self.redact), known, now, deadline)
                if conn is not None:
                    try:
                        record(conn, d)
                        d.recorded = True
                    except psycopg.Error as e:
                        self.log.warning("alert not recorded (%s)", type(e).__name__)
                out.append(d)
        finally:
            if conn is not None:
                conn.close()
        return out, chats

    def _deliver_one(self, a: Alert, chats: list[Chat], now: datetime, deadline: float) -> Delivered:
        d = Delivered(a)
        if self.telegram is not None:
            for chat in chats:
                if not chats_mod.receives(chat, a.severity, now):
                    continue
                if self.clock() >= deadline:
                    d.outcomes.append(Outcome(f"telegram:{chat.chat_id}", False, 0, "not sent: no time left this tick"))
                    continue
                d.outcomes.append(self.telegram.send_alert(chat.chat_id, a, deadline=deadline))
        for channel, min_severity in self.channels:
            if not at_least(a.severity, min_severity):
                continue
            if self.clock() >= deadline:
                d.outcomes.append(Outcome(channel.name, False, 0, "not sent: no time left this tick"))
            else:
                d.outcomes.append(channel.send(a, deadline=deadline))
        for o in d.outcomes:
            o.detail = self.redact(o.detail)
        summary = ", ".join(f"{o.to} {'ok' if o.ok else 'FAILED ' + o.detail}" for o in d.outcomes) or "no recipient"
        (self.log.info if d.ok or not d.outcomes else self.log.warning)(
            f"alert [{a.severity}] {a.kind} {a.subject}: {summary}")
        return d


def dispatcher_for(config: NotifyConfig, *, token: str | None = None, retry: Retry | None = None,
                   deadline_s: float = 30.0, sleep: Callable[[float], None] = time.sleep,
                   logger: logging.Logger | None = None, with_credentials: bool = True) -> Dispatcher:
    """The channels the settings configure; the token as `bot_token` finds it unless given."""
    tg = config.notify.telegram
    token = bot_token(config, token)
    retry = retry or Retry(attempts=tg.attempts)
    timeout = tg.timeout.seconds
    telegram = TelegramBot(token, tg.api_base, timeout=timeout, retry=retry, sleep=sleep) if token else None
    channels = [(build_channel(c, timeout=timeout, retry=retry, sleep=sleep), c.min_severity)
                for c in config.notify.channels]
    redact = config.redactor(token or "", with_credentials=with_credentials)
    return Dispatcher(config, telegram=telegram, channels=channels, redact=redact, deadline_s=deadline_s,
                      logger=logger)
