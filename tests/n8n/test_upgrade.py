"""The upgrade check from n8n 1.122 to 1.123 (both real, from npm) on the demo's workflows, the
workflow export imported into a fresh n8n for real, and binary data through backup and restore."""

from __future__ import annotations

import json
import time
from pathlib import Path

import dagster as dg
import psycopg
import pytest
from click.testing import CliRunner

from homelab_ops.backups import verify as bv
from homelab_ops.n8n.workflow_export import export_n8n_workflows
from homelab_ops.backups.stores import LocalStore
from homelab_ops.cli import main
from homelab_ops.defs.n8n.upgrade import n8n_upgrade_readiness
from homelab_ops.n8n import compare
from tests.n8n_demo import create_demo_database
from homelab_ops.n8n.runner import N8nCli
from homelab_ops.n8n.workflows import export_workflows
from tests.conftest import ADMIN_DSN, dsn_for
from tests.n8n.test_n8n_recovery import (  # noqa: F401  (session fixtures)
    KEY, NEW, OLD, age_identity, make_instance, n8n_new, n8n_old, nightly, resources, settings_for)
from homelab_ops.backups.config import BackupsConfig

# What n8n 1.122's import understands of a 1.123 export (the demo's schema is 1.123's).
_PORTABLE = ("id", "name", "nodes", "connections", "settings", "staticData", "pinData", "versionId", "meta")


def demo_workflows(new_db) -> list[dict]:
    demo = new_db("n8ndemo", create=False)
    create_demo_database(ADMIN_DSN, demo, workflows=6, executions=10)
    with psycopg.connect(dsn_for(demo)) as conn:
        wfs = export_workflows(conn)
    return [{**{k: w[k] for k in _PORTABLE if w.get(k) is not None}, "active": False} for w in wfs]


def upgrade(settings_path, instance, version: str):
    return dg.materialize([n8n_upgrade_readiness], resources=resources(settings_path), instance=instance,
                          run_config={"ops": {"n8n_upgrade_readiness": {"config": {"version": version}}}})


def test_upgrade_check_1_122_to_1_123_goes_and_a_broken_workflow_is_no_go(
        n8n_old, n8n_new, new_db, write_settings, age_identity, telegram, dagster_instance):
    recipient, identity = age_identity
    src = new_db("n8nupg")
    path, settings = settings_for(write_settings, src, n8n_old, recipients=[recipient], identity=identity,
                                  version=OLD, telegram_url=telegram.url)
    make_instance(settings, src, telegram.url, version=OLD, extra_workflows=demo_workflows(new_db))
    export_n8n_workflows(BackupsConfig.of(settings))  # the export taken before
    first = nightly(settings, src, path, dagster_instance)
    checks = {e.check_name: e for e in first.get_asset_check_evaluations()}
    assert checks["matches_manifest"].passed, checks["matches_manifest"].description  # verified by n8n 1.122

    go = upgrade(path, dagster_instance, NEW)
    meta = go.get_asset_materialization_events()[0].materialization.metadata
    assert meta["verdict"].value == "GO", meta["report"].value
    assert go.get_asset_check_evaluations()[0].passed
    assert any("GO" in m["plain"] and NEW in m["plain"] for m in telegram.sent)
    with psycopg.connect(dsn_for(src)) as conn:  # the owner's database is untouched by the check
        assert conn.execute("SELECT count(*) FROM workflow_entity").fetchone()[0] == 8

    # One workflow's JSON broken after the export: the newest verified backup holds it so.
    with psycopg.connect(dsn_for(src), autocommit=True) as conn:
        wid, name = conn.execute("SELECT id, name FROM workflow_entity WHERE id NOT LIKE 'wf%' "
                                 "ORDER BY id LIMIT 1").fetchone()
        conn.execute("""UPDATE workflow_entity SET nodes = '{"broken": true}' WHERE id = %s""", (wid,))
    time.sleep(1.1)
    from homelab_ops.backups.backup import run_backup
    from homelab_ops.n8n.backup_set import save_extras

    config = BackupsConfig.of(settings)
    save_extras(config, src, run_backup(config, src).stem)  # what the backup asset does
    assert bv.verify_backup(BackupsConfig.of(settings), src).passed  # the manifest alone cannot see it
    nogo = upgrade(path, dagster_instance, NEW)
    meta = nogo.get_asset_materialization_events()[0].materialization.metadata
    assert meta["verdict"].value == "NO-GO"
    check = nogo.get_asset_check_evaluations()[0]
    assert not check.passed and name in check.description
    assert any("NO-GO" in m["plain"] and name in m["plain"] for m in telegram.sent)


def test_workflow_export_imports_into_a_fresh_n8n_with_the_same_count_and_hashes(
        n8n_new, new_db, write_settings, telegram):
    src = new_db("n8nexp")
    path, settings = settings_for(write_settings, src, n8n_new)
    make_instance(settings, src, telegram.url, extra_workflows=demo_workflows(new_db))
    export = export_n8n_workflows(BackupsConfig.of(settings))
    files = {p.name: p.read_bytes() for p in sorted(export.path.glob("*.json"))}
    fresh = new_db("n8nfresh")
    cli = N8nCli(BackupsConfig.of(settings), database=fresh, key=KEY)
    cli.import_workflows_dir(files)  # n8n import:workflow --separate --input=DIR
    imported = compare.digests(cli.export_workflows())
    exported = compare.digests([json.loads(b) for b in files.values()])
    assert len(imported) == len(exported) == 8
    assert {k: (d["nodes"], d["hash"]) for k, d in imported.items()} == \
        {k: (d["nodes"], d["hash"]) for k, d in exported.items()}


def test_binary_data_is_backed_up_encrypted_and_restored(
        n8n_new, new_db, write_settings, age_identity, tmp_path, dagster_instance, telegram):
    recipient, identity = age_identity
    src = new_db("n8nbin")
    binary = tmp_path / "binaryData"
    (binary / "workflows" / "w1" / "executions" / "7").mkdir(parents=True)
    payload = bytes(range(256)) * 100
    (binary / "workflows" / "w1" / "executions" / "7" / "attachment.pdf").write_bytes(payload)
    (binary / "note.txt").write_text("hello")
    path, settings = settings_for(write_settings, src, n8n_new, recipients=[recipient], identity=identity,
                                  binary_data_dir=str(binary), verify_with=None)
    with psycopg.connect(dsn_for(src), autocommit=True) as conn:
        conn.execute("CREATE TABLE credentials_entity (id varchar(36), name text, type text, data text)")
    from homelab_ops.defs.backups.assets import backup_asset

    config = BackupsConfig.of(settings)
    dg.materialize([backup_asset(src, config)], resources=resources(path), instance=dagster_instance)
    names = LocalStore(settings.backups.local_dir).list(src)
    tar = [n for n in names if n.endswith(".n8n-binary.tar.zst.age")]
    assert len(tar) == 1
    assert payload[:64] not in (Path(settings.backups.local_dir) / src / tar[0]).read_bytes()
    out = tmp_path / "restored"
    run = CliRunner().invoke(main, ["--config", str(path), "n8n", "restore", "--into", new_db("n8nbinr", create=False),
                                    "--config-out", str(out)])
    assert run.exit_code == 0, run.output
    assert (out / "binaryData" / "workflows" / "w1" / "executions" / "7" / "attachment.pdf").read_bytes() == payload
    assert (out / "binaryData" / "note.txt").read_text() == "hello"
    assert "N8N_DEFAULT_BINARY_DATA_MODE=filesystem" in run.output
