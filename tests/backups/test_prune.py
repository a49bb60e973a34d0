"""Retention end to end: local folders, the S3 server on loopback, the CLI."""

from __future__ import annotations

import json
import logging
import math
import subprocess
import sys
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import psycopg
import pytest
from click.testing import CliRunner

from homelab_ops.backups import prune as p
from homelab_ops.backups.backup import run_backup, run_globals_backup
from homelab_ops.backups.catalog import GLOBALS, read_listing, stem_for
from homelab_ops.backups.config import BackupsConfig
from homelab_ops.backups.retention import RetentionPolicy, apply_policy
from homelab_ops.backups.stores import stores_for
from homelab_ops.cli import main
from homelab_ops.settings import RetentionSettings
from tests.conftest import ADMIN_DSN, dsn_for

NOW = datetime.now(timezone.utc).replace(microsecond=0)
ONLY_LAST = {"keep_last": 1, "keep_daily": 0, "keep_weekly": 0, "keep_monthly": 0}


def stems_back(n: int, every: timedelta, end: datetime = NOW) -> list[str]:
    return [stem_for(end - i * every) for i in range(n)][::-1]


def record(outcome: str, store: str = "local") -> str:
    """A verification record of the copy in `store`, as verification writes it (the fields retention reads)."""
    return json.dumps({"format": 2, "store": store, "outcome": outcome})


def fake_backups(folder: Path, stems: list[str], verified: dict[str, str] | None = None) -> None:
    """Files as the backup writes them; the bodies do not matter to retention."""
    folder.mkdir(parents=True, exist_ok=True)
    for stem in stems:
        (folder / f"{stem}.dump.zst").write_bytes(b"d" * 100)
        (folder / f"{stem}.manifest.json").write_text("{}")
    for stem, outcome in (verified or {}).items():
        (folder / f"{stem}.verified.json").write_text(record(outcome))


def names(folder: Path) -> set[str]:
    return {q.name for q in folder.iterdir()}


# ---------------------------------------------------------------- pure logic


def test_empty_policy_is_refused_like_restic():
    # The settings refuse it at load (tests/location/test_settings.py); policy_from refuses it again, unvalidated.
    with pytest.raises(p.PruneError, match="refusing to prune"):
        p.policy_from(RetentionSettings.model_construct(keep_daily=0, keep_weekly=0, keep_monthly=0))
    with pytest.raises(p.PruneError, match="refusing to prune"):
        p.policy_from(RetentionSettings.model_construct(keep_daily=0, keep_weekly=0, keep_monthly=0, keep_within="0d"))
    assert p.policy_from(RetentionSettings()).keep_daily == 7


def test_plan_counts_only_complete_backups_and_waits_out_young_leftovers():
    stems = stems_back(3, timedelta(days=1))
    young, old = stem_for(NOW), stem_for(NOW - timedelta(days=3))
    files = {f"{s}{suffix}": 10 for s in stems for suffix in (".dump.zst", ".manifest.json")}
    files |= {f"{young}.dump.zst.partial": 5, f"{old}.dump.zst.partial": 6, f"{old}.manifest.json": 7,
              "notes.txt": 1}
    files.pop(f"{stems[-1]}.manifest.json")  # the newest dump lost its manifest: an orphan
    plan = p.plan_store("local", read_listing(files), files, RetentionPolicy(keep_last=1), ZoneInfo("UTC"),
                        now=NOW + timedelta(hours=1), grace=timedelta(hours=24))
    assert [b.stem for b, _ in plan.kept] == [stems[1]]  # the orphan did not take the one slot
    assert [b.stem for b in plan.removed] == [stems[0]]
    leftovers = {x.name: x.remove for x in plan.leftovers}
    assert leftovers == {f"{stems[-1]}.dump.zst": False, f"{old}.manifest.json": True,
                         f"{old}.dump.zst.partial": True, f"{young}.dump.zst.partial": False}
    assert plan.unknown == ["notes.txt"] and "notes.txt" not in plan.delete_names
    assert plan.bytes_freed == 20 + 7 + 6


def test_stale_uploads_and_grace():
    ups = [{"Key": "a", "Initiated": NOW - timedelta(hours=25)}, {"Key": "b", "Initiated": NOW - timedelta(hours=1)}]
    assert [u["Key"] for u in p.stale_uploads(ups, NOW)] == ["a"]
    assert p.leftover_grace(7200) == timedelta(hours=24)
    assert p.leftover_grace(3 * 86400) == timedelta(days=3, hours=1)  # never shorter than a backup may run


# ---------------------------------------------------------------- local


