"""Retention of n8n's workflow export folders: local folders, the S3 server on loopback, the asset."""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import boto3
import botocore.config
import dagster as dg
import pytest
from click.testing import CliRunner

from homelab_ops.backups import prune as p
from homelab_ops.n8n import workflow_retention as w
from homelab_ops.backups.catalog import stem_for
from homelab_ops.backups.retention import RetentionPolicy
from homelab_ops.backups.stores import S3Store, stores_for
from homelab_ops.cli import main
from homelab_ops.defs.n8n.workflows import n8n_workflows_asset
from homelab_ops.defs.backups.retention import workflow_retention_asset
from homelab_ops.defs.resources import HomelabSettings
from tests.n8n_demo import create_demo_database
from tests.conftest import ADMIN_DSN, dsn_for
from tests.backups.test_prune import put_objects, quiet_werkzeug as _quiet_werkzeug
from homelab_ops.backups.config import BackupsConfig

quiet_werkzeug = _quiet_werkzeug  # a fixture, shared with test_prune

KEEP_2_DAYS = {"keep_daily": 2, "keep_weekly": 0, "keep_monthly": 0}

# Berlin days: C is 3 March, D (00:30 on 4 March in Berlin, 23:30 on 3 March in UTC) and E are 4 March.
A, B, C, D, E = "20260301T030000Z", "20260302T030000Z", "20260303T120000Z", "20260303T233000Z", "20260304T030000Z"
NOW = datetime(2026, 3, 4, 4, tzinfo=timezone.utc)
YOUNG = "20260304T033000Z.partial"  # half an hour old: an export may still be writing it
OLD = "20260301T050000Z.partial"  # three days old: an export that died
FILES = {"wf1.json": b'{"id": "wf1"}', "wf22.json": b'{"id": "wf22", "name": "x"}'}
FOLDER_SIZE = sum(len(b) for b in FILES.values())


def local_exports(settings, names: list[str]) -> Path:
    """Folders as `export_n8n_workflows` writes them; the file bodies do not matter to retention."""
    root = Path(settings.backups.local_dir) / "n8n_workflows"
    for name in names:
        (root / name).mkdir(parents=True)
        for f, data in FILES.items():
            (root / name / f).write_bytes(data)
    (root / "notes").mkdir()  # not an export's name: never touched
    (root / "README.txt").write_text("mine")
    return root


def s3_exports(client, bucket: str, names: list[str]) -> set[str]:
    keys = {f"pi/n8n_workflows/{name}/{f}" for name in names for f in FILES}
    keys |= {"pi/n8n_workflows/README.txt", "pi/n8n_workflows/notes/a.json", "pi/n8n_workflows_old/x/a.json",
             f"pi/n8n/{A}.dump.zst"}
    for k in sorted(keys):
        client.put_object(Bucket=bucket, Key=k, Body=b"{}" if k.endswith(("/a.json", "README.txt", ".zst"))
                          else FILES[k.rsplit("/", 1)[1]])
    return keys


