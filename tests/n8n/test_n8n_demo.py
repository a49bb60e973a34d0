"""Tests for tests.n8n_demo against the local PostgreSQL (127.0.0.1:5432, user postgres).

Each test works in its own uniquely named throwaway database and drops it in a
``finally`` block, so a failed run never leaves demo databases behind. Set
HOMELAB_TEST_ADMIN_DSN to point at another server.
"""

from __future__ import annotations

import contextlib
import uuid
from datetime import datetime, timedelta, timezone

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from tests.n8n_demo import (
    EXECUTION_STATUSES,
    SECRET_BOT_TOKEN,
    SECRET_CHAT_ID,
    SECRET_WORKFLOW_NAME,
    DemoDatabaseExistsError,
    create_demo_database,
    load_schema,
    split_sql_script,
)

from tests.conftest import ADMIN_DSN
NOW = datetime(2025, 11, 25, 12, 0, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def admin_dsn() -> str:
    return ADMIN_DSN


@contextlib.contextmanager
def throwaway_name(admin_dsn: str):
    """Yield a unique database name; whatever exists under it afterwards is dropped."""
    name = f"n8n_demo_test_{uuid.uuid4().hex[:12]}"
    try:
        yield name
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def db_dsn(admin_dsn: str, name: str) -> str:
    return make_conninfo(admin_dsn, dbname=name)


def fingerprint(conn: psycopg.Connection) -> tuple:
    """Hash of the seeded content, to prove a given seed/now reproduces it exactly."""
    return conn.execute(
        """
        SELECT (SELECT md5(string_agg(concat_ws('|', id, status, mode, "startedAt", "stoppedAt", "deletedAt",
                                                "retryOf", "workflowId"), ',' ORDER BY id)) FROM execution_entity),
               (SELECT md5(string_agg(concat_ws('|', id, name, nodes::text, connections::text), ',' ORDER BY id))
                  FROM workflow_entity),
               (SELECT md5(string_agg(data, ',' ORDER BY "executionId")) FROM execution_data)
        """
    ).fetchone()


def test_split_sql_script_drops_psql_meta_commands_and_keeps_quoted_semicolons():
    script = (
        "--\n-- PostgreSQL database dump\n--\n\n\\restrict abc123\n\n"
        "SET client_min_messages = warning;\n"
        "CREATE FUNCTION f() RETURNS trigger LANGUAGE plpgsql AS $$\nBEGIN\n  RETURN NEW; -- ok;\nEND;\n$$;\n"
        "COMMENT ON TABLE t IS 'it''s; fine';\n"
        "/* block; comment */ SELECT 1;\n"
        "CREATE TABLE \"we;ird\"\"t\" (x text DEFAULT E'a\\';b', y text DEFAULT 'c\\');\n"
        "\\unrestrict abc123\n"
    )
    statements = split_sql_script(script)
    assert len(statements) == 5
    assert not any("restrict" in s for s in statements)
    assert statements[1].endswith("END;\n$$")
    assert statements[2] == "COMMENT ON TABLE t IS 'it''s; fine'"
    # a quoted identifier with ; and "", an E'' string with \' and ;, a plain string ending in \
    assert statements[4] == "CREATE TABLE \"we;ird\"\"t\" (x text DEFAULT E'a\\';b', y text DEFAULT 'c\\')"
    assert statements[3].strip() == "SELECT 1"


@pytest.mark.services
def test_load_schema_leaves_session_settings_alone(admin_dsn):
    with throwaway_name(admin_dsn) as name:
        with psycopg.connect(admin_dsn, autocommit=True) as admin:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        with psycopg.connect(db_dsn(admin_dsn, name)) as conn:
            before = conn.execute("SELECT current_setting('search_path'), current_setting('client_min_messages')").fetchone()
            # Caller already inside a transaction: SET LOCAL alone would leak until its commit.
            conn.execute("SELECT 1")
            load_schema(conn)
            inside = conn.execute("SELECT current_setting('search_path'), current_setting('client_min_messages')").fetchone()
            conn.commit()
            after = conn.execute("SELECT current_setting('search_path'), current_setting('client_min_messages')").fetchone()
            assert before == inside == after
            assert "public" in after[0]
            tables = conn.execute(
                "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'").fetchone()[0]
            assert tables >= 50
            # Unqualified names resolve again, i.e. search_path is usable.
            assert conn.execute("SELECT count(*) FROM workflow_entity").fetchone()[0] == 0


@pytest.mark.services
def test_create_demo_database(admin_dsn):
    with throwaway_name(admin_dsn) as name:
        result = create_demo_database(admin_dsn, name, workflows=12, executions=2000, days=30, now=NOW, seed=7)
        assert result["database"] == name
        assert result["workflows"] == 12
        assert result["executions"] == 2000
        assert sum(result["by_status"].values()) == 2000
        assert all(result["by_status"][s] > 0 for s in EXECUTION_STATUSES)

        with psycopg.connect(db_dsn(admin_dsn, name)) as conn:
            q = lambda query, *params: conn.execute(query, params or None).fetchone()  # noqa: E731

            # Counts in the database match what seed_demo reported.
            assert q("SELECT count(*) FROM workflow_entity")[0] == 12
            assert q("SELECT count(*) FROM execution_entity")[0] == 2000
            assert q("SELECT count(*) FROM execution_data")[0] == result["execution_data"] > 0
            assert q("SELECT count(*) FROM shared_workflow")[0] == 12
            assert q("SELECT count(*) FROM workflow_history")[0] == 12
            assert q("SELECT count(*) FROM workflows_tags")[0] == result["workflow_tags"] > 0
            assert q("SELECT count(*) FROM tag_entity")[0] == result["tags"] > 0
            assert q("SELECT count(*) FROM project")[0] == 1
            assert q('SELECT count(*) FROM "user"')[0] == 1

            # Every status n8n uses is present.
            statuses = {r[0] for r in conn.execute("SELECT DISTINCT status FROM execution_entity")}
            assert statuses == set(EXECUTION_STATUSES)

            # The foreign keys were enforced during the inserts (none deferrable,
            # none disabled) and nothing dangles.
            fks = conn.execute(
                "SELECT count(*), bool_and(convalidated), bool_or(condeferrable) FROM pg_constraint "
                "WHERE contype = 'f' AND connamespace = 'public'::regnamespace").fetchone()
            assert fks[0] >= 40 and fks[1] is True and fks[2] is False
            assert q("SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'RI_%' AND tgenabled = 'D'")[0] == 0
            assert q('SELECT count(*) FROM execution_entity e LEFT JOIN workflow_entity w ON w.id = e."workflowId"'
                     " WHERE w.id IS NULL")[0] == 0
            assert q('SELECT count(*) FROM shared_workflow s JOIN project p ON p.id = s."projectId"')[0] == 12

            # Shapes n8n relies on.
            assert q("SELECT count(*) FROM execution_entity WHERE status = 'new' AND \"startedAt\" IS NOT NULL")[0] == 0
            assert q("SELECT count(*) FROM execution_entity WHERE finished <> (status = 'success')")[0] == 0
            assert q('SELECT count(*) FROM execution_entity WHERE "deletedAt" IS NOT NULL')[0] > 0
            assert q('SELECT count(*) FROM execution_entity WHERE "stoppedAt" < "startedAt"')[0] == 0
            lo, hi = q('SELECT min("createdAt"), max(coalesce("stoppedAt", "startedAt", "createdAt")) FROM execution_entity')
            assert NOW - timedelta(days=30, minutes=1) <= lo and hi <= NOW
            assert q("SELECT count(*) FROM execution_entity WHERE status = 'waiting' AND \"waitTill\" IS NULL")[0] == 0
            assert q('SELECT count(*) FROM workflow_entity WHERE active AND "activeVersionId" IS NULL')[0] == 0

            # The deliberately leaked secrets are there for the scanner to find.
            wf_id, nodes = q("SELECT id, nodes FROM workflow_entity WHERE name = %s", SECRET_WORKFLOW_NAME)
            assert wf_id == result["secret_workflow_id"]
            telegram = [n for n in nodes if n["type"] == "n8n-nodes-base.telegram"]
            http = [n for n in nodes if n["type"] == "n8n-nodes-base.httpRequest"]
            assert any(n["parameters"]["chatId"] == SECRET_CHAT_ID for n in telegram)
            assert any(f"/bot{SECRET_BOT_TOKEN}/sendMessage" in n["parameters"]["url"] for n in http)
            assert {n["type"] for n in nodes} >= {"n8n-nodes-base.gmailTrigger", "n8n-nodes-base.telegram",
                                                 "n8n-nodes-base.httpRequest"}
            first = fingerprint(conn)

        # Refuses to clobber without replace=True ...
        with pytest.raises(DemoDatabaseExistsError, match="already exists"):
            create_demo_database(admin_dsn, name, executions=10, now=NOW)
        # ... and with it, the same seed and now reproduce the same data.
        create_demo_database(admin_dsn, name, replace=True, workflows=12, executions=2000, days=30, now=NOW, seed=7)
        with psycopg.connect(db_dsn(admin_dsn, name)) as conn:
            assert fingerprint(conn) == first


@pytest.mark.services
def test_demo_never_drops_a_database_it_did_not_create(admin_dsn):
    """An owner's real database (no demo marker) is refused by name, with or without replace."""
    with throwaway_name(admin_dsn) as name:
        with psycopg.connect(admin_dsn, autocommit=True) as admin:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        with psycopg.connect(db_dsn(admin_dsn, name), autocommit=True) as conn:
            conn.execute("CREATE TABLE precious (v text)")
            conn.execute("INSERT INTO precious VALUES ('keep me')")
        for replace in (False, True):
            with pytest.raises(DemoDatabaseExistsError, match=rf"{name}.*not created by `scripts/n8n_demo.py`"):
                create_demo_database(admin_dsn, name, replace=replace, executions=10, now=NOW)
        with psycopg.connect(db_dsn(admin_dsn, name)) as conn:
            assert conn.execute("SELECT v FROM precious").fetchall() == [("keep me",)]


@pytest.mark.services
def test_demo_database_carries_its_marker_and_the_cli_refuses_others(admin_dsn, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    from tests.n8n_demo import DEMO_DATABASE, DEMO_MARKER

    assert DEMO_DATABASE != "n8n"
    with throwaway_name(admin_dsn) as name:
        create_demo_database(admin_dsn, name, executions=10, now=NOW)
        with psycopg.connect(admin_dsn) as admin:
            comment = admin.execute("SELECT shobj_description(oid, 'pg_database') FROM pg_database"
                                    " WHERE datname = %s", [name]).fetchone()[0]
        assert comment == DEMO_MARKER
        # The marker is what --replace checks: removing it makes the database the owner's.
        with psycopg.connect(admin_dsn, autocommit=True) as admin:
            admin.execute(sql.SQL("COMMENT ON DATABASE {} IS NULL").format(sql.Identifier(name)))
        settings = tmp_path / "homelab.yaml"
        settings.write_text(f"postgres:\n  dsn: {admin_dsn}\n")
        script = Path(__file__).resolve().parents[2] / "scripts" / "n8n_demo.py"
        proc = subprocess.run([sys.executable, str(script), "--config", str(settings), "--name", name, "--replace",
                               "--executions", "10"], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert f"database '{name}' already exists and was not created" in proc.stderr
        assert "Traceback" not in proc.stderr
        with psycopg.connect(db_dsn(admin_dsn, name)) as conn:  # still there, untouched
            assert conn.execute("SELECT count(*) FROM workflow_entity").fetchone()[0] > 0
