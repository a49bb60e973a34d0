"""Backups end to end against the real PostgreSQL and a real S3 server on loopback."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path

import dagster as dg
import psycopg
import pytest

from homelab_ops.backups import postgresql as pg
from homelab_ops.backups.backup import BackupError, _lock_key, run_backup
from homelab_ops.backups.catalog import read_listing
from homelab_ops.backups.restore import RestoreError, locate, restore
from homelab_ops.defs.backups.assets import backup_asset
from homelab_ops.defs.resources import HomelabSettings
from tests.conftest import ADMIN_DSN, dsn_for, database_exists
from homelab_ops.backups.config import BackupsConfig

TRICKY = r"""
CREATE SCHEMA "Other Schema";
CREATE TABLE "Other Schema"."MiXed Case" (
    id bigserial PRIMARY KEY, payload bytea, note text, n numeric, f double precision, j jsonb, t timestamptz);
INSERT INTO "Other Schema"."MiXed Case" (payload, note, n, f, j, t)
SELECT decode(md5(i::text) || '00ff', 'hex'),
       CASE WHEN i % 7 = 0 THEN NULL ELSE repeat('Grüße, 世界 🚀 ', i % 40) END,
       CASE WHEN i % 5 = 0 THEN NULL ELSE i * 1.5 END,
       i / 3.0,
       jsonb_build_object('i', i, 'quote', 'it''s "here"\\'),
       '2026-03-29 01:30:00+01'::timestamptz + i * interval '1 minute'
