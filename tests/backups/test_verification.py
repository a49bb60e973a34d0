"""Restore verification against the real PostgreSQL and the S3 server on loopback."""

from __future__ import annotations

import hashlib
import json
import random
import uuid
import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path

import dagster as dg
import psycopg
import pytest
from click.testing import CliRunner

from homelab_ops.backups import postgresql as pg
from homelab_ops.backups import verify as v
from homelab_ops.backups.sources.postgresql import compare, scratch_name
from homelab_ops.backups.backup import run_backup
from homelab_ops.backups.catalog import Backup
from homelab_ops.cli import main
from homelab_ops.defs.backups.retention import retention_asset
from homelab_ops.defs.backups.verification import freshness_check, verification_asset
from homelab_ops.defs.resources import HomelabSettings
from tests.conftest import ADMIN_DSN, dsn_for
from tests.faulty_proxy import FaultyProxy
from homelab_ops.backups.config import BackupsConfig

SEED = """
CREATE TABLE a (id int PRIMARY KEY, note text);
INSERT INTO a SELECT i, md5(i::text) FROM generate_series(1, 500) i;
CREATE SCHEMA "S";
CREATE TABLE "S"."b c" (x jsonb, y bytea);
INSERT INTO "S"."b c" SELECT jsonb_build_object('i', i), decode(md5(i::text), 'hex') FROM generate_series(1, 50) i;
CREATE TABLE empty (z int);
"""


def seed(db: str, script: str = SEED) -> None:
    with psycopg.connect(dsn_for(db), autocommit=True) as conn:
        conn.execute(script)


def scratch_left(db: str) -> list[str]:
    """Scratch databases of this test's database still on the server (there must be none)."""
    with psycopg.connect(ADMIN_DSN) as conn:
        rows = conn.execute("SELECT datname FROM pg_database WHERE datname LIKE 'homelab_verify_%'").fetchall()
    return [r[0] for r in rows if r[0].startswith(scratch_name(db, "x")[:-1])]


def settings_for(write_settings, db: str, **backups):
    return write_settings({"postgres": {"dsn": ADMIN_DSN, "databases": [db]}, "backups": backups})


def manifest_path(result) -> Path:
    return result.path.with_name(result.stem + ".manifest.json")


# ---------------------------------------------------------------- pure logic


def test_compare_names_every_difference():
    manifest = [{"schema": "public", "table": "a", "rows": 3, "checksum": "10"},
                {"schema": "public", "table": "b", "rows": 1, "checksum": "5"},
                {"schema": "public", "table": "gone", "rows": 0, "checksum": "0"}]
    restored = [pg.TableStat("public", "a", 3, "10"), pg.TableStat("public", "b", 2, "5"),
                pg.TableStat("public", "extra", 1, "7")]
    checks = {c.table: c for c in compare(manifest, restored)}
    assert checks["public.a"].ok
    assert not checks["public.b"].ok and checks["public.b"].checksum_match  # row count alone differs
    assert checks["public.gone"].restored_rows is None and not checks["public.gone"].ok
    assert checks["public.extra"].expected_rows is None and not checks["public.extra"].ok


def test_scratch_name_fits_postgres_identifier_limit():
    name = scratch_name("d" * 63, "abcd1234")
    assert len(name.encode()) <= 63 and name.startswith("homelab_verify_d") and name.endswith("_abcd1234")


def test_space_problem_and_pick_older():
    assert v.space_problem({"/a": 10}, 5, dump_size=2, factor=2.5) is None
    msg = v.space_problem({"/a": 10, "/b": 1}, 5, dump_size=2, factor=2.5)
    assert "/b" in msg and "verify_min_free_factor" in msg
    backups = [Backup(f"2026110{i}T030000Z", "d", "m") for i in range(1, 6)]
    picks = {v.pick_older(backups, random.Random(s)).stem for s in range(50)}
    assert picks == {b.stem for b in backups[:-1]}  # every older one, never the newest
    assert v.pick_older(backups[:1], random.Random(0)) is None


# ---------------------------------------------------------------- end to end