def test_crash_between_dump_and_manifest_leaves_an_orphan_that_is_removed_never_counted(new_db, write_settings):
    db = new_db("porph")
    with psycopg.connect(dsn_for(db), autocommit=True) as c:
        c.execute("CREATE TABLE t (x int); INSERT INTO t VALUES (1);")
    _, settings = write_settings({"postgres": {"dsn": ADMIN_DSN, "databases": [db]},
                                  "backups": {"retention": ONLY_LAST}})
    complete = run_backup(BackupsConfig.of(settings), db)
    crashed = run_backup(BackupsConfig.of(settings), db)
    crashed.path.with_name(crashed.stem + ".manifest.json").unlink()  # what the crash leaves behind

    soon = p.prune_database(BackupsConfig.of(settings), db)
    [plan] = soon.plans
    assert [b.stem for b, _ in plan.kept] == [complete.stem] and not plan.removed
    assert [(x.name, x.kind, x.remove) for x in plan.leftovers] == [(crashed.path.name, "orphan", False)]
    assert crashed.path.exists()  # a backup may still be writing its manifest

    later = p.prune_database(BackupsConfig.of(settings), db, now=datetime.now(timezone.utc) + timedelta(days=2))
    [plan] = later.plans
    assert [b.stem for b, _ in plan.kept] == [complete.stem]
    assert [(x.name, x.remove) for x in plan.leftovers] == [(crashed.path.name, True)]
    assert later.bytes_freed == crashed.manifest["size"]
    assert not crashed.path.exists() and complete.path.exists()
    assert "orphan" in p.markdown(later, settings.tz)


def test_newest_restored_backup_is_never_deleted_and_integrity_only_does_not_count(write_settings):
    _, settings = write_settings({"backups": {"retention": ONLY_LAST}})
    folder = Path(settings.backups.local_dir) / "app"
    stems = stems_back(6, timedelta(days=1))
    fake_backups(folder, stems, verified={stems[1]: "restored", stems[3]: "restored", stems[4]: "integrity-only"})
    result = p.prune_database(BackupsConfig.of(settings), "app")
    [plan] = result.plans
    kept = {b.stem: r for b, r in plan.kept}
    assert kept == {stems[5]: ("last 1/1",), stems[3]: ("newest verified",)}
    assert names(folder) == {f"{s}{x}" for s in (stems[3], stems[5]) for x in (".dump.zst", ".manifest.json")} | {
        f"{stems[3]}.verified.json"}
    assert result.bytes_freed == 4 * (100 + 2) + len(record("restored")) + len(record("integrity-only"))


def test_a_record_another_store_copy_left_here_does_not_protect(write_settings):
    """A verified.json copied along with the backup from another store says nothing about this copy."""
    _, settings = write_settings({"backups": {"retention": ONLY_LAST}})
    folder = Path(settings.backups.local_dir) / "app"
    stems = stems_back(3, timedelta(days=1))
    fake_backups(folder, stems)
    (folder / f"{stems[0]}.verified.json").write_text(record("restored", store="nas"))
    [plan] = p.prune_database(BackupsConfig.of(settings), "app").plans
    assert [b.stem for b, _ in plan.kept] == [stems[2]]


def test_failed_newest_verification_prunes_nothing_and_says_why(write_settings):
    path, settings = write_settings({"backups": {"retention": ONLY_LAST}})
    folder = Path(settings.backups.local_dir) / "app"
    stems = stems_back(4, timedelta(days=1))
    fake_backups(folder, stems, verified={stems[0]: "restored", stems[-1]: "failed"})
    (folder / f"{stem_for(NOW - timedelta(days=9))}.dump.zst").write_bytes(b"orphan")
    before = names(folder)
    result = p.prune_database(BackupsConfig.of(settings), "app", now=NOW + timedelta(days=3))
    assert result.blocked and stems[-1] in result.blocked and "failed its verification" in result.blocked
    assert names(folder) == before and result.bytes_freed == 0
    out = CliRunner().invoke(main, ["--config", str(path), "backups", "prune", "app"])
    assert out.exit_code == 0 and "nothing pruned" in out.output and "failed its verification" in out.output


def test_dry_run_reports_without_deleting(write_settings):
    path, settings = write_settings({"backups": {"retention": {**ONLY_LAST, "dry_run": True}}})
    folder = Path(settings.backups.local_dir) / "app"
    stems = stems_back(3, timedelta(days=1))
    fake_backups(folder, stems)
    before = names(folder)
    result = p.prune_database(BackupsConfig.of(settings), "app")
    assert result.dry_run and len(result.plans[0].removed) == 2 and result.bytes_freed == 2 * 102
    assert names(folder) == before
    assert "would free" in p.markdown(result, settings.tz)
    # The CLI flag does the same with a policy that is not in dry-run mode.
    path, settings = write_settings({"backups": {"retention": ONLY_LAST}}, name="real.yaml")
    out = CliRunner().invoke(main, ["--config", str(path), "backups", "prune", "app", "--dry-run"])
    assert out.exit_code == 0, out.output
    assert f"would remove {stems[0]}" in " ".join(out.output.split()) and names(folder) == before
    out = CliRunner().invoke(main, ["--config", str(path), "backups", "prune", "app"])
    assert out.exit_code == 0 and f"keep     {stems[2]}  last 1/1" in out.output
    assert names(folder) == {f"{stems[2]}.dump.zst", f"{stems[2]}.manifest.json"}