FROM generate_series(1, 3000) AS i;
INSERT INTO "Other Schema"."MiXed Case" (payload, note) VALUES ('\x00'::bytea, repeat('x', 200000));
CREATE TABLE public.empty_table (x int);
CREATE SEQUENCE public.counter START 100;
SELECT nextval('public.counter'), nextval('public.counter');
CREATE TABLE public.plain (k text PRIMARY KEY, v text);
INSERT INTO public.plain VALUES ('tab', E'a\tb'), ('newline', E'a\nb'), ('backslash', E'a\\b'), ('null', NULL);
CREATE TABLE public.legacy (doc json, at point);  -- types without a hash function
INSERT INTO public.legacy VALUES ('{"n8n": "classic json", "spaces":   1}', '(1.5,2)'), (NULL, NULL);
"""


def seed(database: str, script: str = TRICKY) -> None:
    with psycopg.connect(dsn_for(database), autocommit=True) as conn:
        conn.execute(script)


def stats(database: str) -> dict:
    with psycopg.connect(dsn_for(database)) as conn:
        return {t.name: (t.rows, t.checksum) for t in pg.table_stats(conn)}


def manifest_stats(manifest: dict) -> dict:
    return {f"{t['schema']}.{t['table']}": (t["rows"], t["checksum"]) for t in manifest["tables"]}


def materialize(settings_path: Path, settings, database: str) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        [backup_asset(database, BackupsConfig.of(settings))],
        resources={"homelab": HomelabSettings(config_path=str(settings_path))},
        raise_on_error=False,
    )


def test_round_trip_through_the_asset(new_db, write_settings):
    db = new_db("src")
    seed(db)
    path, settings = write_settings({"postgres": {"dsn": ADMIN_DSN, "databases": [db]}})
    result = materialize(path, settings, db)
    assert result.success
    mat = result.asset_materializations_for_node(f"backups__{db}_backup")[0]
    meta = mat.metadata
    assert meta["table_count"].value == 4
    assert meta["row_count"].value == 3001 + 4 + 2
    dump = Path(meta["path"].value)
    assert dump.name.endswith(".dump.zst") and dump.exists()
    manifest = json.loads(dump.with_name(dump.name.replace(".dump.zst", ".manifest.json")).read_text())
    assert manifest["database"] == db and manifest["sha256"] == meta["sha256"].value
    assert manifest["server_version"] and manifest["pg_dump_version"].startswith("pg_dump")
    assert manifest_stats(manifest) == stats(db)
    assert manifest_stats(manifest)["public.empty_table"] == (0, "rec:0")
    assert manifest_stats(manifest)["public.legacy"][1].startswith("txtf:")

    target = new_db("restored", create=False)
    restore(BackupsConfig.of(settings), locate(BackupsConfig.of(settings), db), target)
    assert stats(target) == manifest_stats(manifest)
    with psycopg.connect(dsn_for(target)) as conn:
        assert conn.execute("SELECT last_value FROM public.counter").fetchone()[0] == 101
        long_note = conn.execute('SELECT length(note) FROM "Other Schema"."MiXed Case" WHERE payload = %s',
                                 (b"\x00",)).fetchone()[0]
        assert long_note == 200000


def test_manifest_counts_come_from_the_dumps_snapshot(new_db, write_settings):
    """Rows inserted while pg_dump runs are neither in the dump nor in the manifest."""
    db = new_db("snap")
    seed(db, "CREATE TABLE big (id int, pad text); INSERT INTO big SELECT i, repeat('p', 200) "
             "FROM generate_series(1, 300000) i;")
    _, settings = write_settings({"postgres": {"dsn": ADMIN_DSN, "databases": [db]}})
    stop = threading.Event()

    def writer():
        with psycopg.connect(dsn_for(db), autocommit=True) as conn:
            while not stop.is_set():
                conn.execute("INSERT INTO big SELECT i, 'late' FROM generate_series(1, 500) i")

    t = threading.Thread(target=writer)
    t.start()
    try:
        time.sleep(0.3)
        result = run_backup(BackupsConfig.of(settings), db)
    finally:
        stop.set()
        t.join()
    restored = new_db("snap_r", create=False)
    restore(BackupsConfig.of(settings), locate(BackupsConfig.of(settings), db), restored)
    assert stats(restored) == manifest_stats(result.manifest)


def test_pg_dump_failing_midway_leaves_no_complete_looking_backup(new_db, write_settings):
    db = new_db("fail")
    seed(db, "CREATE TABLE big (id int, pad text); INSERT INTO big SELECT i, md5(i::text) || repeat('q', 500) "
             "FROM generate_series(1, 400000) i;")
    _, settings = write_settings({"postgres": {"dsn": ADMIN_DSN, "databases": [db]}})
    folder = Path(settings.backups.local_dir) / db

    def killer():
        deadline = time.time() + 30
        while time.time() < deadline:
            if any(p.name.endswith(".partial") and p.stat().st_size > 0 for p in folder.glob("*")) if folder.exists() else False:
                with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
                    n = conn.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                                     "WHERE application_name = 'pg_dump' AND datname = %s", (db,)).fetchone()[0]
                if n:
                    return
            time.sleep(0.01)

    t = threading.Thread(target=killer)
    t.start()
    with pytest.raises(BackupError, match=r"pg_dump of .* failed \(exit 1\)"):
        run_backup(BackupsConfig.of(settings), db)
    t.join()
    assert sorted(p.name for p in folder.iterdir()) == []


def test_hung_pg_dump_is_stopped_and_reported(new_db, write_settings):
    db = new_db("hang")
    seed(db, "CREATE TABLE locked (x int);")
    _, settings = write_settings({"postgres": {"dsn": ADMIN_DSN, "databases": [db]}, "backups": {"timeout": "2s"}})
    with psycopg.connect(dsn_for(db)) as holder:
        holder.execute("LOCK TABLE locked IN ACCESS EXCLUSIVE MODE")  # pg_dump waits for this forever
        started = time.time()
        with pytest.raises(BackupError, match="hung"):
            run_backup(BackupsConfig.of(settings), db)
        assert time.time() - started < 30
        holder.rollback()
    assert list((Path(settings.backups.local_dir) / db).iterdir()) == []


@pytest.mark.services
def test_missing_database_fails_before_pg_dump(write_settings, tmp_path):
    path, settings = write_settings({"postgres": {"dsn": ADMIN_DSN, "databases": ["no_such_db_xyz"]}})
    result = materialize(path, settings, "no_such_db_xyz")
    assert not result.success
    failure = result.get_step_failure_events()[0].step_failure_data.error
    assert "'no_such_db_xyz' does not exist" in failure.message
    assert not (Path(settings.backups.local_dir) / "no_such_db_xyz").exists()


def test_two_backups_of_one_database_never_run_at_once(new_db, write_settings):
    db = new_db("lock")
    _, settings = write_settings({"postgres": {"dsn": ADMIN_DSN, "databases": [db]}})
    with psycopg.connect(ADMIN_DSN, autocommit=True) as other:
        other.execute("SELECT pg_advisory_lock(%s)", (_lock_key(db),))
        with pytest.raises(BackupError, match="another backup"):
            run_backup(BackupsConfig.of(settings), db)


def test_restore_refuses_an_existing_database_and_a_damaged_dump(new_db, write_settings):
    db = new_db("refuse")
    seed(db, "CREATE TABLE t (x int); INSERT INTO t VALUES (1);")
    _, settings = write_settings({"postgres": {"dsn": ADMIN_DSN, "databases": [db]}})
    result = run_backup(BackupsConfig.of(settings), db)
    existing = new_db("exists")
    with pytest.raises(RestoreError, match="already exists"):
        restore(BackupsConfig.of(settings), locate(BackupsConfig.of(settings), db), existing)
    data = bytearray(result.path.read_bytes())
    data[len(data) // 2] ^= 0x01
    result.path.write_bytes(bytes(data))
    target = new_db("never", create=False)
    with pytest.raises(RestoreError, match="sha256"):
        restore(BackupsConfig.of(settings), locate(BackupsConfig.of(settings), db), target)
    assert not database_exists(target)


def test_encrypted_backup_decrypts_with_the_age_cli(new_db, write_settings, tmp_path):
    keyfile = tmp_path / "owner.key"
    subprocess.run(["age-keygen", "-o", str(keyfile)], check=True, capture_output=True)
    recipient = subprocess.run(["age-keygen", "-y", str(keyfile)], check=True, capture_output=True,
                               text=True).stdout.strip()
    db = new_db("enc")
    seed(db)
    _, settings = write_settings({"postgres": {"dsn": ADMIN_DSN, "databases": [db]},
                                  "backups": {"encryption": {"age_recipients": [recipient]}}})
    result = run_backup(BackupsConfig.of(settings), db)
    assert result.path.name.endswith(".dump.zst.age")
    raw = result.path.read_bytes()
    assert raw.startswith(b"age-encryption.org/v1") and b"Gr\xc3\xbc\xc3\x9fe" not in raw
    target = new_db("dec", create=False)
    subprocess.run(["createdb", "-h", "127.0.0.1", "-U", "postgres", target], check=True)
    # The README's command, verbatim apart from the names.
    subprocess.run(f"age -d -i {keyfile} {result.path} | zstd -d | pg_restore -h 127.0.0.1 -U postgres "
                   f"--exit-on-error -d {target}", shell=True, check=True)
    assert stats(target) == manifest_stats(result.manifest)


@pytest.mark.services
def test_globals_backup_holds_the_roles(write_settings):
    from homelab_ops.backups.backup import run_globals_backup

    _, settings = write_settings({})
    result = run_globals_backup(BackupsConfig.of(settings))
    text = subprocess.run(f"zstd -dc {result.path}", shell=True, check=True, capture_output=True, text=True).stdout
    assert "CREATE ROLE postgres" in text
    assert read_listing(list(p.name for p in result.path.parent.iterdir())).backups[-1].stem == result.stem