def _freshness_job(db: str, settings, path: Path):
    """The freshness check run alone, as the `backup_freshness` schedule runs it."""
    check = freshness_check(db, BackupsConfig.of(settings))
    job = dg.define_asset_job("backup_freshness", selection=dg.AssetSelection.checks(check))
    defs = dg.Definitions(asset_checks=[check], jobs=[job],
                          resources={"homelab": HomelabSettings(config_path=str(path))})
    return defs.resolve_job_def("backup_freshness")


def test_good_backup_passes_and_the_result_is_recorded(new_db, write_settings):
    db = new_db("vok")
    seed(db)
    path, settings = settings_for(write_settings, db)
    fresh = _freshness_job(db, settings, path)
    [before] = fresh.execute_in_process(raise_on_error=False).get_asset_check_evaluations()
    assert not before.passed and "no backup at all" in before.description

    backup = run_backup(BackupsConfig.of(settings), db)
    result = v.verify_backup(BackupsConfig.of(settings), db)
    assert result.outcome == "restored" and result.restored and result.sha256_ok, result.message
    assert {t.table: t.restored_rows for t in result.tables} == {"S.b c": 50, "public.a": 500, "public.empty": 0}
    assert all(t.ok for t in result.tables)
    record = json.loads(backup.path.with_name(backup.stem + ".verified.json").read_text())
    assert record["outcome"] == "restored" and record["store"] == "local" and record["duration_s"] > 0
    assert scratch_left(db) == []
    out = CliRunner().invoke(main, ["--config", str(path), "backups", "list", db]).output
    assert backup.stem in out and "restored" in out
    [after] = fresh.execute_in_process().get_asset_check_evaluations()
    assert after.passed and after.metadata["newest_verified_backup"].value == backup.stem
    later = datetime.now(timezone.utc) + timedelta(hours=27)
    assert v.newest_verified(settings.backups, db, now=later)[0] is None  # 26 h on, it is stale