def test_cli_refuses_an_empty_policy(write_settings, tmp_path):
    from homelab_ops.settings import SettingsError

    fake_backups(tmp_path / "backups" / "app", stems_back(2, timedelta(days=1)))
    with pytest.raises(SettingsError):  # refused when the settings load, before any listing
        write_settings({"backups": {"retention": {"keep_daily": 0, "keep_weekly": 0, "keep_monthly": 0}}})
    out = CliRunner().invoke(main, ["--config", str(tmp_path / "homelab.yaml"), "backups", "prune"])
    assert out.exit_code != 0 and "every keep_* rule is 0" in out.output
    assert len(names(tmp_path / "backups" / "app")) == 4


def test_daily_buckets_follow_the_settings_timezone(write_settings):
    # 23:30 and 00:30 UTC are two UTC days but one day in Berlin (00:30 and 01:30 local); the
    # backup before them takes restic's "oldest daily" slot, whichever the zone.
    first = datetime(2026, 11, 22, 12, tzinfo=timezone.utc)
    late = datetime(2026, 11, 23, 23, 30, tzinfo=timezone.utc)
    early = datetime(2026, 11, 24, 0, 30, tzinfo=timezone.utc)
    policy = {"keep_daily": 5, "keep_weekly": 0, "keep_monthly": 0, "dry_run": True}
    kept = {}
    for tz in ("UTC", "Europe/Berlin"):
        _, settings = write_settings({"timezone": tz, "backups": {"retention": policy}}, name=f"{tz[:3]}.yaml")
        fake_backups(Path(settings.backups.local_dir) / "tz", [stem_for(first), stem_for(late), stem_for(early)])
        kept[tz] = {b.stem for b, _ in p.prune_database(BackupsConfig.of(settings), "tz").plans[0].kept}
    assert kept["UTC"] == {stem_for(first), stem_for(late), stem_for(early)}
    assert kept["Europe/Berlin"] == {stem_for(first), stem_for(early)}


@pytest.mark.services
def test_globals_are_pruned_by_the_same_policy_keeping_the_newest(write_settings):
    path, settings = write_settings({"backups": {"retention": ONLY_LAST}})
    first = run_globals_backup(BackupsConfig.of(settings))
    second = run_globals_backup(BackupsConfig.of(settings))
    out = CliRunner().invoke(main, ["--config", str(path), "backups", "prune"])
    assert out.exit_code == 0, out.output
    assert f"{GLOBALS} in local: 1 kept, 1 removed" in out.output
    assert "newest (globals are not verified)" in out.output
    assert second.path.exists() and not first.path.exists()


# ---------------------------------------------------------------- S3


_PUT = """
import json, sys, boto3
from concurrent.futures import ThreadPoolExecutor
endpoint, bucket = sys.argv[1:3]
c = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
items = json.load(sys.stdin)
with ThreadPoolExecutor(8) as ex:
    list(ex.map(lambda kv: c.put_object(Bucket=bucket, Key=kv[0], Body=kv[1].encode()), items))
"""


def put_objects(endpoint: str, bucket: str, items: dict[str, str]) -> None:
    """boto3 put_object of tiny bodies, from a helper process so the in-process server has the GIL to itself."""
    subprocess.run([sys.executable, "-c", _PUT, endpoint, bucket], input=json.dumps(list(items.items())),
                   text=True, check=True)


@pytest.fixture
def quiet_werkzeug():
    """The S3 server logs one record per request; thousands of them slow it down."""
    logger = logging.getLogger("werkzeug")
    old = logger.level
    logger.setLevel(logging.WARNING)
    yield
    logger.setLevel(old)


