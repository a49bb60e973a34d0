"""The state database: schema `homelab_ops` in `state.dsn`, migrated in order.

Each domain adds a numbered file under `homelab_ops/sql/`; `migrate` applies the
ones not yet recorded, each in its own transaction, under an advisory lock so two
processes starting at once do not race.
"""

from __future__ import annotations

import os
from importlib import resources
from typing import TYPE_CHECKING

import psycopg
from psycopg import sql

if TYPE_CHECKING:
    from pydantic import SecretStr

    from homelab_ops.settings import PostgresSettings, StateSettings

SCHEMA = "homelab_ops"
_LOCK_KEY = 0x686F6D656C6162  # "homelab"


def connect(dsn: str, **kwargs) -> psycopg.Connection:
    """A connection with a short connect timeout and a recognisable application name."""
    kwargs.setdefault("connect_timeout", 10)
    kwargs.setdefault("application_name", "homelab-ops")
    return psycopg.connect(dsn, **kwargs)


def _server(dsn: str) -> tuple[str, str]:
    """Host and port a DSN names, with libpq's defaults (PGHOST, PGPORT, the local socket)."""
    info = psycopg.conninfo.conninfo_to_dict(dsn)
    return (info.get("host") or os.environ.get("PGHOST", ""), str(info.get("port") or os.environ.get("PGPORT", "5432")))


def ensure_database(admin_dsn: str, dsn: str) -> None:
    """Create the state database itself when it is missing (a fresh Pi has none)."""
    name = psycopg.conninfo.conninfo_to_dict(dsn).get("dbname")
    if not name:
        return
    with connect(admin_dsn, autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            return
        try:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        except psycopg.errors.DuplicateDatabase:
            pass


def migrations() -> list[tuple[str, str]]:
    files = sorted(
        (f for f in resources.files("homelab_ops.sql").iterdir() if f.name.endswith(".sql")),
        key=lambda f: f.name,
    )
    return [(f.name, f.read_text()) for f in files]


def migrate(conn: psycopg.Connection) -> list[str]:
    """Apply pending migrations; returns the names applied."""
    applied: list[str] = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
        conn.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {SCHEMA}.schema_migrations"
            " (name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r[0] for r in conn.execute(f"SELECT name FROM {SCHEMA}.schema_migrations")}
        for name, text in migrations():
            if name in done:
                continue
            conn.execute(text)
            conn.execute(f"INSERT INTO {SCHEMA}.schema_migrations (name) VALUES (%s)", (name,))
            applied.append(name)
    return applied


def open_state(state: StateSettings, postgres: PostgresSettings) -> psycopg.Connection:
    """Connect to the state database, creating and migrating it on first use (`open_state_at`)."""
    return open_state_at(state.dsn, postgres.dsn)


def open_state_at(state_dsn: SecretStr, admin_dsn: SecretStr) -> psycopg.Connection:
    """Connect to the state database at `state_dsn`, creating and migrating it on first use.

    `admin_dsn` (the backed-up server's) is used only when the state database cannot be reached as
    it is: a run worker on another host, or a state database on a server of its own, may not reach
    the backed-up server at all, and must not depend on it."""
    dsn = state_dsn.get_secret_value()
    admin = admin_dsn.get_secret_value()
    try:
        conn = connect(dsn)
    except psycopg.OperationalError as first:
        if _server(admin) != _server(dsn):
            raise  # never create a database of that name on another server
        try:  # a fresh Pi has no state database yet
            ensure_database(admin, dsn)
        except psycopg.Error:
            raise first from None  # the state database's own error says what is wrong
        conn = connect(dsn)
    migrate(conn)
    return conn
