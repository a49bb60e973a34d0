"""The operator's `homelab-ops backups ...` commands and the n8n workflow export, end to end."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import dagster as dg
from click.testing import CliRunner

from homelab_ops.backups.catalog import stem_for, time_of
from homelab_ops.cli import main
from homelab_ops.defs.n8n.workflows import n8n_workflows_asset
from homelab_ops.defs.resources import HomelabSettings
from tests.n8n_demo import SECRET_WORKFLOW_NAME, create_demo_database
from tests.conftest import ADMIN_DSN, dsn_for
from tests.backups.test_backups import seed, stats
from homelab_ops.backups.config import BackupsConfig


def test_list_and_restore_from_the_command_line(new_db, write_settings):
    db = new_db("cli")
    seed(db, "CREATE TABLE t (x int); INSERT INTO t SELECT generate_series(1, 50);")
    path, settings = write_settings({"postgres": {"dsn": ADMIN_DSN, "databases": [db]}})
    runner = CliRunner()
    from homelab_ops.backups.backup import run_backup

    first = run_backup(BackupsConfig.of(settings), db)
    second = run_backup(BackupsConfig.of(settings), db)
    out = runner.invoke(main, ["--config", str(path), "backups", "list", db])
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    assert lines[0].split() == ["DATABASE", "STORE", "BACKUP", "SIZE", "AGE", "ENC", "MANIFEST", "VERIFIED"]
    assert [ln.split()[2] for ln in lines[1:]] == [second.stem, first.stem]  # newest first

    target = new_db("cli_r", create=False)
    out = runner.invoke(main, ["--config", str(path), "backups", "restore", db, "--into", target,
                               "--at", first.stem])
    assert out.exit_code == 0, out.output
    assert f"backup {first.stem}" in out.output
    assert stats(target) == stats(db)

    again = runner.invoke(main, ["--config", str(path), "backups", "restore", db, "--into", target])
    assert again.exit_code == 1 and "already exists: refusing to overwrite" in again.output

    early = runner.invoke(main, ["--config", str(path), "backups", "restore", db, "--into", "never_made",
                                 "--at", "2000-01-01T00:00:00"])
    assert early.exit_code == 1 and "no complete backup" in early.output

    bad = runner.invoke(main, ["--config", str(path), "backups", "restore", db, "--into", "x", "--at", "soon"])
    assert bad.exit_code == 1 and "--at 'soon'" in bad.output


def test_bad_settings_are_a_clear_cli_error(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("backups: {timeout: forever}\n")
    out = CliRunner().invoke(main, ["--config", str(p), "backups", "list"])
    assert out.exit_code == 1 and "backups.timeout" in out.output and str(p) in out.output


def test_n8n_workflows_export_in_n8n_format(new_db, write_settings):
    n8n = new_db("n8n", create=False)
    counts = create_demo_database(ADMIN_DSN, n8n, workflows=6, executions=50)
    path, settings = write_settings({"n8n": {"dsn": dsn_for(n8n)}})
    result = dg.materialize([n8n_workflows_asset(BackupsConfig.of(settings))],
                            resources={"homelab": HomelabSettings(config_path=str(path))})
    meta = result.asset_materializations_for_node("n8n_workflows")[0].metadata
    folder = Path(meta["path"].value)
    files = sorted(folder.glob("*.json"))
    assert meta["workflow_count"].value == counts["workflows"] == len(files)
    docs = [json.loads(f.read_text()) for f in files]
    for doc, f in zip(docs, files):
        assert f.name == f"{doc['id']}.json"
        assert {"id", "name", "nodes", "connections", "settings", "versionId", "active", "tags"} <= doc.keys()
        assert isinstance(doc["nodes"], list) and doc["nodes"][0]["type"].startswith("n8n-nodes-base.")
    assert SECRET_WORKFLOW_NAME in {d["name"] for d in docs}


def _offsite_only(new_db, write_settings, s3_server, name: str):
    """A backup whose only copies are in two buckets; the local folder is new and empty (a new SD card)."""
    import uuid

    import boto3

    from homelab_ops.backups.backup import run_backup

    client = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    buckets = [f"c-{uuid.uuid4().hex[:10]}" for _ in range(2)]
    for b in buckets:
        client.create_bucket(Bucket=b)
    db = new_db(name)
    seed(db, "CREATE TABLE t (x int, doc json); INSERT INTO t SELECT i, json_build_object('i', i) "
             "FROM generate_series(1, 40) i;")
    _, settings = write_settings({"postgres": {"dsn": ADMIN_DSN, "databases": [db]}}, name="old-pi.yaml")
    backup = run_backup(BackupsConfig.of(settings), db)
    for f in sorted(backup.path.parent.iterdir(), key=lambda f: f.name.endswith(".manifest.json")):
        client.put_object(Bucket=buckets[1], Key=f"pi/{db}/{f.name}", Body=f.read_bytes())
    path, settings = write_settings({
        "postgres": {"dsn": ADMIN_DSN, "databases": [db]},
        "backups": {"local_dir": str(Path(settings.backups.local_dir).parent / "new-card"),
                    "s3": [{"bucket": buckets[0], "endpoint_url": s3_server, "name": "nas"},
                           {"bucket": buckets[1], "endpoint_url": s3_server, "prefix": "pi/", "name": "b2"}]}},
        name="new-pi.yaml")
    return db, backup, path, client, buckets


def test_list_and_restore_from_the_offsite_copies_alone(new_db, write_settings, s3_server):
    db, backup, path, _, _ = _offsite_only(new_db, write_settings, s3_server, "cli_off")
    runner = CliRunner()
    for args in ([], [db]):  # every database the stores hold, or the one asked for
        out = runner.invoke(main, ["--config", str(path), "backups", "list", *args])
        assert out.exit_code == 0, out.output
        rows = [ln.split() for ln in out.output.splitlines()[1:]]
        assert [(r[0], r[1], r[2], r[-2], r[-1]) for r in rows] == [(db, "b2", backup.stem, "ok", "unverified")]
    target = new_db("cli_off_r", create=False)
    out = runner.invoke(main, ["--config", str(path), "backups", "restore", db, "--into", target])
    assert out.exit_code == 0, out.output
    assert f"from b2 into {target}" in out.output
    assert stats(target) == stats(db)


def test_damaged_or_missing_manifest_is_shown_and_refused_unless_ignored(new_db, write_settings, s3_server):
    db, backup, path, client, buckets = _offsite_only(new_db, write_settings, s3_server, "cli_man")
    key = f"pi/{db}/{backup.stem}.manifest.json"
    client.put_object(Bucket=buckets[1], Key=key, Body=b'{"database": "x", "sha256": ')  # cut short
    runner = CliRunner()
    listed = runner.invoke(main, ["--config", str(path), "backups", "list", db]).output
    assert "damaged" in listed.splitlines()[1]
    target = new_db("cli_man_r", create=False)
    refused = runner.invoke(main, ["--config", str(path), "backups", "restore", db, "--into", target])
    assert refused.exit_code == 1 and "Traceback" not in refused.output
    [line] = [ln for ln in refused.output.splitlines() if ln.strip()]
    assert "manifest" in line and "damaged" in line and "--ignore-manifest" in line
    ok = runner.invoke(main, ["--config", str(path), "backups", "restore", db, "--into", target, "--ignore-manifest"])
    assert ok.exit_code == 0, ok.output
    assert "sha256" in ok.output and "cannot be checked" in ok.output
    assert stats(target) == stats(db)
    # Verification reads that copy as failed (recorded beside it), not as an error that stops the run.
    from homelab_ops.backups import verify
    from homelab_ops.backups.stores import stores_for
    from homelab_ops.settings import load

    settings = load(path)
    b2 = stores_for(settings.backups)[1][1]
    result = verify.verify_backup(BackupsConfig.of(settings), db, store=b2)
    assert result.outcome == "failed" and "damaged" in result.message
    assert "failed" in runner.invoke(main, ["--config", str(path), "backups", "list", db]).output

    # A dump whose manifest is gone: not a backup, shown as damaged, restorable by its stem when asked.
    client.delete_object(Bucket=buckets[1], Key=key)
    listed = runner.invoke(main, ["--config", str(path), "backups", "list", db]).output
    assert "damaged: missing" in listed
    again = new_db("cli_man_s", create=False)
    refused = runner.invoke(main, ["--config", str(path), "backups", "restore", db, "--into", again,
                                   "--at", backup.stem])
    assert refused.exit_code == 1 and "has no manifest" in refused.output and "--ignore-manifest" in refused.output
    ok = runner.invoke(main, ["--config", str(path), "backups", "restore", db, "--into", again,
                              "--at", backup.stem, "--ignore-manifest"])
    assert ok.exit_code == 0, ok.output
    assert stats(again) == stats(db)


def test_backups_init_lets_the_host_restore_its_own_backups_while_the_owner_key_stays_offline(
        new_db, write_settings, tmp_path):
    import os
    import subprocess

    import yaml

    from homelab_ops.backups import verify
    from homelab_ops.backups.backup import run_backup

    owner_key = tmp_path / "owner.key"  # the owner's identity: elsewhere, never named in the settings
    subprocess.run(["age-keygen", "-o", str(owner_key)], check=True, capture_output=True)
    owner = subprocess.run(["age-keygen", "-y", str(owner_key)], check=True, capture_output=True,
                           text=True).stdout.strip()
    db = new_db("cli_init")
    seed(db, "CREATE TABLE t (x int); INSERT INTO t SELECT generate_series(1, 30);")
    path, settings = write_settings({"postgres": {"dsn": ADMIN_DSN, "databases": [db]},
                                     "backups": {"encryption": {"age_recipients": [owner]}}})
    run_backup(BackupsConfig.of(settings), db)
    assert verify.verify_backup(BackupsConfig.of(settings), db).outcome == "integrity-only"  # no key on this host

    out = CliRunner().invoke(main, ["--config", str(path), "backups", "init"])
    assert out.exit_code == 0, out.output
    key = Path(settings.backups.local_dir).parent / "homelab-verify.key"  # beside the backups, not in them
    assert (os.stat(key).st_mode & 0o777) == 0o600 and "AGE-SECRET-KEY-" in key.read_text()
    printed = yaml.safe_load(out.output[out.output.index("backups:"):])
    assert printed["backups"]["encryption"]["age_recipients"][0] == owner
    assert printed["backups"]["encryption"]["identity_file"] == str(key)
    again = CliRunner().invoke(main, ["--config", str(path), "backups", "init"])
    assert "kept the existing" in again.output and key.read_text().count("AGE-SECRET-KEY-") == 1  # never replaced

    path, settings = write_settings({"postgres": {"dsn": ADMIN_DSN, "databases": [db]}, **printed})
    backup = run_backup(BackupsConfig.of(settings), db)
    result = verify.verify_backup(BackupsConfig.of(settings), db)
    assert result.outcome == "restored", result.message
    # The owner's offline identity still opens the same file with the standard tools.
    plain = subprocess.run(["age", "-d", "-i", str(owner_key), str(backup.path)], check=True, capture_output=True)
    assert plain.stdout[:4] == b"\x28\xb5\x2f\xfd"  # a zstd frame
    assert "nothing to change" in CliRunner().invoke(main, ["--config", str(path), "backups", "init"]).output


def test_restore_takes_the_newest_backup_of_any_store_local_first_on_a_tie(new_db, write_settings, s3_server):
    """An old local folder (an SD card image from last month) must not win over a newer off-site backup."""
    from homelab_ops.backups.backup import run_backup
    from homelab_ops.backups.restore import locate
    from homelab_ops.settings import load

    db, backup, path, client, buckets = _offsite_only(new_db, write_settings, s3_server, "cli_new")
    settings = load(path)
    _, local_only = write_settings({"postgres": {"dsn": ADMIN_DSN, "databases": [db]},
                                    "backups": {"local_dir": settings.backups.local_dir}}, name="card.yaml")
    older = run_backup(BackupsConfig.of(local_only), db)  # into the new card's folder, then made to look a day older
    folder = older.path.parent
    old_stem = stem_for(time_of(backup.stem) - timedelta(days=1))
    for f in folder.glob(older.stem + ".*"):
        f.rename(folder / (old_stem + f.name[len(older.stem):]))
    assert locate(BackupsConfig.of(settings), db).store.label == "b2"
    assert locate(BackupsConfig.of(settings), db, source="local").backup.stem == old_stem
    for f in sorted(folder.glob(old_stem + ".*")):  # the same stem locally as off-site: local wins
        f.rename(folder / (backup.stem + f.name[len(old_stem):]))
    assert locate(BackupsConfig.of(settings), db).store.label == "local"