def s3_keys(client, bucket: str) -> set[str]:
    return {o["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
            for o in page.get("Contents", [])}


def requests_of(store: S3Store) -> Counter:
    """Counts the store's S3 requests by operation, as they are sent."""
    calls: Counter = Counter()
    store.client.meta.events.register(
        "before-send.s3", lambda event_name, **kw: calls.update([event_name.rsplit(".", 1)[-1]]))
    return calls


def s3_settings(write_settings, s3_server, bucket: str, retention: dict, name: str = "homelab.yaml"):
    return write_settings({"timezone": "Europe/Berlin",
                           "backups": {"s3": {"bucket": bucket, "endpoint_url": s3_server, "prefix": "pi/"},
                                       "retention": retention}}, name=name)


# ---------------------------------------------------------------- pure logic


def test_only_complete_folders_count_and_the_policy_is_the_backups_own():
    names = [A, B, C, D, E, YOUNG, OLD, "notes", "20261399T000000Z", f"{A}.json"]
    plan = w.plan_exports("local", names, RetentionPolicy(keep_daily=2), ZoneInfo("Europe/Berlin"), now=NOW,
                          grace=timedelta(hours=24))
    assert [(f.stem, r) for f, r in plan.kept] == [(E, (w.NEWEST, "daily 1/2")), (C, ("daily 2/2",))]
    assert [f.stem for f in plan.removed] == [D, B, A]
    assert {x.name: x.remove for x in plan.leftovers} == {YOUNG: False, OLD: True}
    assert plan.unknown == sorted(["notes", "20261399T000000Z", f"{A}.json"])
    assert plan.delete_names == [D, B, A, OLD]
    # The same calendar in UTC keeps D (its own UTC day) instead of C.
    utc = w.plan_exports("local", names, RetentionPolicy(keep_daily=2), ZoneInfo("UTC"), now=NOW,
                         grace=timedelta(hours=24))
    assert [f.stem for f, _ in utc.kept] == [E, D]


def test_the_newest_complete_export_is_protected_and_a_partial_one_never_counts():
    # Every valid rule keeps the newest anyway; like _globals' newest, the protection is still stated.
    plan = w.plan_exports("local", [A, B, YOUNG], RetentionPolicy(keep_within="1h"), ZoneInfo("UTC"), now=NOW,
                          grace=timedelta(hours=24))
    assert [(f.stem, r[0]) for f, r in plan.kept] == [(B, w.NEWEST)] and [f.stem for f in plan.removed] == [A]
    assert w.plan_exports("local", [YOUNG, "notes"], RetentionPolicy(keep_last=1), ZoneInfo("UTC"), now=NOW,
                          grace=timedelta(hours=24)).delete_names == []


# ---------------------------------------------------------------- local and S3, each on its own


def test_prunes_locally_and_off_site_each_store_from_its_own_listing(write_settings, s3_bucket, s3_server):
    client, bucket = s3_bucket
    _, settings = s3_settings(write_settings, s3_server, bucket, KEEP_2_DAYS)
    root = local_exports(settings, [A, B, C, D, E, YOUNG, OLD])
    # Off-site, E's copy never happened: there D is the newest export and is kept.
    s3_exports(client, bucket, [A, B, C, D, YOUNG, OLD])
    client.put_object(Bucket=bucket, Key=f"pi/n8n_workflows/{B}/nested/deeper.json", Body=b"12345")
    local, remotes = stores_for(settings.backups)
    calls = requests_of(remotes[0])

    result = w.prune_workflow_exports(BackupsConfig.of(settings), now=NOW, stores=[local, *remotes])
    assert not result.errors and not result.dry_run and result.database == "n8n_workflows"
    on_disk, off_site = result.plans
    assert [(f.stem, r) for f, r in on_disk.kept] == [(E, (w.NEWEST, "daily 1/2")), (C, ("daily 2/2",))]
    assert [(f.stem, r) for f, r in off_site.kept] == [(D, (w.NEWEST, "daily 1/2")), (C, ("daily 2/2",))]
    assert {q.name for q in root.iterdir()} == {C, E, YOUNG, "notes", "README.txt"}
    assert all(sorted(q.name for q in (root / n).iterdir()) == sorted(FILES) for n in (C, E, YOUNG))
    assert s3_keys(client, bucket) == {f"pi/n8n_workflows/{n}/{f}" for n in (C, D, YOUNG) for f in FILES} | {
        "pi/n8n_workflows/README.txt", "pi/n8n_workflows/notes/a.json", "pi/n8n_workflows_old/x/a.json",
        f"pi/n8n/{A}.dump.zst"}

    assert on_disk.bytes_freed == 4 * FOLDER_SIZE  # A, B, D and the old partial
    assert off_site.bytes_freed == 3 * FOLDER_SIZE + 5  # A, B (with its nested object) and the old partial
    assert [f.size for f in off_site.removed] == [FOLDER_SIZE + 5, FOLDER_SIZE]
    # One listing of the folders, one per folder removed, one DeleteObjects for all their objects.
    assert calls == {"ListObjectsV2": 1 + 3, "DeleteObjects": 1} and off_site.delete_requests == 1
    plan = p.markdown(result, settings.tz)
    assert "### n8n_workflows in local: 2 kept, 3 removed" in plan and f"| {E} |" in plan
    assert "newest export, daily 1/2" in plan and "removed partial" in plan and "kept for now" in plan

    again = w.prune_workflow_exports(BackupsConfig.of(settings), now=NOW)  # nothing left to do, nothing else touched
    assert [len(x.removed) for x in again.plans] == [0, 0] and again.bytes_freed == 0
    assert {q.name for q in root.iterdir()} == {C, E, YOUNG, "notes", "README.txt"}
    # A day later the young partial is old enough to be a leftover.
    later = w.prune_workflow_exports(BackupsConfig.of(settings), now=NOW + timedelta(days=1))
    assert [[x.name for x in pl.leftovers if x.remove] for pl in later.plans] == [[YOUNG], [YOUNG]]
    assert not (root / YOUNG).exists() and not any(YOUNG in k for k in s3_keys(client, bucket))


def test_dry_run_reports_and_deletes_nothing(write_settings, s3_bucket, s3_server):
    client, bucket = s3_bucket
    _, settings = s3_settings(write_settings, s3_server, bucket, {**KEEP_2_DAYS, "dry_run": True})
    root = local_exports(settings, [A, B, C, E, OLD])
    before = s3_exports(client, bucket, [A, B, C, E, OLD])
    local_before = sorted(root.rglob("*"))
    result = w.prune_workflow_exports(BackupsConfig.of(settings), now=NOW)
    assert result.dry_run and not result.errors
    assert [[f.stem for f in pl.removed] for pl in result.plans] == [[B, A], [B, A]]
    assert result.bytes_freed == 2 * 3 * FOLDER_SIZE  # what would go, in both stores
    assert sorted(root.rglob("*")) == local_before and s3_keys(client, bucket) == before
    assert "would free" in p.markdown(result, settings.tz)
    # The override works the other way too, as for `homelab-ops backups prune --dry-run`.
    config = BackupsConfig.of(settings)
    assert w.prune_workflow_exports(config, now=NOW, dry_run=False).bytes_freed == 2 * 3 * FOLDER_SIZE
    assert {q.name for q in root.iterdir()} == {C, E, "notes", "README.txt"}


def test_an_empty_policy_is_refused_before_anything_is_listed(write_settings):
    # The refusal comes before any store is touched: the local folders stay as they are (and the
    # S3 endpoint, which does not exist, is never asked).
    # (The settings refuse such a policy at load; built unvalidated here to test this second guard.)
    from homelab_ops.settings import RetentionSettings

    _, settings = write_settings({"backups": {"s3": {"bucket": "nowhere", "endpoint_url": "http://127.0.0.1:9"}}})
    empty = RetentionSettings.model_construct(keep_daily=0, keep_weekly=0, keep_monthly=0, keep_within="0d")
    settings = settings.model_copy(update={"backups": settings.backups.model_copy(update={"retention": empty})})
    root = local_exports(settings, [A, B, OLD])
    with pytest.raises(p.PruneError, match="refusing to prune"):
        w.prune_workflow_exports(BackupsConfig.of(settings), now=NOW)
    assert {q.name for q in root.iterdir()} == {A, B, OLD, "notes", "README.txt"}


def test_a_store_that_is_down_is_reported_and_the_others_still_pruned(write_settings):
    _, settings = write_settings({"backups": {"retention": KEEP_2_DAYS,
                                              "s3": {"bucket": "nowhere", "endpoint_url": "http://127.0.0.1:9"}}})
    root = local_exports(settings, [A, B, C, E])
    # Connection refused at once, without botocore's retries and their back-off.
    remote = S3Store(settings.backups.s3[0], client=boto3.client(
        "s3", endpoint_url="http://127.0.0.1:9", region_name="us-east-1",
        config=botocore.config.Config(retries={"total_max_attempts": 1})))
    config = BackupsConfig.of(settings)
    result = w.prune_workflow_exports(config, now=NOW, stores=[stores_for(settings.backups)[0], remote])
    assert [pl.error is None for pl in result.plans] == [True, False]
    assert "nowhere" in result.errors[0] and "listing" in result.errors[0]
    assert {q.name for q in root.iterdir()} == {C, E, "notes", "README.txt"}


@pytest.mark.usefixtures("quiet_werkzeug")
def test_s3_folder_listing_pages_and_deletes_go_in_batches_of_1000(write_settings, s3_bucket, s3_server):
    client, bucket = s3_bucket
    _, settings = s3_settings(write_settings, s3_server, bucket, {"keep_last": 1000, "keep_daily": 0,
                                                                  "keep_weekly": 0, "keep_monthly": 0})
    stems = [stem_for(NOW - timedelta(hours=i)) for i in range(1001)]  # newest first
    objects = {f"pi/n8n_workflows/{s}/w.json": "{}" for s in stems[:-1]}
    objects |= {f"pi/n8n_workflows/{stems[-1]}/w{i:04}.json": "{}" for i in range(1001)}  # the one removed
    put_objects(s3_server, bucket, objects)
    _, [remote] = stores_for(settings.backups)
    calls = requests_of(remote)
    result = w.prune_workflow_exports(BackupsConfig.of(settings), now=NOW, stores=[remote])
    [plan] = result.plans
    assert plan.error is None and [f.stem for f in plan.removed] == [stems[-1]] and len(plan.kept) == 1000
    assert plan.delete_requests == calls["DeleteObjects"] == 2 and result.bytes_freed == 2 * 1001
    assert calls["ListObjectsV2"] == 2 + 2  # 1001 folders, then the removed folder's 1001 objects
    assert s3_keys(client, bucket) == set(objects) - {k for k in objects if stems[-1] in k}


# ---------------------------------------------------------------- Dagster


def test_the_asset_prunes_after_a_real_export(new_db, write_settings, s3_bucket, s3_server):
    client, bucket = s3_bucket
    n8n = new_db("n8n", create=False)
    create_demo_database(ADMIN_DSN, n8n, workflows=3, executions=5)
    path, settings = write_settings({"n8n": {"dsn": dsn_for(n8n)},
                                     "backups": {"retention": {"keep_last": 2, "keep_daily": 0, "keep_weekly": 0,
                                                               "keep_monthly": 0},
                                                 "s3": {"bucket": bucket, "endpoint_url": s3_server}}})
    now = datetime.now(timezone.utc)
    day_before, yesterday, earlier = (stem_for(now - timedelta(days=d)) for d in (2, 1, 1.01))
    old_partial = stem_for(now - timedelta(days=3)) + ".partial"
    root = local_exports(settings, [day_before, earlier, yesterday, old_partial])
    for name in (day_before, earlier, yesterday):
        client.put_object(Bucket=bucket, Key=f"n8n_workflows/{name}/x.json", Body=b"{}")

    config = BackupsConfig.of(settings)
    result = dg.materialize([n8n_workflows_asset(config), workflow_retention_asset(config, ["n8n"])],
                            resources={"homelab": HomelabSettings(config_path=str(path))})
    assert result.success
    export = Path(result.asset_materializations_for_node("n8n_workflows")[0].metadata["path"].value)
    meta = result.asset_materializations_for_node("backup_retention__n8n_workflows_retention")[0].metadata
    assert {q.name for q in root.iterdir()} == {export.name, yesterday, "notes", "README.txt"}
    assert len(list(export.glob("*.json"))) == 3  # the run's own export is the newest: kept whole
    assert {k.split("/")[1] for k in s3_keys(client, bucket)} == {export.name, yesterday}
    assert meta["kept"].value == 4 and meta["removed"].value == 4 and meta["leftovers_removed"].value == 1
    assert meta["bytes_freed"].value == 2 * FOLDER_SIZE + FOLDER_SIZE + 2 * 2 and not meta["dry_run"].value
    assert f"| {export.name} |" in meta["plan"].value and "newest export, last 1/2" in meta["plan"].value


def _backup_defs(monkeypatch, write_settings, data: dict, name: str) -> dg.Definitions:
    from homelab_ops.defs.backups.defs import defs
    from homelab_ops.defs.resources import defs as resources

    path, _ = write_settings(data, name=name)
    monkeypatch.setenv("HOMELAB_CONFIG", str(path))
    return dg.Definitions.merge(defs(), resources())


def test_nightly_job_prunes_the_exports_only_when_n8n_is_configured(monkeypatch, write_settings):
    key = dg.AssetKey(["backup_retention", "n8n_workflows_retention"])
    d = _backup_defs(monkeypatch, write_settings, {"n8n": {"dsn": ADMIN_DSN}}, "with.yaml")
    spec = {s.key: s for s in d.resolve_all_asset_specs()}[key]
    assert spec.group_name == "backups" and dg.AssetKey("n8n_workflows") in {dep.asset_key for dep in spec.deps}
    assert key in d.resolve_job_def("nightly_backup").asset_layer.selected_asset_keys
    d = _backup_defs(monkeypatch, write_settings, {}, "without.yaml")
    assert key not in {s.key for s in d.resolve_all_asset_specs()}


def test_a_database_named_like_the_exports_is_refused_at_load(monkeypatch, write_settings):
    from homelab_ops.settings import SettingsError

    with pytest.raises(SettingsError, match="'n8n_workflows' reserved: the folder and retention asset"):
        _backup_defs(monkeypatch, write_settings, {"n8n": {"dsn": ADMIN_DSN},
                                                   "postgres": {"dsn": ADMIN_DSN,
                                                                "databases": ["n8n", "n8n_workflows"]}}, "clash.yaml")


def test_cli_prune_covers_the_exports_when_n8n_is_configured(write_settings, tmp_path):
    """`homelab-ops backups prune` (no DATABASE) prunes what the nightly job prunes, exports included."""
    old = [stem_for(datetime.now(timezone.utc) - timedelta(days=d)) for d in (3, 2)]
    newest = stem_for(datetime.now(timezone.utc) - timedelta(hours=1))
    policy = {"backups": {"retention": {"keep_last": 1, "keep_daily": 0, "keep_weekly": 0, "keep_monthly": 0}}}
    path, settings = write_settings({**policy, "n8n": {"dsn": dsn_for("postgres")}})
    root = local_exports(settings, [*old, newest])
    out = CliRunner().invoke(main, ["--config", str(path), "backups", "prune"])
    assert out.exit_code == 0, out.output
    assert "n8n_workflows in local: 1 kept, 2 removed" in out.output
    assert sorted(x.name for x in root.iterdir() if x.name[:1].isdigit()) == [newest]

    # Without n8n the folder is not an export the nightly job makes: the CLI leaves it alone.
    plain, settings = write_settings({"backups": {**policy["backups"], "local_dir": str(tmp_path / "plain")}},
                                     name="no-n8n.yaml")
    root = local_exports(settings, [*old, newest])
    out = CliRunner().invoke(main, ["--config", str(plain), "backups", "prune"])
    assert out.exit_code == 0, out.output
    assert "n8n_workflows" not in out.output and len([x for x in root.iterdir() if x.name[:1].isdigit()]) == 3
