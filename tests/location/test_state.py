"""The state database as homelab-ops opens it: created on first use, reached without the backed-up server."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import sql

from homelab_ops.state import open_state
from tests.conftest import ADMIN_DSN, database_exists, dsn_for

DEAD = "host=127.0.0.1 port=9 user=postgres dbname=postgres connect_timeout=3"


def test_a_missing_state_database_is_created_through_postgres_dsn(write_settings, fresh_state_db):
    _, settings = write_settings({"state": {"dsn": dsn_for(fresh_state_db)}})
    assert not database_exists(fresh_state_db)
    with open_state(settings.state, settings.postgres) as conn:
        assert conn.execute("SELECT count(*) FROM homelab_ops.schema_migrations").fetchone()[0] > 0
    assert database_exists(fresh_state_db)


def test_an_existing_state_database_opens_when_postgres_dsn_cannot_be_reached(write_settings, fresh_state_db):
    """A run worker on another Docker host reaches the state database but not the backed-up server."""
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(fresh_state_db)))
    _, settings = write_settings({"postgres": {"dsn": DEAD}, "state": {"dsn": dsn_for(fresh_state_db)}})
    with open_state(settings.state, settings.postgres) as conn:
        assert conn.execute("SELECT current_database()").fetchone()[0] == fresh_state_db


def test_an_unreachable_state_database_is_the_error_and_nothing_is_created_elsewhere(write_settings,
                                                                                     fresh_state_db):
    _, settings = write_settings({"state": {"dsn": f"host=127.0.0.1 port=9 dbname={fresh_state_db} connect_timeout=3"}})
    with pytest.raises(psycopg.OperationalError, match="port 9 failed"):
        open_state(settings.state, settings.postgres)
    assert not database_exists(fresh_state_db)  # not on postgres.dsn's server, which is another one