def test_flipped_byte_fails_on_sha256_and_leaves_no_scratch(new_db, write_settings):
    db = new_db("vflip")
    seed(db)
    _, settings = settings_for(write_settings, db)
    backup = run_backup(BackupsConfig.of(settings), db)
    data = bytearray(backup.path.read_bytes())
    data[len(data) // 2] ^= 0x01
    backup.path.write_bytes(bytes(data))
    result = v.verify_backup(BackupsConfig.of(settings), db)
    assert result.outcome == "failed" and not result.sha256_ok and not result.restored
    assert "sha256" in result.message
    assert json.loads(backup.path.with_name(backup.stem + ".verified.json").read_text())["outcome"] == "failed"
    assert scratch_left(db) == []


def test_restore_that_differs_from_the_manifest_fails_table_by_table(new_db, write_settings):
    db = new_db("vdiff")
    seed(db)
    _, settings = settings_for(write_settings, db)
    backup = run_backup(BackupsConfig.of(settings), db)
    manifest = json.loads(manifest_path(backup).read_text())
    for t in manifest["tables"]:
        if t["table"] == "a":
            t["checksum"] = t["checksum"][:-1] + ("1" if t["checksum"][-1] != "1" else "2")
        if t["table"] == "b c":
            t["rows"] += 1
    manifest_path(backup).write_text(json.dumps(manifest))
    result = v.verify_backup(BackupsConfig.of(settings), db)
    assert result.outcome == "failed" and result.restored and result.sha256_ok
    bad = {t.table: t for t in result.mismatches}
    assert set(bad) == {"public.a", "S.b c"}
    assert not bad["public.a"].checksum_match and bad["public.a"].restored_rows == 500
    assert bad["S.b c"].expected_rows == 51 and bad["S.b c"].restored_rows == 50 and bad["S.b c"].checksum_match
    assert "2 of 3 tables differ" in result.message
    assert scratch_left(db) == []


def test_dump_that_pg_restore_rejects_fails_and_the_scratch_is_dropped(new_db, write_settings):
    db = new_db("vbad")
    seed(db)
    _, settings = settings_for(write_settings, db)
    backup = run_backup(BackupsConfig.of(settings), db)
    junk = subprocess.run(["zstd", "-c"], input=b"not a pg_dump archive" * 100, capture_output=True,
                          check=True).stdout
    backup.path.write_bytes(junk)  # intact as far as the (rewritten) manifest knows
    manifest = json.loads(manifest_path(backup).read_text())
    manifest["sha256"] = hashlib.sha256(junk).hexdigest()
    manifest_path(backup).write_text(json.dumps(manifest))
    result = v.verify_backup(BackupsConfig.of(settings), db)
    assert result.outcome == "failed" and result.sha256_ok and not result.restored
    assert "does not restore" in result.message and result.scratch_database
    assert scratch_left(db) == []


def test_short_disk_is_refused_before_any_restore(new_db, write_settings):
    db = new_db("vdisk")
    seed(db, "CREATE TABLE t (x int); INSERT INTO t VALUES (1);")
    _, settings = settings_for(write_settings, db, verify_min_free_factor=1e12)
    run_backup(BackupsConfig.of(settings), db)
    with pytest.raises(v.VerifyError, match="not enough free disk space.*verify_min_free_factor"):
        v.verify_backup(BackupsConfig.of(settings), db)
    assert scratch_left(db) == []


def test_each_copy_is_read_in_turn_and_recorded_where_it_was_read(new_db, write_settings, s3_bucket, s3_server):
    client, bucket = s3_bucket
    db = new_db("vs3")
    seed(db)
    _, settings = settings_for(write_settings, db, s3={"bucket": bucket, "endpoint_url": s3_server,
                                                       "prefix": "pi/"})
    backup = run_backup(BackupsConfig.of(settings), db)
    from homelab_ops.backups.offsite import sync

    assert not any(s.error for s in sync(settings.backups, db))  # the off-site step copies the finished set
    first = v.verify_backup(BackupsConfig.of(settings), db)  # never-read stores first, in configured order: local
    assert first.outcome == "restored" and first.store == "local"
    assert first.recorded_in == [str(backup.path.with_name(backup.stem + ".verified.json"))]
    second = v.verify_backup(BackupsConfig.of(settings), db)  # then the copy read longest ago: the off-site one
    assert second.outcome == "restored" and second.source_uri.startswith(f"s3://{bucket}/pi/")
    key = f"pi/{db}/{backup.stem}.verified.json"
    assert json.loads(client.get_object(Bucket=bucket, Key=key)["Body"].read())["store"] == bucket
    # Damage only the off-site copy: the intact local one must not hide it on the off-site turn.
    body = bytearray(client.get_object(Bucket=bucket, Key=f"pi/{db}/{backup.path.name}")["Body"].read())
    body[100] ^= 0xFF
    client.put_object(Bucket=bucket, Key=f"pi/{db}/{backup.path.name}", Body=bytes(body))
    assert v.verify_backup(BackupsConfig.of(settings), db).store == "local"
    bad = v.verify_backup(BackupsConfig.of(settings), db)
    assert bad.store == bucket and bad.outcome == "failed" and "off-site copy is damaged" in bad.message
    assert scratch_left(db) == []
    # The local copy's restore still counts for freshness; retention sees the failed copy.
    assert v.newest_verified(settings.backups, db)[1] == "local"
    assert not list(Path(settings.backups.local_dir).glob(".restore-*"))  # download removed


def _age_key(tmp_path: Path) -> tuple[Path, str]:
    keyfile = tmp_path / "owner.key"
    subprocess.run(["age-keygen", "-o", str(keyfile)], check=True, capture_output=True)
    recipient = subprocess.run(["age-keygen", "-y", str(keyfile)], check=True, capture_output=True,
                               text=True).stdout.strip()
    return keyfile, recipient


def test_encrypted_backup_is_restored_with_the_identity_file(new_db, write_settings, tmp_path):
    keyfile, recipient = _age_key(tmp_path)
    db = new_db("venc")
    seed(db)
    _, settings = settings_for(write_settings, db, encryption={"age_recipients": [recipient],
                                                               "identity_file": str(keyfile)})
    backup = run_backup(BackupsConfig.of(settings), db)
    assert backup.path.name.endswith(".age")
    result = v.verify_backup(BackupsConfig.of(settings), db)
    assert result.outcome == "restored" and result.restored and len(result.tables) == 3
    assert scratch_left(db) == []


def test_encrypted_backup_without_identity_is_integrity_only_and_says_how_to_fix(new_db, write_settings, tmp_path):
    keyfile, recipient = _age_key(tmp_path)
    db = new_db("vsha")
    seed(db)
    path, settings = settings_for(write_settings, db, encryption={"age_recipients": [recipient]})
    backup = run_backup(BackupsConfig.of(settings), db)
    result = v.verify_backup(BackupsConfig.of(settings), db)
    assert result.outcome == "integrity-only" and result.sha256_ok and not result.restored
    assert "restore was NOT tested" in result.message and "identity_file is not set" in result.message
    assert "homelab-ops backups init" in result.message
    record = json.loads(backup.path.with_name(backup.stem + ".verified.json").read_text())
    assert record["mode"] == "sha256" and record["outcome"] == "integrity-only"
    assert "integrity-only" in CliRunner().invoke(main, ["--config", str(path), "backups", "list", db]).output
    assert v.newest_verified(settings.backups, db) == (None, None)  # nothing was restored: not verified
    # An identity file named but absent from this host is the same case, said with its path.
    _, settings = settings_for(write_settings, db, encryption={"age_recipients": [recipient],
                                                               "identity_file": str(tmp_path / "nope.key")})
    again = v.verify_backup(BackupsConfig.of(settings), db)
    assert again.outcome == "integrity-only" and "nope.key" in again.message and "not on this host" in again.message


# ---------------------------------------------------------------- Dagster


def _old_backup(settings, db: str, days_ago: int) -> str:
    """A real backup, renamed to look `days_ago` old (its content stays valid)."""
    result = run_backup(BackupsConfig.of(settings), db)
    stem = (datetime.now(timezone.utc) - timedelta(days=days_ago)).strftime("%Y%m%dT%H%M%SZ")
    folder = result.path.parent
    for f in folder.glob(result.stem + ".*"):
        f.rename(folder / (stem + f.name[len(result.stem):]))
    return stem


def test_failed_verification_blocks_retention_in_the_same_run(new_db, write_settings):
    db = new_db("vblock")
    seed(db, "CREATE TABLE t (x int); INSERT INTO t SELECT generate_series(1, 10);")
    path, settings = settings_for(write_settings, db, retention={"keep_last": 1, "keep_daily": 0,
                                                                 "keep_weekly": 0, "keep_monthly": 0})
    old = [_old_backup(settings, db, d) for d in (3, 2)]
    newest = run_backup(BackupsConfig.of(settings), db)
    manifest = json.loads(manifest_path(newest).read_text())
    manifest["tables"][0]["rows"] = 11
    manifest_path(newest).write_text(json.dumps(manifest))
    assets = [verification_asset(db, BackupsConfig.of(settings)), retention_asset(db, BackupsConfig.of(settings))]
    result = dg.materialize(assets, resources={"homelab": HomelabSettings(config_path=str(path))},
                            raise_on_error=False)
    check = result.get_asset_check_evaluations()[0]
    assert check.check_name == "matches_manifest" and not check.passed
    assert check.severity == dg.AssetCheckSeverity.ERROR
    mats = {m.asset_key for m in result.get_asset_materialization_events()}
    assert dg.AssetKey(["restore_verification", f"{db}_verification"]) in mats
    assert dg.AssetKey(["backup_retention", f"{db}_retention"]) not in mats  # the blocking check stopped it
    meta = result.asset_materializations_for_node(f"restore_verification__{db}_verification")[0].metadata
    table = {r.data["table"]: r.data for r in meta["tables"].value.records}
    assert table["public.t"] == {"table": "public.t", "expected_rows": 11, "restored_rows": 10,
                                 "checksum_match": True}
    names = {p.name for p in (Path(settings.backups.local_dir) / db).iterdir()}
    assert all(f"{s}.manifest.json" in names for s in old)  # nothing pruned
    assert scratch_left(db) == []
    textfile = Path(settings.metrics.textfile_dir) / f"homelab_backup_{db}.prom"
    assert not textfile.exists()  # a failed verification never claims a fresh backup

    # Repair the manifest: the next run verifies and prunes down to keep_last 1.
    manifest["tables"][0]["rows"] = 10
    manifest_path(newest).write_text(json.dumps(manifest))
    result = dg.materialize(assets, resources={"homelab": HomelabSettings(config_path=str(path))})
    assert result.get_asset_check_evaluations()[0].passed
    meta = result.asset_materializations_for_node(f"backup_retention__{db}_retention")[0].metadata
    assert meta["removed"].value == 2 and meta["bytes_freed"].value > 0
    assert "last 1/1" in meta["plan"].value and "newest verified" in meta["plan"].value
    names = {p.name for p in (Path(settings.backups.local_dir) / db).iterdir()}
    assert not any(n.startswith(tuple(old)) for n in names)
    assert f"{newest.stem}.verified.json" in names
    # Prometheus's BackupStale alert reads the verified backup's time from node_exporter's textfile.
    stamp = int(datetime.strptime(newest.stem, "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc).timestamp())
    assert f'homelab_backup_last_success_timestamp_seconds{{database="{db}"}} {stamp}\n' in textfile.read_text()
    subprocess.run(["promtool", "check", "metrics"], input=textfile.read_bytes(), check=True, capture_output=True)


def test_weekly_config_also_verifies_a_random_older_backup(new_db, write_settings):
    db = new_db("vweek")
    seed(db, "CREATE TABLE t (x int); INSERT INTO t VALUES (1);")
    path, settings = settings_for(write_settings, db)
    old = _old_backup(settings, db, 5)
    newest = run_backup(BackupsConfig.of(settings), db)
    config = BackupsConfig.of(settings)
    result = dg.materialize(
        [verification_asset(db, config)], resources={"homelab": HomelabSettings(config_path=str(path))},
        run_config={"ops": {f"restore_verification__{db}_verification": {"config": {"random_older": True}}}},
    )
    meta = result.asset_materializations_for_node(f"restore_verification__{db}_verification")[0].metadata
    assert meta["backup"].value == newest.stem and meta["older_backup"].value == old
    assert meta["older_outcome"].value == "restored"
    assert (Path(settings.backups.local_dir) / db / f"{old}.verified.json").exists()
    assert scratch_left(db) == []


def test_the_weekly_verification_lists_an_off_site_store_once(new_db, write_settings, s3_bucket, s3_server):
    """On a slow uplink every listing is a request or several: a step that verifies the newest and
    a random older copy in S3 lists the store once, not once per question."""
    from homelab_ops.backups.offsite import sync

    _, bucket = s3_bucket
    db = new_db("vlist")
    seed(db, "CREATE TABLE t (x int); INSERT INTO t VALUES (1);")
    with FaultyProxy(s3_server) as proxy:  # passes everything, records it
        path, settings = settings_for(write_settings, db, s3={"bucket": bucket, "endpoint_url": proxy.url,
                                                              "prefix": "pi/"})
        old = _old_backup(settings, db, 5)
        run_backup(BackupsConfig.of(settings), db)
        assert not any(c.error for c in sync(settings.backups, db))
        config = BackupsConfig.of(settings)
        assert v.verify_backup(config, db).store == "local"  # so tonight's turn is the off-site copy
        before = len(proxy.requests)
        result = dg.materialize(
            [verification_asset(db, config)], resources={"homelab": HomelabSettings(config_path=str(path))},
            run_config={"ops": {f"restore_verification__{db}_verification": {"config": {"random_older": True}}}},
        )
        step = proxy.requests[before:]
    meta = result.asset_materializations_for_node(f"restore_verification__{db}_verification")[0].metadata
    assert meta["store"].value == bucket and meta["older_backup"].value == old
    assert meta["outcome"].value == meta["older_outcome"].value == "restored"
    lists = [r for r in step if r.method == "GET" and "list-type=2" in r.path]
    assert len(lists) == 1, [r.path for r in lists]


def test_code_location_wires_verification_retention_and_schedules():
    from homelab_ops.defs.backups.defs import defs as lazy
    from homelab_ops.defs.maintenance.defs import defs as maintenance
    from homelab_ops.defs.resources import defs as resources

    d = dg.Definitions.merge(lazy(), maintenance(), resources())
    nightly = d.resolve_job_def("nightly_backup")
    selected = set(nightly.asset_layer.selected_asset_keys)
    demo = "homelab_demo_n8n"  # the embedded defaults back up make demo's database
    assert {dg.AssetKey(["restore_verification", f"{demo}_verification"]), dg.AssetKey(["backup_retention", f"{demo}_retention"]),
            dg.AssetKey(["backup_retention", "_globals_retention"])} <= selected
    assert dg.AssetKey("disk_hygiene") not in selected
    specs = {s.key: s for s in d.resolve_all_asset_specs()}
    deps = {dep.asset_key for dep in specs[dg.AssetKey(["backup_retention", f"{demo}_retention"])].deps}
    assert deps == {dg.AssetKey(["restore_verification", f"{demo}_verification"])}
    graph = d.get_repository_def().asset_graph
    verification = dg.AssetKey(["restore_verification", f"{demo}_verification"])
    assert graph.get_check_spec(dg.AssetCheckKey(verification, "matches_manifest")).blocking
    assert dg.AssetCheckKey(verification, "verified_recently") in graph.asset_check_keys
    weekly = d.resolve_job_def("verify_backups")
    assert weekly.executor_def is dg.in_process_executor and int(weekly.tags["dagster/max_runtime"]) > 0
    assert set(weekly.asset_layer.selected_asset_keys) == {dg.AssetKey(["restore_verification", f"{demo}_verification"])}
    for name, job in (("verify_backups_schedule", "verify_backups"), ("disk_hygiene_schedule", "disk_hygiene_job"),
                      ("backup_freshness_schedule", "backup_freshness")):
        schedule = d.get_schedule_def(name)
        assert schedule.job_name == job and schedule.execution_timezone == "Europe/Berlin"
    assert d.get_schedule_def("verify_backups_schedule").cron_schedule == "0 5 * * 0"  # weekly
    assert d.get_schedule_def("disk_hygiene_schedule").cron_schedule == "0 4 * * 6"  # weekly


# ---------------------------------------------------------------- every copy gets read


from hypothesis import given
from hypothesis import strategies as st


@given(st.lists(st.one_of(st.none(), st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1),
                                                 timezones=st.just(timezone.utc))), min_size=1, max_size=7))
def test_rotation_reads_every_store_once_in_as_many_nights(times):
    last = {f"s{i}": t for i, t in enumerate(times)}
    night = max([t for t in times if t] or [datetime(2026, 1, 1, tzinfo=timezone.utc)])
    picked = []
    for _ in range(len(last)):  # 7 stores at most: each is read within a week of nightly runs
        night += timedelta(days=1)
        store = v.rotation(last)[0]
        picked.append(store)
        last[store] = night
    assert sorted(picked) == sorted(last)


def test_rotation_starts_with_stores_never_read_in_configured_order():
    t = datetime(2026, 11, 1, tzinfo=timezone.utc)
    assert v.rotation({"local": t, "nas": None, "b2": None}) == ["nas", "b2", "local"]
    assert v.rotation({"local": t + timedelta(days=2), "nas": t, "b2": t + timedelta(days=1)}) == ["nas", "b2", "local"]
    # b2 still owes tonight's backup (its upload failed): the stores holding it go first, until b2 is overdue.
    last = {"local": t + timedelta(days=2), "nas": t + timedelta(days=3), "b2": t + timedelta(days=1)}
    holding = {"local", "nas"}
    assert v.rotation(last, holding, now=t + timedelta(days=4)) == ["local", "nas", "b2"]
    assert v.rotation(last, holding, now=t + timedelta(days=7)) == ["b2", "local", "nas"]
    assert v.rotation({"local": t, "b2": None}, {"local"}, now=t) == ["b2", "local"]  # never read: read now


def _copy_offsite(client, bucket: str, prefix: str, backup_path: Path) -> None:
    """Every file of the backup set into a bucket, manifest last, as the off-site step leaves it."""
    files = sorted(backup_path.parent.glob(backup_path.name.split(".")[0] + ".*"),
                   key=lambda f: f.name.endswith(".manifest.json"))
    for f in files:
        if not f.name.endswith(".verified.json"):
            client.put_object(Bucket=bucket, Key=f"{prefix}{backup_path.parent.name}/{f.name}", Body=f.read_bytes())


def test_restores_from_each_store_in_turn_and_catches_a_flipped_byte_on_that_targets_turn(
        new_db, write_settings, s3_server):
    """Issue 11's done-when: local, then the NAS, then B2 (two buckets on one S3 server); only B2's copy is damaged."""
    import boto3

    client = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    buckets = [f"v-{uuid.uuid4().hex[:10]}" for _ in range(2)]
    for b in buckets:
        client.create_bucket(Bucket=b)
    db = new_db("vturn")
    seed(db)
    path, settings = settings_for(write_settings, db)  # back up locally, then copy off-site ourselves
    backup = run_backup(BackupsConfig.of(settings), db)
    for b in buckets:
        _copy_offsite(client, b, "pi/", backup.path)
    dump_key = f"pi/{db}/{backup.path.name}"
    body = bytearray(client.get_object(Bucket=buckets[1], Key=dump_key)["Body"].read())
    body[len(body) // 2] ^= 0x01
    client.put_object(Bucket=buckets[1], Key=dump_key, Body=bytes(body))
    path, settings = settings_for(write_settings, db, s3=[
        {"bucket": buckets[0], "endpoint_url": s3_server, "prefix": "pi/", "name": "nas"},
        {"bucket": buckets[1], "endpoint_url": s3_server, "prefix": "pi/", "name": "b2"}])
    cli = ["--config", str(path), "backups", "list", db]
    listed = CliRunner().invoke(main, cli).output
    assert [ln.split()[1] + " " + ln.split()[-1] for ln in listed.splitlines()[1:]] == [
        "local unverified", "nas unverified", "b2 unverified"]  # never read: not passed

    asset = verification_asset(db, BackupsConfig.of(settings))
    resources = {"homelab": HomelabSettings(config_path=str(path))}
    seen = []
    for _ in range(3):
        result = dg.materialize([asset], resources=resources, raise_on_error=False)
        meta = result.asset_materializations_for_node(f"restore_verification__{db}_verification")[0].metadata
        [check] = result.get_asset_check_evaluations()
        seen.append((meta["store"].value, meta["outcome"].value, check.passed))
    assert seen == [("local", "restored", True), ("nas", "restored", True), ("b2", "failed", False)]
    assert check.severity == dg.AssetCheckSeverity.ERROR and "b2" in check.description
    assert "sha256" in meta["message"].value and scratch_left(db) == []
    listed = CliRunner().invoke(main, cli).output
    assert [ln.split()[1] + " " + ln.split()[-1] for ln in listed.splitlines()[1:]] == [
        "local restored", "nas restored", "b2 failed"]
    # Each record lives beside the copy it describes and names it.
    rec = json.loads(client.get_object(Bucket=buckets[0], Key=f"pi/{db}/{backup.stem}.verified.json")["Body"].read())
    assert rec["store"] == "nas" and rec["outcome"] == "restored" and rec["verified_copy"].startswith(f"s3://{buckets[0]}/")
    # The fourth night is local's turn again.
    assert v.tonights_store(settings.backups, db)[0].label == "local"


def test_json_checksums_do_not_depend_on_the_servers_session_defaults(new_db, write_settings, monkeypatch):
    """A json table's checksum is taken from its text: the database's TimeZone and DateStyle change between
    the backup and the verification, and the restore still matches."""
    db = new_db("vjson")
    seed(db, """CREATE TABLE events (id int, doc json, at timestamptz, d date, span interval, f float8);
                INSERT INTO events SELECT i, json_build_object('i', i), '2026-03-29 01:30:00+00'::timestamptz
                  + i * interval '7 hours', date '2026-01-01' + i, i * interval '90 minutes', i / 7.0
                FROM generate_series(1, 200) i;""")
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f"ALTER DATABASE {db} SET timezone = 'Pacific/Chatham'")
        conn.execute(f"ALTER DATABASE {db} SET datestyle = 'SQL, DMY'")
        conn.execute(f"ALTER DATABASE {db} SET intervalstyle = 'iso_8601'")
        conn.execute(f"ALTER DATABASE {db} SET extra_float_digits = -2")
    _, settings = settings_for(write_settings, db)
    backup = run_backup(BackupsConfig.of(settings), db)
    manifest = json.loads(manifest_path(backup).read_text())
    [events] = [t for t in manifest["tables"] if t["table"] == "events"]
    assert events["checksum"].startswith("txtf:")  # the text path, under the fixed session
    # The scratch database gets the server's defaults; make the verifying session differ too (libpq's
    # environment, this process only: the server is shared).
    monkeypatch.setenv("PGTZ", "America/St_Johns")
    monkeypatch.setenv("PGDATESTYLE", "German")
    monkeypatch.setenv("PGOPTIONS", "-c intervalstyle=sql_standard -c extra_float_digits=0")
    result = v.verify_backup(BackupsConfig.of(settings), db)
    assert result.outcome == "restored", result.message
    # Without the fixed session the same rows hash differently: the test can fail.
    with psycopg.connect(dsn_for(db)) as conn:
        loose = {s.name: s.checksum for s in pg.table_stats(conn, fixed_session=False)}
    assert loose["public.events"].split(":")[1] != events["checksum"].split(":")[1]


def test_integrity_only_is_a_warning_that_says_how_to_fix_it_and_counts_for_nothing(new_db, write_settings, tmp_path):
    keyfile, recipient = _age_key(tmp_path)
    db = new_db("vwarn")
    seed(db, "CREATE TABLE t (x int); INSERT INTO t SELECT generate_series(1, 10);")
    path, settings = settings_for(write_settings, db, encryption={"age_recipients": [recipient]},
                                  retention={"keep_last": 1, "keep_daily": 0, "keep_weekly": 0, "keep_monthly": 0})
    old = _old_backup(settings, db, 2)
    newest = run_backup(BackupsConfig.of(settings), db)
    assets = [verification_asset(db, BackupsConfig.of(settings)), retention_asset(db, BackupsConfig.of(settings))]
    result = dg.materialize(assets, resources={"homelab": HomelabSettings(config_path=str(path))},
                            raise_on_error=False)
    [check] = result.get_asset_check_evaluations()
    assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN
    assert "homelab-ops backups init" in check.description and "NOT tested" in check.description
    # A warning does not block retention, which keeps the policy's backup: nothing was restored to protect.
    meta = result.asset_materializations_for_node(f"backup_retention__{db}_retention")[0].metadata
    assert meta["removed"].value == 1 and "newest verified" not in meta["plan"].value
    assert not (Path(settings.backups.local_dir) / db / f"{old}.manifest.json").exists()
    assert not (Path(settings.metrics.textfile_dir) / f"homelab_backup_{db}.prom").exists()  # no metric
    [fresh] = _freshness_job(db, settings, path).execute_in_process().get_asset_check_evaluations()
    assert not fresh.passed and "integrity-only check does not count" in fresh.description
    assert newest.stem in {p.name[:16] for p in (Path(settings.backups.local_dir) / db).iterdir()}


def test_records_from_before_per_copy_verification_count_only_for_the_copy_they_read(tmp_path):
    """Format 1 wrote one record into every store, naming the copy read ("passed", "sha256-only")."""
    from homelab_ops.backups.catalog import read_listing
    from homelab_ops.backups.stores import LocalStore

    store = LocalStore(tmp_path)
    folder = tmp_path / "db"
    folder.mkdir()
    stems = ["20261101T030000Z", "20261102T030000Z", "20261103T030000Z", "20261104T030000Z"]
    copies = [str(folder / f"{stems[0]}.dump.zst"), "s3://bucket/db/x.dump.zst", str(folder / f"{stems[2]}.dump.zst")]
    for stem, (outcome, copy) in zip(stems, [("passed", copies[0]), ("passed", copies[1]), ("sha256-only", copies[2])]):
        (folder / f"{stem}.dump.zst").write_bytes(b"d")
        (folder / f"{stem}.manifest.json").write_text("{}")
        (folder / f"{stem}.verified.json").write_text(json.dumps({"format": 1, "outcome": outcome,
                                                                  "verified_copy": copy}))
    (folder / f"{stems[3]}.dump.zst").write_bytes(b"d")
    (folder / f"{stems[3]}.manifest.json").write_text("{}")
    (folder / f"{stems[3]}.verified.json").write_text("{not json")
    backups = read_listing(store.list("db")).backups
    assert [v.copy_outcome(store, "db", b) for b in backups] == ["restored", "unverified", "integrity-only",
                                                                  "unreadable"]
    assert v.recorded_outcomes([store], "db") == [(stems[3], "local", "unreadable"),
                                                  (stems[2], "local", "integrity-only"),
                                                  (stems[0], "local", "restored")]