def test_s3_retention_over_more_than_1000_backups(write_settings, s3_bucket, s3_server, quiet_werkzeug):
    client, bucket = s3_bucket
    _, settings = write_settings({"backups": {"s3": {"bucket": bucket, "endpoint_url": s3_server, "prefix": "pi/"},
                                              "retention": {"keep_daily": 7, "keep_weekly": 4, "keep_monthly": 12}}})
    stems = stems_back(1005, timedelta(hours=9), end=NOW - timedelta(hours=1))  # 377 days of backups
    objects = {f"pi/db/{s}{x}": "x" for s in stems for x in (".dump.zst", ".manifest.json")}
    protected = stems[100]  # far outside the policy, but the newest one that verified
    objects[f"pi/db/{protected}.verified.json"] = record("restored", store=bucket)
    objects[f"pi/db/{stem_for(NOW - timedelta(days=5))}.dump.zst"] = "orphan"
    objects["pi/db/README"] = "not ours"
    objects["pi/other/20200101T000000Z.dump.zst"] = "another database"
    put_objects(s3_server, bucket, objects)
    stale = client.create_multipart_upload(Bucket=bucket, Key=f"pi/db/{stem_for(NOW)}.dump.zst")["UploadId"]

    local, remotes = stores_for(settings.backups)
    calls: Counter = Counter()
    remotes[0].client.meta.events.register(
        "before-send.s3", lambda event_name, **kw: calls.update([event_name.rsplit(".", 1)[-1]]))
    # Two days on: the upload started "now" is then stale.
    result = p.prune_database(BackupsConfig.of(settings), "db", stores=[local, *remotes], now=NOW + timedelta(days=2))
    [_, plan] = result.plans
    assert plan.error is None

    expected = RetentionPolicy(keep_daily=7, keep_weekly=4, keep_monthly=12)
    keep = {d.id for d in apply_policy([(s, datetime.strptime(s, "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc))
                                        for s in stems], expected, settings.tz) if d.keep} | {protected}
    assert {b.stem for b, _ in plan.kept} == keep and len(plan.removed) == 1005 - len(keep)
    remaining = {o["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
                 for o in page.get("Contents", [])}
    assert remaining == ({f"pi/db/{s}{x}" for s in keep for x in (".dump.zst", ".manifest.json")}
                         | {f"pi/db/{protected}.verified.json", "pi/db/README", "pi/other/20200101T000000Z.dump.zst"})
    assert plan.stale_uploads == [f"pi/db/{stem_for(NOW)}.dump.zst"]
    assert not client.list_multipart_uploads(Bucket=bucket).get("Uploads")
    assert stale

    deleted = len(plan.delete_names)
    assert deleted > 1000
    minimum = math.ceil((len(objects) - 1) / 1000) + math.ceil(deleted / 1000)  # list pages + delete batches
    assert calls["ListObjectsV2"] == math.ceil((len(objects) - 1) / 1000)
    assert calls["DeleteObjects"] == math.ceil(deleted / 1000) == plan.delete_requests
    assert sum(calls.values()) <= minimum + 5, calls


def test_versioned_bucket_loses_every_version_and_every_file_of_a_pruned_stem(write_settings, s3_bucket, s3_server):
    """B2 keeps every version: a plain delete would only add a delete marker and free nothing. Sidecars
    (any file sharing the stem, like n8n's key) go with their backup, locally and off-site."""
    client, bucket = s3_bucket
    client.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    _, settings = write_settings({"backups": {"s3": {"bucket": bucket, "endpoint_url": s3_server, "prefix": "pi/",
                                                     "name": "b2"},
                                              "retention": ONLY_LAST}})
    stems = stems_back(3, timedelta(days=1))
    folder = Path(settings.backups.local_dir) / "app"
    fake_backups(folder, stems)
    suffixes = (".dump.zst", ".n8n-key.age", ".binary.tar.zst", ".manifest.json")
    for s in stems:
        (folder / f"{s}.n8n-key.age").write_bytes(b"k")
        (folder / f"{s}.binary.tar.zst").write_bytes(b"b")
        for x in suffixes:
            for body in (b"v1", b"v2"):  # two versions of each object, as a re-upload leaves them
                client.put_object(Bucket=bucket, Key=f"pi/app/{s}{x}", Body=body)
    client.delete_object(Bucket=bucket, Key=f"pi/app/{stems[0]}.binary.tar.zst")  # a delete marker too
    client.put_object(Bucket=bucket, Key=f"pi/app/{stems[0]}.binary.tar.zst", Body=b"v3")

    result = p.prune_database(BackupsConfig.of(settings), "app")
    assert not result.errors, result.errors
    local, remote = result.plans
    assert [b.stem for b in local.removed] == [b.stem for b in remote.removed] == stems[1::-1]
    assert sorted(remote.removed[0].files) == sorted(f"{stems[1]}{x}" for x in suffixes)
    assert names(folder) == {f"{stems[2]}{x}" for x in suffixes}
    left = client.list_object_versions(Bucket=bucket, Prefix="pi/app/")
    keys = {v["Key"] for v in left.get("Versions", []) + left.get("DeleteMarkers", [])}
    assert keys == {f"pi/app/{stems[2]}{x}" for x in suffixes}  # no version, no marker of a pruned stem
    assert len(left["Versions"]) == 2 * len(suffixes)
    assert "every version" in p.markdown(result, settings.tz)
